"""Train state of a checkpoint and the save / resume orchestration.

What a checkpoint holds besides model and optimizer tensors, and how a run saves and resumes it:
``train_state.json`` (iteration, consumed samples/tokens, seed, data position + fingerprint,
parallel layout, optimizer format, stateful callbacks), ``config.yaml``, ``model_config.json``
and per-rank RNG files; :func:`save_checkpoint`, :func:`load_checkpoint`, :func:`load_weights`.

Design choices
- Model and optimizer go through ``sharded_state_dict``, so a checkpoint saved at TP=a x PP=b
  loads at TP=c x PP=d and any DP (megatron-core reshards on load). The distributed
  optimizer's state uses the ``fully_reshardable`` format for that reason (its
  ``dp_reshardable`` default only reshards across DP); switching the distributed optimizer on
  or off between save and resume is :mod:`.optimizer_formats`' job.
- RNG states are per rank files, restored only when the parallel layout is unchanged
  (as in Megatron-LM: a different layout has different RNG streams by construction); the run
  then re-seeds and says so.
- The data position (consumed samples, seed, curriculum fingerprint) is checked on resume: a
  changed dataset or curriculum fails loudly unless the user asks to ignore it.
- Initial weights (continual pretraining / ``--finetune``) load only the model part with
  ``strict`` key checks; no optimizer, scheduler, data or RNG state.
- TE's ``_extra_state`` (FP8 scaling) is saved with the model; on load, the ones a checkpoint
  lacks (saved by the local spec or converted from HF) are not requested and the modules keep
  their own (:mod:`megatron_ar.checkpoint.extra_state`): checkpoints cross specs both ways.
- Before loading, the requested tensor keys are checked against the checkpoint's metadata so
  that a checkpoint that cannot be resumed fails with its directory and the missing key named
  (and a hint: ``--no-load-optim`` when only optimizer state is missing), not deep inside
  torch.distributed.checkpoint.
- megatron-core's distributed optimizer with torch's AdamW (every CPU run) needs three
  workarounds around the load (allocated Adam state, the ``step`` key, unshared ``step``
  tensors): :mod:`megatron_ar.compat.optimizer`. Without the last one resume was not bit-exact
  (measured); with it, it is (tests/training/test_train_e2e.py).
- Publishing (staging directory, rename, pointer, keep-last-K) is :mod:`.publish`; every
  collective (barrier) of a save is here.
"""
from __future__ import annotations

import json
import os
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron_ar.checkpoint.extra_state import drop_unsaved_extra_state, load_module_state
from megatron_ar.checkpoint.megatron_io import check_storage_complete
from megatron_ar.compat.optimizer import prepare_for_load, unshare_step_tensors
from megatron_ar.training.checkpointing.optimizer_formats import (
    OPT_METADATA,
    convert_optimizer_state,
    optimizer_format,
    optimizer_load_plan,
    prepare_cross_format,
)
from megatron_ar.training.checkpointing.publish import (
    CheckpointError,
    fault_sleep_before_publish,
    iter_dirname,
    prepare_staging,
    publish,
    resolve_checkpoint_dir,
    staging_dir,
)
from megatron_ar.training.config import save_config


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------------------------
# state dicts
# ----------------------------------------------------------------------------------------------
def model_sharded_state_dict(model: List[torch.nn.Module]) -> Dict[str, Any]:
    """Sharded state dict of the bare GPTModels: megatron-core 0.16's DDP wrapper has no
    ``sharded_state_dict`` of its own and would prefix every key with ``module.``; unwrapped keys
    (``decoder.layers...``) are what Megatron-LM and the HF converter write."""
    from megatron_ar.models.builder import unwrap

    model = unwrap(model)
    if len(model) == 1:
        return {"model": model[0].sharded_state_dict()}
    return {f"model{i}": m.sharded_state_dict() for i, m in enumerate(model)}


def _full_sharded_state_dict(state, is_loading: bool, metadata: Optional[Dict[str, Any]] = None
                             ) -> Dict[str, Any]:
    sd = model_sharded_state_dict(state.model)
    sd["optimizer"] = state.optimizer.sharded_state_dict(sd, is_loading=is_loading,
                                                         metadata=metadata or OPT_METADATA)
    sd["opt_param_scheduler"] = state.scheduler.state_dict()
    return sd


def rng_state() -> Dict[str, Any]:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    out = {"random": random.getstate(), "numpy": np.random.get_state(),
           "torch": torch.get_rng_state(), "tracker": get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(st: Dict[str, Any]) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(st["random"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])
    get_cuda_rng_tracker().set_states(st["tracker"])


def _layout_dict(layout) -> Dict[str, int]:
    return {"world_size": layout.world_size, "tp": layout.tp, "pp": layout.pp,
            "vpp": layout.vpp or 1, "dp": layout.dp}


def train_state_dict(state) -> Dict[str, Any]:
    data_sd = state.data.state_dict() if hasattr(state.data, "state_dict") else {}
    return {
        "iteration": state.iteration,
        "consumed_samples": state.consumed_samples,
        "consumed_tokens": state.consumed_tokens,
        "seed": state.cfg.schedule.seed,
        "data": _jsonable(data_sd),
        "data_fingerprint": data_fingerprint(state.data),
        "layout": _layout_dict(state.layout),
        "train_iters": state.train_iters,
        "optimizer_format": optimizer_format(state),
        # Stateful callbacks (e.g. the loss-spike window); JSON floats round-trip exactly.
        "callbacks": {getattr(cb, "name", type(cb).__name__): _jsonable(cb.state_dict())
                      for cb in state.callbacks if hasattr(cb, "state_dict")},
    }


def _manifest_changes(ts: Dict[str, Any], data) -> str:
    """What changed, naming the dataset and file (curriculum manifests), or '' if unknown."""
    old, new = (ts.get("data") or {}).get("manifest"), getattr(data, "manifest", None)
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return ""
    from megatron_ar.data.curriculum_plan import diff_manifests

    try:
        changes = diff_manifests(old, new)
    except Exception:  # an older manifest format: the fingerprints above still say it changed
        return ""
    return (":\n  - " + "\n  - ".join(changes) + "\n") if changes else ""


def data_fingerprint(data) -> Optional[str]:
    fp = getattr(data, "fingerprint", None)
    if callable(fp):
        fp = fp()
    return None if fp is None else str(fp)


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


# ----------------------------------------------------------------------------------------------
# save
# ----------------------------------------------------------------------------------------------
def save_checkpoint(state, root: Optional[str] = None) -> str:
    """Save model, optimizer, scheduler, data position and RNG of ``state``; publish atomically.
    Collective: every rank must call it. Returns the published directory."""
    from megatron.core import dist_checkpointing

    root = os.path.abspath(root or state.cfg.save_dir())
    if state.cfg.parallel.overlap_param_gather:
        # With the overlapped param all-gather, the other ranks' shards of the distributed
        # optimizer's update arrive during the next forward: gather them now, or the saved
        # weights are stale (Megatron-LM's save_checkpoint path forces the same sync).
        for chunk in state.model:
            chunk.start_param_sync(force_sync=True)
    tmp = staging_dir(root, state.iteration)
    final = os.path.join(root, iter_dirname(state.iteration))
    rank = _rank()
    if rank == 0:
        prepare_staging(root, state.iteration)
    _barrier()
    sd = _full_sharded_state_dict(state, is_loading=False)
    # content_metadata: how the sharded state dict was built (Megatron-LM stores the same), so
    # other megatron-core based tools can rebuild a matching one.
    dist_checkpointing.save(sd, tmp, content_metadata=dict(OPT_METADATA))
    if rank == 0:
        os.makedirs(os.path.join(tmp, "rng"), exist_ok=True)
    _barrier()
    torch.save(rng_state(), os.path.join(tmp, "rng", f"rank_{rank:05d}.pt"))
    if rank == 0:
        with open(os.path.join(tmp, "train_state.json"), "w", encoding="utf-8") as f:
            json.dump(train_state_dict(state), f, indent=1)
        save_config(state.cfg, os.path.join(tmp, "config.yaml"))
        mc = getattr(state, "model_config", None)
        if mc is not None:
            # The converter's format, so tools/checkpoint/convert.py --loader megatron exports
            # a training checkpoint to HF directly.
            from megatron_ar.checkpoint.megatron_io import CheckpointInfo, write_checkpoint_info

            write_checkpoint_info(tmp, CheckpointInfo(
                model_config=mc, padded_vocab_size=mc.padded_vocab_size(state.layout.tp),
                tensor_model_parallel_size=state.layout.tp,
                pipeline_model_parallel_size=state.layout.pp,
                dtype="bfloat16" if state.cfg.optimizer.bf16 else "float32",
                source={"megatron_ar.train": {"iteration": state.iteration}}))
    _barrier()
    fault_sleep_before_publish()
    if rank == 0:
        publish(root, state.iteration, keep_last=state.cfg.checkpoint.keep_last)
    _barrier()
    return final


# ----------------------------------------------------------------------------------------------
# load
# ----------------------------------------------------------------------------------------------
def load_checkpoint(state, path: str, ignore_data_change: bool = False) -> Dict[str, Any]:
    """Resume ``state`` from ``path`` (root with pointer or a checkpoint dir). Restores model,
    optimizer (unless ``checkpoint.no_load_optim``; saved with or without the distributed
    optimizer), scheduler, iteration, consumed samples, data position and (same layout, unless
    ``no_load_rng``) RNG. Returns train_state.json."""
    from megatron.core import dist_checkpointing

    ckpt = resolve_checkpoint_dir(path)
    ts_path = os.path.join(ckpt, "train_state.json")
    if not os.path.isfile(ts_path):
        raise CheckpointError(f"{ckpt}: train_state.json is missing; not a megatron_ar training "
                              "checkpoint (for weights only use checkpoint.pretrained_checkpoint)")
    with open(ts_path, encoding="utf-8") as f:
        ts = json.load(f)
    fp_now = data_fingerprint(state.data)
    if (not ignore_data_change and ts.get("data_fingerprint") is not None and fp_now is not None
            and ts["data_fingerprint"] != fp_now):
        raise CheckpointError(
            f"{ckpt}: the data or curriculum changed since this checkpoint was saved "
            f"(fingerprint {ts['data_fingerprint']} -> {fp_now}){_manifest_changes(ts, state.data)}; "
            "resuming would not continue the same sample sequence. Restore the data/recipe or "
            "start a new run.")
    if ts.get("seed") is not None and ts["seed"] != state.cfg.schedule.seed and not ignore_data_change:
        raise CheckpointError(f"{ckpt}: schedule.seed changed ({ts['seed']} -> "
                              f"{state.cfg.schedule.seed}); the sample order would differ")
    load_optim = not state.cfg.checkpoint.no_load_optim
    plan = None
    if load_optim:
        common = dist_checkpointing.load_common_state_dict(ckpt)
        plan = optimizer_load_plan(state, ckpt, ts, common.get("optimizer"))
        prepare_for_load(state.optimizer)
        sd = _full_sharded_state_dict(state, is_loading=True, metadata=plan["metadata"])
        prepare_cross_format(state.optimizer, sd["optimizer"], plan)
    else:
        sd = model_sharded_state_dict(state.model)
        sd["opt_param_scheduler"] = state.scheduler.state_dict()
    check_loadable(sd, ckpt, plan)
    drop_unsaved_extra_state(sd, ckpt)
    loaded = dist_checkpointing.load(sd, ckpt)
    _load_model(state.model, loaded, ckpt)
    if load_optim:
        osd = loaded["optimizer"]
        if plan["cross"]:
            osd = convert_optimizer_state(state.optimizer, osd, common["optimizer"], plan, ckpt)
        state.optimizer.load_state_dict(osd)
        unshare_step_tensors(state.optimizer)
        if plan["cross"] and _rank() == 0:
            print(f"[checkpoint] optimizer state converted: saved {plan['saved_desc']} -> "
                  f"this run {plan['current_desc']}", flush=True)
    state.scheduler.load_state_dict(loaded["opt_param_scheduler"])
    cbs = ts.get("callbacks") or {}
    for cb in state.callbacks:
        key = getattr(cb, "name", type(cb).__name__)
        if key in cbs and hasattr(cb, "load_state_dict"):
            cb.load_state_dict(cbs[key])
    state.iteration = int(ts["iteration"])
    state.consumed_samples = int(ts["consumed_samples"])
    state.consumed_tokens = int(ts.get("consumed_tokens", 0))
    if hasattr(state.data, "load_state_dict") and ts.get("data"):
        state.data.load_state_dict(ts["data"])
    same_layout = ts.get("layout") == _layout_dict(state.layout)
    rng_file = os.path.join(ckpt, "rng", f"rank_{_rank():05d}.pt")
    if same_layout and not state.cfg.checkpoint.no_load_rng and os.path.isfile(rng_file):
        set_rng_state(torch.load(rng_file, weights_only=False))
    elif _rank() == 0:
        print(f"[checkpoint] RNG state not restored (layout {ts.get('layout')} -> "
              f"{_layout_dict(state.layout)}); continuing with the run's seed", flush=True)
    return ts


def check_loadable(sd: Dict[str, Any], ckpt: str, plan: Optional[Dict[str, Any]] = None) -> None:
    """Fail with the checkpoint directory and the tensor key named when the checkpoint lacks a
    tensor this run needs or stores it with another global shape (megatron-core would fail
    later, inside torch.distributed.checkpoint, without saying which checkpoint)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    check_storage_complete(ckpt)
    meta = dist_checkpointing.load_tensors_metadata(ckpt)
    missing, shapes = [], []
    for v in nested_values(sd):
        # Plain ShardedTensors only: a ShardedTensorFactory may store its pieces under keys of
        # its own making (megatron-core validates those itself).
        if not isinstance(v, ShardedTensor):
            continue
        if v.key not in meta:
            missing.append(v.key)
        elif (not v.allow_shape_mismatch and tuple(meta[v.key].global_shape) != tuple(v.global_shape)):
            shapes.append(f"{v.key}: checkpoint {tuple(meta[v.key].global_shape)}, this run "
                          f"{tuple(v.global_shape)}")
    if shapes:
        raise CheckpointError(f"{ckpt}: tensor shapes differ from this run's model (model config "
                              f"changed?): {shapes[0]}" + (f" (+{len(shapes) - 1} more)" if len(shapes) > 1 else ""))
    if missing:
        missing = sorted(set(missing))
        only_optim = all(k.startswith("optimizer.") for k in missing)
        hint = ("only optimizer state is missing: resume with --no-load-optim to load the weights "
                "and restart the optimizer" if only_optim else
                "the model differs from the checkpoint's (see its config.yaml)")
        if plan is not None and only_optim:
            hint += f" (saved optimizer: {plan['saved_desc']}, this run: {plan['current_desc']})"
        raise CheckpointError(f"{ckpt}: {len(missing)} tensor(s) this run needs are not in the "
                              f"checkpoint, first: {missing[0]!r}; {hint}")


def _load_model(model, loaded: Dict[str, Any], ckpt: str) -> None:
    """Strict state-dict load of every chunk, except that a module keeps its own
    ``_extra_state`` where the checkpoint has none (megatron_ar.checkpoint.extra_state)."""
    from megatron_ar.models.builder import unwrap

    model = unwrap(model)
    names = ["model"] if len(model) == 1 else [f"model{i}" for i in range(len(model))]
    for name, m in zip(names, model):
        load_module_state(m, loaded[name], where=f"{ckpt} ({name})")


def load_weights(model: List[torch.nn.Module], path: str) -> str:
    """Load only model weights from a dist checkpoint (a training checkpoint or one written by
    the HF->Megatron converter) into ``model`` at any TP/PP. Returns the checkpoint dir."""
    from megatron.core import dist_checkpointing

    ckpt = resolve_checkpoint_dir(path)
    check_storage_complete(ckpt)
    sd = model_sharded_state_dict(model)
    # A converter checkpoint stores the model under "model" (single chunk); our training
    # checkpoints with several virtual chunks use model0..N. Both are keyed by ShardedTensor
    # keys, so the dict nesting only decides where the results land.
    drop_unsaved_extra_state(sd, ckpt)
    loaded = dist_checkpointing.load(sd, ckpt)
    _load_model(model, loaded, ckpt)
    return ckpt

"""Training checkpoints: megatron-core ``dist_checkpointing`` + publish-by-rename + resume state.

Layout of a checkpoint root (``checkpoint.save``)::

    latest_checkpointed_iteration.txt      pointer (Megatron-LM's file name), written last
    iter_0000200/                          one published checkpoint
        metadata.json, *.distcp, common.pt dist_checkpointing: model, optimizer, scheduler
        model_config.json                  the converter's format (export with
                                           tools/checkpoint/convert.py --loader megatron)
        train_state.json                   iteration, consumed samples/tokens, seed, data
                                           position + fingerprint, parallel layout, stateful
                                           callbacks (loss-spike window)
        config.yaml                        the resolved recipe of the run that saved it
        rng/rank_00003.pt                  python/numpy/torch/CUDA + TP-tracker RNG states

Design choices
- Complete or invisible (issue 5 item 4): every rank writes into ``.tmp_iter_XXXXXXX``; after a
  barrier rank 0 renames it to ``iter_XXXXXXX`` (an atomic rename on one file system) and only
  then replaces the pointer file (temp file + ``os.replace``). A crash at any point leaves
  either the previous pointer or the new one, never a pointer to a partial directory; stale
  ``.tmp_*`` directories are removed at the next save.
- Model and optimizer go through ``sharded_state_dict``, so a checkpoint saved at TP=a x PP=b
  loads at TP=c x PP=d and any DP (megatron-core reshards on load). The distributed
  optimizer's state uses the ``fully_reshardable`` format for that reason (its
  ``dp_reshardable`` default only reshards across DP).
- RNG states are per rank files, restored only when the parallel layout is unchanged
  (as in Megatron-LM: a different layout has different RNG streams by construction); the run
  then re-seeds and says so.
- The data position (consumed samples, seed, curriculum fingerprint) is checked on resume: a
  changed dataset or curriculum fails loudly unless the user asks to ignore it.
- Initial weights (continual pretraining / ``--finetune``) load only the model part with
  ``strict`` key checks; no optimizer, scheduler, data or RNG state.
- Two megatron-core 0.16 defects of the distributed optimizer with torch's AdamW (the only
  Adam without TE/Apex, i.e. every CPU run) are worked around here, instance-level and
  documented where they are: loading needs allocated Adam state (``_ensure_optimizer_state``)
  and copies a ``step`` key the reshardable loaders drop (``_patch_step_copy``), and
  ``load_state_dict`` shares one ``step`` tensor between all parameters, which torch then
  increments once per parameter (``_unshare_step_tensors``). Without the last one resume was
  not bit-exact (measured); with it, it is (tests/training/test_train_e2e.py).
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron_ar.training.config import save_config

log = logging.getLogger(__name__)
POINTER = "latest_checkpointed_iteration.txt"


class CheckpointError(RuntimeError):
    pass


def iter_dirname(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def latest_iteration(root: Optional[str]) -> Optional[int]:
    """Iteration named by the pointer file of ``root`` (None if there is none)."""
    if not root:
        return None
    path = os.path.join(root, POINTER)
    if not os.path.isfile(path):
        return None
    text = open(path, encoding="utf-8").read().strip()
    try:
        it = int(text)
    except ValueError as exc:
        raise CheckpointError(f"{path}: expected an iteration number, got {text!r}") from exc
    if not os.path.isdir(os.path.join(root, iter_dirname(it))):
        raise CheckpointError(f"{path}: points to iteration {it} but {iter_dirname(it)} is missing")
    return it


def resolve_checkpoint_dir(path: str) -> str:
    """A checkpoint root (with pointer) or a checkpoint directory itself -> checkpoint dir."""
    if os.path.isfile(os.path.join(path, "metadata.json")):
        return path
    it = latest_iteration(path)
    if it is None:
        raise CheckpointError(f"{path}: neither a dist checkpoint nor a root with {POINTER}")
    return os.path.join(path, iter_dirname(it))


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


_OPT_METADATA = {"distrib_optim_sharding_type": "fully_reshardable",
                 "chained_optim_avoid_prefix": True}


def _full_sharded_state_dict(state, is_loading: bool) -> Dict[str, Any]:
    sd = model_sharded_state_dict(state.model)
    sd["optimizer"] = state.optimizer.sharded_state_dict(sd, is_loading=is_loading,
                                                         metadata=_OPT_METADATA)
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
        # Stateful callbacks (e.g. the loss-spike window); JSON floats round-trip exactly.
        "callbacks": {getattr(cb, "name", type(cb).__name__): _jsonable(cb.state_dict())
                      for cb in state.callbacks if hasattr(cb, "state_dict")},
    }


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
    name = iter_dirname(state.iteration)
    tmp = os.path.join(root, ".tmp_" + name)
    final = os.path.join(root, name)
    rank = _rank()
    if rank == 0:
        os.makedirs(root, exist_ok=True)
        for entry in os.listdir(root):  # leftovers of interrupted saves are never visible
            if entry.startswith(".tmp_"):
                shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
        os.makedirs(tmp)
    _barrier()
    sd = _full_sharded_state_dict(state, is_loading=False)
    dist_checkpointing.save(sd, tmp)
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
    if rank == 0:
        if os.path.isdir(final):  # re-saving an iteration (e.g. after a resume): replace it
            old = os.path.join(root, ".tmp_old_" + name)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        ptmp = os.path.join(root, f".{POINTER}.tmp")
        with open(ptmp, "w", encoding="utf-8") as f:
            f.write(str(state.iteration))
            f.flush()
            os.fsync(f.fileno())
        os.replace(ptmp, os.path.join(root, POINTER))
        keep = state.cfg.checkpoint.keep_last
        if keep:
            prune_checkpoints(root, keep)
    _barrier()
    return final


def list_checkpoints(root: str) -> List[int]:
    out = []
    for entry in os.listdir(root) if os.path.isdir(root) else []:
        if entry.startswith("iter_") and entry[5:].isdigit():
            out.append(int(entry[5:]))
    return sorted(out)


def prune_checkpoints(root: str, keep: int) -> List[int]:
    """Delete all but the newest ``keep`` published checkpoints (never the pointed-to one)."""
    its = list_checkpoints(root)
    latest = latest_iteration(root)
    removed = []
    for it in its[:-keep] if keep < len(its) else []:
        if it == latest:
            continue
        shutil.rmtree(os.path.join(root, iter_dirname(it)), ignore_errors=True)
        removed.append(it)
    return removed


# ----------------------------------------------------------------------------------------------
# load
# ----------------------------------------------------------------------------------------------
def load_checkpoint(state, path: str, ignore_data_change: bool = False) -> Dict[str, Any]:
    """Resume ``state`` from ``path`` (root with pointer or a checkpoint dir). Restores model,
    optimizer (unless ``checkpoint.no_load_optim``), scheduler, iteration, consumed samples,
    data position and (same layout, unless ``no_load_rng``) RNG. Returns train_state.json."""
    from megatron.core import dist_checkpointing

    ckpt = resolve_checkpoint_dir(path)
    with open(os.path.join(ckpt, "train_state.json"), encoding="utf-8") as f:
        ts = json.load(f)
    fp_now = data_fingerprint(state.data)
    if (not ignore_data_change and ts.get("data_fingerprint") is not None and fp_now is not None
            and ts["data_fingerprint"] != fp_now):
        raise CheckpointError(
            f"{ckpt}: the data or curriculum changed since this checkpoint was saved "
            f"(fingerprint {ts['data_fingerprint']} -> {fp_now}); resuming would not continue "
            "the same sample sequence. Restore the data/recipe or start a new run.")
    if ts.get("seed") is not None and ts["seed"] != state.cfg.schedule.seed and not ignore_data_change:
        raise CheckpointError(f"{ckpt}: schedule.seed changed ({ts['seed']} -> "
                              f"{state.cfg.schedule.seed}); the sample order would differ")
    load_optim = not state.cfg.checkpoint.no_load_optim
    if load_optim:
        _ensure_optimizer_state(state.optimizer)
        sd = _full_sharded_state_dict(state, is_loading=True)
    else:
        sd = model_sharded_state_dict(state.model)
        sd["opt_param_scheduler"] = state.scheduler.state_dict()
    loaded = dist_checkpointing.load(sd, ckpt)
    _load_model(state.model, loaded)
    if load_optim:
        state.optimizer.load_state_dict(loaded["optimizer"])
        _unshare_step_tensors(state.optimizer)
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


def _ensure_optimizer_state(optimizer) -> None:
    """The distributed optimizer's ``sharded_state_dict(is_loading=True)`` needs allocated Adam
    state (torch AdamW allocates lazily at the first step; with TE/Apex FusedAdam the step lives
    in the param groups instead). megatron-core's own helper fills it with dummy values that the
    load then overwrites; only the FSDP path calls it, so we do for the non-FSDP one."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if not isinstance(opt, DistributedOptimizer):
            continue
        if len(opt.optimizer.state) == 0:
            opt._init_optimizer_states_with_dummy_values()
        _patch_step_copy(opt)


def _patch_step_copy(opt) -> None:
    """Work around megatron-core 0.16 with torch's AdamW (no TE/Apex FusedAdam, i.e. every CPU
    run): ``DistributedOptimizer._set_main_param_and_optimizer_states`` copies every key of the
    torch per-parameter state, including ``step``, but the fully-reshardable / model-space
    loaders drop ``step`` from the source ("handled separately") -> ``KeyError: 'step'``. We keep
    the destination's own ``step`` (megatron restores the step from the param groups afterwards).
    Instance-level, idempotent; a no-op when the state has no ``step`` key (TE/Apex)."""
    if getattr(opt, "_megatron_ar_step_patch", False):
        return
    orig = opt._set_main_param_and_optimizer_states

    def patched(model_param, tensors):
        gi, go = opt.model_param_group_index_map[model_param]
        main = opt.optimizer.param_groups[gi]["params"][go]
        st = opt.optimizer.state.get(main, {})
        if "step" in st and "step" not in tensors:
            tensors = dict(tensors, step=st["step"])
        return orig(model_param, tensors)

    opt._set_main_param_and_optimizer_states = patched
    opt._megatron_ar_step_patch = True


def _unshare_step_tensors(optimizer) -> None:
    """Work around megatron-core 0.16 ``DistributedOptimizer.load_state_dict`` with torch's
    AdamW: it assigns *one* ``step`` tensor object to every parameter's state; torch increments
    ``state["step"]`` in place once per parameter, so after a resume the shared counter advanced
    by the number of parameters per iteration and Adam's bias correction went wrong (measured:
    the second step after resume differed; with this fix resume is bit-exact). Give every state
    its own copy."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        for st in getattr(inner, "state", {}).values():
            if isinstance(st, dict) and torch.is_tensor(st.get("step")):
                st["step"] = st["step"].clone()


def _load_model(model, loaded: Dict[str, Any], strict: bool = True) -> None:
    from megatron_ar.models.builder import unwrap

    model = unwrap(model)
    if len(model) == 1:
        model[0].load_state_dict(loaded["model"], strict=strict)
    else:
        for i, m in enumerate(model):
            m.load_state_dict(loaded[f"model{i}"], strict=strict)


def load_weights(model: List[torch.nn.Module], path: str, strict: bool = True) -> str:
    """Load only model weights from a dist checkpoint (a training checkpoint or one written by
    the HF->Megatron converter) into ``model`` at any TP/PP. Returns the checkpoint dir."""
    from megatron.core import dist_checkpointing

    ckpt = resolve_checkpoint_dir(path)
    sd = model_sharded_state_dict(model)
    # A converter checkpoint stores the model under "model" (single chunk); our training
    # checkpoints with several virtual chunks use model0..N. Both are keyed by ShardedTensor
    # keys, so the dict nesting only decides where the results land.
    loaded = dist_checkpointing.load(sd, ckpt)
    _load_model(model, loaded, strict=strict)
    return ckpt

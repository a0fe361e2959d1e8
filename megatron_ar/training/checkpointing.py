"""Training checkpoints: megatron-core ``dist_checkpointing`` + publish-by-rename + resume state.

Layout of a checkpoint root (``checkpoint.save``)::

    latest_checkpointed_iteration.txt      pointer (Megatron-LM's file name), written last
    iter_0000200/                          one published checkpoint
        metadata.json, *.distcp, common.pt dist_checkpointing: model, optimizer, scheduler
        model_config.json                  the converter's format (export with
                                           tools/checkpoint/convert.py --loader megatron)
        train_state.json                   iteration, consumed samples/tokens, seed, data
                                           position + fingerprint, parallel layout, optimizer
                                           format (distributed or not, bf16), stateful
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
- The distributed optimizer can be switched on or off between save and resume (and the layout
  changed at the same time), as a Megatron-LM user expects. Both formats already share the
  tensor keys megatron-core gives them (``optimizer.state.{exp_avg,exp_avg_sq}.<param key>``
  from ``optim_state_to_sharding_state`` and from the distributed optimizer's
  ``fully_reshardable`` model-space form); they differ only in the master-weight key
  (``param`` vs ``fp32_param``; none for plain fp32, where the model weight *is* the master)
  and in the non-tensor part in ``common.pt`` (param groups, where Adam's ``step`` lives). The
  saved format is detected from ``common.pt`` (so checkpoints written before the format was
  recorded in ``train_state.json`` load too); for a switch the run asks megatron-core for its
  *own* format's sharded state dict, renames the master-weight key, lets
  ``dist_checkpointing.load`` reshard, and hands megatron-core's own ``load_state_dict`` a
  state dict in its format (:func:`_convert_optimizer_state`). Nothing is resharded here.
  A switch together with a precision change (``optimizer.bf16``) is refused with the key named.
- Before loading, the requested tensor keys are checked against the checkpoint's metadata so
  that a checkpoint that cannot be resumed fails with its directory and the missing key named
  (and a hint: ``--no-load-optim`` when only optimizer state is missing), not deep inside
  torch.distributed.checkpoint.
- Test hook ``MEGATRON_AR_FAULT_SAVE_SLEEP_S`` (environment): every rank sleeps that many
  seconds after all files of a checkpoint are written and before it is published, so a test
  can kill -9 the job inside the write-then-publish window. Unset in real runs.
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


def _full_sharded_state_dict(state, is_loading: bool, metadata: Optional[Dict[str, Any]] = None
                             ) -> Dict[str, Any]:
    sd = model_sharded_state_dict(state.model)
    sd["optimizer"] = state.optimizer.sharded_state_dict(sd, is_loading=is_loading,
                                                         metadata=metadata or _OPT_METADATA)
    sd["opt_param_scheduler"] = state.scheduler.state_dict()
    return sd


def optimizer_format(state) -> Dict[str, Any]:
    """What a checkpoint of this run's optimizer looks like (recorded in train_state.json)."""
    dist_opt = bool(state.cfg.parallel.use_distributed_optimizer)
    return {"distributed": dist_opt,
            "sharding_type": _OPT_METADATA["distrib_optim_sharding_type"] if dist_opt else None,
            "bf16": bool(state.cfg.optimizer.bf16)}


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
    # content_metadata: how the sharded state dict was built (Megatron-LM stores the same), so
    # other megatron-core based tools can rebuild a matching one.
    dist_checkpointing.save(sd, tmp, content_metadata=dict(_OPT_METADATA))
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
    _fault_sleep_before_publish()
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


FAULT_SAVE_SLEEP_ENV = "MEGATRON_AR_FAULT_SAVE_SLEEP_S"


def _fault_sleep_before_publish() -> None:
    """Test hook (fault injection): with ``MEGATRON_AR_FAULT_SAVE_SLEEP_S`` set, sleep after every
    file of the checkpoint is written and before it is published, so a test can kill -9 the job
    inside that window (tests/training/test_train_resume_variants.py). No effect when unset."""
    val = os.environ.get(FAULT_SAVE_SLEEP_ENV)
    if val:
        import time

        time.sleep(float(val))


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
        plan = _optimizer_load_plan(state, ckpt, ts, common.get("optimizer"))
        _ensure_optimizer_state(state.optimizer)
        sd = _full_sharded_state_dict(state, is_loading=True, metadata=plan["metadata"])
        _prepare_cross_format(state.optimizer, sd["optimizer"], plan)
    else:
        sd = model_sharded_state_dict(state.model)
        sd["opt_param_scheduler"] = state.scheduler.state_dict()
    check_loadable(sd, ckpt, plan)
    loaded = dist_checkpointing.load(sd, ckpt)
    _load_model(state.model, loaded)
    if load_optim:
        osd = loaded["optimizer"]
        if plan["cross"]:
            osd = _convert_optimizer_state(state.optimizer, osd, common["optimizer"], plan, ckpt)
        state.optimizer.load_state_dict(osd)
        _unshare_step_tensors(state.optimizer)
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


# ----------------------------------------------------------------------------------------------
# optimizer formats: distributed optimizer on <-> off
# ----------------------------------------------------------------------------------------------
# Sub-optimizer kinds. megatron-core 0.16 builds a DistributedOptimizer (use_distributed_optimizer),
# a Float16OptimizerWithFloat16Params (bf16/fp16, no distributed optimizer) or an FP32Optimizer,
# one per param-group family, inside a ChainedOptimizer.
DIST, PLAIN_MIXED, PLAIN_FP32 = "distributed", "plain-mixed-precision", "plain-fp32"


def _subs(optimizer) -> List[Any]:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _split(obj, n: int) -> List[Any]:
    """A ChainedOptimizer's (sharded) state dict: the sub-optimizer's own when there is one,
    ``{index: ...}`` otherwise (megatron-core's convention)."""
    if n == 1:
        return [obj]
    return [obj[i] for i in range(n)]


def _join(parts: List[Any]):
    return parts[0] if len(parts) == 1 else {i: p for i, p in enumerate(parts)}


def _current_kind(opt) -> str:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    from megatron.core.optimizer.optimizer import Float16OptimizerWithFloat16Params

    if isinstance(opt, DistributedOptimizer):
        return DIST
    if isinstance(opt, Float16OptimizerWithFloat16Params):
        return PLAIN_MIXED
    return PLAIN_FP32


def _saved_kind(csub, ckpt: str, where: str):
    """Kind (and distributed sharding type) of one saved sub-optimizer from its ``common.pt``
    part: the distributed optimizer stores ``param_state_sharding_type``; the mixed-precision
    optimizer nests torch's state dict under ``optimizer``; the fp32 one *is* torch's."""
    if isinstance(csub, dict):
        if "param_state_sharding_type" in csub:
            return DIST, csub["param_state_sharding_type"]
        if isinstance(csub.get("optimizer"), dict) and "param_groups" in csub["optimizer"]:
            return PLAIN_MIXED, None
        if "param_groups" in csub:
            return PLAIN_FP32, None
    keys = sorted(map(str, csub)) if isinstance(csub, dict) else type(csub).__name__
    raise CheckpointError(f"{ckpt}/common.pt: key {where}: unrecognised optimizer state ({keys}); "
                          "resume with --no-load-optim to load the weights only")


def _saved_bf16(ckpt: str, ts: Dict[str, Any]) -> Optional[bool]:
    fmt = ts.get("optimizer_format") or {}
    if "bf16" in fmt:
        return bool(fmt["bf16"])
    cfg_path = os.path.join(ckpt, "config.yaml")  # checkpoints written before optimizer_format
    if os.path.isfile(cfg_path):
        import yaml

        with open(cfg_path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f) or {}
        return bool((cfg.get("optimizer") or {}).get("bf16", False))
    return None


def _optimizer_load_plan(state, ckpt: str, ts: Dict[str, Any], common_opt) -> Dict[str, Any]:
    """Compare the saved optimizer format with this run's; decide how to load it."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    if common_opt is None:
        raise CheckpointError(f"{ckpt}/common.pt: key 'optimizer' is missing (saved without "
                              "optimizer state?); resume with --no-load-optim to load the weights only")
    subs = _subs(state.optimizer)
    n = len(subs)
    if n > 1 and not (isinstance(common_opt, dict) and set(common_opt) == set(range(n))):
        raise CheckpointError(
            f"{ckpt}/common.pt: key 'optimizer': this run has {n} chained optimizers, the "
            f"checkpoint {len(common_opt) if isinstance(common_opt, dict) else 1}; resume with "
            "--no-load-optim to load the weights only")
    saved = [_saved_kind(c, ckpt, f"optimizer[{i}]" if n > 1 else "optimizer")
             for i, c in enumerate(_split(common_opt, n) if n > 1 else [common_opt])]
    current = [_current_kind(o) for o in subs]
    cross = [(s[0] == DIST) != (c == DIST) for s, c in zip(saved, current)]
    metadata = dict(_OPT_METADATA)
    dist_types = {s[1] for s in saved if s[0] == DIST}
    if any(cross):
        reshardable = DistributedOptimizer.checkpoint_fully_reshardable_formats
        bad = dist_types - set(reshardable)
        if bad:
            raise CheckpointError(
                f"{ckpt}/common.pt: key 'param_state_sharding_type' is {sorted(bad)[0]!r}: that "
                "distributed-optimizer format keeps megatron-core's internal buffer layout and "
                "cannot be loaded without the distributed optimizer; resume with "
                f"--use-distributed-optimizer (formats that switch: {sorted(reshardable)}) or "
                "--no-load-optim")
        saved_bf16 = _saved_bf16(ckpt, ts)
        if saved_bf16 is not None and saved_bf16 != bool(state.cfg.optimizer.bf16):
            raise CheckpointError(
                f"{ckpt}: key optimizer.bf16 changed ({saved_bf16} -> {state.cfg.optimizer.bf16}) "
                "together with parallel.use_distributed_optimizer; switch one at a time, or "
                "resume with --no-load-optim to load the weights only")
    elif len(dist_types) == 1:
        # Same kind on both sides: ask megatron-core for the format that was saved (what
        # Megatron-LM does with the checkpoint's content metadata); it reshards what it can.
        metadata["distrib_optim_sharding_type"] = dist_types.pop()
    desc = lambda kinds: "+".join(kinds)  # noqa: E731
    return {"saved": saved, "current": current, "cross": any(cross), "cross_each": cross,
            "metadata": metadata, "saved_desc": desc([k for k, _ in saved]),
            "current_desc": desc(current)}


def _rename_state_key(osd, old: str, new: str) -> None:
    """``optimizer.state.<old>.<param>`` -> ``optimizer.state.<new>.<param>`` in a sharded state
    dict (the master-weight key: ``param`` for the distributed optimizer, ``fp32_param`` for the
    mixed-precision one)."""
    from dataclasses import replace

    from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace
    from megatron.core.dist_checkpointing.mapping import ShardedBase

    pre_old, pre_new = f"optimizer.state.{old}.", f"optimizer.state.{new}."

    def fn(v):
        if isinstance(v, ShardedBase) and getattr(v, "key", "").startswith(pre_old):
            return replace(v, key=pre_new + v.key[len(pre_old):])
        return v

    dict_list_map_inplace(fn, osd)


def _prepare_cross_format(optimizer, osd, plan) -> None:
    """Point this run's optimizer sharded state dict at the saved tensor names (in place)."""
    if not plan["cross"]:
        return
    subs = _subs(optimizer)
    for sub_sd, (skind, _), ckind, cross in zip(_split(osd, len(subs)), plan["saved"],
                                                plan["current"], plan["cross_each"]):
        if not cross:
            continue
        if ckind == DIST and skind == PLAIN_MIXED:
            _rename_state_key(sub_sd, "param", "fp32_param")
        elif ckind == DIST and skind == PLAIN_FP32:
            # No master copy was saved: the fp32 model weight is the master weight. It is
            # loaded with the model and filled in by _convert_optimizer_state.
            for per_param in sub_sd["param_state"].values():
                per_param.pop("param", None)
        elif ckind == PLAIN_MIXED:  # from the distributed optimizer
            _rename_state_key(sub_sd, "fp32_param", "param")
        # PLAIN_FP32 from DIST: exp_avg/exp_avg_sq keys already match; the saved master copy
        # equals the saved fp32 model weight and is not needed.


def _match_groups(saved_groups: List[dict], current_groups: List[dict], ckpt: str) -> List[dict]:
    """Saved param-group hyper-parameters matched to this run's groups by megatron-core's
    identifying keys (wd_mult, lr_mult, ...); ``params`` are this run's."""
    from megatron.core.optimizer.optimizer import param_group_identifier_keys as ids

    def ident(g):
        return tuple(g[k] if k in g else g.get(f"pre_{k}") for k in ids)

    by_id = {ident(g): g for g in saved_groups}
    out = []
    for g in current_groups:
        sg = by_id.get(ident(g))
        if sg is None:
            raise CheckpointError(
                f"{ckpt}/common.pt: key optimizer param_groups: no saved group with {dict(zip(ids, ident(g)))} "
                f"(saved: {[dict(zip(ids, k)) for k in by_id]}); resume with --no-load-optim")
        out.append({**{k: v for k, v in sg.items() if k not in ("params", "step")}, "params": g["params"]})
    return out


def _group_step(groups: List[dict]):
    steps = {float(g["step"]) for g in groups if g.get("step") is not None}
    return steps.pop() if len(steps) == 1 else None


def _convert_optimizer_state(optimizer, loaded_opt, common_opt, plan, ckpt: str):
    """The loaded tensors (already resharded by dist_checkpointing into this run's layout) plus
    the saved non-tensor state, arranged the way this run's megatron-core optimizer's own
    ``load_state_dict`` expects."""
    from megatron.core.optimizer import distrib_optimizer as mdo

    subs = _subs(optimizer)
    n = len(subs)
    out = []
    for opt, lsub, csub, (skind, _), ckind, cross in zip(
            subs, _split(loaded_opt, n), _split(common_opt, n), plan["saved"], plan["current"],
            plan["cross_each"]):
        if not cross:
            out.append(lsub)
            continue
        if ckind == DIST:
            inner = csub["optimizer"] if skind == PLAIN_MIXED else csub
            step = (inner.get("state") or {}).get("common_step")
            step = float(step) if step is not None else 0.0
            groups = [{k: v for k, v in g.items() if k != "params"} for g in inner["param_groups"]]
            for g in groups:  # the distributed optimizer keeps Adam's step in its param groups
                g["step"] = int(step) if mdo.HAVE_APEX_OR_TE else step
            param_state = lsub["param_state"]
            if skind == PLAIN_FP32:
                # Same iteration order as megatron-core's fully_reshardable state; the freshly
                # loaded (TP-local, model-shaped) fp32 weight is flattened and sliced by it.
                idx = 0
                for buf in opt.buffers:
                    for model_param in buf.param_index_map:
                        param_state[idx]["param"] = model_param.detach()
                        idx += 1
            sd = {"optimizer": {"param_groups": groups}, "param_state": param_state,
                  "param_state_sharding_type": plan["metadata"]["distrib_optim_sharding_type"]}
        else:
            saved_groups = csub["optimizer"]["param_groups"]
            step = _group_step(saved_groups)
            inner_loaded = lsub["optimizer"] if ckind == PLAIN_MIXED else lsub
            state = {k: v for k, v in inner_loaded["state"].items() if k != "common_step"}
            if step is not None:  # megatron-core's shared-step convention (restored per param)
                state["common_step"] = torch.tensor(step, dtype=torch.float32)
            torch_sd = opt.optimizer.state_dict()
            inner = {"state": state,
                     "param_groups": _match_groups(saved_groups, torch_sd["param_groups"], ckpt)}
            sd = inner if ckind == PLAIN_FP32 else {
                "optimizer": inner, "fp32_from_fp16_params": lsub["fp32_from_fp16_params"]}
        if "grad_scaler" in csub and getattr(opt, "grad_scaler", None) is not None:
            sd["grad_scaler"] = csub["grad_scaler"]
        out.append(sd)
    return _join(out)


def check_loadable(sd: Dict[str, Any], ckpt: str, plan: Optional[Dict[str, Any]] = None) -> None:
    """Fail with the checkpoint directory and the tensor key named when the checkpoint lacks a
    tensor this run needs or stores it with another global shape (megatron-core would fail
    later, inside torch.distributed.checkpoint, without saying which checkpoint)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

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

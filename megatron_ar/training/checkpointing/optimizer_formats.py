"""Optimizer checkpoints across formats: the distributed optimizer switched on or off between
save and resume (and the parallel layout changed at the same time), as a Megatron-LM user expects.

Design choices
- Both formats already share the tensor keys megatron-core gives them
  (``optimizer.state.{exp_avg,exp_avg_sq}.<param key>`` from ``optim_state_to_sharding_state``
  and from the distributed optimizer's ``fully_reshardable`` model-space form); they differ only
  in the master-weight key (``param`` vs ``fp32_param``; none for plain fp32, where the model
  weight *is* the master) and in the non-tensor part in ``common.pt`` (param groups, where
  Adam's ``step`` lives). What megatron-core's layouts look like is collected in
  :mod:`megatron_ar.compat.optimizer_state`; this module only decides and rearranges.
- The saved format is detected from ``common.pt`` (so checkpoints written before the format was
  recorded in ``train_state.json`` load too); for a switch the run asks megatron-core for its
  *own* format's sharded state dict, renames the master-weight key, lets
  ``dist_checkpointing.load`` reshard, and hands megatron-core's own ``load_state_dict`` a state
  dict in its format (:func:`convert_optimizer_state`). Nothing is resharded here.
- The distributed optimizer saves the ``fully_reshardable`` format (its ``dp_reshardable``
  default only reshards across DP); a checkpoint in a format tied to megatron-core's internal
  buffer layout cannot switch and is refused with the key named, and so is a switch together
  with a precision change (``optimizer.bf16``).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import torch

from megatron_ar.compat.optimizer_state import (
    DIST,
    PLAIN_FP32,
    PLAIN_MIXED,
    fully_reshardable_formats,
    group_step,
    join_chained,
    model_space_params,
    optimizer_kind,
    param_group_identifier_keys,
    rename_optimizer_state_key,
    saved_optimizer_kind,
    split_chained,
    sub_optimizers,
)
from megatron_ar.training.checkpointing.publish import CheckpointError

#: How the distributed optimizer's sharded state dict is built (saved as the checkpoint's
#: content metadata, as Megatron-LM does).
OPT_METADATA = {"distrib_optim_sharding_type": "fully_reshardable",
                "chained_optim_avoid_prefix": True}

__all__ = ["DIST", "PLAIN_MIXED", "PLAIN_FP32", "OPT_METADATA", "optimizer_format", "saved_kind",
           "optimizer_load_plan", "prepare_cross_format", "convert_optimizer_state"]


def optimizer_format(state) -> Dict[str, Any]:
    """What a checkpoint of this run's optimizer looks like (recorded in train_state.json)."""
    dist_opt = bool(state.cfg.parallel.use_distributed_optimizer)
    return {"distributed": dist_opt,
            "sharding_type": OPT_METADATA["distrib_optim_sharding_type"] if dist_opt else None,
            "bf16": bool(state.cfg.optimizer.bf16)}


def saved_kind(csub, ckpt: str, where: str):
    """Kind (and distributed sharding type) of one saved sub-optimizer from its ``common.pt``
    part: the distributed optimizer stores ``param_state_sharding_type``; the mixed-precision
    optimizer nests torch's state dict under ``optimizer``; the fp32 one *is* torch's."""
    kind = saved_optimizer_kind(csub)
    if kind is not None:
        return kind
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


def optimizer_load_plan(state, ckpt: str, ts: Dict[str, Any], common_opt) -> Dict[str, Any]:
    """Compare the saved optimizer format with this run's; decide how to load it."""
    if common_opt is None:
        raise CheckpointError(f"{ckpt}/common.pt: key 'optimizer' is missing (saved without "
                              "optimizer state?); resume with --no-load-optim to load the weights only")
    subs = sub_optimizers(state.optimizer)
    n = len(subs)
    if n > 1 and not (isinstance(common_opt, dict) and set(common_opt) == set(range(n))):
        raise CheckpointError(
            f"{ckpt}/common.pt: key 'optimizer': this run has {n} chained optimizers, the "
            f"checkpoint {len(common_opt) if isinstance(common_opt, dict) else 1}; resume with "
            "--no-load-optim to load the weights only")
    saved = [saved_kind(c, ckpt, f"optimizer[{i}]" if n > 1 else "optimizer")
             for i, c in enumerate(split_chained(common_opt, n) if n > 1 else [common_opt])]
    current = [optimizer_kind(o) for o in subs]
    cross = [(s[0] == DIST) != (c == DIST) for s, c in zip(saved, current)]
    metadata = dict(OPT_METADATA)
    dist_types = {s[1] for s in saved if s[0] == DIST}
    if any(cross):
        reshardable = fully_reshardable_formats()
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


def prepare_cross_format(optimizer, osd, plan) -> None:
    """Point this run's optimizer sharded state dict at the saved tensor names (in place)."""
    if not plan["cross"]:
        return
    subs = sub_optimizers(optimizer)
    for sub_sd, (skind, _), ckind, cross in zip(split_chained(osd, len(subs)), plan["saved"],
                                                plan["current"], plan["cross_each"]):
        if not cross:
            continue
        if ckind == DIST and skind == PLAIN_MIXED:
            rename_optimizer_state_key(sub_sd, "param", "fp32_param")
        elif ckind == DIST and skind == PLAIN_FP32:
            # No master copy was saved: the fp32 model weight is the master weight. It is
            # loaded with the model and filled in by convert_optimizer_state.
            for per_param in sub_sd["param_state"].values():
                per_param.pop("param", None)
        elif ckind == PLAIN_MIXED:  # from the distributed optimizer
            rename_optimizer_state_key(sub_sd, "fp32_param", "param")
        # PLAIN_FP32 from DIST: exp_avg/exp_avg_sq keys already match; the saved master copy
        # equals the saved fp32 model weight and is not needed.


def _match_groups(saved_groups: List[dict], current_groups: List[dict], ckpt: str) -> List[dict]:
    """Saved param-group hyper-parameters matched to this run's groups by megatron-core's
    identifying keys (wd_mult, lr_mult, ...); ``params`` are this run's."""
    ids = param_group_identifier_keys()

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


def convert_optimizer_state(optimizer, loaded_opt, common_opt, plan, ckpt: str):
    """The loaded tensors (already resharded by dist_checkpointing into this run's layout) plus
    the saved non-tensor state, arranged the way this run's megatron-core optimizer's own
    ``load_state_dict`` expects."""
    subs = sub_optimizers(optimizer)
    n = len(subs)
    out = []
    for opt, lsub, csub, (skind, _), ckind, cross in zip(
            subs, split_chained(loaded_opt, n), split_chained(common_opt, n), plan["saved"],
            plan["current"], plan["cross_each"]):
        if not cross:
            out.append(lsub)
            continue
        if ckind == DIST:
            inner = csub["optimizer"] if skind == PLAIN_MIXED else csub
            step = (inner.get("state") or {}).get("common_step")
            step = float(step) if step is not None else 0.0
            groups = [{k: v for k, v in g.items() if k != "params"} for g in inner["param_groups"]]
            for g in groups:  # the distributed optimizer keeps Adam's step in its param groups
                g["step"] = group_step(step)
            param_state = lsub["param_state"]
            if skind == PLAIN_FP32:
                # Same iteration order as megatron-core's fully_reshardable state; the freshly
                # loaded (TP-local, model-shaped) fp32 weight is flattened and sliced by it.
                for idx, model_param in enumerate(model_space_params(opt)):
                    param_state[idx]["param"] = model_param.detach()
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
    return join_chained(out)

"""The layout of megatron-core optimizer checkpoints, as far as megatron_ar reads or writes it.

megatron-core documents no format for its optimizer state dicts; the distributed/plain format
switch of :mod:`megatron_ar.training.checkpointing.optimizer_formats` depends on the facts
collected here (megatron/core/optimizer/optimizer.py, distrib_optimizer.py,
dist_checkpointing/optimizer.py), all unchanged from 0.16.1 (measured) to 0.19.2 (read):

- a ``ChainedOptimizer`` with one sub-optimizer saves that sub-optimizer's dict; with several,
  ``{index: dict}`` (:func:`split_chained` / :func:`join_chained`);
- in ``common.pt`` the distributed optimizer stores ``param_state_sharding_type`` next to
  ``optimizer.param_groups`` (with Adam's step in every group); the mixed-precision
  ``Float16OptimizerWithFloat16Params`` nests torch's state dict under ``optimizer`` (plus
  ``fp32_from_fp16_params``); the fp32 optimizer *is* torch's state dict; plain optimizers keep
  one shared step as ``state.common_step`` (:func:`saved_optimizer_kind`);
- tensor keys are ``optimizer.state.<name>.<param key>``; the master weight is ``param`` in the
  distributed optimizer's model-space formats and ``fp32_param`` in the mixed-precision one
  (:func:`rename_optimizer_state_key`);
- the ``fully_reshardable`` per-parameter list follows ``buffer.param_index_map`` of every
  buffer in order (:func:`model_space_params`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterator, List, Optional, Tuple

from megatron_ar.compat.optimizer import fused_adam_in_use, sub_optimizers
from megatron_ar.compat.version import upstream_attr

# Sub-optimizer kinds: megatron-core builds a DistributedOptimizer (use_distributed_optimizer),
# a Float16OptimizerWithFloat16Params (bf16/fp16 without it) or an FP32Optimizer, one per
# param-group family, inside a ChainedOptimizer.
DIST, PLAIN_MIXED, PLAIN_FP32 = "distributed", "plain-mixed-precision", "plain-fp32"

__all__ = ["DIST", "PLAIN_MIXED", "PLAIN_FP32", "sub_optimizers", "split_chained", "join_chained",
           "optimizer_kind", "saved_optimizer_kind", "fully_reshardable_formats",
           "param_group_identifier_keys", "group_step", "rename_optimizer_state_key",
           "model_space_params"]


def split_chained(obj, n: int) -> List[Any]:
    """A ChainedOptimizer's (sharded) state dict: the sub-optimizer's own when there is one,
    ``{index: ...}`` otherwise (megatron-core's ``ChainedOptimizer.state_dict`` convention)."""
    if n == 1:
        return [obj]
    return [obj[i] for i in range(n)]


def join_chained(parts: List[Any]):
    """Inverse of :func:`split_chained`."""
    return parts[0] if len(parts) == 1 else {i: p for i, p in enumerate(parts)}


def optimizer_kind(opt) -> str:
    """:data:`DIST`, :data:`PLAIN_MIXED` or :data:`PLAIN_FP32` of one live sub-optimizer (anything
    that is neither a DistributedOptimizer nor a Float16OptimizerWithFloat16Params counts as
    the fp32 one)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    from megatron.core.optimizer.optimizer import Float16OptimizerWithFloat16Params

    if isinstance(opt, DistributedOptimizer):
        return DIST
    if isinstance(opt, Float16OptimizerWithFloat16Params):
        return PLAIN_MIXED
    return PLAIN_FP32


def saved_optimizer_kind(csub) -> Optional[Tuple[str, Optional[str]]]:
    """``(kind, distributed sharding type or None)`` of one saved sub-optimizer from its
    ``common.pt`` part; None when the layout is none of the three."""
    if isinstance(csub, dict):
        if "param_state_sharding_type" in csub:
            return DIST, csub["param_state_sharding_type"]
        if isinstance(csub.get("optimizer"), dict) and "param_groups" in csub["optimizer"]:
            return PLAIN_MIXED, None
        if "param_groups" in csub:
            return PLAIN_FP32, None
    return None


def fully_reshardable_formats() -> List[str]:
    """The distributed-optimizer sharding types whose tensors are model-shaped (loadable
    without the distributed optimizer): ``DistributedOptimizer.checkpoint_fully_reshardable_formats``
    (0.16.1-0.19.2: fully_reshardable, fully_sharded_model_space, fsdp_dtensor)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    return sorted(upstream_attr(DistributedOptimizer, "checkpoint_fully_reshardable_formats",
                                "megatron_ar.compat.optimizer_state.fully_reshardable_formats"))


def param_group_identifier_keys() -> Tuple[str, ...]:
    """The param-group keys megatron-core matches saved groups to live ones by
    (``megatron.core.optimizer.optimizer.param_group_identifier_keys``; 0.16-0.18: wd_mult,
    lr_mult, is_expert_parallel, is_decoupled_lr; 0.19 adds the ``ParamGroupOverride`` keys).
    A key missing from a group counts as its ``pre_<key>`` alias (NeMo) or None, as upstream."""
    from megatron.core.optimizer import optimizer as mopt

    return tuple(upstream_attr(mopt, "param_group_identifier_keys",
                               "megatron_ar.compat.optimizer_state.param_group_identifier_keys"))


def group_step(step: float):
    """Adam's step as the distributed optimizer keeps it in its param groups: an ``int`` with
    TE/Apex FusedAdam, the float torch uses otherwise (``DistributedOptimizer.state_dict``)."""
    return int(step) if fused_adam_in_use() else step


def rename_optimizer_state_key(osd, old: str, new: str) -> None:
    """``optimizer.state.<old>.<param>`` -> ``optimizer.state.<new>.<param>`` for every sharded
    entry of an optimizer sharded state dict, in place (the master-weight key: ``param`` for the
    distributed optimizer, ``fp32_param`` for the mixed-precision one)."""
    from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace
    from megatron.core.dist_checkpointing.mapping import ShardedBase

    pre_old, pre_new = f"optimizer.state.{old}.", f"optimizer.state.{new}."

    def fn(v):
        if isinstance(v, ShardedBase) and getattr(v, "key", "").startswith(pre_old):
            return replace(v, key=pre_new + v.key[len(pre_old):])
        return v

    dict_list_map_inplace(fn, osd)


def model_space_params(opt) -> Iterator[Any]:
    """The model parameters of a DistributedOptimizer in the order of its ``fully_reshardable``
    per-parameter state list (every buffer's ``param_index_map``, in order)."""
    for buf in upstream_attr(opt, "buffers", "megatron_ar.compat.optimizer_state.model_space_params"):
        yield from buf.param_index_map

"""Workarounds for megatron-core's ``DistributedOptimizer`` with torch's Adam/AdamW.

All three concern the distributed optimizer when neither Transformer Engine nor Apex provides
``FusedAdam`` (megatron/core/optimizer/distrib_optimizer.py falls back to ``torch.optim.Adam``
and sets ``HAVE_APEX_OR_TE = False``), i.e. every CPU run. torch's Adam keeps a per-parameter
``step`` tensor in its state (FusedAdam keeps ``step`` in the param groups instead), and
megatron-core's load path does not handle that key consistently. Each function is a no-op where
its defect cannot occur (FusedAdam; plain, non-distributed optimizers), so callers apply them
unconditionally. Version ranges were measured on 0.16.1 and read in the source of 0.17.1,
0.18.2 and 0.19.2; tests/compat/test_optimizer_workarounds.py reproduces each defect with the
workaround left out and fails once upstream fixes it.
"""
from __future__ import annotations

from typing import Any, List

import torch

from megatron_ar.compat.version import upstream_attr

#: The range every workaround below was checked for (see each docstring).
WORKAROUND_RANGE = ((0, 16, 1), (0, 20, 0))
_MARK = "_megatron_ar_step_patch"


def sub_optimizers(optimizer) -> List[Any]:
    """The optimizers inside megatron-core's ``ChainedOptimizer`` (or ``[optimizer]``)."""
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def fused_adam_in_use() -> bool:
    """True when megatron-core's distributed optimizer runs TE/Apex ``FusedAdam`` (Adam's step in
    the param groups, an ``int``), False with torch's Adam (a float step, per-parameter tensors).
    Reads ``megatron.core.optimizer.distrib_optimizer.HAVE_APEX_OR_TE`` (all known versions)."""
    from megatron.core.optimizer import distrib_optimizer as mdo

    return bool(upstream_attr(mdo, "HAVE_APEX_OR_TE", "megatron_ar.compat.optimizer.fused_adam_in_use"))


def init_optimizer_state(opt) -> None:
    """Allocate torch Adam's (lazy) state of a ``DistributedOptimizer`` that never stepped.

    Versions: ``>=0.16.1,<0.20`` (0.19.2: unchanged).
    Why: ``DistributedOptimizer.sharded_state_dict(is_loading=True)`` calls ``self.state_dict()``,
    which with torch's Adam asserts that all per-parameter ``step`` values agree
    (``assert len(steps) == 1``); a fresh optimizer has no state, so the assertion fails
    (megatron/core/optimizer/distrib_optimizer.py ``DistributedOptimizer.state_dict``). Upstream
    fills the state with its private ``_init_optimizer_states_with_dummy_values`` (a zero-grad
    step) only on the ``fsdp_dtensor`` path. We call that same helper; the load overwrites the
    dummy values.
    Without it: resuming a distributed-optimizer checkpoint with torch's Adam fails with a bare
    ``AssertionError`` before anything is read.
    No-op for optimizers that already hold state or are not a ``DistributedOptimizer``.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    if isinstance(opt, DistributedOptimizer) and len(opt.optimizer.state) == 0:
        upstream_attr(opt, "_init_optimizer_states_with_dummy_values",
                      "megatron_ar.compat.optimizer.init_optimizer_state")()


def patch_step_copy(opt) -> None:
    """Let ``DistributedOptimizer._set_main_param_and_optimizer_states`` keep torch Adam's ``step``.

    Versions: ``>=0.16.1,<0.20`` (0.19.2: the copy loop now skips non-tensor values but still
    indexes ``tensors[key]`` for every tensor key of the state, ``step`` included).
    Why: that private method copies every key of the destination's torch per-parameter state,
    including ``step``, from the loaded ``tensors``; but the loaders of the reshardable formats
    (``load_parameter_state_from_fully_reshardable`` / ``_from_fs_model_space``) drop ``step``
    from the source ("Handle torch Adam "step" state separately"). We keep the destination's own
    ``step``; ``load_state_dict`` restores the real step from the param groups afterwards.
    Without it: ``KeyError: 'step'`` on every resume of a ``fully_reshardable`` checkpoint with
    torch's Adam.
    Instance-level (the class is untouched), idempotent, a no-op for non-distributed optimizers
    and for FusedAdam (no ``step`` in the per-parameter state).
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    if not isinstance(opt, DistributedOptimizer) or getattr(opt, _MARK, False):
        return
    orig = upstream_attr(opt, "_set_main_param_and_optimizer_states",
                         "megatron_ar.compat.optimizer.patch_step_copy", ("model_param", "tensors"))

    def patched(model_param, tensors):
        gi, go = opt.model_param_group_index_map[model_param]
        main = opt.optimizer.param_groups[gi]["params"][go]
        st = opt.optimizer.state.get(main, {})
        if "step" in st and "step" not in tensors:
            tensors = dict(tensors, step=st["step"])
        return orig(model_param, tensors)

    opt._set_main_param_and_optimizer_states = patched
    setattr(opt, _MARK, True)


def prepare_for_load(optimizer) -> None:
    """:func:`init_optimizer_state` + :func:`patch_step_copy` on every distributed sub-optimizer:
    what a (chained) optimizer needs before ``sharded_state_dict(is_loading=True)``."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in sub_optimizers(optimizer):
        if not isinstance(opt, DistributedOptimizer):
            continue
        init_optimizer_state(opt)
        patch_step_copy(opt)


def unshare_step_tensors(optimizer) -> None:
    """Give every parameter's torch Adam state its own ``step`` tensor after ``load_state_dict``.

    Versions: ``>=0.16.1,<0.20`` (0.19.2: unchanged, ``s["step"] = step`` with one tensor).
    Why: ``DistributedOptimizer.load_state_dict`` (megatron/core/optimizer/distrib_optimizer.py,
    "Extract 'step', for non-Apex/TE support") assigns *one* ``step`` tensor object to every
    parameter's state, and torch's ``Optimizer.load_state_dict`` keeps ``step`` tensors as they
    are. torch's Adam increments ``state["step"]`` in place once per parameter, so the shared
    counter advances by the number of parameters per iteration.
    Without it: after a resume Adam's bias correction uses a wrong step from the second
    iteration on; resume is not bit-exact (measured on a tiny Llama; with it, it is:
    tests/training/test_train_e2e.py).
    A no-op for states without a tensor ``step`` (FusedAdam); cloning tensors that are
    already distinct changes nothing.
    """
    for opt in sub_optimizers(optimizer):
        inner = getattr(opt, "optimizer", None)
        for st in getattr(inner, "state", {}).values():
            if isinstance(st, dict) and torch.is_tensor(st.get("step")):
                st["step"] = st["step"].clone()

"""``_extra_state`` across module specs: checkpoints that load into local and TE models alike.

Transformer Engine's modules keep non-tensor state (FP8 scaling factors and amax history) that
``torch.nn.Module.get_extra_state`` exposes as ``<module>._extra_state``; megatron-core turns each
into a ``ShardedObject`` (``make_sharded_object_for_checkpoint``: one object per global layer,
saved by the first TP/DP replica). The local spec's linears return ``None`` there and its
attention has none at all. So a checkpoint converted from HF or trained with the local spec
lacks, e.g., ``self_attention.core_attention._extra_state``, which a TE model's ``state_dict``
lists; loading it into a TE model then fails with a missing key (in the strict
``load_state_dict`` for that one, inside torch.distributed.checkpoint for a requested object the
checkpoint does not hold, such as a linear's in a checkpoint written without any).

Choices
- An ``_extra_state`` object the checkpoint does not hold is *dropped from the load request*
  and that module keeps the state it was built with: the state is neither required nor
  fabricated. TE does the same when handed ``None`` (``set_extra_state`` returns early), so a
  freshly built TE module starts its FP8 history as it would in a new run.
- megatron-core's ``TEDotProductAttention.sharded_state_dict`` leaves the attention's FP8 state
  out of dist checkpoints (only a learnable softmax offset is saved) while ``state_dict()``
  lists it, so a strict ``load_state_dict`` would fail on it even for TE's own checkpoints
  (a known-missing key in other megatron-core based trainers too): a missing ``_extra_state``
  key is allowed at ``load_state_dict`` (:func:`load_module_state`), any other missing key is
  not. The attention's amax history therefore restarts after a resume, as in Megatron-LM.
- An ``_extra_state`` object the checkpoint holds is loaded and handed to the module's
  ``set_extra_state`` (TE restores its scaling; the local linears ignore it).
- Objects the checkpoint holds and the model does not ask for (a TE checkpoint loaded into a
  local model) are left unread: megatron-core's default ``StrictHandling.ASSUME_OK_UNEXPECTED``.
- Only keys ending in ``_extra_state`` get this treatment; any other missing tensor or object
  is still an error of the load (its key named).
- The HF converters never read or write ``_extra_state``: FP8 scaling state has no meaning for
  an HF checkpoint, and the converter's key check lists tensors only.
"""
from __future__ import annotations

from typing import Any, Dict, List, Set, Tuple

import torch

EXTRA_STATE_SUFFIX = "_extra_state"


def saved_object_keys(directory: str) -> Set[str]:
    """Unique keys (``key/shard_<offset>_<shape>``) of the ShardedObjects a dist checkpoint
    holds, from its metadata only."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.dist_checkpointing.serialization import load_sharded_metadata

    meta = load_sharded_metadata(directory)
    return {k for k, v in meta.items() if isinstance(v, ShardedObject)}


def _is_extra_state(key: str) -> bool:
    return key.rsplit(".", 1)[-1] == EXTRA_STATE_SUFFIX


def drop_unsaved_extra_state(sharded: Dict[str, Any], directory: str) -> List[str]:
    """Remove from ``sharded`` (a nested sharded state dict, changed in place) every
    ``_extra_state`` ShardedObject that ``directory`` does not hold; returns their state-dict
    paths (``model.decoder.layers.0....``). Collective-safe: every rank reads the same metadata
    and drops the same entries."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    saved = saved_object_keys(directory)
    dropped: List[str] = []

    def walk(d: Dict[str, Any], path: Tuple[str, ...]) -> None:
        for k in list(d):
            v = d[k]
            if isinstance(v, dict):
                walk(v, path + (k,))
            elif (isinstance(v, ShardedObject) and _is_extra_state(v.key)
                  and v.unique_key not in saved):
                del d[k]
                dropped.append(".".join(path + (k,)))

    walk(sharded, ())
    return dropped


def load_module_state(module: torch.nn.Module, state: Dict[str, Any], where: str = "") -> None:
    """``module.load_state_dict(state)`` as strict as torch's ``strict=True`` except that a
    missing ``_extra_state`` key keeps the module's own state: one the checkpoint did not hold
    (:func:`drop_unsaved_extra_state`) or one the module's ``sharded_state_dict`` never asks
    for (megatron-core's ``TEDotProductAttention`` leaves its FP8 state out of dist
    checkpoints unless the softmax offset is learnable, though ``state_dict()`` lists it)."""
    result = module.load_state_dict(state, strict=False)
    missing = sorted(k for k in result.missing_keys if not _is_extra_state(k))
    unexpected = sorted(result.unexpected_keys)
    if missing or unexpected:
        msg: List[str] = []
        if missing:
            msg.append(f"missing key(s) {missing[:5]}" + (f" (+{len(missing) - 5} more)"
                                                          if len(missing) > 5 else ""))
        if unexpected:
            msg.append(f"unexpected key(s) {unexpected[:5]}" + (
                f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else ""))
        raise RuntimeError(f"{where or type(module).__name__}: error(s) loading the state dict: "
                           + "; ".join(msg))

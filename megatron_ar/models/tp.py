"""How tensor parallelism splits each parameter: the one lookup used by in-memory sharding
(:mod:`megatron_ar.models.sharding`) and by the checkpoint converter
(:mod:`megatron_ar.checkpoint.megatron_io`).

Design choices and trade-offs:

* megatron-core's own parameter attributes are the truth: ``tensor_model_parallel`` and
  ``partition_dim`` (``set_tensor_model_parallel_attributes``), which its grad clipping and
  distributed optimizer read too, and which Transformer Engine's layers also set.
* megatron-core 0.16 sets those attributes on a weight only inside its weight initialisers
  (``_initialize_affine_weight_cpu/gpu``), so a model built with
  ``perform_initialization=False`` (the converter's meta-device model) lacks them. For such a
  parameter the split follows from the module class, exactly as the initialiser would have set
  it: ``ColumnParallelLinear`` and ``VocabParallelEmbedding`` split dim 0, the weight of a
  ``RowParallelLinear`` dim 1 (its bias is replicated), anything else is replicated.
* The vocabulary-row parameters (:data:`VOCAB_PARAMS`) are named here once: they are padded to
  Megatron's padded vocabulary and split over TP along their rows.
* megatron-core is imported only when a module-class fallback is needed.
"""
from __future__ import annotations

from typing import Dict, Optional

__all__ = ["VOCAB_PARAMS", "tp_split_axis", "tp_split_axes"]

#: Parameters whose rows are the vocabulary (Megatron pads them to its padded vocab size).
VOCAB_PARAMS = ("embedding.word_embeddings.weight", "output_layer.weight")


def tp_split_axis(param, module=None) -> Optional[int]:
    """The dimension along which TP splits ``param`` (None: replicated on every TP rank).

    ``module`` is the module that owns ``param`` directly; it is consulted only when megatron-core
    has not set ``tensor_model_parallel`` on the parameter (see the module docstring).
    """
    if hasattr(param, "tensor_model_parallel"):
        return int(getattr(param, "partition_dim", 0)) if param.tensor_model_parallel else None
    if module is None:
        return None
    from megatron.core.tensor_parallel.layers import (
        ColumnParallelLinear,
        RowParallelLinear,
        VocabParallelEmbedding,
    )

    if isinstance(module, (VocabParallelEmbedding, ColumnParallelLinear)):
        return 0
    if isinstance(module, RowParallelLinear) and param is module.weight:
        return 1
    return None


def tp_split_axes(model) -> Dict[str, Optional[int]]:
    """Parameter name (as in ``model.named_parameters()``) -> :func:`tp_split_axis`."""
    return {(f"{mname}.{pname}" if mname else pname): tp_split_axis(p, module)
            for mname, module in model.named_modules()
            for pname, p in module.named_parameters(recurse=False)}

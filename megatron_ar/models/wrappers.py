"""The bare model under megatron-core's wrappers (DDP, Float16Module).

Its own module, below the builder, so that the modules the builder composes (encoder, nanochat,
sharding) can reach the bare models without importing the builder back.
"""
from __future__ import annotations

from typing import Iterable, List

import torch
from megatron.core.models.gpt import GPTModel

__all__ = ["unwrap"]


def unwrap(chunks: Iterable[torch.nn.Module]) -> List[torch.nn.Module]:
    """The bare GPTModels under DDP / Float16Module wrappers (each wrapper holds ``.module``)."""
    out = []
    for c in chunks:
        while hasattr(c, "module") and not isinstance(c, GPTModel):
            c = c.module
        out.append(c)
    return out

"""HF transformers <-> megatron-core tensor mapping used by the streaming converter.

Design choices
- There is ONE name table per architecture and it lives with the model:
  :func:`megatron_ar.models.hf.weight_table` (entries: megatron name, HF names, kind ``copy`` /
  ``qkv`` / ``fc1``; documented in ``megatron_ar/models/NAMES.md``). Both conversion directions
  are driven by it through :func:`to_megatron` / :func:`to_hf`, which wrap the model's
  ``entry_to_megatron`` / ``entry_to_hf`` (exact inverses: pure reshapes, concatenations and
  splits, so HF -> Megatron -> HF is bit-identical). This module adds only what is specific to
  checkpoints: Megatron's vocab padding and error messages that name the HF file.
- What the table does not hold is derived, never written twice: megatron shapes and dtypes, the
  dist-checkpoint keys and the TP split axis come from the model built on the meta device
  (:mod:`megatron_ar.checkpoint.megatron_io`, :func:`megatron_ar.models.tp.tp_split_axes`);
  the HF shapes a checkpoint must have are obtained by running :func:`to_hf` on meta tensors
  of those shapes (:func:`expected_hf_shapes`).
- Vocab rows (embedding, untied output layer) are zero-padded to Megatron's padded vocab on
  import and stripped on export. Zero rows give padded logits of exactly 0 (and Gemma-2's tanh
  soft-cap keeps 0 at 0), never a real token's value; training then learns them down, as with
  Megatron-LM's padding.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

from megatron_ar.checkpoint.errors import CheckpointError, UnknownModelTypeError
from megatron_ar.models.config import ModelConfig
from megatron_ar.models.hf import HF_ARCHITECTURES, WeightEntry, entry_to_hf, entry_to_megatron
from megatron_ar.models.hf import weight_table as _weight_table
from megatron_ar.models.tp import VOCAB_PARAMS


def check_model_type(model_type: str) -> None:
    """Raise :class:`UnknownModelTypeError` unless ``model_type`` can be converted."""
    if model_type not in HF_ARCHITECTURES:
        raise UnknownModelTypeError(
            f"unknown model type {model_type!r}; supported: {sorted(HF_ARCHITECTURES)}")


def weight_table(cfg: ModelConfig) -> List[WeightEntry]:
    check_model_type(cfg.family)
    return _weight_table(cfg)


def to_megatron(entry: WeightEntry, tensors: Sequence[torch.Tensor], cfg: ModelConfig,
                padded_vocab: int) -> torch.Tensor:
    """HF tensors of ``entry`` -> the full (TP=1) megatron parameter with padded vocab rows."""
    try:
        out = entry_to_megatron(entry, tensors, cfg)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    if entry.megatron in VOCAB_PARAMS and out.shape[0] != padded_vocab:
        if out.shape[0] > padded_vocab:
            raise CheckpointError(f"{entry.hf[0]}: {out.shape[0]} vocab rows exceed the padded "
                                  f"vocab {padded_vocab}")
        out = torch.cat([out, out.new_zeros((padded_vocab - out.shape[0],) + out.shape[1:])])
    return out


def to_hf(entry: WeightEntry, tensor: torch.Tensor, cfg: ModelConfig) -> Dict[str, torch.Tensor]:
    """Full (TP=1) megatron parameter -> {HF name: tensor}, vocab padding stripped."""
    if entry.megatron in VOCAB_PARAMS:
        tensor = tensor[: cfg.vocab_size]
    try:
        return entry_to_hf(entry, tensor, cfg)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc


def expected_hf_shapes(entry: WeightEntry, megatron_shape: Tuple[int, ...],
                       cfg: ModelConfig) -> Dict[str, Tuple[int, ...]]:
    """HF tensor shapes implied by a megatron parameter shape (``to_hf`` on a meta tensor)."""
    meta = torch.empty(megatron_shape, device="meta")
    return {name: tuple(t.shape) for name, t in to_hf(entry, meta, cfg).items()}

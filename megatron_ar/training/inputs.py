"""Validation of a run's inputs before any work: paths exist, the vocabulary covers the data.

A real run that reads a missing validation set, or a dataset whose token ids do not fit the
model's embedding, used to fail after process groups, model and optimizer were built (an
``IndexError`` at step 0 on every rank). :func:`input_problems` finds those before anything is
built; the train entry refuses the run with all of them listed, and ``--dry-run`` prints them.

Choices
- Every path the recipe reads is checked: ``model.tokenizer``, ``checkpoint.pretrained_checkpoint``,
  the curriculum's datasets and ``eval.valid_sets`` (``.bin`` and ``.idx``), ``eval.mc_tasks``.
- Vocabulary: the tokenizer's size (added tokens included) must not exceed ``vocab_size`` of
  the model, and the largest token id of every dataset must be below the *padded* vocabulary at
  the run's TP (Megatron-LM pads to a multiple of 128 x TP; ids in the padding are trainable
  rows, ids beyond are an out-of-range embedding lookup).
- The largest id costs one pass over each ``.bin``, cached in the curriculum's ``cache_dir``
  (keyed by path, size and mtime), so a 1T-token corpus is read once, not at every launch. A
  ``uint16`` dataset needs no pass when the padded vocabulary is at least 65,536.
"""
from __future__ import annotations

import os
from typing import List, Optional

from megatron_ar.training.config import TrainConfig


def _dataset_missing(prefix: str) -> Optional[str]:
    for ext in (".bin", ".idx"):
        if not os.path.isfile(prefix + ext):
            return prefix + ext
    return None


def tokenizer_size(path: str) -> int:
    """Number of token ids the tokenizer at ``path`` can produce (added tokens included)."""
    from megatron_ar.tokenizers.io import load_tokenizer

    tok = load_tokenizer(path)
    return len(tok) if hasattr(tok, "__len__") else tok.get_vocab_size(with_added_tokens=True)


def input_problems(cfg: TrainConfig, model_config, tp: int, progress: bool = False) -> List[str]:
    """Every problem with the run's inputs, each naming the recipe key (empty list: all good)."""
    import numpy as np

    from megatron_ar.data.indexed import max_token_id, open_dataset

    problems: List[str] = []
    tok = cfg.model.tokenizer
    if tok and not os.path.exists(tok):
        problems.append(f"model.tokenizer: {tok}: not found")
    pre = cfg.checkpoint.pretrained_checkpoint
    if pre and not os.path.exists(pre):
        problems.append(f"checkpoint.pretrained_checkpoint: {pre}: not found")
    datasets = {}
    if cfg.data is not None:
        datasets.update({f"data.datasets.{k}": v for k, v in cfg.data.datasets.items()})
    datasets.update({f"eval.valid_sets.{k}": v for k, v in cfg.eval.valid_sets.items()})
    present = {}
    for key, prefix in datasets.items():
        missing = _dataset_missing(prefix)
        if missing:
            problems.append(f"{key}: {missing}: not found")
        else:
            present[key] = prefix
    for k, path in cfg.eval.mc_tasks.items():
        if not os.path.isfile(path):
            problems.append(f"eval.mc_tasks.{k}: {path}: not found")

    vocab = model_config.vocab_size
    padded = model_config.padded_vocab_size(tp)
    if tok and os.path.exists(tok):
        try:
            n = tokenizer_size(tok)
        except (OSError, ValueError) as exc:
            problems.append(f"model.tokenizer: {tok}: cannot be loaded ({exc})")
        else:
            if n > vocab:
                problems.append(f"model.tokenizer: {tok} has {n:,} tokens but the model's "
                                f"vocab_size is {vocab:,}: ids >= {vocab:,} have no embedding")
    cache_dir = cfg.data.cache_dir if cfg.data is not None else None
    for key, prefix in present.items():
        try:
            dtype = np.dtype(open_dataset(prefix).index.dtype)
            if np.issubdtype(dtype, np.unsignedinteger) and np.iinfo(dtype).max < padded:
                continue  # every id this dtype can hold has an embedding row
            top = max_token_id(prefix, cache_dir=cache_dir, progress=progress)
        except (OSError, ValueError) as exc:
            problems.append(f"{key}: {prefix}: unreadable dataset ({exc})")
            continue
        if top >= padded:
            problems.append(f"{key}: {prefix}.bin holds token id {top:,}, beyond the model's "
                            f"padded vocabulary of {padded:,} (vocab_size {vocab:,} at TP={tp}): "
                            "built with another tokenizer?")
    return problems

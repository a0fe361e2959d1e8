"""Rewrite the vocabulary rows of a Hugging Face safetensors checkpoint after vocabulary pruning.

Used by :func:`megatron_ar.tokenizers.prune.prune_vocab` (``tools/prune_vocab.py --checkpoint``)
for Fanar Prime (Gemma-2-9B, vocabulary 256,000 -> 128,256; Fanar report section 6.4).

Design choices:
- Streaming, tensor by tensor, through :mod:`megatron_ar.io.safetensors` (the same reader and
  writer as the checkpoint converter). Rows are handled as raw bytes (numpy uint8), so bf16 and
  fp8 need no dtype support and torch is not needed at all; vocabulary-sized tensors are read in
  row chunks so that even the 256,000 x 3,584 Gemma-2-9B embedding is never held whole. Peak
  memory is one non-vocabulary tensor (the largest MLP matrix) or one row chunk, whichever is
  larger -- never a shard, never the model.
- Shards keep their input names and tensor order (``safe_open(...).keys()``) and metadata; the
  index json keeps the source's fields with the new ``total_size`` (and ``total_parameters``
  where the source records it).
- Which tensors are vocabulary rows: those named like an input embedding or LM head
  (``embed_tokens``, ``lm_head``, ``wte``, ``word_embeddings``, ``embed_out``, ``output``) whose
  first dimension is the old vocabulary size. Tied models (Gemma-2 default) have only the
  embedding; untied ones also get the head rewritten. A tensor of that first dimension that
  is *not* so named is an error rather than a silent skip, because leaving it unpruned would
  produce a checkpoint whose shapes disagree with ``config.vocab_size``.
- ``config.json`` gets the new ``vocab_size``; token ids in ``config.json`` and
  ``generation_config.json`` (bos/eos/pad) are remapped through the id map, and an id that
  was pruned away is an error naming the key.
- The caller writes into a temporary directory and renames it on success (nothing
  half-written); this module only fills a directory it is given.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Iterable

import numpy as np

from megatron_ar.io.safetensors import (
    DTYPE_BYTES,
    INDEX_NAME,
    SafetensorsFileWriter,
    SafetensorsReader,
    write_index,
)

__all__ = ["CheckpointPruneError", "prune_checkpoint", "VOCAB_TENSOR_SUFFIXES"]

VOCAB_TENSOR_SUFFIXES = ("embed_tokens", "lm_head", "wte", "word_embeddings", "embed_out", "output")
_ROW_CHUNK_BYTES = 64 << 20  # gather at most ~64 MiB of embedding rows at a time
# token-id keys rewritten through the id map
_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id",
            "decoder_start_token_id")


class CheckpointPruneError(ValueError):
    """A checkpoint that cannot be pruned; the message names the file/key at fault."""


def _is_vocab_tensor(name: str, shape: list[int], old_vocab: int) -> bool:
    if not shape or shape[0] != old_vocab:
        return False
    parts = name.split(".")
    return any(p in VOCAB_TENSOR_SUFFIXES for p in parts[-2:])


def _remap_ids(cfg: dict, id_map: np.ndarray, where: str) -> None:
    for key in _ID_KEYS:
        if key not in cfg or cfg[key] is None:
            continue
        vals = cfg[key] if isinstance(cfg[key], list) else [cfg[key]]
        new = []
        for v in vals:
            if not isinstance(v, int) or not 0 <= v < len(id_map) or id_map[v] < 0:
                raise CheckpointPruneError(f"{where}: {key}={v} is not a kept token id")
            new.append(int(id_map[v]))
        cfg[key] = new if isinstance(cfg[key], list) else new[0]


def prune_checkpoint(src: str, dst: str, id_map: np.ndarray,
                     skip_files: Iterable[str] = (), progress: bool = True) -> dict:
    """Write ``src`` (an HF safetensors checkpoint dir) into existing dir ``dst`` with the
    vocabulary rows kept by ``id_map`` (old id -> new id, -1 dropped; kept ids must map to
    0..N-1 in increasing old-id order). Returns ``{"tensors_pruned", "files", "vocab_size",
    "bytes", "parameters"}``. Files in ``skip_files`` (tokenizer files) are not copied."""
    cfg_path = os.path.join(src, "config.json")
    if not os.path.isfile(cfg_path):
        raise CheckpointPruneError(f"{src}: no config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    old_vocab = cfg.get("vocab_size")
    if old_vocab != len(id_map):
        raise CheckpointPruneError(
            f"{cfg_path}: vocab_size={old_vocab} but the tokenizer has {len(id_map)} tokens")
    keep = np.flatnonzero(id_map >= 0)
    if not np.array_equal(id_map[keep], np.arange(len(keep))):
        raise ValueError("id_map must number kept tokens 0..N-1 in old-id order")
    new_vocab = int(len(keep))

    from tqdm import tqdm

    reader = SafetensorsReader(src, error=CheckpointPruneError)
    pruned: list[str] = []
    weight_map: dict[str, str] = {}
    total_size = total_numel = 0
    for fn in reader.files:
        entries, vocab_names = [], set()
        for name in reader.file_tensors(fn):
            shape, dtype = list(reader.shape(name)), reader.dtype_name(name)
            if shape and shape[0] == old_vocab:
                if not _is_vocab_tensor(name, shape, old_vocab):
                    raise CheckpointPruneError(
                        f"{fn}: tensor {name!r} has first dim {old_vocab} (= vocab_size) but "
                        f"is not a known embedding/LM-head name {VOCAB_TENSOR_SUFFIXES}")
                vocab_names.add(name)
                shape = [new_vocab] + shape[1:]
            entries.append((name, dtype, shape))
        writer = SafetensorsFileWriter(os.path.join(dst, fn), entries, reader.file_metadata(fn),
                                       error=CheckpointPruneError)
        try:
            for name, dtype, shape in tqdm(entries, desc=f"prune {fn}", unit="tensor",
                                           disable=not progress, leave=False):
                writer.begin(name)
                if name in vocab_names:
                    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * DTYPE_BYTES[dtype])
                    chunk = max(1, _ROW_CHUNK_BYTES // row_bytes)
                    for start in range(0, old_vocab, chunk):
                        stop = min(old_vocab, start + chunk)
                        rows = keep[(keep >= start) & (keep < stop)] - start
                        if len(rows):
                            writer.write(reader.read_bytes(name, (start, stop))[rows])
                    pruned.append(name)
                else:
                    writer.write(reader.read_bytes(name))
                writer.end()
                weight_map[name] = fn
            writer.close()
        except BaseException:
            writer.abort()
            raise
        total_size += writer.total_bytes
        total_numel += writer.total_numel
    if not pruned:
        raise CheckpointPruneError(
            f"{src}: no embedding/LM-head tensor with {old_vocab} rows found")
    if reader.index is not None:
        write_index(dst, weight_map, total_size, base=reader.index, total_parameters=total_numel)

    cfg["vocab_size"] = new_vocab
    _remap_ids(cfg, id_map, cfg_path)
    with open(os.path.join(dst, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
    gen_path = os.path.join(src, "generation_config.json")
    if os.path.isfile(gen_path):
        with open(gen_path, encoding="utf-8") as f:
            gen = json.load(f)
        _remap_ids(gen, id_map, gen_path)
        with open(os.path.join(dst, "generation_config.json"), "w", encoding="utf-8") as f:
            json.dump(gen, f, indent=2)
    # anything else (README, chat template, ...) is copied as is; weights/tokenizer are ours
    handled = (set(reader.files) | {INDEX_NAME, "config.json", "generation_config.json"}
               | set(skip_files))
    for fn in sorted(os.listdir(src)):
        p = os.path.join(src, fn)
        if fn in handled or not os.path.isfile(p) or fn.endswith((".bin", ".pt", ".safetensors")):
            continue
        shutil.copy2(p, os.path.join(dst, fn))
    return {"tensors_pruned": sorted(pruned), "files": reader.files, "vocab_size": new_vocab,
            "bytes": total_size, "parameters": total_numel}

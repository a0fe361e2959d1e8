"""Rewrite the vocabulary rows of a Hugging Face safetensors checkpoint after vocabulary pruning.

Used by :func:`megatron_ar.tokenizers.prune.prune_vocab` (``tools/prune_vocab.py --checkpoint``)
for Fanar Prime (Gemma-2-9B, vocabulary 256,000 -> 128,256; Fanar report section 6.4).

Design choices:
- Streaming, tensor by tensor. Tensors are read with ``safetensors.safe_open`` (memory-mapped);
  vocabulary-sized tensors are gathered in row chunks through ``get_slice`` so that even the
  256,000 x 3,584 Gemma-2-9B embedding is never held whole. Peak memory is one non-vocabulary
  tensor (the largest MLP matrix) or one row chunk, whichever is larger -- never a shard, never
  the model.
- ``safetensors`` has no incremental writer (``save_file`` takes every tensor of a file at
  once), so :class:`_StreamingSafetensorsWriter` writes the documented file layout itself: an
  8-byte little-endian header length, the JSON header (dtype, shape, data_offsets; padded with
  spaces to 8 bytes as the reference serializer does), then the raw tensor bytes in header order.
  The output is read back with ``safe_open`` by the tests and by ``transformers``, which is the
  check that the layout is right. Shards keep their input names; the index json is rewritten
  with the new ``total_size``.
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
from typing import Iterable, Optional

import numpy as np

__all__ = ["CheckpointPruneError", "prune_checkpoint", "VOCAB_TENSOR_SUFFIXES"]

VOCAB_TENSOR_SUFFIXES = ("embed_tokens", "lm_head", "wte", "word_embeddings", "embed_out", "output")
_INDEX_NAME = "model.safetensors.index.json"
_SINGLE_NAME = "model.safetensors"
_ROW_CHUNK_BYTES = 64 << 20  # gather at most ~64 MiB of embedding rows at a time
# bytes per element of the safetensors dtype names
_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1,
}
# token-id keys rewritten through the id map
_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id",
            "decoder_start_token_id")


class CheckpointPruneError(ValueError):
    """A checkpoint that cannot be pruned; the message names the file/key at fault."""


class _StreamingSafetensorsWriter:
    """Writes one .safetensors file whose header is known up front, tensor bytes streamed in."""

    def __init__(self, path: str, entries: list[tuple[str, str, list[int]]],
                 metadata: Optional[dict] = None):
        self.path = path
        header: dict = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        offset = 0
        self.total_numel = 0
        self._expected: dict[str, int] = {}
        self._order = []
        for name, dtype, shape in entries:
            if dtype not in _DTYPE_BYTES:
                raise CheckpointPruneError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
            numel = int(np.prod(shape, dtype=np.int64))
            nbytes = numel * _DTYPE_BYTES[dtype]
            self.total_numel += numel
            header[name] = {"dtype": dtype, "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            self._expected[name] = nbytes
            self._order.append(name)
            offset += nbytes
        self.total_bytes = offset
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self._f = open(path, "wb")
        self._f.write(len(raw).to_bytes(8, "little"))
        self._f.write(raw)
        self._next = 0
        self._written = 0

    def begin(self, name: str) -> None:
        if self._next >= len(self._order) or self._order[self._next] != name:
            raise RuntimeError(f"{self.path}: tensors must be written in header order "
                               f"(expected {self._order[self._next:self._next + 1]}, got {name!r})")
        self._cur = name
        self._written = 0

    def write(self, data) -> None:
        mv = memoryview(data).cast("B")
        self._f.write(mv)
        self._written += mv.nbytes

    def end(self) -> None:
        if self._written != self._expected[self._cur]:
            raise RuntimeError(f"{self.path}: tensor {self._cur!r} wrote {self._written} bytes, "
                               f"header says {self._expected[self._cur]}")
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._order):
            raise RuntimeError(f"{self.path}: only {self._next}/{len(self._order)} tensors written")
        self._f.close()


def _tensor_bytes(t) -> np.ndarray:
    # view as raw bytes: works for bf16, which numpy cannot represent
    import torch

    return t.contiguous().reshape(-1).view(torch.uint8).numpy()


def _is_vocab_tensor(name: str, shape: list[int], old_vocab: int) -> bool:
    if not shape or shape[0] != old_vocab:
        return False
    parts = name.split(".")
    return any(p in VOCAB_TENSOR_SUFFIXES for p in parts[-2:])


def _shards(src: str) -> tuple[list[str], Optional[dict]]:
    index_path = os.path.join(src, _INDEX_NAME)
    if os.path.isfile(index_path):
        try:
            with open(index_path, encoding="utf-8") as f:
                index = json.load(f)
            files = sorted(set(index["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise CheckpointPruneError(f"{index_path}: not a safetensors index ({e})") from None
        for fn in files:
            if not os.path.isfile(os.path.join(src, fn)):
                raise CheckpointPruneError(f"{index_path}: shard {fn!r} is missing")
        return files, index
    if os.path.isfile(os.path.join(src, _SINGLE_NAME)):
        return [_SINGLE_NAME], None
    raise CheckpointPruneError(
        f"{src}: no {_SINGLE_NAME} or {_INDEX_NAME} (only safetensors checkpoints are supported)")


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

    import torch
    from safetensors import safe_open
    from tqdm import tqdm

    files, index = _shards(src)
    pruned: list[str] = []
    weight_map: dict[str, str] = {}
    total_size = total_numel = 0
    for fn in files:
        with safe_open(os.path.join(src, fn), framework="pt") as sf:
            names = list(sf.keys())
            # keep the input's byte order of tensors (tidy; makes reads sequential)
            entries, vocab_names = [], set()
            for name in names:
                sl = sf.get_slice(name)
                shape, dtype = list(sl.get_shape()), sl.get_dtype()
                if shape and shape[0] == old_vocab:
                    if not _is_vocab_tensor(name, shape, old_vocab):
                        raise CheckpointPruneError(
                            f"{fn}: tensor {name!r} has first dim {old_vocab} (= vocab_size) but "
                            f"is not a known embedding/LM-head name {VOCAB_TENSOR_SUFFIXES}")
                    vocab_names.add(name)
                    shape = [new_vocab] + shape[1:]
                entries.append((name, dtype, shape))
            writer = _StreamingSafetensorsWriter(os.path.join(dst, fn), entries, sf.metadata())
            for name, dtype, shape in tqdm(entries, desc=f"prune {fn}", unit="tensor",
                                           disable=not progress, leave=False):
                writer.begin(name)
                if name in vocab_names:
                    sl = sf.get_slice(name)
                    row_elems = int(np.prod(shape[1:], dtype=np.int64))
                    row_bytes = max(1, row_elems * _DTYPE_BYTES[dtype])
                    chunk = max(1, _ROW_CHUNK_BYTES // row_bytes)
                    for start in range(0, old_vocab, chunk):
                        stop = min(old_vocab, start + chunk)
                        rows = keep[(keep >= start) & (keep < stop)] - start
                        if len(rows) == 0:
                            continue
                        block = sl[start:stop]
                        writer.write(_tensor_bytes(block[torch.from_numpy(rows)]))
                    pruned.append(name)
                else:
                    writer.write(_tensor_bytes(sf.get_tensor(name)))
                writer.end()
                weight_map[name] = fn
            writer.close()
            total_size += writer.total_bytes
            total_numel += writer.total_numel
    if not pruned:
        raise CheckpointPruneError(
            f"{src}: no embedding/LM-head tensor with {old_vocab} rows found")
    if index is not None:
        new_index = dict(index)
        meta = dict(index.get("metadata") or {}, total_size=total_size)
        if "total_parameters" in meta:  # written by transformers >= 4.5x; would go stale
            meta["total_parameters"] = total_numel
        new_index["metadata"] = meta
        new_index["weight_map"] = weight_map
        with open(os.path.join(dst, _INDEX_NAME), "w", encoding="utf-8") as f:
            json.dump(new_index, f, indent=2)

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
    handled = set(files) | {_INDEX_NAME, "config.json", "generation_config.json"} | set(skip_files)
    for fn in sorted(os.listdir(src)):
        p = os.path.join(src, fn)
        if fn in handled or not os.path.isfile(p) or fn.endswith((".bin", ".pt", ".safetensors")):
            continue
        shutil.copy2(p, os.path.join(dst, fn))
    return {"tensors_pruned": sorted(pruned), "files": files, "vocab_size": new_vocab,
            "bytes": total_size, "parameters": total_numel}

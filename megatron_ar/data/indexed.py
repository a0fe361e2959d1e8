"""Inspecting, merging and dumping Megatron ``.bin/.idx`` indexed datasets.

Library behind ``tools/dataset_info.py``, ``tools/merge_datasets.py`` and
``tools/dump_document.py``.

Design choices (why):

* Everything reads and writes through megatron-core (``IndexedDataset`` with mmap,
  ``IndexedDatasetBuilder.add_index``), so the files stay whatever megatron-core's GPTDataset
  expects; nothing here parses the binary format by hand.
* Statistics come from the index alone (``sequence_lengths``, ``document_indices``): no token
  data is read, so ``dataset_info`` is O(#sequences) even for terabyte ``.bin`` files.
* The tokens-per-document histogram uses log2 buckets ([1,2), [2,4), ...) plus a bucket for
  empty documents: document lengths span five orders of magnitude in web corpora, and fixed-width
  bins would put almost everything in the first bin.
* ``merge_datasets`` refuses mixed dtypes or multimodal mismatches with a message naming the
  offending prefix (megatron-core only asserts) and writes to temporary names renamed on success.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from megatron_ar.io.atomic import publish_files
from megatron_ar.io.outputs import check_file_output, refuse_overlap


def normalize_prefix(path: str, must_exist: bool = True) -> str:
    """Accept ``prefix``, ``prefix.bin`` or ``prefix.idx``; check both files exist (unless
    ``must_exist`` is off: an output prefix)."""
    for ext in (".bin", ".idx"):
        if path.endswith(ext):
            path = path[: -len(ext)]
    for ext in ((".bin", ".idx") if must_exist else ()):
        if not os.path.isfile(path + ext):
            raise FileNotFoundError(f"{path + ext}: no such indexed-dataset file")
    return path


class DatasetFileError(ValueError):
    """A damaged or mismatched ``.bin``/``.idx`` pair; the message names the file and the fault."""


def open_dataset(prefix: str):
    """megatron-core's ``IndexedDataset`` of ``prefix``, after checking that the ``.idx`` parses
    and the ``.bin`` has exactly the bytes it describes (megatron-core would fail later, on the
    first read past a truncation, with no file named)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefix = normalize_prefix(prefix)
    try:
        ds = IndexedDataset(prefix, multimodal=False, mmap=True)
    except Exception as exc:  # megatron-core asserts / numpy / struct errors on a bad .idx
        raise DatasetFileError(f"{prefix}.idx: damaged or not a Megatron index "
                               f"({type(exc).__name__}: {exc})") from None
    index = ds.index
    n = len(index.sequence_lengths)
    itemsize = np.dtype(index.dtype).itemsize
    need = int(index.sequence_pointers[-1]) + int(index.sequence_lengths[-1]) * itemsize if n else 0
    have = os.path.getsize(prefix + ".bin")
    if have != need:
        what = "truncated" if have < need else "longer than its index: a mismatched pair"
        raise DatasetFileError(f"{prefix}.bin: {have:,} bytes but {prefix}.idx describes "
                               f"{need:,} ({what})")
    return ds


def _histogram(doc_tokens: np.ndarray) -> list[dict]:
    out = []
    empty = int((doc_tokens == 0).sum())
    if empty:
        out.append({"range": "0", "lo": 0, "hi": 0, "documents": empty})
    pos = doc_tokens[doc_tokens > 0]
    if len(pos):
        b = np.floor(np.log2(pos)).astype(np.int64)
        counts = np.bincount(b)
        for k, c in enumerate(counts):
            if c:
                lo, hi = 1 << k, (1 << (k + 1)) - 1
                out.append({"range": f"{lo}-{hi}", "lo": lo, "hi": hi, "documents": int(c)})
    return out


def dataset_info(prefix: str) -> dict:
    """Documents, sequences, tokens, bytes and the tokens-per-document histogram of one dataset."""
    prefix = normalize_prefix(prefix)
    ds = open_dataset(prefix)
    seq = np.asarray(ds.sequence_lengths, dtype=np.int64)
    docs = np.asarray(ds.document_indices, dtype=np.int64)
    csum = np.concatenate([[0], np.cumsum(seq)])
    doc_tokens = csum[docs[1:]] - csum[docs[:-1]]
    dtype = np.dtype(ds.index.dtype)
    info = {
        "prefix": prefix,
        "documents": int(len(docs) - 1),
        "sequences": int(len(seq)),
        "tokens": int(seq.sum()),
        "dtype": dtype.name,
        "bin_bytes": os.path.getsize(prefix + ".bin"),
        "idx_bytes": os.path.getsize(prefix + ".idx"),
        "tokens_per_doc": {
            "min": int(doc_tokens.min()) if len(doc_tokens) else 0,
            "mean": float(doc_tokens.mean()) if len(doc_tokens) else 0.0,
            "median": float(np.median(doc_tokens)) if len(doc_tokens) else 0.0,
            "max": int(doc_tokens.max()) if len(doc_tokens) else 0,
        },
        "histogram": _histogram(doc_tokens),
    }
    return info


#: Tokens read per chunk by :func:`max_token_id` (256 MiB of int32).
_SCAN_CHUNK = 64 * 1024 * 1024


def max_token_id(prefix: str, cache_dir: Optional[str] = None, progress: bool = False) -> int:
    """The largest token id in ``prefix.bin`` (-1 for an empty dataset).

    One sequential pass over the ``.bin`` (memory-mapped, in chunks), so a terabyte corpus costs
    one read; with ``cache_dir`` the answer is kept in ``cache_dir/token-ids/`` keyed by the
    absolute path, size and modification time of both files, and later runs read it back.
    """
    import hashlib
    import json

    from megatron_ar.io.atomic import write_json_atomic

    prefix = normalize_prefix(prefix)
    key = []
    for ext in (".bin", ".idx"):
        st = os.stat(prefix + ext)
        key.append(f"{os.path.abspath(prefix + ext)}:{st.st_size}:{st.st_mtime_ns}")
    cache = None
    if cache_dir:
        digest = hashlib.sha256("|".join(key).encode()).hexdigest()[:24]
        cache = os.path.join(cache_dir, "token-ids", f"{os.path.basename(prefix)}-{digest}.json")
        try:
            with open(cache, encoding="utf-8") as f:
                return int(json.load(f)["max_token_id"])
        except (OSError, ValueError, KeyError):
            pass
    dtype = np.dtype(open_dataset(prefix).index.dtype)
    n = os.path.getsize(prefix + ".bin") // dtype.itemsize
    best = -1
    if n:
        data = np.memmap(prefix + ".bin", dtype=dtype, mode="r", shape=(n,))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n, unit="tok", unit_scale=True, desc=f"token ids {os.path.basename(prefix)}")
        for start in range(0, n, _SCAN_CHUNK):
            chunk = data[start:start + _SCAN_CHUNK]
            best = max(best, int(chunk.max()))
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        del data
    if cache is not None:
        write_json_atomic(cache, {"prefix": os.path.abspath(prefix), "key": key,
                                  "max_token_id": best})
    return best


def datasets_info(prefixes: Sequence[str]) -> dict:
    """Per-prefix info plus totals (documents, sequences, tokens, bytes) over all prefixes."""
    per = [dataset_info(p) for p in prefixes]
    total = {k: sum(d[k] for d in per) for k in ("documents", "sequences", "tokens",
                                                 "bin_bytes", "idx_bytes")}
    total["bytes"] = total["bin_bytes"] + total["idx_bytes"]
    return {"datasets": per, "total": total}


def merge_datasets(prefixes: Sequence[str], output_prefix: str, overwrite: bool = False) -> dict:
    """Concatenate datasets in the given order with megatron-core's ``add_index``."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    if not prefixes:
        raise ValueError("merge_datasets: no input prefix")
    prefixes = [normalize_prefix(p) for p in prefixes]
    output_prefix = normalize_prefix(output_prefix, must_exist=False)
    refuse_overlap([output_prefix + ".bin", output_prefix + ".idx"],
                   [p + ext for p in prefixes for ext in (".bin", ".idx")], key="--output-prefix")
    for ext in (".bin", ".idx"):
        check_file_output(output_prefix + ext, overwrite=overwrite, key="--output-prefix")
    # Every input opened (and so checked) before anything is written: a truncated input fails
    # here naming itself, not later as a corrupt output.
    dtypes = {p: np.dtype(open_dataset(p).index.dtype) for p in prefixes}
    first = dtypes[prefixes[0]]
    for p, dt in dtypes.items():
        if dt != first:
            raise ValueError(f"{p}: dtype {dt.name} differs from {prefixes[0]} ({first.name}); "
                             "datasets built with different tokenizers cannot be merged")
    with publish_files([output_prefix + ".bin", output_prefix + ".idx"]) as (tb, ti):
        b = IndexedDatasetBuilder(tb, dtype=first.type)
        for p in prefixes:
            b.add_index(p)
        b.finalize(ti)
    info = dataset_info(output_prefix)
    info["inputs"] = list(prefixes)
    return info


def document_tokens(prefix: str, index: int) -> np.ndarray:
    """Token ids of document ``index`` (all its sequences concatenated)."""
    ds = open_dataset(prefix)
    docs = ds.document_indices
    n = len(docs) - 1
    if not -n <= index < n:
        raise IndexError(f"{prefix}: document {index} out of range (dataset has {n} documents)")
    index %= n
    a, b = int(docs[index]), int(docs[index + 1])
    parts = [np.asarray(ds[i]) for i in range(a, b)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=ds.index.dtype)


def dump_document(prefix: str, index: int, tokenizer=None, *, keep_special: bool = False) -> dict:
    """Document ``index`` as ids and, with a megatron-core tokenizer, detokenized text."""
    ids = document_tokens(prefix, index)
    out = {"prefix": normalize_prefix(prefix), "document": int(index), "tokens": int(len(ids)),
           "ids": ids.tolist()}
    if tokenizer is not None:
        lib = getattr(tokenizer, "_tokenizer", None)
        if keep_special and lib is not None and hasattr(lib, "ids_to_text"):
            try:
                out["text"] = lib.ids_to_text(ids.tolist(), remove_special_tokens=False)
            except TypeError:
                out["text"] = tokenizer.detokenize(ids.tolist())
        else:
            out["text"] = tokenizer.detokenize(ids.tolist())
    return out


def tokenizer_from_flags(tokenizer_type: str, tokenizer_model: Optional[str],
                         vocab_file: Optional[str] = None, merge_file: Optional[str] = None):
    """The megatron-core tokenizer preprocess_data.py would build from these flags."""
    from megatron_ar.data.preprocess import PreprocessConfig, build_tokenizer

    cfg = PreprocessConfig(input=["-"], output_prefix="-", tokenizer_type=tokenizer_type,
                           tokenizer_model=tokenizer_model, vocab_file=vocab_file,
                           merge_file=merge_file)
    return build_tokenizer(cfg)

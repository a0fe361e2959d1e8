"""Exact, URL and MinHash-LSH near deduplication of JSONL corpora.

The heavy lifting (hashing, MinHash signatures, LSH band keys, union-find clustering) is the C++
extension ``megatron_ar._ext.dedup`` (csrc/dedup/dedup.cpp, multi-threaded). This module is the
library around it: text normalisation, the bit-identical numpy fallback used only when the
extension is not built, and the streaming two-pass file pipeline behind ``tools/dedup.py``.

Design choices (why):

* **Fanar's parameters as defaults** (Fanar report, section 4): 8-gram shingles, 12 bands x 11
  rows = 132 permutations, which puts the LSH threshold (1/b)^(1/r) at about 0.80. The report does
  not say whether its 8-grams are words or characters; we default to **word** 8-grams, as in the
  datatrove / RefinedWeb MinHash pipelines those parameters come from (character 8-grams, about
  eight times more shingles per document, are ``shingle="char"``). A document shorter than n
  units yields one shingle of all its units so short texts still deduplicate.
* **datasketch-comparable semantics.** A shingle is exactly what a datasketch user feeds
  ``MinHash.update``: ``" ".join(words[i:i+n])`` (words split like ``str.split()``) or
  ``text[i:i+n]``; only the 64-bit shingle hash and the permutation family differ (see the C++
  header comment). Tests compare the Jaccard estimate with the exact Jaccard of those sets, and
  the benchmark runs datasketch's MinHashLSH on the same shingles and (bands, rows).
* **Normalisation before hashing**: :mod:`megatron_ar.text.normalize` with its
  ``matching_key`` preset (tashkeel, tatweel, NFKC presentation forms, zero-width/bidi controls,
  plus the lossy alef / yeh / teh-marbuta / Persian-letter / digit folding that is wrong for
  training text but right for comparison keys; ``normalize=False`` turns only this off), then
  always ``casefold`` and whitespace collapsing, so copies differing only in diacritics,
  spelling variants, case or spacing are exact duplicates. The same normalised text feeds the
  MinHash shingles. Output records are written unchanged.
* **One union-find for every mode.** ``exact`` (64-bit hash of the normalised text), ``url``
  (64-bit hash of the normalised URL from ``metadata.url`` or top-level ``url``) and ``minhash``
  (12 band keys) are just key columns; documents sharing a key in any column are one cluster,
  and its first document in input order is kept (so ``--input a b`` prefers dataset ``a``:
  cross-dataset dedup is ordering the inputs by priority). LSH candidates are not re-verified
  against the signature; this is what Fanar/datatrove do, and at J = 0.6 the banding gives a
  4% candidate rate (tests check <= 5%).
* **Memory-bounded streaming**: pass 1 keeps only the key columns (8 x (12 + 2) bytes per
  document, never texts); pass 2 re-reads the inputs and streams kept records out. Pass 1 runs
  per input shard through :func:`megatron_ar.io.shards.run_shards` (processes, progress,
  resume: finished shards leave ``.npy`` key files in the work directory). 64-bit keys make
  accidental collisions negligible (about n^2 / 2^65: < 3% for 10^9 documents, per column).
* **Two stages at cluster scale** (``stage=``): ``"keys"`` is pass 1 alone, run as a job array
  (``shard=``, :class:`megatron_ar.io.shards.ShardSpec`; each task hashes its contiguous range
  of the sorted inputs into the shared work folder, with done markers); ``"cluster"`` runs on
  one node from the key files only (union-find over the concatenated key columns) and then
  streams the kept records (pass 2) or, at corpus scale, saves the kept set (one byte per
  document) for ``"write"``, a job array writing each input's kept records to a file of its
  name (the files concatenated in input order are the one-file output). The key files are per input and concatenated in input
  order, so the kept set is the one-pass run's whatever the sharding. Stage 2 holds the key
  columns, the roots, the per-mode clusterings and the kept mask in memory, never texts: peak
  RSS grows by about 265 bytes per document with all modes (measured by
  ``benchmarks/data_pipeline.py --dedup-memory``: 40k -> 200k documents, +41 MiB), so 10^9
  documents need a node with about 250 GiB. It checks every
  input's key file was made from that input (size, mtime) with the same options first.
* **Fallback**: when the extension is missing, the same hashes are computed with Python ints and
  numpy (about 100x slower); ``backend="python"`` forces it so tests can compare both.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Optional, Sequence

import numpy as np

from megatron_ar.io.atomic import atomic_output
from megatron_ar.io.outputs import OutputError, check_file_output, refuse_overlap
from megatron_ar.io.records import ErrorStats, dump_record, expand_inputs, iter_records
from megatron_ar.io.shards import ShardRunner, ShardTask, run_shards
from megatron_ar.io.summary import merge_summaries

from megatron_ar import _ext as _extensions

# The compiled extension (None when not built); the numpy fallback below mirrors it bit for bit.
_ext = _extensions.load("dedup")

MODES = ("exact", "minhash", "url", "all")
_M64 = (1 << 64) - 1
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


@dataclasses.dataclass
class DedupConfig:
    """Options of a deduplication run (field names match ``tools/dedup.py`` flags)."""

    mode: str = "all"
    ngram: int = 8
    bands: int = 12
    rows: int = 11
    shingle: str = "word"
    seed: int = 1
    normalize: bool = True
    text_key: str = "text"
    id_key: str = "id"
    url_key: str = "url"
    threads: int = 0
    batch_size: int = 2048
    backend: str = "auto"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"DedupConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.shingle not in ("word", "char"):
            raise ValueError(f"DedupConfig.shingle must be 'word' or 'char', got {self.shingle!r}")
        for name in ("ngram", "bands", "rows", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DedupConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.backend not in ("auto", "cpp", "python"):
            raise ValueError(f"DedupConfig.backend must be auto|cpp|python, got {self.backend!r}")
        if self.backend == "cpp" and _ext is None:
            raise ValueError("DedupConfig.backend='cpp' but megatron_ar._ext.dedup is not built "
                             "(run `pip install --no-build-isolation -e .`)")

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    @property
    def threshold(self) -> float:
        """Jaccard at which a pair becomes a candidate with probability ~ 1/2 ... (1/b)^(1/r)."""
        return (1.0 / self.bands) ** (1.0 / self.rows)

    def modes(self) -> tuple[str, ...]:
        return ("exact", "url", "minhash") if self.mode == "all" else (self.mode,)

    def use_cpp(self) -> bool:
        if _ext is None and self.backend == "auto":
            _extensions.warn_fallback("dedup", "deduplication runs the numpy fallback, about 100x slower")
        return _ext is not None and self.backend != "python"


def have_extension() -> bool:
    return _ext is not None


# --------------------------------------------------------------------------- normalisation

_NORMALIZER = None


def _arabic_normalizer():
    """megatron_ar.text.normalize's matching-key folding: Fanar's defaults plus alef /
    alef maqsura / teh marbuta / Persian-letter unification, ASCII digits, whitespace."""
    global _NORMALIZER
    if _NORMALIZER is None:
        from megatron_ar.text.normalize import ArabicNormalizeConfig, build_normalizer

        _NORMALIZER = build_normalizer(ArabicNormalizeConfig.matching_key())
    return _NORMALIZER


def dedup_normalize(text: str, _norm=None, arabic: bool = True) -> str:
    """Text as hashed for dedup: Arabic-normalised (unless ``arabic=False``), casefolded,
    whitespace collapsed."""
    if arabic:
        text = (_norm or _arabic_normalizer())(text)
    return " ".join(text.casefold().split())  # str.split: C speed, ~30x a \s+ regex


def normalize_url(url: str) -> str:
    """Lower-case scheme and host, drop the fragment, a default port and a trailing slash."""
    from urllib.parse import urlsplit, urlunsplit

    u = url.strip()
    try:
        p = urlsplit(u)
        port = p.port
    except ValueError:  # malformed URL or port: compare it verbatim
        return u
    host = (p.hostname or "").lower()
    if port and not ((p.scheme == "http" and p.port == 80) or (p.scheme == "https" and p.port == 443)):
        host = f"{host}:{p.port}"
    path = p.path.rstrip("/") or ""
    return urlunsplit((p.scheme.lower(), host, path, p.query, ""))


def record_url(rec: dict, key: str = "url") -> Optional[str]:
    meta = rec.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get(key), str) and meta[key].strip():
        return meta[key]
    v = rec.get(key)
    return v if isinstance(v, str) and v.strip() else None


# --------------------------------------------------------------------------- numpy fallback


def _fmix64(x: int) -> int:
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _M64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & _M64
    return x ^ (x >> 33)


def _fmix64_np(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


def _bytes_hash(data: bytes) -> int:
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _M64
    return _fmix64(h) or 1


def _perm_params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    st = seed & _M64
    xs, as_ = [], []

    def nxt() -> int:
        nonlocal st
        st = (st + 0x9E3779B97F4A7C15) & _M64
        z = st
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        return z ^ (z >> 31)

    for _ in range(num_perm):
        xs.append(nxt())
        as_.append(nxt() | 1)
    return np.array(xs, dtype=np.uint64), np.array(as_, dtype=np.uint64)


def _units_py(text: str, word: bool) -> np.ndarray:
    if not word:
        return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    return np.array([_bytes_hash(w.encode("utf-8")) for w in text.split()], dtype=np.uint64)


def _shingles_np(units: np.ndarray, ngram: int) -> np.ndarray:
    m = len(units)
    if m == 0:
        return units
    n = min(m, ngram)
    cnt = m - n + 1
    h = np.full(cnt, _FNV_OFFSET, dtype=np.uint64)
    prime = np.uint64(_FNV_PRIME)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = (h ^ units[k:k + cnt]) * prime
        return _fmix64_np(h)


def _signatures_py(texts: Sequence[str], ngram: int, num_perm: int, word: bool, seed: int):
    xs, as_ = _perm_params(num_perm, seed)
    out = np.full((len(texts), num_perm), np.uint64(_M64), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i, t in enumerate(texts):
            sh = _shingles_np(_units_py(t, word), ngram)
            if len(sh):
                out[i] = ((sh[None, :] ^ xs[:, None]) * as_[:, None]).min(axis=1)
    return out


def _bands_from_signatures_py(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    n = sig.shape[0]
    keys = np.empty((n, bands), dtype=np.uint64)
    prime = np.uint64(_FNV_PRIME)
    with np.errstate(over="ignore"):
        for b in range(bands):
            h = np.full(n, (_FNV_OFFSET ^ (((b + 1) * 0x9E3779B97F4A7C15) & _M64)), dtype=np.uint64)
            for r in range(rows):
                h = (h ^ sig[:, b * rows + r]) * prime
            h = _fmix64_np(h)
            h[h == 0] = 1
            keys[:, b] = h
    keys[(sig == np.uint64(_M64)).all(axis=1)] = 0
    return keys


def _cluster_py(keys: np.ndarray) -> np.ndarray:
    n = keys.shape[0]
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for c in range(keys.shape[1]):
        col = keys[:, c]
        order = np.argsort(col, kind="stable")
        s = col[order]
        same = np.nonzero((s[1:] == s[:-1]) & (s[1:] != 0))[0]
        for j in same:
            a, b = find(int(order[j])), find(int(order[j + 1]))
            if a != b:
                parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


# --------------------------------------------------------------------------- public kernels


def hash_texts(texts: Sequence[str], cfg: Optional[DedupConfig] = None) -> np.ndarray:
    """64-bit hash of each text's UTF-8 bytes (texts are hashed as given: normalise first)."""
    cfg = cfg or DedupConfig()
    texts = list(texts)
    if cfg.use_cpp():
        return _ext.hash_texts(texts, cfg.threads)
    return np.array([_bytes_hash(t.encode("utf-8")) for t in texts], dtype=np.uint64)


def minhash_signatures(texts: Sequence[str], cfg: Optional[DedupConfig] = None) -> np.ndarray:
    """MinHash signatures (n, bands*rows) uint64 of already-normalised texts."""
    cfg = cfg or DedupConfig()
    texts = list(texts)
    word = cfg.shingle == "word"
    if cfg.use_cpp():
        return _ext.signatures(texts, cfg.ngram, cfg.num_perm, word, cfg.seed, cfg.threads)
    return _signatures_py(texts, cfg.ngram, cfg.num_perm, word, cfg.seed)


def band_keys(texts: Sequence[str], cfg: Optional[DedupConfig] = None) -> np.ndarray:
    """LSH band keys (n, bands) uint64 of already-normalised texts; 0 for empty texts."""
    cfg = cfg or DedupConfig()
    texts = list(texts)
    if cfg.use_cpp():
        return _ext.band_keys(texts, cfg.ngram, cfg.bands, cfg.rows, cfg.shingle == "word",
                              cfg.seed, cfg.threads)
    sig = _signatures_py(texts, cfg.ngram, cfg.num_perm, cfg.shingle == "word", cfg.seed)
    return _bands_from_signatures_py(sig, cfg.bands, cfg.rows)


def cluster(keys: np.ndarray, cfg: Optional[DedupConfig] = None) -> np.ndarray:
    """Root (smallest index) of each document's cluster, joining documents that share any
    non-zero key in any column of ``keys`` (n, k)."""
    cfg = cfg or DedupConfig()
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    if keys.ndim == 1:
        keys = keys[:, None]
    if keys.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    if cfg.use_cpp():
        return _ext.cluster(keys, cfg.threads)
    return _cluster_py(keys)


def shingle_set(text: str, ngram: int = 8, shingle: str = "word") -> set:
    """The exact shingle set MinHash estimates Jaccard over (for tests and datasketch input)."""
    if shingle == "char":
        if not text:
            return set()
        n = min(ngram, len(text))
        return {text[i:i + n] for i in range(len(text) - n + 1)}
    w = text.split()
    if not w:
        return set()
    n = min(ngram, len(w))
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


def record_keys(texts: Sequence[str], urls: Optional[Sequence[Optional[str]]],
                cfg: DedupConfig) -> np.ndarray:
    """Key columns of a batch: [exact] [url] [band keys...] in that order, per cfg.modes()."""
    norm = _arabic_normalizer() if cfg.normalize else None
    ntexts = [dedup_normalize(t, norm, cfg.normalize) for t in texts]
    cols = []
    modes = cfg.modes()
    if "exact" in modes:
        cols.append(hash_texts(ntexts, cfg)[:, None])
    if "url" in modes:
        urls = list(urls) if urls is not None else [None] * len(ntexts)
        present = [normalize_url(u) if u else "" for u in urls]
        h = hash_texts(present, cfg)
        h[np.array([not u for u in present], dtype=bool)] = 0
        cols.append(h[:, None])
    if "minhash" in modes:
        cols.append(band_keys(ntexts, cfg))
    if not cols:
        return np.zeros((len(ntexts), 0), dtype=np.uint64)
    return np.ascontiguousarray(np.concatenate(cols, axis=1))


def mode_columns(cfg: DedupConfig) -> dict[str, slice]:
    out, at = {}, 0
    for m in ("exact", "url", "minhash"):
        if m in cfg.modes():
            w = cfg.bands if m == "minhash" else 1
            out[m] = slice(at, at + w)
            at += w
    return out


def dedup_texts(texts: Sequence[str], cfg: Optional[DedupConfig] = None,
                urls: Optional[Sequence[Optional[str]]] = None) -> np.ndarray:
    """In-memory dedup: cluster roots (root == index means kept)."""
    cfg = cfg or DedupConfig()
    return cluster(record_keys(texts, urls, cfg), cfg)


# --------------------------------------------------------------------------- file pipeline


def _record_id(rec: dict, path: str, line_no: int, id_key: str):
    v = rec.get(id_key)
    return v if isinstance(v, (str, int)) and not isinstance(v, bool) else f"{path}:{line_no}"


def _keys_shard(task: ShardTask) -> dict:
    """Pass 1 over one input file: key columns saved as ``{name}.keys.npy``."""
    cfg: DedupConfig = task.options
    stats = ErrorStats()
    parts, texts, urls = [], [], []
    n, nbytes = 0, 0

    def flush():
        if texts:
            parts.append(record_keys(texts, urls, cfg))
            texts.clear()
            urls.clear()

    for _, rec in iter_records(task.input_path, required_keys=(cfg.text_key,),
                               on_error=task.on_error, stats=stats, progress=task.report):
        t = rec[cfg.text_key]
        if not isinstance(t, str):
            t = str(t)
        texts.append(t)
        urls.append(record_url(rec, cfg.url_key))
        n += 1
        nbytes += len(t.encode("utf-8"))
        if len(texts) >= cfg.batch_size:
            flush()
    flush()
    width = sum(s.stop - s.start for s in mode_columns(cfg).values())
    keys = np.concatenate(parts) if parts else np.zeros((0, width), dtype=np.uint64)
    with atomic_output(task.output_path(".keys.npy"), "wb") as f:
        np.save(f, keys)
    return {"docs_in": n, "bytes_in": nbytes, "errors": stats.as_dict(),
            "keys_options": _keys_options(cfg)}


def _keys_options(cfg: DedupConfig) -> str:
    """What the key columns depend on (threads and batch size do not change them)."""
    d = dataclasses.asdict(dataclasses.replace(cfg, threads=0, batch_size=1, backend="auto"))
    return json.dumps(d, sort_keys=True)


def _load_keys(paths: Sequence[str], work_dir: str, cfg: DedupConfig) -> tuple[np.ndarray, dict]:
    """Stage 2's input: every input's key file, checked against its done marker (made from this
    input, size and mtime, with these options), concatenated in input order."""
    from megatron_ar.io.shards import _fingerprint

    runner = ShardRunner(paths, work_dir, _keys_shard)
    parts, pass1 = [], {}
    want = _keys_options(cfg)
    for t in runner.tasks():
        m = runner._read_marker(t)
        fp = _fingerprint(t.input_path, None)
        old = (m or {}).get("fingerprint") or {}
        why = None
        if m is None:
            why = "no finished key file (run --stage keys over it first)"
        elif any(old.get(k) != fp[k] for k in ("input", "size", "mtime_ns")):
            why = "changed since its key file was made (rerun --stage keys)"
        elif (m.get("summary") or {}).get("keys_options") != want:
            why = "key file made with other options (--mode/--ngram/--bands/... differ)"
        if why:
            raise ValueError(f"--work-dir {work_dir}: input {t.input_path}: {why}")
        parts.append(np.load(t.output_path(".keys.npy")))
        s = dict(m["summary"])
        s.pop("keys_options", None)
        pass1 = merge_summaries(pass1, s)
    return np.concatenate(parts), pass1


KEPT_FILE = "kept.npy"


def _write_shard(task: ShardTask) -> dict:
    """Stage 3 over one input: its records whose kept bit is set, unchanged."""
    o = task.options
    start, count = o["ranges"][task.input_path]
    kept = np.load(os.path.join(o["work_dir"], KEPT_FILE), mmap_mode="r")[start:start + count]
    i = n_out = b_out = 0
    with atomic_output(task.output_path()) as f:
        for _, rec in iter_records(task.input_path, required_keys=(o["text_key"],),
                                   on_error="skip", stats=ErrorStats(), progress=task.report):
            if i >= count:
                raise ValueError(f"{task.input_path}: has more records than when its keys were "
                                 "made (rerun --stage keys and cluster)")
            if kept[i]:
                f.write(dump_record(rec))
                n_out += 1
                b_out += len(rec[o["text_key"]].encode("utf-8"))
            i += 1
    if i != count:
        raise ValueError(f"{task.input_path}: {i} records, {count} when its keys were made "
                         "(rerun --stage keys and cluster)")
    return {"docs_in": i, "docs_out": n_out, "bytes_out": b_out}


def _write_stage(paths, out_dir, work_dir, cfg, *, on_error, resume, progress, overwrite,
                 shard) -> dict:
    kept_path = os.path.join(work_dir, KEPT_FILE)
    if not os.path.isfile(kept_path):
        raise ValueError(f"--work-dir {work_dir}: no {KEPT_FILE} (run --stage cluster first)")
    ranges, at = {}, 0
    for t in ShardRunner(paths, work_dir, _keys_shard).tasks():
        n = np.load(t.output_path(".keys.npy"), mmap_mode="r").shape[0]
        ranges[t.input_path] = (at, n)
        at += n
    total = np.load(kept_path, mmap_mode="r").shape[0]
    if total != at:
        raise ValueError(f"{kept_path}: {total} documents, the key files {at} (rerun --stage "
                         "cluster)")
    st = os.stat(kept_path)  # in the fingerprint: a new kept set redoes every output
    opts = {"work_dir": os.path.abspath(work_dir), "ranges": ranges, "text_key": cfg.text_key,
            "kept": [st.st_size, st.st_mtime_ns]}
    return run_shards(paths, out_dir, _write_shard, desc="dedup: writing", resume=resume,
                      options=opts, on_error=on_error, progress=progress, overwrite=overwrite,
                      shard=shard)


def dedup_keys(paths: Sequence[str], work_dir: str, cfg: DedupConfig, *, workers: int = 1,
               on_error: str = "fail", resume: bool = True, progress: bool = True,
               shard=None) -> dict:
    """Stage 1 (pass 1): key columns of ``paths`` (the whole sorted list; ``shard`` picks this
    task's part) into ``work_dir``; returns the summary."""
    procs = max(1, min(workers, len(paths)))
    if cfg.threads <= 0:  # spread the cores: processes over files, C++ threads inside each
        cfg = dataclasses.replace(cfg, threads=max(1, workers // procs))
    # cfg (threads included) is the shards' resume fingerprint: a rerun with another --workers
    # recomputes the keys (cheap next to reading the corpus) rather than trusting stale ones.
    return run_shards(paths, work_dir, _keys_shard, workers=procs, desc="dedup: hashing",
                      resume=resume, options=cfg, on_error=on_error, progress=progress,
                      overwrite=True, shard=shard)  # the work folder is this tool's own


def dedup_files(inputs: Sequence[str] | str, output: Optional[str],
                clusters_path: Optional[str] = None,
                cfg: Optional[DedupConfig] = None, *, workers: int = 1, on_error: str = "fail",
                work_dir: Optional[str] = None, resume: bool = True,
                progress: bool = True, overwrite: bool = False, stage: str = "all",
                shard=None) -> dict:
    """Deduplicate JSONL files (together: cross-dataset) into ``output``.

    ``clusters_path`` receives one JSON line per dropped record: ``{"id", "kept"}`` (ids are the
    records' ``id`` or ``path:line``). Returns the summary dict (docs_in, docs_out, duplicates,
    clusters, duplicates_by_mode, bytes_in, bytes_out, seconds, errors).

    ``stage``: ``"all"`` (both passes), ``"keys"`` (pass 1 only, for ``shard``'s part of the
    inputs; ``output`` may be None when ``work_dir`` is given) or ``"cluster"`` (from the key
    files of every input in ``work_dir`` only, then pass 2 into ``output``, if given; it
    always saves the kept set as ``work_dir/kept.npy``) or ``"write"`` (``output`` is a folder:
    each input's kept records into a file of its name, for ``shard``'s part of the inputs; the
    files concatenated in input order are ``stage="all"``'s output).
    """
    cfg = cfg or DedupConfig()
    if stage not in ("all", "keys", "cluster", "write"):
        raise ValueError(f"--stage: must be all, keys, cluster or write, got {stage!r}")
    if shard is not None and shard.sharded and stage not in ("keys", "write"):
        raise ValueError(f"--num-shards {shard.count}: --stage {stage} does not run sharded "
                         "(stage 2 clusters the whole corpus on one node)")
    t0 = time.time()
    paths = expand_inputs(inputs)
    if output is None and (stage not in ("keys", "cluster") or work_dir is None):
        raise ValueError(f"--output: required with --stage {stage} (or --work-dir for "
                         "--stage keys / cluster)")
    work_dir = work_dir or (os.path.abspath(output) + ".work")
    refuse_overlap([work_dir], paths, key="--work-dir")
    if stage == "keys":
        s = dedup_keys(paths, work_dir, cfg, workers=workers, on_error=on_error, resume=resume,
                       progress=progress, shard=shard)
        s.pop("keys_options", None)
        return s
    if stage == "write":
        return _write_stage(paths, output, work_dir, cfg, on_error=on_error, resume=resume,
                            progress=progress, overwrite=overwrite, shard=shard)
    if output is not None:
        refuse_overlap([output], paths, key="--output")
        check_file_output(output, overwrite=overwrite, key="--output")
    refuse_overlap([clusters_path] if clusters_path else [], paths, key="--clusters")
    if clusters_path and (output is None or
                          os.path.realpath(clusters_path) == os.path.realpath(output)):
        raise OutputError(f"--clusters {clusters_path}: needs an --output file other than it")
    if clusters_path:
        check_file_output(clusters_path, overwrite=overwrite, key="--clusters")
    if stage == "all":
        pass1 = dedup_keys(paths, work_dir, cfg, workers=workers, on_error=on_error,
                           resume=resume, progress=progress)
        tasks = ShardRunner(paths, work_dir, _keys_shard).tasks()
        keys = np.concatenate([np.load(t.output_path(".keys.npy")) for t in tasks])
    else:
        keys, pass1 = _load_keys(paths, work_dir, cfg)
    if cfg.threads <= 0:
        cfg = dataclasses.replace(cfg, threads=max(1, workers))
    roots = cluster(keys, cfg)
    n = len(roots)
    idx = np.arange(n, dtype=np.int64)
    dropped = roots != idx
    if stage == "cluster":  # the kept set, for the sharded --stage write
        with atomic_output(os.path.join(work_dir, KEPT_FILE), "wb") as f:
            np.save(f, ~dropped)
    by_mode = {}
    if cfg.mode == "all":
        for m, sl in mode_columns(cfg).items():
            r = cluster(keys[:, sl], cfg)
            by_mode[m] = int((r != idx).sum())
    dup_roots = set(np.unique(roots[dropped]).tolist())

    if output is None:  # stage cluster for a sharded --stage write: the kept set is saved
        return {"docs_in": int(n), "docs_out": int(n - dropped.sum()),
                "duplicates": int(dropped.sum()), "clusters": len(dup_roots),
                "duplicates_by_mode": by_mode, "bytes_in": int(pass1.get("bytes_in", 0)),
                "mode": cfg.mode, "kept": os.path.join(work_dir, KEPT_FILE),
                "errors": pass1.get("errors", ErrorStats().as_dict()),
                "seconds": round(time.time() - t0, 3)}
    # Pass 2: stream again, write kept records and the clusters file.
    kept_ids: dict[int, object] = {}
    i = 0
    out_docs, out_bytes = 0, 0
    bar = None
    if progress:
        from tqdm import tqdm
        import sys

        bar = tqdm(total=n, unit="doc", desc="dedup: writing", file=sys.stderr, mininterval=0.5)
    with atomic_output(output, "wt") as fo:
        cf_cm = atomic_output(clusters_path, "wt") if clusters_path else None
        fc = cf_cm.__enter__() if cf_cm else None
        try:
            for path in paths:
                for line_no, rec in iter_records(path, required_keys=(cfg.text_key,),
                                                 on_error="skip", stats=ErrorStats()):
                    if i >= n:
                        raise RuntimeError(f"{path} changed between the two passes")
                    rid = _record_id(rec, path, line_no, cfg.id_key)
                    if not dropped[i]:
                        line = dump_record(rec)
                        fo.write(line)
                        out_docs += 1
                        out_bytes += len(rec[cfg.text_key].encode("utf-8"))
                        if i in dup_roots:
                            kept_ids[i] = rid
                    elif fc is not None:
                        fc.write(json.dumps({"id": rid, "kept": kept_ids[int(roots[i])]},
                                            ensure_ascii=False) + "\n")
                    i += 1
                    if bar is not None and i % 1024 == 0:
                        bar.update(1024)
        except BaseException as e:
            if cf_cm:
                cf_cm.__exit__(type(e), e, e.__traceback__)
            raise
        else:
            if cf_cm:
                cf_cm.__exit__(None, None, None)
    if bar is not None:
        bar.update(i % 1024)
        bar.close()
    if i != n:
        raise RuntimeError(f"inputs changed between the two passes ({n} then {i} records)")
    summary = {
        "docs_in": int(n),
        "docs_out": int(out_docs),
        "duplicates": int(dropped.sum()),
        "clusters": len(dup_roots),
        "duplicates_by_mode": by_mode,
        "bytes_in": int(pass1.get("bytes_in", 0)),
        "bytes_out": int(out_bytes),
        "mode": cfg.mode,
        "backend": "cpp" if cfg.use_cpp() else "python",
        "shards_skipped": pass1.get("shards_skipped", 0),
        "errors": pass1.get("errors", ErrorStats().as_dict()),
        "seconds": round(time.time() - t0, 3),
    }
    return summary

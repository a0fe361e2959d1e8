"""JSONL -> Megatron ``.bin/.idx`` indexed datasets, the library behind
``tools/preprocess_data.py``.

Output contract: for the same input, tokenizer and flags the files are byte-identical to what
Megatron-LM's ``tools/preprocess_data.py`` writes (the test runs Megatron-LM's own script when a
checkout is available and always compares with a direct megatron-core reference).

Design choices (why):

* **megatron-core does the format and the tokenizer.** Files are written by
  ``megatron.core.datasets.indexed_dataset.IndexedDatasetBuilder`` (dtype from
  ``DType.optimal_dtype(vocab_size)``) and the tokenizer is built by megatron-core's own
  ``build_tokenizer`` from the same flags, so vocab size, EOD id and dtype cannot drift.
* **Fast path: batch encoding.** Megatron-LM calls ``tokenizer.tokenize`` once per document in a
  Python process pool (``imap`` chunks of 32). For ``HuggingFaceTokenizer`` we hand whole
  batches to the Rust ``tokenizers.Tokenizer.encode_batch`` (parallel over rayon threads, the
  GIL released); for ``SentencePieceTokenizer`` to ``SentencePieceProcessor.encode`` with
  ``num_threads``. Both give the ids megatron-core's ``text_to_ids`` gives for the default flags
  (checked by the byte-identity test); other tokenizers/flags fall back to per-text
  ``tokenize``.
* **Same document order as Megatron-LM.** With ``--partitions P`` Megatron-LM deals input lines
  round-robin into P partition files and concatenates the P outputs, so documents come out as
  lines 0, P, 2P, ..., then 1, P+1, ... . We reproduce that order without writing partition
  copies of the input: each input shard writes P partial datasets (by global line index mod P)
  and the final merge concatenates them partition by partition (``add_index``, as Megatron-LM
  merges). ``--keep-sequential-samples`` partitions are contiguous, i.e. input order. Inputs
  given as several files/globs are taken in sorted order (Megatron-LM uses unsorted
  ``glob.glob`` order, which is file-system dependent).
* **Resume and atomicity.** Input files are the unit of work (``run_shards``): each finished
  shard leaves its partial datasets plus a done marker in ``{prefix}.work/``; a killed run redoes
  only unfinished shards and the final files are written under temporary names and renamed.
  A single huge input file is therefore one unit: split corpora into shards for resume. A
  finished shard is reused only when its input (size, mtime), the flags and the tokenizer
  files' *contents* are unchanged (:func:`tokenizer_files_sha256`).
* **Errors**: bad JSON, invalid UTF-8, a missing ``--json-keys`` key or a non-string value are
  reported as ``file:line`` (``--on-error fail``) or counted and skipped (``skip``). Megatron-LM
  crashes on these; skipping changes nothing for valid lines because the round-robin partition
  index counts physical lines, as Megatron-LM's partitioner does.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import shutil
import time
from typing import Callable, List, Optional, Sequence

import numpy as np

from megatron_ar.io.atomic import publish_files
from megatron_ar.io.outputs import check_file_output, dirs_removed_on_failure, refuse_overlap
from megatron_ar.io.compression import open_binary
from megatron_ar.io.records import ErrorStats, RecordError, expand_inputs, iter_records
from megatron_ar.io.shards import ShardRunner, ShardTask, run_shards

LEVELS = ("document", "sentence")


@dataclasses.dataclass
class PreprocessConfig:
    """Options of ``tools/preprocess_data.py`` (Megatron-LM flag names, dashes -> underscores)."""

    input: List[str]
    output_prefix: str
    tokenizer_type: str
    tokenizer_model: Optional[str] = None
    vocab_file: Optional[str] = None
    merge_file: Optional[str] = None
    json_keys: List[str] = dataclasses.field(default_factory=lambda: ["text"])
    append_eod: bool = False
    split_sentences: bool = False
    keep_newlines: bool = False
    lang: str = "auto"
    workers: int = 1
    partitions: int = 1
    keep_sequential_samples: bool = False
    log_interval: int = 1000
    normalize_arabic: bool = False
    on_error: str = "fail"
    batch_size: int = 512
    tokenizer_special_tokens: Optional[List[str]] = None
    tokenizer_hf_include_special_tokens: bool = False
    tokenizer_hf_use_fast: bool = False
    tokenizer_sentencepiece_legacy: bool = False
    trust_remote_code: bool = False
    fast: bool = True
    overwrite: bool = False

    def __post_init__(self):
        if isinstance(self.input, str):
            self.input = [self.input]
        if not self.input:
            raise ValueError("PreprocessConfig.input: no input file given")
        if not self.json_keys:
            raise ValueError("PreprocessConfig.json_keys must name at least one key")
        for name in ("workers", "partitions", "batch_size", "log_interval"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PreprocessConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.on_error not in ("fail", "skip"):
            raise ValueError(f"PreprocessConfig.on_error must be fail|skip, got {self.on_error!r}")
        if self.tokenizer_type in ("HuggingFaceTokenizer", "SentencePieceTokenizer",
                                   "GPTSentencePieceTokenizer", "Llama2Tokenizer",
                                   "TikTokenizer") and not self.tokenizer_model:
            raise ValueError(f"PreprocessConfig.tokenizer_model is required for "
                             f"--tokenizer-type {self.tokenizer_type}")

    @property
    def level(self) -> str:
        return "sentence" if self.split_sentences else "document"

    def output_paths(self, key: str) -> tuple[str, str]:
        base = f"{self.output_prefix}_{key}_{self.level}"
        return base + ".bin", base + ".idx"

    def effective_partitions(self) -> int:
        # Contiguous (sequential) partitions concatenated in order are the input order.
        return 1 if self.keep_sequential_samples else self.partitions


# --------------------------------------------------------------------------- tokenizer


def build_tokenizer(cfg: PreprocessConfig):
    """megatron-core's tokenizer for these flags (the object Megatron-LM's script uses)."""
    from megatron.core.tokenizers.text.utils.build_tokenizer import build_tokenizer as _build

    ns = argparse.Namespace(
        tokenizer_type=cfg.tokenizer_type, tokenizer_model=cfg.tokenizer_model,
        vocab_file=cfg.vocab_file, merge_file=cfg.merge_file,
        tokenizer_special_tokens=cfg.tokenizer_special_tokens,
        tokenizer_hf_use_fast=cfg.tokenizer_hf_use_fast,
        tokenizer_hf_include_special_tokens=cfg.tokenizer_hf_include_special_tokens,
        tokenizer_sentencepiece_legacy=cfg.tokenizer_sentencepiece_legacy,
        trust_remote_code=cfg.trust_remote_code, tiktoken_pattern=None, vocab_size=None,
        tiktoken_num_special_tokens=1000, tokenizer_metadata=None)
    return _build(ns)


class BatchEncoder:
    """Encode lists of texts to id lists exactly like megatron-core's ``tokenize``."""

    def __init__(self, cfg: PreprocessConfig, threads: int = 1):
        self.tok = build_tokenizer(cfg)
        self.eod = self.tok.eod
        self.vocab_size = self.tok.vocab_size
        self.threads = max(1, threads)
        lib = getattr(self.tok, "_tokenizer", None)
        self._hf = self._sp = None
        self.path = "per-text"
        if not cfg.fast or lib is None:
            return
        if cfg.tokenizer_type == "HuggingFaceTokenizer":
            backend = getattr(getattr(lib, "tokenizer", None), "backend_tokenizer", None)
            if backend is not None:
                self._hf = backend
                self._hf_special = bool(cfg.tokenizer_hf_include_special_tokens)
                self.path = "hf-encode_batch"
        elif cfg.tokenizer_type in ("SentencePieceTokenizer", "GPTSentencePieceTokenizer",
                                    "Llama2Tokenizer"):
            plain = (not getattr(lib, "legacy", True)
                     and (getattr(lib, "ignore_extra_whitespaces", False)
                          or not getattr(lib, "removed_extra_spaces", True)))
            if plain and hasattr(lib, "tokenizer"):
                self._sp = lib.tokenizer
                self.path = "sp-encode"

    def encode(self, texts: List[str]) -> List[List[int]]:
        if not texts:
            return []
        if self._hf is not None:
            # encode_batch_fast (tokenizers >= 0.20) skips character offsets we do not need.
            fn = getattr(self._hf, "encode_batch_fast", None) or self._hf.encode_batch
            return [e.ids for e in fn(texts, add_special_tokens=self._hf_special)]
        if self._sp is not None:
            return self._sp.encode(texts, num_threads=self.threads)
        return [list(self.tok.tokenize(t)) for t in texts]


# --------------------------------------------------------------------------- shard worker


def _iter_valid(task: ShardTask, keys: Sequence[str], stats: ErrorStats):
    """``iter_records`` plus Megatron-LM's per-key type rules (str or list of str)."""
    for line_no, rec in iter_records(task.input_path, required_keys=tuple(keys),
                                     on_error=task.on_error, stats=stats, progress=task.report):
        bad = None
        for k in keys:
            v = rec[k]
            if not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))):
                bad = RecordError(task.input_path, line_no, "bad_type",
                                  f"key {k!r} must be a string or a list of strings, "
                                  f"got {type(v).__name__}")
                break
        if bad is not None:
            if task.on_error == "fail":
                raise bad
            stats.add(bad)
            continue
        yield line_no, rec


_ENCODERS: dict = {}  # one tokenizer per process, reused across the shards it handles


def _encoder(cfg: PreprocessConfig, threads: int, tokenizer_sha256: str = "") -> BatchEncoder:
    # Keyed by the tokenizer files' contents too: a tokenizer replaced at the same path in a
    # long-lived process must not be served from this cache.
    key = (tokenizer_sha256, cfg.tokenizer_type, cfg.tokenizer_model, cfg.vocab_file, cfg.merge_file,
           tuple(cfg.tokenizer_special_tokens or ()), cfg.tokenizer_hf_include_special_tokens,
           cfg.tokenizer_hf_use_fast, cfg.tokenizer_sentencepiece_legacy, cfg.fast, threads)
    if key not in _ENCODERS:
        _ENCODERS.clear()
        _ENCODERS[key] = BatchEncoder(cfg, threads)
    return _ENCODERS[key]


def _partial_prefix(task: ShardTask, part: int, key: str) -> str:
    return task.output_path(f".p{part}.{key}")


def _encode_shard(task: ShardTask) -> dict:
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    cfg: PreprocessConfig = task.options["cfg"]
    offset: int = task.options["line_offsets"].get(task.input_path, 0)
    threads: int = task.options["threads"]
    enc = _encoder(cfg, threads, task.options.get("tokenizer_sha256", ""))
    dtype = DType.optimal_dtype(enc.vocab_size)
    nparts = cfg.effective_partitions()
    split: Optional[Callable[[str], List[str]]] = None
    if cfg.split_sentences:
        from megatron_ar.data.sentence_split import make_splitter, split_long

        splitter, _ = make_splitter(cfg.lang, cfg.keep_newlines)
        split = functools.partial(split_long, splitter)
    norm = None
    if cfg.normalize_arabic:
        from megatron_ar.text.normalize import normalize_arabic as norm

    keys = [(p, k) for p in range(nparts) for k in cfg.json_keys]
    finals = [path for key in keys for path in
              (_partial_prefix(task, *key) + ".bin", _partial_prefix(task, *key) + ".idx")]
    stats = ErrorStats()
    counts = {"documents": 0, "bytes": 0, "tokens": {k: 0 for k in cfg.json_keys},
              "sentences": {k: 0 for k in cfg.json_keys}}
    batch: list = []

    def flush() -> None:
        for k in cfg.json_keys:
            flat: List[str] = []
            spans = []
            for _, rec in batch:
                v = rec[k]
                sents = list(v) if isinstance(v, list) else [v]
                if norm is not None:
                    sents = [norm(s) for s in sents]
                if split is not None and not isinstance(v, list):
                    sents = [s for t in sents for s in split(t)]
                spans.append((len(flat), len(flat) + len(sents)))
                flat.extend(sents)
            ids = enc.encode(flat)
            for (line_no, _), (a, b) in zip(batch, spans):
                doc: List[int] = []
                lens: List[int] = []
                for sid in ids[a:b]:
                    if len(sid) > 0:  # Megatron-LM drops sentences that encode to nothing
                        doc.extend(sid)
                        lens.append(len(sid))
                if doc and cfg.append_eod:
                    doc.append(enc.eod)
                    lens[-1] += 1
                part = (offset + line_no - 1) % nparts
                builders[(part, k)].add_document(np.asarray(doc, dtype=dtype), lens)
                counts["tokens"][k] += len(doc)
                counts["sentences"][k] += len(lens)
        counts["documents"] += len(batch)
        batch.clear()

    with publish_files(finals) as temps:
        builders = {key: IndexedDatasetBuilder(temps[2 * i], dtype=dtype)
                    for i, key in enumerate(keys)}
        try:
            for line_no, rec in _iter_valid(task, cfg.json_keys, stats):
                for k in cfg.json_keys:
                    v = rec[k]
                    counts["bytes"] += len(v.encode("utf-8")) if isinstance(v, str) else \
                        sum(len(s.encode("utf-8")) for s in v)
                batch.append((line_no, rec))
                if len(batch) >= cfg.batch_size:
                    flush()
            flush()
        except BaseException:
            for b in builders.values():
                b.data_file.close()  # the temps are removed by publish_files
            raise
        for i, key in enumerate(keys):
            builders[key].finalize(temps[2 * i + 1])
    counts["errors"] = stats.as_dict()
    counts["encoder"] = {enc.path: 1}
    counts["dtype"] = {np.dtype(dtype).name: 1}
    return counts


# --------------------------------------------------------------------------- driver


def count_lines(path: str) -> int:
    """Physical lines (a final line without newline counts), decompressing if needed."""
    n, last = 0, b"\n"
    with open_binary(path) as (stream, _):
        while True:
            block = stream.read(1 << 22)
            if not block:
                break
            n += block.count(b"\n")
            last = block[-1:]
    return n + (0 if last == b"\n" else 1)


def tokenizer_files_sha256(cfg: PreprocessConfig) -> str:
    """SHA-256 over the contents of the tokenizer files the flags name (``tokenizer_model`` as a
    file, or every regular file directly in it as a directory; ``vocab_file``; ``merge_file``)."""
    import hashlib

    h = hashlib.sha256()
    for path in (cfg.tokenizer_model, cfg.vocab_file, cfg.merge_file):
        if not path:
            continue
        files = ([os.path.join(path, f) for f in sorted(os.listdir(path))]
                 if os.path.isdir(path) else [path])
        for f in files:
            if os.path.isfile(f):
                h.update(os.path.basename(f).encode() + b"\0")
                with open(f, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
    return h.hexdigest()


def preprocess(cfg: PreprocessConfig, *, resume: bool = True, progress: bool = True,
               shard=None) -> dict:
    """Run the whole conversion; returns the summary (documents, tokens, bytes, seconds, ...).

    ``shard`` (:class:`megatron_ar.io.shards.ShardSpec`, K of N > 1) converts only that
    contiguous range of the sorted inputs into ``{prefix}_shardK_of_N_{key}_{level}.bin/.idx``
    (K zero-padded, so the names sort in shard order); ``tools/merge_datasets.py`` over those
    in shard order gives the single run's files byte for byte. A shard given no input writes
    nothing and returns an empty summary. ``--partitions > 1`` is refused with shards: its
    round-robin order interleaves documents of the whole corpus."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    t0 = time.time()
    if shard is not None and shard.sharded:
        if cfg.effective_partitions() > 1:
            raise ValueError(f"--partitions {cfg.partitions}: cannot be combined with "
                             f"--num-shards {shard.count} (partitions interleave documents of "
                             "the whole corpus); use --partitions 1 or --keep-sequential-samples")
        from megatron_ar.io.shards import shard_inputs

        mine = shard_inputs(expand_inputs(cfg.input), shard)
        if not mine:
            return {"documents": 0, "tokens": 0, "bytes": 0, "shards": 0,
                    "shard_index": shard.index, "num_shards": shard.count, "outputs": {}}
        cfg = dataclasses.replace(cfg, input=mine, output_prefix=cfg.output_prefix + shard.suffix)
        out = preprocess(cfg, resume=resume, progress=progress)
        out.update(shard_index=shard.index, num_shards=shard.count)
        return out
    for name in ("tokenizer_model", "vocab_file", "merge_file"):
        path = getattr(cfg, name)
        # A local path (not a hub id such as "org/model") must exist.
        if path and (os.path.isabs(path) or path.startswith(".")) and not os.path.exists(path):
            raise ValueError(f"PreprocessConfig.{name}: {path}: not found")
    paths = expand_inputs(cfg.input)
    work = os.path.abspath(cfg.output_prefix) + ".work"
    outs = [p for k in cfg.json_keys for p in cfg.output_paths(k)]
    refuse_overlap(outs + [work], paths + ([cfg.tokenizer_model] if cfg.tokenizer_model else []),
                   key="--output-prefix")
    for out in outs:
        check_file_output(out, overwrite=cfg.overwrite, key="--output-prefix")
    nparts = cfg.effective_partitions()
    offsets: dict = {}
    if nparts > 1:  # the round-robin partition index runs over lines of all files in order
        at = 0
        for p in paths:
            offsets[p] = at
            at += count_lines(p)
    procs = max(1, min(cfg.workers, len(paths)))
    threads = max(1, cfg.workers // procs)
    os.environ.setdefault("RAYON_NUM_THREADS", str(threads))  # HF encode_batch thread pool
    # The tokenizer's bytes, not only its path, key the finished shards: a tokenizer retrained
    # in place must not mix with shards encoded by the old one.
    opts = {"cfg": cfg, "line_offsets": offsets, "threads": threads,
            "tokenizer_sha256": tokenizer_files_sha256(cfg)}
    with dirs_removed_on_failure([work]):
        summary = run_shards(paths, work, _encode_shard, workers=procs, desc="preprocess",
                             resume=resume, options=opts, on_error=cfg.on_error,
                             progress=progress, overwrite=True)  # PREFIX.work is its own

    empty = [k for k in cfg.json_keys if not summary.get("tokens", {}).get(k)]
    if empty:
        shutil.rmtree(work, ignore_errors=True)
        raise ValueError(f"{', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''}: no tokens for "
                         f"--json-keys {' '.join(empty)} ({int(summary.get('documents', 0))} "
                         "documents read); an empty .bin cannot be opened by megatron-core, "
                         "nothing written")
    tasks = ShardRunner(paths, work, _encode_shard).tasks()
    dtype = np.dtype(sorted(summary["dtype"])[0]).type  # every shard used optimal_dtype(vocab)
    outputs = {}
    for k in cfg.json_keys:
        bin_path, idx_path = cfg.output_paths(k)
        with publish_files([bin_path, idx_path]) as (tb, ti):
            b = IndexedDatasetBuilder(tb, dtype=dtype)
            for p in range(nparts):
                for t in tasks:
                    b.add_index(_partial_prefix(t, p, k))
            b.finalize(ti)
        outputs[k] = {"bin": bin_path, "idx": idx_path}
    shutil.rmtree(work, ignore_errors=True)
    tokens = summary.get("tokens", {})
    seconds = round(time.time() - t0, 3)
    return {
        "documents": int(summary.get("documents", 0)),
        "tokens": int(sum(tokens.values())),
        "bytes": int(summary.get("bytes", 0)),
        "seconds": seconds,
        "mb_per_s": round(summary.get("bytes", 0) / 1e6 / max(seconds, 1e-9), 3),
        "tokens_by_key": tokens,
        "sentences_by_key": summary.get("sentences", {}),
        "level": cfg.level,
        "dtype": np.dtype(dtype).name,
        "encoder": sorted(summary.get("encoder", {}).keys()),
        "outputs": outputs,
        "shards": summary.get("shards", 0),
        "shards_skipped": summary.get("shards_skipped", 0),
        "errors": summary.get("errors", ErrorStats().as_dict()),
    }

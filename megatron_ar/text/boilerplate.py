"""Site boilerplate removal: lines a source repeats across many of its documents (headers,
footers, inner sections, link lists) are removed before quality signals are computed (Fanar
report, Sec. 4.2 footnote 4: repeated headers, footers, inner sections and links detected per
source and removed from all its articles). Library behind ``tools/strip_boilerplate.py``.

Choices
- **Per source**: the source is the domain of ``metadata.url`` (lower-cased, ``www.`` dropped)
  or any dotted key given (``source_key="metadata.source"``); records without one form the
  group ``<none>``, which is never stripped (their lines repeat by accident, not by template).
- **Two streaming passes** over all inputs (a source spans files): pass 1 counts, per source,
  in how many documents each normalised line occurs (once per document); pass 2 drops the
  lines that occur in more than ``min_fraction`` of a source's documents (and in at least
  ``min_docs`` of them). Memory is one 8-byte hash + count per distinct line per source, not
  the corpus.
- **Normalised comparison**: NFKC, case-folded, whitespace collapsed, every run of digits
  (ASCII or Arabic-Indic) replaced by ``0``, so "© 2023 ... visits: 1,204" and "© 2024 ...
  visits: 98" are the same footer. Lines of fewer than ``min_chars`` normalised characters
  (blank lines, lone punctuation) are never counted or removed.
- Only removed lines (and a blank line the removal would double) leave a text; nothing else
  in it changes (whitespace inside the content is the content's). A record left without text
  is dropped
  (``keep_empty`` keeps it). Outputs keep the input file names in ``out_dir``; each is written
  atomically, existing ones are refused unless ``overwrite``.
- **Cluster scale** (``stage="count"`` then ``stage="strip"``, each a job array over the
  inputs): a source spans files, so neither stage can run on a part alone. Stage 1 saves each
  input's pass-1 counts (source, line hash, documents) beside the outputs; stage 2 sums *all*
  of them before stripping its own part. The repeated-line sets are then those of the whole
  corpus and every output equals the one-process run's byte for byte; the cost is that every
  stage-2 task reads every counts file (20 bytes per distinct line per source and input),
  as small as the one-process run's memory. Sharding by source key instead would need every
  task to read every input.
- Trade-off: a line legitimately shared by many articles of one site (a recurring quote, a
  standard disclaimer that is content) is removed too; ``min_fraction`` trades recall for that.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import urlparse

import numpy as np

from megatron_ar.io.atomic import atomic_output, remove_stale_temps
from megatron_ar.io.outputs import check_file_output, dirs_removed_on_failure, refuse_overlap
from megatron_ar.io.records import ErrorStats, dump_record, iter_records
from megatron_ar.io.shards import ShardRunner, ShardTask

__all__ = ["BoilerplateConfig", "normalize_line", "source_of", "strip_boilerplate"]

NO_SOURCE = "<none>"
_DIGITS = re.compile(r"\d+")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class BoilerplateConfig:
    min_fraction: float = 0.3
    min_docs: int = 5
    min_chars: int = 4
    source_key: Optional[str] = None     # dotted key; None: domain of metadata.url
    text_key: str = "text"
    keep_empty: bool = False
    normalize_digits: bool = True
    examples: int = 5                     # removed lines shown per source in the report

    def validate(self) -> None:
        if not 0.0 < self.min_fraction <= 1.0:
            raise ValueError(f"BoilerplateConfig.min_fraction: must be in (0, 1], got "
                             f"{self.min_fraction}")
        if self.min_docs < 2:
            raise ValueError(f"BoilerplateConfig.min_docs: must be >= 2, got {self.min_docs}")
        if self.min_chars < 1:
            raise ValueError(f"BoilerplateConfig.min_chars: must be >= 1, got {self.min_chars}")


def normalize_line(line: str, digits: bool = True) -> str:
    s = unicodedata.normalize("NFKC", line).casefold()
    if digits:
        s = _DIGITS.sub("0", s)
    return _SPACE.sub(" ", s).strip()


def _hash(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")


def source_of(rec: Dict[str, Any], key: Optional[str]) -> str:
    if key is None:
        meta = rec.get("metadata")
        url = meta.get("url") if isinstance(meta, dict) else None
        if not isinstance(url, str) or not url:
            return NO_SOURCE
        host = (urlparse(url if "//" in url else "//" + url).hostname or "").lower()
        return host[4:] if host.startswith("www.") else (host or NO_SOURCE)
    cur: Any = rec
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return NO_SOURCE
        cur = cur[part]
    return str(cur) if cur not in (None, "") else NO_SOURCE


def _line_keys(text: str, cfg: BoilerplateConfig):
    for line in text.split("\n"):
        n = normalize_line(line, cfg.normalize_digits)
        yield line, (_hash(n) if len(n) >= cfg.min_chars else None)


def _count_records(path: str, cfg: BoilerplateConfig, on_error: str, stats: ErrorStats,
                   docs: Counter, counts: Dict[str, Counter], report=None) -> None:
    """Pass 1 over one file: documents per source, and in how many of them each line occurs."""
    for _, rec in iter_records(path, required_keys=(cfg.text_key,), text_key=cfg.text_key,
                               on_error=on_error, stats=stats, progress=report):
        src = source_of(rec, cfg.source_key)
        docs[src] += 1
        if src == NO_SOURCE:
            continue
        seen = {h for _, h in _line_keys(rec[cfg.text_key], cfg) if h is not None}
        counts.setdefault(src, Counter()).update(seen)


def _repeated(docs: Counter, counts: Dict[str, Counter], cfg: BoilerplateConfig) -> dict:
    repeated = {}
    for src, c in counts.items():
        n = docs[src]
        if n >= cfg.min_docs:
            need = max(cfg.min_docs, cfg.min_fraction * n)
            repeated[src] = {h for h, k in c.items() if k >= need and k > cfg.min_fraction * n}
    return repeated


def _strip_file(path: str, out: str, repeated: dict, cfg: BoilerplateConfig, per: dict,
                report=None) -> int:
    """Pass 2 over one file into ``out``; returns the documents written."""
    out_docs = 0
    with atomic_output(out) as f:
        for _, rec in iter_records(path, required_keys=(cfg.text_key,), text_key=cfg.text_key,
                                   on_error="skip", progress=report):
            src = source_of(rec, cfg.source_key)
            rep = repeated.get(src)
            if rep:
                kept: List[str] = []
                ps = per.setdefault(src, {"lines_removed": 0, "chars_removed": 0,
                                          "examples": []})
                drop_blank = False
                for line, h in _line_keys(rec[cfg.text_key], cfg):
                    if h is not None and h in rep:
                        ps["lines_removed"] += 1
                        ps["chars_removed"] += len(line)
                        if len(ps["examples"]) < cfg.examples and \
                                line.strip() not in ps["examples"]:
                            ps["examples"].append(line.strip())
                        # a blank line after it would double the one before it
                        drop_blank = not kept or not kept[-1].strip()
                        continue
                    if drop_blank and not line.strip():
                        continue
                    drop_blank = False
                    kept.append(line)
                rec[cfg.text_key] = "\n".join(kept)
            if not rec[cfg.text_key].strip() and not cfg.keep_empty:
                continue
            f.write(dump_record(rec))
            out_docs += 1
    return out_docs


def _summary(docs_in: int, out_docs: int, sources: int, per: dict, docs: Counter,
             repeated: dict, distinct: int, stats: ErrorStats, outs: List[str]) -> dict:
    removed_lines = removed_chars = 0
    for src, ps in per.items():
        ps["docs"] = docs[src]
        ps["repeated_lines"] = len(repeated.get(src, ()))
        removed_lines += ps["lines_removed"]
        removed_chars += ps["chars_removed"]
    return {"docs_in": int(docs_in), "docs_out": out_docs,
            "sources": sources, "sources_stripped": len(per),
            "lines_removed": removed_lines, "chars_removed": removed_chars,
            "distinct_line_hashes": distinct, "errors": stats.as_dict(),
            "by_source": dict(sorted(per.items(), key=lambda kv: -kv[1]["chars_removed"])),
            "outputs": outs}


def _check_names(inputs: Sequence[str], out_dir: str) -> List[str]:
    names = [os.path.basename(p) for p in inputs]
    if len(set(names)) != len(names):
        dup = sorted(n for n in set(names) if names.count(n) > 1)[0]
        raise ValueError(f"--input: two inputs are named {dup!r}; outputs keep input names")
    refuse_overlap([out_dir], inputs, key="--output-dir")
    return [os.path.join(out_dir, n) for n in names]


def strip_boilerplate(inputs: Sequence[str], out_dir: str,
                      config: Optional[BoilerplateConfig] = None, *, on_error: str = "fail",
                      overwrite: bool = False, progress: bool = True, stage: str = "all",
                      shard=None, resume: bool = True) -> dict:
    """Remove per-source repeated lines from ``inputs`` into ``out_dir`` (same file names);
    returns the summary (documents, lines and characters removed, per-source report).

    ``stage`` (cluster scale, module docstring of :mod:`megatron_ar.io.shards`): ``"all"``
    (both passes, one process); ``"count"`` (pass 1 for ``shard``'s part of the inputs: one
    counts file per input in ``out_dir/.boilerplate_counts/``, with done markers); ``"strip"``
    (pass 2 for ``shard``'s part, from the sum of *every* input's counts file, so each source's
    repeated lines are those of the whole corpus and the outputs equal the one-process run's).
    """
    cfg = config or BoilerplateConfig()
    cfg.validate()
    if stage not in ("all", "count", "strip"):
        raise ValueError(f"--stage: must be all, count or strip, got {stage!r}")
    if shard is not None and shard.sharded and stage == "all":
        raise ValueError(f"--num-shards {shard.count}: a source spans input files, so a sharded "
                         "run needs --stage count (array job) then --stage strip (array job)")
    outs = _check_names(inputs, out_dir)
    if stage == "count":
        return _count_stage(inputs, out_dir, cfg, on_error, progress, shard, resume)
    if stage == "strip":
        return _strip_stage(inputs, out_dir, outs, cfg, overwrite, progress, shard, resume)
    for o in outs:
        check_file_output(o, overwrite=overwrite, key="--output-dir")
    from tqdm import tqdm

    total = sum(os.path.getsize(p) for p in inputs)
    stats = ErrorStats()
    docs: Counter = Counter()
    counts: Dict[str, Counter] = {}
    with tqdm(total=2 * total, unit="B", unit_scale=True, desc="boilerplate",
              disable=not progress) as bar:
        def report(nbytes, _docs):
            bar.update(nbytes)

        for path in inputs:  # pass 1: in how many documents of its source each line occurs
            _count_records(path, cfg, on_error, stats, docs, counts, report)
        repeated = _repeated(docs, counts, cfg)
        distinct = sum(len(c) for c in counts.values())
        del counts
        per: Dict[str, dict] = {}
        out_docs = 0
        os.makedirs(out_dir, exist_ok=True)
        remove_stale_temps([out_dir])
        with dirs_removed_on_failure([out_dir]):
            for path, out in zip(inputs, outs):  # pass 2: drop them
                out_docs += _strip_file(path, out, repeated, cfg, per, report)
    return _summary(sum(docs.values()), out_docs, len(docs), per, docs, repeated, distinct,
                    stats, outs)


# ----------------------------------------------------------------- sharded stages (a job array)
COUNTS_DIR = ".boilerplate_counts"


def _count_shard(task: ShardTask) -> dict:
    cfg, on_error = task.options, task.on_error
    stats, docs, counts = ErrorStats(), Counter(), {}
    _count_records(task.input_path, cfg, on_error, stats, docs, counts, task.report)
    names = sorted(docs)
    pos = {s: i for i, s in enumerate(names)}
    src = [np.full(len(counts[s]), pos[s], dtype=np.uint32) for s in names if s in counts]
    hashes = [np.fromiter(counts[s].keys(), np.uint64, len(counts[s])) for s in names if s in counts]
    num = [np.fromiter(counts[s].values(), np.int64, len(counts[s])) for s in names if s in counts]
    cat = (lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt))
    with atomic_output(task.output_path(".counts.npz"), "wb") as f:
        np.savez(f, sources=np.array(json.dumps(names, ensure_ascii=False)),
                 docs=np.array([docs[s] for s in names], dtype=np.int64),
                 src=cat(src, np.uint32), hash=cat(hashes, np.uint64), count=cat(num, np.int64))
    return {"docs_in": int(sum(docs.values())), "errors": stats.as_dict()}


def _count_runner(inputs, out_dir, cfg, on_error="fail", progress=False, shard=None,
                  resume=True) -> ShardRunner:
    return ShardRunner(inputs, os.path.join(out_dir, COUNTS_DIR), _count_shard, options=cfg,
                       on_error=on_error, progress=progress, shard=shard, resume=resume,
                       desc="boilerplate: counting", overwrite=True)  # its own folder


def _count_stage(inputs, out_dir, cfg, on_error, progress, shard, resume) -> dict:
    return _count_runner(inputs, out_dir, cfg, on_error, progress, shard, resume).run()


_REPEATED: Dict[str, dict] = {}  # counts fingerprint -> repeated-line sets, for _strip_shard


def _strip_shard(task: ShardTask) -> dict:
    cfg, key = task.options["cfg"], task.options["counts"]
    per: Dict[str, dict] = {}
    n = _strip_file(task.input_path, task.output_path(), _REPEATED[key], cfg, per, task.report)
    return {"docs_out": n, "by_source": per}


def _strip_stage(inputs, out_dir, outs, cfg, overwrite, progress, shard, resume) -> dict:
    """Sum every input's counts (each checked: made from that input with these options), then
    pass 2 over this shard's inputs (in this process: the sets are not pickled to workers),
    resumable by done markers like the per-file tools."""
    runner = _count_runner(inputs, out_dir, cfg)
    docs: Counter = Counter()
    counts: Dict[str, Counter] = {}
    stats = ErrorStats()
    file_docs = {}
    count_files = []
    for t in runner.tasks():
        if runner._load_done(t) is None:
            raise ValueError(f"--output-dir {out_dir}: input {t.input_path}: no counts made from "
                             "it with these options (run --stage count over it first)")
        count_files.append(t.output_path(".counts.npz"))
        with np.load(count_files[-1]) as z:
            names = json.loads(str(z["sources"]))
            for s, n in zip(names, z["docs"].tolist()):
                docs[s] += n
            file_docs[t.input_path] = int(z["docs"].sum())
            for i, h, k in zip(z["src"].tolist(), z["hash"].tolist(), z["count"].tolist()):
                c = counts.get(names[i])
                if c is None:
                    c = counts[names[i]] = Counter()
                c[h] += k
        stats.merge(ErrorStats.from_dict(runner._read_marker(t)["summary"].get("errors", {})))
    repeated = _repeated(docs, counts, cfg)
    distinct = sum(len(c) for c in counts.values())
    del counts
    from megatron_ar.io.shards import fingerprint, shard_inputs

    key = fingerprint(count_files, cfg)  # new counts (a redone count stage) redo the outputs
    _REPEATED.clear()
    _REPEATED[key] = repeated
    s = ShardRunner(inputs, out_dir, _strip_shard, options={"cfg": cfg, "counts": key},
                    progress=progress, shard=shard, resume=resume, overwrite=overwrite,
                    desc="boilerplate: stripping").run()
    mine = shard_inputs(inputs, shard)
    mine_set = set(mine)
    out = _summary(sum(file_docs[p] for p in mine), int(s.get("docs_out", 0)), len(docs),
                   s.get("by_source", {}), docs, repeated, distinct, stats,
                   [o for p, o in zip(inputs, outs) if p in mine_set])
    out.update({k: s[k] for k in ("shards", "shards_skipped", "shard_index", "num_shards",
                                  "inputs_total") if k in s})
    return out

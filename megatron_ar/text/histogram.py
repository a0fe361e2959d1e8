"""Per-signal histograms with samples per bucket (``tools/signal_histogram.py``).

Fanar chose its filter cut-offs by looking at documents: every signal is min-max normalised to
[0, 1] over the corpus, split into 10 buckets of width 0.1, and a few documents of each bucket
are read by a person. This module does exactly that, in two streaming passes over the shards:

1. min and max of every signal (per shard, then reduced);
2. bucket counts and a uniform sample of ``samples_per_bucket`` documents per (signal, bucket).

Design choices (why):

* **Bottom-k sampling.** Each document gets a pseudo-random key (BLAKE2b of seed, shard name,
  line number); a bucket keeps the k documents with the smallest keys. That is a uniform sample
  without replacement *and* mergeable across shards exactly (the k smallest of the union are the
  k smallest of the per-shard k smallest), so parallel runs and resumed runs give the same
  sample as a serial run. Each shard writes its k-per-bucket sample to ``.samples/`` and the
  final merge streams those files, so memory does not grow with the number of shards.
* Min-max normalisation needs the first pass; a fixed per-signal range would save it but would
  put most of a corpus into one bucket for unbounded signals (counts, entropy). The passes are
  separate resumable runs (their own done-marker folders; pass 2's fingerprint includes pass 1's
  ranges, so it is redone whenever the ranges change).
* Records without ``quality_signals`` get them computed on the fly.
* A constant signal (min == max) puts every document in bucket 0.
"""
from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import os
from typing import Optional, Sequence

from megatron_ar.io.atomic import atomic_output, write_json_atomic
from megatron_ar.io.outputs import OutputError
from megatron_ar.io.records import ErrorStats, iter_records
from megatron_ar.io.shards import ShardRunner, ShardTask, fingerprint
from megatron_ar.text.signals import SIGNAL_NAMES, compute_signals

__all__ = ["HistogramConfig", "bucket_of", "signal_histograms"]

N_BINS = 10


@dataclasses.dataclass(frozen=True)
class HistogramConfig:
    """signals: which signals (default all); samples_per_bucket: documents kept per bucket;
    max_chars: sampled text is cut to this many characters; seed: sampling seed."""

    signals: tuple = SIGNAL_NAMES
    samples_per_bucket: int = 5
    max_chars: int = 2000
    seed: int = 0
    text_key: str = "text"
    signals_key: str = "quality_signals"
    ranges: Optional[dict] = None  # filled for pass 2: {signal: [min, max]}

    def __post_init__(self):
        bad = [s for s in self.signals if s not in SIGNAL_NAMES]
        if bad:
            raise ValueError(f"HistogramConfig.signals: unknown signal(s) {bad}")
        if self.samples_per_bucket < 0:
            raise ValueError("HistogramConfig.samples_per_bucket must be >= 0")


def bucket_of(value: float, lo: float, hi: float) -> int:
    """Bucket 0..9 of ``value`` after min-max normalisation to [0, 1] (1.0 goes to bucket 9)."""
    if hi <= lo:
        return 0
    x = (value - lo) / (hi - lo)
    return min(N_BINS - 1, max(0, int(x * N_BINS)))


def _signals_of(rec: dict, cfg: HistogramConfig) -> dict:
    sig = rec.get(cfg.signals_key)
    if isinstance(sig, dict) and all(s in sig for s in cfg.signals):
        return sig
    return compute_signals(rec[cfg.text_key])


def minmax_shard(task: ShardTask) -> dict:
    cfg: HistogramConfig = task.options
    stats = ErrorStats()
    lo = {s: None for s in cfg.signals}
    hi = {s: None for s in cfg.signals}
    n = 0
    for _, rec in iter_records(task.input_path, required_keys=(cfg.text_key,), on_error=task.on_error,
                               stats=stats, progress=task.report):
        sig = _signals_of(rec, cfg)
        n += 1
        for s in cfg.signals:
            v = float(sig[s])
            if lo[s] is None or v < lo[s]:
                lo[s] = v
            if hi[s] is None or v > hi[s]:
                hi[s] = v
    return {"docs": n, "min": lo, "max": hi, "errors": stats.as_dict()}


def _key(seed: int, shard: str, line_no: int) -> int:
    h = hashlib.blake2b(f"{seed}\0{shard}\0{line_no}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big")


def _samples_path(out_dir: str, output_name: str) -> str:
    return os.path.join(out_dir, ".samples", output_name + ".samples.jsonl")


def hist_shard(task: ShardTask) -> dict:
    """Bucket counts (in the summary, as {signal: {"0".."9": n}} so summaries add up) and this
    shard's bottom-k sample per bucket (in a side file, so memory stays bounded)."""
    cfg: HistogramConfig = task.options
    k = cfg.samples_per_bucket
    counts = {s: {str(b): 0 for b in range(N_BINS)} for s in cfg.signals}
    heaps: dict[tuple, list] = {(s, b): [] for s in cfg.signals for b in range(N_BINS)}
    n = 0
    for line_no, rec in iter_records(task.input_path, required_keys=(cfg.text_key,),
                                     on_error=task.on_error, progress=task.report):
        sig = _signals_of(rec, cfg)
        n += 1
        key = _key(cfg.seed, task.output_name, line_no) if k else 0
        for s in cfg.signals:
            lo, hi = cfg.ranges[s]
            v = float(sig[s])
            b = bucket_of(v, lo, hi)
            counts[s][str(b)] += 1
            if k:
                h = heaps[(s, b)]
                item = (-key, line_no, v)  # max-heap on key: pop the largest to keep the k smallest
                if len(h) < k:
                    heapq.heappush(h, item)
                elif -key > h[0][0]:
                    heapq.heapreplace(h, item)
    # second look at the chosen lines only, to attach their text (keeps the heaps small)
    wanted = {ln for h in heaps.values() for _, ln, _ in h}
    texts: dict[int, dict] = {}
    if wanted:
        for ln, rec in iter_records(task.input_path, required_keys=(cfg.text_key,), on_error="skip"):
            if ln in wanted:
                texts[ln] = {"id": rec.get("id"), "text": rec[cfg.text_key][:cfg.max_chars]}
    with atomic_output(_samples_path(task.out_dir, task.output_name)) as f:
        for (s, b), h in heaps.items():
            for nk, ln, v in sorted(h, reverse=True):
                f.write(json.dumps({"signal": s, "bucket": b, "key": -nk, "value": v,
                                    "source": f"{task.input_path}:{ln}", **texts[ln]},
                                   ensure_ascii=False) + "\n")
    return {"docs": n, "counts": counts}


def signal_histograms(inputs: Sequence[str], out_dir: str, config: Optional[HistogramConfig] = None, *,
                      workers: int = 1, on_error: str = "fail", resume: bool = True,
                      progress: bool = True, overwrite: bool = False) -> dict:
    """Two passes over ``inputs``; writes ``histogram.json`` and ``samples.jsonl`` into
    ``out_dir`` and returns the summary (docs, per-signal min/max/counts, files). Existing
    outputs made from other inputs or options are refused unless ``overwrite``."""
    cfg = config or HistogramConfig()
    run_file = os.path.join(out_dir, ".histogram-run.json")
    run_fp = fingerprint(inputs, cfg)
    finals = [os.path.join(out_dir, n) for n in ("histogram.json", "samples.jsonl")]
    if not overwrite and any(os.path.lexists(p) for p in finals):
        try:
            with open(run_file, encoding="utf-8") as f:
                same = json.load(f).get("fingerprint") == run_fp
        except (OSError, ValueError, AttributeError):
            same = False
        if not same:
            raise OutputError(f"--output-dir {out_dir}: holds a histogram made from other inputs "
                              "or options (histogram.json, samples.jsonl); pass --overwrite to "
                              "replace them")
    p1 = ShardRunner(inputs, out_dir, minmax_shard, workers=workers, desc="histogram 1/2 (ranges)",
                     resume=resume, options=dataclasses.replace(cfg, ranges=None),
                     on_error=on_error, progress=progress,
                     marker_dir=os.path.join(out_dir, ".shards-ranges"), overwrite=overwrite,
                     outputs=lambda t: [])  # pass 1 writes only its markers
    s1 = p1.run()
    ranges = {}
    for s in cfg.signals:
        los = [r["min"][s] for r in p1.results.values() if r["min"][s] is not None]
        his = [r["max"][s] for r in p1.results.values() if r["max"][s] is not None]
        ranges[s] = [min(los), max(his)] if los else [0.0, 0.0]
    cfg2 = dataclasses.replace(cfg, ranges=ranges)
    p2 = ShardRunner(inputs, out_dir, hist_shard, workers=workers, desc="histogram 2/2 (buckets)",
                     resume=resume, options=cfg2, on_error=on_error, progress=progress,
                     marker_dir=os.path.join(out_dir, ".shards-buckets"), overwrite=overwrite,
                     outputs=lambda t: [_samples_path(out_dir, t.output_name)])
    s2 = p2.run()
    counts = {sg: [s2.get("counts", {}).get(sg, {}).get(str(b), 0) for b in range(N_BINS)]
              for sg in cfg.signals}
    # merge the per-shard bottom-k samples, one shard file at a time (bounded memory)
    k = cfg.samples_per_bucket
    heaps: dict[tuple, list] = {}
    for t in p2.tasks():
        path = _samples_path(out_dir, t.output_name)
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                h = heaps.setdefault((row["signal"], row["bucket"]), [])
                item = (-row["key"], row["source"], row)
                if len(h) < k:
                    heapq.heappush(h, item)
                elif item[0] > h[0][0]:
                    heapq.heapreplace(h, item)
    hist = {}
    for s in cfg.signals:
        lo, hi = ranges[s]
        width = (hi - lo) / N_BINS
        hist[s] = {"min": lo, "max": hi,
                   "edges": [lo + i * width for i in range(N_BINS)] + [hi],
                   "counts": counts[s]}
    hist_path = os.path.join(out_dir, "histogram.json")
    with atomic_output(hist_path) as f:
        json.dump({"docs": s2.get("docs", 0), "bins": N_BINS, "signals": hist}, f, indent=1)
        f.write("\n")
    samples_path = os.path.join(out_dir, "samples.jsonl")
    n_samples = 0
    with atomic_output(samples_path) as f:
        for sg in cfg.signals:
            lo, hi = ranges[sg]
            width = (hi - lo) / N_BINS
            for b in range(N_BINS):
                items = sorted((it[2] for it in heaps.get((sg, b), [])), key=lambda x: x["key"])
                for it in items:
                    row = {"signal": sg, "bucket": b, "bucket_range": [lo + b * width, lo + (b + 1) * width],
                           "value": it["value"], "id": it.get("id"), "source": it["source"],
                           "text": it.get("text", "")}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    n_samples += 1
    write_json_atomic(run_file, {"fingerprint": run_fp})
    return {"docs": s2.get("docs", 0), "signals": len(cfg.signals), "samples": n_samples,
            "histogram": hist_path, "samples_file": samples_path,
            "counts": {s: counts[s] for s in cfg.signals},
            "errors": s1.get("errors", ErrorStats().as_dict()),
            "input_bytes": s1["input_bytes"], "shards": s1["shards"],
            "shards_skipped": min(s1["shards_skipped"], s2["shards_skipped"]),
            "seconds": round(s1["seconds"] + s2["seconds"], 3)}

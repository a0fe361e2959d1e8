#!/usr/bin/env python3
"""Histogram of every quality signal (10 buckets of width 0.1 after min-max normalisation) with
N sampled records per bucket, for choosing filter cut-offs by reading documents (Fanar's method).

    python tools/signal_histogram.py --input 'annotated/*.jsonl.gz' --output-dir hist/ --samples 5

Writes OUTPUT_DIR/histogram.json (per signal: min, max, edges, counts) and OUTPUT_DIR/samples.jsonl
(signal, bucket, value, id, source file:line, text). Library: megatron_ar.text.histogram.
"""
import json
import sys

from megatron_ar.io.records import expand_inputs
from megatron_ar.text.histogram import HistogramConfig, signal_histograms
from megatron_ar.text.signals import SIGNAL_NAMES
from megatron_ar_tools._cli import add_shard_args, cli_main, emit_summary, parser


def _bar(counts):
    m = max(counts) or 1
    blocks = " ▁▂▃▄▅▆▇█"
    return "".join(blocks[round(c / m * 8)] for c in counts)


@cli_main
def main(argv=None):
    p = parser(__doc__)
    add_shard_args(p, shards=False)  # one histogram of the whole run
    p.add_argument("--samples", type=int, default=5, help="records sampled per (signal, bucket)")
    p.add_argument("--signals", nargs="+", default=list(SIGNAL_NAMES), help="signals (default: all)")
    p.add_argument("--max-chars", type=int, default=2000, help="sampled text is cut to this length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-key", default="text")
    p.add_argument("--signals-key", default="quality_signals")
    a = p.parse_args(argv)
    cfg = HistogramConfig(signals=tuple(a.signals), samples_per_bucket=a.samples, max_chars=a.max_chars,
                          seed=a.seed, text_key=a.text_key, signals_key=a.signals_key)
    summary = signal_histograms(expand_inputs(a.input), a.output_dir, cfg, workers=a.workers,
                                on_error=a.on_error, resume=not a.no_resume, progress=not a.no_progress,
                                overwrite=a.overwrite)
    if not a.json:
        print("signal                               min        max        buckets 0..9")
        with open(summary["histogram"], encoding="utf-8") as f:
            hist = json.load(f)["signals"]
        for s, h in hist.items():
            print(f"{s:34s} {h['min']:10.4g} {h['max']:10.4g}  {_bar(h['counts'])}  {h['counts']}")
    emit_summary("signal histogram", summary, a.json)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Print what a training step trained on: per sample the phase, dataset, document ids, token
ranges and decoded text (``megatron_ar.training.backtrace.backtrace_step``).

    python tools/backtrace.py --run-dir runs/star --step 1234 [--rank 0] [--json]
    python tools/backtrace.py --run-dir runs/star --spikes      # every step in spikes.jsonl
"""
import sys

from megatron_ar.training.backtrace import backtrace_step, format_backtrace, spike_steps
from megatron_ar_tools._cli import cli_main, emit_json, parser


@cli_main
def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--step", type=int, action="append", help="0-based step (repeatable)")
    ap.add_argument("--spikes", action="store_true", help="back-trace every step in spikes.jsonl")
    ap.add_argument("--rank", type=int, default=None, help="data-parallel rank (default: all)")
    ap.add_argument("--dp", type=int, default=None,
                    help="data-parallel size of the run, for steps without a batches.jsonl record")
    ap.add_argument("--no-text", action="store_true", help="do not decode text")
    ap.add_argument("--max-chars", type=int, default=300, help="text shown per sample")
    args = ap.parse_args(argv)
    steps = list(args.step or [])
    if args.spikes:
        steps += spike_steps(args.run_dir)
    if not steps:
        ap.error("give --step N or --spikes (no spikes recorded)" if args.spikes else "give --step N")
    results = []
    for step in steps:
        res = backtrace_step(args.run_dir, step, rank=args.rank, decode=not args.no_text,
                             data_parallel_size=args.dp)
        results.append(res)
        print(format_backtrace(res, args.max_chars))
    ok = all(all(v) for r in results for v in r["verified"].values())
    summary = {"steps": steps, "samples": sum(len(r["samples"]) for r in results), "verified": ok}
    if args.json:
        emit_json({**summary, "results": results})
    else:
        print(f"summary: {summary}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

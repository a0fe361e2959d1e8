#!/usr/bin/env python3
"""Draw a run's curves into PNGs: loss by phase, validation loss and bits-per-byte per set,
task accuracy, learning rate, throughput (``megatron_ar.training.plots.plot_run``).

    python tools/plot_run.py runs/star [--out-dir runs/star/plots] [--json]
"""
import sys

from megatron_ar.training.plots import plot_run
from megatron_ar_tools._cli import cli_main, emit_json, parser


@cli_main
def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("run_dir")
    ap.add_argument("--out-dir", default=None, help="default RUN_DIR/plots")
    args = ap.parse_args(argv)
    paths = plot_run(args.run_dir, args.out_dir)
    for p in paths:
        print(p)
    summary = {"pngs": paths}
    if args.json:
        emit_json(summary)
    else:
        print(f"wrote {len(paths)} PNGs")
    return 0 if paths else 1  # the run directory had no curves to draw


if __name__ == "__main__":
    sys.exit(main())

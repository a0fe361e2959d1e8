#!/usr/bin/env python3
"""Draw a run's curves into PNGs: loss by phase, validation loss and bits-per-byte per set,
task accuracy, learning rate, throughput (``megatron_ar.training.plots.plot_run``).

    python tools/plot_run.py runs/star [--out-dir runs/star/plots] [--json]
"""
import argparse
import json
import sys

from megatron_ar.training.plots import plot_run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--out-dir", default=None, help="default RUN_DIR/plots")
    ap.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    args = ap.parse_args(argv)
    paths = plot_run(args.run_dir, args.out_dir)
    for p in paths:
        print(p)
    summary = {"pngs": paths}
    print(json.dumps(summary) if args.json else f"wrote {len(paths)} PNGs")
    return 0 if paths else 1


if __name__ == "__main__":
    sys.exit(main())

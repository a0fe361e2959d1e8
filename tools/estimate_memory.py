#!/usr/bin/env python3
"""Per-GPU memory estimate for a recipe and layout: weights, gradients, optimizer states (with
the distributed optimizer), activations with/without sequence parallelism and recomputation
(``megatron_ar.training.memory``). Any recipe key can be overridden, as for training.

    python tools/estimate_memory.py --config examples/recipes/fanar_star_7b.yaml --world-size 168 \
        [--tensor-model-parallel-size 4 --recompute-granularity full ...] [--json]
"""
import sys

from megatron_ar.training.config import load_config
from megatron_ar.training.plan import build_run_plan, memory_estimate
from megatron_ar_tools._cli import cli_main, emit_json, parser


@cli_main
def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--config", required=True)
    ap.add_argument("--world-size", type=int, required=True, help="number of GPUs")
    args, overrides = ap.parse_known_args(argv)
    cfg = load_config(args.config, overrides)
    est = memory_estimate(build_run_plan(cfg, args.world_size, curriculum=None), cfg).to_dict()
    for k, v in est.items():
        print(f"{k:>16}: {v:,.2f}" if isinstance(v, float) else f"{k:>16}: {v:,}" if isinstance(v, int) else f"{k:>16}: {v}")
    if args.json:
        emit_json(est)
    return 0


if __name__ == "__main__":
    sys.exit(main())

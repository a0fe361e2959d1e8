"""Entry point: ``torchrun ... -m megatron_ar.train --config RECIPE.yaml [--key value ...]``
(console script ``megatron-ar-train``). Parse -> build -> fit -> close; the logic lives in
:mod:`megatron_ar.training`. ``--dry-run`` prints the plan (layout, batch arithmetic, steps
per phase, memory estimate) without starting processes groups or training.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="megatron-ar-train", description=__doc__.split("\n\n")[0],
                                 epilog="Any recipe key can be overridden: --micro-batch-size 2, "
                                        "--optimizer.lr 3e-4, --sequence-parallel, ...")
    ap.add_argument("--config", required=True, help="YAML recipe")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    ap.add_argument("--world-size", type=int, default=None,
                    help="with --dry-run: number of GPUs to plan for (default: WORLD_SIZE or 1)")
    ap.add_argument("--json", action="store_true", help="with --dry-run: last line is one JSON object")
    args, overrides = ap.parse_known_args(argv)
    import warnings

    # megatron-core warns on every rank that TE/Apex are absent (expected on CPU) and torch's
    # dcp about a renamed API; they drown the per-step log lines.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.core")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"megatron\.core")

    from megatron_ar.training.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, overrides)
        if args.dry_run:
            from megatron_ar.training.plan import print_plan

            print_plan(cfg, args.world_size, as_json=args.json)
            return 0
        from megatron_ar.training.builder import build_run, close_run
        from megatron_ar.training.loop import fit

        state = build_run(cfg)
        try:
            fit(state)
        finally:
            close_run(state)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

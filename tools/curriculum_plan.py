#!/usr/bin/env python3
"""Print a recipe's curriculum plan: per phase datasets, weights, samples, tokens, epochs per
dataset, steps, and warnings. Reads only the .idx files (no .bin), so it runs anywhere.

    python tools/curriculum_plan.py RECIPE.yaml [--json] [--global-batch-size N] [--seq-length L]
"""
import argparse
import json
import sys

from megatron_ar.data.curriculum_config import CurriculumConfigError, load_curriculum_config
from megatron_ar.data.curriculum_plan import (
    CurriculumDataError,
    build_manifest,
    fingerprint_of,
    plan_curriculum,
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", help="YAML recipe with a 'data' section")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object (last line)")
    ap.add_argument("--global-batch-size", type=int, default=None, help="override the recipe's")
    ap.add_argument("--seq-length", type=int, default=None, help="override the recipe's")
    args = ap.parse_args(argv)
    try:
        cfg = load_curriculum_config(args.recipe)
        import dataclasses

        upd = {k: v for k, v in (("global_batch_size", args.global_batch_size),
                                 ("seq_length", args.seq_length)) if v is not None}
        cfg = dataclasses.replace(cfg, **upd) if upd else cfg
        plan = plan_curriculum(cfg)
    except (CurriculumConfigError, CurriculumDataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fingerprint = fingerprint_of(build_manifest(cfg, plan))
    if args.json:
        summary = plan.to_dict()
        summary["fingerprint"] = fingerprint
        print(json.dumps(summary, default=str))
    else:
        print(plan.format_text())
        print(f"Data fingerprint: {fingerprint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

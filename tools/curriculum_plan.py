#!/usr/bin/env python3
"""Print a recipe's curriculum plan: per phase datasets, weights, samples, tokens, epochs per
dataset, steps, and warnings. The plan reads only the .idx files, so it runs anywhere; the
data fingerprint also samples the .bin files and is reported as unavailable where they are absent.

    python tools/curriculum_plan.py RECIPE.yaml [--json] [--global-batch-size N] [--seq-length L]
                                    [--rampup-batch-size START INCREMENT SAMPLES]

With batch-size ramp-up (the recipe's schedule.rampup_batch_size or the flag) steps per phase
are counted with megatron-core's ramp-up calculator (megatron_ar.training.rampup).
"""
import sys

from megatron_ar.data.curriculum_config import CurriculumConfigError, load_curriculum_config
from megatron_ar.data.curriculum_plan import (
    CurriculumDataError,
    build_manifest,
    fingerprint_of,
    plan_curriculum,
)
from megatron_ar_tools._cli import cli_main, emit_json, parser


@cli_main(errors=(CurriculumDataError,))
def main(argv=None) -> int:
    ap = parser(__doc__, full_doc=True)
    ap.add_argument("recipe", help="YAML recipe with a 'data' section")
    ap.add_argument("--global-batch-size", type=int, default=None, help="override the recipe's")
    ap.add_argument("--seq-length", type=int, default=None, help="override the recipe's")
    ap.add_argument("--rampup-batch-size", type=int, nargs=3, default=None,
                    metavar=("START", "INCREMENT", "SAMPLES"), help="override the recipe's")
    ap.add_argument("--micro-batch-size", type=int, default=None,
                    help="with ramp-up: override the recipe's (batches must be multiples of it)")
    args = ap.parse_args(argv)
    try:
        cfg = load_curriculum_config(args.recipe)
        import dataclasses

        upd = {k: v for k, v in (("global_batch_size", args.global_batch_size),
                                 ("seq_length", args.seq_length)) if v is not None}
        cfg = dataclasses.replace(cfg, **upd) if upd else cfg
        plan = plan_curriculum(cfg)
        ramp = ramp_steps(args, cfg, plan)
    except (CurriculumConfigError, CurriculumDataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        fingerprint = fingerprint_of(build_manifest(cfg, plan))
    except CurriculumDataError as exc:  # e.g. planning on a machine that holds only the .idx files
        fingerprint = f"unavailable: {exc}"
    if args.json:
        summary = plan.to_dict()
        summary["fingerprint"] = fingerprint
        if ramp is not None:
            summary["rampup"] = ramp
        emit_json(summary)
    else:
        print(plan.format_text())
        if ramp is not None:
            from megatron_ar.training.rampup import format_ramp_plan

            print(format_ramp_plan(ramp))
        print(f"Data fingerprint: {fingerprint}")
    return 0


def ramp_steps(args, cfg, plan):
    """Steps per phase under the recipe's (or --rampup-batch-size) ramp-up, or None."""
    from megatron_ar.training.rampup import ramp_plan, rampup_from_recipe, recipe_micro_batch

    rampup = args.rampup_batch_size or rampup_from_recipe(args.recipe)
    if rampup is None:
        return None
    return ramp_plan(plan, rampup, args.micro_batch_size or recipe_micro_batch(args.recipe))


if __name__ == "__main__":
    sys.exit(main())

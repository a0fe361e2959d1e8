#!/usr/bin/env python3
"""Print a recipe's curriculum plan: per phase datasets, weights, samples, tokens, epochs per
dataset, steps, and warnings. The plan reads only the .idx files, so it runs anywhere; the
data fingerprint also samples the .bin files and is reported as unavailable where they are absent.

    python tools/curriculum_plan.py RECIPE.yaml [--json] [--global-batch-size N] [--seq-length L]
                                    [--rampup-batch-size START INCREMENT SAMPLES] [--world-size N]

The recipe is read by the trainer's own loader and planned by its run plan
(megatron_ar.training.plan.build_run_plan), so the steps shown are the steps the trainer takes,
ramp-up included (megatron-core's batch calculator).
"""
from megatron_ar.data.curriculum_plan import CurriculumDataError
from megatron_ar.training.plan import curriculum_report
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
                    help="override the recipe's (ramp-up batches must be multiples of it)")
    ap.add_argument("--world-size", type=int, default=None,
                    help="GPUs to plan for (default: tensor x pipeline parallel size, i.e. DP 1)")
    args = ap.parse_args(argv)
    overrides = []
    for flag, value in (("--global-batch-size", args.global_batch_size), ("--seq-length", args.seq_length),
                        ("--micro-batch-size", args.micro_batch_size)):
        if value is not None:
            overrides += [flag, str(value)]
    if args.rampup_batch_size is not None:
        overrides += ["--rampup-batch-size", *map(str, args.rampup_batch_size)]
    report = curriculum_report(args.recipe, overrides, args.world_size)
    if args.json:
        emit_json(report["summary"])
    else:
        print(report["text"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

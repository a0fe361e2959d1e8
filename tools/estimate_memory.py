#!/usr/bin/env python3
"""Per-GPU memory of a recipe and layout: the planning estimate (weights, gradients, optimizer
states with the distributed optimizer, activations with/without sequence parallelism and
recomputation; ``megatron_ar.training.memory``) and, unless ``--analytic-only``, the memory
measured by running one rank of the real job on fake tensors (``megatron_ar.training.memory_probe``:
the real model, DDP buffers and optimizer, one whole training step; no GPU, no data). Any recipe
key can be overridden, as for training.

    python tools/estimate_memory.py --config examples/recipes/fanar_star_7b.yaml --world-size 168 \\
        [--tensor-model-parallel-size 4 --recompute-granularity full ...] [--rank R] \\
        [--gpu-memory-gib 80] [--analytic-only] [--json]

Exit status 2, with one line on stderr, when the layout is invalid, when the fake step fails
(the real job would too: shape error, device mismatch...), or when the layout does not fit in
``--gpu-memory-gib`` (the measured peak, or the estimate with ``--analytic-only``).
"""
import warnings

from megatron_ar.training.config import load_config
from megatron_ar.training.dryrun import probe_for_plan
from megatron_ar.training.memory_probe import MemoryLimitError, MemoryProbeError, format_probe
from megatron_ar.training.plan import build_run_plan, memory_estimate
from megatron_ar_tools._cli import cli_main, emit_json, fail, parser


@cli_main(errors=(MemoryProbeError,))
def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--config", required=True)
    ap.add_argument("--world-size", type=int, required=True, help="number of GPUs")
    ap.add_argument("--rank", type=int, default=None,
                    help="rank to measure (default: first rank of the most loaded pipeline stage)")
    ap.add_argument("--gpu-memory-gib", type=float, default=None,
                    help="fail (exit 2) when the peak does not fit in this many GiB")
    ap.add_argument("--analytic-only", action="store_true",
                    help="skip the fake-tensor run; print the planning estimate only")
    ap.add_argument("--all-microbatches", action="store_true",
                    help="run every micro-batch of the step, not only up to the schedule's steady state")
    args, overrides = ap.parse_known_args(argv)
    # megatron-core's notices that it falls back from Transformer Engine / Apex on this machine.
    warnings.filterwarnings("ignore", message=r".*(Transformer Engine and Apex are|Apex is) not installed",
                            category=UserWarning)
    cfg = load_config(args.config, overrides)
    est = memory_estimate(build_run_plan(cfg, args.world_size, curriculum=None), cfg).to_dict()
    for k, v in est.items():
        print(f"{k:>16}: {v:,.2f}" if isinstance(v, float) else f"{k:>16}: {v:,}" if isinstance(v, int) else f"{k:>16}: {v}")
    out = dict(est)
    if args.analytic_only:
        if args.gpu_memory_gib is not None and est["total_gib"] > args.gpu_memory_gib:
            return fail(f"the estimate of {est['total_gib']:.1f} GiB per GPU does not fit in "
                        f"--gpu-memory-gib {args.gpu_memory_gib:g}")
    else:
        try:
            # As the dry run: without Transformer Engine a precision-aware (bf16-moment) recipe is
            # measured with fp32 moments, an upper bound, and the note says by how much.
            probe, note = probe_for_plan(cfg, args.world_size, args.gpu_memory_gib, rank=args.rank,
                                         microbatches="all" if args.all_microbatches else "steady")
        except MemoryLimitError as exc:
            print(format_probe(exc.probe))
            if args.json:
                emit_json(dict(out, measured=exc.probe.to_dict()))
            return fail(f"does not fit: {exc}")
        if probe is not None:
            print(format_probe(probe))
            out["measured"] = probe.to_dict()
        if note:
            print(f"  note: {note}")
            out["measured_note"] = note
    if args.json:
        emit_json(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

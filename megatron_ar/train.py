"""Entry point: ``torchrun ... -m megatron_ar.train --config RECIPE.yaml [--key value ...]``
(console script ``megatron-ar-train``). Parse -> plan -> build -> fit -> close; the logic lives in
:mod:`megatron_ar.training`. ``--dry-run`` prints the run plan (layout, batch arithmetic, steps
per phase, LR milestones, the analytic memory estimate and the memory measured by one fake-tensor
training step of the most loaded rank) without starting process groups or training.
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
    ap.add_argument("--gpu-memory-gib", type=float, default=None,
                    help="with --dry-run: fail (exit 2) when the per-GPU peak does not fit")
    ap.add_argument("--analytic-only", action="store_true",
                    help="with --dry-run: skip the fake-tensor run of the most loaded rank")
    ap.add_argument("--skip-input-checks", action="store_true",
                    help="with --dry-run: do not check that the recipe's paths exist and that the "
                         "vocabulary covers the data (planning before the data is there)")
    ap.add_argument("--stop-marker", default=None, metavar="PATH",
                    help="when training stops early on SIGTERM/SIGUSR1 (after saving its "
                         "checkpoint), rank 0 writes PATH ('<step> <reason>'): the Slurm launcher "
                         "requeues the job when it exists (examples/slurm/_launch.sh)")
    args, overrides = ap.parse_known_args(argv)
    import warnings

    # megatron-core warns on every rank that TE/Apex are absent (expected on CPU) and torch's
    # dcp about a renamed API; they drown the per-step log lines.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.core")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"megatron\.core")

    from megatron_ar.runtime.fusions import CudaConnectionsError, check_cuda_device_max_connections
    from megatron_ar.training.config import ConfigError, load_config
    from megatron_ar.training.memory_probe import MemoryLimitError, MemoryProbeError

    try:
        cfg = load_config(args.config, overrides)                       # parse
        if args.dry_run:
            from megatron_ar.training.dryrun import print_plan

            print_plan(cfg, args.world_size, as_json=args.json,          # plan only
                       analytic_only=args.analytic_only, gpu_memory_gib=args.gpu_memory_gib,
                       check_inputs=not args.skip_input_checks)
            return 0
        # Before the first CUDA call: megatron-core's TP communication overlap needs it.
        check_cuda_device_max_connections(cfg.parallel.tensor_model_parallel_size, 1,
                                          cfg.parallel.sequence_parallel)
        from megatron_ar.training.builder import build_run, close_run
        from megatron_ar.training.loop import fit

        state = build_run(cfg)                                          # plan + build
        try:
            fit(state)                                                  # fit
            if args.stop_marker:
                write_stop_marker(state, args.stop_marker)
        finally:
            close_run(state)                                            # close
    except (ConfigError, CudaConnectionsError, MemoryLimitError, MemoryProbeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def write_stop_marker(state, path: str) -> bool:
    """Rank 0, after ``fit``: when the run left the loop before its last step because of a signal
    (its checkpoint is then published; :mod:`megatron_ar.training.loop`), write ``path`` (atomic)
    so the batch script knows to requeue. A stop by ``exit_interval`` or a finished run writes
    nothing (a requeue would only repeat the exit)."""
    reason = state.stop_reason or ""
    if state.layout.rank != 0 or state.iteration >= state.train_iters or not reason.startswith("signal"):
        return False
    from megatron_ar.io.atomic import write_text_atomic

    write_text_atomic(path, f"{state.iteration} {reason}\n")
    return True


if __name__ == "__main__":
    sys.exit(main())

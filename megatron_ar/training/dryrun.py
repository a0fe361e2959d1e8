"""``--dry-run``: the run plan of a recipe, its analytic per-GPU memory and the memory measured by
one fake-tensor training step of the most loaded rank, printed without any GPU or process group.

Design choices
- The plan and the analytic figures are :mod:`megatron_ar.training.plan`'s; the measurement is
  :mod:`megatron_ar.training.memory_probe` (the real model, DDP buffers and optimizer on fake
  tensors over a fake process group of the real world size, in a child process). This module
  only puts them side by side, so neither of them depends on the other.
- A recipe whose precision features need Transformer Engine cannot be built on a machine without
  it: the precision-aware optimizer (bf16 Adam moments) is probed with fp32 moments instead, an
  upper bound stated as such with the exact saving; fp8 layers are not probed, and the reason is
  printed.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from megatron_ar.training.config import ConfigError, TrainConfig
from megatron_ar.training.plan import _STATE_BYTES, format_plan, plan_run


def probe_for_plan(cfg: TrainConfig, world_size: int, gpu_memory_gib: Optional[float] = None,
                   rank: Optional[int] = None, microbatches: str = "steady"):
    """The fake-tensor memory probe of the recipe (:mod:`megatron_ar.training.memory_probe`) as
    the dry run runs it: ``(probe, note)``. On a machine without Transformer Engine a recipe
    with the precision-aware optimizer (bf16 Adam moments, Fanar Prime) is probed with torch
    AdamW's fp32 moments, an upper bound, and ``note`` says so with the exact saving; fp8 recipes
    cannot be built without TE and return ``(None, reason)``."""
    import dataclasses

    from megatron_ar.models.spec import te_available
    from megatron_ar.training.memory_probe import probe_memory

    o = cfg.optimizer
    if o.fp8_format is not None and not te_available():
        return None, "not run: fp8 layers need Transformer Engine, which is not installed here"
    note = None
    if o.use_precision_aware_optimizer and not te_available():
        cfg = dataclasses.replace(cfg, optimizer=dataclasses.replace(
            o, use_precision_aware_optimizer=False, exp_avg_dtype="fp32", exp_avg_sq_dtype="fp32"))
        note = ("measured with fp32 Adam moments: the recipe's precision-aware optimizer needs "
                "Transformer Engine's FusedAdam, absent here, so the peak is an upper bound")
    probe = probe_memory(cfg, world_size, rank=rank, gpu_memory_gib=gpu_memory_gib,
                         microbatches=microbatches)
    if note is not None:
        moments = _STATE_BYTES[o.exp_avg_dtype] + _STATE_BYTES[o.exp_avg_sq_dtype]
        saved = probe.optimizer * (8 - moments) / 12  # main params 4 + moments 8 bytes measured
        note += f"; the recipe's {o.exp_avg_dtype}/{o.exp_avg_sq_dtype} moments take {saved / 2**30:.2f} GiB less"
    return probe, note


def print_plan(cfg: TrainConfig, world_size: Optional[int] = None, as_json: bool = False,
               analytic_only: bool = False, gpu_memory_gib: Optional[float] = None,
               check_inputs: bool = True) -> Dict[str, Any]:
    """The dry run: the plan, the analytic memory and (unless ``analytic_only``) the memory
    measured on fake tensors for the most loaded rank. With ``gpu_memory_gib`` a layout whose
    peak does not fit raises :class:`~megatron_ar.training.memory_probe.MemoryLimitError` (the
    estimate's, with ``analytic_only``) after printing the figures. ``check_inputs``: the
    recipe's paths and vocabulary coverage (:mod:`megatron_ar.training.inputs`); problems are
    printed and raise :class:`ConfigError` at the end (off: planning before the data exists)."""
    import json
    import os

    from megatron_ar.training.memory_probe import MemoryLimitError, format_probe

    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    pl = plan_run(cfg, world)
    print(format_plan(pl))
    problems = None
    if check_inputs:
        from megatron_ar.training.inputs import input_problems
        from megatron_ar.training.plan import model_config_from

        problems = input_problems(cfg, model_config_from(cfg),
                                  cfg.parallel.tensor_model_parallel_size, progress=True)
        print("inputs: " + ("all found, vocabulary covers the data" if not problems else
                            f"{len(problems)} problem(s)"))
        for msg in problems:
            print(f"  {msg}")
    else:
        print("inputs: not checked (--skip-input-checks)")
    pl["input_problems"] = problems
    limit_error = None
    if not analytic_only:
        try:
            probe, note = probe_for_plan(cfg, world, gpu_memory_gib)
        except MemoryLimitError as exc:
            probe, note, limit_error = exc.probe, None, exc
        if probe is not None:
            print(format_probe(probe))
            pl["memory_measured"] = probe.to_dict()
        if note:
            print(f"  note: {note}")
            pl["memory_measured_note"] = note
    elif gpu_memory_gib is not None and pl["memory_per_gpu"]["total_gib"] > gpu_memory_gib:
        limit_error = ConfigError(f"memory: the estimate of {pl['memory_per_gpu']['total_gib']:.1f} GiB "
                                  f"per GPU does not fit in --gpu-memory-gib {gpu_memory_gib:g}")
    if as_json:
        print(json.dumps(pl, default=str))
    if problems:
        raise ConfigError("the recipe's inputs: " + "; ".join(problems))
    if limit_error is not None:
        raise limit_error
    return pl

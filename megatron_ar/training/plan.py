"""``--dry-run``: what a recipe will do on a given number of GPUs, without training.

Prints the parallel layout, batch arithmetic, steps per curriculum phase, LR milestones and the
per-GPU memory estimate. Needs no process group and no GPU; when the datasets are not on this
machine (planning a cluster run from a laptop), phases with token budgets are still converted to
steps and epoch budgets are reported as unknown.

With batch-size ramp-up (``schedule.rampup_batch_size``) the batch section lists the runs of
equal global batch, steps per phase count the ramped steps whose first sample lies in the
phase (a step straddling a phase boundary is reported), and LR milestones are the steps where
the sample-based schedule's warmup/decay/cool-down points fall (:mod:`megatron_ar.training.rampup`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, Optional

from megatron_ar.training.config import TrainConfig


def _datasets_present(cfg: TrainConfig) -> bool:
    return cfg.data is not None and all(os.path.isfile(p + ".idx") for p in cfg.data.datasets.values())


def plan_run(cfg: TrainConfig, world_size: Optional[int] = None) -> Dict[str, Any]:
    from megatron_ar.training.builder import model_config_from
    from megatron_ar.training.memory import estimate_for_recipe
    from megatron_ar.training.metrics import flop_shape, flops_per_step
    from megatron_ar.training.optimizer import reference_lr, schedule_steps

    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    p, s = cfg.parallel, cfg.schedule
    mc = model_config_from(cfg)
    dp = cfg.data_parallel_size(world)
    nmb = cfg.num_microbatches(world)
    seq = cfg.model.seq_length
    out: Dict[str, Any] = {
        "world_size": world,
        "layout": {"tp": p.tensor_model_parallel_size, "pp": p.pipeline_model_parallel_size,
                   "vpp": cfg.vpp_size(mc.num_layers) or 1, "dp": dp,
                   "sequence_parallel": p.sequence_parallel,
                   "distributed_optimizer": p.use_distributed_optimizer},
        "batch": {"micro_batch_size": s.micro_batch_size, "global_batch_size": s.global_batch_size,
                  "num_microbatches": nmb, "seq_length": seq,
                  "tokens_per_step": s.global_batch_size * seq,
                  "check": f"{s.global_batch_size} = {s.micro_batch_size} x {dp} (DP) x {nmb} (micro-batches)"},
        "model": {"preset": cfg.model.preset, "num_layers": mc.num_layers, "hidden_size": mc.hidden_size,
                  "padded_vocab_size": mc.padded_vocab_size(p.tensor_model_parallel_size)},
    }
    phases = []
    total_steps = 0.0
    if cfg.data is not None:
        if _datasets_present(cfg):
            from megatron_ar.data.curriculum_plan import plan_curriculum

            plan = plan_curriculum(cfg.data)
            for ph in plan.phases:
                n = (ph.end_sample - ph.start_sample) / s.global_batch_size
                phases.append({"name": ph.name, "tokens": ph.tokens, "steps": n,
                               "datasets": {d.dataset: {"share": d.share, "epochs": d.epochs}
                                            for d in ph.datasets}})
                total_steps += n
            out["warnings"] = list(plan.warnings)
        else:
            for ph in cfg.data.phases:
                if ph.tokens is not None:
                    n = math.ceil(ph.tokens / (s.global_batch_size * seq))
                    phases.append({"name": ph.name, "tokens": ph.tokens, "steps": n})
                    total_steps += n
                else:
                    phases.append({"name": ph.name, "epochs": float(ph.epochs), "steps": None,
                                   "note": "epoch budget: needs the .idx files to count samples"})
                    total_steps = float("nan")
    out["phases"] = phases
    train_iters = s.train_iters or (int(total_steps) if total_steps == total_steps and total_steps else None)
    if s.rampup_batch_size is not None:
        train_iters = _ramp_plan(cfg, out, dp)
    out["train_iters"] = train_iters
    if train_iters and s.rampup_batch_size is not None:
        _ramp_lr(cfg, out, train_iters, mc)
    elif train_iters:
        cool = s.lr_cooldown_iters
        if s.lr_decay_style == "cosine-cooldown" and not cool and phases:
            last = cfg.data.phases[-1] if cfg.data is not None else None
            if last is not None and last.lr_schedule in ("linear_to_zero", "cooldown", "cool-down") \
                    and phases[-1].get("steps"):
                cool = int(phases[-1]["steps"])
        s2 = dataclasses.replace(cfg, schedule=dataclasses.replace(s, lr_cooldown_iters=cool))
        st = schedule_steps(s2, train_iters)
        marks = sorted({0, st["warmup"], st["decay"], train_iters - 1})
        out["lr"] = {"steps": st, "milestones": {k: reference_lr(s2, train_iters, k) for k in marks if k >= 0}}
        out["model_tflop_per_step"] = flops_per_step(flop_shape(mc, p.tensor_model_parallel_size),
                                                     s.global_batch_size, seq) / 1e12
    out["memory_per_gpu"] = estimate_for_recipe(cfg, world).to_dict()
    return out


def _phase_bounds(cfg: TrainConfig, phases) -> Optional[list]:
    """(name, start_sample, end_sample) per phase: from the plan when the .idx files are here,
    else from token budgets (rounded up to whole final global batches, as the curriculum does)."""
    s, seq = cfg.schedule, cfg.model.seq_length
    if cfg.data is not None and _datasets_present(cfg):
        from megatron_ar.data.curriculum_plan import plan_curriculum

        return [(ph.name, ph.start_sample, ph.end_sample) for ph in plan_curriculum(cfg.data).phases]
    bounds, start = [], 0
    for ph in (cfg.data.phases if cfg.data is not None else []):
        if ph.tokens is None:
            return None
        n = -(-ph.tokens // seq)
        if cfg.data.align_phases_to_global_batch:
            n = -(-n // s.global_batch_size) * s.global_batch_size
        bounds.append((ph.name, start, start + n))
        start += n
    return bounds


def _ramp_plan(cfg: TrainConfig, out: Dict[str, Any], dp: int) -> Optional[int]:
    """Batch table and steps per phase under ramp-up; returns train_iters (None if unknown)."""
    from megatron_ar.training.rampup import BatchSchedule

    s = cfg.schedule
    bs = BatchSchedule.from_config(cfg, dp)
    bounds = _phase_bounds(cfg, out["phases"])
    total = bounds[-1][2] if bounds else None
    train_iters = s.train_iters or (bs.steps_within(total) if total else None)
    horizon = train_iters or bs.ramp_steps + 1
    table = bs.batch_table(horizon)
    per = s.micro_batch_size * dp
    start, incr, ramp = s.rampup_batch_size
    out["batch"]["rampup"] = {
        "start": start, "increment": incr, "ramp_samples": ramp, "ramp_steps": bs.ramp_steps,
        "table": [dict(r, num_microbatches=r["global_batch_size"] // per) for r in table]}
    out["batch"]["check"] += (f"; ramp-up {start} -> {s.global_batch_size} by {incr} over {ramp:,} "
                              f"samples ({bs.ramp_steps} steps)")
    warnings = out.setdefault("warnings", [])
    if bounds:
        by_name = {ph["name"]: ph for ph in out["phases"]}
        for row in bs.phase_steps(bounds, train_iters):
            ph = by_name.get(row["name"])
            if ph is not None:
                ph.update(steps=row["steps"], start_step=row["start_step"], end_step=row["end_step"])
            if row["mixed_step"] is not None:
                warnings.append(f"ramp-up: step {row['mixed_step']} straddles the end of phase "
                                f"'{row['name']}' (it trains samples of both phases)")
        if train_iters and total is not None:
            used = bs.step_start(train_iters)
            if used < total and s.train_iters is None:
                warnings.append(f"ramp-up: the last {total - used:,} samples of the curriculum are "
                                f"less than one global batch and are not trained")
    return train_iters


def _ramp_lr(cfg: TrainConfig, out: Dict[str, Any], train_iters: int, mc) -> None:
    from megatron_ar.training.metrics import flop_shape, flops_per_step
    from megatron_ar.training.optimizer import reference_lr, schedule_steps
    from megatron_ar.training.rampup import BatchSchedule

    s, p = cfg.schedule, cfg.parallel
    bs = BatchSchedule.from_config(cfg)
    cool = s.lr_cooldown_iters
    if s.lr_decay_style == "cosine-cooldown" and not cool and cfg.data is not None and cfg.data.phases:
        bounds = _phase_bounds(cfg, out["phases"])
        if bounds and cfg.data.phases[-1].lr_schedule in ("linear_to_zero", "cooldown", "cool-down"):
            cool = (bounds[-1][2] - bounds[-1][1]) // s.global_batch_size
    s2 = dataclasses.replace(cfg, schedule=dataclasses.replace(s, lr_cooldown_iters=cool))
    st = schedule_steps(s2, train_iters)
    # Steps at which the sample-based milestones are reached.
    marks = sorted({0, min(bs.steps_to_reach(st["warmup"]), train_iters - 1),
                    min(bs.steps_to_reach(st["decay"]), train_iters - 1), train_iters - 1})
    out["lr"] = {"steps": st, "milestones": {k: reference_lr(s2, train_iters, bs.step_start(k)) for k in marks}}
    out["model_tflop_per_step"] = flops_per_step(flop_shape(mc, p.tensor_model_parallel_size),
                                                 s.global_batch_size, cfg.model.seq_length) / 1e12


def format_plan(pl: Dict[str, Any]) -> str:
    L = pl["layout"]
    b = pl["batch"]
    m = pl["memory_per_gpu"]
    lines = [
        f"layout: {pl['world_size']} GPUs = TP {L['tp']} x PP {L['pp']} (virtual {L['vpp']}) x DP {L['dp']}"
        f"; sequence parallel {L['sequence_parallel']}, distributed optimizer {L['distributed_optimizer']}",
        f"batch: {b['check']}; {b['tokens_per_step']:,} tokens/step at seq {b['seq_length']}"
        + ("".join(f"\n  steps {r['first_step']:,}..{r['first_step'] + r['steps'] - 1:,}: global batch "
                   f"{r['global_batch_size']} ({r['num_microbatches']} micro-batches/rank)"
                   for r in b["rampup"]["table"]) if b.get("rampup") else ""),
        f"model: {pl['model']['preset']} ({pl['model']['num_layers']} layers, hidden {pl['model']['hidden_size']}, "
        f"padded vocab {pl['model']['padded_vocab_size']})",
    ]
    for ph in pl["phases"]:
        steps = "?" if ph.get("steps") is None else f"{ph['steps']:,.1f}"
        if ph.get("start_step") is not None:  # ramp-up: whole steps, with their range
            steps = f"{ph['steps']:,}"
        tok = f"{ph['tokens']:,} tokens" if ph.get("tokens") else f"{ph.get('epochs')} epochs"
        lines.append(f"phase {ph['name']}: {tok}, {steps} steps"
                     + (f" ({ph['start_step']:,}..{ph['end_step'] - 1:,})" if ph.get("start_step") is not None else ""))
        for d, v in (ph.get("datasets") or {}).items():
            lines.append(f"    {d}: share {v['share']:.3f}, {v['epochs']:.2f} epochs")
    for w in pl.get("warnings", []):
        lines.append(f"warning: {w}")
    lines.append(f"train iters: {pl['train_iters']}")
    if "lr" in pl:
        unit = " samples" if pl["lr"]["steps"].get("unit") == "samples" else ""
        lines.append("lr: " + ", ".join(f"step {k}: {v:.3g}" for k, v in pl["lr"]["milestones"].items())
                     + f" (warmup {pl['lr']['steps']['warmup']}{unit}, decay {pl['lr']['steps']['decay']}{unit}, "
                       f"cool-down {pl['lr']['steps']['cooldown']}{unit})")
        lines.append(f"model FLOPs per step: {pl['model_tflop_per_step']:,.1f} TFLOP")
    lines.append(f"memory per GPU (most loaded stage): {m['total_gib']:.1f} GiB = weights {m['weights_gib']:.1f} "
                 f"+ grads {m['grads_gib']:.1f} + optimizer {m['optimizer_gib']:.1f} + activations "
                 f"{m['activations_gib']:.1f} + logits {m['logits_gib']:.1f} ({m['params_per_rank']:,} params/rank; "
                 f"{m['notes']})")
    return "\n".join(lines)


def print_plan(cfg: TrainConfig, world_size: Optional[int] = None, as_json: bool = False) -> Dict[str, Any]:
    pl = plan_run(cfg, world_size)
    print(format_plan(pl))
    if as_json:
        print(json.dumps(pl, default=str))
    return pl

"""``--dry-run``: what a recipe will do on a given number of GPUs, without training.

Prints the parallel layout, batch arithmetic, steps per curriculum phase, LR milestones and the
per-GPU memory estimate. Needs no process group and no GPU; when the datasets are not on this
machine (planning a cluster run from a laptop), phases with token budgets are still converted to
steps and epoch budgets are reported as unknown.
"""
from __future__ import annotations

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
    out["train_iters"] = train_iters
    if train_iters:
        cool = s.lr_cooldown_iters
        if s.lr_decay_style == "cosine-cooldown" and not cool and phases:
            last = cfg.data.phases[-1] if cfg.data is not None else None
            if last is not None and last.lr_schedule in ("linear_to_zero", "cooldown", "cool-down") \
                    and phases[-1].get("steps"):
                cool = int(phases[-1]["steps"])
        s2 = TrainConfig(**{**cfg.__dict__})
        s2.schedule = type(s)(**{**s.__dict__, "lr_cooldown_iters": cool})
        st = schedule_steps(s2, train_iters)
        marks = sorted({0, st["warmup"], st["decay"], train_iters - 1})
        out["lr"] = {"steps": st, "milestones": {k: reference_lr(s2, train_iters, k) for k in marks if k >= 0}}
        out["model_tflop_per_step"] = flops_per_step(flop_shape(mc, p.tensor_model_parallel_size),
                                                     s.global_batch_size, seq) / 1e12
    out["memory_per_gpu"] = estimate_for_recipe(cfg, world).to_dict()
    return out


def format_plan(pl: Dict[str, Any]) -> str:
    L = pl["layout"]
    b = pl["batch"]
    m = pl["memory_per_gpu"]
    lines = [
        f"layout: {pl['world_size']} GPUs = TP {L['tp']} x PP {L['pp']} (virtual {L['vpp']}) x DP {L['dp']}"
        f"; sequence parallel {L['sequence_parallel']}, distributed optimizer {L['distributed_optimizer']}",
        f"batch: {b['check']}; {b['tokens_per_step']:,} tokens/step at seq {b['seq_length']}",
        f"model: {pl['model']['preset']} ({pl['model']['num_layers']} layers, hidden {pl['model']['hidden_size']}, "
        f"padded vocab {pl['model']['padded_vocab_size']})",
    ]
    for ph in pl["phases"]:
        steps = "?" if ph.get("steps") is None else f"{ph['steps']:,.1f}"
        tok = f"{ph['tokens']:,} tokens" if ph.get("tokens") else f"{ph.get('epochs')} epochs"
        lines.append(f"phase {ph['name']}: {tok}, {steps} steps")
        for d, v in (ph.get("datasets") or {}).items():
            lines.append(f"    {d}: share {v['share']:.3f}, {v['epochs']:.2f} epochs")
    for w in pl.get("warnings", []):
        lines.append(f"warning: {w}")
    lines.append(f"train iters: {pl['train_iters']}")
    if "lr" in pl:
        lines.append("lr: " + ", ".join(f"step {k}: {v:.3g}" for k, v in pl["lr"]["milestones"].items())
                     + f" (warmup {pl['lr']['steps']['warmup']}, decay {pl['lr']['steps']['decay']}, "
                       f"cool-down {pl['lr']['steps']['cooldown']})")
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

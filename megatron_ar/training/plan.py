"""The run plan: what a recipe implies about a run, resolved once and used by every consumer.

:func:`build_run_plan` turns a typed recipe (:class:`~megatron_ar.training.config.TrainConfig`)
and a world size into a :class:`RunPlan`: the parallel layout, the batch of every step
(constant, or Megatron-LM's ramp-up), the number of training iterations, the curriculum's
phase bounds in samples and in steps, and the learning-rate schedule's milestones. The trainer
(:func:`megatron_ar.training.builder.build_run`), ``--dry-run``, ``tools/curriculum_plan.py``,
``tools/estimate_memory.py`` and ``tools/backtrace.py`` all read this object; none of them
re-derives a phase bound, a cool-down length or a learning rate.

Design choices
- The batch of a step comes from megatron-core's micro-batch calculator
  (:class:`~megatron_ar.training.rampup.BatchSchedule`), keyed by consumed samples; a constant
  batch is its degenerate case, so there is one code path for both.
- The learning rate at any step comes from megatron-core's ``OptimizerParamScheduler`` object
  (our :class:`~megatron_ar.training.optimizer.CooldownParamScheduler` subclass, the one the
  trainer steps), queried at that step's scheduler position: :meth:`RunPlan.lr_at`. There is no
  second closed-form copy of the schedule to drift from the one that trains.
- Units follow Megatron-LM: with a constant batch the scheduler counts iterations; with
  batch-size ramp-up it counts samples (stepped by each step's global batch), and the
  ``*_iters`` keys mean that many final global batches of samples
  (Megatron-LM ``get_optimizer_param_scheduler``).
- Length: ``schedule.train_iters`` if given (it must fit in the curriculum), else the number of
  whole steps the curriculum holds. Phase bounds come from the curriculum plan when the
  ``.idx`` files are readable (exact sample counts), else from token budgets alone (rounded
  exactly as the curriculum rounds them); epoch budgets without ``.idx`` files leave the length
  unknown, which the dry run reports instead of guessing.
- Fanar's cool-down (Fanar report, Sec. 6.3.1: "the learning rate linearly annealed to zero"
  over the final curated phase): with ``lr_decay_style: cosine-cooldown`` and
  ``lr_cooldown_iters: 0`` the cool-down is the last phase's length when that phase's
  ``lr_schedule`` hint is ``linear_to_zero``/``cooldown``. The plan resolves it; the recipe
  object is never mutated.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from megatron_ar.training.config import ConfigError, TrainConfig

COOLDOWN_HINTS = ("linear_to_zero", "cooldown", "cool-down")


@dataclass(frozen=True)
class Layout:
    """Sizes of the parallel layout a plan was made for."""

    world_size: int
    tp: int
    pp: int
    vpp: int  # virtual stages per pipeline rank (1: no interleaving)
    dp: int
    sequence_parallel: bool
    distributed_optimizer: bool


@dataclass(frozen=True)
class PhaseSteps:
    """One curriculum phase in samples and in steps (a step belongs to the phase of its first
    sample). ``start_sample``/``start_step`` are None when earlier phases' lengths are unknown;
    ``mixed_step`` is a step that straddles the phase's end (ramp-up or unaligned phases)."""

    index: int
    name: str
    budget: Dict[str, Any]
    lr_schedule: Any
    samples: Optional[int]
    start_sample: Optional[int]
    end_sample: Optional[int]
    steps: Optional[int]
    start_step: Optional[int]
    end_step: Optional[int]
    mixed_step: Optional[int] = None
    datasets: Optional[Dict[str, Dict[str, float]]] = None  # name -> share, epochs (with .idx)


@dataclass(frozen=True)
class LRPlan:
    """Resolved arguments of the LR scheduler, in its unit (iterations, or samples under ramp-up)."""

    unit: str  # "iterations" | "samples"
    style: str
    init_lr: float
    max_lr: float
    min_lr: float
    warmup: int
    decay: int
    cooldown: int
    total: int  # scheduler position at the end of the run
    wsd_decay: Optional[int]
    wsd_decay_style: str
    weight_decay: float


@dataclass
class RunPlan:
    """Everything the trainer and the planning tools need to agree on (see module docstring)."""

    layout: Layout
    seq_length: int
    micro_batch_size: int
    global_batch_size: int
    batch: Any  # megatron_ar.training.rampup.BatchSchedule
    train_iters: Optional[int]
    total_samples: Optional[int]  # samples the curriculum holds (None: unknown)
    phases: List[PhaseSteps]
    lr: Optional[LRPlan]
    model_config: Any
    curriculum: Any = None  # megatron_ar.data.curriculum_plan.CurriculumPlan when the .idx were read
    warnings: List[str] = field(default_factory=list)
    preset: str = ""
    # The schedule's shape as the recipe states it, reported even when the length is unknown.
    lr_style: str = ""
    lr_peak: float = 0.0
    lr_min: float = 0.0
    lr_warmup_iters: int = 0
    cooldown_iters: int = 0  # resolved (auto cool-down = the last phase's steps)

    # ------------------------------------------------------------------ per step
    def step(self, k: int) -> Tuple[int, int]:
        """(samples consumed before 0-based step ``k``, its global batch)."""
        return self.batch.step(k)

    def num_microbatches(self, consumed_samples: int) -> int:
        """Micro-batches per data-parallel rank of the step starting at ``consumed_samples``."""
        return self.batch.num_microbatches(consumed_samples)

    @property
    def ramp(self) -> bool:
        return not self.batch.is_constant

    def scheduler_position(self, k: int) -> int:
        """The LR scheduler's ``num_steps`` when step ``k`` runs (iterations or samples)."""
        return self.batch.step_start(k) if self.ramp else k

    def scheduler_increment(self, global_batch: int) -> int:
        """What one optimizer step advances the scheduler by."""
        return global_batch if self.ramp else 1

    def phase_of_step(self, k: int) -> Optional[PhaseSteps]:
        for ph in self.phases:
            if ph.start_step is not None and ph.start_step <= k < ph.end_step:
                return ph
        return None

    # ------------------------------------------------------------------ learning rate
    def build_scheduler(self, optimizer):
        """The megatron-core LR scheduler this run steps (``optimizer``: megatron-core's)."""
        from megatron_ar.training.optimizer import build_scheduler

        if self.lr is None:
            raise ConfigError("schedule.train_iters: the run length is unknown (epoch budgets need "
                              "the datasets' .idx files); give schedule.train_iters")
        return build_scheduler(self.lr, optimizer)

    def lr_at(self, k: int) -> float:
        """LR of step ``k``'s update, from megatron-core's scheduler at that position."""
        stub = types.SimpleNamespace(param_groups=[{"params": []}])
        sch = self.build_scheduler(stub)
        sch.num_steps = self.scheduler_position(k)
        return float(sch.get_lr(stub.param_groups[0]))

    def lr_milestones(self) -> Dict[int, float]:
        """LR at step 0, the end of warmup, the end of decay and the last step."""
        if self.lr is None or not self.train_iters:
            return {}
        last = self.train_iters - 1
        if self.ramp:
            marks = {0, min(self.batch.steps_to_reach(self.lr.warmup), last),
                     min(self.batch.steps_to_reach(self.lr.decay), last), last}
        else:
            marks = {0, min(self.lr.warmup, last), min(self.lr.decay, last), last}
        return {k: self.lr_at(k) for k in sorted(marks)}

    # ------------------------------------------------------------------ reporting
    def batch_table(self) -> List[Dict[str, int]]:
        """Runs of equal global batch over the run (one row for a constant batch)."""
        horizon = self.train_iters or self.batch.ramp_steps + 1
        per = self.micro_batch_size * self.layout.dp
        return [dict(r, num_microbatches=r["global_batch_size"] // per)
                for r in self.batch.batch_table(horizon)]

    def to_dict(self) -> Dict[str, Any]:
        L, mc, s = self.layout, self.model_config, self
        nmb = s.global_batch_size // (s.micro_batch_size * L.dp)
        batch: Dict[str, Any] = {
            "micro_batch_size": s.micro_batch_size, "global_batch_size": s.global_batch_size,
            "num_microbatches": nmb, "seq_length": s.seq_length,
            "tokens_per_step": s.global_batch_size * s.seq_length,
            "check": f"{s.global_batch_size} = {s.micro_batch_size} x {L.dp} (DP) x {nmb} (micro-batches)"}
        if self.ramp:
            start, incr, ramp = self.batch.rampup
            batch["rampup"] = {"start": start, "increment": incr, "ramp_samples": ramp,
                               "ramp_steps": self.batch.ramp_steps, "table": self.batch_table()}
            batch["check"] += (f"; ramp-up {start} -> {s.global_batch_size} by {incr} over "
                               f"{ramp:,} samples ({self.batch.ramp_steps} steps)")
        out: Dict[str, Any] = {
            "world_size": L.world_size,
            "layout": {"tp": L.tp, "pp": L.pp, "vpp": L.vpp, "dp": L.dp,
                       "sequence_parallel": L.sequence_parallel,
                       "distributed_optimizer": L.distributed_optimizer},
            "batch": batch,
            "model": {"preset": self.preset, "num_layers": mc.num_layers,
                      "hidden_size": mc.hidden_size,
                      "padded_vocab_size": mc.padded_vocab_size(L.tp),
                      "attention": _attention(mc)},
            "phases": [_phase_dict(ph) for ph in self.phases],
            "warnings": list(self.warnings),
            "train_iters": self.train_iters,
            "total_samples": self.total_samples,
        }
        lr: Dict[str, Any] = {"style": self.lr_style, "peak": self.lr_peak, "min": self.lr_min,
                              "warmup_iters": self.lr_warmup_iters, "cooldown_iters": self.cooldown_iters}
        if self.lr is not None and self.train_iters:
            steps = {"warmup": self.lr.warmup, "decay": self.lr.decay, "cooldown": self.lr.cooldown}
            if self.ramp:
                steps.update(unit="samples", total=self.lr.total)
                if self.lr.wsd_decay is not None:
                    steps["wsd_decay"] = self.lr.wsd_decay
            lr.update(steps=steps, milestones=self.lr_milestones())
        out["lr"] = lr
        from megatron_ar.training.metrics import flop_shape, flops_per_step

        out["model_tflop_per_step"] = flops_per_step(flop_shape(mc, L.tp), s.global_batch_size,
                                                     s.seq_length) / 1e12
        return out


def _phase_dict(ph: PhaseSteps) -> Dict[str, Any]:
    d: Dict[str, Any] = {"name": ph.name, **ph.budget, "steps": ph.steps,
                         "start_step": ph.start_step, "end_step": ph.end_step,
                         "start_sample": ph.start_sample, "end_sample": ph.end_sample,
                         "mixed_step": ph.mixed_step}
    if ph.lr_schedule is not None:
        d["lr_schedule"] = ph.lr_schedule
    if ph.datasets is not None:
        d["datasets"] = ph.datasets
    if ph.steps is None:
        d["note"] = "epoch budget: needs the .idx files to count samples"
    return d


# ----------------------------------------------------------------------------------------------
# resolution
# ----------------------------------------------------------------------------------------------
def model_config_from(cfg: TrainConfig):
    """ModelConfig of the recipe: a preset name, or a converted checkpoint directory (its
    ``model_config.json``), with ``model.overrides`` and ``model.seq_length`` applied."""
    import os

    from megatron_ar.models.presets import get_preset

    fields = dict(cfg.model.overrides, seq_length=cfg.model.seq_length,
                  attention_backend=cfg.model.attention_backend,
                  fused_kernels=cfg.model.fused_kernels)
    if os.path.isdir(cfg.model.preset):
        from megatron_ar.checkpoint import read_checkpoint_info

        mc = read_checkpoint_info(cfg.model.preset).model_config
        try:
            return mc.replace(**fields)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model.overrides: {exc}") from exc
    try:
        return get_preset(cfg.model.preset, **fields)
    except KeyError as exc:
        raise ConfigError(f"model.preset: {exc.args[0]}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.overrides: {exc}") from exc


def _layout(cfg: TrainConfig, world_size: int, num_layers: int) -> Layout:
    p = cfg.parallel
    if not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world size: must be a positive integer, got {world_size!r}")
    dp = cfg.data_parallel_size(world_size)
    cfg.num_microbatches(world_size)  # batch arithmetic, errors name the key
    return Layout(world_size=world_size, tp=p.tensor_model_parallel_size,
                  pp=p.pipeline_model_parallel_size, vpp=cfg.vpp_size(num_layers) or 1, dp=dp,
                  sequence_parallel=p.sequence_parallel,
                  distributed_optimizer=p.use_distributed_optimizer)


def _datasets_present(cfg: TrainConfig) -> bool:
    import os

    return cfg.data is not None and all(os.path.isfile(p + ".idx") for p in cfg.data.datasets.values())


def _phase_samples(cfg: TrainConfig, curriculum) -> List[Tuple[Optional[int], Optional[Dict[str, Any]]]]:
    """(samples, datasets) per phase: exact from the curriculum plan, else from token budgets
    rounded the way the curriculum rounds them (None for epoch budgets)."""
    if curriculum is not None:
        return [(ph.samples, {d.dataset: {"share": d.share, "epochs": d.epochs} for d in ph.datasets})
                for ph in curriculum.phases]
    s, data = cfg.schedule, cfg.data
    out: List[Tuple[Optional[int], Optional[Dict[str, Any]]]] = []
    for ph in data.phases:
        if ph.tokens is None:
            out.append((None, None))
            continue
        n = -(-ph.tokens // cfg.model.seq_length)
        if data.align_phases_to_global_batch:
            n = -(-n // s.global_batch_size) * s.global_batch_size
        out.append((n, None))
    return out


def _phases(cfg: TrainConfig, curriculum, bs, train_iters: Optional[int]) -> List[PhaseSteps]:
    if cfg.data is None:
        return []
    sizes = _phase_samples(cfg, curriculum)
    bounds: List[Optional[Tuple[int, int]]] = []
    start: Optional[int] = 0
    for n, _ in sizes:
        if start is None or n is None:
            bounds.append(None)
            start = None
        else:
            bounds.append((start, start + n))
            start += n
    known = [(ph.name, b[0], b[1]) for ph, b in zip(cfg.data.phases, bounds) if b is not None]
    rows = {r["name"]: r for r in bs.phase_steps(known, train_iters)} if known else {}
    out = []
    for i, (ph, (n, datasets), b) in enumerate(zip(cfg.data.phases, sizes, bounds)):
        budget = {"tokens": ph.tokens} if ph.tokens is not None else {"epochs": ph.epochs}
        if b is not None:
            r = rows[ph.name]
            out.append(PhaseSteps(i, ph.name, budget, ph.lr_schedule, n, b[0], b[1], r["steps"],
                                  r["start_step"], r["end_step"], r["mixed_step"], datasets))
        elif n is not None and bs.is_constant:
            # Length known, position unknown (an earlier phase has an epoch budget).
            out.append(PhaseSteps(i, ph.name, budget, ph.lr_schedule, n, None, None,
                                  n // bs.global_batch_size, None, None, None, datasets))
        else:
            out.append(PhaseSteps(i, ph.name, budget, ph.lr_schedule, n, None, None, None,
                                  None, None, None, datasets))
    return out


def _train_iters(cfg: TrainConfig, bs, total: Optional[int]) -> Optional[int]:
    """Steps of the run: the curriculum's length in whole steps unless ``schedule.train_iters``
    says fewer (Megatron-LM simulates the ramp the same way for ``--train-samples``)."""
    s = cfg.schedule
    if total is None:
        return s.train_iters
    ramp = f" with rampup_batch_size {s.rampup_batch_size}" if s.rampup_batch_size else ""
    available = bs.steps_within(total)
    if s.train_iters is None:
        if available < 1:
            raise ConfigError(f"schedule.train_iters: the curriculum has {total} samples, less "
                              f"than the first global batch ({bs.global_batch(0)}){ramp}")
        return available
    if s.train_iters > available:
        raise ConfigError(f"schedule.train_iters: {s.train_iters} steps need "
                          f"{bs.step_start(s.train_iters)} samples, the curriculum has {total} "
                          f"({available} steps{ramp})")
    return s.train_iters


def _cooldown_iters(cfg: TrainConfig, phases: List[PhaseSteps]) -> int:
    s = cfg.schedule
    if s.lr_decay_style != "cosine-cooldown" or s.lr_cooldown_iters or not phases:
        return s.lr_cooldown_iters
    last = phases[-1]
    hint = last.lr_schedule if isinstance(last.lr_schedule, str) else None
    if hint in COOLDOWN_HINTS and last.samples is not None:
        return last.samples // s.global_batch_size
    return s.lr_cooldown_iters


def _lr_plan(cfg: TrainConfig, bs, train_iters: int, cooldown_iters: int) -> LRPlan:
    """Scheduler arguments; with ramp-up every count is in samples (Megatron-LM's units)."""
    s, o = cfg.schedule, cfg.optimizer
    cooldown = cooldown_iters if s.lr_decay_style == "cosine-cooldown" else 0
    if bs.is_constant:
        decay = s.lr_decay_iters if s.lr_decay_iters is not None else train_iters - cooldown
        warmup, total, wsd, unit, key = s.lr_warmup_iters, train_iters, s.lr_wsd_decay_iters, \
            "iterations", "schedule.lr_decay_iters"
        if decay <= warmup:
            raise ConfigError(
                f"{key}: decay iterations ({decay}) must exceed lr_warmup_iters ({warmup}); "
                f"train_iters={train_iters}, lr_cooldown_iters={cooldown}")
    else:
        g = s.global_batch_size
        total = bs.step_start(train_iters)
        cooldown *= g
        warmup = s.lr_warmup_samples if s.lr_warmup_samples is not None else s.lr_warmup_iters * g
        if s.lr_decay_samples is not None:
            decay, key = s.lr_decay_samples, "schedule.lr_decay_samples"
        elif s.lr_decay_iters is not None:
            decay, key = s.lr_decay_iters * g, "schedule.lr_decay_iters"
        else:
            decay, key = total - cooldown, "schedule.lr_decay_iters"
        wsd = s.lr_wsd_decay_iters * g if s.lr_wsd_decay_iters is not None else None
        unit = "samples"
        if decay <= warmup:
            raise ConfigError(
                f"{key}: decay samples ({decay}) must exceed warmup samples ({warmup}); the run "
                f"trains {total} samples in {train_iters} ramped steps, cool-down {cooldown} samples")
    return LRPlan(unit=unit, style=s.lr_decay_style, init_lr=s.lr_warmup_init, max_lr=o.lr,
                  min_lr=o.min_lr, warmup=warmup, decay=decay, cooldown=cooldown, total=total,
                  wsd_decay=wsd, wsd_decay_style=s.lr_wsd_decay_style, weight_decay=o.weight_decay)


def build_run_plan(cfg: TrainConfig, world_size: int, curriculum: Any = "auto",
                   model_config=None) -> RunPlan:
    """Resolve ``cfg`` for ``world_size`` ranks (see module docstring).

    ``curriculum``: a :class:`~megatron_ar.data.curriculum_plan.CurriculumPlan` (the training
    dataset's own), ``"auto"`` (read the ``.idx`` files when they are all present) or None (plan
    from the recipe alone). ``model_config``: the run's ModelConfig (default: from the recipe)."""
    from megatron_ar.training.rampup import BatchSchedule

    if model_config is None:
        model_config = model_config_from(cfg)
    layout = _layout(cfg, world_size, model_config.num_layers)
    try:
        model_config.check_layout(layout.tp, layout.pp, layout.vpp, layout.sequence_parallel)
    except ValueError as exc:  # the model layer's ConfigError: the recipe's error here
        raise ConfigError(str(exc)) from None
    s = cfg.schedule
    warnings: List[str] = []
    if curriculum == "auto":
        curriculum = None
        if _datasets_present(cfg):
            from megatron_ar.data.curriculum_plan import plan_curriculum

            curriculum = plan_curriculum(cfg.data)
    if curriculum is not None:
        warnings.extend(curriculum.warnings)
    bs = BatchSchedule(s.global_batch_size, s.micro_batch_size, s.rampup_batch_size, layout.dp)
    phases = _phases(cfg, curriculum, bs, None)
    known_total = None
    if phases and all(ph.end_sample is not None for ph in phases):
        known_total = phases[-1].end_sample
    train_iters = _train_iters(cfg, bs, known_total)
    if train_iters is not None and known_total is not None:
        phases = _phases(cfg, curriculum, bs, train_iters)
        for ph in phases:
            if ph.mixed_step is not None and not bs.is_constant:
                warnings.append(f"ramp-up: step {ph.mixed_step} straddles the end of phase "
                                f"'{ph.name}' (it trains samples of both phases)")
        used = bs.step_start(train_iters)
        if not bs.is_constant and used < known_total and s.train_iters is None:
            warnings.append(f"ramp-up: the last {known_total - used:,} samples of the curriculum "
                            f"are less than one global batch and are not trained")
    cooldown = _cooldown_iters(cfg, phases)
    lr = _lr_plan(cfg, bs, train_iters, cooldown) if train_iters else None
    return RunPlan(layout=layout, seq_length=cfg.model.seq_length,
                   micro_batch_size=s.micro_batch_size, global_batch_size=s.global_batch_size,
                   batch=bs, train_iters=train_iters, total_samples=known_total, phases=phases,
                   lr=lr, model_config=model_config, curriculum=curriculum, warnings=warnings,
                   preset=cfg.model.preset, lr_style=s.lr_decay_style, lr_peak=cfg.optimizer.lr,
                   lr_min=cfg.optimizer.min_lr, lr_warmup_iters=s.lr_warmup_iters,
                   cooldown_iters=cooldown if s.lr_decay_style == "cosine-cooldown" else 0)


# ----------------------------------------------------------------------------------------------
# the dry run
# ----------------------------------------------------------------------------------------------
def plan_run(cfg: TrainConfig, world_size: Optional[int] = None) -> Dict[str, Any]:
    """The ``--dry-run`` report: the run plan plus the per-GPU memory estimate."""
    import os

    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    plan = build_run_plan(cfg, world)
    out = plan.to_dict()
    out["optimizer"] = _optimizer_summary(cfg)
    out["memory_per_gpu"] = memory_estimate(plan, cfg).to_dict()
    return out


_STATE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


def memory_estimate(plan: RunPlan, cfg: TrainConfig, pp_rank: Optional[int] = None):
    """The analytic per-GPU memory of the plan's most loaded stage, or of pipeline stage
    ``pp_rank`` (:func:`megatron_ar.training.memory.estimate_memory`)."""
    from megatron_ar.training.memory import estimate_memory

    L, p, o = plan.layout, cfg.parallel, cfg.optimizer
    moments = 8
    if o.use_precision_aware_optimizer:
        moments = _STATE_BYTES[o.exp_avg_dtype] + _STATE_BYTES[o.exp_avg_sq_dtype]
    return estimate_memory(
        plan.model_config, L.tp, L.pp, L.dp, plan.micro_batch_size, plan.seq_length,
        plan.global_batch_size // (plan.micro_batch_size * L.dp), L.vpp if L.vpp > 1 else None,
        L.sequence_parallel, p.recompute_granularity, o.bf16, L.distributed_optimizer,
        o.grad_reduce_in_fp32, pp_rank=pp_rank, moment_bytes=moments)


def most_loaded_stage(plan: RunPlan, cfg: TrainConfig) -> int:
    """The pipeline stage with the largest planning estimate (ties: the earlier stage)."""
    totals = [memory_estimate(plan, cfg, pp_rank=r).total_gib for r in range(plan.layout.pp)]
    return max(range(plan.layout.pp), key=lambda r: (totals[r], -r))


def _optimizer_summary(cfg: TrainConfig) -> Dict[str, Any]:
    o = cfg.optimizer
    return {"optimizer": "AdamW" if o.optimizer == "adam" else o.optimizer, "lr": o.lr,
            "min_lr": o.min_lr, "adam_beta1": o.adam_beta1, "adam_beta2": o.adam_beta2,
            "adam_eps": o.adam_eps, "weight_decay": o.weight_decay, "clip_grad": o.clip_grad,
            "bf16": o.bf16, "grad_reduce_dtype": "fp32" if o.grad_reduce_in_fp32 or not o.bf16 else "bf16",
            "optimizer_state_dtype": (o.exp_avg_dtype if o.use_precision_aware_optimizer else "fp32"),
            **({"muon": {k: getattr(o, f"muon_{k}") for k in (
                "momentum", "beta2", "ns_steps", "embedding_lr", "unembedding_lr", "scalar_lr")}}
               if o.optimizer == "muon" else {})}


def _attention(mc) -> Dict[str, str]:
    """The core-attention backend this machine would build (``model.attention_backend``);
    an override that cannot run raises here, before anything is built."""
    from megatron_ar.models.spec import attention_choice

    try:
        choice = attention_choice(mc)
    except ValueError as exc:  # the message names model.attention_backend
        raise ConfigError(str(exc)) from None
    return {"backend": choice.backend, "reason": choice.reason}


def _num(x) -> str:
    if x is None:
        return "?"
    return f"{int(x):,}" if float(x).is_integer() else f"{x:,.2f}"


def format_plan(pl: Dict[str, Any]) -> str:
    L, b = pl["layout"], pl["batch"]
    lines = [
        f"layout: {pl['world_size']} GPUs = TP {L['tp']} x PP {L['pp']} (virtual {L['vpp']}) x DP {L['dp']}"
        f"; sequence parallel {L['sequence_parallel']}, distributed optimizer {L['distributed_optimizer']}",
        f"batch: {b['check']}; {b['tokens_per_step']:,} tokens/step at seq {b['seq_length']}"
        + ("".join(f"\n  steps {r['first_step']:,}..{r['first_step'] + r['steps'] - 1:,}: global batch "
                   f"{r['global_batch_size']} ({r['num_microbatches']} micro-batches/rank)"
                   for r in b["rampup"]["table"]) if b.get("rampup") else ""),
        f"model: {pl['model']['preset']} ({pl['model']['num_layers']} layers, hidden {pl['model']['hidden_size']}, "
        f"padded vocab {pl['model']['padded_vocab_size']}); attention "
        f"{pl['model']['attention']['backend']} ({pl['model']['attention']['reason']})",
    ]
    if "optimizer" in pl:
        o = pl["optimizer"]
        m = o.get("muon")
        betas = (f"Muon momentum {m['momentum']:g} (NorMuon beta2 {m['beta2']:g}, {m['ns_steps']} "
                 f"Polar Express steps); AdamW LRs embedding {m['embedding_lr']:g} / unembedding "
                 f"{m['unembedding_lr']:g} / scalars {m['scalar_lr']:g} (nanochat flags)" if m else
                 f"betas ({o['adam_beta1']:g}, {o['adam_beta2']:g})")
        lines.append(f"optimizer: {o['optimizer']} lr {o['lr']:g} -> {o['min_lr']:g}, {betas}, eps {o['adam_eps']:g}, weight decay "
                     f"{o['weight_decay']:g}, clip {o['clip_grad']:g}; {'bf16' if o['bf16'] else 'fp32'} "
                     f"training, gradient reduce in {o['grad_reduce_dtype']}, optimizer state in "
                     f"{o['optimizer_state_dtype']}")
    for ph in pl["phases"]:
        tok = f"{ph['tokens']:,} tokens" if ph.get("tokens") else f"{ph.get('epochs')} epochs"
        where = (f" ({ph['start_step']:,}..{ph['end_step'] - 1:,})" if ph.get("start_step") is not None
                 and ph["end_step"] > ph["start_step"] else "")
        hint = f", lr {ph['lr_schedule']}" if ph.get("lr_schedule") else ""
        lines.append(f"phase {ph['name']}: {tok}, {_num(ph.get('steps'))} steps{where}{hint}")
        for d, v in (ph.get("datasets") or {}).items():
            lines.append(f"    {d}: share {v['share']:.3f}, {v['epochs']:.2f} epochs")
    for w in pl.get("warnings", []):
        lines.append(f"warning: {w}")
    lines.append(f"train iters: {pl['train_iters']}")
    lr = pl.get("lr") or {}
    if "steps" in lr:
        st = lr["steps"]
        unit = " samples" if st.get("unit") == "samples" else ""
        lines.append(f"lr ({lr['style']}): " + ", ".join(f"step {k}: {v:.3g}" for k, v in lr["milestones"].items())
                     + f" (warmup {st['warmup']}{unit}, decay {st['decay']}{unit}, "
                       f"cool-down {st['cooldown']}{unit})")
    elif lr:
        lines.append(f"lr ({lr['style']}): warmup {lr['warmup_iters']:,} steps to {lr['peak']:g}, decay to "
                     f"{lr['min']:g}" + (f", then linear to 0 over {lr['cooldown_iters']:,} steps"
                                         if lr["cooldown_iters"] else "")
                     + " (run length unknown until the datasets' .idx files are readable)")
    lines.append(f"model FLOPs per step: {pl['model_tflop_per_step']:,.1f} TFLOP")
    m = pl.get("memory_per_gpu")
    if m:
        lines.append(f"memory per GPU (most loaded stage): {m['total_gib']:.1f} GiB = weights {m['weights_gib']:.1f} "
                     f"+ grads {m['grads_gib']:.1f} + optimizer {m['optimizer_gib']:.1f} + activations "
                     f"{m['activations_gib']:.1f} + logits {m['logits_gib']:.1f} ({m['params_per_rank']:,} params/rank; "
                     f"{m['notes']})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# the curriculum report (tools/curriculum_plan.py)
# ----------------------------------------------------------------------------------------------
def ramp_summary(plan: RunPlan) -> Optional[Dict[str, Any]]:
    """Steps of the plan under batch-size ramp-up: runs of equal global batch, steps per phase,
    the untrained tail (None without ramp-up)."""
    if not plan.ramp or not plan.train_iters:
        return None
    n = plan.train_iters
    return {"rampup_batch_size": list(plan.batch.rampup), "micro_batch_size": plan.micro_batch_size,
            "total_steps": n,
            "untrained_tail_samples": (plan.total_samples or 0) - plan.batch.step_start(n),
            "batches": plan.batch.batch_table(n),
            "phases": [{"name": ph.name, "start_step": ph.start_step, "end_step": ph.end_step,
                        "steps": ph.steps, "mixed_step": ph.mixed_step} for ph in plan.phases]}


def format_ramp_summary(r: Dict[str, Any]) -> str:
    start, incr, samples = r["rampup_batch_size"]
    lines = [f"Batch-size ramp-up {start} -> +{incr} over {samples:,} samples: {r['total_steps']:,} steps"
             + (f"; the last {r['untrained_tail_samples']:,} samples are less than a global batch "
                "(not trained)" if r["untrained_tail_samples"] else "")]
    for b in r["batches"]:
        lines.append(f"  steps {b['first_step']:,}..{b['first_step'] + b['steps'] - 1:,}: global batch "
                     f"{b['global_batch_size']} (from sample {b['first_sample']:,})")
    for ph in r["phases"]:
        mixed = f"; step {ph['mixed_step']} also trains the next phase" if ph["mixed_step"] is not None else ""
        lines.append(f"  phase '{ph['name']}': steps {ph['start_step']:,}..{ph['end_step'] - 1:,} "
                     f"({ph['steps']:,}){mixed}")
    return "\n".join(lines)


def curriculum_report(recipe: str, overrides: Optional[List[str]] = None,
                      world_size: Optional[int] = None) -> Dict[str, Any]:
    """What ``tools/curriculum_plan.py`` prints: the curriculum plan from the ``.idx`` files,
    the steps under the recipe's batch schedule, and the data fingerprint (``.bin`` sampled;
    reported as unavailable where only the ``.idx`` files are present). Returns
    ``{"plan": RunPlan, "summary": dict, "text": str}``; the plan covers the whole curriculum
    (``schedule.train_iters``, a cap on the run, is reported, not applied)."""
    from megatron_ar.data.curriculum_plan import (
        CurriculumDataError,
        build_manifest,
        fingerprint_of,
        plan_curriculum,
    )
    from megatron_ar.training.config import load_config

    cfg = load_config(recipe, overrides)
    if cfg.data is None:
        raise ConfigError(f"{recipe}: data: the recipe has no data section")
    p = cfg.parallel
    world = world_size or p.tensor_model_parallel_size * p.pipeline_model_parallel_size
    curriculum = plan_curriculum(cfg.data)
    # The curriculum's own length in steps: schedule.train_iters (a cap on the run) is reported
    # beside it, not applied, so the tool shows every step the data holds.
    import dataclasses

    whole = dataclasses.replace(cfg, schedule=dataclasses.replace(cfg.schedule, train_iters=None))
    plan = build_run_plan(whole, world, curriculum=curriculum)
    try:
        fingerprint = fingerprint_of(build_manifest(cfg.data, curriculum))
    except CurriculumDataError as exc:  # e.g. planning on a machine that holds only the .idx files
        fingerprint = f"unavailable: {exc}"
    summary = curriculum.to_dict()
    summary["fingerprint"] = fingerprint
    summary["curriculum_steps"] = plan.train_iters
    summary["train_iters"] = cfg.schedule.train_iters or plan.train_iters
    ramp = ramp_summary(plan)
    if ramp is not None:
        summary["rampup"] = ramp
    text = curriculum.format_text()
    if ramp is not None:
        text += "\n" + format_ramp_summary(ramp)
    text += f"\nData fingerprint: {fingerprint}"
    return {"plan": plan, "summary": summary, "text": text}

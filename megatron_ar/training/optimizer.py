"""Optimizer and learning-rate schedule on top of megatron-core.

Design choices
- The optimizer is megatron-core's ``get_megatron_optimizer`` (Adam with decoupled weight decay =
  AdamW, grad clipping, bf16 main params, the distributed optimizer); nothing is re-implemented.
  ``optimizer: muon`` (nanochat's Muon + AdamW, :mod:`megatron_ar.training.muon`) adds our Muon
  inner optimizer in megatron-core's wrappers, chained with megatron-core's AdamW.
- The schedule is megatron-core's ``OptimizerParamScheduler`` (linear warmup, constant / linear /
  cosine / WSD / inverse-sqrt decay). Fanar's pretraining schedule (Fanar report, Sec. 4, Table 7):
  warmup -> cosine to ``min_lr`` -> a *linear cool-down to zero* over the last phase, is not one
  of its styles, so :class:`CooldownParamScheduler` overrides ``get_lr`` only past
  ``lr_decay_steps`` and adds one key to ``state_dict``; everything else (warmup, cosine, weight
  decay increments, checkpoint value checks) is the base class's.
- Steps are optimizer iterations (``step(1)`` per iteration) when the global batch is constant:
  samples and iterations are proportional and iterations are what recipes state. With
  batch-size ramp-up (``schedule.rampup_batch_size``) the schedule counts *samples*, as
  Megatron-LM does (``step(increment=global_batch)``): warmup/decay/cool-down keep their meaning
  in data seen, whatever the batch of each step; ``*_iters`` keys are converted as that many
  final global batches (Megatron-LM's conversion), ``lr_warmup_samples``/``lr_decay_samples``
  are taken as given (:mod:`megatron_ar.training.rampup`).
- The LR of iteration ``k`` (0-based) is ``get_lr`` at ``num_steps == k``: the scheduler is built
  at step 0 and stepped after each update, as Megatron-LM does (so with ``lr_warmup_init=0`` the
  first update has LR 0). The scheduler's arguments are resolved once by the run plan
  (:mod:`megatron_ar.training.plan`), which also answers "what is the LR at step k" by querying
  this scheduler class, so there is no second formula.
"""
from __future__ import annotations

from typing import Optional

import torch
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_ar.training.config import TrainConfig

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class CooldownParamScheduler(OptimizerParamScheduler):
    """``lr_decay_style="cosine-cooldown"``: warmup -> cosine to min_lr over ``lr_decay_steps``
    -> linear from min_lr to 0 over ``lr_cooldown_steps``; 0 afterwards. Other styles behave
    exactly like the base class."""

    def __init__(self, *args, lr_cooldown_steps: int = 0, **kwargs):
        self.lr_cooldown_steps = int(lr_cooldown_steps)
        super().__init__(*args, **kwargs)

    def get_lr(self, param_group: dict) -> float:
        if self.lr_decay_style != "cosine-cooldown":
            return super().get_lr(param_group)
        min_lr = param_group.get("min_lr", self.min_lr)
        if self.num_steps <= self.lr_decay_steps:
            style, self.lr_decay_style = self.lr_decay_style, "cosine"
            try:
                return super().get_lr(param_group)
            finally:
                self.lr_decay_style = style
        if self.lr_cooldown_steps <= 0:
            return min_lr
        done = min(self.num_steps - self.lr_decay_steps, self.lr_cooldown_steps)
        return min_lr * (1.0 - done / self.lr_cooldown_steps)

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["lr_cooldown_steps"] = self.lr_cooldown_steps
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        sd = dict(state_dict)
        if "lr_cooldown_steps" in sd:
            self.lr_cooldown_steps = int(self._check_and_set(
                self.lr_cooldown_steps, sd.pop("lr_cooldown_steps"), "cool-down iterations"))
        super().load_state_dict(sd)


def build_scheduler(lr, optimizer) -> CooldownParamScheduler:
    """megatron-core's scheduler for a resolved :class:`~megatron_ar.training.plan.LRPlan`
    (positions in iterations, or samples under batch-size ramp-up)."""
    return CooldownParamScheduler(
        optimizer,
        init_lr=lr.init_lr,
        max_lr=lr.max_lr,
        min_lr=lr.min_lr,
        lr_warmup_steps=lr.warmup,
        lr_decay_steps=lr.decay,
        lr_decay_style=lr.style,
        start_wd=lr.weight_decay,
        end_wd=lr.weight_decay,
        wd_incr_steps=lr.total,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=False,
        override_opt_param_scheduler=False,
        wsd_decay_steps=lr.wsd_decay,
        lr_wsd_decay_style=lr.wsd_decay_style,
        lr_cooldown_steps=lr.cooldown if lr.style == "cosine-cooldown" else 0,
    )


def optimizer_config(cfg: TrainConfig):
    from megatron.core.optimizer import OptimizerConfig

    o, p = cfg.optimizer, cfg.parallel
    kwargs = dict(
        # muon: megatron-core builds the AdamW part (megatron_ar.training.muon)
        optimizer="adam" if o.optimizer == "muon" else o.optimizer,
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=o.bf16,
        params_dtype=torch.bfloat16 if o.bf16 else torch.float32,
        use_distributed_optimizer=p.use_distributed_optimizer,
        overlap_param_gather=p.overlap_param_gather,
        use_precision_aware_optimizer=o.use_precision_aware_optimizer,
        # bf16 gradient *reduce* is the DDP buffer dtype (grad_reduce_in_fp32=False, set in
        # the builder); the optimizer's main grads stay fp32 unless the precision-aware
        # optimizer (TE FusedAdam) keeps them in bf16 too.
        main_grads_dtype=(torch.bfloat16 if (o.use_precision_aware_optimizer and not o.grad_reduce_in_fp32)
                          else torch.float32),
        exp_avg_dtype=_dtype(o.exp_avg_dtype),
        exp_avg_sq_dtype=_dtype(o.exp_avg_sq_dtype),
        log_num_zeros_in_grad=False,
    )
    if o.fp8_format is not None:
        kwargs["fp8_recipe"] = o.fp8_recipe
    return OptimizerConfig(**kwargs)


def _dtype(name: str):
    if name == "fp8":
        return torch.uint8  # megatron-core's spelling of fp8 optimizer state
    return _DTYPES[name]


def build_optimizer(cfg: TrainConfig, model_chunks, use_gloo_process_groups: Optional[bool] = None):
    """megatron-core optimizer over the (DDP-wrapped) model chunks."""
    from megatron.core.optimizer import get_megatron_optimizer

    if use_gloo_process_groups is None:
        use_gloo_process_groups = torch.cuda.is_available()
    if cfg.optimizer.optimizer == "muon":
        from megatron_ar.training.muon import build_muon_optimizer

        return build_muon_optimizer(cfg, model_chunks, optimizer_config(cfg), use_gloo_process_groups)
    return get_megatron_optimizer(optimizer_config(cfg), model_chunks,
                                  use_gloo_process_groups=use_gloo_process_groups)

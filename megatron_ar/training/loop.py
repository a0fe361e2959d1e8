"""The fit loop: megatron-core schedules, DDP, optimizer and scheduler; everything else is callbacks.

Design choices
- One step = megatron-core's ``get_forward_backward_func()`` (no pipelining, 1F1B or interleaved
  virtual stages, chosen from the parallel state) over the rank's micro-batches, then
  ``optimizer.step()`` (grad clipping, distributed optimizer) and ``scheduler.step(1)``. The
  same code runs on gloo/CPU and nccl/GPU.
- The step's global batch comes from megatron-core's micro-batch calculator keyed by
  ``consumed_samples`` (:class:`~megatron_ar.training.rampup.BatchSchedule`): constant, or
  Megatron-LM's ``--rampup-batch-size`` ramp, in which case the number of micro-batches varies
  per step and the LR scheduler is stepped by the batch (samples), as in Megatron-LM.
- Sample order is Megatron-LM's ``MegatronPretrainingSampler`` order, computed, not iterated:
  the step that starts at ``consumed_samples`` trains on global indices
  ``[consumed, consumed + global_batch)``; data-parallel rank ``r`` takes, for micro-batch ``m``,
  ``consumed + m*mbs*dp + r*mbs + [0, mbs)``. A resumed run therefore continues with exactly the
  samples the uninterrupted run would have used, and ``tools/backtrace.py`` can reconstruct any
  step from ``(consumed_samples, layout)`` alone (:func:`step_sample_indices`).
- Every rank that needs data (first and last pipeline stage) reads its own micro-batches from
  the memory-mapped dataset instead of Megatron-LM's TP-rank-0 read + broadcast: reads are
  cheap mmaps and deterministic, so no broadcast is needed (trade-off: TP ranks read the same
  bytes N times; fine for mmap'd token files).
- The forward step, loss and the reduction of the logged loss are
  :mod:`megatron_ar.models.step` (shared with evaluation and the parity tests). The loss logged is
  the token-weighted mean over the whole global batch, reduced over all ranks on device tensors
  so every rank holds the same value; decisions taken from it (loss-spike skipping) are
  therefore identical on every rank.
- Micro-batches are built here on the CPU (numpy -> ``torch.from_numpy``) and moved to the device
  by the forward step.
- The loop never type-checks its callbacks: it calls ``on_train_start``, ``before_optimizer_step``
  (a True return skips the update), ``on_step_end``, ``on_train_end`` when present
  (:mod:`megatron_ar.training.callbacks`). Stopping (SIGTERM/SIGUSR1 or a callback) is agreed
  on by an all-reduce so all ranks leave the loop at the same step.
"""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron_ar.models.step import global_sums, run_schedule, token_mean
from megatron_ar.runtime.device import group_tensor


@dataclass
class TrainState:
    """Everything the fit loop and its callbacks share: the recipe, the run plan (length, batch
    of every step, phases, LR schedule; :class:`~megatron_ar.training.plan.RunPlan`), the
    megatron-core objects (model chunks, optimizer, LR scheduler), the data, and the position of
    the run (iteration, consumed samples/tokens) that checkpoints save and resumes restore."""

    cfg: Any
    layout: Any
    model_config: Any
    model: List[torch.nn.Module]
    optimizer: Any
    scheduler: Any
    data: Any
    plan: Any  # megatron_ar.training.plan.RunPlan
    callbacks: List[Any] = field(default_factory=list)
    tokenizer: Any = None
    iteration: int = 0
    consumed_samples: int = 0
    consumed_tokens: int = 0
    stop_requested: bool = False
    stop_reason: Optional[str] = None
    last_batches: Any = None
    last_indices: Any = None
    history: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def seq_length(self) -> int:
        return self.cfg.model.seq_length

    @property
    def train_iters(self) -> int:
        return self.plan.train_iters


# ----------------------------------------------------------------------------------------------
# sample accounting
# ----------------------------------------------------------------------------------------------
def step_sample_indices(consumed: int, global_batch: int, micro_batch: int, dp: int,
                        dp_rank: int) -> List[List[int]]:
    """Global sample indices of each micro-batch of ``dp_rank`` in the step starting at
    ``consumed`` (Megatron-LM MegatronPretrainingSampler order, the curriculum's
    :func:`~megatron_ar.data.curriculum.batch_layout`)."""
    from megatron_ar.data.curriculum import batch_layout

    layout = batch_layout(consumed, global_batch, micro_batch, dp)
    return [[int(i) for i in layout[m, dp_rank]] for m in range(layout.shape[0])]


def sample_to_arrays(sample: Any, seq_length: int) -> Dict[str, np.ndarray]:
    """A dataset item -> tokens/labels/loss_mask of length ``seq_length``. Accepts Megatron
    GPTDataset dicts (tokens/labels/loss_mask) and raw ``seq_length + 1`` token arrays."""
    if isinstance(sample, dict) and "labels" in sample:
        tokens = np.asarray(sample["tokens"], dtype=np.int64)
        labels = np.asarray(sample["labels"], dtype=np.int64)
        mask = sample.get("loss_mask")
        mask = np.ones(len(labels), np.float32) if mask is None else np.asarray(mask, np.float32)
    else:
        arr = sample["text"] if isinstance(sample, dict) and "text" in sample else (
            sample["tokens"] if isinstance(sample, dict) else sample)
        arr = np.asarray(arr, dtype=np.int64)
        tokens, labels = arr[:-1], arr[1:]
        mask = np.ones(len(labels), np.float32)
    if len(tokens) != seq_length:
        raise ValueError(f"dataset sample has {len(tokens)} tokens, model.seq_length is {seq_length}")
    return {"tokens": tokens, "labels": labels, "loss_mask": mask}


def collate(samples: List[Dict[str, np.ndarray]]) -> Dict[str, torch.Tensor]:
    """Stack samples into one CPU micro-batch (the forward step moves it to the device)."""
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}


def needs_data(model=None) -> bool:
    """Whether this rank reads micro-batches: first and last pipeline stages, and every stage of
    a model whose LASER encoder reads the token ids there (Arkadiko V4-A)."""
    from megatron.core import parallel_state as ps

    if model is not None:
        from megatron_ar.models.encoder import needs_tokens_on_every_stage

        if needs_tokens_on_every_stage(model):
            return True
    return ps.is_pipeline_first_stage(ignore_virtual=True) or ps.is_pipeline_last_stage(ignore_virtual=True)


def microbatches_for(data, indices: List[List[int]], seq_length: int) -> List[Dict[str, torch.Tensor]]:
    return [collate([sample_to_arrays(data[i], seq_length) for i in mb]) for mb in indices]


# ----------------------------------------------------------------------------------------------
# one step, the loop
# ----------------------------------------------------------------------------------------------
def train_step(state: TrainState) -> Dict[str, Any]:
    s = state.cfg.schedule
    dp = state.layout.dp
    # Keyed by consumed samples (megatron-core's calculator; constant or ramped), so a resumed
    # run gets the same batch sizes.
    gbs = state.plan.batch.global_batch(state.consumed_samples)
    nmb = state.plan.num_microbatches(state.consumed_samples)
    t0 = time.perf_counter()
    for chunk in state.model:
        chunk.zero_grad_buffer()
    state.optimizer.zero_grad()
    indices = step_sample_indices(state.consumed_samples, gbs, s.micro_batch_size,
                                  dp, state.layout.dp_rank)
    batches = microbatches_for(state.data, indices, state.seq_length) if needs_data(state.model) else None
    losses = run_schedule(state.model, batches, nmb, s.micro_batch_size, state.seq_length,
                          forward_only=False)
    sums = global_sums(losses)
    red = {"loss_sum": float(sums[0]), "tokens": float(sums[1]), "loss": token_mean(sums)}
    lr = _current_lr(state.optimizer)  # the LR this step's update uses
    skip = False
    for cb in state.callbacks:
        fn = getattr(cb, "before_optimizer_step", None)
        if fn is not None and fn(state, red["loss"]):
            skip = True
    if skip:
        # Samples are consumed (the data stream moves on), parameters and optimizer state are
        # untouched; the LR schedule does not advance (as Megatron-LM on a skipped fp16 step).
        grad_norm, ok = float("nan"), False
        state.optimizer.zero_grad()
    else:
        ok, grad_norm, _ = state.optimizer.step()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        if ok:
            # Ramp-up: the schedule counts samples (Megatron-LM); else iterations.
            state.scheduler.step(increment=state.plan.scheduler_increment(gbs))
    elapsed = time.perf_counter() - t0
    step_tokens = gbs * state.seq_length
    metrics = {
        "step": state.iteration,  # 0-based index of the step just taken
        "consumed_samples_before": state.consumed_samples,
        "global_batch_size": gbs,
        "num_microbatches": nmb,
        "loss": red["loss"],
        "loss_tokens": red["tokens"],
        "lr": lr,
        "grad_norm": grad_norm,
        "skipped": bool(skip or not ok),
        "step_time": elapsed,
        "tokens_per_s": step_tokens / max(elapsed, 1e-12),
    }
    state.last_batches = batches  # for callbacks that record what was trained on
    state.last_indices = indices
    state.iteration += 1
    state.consumed_samples += gbs
    if hasattr(state.data, "advance"):
        state.data.advance(gbs)
    state.consumed_tokens += step_tokens
    metrics["consumed_samples"] = state.consumed_samples
    metrics["consumed_tokens"] = state.consumed_tokens
    return metrics


def _current_lr(optimizer) -> float:
    from megatron.core.optimizer_param_scheduler import get_canonical_lr_for_logging

    lr = get_canonical_lr_for_logging(optimizer.param_groups)
    if lr is None:
        lr = optimizer.param_groups[0]["lr"] if optimizer.param_groups else float("nan")
    return float(lr)


class _SignalFlag:
    """SIGTERM/SIGUSR1 set a flag the loop checks at step boundaries (Slurm sends SIGUSR1 via
    ``--signal=USR1@T`` before pre-emption, SIGTERM at cancel/time limit)."""

    def __init__(self, enabled: bool):
        self.received: Optional[str] = None
        self._old = {}
        if enabled:
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                try:
                    self._old[sig] = signal.signal(sig, self._handle)
                except ValueError:  # not the main thread
                    pass

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _agree_stop(local: bool) -> bool:
    if not dist.is_initialized():
        return local
    t = group_tensor([1.0 if local else 0.0], torch.float32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def fit(state: TrainState) -> TrainState:
    """Train until ``state.train_iters`` or a stop request; callbacks do the rest."""
    flag = _SignalFlag(state.cfg.checkpoint.exit_on_signal)
    for chunk in state.model:
        chunk.train()
    try:
        for cb in state.callbacks:
            if hasattr(cb, "on_train_start"):
                cb.on_train_start(state)
        while state.iteration < state.train_iters:
            metrics = train_step(state)
            if flag.received and not state.stop_reason:
                state.stop_reason = f"signal {flag.received}"
            ei = state.cfg.schedule.exit_interval
            if ei and state.iteration % ei == 0 and state.iteration < state.train_iters:
                state.stop_requested = True
                state.stop_reason = state.stop_reason or f"exit_interval {ei}"
            state.stop_requested = _agree_stop(bool(flag.received) or state.stop_requested)
            if state.stop_requested and not state.stop_reason:
                state.stop_reason = "signal on another rank"
            for cb in state.callbacks:
                if hasattr(cb, "on_step_end"):
                    cb.on_step_end(state, metrics)
            state.history.append(metrics)
            if state.stop_requested:
                break
        for cb in state.callbacks:
            if hasattr(cb, "on_train_end"):
                cb.on_train_end(state)
    finally:
        flag.restore()
    return state

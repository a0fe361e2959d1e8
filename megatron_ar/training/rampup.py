"""Batch-size ramp-up (Megatron-LM ``--rampup-batch-size <start> <increment> <ramp-samples>``):
the global batch of every step, keyed by consumed samples.

Design choices
- The per-step global batch is megatron-core's own calculator
  (``megatron.core.num_microbatches_calculator``: ``RampupBatchsizeNumMicroBatchesCalculator``
  with ramp-up, ``ConstantNumMicroBatchesCalculator`` without), driven the way Megatron-LM's
  training loop drives it: ``update(consumed_samples)`` before each step, then the step takes
  ``get_current_global_batch_size()`` samples. We hold a private instance instead of
  megatron-core's process-global one so that a process can plan several runs (dry-run, tests,
  back-tracing) and nothing leaks between them.
- The batch is a function of ``consumed_samples`` only, so a resumed run (which restores
  ``consumed_samples`` from its checkpoint) continues with exactly the batch sizes of the
  uninterrupted run, and step ``k``'s sample range ``[c_k, c_k + g_k)`` is computable from the
  recipe alone (:meth:`BatchSchedule.step_start`): back-tracing and ``--dry-run`` need no log.
  The ramp part of the step -> consumed table is simulated once (a few thousand steps for
  GPT-3's ramp); after the ramp every step has the final batch, which is closed form.
- Length of a run under ramp-up: Megatron-LM requires ``--train-samples`` with ramp-up and
  derives the iteration count by simulating the ramp (``update_train_iters``). Our recipes
  state their budget in tokens/epochs per curriculum phase, so we do the same simulation: with
  ``train_iters`` unset the run has as many steps as fit in the curriculum
  (:meth:`BatchSchedule.steps_within`); a given ``train_iters`` counts real (ramped) steps and
  must fit. The curriculum's tail that is shorter than one final global batch is not trained
  (reported by the plan), exactly as with a constant batch.
- Curriculum phases are measured in samples, so ramp-up does not move phase boundaries; a
  boundary that falls inside a step makes that step mix two phases (the step is labelled with
  the phase of its first sample), and no sample is repeated or dropped.
- LR schedule under ramp-up is measured in samples, as in Megatron-LM (the scheduler is
  stepped with ``increment=global_batch``): iteration-valued keys (``lr_warmup_iters``,
  ``lr_decay_iters``, ``lr_cooldown_iters``, ``lr_wsd_decay_iters``) mean that many *final*
  global batches of samples (Megatron-LM's own conversion in ``get_optimizer_param_scheduler``),
  ``lr_warmup_samples``/``lr_decay_samples`` give samples directly. Without ramp-up nothing
  changes: the scheduler counts iterations.
"""
from __future__ import annotations

import bisect
from typing import Dict, List, Optional, Sequence, Tuple

from megatron_ar.training.config import check_divisible, check_rampup


class BatchSchedule:
    """Global batch per step: constant, or Megatron-LM's ramp-up (start, increment, samples).

    ``data_parallel_size``: when given, every batch is checked to split into whole micro-batches
    of every DP rank (megatron-core's consistency check); when None (planning without a world
    size) only the batch sizes are computed, which do not depend on it."""

    def __init__(self, global_batch_size: int, micro_batch_size: int,
                 rampup: Optional[Sequence[int]] = None, data_parallel_size: Optional[int] = None,
                 rank: int = 1):
        from megatron.core.num_microbatches_calculator import (
            ConstantNumMicroBatchesCalculator,
            RampupBatchsizeNumMicroBatchesCalculator,
        )

        self.global_batch_size = int(global_batch_size)
        self.micro_batch_size = int(micro_batch_size)
        self.data_parallel_size = data_parallel_size
        self.rampup = tuple(int(x) for x in rampup) if rampup else None
        dp = data_parallel_size or 1
        if self.rampup is None:
            check_divisible(self.global_batch_size, micro_batch_size, dp, "schedule.global_batch_size")
            self._calc = ConstantNumMicroBatchesCalculator(self.global_batch_size, micro_batch_size, dp,
                                                           False, rank)
            self._starts = [0]
            return
        check_rampup(self.rampup, self.global_batch_size, micro_batch_size, data_parallel_size)
        start, incr, ramp = self.rampup
        # rank != 0: megatron-core logs only on rank 0; the loop passes the real rank.
        self._calc = RampupBatchsizeNumMicroBatchesCalculator(
            self.global_batch_size, micro_batch_size, dp, False, rank, start, incr, ramp)
        # Steps that start inside the ramp (consumed <= ramp samples, megatron's condition),
        # then the start of the first full-batch step.
        starts = [0]
        while starts[-1] <= ramp:
            starts.append(starts[-1] + self.global_batch(starts[-1]))
        self._starts = starts

    @classmethod
    def from_config(cls, cfg, data_parallel_size: Optional[int] = None, rank: int = 1) -> "BatchSchedule":
        s = cfg.schedule
        return cls(s.global_batch_size, s.micro_batch_size, s.rampup_batch_size, data_parallel_size, rank)

    @property
    def is_constant(self) -> bool:
        return self.rampup is None

    # ------------------------------------------------------------------------------ per step
    def global_batch(self, consumed_samples: int) -> int:
        """Global batch of the step that starts at ``consumed_samples`` (megatron-core's
        calculator, updated the way Megatron-LM's loop updates it)."""
        self._calc.update(int(consumed_samples), consistency_check=self.data_parallel_size is not None)
        return int(self._calc.get_current_global_batch_size())

    def num_microbatches(self, consumed_samples: int) -> int:
        """Micro-batches per DP rank of the step starting at ``consumed_samples``."""
        self.global_batch(consumed_samples)
        return int(self._calc.get())

    @property
    def ramp_steps(self) -> int:
        """Steps that start inside the ramp window (consumed <= ramp samples, megatron's
        condition; the last of them may already have the final batch); 0 without ramp-up."""
        return len(self._starts) - 1

    def step_start(self, step: int) -> int:
        """Consumed samples before 0-based ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        r = self.ramp_steps
        if step <= r:
            return self._starts[step]
        return self._starts[r] + (step - r) * self.global_batch_size

    def step(self, step: int) -> Tuple[int, int]:
        """(consumed samples before ``step``, its global batch)."""
        c = self.step_start(step)
        return c, self.global_batch(c)

    def steps_to_reach(self, samples: int) -> int:
        """Smallest step index whose start is >= ``samples`` (number of steps that start before
        ``samples``)."""
        r = self.ramp_steps
        if samples <= self._starts[r]:
            return bisect.bisect_left(self._starts, samples)
        return r + -(-(samples - self._starts[r]) // self.global_batch_size)

    def steps_within(self, total_samples: int) -> int:
        """Number of whole steps that fit in ``total_samples`` samples."""
        n = self.steps_to_reach(total_samples)
        while n > 0 and self.step_start(n) > total_samples:
            n -= 1
        # steps_to_reach gives the first start >= total; a start == total fits exactly.
        return n

    def batch_table(self, num_steps: int) -> List[Dict[str, int]]:
        """Runs of equal global batch over the first ``num_steps`` steps:
        ``[{first_step, steps, global_batch_size, first_sample}]``."""
        out: List[Dict[str, int]] = []
        for k in range(min(num_steps, self.ramp_steps + 1)):
            c, g = self.step(k)
            if out and out[-1]["global_batch_size"] == g:
                out[-1]["steps"] += 1
            else:
                out.append({"first_step": k, "steps": 1, "global_batch_size": g, "first_sample": c})
        if num_steps > self.ramp_steps + 1:
            out[-1]["steps"] += num_steps - self.ramp_steps - 1
        return out

    def phase_steps(self, phases: Sequence[Tuple[str, int, int]], num_steps: Optional[int] = None
                    ) -> List[Dict[str, object]]:
        """Steps per phase ``(name, start_sample, end_sample)``: a step belongs to the phase of its
        first sample (as the loop labels it); ``mixed_step`` is a step that straddles the phase's
        end boundary."""
        out = []
        for name, a, b in phases:
            first, end = self.steps_to_reach(a), self.steps_to_reach(b)
            if num_steps is not None:
                first, end = min(first, num_steps), min(end, num_steps)
            mixed = None
            if end > 0 and (num_steps is None or end <= num_steps):
                last_c, last_g = self.step(end - 1)
                if last_c < b < last_c + last_g:
                    mixed = end - 1
            out.append({"name": name, "start_step": first, "end_step": end, "steps": end - first,
                        "mixed_step": mixed})
        return out

"""Stateful callbacks of the fit loop: logging, loss-spike detection, batch recording,
evaluation, checkpointing.

Design choices
- Duck-typed: the loop calls ``on_train_start(state)``, ``before_optimizer_step(state, loss)``,
  ``on_step_end(state, metrics)``, ``on_train_end(state)`` and ``close()`` when a callback has
  them; ``state_dict``/``load_state_dict`` make a callback's state part of every checkpoint
  (the spike detector's rolling window must survive a resume for bit-exact skipping).
- Files in the run directory are append-only JSONL written by one rank (``metrics.jsonl``,
  ``spikes.jsonl``, ``batches.jsonl``); on resume, records of steps at or after the resumed
  step are dropped first, so plots and back-tracing never see two versions of a step.
- TensorBoard is always written (it ships with the install); wandb only when importable and
  ``logging.wandb_project`` is set (:mod:`megatron_ar.training.wandb_logger`). Both report the
  scalars of :func:`train_record` / :func:`eval_scalars`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections import deque
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron_ar.runtime.device import group_tensor
from megatron_ar.training.metrics import flop_shape, flops_per_step, throughput


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _last_rank() -> bool:
    return _rank() == (dist.get_world_size() - 1 if dist.is_initialized() else 0)


def truncate_jsonl(path: str, from_step: int) -> None:
    """Drop records with ``step >= from_step`` (a resumed run rewrites those steps)."""
    if not os.path.isfile(path):
        return
    keep = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a killed process
            if rec.get("step", -1) < from_step:
                keep.append(line if line.endswith("\n") else line + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(keep)
    os.replace(tmp, path)


def append_jsonl(path: str, rec: Dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        f.flush()


# ----------------------------------------------------------------------------------------------
class LossSpikeDetector:
    """Flags a step whose loss exceeds mean + k*std of the previous ``window`` (non-spike)
    losses; writes ``spikes.jsonl`` and, with ``skip=True``, skips that update (the samples are
    still consumed). Needs ``window // 2`` losses before it judges.

    - Spike losses stay out of the window, so one bad batch does not widen the band and hide
      the next one (OLMo-core's ``SkipStepOptimizer`` keeps them in its window instead).
    - A level shift is not a spike: after ``level_shift_steps`` consecutive (finite) spike
      losses the window is re-based on them and that step is not skipped. With skipping on, the
      weights were frozen during that run of spikes, so a persistently higher loss can only come
      from the data (e.g. a curriculum phase that switches to code); without this rule such a
      phase would never be trained on (measured: tests/training/test_train_precision.py).
    - The decision is agreed by all ranks (one all-reduce of the flag per step): every rank
      already holds the same reduced loss and window, so they must agree; a disagreement would
      desynchronise the optimizer's collectives, hence a loud error instead of a hang.
    """

    name = "loss_spike"

    def __init__(self, sigma: float, window: int, skip: bool, run_dir: str,
                 level_shift_steps: int = 5):
        self.sigma, self.window, self.skip, self.run_dir = sigma, window, skip, run_dir
        self.level_shift_steps = level_shift_steps
        self.losses: deque = deque(maxlen=window)
        self.path = os.path.join(run_dir, "spikes.jsonl")
        self.spikes: List[int] = []
        self.pending: List[float] = []  # the current run of consecutive finite spike losses

    def on_train_start(self, state) -> None:
        if _rank() == 0:
            os.makedirs(self.run_dir, exist_ok=True)
            truncate_jsonl(self.path, state.iteration)

    def judge(self, loss: float) -> Optional[Dict[str, float]]:
        if len(self.losses) < max(2, self.window // 2) or not math.isfinite(loss):
            return None if math.isfinite(loss) else {"mean": float("nan"), "std": float("nan"), "z": float("inf")}
        arr = np.asarray(self.losses, dtype=np.float64)
        mean, std = float(arr.mean()), float(arr.std())
        z = (loss - mean) / max(std, 1e-12)
        return {"mean": mean, "std": std, "z": z} if z > self.sigma else None

    @staticmethod
    def _ranks_flagged(flag: bool) -> tuple:
        if not dist.is_initialized():
            return int(flag), 1
        t = group_tensor([1 if flag else 0], torch.int64)
        dist.all_reduce(t)
        return int(t.item()), dist.get_world_size()

    def before_optimizer_step(self, state, loss: float) -> bool:
        hit = self.judge(loss)
        n, world = self._ranks_flagged(hit is not None)
        if 0 < n < world:
            raise RuntimeError(f"loss-spike detector: {n} of {world} ranks flagged step "
                               f"{state.iteration} (loss {loss!r}); their rolling windows diverged")
        if hit is None:
            self.losses.append(loss)
            self.pending = []
            return False
        self.spikes.append(state.iteration)
        shift = False
        if math.isfinite(loss):
            self.pending.append(loss)
            if len(self.pending) >= self.level_shift_steps:
                shift = True
                self.losses = deque(self.pending, maxlen=self.window)
                self.pending = []
        skipped = self.skip and not shift
        if _rank() == 0:
            append_jsonl(self.path, {"step": state.iteration, "loss": loss, **hit,
                                     "sigma": self.sigma, "skipped": skipped, "level_shift": shift,
                                     "ranks_flagged": n, "world_size": world,
                                     "consumed_samples": state.consumed_samples})
            what = (f" (level shift after {self.level_shift_steps} consecutive spikes: window "
                    "re-based, update taken)" if shift else (" (update skipped)" if skipped else ""))
            print(f"[spike] step {state.iteration}: loss {loss:.4f} is {hit['z']:.1f} sigma above "
                  f"the mean {hit['mean']:.4f}; back-trace: python tools/backtrace.py --run-dir "
                  f"{self.run_dir} --step {state.iteration}" + what, flush=True)
        return skipped

    def state_dict(self) -> Dict[str, Any]:
        return {"losses": list(self.losses), "spikes": list(self.spikes), "pending": list(self.pending)}

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        self.losses = deque(sd.get("losses", []), maxlen=self.window)
        self.spikes = list(sd.get("spikes", []))
        self.pending = list(sd.get("pending", []))


# ----------------------------------------------------------------------------------------------
def tokens_digest(batches) -> List[str]:
    """sha256 (16 hex) of each micro-batch's input tokens + labels, as trained on."""
    out = []
    for b in batches or []:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(b["tokens"].numpy().astype(np.int64)).tobytes())
        h.update(np.ascontiguousarray(b["labels"].numpy().astype(np.int64)).tobytes())
        out.append(h.hexdigest()[:16])
    return out


class BatchRecorder:
    """Writes ``batches.jsonl``: per step its consumed-sample offset, batch geometry and phase
    (enough for :func:`megatron_ar.training.backtrace.backtrace_step` to rebuild it), plus a
    digest of the tokens each data-parallel rank actually trained on (so back-tracing is
    verifiable). Written by the ranks holding the data for (TP 0, first stage) of each DP rank."""

    name = "batch_recorder"

    def __init__(self, run_dir: str):
        self.run_dir = run_dir

    def _path(self, dp_rank: int) -> str:
        return os.path.join(self.run_dir, "batches" if dp_rank == 0 else f"batches_dp{dp_rank}") + ".jsonl"

    def _writer(self) -> bool:
        from megatron.core import parallel_state as ps

        return ps.get_tensor_model_parallel_rank() == 0 and ps.is_pipeline_first_stage(ignore_virtual=True)

    def on_train_start(self, state) -> None:
        if self._writer():
            os.makedirs(self.run_dir, exist_ok=True)
            truncate_jsonl(self._path(state.layout.dp_rank), state.iteration)

    def on_step_end(self, state, metrics: Dict[str, Any]) -> None:
        if not self._writer():
            return
        s = state.cfg.schedule
        c0 = metrics["consumed_samples_before"]
        rec = {"step": metrics["step"], "consumed_samples": c0,
               "global_batch_size": metrics.get("global_batch_size", s.global_batch_size),  # ramp-up
               "micro_batch_size": s.micro_batch_size,
               "data_parallel_size": state.layout.dp, "dp_rank": state.layout.dp_rank,
               "indices": state.last_indices, "digests": tokens_digest(state.last_batches),
               "loss": metrics["loss"], "skipped": metrics["skipped"]}
        if hasattr(state.data, "phase_index"):
            p = state.data.phase_index(c0)
            rec["phase"] = state.data.plan.phases[p].name
        append_jsonl(self._path(state.layout.dp_rank), rec)


# ----------------------------------------------------------------------------------------------
# The per-step scalars every sink (stdout, metrics.jsonl, TensorBoard, wandb) reports.
TRAIN_SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_device", "mfu")


def train_record(state, metrics: Dict[str, Any], flops: float, peak_tflops: float) -> Dict[str, Any]:
    """The loop's step metrics plus phase, TFLOP/s per device and MFU (one definition for all
    loggers, so metrics.jsonl, TensorBoard and wandb cannot disagree)."""
    g, g0 = metrics.get("global_batch_size"), state.cfg.schedule.global_batch_size
    if g is not None and g != g0:  # batch-size ramp-up: ``flops`` is per final global batch
        flops = flops * g / g0  # (Megatron's FLOP formula is linear in the batch)
    tput = throughput(flops, metrics["step_time"], state.layout.world_size, peak_tflops)
    phase = None
    if hasattr(state.data, "phase_index"):
        phase = state.data.plan.phases[state.data.phase_index(metrics["consumed_samples_before"])].name
    return dict(metrics, phase=phase, tflops_per_device=tput["tflops_per_device"], mfu=tput["mfu"],
                kind="train")


def train_scalars(rec: Dict[str, Any]) -> Dict[str, float]:
    """The named scalars of a :func:`train_record` (non-finite values, e.g. the grad norm of
    a skipped step, are left out: TensorBoard and wandb plot them as gaps anyway)."""
    out = {f"train/{k}": float(rec[k]) for k in TRAIN_SCALARS
           if rec.get(k) is not None and math.isfinite(rec[k])}
    if rec.get("phase") and math.isfinite(rec["loss"]):
        out[f"train/loss_by_phase/{rec['phase']}"] = float(rec["loss"])
    out["train/consumed_tokens"] = rec["consumed_tokens"]
    return out


def eval_scalars(results: Dict[str, Any]) -> Dict[str, float]:
    """``valid/<set>/{loss,bpb}`` and ``tasks/<task>/{acc,acc_norm}`` of one evaluation."""
    out: Dict[str, float] = {}
    for name, r in results.get("valid", {}).items():
        out[f"valid/{name}/loss"] = r["loss"]
        if r.get("bpb") is not None:
            out[f"valid/{name}/bpb"] = r["bpb"]
    for name, r in results.get("tasks", {}).items():
        out[f"tasks/{name}/acc"] = r["acc"]
        out[f"tasks/{name}/acc_norm"] = r["acc_norm"]
    return out


class MetricsLogger:
    """One stdout line per ``log_interval`` steps (on the last rank, which holds the loss in
    Megatron-LM too; here every rank has it), ``metrics.jsonl``, TensorBoard. wandb is a
    separate callback (:mod:`megatron_ar.training.wandb_logger`)."""

    name = "metrics_logger"

    def __init__(self, cfg, model_config):
        self.cfg = cfg
        self.run_dir = cfg.logging.run_dir
        self.path = os.path.join(self.run_dir, "metrics.jsonl")
        self.tp = cfg.parallel.tensor_model_parallel_size
        self.shape = flop_shape(model_config, self.tp)
        self.tb = None

    def _active(self) -> bool:
        return _rank() == 0

    def on_train_start(self, state) -> None:
        self.flops = flops_per_step(self.shape, state.cfg.schedule.global_batch_size, state.seq_length)
        if not self._active():
            return
        os.makedirs(self.run_dir, exist_ok=True)
        truncate_jsonl(self.path, state.iteration)
        if self.cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(self.run_dir, "tensorboard"), purge_step=state.iteration)
        print(f"[train] {state.train_iters} steps, start at step {state.iteration} "
              f"(consumed samples {state.consumed_samples}); layout TP={state.layout.tp} "
              f"PP={state.layout.pp} VPP={state.layout.vpp or 1} DP={state.layout.dp}; "
              f"{self.flops / 1e12:.4g} model TFLOP per step", flush=True)

    def on_step_end(self, state, metrics: Dict[str, Any]) -> None:
        if not self._active():
            return
        rec = train_record(state, metrics, self.flops, self.cfg.logging.peak_tflops)
        phase = rec["phase"]
        append_jsonl(self.path, rec)
        step = metrics["step"]
        if step % self.cfg.logging.log_interval == 0 or step + 1 == state.train_iters:
            print(f"step {step + 1:>6}/{state.train_iters} | phase {phase} | tokens "
                  f"{metrics['consumed_tokens']:.4g} | loss {metrics['loss']:.4f} | lr {metrics['lr']:.3e} | "
                  f"grad norm {metrics['grad_norm']:.3f} | {metrics['tokens_per_s']:.4g} tok/s | "
                  f"{rec['tflops_per_device']:.4g} TFLOP/s/dev | MFU {100 * rec['mfu']:.3g}%"
                  + (" | skipped" if metrics["skipped"] else ""), flush=True)
        if self.tb is not None:
            for k, v in train_scalars(rec).items():
                self.tb.add_scalar(k, v, step)

    def log_eval(self, state, results: Dict[str, Any]) -> None:
        if not self._active():
            return
        step = state.iteration - 1
        append_jsonl(self.path, {"kind": "eval", "step": step, **results})
        parts = []
        for name, r in results.get("valid", {}).items():
            bpb = f" bpb {r['bpb']:.4f}" if r.get("bpb") is not None else ""
            parts.append(f"{name}: loss {r['loss']:.4f}{bpb}")
        for name, r in results.get("tasks", {}).items():
            parts.append(f"{name}: acc {r['acc']:.3f} acc_norm {r['acc_norm']:.3f} (n={r['n']})")
        if self.tb is not None:
            for k, v in eval_scalars(results).items():
                self.tb.add_scalar(k, v, step)
        for g in results.get("generations", []):
            parts.append(f"generate {g['prompt']!r} -> {g['completion']!r}")
        print(f"[eval] step {step + 1} | " + " | ".join(parts), flush=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


# ----------------------------------------------------------------------------------------------
class EvalCallback:
    """Every ``eval.eval_interval`` steps: validation loss/BPB per named set, multiple-choice
    tasks, optional generations (:mod:`megatron_ar.training.eval`)."""

    name = "eval"

    def __init__(self, cfg):
        self.cfg = cfg
        self.evaluator = None

    def run(self, state) -> Dict[str, Any]:
        from megatron_ar.training.eval import Evaluator

        if self.evaluator is None:
            self.evaluator = Evaluator(state)
        results = self.evaluator.evaluate(state)
        for cb in state.callbacks:
            if hasattr(cb, "log_eval"):
                cb.log_eval(state, results)
        return results

    def on_step_end(self, state, metrics: Dict[str, Any]) -> None:
        n = self.cfg.eval.eval_interval
        if n and (state.iteration % n == 0 or state.iteration == state.train_iters):
            self.run(state)


# ----------------------------------------------------------------------------------------------
class CheckpointCallback:
    """Saves every ``checkpoint.save_interval`` steps, on a stop request (signal) and at the end."""

    name = "checkpoint"

    def __init__(self, cfg):
        self.cfg = cfg
        self.last_saved: Optional[int] = None

    def _save(self, state) -> None:
        from megatron_ar.training.checkpointing import save_checkpoint

        path = save_checkpoint(state)
        self.last_saved = state.iteration
        if _rank() == 0:
            print(f"[checkpoint] saved step {state.iteration} -> {path}", flush=True)

    def on_train_start(self, state) -> None:
        self.last_saved = state.iteration if state.iteration else None
        if self.cfg.checkpoint.exit_on_signal:
            # Slurm signals every process of the step: the save answering a SIGUSR1 needs the
            # checkpoint writer's helper processes alive (megatron_ar.compat.dist_checkpointing)
            from megatron_ar.compat.dist_checkpointing import start_writer_helpers_shielded

            start_writer_helpers_shielded()

    def on_step_end(self, state, metrics: Dict[str, Any]) -> None:
        n = self.cfg.checkpoint.save_interval
        if (n and state.iteration % n == 0) or state.stop_requested:
            self._save(state)
            if state.stop_requested and _rank() == 0:
                print(f"[checkpoint] stopping after step {state.iteration}: {state.stop_reason}", flush=True)

    def on_train_end(self, state) -> None:
        if self.last_saved != state.iteration:
            self._save(state)

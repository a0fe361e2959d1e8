"""Weights & Biases logging callback: the same per-step scalars as TensorBoard, the resolved
config, one process, one wandb run across checkpoint resumes (TensorBoard always, wandb when
installed and configured).

Design choices
- Configured means ``logging.wandb_project`` is set (Megatron-LM's ``--wandb-project``; also
  ``--wandb-exp-name`` and ``--wandb-save-dir``, same flag names). Not configured: wandb is never
  imported and nothing is written. Configured but not installed, or ``wandb.init`` fails (no API
  key in online mode, no network): one warning line and the run goes on with TensorBoard and
  metrics.jsonl. A logging back-end must not kill a multi-day job; the warning says why.
- One process logs: the last rank (``world_size - 1``), which is on the last pipeline stage, as
  in Megatron-LM (``get_wandb_writer`` lives on the last rank). The loop reduces the loss to
  every rank, so it is the same number rank 0 writes to metrics.jsonl.
- The scalars are those of :func:`megatron_ar.training.callbacks.train_scalars` /
  :func:`~megatron_ar.training.callbacks.eval_scalars`, the functions TensorBoard uses, plus the
  phase name as text; wandb's ``step`` is the 0-based step index, TensorBoard's too.
- Resume: the run id is kept in ``<run_dir>/wandb_run_id.txt`` (temp file + rename). A run that
  starts at step > 0 (resumed from a checkpoint) reuses that id with ``resume="allow"``, so the
  curves continue in the same wandb run; a run starting at step 0 gets a fresh id. Trade-off:
  wandb keeps the first value logged for a step and ignores steps below its highest logged one,
  so after a kill -9 the steps between the checkpoint and the kill keep the killed process's
  values; the resume is bit-exact (tests/training/test_train_e2e.py), so they are the same numbers.
- The resolved config (``config.to_dict``, what config.yaml holds) plus derived values (layout,
  train iterations, model FLOPs per step, data fingerprint) is the wandb run config.
"""
from __future__ import annotations

import os
import secrets
import string
from typing import Any, Dict, Optional

import torch.distributed as dist

from megatron_ar.training.callbacks import eval_scalars, train_record, train_scalars
from megatron_ar.training.metrics import flop_shape, flops_per_step

RUN_ID_FILE = "wandb_run_id.txt"


def reporting_rank() -> bool:
    """True on the one process that logs to wandb (the last rank: last pipeline stage)."""
    if not dist.is_initialized():
        return True
    return dist.get_rank() == dist.get_world_size() - 1


def new_run_id() -> str:
    """8 characters of [a-z0-9], the form wandb gives its own ids (its generator is not public API)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def read_run_id(run_dir: str) -> Optional[str]:
    path = os.path.join(run_dir, RUN_ID_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        rid = f.read().strip()
    return rid or None


def write_run_id(run_dir: str, run_id: str) -> None:
    from megatron_ar.io.atomic import write_text_atomic

    write_text_atomic(os.path.join(run_dir, RUN_ID_FILE), run_id + "\n")


def wandb_config(state, flops: float) -> Dict[str, Any]:
    """The resolved recipe plus derived values, as the wandb run config."""
    from megatron_ar.training.checkpointing import data_fingerprint
    from megatron_ar.training.config import to_dict

    out = to_dict(state.cfg)
    lay = state.layout
    out["derived"] = {"world_size": lay.world_size, "tp": lay.tp, "pp": lay.pp, "vpp": lay.vpp or 1,
                      "dp": lay.dp, "train_iters": state.train_iters,
                      "model_flops_per_step": flops, "data_fingerprint": data_fingerprint(state.data)}
    return out


class WandbLogger:
    """Callback: wandb.init on the reporting rank, ``log`` per step and per evaluation, ``finish``
    on close. No ``state_dict``: the run id lives in the run directory, not in checkpoints."""

    name = "wandb_logger"

    def __init__(self, cfg, model_config):
        self.cfg = cfg
        self.shape = flop_shape(model_config, cfg.parallel.tensor_model_parallel_size)
        self.run = None
        self.flops = 0.0

    @staticmethod
    def configured(cfg) -> bool:
        return bool(cfg.logging.wandb_project)

    def on_train_start(self, state) -> None:
        self.flops = flops_per_step(self.shape, state.cfg.schedule.global_batch_size, state.seq_length)
        if not self.configured(self.cfg) or not reporting_rank():
            return
        lg = self.cfg.logging
        try:
            import wandb
        except ImportError:
            print(f"[logging] logging.wandb_project is {lg.wandb_project!r} but wandb is not "
                  "installed (pip install wandb); logging to TensorBoard and metrics.jsonl only",
                  flush=True)
            return
        run_dir = lg.run_dir
        os.makedirs(run_dir, exist_ok=True)
        run_id = read_run_id(run_dir) if state.iteration > 0 else None
        resumed = run_id is not None
        run_id = run_id or new_run_id()
        save_dir = lg.wandb_save_dir or run_dir
        os.makedirs(save_dir, exist_ok=True)
        try:
            self.run = wandb.init(
                project=lg.wandb_project, name=lg.wandb_exp_name or os.path.basename(os.path.abspath(run_dir)),
                dir=save_dir, id=run_id, resume="allow", config=wandb_config(state, self.flops))
        except Exception as exc:  # wandb raises its own UsageError/CommError types
            print(f"[logging] wandb.init failed ({type(exc).__name__}: {exc}); logging to TensorBoard "
                  "and metrics.jsonl only", flush=True)
            self.run = None
            return
        write_run_id(run_dir, run_id)
        print(f"[logging] wandb run {run_id} ({'resumed' if resumed else 'new'}) in project "
              f"{lg.wandb_project!r}, files under {save_dir}", flush=True)

    def on_step_end(self, state, metrics: Dict[str, Any]) -> None:
        if self.run is None:
            return
        rec = train_record(state, metrics, self.flops, self.cfg.logging.peak_tflops)
        row: Dict[str, Any] = train_scalars(rec)
        if rec["phase"] is not None:
            row["train/phase"] = rec["phase"]
        self.run.log(row, step=metrics["step"])

    def log_eval(self, state, results: Dict[str, Any]) -> None:
        if self.run is None:
            return
        self.run.log(eval_scalars(results), step=state.iteration - 1)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None

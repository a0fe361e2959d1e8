"""Curves of a run as PNGs (``tools/plot_run.py RUN_DIR``): loss by phase, validation loss and
bits-per-byte per set, multiple-choice accuracy, learning rate, throughput.

Design choices
- Reads the run's ``metrics.jsonl`` (written by the training loop, one record per step and per
  evaluation); when it is absent, falls back to the TensorBoard event files under
  ``RUN_DIR/tensorboard`` via tensorboard's own ``EventAccumulator``, so runs logged only to
  TensorBoard still plot.
- matplotlib with the Agg backend (no display needed); every figure is written to a temporary
  name and renamed, like every other output of the project.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any, Dict, List


def read_metrics(run_dir: str) -> Dict[str, List[Dict[str, Any]]]:
    """``{"train": [...], "eval": [...]}`` records of a run directory."""
    path = os.path.join(run_dir, "metrics.jsonl")
    out: Dict[str, List[Dict[str, Any]]] = {"train": [], "eval": []}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                out["eval" if rec.get("kind") == "eval" else "train"].append(rec)
        return out
    tb = os.path.join(run_dir, "tensorboard")
    if not os.path.isdir(tb):
        raise FileNotFoundError(f"{run_dir}: neither metrics.jsonl nor tensorboard/ found")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(tb, size_guidance={"scalars": 0})
    acc.Reload()
    steps: Dict[int, Dict[str, Any]] = defaultdict(dict)
    evals: Dict[int, Dict[str, Any]] = defaultdict(lambda: {"valid": defaultdict(dict), "tasks": defaultdict(dict)})
    for tag in acc.Tags()["scalars"]:
        for ev in acc.Scalars(tag):
            parts = tag.split("/")
            if parts[0] == "train" and len(parts) == 2:
                steps[ev.step][parts[1]] = ev.value
            elif parts[0] == "train" and parts[1] == "loss_by_phase":
                steps[ev.step]["phase"] = parts[2]
            elif parts[0] in ("valid", "tasks") and len(parts) == 3:
                evals[ev.step][parts[0]][parts[1]][parts[2]] = ev.value
    out["train"] = [dict(step=k, **v) for k, v in sorted(steps.items())]
    out["eval"] = [{"step": k, "valid": dict(v["valid"]), "tasks": dict(v["tasks"])} for k, v in sorted(evals.items())]
    return out


def _save(fig, path: str) -> str:
    from megatron_ar.io.atomic import publish_file

    with publish_file(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    return path


def plot_run(run_dir: str, out_dir: str = None) -> List[str]:
    """Write the PNGs; returns their paths."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("plot_run needs matplotlib: pip install 'megatron_ar[plots]'") from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = read_metrics(run_dir)
    out_dir = out_dir or os.path.join(run_dir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    train = m["train"]
    if train:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        by_phase: Dict[str, List] = defaultdict(list)
        for r in train:
            by_phase[r.get("phase") or "train"].append((r["step"], r["loss"]))
        for ph, pts in by_phase.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=ph, lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (nats/token)")
        ax.set_title("loss by phase")
        ax.legend()
        ax.grid(alpha=0.3)
        paths.append(_save(fig, os.path.join(out_dir, "loss_by_phase.png")))
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.plot([r["step"] for r in train], [r["lr"] for r in train], lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel("learning rate")
        ax.grid(alpha=0.3)
        paths.append(_save(fig, os.path.join(out_dir, "lr.png")))
        plt.close(fig)

        fig, ax1 = plt.subplots(figsize=(8, 3.5))
        ax1.plot([r["step"] for r in train], [r.get("tokens_per_s", float("nan")) for r in train], lw=1, color="C0")
        ax1.set_ylabel("tokens/s", color="C0")
        ax2 = ax1.twinx()
        ax2.plot([r["step"] for r in train], [100 * r.get("mfu", float("nan")) for r in train], lw=1, color="C1")
        ax2.set_ylabel("MFU (%)", color="C1")
        ax1.set_xlabel("step")
        ax1.grid(alpha=0.3)
        paths.append(_save(fig, os.path.join(out_dir, "throughput.png")))
        plt.close(fig)
    evals = [e for e in m["eval"] if e.get("valid")]
    if evals:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        names = sorted({n for e in evals for n in e["valid"]})
        for n in names:
            pts = [(e["step"], e["valid"][n]) for e in evals if n in e["valid"]]
            a1.plot([p[0] for p in pts], [p[1]["loss"] for p in pts], marker="o", label=n)
            bpb = [(s, v["bpb"]) for s, v in pts if v.get("bpb") is not None]
            if bpb:
                a2.plot([p[0] for p in bpb], [p[1] for p in bpb], marker="o", label=n)
        a1.set_title("validation loss")
        a2.set_title("bits per byte")
        for a in (a1, a2):
            a.set_xlabel("step")
            a.grid(alpha=0.3)
            a.legend()
        paths.append(_save(fig, os.path.join(out_dir, "valid.png")))
        plt.close(fig)
    tasks = [e for e in m["eval"] if e.get("tasks")]
    if tasks:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        for n in sorted({n for e in tasks for n in e["tasks"]}):
            pts = [(e["step"], e["tasks"][n]) for e in tasks if n in e["tasks"]]
            ax.plot([p[0] for p in pts], [p[1]["acc"] for p in pts], marker="o", label=f"{n} acc")
            ax.plot([p[0] for p in pts], [p[1]["acc_norm"] for p in pts], marker="x", ls="--", label=f"{n} acc_norm")
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
        paths.append(_save(fig, os.path.join(out_dir, "tasks.png")))
        plt.close(fig)
    return paths

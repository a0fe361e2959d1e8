"""What ``prepare.py`` (CPU, here) and ``check.py`` (the GPU machine) share: the folder layout,
the tiny models, the training recipe and the launcher.

Design choices
- One recipe for both runs: :func:`write_recipe` renders it from the prepared folder with
  absolute paths (the folder moves from this machine to the GPU machine), differing between the
  fp32 CPU reference and the GPU run only in ``optimizer.bf16``.
- The tiny models are the ``tiny-llama`` / ``tiny-gemma2`` presets with the prepared
  tokenizer's vocabulary and a 128-token context; the HF checkpoints are built from
  ``megatron_ar.models.to_hf_config`` of those presets with HF's own (seeded) initialisation and
  converted with ``megatron_ar.checkpoint.convert`` (what ``tools/checkpoint/convert.py`` runs).
- Training goes through ``megatron_ar.train`` under torchrun (one process), as a user would
  run it: the distributed optimizer, two micro-batches per step (gradient accumulation), a
  final validation pass and checkpoint save are part of the checked path.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_DIR = os.path.join(REPO, ".gpu-check")
REFERENCE = "reference.json"
MANIFEST = "manifest.json"

VOCAB = 2048           # the prepared MorphBPE tokenizer
SEQ = 128
STEPS = 30
MODELS = {             # name -> megatron_ar preset (HF architecture from to_hf_config)
    "llama": "tiny-llama",
    "gemma2": "tiny-gemma2",
}
LOSS_TOL = 2e-2        # |bf16 GPU loss - fp32 CPU loss| per step
PEAK_TFLOPS = 989.0    # H100/H200 SXM dense BF16 (NVIDIA datasheets, no sparsity)


def model_config(name: str):
    from megatron_ar.models import get_preset

    return get_preset(MODELS[name], vocab_size=VOCAB, seq_length=SEQ)


def paths(folder: str, name: str) -> Dict[str, str]:
    return {"hf": os.path.join(folder, name, "hf"), "megatron": os.path.join(folder, name, "megatron")}


def data_paths(folder: str) -> Dict[str, str]:
    d = os.path.join(folder, "corpus")
    return {"tokenizer": os.path.join(d, "tokenizer"),
            **{c: os.path.join(d, "data", f"{c}_text_document")
               for c in ("ar", "en", "code", "valid_ar")}}


def recipe_dict(folder: str, name: str, run_dir: str, bf16: bool, steps: int = STEPS,
                stop_after: Optional[int] = None) -> dict:
    """The training recipe of model ``name`` (see the module docstring). ``stop_after``: end
    the run after that many steps of the same ``steps``-step schedule (``exit_interval``), so a
    short plumbing run sees the reference's learning rates; validation runs at the last step."""
    data = data_paths(folder)
    last = stop_after or steps
    mg = os.path.abspath(paths(folder, name)["megatron"])
    return {
        "model": {"preset": mg, "seq_length": SEQ, "tokenizer": os.path.abspath(data["tokenizer"])},
        "parallel": {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1,
                     "use_distributed_optimizer": True},
        "optimizer": {"lr": 3.0e-3, "min_lr": 3.0e-4, "weight_decay": 0.01, "adam_beta2": 0.95,
                      "bf16": bool(bf16)},
        "schedule": {"micro_batch_size": 4, "global_batch_size": 8, "train_iters": steps,
                     "lr_warmup_iters": 3, "lr_decay_style": "cosine", "seed": 1234,
                     "exit_interval": stop_after},
        "data": {
            "cache_dir": os.path.join(os.path.abspath(run_dir), "index-cache"),
            "datasets": {c: os.path.abspath(data[c]) for c in ("ar", "en", "code")},
            "phases": [{"name": "mix", "tokens": 8 * SEQ * max(steps, STEPS) * 2,
                        "blend": {"ar": {"weight": 50, "datasets": ["ar"]},
                                  "en": {"weight": 40, "datasets": ["en"]},
                                  "code": {"weight": 10, "datasets": ["code"]}}}],
        },
        "checkpoint": {"pretrained_checkpoint": mg},
        "eval": {"eval_interval": last, "eval_iters": 2,
                 "valid_sets": {"ar": os.path.abspath(data["valid_ar"])}},
        "logging": {"run_dir": os.path.abspath(run_dir), "log_interval": 1, "tensorboard": False,
                    "peak_tflops": PEAK_TFLOPS, "record_batches": False},
    }


def write_recipe(folder: str, name: str, run_dir: str, bf16: bool, steps: int = STEPS,
                 stop_after: Optional[int] = None) -> str:
    import yaml

    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "recipe.yaml")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        yaml.safe_dump(recipe_dict(folder, name, run_dir, bf16, steps, stop_after), f,
                       sort_keys=False)
    os.replace(path + ".tmp", path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


def run_cmd(cmd: List[str], timeout: float, env: Optional[Dict[str, str]] = None
            ) -> Tuple[int, str]:
    """Run ``cmd`` in its own process group from the repository root: (rc, stdout+stderr).
    On timeout the whole group (torchrun and its workers) is killed and rc is 124."""
    import signal

    proc = subprocess.Popen(cmd, cwd=REPO, env=env or child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return 124, (out or "") + f"\n[killed after the {timeout:.0f} s time limit]"


def torchrun_train(recipe: str, timeout: float, overrides: Tuple[str, ...] = ()
                   ) -> Tuple[int, str]:
    """``torchrun --nproc_per_node 1 -m megatron_ar.train --config recipe``: (rc, output)."""
    return run_cmd([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
                    "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                    "-m", "megatron_ar.train", "--config", recipe, *overrides], timeout)


def read_metrics(run_dir: str) -> Tuple[List[float], List[dict]]:
    """(train losses by step, eval records) from ``metrics.jsonl``."""
    path = os.path.join(run_dir, "metrics.jsonl")
    losses: Dict[int, float] = {}
    evals = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line.endswith("}"):
                    continue
                rec = json.loads(line)
                if rec.get("kind", "train") == "train":
                    losses[int(rec["step"])] = float(rec["loss"])
                elif rec.get("kind") == "eval":
                    evals.append(rec)
    return [losses[k] for k in sorted(losses)], evals


def fusion_line(output: str) -> Optional[str]:
    for line in output.splitlines():
        if line.startswith("[fusions]"):
            return line
    return None

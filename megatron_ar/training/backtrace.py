"""Batch back-tracing: rebuild exactly what a training step trained on, from the run directory.

Design choices
- Nothing per-sample is logged during training: a step is fully determined by its
  ``consumed_samples`` offset, the batch geometry and the curriculum (recipe + ``.idx`` files +
  seed), all of which the run directory holds (``config.yaml``, ``batches.jsonl``). The
  curriculum's ``describe_batch`` maps each global index to phase, dataset, document ids and
  token ranges; ``sample_tokens`` returns its ``seq_length + 1`` tokens.
- Verifiable: the training loop records a sha256 digest of each micro-batch's tokens and labels
  as fed to the model (:class:`~megatron_ar.training.callbacks.BatchRecorder`); back-tracing
  recomputes it from the rebuilt samples and reports ``verified`` per micro-batch, so a changed
  data file or a bug in the accounting cannot go unnoticed.
- The curriculum's fingerprint in ``config.yaml``'s data is re-checked by the dataset itself
  (a changed ``.idx`` builds a different index and the digests stop matching).
- Without a ``batches.jsonl`` record (``record_batches: false``) the step's
  ``(consumed_samples, global batch)`` comes from the run plan of the saved recipe
  (:func:`megatron_ar.training.plan.build_run_plan`: megatron-core's batch calculator, constant
  or ramped); the data-parallel size must then be given (``data_parallel_size``), as the recipe
  does not fix the world size.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import numpy as np

from megatron_ar.training.callbacks import tokens_digest
from megatron_ar.training.config import load_config
from megatron_ar.training.loop import collate, sample_to_arrays


class BacktraceError(ValueError):
    """A step cannot be back-traced from the run directory; the message names the file or value."""

    pass


def _record(run_dir: str, step: int, dp_rank: int) -> Optional[Dict[str, Any]]:
    name = "batches" if dp_rank == 0 else f"batches_dp{dp_rank}"
    path = os.path.join(run_dir, name + ".jsonl")
    if not os.path.isfile(path):
        return None
    found = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("step") == step:
                found = rec  # the last record of a step wins (a resumed run rewrote it)
    return found


def backtrace_step(run_dir: str, step: int, rank: Optional[int] = None, decode: bool = True,
                   tokenizer=None, data_parallel_size: Optional[int] = None) -> Dict[str, Any]:
    """Per sample of 0-based ``step``: phase, dataset, document ids, token ranges, tokens and
    (``decode``) text. ``rank`` restricts to one data-parallel rank. Single process, no GPU.
    ``data_parallel_size`` is needed only when the step has no ``batches.jsonl`` record."""
    from megatron_ar.training.builder import build_data, load_tokenizer

    cfg_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(cfg_path):
        raise BacktraceError(f"{run_dir}: no config.yaml (not a megatron_ar run directory?)")
    cfg = load_config(cfg_path)
    s = cfg.schedule
    ranks = [rank] if rank is not None else None
    rec0 = _record(run_dir, step, rank or 0)
    if rec0 is not None:
        consumed, gbs, mbs, dp = (rec0["consumed_samples"], rec0["global_batch_size"],
                                  rec0["micro_batch_size"], rec0["data_parallel_size"])
        data = build_data(cfg)
    else:  # no record: the run plan's batch schedule (constant, or megatron-core's ramp-up)
        if data_parallel_size is None:
            raise BacktraceError(f"{run_dir}: step {step} is not in batches.jsonl; the data-parallel "
                                 "size of that step is unknown (give it: --dp N)")
        from megatron_ar.training.plan import build_run_plan

        data = build_data(cfg)
        p = cfg.parallel
        world = data_parallel_size * p.tensor_model_parallel_size * p.pipeline_model_parallel_size
        consumed, gbs = build_run_plan(cfg, world, curriculum=data.plan).step(step)
        mbs, dp = s.micro_batch_size, data_parallel_size
    if tokenizer is None and decode and cfg.model.tokenizer:
        tokenizer = load_tokenizer(cfg.model.tokenizer)
    if ranks is None:
        ranks = list(range(dp))
    if any(r < 0 or r >= dp for r in ranks):
        raise BacktraceError(f"--rank {rank}: the run had data-parallel size {dp}")
    samples: List[Dict[str, Any]] = []
    verified: Dict[int, List[bool]] = {}
    for r in ranks:
        rows = data.describe_batch(consumed, gbs, mbs, dp, rank=r)
        arrays = []
        for row in rows:
            toks = np.asarray(data.sample_tokens(row["global_index"]), dtype=np.int64)
            row["tokens"] = toks.tolist()
            if decode and tokenizer is not None:
                row["text"] = tokenizer.decode(row["tokens"], skip_special_tokens=False)
            arrays.append(sample_to_arrays(data[row["global_index"]], cfg.model.seq_length))
            samples.append(row)
        rec = rec0 if r == (rank or 0) else _record(run_dir, step, r)
        if rec is not None and rec.get("digests"):
            mbatches = [collate(arrays[m * mbs:(m + 1) * mbs]) for m in range(len(arrays) // mbs)]
            verified[r] = [a == b for a, b in zip(tokens_digest(mbatches), rec["digests"])]
    return {"step": step, "consumed_samples": consumed, "global_batch_size": gbs,
            "micro_batch_size": mbs, "data_parallel_size": dp,
            "phase": samples[0]["phase_name"] if samples else None,
            "verified": verified, "samples": samples}


def spike_steps(run_dir: str) -> List[int]:
    path = os.path.join(run_dir, "spikes.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["step"] for line in f if line.strip()]


def format_backtrace(res: Dict[str, Any], max_chars: int = 300) -> str:
    lines = [f"step {res['step']} (consumed samples {res['consumed_samples']}, global batch "
             f"{res['global_batch_size']}, micro batch {res['micro_batch_size']}, DP "
             f"{res['data_parallel_size']}), phase {res['phase']}"]
    for r, ok in res["verified"].items():
        lines.append(f"  DP rank {r}: token digests {'match' if all(ok) else 'DIFFER'} "
                     f"({sum(ok)}/{len(ok)} micro-batches)")
    for row in res["samples"]:
        ranges = ", ".join(f"doc {d}[{a}:{b}]" for d, a, b in row["token_ranges"])
        lines.append(f"- sample {row['global_index']} (DP {row['rank']}, micro-batch {row['micro_batch']}, "
                     f"slot {row['slot']}): phase {row['phase_name']}, dataset {row['dataset']} "
                     f"(group {row['group']}, epoch {row['epoch']}), {ranges}")
        if "text" in row:
            text = row["text"].replace("\n", "\\n")
            lines.append("    " + (text[:max_chars] + (" ..." if len(text) > max_chars else "")))
    return "\n".join(lines)

"""Publishing training checkpoints: staging directory, rename, pointer file, keep-last-K.

Complete or invisible: every rank writes into ``<root>/.tmp_iter_XXXXXXX`` (:func:`prepare_staging`);
after a barrier rank 0 renames it to ``iter_XXXXXXX`` (an atomic rename on one file system) and
only then replaces the pointer file ``latest_checkpointed_iteration.txt`` (Megatron-LM's name;
temp file + fsync + ``os.replace``) (:func:`publish`). A crash at any point leaves either the
previous pointer or the new one, never a pointer to a partial directory; stale ``.tmp_*``
directories are removed at the next save.

Design choices
- Rank-0 file-system operations only: no collectives here; the caller
  (:func:`megatron_ar.training.checkpointing.train_state.save_checkpoint`) places the barriers.
- The pointer file is written by the io layer's publisher (:mod:`megatron_ar.io.atomic`). The
  checkpoint directory keeps its own staging name (``.tmp_iter_XXXXXXX``) instead of the io
  layer's per-process temp name because every rank writes into it, so its name must be known
  to all ranks without a collective; and a checkpoint root has one writer (the job), so every
  staging leftover in it is stale at the next save and is removed, whatever host wrote it (the
  io layer keeps other hosts' temps, which is right for shared outputs, not here).
- Re-saving an iteration that is already published (e.g. after a resume) swaps the directories
  with two renames and deletes the old one afterwards; the pointer is rewritten last.
- Test hook ``MEGATRON_AR_FAULT_SAVE_SLEEP_S`` (environment, :func:`fault_sleep_before_publish`):
  every rank sleeps that many seconds after all files of a checkpoint are written and before it
  is published, so a test can kill -9 the job inside the write-then-publish window. Unset in
  real runs.
"""
from __future__ import annotations

import os
import shutil
from typing import List, Optional

from megatron_ar.io.atomic import write_text_atomic

POINTER = "latest_checkpointed_iteration.txt"
STAGING_PREFIX = ".tmp_"
FAULT_SAVE_SLEEP_ENV = "MEGATRON_AR_FAULT_SAVE_SLEEP_S"


class CheckpointError(RuntimeError):
    """A training checkpoint is missing, malformed or cannot be resumed by this run; the message
    names the checkpoint directory and the key or file."""


def iter_dirname(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def staging_dir(root: str, iteration: int) -> str:
    """Where the ranks write the checkpoint of ``iteration`` before it is published."""
    return os.path.join(root, STAGING_PREFIX + iter_dirname(iteration))


def latest_iteration(root: Optional[str]) -> Optional[int]:
    """Iteration named by the pointer file of ``root`` (None if there is none)."""
    if not root:
        return None
    path = os.path.join(root, POINTER)
    if not os.path.isfile(path):
        return None
    text = open(path, encoding="utf-8").read().strip()
    try:
        it = int(text)
    except ValueError as exc:
        raise CheckpointError(f"{path}: expected an iteration number, got {text!r}") from exc
    if not os.path.isdir(os.path.join(root, iter_dirname(it))):
        raise CheckpointError(f"{path}: points to iteration {it} but {iter_dirname(it)} is missing")
    return it


def resolve_checkpoint_dir(path: str) -> str:
    """A checkpoint root (with pointer) or a checkpoint directory itself -> checkpoint dir."""
    if os.path.isfile(os.path.join(path, "metadata.json")):
        return path
    it = latest_iteration(path)
    if it is None:
        raise CheckpointError(f"{path}: neither a dist checkpoint nor a root with {POINTER}")
    return os.path.join(path, iter_dirname(it))


def prepare_staging(root: str, iteration: int) -> str:
    """Rank 0, before any rank writes: create ``root`` and an empty staging directory for
    ``iteration``; remove leftovers of interrupted saves (never visible). Returns the staging dir."""
    tmp = staging_dir(root, iteration)
    os.makedirs(root, exist_ok=True)
    for entry in os.listdir(root):
        if entry.startswith(STAGING_PREFIX):
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
    os.makedirs(tmp)
    return tmp


def fault_sleep_before_publish() -> None:
    """Test hook (fault injection): with ``MEGATRON_AR_FAULT_SAVE_SLEEP_S`` set, sleep after every
    file of the checkpoint is written and before it is published, so a test can kill -9 the job
    inside that window (tests/training/test_train_resume_variants.py). No effect when unset."""
    val = os.environ.get(FAULT_SAVE_SLEEP_ENV)
    if val:
        import time

        time.sleep(float(val))


def publish(root: str, iteration: int, keep_last: Optional[int] = None) -> str:
    """Rank 0, after every rank finished writing the staging directory: make it the published
    ``iter_XXXXXXX``, then point ``latest_checkpointed_iteration.txt`` at it, then keep only the
    newest ``keep_last`` checkpoints (if set). Returns the published directory."""
    name = iter_dirname(iteration)
    tmp, final = staging_dir(root, iteration), os.path.join(root, name)
    if os.path.isdir(final):  # re-saving an iteration (e.g. after a resume): replace it
        old = os.path.join(root, STAGING_PREFIX + "old_" + name)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    write_text_atomic(os.path.join(root, POINTER), str(iteration))
    if keep_last:
        prune_checkpoints(root, keep_last)
    return final


def list_checkpoints(root: str) -> List[int]:
    out = []
    for entry in os.listdir(root) if os.path.isdir(root) else []:
        if entry.startswith("iter_") and entry[5:].isdigit():
            out.append(int(entry[5:]))
    return sorted(out)


def prune_checkpoints(root: str, keep: int) -> List[int]:
    """Delete all but the newest ``keep`` published checkpoints (never the pointed-to one)."""
    its = list_checkpoints(root)
    latest = latest_iteration(root)
    removed = []
    for it in its[:-keep] if keep < len(its) else []:
        if it == latest:
            continue
        shutil.rmtree(os.path.join(root, iter_dirname(it)), ignore_errors=True)
        removed.append(it)
    return removed

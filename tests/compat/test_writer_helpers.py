"""megatron_ar.compat.dist_checkpointing.start_writer_helpers_shielded: megatron-core's checkpoint
writer keeps a spawn-context Manager for the whole run; Slurm's ``scancel --signal=USR1`` /
``--signal=USR1@T`` reach every process of the step, and an unshielded Manager dies of SIGUSR1
(the control below), breaking the save that answers the signal. Shielded, it survives and its
queue still works. (The end-to-end case under a real Slurm: tests/cluster/test_slurm.py.)"""
import multiprocessing as mp
import os
import signal
import time

import psutil
import pytest

pytestmark = pytest.mark.unit


def _spawned_children():
    return {p.pid: p for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())}


def _usr1_and_wait(procs):
    for p in procs:
        os.kill(p.pid, signal.SIGUSR1)
    time.sleep(1.0)
    return [p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs]


def test_unshielded_manager_dies_of_sigusr1():
    before = set(_spawned_children())
    manager = mp.get_context("spawn").Manager()
    try:
        new = [p for pid, p in _spawned_children().items() if pid not in before]
        assert len(new) == 1
        assert _usr1_and_wait(new) == [False]
    finally:
        manager.shutdown()


def test_shielded_writer_queue_survives_sigusr1():
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    from megatron_ar.compat.dist_checkpointing import start_writer_helpers_shielded

    filesystem_async._results_queue = None  # a fresh Manager for this test
    before = set(_spawned_children())
    start_writer_helpers_shielded()
    queue = filesystem_async._get_write_results_queue()
    new = [p for pid, p in _spawned_children().items() if pid not in before]
    assert len(new) == 1
    assert _usr1_and_wait(new) == [True]
    queue.put({"ok": 1})
    assert queue.get(timeout=10) == {"ok": 1}
    # the caller's own mask is restored: the trainer still receives the signal
    assert signal.SIGUSR1 not in signal.pthread_sigmask(signal.SIG_BLOCK, [])

"""Run a function on N real processes (one torch.distributed rank each) and collect the results.

API
    run_multiprocess(fn, world_size, *args, timeout=300.0, env=None, threads_per_rank=1) -> list

    ``fn(*args)`` runs in ``world_size`` freshly *spawned* Python processes. Before ``fn`` is
    called, each process has ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
    (127.0.0.1) and ``MASTER_PORT`` (a free port picked by the parent) in ``os.environ``, exactly
    what ``torchrun`` provides, so ``fn`` normally starts with
    ``megatron_ar.runtime.init_distributed(tp=..., pp=...)``. Process groups still open when
    ``fn`` returns are destroyed by the wrapper. The return value is the list of the ranks'
    results, index = rank; results must be picklable (they travel as pickled bytes, so tensors
    are copied, not shared).

    Errors: if any rank raises, :class:`MultiprocessError` is raised in the parent with that
    rank's number and formatted traceback (the first failure wins; the other ranks are
    terminated, since they would otherwise wait forever in a collective). A rank that dies
    without reporting (segfault, OOM kill) is reported with its exit code. ``timeout`` (seconds,
    whole run) kills every rank and raises ``TimeoutError``.

Design choices
- ``spawn``, not ``fork``: children start from a fresh interpreter and do not inherit the
  parent's heavy state (a pytest process with models, a CPU-emulation mode, open groups) nor
  its threads (forking a process that runs OpenMP/gloo threads can deadlock).
  Consequence: ``fn`` and ``args`` must be picklable, i.e. ``fn`` is a module-level function.
- Each rank runs with ``threads_per_rank`` intra-op threads (default 1, also exported as
  ``OMP_NUM_THREADS``) so N ranks on N cores do not oversubscribe the CPU.
- The parent never initialises torch.distributed itself; it only orchestrates.
"""
from __future__ import annotations

import os
import pickle
import queue as queue_mod
import socket
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

import torch.multiprocessing as mp


class MultiprocessError(RuntimeError):
    """A rank failed; ``rank`` and the child's ``remote_traceback`` are attached."""

    def __init__(self, rank: int, remote_traceback: str):
        super().__init__(f"rank {rank} failed:\n{remote_traceback}")
        self.rank = rank
        self.remote_traceback = remote_traceback


def find_free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1 (bind to port 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(fn, rank, world_size, port, args, env, threads, out_queue):
    os.environ.update(env)
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    import torch

    torch.set_num_threads(threads)
    try:
        result = fn(*args)
        payload = pickle.dumps(result)
        out_queue.put((rank, True, payload))
    except BaseException:  # report everything, including KeyboardInterrupt/SystemExit
        out_queue.put((rank, False, traceback.format_exc()))
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                from megatron_ar.runtime.distributed import destroy_distributed

                destroy_distributed()
        except Exception:  # teardown after a failure must not mask the real error
            pass


def run_multiprocess(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 300.0,
    env: Optional[Dict[str, str]] = None,
    threads_per_rank: int = 1,
    port_attempts: int = 3,
) -> List[Any]:
    """Run ``fn(*args)`` on ``world_size`` spawned ranks; see the module docstring.

    The rendezvous port is picked by the parent but bound by rank 0 only after it has imported
    torch and megatron-core (tens of seconds on a loaded machine); another job can take the port
    meanwhile. A launch whose rank failed with EADDRINUSE is therefore retried on a fresh port
    (up to ``port_attempts`` times); nothing has run yet when that error is raised."""
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"run_multiprocess: world_size must be a positive int, got {world_size!r}")
    for attempt in range(port_attempts):
        try:
            return _run_once(fn, world_size, args, timeout, env, threads_per_rank)
        except MultiprocessError as exc:
            if attempt == port_attempts - 1 or not _is_port_clash(str(exc)):
                raise


def _is_port_clash(text: str) -> bool:
    return "EADDRINUSE" in text or "Address already in use" in text


def _run_once(fn, world_size, args, timeout, env, threads_per_rank) -> List[Any]:
    ctx = mp.get_context("spawn")
    out_queue = ctx.Queue()
    port = find_free_port()
    child_env = {"OMP_NUM_THREADS": str(threads_per_rank), "MKL_NUM_THREADS": str(threads_per_rank)}
    child_env.update(env or {})
    procs = []
    # Children read OMP_NUM_THREADS when torch is imported during unpickling of the target, i.e.
    # before _worker runs: export it in the parent's environment for the duration of start().
    saved = {k: os.environ.get(k) for k in child_env}
    try:
        os.environ.update(child_env)
        for rank in range(world_size):
            p = ctx.Process(
                target=_worker,
                args=(fn, rank, world_size, port, args, child_env, threads_per_rank, out_queue),
                daemon=False,
            )
            p.start()
            procs.append(p)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    results: Dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(results) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"run_multiprocess: {world_size - len(results)} of {world_size} ranks did not "
                    f"finish {getattr(fn, '__name__', fn)} within {timeout:.0f} s"
                )
            try:
                rank, ok, payload = out_queue.get(timeout=min(remaining, 0.5))
            except queue_mod.Empty:
                for r, p in enumerate(procs):
                    if r not in results and p.exitcode is not None and p.exitcode != 0:
                        # Drain a report that may have raced the exit before blaming a crash.
                        time.sleep(0.2)
                        if out_queue.empty():
                            raise MultiprocessError(
                                r, f"process exited with code {p.exitcode} without reporting"
                            )
                continue
            if not ok:
                raise MultiprocessError(rank, payload)
            results[rank] = pickle.loads(payload)
    finally:
        if len(results) < world_size:
            for p in procs:
                if p.is_alive():
                    p.terminate()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
        out_queue.close()
    return [results[r] for r in range(world_size)]

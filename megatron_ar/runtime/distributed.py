"""torch.distributed + megatron-core parallel state set-up for CPU (gloo) and GPU (nccl) runs.

Design choices
- One entry point, :func:`init_distributed`, for all launchers: under ``torchrun``/``srun`` the
  rank, world size and rendezvous come from the environment (``RANK``, ``WORLD_SIZE``,
  ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``); tests and :mod:`megatron_ar.runtime.spawn`
  pass them explicitly. Both end in the same ``init_process_group`` +
  ``parallel_state.initialize_model_parallel`` + ``model_parallel_cuda_manual_seed`` sequence that
  Megatron-LM's ``initialize_megatron`` runs, so a recipe behaves the same on a laptop and a
  cluster.
- Backend: ``nccl`` when CUDA is available, else ``gloo`` and the CPU execution layer
  (:func:`megatron_ar.runtime.cpu.install_cpu_emulation`) is installed first, because
  megatron-core allocates on ``torch.cuda.current_device()``.
- megatron-core's gloo side groups are always created (its optimizer builders use them by
  default; on gloo they are duplicates of the default groups, a few extra sockets).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from megatron_ar.runtime.cpu import install_cpu_emulation


@dataclass(frozen=True)
class ParallelLayout:
    """Sizes and this process's coordinates in the megatron-core parallel layout."""

    rank: int
    world_size: int
    tp: int
    pp: int
    vpp: Optional[int]
    cp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    backend: str


def _env_int(name: str) -> Optional[int]:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from exc


def init_distributed(
    tp: int = 1,
    pp: int = 1,
    vpp: Optional[int] = None,
    cp: int = 1,
    seed: int = 1234,
    backend: Optional[str] = None,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    master_addr: Optional[str] = None,
    master_port: Optional[int] = None,
    timeout_minutes: int = 30,
) -> ParallelLayout:
    """Initialise torch.distributed and megatron-core's model-parallel groups and RNG.

    Args:
        tp, pp, vpp, cp: tensor, pipeline, virtual-pipeline (chunks per stage, or None) and
            context parallel sizes. Data parallel size is ``world_size // (tp * pp * cp)``.
        seed: base seed for ``model_parallel_cuda_manual_seed`` (TP ranks get seed+2718+tp_rank
            in their model-parallel RNG stream, as in Megatron-LM).
        backend: ``"gloo"`` or ``"nccl"``; default nccl when CUDA is available, else gloo.
        rank, world_size, master_addr, master_port: explicit rendezvous; when omitted they are
            read from the environment (torchrun). A missing value raises ``ValueError``.

    Returns the :class:`ParallelLayout` of this process. If torch.distributed is already
    initialised (e.g. by the caller), only the megatron-core part runs.
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    for name, value in (("tp", tp), ("pp", pp), ("cp", cp)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"init_distributed: {name} must be a positive int, got {value!r}")
    if vpp is not None and (not isinstance(vpp, int) or vpp < 1):
        raise ValueError(f"init_distributed: vpp must be None or a positive int, got {vpp!r}")
    if vpp is not None and vpp > 1 and pp < 2:
        raise ValueError("init_distributed: vpp > 1 needs pp >= 2 (virtual pipeline stages)")

    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"init_distributed: backend must be 'gloo' or 'nccl', got {backend!r}")
    if not dist.is_initialized():
        rank = _env_int("RANK") if rank is None else rank
        world_size = _env_int("WORLD_SIZE") if world_size is None else world_size
        master_addr = master_addr or os.environ.get("MASTER_ADDR")
        master_port = master_port or _env_int("MASTER_PORT")
        missing = [n for n, v in (("rank/RANK", rank), ("world_size/WORLD_SIZE", world_size),
                                  ("master_addr/MASTER_ADDR", master_addr),
                                  ("master_port/MASTER_PORT", master_port)) if v is None]
        if missing:
            raise ValueError(
                "init_distributed: missing " + ", ".join(missing)
                + " (run under torchrun or pass them explicitly)"
            )
    # Installed only once the arguments are known to be valid, so a failed call leaves the
    # process untouched.
    if backend == "gloo":
        install_cpu_emulation()
    if not dist.is_initialized():
        if backend == "nccl":
            local_rank = _env_int("LOCAL_RANK")
            torch.cuda.set_device(local_rank if local_rank is not None
                                  else rank % torch.cuda.device_count())
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://{master_addr}:{master_port}",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    world = dist.get_world_size()
    if world % (tp * pp * cp) != 0:
        raise ValueError(
            f"init_distributed: world size {world} is not divisible by tp*pp*cp = {tp * pp * cp}"
        )
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp if (vpp or 1) > 1 else None,
        context_parallel_size=cp,
        distributed_timeout_minutes=timeout_minutes,
        # megatron-core's optimizer defaults to gloo groups for its CPU-side collectives.
        create_gloo_process_groups=True,
    )
    model_parallel_cuda_manual_seed(seed)
    return ParallelLayout(
        rank=dist.get_rank(),
        world_size=world,
        tp=tp,
        pp=pp,
        vpp=vpp,
        cp=cp,
        dp=world // (tp * pp * cp),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        backend=backend,
    )


def destroy_distributed() -> None:
    """Tear down megatron-core's parallel state and the default process group (idempotent)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()

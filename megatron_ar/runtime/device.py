"""Where tensors go: the current device, batches moved to it, tensors for collectives.

Everything device-specific in megatron_ar goes through these functions, so the rest of the code
has no CPU/GPU branches and is correct on a GPU by construction:

- :func:`current_device`: ``cuda:<torch.cuda.current_device()>`` when CUDA is available; under
  the CPU execution layer (:mod:`megatron_ar.runtime.cpu`) its emulated GPU, a CPU device object
  that strict mode recognises (tensors moved to it are tagged as GPU tensors); the CPU otherwise
  (a plain CPU process without megatron-core parallel state).
- :func:`to_device`: a batch (tensor, or dict / list / tuple of them) to the current device. On
  CUDA, CPU tensors are pinned and copied with ``non_blocking=True`` (as Megatron-LM's
  ``get_batch``); elsewhere a plain ``.to``. The caching host allocator keeps a pinned buffer alive
  until its copy has run, so callers may drop the CPU batch right away.
- :func:`group_device` / :func:`group_tensor` / :func:`group_zeros`: the device a process group
  communicates on: the CPU for gloo groups (megatron-core's gloo side groups), the current device
  for NCCL. Under the CPU layer every group runs on gloo, so the answer is the backend the group
  has on a GPU cluster (:func:`megatron_ar.runtime.strict.group_backend`).
- :func:`module_to_device`: Megatron-LM's ``model_module.cuda(torch.cuda.current_device())``
  after building a model (parameters made on the CPU, e.g. with ``use_cpu_initialization`` or by
  plain ``torch.nn.Parameter(torch.ones(...))``, move to the GPU); modules on the meta device stay.
- :func:`to_host`: a CPU copy for numpy / hashing / pickling.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist

from megatron_ar.runtime.cpu import cpu_emulation_installed
from megatron_ar.runtime.emulated import EMULATED_CUDA_DEVICE

_CPU = torch.device("cpu")


def current_device() -> torch.device:
    """The device this process computes on (see module docstring)."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return EMULATED_CUDA_DEVICE if cpu_emulation_installed() else _CPU


def _move(t, device: torch.device, pin: bool):
    if isinstance(t, torch.Tensor):
        if pin and t.device.type == "cpu":
            t = t.pin_memory()
        return t.to(device, non_blocking=pin)
    if isinstance(t, dict):
        return {k: _move(v, device, pin) for k, v in t.items()}
    if isinstance(t, (list, tuple)):
        return type(t)(_move(v, device, pin) for v in t)
    return t


def to_device(batch: Any, device: Optional[torch.device] = None) -> Any:
    """``batch`` (a tensor, or dict/list/tuple of tensors; other values pass through) on
    ``device`` (default :func:`current_device`)."""
    if device is None:
        device = current_device()
    elif not isinstance(device, torch.device):
        device = torch.device(device)
    pin = device.type == "cuda" and torch.cuda.is_available()
    return _move(batch, device, pin)


def to_host(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the CPU (a device-to-host copy on a GPU)."""
    return t.cpu()


def group_backend(group=None) -> str:
    """The backend of ``group`` (default: the default group) on the hardware this run stands
    for: the real one, or under the CPU layer the one it has on a GPU cluster."""
    if cpu_emulation_installed():
        from megatron_ar.runtime.strict import group_backend as emulated

        return emulated(group)
    return str(dist.get_backend(group)).lower()


def group_device(group=None) -> torch.device:
    """The device tensors passed to collectives on ``group`` must live on."""
    return _CPU if group_backend(group) == "gloo" else current_device()


def group_tensor(data: Any, dtype: torch.dtype, group=None) -> torch.Tensor:
    """``torch.tensor(data, dtype)`` on ``group``'s device (:func:`group_device`)."""
    return torch.tensor(data, dtype=dtype, device=group_device(group))


def group_zeros(shape: Sequence[int] | int, dtype: torch.dtype, group=None) -> torch.Tensor:
    """Zeros of ``shape`` on ``group``'s device."""
    return torch.zeros(shape, dtype=dtype, device=group_device(group))


def module_to_device(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with its parameters and buffers on :func:`current_device` (in place, as
    ``Module.to``); a module with tensors on the meta device is returned unchanged."""
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_meta:
            return module
    if current_device().type == "cpu" and not cpu_emulation_installed():
        return module
    # Megatron-LM's get_model line (Module.to would parse the device into a new object, which
    # strict mode could not tell from an explicit CPU device).
    return module.cuda(torch.cuda.current_device())

"""What the emulated GPU is, for the CPU execution layer (:mod:`megatron_ar.runtime.cpu`) and its
strict device emulation (:mod:`megatron_ar.runtime.strict`): the value ``torch.cuda.current_device()``
returns, the device object standing for the GPU, and the torch-function mode that maps CUDA
placement requests onto the CPU. A module of its own so that both layers build on it without
importing each other.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode


class _EmulatedCudaOrdinal(str):
    """Type of :data:`EMULATED_CUDA_ORDINAL`."""


#: What ``torch.cuda.current_device()`` returns under the layer: equal to ``"cpu"`` (valid
#: wherever torch takes a device), identifiable as the emulated GPU by identity.
EMULATED_CUDA_ORDINAL = _EmulatedCudaOrdinal("cpu")
#: The emulated GPU as a ``torch.device`` (a CPU device object, identified by identity in strict
#: mode): :func:`megatron_ar.runtime.device.current_device` under the layer.
EMULATED_CUDA_DEVICE = torch.device("cpu")


def _is_cuda_device(dev: Any) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev == "cuda" or dev.startswith("cuda:")
    # A bare integer device index means a CUDA ordinal in torch's API; on a CPU-only run it can
    # only have come from code that assumed a GPU.
    return isinstance(dev, int) and not isinstance(dev, bool)


_CPU = torch.device("cpu")
# Tensor.type() names: torch.FloatTensor -> torch.cuda.FloatTensor and back.
_TYPE_PREFIX = "torch."
CUDA_TYPE_PREFIX = "torch.cuda."


def tensor_type(func, args, kwargs):
    """``Tensor.type`` reporting ``torch.cuda.*Tensor`` names and accepting them as targets."""
    dtype = args[1] if len(args) > 1 else kwargs.get("dtype")
    if dtype is None:
        name = func(args[0])
        if name.startswith(_TYPE_PREFIX) and not name.startswith(CUDA_TYPE_PREFIX):
            return CUDA_TYPE_PREFIX + name[len(_TYPE_PREFIX):]
        return name
    if isinstance(dtype, str) and dtype.startswith(CUDA_TYPE_PREFIX):
        dtype = _TYPE_PREFIX + dtype[len(CUDA_TYPE_PREFIX):]
    rest = dict(kwargs)
    rest.pop("dtype", None)
    return func(args[0], dtype, *args[2:], **rest)


class CpuDeviceMode(TorchFunctionMode):
    """Maps CUDA placement requests made by megatron-core onto the CPU (see module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs) if kwargs else {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.pin_memory:
            return args[0]
        if func is torch.Tensor.type:
            return tensor_type(func, args, kwargs)
        dev = kwargs.get("device")
        if dev is not None and _is_cuda_device(dev):
            kwargs["device"] = _CPU
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU) + tuple(args[2:])
        return func(*args, **kwargs)

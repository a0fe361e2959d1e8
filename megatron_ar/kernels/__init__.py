"""megatron_ar.kernels: fused kernels (csrc/) behind torch autograd functions.

Each kernel has one CUDA build (``megatron_ar._ext.<name>``, built when nvcc and a CUDA torch
are present) and one CPU build (``megatron_ar._ext.<name>_cpu``) compiled from the same per-row
headers (``csrc/include/mar/``), so the CPU extension that CI builds runs the math the GPU
kernels run. :func:`extension` picks the build for a tensor's device; :func:`use_fused` turns
``model.fused_kernels`` (``auto``/``on``/``off``) into a decision.
"""
from __future__ import annotations

from typing import Optional

import torch

from megatron_ar import _ext

__all__ = ["extension", "use_fused", "FUSED_KERNEL_CHOICES"]

FUSED_KERNEL_CHOICES = ("auto", "on", "off")


def extension(name: str, device: torch.device):
    """The compiled module of kernel ``name`` for ``device`` (CUDA or CPU build), or None."""
    dev = torch.device(device)
    return _ext.load(name if dev.type == "cuda" else f"{name}_cpu")


def use_fused(setting: str, name: str, device: Optional[torch.device] = None) -> bool:
    """``model.fused_kernels`` for kernel ``name`` on ``device``: ``off`` never, ``on`` always
    (an unbuilt extension raises, naming it and the build's reason), ``auto`` on a CUDA
    device when the CUDA build exists (the CPU builds are for tests and the CPU emulation,
    not a speed-up worth defaulting to)."""
    if setting not in FUSED_KERNEL_CHOICES:
        raise ValueError(f"model.fused_kernels: must be one of {FUSED_KERNEL_CHOICES}, "
                         f"got {setting!r}")
    if setting == "off":
        return False
    dev = torch.device(device) if device is not None else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    if setting == "auto":
        return dev.type == "cuda" and extension(name, dev) is not None
    if extension(name, dev) is None:
        mod = name if dev.type == "cuda" else f"{name}_cpu"
        why = _ext.build_reason(mod) or "not built"
        raise ImportError(f"model.fused_kernels: on, but megatron_ar._ext.{mod} is not "
                          f"available ({why}); rebuild with `pip install --no-build-isolation "
                          f"-e .` or set model.fused_kernels: auto")
    return True

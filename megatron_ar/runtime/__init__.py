"""megatron_ar.runtime: distributed initialisation and the CPU execution layer for megatron-core.

Public API
- :func:`install_cpu_emulation` / :func:`uninstall_cpu_emulation` / :func:`cpu_emulation_installed`
  (:mod:`megatron_ar.runtime.cpu`): run megatron-core's real TP/PP/SP/DP code on the CPU.
- :func:`init_distributed` / :func:`destroy_distributed` / :class:`ParallelLayout`
  (:mod:`megatron_ar.runtime.distributed`): torch.distributed + megatron-core parallel state.
- :func:`run_multiprocess` / :class:`MultiprocessError` / :func:`find_free_port`
  (:mod:`megatron_ar.runtime.spawn`): run a function on N spawned ranks, collect results.
- :func:`default_device`: ``cuda:<i>`` on GPUs, else CPU.

Importing this package patches nothing; the emulation is installed explicitly or by
``init_distributed`` when the backend is gloo.
"""
from megatron_ar.runtime.cpu import (
    CpuDeviceMode,
    cpu_emulation_installed,
    default_device,
    install_cpu_emulation,
    uninstall_cpu_emulation,
)
from megatron_ar.runtime.distributed import ParallelLayout, destroy_distributed, init_distributed
from megatron_ar.runtime.fake import FakeSession, destroy_fake_distributed, init_fake_distributed  # noqa: F401
from megatron_ar.runtime.spawn import MultiprocessError, find_free_port, run_multiprocess

__all__ = [
    "CpuDeviceMode",
    "MultiprocessError",
    "ParallelLayout",
    "cpu_emulation_installed",
    "default_device",
    "destroy_distributed",
    "find_free_port",
    "init_distributed",
    "install_cpu_emulation",
    "run_multiprocess",
    "uninstall_cpu_emulation",
]

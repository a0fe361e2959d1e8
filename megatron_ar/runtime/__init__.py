"""megatron_ar.runtime: distributed initialisation and the CPU execution layer for megatron-core.

Public API
- :func:`install_cpu_emulation` / :func:`uninstall_cpu_emulation` / :func:`cpu_emulation_installed`
  (:mod:`megatron_ar.runtime.cpu`): run megatron-core's real TP/PP/SP/DP code on the CPU.
- :func:`init_distributed` / :func:`destroy_distributed` / :class:`ParallelLayout`
  (:mod:`megatron_ar.runtime.distributed`): torch.distributed + megatron-core parallel state.
- :func:`run_multiprocess` / :class:`MultiprocessError` / :func:`find_free_port`
  (:mod:`megatron_ar.runtime.spawn`): run a function on N spawned ranks, collect results.
- :func:`init_fake_distributed` / :func:`destroy_fake_distributed` / :class:`FakeSession`
  (:mod:`megatron_ar.runtime.fake`): one rank of a large job on fake tensors over torch's fake
  process group (the memory probe of the dry run).
- :func:`strict_device_emulation` / :class:`DeviceMismatchError`
  (:mod:`megatron_ar.runtime.strict`): strict device emulation, where CPU tensors that would be
  on the wrong device on a GPU raise.
- :func:`current_device` / :func:`to_device` / :func:`to_host` / :func:`group_device` /
  :func:`group_tensor` / :func:`group_zeros` / :func:`module_to_device`
  (:mod:`megatron_ar.runtime.device`): placement of batches, models and collective buffers; the
  only device-specific code of the package.

Importing this package patches nothing; the emulation is installed explicitly or by
``init_distributed`` when the backend is gloo.
"""
from megatron_ar.runtime.cpu import (
    CpuDeviceMode,
    cpu_emulation_installed,
    install_cpu_emulation,
    strict_device_emulation,
    uninstall_cpu_emulation,
)
from megatron_ar.runtime.device import (
    current_device,
    group_device,
    group_tensor,
    group_zeros,
    module_to_device,
    to_device,
    to_host,
)
from megatron_ar.runtime.distributed import ParallelLayout, destroy_distributed, init_distributed
from megatron_ar.runtime.fake import FakeSession, destroy_fake_distributed, init_fake_distributed
from megatron_ar.runtime.spawn import MultiprocessError, find_free_port, run_multiprocess
from megatron_ar.runtime.strict import DeviceMismatchError

__all__ = [
    "CpuDeviceMode",
    "DeviceMismatchError",
    "FakeSession",
    "MultiprocessError",
    "ParallelLayout",
    "cpu_emulation_installed",
    "current_device",
    "destroy_distributed",
    "destroy_fake_distributed",
    "find_free_port",
    "group_device",
    "group_tensor",
    "group_zeros",
    "init_distributed",
    "init_fake_distributed",
    "install_cpu_emulation",
    "module_to_device",
    "run_multiprocess",
    "strict_device_emulation",
    "to_device",
    "to_host",
    "uninstall_cpu_emulation",
]

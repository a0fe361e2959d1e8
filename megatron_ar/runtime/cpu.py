"""CPU execution layer for megatron-core: run its real TP/PP/SP/DP code on gloo without a GPU.

megatron-core (0.16.x) calls ``torch.cuda`` directly in many places (device placement of
parameters and buffers, the model-parallel RNG tracker, optimizer type assertions, causal masks
built with ``device="cuda"``). Instead of forking megatron-core, :func:`install_cpu_emulation`
makes those calls resolve to the CPU:

1. ``torch.cuda`` functions megatron-core needs are replaced by CPU equivalents:
   ``current_device`` -> ``"cpu"`` (so ``torch.empty(..., device=torch.cuda.current_device())``
   allocates on the CPU), ``get_rng_state``/``set_rng_state``/``manual_seed`` act on the CPU
   default generator (the "CUDA generator" *is* the CPU generator here, so
   ``model_parallel_cuda_manual_seed`` still gives each TP rank its own stream of random numbers,
   as on GPUs), ``synchronize``/``empty_cache``/``set_device`` are no-ops, ``device_count`` -> 1,
   streams are inert stand-ins.
2. ``megatron.core.tensor_parallel.random._get_cuda_rng_state`` / ``_set_cuda_rng_state`` are
   redirected to the CPU generator (they index ``torch.cuda.default_generators`` otherwise);
   what to patch comes from :func:`megatron_ar.compat.rng.cuda_rng_state_patches`.
3. A :class:`torch.overrides.TorchFunctionMode` (:class:`CpuDeviceMode`) rewrites
   ``device="cuda[:i]"`` keyword arguments, ``Tensor.to("cuda")`` and ``pin_memory=True`` to CPU,
   makes ``Tensor.cuda()``/``pin_memory()`` identity, and makes ``Tensor.type()`` report
   ``torch.cuda.FloatTensor``-style names, because megatron-core's optimizer asserts on them
   (optimizer/clip_grads.py, optimizer/optimizer.py, optimizer/distrib_optimizer.py).

Lifetime of the mode: torch function modes live on a per-thread stack. ``install_cpu_emulation``
pushes one :class:`CpuDeviceMode` on the *calling thread's* stack by entering it and keeps it
there for the life of the process (megatron-core allocates lazily, e.g. the global memory
buffer during the first forward, so a ``with`` block around model construction is not enough).
``uninstall_cpu_emulation()`` pops it (it must be called from the same thread, with no other mode
pushed on top) and restores every patched attribute. Installing twice is a no-op. Other
threads that run megatron-core code must call ``install_cpu_emulation`` themselves (it pushes the
mode on their stack); autograd runs CPU backward passes on the calling thread, so training needs
nothing more.

Trade-offs: every torch call pays a Python ``__torch_function__`` hop (measured ~1-3 us per op,
irrelevant next to the matmuls of a real model, visible on tiny test models). The layer never
runs when a CUDA device is available: :func:`megatron_ar.runtime.init_distributed` installs it
only when ``torch.cuda.is_available()`` is false.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Dict, List, Tuple

import torch
from torch.overrides import TorchFunctionMode

_LOCK = threading.Lock()
_STATE: Dict[str, Any] = {"installed": False, "saved": [], "modes": {}}


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
_CUDA_TYPE_PREFIX = "torch.cuda."


class CpuDeviceMode(TorchFunctionMode):
    """Maps CUDA placement requests made by megatron-core onto the CPU (see module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs) if kwargs else {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.pin_memory:
            return args[0]
        if func is torch.Tensor.type:
            return self._tensor_type(func, args, kwargs)
        dev = kwargs.get("device")
        if dev is not None and _is_cuda_device(dev):
            kwargs["device"] = _CPU
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU) + tuple(args[2:])
        return func(*args, **kwargs)

    @staticmethod
    def _tensor_type(func, args, kwargs):
        dtype = args[1] if len(args) > 1 else kwargs.get("dtype")
        if dtype is None:
            name = func(args[0])
            if name.startswith(_TYPE_PREFIX) and not name.startswith(_CUDA_TYPE_PREFIX):
                return _CUDA_TYPE_PREFIX + name[len(_TYPE_PREFIX):]
            return name
        if isinstance(dtype, str) and dtype.startswith(_CUDA_TYPE_PREFIX):
            dtype = _TYPE_PREFIX + dtype[len(_CUDA_TYPE_PREFIX):]
        rest = dict(kwargs)
        rest.pop("dtype", None)
        return func(args[0], dtype, *args[2:], **rest)


class _InertStream:
    """Stand-in for ``torch.cuda.Stream``: CPU work is synchronous, so waits are no-ops."""

    def __init__(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def wait_stream(self, other):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        return event

    def query(self):
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _cpu_get_rng_state(device: Any = "cuda") -> torch.Tensor:
    return torch.default_generator.get_state()


def _cpu_set_rng_state(new_state: torch.Tensor, device: Any = "cuda", *args, **kwargs) -> None:
    torch.default_generator.set_state(new_state)


def _cpu_manual_seed(seed: int) -> None:
    # The emulated CUDA generator is the CPU default generator (see module docstring).
    torch.default_generator.manual_seed(int(seed))


def _noop(*args, **kwargs) -> None:
    return None


def _zero(*args, **kwargs) -> int:
    return 0


def _distinct(fn, name: str):
    """A fresh function object per patched attribute: torch._dynamo keys its rules on the
    function objects found in ``torch.cuda`` and rejects one object under two names."""

    def patched(*args, **kwargs):
        return fn(*args, **kwargs)

    patched.__name__ = name
    patched.__qualname__ = f"cpu_emulation.{name}"
    return patched


def _cuda_patches() -> List[Tuple[Any, str, Any]]:
    from megatron_ar.compat.rng import cuda_rng_state_patches

    cuda = torch.cuda
    funcs = {
        "current_device": lambda: "cpu",
        "get_rng_state": _cpu_get_rng_state,
        "set_rng_state": _cpu_set_rng_state,
        "manual_seed": _cpu_manual_seed,
        "manual_seed_all": _cpu_manual_seed,
        "synchronize": _noop,
        "empty_cache": _noop,
        "set_device": _noop,
        "device_count": lambda: 1,
        "current_stream": lambda *a, **k: _InertStream(),
        "default_stream": lambda *a, **k: _InertStream(),
        "stream": lambda s=None: contextlib.nullcontext(s),
        "memory_allocated": _zero,
        "max_memory_allocated": _zero,
        "memory_reserved": _zero,
        "reset_peak_memory_stats": _noop,
    }
    patches = [(cuda, name, _distinct(fn, name)) for name, fn in funcs.items()]
    patches.append((cuda, "Stream", _InertStream))
    patches += [(owner, name, _distinct(fn, name)) for owner, name, fn in cuda_rng_state_patches()]
    return patches


def install_cpu_emulation() -> None:
    """Make megatron-core run on the CPU in this process (idempotent; see module docstring).

    Must be called before megatron-core builds models, optimizers or RNG trackers. Safe to call
    again; a call from a new thread pushes the device mode on that thread's stack.
    """
    with _LOCK:
        if not _STATE["installed"]:
            saved = []
            for owner, name, value in _cuda_patches():
                saved.append((owner, name, getattr(owner, name, None)))
                setattr(owner, name, value)
            _STATE["saved"] = saved
            _STATE["installed"] = True
        tid = threading.get_ident()
        if tid not in _STATE["modes"]:
            mode = CpuDeviceMode()
            mode.__enter__()
            _STATE["modes"][tid] = mode


def uninstall_cpu_emulation() -> None:
    """Undo :func:`install_cpu_emulation` (restores ``torch.cuda`` and pops this thread's mode)."""
    with _LOCK:
        mode = _STATE["modes"].pop(threading.get_ident(), None)
        if mode is not None:
            mode.__exit__(None, None, None)
        if _STATE["installed"] and not _STATE["modes"]:
            for owner, name, value in reversed(_STATE["saved"]):
                setattr(owner, name, value)
            _STATE["saved"] = []
            _STATE["installed"] = False


def cpu_emulation_installed() -> bool:
    """True when :func:`install_cpu_emulation` is active in this process."""
    return bool(_STATE["installed"])


def default_device() -> torch.device:
    """The device megatron-core work goes to: ``cuda:<local rank>`` on GPUs, else the CPU."""
    if torch.cuda.is_available() and not _STATE["installed"]:
        return torch.device("cuda", torch.cuda.current_device())
    return _CPU



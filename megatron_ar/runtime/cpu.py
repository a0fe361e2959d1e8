"""CPU execution layer for megatron-core: run its real TP/PP/SP/DP code on gloo without a GPU.

megatron-core (0.16.x) calls ``torch.cuda`` directly in many places (device placement of
parameters and buffers, the model-parallel RNG tracker, optimizer type assertions, causal masks
built with ``device="cuda"``). Instead of forking megatron-core, :func:`install_cpu_emulation`
makes those calls resolve to the CPU:

1. ``torch.cuda`` functions megatron-core needs are replaced by CPU equivalents:
   ``current_device`` -> :data:`EMULATED_CUDA_ORDINAL`, the string ``"cpu"`` (so
   ``torch.empty(..., device=torch.cuda.current_device())`` allocates on the CPU, also outside
   the device mode, e.g. in backward passes; strict mode recognises the object as a GPU
   request), ``get_rng_state``/``set_rng_state``/``manual_seed`` act on the CPU
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

Strict mode (``install_cpu_emulation(strict=True)`` or ``MEGATRON_AR_STRICT_DEVICE=1`` in the
environment, so spawned ranks and torchrun workers inherit it; on in the test suite, off by
default): the mode also tags each tensor as allocated for the emulated GPU or on the CPU and raises
where CUDA/NCCL would (mixed-device ops, CPU tensors in NCCL collectives):
:mod:`megatron_ar.runtime.strict`. Whether strict or not, the layer records the process groups
created with an explicit gloo backend (megatron-core's gloo side groups), the only groups that are
not NCCL on a GPU cluster (:func:`megatron_ar.runtime.device.group_device`).

Trade-offs: every torch call pays a Python ``__torch_function__`` hop (measured ~1-3 us per op,
irrelevant next to the matmuls of a real model, visible on tiny test models). The layer never
runs when a CUDA device is available: :func:`megatron_ar.runtime.init_distributed` installs it
only when ``torch.cuda.is_available()`` is false.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.autograd

from megatron_ar.runtime.emulated import EMULATED_CUDA_ORDINAL, CpuDeviceMode

_LOCK = threading.Lock()
_STATE: Dict[str, Any] = {"installed": False, "strict": False, "saved": [], "modes": {}}


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
        "current_device": lambda: EMULATED_CUDA_ORDINAL,
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
    patches.append((torch.autograd, "has_torch_function", _subclass_torch_function))
    return patches


_TENSOR_TF = getattr(torch.Tensor.__torch_function__, "__func__", torch.Tensor.__torch_function__)


def _subclass_torch_function(args) -> bool:
    """``torch.autograd``'s ``has_torch_function`` under the layer: True only for tensor
    subclasses that override ``__torch_function__``, not for active modes. Since torch 2.13
    ``torch.autograd.backward``/``grad`` hand themselves to the active torch-function modes, and a
    mode is popped while it handles a call: the whole backward pass -- megatron-core's activation
    recomputation included, whose attention builds its causal mask with ``device="cuda"`` --
    would run outside this layer (measured: ``recompute_granularity`` selective and full failed
    with "Torch not compiled with CUDA enabled"). A real GPU run has no mode, so skipping the
    hand-off for plain tensors changes nothing else."""
    for t in args:
        tf = getattr(type(t), "__torch_function__", None)
        if tf is None:
            continue
        fn = getattr(tf, "__func__", tf)
        if fn is not _TENSOR_TF and fn is not torch._C._disabled_torch_function_impl:
            return True
    return False


_MISSING = object()


def _apply_patches(patches) -> List[Tuple[Any, str, Any]]:
    saved = []
    for owner, name, value in patches:
        # Class attributes are saved from the class's own dict (an inherited or missing one is
        # deleted again on restore; a staticmethod stays a staticmethod).
        old = owner.__dict__.get(name, _MISSING) if isinstance(owner, type) else \
            getattr(owner, name, _MISSING)
        saved.append((owner, name, old))
        setattr(owner, name, value)
    return saved


def _restore_patches(saved) -> None:
    for owner, name, value in reversed(saved):
        if value is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, value)


def install_cpu_emulation(strict: Optional[bool] = None) -> None:
    """Make megatron-core run on the CPU in this process (idempotent; see module docstring).

    ``strict``: strict device emulation (:mod:`megatron_ar.runtime.strict`); ``None`` reads
    ``MEGATRON_AR_STRICT_DEVICE``. Fixed by the first call of the process; a later call asking
    for the other setting raises ``ValueError``.

    Must be called before megatron-core builds models, optimizers or RNG trackers. Safe to call
    again; a call from a new thread pushes the device mode on that thread's stack.
    """
    import torch.distributed as dist

    from megatron_ar.runtime import strict as strict_mod

    with _LOCK:
        if not _STATE["installed"]:
            on = strict_mod.strict_from_env() if strict is None else bool(strict)
            patches = _cuda_patches() + strict_mod._group_wrappers(dist)
            if on:
                patches += strict_mod.strict_patches()
            _STATE["saved"] = _apply_patches(patches)
            _STATE["strict"] = on
            _STATE["installed"] = True
        elif strict is not None and bool(strict) != _STATE["strict"]:
            raise ValueError(f"install_cpu_emulation(strict={strict}): the CPU layer is already "
                             f"installed with strict={_STATE['strict']} in this process")
        tid = threading.get_ident()
        if tid not in _STATE["modes"]:
            mode = strict_mod.StrictDeviceMode() if _STATE["strict"] else CpuDeviceMode()
            mode.__enter__()
            _STATE["modes"][tid] = mode


def uninstall_cpu_emulation() -> None:
    """Undo :func:`install_cpu_emulation` (restores ``torch.cuda`` and pops this thread's mode)."""
    with _LOCK:
        mode = _STATE["modes"].pop(threading.get_ident(), None)
        if mode is not None:
            mode.__exit__(None, None, None)
        if _STATE["installed"] and not _STATE["modes"]:
            _restore_patches(_STATE["saved"])
            _STATE["saved"] = []
            _STATE["installed"] = False
            _STATE["strict"] = False


def cpu_emulation_installed() -> bool:
    """True when :func:`install_cpu_emulation` is active in this process."""
    return bool(_STATE["installed"])


def strict_device_emulation() -> bool:
    """True when the CPU layer is installed in strict mode."""
    return bool(_STATE["installed"] and _STATE["strict"])

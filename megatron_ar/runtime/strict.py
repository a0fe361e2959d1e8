"""Strict device emulation: on the CPU, tell tensors meant for the GPU from CPU tensors and fail
where CUDA or NCCL would.

The CPU execution layer (:mod:`megatron_ar.runtime.cpu`) maps every "cuda" request to the CPU,
so on its own it cannot see the commonest GPU bug: a tensor left on the CPU (a batch handed to the
model, a loss all-reduced over NCCL). In strict mode every tensor carries a *placement*:

- ``DEVICE``: allocated for the (emulated) GPU: a factory call with ``device="cuda[:i]"``, an int
  ordinal, ``torch.cuda.current_device()`` (the layer's ``EMULATED_CUDA_ORDINAL``) or
  :func:`megatron_ar.runtime.current_device` (``EMULATED_CUDA_DEVICE``), ``.to("cuda")``,
  ``.cuda()``, or computed from a device tensor;
- ``HOST``: created on the CPU on purpose: a factory call without device or with ``"cpu"``,
  ``torch.from_numpy``/``torch.frombuffer``, ``.cpu()``, ``.to("cpu")``;
- ``UNKNOWN``: created where no torch function is visible (gradients made by the autograd engine,
  tensors unpickled before the layer was installed, other threads). Unknown never raises.

and these raise :class:`DeviceMismatchError`, naming the operation, the first frame outside
torch / megatron-core (the caller's file and line) and the first megatron_ar frame:

1. an op that receives both a ``DEVICE`` and a ``HOST`` tensor (what CUDA reports as "Expected
   all tensors to be on the same device");
2. a collective or point-to-point call (``all_reduce``, ``all_gather[_into_tensor]``,
   ``reduce_scatter[_tensor]``, ``broadcast``, ``send``/``recv``, ``isend``/``irecv``,
   ``batch_isend_irecv``, ``all_to_all[_single]``, ...) with a ``HOST`` tensor on a process group
   that is NCCL on a GPU cluster: every group except those created with an explicit gloo backend
   (megatron-core's ``create_gloo_process_groups`` side groups, on which CPU tensors are right);
3. ``.numpy()`` / ``__array__`` / ``pin_memory()`` of a ``DEVICE`` tensor (CUDA refuses them).
A model forward on a CPU batch is case 1 at the first op that meets a weight (the embedding
lookup on the first pipeline stage, the loss on the last).

Design choices and trade-offs
- The placement is a Python attribute on the tensor object (``TAG``), with a class-level default
  (``UNKNOWN``) set on ``torch.Tensor`` while strict mode is installed, so reading it never takes
  the AttributeError path. ``torch.Tensor.__getstate__`` leaves it out while installed, so it is
  never pickled (checkpoints, results sent between processes); ``deepcopy`` re-tags through the
  mode. FakeTensors are Python tensor subclasses and carry it the same way.
- Propagation, one level of the arguments plus lists/tuples (no pytree flatten per op): output
  ``DEVICE`` if any input is ``DEVICE``; else ``HOST`` if any non-0-dim input is ``HOST``; else
  ``UNKNOWN`` if any input is untagged; else ``HOST`` (factories, 0-dim CPU scalars only). An
  explicit ``device=`` keyword wins.
- ``Tensor.device`` of a CPU tensor is one of three shared ``torch.device("cpu")`` objects, one
  per placement (``EMULATED_CUDA_DEVICE`` for ``DEVICE``), so the ubiquitous
  ``torch.empty(..., device=x.device)`` keeps ``x``'s placement (identity check); a
  ``torch.device("cpu")`` built by the caller means ``HOST``; meta tensors report ``meta``. Everything that
  inspects ``.device``/``.is_cuda`` still sees a CPU tensor (gloo and the CPU kernels need that).
- Legal mixes (what CUDA accepts), kept small: 0-dim CPU tensors with device tensors (CUDA takes
  CPU scalars); ``copy_``/``to``/``.data = ...`` (cross-device copies and moves); CPU index
  tensors in ``device_tensor[idx]``, ``__setitem__`` and ``index_put_`` (advanced indexing moves
  CPU indices); ``.item()``/``.tolist()``; metadata queries (``_has_compatible_shallow_copy_type``,
  ``is_same_size``).
- ``Tensor.grad`` gets its parameter's placement (the autograd engine makes gradients where no
  torch function is visible); so do the results of ``torch.autograd.grad`` for their inputs, and a
  ``torch.nn.Parameter`` gets its data's placement. ``.cuda()``/``.to("cuda")`` of a CPU tensor
  return a new alias (same storage) tagged ``DEVICE`` instead of the tensor itself, so the source
  stays ``HOST`` as on a GPU; ``Module.to``/``.cuda()`` re-tag parameters through ``.data =``.
- Collectives are checked by wrapping the functions in the ``torch.distributed`` namespace (what
  megatron-core calls, including its module-level ``dist_all_gather_func`` /
  ``dist_reduce_scatter_func`` aliases, re-bound here). torch's own internals are not wrapped:
  the object collectives (``all_gather_object``, ``broadcast_object_list``) place their byte
  tensors on the group's device themselves.
- Blind spots: ``UNKNOWN`` tensors never raise (data made in other threads or unpickled before
  the layer was installed). In the backward pass the autograd engine's own C++ kernels are not
  seen (gradients are tagged when read through ``.grad`` or returned by ``torch.autograd.grad``);
  Python run by the engine -- custom autograd Functions, activation recomputation, collectives --
  is, because the CPU layer keeps ``torch.autograd.backward``/``grad`` from handing themselves
  to the mode (which would switch the mode off for the whole pass). ``x.get_device()`` returns -1; a device
  object rebuilt from another (``torch.device(x.device)``, ``Module.to(device)``'s parsing) reads
  as ``HOST``, which is why :func:`megatron_ar.runtime.module_to_device` uses ``Module.cuda``.
- Cost: every op already pays the CPU layer's ``__torch_function__`` hop; strict mode replaces it
  with a dict lookup, a scan of the arguments and an attribute store per op. Measured on 2 shared
  cores (torch 2.13 CPU): a 4-element add costs about the same in both modes (~3-4 us with
  either mode vs 1.5 us bare); a tiny-llama forward+backward step (DDP, 4 micro-batches of
  2 x 64 tokens, ~2.5k visible calls per step) took 0.070 s plain and 0.078 s strict (+11%, best
  of 8 interleaved rounds); on the 250-step CPU quickstart and the 2-rank parity suite the
  difference is below the run-to-run noise of the machine. The CPU quickstart (production CPU
  path) leaves strict mode off; the test suite turns it on.
"""
from __future__ import annotations

import os
import sys
import sysconfig
import weakref
from typing import Any, Dict, List, Optional, Tuple

import torch

from megatron_ar.runtime.emulated import (CUDA_TYPE_PREFIX, EMULATED_CUDA_DEVICE,
                                          EMULATED_CUDA_ORDINAL, CpuDeviceMode, tensor_type)

ENV = "MEGATRON_AR_STRICT_DEVICE"
TAG = "_megatron_ar_placement"
UNKNOWN, HOST, DEVICE = 0, 1, 2
_NAMES = {UNKNOWN: "unknown placement", HOST: "CPU", DEVICE: "emulated GPU"}

_Tensor = torch.Tensor
_CPU = torch.device("cpu")
# One torch.device("cpu") object per placement, returned by Tensor.device (see module docstring).
_DEVICE_OBJ = {UNKNOWN: torch.device("cpu"), HOST: torch.device("cpu"), DEVICE: EMULATED_CUDA_DEVICE}
_DEVICE_MARK = _DEVICE_OBJ[DEVICE]
_UNKNOWN_MARK = _DEVICE_OBJ[UNKNOWN]


class DeviceMismatchError(RuntimeError):
    """A device error CUDA/NCCL would raise; ``op``, ``location`` (caller file:line) and
    ``megatron_ar_location`` (first megatron_ar frame) are attached."""

    def __init__(self, op: str, problem: str, location: str, ours: Optional[str]):
        text = f"strict device emulation: {op}: {problem}; at {location}"
        if ours and ours != location:
            text += f" (first megatron_ar frame: {ours})"
        super().__init__(text)
        self.op = op
        self.location = location
        self.megatron_ar_location = ours


def strict_from_env() -> bool:
    """True when ``MEGATRON_AR_STRICT_DEVICE`` is set to a true value (1/true/yes/on)."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"environment variable {ENV}={os.environ[ENV]!r}: expected 1/0/true/false")


def placement(t: torch.Tensor) -> int:
    """``DEVICE``, ``HOST`` or ``UNKNOWN`` (always ``UNKNOWN`` when strict mode is off)."""
    return getattr(t, TAG, UNKNOWN)


def _set(t, p: int) -> None:
    if p:
        setattr(t, TAG, p)


# ----------------------------------------------------------------------------- error locations
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_STDLIB_DIR = sysconfig.get_paths()["stdlib"] + os.sep
_INTERNAL_RUNTIME = tuple(_RUNTIME_DIR + n for n in ("strict.py", "cpu.py", "device.py", "emulated.py"))


def _megatron_core_dir() -> str:
    try:
        import megatron.core

        return os.path.dirname(megatron.core.__file__) + os.sep
    except ImportError:  # pragma: no cover - megatron-core is a hard dependency
        return "\0"


_MCORE_DIR: Optional[str] = None


def _internal(filename: str) -> bool:
    global _MCORE_DIR
    if _MCORE_DIR is None:
        _MCORE_DIR = _megatron_core_dir()
    return (filename.startswith((_TORCH_DIR, _MCORE_DIR, _STDLIB_DIR)) or filename.startswith("<")
            or filename in _INTERNAL_RUNTIME)


def locate() -> Tuple[str, Optional[str]]:
    """(first frame outside torch / megatron-core / the stdlib / this layer, first megatron_ar
    frame), each as ``file:line in function``."""
    frame = sys._getframe(1)
    caller = ours = None
    while frame is not None and (caller is None or ours is None):
        name = frame.f_code.co_filename
        if not _internal(name):
            where = f"{name}:{frame.f_lineno} in {frame.f_code.co_name}"
            caller = caller or where
            if ours is None and name.startswith(_PACKAGE_DIR):
                ours = where
        frame = frame.f_back
    return caller or "<unknown>", ours


def _op_name(func) -> str:
    try:
        name = torch.overrides.resolve_name(func)
    except Exception:  # resolve_name walks torch's tables; never mask the real error
        name = None
    if name:
        return name
    name = getattr(func, "__name__", None) or repr(func)
    module = getattr(func, "__module__", None)
    return f"{module}.{name}" if module else f"torch.{name}"


def _describe(t: torch.Tensor) -> str:
    kind = "Parameter " if isinstance(t, torch.nn.Parameter) else ""
    dtype = str(t.dtype).replace("torch.", "")
    return f"{kind}{dtype}{list(t.shape)}"


def _raise(op: str, problem: str):
    caller, ours = locate()
    raise DeviceMismatchError(op, problem, caller, ours)


# ----------------------------------------------------------------------------- argument scan
_SEQ = (list, tuple)
# Bits of :func:`_scan`.
_B_HOST, _B_DEV, _B_HOST0, _B_UNTAGGED = 1, 2, 4, 8


def _bits(t) -> int:
    p = getattr(t, TAG)
    if p == DEVICE:
        return _B_DEV
    if p == HOST:
        return _B_HOST0 if t.dim() == 0 else _B_HOST
    return _B_UNTAGGED


def _scan(args, kwargs) -> int:
    """Bit set over the tensors in ``args``/``kwargs`` (one level, plus lists and tuples):
    ``_B_DEV``, ``_B_HOST`` (non-0-dim), ``_B_HOST0`` (0-dim), ``_B_UNTAGGED``."""
    bits = 0
    for a in args:
        if isinstance(a, _Tensor):
            bits |= _bits(a)
        elif type(a) in _SEQ:
            for b in a:
                if isinstance(b, _Tensor):
                    bits |= _bits(b)
    if kwargs:
        for a in kwargs.values():
            if isinstance(a, _Tensor):
                bits |= _bits(a)
            elif type(a) in _SEQ:
                for b in a:
                    if isinstance(b, _Tensor):
                        bits |= _bits(b)
    return bits


def _placement_from_bits(bits: int) -> int:
    if bits & _B_DEV:
        return DEVICE
    if bits & _B_HOST:
        return HOST
    if bits & _B_UNTAGGED:
        return UNKNOWN
    return HOST  # factories and 0-dim CPU scalars only


def _tensors(args, kwargs):
    """(argument label, tensor) for the tensors :func:`_scan` looks at."""
    items = [(f"argument {i}", a) for i, a in enumerate(args)]
    items += [(f"{k}=", a) for k, a in (kwargs or {}).items()]
    for label, a in items:
        if isinstance(a, _Tensor):
            yield label, a
        elif type(a) in _SEQ:
            for j, b in enumerate(a):
                if isinstance(b, _Tensor):
                    yield f"{label}[{j}]", b


def _mix_problem(args, kwargs) -> str:
    dev = host = None
    for label, t in _tensors(args, kwargs):
        p = getattr(t, TAG)
        if p == DEVICE and dev is None:
            dev = f"{label}: {_describe(t)}"
        elif p == HOST and t.dim() > 0 and host is None:
            host = f"{label}: {_describe(t)}"
    return (f"mixes a tensor on the emulated GPU ({dev}) with a CPU tensor ({host}); CUDA raises "
            f"'Expected all tensors to be on the same device' (move it with "
            f"megatron_ar.runtime.to_device, or create it on torch.cuda.current_device())")


def _tag_out(out, p: int):
    if p:
        if isinstance(out, _Tensor):
            setattr(out, TAG, p)
        elif isinstance(out, tuple) or type(out) is list:
            for o in out:
                if isinstance(o, _Tensor):
                    setattr(o, TAG, p)
    return out


# ----------------------------------------------------------------------------- device requests
def _requested(dev) -> int:
    """Placement asked for by a ``device=`` value; -1 when it names no placement (meta, ...)."""
    if isinstance(dev, torch.device):
        if dev is _DEVICE_MARK:
            return DEVICE
        if dev is _UNKNOWN_MARK:
            return UNKNOWN
        return DEVICE if dev.type == "cuda" else (HOST if dev.type == "cpu" else -1)
    if isinstance(dev, str):
        if dev is EMULATED_CUDA_ORDINAL or dev == "cuda" or dev.startswith("cuda:"):
            return DEVICE
        return HOST if dev == "cpu" or dev.startswith("cpu:") else -1
    if isinstance(dev, int) and not isinstance(dev, bool):
        return DEVICE  # a CUDA ordinal in torch's API
    return -1


def _alias(t: torch.Tensor, p: int) -> torch.Tensor:
    """``t`` itself when it already has placement ``p``, else a same-storage alias tagged ``p``
    (on a GPU, moving a tensor makes a new one and leaves the source where it was)."""
    if getattr(t, TAG) == p or not p:
        return t
    out = t.view_as(t)
    setattr(out, TAG, p)
    return out


# ----------------------------------------------------------------------------- special ops
def _cuda(mode, func, args, kwargs):
    return _alias(args[0], DEVICE)


def _cpu(mode, func, args, kwargs):
    return _alias(func(*args, **kwargs), HOST)


def _pin_memory(mode, func, args, kwargs):
    t = args[0]
    if getattr(t, TAG) == DEVICE:
        _raise("torch.Tensor.pin_memory", f"cannot pin a tensor on the emulated GPU "
               f"({_describe(t)}); only CPU tensors can be pinned")
    _set(t, HOST)
    return t


def _to_numpy(name):
    def handler(mode, func, args, kwargs):
        t = args[0]
        if getattr(t, TAG) == DEVICE:
            _raise(name, f"cannot convert a tensor on the emulated GPU ({_describe(t)}) to numpy; "
                   f"CUDA requires .cpu() first")
        return func(*args, **kwargs)
    return handler


def _to(mode, func, args, kwargs):
    t = args[0]
    target = -1
    other = args[1] if len(args) > 1 else kwargs.get("device", kwargs.get("other"))
    if isinstance(other, _Tensor):
        target = getattr(other, TAG)
    elif other is not None and not isinstance(other, torch.dtype):
        target = _requested(other)
        if target == DEVICE:
            if len(args) > 1:
                args = (t, _CPU) + tuple(args[2:])
            else:
                kwargs = dict(kwargs, device=_CPU)
    out = func(*args, **kwargs)
    src = getattr(t, TAG)
    if target in (-1, UNKNOWN):
        target = src
    if out is t:
        return _alias(out, target)
    _set(out, target)
    return out


def _getitem(mode, func, args, kwargs):
    t, idx = args[0], args[1]
    p = getattr(t, TAG)
    bits = _scan((idx,), None) if isinstance(idx, (_Tensor, list, tuple)) else 0
    if p == HOST and t.dim() > 0 and bits & _B_DEV:
        _raise("torch.Tensor.__getitem__", f"indexes a CPU tensor ({_describe(t)}) with an index "
               f"on the emulated GPU; CUDA requires indices on the CPU or the indexed tensor's "
               f"device")
    out = func(*args, **kwargs)
    return _tag_out(out, p if p else (DEVICE if bits & _B_DEV else UNKNOWN))


def _setitem(mode, func, args, kwargs):
    t, idx = args[0], args[1]
    if getattr(t, TAG) == HOST and t.dim() > 0 and isinstance(idx, (_Tensor, list, tuple)) \
            and _scan((idx,), None) & _B_DEV:
        _raise("torch.Tensor.__setitem__", f"indexes a CPU tensor ({_describe(t)}) with an index "
               f"on the emulated GPU")
    return func(*args, **kwargs)


def _data_set(mode, func, args, kwargs):
    t, value = args[0], args[1]
    func(*args, **kwargs)
    p = getattr(value, TAG)
    if p:
        setattr(t, TAG, p)


def _grad_get(mode, func, args, kwargs):
    out = func(*args, **kwargs)
    if out is not None and not getattr(out, TAG):
        _set(out, getattr(args[0], TAG))
    return out


def _grad_set(mode, func, args, kwargs):
    t, value = args[0], args[1]
    if value is not None and {getattr(t, TAG), getattr(value, TAG)} == {DEVICE, HOST}:
        _raise("torch.Tensor.grad", f"assigns a gradient on the {_NAMES[getattr(value, TAG)]} "
               f"({_describe(value)}) to a tensor on the {_NAMES[getattr(t, TAG)]}")
    return func(*args, **kwargs)


def _index_put(mode, func, args, kwargs):
    # self[indices] = values: CPU index tensors are fine on a device tensor; values are not.
    t, values = args[0], (args[2] if len(args) > 2 else kwargs.get("values"))
    if isinstance(values, _Tensor):
        bits = _bits(t) | _bits(values)
        if bits & _B_DEV and bits & _B_HOST:
            _raise(_op_name(func), _mix_problem((t, values), None))
    out = func(*args, **kwargs)
    if out is not t:
        _set(out, getattr(t, TAG))
    return out


def _copy(mode, func, args, kwargs):
    return func(*args, **kwargs)  # cross-device copies are legal; dst keeps its placement


def _metadata(mode, func, args, kwargs):
    return func(*args, **kwargs)  # compares metadata only, no data is touched


def _autograd_grad(mode, func, args, kwargs):
    out = func(*args, **kwargs)
    inputs = kwargs.get("inputs", args[1] if len(args) > 1 else None)
    if isinstance(inputs, _Tensor):
        inputs = (inputs,)
    if inputs is not None:
        for g, x in zip(out, inputs):
            if g is not None and isinstance(x, _Tensor) and not getattr(g, TAG):
                _set(g, getattr(x, TAG))
    return out


def _grad_wrapper(orig):
    def grad(*args, **kwargs):
        return _autograd_grad(None, orig, args, kwargs)

    grad.__wrapped__ = orig
    grad.__doc__ = orig.__doc__
    return grad


def _device_get(mode, func, args, kwargs):
    dev = func(*args, **kwargs)
    return _DEVICE_OBJ[getattr(args[0], TAG)] if dev.type == "cpu" else dev  # meta stays meta


def _tensor_type(mode, func, args, kwargs):
    dtype = args[1] if len(args) > 1 else kwargs.get("dtype")
    out = tensor_type(func, args, kwargs)
    if isinstance(out, _Tensor):
        cuda = isinstance(dtype, str) and dtype.startswith(CUDA_TYPE_PREFIX)
        if out is args[0]:
            out = _alias(out, DEVICE) if cuda else out
        else:
            _set(out, DEVICE if cuda else getattr(args[0], TAG))
    return out


def _torch_tensor(mode, func, args, kwargs):
    # torch.tensor(data) is on the CPU unless a device is given, even when data holds device
    # scalars; torch.tensor(t) of a tensor copies it where it is.
    want = getattr(args[0], TAG) if args and isinstance(args[0], _Tensor) else HOST
    dev = kwargs.get("device")
    if dev is not None:
        want = _requested(dev)
        if want == DEVICE:
            kwargs = dict(kwargs, device=_CPU)
    if kwargs.get("pin_memory"):
        kwargs = dict(kwargs, pin_memory=False)
    return _tag_out(func(*args, **kwargs), max(want, UNKNOWN))


def _special_table() -> Dict[Any, Any]:
    T = torch.Tensor
    base = torch._C.TensorBase
    return {
        T.cuda: _cuda,
        T.cpu: _cpu,
        T.pin_memory: _pin_memory,
        T.numpy: _to_numpy("torch.Tensor.numpy"),
        T.__array__: _to_numpy("torch.Tensor.__array__"),
        T.to: _to,
        T.type: _tensor_type,
        T.__getitem__: _getitem,
        T.__setitem__: _setitem,
        T.copy_: _copy,
        T.index_put_: _index_put,
        T.index_put: _index_put,
        base.data.__set__: _data_set,
        base.grad.__get__: _grad_get,
        base.grad.__set__: _grad_set,
        base.device.__get__: _device_get,
        torch.autograd.grad: _autograd_grad,
        torch.tensor: _torch_tensor,
        # Module._apply asks this of a parameter and its moved copy.
        torch._has_compatible_shallow_copy_type: _metadata,
        torch.is_same_size: _metadata,
    }


# ----------------------------------------------------------------------------- the mode
class StrictDeviceMode(CpuDeviceMode):
    """:class:`~megatron_ar.runtime.cpu.CpuDeviceMode` plus placement checks and tagging (see the
    module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if torch.compiler.is_compiling():
            # Inside a region dynamo traces (eager FlexAttention wraps its kernel so) tensors
            # are fakes that take no attributes: no checks or tags there. The region's inputs
            # were checked where they were made; its outputs leave untagged (placement
            # unknown), which later checks accept as either side.
            return super().__torch_function__(func, types, args, kwargs)
        special = _SPECIAL.get(func)
        if special is not None:
            return special(self, func, args, kwargs or {})
        want = -1
        if kwargs:
            dev = kwargs.get("device")
            if dev is not None:
                want = _requested(dev)
                if want == DEVICE:
                    kwargs = dict(kwargs, device=_CPU)
            if kwargs.get("pin_memory"):
                kwargs = dict(kwargs, pin_memory=False)
                if want == -1:
                    want = HOST
        bits = _scan(args, kwargs)
        if bits & _B_DEV and bits & _B_HOST:
            _raise(_op_name(func), _mix_problem(args, kwargs))
        out = func(*args, **(kwargs or {}))
        if want == -1:
            want = _placement_from_bits(bits)
        return _tag_out(out, want)


_SPECIAL: Dict[Any, Any] = {}


# ----------------------------------------------------------------------------- collectives
# Process groups created with an explicit gloo backend (megatron-core's gloo side groups): CPU
# tensors are right there. Every other group is NCCL on a GPU cluster.
_GLOO_GROUPS: "weakref.WeakSet" = weakref.WeakSet()

_COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "_all_gather_base",
                "reduce_scatter", "reduce_scatter_tensor", "_reduce_scatter_base", "broadcast",
                "reduce", "send", "recv", "isend", "irecv", "all_to_all", "all_to_all_single",
                "gather", "scatter", "all_reduce_coalesced")
# megatron-core modules that bind torch.distributed functions at import time.
_MCORE_ALIASES = ("megatron.core.tensor_parallel.mappings", "megatron.core.tensor_parallel.layers",
                  "megatron.core.distributed.param_and_grad_buffer",
                  "megatron.core.transformer.multi_token_prediction")


def _is_gloo_backend(backend) -> bool:
    return backend is not None and str(backend).lower() == "gloo"


def is_gloo_group(group) -> bool:
    """True for a group created with an explicit gloo backend (see :func:`record_group`)."""
    return group is not None and group in _GLOO_GROUPS


def record_group(group, backend) -> None:
    """Remember ``group`` as a gloo side group when ``backend`` is gloo."""
    import torch.distributed as dist

    if _is_gloo_backend(backend) and group is not None and \
            not (isinstance(group, int) and group == dist.GroupMember.NON_GROUP_MEMBER):
        try:
            _GLOO_GROUPS.add(group)
        except TypeError:  # not weak-referenceable: not a ProcessGroup
            pass


def _group_wrappers(dist) -> List[Tuple[Any, str, Any]]:
    """(owner, name, replacement) for ``new_group`` / ``new_subgroups_by_enumeration``; installed
    with the CPU layer whether strict or not (they tell :func:`group_backend` the backend a
    group has on a GPU cluster)."""
    new_group = dist.new_group
    new_subgroups = dist.new_subgroups_by_enumeration

    def wrapped_new_group(*args, **kwargs):
        group = new_group(*args, **kwargs)
        record_group(group, kwargs.get("backend", args[2] if len(args) > 2 else None))
        return group

    def wrapped_new_subgroups(*args, **kwargs):
        group, groups = new_subgroups(*args, **kwargs)
        backend = kwargs.get("backend", args[2] if len(args) > 2 else None)
        for g in [group] + list(groups or []):
            record_group(g, backend)
        return group, groups

    wrapped_new_group.__wrapped__ = new_group
    wrapped_new_subgroups.__wrapped__ = new_subgroups
    return [(dist, "new_group", wrapped_new_group),
            (dist, "new_subgroups_by_enumeration", wrapped_new_subgroups)]


def group_is_device(group) -> bool:
    """True when ``group`` is NCCL on a GPU cluster: the default group and every group not
    created with an explicit gloo backend."""
    return not is_gloo_group(group)


def _check_collective(op: str, group, args, kwargs) -> None:
    if not group_is_device(group):
        return
    for name, t in _tensors(args, kwargs):
        if getattr(t, TAG) == HOST:
            _raise(f"torch.distributed.{op}", f"passes a CPU tensor ({_describe(t)}) to a process "
                   f"group that is NCCL on a GPU cluster (NCCL rejects CPU tensors); create it on "
                   f"the group's device (megatron_ar.runtime.group_device)")


def _wrap_collective(dist, name: str):
    import inspect

    orig = getattr(dist, name)
    params = list(inspect.signature(orig).parameters)
    gi = params.index("group")

    def wrapper(*args, **kwargs):
        group = kwargs["group"] if "group" in kwargs else (args[gi] if len(args) > gi else None)
        _check_collective(name, group, args, kwargs)
        return orig(*args, **kwargs)

    wrapper.__name__ = name
    wrapper.__qualname__ = f"strict.{name}"
    wrapper.__wrapped__ = orig
    return wrapper


def _unwrap(fn):
    return getattr(fn, "__wrapped__", fn)


def _p2p_wrappers(dist) -> List[Tuple[Any, str, Any]]:
    orig_batch = dist.batch_isend_irecv
    orig_op = dist.P2POp

    class P2POp(orig_op):
        """torch's P2POp accepting the wrapped ``isend``/``irecv`` (its op check is by identity)."""

        def __new__(cls, op, tensor, *args, **kwargs):
            return orig_op.__new__(cls, _unwrap(op), tensor, *args, **kwargs)

        def __init__(self, op, tensor, *args, **kwargs):
            super().__init__(_unwrap(op), tensor, *args, **kwargs)

    def batch_isend_irecv(p2p_op_list):
        for p in p2p_op_list:
            name = getattr(p.op, "__name__", "p2p")
            _check_collective(f"batch_isend_irecv({name})", p.group, (p.tensor,), None)
        return orig_batch(p2p_op_list)

    batch_isend_irecv.__wrapped__ = orig_batch
    return [(dist, "P2POp", P2POp), (dist, "batch_isend_irecv", batch_isend_irecv)]


# ----------------------------------------------------------------------------- install
def _from_numpy_wrapper(orig):
    def wrapper(*args, **kwargs):
        out = orig(*args, **kwargs)
        setattr(out, TAG, HOST)
        return out

    wrapper.__name__ = getattr(orig, "__name__", "from_numpy")
    wrapper.__wrapped__ = orig
    return wrapper


def _parameter_new():
    """``Parameter.__new__`` giving the parameter its data's placement (``Parameter(t)`` makes a
    new tensor object where no torch function is visible)."""
    orig = torch.nn.Parameter.__dict__["__new__"]
    fn = orig.__func__ if isinstance(orig, staticmethod) else orig

    def __new__(cls, data=None, requires_grad=True):
        out = fn(cls, data, requires_grad)
        if data is not None:
            _set(out, getattr(data, TAG, UNKNOWN))
        return out

    return staticmethod(__new__)


def _getstate(self):
    state = object.__getstate__(self)
    if isinstance(state, dict) and TAG in state:
        state = {k: v for k, v in state.items() if k != TAG}
    return state


def _fake_device_property():
    """``FakeTensor.device`` with the placement objects of :func:`_device_get`: FakeTensor
    overrides ``device`` with a Python property that no torch function sees, so without this a
    fake CPU tensor's device would read as a plain ``torch.device("cpu")`` (HOST) and a
    ``device=x.device`` allocation next to a fake device tensor would look like a mix."""
    from torch._subclasses.fake_tensor import FakeTensor

    orig = FakeTensor.__dict__["device"]

    def get(self):
        dev = orig.fget(self)
        return _DEVICE_OBJ[getattr(self, TAG, UNKNOWN)] if dev.type == "cpu" else dev

    return FakeTensor, property(get, orig.fset)


def strict_patches() -> List[Tuple[Any, str, Any]]:
    """(owner, attribute, replacement) installed by :func:`megatron_ar.runtime.cpu.
    install_cpu_emulation` in strict mode (restored by ``uninstall_cpu_emulation``)."""
    import importlib

    import torch.distributed as dist

    _SPECIAL.clear()
    _SPECIAL.update(_special_table())
    patches: List[Tuple[Any, str, Any]] = [
        (torch.Tensor, TAG, UNKNOWN),
        (torch.Tensor, "__getstate__", _getstate),
        (torch, "from_numpy", _from_numpy_wrapper(torch.from_numpy)),
        (torch, "frombuffer", _from_numpy_wrapper(torch.frombuffer)),
        (torch.nn.Parameter, "__new__", _parameter_new()),
    ]
    fake_cls, fake_device = _fake_device_property()
    patches.append((fake_cls, "device", fake_device))
    # The CPU layer keeps torch.autograd.grad from handing itself to the mode (its
    # has_torch_function patch), so the results are tagged here instead.
    patches.append((torch.autograd, "grad", _grad_wrapper(torch.autograd.grad)))
    wrappers = {}
    for name in _COLLECTIVES:
        if hasattr(dist, name):
            wrappers[getattr(dist, name)] = _wrap_collective(dist, name)
            patches.append((dist, name, wrappers[getattr(dist, name)]))
    patches += _p2p_wrappers(dist)
    for modname in _MCORE_ALIASES:
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        for attr in ("dist_all_gather_func", "dist_reduce_scatter_func"):
            fn = getattr(mod, attr, None)
            if fn in wrappers:
                patches.append((mod, attr, wrappers[fn]))
    return patches


def group_backend(group=None) -> str:
    """The backend ``group`` has on a GPU cluster when running under the CPU layer: ``"gloo"`` for
    groups created with an explicit gloo backend, else ``"nccl"``."""
    return "gloo" if is_gloo_group(group) else "nccl"

"""Fake execution of megatron-core: one rank of an N-rank job on fake tensors, with no GPU,
no data and no memory, to see what the real job allocates.

API
- :func:`init_fake_distributed` / :func:`destroy_fake_distributed`: torch's ``fake`` process
  group backend for ``world_size`` ranks (this process plays ``rank``; collectives return at once
  without touching data) plus megatron-core's parallel state and RNG tracker, as
  :func:`megatron_ar.runtime.init_distributed` sets them up for a real run.
- :class:`FakeSession` (``with FakeSession() as fs:``): ``torch._subclasses.fake_tensor.FakeTensorMode``
  plus the pieces megatron-core needs to run a whole training step on fake tensors, and
  :class:`FakeMemory`, the live bytes of the fake tensors' storages and their peak.

Design choices
- One process plays one rank: every tensor is a FakeTensor (shape, dtype, device, no data), so a
  7B model's rank builds in seconds and "allocates" tens of GiB without using any. Shape errors
  raise as in a real run; on a CUDA build the tensors are typed ``cuda`` and FakeTensorMode
  rejects an op mixing ``cuda`` and ``cpu`` tensors. On the CPU build fake ``cuda`` tensors
  cannot be created (``copy_`` needs a CUDA-linked torch), so the session runs under the CPU
  execution layer (:func:`megatron_ar.runtime.install_cpu_emulation`, installed by
  :func:`init_fake_distributed`), exactly as a CPU training run does: "cuda" requests become
  CPU tensors and the layer's device checks apply.
- The ``fake`` backend needs no store server; megatron-core's gloo side groups are not created
  (``create_gloo_process_groups=False``), and the optimizer is built without them.
- Object collectives (``all_gather_object``, ``broadcast_object_list``) move pickled bytes, which
  the fake backend never delivers: while the fake group is up they return this rank's object for
  every rank. megatron-core uses them to agree on optimizer parameter-group keys, which are the
  same on every rank of a dense model; the simulation assumes that symmetry.
- The coalesced c10d collectives (``allreduce_coalesced_``, ``allgather_into_tensor_coalesced_``,
  ``reduce_scatter_tensor_coalesced_``, used by megatron-core's DDP buckets) have no fake
  implementation in torch 2.13 (torch/distributed/_meta_registrations.py leaves them out); they
  get the same ``FakeWork`` implementation as the others, registered by
  :func:`init_fake_distributed` and removed by :func:`destroy_fake_distributed`.
- Data-dependent reads: ``Tensor.item()``/``float()``/``int()``/``bool()`` on a fake tensor have
  no value. FakeTensorMode answers them for constants (tensors made from Python numbers, e.g.
  megatron's attention-mask type passed through activation checkpointing); everything else gets
  a placeholder: 1.0 for floating point (the gradient norm of megatron-core's clipping, which
  therefore clips as early training steps do; torch Adam's step counter, for which 0 would
  divide by zero), 1 for integers, True for booleans (megatron-core's RNG-tracker fork compares
  the CPU RNG state before and after: "unchanged"). ``torch.tensor(...)`` of fake tensors
  (megatron-core's CPU fallback ``local_multi_tensor_l2_norm``) and ``Tensor.tolist()`` get the
  same placeholders. Every placeholder is counted by call site (:attr:`FakeSession.placeholders`)
  so a report can say which values were invented.
- RNG state: megatron-core forks and restores RNG states around dropout and activation
  checkpointing. The states are real tensors (the generator returns them outside the
  dispatcher), so reading and writing them stays cheap and correct; only the fork's equality
  check is data-dependent and gets the placeholder above. Dropout on fake tensors draws nothing.
- Two torch 2.13 limitations are worked around for the session only: ``nn.Module._apply``
  (``Float16Module``'s ``.bfloat16()``) swaps FakeTensor parameters with
  ``torch.utils.swap_tensors``, which refuses tensors that FakeTensorMode's converter memo holds
  by weak reference (pytorch/pytorch#184976); the memo entries of the two tensors are dropped
  before the swap (the fix of pytorch/pytorch#178584), and the parameter keeps its Python
  attributes (megatron-core's ``tensor_model_parallel``, ``sequence_parallel``,
  ``shared_embedding``...) as it does in a real run, where ``.data`` is reassigned instead.
  (That backward keeps the CPU layer and the placeholders active during activation
  recomputation is the CPU layer's own doing: :mod:`megatron_ar.runtime.cpu`.)
- One megatron-core helper is made lazy for the session: ``shard_buffer`` (distributed/
  param_and_grad_buffer.py) slices every DDP bucket into DP views of which the caller uses one
  (its own rank's, for the reduce-scatter / all-gather). With DP = 84 that is 84 views per
  bucket, each a FakeTensor cache miss (the storage offset is part of the cache key): measured
  25 s of a 50 s fake step of Fanar Star's TP2 x DP84 rank. :class:`_LazyShards` returns the
  same views, made when indexed.
- The session's dispatch mode re-issues each op from Python (to answer placeholders and count
  storages) with torch-function handling off: an op called from Python would otherwise reach
  the torch-function modes (the CPU layer, its strict device checks) a second time, as an aten
  op, including the ops the autograd engine issues from C++, which a real run never shows them.
- Strict device emulation: :func:`init_fake_distributed` installs the CPU layer the way
  :func:`megatron_ar.runtime.init_distributed` does, so the layer's strict mode applies when the
  environment or the caller turns it on; the session's own modes sit above it.
- Memory (:class:`FakeMemory`): every storage a fake op creates is counted once (views share
  it) until its Python storage object is collected (a weak-reference callback; storages stay
  alive while autograd saves them). Bytes are the storage sizes, without allocator rounding or
  fragmentation. Real tensors that enter the session (host data: the training loop's
  ``torch.from_numpy`` micro-batches, the RNG states) are converted by FakeTensorMode; those
  storages, and the views of them ops return, are not counted. ``FakeMemory.tag`` labels new storages (e.g. "logits") so the live bytes of a
  region can be read at the peak.

Trade-offs: fake ops cost Python time (FakeTensorMode dispatch, ~0.1-1 ms per op on a loaded
CPU), so a whole step of a large model takes a minute or more; the fake job is meant to run in
its own process (torch.distributed and megatron-core's parallel state are process-global).
"""
from __future__ import annotations

import copy
import sys
import weakref
from collections import defaultdict
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from megatron_ar.runtime.cpu import install_cpu_emulation
from megatron_ar.runtime.distributed import ParallelLayout

_STATE: Dict[str, Any] = {"library": None, "saved": []}
_NO_TORCH_FUNCTION = torch._C.DisableTorchFunction
_COALESCED = ("allreduce_coalesced_", "allgather_into_tensor_coalesced_",
              "reduce_scatter_tensor_coalesced_")


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"init_fake_distributed: {name} must be a positive int, got {value!r}")


def _all_gather_object(object_list, obj, group=None):
    for i in range(len(object_list)):
        object_list[i] = copy.deepcopy(obj)


def _broadcast_object_list(object_list, src=None, group=None, device=None, group_src=None):
    return None


def init_fake_distributed(world_size: int, rank: int = 0, tp: int = 1, pp: int = 1,
                          vpp: Optional[int] = None, cp: int = 1, seed: int = 1234) -> ParallelLayout:
    """Make this process rank ``rank`` of a ``world_size``-rank job on torch's fake backend and
    initialise megatron-core's parallel state and model-parallel RNG (see module docstring).
    Raises ValueError for an impossible layout and RuntimeError if torch.distributed is
    already initialised in this process."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
    from torch.distributed._meta_registrations import create_fakework
    from torch.testing._internal.distributed.fake_pg import FakeStore

    for name, value in (("world_size", world_size), ("tp", tp), ("pp", pp), ("cp", cp)):
        _positive(name, value)
    if vpp is not None:
        _positive("vpp", vpp)
        if vpp > 1 and pp < 2:
            raise ValueError("init_fake_distributed: vpp > 1 needs pp >= 2 (virtual pipeline stages)")
    if world_size % (tp * pp * cp):
        raise ValueError(f"init_fake_distributed: world size {world_size} is not divisible by "
                         f"tp*pp*cp = {tp * pp * cp}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"init_fake_distributed: rank must be in [0, {world_size}), got {rank!r}")
    if dist.is_initialized():
        raise RuntimeError("init_fake_distributed: torch.distributed is already initialised in "
                           "this process; run the fake job in a fresh process")
    if not torch.cuda.is_available():
        install_cpu_emulation()
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    if _STATE["library"] is None:
        lib = torch.library.Library("c10d", "IMPL")
        for op in _COALESCED:
            lib.impl(op, lambda *args: create_fakework(args, return_first_arg=False), "Meta")
        _STATE["library"] = lib
    for name, fn in (("all_gather_object", _all_gather_object),
                     ("broadcast_object_list", _broadcast_object_list)):
        _STATE["saved"].append((dist, name, getattr(dist, name)))
        setattr(dist, name, fn)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp if (vpp or 1) > 1 else None,
        context_parallel_size=cp,
        create_gloo_process_groups=False,
    )
    model_parallel_cuda_manual_seed(seed)
    return ParallelLayout(
        rank=rank, world_size=world_size, tp=tp, pp=pp, vpp=vpp, cp=cp,
        dp=world_size // (tp * pp * cp),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        backend="fake",
    )


def destroy_fake_distributed() -> None:
    """Undo :func:`init_fake_distributed` (idempotent)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
    for owner, name, value in reversed(_STATE["saved"]):
        setattr(owner, name, value)
    _STATE["saved"] = []
    if _STATE["library"] is not None:
        _STATE["library"]._destroy()
        _STATE["library"] = None


# ----------------------------------------------------------------------------------------------
# memory accounting
# ----------------------------------------------------------------------------------------------
class FakeMemory:
    """Live bytes of the storages created by fake ops, by tag, with the peak (module docstring).

    ``live``/``peak`` are totals; ``peak_by_tag`` is the per-tag split at the moment of the peak;
    ``max_by_tag`` the largest live bytes each tag reached. :meth:`reset_peak` starts a new
    peak from the current live bytes.
    """

    def __init__(self) -> None:
        self.tag = "other"
        self.live = 0
        self.peak = 0
        self.live_by_tag: Dict[str, int] = defaultdict(int)
        self.peak_by_tag: Dict[str, int] = {}
        self.max_by_tag: Dict[str, int] = defaultdict(int)
        self._refs: Dict[int, weakref.ref] = {}
        self._info: Dict[weakref.ref, tuple] = {}

    def track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        if id(st) in self._refs:
            return
        ref = weakref.ref(st, self._free)
        n = st.nbytes()
        tag = self.tag
        self._refs[id(st)] = ref
        self._info[ref] = (id(st), n, tag)
        self.live += n
        by_tag = self.live_by_tag
        by_tag[tag] += n
        if by_tag[tag] > self.max_by_tag[tag]:
            self.max_by_tag[tag] = by_tag[tag]
        if self.live > self.peak:
            self.peak = self.live
            self.peak_by_tag = dict(by_tag)

    def _free(self, ref: weakref.ref) -> None:
        key, n, tag = self._info.pop(ref)
        self._refs.pop(key, None)
        self.live -= n
        self.live_by_tag[tag] -= n

    def exclude(self, t: torch.Tensor) -> None:
        """Never count ``t``'s storage (the fake twin of a real host tensor)."""
        st = t.untyped_storage()
        if id(st) in self._refs:
            return
        ref = weakref.ref(st, self._free)
        self._refs[id(st)] = ref
        self._info[ref] = (id(st), 0, "host")

    def reset_peak(self) -> None:
        self.peak = self.live
        self.peak_by_tag = dict(self.live_by_tag)
        self.max_by_tag = defaultdict(int, self.live_by_tag)

    def storage_bytes(self, tensors) -> int:
        """Bytes of the distinct storages behind ``tensors`` (shared storages counted once)."""
        seen = {}
        for t in tensors:
            st = t.untyped_storage()
            seen[id(st)] = st.nbytes()
        return sum(seen.values())


# ----------------------------------------------------------------------------------------------
# the session
# ----------------------------------------------------------------------------------------------
_SKIP_SITES = ("/torch/", "/megatron_ar/runtime/")


def _call_site() -> str:
    f = sys._getframe(2)
    while f is not None and any(s in f.f_code.co_filename for s in _SKIP_SITES):
        f = f.f_back
    if f is None:
        return "<unknown>"
    name = f.f_code.co_filename
    for marker in ("site-packages/", "megatron_ar/"):
        if marker in name:
            name = name[name.index(marker) + len(marker):] if marker == "site-packages/" else \
                name[name.index(marker):]
            break
    return f"{name}:{f.f_lineno}"


def _placeholder_scalar(dtype: torch.dtype):
    if dtype.is_floating_point or dtype.is_complex:
        return 1.0
    if dtype == torch.bool:
        return True
    return 1


class _FakeDispatch(TorchDispatchMode):
    """Placeholders for data-dependent scalar reads, and storage tracking."""

    def __init__(self, session: "FakeSession"):
        super().__init__()
        self.session = session

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch._subclasses.fake_tensor import DataDependentOutputException

        kwargs = kwargs or {}
        # Calling an op from Python would hand it to the torch-function modes (the CPU layer)
        # a second time; the modes have seen the Python-level call already, and ops the
        # autograd engine issues from C++ never reach them in a real run either.
        with _NO_TORCH_FUNCTION():
            if func is torch.ops.aten._local_scalar_dense.default:
                try:
                    return func(*args, **kwargs)  # constants have a value
                except DataDependentOutputException:
                    return self.session._placeholder(args[0].dtype)
            out = func(*args, **kwargs)
        self.session.ops += 1
        mem = self.session.memory
        if mem is not None:
            for real in _real_tensors(args, kwargs):
                mem.exclude(self.session.mode.from_tensor(real))
            if isinstance(out, torch.Tensor):
                mem.track(out)
            elif isinstance(out, (tuple, list)):
                for o in out:
                    if isinstance(o, torch.Tensor):
                        mem.track(o)
        return out


def _real_tensors(args, kwargs):
    """Real (non-fake) tensors among the op's arguments (one level, plus lists/tuples)."""
    out = []
    for a in (*args, *kwargs.values()):
        if type(a) is torch.Tensor or type(a) is torch.nn.Parameter:
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out += [b for b in a if type(b) is torch.Tensor or type(b) is torch.nn.Parameter]
    return out


def _has_fake(x) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    if isinstance(x, FakeTensor):
        return True
    if isinstance(x, (list, tuple)):
        return any(_has_fake(y) for y in x)
    return False


class _FakeReads(TorchFunctionMode):
    """``torch.tensor``/``torch.as_tensor`` of fake tensors and ``Tensor.tolist`` read data
    outside the dispatcher: give them placeholders of the right shape."""

    def __init__(self, session: "FakeSession"):
        super().__init__()
        self.session = session

    def _values(self, x):
        from torch._subclasses.fake_tensor import FakeTensor

        if isinstance(x, FakeTensor):
            value = self.session._placeholder(x.dtype)
            out: Any = value
            for n in reversed(tuple(x.shape)):
                out = [copy.copy(out) for _ in range(n)]
            return out
        if isinstance(x, (list, tuple)):
            return type(x)(self._values(y) for y in x)
        return x

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor) and args and _has_fake(args[0]):
            args = (self._values(args[0]),) + tuple(args[1:])
        elif func is torch.Tensor.tolist and args and _has_fake(args[0]):
            return self._values(args[0])
        return func(*args, **kwargs)


class FakeSession:
    """``with FakeSession() as fs:`` runs megatron-core on fake tensors (module docstring).

    Attributes: ``mode`` (the FakeTensorMode), ``memory`` (:class:`FakeMemory`, or None with
    ``track_memory=False``), ``ops`` (fake ops dispatched), ``placeholders`` (call site ->
    number of invented scalar values).
    """

    def __init__(self, track_memory: bool = True):
        from torch._subclasses.fake_tensor import FakeTensorMode

        # Real tensors do enter: the RNG states megatron-core compares (module docstring).
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        self.memory: Optional[FakeMemory] = FakeMemory() if track_memory else None
        self.ops = 0
        self.placeholders: Dict[str, int] = defaultdict(int)
        self._dispatch = _FakeDispatch(self)
        self._reads = _FakeReads(self)
        self._saved: list = []

    def _placeholder(self, dtype: torch.dtype):
        self.placeholders[_call_site()] += 1
        return _placeholder_scalar(dtype)

    def _swap_tensors(self, t1, t2):
        memo = self.mode.fake_tensor_converter.tensor_memo
        for key, value in list(memo.items()):
            if value is t1 or value is t2:
                del memo[key]
        # A real run converts with ``param.data = new`` and the parameter keeps its Python
        # attributes (megatron-core's tensor_model_parallel, sequence_parallel,
        # shared_embedding...); the swap would exchange them for the new tensor's empty ones.
        for name, value in t1.__dict__.items():
            t2.__dict__.setdefault(name, value)
        return self._orig_swap(t1, t2)

    def __enter__(self) -> "FakeSession":
        import megatron.core.distributed.param_and_grad_buffer as mbuffer
        import torch.utils

        self._orig_swap = torch.utils.swap_tensors
        patches = ((torch.utils, "swap_tensors", self._swap_tensors),
                   (mbuffer, "shard_buffer", _LazyShards))
        self._saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
        for owner, name, value in patches:
            setattr(owner, name, value)
        self.mode.__enter__()
        self._dispatch.__enter__()
        self._reads.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._reads.__exit__(*exc)
        self._dispatch.__exit__(*exc)
        self.mode.__exit__(*exc)
        for owner, name, value in reversed(self._saved):
            setattr(owner, name, value)
        self._saved = []



class _LazyShards:
    """The list megatron-core's ``shard_buffer(buffer, n)`` returns (``n`` equal contiguous
    views of ``buffer``), each view made when first indexed."""

    def __init__(self, buffer: torch.Tensor, n: int):
        if buffer.numel() % n:
            raise AssertionError(f"shard_buffer: {buffer.numel()} elements not divisible by {n}")
        self.buffer, self.n, self.size = buffer, n, buffer.numel() // n
        self._views: Dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, r: int) -> torch.Tensor:
        if not isinstance(r, int):
            raise TypeError(f"shard index must be an int, got {r!r}")
        if r < 0:
            r += self.n
        if not 0 <= r < self.n:
            raise IndexError(r)
        if r not in self._views:
            self._views[r] = self.buffer[r * self.size:(r + 1) * self.size]
        return self._views[r]

    def __iter__(self):
        return (self[r] for r in range(self.n))

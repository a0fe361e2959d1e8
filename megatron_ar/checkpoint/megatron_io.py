"""megatron-core ``dist_checkpointing`` (torch_dist) save/load, streamed tensor by tensor.

Checkpoint layout (a directory)::

    metadata.json, common.pt, .metadata, __0_*.distcp   megatron-core torch_dist checkpoint
    model_config.json                                   ModelConfig + conversion facts (below)
    tokenizer/                                          optional copy of the tokenizer files

Design choices
- Keys, global shapes and sharding come from the model itself: a megatron_ar model built on
  the *meta* device (no memory) at TP=1/PP=1 gives ``model.sharded_state_dict()`` (with
  megatron-core's factories applied, e.g. the gated ``linear_fc1`` split into gate/up shards,
  the local spec's TE-compatible norm keys, layers stacked under one key with a layer axis).
  That is exactly what the training side's ``sharded_state_dict()`` expects at any TP/PP: dist
  checkpoints store *global* tensors and reshard on load.
- Streaming save: megatron-core's own writer (``FileSystemWriterAsync``) resolves every tensor
  before writing, i.e. it needs the whole model in memory. We translate the sharded state dict
  with megatron-core's own helpers (``_replace_state_dict_keys_with_sharded_keys`` via
  :mod:`megatron_ar.compat.dist_checkpointing`,
  ``mcore_to_pyt_state_dict``, ``MCoreSavePlanner``) and hand it to
  ``torch.distributed.checkpoint`` with a ``FileSystemWriter`` whose write loop resolves, writes
  and drops one item at a time (:func:`_streaming_writer`). Our planner computes each item lazily
  from a source function (one megatron parameter at a time, cached until the next one), so peak
  memory is ~one parameter plus one shard. ``common.pt`` / ``metadata.json`` are written with
  megatron-core's functions, so ``dist_checkpointing.load`` sees a regular torch_dist checkpoint.
- Target TP: tensors are stored in the chunks a TP=T save would produce (split along the module's
  TP axis: column-parallel and vocab-parallel on dim 0, row-parallel on dim 1, norms
  replicated), so a TP=T run reads exactly its shard; any other TP reshards on load. Vocab rows
  are padded to a multiple of ``128 * T`` (Megatron-LM's rule); the padded size is recorded in
  ``model_config.json``. Loading at another TP whose padding differs still works: megatron-core
  marks embedding/output tensors ``allow_shape_mismatch`` (extra rows zero, missing ones
  dropped, real-vocab rows exact).
- Target PP: layers are stored with global layer numbers (stacked along a layer axis), so the
  checkpoint is pipeline-agnostic; P is validated against the layer count and recorded.
- Streaming load (export): one ``dist_checkpointing.load`` per megatron parameter (megatron-core's
  real load path) with that parameter's shards (e.g. gate and up halves of ``linear_fc1``) as
  views into one buffer, so memory is one parameter plus one stored shard.
- Verified against megatron-core itself (tests/checkpoint/test_convert_parity.py): a TP=2 x PP=2
  model loaded from our checkpoint and saved with ``dist_checkpointing.save`` produces exactly
  our keys, global shapes, shard layout and values.
- ``_extra_state`` (TE's FP8 state) is never written by the converter beyond what the local
  modules themselves return (``None``); loading drops the ones a checkpoint lacks
  (:mod:`.extra_state`), so converted checkpoints load into TE models.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from megatron_ar.checkpoint.errors import CheckpointError, ConfigMismatchError
from megatron_ar.checkpoint.extra_state import drop_unsaved_extra_state, load_module_state
from megatron_ar.models.config import ModelConfig, padded_vocab_size
from megatron_ar.models.tp import tp_split_axes

CONFIG_NAME = "model_config.json"
FORMAT = "megatron_ar.dist_checkpoint"
FORMAT_VERSION = 1
VOCAB_DIVISIBLE_BY = 128
#: Keys a *training* checkpoint may hold beside the model; ignored on export, never an error.
NON_MODEL_PREFIXES = ("optimizer", "rng_state", "rerun_state_machine", "opt_param_scheduler",
                      "content_metadata", "args", "iteration", "checkpoint_version")
#: ModelConfig fields that describe the run, not the weights: not compared on load.
_NON_ARCH_FIELDS = ("name", "seq_length", "hf_extra", "init_method_std", "init")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    for k, v in _DTYPES.items():
        if v == dtype:
            return k
    raise CheckpointError(f"unsupported parameter dtype {dtype} (supported: {sorted(_DTYPES)})")


# --------------------------------------------------------------------------- model_config.json
@dataclass
class CheckpointInfo:
    """What ``model_config.json`` records beside the dist checkpoint."""

    model_config: ModelConfig
    padded_vocab_size: int
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    dtype: str = "float32"
    make_vocab_size_divisible_by: int = VOCAB_DIVISIBLE_BY
    sharded_state_dict_metadata: Dict[str, Any] = field(default_factory=dict)
    source: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model_config"] = self.model_config.to_dict()
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **d}


def write_checkpoint_info(directory: str, info: CheckpointInfo) -> None:
    with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(info.to_json(), f, indent=2, sort_keys=True)


def read_checkpoint_info(directory: str) -> CheckpointInfo:
    """Read ``model_config.json`` of a converted checkpoint; errors name the file and field."""
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} not found: {directory!r} is not a megatron_ar checkpoint "
                              f"(convert one with tools/checkpoint/convert.py)")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except ValueError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc
    if raw.get("format") != FORMAT or raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format {raw.get('format')!r} version "
                              f"{raw.get('format_version')!r}, expected {FORMAT!r} {FORMAT_VERSION}")
    known = {f.name for f in dataclasses.fields(CheckpointInfo)}
    body = {k: v for k, v in raw.items() if k not in ("format", "format_version")}
    unknown = sorted(set(body) - known)
    if unknown:
        raise CheckpointError(f"{path}: unknown field(s) {unknown}")
    try:
        body["model_config"] = ModelConfig.from_dict(body["model_config"])
        info = CheckpointInfo(**body)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    if info.dtype not in _DTYPES:
        raise CheckpointError(f"{path}: dtype {info.dtype!r} not in {sorted(_DTYPES)}")
    return info


def check_config_compatible(expected: ModelConfig, saved: ModelConfig, where: str) -> None:
    """Raise :class:`ConfigMismatchError` naming every architecture field that differs."""
    diffs = []
    for f in dataclasses.fields(ModelConfig):
        if f.name in _NON_ARCH_FIELDS:
            continue
        a, b = getattr(expected, f.name), getattr(saved, f.name)
        if a != b:
            diffs.append(f"ModelConfig.{f.name}: model has {a!r}, checkpoint has {b!r}")
    if diffs:
        raise ConfigMismatchError(f"{where}: config mismatch:\n  " + "\n  ".join(diffs))


# ------------------------------------------------------------------------- process group helper
@contextlib.contextmanager
def single_process_group():
    """A 1-process gloo group + megatron parallel state (TP=PP=1) for the duration, unless one
    is already set up (then it must be TP=PP=1 and is left as is)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_ar.runtime import destroy_distributed, find_free_port, init_distributed

    if dist.is_initialized() and dist.get_world_size() != 1:
        raise RuntimeError("checkpoint conversion runs in one process; found an initialised "
                           f"process group of world size {dist.get_world_size()}")
    if dist.is_initialized() and parallel_state.model_parallel_is_initialized():
        tp = parallel_state.get_tensor_model_parallel_world_size()
        pp = parallel_state.get_pipeline_model_parallel_world_size()
        if tp != 1 or pp != 1:
            raise RuntimeError(f"checkpoint conversion needs TP=PP=1, found tp={tp}, pp={pp}")
        yield
        return
    from megatron_ar.runtime import cpu_emulation_installed, uninstall_cpu_emulation

    owned = not dist.is_initialized()
    had_emulation = cpu_emulation_installed()
    init_distributed(tp=1, pp=1, backend="gloo", rank=0, world_size=1,
                     master_addr="127.0.0.1", master_port=find_free_port())
    try:
        yield
    finally:
        if owned:
            destroy_distributed()
        else:
            parallel_state.destroy_model_parallel()
        if not had_emulation and cpu_emulation_installed():
            # Leave the caller's process as we found it (e.g. a pytest session).
            uninstall_cpu_emulation()


# ------------------------------------------------------------------------------- meta layout
def build_meta_model(cfg: ModelConfig, padded_vocab: int, dtype: torch.dtype):
    """The megatron_ar model for ``cfg`` on the meta device (local spec, TP=PP=1) with exactly
    ``padded_vocab`` vocab rows. Needs :func:`single_process_group`."""
    from megatron_ar.models.builder import build_model

    if padded_vocab % VOCAB_DIVISIBLE_BY:
        raise CheckpointError(f"padded vocab {padded_vocab} is not a multiple of "
                              f"{VOCAB_DIVISIBLE_BY}")
    # padded_vocab_size(tp=1) of a multiple of 128 is itself: the model gets exactly these rows.
    with torch.device("meta"):
        (model,) = build_model(cfg.replace(vocab_size=padded_vocab), params_dtype=dtype,
                               use_te=False, perform_initialization=False,
                               use_cpu_initialization=True)
    return model


@dataclass
class Piece:
    """One ShardedTensor of a parameter in the TP=1 sharded state dict (e.g. the gate half of
    ``linear_fc1``), with where its data lies inside the parameter."""

    param: str
    sh_ten: Any  # megatron ShardedTensor (meta data)
    size: Tuple[int, ...]
    stride: Tuple[int, ...]
    offset: int


@dataclass
class MegatronLayout:
    """Everything the converters need to know about the dist checkpoint of ``cfg``."""

    cfg: ModelConfig
    padded_vocab: int
    dtype: torch.dtype
    params: Dict[str, Tuple[Tuple[int, ...], torch.dtype]]  # name -> (shape, dtype)
    tp_axis: Dict[str, Optional[int]]  # name -> TP split dim (None: replicated)
    pieces: Dict[str, List[Piece]]
    objects: Dict[str, Any]  # non-tensor ShardedObjects (e.g. ``_extra_state``), by name

    def expected_keys(self) -> Dict[str, Tuple[int, ...]]:
        """dist-checkpoint key -> global shape."""
        out = {}
        for pieces in self.pieces.values():
            for p in pieces:
                out[p.sh_ten.key] = tuple(p.sh_ten.global_shape)
        return out


def make_layout(cfg: ModelConfig, padded_vocab: int, dtype: torch.dtype) -> MegatronLayout:
    """Build the meta model and read its sharded state dict (needs a process group)."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor
    from megatron.core.dist_checkpointing.state_dict_utils import save_preprocess

    model = build_meta_model(cfg, padded_vocab, dtype)
    params = {n: (tuple(p.shape), p.dtype) for n, p in model.named_parameters()}
    sharded, common = save_preprocess(model.sharded_state_dict(), validate_access_integrity=False)
    if common:
        raise CheckpointError(f"unexpected non-sharded model state {sorted(common)[:5]}")
    pieces: Dict[str, List[Piece]] = {}
    objects: Dict[str, Any] = {}
    for name, value in sharded.items():
        items = value if isinstance(value, list) else [value]
        if all(isinstance(x, ShardedObject) for x in items):
            objects[name] = value
            continue
        if name not in params:
            raise CheckpointError(f"sharded state dict entry {name!r} is not a model parameter")
        for sh in items:
            if not isinstance(sh, ShardedTensor):
                raise CheckpointError(f"{name}: unsupported sharded entry {type(sh).__name__}")
            d = sh.data
            pieces.setdefault(name, []).append(Piece(name, sh, tuple(d.shape), tuple(d.stride()),
                                                     d.storage_offset()))
    missing = sorted(set(params) - set(pieces))
    if missing:
        raise CheckpointError(f"model parameters absent from sharded_state_dict: {missing[:5]}")
    return MegatronLayout(cfg, padded_vocab, dtype, params, tp_split_axes(model), pieces, objects)


def _view(t: torch.Tensor, piece: Piece) -> torch.Tensor:
    return t.as_strided(piece.size, piece.stride, piece.offset)


def _split_for_tp(piece: Piece, axis: Optional[int], tp: int) -> List[Tuple[Any, Piece]]:
    """The piece as the ``tp`` shards a TP=tp run would save (new ShardedTensors, meta data)."""
    sh = piece.sh_ten
    if axis is None or tp == 1:
        return [(dataclasses.replace(sh, data=sh.data), piece)]
    length = piece.size[axis]
    if length % tp:
        raise CheckpointError(f"{piece.param}: dim {axis} of size {length} is not divisible by "
                              f"target tensor-parallel size {tp}")
    step = length // tp
    gaxis = sh.prepend_axis_num + axis
    out = []
    for r in range(tp):
        data = sh.data.narrow(axis, r * step, step)
        offset = list(sh.global_offset)
        offset[gaxis] += r * step
        frag = list(sh.axis_fragmentations)
        frag[gaxis] *= tp
        local = list(sh.local_shape)
        local[axis] = step
        new = dataclasses.replace(sh, data=data, local_shape=tuple(local),
                                  global_offset=tuple(offset), axis_fragmentations=tuple(frag))
        out.append((new, Piece(piece.param, new, tuple(data.shape), tuple(data.stride()),
                               data.storage_offset())))
    return out


# --------------------------------------------------------------------------------- saving
def _streaming_writer(directory: str):
    """torch's ``FileSystemWriter`` with a strictly one-item-at-a-time write loop.

    Why: torch's loop (``_write_files_from_queue``) keeps the last tensor written under every
    key in a dict for its safetensors mode; a kept shard view pins the whole parameter it came
    from (measured: +~250 MB per large key on a 1B model). This loop resolves an item, writes it
    with torch's own ``_write_item`` (same bytes and metadata, as megatron-core's
    ``FileSystemWriterAsync`` does) and drops it before the next. One file per rank.
    """
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.filesystem import DEFAULT_SUFFIX, _write_item
    from torch.distributed.checkpoint.planner import WriteItemType
    from torch.futures import Future

    class _Writer(FileSystemWriter):
        def write_data(self, plan, planner):
            file_name = f"{plan.storage_data.prefix}0{DEFAULT_SUFFIX}"
            results = []
            with self.fs.create_stream(self.fs.concat_path(self.path, file_name), "wb") as stream:
                for item in plan.items:
                    data = planner.resolve_data(item)
                    if item.type != WriteItemType.BYTE_IO:
                        data = data.detach()
                        if data.untyped_storage().nbytes() != data.nbytes:
                            data = data.clone()  # torch.save would write the whole storage
                    results.append(_write_item(self.transforms, stream, data, item, file_name,
                                               self.serialization_format))
                    del data
                if self.sync_files:
                    os.fsync(stream.fileno())
            fut = Future()
            fut.set_result(results)
            return fut

    return _Writer(directory, single_file_per_rank=True, thread_count=1)


def save_streaming(layout: MegatronLayout, directory: str,
                   source: Callable[[str], torch.Tensor], target_tp: int = 1,
                   progress: Optional[Callable[[str], None]] = None) -> int:
    """Write the dist checkpoint of ``layout`` into ``directory`` (must exist, empty), pulling
    each parameter from ``source(name)`` (full TP=1 tensor) when its first shard is written.
    Returns the number of tensor items written."""
    import torch.distributed.checkpoint as dcp
    from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config
    from megatron.core.dist_checkpointing.strategies.torch import MCoreSavePlanner, mcore_to_pyt_state_dict

    from megatron_ar.compat.dist_checkpointing import (
        replace_state_dict_keys_with_sharded_keys,
        save_common_state,
    )
    from torch.distributed.checkpoint.planner import WriteItemType

    registry: Dict[Tuple[str, Tuple[int, ...]], Piece] = {}
    state: Dict[str, Any] = {}
    for name, pieces in layout.pieces.items():
        axis = layout.tp_axis.get(name)
        shards = []
        for piece in pieces:
            for sh, sub in _split_for_tp(piece, axis, target_tp):
                registry[(sh.key, tuple(sh.global_offset))] = sub
                shards.append(sh)
        state[name] = shards
    for name, obj in layout.objects.items():
        state[name] = obj
    flat, _, _ = replace_state_dict_keys_with_sharded_keys(state, keep_only_main_replica=True)
    pyt_state = mcore_to_pyt_state_dict(flat, is_loading=False)

    class _LazyPlanner(MCoreSavePlanner):
        """Resolves tensor items from ``source`` at write time, one parameter cached."""

        cached: Tuple[Optional[str], Optional[torch.Tensor]] = (None, None)
        written = 0

        def resolve_data(self, write_item):
            if write_item.type == WriteItemType.BYTE_IO:
                return super().resolve_data(write_item)
            fqn, offset = write_item.index.fqn, tuple(write_item.index.offset)
            piece = registry[(fqn, offset)]
            name = piece.param
            if self.cached[0] != name:
                self.cached = (None, None)  # drop the previous parameter before making the next
                tensor = source(name)
                shape, dtype = layout.params[name]
                if tuple(tensor.shape) != shape or tensor.dtype != dtype:
                    raise CheckpointError(f"{name}: source tensor is {tuple(tensor.shape)} "
                                          f"{tensor.dtype}, the model expects {shape} {dtype}")
                self.cached = (name, tensor.contiguous())
                if progress is not None:
                    progress(name)
            chunk = _view(self.cached[1], piece)
            self.written += 1
            # No copy here: the writer clones a view whose storage is larger than itself, and a
            # whole-parameter shard (norms, TP=1) is written straight from the cache.
            return chunk.reshape(tuple(write_item.tensor_data.chunk.sizes))

    planner = _LazyPlanner(dedup_replicated_tensors=False, flatten_state_dict=False)
    save_common_state({}, directory)
    dcp.save(pyt_state, storage_writer=_streaming_writer(directory), planner=planner)
    planner.cached = (None, None)
    save_config(CheckpointingConfig("torch_dist", 1), directory)
    return planner.written


# --------------------------------------------------------------------------------- loading
def checkpoint_tensor_shapes(directory: str) -> Dict[str, Tuple[int, ...]]:
    """dist-checkpoint key -> global shape, from the checkpoint's metadata only."""
    from megatron.core import dist_checkpointing

    if not os.path.isfile(os.path.join(directory, "metadata.json")):
        raise CheckpointError(f"{directory}: no metadata.json, not a megatron-core dist checkpoint")
    meta = dist_checkpointing.load_tensors_metadata(directory)
    return {k: tuple(v.global_shape) for k, v in meta.items()}


def check_storage_complete(directory: str) -> None:
    """Every storage file the checkpoint's ``.metadata`` points into exists and is long enough
    (a copy cut short, a file lost): refused naming the file, before any tensor is read
    (torch.distributed.checkpoint would fail mid-load with a bare ``EOFError``)."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        meta = FileSystemReader(directory).read_metadata()
    except Exception as exc:  # missing or damaged .metadata
        raise CheckpointError(f"{directory}/.metadata: cannot be read ({type(exc).__name__}: "
                              f"{exc})") from None
    need: Dict[str, int] = {}
    for info in (meta.storage_data or {}).values():
        end = int(info.offset) + int(info.length)
        need[info.relative_path] = max(need.get(info.relative_path, 0), end)
    for rel, end in sorted(need.items()):
        path = os.path.join(directory, rel)
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: missing (the checkpoint's .metadata refers to it)")
        size = os.path.getsize(path)
        if size < end:
            raise CheckpointError(f"{path}: {size:,} bytes but the checkpoint's .metadata needs "
                                  f"{end:,} (truncated)")


def validate_checkpoint_keys(layout: MegatronLayout, directory: str) -> None:
    """Every expected key present with its shape; no unknown model keys; storage complete."""
    check_storage_complete(directory)
    found = checkpoint_tensor_shapes(directory)
    expected = layout.expected_keys()
    missing = sorted(set(expected) - set(found))
    if missing:
        raise CheckpointError(f"{directory}: missing tensor(s) {missing[:8]} "
                              f"({len(missing)} in all)")
    for key, shape in expected.items():
        if found[key] != shape:
            raise CheckpointError(f"{directory}: tensor {key!r} has shape {found[key]}, the model "
                                  f"config implies {shape}")
    unknown = sorted(k for k in set(found) - set(expected) if not k.startswith(NON_MODEL_PREFIXES))
    if unknown:
        raise CheckpointError(f"{directory}: unused tensor(s) {unknown[:8]} not produced by the "
                              f"model config ({len(unknown)} in all)")


def load_param(layout: MegatronLayout, directory: str, name: str) -> torch.Tensor:
    """One megatron parameter (full, TP=1 layout) read with ``dist_checkpointing.load``."""
    from megatron.core import dist_checkpointing

    shape, dtype = layout.params[name]
    buf = torch.empty(shape, dtype=dtype)
    shards = []
    for p in layout.pieces[name]:
        sh, n = p.sh_ten, p.sh_ten.prepend_axis_num
        # A layer-stacked tensor read without its sibling layers: express the layer axis as a
        # size-1 local axis (same global chunk) so megatron-core takes its DCP "checkpointable"
        # path; its legacy path assumes every grid cell of the stack is owned by some rank.
        shards.append(dataclasses.replace(
            sh, data=_view(buf, p).reshape((1,) * n + p.size), local_shape=(1,) * n + p.size,
            prepend_axis_num=0))
    loaded = dist_checkpointing.load({name: shards}, directory, validate_access_integrity=False)
    tensors = loaded[name] if isinstance(loaded[name], list) else [loaded[name]]
    for p, t in zip(layout.pieces[name], tensors):
        view = _view(buf, p)
        if t.data_ptr() != view.data_ptr():
            view.copy_(t.reshape(view.shape))
    return buf


def load_into_model(model_chunks: Sequence[torch.nn.Module], directory: str,
                    model_config: Optional[ModelConfig] = None) -> CheckpointInfo:
    """Load a converted checkpoint as the weights of ``model_chunks`` (what
    ``megatron_ar.models.builder.build_model`` returned on this rank; DDP/Float16 wrappers are
    unwrapped) at any TP/PP/VPP. Collective: every rank of the job calls it.

    ``model_config``, if given, is compared field by field with the checkpoint's config
    (:class:`ConfigMismatchError` names the differing fields). Missing or mis-shaped tensors
    raise :class:`CheckpointError` naming the key. Returns the checkpoint's
    :class:`CheckpointInfo`.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor
    from megatron.core.dist_checkpointing.dict_utils import nested_values

    from megatron_ar.models.builder import unwrap

    info = read_checkpoint_info(directory)
    if model_config is not None:
        check_config_compatible(model_config, info.model_config, directory)
    check_storage_complete(directory)
    models = unwrap(model_chunks)
    sharded = {f"chunk{i}": m.sharded_state_dict() for i, m in enumerate(models)}
    found = checkpoint_tensor_shapes(directory)
    for sh in nested_values(sharded):
        if not isinstance(sh, ShardedTensor):
            continue
        if sh.key not in found:
            raise CheckpointError(f"{directory}: tensor {sh.key!r} needed by the model is missing")
        if not sh.allow_shape_mismatch and tuple(sh.global_shape) != found[sh.key]:
            raise CheckpointError(f"{directory}: tensor {sh.key!r} has shape {found[sh.key]}, the "
                                  f"model expects {tuple(sh.global_shape)}")
        if sh.allow_shape_mismatch and tuple(sh.global_shape[1:]) != found[sh.key][1:]:
            raise CheckpointError(f"{directory}: tensor {sh.key!r} has shape {found[sh.key]}, the "
                                  f"model expects (*, {tuple(sh.global_shape[1:])})")
    # TE modules ask for ``_extra_state`` a converted (local-layout) checkpoint does not hold.
    drop_unsaved_extra_state(sharded, directory)
    loaded = dist_checkpointing.load(sharded, directory)
    for i, m in enumerate(models):
        load_module_state(m, loaded[f"chunk{i}"], where=f"{directory} (model chunk {i})")
    return info


def layout_from_info(info: CheckpointInfo) -> MegatronLayout:
    return make_layout(info.model_config, info.padded_vocab_size, _DTYPES[info.dtype])


def target_padded_vocab(cfg: ModelConfig, tp: int) -> int:
    return padded_vocab_size(cfg.vocab_size, tp, VOCAB_DIVISIBLE_BY)


def dist_checkpoint_bytes(directory: str) -> int:
    return sum(p.stat().st_size for p in Path(directory).glob("*.distcp"))

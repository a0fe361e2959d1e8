"""Streaming reader and writer of safetensors checkpoints (one file, or HF-style shards + index).

Design choices and trade-offs:

* **Reading**: ``safetensors.safe_open`` validates each file's header and gives shapes/dtypes
  (``get_slice``) without touching tensor data, so a whole checkpoint is validated before any
  work starts. Tensor bytes are then read one tensor (or one row range) at a time with plain
  ``readinto`` into the destination buffer at the header's ``data_offsets``: safetensors' own
  read path copies out of a memory map, which makes a tensor resident twice for a moment, and a
  mapping kept open accumulates every page read so far (measured: RSS grew to the checkpoint
  size). Memory stays at one tensor, or one row range for vocabulary-sized tensors.
* **Writing**: ``safetensors`` has no incremental writer (``save_file`` takes every tensor of a
  file at once: gigabytes per shard for a 9B model), so :class:`SafetensorsFileWriter` writes
  the documented layout itself: 8-byte little-endian header length, the JSON header
  (``dtype``/``shape``/``data_offsets`` of every tensor, compact separators, padded with spaces
  to 8 bytes as the reference serializer does), then the raw bytes in header order. All shapes
  are known before streaming starts, so the header goes first and tensors (or row chunks of a
  tensor) are streamed after it; peak memory is what the caller holds. The files are read back
  by ``safe_open`` / ``transformers.from_pretrained`` in the tests (the oracle for the format).
* **Sharding and index** follow ``transformers``: ``model-00001-of-00003.safetensors`` and
  ``model.safetensors.index.json`` = ``{"metadata": {"total_size"}, "weight_map"}``; a
  checkpoint that fits in one shard is a single ``model.safetensors``. A fresh index is written
  with sorted keys (as ``transformers`` does); an index derived from a source index keeps the
  source's key order and extra fields.
* Only safetensors is read: ``pytorch_model.bin`` (pickle) is refused with a clear error, as
  loading it needs the whole state dict in memory and executes pickle code.
* Errors are raised as ``error(message)`` with the class chosen by the caller (the checkpoint
  converter and the vocabulary pruner each have their own error type); every message names the
  file and tensor.
* ``torch`` is imported only where torch tensors are produced or consumed; byte-level work
  (e.g. gathering vocabulary rows) needs only numpy and works for dtypes numpy lacks (bf16, fp8).
"""
from __future__ import annotations

import json
import os
import struct
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type

import numpy as np

__all__ = [
    "INDEX_NAME",
    "SINGLE_NAME",
    "DTYPE_BYTES",
    "SafetensorsError",
    "dtype_name",
    "torch_dtype",
    "SafetensorsReader",
    "SafetensorsFileWriter",
    "ShardedSafetensorsWriter",
    "write_index",
]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
#: Bytes per element of each safetensors dtype name.
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1,
}
_TORCH_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


class SafetensorsError(ValueError):
    """A safetensors file or index that is missing, malformed or used inconsistently."""


def torch_dtype(name: str, error: Type[Exception] = SafetensorsError):
    """The torch dtype of a safetensors dtype name."""
    import torch

    if name not in _TORCH_NAMES:
        raise error(f"unsupported safetensors dtype {name!r}")
    return getattr(torch, _TORCH_NAMES[name])


def dtype_name(dtype: Any, error: Type[Exception] = SafetensorsError) -> str:
    """The safetensors dtype name of a torch dtype (a name is checked and returned as is)."""
    if isinstance(dtype, str):
        if dtype not in DTYPE_BYTES:
            raise error(f"unsupported safetensors dtype {dtype!r}")
        return dtype
    for k, v in _TORCH_NAMES.items():
        if str(dtype) == f"torch.{v}":
            return k
    raise error(f"dtype {dtype} has no safetensors name")


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _as_bytes(data: Any) -> np.ndarray:
    """A flat uint8 view of a torch tensor, numpy array or bytes-like object (no copy when
    already contiguous)."""
    if hasattr(data, "detach") and hasattr(data, "untyped_storage"):  # a torch tensor
        import torch

        return data.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)


def _read_header(path: str) -> Tuple[int, dict]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return 8 + n, json.loads(f.read(n))


class SafetensorsReader:
    """Tensor-by-tensor reader of a checkpoint directory holding ``model.safetensors`` or
    ``model.safetensors.index.json`` + shards (see the module docstring)."""

    def __init__(self, directory: str, *, error: Type[Exception] = SafetensorsError):
        from safetensors import safe_open

        self.directory = directory
        self._error = error
        if not os.path.isdir(directory):
            raise error(f"checkpoint directory {directory!r} does not exist")
        index_path = os.path.join(directory, INDEX_NAME)
        single = os.path.join(directory, SINGLE_NAME)
        self.index: Optional[dict] = None
        if os.path.isfile(index_path):
            try:
                with open(index_path, encoding="utf-8") as f:
                    self.index = json.load(f)
                weight_map = dict(self.index["weight_map"])
            except (ValueError, KeyError, TypeError) as exc:
                raise error(f"{index_path}: not a safetensors index ({exc})") from None
            for name, fname in weight_map.items():
                if not os.path.isfile(os.path.join(directory, fname)):
                    raise error(f"{index_path}: tensor {name!r} is in {fname!r}, which does "
                                f"not exist in {directory}")
        elif os.path.isfile(single):
            try:
                header = _read_header(single)[1]
            except (struct.error, ValueError, OSError) as exc:
                raise error(f"{single}: cannot open as safetensors ({exc})") from None
            weight_map = {k: SINGLE_NAME for k in sorted(header) if k != "__metadata__"}
        else:
            found = sorted(os.listdir(directory))
            hint = (" (pytorch_model.bin is not supported: convert it to safetensors first)"
                    if any(n.endswith(".bin") for n in found) else "")
            raise error(f"{directory}: no {SINGLE_NAME} or {INDEX_NAME}{hint}; found {found[:20]}")
        self._weight_map: Dict[str, str] = weight_map
        self.files: List[str] = sorted(set(weight_map.values()))
        self._info: Dict[str, Tuple[str, Tuple[int, ...]]] = {}  # name -> (dtype name, shape)
        self._offsets: Dict[str, Tuple[int, int]] = {}  # absolute [begin, end) in the file
        self._by_file: Dict[str, List[str]] = {}
        self._metadata: Dict[str, Optional[dict]] = {}
        for fname in self.files:
            path = os.path.join(directory, fname)
            try:
                handle = safe_open(path, framework="np")  # validates the whole header
            except Exception as exc:  # safetensors raises its own error types
                raise error(f"{path}: cannot open as safetensors ({exc})") from exc
            with handle:
                in_file = list(handle.keys())
                listed = {k for k, v in weight_map.items() if v == fname}
                for name in sorted(listed - set(in_file)):
                    raise error(f"{path}: tensor {name!r} listed in the index is not in the file")
                for name in in_file:
                    if name not in listed:
                        continue
                    sl = handle.get_slice(name)
                    self._info[name] = (sl.get_dtype(), tuple(sl.get_shape()))
                self._metadata[fname] = handle.metadata()
            self._by_file[fname] = [n for n in in_file if n in listed]
            start, header = _read_header(path)
            for name in self._by_file[fname]:
                begin, end = header[name]["data_offsets"]
                self._offsets[name] = (start + begin, start + end)

    # ------------------------------------------------------------------ what is there
    def keys(self) -> List[str]:
        return list(self._weight_map)

    def file_of(self, name: str) -> str:
        return self._weight_map[name]

    def file_tensors(self, fname: str) -> List[str]:
        """Tensor names of one file, in ``safe_open(...).keys()`` order."""
        return list(self._by_file[fname])

    def file_metadata(self, fname: str) -> Optional[dict]:
        """The ``__metadata__`` of one file (None if it has none)."""
        return self._metadata[fname]

    def _require(self, name: str) -> None:
        if name not in self._weight_map:
            raise self._error(f"{self.directory}: tensor {name!r} is missing from the checkpoint")

    def shape(self, name: str) -> Tuple[int, ...]:
        self._require(name)
        return self._info[name][1]

    def dtype_name(self, name: str) -> str:
        self._require(name)
        return self._info[name][0]

    def dtype(self, name: str):
        """The torch dtype of tensor ``name``."""
        return torch_dtype(self.dtype_name(name), self._error)

    def nbytes(self) -> int:
        return sum(_numel(s) * DTYPE_BYTES[d] for d, s in self._info.values())

    # ------------------------------------------------------------------ reading
    def _read_into(self, name: str, buf: np.ndarray, skip: int = 0) -> None:
        begin, end = self._offsets[name]
        if skip + buf.nbytes > end - begin:
            raise self._error(f"{self.file_of(name)}: tensor {name!r} spans {end - begin} bytes, "
                              f"{skip + buf.nbytes} requested")
        path = os.path.join(self.directory, self._weight_map[name])
        with open(path, "rb", buffering=0) as f:
            f.seek(begin + skip)
            got = f.readinto(memoryview(buf)) if buf.nbytes else 0
        if got != buf.nbytes:
            raise self._error(f"{path}: truncated, tensor {name!r} needs bytes "
                              f"[{begin + skip}, {begin + skip + buf.nbytes}) but the file ends "
                              f"early")

    def get(self, name: str):
        """Tensor ``name`` as a torch tensor, read with plain file I/O into its own buffer."""
        import torch

        self._require(name)
        dname, shape = self._info[name]
        out = torch.empty(shape, dtype=torch_dtype(dname, self._error))
        view = out.reshape(-1).view(torch.uint8).numpy()
        begin, end = self._offsets[name]
        if view.nbytes != end - begin:
            raise self._error(f"{self.file_of(name)}: tensor {name!r} spans {end - begin} bytes, "
                              f"{shape} {dname} needs {view.nbytes}")
        self._read_into(name, view)
        return out

    def read_bytes(self, name: str, rows: Optional[Tuple[int, int]] = None) -> np.ndarray:
        """Raw bytes of tensor ``name`` as uint8 ``[rows, bytes per row]`` (a 0-d tensor is one
        row); ``rows=(start, stop)`` reads only those rows of the first dimension."""
        self._require(name)
        dname, shape = self._info[name]
        n_rows = shape[0] if shape else 1
        row_bytes = _numel(shape[1:]) * DTYPE_BYTES[dname] if shape else DTYPE_BYTES[dname]
        start, stop = (0, n_rows) if rows is None else rows
        if not 0 <= start <= stop <= n_rows:
            raise self._error(f"{self.file_of(name)}: rows [{start}, {stop}) of tensor {name!r} "
                              f"with {n_rows} rows")
        buf = np.empty((stop - start, row_bytes), dtype=np.uint8)
        self._read_into(name, buf, skip=start * row_bytes)
        return buf

    def close(self) -> None:
        """Nothing stays open between reads; kept for the context-manager protocol."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SafetensorsFileWriter:
    """One ``.safetensors`` file whose header is known up front; tensor bytes streamed in.

    ``entries`` lists ``(name, dtype, shape)`` (dtype: safetensors name or torch dtype) in the
    order the tensors will be written. Write a tensor whole with :meth:`write_tensor`, or in
    pieces with :meth:`begin` / :meth:`write` / :meth:`end`; :meth:`close` checks that every
    entry was written completely.
    """

    def __init__(self, path: str, entries: Sequence[Tuple[str, Any, Sequence[int]]],
                 metadata: Optional[Mapping[str, Any]] = None, *,
                 error: Type[Exception] = SafetensorsError):
        if sys.byteorder != "little":  # safetensors is little-endian; raw bytes are written
            raise RuntimeError("SafetensorsFileWriter needs a little-endian machine")
        self.path = path
        self._error = error
        header: Dict[str, Any] = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        offset = 0
        self.total_numel = 0
        self._plan: List[Tuple[str, str, Tuple[int, ...], int]] = []
        for name, dtype, shape in entries:
            if name in header:
                raise error(f"{path}: tensor {name!r} appears twice")
            dname = dtype_name(dtype, error)
            shape = tuple(int(s) for s in shape)
            nbytes = _numel(shape) * DTYPE_BYTES[dname]
            self.total_numel += _numel(shape)
            header[name] = {"dtype": dname, "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            self._plan.append((name, dname, shape, nbytes))
            offset += nbytes
        self.total_bytes = offset
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
        self._f = open(path, "wb")
        self._f.write(struct.pack("<Q", len(raw)))
        self._f.write(raw)
        self._next = 0
        self._cur: Optional[int] = None
        self._written = 0

    def begin(self, name: str) -> None:
        if self._cur is not None:
            raise self._error(f"{self.path}: tensor {self._plan[self._cur][0]!r} not ended")
        if self._next >= len(self._plan):
            raise self._error(f"{self.path}: unexpected extra tensor {name!r}")
        if self._plan[self._next][0] != name:
            raise self._error(f"{self.path}: expected tensor {self._plan[self._next][0]!r} next, "
                              f"got {name!r}")
        self._cur, self._written = self._next, 0

    def write(self, data: Any) -> None:
        """Append bytes (torch tensor, numpy array or bytes-like) to the current tensor."""
        buf = _as_bytes(data)
        if self._cur is None:
            raise self._error(f"{self.path}: write() outside begin()/end()")
        if self._written + buf.nbytes > self._plan[self._cur][3]:
            raise self._error(f"{self.path}: tensor {self._plan[self._cur][0]!r} gets more than "
                              f"its {self._plan[self._cur][3]} bytes")
        self._f.write(memoryview(buf))
        self._written += buf.nbytes

    def end(self) -> None:
        name, _, _, nbytes = self._plan[self._cur]
        if self._written != nbytes:
            raise self._error(f"{self.path}: tensor {name!r} got {self._written} bytes, the header "
                              f"says {nbytes}")
        self._cur = None
        self._next += 1

    def write_tensor(self, name: str, tensor: Any) -> None:
        """Write a whole torch tensor, checking its shape and dtype against the entry."""
        if self._next < len(self._plan) and self._plan[self._next][0] == name:
            _, dname, shape, _ = self._plan[self._next]
            got = (tuple(tensor.shape), dtype_name(tensor.dtype, self._error))
            if got != (shape, dname):
                raise self._error(f"{self.path}: tensor {name!r} is {got[0]} {got[1]}, planned "
                                  f"{shape} {dname}")
        self.begin(name)
        self.write(tensor)
        self.end()

    @property
    def complete(self) -> bool:
        return self._next == len(self._plan)

    def close(self) -> None:
        if not self.complete:
            missing = [p[0] for p in self._plan[self._next:]][:5]
            self.abort()
            raise self._error(f"{self.path}: {len(self._plan) - self._next} planned tensors were "
                              f"not written (first: {missing})")
        self._f.close()

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()


class ShardedSafetensorsWriter:
    """Writes planned tensors into HF-style shards one tensor at a time.

    ``plan`` lists ``(name, shape, dtype)`` in the order tensors will be passed to
    :meth:`write`; shards are cut before a tensor that would push a shard past
    ``max_shard_bytes``. :meth:`finish` closes the last shard and writes the index when there is
    more than one shard.
    """

    def __init__(self, directory: str, plan: Sequence[Tuple[str, Sequence[int], Any]],
                 max_shard_bytes: int = 5 * 1024 ** 3, metadata: Optional[Mapping[str, str]] = None,
                 *, error: Type[Exception] = SafetensorsError):
        self.directory = directory
        self.metadata = {"format": "pt", **(metadata or {})}
        self._error = error
        names = [p[0] for p in plan]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise error(f"duplicate tensor names in the export plan: {dup[:5]}")
        shards: List[List[Tuple[str, str, Tuple[int, ...]]]] = [[]]
        size = 0
        for name, shape, dtype in plan:
            dname = dtype_name(dtype, error)
            nb = _numel(shape) * DTYPE_BYTES[dname]
            if shards[-1] and size + nb > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append((name, dname, tuple(int(s) for s in shape)))
            size += nb
        n = len(shards)
        self.files = [SINGLE_NAME] if n == 1 else [
            f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self._shards = shards
        self._order = [(si, name) for si, shard in enumerate(shards) for name, _, _ in shard]
        self._pos = 0
        self._writer: Optional[SafetensorsFileWriter] = None
        self._open_shard = -1
        self.total_size = sum(_numel(s) * DTYPE_BYTES[d] for sh in shards for _, d, s in sh)

    def write(self, name: str, tensor: Any) -> None:
        if self._pos >= len(self._order):
            raise self._error(f"export: unexpected extra tensor {name!r}")
        si, want = self._order[self._pos]
        if name != want:
            raise self._error(f"export: expected tensor {want!r} next, got {name!r}")
        if si != self._open_shard:
            if self._writer is not None:
                self._writer.close()
            self._writer = SafetensorsFileWriter(
                os.path.join(self.directory, self.files[si]), self._shards[si], self.metadata,
                error=self._error)
            self._open_shard = si
        self._writer.write_tensor(name, tensor)
        self._pos += 1

    def finish(self) -> List[str]:
        """Close the last shard, write the index (sharded case); returns the file names."""
        if self._pos != len(self._order):
            missing = [n for _, n in self._order[self._pos:]][:5]
            raise self._error(f"export: {len(self._order) - self._pos} planned tensors were not "
                              f"written (first: {missing})")
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if len(self.files) > 1:
            weight_map = {name: self.files[si] for si, name in self._order}
            write_index(self.directory, weight_map, self.total_size)
        return list(self.files)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


def write_index(directory: str, weight_map: Mapping[str, str], total_size: int, *,
                base: Optional[Mapping[str, Any]] = None,
                total_parameters: Optional[int] = None) -> str:
    """Write ``model.safetensors.index.json`` into ``directory``; returns its path.

    Without ``base`` the index is ``{"metadata": {"total_size"}, "weight_map"}`` with sorted keys
    (``transformers``' layout). With ``base`` (a source checkpoint's index) its fields and key
    order are kept and ``metadata.total_size`` / ``weight_map`` (and ``total_parameters`` if the
    source records it) are updated.
    """
    path = os.path.join(directory, INDEX_NAME)
    if base is None:
        obj: Dict[str, Any] = {"metadata": {"total_size": total_size},
                               "weight_map": dict(weight_map)}
        sort = True
    else:
        obj = dict(base)
        meta = dict(base.get("metadata") or {}, total_size=total_size)
        if "total_parameters" in meta and total_parameters is not None:
            meta["total_parameters"] = total_parameters  # written by newer transformers
        obj["metadata"] = meta
        obj["weight_map"] = dict(weight_map)
        sort = False
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=sort)
    return path

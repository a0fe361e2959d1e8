"""Streaming access to HF safetensors checkpoints (single file or sharded with an index json).

Design choices
- Reading: ``safetensors.safe_open`` validates each file's header and gives shapes/dtypes
  (``get_slice``) without touching tensor data, so a whole checkpoint is validated before any
  conversion work. Tensor bytes are then read one tensor at a time with plain ``readinto`` into
  the tensor's own buffer at the header's ``data_offsets``: safetensors' only read path copies
  out of a memory map, which makes every tensor resident twice for a moment (see
  :meth:`HFCheckpointReader.get`); memory stays at one tensor.
- Writing: ``safetensors.torch.save_file`` needs every tensor of a file in memory at once, which
  for a 9B model means gigabytes per shard. safetensors has no incremental writer, so
  :class:`StreamingSafetensorsWriter` writes the (tiny, documented) safetensors layout itself:
  8-byte little-endian header length, JSON header with ``dtype``/``shape``/``data_offsets`` of
  every tensor, then the raw bytes in header order. All shapes are known before conversion
  starts (from the meta model), so the header is written first and tensors are streamed after
  it; peak memory is one tensor. Files are read back by ``safe_open`` / ``from_pretrained`` in
  the tests (the oracle for the format).
- Sharding and ``model.safetensors.index.json`` follow ``transformers``' conventions
  (``model-00001-of-00003.safetensors``, ``{"metadata": {"total_size"}, "weight_map"}``); a
  checkpoint that fits in one shard is a single ``model.safetensors``.
- Only safetensors is read: ``pytorch_model.bin`` (pickle) is refused with a clear error, as
  loading it needs the whole state dict in memory and executes pickle code.
"""
from __future__ import annotations

import json
import os
import struct
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from safetensors import safe_open

from megatron_ar.checkpoint.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

_DTYPES: Dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


def dtype_from_safetensors(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise CheckpointError(f"unsupported safetensors dtype {name!r}") from None


class HFCheckpointReader:
    """Tensor-by-tensor reader of an HF checkpoint directory (see module docstring)."""

    def __init__(self, directory: str):
        self.directory = directory
        if not os.path.isdir(directory):
            raise CheckpointError(f"HF checkpoint directory {directory!r} does not exist")
        index = os.path.join(directory, INDEX_NAME)
        single = os.path.join(directory, SINGLE_NAME)
        self._weight_map: Dict[str, str] = {}
        if os.path.isfile(index):
            try:
                with open(index, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"{index}: not a safetensors index ({exc})") from exc
            for name, fname in weight_map.items():
                if not os.path.isfile(os.path.join(directory, fname)):
                    raise CheckpointError(f"{index}: tensor {name!r} is in {fname!r}, "
                                          f"which does not exist in {directory}")
            self._weight_map = dict(weight_map)
        elif os.path.isfile(single):
            with safe_open(single, framework="pt") as f:
                self._weight_map = {k: SINGLE_NAME for k in f.keys()}
        else:
            found = sorted(os.listdir(directory))
            hint = (" (pytorch_model.bin is not supported: convert it to safetensors first)"
                    if any(n.endswith(".bin") for n in found) else "")
            raise CheckpointError(f"{directory}: no {SINGLE_NAME} or {INDEX_NAME}{hint}; "
                                  f"found {found[:20]}")
        self._header: Dict[str, Tuple[Tuple[int, ...], torch.dtype]] = {}
        self._offsets: Dict[str, Tuple[int, int]] = {}  # absolute [begin, end) in the file
        for fname in sorted(set(self._weight_map.values())):
            path = os.path.join(directory, fname)
            try:
                handle = safe_open(path, framework="pt")  # validates the whole header
            except Exception as exc:  # safetensors raises its own error types
                raise CheckpointError(f"{path}: cannot open as safetensors ({exc})") from exc
            with handle:
                in_file = set(handle.keys())
                for name in (k for k, v in self._weight_map.items() if v == fname):
                    if name not in in_file:
                        raise CheckpointError(f"{path}: tensor {name!r} listed in the index is "
                                              f"not in the file")
                    sl = handle.get_slice(name)
                    self._header[name] = (tuple(sl.get_shape()),
                                          dtype_from_safetensors(sl.get_dtype()))
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            for name, entry in header.items():
                if name in self._header:
                    begin, end = entry["data_offsets"]
                    self._offsets[name] = (8 + n + begin, 8 + n + end)

    def keys(self) -> List[str]:
        return list(self._weight_map)

    def file_of(self, name: str) -> str:
        return self._weight_map[name]

    def shape(self, name: str) -> Tuple[int, ...]:
        self._require(name)
        return self._header[name][0]

    def dtype(self, name: str) -> torch.dtype:
        self._require(name)
        return self._header[name][1]

    def _require(self, name: str) -> None:
        if name not in self._weight_map:
            raise CheckpointError(f"{self.directory}: tensor {name!r} is missing from the HF "
                                  f"checkpoint")

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor with plain file I/O straight into its own buffer.

        Why not ``safe_open(...).get_tensor``: it copies out of a memory map, so for a moment
        the tensor is resident twice (mapped file pages count in RSS), and a mapping kept open
        accumulates every page read so far (measured: RSS grew to the checkpoint size). The
        header (offsets, shape, dtype) was validated by ``safe_open`` in ``__init__``.
        """
        self._require(name)
        shape, dtype = self._header[name]
        begin, end = self._offsets[name]
        out = torch.empty(shape, dtype=dtype)
        view = out.reshape(-1).view(torch.uint8).numpy()
        if view.nbytes != end - begin:
            raise CheckpointError(f"{self.file_of(name)}: tensor {name!r} spans {end - begin} "
                                  f"bytes, {shape} {dtype} needs {view.nbytes}")
        path = os.path.join(self.directory, self._weight_map[name])
        with open(path, "rb", buffering=0) as f:
            f.seek(begin)
            got = f.readinto(memoryview(view)) if view.nbytes else 0
        if got != view.nbytes:
            raise CheckpointError(f"{path}: truncated, tensor {name!r} needs bytes "
                                  f"[{begin}, {end}) but the file ends early")
        return out

    def nbytes(self) -> int:
        total = 0
        for shape, dtype in self._header.values():
            n = 1
            for s in shape:
                n *= s
            total += n * torch.empty((), dtype=dtype).element_size()
        return total

    def close(self) -> None:
        """Nothing stays open between reads; kept for the context-manager protocol."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * torch.empty((), dtype=dtype).element_size()


class StreamingSafetensorsWriter:
    """Writes planned tensors into safetensors shards one tensor at a time.

    ``plan`` lists ``(name, shape, dtype)`` in the order tensors will be passed to
    :meth:`write`; a tensor that deviates from its plan entry (name, shape, dtype) raises.
    """

    def __init__(self, directory: str, plan: Sequence[Tuple[str, Sequence[int], torch.dtype]],
                 max_shard_bytes: int = 5 * 1024 ** 3, metadata: Optional[Dict[str, str]] = None):
        if sys.byteorder != "little":  # safetensors is little-endian; we write raw bytes
            raise RuntimeError("StreamingSafetensorsWriter needs a little-endian machine")
        self.directory = directory
        self.metadata = {"format": "pt", **(metadata or {})}
        names = [p[0] for p in plan]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise CheckpointError(f"duplicate HF tensor names in the export plan: {dup[:5]}")
        shards: List[List[Tuple[str, Tuple[int, ...], torch.dtype]]] = [[]]
        size = 0
        for name, shape, dtype in plan:
            nb = _nbytes(shape, dtype)
            if shards[-1] and size + nb > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append((name, tuple(int(s) for s in shape), dtype))
            size += nb
        n = len(shards)
        self._files = [SINGLE_NAME] if n == 1 else [
            f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self._shards = shards
        self._order = [(si, entry) for si, shard in enumerate(shards) for entry in shard]
        self._pos = 0
        self._stream = None
        self._open_shard = -1
        self.total_size = sum(_nbytes(s, d) for _, s, d in plan)

    def _start_shard(self, si: int) -> None:
        if self._stream is not None:
            self._stream.close()
        header: Dict[str, object] = {"__metadata__": self.metadata}
        offset = 0
        for name, shape, dtype in self._shards[si]:
            nb = _nbytes(shape, dtype)
            header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + nb]}
            offset += nb
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
        self._stream = open(os.path.join(self.directory, self._files[si]), "wb")
        self._stream.write(struct.pack("<Q", len(raw)))
        self._stream.write(raw)
        self._open_shard = si

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._pos >= len(self._order):
            raise CheckpointError(f"export: unexpected extra tensor {name!r}")
        si, (want, shape, dtype) = self._order[self._pos]
        if name != want:
            raise CheckpointError(f"export: expected tensor {want!r} next, got {name!r}")
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise CheckpointError(f"export: tensor {name!r} is {tuple(tensor.shape)} "
                                  f"{tensor.dtype}, planned {shape} {dtype}")
        if si != self._open_shard:
            self._start_shard(si)
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        self._stream.write(memoryview(data))
        self._pos += 1

    def finish(self) -> List[str]:
        """Close the last shard, write the index (sharded case); returns the file names."""
        if self._pos != len(self._order):
            missing = [e[0] for _, e in self._order[self._pos:]][:5]
            raise CheckpointError(f"export: {len(self._order) - self._pos} planned tensors were "
                                  f"not written (first: {missing})")
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if len(self._files) > 1:
            weight_map = {name: self._files[si] for si, (name, _, _) in self._order}
            with open(os.path.join(self.directory, INDEX_NAME), "w", encoding="utf-8") as f:
                json.dump({"metadata": {"total_size": self.total_size}, "weight_map": weight_map},
                          f, indent=2, sort_keys=True)
        return list(self._files)

    def abort(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                   "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json",
                   "chat_template.jinja")


def copy_tokenizer_files(src: str, dst: str) -> List[str]:
    """Copy the tokenizer files HF's ``AutoTokenizer`` reads from ``src`` to ``dst``.

    Raises if ``src`` holds none of them (a wrong ``--tokenizer-dir`` must not pass silently).
    """
    import shutil

    if not os.path.isdir(src):
        raise CheckpointError(f"tokenizer directory {src!r} does not exist")
    copied = []
    for name in TOKENIZER_FILES:
        p = os.path.join(src, name)
        if os.path.isfile(p):
            os.makedirs(dst, exist_ok=True)
            shutil.copy2(p, os.path.join(dst, name))
            copied.append(name)
    if not copied:
        raise CheckpointError(f"tokenizer directory {src!r} has none of {list(TOKENIZER_FILES)}")
    return copied


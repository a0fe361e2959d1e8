"""JSONL records (Dolma / RedPajama-V2 layout) read line by line from plain, .gz or .zst files.

A record is one JSON object per line with at least ``text``; the conventional keys are ``id``,
``text``, ``metadata`` and ``quality_signals``.

Design choices and trade-offs:

* **Line-level strict UTF-8.** Files are read as bytes and each line is decoded on its own, so
  invalid UTF-8 is reported as ``file:line`` (a text-mode reader fails somewhere inside a
  buffered block with no line number). ``\\n`` alone ends a line (JSON text never holds a raw
  ``\\r``).
* **Errors are classified** into :data:`ERROR_KINDS` that ``--on-error skip`` counts and a
  summary shows, with the first few locations kept so the user can look. A truncated or
  corrupt compressed stream is the kind ``bad_compression`` at the line where it breaks (and
  the compressed byte offset); the rest of that file cannot be read, so reading stops there.
* **One validation for every JSONL reader**: :func:`iter_records` here, the tokenizer tools'
  text reader and the dataset builder all go through it, so they agree on what a malformed
  line is; a caller may add its own per-key rules on top.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Callable, Iterator, Optional, Sequence

from megatron_ar.io.compression import CompressedStreamError, open_binary

__all__ = [
    "ERROR_KINDS",
    "RecordError",
    "ErrorStats",
    "expand_inputs",
    "iter_lines",
    "iter_records",
    "dump_record",
]

ERROR_KINDS = ("invalid_utf8", "bad_json", "not_object", "missing_key", "bad_type",
               "bad_compression")
MAX_EXAMPLES = 5


class RecordError(ValueError):
    """A malformed input line. ``str(err)`` is ``"{path}:{line_no}: {kind}: {detail}"``."""

    def __init__(self, path: str, line_no: int, kind: str, detail: str):
        self.path, self.line_no, self.kind, self.detail = path, line_no, kind, detail
        super().__init__(f"{path}:{line_no}: {kind}: {detail}")

    def __reduce__(self):  # keeps the fields when raised inside a worker process
        return (type(self), (self.path, self.line_no, self.kind, self.detail))


@dataclasses.dataclass
class ErrorStats:
    """Counts of skipped lines by kind, plus the first few ``file:line: kind: detail`` strings."""

    counts: dict = dataclasses.field(default_factory=dict)
    examples: list = dataclasses.field(default_factory=list)
    max_examples: int = MAX_EXAMPLES

    def add(self, err: RecordError) -> None:
        self.counts[err.kind] = self.counts.get(err.kind, 0) + 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(err))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: "ErrorStats") -> "ErrorStats":
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        room = self.max_examples - len(self.examples)
        if room > 0:
            self.examples.extend(other.examples[:room])
        return self

    def as_dict(self) -> dict:
        return {"skipped": self.total, "counts": dict(sorted(self.counts.items())),
                "examples": list(self.examples)}

    @classmethod
    def from_dict(cls, d: dict) -> "ErrorStats":
        return cls(counts=dict(d.get("counts", {})), examples=list(d.get("examples", [])))


def expand_inputs(patterns: Sequence[str] | str) -> list[str]:
    """Expand glob patterns (``**`` allowed) into a sorted, de-duplicated list of files.

    Raises FileNotFoundError naming the first pattern that matched no file, so a typo never
    silently processes an empty corpus.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise FileNotFoundError("no --input given")
    out: set[str] = set()
    for pat in patterns:
        if glob.has_magic(pat):
            hits = [p for p in glob.glob(pat, recursive=True) if os.path.isfile(p)]
        else:
            hits = [pat] if os.path.isfile(pat) else []
        if not hits:
            raise FileNotFoundError(f"input pattern {pat!r} matched no file")
        out.update(os.path.normpath(p) for p in hits)
    return sorted(out)


def iter_lines(path: str, *, progress: Optional[Callable[[int, int], None]] = None,
               progress_every: int = 1 << 18) -> Iterator[tuple[int, bytes]]:
    """Stream ``(line_no, raw line bytes)`` (1-based, newline kept) of a plain/.gz/.zst file.

    A truncated or corrupt compressed stream raises :class:`RecordError` of kind
    ``bad_compression`` numbered as the line where it breaks. ``progress(delta_disk_bytes,
    delta_lines)`` is called about every ``progress_every`` compressed bytes and at the end.
    """
    line_no = 0
    with open_binary(path) as (stream, raw):
        last_pos, since = 0, 0
        it = iter(stream)
        while True:
            try:
                line = next(it)
            except StopIteration:
                break
            except CompressedStreamError as e:
                if progress is not None:
                    progress(max(0, os.fstat(raw.fileno()).st_size - last_pos), since)
                raise RecordError(path, line_no + 1, "bad_compression",
                                  f"{e.detail} (at compressed byte {e.offset})") from None
            line_no += 1
            since += 1
            if progress is not None:
                pos = raw.tell()
                if pos - last_pos >= progress_every:
                    progress(pos - last_pos, since)
                    last_pos, since = pos, 0
            yield line_no, line
        if progress is not None:
            end = os.fstat(raw.fileno()).st_size
            progress(max(0, end - last_pos), since)


def _parse(path: str, line_no: int, bline: bytes, required: Sequence[str],
           text_key: str) -> Optional[dict]:
    """The record on one line, None for a blank line; raises :class:`RecordError`."""
    try:
        line = bline.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(path, line_no, "invalid_utf8",
                          f"invalid UTF-8 at byte {e.start} of the line") from None
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise RecordError(path, line_no, "bad_json",
                          f"invalid JSON ({e.msg}, column {e.colno})") from None
    if ("\\ud" in line or "\\uD" in line) and _has_lone_surrogate(rec):
        raise RecordError(path, line_no, "invalid_utf8",
                          "a \\uXXXX escape encodes a lone surrogate (not valid Unicode)")
    if not isinstance(rec, dict):
        raise RecordError(path, line_no, "not_object",
                          f"expected a JSON object, got {type(rec).__name__}")
    for k in required:
        if k not in rec:
            raise RecordError(path, line_no, "missing_key", f"missing key {k!r}")
    if text_key in rec and not isinstance(rec[text_key], str):
        raise RecordError(path, line_no, "bad_type",
                          f"key {text_key!r} is {type(rec[text_key]).__name__}, not str")
    return rec


def iter_records(
    path: str,
    *,
    required_keys: Sequence[str] = ("text",),
    text_key: str = "text",
    on_error: str = "fail",
    stats: Optional[ErrorStats] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    progress_every: int = 1 << 18,
) -> Iterator[tuple[int, dict]]:
    """Stream ``(line_no, record)`` from one JSONL file (1-based line numbers; blank lines skipped).

    A line is malformed if it is not valid UTF-8, not valid JSON, not a JSON object, lacks one of
    ``required_keys``, or has a non-string ``text_key``; a truncated or corrupt compressed stream
    is reported (kind ``bad_compression``) at the line where it breaks and ends the file.
    ``on_error="fail"`` raises :class:`RecordError` (``"path:line: kind: detail"``); ``"skip"``
    counts it in ``stats``. ``progress(delta_disk_bytes, delta_docs)`` is called about every
    ``progress_every`` compressed bytes and at the end.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    if stats is None:
        stats = ErrorStats()
    required = tuple(required_keys)
    docs = [0]

    def lines_progress(nbytes: int, _lines: int) -> None:
        progress(nbytes, docs[0])
        docs[0] = 0

    lines = iter_lines(path, progress=lines_progress if progress is not None else None,
                       progress_every=progress_every)
    while True:
        try:
            line_no, bline = next(lines)
        except StopIteration:
            return
        except RecordError as err:  # bad_compression: nothing after it can be read
            if on_error == "fail":
                raise
            stats.add(err)
            lines.close()
            return
        try:
            rec = _parse(path, line_no, bline, required, text_key)
        except RecordError as err:
            if on_error == "fail":
                raise
            stats.add(err)
            continue
        if rec is not None:
            docs[0] += 1
            yield line_no, rec


def _has_lone_surrogate(rec: Any) -> bool:
    try:
        json.dumps(rec, ensure_ascii=False).encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def dump_record(rec: dict) -> str:
    """One JSONL line (UTF-8 kept readable, no ASCII escaping; ends with a newline)."""
    return json.dumps(rec, ensure_ascii=False) + "\n"

"""Publish files and directories atomically: complete under the final name, or not there at all.

Design choices and trade-offs:

* **One temp-name convention**: ``.<name>.tmp-<host>-<pid>`` beside the target (same directory,
  so same file system and ``os.replace`` / ``os.rename`` is atomic; hidden, so globs over the
  output directory do not pick it up). The host is part of the name because output directories
  often sit on a file system shared by many nodes: a pid alone cannot tell a dead writer from a
  live one on another machine. A directory being replaced is moved aside as
  ``.<name>.tmp-<host>-<pid>.old`` for the moment between the two renames.
* **Durable**: file contents are ``fsync``ed before the rename and the parent directory after it
  (where the file system supports directory fsync), so a power loss cannot leave a final name
  pointing at unwritten blocks. A directory's files are all fsynced before it is renamed.
* **Nothing half-written**: an exception inside a ``publish_*`` block removes the temp; a killed
  process leaves it behind, and :func:`remove_stale_temps` deletes those whose writer is gone
  (same host, pid no longer running) and logs each one it removes. A temp written from another
  host is left alone: its writer may be alive.
* **Several files** (:func:`publish_files`, e.g. a ``.bin``/``.idx`` pair) are renamed one after
  the other in the given order: each file is atomic, the group is not (a crash between renames
  leaves new and old side by side; readers of such pairs check that they match).
* Compression of text outputs follows the *final* name's extension (:func:`atomic_output`).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import socket
from typing import Any, Iterable, Iterator, List, Sequence

from megatron_ar.io.compression import wrap_writer

__all__ = [
    "TEMP_RE",
    "temp_path",
    "publish_file",
    "publish_files",
    "publish_dir",
    "atomic_output",
    "write_json_atomic",
    "write_text_atomic",
    "remove_stale_temps",
    "fresh_temp_dir",
]

logger = logging.getLogger(__name__)

#: Matches every temp name this module creates (``name``, ``host``, ``pid``, ``old``).
TEMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>[A-Za-z0-9_]*)-(?P<pid>\d+)(?P<old>\.old)?$")
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname().split(".")[0])


def temp_path(path: str, old: bool = False) -> str:
    """The temp name of ``path`` for this process (``old``: where a replaced directory goes)."""
    d, base = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{base}.tmp-{_HOST}-{os.getpid()}" + (".old" if old else ""))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):  # not every file system can fsync a directory
        _fsync_path(path)


def _fsync_tree(root: str) -> None:
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            if not os.path.islink(p):
                _fsync_path(p)
        _fsync_dir(d)


@contextlib.contextmanager
def publish_files(paths: Sequence[str]) -> Iterator[List[str]]:
    """Yield temp paths for ``paths``; write them in the block. On success each is fsynced and
    renamed to its final name in order; on an exception all temps are removed."""
    finals = [os.path.abspath(p) for p in paths]
    if len(set(finals)) != len(finals):
        raise ValueError(f"publish_files: duplicate targets in {list(paths)}")
    temps = [temp_path(p) for p in finals]
    for d in {os.path.dirname(p) for p in finals}:
        os.makedirs(d, exist_ok=True)
    for t in temps:
        _remove(t)  # a leftover of an earlier process that had our pid
    try:
        yield temps
        for t in temps:
            _fsync_path(t)
        for t, p in zip(temps, finals):
            os.replace(t, p)
        for d in {os.path.dirname(p) for p in finals}:
            _fsync_dir(d)
    except BaseException:
        for t in temps:
            _remove(t)
        raise


@contextlib.contextmanager
def publish_file(path: str) -> Iterator[str]:
    """Yield the temp path for ``path``; write it in the block (any way: ``open``, ``np.save``,
    a library's ``save(path)``). It replaces ``path`` atomically on success, is removed on error."""
    with publish_files([path]) as (tmp,):
        yield tmp


def fresh_temp_dir(final: str) -> str:
    """The empty temp directory of ``final`` for this process (parent created, a leftover of an
    earlier process with our pid removed)."""
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = temp_path(final)
    _remove(tmp)
    os.makedirs(tmp)
    return tmp


@contextlib.contextmanager
def publish_dir(path: str, *, exist: str = "error") -> Iterator[str]:
    """Yield an empty temp directory for ``path``; fill it in the block. On success its files are
    fsynced and it is renamed to ``path``; on an exception it is removed.

    ``exist`` says what happens when ``path`` exists at publication: ``"error"``
    (FileExistsError), ``"replace"`` (the old directory is moved aside, the new one renamed in,
    the old one deleted) or ``"keep"`` (the existing one wins and ours is discarded: for
    content-addressed caches that several processes may build at once).
    """
    if exist not in ("error", "replace", "keep"):
        raise ValueError(f"publish_dir: exist must be error|replace|keep, got {exist!r}")
    final = os.path.abspath(path)
    parent = os.path.dirname(final)
    tmp = fresh_temp_dir(final)
    try:
        yield tmp
        _fsync_tree(tmp)
        if os.path.lexists(final):
            if exist == "error":
                raise FileExistsError(f"{final} already exists")
            if exist == "keep":
                _remove(tmp)
                return
            old = temp_path(final, old=True)
            _remove(old)
            os.rename(final, old)
            os.rename(tmp, final)
            _remove(old)
        else:
            try:
                os.rename(tmp, final)
            except OSError:
                if exist != "keep" or not os.path.isdir(final):
                    raise
                _remove(tmp)  # another process published the same content first
                return
        _fsync_dir(parent)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_output(path: str, mode: str = "wt"):
    """Write ``path`` atomically (:func:`publish_file`) through a stream compressed by ``path``'s
    extension: ``"wt"`` UTF-8 text with ``\\n`` newlines, ``"wb"`` bytes."""
    if mode not in ("wt", "w", "wb"):
        raise ValueError(f"atomic_output: mode must be 'wt' or 'wb', got {mode!r}")
    with publish_file(path) as tmp:
        with open(tmp, "wb") as raw:
            comp = wrap_writer(raw, path)
            f = comp if mode == "wb" else io.TextIOWrapper(comp, encoding="utf-8", newline="\n",
                                                             write_through=False)
            try:
                yield f
            finally:
                if f is not comp:
                    f.flush()
                    f.detach()
                if comp is not raw:
                    comp.close()  # writes the gzip trailer / zstd frame end; raw stays open


def write_text_atomic(path: str, text: str) -> None:
    """``text`` into ``path`` (compressed by extension), atomically."""
    with atomic_output(path) as f:
        f.write(text)


def write_json_atomic(path: str, obj: Any, *, indent: int | None = None,
                      sort_keys: bool = True) -> None:
    """``obj`` as UTF-8 JSON (no ASCII escaping) plus a newline, atomically."""
    with atomic_output(path) as f:
        json.dump(obj, f, ensure_ascii=False, sort_keys=sort_keys, indent=indent)
        f.write("\n")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(directories: Iterable[str]) -> List[str]:
    """Delete the temps of :func:`temp_path` left in ``directories`` (not recursive) by
    processes of this host that no longer run; each removal is logged. Returns their paths."""
    removed = []
    for d in directories:
        try:
            names = sorted(os.listdir(d))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            m = TEMP_RE.match(name)
            if m is None or m.group("host") != _HOST or _alive(int(m.group("pid"))):
                continue
            p = os.path.join(d, name)
            _remove(p)
            removed.append(p)
            logger.warning("removed %s: temporary output of process %s, which is gone (a "
                           "killed run)", p, m.group("pid"))
    return removed

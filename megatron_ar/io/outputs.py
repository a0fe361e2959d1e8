"""One rule for tool outputs: a tool writes only what it creates, never over its inputs.

Every tool that writes files or directories checks its outputs with this module before it does
any work, and publishes directory outputs through :func:`publish_into_dir`.

Rules
- **Never over an input**: an output that is an input, contains one (an output directory
  around the corpus) or lies inside one is refused (:func:`refuse_overlap`), whether or not
  ``--overwrite`` is given. Paths are compared after resolving symlinks.
- **Existing outputs are refused unless ``--overwrite``** (:func:`check_file_output`,
  :func:`check_dir_output`). For a directory output only the entries the tool owns count: the
  names it writes and the glob patterns of its kind of output (``*.safetensors`` for an HF
  checkpoint, ``*.distcp`` for a dist checkpoint). Other files in the directory are *foreign*:
  never deleted, never replaced, with or without ``--overwrite``.
- **Publishing a directory** (:func:`publish_into_dir`): the tool fills a temp directory; a new
  directory is renamed into place in one step. Into an existing directory each entry is renamed
  in (each one atomic, the set not), after the owned entries this run does not write have been
  removed: a 4-shard HF checkpoint overwritten by a 2-shard one must not keep shards 3-4 beside
  the new index (a mixed output). Foreign entries stay.
- Temp names are :mod:`megatron_ar.io.atomic`'s; :func:`publish_into_dir` removes the stale
  ones of killed runs beside its target first and logs each (the debris of a ``kill -9``).
- **A failed run leaves no empty shells** (:func:`dirs_removed_on_failure`): directories the
  run created (an output folder, ``PREFIX.work``) are removed again when it fails before any
  of its work finished; finished work (done markers) is kept for the rerun to resume.

Trade-off: a crash in the middle of publishing into an existing directory leaves some entries
new and some old (each entry whole). Renaming the whole directory would be atomic but would
take foreign files with it, which is the data loss this module exists to prevent.
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
from typing import Iterable, Iterator, List, Optional, Sequence

from megatron_ar.io.atomic import (
    _fsync_dir,
    _fsync_tree,
    _remove,
    fresh_temp_dir,
    remove_stale_temps,
    temp_path,
)

__all__ = ["OutputError", "refuse_overlap", "check_file_output", "check_dir_output",
           "owned_entries", "publish_into_dir", "dirs_removed_on_failure"]


class OutputError(ValueError):
    """An output the tool must not write; the message names the option, the path and why."""


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def _inside(child: str, parent: str) -> bool:
    return child != parent and child.startswith(parent.rstrip(os.sep) + os.sep)


def refuse_overlap(outputs: Iterable[str], inputs: Iterable[str], key: str = "--output") -> None:
    """Raise :class:`OutputError` when an output is, contains or lies inside an input."""
    ins = [(i, _real(i)) for i in inputs if i]
    for out in outputs:
        if not out:
            continue
        o = _real(out)
        for raw, i in ins:
            if o == i:
                raise OutputError(f"{key} {out}: is the input {raw}; choose another path "
                                  "(inputs are never written)")
            if _inside(i, o):
                raise OutputError(f"{key} {out}: contains the input {raw}; choose an output "
                                  "that does not hold the tool's inputs")
            if _inside(o, i):
                raise OutputError(f"{key} {out}: lies inside the input {raw}; choose a path "
                                  "outside the inputs")


def check_file_output(path: str, *, overwrite: bool, key: str = "--output") -> None:
    """A file output: refused when it exists (unless ``overwrite``) or is a directory."""
    if os.path.isdir(path):
        raise OutputError(f"{key} {path}: is a directory, expected a file path")
    if os.path.lexists(path) and not overwrite:
        raise OutputError(f"{key} {path}: exists; pass --overwrite to replace it")


def owned_entries(path: str, names: Sequence[str] = (), patterns: Sequence[str] = ()
                  ) -> List[str]:
    """Entries of directory ``path`` (sorted) that are the tool's: in ``names`` or matching one
    of ``patterns`` (fnmatch globs on the entry name)."""
    try:
        entries = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e for e in entries if e in names or any(fnmatch.fnmatch(e, p) for p in patterns))


def check_dir_output(path: str, *, overwrite: bool, names: Sequence[str] = (),
                     patterns: Sequence[str] = (), key: str = "--output") -> None:
    """A directory output: refused when ``path`` is a file, or when it holds entries the tool
    owns (``names`` / ``patterns``) and ``overwrite`` is off. Foreign entries are allowed."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(f"{key} {path}: exists and is not a directory")
    owned = owned_entries(path, names, patterns)
    if owned and not overwrite:
        shown = ", ".join(owned[:6]) + (f" (+{len(owned) - 6} more)" if len(owned) > 6 else "")
        raise OutputError(f"{key} {path}: already holds this tool's output ({shown}); pass "
                          "--overwrite to replace those files (other files there are kept)")


@contextlib.contextmanager
def publish_into_dir(path: str, *, overwrite: bool, names: Sequence[str] = (),
                     patterns: Sequence[str] = (), key: str = "--output") -> Iterator[str]:
    """Yield an empty temp directory; fill it in the block. On success it becomes ``path``
    (renamed when ``path`` does not exist, else merged in entry by entry, see the module
    docstring); on an exception it is removed and ``path`` is untouched."""
    final = _real(path)
    parent = os.path.dirname(final)
    remove_stale_temps([parent])
    check_dir_output(path, overwrite=overwrite, names=names, patterns=patterns, key=key)
    tmp = fresh_temp_dir(final)
    try:
        yield tmp
        _fsync_tree(tmp)
        if not os.path.lexists(final):
            os.rename(tmp, final)
            _fsync_dir(parent)
            return
        # Checked again: another process may have published meanwhile.
        check_dir_output(path, overwrite=overwrite, names=names, patterns=patterns, key=key)
        new = set(os.listdir(tmp))
        clash = sorted(new & set(os.listdir(final)))
        if clash and not overwrite:
            raise OutputError(f"{key} {path}: already has {', '.join(clash[:6])}; pass "
                              "--overwrite to replace")
        for stale in owned_entries(final, names, patterns):
            if stale not in new:
                _remove(os.path.join(final, stale))
        for entry in sorted(new):
            _replace_entry(os.path.join(tmp, entry), os.path.join(final, entry))
        _fsync_dir(final)
        _remove(tmp)
    except BaseException:
        _remove(tmp)
        raise


def _replace_entry(src: str, dst: str) -> None:
    if os.path.isdir(dst) and not os.path.islink(dst):
        old: Optional[str] = temp_path(dst, old=True)
        _remove(old)
        os.rename(dst, old)
        os.rename(src, dst)
        _remove(old)
    else:
        os.replace(src, dst)


def _missing_chain(path: str) -> List[str]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    out, p = [], _real(path)
    while p and not os.path.lexists(p):
        out.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return out


def _holds_finished_work(path: str) -> bool:
    for _, _, files in os.walk(path):
        if any(f.endswith(".done.json") for f in files):
            return True
    return False


@contextlib.contextmanager
def dirs_removed_on_failure(dirs: Iterable[str]) -> Iterator[None]:
    """On an exception in the block (Ctrl-C included), remove the directories among ``dirs``
    and their parents that the block created, unless they hold finished work (a shard's
    ``*.done.json``, kept for the rerun to resume). Directories that existed are never touched;
    a created parent is removed only when empty."""
    created = [_missing_chain(d) for d in dirs]
    try:
        yield
    except BaseException:
        for chain in created:
            if not chain or not os.path.isdir(chain[0]) or _holds_finished_work(chain[0]):
                continue
            _remove(chain[0])
            for parent in chain[1:]:
                with contextlib.suppress(OSError):
                    os.rmdir(parent)  # only when empty
        raise

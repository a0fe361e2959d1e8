"""Text input for the tokenizer tools (train, eval, prune, merge).

Design choices:
- One reader for every tokenizer CLI (issue 4 "Input files ... may be plain text (one document
  per line) or JSONL with a ``text`` key"), so the tools agree on what a document is.
- Format detection by name first (``.jsonl``/``.json``/``.ndjson``, optionally ``.gz``/``.zst``),
  otherwise by content: a plain-text file whose first non-blank line parses as a JSON object
  with the text key is read as JSONL. A plain-text line that merely starts with ``{`` (code) is
  not mistaken for JSONL because the object must also carry the key.
- Categories (language/domain, used by ``--sample category=ratio`` and per-category eval):
  1. an explicit ``CATEGORY=PATH`` input spec (``ar=data/hadith.txt``) wins;
  2. else, for JSONL, ``record["category"]`` or ``record["metadata"]["category"]`` (also
     ``lang``/``language`` under either, in that order);
  3. else the file name: the part of the base name before the first ``.``, ``_`` or ``-``
     (``ar_train.jsonl`` -> ``ar``, ``code-00001.txt.gz`` -> ``code``).
- Bad input raises :class:`TextInputError` naming the file and line; silent skipping of
  malformed JSONL would corrupt training statistics unnoticed. Blank lines are skipped (they are
  not documents).
"""
from __future__ import annotations

import gzip
import io
import json
import os
import re
from typing import Iterable, Iterator, Optional

__all__ = [
    "TextInputError",
    "iter_texts",
    "iter_texts_with_category",
    "split_category_spec",
    "category_from_filename",
]

_JSONL_EXT = (".jsonl", ".json", ".ndjson")
_SPEC_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)=(.+)$")
_CATEGORY_KEYS = ("category", "lang", "language")


class TextInputError(ValueError):
    """Malformed input; the message names the file (and line) at fault."""


def _open(path: str):
    if not os.path.isfile(path):
        raise TextInputError(f"{path}: no such file")
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="strict")
    if path.endswith(".zst"):
        import zstandard  # only needed for .zst inputs

        fh = open(path, "rb")
        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(fh), encoding="utf-8")
    return open(path, encoding="utf-8", errors="strict")


def _base(path: str) -> str:
    p = path
    for comp in (".gz", ".zst"):
        if p.endswith(comp):
            p = p[: -len(comp)]
    return p


def split_category_spec(spec: str) -> tuple[Optional[str], str]:
    """``'ar=data/x.txt'`` -> ``('ar', 'data/x.txt')``; a plain path (or one that exists as
    given, even if it contains ``=``) -> ``(None, path)``."""
    if os.path.exists(spec):
        return None, spec
    m = _SPEC_RE.match(spec)
    if m:
        return m.group(1), m.group(2)
    return None, spec


def category_from_filename(path: str) -> str:
    name = os.path.basename(_base(path))
    return re.split(r"[._-]", name, maxsplit=1)[0] or name


def _is_jsonl(path: str, text_key: str) -> bool:
    if _base(path).endswith(_JSONL_EXT):
        return True
    with _open(path) as f:
        for line in f:
            s = line.strip()
            if not s:
                continue
            if not s.startswith("{"):
                return False
            try:
                obj = json.loads(s)
            except json.JSONDecodeError:
                return False
            return isinstance(obj, dict) and text_key in obj
    return False


def _record_category(obj: dict) -> Optional[str]:
    for holder in (obj, obj.get("metadata") if isinstance(obj.get("metadata"), dict) else None):
        if holder is None:
            continue
        for k in _CATEGORY_KEYS:
            v = holder.get(k)
            if isinstance(v, str) and v:
                return v
    return None


def _iter_file(path: str, text_key: str, spec_category: Optional[str]) -> Iterator[tuple[str, str]]:
    file_category = spec_category or category_from_filename(path)
    try:
        jsonl = _is_jsonl(path, text_key)
        with _open(path) as f:
            for lineno, line in enumerate(f, 1):
                if jsonl:
                    s = line.strip()
                    if not s:
                        continue
                    try:
                        obj = json.loads(s)
                    except json.JSONDecodeError as e:
                        raise TextInputError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
                    if not isinstance(obj, dict):
                        raise TextInputError(f"{path}:{lineno}: expected a JSON object")
                    if text_key not in obj:
                        raise TextInputError(f"{path}:{lineno}: missing key {text_key!r}")
                    text = obj[text_key]
                    if not isinstance(text, str):
                        raise TextInputError(
                            f"{path}:{lineno}: key {text_key!r} is {type(text).__name__}, not str"
                        )
                    if not text:
                        continue
                    cat = spec_category or _record_category(obj) or file_category
                    yield text, cat
                else:
                    text = line.rstrip("\r\n")
                    if text.strip():
                        yield text, file_category
    except UnicodeDecodeError as e:
        raise TextInputError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def iter_texts_with_category(
    paths: Iterable[str], text_key: str = "text"
) -> Iterator[tuple[str, str]]:
    """Yield ``(text, category)`` for every document in ``paths`` (see module docstring for how
    the category is found). ``paths`` entries may be ``CATEGORY=PATH`` specs."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for spec in paths:
        cat, path = split_category_spec(os.fspath(spec))
        yield from _iter_file(path, text_key, cat)


def iter_texts(paths: Iterable[str], text_key: str = "text") -> Iterator[str]:
    """Yield every document's text from plain-text (one per line) or JSONL files."""
    for text, _ in iter_texts_with_category(paths, text_key):
        yield text

"""Text input for the tokenizer tools (train, eval, prune, merge).

Design choices:
- One reader for every tokenizer CLI (input files may be plain text, one document per line, or
  JSONL with a ``text`` key), so the tools agree on what a document is. Bytes come from
  :mod:`megatron_ar.io` (plain/.gz/.zst; a truncated or corrupt compressed stream is an error
  naming the file and line) and JSONL lines are validated by
  :func:`megatron_ar.io.records.iter_records`, as in the data tools.
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
  not documents). Plain text is read in text mode with universal newlines (as ``open``).
- :func:`load_tokenizer` is the one place a tokenizer is loaded from a path: the Rust
  ``tokenizers.Tokenizer`` (our tools, training) or, with ``hf=True``, ``transformers``'
  ``AutoTokenizer`` (which adds the model's BOS/EOS template, for logit comparisons with HF).
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterable, Iterator, Optional

from megatron_ar.io.compression import CompressedStreamError, open_text
from megatron_ar.io.records import RecordError, iter_records

__all__ = [
    "TextInputError",
    "tokenizer_file",
    "load_tokenizer",
    "tokens_from_text",
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


def tokenizer_file(path: str) -> str:
    """``path/tokenizer.json`` for a directory, ``path`` itself for a file; FileNotFoundError
    naming ``path`` when there is none."""
    f = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(f):
        raise FileNotFoundError(f"{path}: no tokenizer.json found")
    return f


def load_tokenizer(path: str, *, hf: bool = False):
    """The tokenizer at ``path`` (a directory or its ``tokenizer.json``).

    Default: a ``tokenizers.Tokenizer`` from ``tokenizer.json``. ``hf=True``: ``transformers``'
    ``AutoTokenizer.from_pretrained`` of the directory (tokenizer_config.json, special tokens,
    SentencePiece models). A missing file raises FileNotFoundError naming the path.
    """
    if hf:
        d = path if os.path.isdir(path) else os.path.dirname(path)
        if not os.path.isdir(d):
            raise FileNotFoundError(f"{path}: no tokenizer directory")
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(d)
    from tokenizers import Tokenizer

    return Tokenizer.from_file(tokenizer_file(path))


def tokens_from_text(tokenizer_dir: str, text: str, batch_size: int, seq_length: int,
                     vocab_size: int):
    """``[rows, seq_length]`` token ids (a torch tensor): the first ``batch_size * seq_length``
    tokens of ``text`` encoded by the HF tokenizer of ``tokenizer_dir`` with its special tokens
    (BOS), as ``transformers`` feeds the model. Raises TextInputError when ``text`` is shorter
    than one row or produces an id outside ``vocab_size``."""
    import torch

    tok = load_tokenizer(tokenizer_dir, hf=True)
    ids = tok(text, add_special_tokens=True)["input_ids"]
    if len(ids) < seq_length:
        raise TextInputError(f"text has {len(ids)} tokens, fewer than seq_length={seq_length}")
    rows = min(batch_size, len(ids) // seq_length)
    t = torch.tensor(ids[: rows * seq_length], dtype=torch.long).reshape(rows, seq_length)
    if int(t.max()) >= vocab_size:
        raise TextInputError(f"tokenizer in {tokenizer_dir} produced id {int(t.max())} >= model "
                             f"vocab_size {vocab_size}")
    return t


def _open(path: str):
    if not os.path.isfile(path):
        raise TextInputError(f"{path}: no such file")
    return open_text(path)


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


def _iter_jsonl(path: str, text_key: str, spec_category: Optional[str],
                file_category: str) -> Iterator[tuple[str, str]]:
    try:
        for _, obj in iter_records(path, required_keys=(text_key,), text_key=text_key):
            text = obj[text_key]
            if text:
                yield text, spec_category or _record_category(obj) or file_category
    except RecordError as e:
        if e.kind == "invalid_utf8":
            raise TextInputError(
                f"{path}: not valid UTF-8 (line {e.line_no}: {e.detail})") from None
        if e.kind == "bad_compression":
            raise TextInputError(str(e)) from None
        raise TextInputError(f"{e.path}:{e.line_no}: {e.detail}") from None


def _iter_plain(path: str, category: str) -> Iterator[tuple[str, str]]:
    lineno = 0
    try:
        with _open(path) as f:
            for lineno, line in enumerate(f, 1):
                text = line.rstrip("\r\n")
                if text.strip():
                    yield text, category
    except UnicodeDecodeError as e:
        raise TextInputError(f"{path}: not valid UTF-8 ({e.reason} after line {lineno})") from None
    except CompressedStreamError as e:
        raise TextInputError(f"{path}:{lineno + 1}: bad_compression: {e.detail} (at compressed "
                             f"byte {e.offset})") from None


def _iter_file(path: str, text_key: str, spec_category: Optional[str]) -> Iterator[tuple[str, str]]:
    if not os.path.isfile(path):
        raise TextInputError(f"{path}: no such file")
    file_category = spec_category or category_from_filename(path)
    try:
        jsonl = _is_jsonl(path, text_key)
    except UnicodeDecodeError as e:
        raise TextInputError(f"{path}: not valid UTF-8 ({e.reason})") from None
    except CompressedStreamError as e:
        raise TextInputError(f"{path}: bad_compression: {e.detail} (at compressed byte "
                             f"{e.offset})") from None
    if jsonl:
        yield from _iter_jsonl(path, text_key, spec_category, file_category)
    else:
        yield from _iter_plain(path, file_category)


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

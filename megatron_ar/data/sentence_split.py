"""Sentence splitting for ``tools/preprocess_data.py --split-sentences``.

Design choices (why):

* Megatron-LM splits with NLTK punkt only (and downloads its data at start-up). Punkt has no
  Arabic model and the download is impossible offline, so Arabic text is split by rules: a
  sentence ends after a run of ``. ! ? … ۔`` or the Arabic ``، ؛ ؟`` (the Arabic comma included:
  Arabic prose often runs one sentence per comma) followed
  by whitespace (closing quotes/brackets stay with the sentence), and at line breaks. "3.5" or
  "١٫٥" never split because no whitespace follows the mark.
* English (any punkt language) uses punkt when its data is installed (``punkt_tab`` for NLTK
  >= 3.9, the old pickle otherwise), like Megatron-LM; without the data the same rules are used
  and :func:`make_splitter` reports ``"rules"`` so the tool's summary says so.
* ``lang="auto"`` (our default) picks per document: Arabic rules when at least half of the
  letters are Arabic script, otherwise the English path.
* ``keep_newlines``: the whitespace after a sentence stays attached to it (what Megatron-LM's
  punkt variant does), so joining the sentences gives back the text from its first character.
"""
from __future__ import annotations

import re
from typing import Callable, List, Optional

_END = ".!?…۔؟،؛"
_BOUNDARY = re.compile(r"([" + re.escape(_END) + r"]+[\"'»”’)\]}]*)(\s+)|(\s*\n\s*)")
_ARABIC_LETTER = re.compile(r"[\u0620-\u064A\u066E-\u06D3\u06D5\u06FA-\u06FC\u0750-\u077F"
                            r"\u08A0-\u08C9\uFB50-\uFDFB\uFE70-\uFEFC]")
_LETTER = re.compile(r"[^\W\d_]")


def split_rules(text: str, keep_newlines: bool = False) -> List[str]:
    """Rule-based splitter (Arabic and Latin punctuation, line breaks)."""
    out: List[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        if m.group(1) is not None:
            end = m.end(1)
        else:
            end = m.start()
        piece = text[start:m.end()] if keep_newlines else text[start:end].strip()
        if piece.strip():
            out.append(piece)
        elif keep_newlines and out:
            out[-1] += piece
        start = m.end()
    tail = text[start:] if keep_newlines else text[start:].strip()
    if tail.strip():
        out.append(tail)
    elif keep_newlines and tail and out:
        out[-1] += tail
    return out


def arabic_fraction(text: str) -> float:
    letters = len(_LETTER.findall(text))
    return len(_ARABIC_LETTER.findall(text)) / letters if letters else 0.0


def _load_punkt(lang: str):
    """A punkt tokenizer for ``lang`` if its data is installed, else None (never downloads)."""
    try:
        import nltk
    except ImportError:
        return None
    try:
        from nltk.tokenize.punkt import PunktTokenizer  # NLTK >= 3.9 (punkt_tab)

        return PunktTokenizer(lang)
    except (ImportError, LookupError, OSError, ValueError):
        pass
    try:
        return nltk.data.load(f"tokenizers/punkt/{lang}.pickle")
    except (LookupError, OSError, ValueError):
        return None


def _punkt_split(tok, text: str, keep_newlines: bool) -> List[str]:
    spans = list(tok.span_tokenize(text))
    if not keep_newlines:
        return [text[a:b] for a, b in spans]
    out = []
    for k, (a, b) in enumerate(spans):
        nxt = spans[k + 1][0] if k + 1 < len(spans) else len(text)
        out.append(text[a:nxt])
    return out


def make_splitter(lang: str = "auto", keep_newlines: bool = False
                  ) -> tuple[Callable[[str], List[str]], str]:
    """Return ``(split(text) -> sentences, description)``.

    ``lang``: ``"arabic"`` (rules), ``"auto"`` (per document), or an NLTK punkt language name
    (``"english"``...; rules when the punkt data is absent).
    """
    if lang == "arabic":
        return (lambda t: split_rules(t, keep_newlines)), "rules"
    punkt = _load_punkt("english" if lang == "auto" else lang)
    other: Callable[[str], List[str]]
    if punkt is not None:
        def other(t: str) -> List[str]:
            return _punkt_split(punkt, t, keep_newlines)
        desc = "punkt"
    else:
        def other(t: str) -> List[str]:
            return split_rules(t, keep_newlines)
        desc = "rules"
    if lang != "auto":
        return other, desc

    def auto(t: str) -> List[str]:
        if arabic_fraction(t) >= 0.5:
            return split_rules(t, keep_newlines)
        return other(t)

    return auto, f"auto(arabic=rules, other={desc})"


def split_long(split: Callable[[str], List[str]], text: str,
               max_len: Optional[int] = 1_000_000) -> List[str]:
    """Split ``text`` in windows of ``max_len`` characters, as Megatron-LM does for huge texts."""
    if not max_len or len(text) <= max_len:
        return split(text)
    out: List[str] = []
    for i in range(0, len(text), max_len):
        out.extend(split(text[i:i + max_len]))
    return out

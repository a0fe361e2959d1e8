"""Tokenizer evaluation: fertility, characters/bytes per token, vocabulary usage and the
Morphological Alignment Score.

Definitions (all computed with ``add_special_tokens=False``):
- **fertility** of a category = tokens / whitespace-separated words (``str.split()``) over all
  its documents; **chars_per_token** / **bytes_per_token** = characters / UTF-8 bytes per token.
- **vocab_usage** = distinct ids produced on the inputs / vocabulary size.
- **Morphological Alignment Score (MAS)**. Gold file: TSV ``word<TAB>m1 m2 m3`` (one word per
  line, morphemes separated by spaces; ``#`` lines and blank lines ignored). For each gold word
  ``w`` (surface length n):

  1. *Gold boundaries* G(w) ⊆ {1..n-1}: the interior offsets between consecutive morphemes.
     When the morphemes do not concatenate to ``w`` (analyzers restore elided letters, e.g.
     ``للناس -> ل ال ناس``, or drop diacritics), the characters of ``w`` and of ``m1 m2 ...`` are
     aligned by a Levenshtein dynamic program (order preserving, unit costs, ties prefer
     matches) and every morpheme boundary is carried to the surface offset the alignment path
     passes through first; boundaries that land on 0 or n, or coincide, are dropped.
  2. *Token boundaries* T(w) ⊆ {1..n-1}: ``w`` is encoded as it appears inside running text
     (``" " + w``); the end offsets of all but the last token, relative to ``w``.
  3. The order-preserving alignment of T(w) and G(w) (both sorted) matches a token boundary to a
     morpheme boundary only at the same offset, so the matched set is T ∩ G.
     MAS = F1 of the micro-averaged precision Σ|T∩G| / Σ|T| and recall Σ|T∩G| / Σ|G|, each word
     weighted by its number of occurrences in the evaluation inputs (running-text weighting;
     weight 1 for every gold word if none of them occurs). Over-splitting raises recall but
     lowers precision; merging across boundaries lowers recall, so neither is rewarded.
  ``exact`` (reported alongside) is the weighted share of words with T == G.

Design choices:
- Category of a document: see :mod:`megatron_ar.tokenizers.io` (``CATEGORY=PATH``, JSONL
  ``category``/``metadata.category``/``lang``, else the file-name prefix).
- Any ``tokenizers``-loadable tokenizer is accepted (our BPE, Gemma's SentencePiece-style BPE):
  offsets come from the tokenizer itself, so the metric is tokenizer-agnostic.
- Batch encoding in Rust (``encode_batch``); Python only sums lengths.
"""
from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Optional

from megatron_ar.io.atomic import publish_file, write_text_atomic

from .io import TextInputError, iter_texts_with_category, load_tokenizer

__all__ = [
    "read_gold_tsv",
    "write_gold_tsv",
    "project_boundaries",
    "token_boundaries",
    "morph_alignment",
    "evaluate_tokenizers",
    "segmentation_agreement",
]

_MARKS = "\u0300-\u036F\u064B-\u065F\u0670\u0640"
WORD_RE = re.compile(rf"[\w{_MARKS}]+")


def read_gold_tsv(path: str) -> dict[str, list[str]]:
    gold: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            word, sep, morphs = line.partition("\t")
            parts = morphs.split()
            if not sep or not word or not parts:
                raise TextInputError(f"{path}:{lineno}: expected 'word<TAB>m1 m2 ...', got {line!r}")
            gold[word] = parts
    if not gold:
        raise TextInputError(f"{path}: no gold segmentations")
    return gold


def write_gold_tsv(path: str, segmentations: dict[str, list[str]]) -> None:
    write_text_atomic(path, "".join(f"{w}\t{' '.join(parts)}\n"
                                    for w, parts in segmentations.items()))


def _align(a: str, b: str) -> list[tuple[int, int]]:
    """Levenshtein alignment path of a and b: list of (i, j) grid points from (0,0) to
    (len a, len b)."""
    n, m = len(a), len(b)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i][j] = min(d[i - 1][j - 1] + (a[i - 1] != b[j - 1]), d[i - 1][j] + 1, d[i][j - 1] + 1)
    path = [(n, m)]
    i, j = n, m
    while i or j:
        if i and j and d[i][j] == d[i - 1][j - 1] + (a[i - 1] != b[j - 1]):
            i, j = i - 1, j - 1
        elif i and d[i][j] == d[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
        path.append((i, j))
    return path[::-1]


def project_boundaries(word: str, morphemes: list[str]) -> set[int]:
    """Gold boundary offsets of ``word`` (see module docstring, step 1)."""
    joined = "".join(morphemes)
    cuts, pos = [], 0
    for m in morphemes[:-1]:
        pos += len(m)
        cuts.append(pos)
    if joined == word:
        return set(cuts)
    first_i: dict[int, int] = {}
    for i, j in _align(word, joined):
        first_i.setdefault(j, i)
    return {first_i[c] for c in cuts if 0 < first_i[c] < len(word)}


def token_boundaries(encoding, word_start: int, word_len: int) -> set[int]:
    ends = [e for (s, e) in encoding.offsets[:-1]]
    return {e - word_start for e in ends if 0 < e - word_start < word_len}


@dataclass
class MASResult:
    """Morphological Alignment Score of a tokenizer against a gold segmentation: aligned and
    total boundaries and the score."""

    score: float
    precision: float
    recall: float
    exact: float
    words: int

    def as_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def morph_alignment(tokenizer, gold: dict[str, list[str]],
                    weights: Optional[dict[str, int]] = None) -> MASResult:
    words = list(gold)
    if weights is not None and any(weights.get(w, 0) for w in words):
        words = [w for w in words if weights.get(w, 0)]
        wt = [weights[w] for w in words]
    else:
        wt = [1] * len(words)
    encs = tokenizer.encode_batch([" " + w for w in words], add_special_tokens=False)
    tp = n_t = n_g = 0
    exact = 0
    for w, k, enc in zip(words, wt, encs):
        g = project_boundaries(w, gold[w])
        t = token_boundaries(enc, 1, len(w))
        tp += k * len(t & g)
        n_t += k * len(t)
        n_g += k * len(g)
        exact += k * (t == g)
    p = tp / n_t if n_t else 0.0
    r = tp / n_g if n_g else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return MASResult(f, p, r, exact / sum(wt), len(words))


def segmentation_agreement(seg_a: dict[str, list[str]], seg_b: dict[str, list[str]],
                           weights: Optional[dict[str, int]] = None) -> dict:
    """Agreement of segmentation a with reference b over their common words: weighted exact
    match, boundary precision/recall/F1 (b as reference), by type and by token."""
    common = [w for w in seg_a if w in seg_b]
    out = {"words": len(common)}
    for name, wt in (("type", None), ("token", weights)):
        tp = na = nb = ex = tot = 0
        for w in common:
            k = 1 if wt is None else wt.get(w, 0)
            if not k:
                continue
            a = project_boundaries(w, seg_a[w])
            b = project_boundaries(w, seg_b[w])
            tp += k * len(a & b)
            na += k * len(a)
            nb += k * len(b)
            ex += k * (a == b)
            tot += k
        p = tp / na if na else 0.0
        r = tp / nb if nb else 0.0
        out[name] = {
            "exact": round(ex / tot, 4) if tot else None,
            "precision": round(p, 4), "recall": round(r, 4),
            "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
        }
    return out


def _read_inputs(paths: Iterable[str], text_key: str) -> dict[str, list[str]]:
    by_cat: dict[str, list[str]] = defaultdict(list)
    for text, cat in iter_texts_with_category(paths, text_key):
        by_cat[cat].append(text)
    if not by_cat:
        raise TextInputError(f"no documents in {list(paths)}")
    return dict(by_cat)


def evaluate_tokenizers(tokenizer_paths: list[str], inputs: list[str],
                        gold_path: Optional[str] = None, text_key: str = "text",
                        batch_size: int = 256, show_progress: bool = False) -> dict:
    """Evaluate every tokenizer on the same inputs; returns the JSON summary."""
    from tqdm import tqdm

    docs = _read_inputs(inputs, text_key)
    words = {c: sum(len(t.split()) for t in ts) for c, ts in docs.items()}
    chars = {c: sum(len(t) for t in ts) for c, ts in docs.items()}
    nbytes = {c: sum(len(t.encode("utf-8")) for t in ts) for c, ts in docs.items()}
    gold = read_gold_tsv(gold_path) if gold_path else None
    weights = None
    if gold is not None:
        wc: Counter = Counter()
        for ts in docs.values():
            for t in ts:
                wc.update(WORD_RE.findall(t))
        weights = {w: wc[w] for w in gold if wc[w]}
    results = []
    for path in tokenizer_paths:
        tok = load_tokenizer(path)
        n_tok: dict[str, int] = {}
        used: set[int] = set()
        for cat, ts in docs.items():
            total = 0
            for i in tqdm(range(0, len(ts), batch_size), desc=f"{os.path.basename(path.rstrip('/'))}:{cat}",
                          disable=not show_progress):
                for enc in tok.encode_batch(ts[i:i + batch_size], add_special_tokens=False):
                    total += len(enc.ids)
                    used.update(enc.ids)
            n_tok[cat] = total
        all_tok = sum(n_tok.values())
        vs = tok.get_vocab_size()
        mas = morph_alignment(tok, gold, weights) if gold is not None else None
        results.append({
            "path": path,
            "vocab_size": vs,
            "fertility": {c: round(n_tok[c] / max(1, words[c]), 4) for c in docs},
            "chars_per_token": round(sum(chars.values()) / max(1, all_tok), 4),
            "chars_per_token_by_category": {c: round(chars[c] / max(1, n_tok[c]), 4) for c in docs},
            "bytes_per_token": round(sum(nbytes.values()) / max(1, all_tok), 4),
            "bytes_per_token_by_category": {c: round(nbytes[c] / max(1, n_tok[c]), 4) for c in docs},
            "tokens": n_tok,
            "vocab_usage": round(len(used) / vs, 4),
            "morph_alignment": round(mas.score, 4) if mas else None,
            "morph_alignment_detail": mas.as_dict() if mas else None,
        })
    return {
        "categories": {c: {"docs": len(docs[c]), "words": words[c], "chars": chars[c]} for c in docs},
        "gold": gold_path,
        "tokenizers": results,
    }


def format_table(summary: dict) -> str:
    cats = list(summary["categories"])
    head = ["tokenizer", "vocab"] + [f"fert[{c}]" for c in cats] + ["chars/tok", "bytes/tok", "usage", "MAS"]
    rows = [head]
    for r in summary["tokenizers"]:
        rows.append(
            [os.path.basename(r["path"].rstrip("/")) or r["path"], str(r["vocab_size"])]
            + [f"{r['fertility'][c]:.3f}" for c in cats]
            + [f"{r['chars_per_token']:.3f}", f"{r['bytes_per_token']:.3f}", f"{r['vocab_usage']:.3f}",
               "-" if r["morph_alignment"] is None else f"{r['morph_alignment']:.3f}"]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


def require_pyplot():
    """matplotlib's pyplot on the Agg backend, or an ImportError saying how to get it (it is an
    optional dependency: call before long work so a missing one fails first)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("plotting (--plot) needs matplotlib: pip install 'megatron_ar[plots]'") from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_summary(summary: dict, out_png: str) -> None:
    plt = require_pyplot()

    toks = summary["tokenizers"]
    cats = list(summary["categories"])
    names = [os.path.basename(r["path"].rstrip("/")) or r["path"] for r in toks]
    panels = [("fertility (tokens / word)", lambda r: [r["fertility"][c] for c in cats], cats),
              ("chars per token", lambda r: [r["chars_per_token_by_category"][c] for c in cats], cats)]
    if any(r["morph_alignment"] is not None for r in toks):
        panels.append(("morph. alignment (F1)", lambda r: [r["morph_alignment"] or 0.0], ["MAS"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    axes = [axes] if len(panels) == 1 else list(axes)
    width = 0.8 / max(1, len(toks))
    for ax, (title, get, labels) in zip(axes, panels):
        for k, (r, name) in enumerate(zip(toks, names)):
            xs = [i + k * width for i in range(len(labels))]
            ax.bar(xs, get(r), width=width, label=name)
        ax.set_xticks([i + width * (len(toks) - 1) / 2 for i in range(len(labels))])
        ax.set_xticklabels(labels)
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with publish_file(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)

"""Combine byte-level BPE tokenizers into one of a target size (Fanar report
section 5: a 32K English/code tokenizer + a 45K Arabic one, infrequent merges pruned, into
76,800 = 75 x 1024).

Design choices:
- **Merge-level union.** A BPE vocabulary is its merge list; the union of the sources' merges
  (identical pairs deduplicated) is ranked, the least useful merges are pruned to fit the
  target, and the vocabulary is rebuilt as bytes + kept merge results + special tokens.
- **Usefulness = merge applications on a corpus** when each source gets a corpus: every
  document is encoded (Rust ``encode_batch``) with its source tokenizer; final-token counts are
  pushed down the merge tree (a token's count is added to both parents'), giving how often each
  merge fires. Counts are normalized per source (share of that source's tokens) and scaled by
  ``weights``. Without corpora the score is ``1 - rank/len(merges)`` (BPE ranks are a frequency
  order in the source's own training corpus).
- **Closed under merges by construction.** Merges are accepted greedily by score, but a merge is
  only accepted once both of its parents are bytes or results of accepted merges (a waiting
  list re-examines children when a parent is accepted). So every kept token can still be built
  and no merge references a dropped token. Application counts are monotone (a parent fires at
  least as often as its child), so waiting rarely changes the selection.
- **Rank order of the result**: by relative rank within the sources (``rank/len``; minimum over
  sources for shared merges). Each source's internal order, hence its parent-before-child
  order, is preserved, so each language is encoded with its own tokenizer's priorities.
- Merges whose result is a single character (Arabic letters, diacritics) are always kept:
  without them a character would fall back to bytes, and they cost only a few hundred slots.
- Sources must share the pre-tokenizer and byte-level model (checked; the error names the file).
"""
from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Optional

from .io import iter_texts, load_tokenizer, tokenizer_file
from .morphbpe import bytes_to_unicode, check_tokenizer_output, write_tokenizer_dir

__all__ = ["MergeConfig", "merge_tokenizers", "merge_application_counts", "check_closed"]


@dataclass
class MergeConfig:
    """Inputs and target of a tokenizer merge (sources, target vocabulary size, output directory)."""

    tokenizers: list[str]
    output: str
    target_vocab_size: int = 76800
    corpora: Optional[list[list[str]]] = None
    weights: Optional[list[float]] = None
    max_docs: Optional[int] = 20000
    text_key: str = "text"
    extra_special_tokens: list[str] = field(default_factory=list)
    overwrite: bool = False

    def validate(self) -> None:
        if len(self.tokenizers) < 2:
            raise ValueError("MergeConfig.tokenizers: need at least two tokenizers")
        if self.target_vocab_size <= 0 or self.target_vocab_size % 1024:
            raise ValueError(
                f"MergeConfig.target_vocab_size: {self.target_vocab_size} is not a positive "
                "multiple of 1024"
            )
        if self.corpora is not None and len(self.corpora) != len(self.tokenizers):
            raise ValueError(
                f"MergeConfig.corpora: {len(self.corpora)} corpora for {len(self.tokenizers)} "
                "tokenizers (give one --corpus per --tokenizer, in the same order)"
            )
        if self.weights is not None:
            if len(self.weights) != len(self.tokenizers):
                raise ValueError("MergeConfig.weights: one weight per tokenizer")
            if any(not w > 0 for w in self.weights):
                raise ValueError(f"MergeConfig.weights: must be > 0, got {self.weights}")
        inputs = list(self.tokenizers) + [p for c in (self.corpora or []) for p in c]
        check_tokenizer_output(self.output, inputs, self.overwrite)


class _Source:
    def __init__(self, path: str):
        self.path = tokenizer_file(path)
        with open(self.path, encoding="utf-8") as f:
            self.json = json.load(f)
        model = self.json.get("model", {})
        if model.get("type") != "BPE":
            raise ValueError(f"{self.path}: model.type is {model.get('type')!r}, expected 'BPE'")
        if "ByteLevel" not in json.dumps(self.json.get("pre_tokenizer")):
            raise ValueError(f"{self.path}: not a byte-level BPE (no ByteLevel pre-tokenizer)")
        self.vocab: dict[str, int] = model["vocab"]
        self.merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1))
                       for m in model["merges"]]
        self.special = [t["content"] for t in self.json.get("added_tokens", []) if t.get("special")]
        missing = [c for c in bytes_to_unicode().values() if c not in self.vocab]
        if missing:
            raise ValueError(f"{self.path}: byte alphabet incomplete ({len(missing)} bytes missing)")


def merge_application_counts(tokenizer_path: str, merges: list[tuple[str, str]],
                             texts: list[str]) -> Counter:
    """How often each merge (by result token) fires when encoding ``texts``."""
    tok = load_tokenizer(tokenizer_path)
    id2tok = {i: t for t, i in tok.get_vocab(with_added_tokens=False).items()}
    final: Counter = Counter()
    for i in range(0, len(texts), 512):
        for enc in tok.encode_batch(texts[i:i + 512], add_special_tokens=False):
            final.update(enc.ids)
    app: Counter = Counter({id2tok[i]: c for i, c in final.items() if i in id2tok})
    for a, b in reversed(merges):  # children before parents
        n = app.get(a + b, 0)
        if n:
            app[a] += n
            app[b] += n
    return app


def check_closed(vocab: dict[str, int], merges: list[tuple[str, str]]) -> list[str]:
    """Problems that break merge closure (empty list = closed)."""
    problems = []
    base = set(bytes_to_unicode().values())
    made = set()
    for r, (a, b) in enumerate(merges):
        for p in (a, b):
            if p not in base and p not in made:
                problems.append(f"merge {r} ({a!r},{b!r}): parent {p!r} not built before it")
        if a + b not in vocab:
            problems.append(f"merge {r}: result {a + b!r} not in vocab")
        made.add(a + b)
    for t in vocab:
        if t not in base and t not in made:
            problems.append(f"token {t!r} is neither a byte nor a merge result")
    return problems


def merge_tokenizers(cfg: MergeConfig) -> dict:
    from tokenizers import AddedToken, Tokenizer

    cfg.validate()
    t0 = time.perf_counter()
    sources = [_Source(p) for p in cfg.tokenizers]
    pre0 = json.dumps(sources[0].json.get("pre_tokenizer"), sort_keys=True)
    for s in sources[1:]:
        if json.dumps(s.json.get("pre_tokenizer"), sort_keys=True) != pre0:
            raise ValueError(f"{s.path}: pre_tokenizer differs from {sources[0].path}")
    weights = cfg.weights or [1.0] * len(sources)

    score: dict[tuple[str, str], float] = defaultdict(float)
    relrank: dict[tuple[str, str], tuple[float, int]] = {}
    for k, s in enumerate(sources):
        n = len(s.merges)
        if cfg.corpora is not None:
            texts = []
            for t in iter_texts(cfg.corpora[k], cfg.text_key):
                texts.append(t)
                if cfg.max_docs and len(texts) >= cfg.max_docs:
                    break
            if not texts:
                raise ValueError(f"corpus for {s.path}: no documents in {cfg.corpora[k]}")
            app = merge_application_counts(s.path, s.merges, texts)
            total = sum(app.values()) or 1
            for m in s.merges:
                score[m] += weights[k] * app.get(m[0] + m[1], 0) / total
        else:
            for r, m in enumerate(s.merges):
                score[m] += weights[k] * (1.0 - r / n)
        for r, m in enumerate(s.merges):
            key = (r / n, k)
            if m not in relrank or key < relrank[m]:
                relrank[m] = key

    specials: list[str] = []
    for s in sources:
        for t in s.special:
            if t not in specials and not t.startswith("<|reserved_special_token_"):
                specials.append(t)
    for t in cfg.extra_special_tokens:
        if t not in specials:
            specials.append(t)
    base = list(bytes_to_unicode().values())
    budget = cfg.target_vocab_size - len(base) - len(specials)
    if budget <= 0:
        raise ValueError(f"MergeConfig.target_vocab_size: {cfg.target_vocab_size} too small")

    # Greedy, closure-preserving selection.
    avail = set(base)
    forced = [m for m in relrank if _is_single_char(m[0] + m[1])]
    order = sorted(relrank, key=lambda m: (-score[m], relrank[m]))
    kept: list[tuple[str, str]] = []
    kept_set: set = set()
    waiting: dict[str, list[tuple[str, str]]] = defaultdict(list)

    n_base = len(avail)

    def full() -> bool:  # budget counts distinct tokens: two sources may build one token
        return len(avail) - n_base >= budget  # by different merges (both merges are kept)

    def try_accept(m) -> None:
        stack = [m]
        while stack:
            m = stack.pop()
            if m in kept_set or (full() and (m[0] + m[1]) not in avail):
                continue
            missing = [p for p in m if p not in avail]
            if missing:
                waiting[missing[0]].append(m)
                continue
            kept.append(m)
            kept_set.add(m)
            res = m[0] + m[1]
            avail.add(res)
            stack.extend(waiting.pop(res, []))

    for m in sorted(forced, key=lambda m: relrank[m]):
        try_accept(m)
    for m in order:
        if full() and (m[0] + m[1]) not in avail:
            continue  # only merges adding no token (alternative producers) still fit
        try_accept(m)

    final = sorted(kept, key=lambda m: relrank[m])
    vocab = {t: i for i, t in enumerate(base)}
    for a, b in final:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    problems = check_closed(vocab, final)
    if problems:
        raise RuntimeError("internal: merged tokenizer is not closed: " + "; ".join(problems[:5]))

    out = json.loads(json.dumps(sources[0].json))
    out["added_tokens"] = []
    out["model"]["vocab"] = vocab
    out["model"]["merges"] = [list(m) for m in final]
    tok = Tokenizer.from_str(json.dumps(out))
    fill = cfg.target_vocab_size - tok.get_vocab_size() - len(specials)
    all_special = specials + [f"<|reserved_special_token_{i}|>" for i in range(fill)]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in all_special])
    if tok.get_vocab_size() != cfg.target_vocab_size:
        raise RuntimeError(f"internal: {tok.get_vocab_size()} != {cfg.target_vocab_size}")
    write_tokenizer_dir(tok, all_special, cfg.output, overwrite=cfg.overwrite)

    per_source = []
    sets = [set(s.merges) for s in sources]
    for s, sm in zip(sources, sets):
        per_source.append({"path": s.path, "merges": len(s.merges),
                           "kept": sum(1 for m in final if m in sm)})
    return {
        "vocab_size": tok.get_vocab_size(),
        "merges": len(final),
        "union_merges": len(relrank),
        "pruned_merges": len(relrank) - len(final),
        "shared_merges": sum(1 for m in relrank if sum(m in sm for sm in sets) > 1),
        "sources": per_source,
        "special_tokens": len(specials),
        "reserved_filled": fill,
        "scored_by": "corpus" if cfg.corpora is not None else "rank",
        "closed": True,
        "seconds": round(time.perf_counter() - t0, 3),
        "output": cfg.output,
    }


_U2B = {u: b for b, u in bytes_to_unicode().items()}


def _is_single_char(token: str) -> bool:
    try:
        s = bytes(_U2B[c] for c in token).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return False
    return len(s) == 1

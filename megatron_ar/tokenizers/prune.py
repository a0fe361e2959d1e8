"""Vocabulary pruning of a byte-fallback BPE tokenizer (Fanar Prime: Gemma-2 256,000 -> 128,256).

Fanar report, section 6.4. ``tools/prune_vocab.py`` is the CLI over
:func:`prune_vocab`; :mod:`megatron_ar.tokenizers.prune_checkpoint` rewrites the model rows.

What is kept, in this order (the rest is dropped):
1. *Protected* tokens: added/special tokens, the unk token, byte-fallback tokens ``<0x00>`` ..
   ``<0xFF>``, single characters that byte fallback cannot replace (Gemma has a literal ``\\t``
   instead of ``<0x09>``: without it a tab would become ``<unk>``), and pieces the BPE can never
   produce (multi-character, no merge builds them, not added: Gemma's ``<unused99>`` and
   ``[toxicity=0]``, SentencePiece control pieces kept for checkpoint compatibility).
2. Tokens the corpus *uses*, counted over every symbol that exists at any step of BPE on the
   corpus: initial characters, intermediate merge results and final tokens. Final tokens are
   counted fast (``Tokenizer.encode_batch`` + ``numpy.bincount``); the intermediates are
   recovered by replaying BPE on each distinct final token's string (see "losslessness"). If
   more tokens are used than fit, the most used are kept, ordered by (count desc, length, id):
   a token's build parents are produced at least as often as it is and are shorter, so every
   prefix of that order is closed under building.
3. Filled up to the target in the original merge-rank order. Gemma's ids are SentencePiece
   score order, which is its merge order, and ids also order the single-character base tokens,
   which have no merge rank; so the fill takes candidates by old id. Measured on Gemma: of
   234,865 merged tokens only the 30 tab runs (ids 255,969-255,998, merge ranks 931-1,366)
   are out of rank order; by id they come last (kept anyway when the corpus uses them).
   A candidate is eligible only when it can be built: a base (single-character) token, or the
   result of a merge whose two parents are already kept. Keeping a token makes the merges it
   is a parent of eligible (heap).
Merges are kept iff both parents and the result are kept, in their original rank order.

Why the pruned tokenizer is lossless on the corpus (new ids == map(old ids) per document):
HF BPE repeatedly applies the lowest-rank applicable merge (leftmost on ties). If the kept
merges M' are a subset of the original M and contain every merge that BPE *applied* on the
corpus, then at every step the merge chosen under M is applicable and minimal under M' too, so
the merge sequence -- and the result -- is identical. An applied merge's result is an
intermediate or final symbol, hence the need to count intermediates: a token that only ever
exists mid-way must be kept or the word segments differently (seen in the test corpus:
``▁علي`` only on the way to ``▁عليه``, ``urn`` on the way to ``return``; about 18% of the
corpus-kept tokens are intermediate-only, and dropping them breaks losslessness -- tested).
Inside the span of a final token no merge ever crosses the span's boundary, so the merges
applied inside it are exactly those of BPE on the token's own string (the order of the in-span
merges is decided by their ranks alone); replaying BPE on each distinct final token's string
thus recovers every intermediate. The replay must end in the token itself; any that does
not is counted (``trace_mismatches``) and the corpus is re-encoded with both tokenizers to
check the claim end to end (``corpus_lossless``). Text outside the corpus may segment
differently (dropped merges) but still round-trips: every character is either a kept base
token or falls back to kept byte tokens.

New ids: kept tokens are numbered 0..N-1 in increasing old-id order. Gemma's added tokens and
byte tokens are ids 0..472, all protected, so they keep their ids (bos=2, eos=1, pad=0, ...);
the report counts added tokens whose id changed (0 for Gemma). The id map is written as
``id_map.npy``: int32 of length old vocab, ``id_map[old] = new`` or -1 for a dropped token
(``numpy.flatnonzero(id_map >= 0)`` is new -> old).

Trade-offs: the replay is Python, run once per distinct used token (tens of thousands of short
strings, seconds), not per corpus word; corpus counting and verification run in the Rust
tokenizer. Verification reuses the old ids of the counting pass while they fit
``cache_old_ids`` tokens (200 MB at the default); beyond that it re-encodes the corpus with the
old tokenizer too, keeping memory flat for large corpora at the cost of one extra pass.
"""
from __future__ import annotations

import copy
import heapq
import json
import os
import re
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np

from megatron_ar.io.outputs import OutputError, check_dir_output, publish_into_dir, refuse_overlap

__all__ = ["PruneConfig", "PruneResult", "PruneError", "prune_vocab", "load_bpe_tokenizer",
           "select_vocab", "bpe_trace", "build_pruned_tokenizer", "make_id_map"]

_BYTE_RE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "tokenizer.model", "added_tokens.json")
#: What a pruning run owns in its output directory (tokenizer, id map, summary, the pruned HF
#: checkpoint); other files there are never touched (megatron_ar.io.outputs).
_OUTPUT_NAMES = _TOKENIZER_FILES + ("id_map.npy", "prune_summary.json", "config.json",
                                    "generation_config.json", "model.safetensors.index.json")
_OUTPUT_PATTERNS = ("*.safetensors",)


class PruneError(ValueError):
    """Bad configuration or input; the message names the field/file at fault."""


@dataclass
class PruneConfig:
    """Options of a vocabulary pruning run (tokenizer, corpus, target size, output, checkpoint)."""

    tokenizer: str                      # dir with tokenizer.json (or the tokenizer.json path)
    corpus: Sequence[str]               # plain text (doc per line) or JSONL with "text"
    output: str                         # new dir (tokenizer files, id_map.npy, summary)
    target_vocab_size: int = 128256
    checkpoint: Optional[str] = None    # HF safetensors dir to prune into output as well
    heldout: Sequence[str] = ()
    text_key: str = "text"
    batch_docs: int = 512               # documents per encode_batch call
    cache_old_ids: int = 50_000_000     # keep corpus ids (int32) up to this many tokens
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("corpus", "heldout"):  # a single path is a list of one
            if isinstance(getattr(self, name), (str, os.PathLike)):
                setattr(self, name, [os.fspath(getattr(self, name))])

    def validate(self) -> None:
        from megatron_ar.tokenizers.io import split_category_spec

        if not self.corpus:
            raise PruneError("PruneConfig.corpus: at least one corpus file is required")
        for name in ("corpus", "heldout"):
            for spec in getattr(self, name):
                path = split_category_spec(os.fspath(spec))[1]
                if not os.path.isfile(path):
                    raise PruneError(f"PruneConfig.{name}: {path}: no such file")
        if not isinstance(self.target_vocab_size, int) or self.target_vocab_size <= 0:
            raise PruneError(f"PruneConfig.target_vocab_size: must be a positive int, "
                             f"got {self.target_vocab_size!r}")
        if self.cache_old_ids < 0:
            raise PruneError(f"PruneConfig.cache_old_ids: must be >= 0, got {self.cache_old_ids}")
        if self.batch_docs <= 0:
            raise PruneError(f"PruneConfig.batch_docs: must be > 0, got {self.batch_docs}")
        if self.checkpoint is not None and not os.path.isdir(self.checkpoint):
            raise PruneError(f"PruneConfig.checkpoint: {self.checkpoint}: not a directory")
        inputs = [self.tokenizer, self.checkpoint] + [
            split_category_spec(os.fspath(s))[1] for s in (*self.corpus, *self.heldout)]
        try:
            refuse_overlap([self.output], [i for i in inputs if i])
            check_dir_output(self.output, overwrite=self.overwrite, names=_OUTPUT_NAMES,
                             patterns=_OUTPUT_PATTERNS)
        except OutputError as exc:
            raise PruneError(f"PruneConfig.output: {exc}") from None


@dataclass
class PruneResult:
    """What a pruning run kept: the old -> new id map, the new vocabulary and its statistics."""

    vocab_size: int
    original_vocab_size: int
    kept_protected: int
    kept_from_corpus: int
    intermediate_only: int          # kept because BPE passes through them, never final
    filled_by_rank: int
    dropped_used_tokens: int        # corpus tokens that did not fit (0 => lossless possible)
    trace_mismatches: int
    corpus_lossless: bool
    corpus_docs_mismatched: int
    added_tokens_renumbered: int
    merges_kept: int
    id_map: str
    output: str
    corpus: dict = field(default_factory=dict)
    heldout: Optional[dict] = None
    checkpoint: Optional[dict] = None
    seconds: dict = field(default_factory=dict)
    peak_rss_mb: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- tokenizer model


@dataclass
class BpeModel:
    """The parts of a tokenizer.json BPE model that pruning needs, as id arrays."""
    tj: dict                        # the full tokenizer.json
    tokens: list[str]               # id -> token string
    vocab: dict[str, int]
    merge_left: np.ndarray          # int64 per merge rank
    merge_right: np.ndarray
    merge_result: np.ndarray
    pair_rank: dict[int, int]       # left*V+right -> rank*V+result (packed: cheap to store)
    added_ids: list[int]
    byte_ids: dict[int, int]        # byte value -> id
    unk_id: Optional[int]
    model_size: int = 0             # ids in model.vocab; added tokens may follow them

    @property
    def size(self) -> int:
        return len(self.tokens)


def load_bpe_tokenizer(path: str) -> BpeModel:
    """Read a tokenizer.json (path or dir) with a BPE model; merges as "a b" or [a, b]."""
    from megatron_ar.tokenizers.io import tokenizer_file

    try:
        tj_path = tokenizer_file(path)
    except FileNotFoundError as e:
        raise PruneError(f"PruneConfig.tokenizer: {e}") from None
    try:
        with open(tj_path, encoding="utf-8") as f:
            tj = json.load(f)
    except json.JSONDecodeError as e:
        raise PruneError(f"{tj_path}: invalid JSON ({e})") from None
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise PruneError(f"{tj_path}: model.type is {model.get('type')!r}; only BPE is supported")
    vocab = model["vocab"]
    V = len(vocab)
    tokens = [""] * V
    for s, i in vocab.items():
        if not 0 <= i < V or tokens[i]:
            raise PruneError(f"{tj_path}: model.vocab ids are not a permutation of 0..{V - 1} "
                             f"(token {s!r} -> {i})")
        tokens[i] = s
    raw = model["merges"]
    pairs = [mg.split(" ") if isinstance(mg, str) else list(mg) for mg in raw]
    for r, pr in enumerate(pairs):
        if len(pr) != 2:  # a token holding a space: split where both sides are tokens
            mg = raw[r]
            cands = [[mg[:i], mg[i + 1:]] for i, ch in enumerate(mg)
                     if ch == " " and mg[:i] in vocab and mg[i + 1:] in vocab]
            if len(cands) != 1:
                raise PruneError(f"{tj_path}: model.merges[{r}] {mg!r} is ambiguous or unknown")
            pairs[r] = cands[0]
    lefts = [pr[0] for pr in pairs]
    rights = [pr[1] for pr in pairs]
    try:
        left = np.array(list(map(vocab.__getitem__, lefts)), np.int64)
        right = np.array(list(map(vocab.__getitem__, rights)), np.int64)
        result = np.array(list(map(vocab.__getitem__, map(str.__add__, lefts, rights))), np.int64)
    except KeyError:
        r = next(r for r, (a, b) in enumerate(zip(lefts, rights))
                 if a not in vocab or b not in vocab or a + b not in vocab)
        raise PruneError(f"{tj_path}: model.merges[{r}] {raw[r]!r} references "
                         f"unknown tokens") from None
    ranks = np.arange(len(lefts), dtype=np.int64)
    # reversed so that the first (lowest-rank) occurrence of a duplicate pair wins, as in HF
    pair_rank = dict(zip((left * V + right)[::-1].tolist(), (ranks * V + result)[::-1].tolist()))
    added_ids = sorted(int(a["id"]) for a in tj.get("added_tokens") or [])
    # Added tokens may lie outside model.vocab, after it (Llama-3: 128,000 BPE ids, then 256
    # specials; our train_tokenizer's layout too): they extend the id space, contiguously.
    beyond = {int(a["id"]): a["content"] for a in tj.get("added_tokens") or []
              if int(a["id"]) >= V}
    if beyond:
        if sorted(beyond) != list(range(V, V + len(beyond))):
            raise PruneError(f"{tj_path}: added_tokens outside model.vocab must follow it "
                             f"contiguously from id {V}; got ids {sorted(beyond)[:5]}...")
        tokens += [beyond[i] for i in range(V, V + len(beyond))]
    byte_ids = {}
    if model.get("byte_fallback"):
        for i, s in enumerate(tokens):
            m = _BYTE_RE.match(s)
            if m:
                byte_ids[int(m.group(1), 16)] = i
    unk = model.get("unk_token")
    return BpeModel(tj, tokens, vocab, left, right, result, pair_rank, added_ids, byte_ids,
                    vocab.get(unk) if unk is not None else None, model_size=V)


def bpe_trace(m: BpeModel, s: str) -> tuple[list[int], list[int]]:
    """Replay HF BPE on string ``s`` (already normalized): returns (symbols that existed at any
    step -- initial ones and every merge result, final ones included -- , final ids)."""
    V = m.model_size  # pair_rank packs ids of model.vocab
    syms: list[int] = []
    for ch in s:
        i = m.vocab.get(ch)
        if i is not None:
            syms.append(i)
        else:  # byte fallback (or unk): these are protected, never pruned
            syms.extend(m.byte_ids.get(b, m.unk_id if m.unk_id is not None else -1)
                        for b in ch.encode("utf-8"))
    seen = list(syms)
    pr = m.pair_rank
    while len(syms) > 1:
        best, best_i = None, -1
        for i in range(len(syms) - 1):
            v = pr.get(syms[i] * V + syms[i + 1])
            if v is not None and (best is None or v < best):  # strict <: leftmost on ties
                best, best_i = v, i
        if best is None:
            break
        res = best % V
        syms[best_i:best_i + 2] = [res]
        seen.append(res)
    return seen, syms


# ----------------------------------------------------------------------------- selection


def _protected(m: BpeModel) -> np.ndarray:
    V = m.size
    prot = np.zeros(V, bool)
    prot[m.added_ids] = True
    prot[list(m.byte_ids.values())] = True
    if m.unk_id is not None:
        prot[m.unk_id] = True
    produced = np.zeros(V, bool)
    produced[m.merge_result] = True
    for i, s in enumerate(m.tokens):
        if len(s) == 1:
            if not all(b in m.byte_ids for b in s.encode("utf-8")):
                prot[i] = True  # no byte fallback for it: dropping would produce <unk>
        elif not produced[i]:
            prot[i] = True  # BPE can never produce it (control/user-defined piece)
    return prot


@dataclass
class Selection:
    """The tokens chosen to keep, with the reason each was kept (special, used, intermediate merge)."""

    keep: np.ndarray                # bool per old id
    protected: int
    from_corpus: int
    intermediate_only: int
    filled: int
    dropped_used: int
    trace_mismatches: int


def select_vocab(m: BpeModel, final_counts: np.ndarray, target: int,
                 progress: bool = False) -> Selection:
    """Choose the kept token set from corpus final-token counts (see module docstring)."""
    from tqdm import tqdm

    V = m.size
    if target > V:
        raise PruneError(f"PruneConfig.target_vocab_size: {target} > original vocabulary {V}")
    prot = _protected(m)
    if target < prot.sum():
        raise PruneError(f"PruneConfig.target_vocab_size: {target} < {int(prot.sum())} "
                         f"protected (special, byte, control) tokens")
    produced = np.zeros(V, np.int64)   # occurrences as initial, intermediate or final symbol
    produced += final_counts
    mismatches = 0
    used = np.flatnonzero((final_counts > 0) & ~prot)
    for u in tqdm(used, desc="replay BPE", unit="tok", disable=not progress, leave=False):
        s = m.tokens[u]
        if len(s) == 1:
            continue
        seen, final = bpe_trace(m, s)
        if final != [u]:
            mismatches += 1
        seen.pop()  # the final token itself is already in final_counts
        np.add.at(produced, np.asarray(seen, np.int64), final_counts[u])
    cand = np.flatnonzero((produced > 0) & ~prot)
    budget = target - int(prot.sum())
    keep = prot.copy()
    if len(cand) > budget:
        lengths = np.fromiter((len(m.tokens[i]) for i in cand), np.int64, len(cand))
        order = np.lexsort((cand, lengths, -produced[cand]))
        chosen = cand[order[:budget]]
    else:
        chosen = cand
    keep[chosen] = True
    from_corpus = len(chosen)
    inter_only = int(((final_counts[chosen] == 0)).sum())
    dropped_used = int(len(cand) - len(chosen))

    # fill by rank (= old id, see docstring) among buildable tokens
    filled = 0
    need = target - int(keep.sum())
    if need > 0:
        order = np.argsort(np.concatenate([m.merge_left, m.merge_right]), kind="stable")
        parents = np.concatenate([m.merge_left, m.merge_right])[order]
        merge_of = np.concatenate([np.arange(len(m.merge_left))] * 2)[order]
        starts = np.searchsorted(parents, np.arange(V + 1))
        ok = keep[m.merge_left] & keep[m.merge_right] & ~keep[m.merge_result]
        heap = sorted(set(m.merge_result[ok].tolist())
                      | {i for i, s in enumerate(m.tokens) if len(s) == 1 and not keep[i]})
        heapq.heapify(heap)
        while need > 0 and heap:
            t = heapq.heappop(heap)
            if keep[t]:
                continue
            keep[t] = True
            filled += 1
            need -= 1
            for j in merge_of[starts[t]:starts[t + 1]]:
                r = m.merge_result[j]
                if not keep[r] and keep[m.merge_left[j]] and keep[m.merge_right[j]]:
                    heapq.heappush(heap, int(r))
        if need > 0:
            raise PruneError(f"PruneConfig.target_vocab_size: only {int(keep.sum())} tokens "
                             f"are buildable, cannot reach {target}")
    return Selection(keep, int(prot.sum()), from_corpus, inter_only, filled, dropped_used,
                     mismatches)


# ----------------------------------------------------------------------------- writing


def _remap_post_processor(pp, id_map: np.ndarray):
    if isinstance(pp, dict):
        if isinstance(pp.get("special_tokens"), dict):
            for v in pp["special_tokens"].values():
                v["ids"] = [int(id_map[i]) for i in v.get("ids", [])]
        for key in ("sep", "cls"):  # Bert/Roberta processors: [token, id]
            if isinstance(pp.get(key), list) and len(pp[key]) == 2:
                pp[key] = [pp[key][0], int(id_map[pp[key][1]])]
        for sub in pp.get("processors") or []:
            _remap_post_processor(sub, id_map)


def _new_tokenizer_json(m: BpeModel, keep: np.ndarray, id_map: np.ndarray) -> tuple[dict, int]:
    tj = copy.deepcopy({k: v for k, v in m.tj.items() if k != "model"})
    model = {k: v for k, v in m.tj["model"].items() if k not in ("vocab", "merges")}
    kept_ids = np.flatnonzero(keep[:m.model_size])  # added tokens beyond it stay added only
    model["vocab"] = {m.tokens[i]: int(id_map[i]) for i in kept_ids}
    mk = keep[m.merge_left] & keep[m.merge_right] & keep[m.merge_result]
    # pairs, not "a b" strings: unambiguous even for tokens holding spaces (tokenizers >= 0.20)
    model["merges"] = [[m.tokens[a], m.tokens[b]]
                       for a, b in zip(m.merge_left[mk].tolist(), m.merge_right[mk].tolist())]
    tj["model"] = model
    renumbered = 0
    for a in tj.get("added_tokens") or []:
        new = int(id_map[a["id"]])
        renumbered += new != a["id"]
        a["id"] = new
    _remap_post_processor(tj.get("post_processor"), id_map)
    return tj, renumbered


def make_id_map(keep: np.ndarray) -> np.ndarray:
    """old id -> new id (-1 dropped): kept tokens numbered in increasing old-id order."""
    id_map = np.full(len(keep), -1, np.int32)
    id_map[keep] = np.arange(int(keep.sum()), dtype=np.int32)
    return id_map


def build_pruned_tokenizer(m: BpeModel, keep: np.ndarray):
    """In-memory ``tokenizers.Tokenizer`` keeping the tokens ``keep`` (bool per old id), and
    its id map. Merges are kept iff both parents and the result are kept."""
    from tokenizers import Tokenizer

    id_map = make_id_map(keep)
    tj, _ = _new_tokenizer_json(m, keep, id_map)
    return Tokenizer.from_str(json.dumps(tj, ensure_ascii=False)), id_map


def _write_tokenizer(m: BpeModel, src_dir: Optional[str], out: str, keep: np.ndarray,
                     id_map: np.ndarray):
    """Write tokenizer.json/tokenizer_config.json/special_tokens_map.json into ``out``;
    returns (the new Tokenizer, added tokens renumbered, merges kept)."""
    from tokenizers import Tokenizer

    tj, renumbered = _new_tokenizer_json(m, keep, id_map)
    text = json.dumps(tj, ensure_ascii=False)
    tok = Tokenizer.from_str(text)  # tokenizers validates it before anything is written
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(text)
    cfg = {}
    if src_dir and os.path.isfile(os.path.join(src_dir, "tokenizer_config.json")):
        with open(os.path.join(src_dir, "tokenizer_config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        dec = cfg.get("added_tokens_decoder")
        if isinstance(dec, dict):
            cfg["added_tokens_decoder"] = {str(int(id_map[int(k)])): v for k, v in dec.items()
                                           if id_map[int(k)] >= 0}
        cfg.pop("vocab_file", None)  # a stale SentencePiece model must not be looked for
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
    stm_src = os.path.join(src_dir, "special_tokens_map.json") if src_dir else None
    if stm_src and os.path.isfile(stm_src):
        shutil.copy2(stm_src, os.path.join(out, "special_tokens_map.json"))
    else:
        stm = {k: cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token",
                                   "additional_special_tokens") if cfg.get(k)}
        with open(os.path.join(out, "special_tokens_map.json"), "w", encoding="utf-8") as f:
            json.dump(stm, f, indent=2, ensure_ascii=False)
    return tok, renumbered, int(len(tj["model"]["merges"]))


# ----------------------------------------------------------------------------- corpus passes


def _batches(paths: Sequence[str], text_key: str, n: int) -> Iterator[list[str]]:
    from megatron_ar.tokenizers.io import iter_texts

    batch: list[str] = []
    for t in iter_texts(list(paths), text_key):
        batch.append(t)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _ids(encs) -> list[np.ndarray]:
    return [np.asarray(e.ids, dtype=np.int64) for e in encs]


def _count_pass(tok, cfg: PruneConfig, V: int) -> tuple[np.ndarray, dict, Optional[list]]:
    """Final-token counts; also the per-batch old ids while they fit ``cfg.cache_old_ids``
    tokens (int32), so the verification pass need not encode the corpus with the old
    tokenizer again. Larger corpora are re-encoded instead (memory stays flat)."""
    from tqdm import tqdm

    counts = np.zeros(V, np.int64)
    st = {"docs": 0, "words": 0, "chars": 0}
    cache: Optional[list] = []
    cached = 0
    with tqdm(desc="count (original tokenizer)", unit="doc", disable=not cfg.progress) as bar:
        for batch in _batches(cfg.corpus, cfg.text_key, cfg.batch_docs):
            ids = _ids(tok.encode_batch(batch, add_special_tokens=False))
            if ids:
                counts += np.bincount(np.concatenate(ids), minlength=V)
            if cache is not None:
                cached += sum(len(i) for i in ids)
                if cached <= cfg.cache_old_ids:
                    cache.append([i.astype(np.int32) for i in ids])
                else:
                    cache = None  # too big: the verification pass re-encodes instead
            st["docs"] += len(batch)
            st["words"] += sum(len(t.split()) for t in batch)
            st["chars"] += sum(len(t) for t in batch)
            bar.update(len(batch))
    if st["docs"] == 0:
        raise PruneError(f"PruneConfig.corpus: no documents in {list(cfg.corpus)}")
    return counts, st, cache


def _compare_pass(old_tok, new_tok, paths, cfg: PruneConfig, id_map: np.ndarray,
                  byte_ids: np.ndarray, desc: str, roundtrip: bool,
                  old_cache: Optional[list] = None) -> dict:
    """Encode ``paths`` with both tokenizers (old ids from ``old_cache`` when given, one list
    per batch): token counts, coverage, documents whose new ids differ from map(old ids)."""
    from tqdm import tqdm

    st = {"docs": 0, "words": 0, "chars": 0, "tokens_before": 0, "tokens_after": 0,
          "tokens_kept_before": 0, "byte_tokens_before": 0, "byte_tokens_after": 0,
          "docs_mismatched": 0, "first_mismatch": None}
    if roundtrip:
        st.update(roundtrip_ok_before=0, roundtrip_ok_after=0, first_roundtrip_failure=None)
    isbyte = np.zeros(len(id_map), bool)
    isbyte[byte_ids] = True
    isbyte_new = isbyte[np.flatnonzero(id_map >= 0)]
    with tqdm(desc=desc, unit="doc", disable=not cfg.progress) as bar:
        for b, batch in enumerate(_batches(paths, cfg.text_key, cfg.batch_docs)):
            olds = (old_cache[b] if old_cache is not None
                    else _ids(old_tok.encode_batch(batch, add_special_tokens=False)))
            news = _ids(new_tok.encode_batch(batch, add_special_tokens=False))
            for k, (o, n) in enumerate(zip(olds, news)):
                mapped = id_map[o]
                st["tokens_before"] += len(o)
                st["tokens_after"] += len(n)
                st["tokens_kept_before"] += int((mapped >= 0).sum())
                st["byte_tokens_before"] += int(isbyte[o].sum())
                st["byte_tokens_after"] += int(isbyte_new[n].sum())
                if len(o) != len(n) or not np.array_equal(mapped, n):
                    st["docs_mismatched"] += 1
                    if st["first_mismatch"] is None:
                        st["first_mismatch"] = {"doc": st["docs"] + k, "text": batch[k][:200]}
            if roundtrip:
                dec_old = old_tok.decode_batch([o.tolist() for o in olds],
                                               skip_special_tokens=False)
                dec_new = new_tok.decode_batch([n.tolist() for n in news],
                                               skip_special_tokens=False)
                for k, t in enumerate(batch):
                    st["roundtrip_ok_before"] += dec_old[k] == t
                    st["roundtrip_ok_after"] += dec_new[k] == t
                    if dec_new[k] != t and st["first_roundtrip_failure"] is None:
                        st["first_roundtrip_failure"] = {"doc": st["docs"] + k, "text": t[:200]}
            st["docs"] += len(batch)
            st["words"] += sum(len(t.split()) for t in batch)
            st["chars"] += sum(len(t) for t in batch)
            bar.update(len(batch))
    w = max(1, st["words"])
    tb = max(1, st["tokens_before"])
    st["tokens_per_word_before"] = st["tokens_before"] / w
    st["tokens_per_word_after"] = st["tokens_after"] / w
    st["coverage"] = st["tokens_kept_before"] / tb  # share of original tokens still in vocab
    st["byte_fallback_rate_before"] = st["byte_tokens_before"] / tb
    st["byte_fallback_rate_after"] = st["byte_tokens_after"] / max(1, st["tokens_after"])
    return st


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# ----------------------------------------------------------------------------- entry point


def prune_vocab(cfg: PruneConfig) -> PruneResult:
    """Prune ``cfg.tokenizer`` to ``cfg.target_vocab_size`` tokens chosen on ``cfg.corpus``;
    write ``cfg.output`` (tokenizer.json, tokenizer_config.json, special_tokens_map.json,
    id_map.npy, prune_summary.json, and with ``cfg.checkpoint`` the pruned HF checkpoint), all
    at once by renaming a temporary directory."""
    from megatron_ar.tokenizers.io import load_tokenizer

    cfg.validate()
    secs: dict[str, float] = {}
    t0 = time.perf_counter()
    src_dir = cfg.tokenizer if os.path.isdir(cfg.tokenizer) else os.path.dirname(cfg.tokenizer)
    m = load_bpe_tokenizer(cfg.tokenizer)
    if cfg.target_vocab_size > m.size:
        raise PruneError(f"PruneConfig.target_vocab_size: {cfg.target_vocab_size} > original "
                         f"vocabulary {m.size}")
    old_tok = load_tokenizer(cfg.tokenizer)
    secs["load"] = time.perf_counter() - t0

    t = time.perf_counter()
    counts, _, old_cache = _count_pass(old_tok, cfg, m.size)
    secs["count"] = time.perf_counter() - t

    t = time.perf_counter()
    sel = select_vocab(m, counts, cfg.target_vocab_size, cfg.progress)
    id_map = make_id_map(sel.keep)
    secs["select"] = time.perf_counter() - t

    out = os.path.abspath(cfg.output)
    with publish_into_dir(out, overwrite=cfg.overwrite, names=_OUTPUT_NAMES,
                          patterns=_OUTPUT_PATTERNS) as tmp:
        t = time.perf_counter()
        new_tok, renumbered, n_merges = _write_tokenizer(m, src_dir, tmp, sel.keep, id_map)
        np.save(os.path.join(tmp, "id_map.npy"), id_map)
        secs["write_tokenizer"] = time.perf_counter() - t

        byte_ids = np.asarray(sorted(m.byte_ids.values()), np.int64)
        t = time.perf_counter()
        corpus_st = _compare_pass(old_tok, new_tok, cfg.corpus, cfg, id_map, byte_ids,
                                  "verify corpus (old vs new)", roundtrip=False,
                                  old_cache=old_cache)
        del old_cache
        secs["verify_corpus"] = time.perf_counter() - t
        heldout_st = None
        if cfg.heldout:
            t = time.perf_counter()
            heldout_st = _compare_pass(old_tok, new_tok, cfg.heldout, cfg, id_map, byte_ids,
                                       "held-out (old vs new)", roundtrip=True)
            secs["heldout"] = time.perf_counter() - t

        ckpt = None
        if cfg.checkpoint:
            from megatron_ar.tokenizers.prune_checkpoint import prune_checkpoint

            t = time.perf_counter()
            ckpt = prune_checkpoint(cfg.checkpoint, tmp, id_map, skip_files=_TOKENIZER_FILES,
                                    progress=cfg.progress)
            ckpt["source"] = os.path.abspath(cfg.checkpoint)
            secs["checkpoint"] = time.perf_counter() - t
        secs["total"] = time.perf_counter() - t0

        res = PruneResult(
            vocab_size=int(sel.keep.sum()), original_vocab_size=m.size,
            kept_protected=sel.protected, kept_from_corpus=sel.from_corpus,
            intermediate_only=sel.intermediate_only, filled_by_rank=sel.filled,
            dropped_used_tokens=sel.dropped_used, trace_mismatches=sel.trace_mismatches,
            corpus_lossless=corpus_st["docs_mismatched"] == 0,
            corpus_docs_mismatched=corpus_st["docs_mismatched"],
            added_tokens_renumbered=renumbered, merges_kept=n_merges,
            id_map=os.path.join(out, "id_map.npy"), output=out, corpus=corpus_st,
            heldout=heldout_st, checkpoint=ckpt,
            seconds={k: round(v, 3) for k, v in secs.items()}, peak_rss_mb=_peak_rss_mb())
        with open(os.path.join(tmp, "prune_summary.json"), "w", encoding="utf-8") as f:
            json.dump(res.to_json(), f, indent=2, ensure_ascii=False)
    return res

"""MorphBPE and plain byte-level BPE training on the HF ``tokenizers`` trainer.

MorphBPE (Fanar report section 5, Algorithm 1): words are segmented into morphemes first, and
BPE counts pairs and merges only *inside* a morpheme.

Design choices:
- **No new merge loop.** The Rust ``tokenizers`` BpeTrainer already counts pairs per pre-token
  and never merges across pre-tokens. So MorphBPE = feed it text whose Arabic words carry an
  invisible boundary mark between morphemes, with a *training* pre-tokenizer that splits (and
  removes) that mark first. Every learned token therefore lies inside one morpheme of the
  training segmentation, by construction, at the trainer's native speed. Python only
  segments each distinct word type once (memoized) and substitutes the marks with one regex
  pass per document.
- **Run-time encoding needs no segmenter.** After training, the mark split is dropped from the
  pre-tokenizer; the saved ``tokenizer.json`` is a standard byte-level BPE that
  ``tokenizers.Tokenizer.from_file`` / ``PreTrainedTokenizerFast`` load with no custom code.
  Trade-off (stated honestly): at run time BPE applies the learned merges to whole words, so
  a token *can* span a morpheme boundary of the run-time text when a merge learned inside an
  unsegmented morpheme elsewhere matches across it (e.g. a token ``Ġوج`` learned from the
  unsplit ``وجد`` fires on ``و+جدار``). The guarantee is on the *learned vocabulary* w.r.t. the
  training segmentation; run-time alignment is measured (Morphological Alignment Score, see
  :mod:`megatron_ar.tokenizers.evaluate`), not guaranteed. A segmenting pre-tokenizer would
  guarantee it but would need custom code at load time (a tokenizer.json that plain
  `tokenizers`/`transformers` cannot load), which we rule out.
- **Byte-level BPE** (GPT-2 byte alphabet): any text (emoji, Chinese) encodes, and
  decode(encode(x)) == x; no normalizer at run time so the round trip is exact.
- **Pre-tokenization** splits letter runs *including combining marks* (``\\p{L}\\p{M}``), so a
  diacritized Arabic word stays one pre-token rather than being cut at every haraka (the GPT-2
  regex treats marks as punctuation).
- **Diacritics in the vocabulary although training text is normalized without them**
  (Fanar): the training text has tashkeel/tatweel stripped; afterwards one merge per diacritic
  (its two UTF-8 bytes) is appended at the lowest priority. Those byte pairs occur in no other
  character, so the appended merges cannot change how undiacritized text is encoded.
- **Vocabulary size is a multiple of 1024** (Fanar: 75 x 1024 = 76,800) = learned tokens +
  diacritic merges + special tokens (BOS/EOS/pad, chat headers, multimodal placeholders) +
  ``reserved`` placeholders; if the corpus is too small to learn the requested number of merges
  the remainder is filled with further reserved tokens, so the size is always exact.
- **--sample category=ratio**: categories are found by :mod:`megatron_ar.tokenizers.io`; the
  counting pass measures characters per category and each document of category c is kept with
  probability ``ratio_c * T / chars_c`` where T is the largest total the inputs can supply at
  those ratios (seeded, identical in both passes).
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Optional

from megatron_ar.io.outputs import check_dir_output, publish_into_dir, refuse_overlap

from .io import iter_texts_with_category, split_category_spec
from .segmenter import ARABIC_WORD_RE, DIACRITICS, get_segmenter, strip_diacritics

__all__ = [
    "TrainConfig",
    "train_tokenizer",
    "DEFAULT_SPECIAL_TOKENS",
    "PRETOKENIZE_PATTERN",
    "MORPH_MARK",
    "bytes_to_unicode",
    "runtime_pre_tokenizer",
    "parse_sample_specs",
    "write_tokenizer_dir",
]

# Boundary mark between morphemes in the training stream (a private-use code point; removed
# from input text first so real text can never produce it).
MORPH_MARK = "\ue000"
# Llama-3-like split, with combining marks (\p{M}) kept inside letter runs.
PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{M}\p{N}]?[\p{L}\p{M}]+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
DEFAULT_SPECIAL_TOKENS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<|image|>", "<|audio|>",
)
ALGORITHMS = ("bpe", "morph-bpe")


@dataclass
class TrainConfig:
    """Options of one tokenizer training run (inputs and categories, algorithm, vocabulary size,
    segmenter, special tokens, sampling, seed)."""

    inputs: list[str]
    output: str
    algorithm: str = "morph-bpe"
    vocab_size: int = 32768
    segmenter: str = "builtin"
    special_tokens: tuple[str, ...] = DEFAULT_SPECIAL_TOKENS
    reserved: int = 64
    # Layout: the learned (BPE) ids come first. ``model_vocab_size`` caps them (the rest up to
    # ``vocab_size`` becomes reserved slots); ``specials_at_top`` puts the special tokens at the
    # very end, after the reserved slots (autoresearch-v2's 32,768: BPE 0-31999, reserved from
    # 32000, 12 specials at 32756-32767), instead of right after the learned ids (Llama-3's).
    model_vocab_size: Optional[int] = None
    specials_at_top: bool = False
    sample: dict[str, float] = field(default_factory=dict)
    min_frequency: int = 2
    max_chars: Optional[int] = None
    seed: int = 0
    text_key: str = "text"
    show_progress: bool = True
    overwrite: bool = False

    def validate(self) -> None:
        if not self.inputs:
            raise ValueError("TrainConfig.inputs: at least one input file is required")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"TrainConfig.algorithm: {self.algorithm!r} not in {ALGORITHMS}")
        if self.vocab_size <= 0 or self.vocab_size % 1024:
            raise ValueError(
                f"TrainConfig.vocab_size: {self.vocab_size} is not a positive multiple of 1024"
                " (e.g. 76800 = 75 x 1024)"
            )
        if self.reserved < 0:
            raise ValueError(f"TrainConfig.reserved: must be >= 0, got {self.reserved}")
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError("TrainConfig.special_tokens: duplicates")
        floor = 256 + len(DIACRITICS) + len(self.special_tokens) + self.reserved
        if self.vocab_size <= floor:
            raise ValueError(
                f"TrainConfig.vocab_size: {self.vocab_size} leaves no room for merges "
                f"(256 bytes + {len(DIACRITICS)} diacritics + {len(self.special_tokens)} special"
                f" + {self.reserved} reserved = {floor})"
            )
        if self.model_vocab_size is not None:
            low = 256 + len(DIACRITICS)
            high = self.vocab_size - len(self.special_tokens) - self.reserved
            if not (isinstance(self.model_vocab_size, int) and low < self.model_vocab_size <= high):
                raise ValueError(
                    f"TrainConfig.model_vocab_size: must be in ({low}, {high}] (vocab_size "
                    f"{self.vocab_size} - {len(self.special_tokens)} special - {self.reserved} "
                    f"reserved), got {self.model_vocab_size!r}")
        for cat, r in self.sample.items():
            if not (r > 0 and math.isfinite(r)):
                raise ValueError(f"TrainConfig.sample[{cat!r}]: ratio must be > 0, got {r}")
        if self.min_frequency < 1:
            raise ValueError(f"TrainConfig.min_frequency: must be >= 1, got {self.min_frequency}")
        check_tokenizer_output(self.output, self.inputs, self.overwrite)


def parse_sample_specs(specs: list[str]) -> dict[str, float]:
    """``['ar=0.35', 'en=0.3']`` -> ratios normalized to sum 1."""
    out: dict[str, float] = {}
    for s in specs or []:
        cat, sep, val = s.partition("=")
        if not sep or not cat:
            raise ValueError(f"--sample {s!r}: expected CATEGORY=RATIO")
        try:
            out[cat] = float(val)
        except ValueError:
            raise ValueError(f"--sample {s!r}: ratio {val!r} is not a number") from None
        if not out[cat] > 0:
            raise ValueError(f"--sample {s!r}: ratio must be > 0")
    total = sum(out.values())
    return {k: v / total for k, v in out.items()}


def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte -> printable character table used by the ByteLevel pre-tokenizer."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def runtime_pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def _training_pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(MORPH_MARK), behavior="removed"),
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def _normalize(text: str) -> str:
    if MORPH_MARK in text:
        text = text.replace(MORPH_MARK, "")
    return strip_diacritics(text)


class _Corpus:
    """Two-pass view of the inputs: counting pass, then the (sampled, segmented) stream."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.chars_by_cat: Counter = Counter()
        self.docs_by_cat: Counter = Counter()
        self.word_counts: Counter = Counter()
        self.keep_prob: dict[str, float] = {}
        self.n_docs = 0

    def _docs(self):
        return iter_texts_with_category(self.cfg.inputs, self.cfg.text_key)

    def count(self, need_words: bool) -> None:
        from tqdm import tqdm

        for text, cat in tqdm(self._docs(), desc="count", unit="doc", disable=not self.cfg.show_progress):
            self.n_docs += 1
            self.chars_by_cat[cat] += len(text)
            self.docs_by_cat[cat] += 1
            if need_words:
                self.word_counts.update(ARABIC_WORD_RE.findall(_normalize(text)))
        self._plan_sampling()

    def _plan_sampling(self) -> None:
        cfg = self.cfg
        total_chars = sum(self.chars_by_cat.values())
        if not cfg.sample:
            frac = 1.0 if not cfg.max_chars else min(1.0, cfg.max_chars / max(1, total_chars))
            self.keep_prob = {c: frac for c in self.chars_by_cat}
            return
        missing = [c for c in cfg.sample if self.chars_by_cat.get(c, 0) == 0]
        if missing:
            raise ValueError(
                f"--sample: categories {missing} have no text in the inputs (found: "
                f"{sorted(self.chars_by_cat)}); see megatron_ar/tokenizers/io.py for how "
                "categories are read"
            )
        budget = min(self.chars_by_cat[c] / r for c, r in cfg.sample.items())
        if cfg.max_chars:
            budget = min(budget, cfg.max_chars)
        self.keep_prob = {c: min(1.0, r * budget / self.chars_by_cat[c]) for c, r in cfg.sample.items()}

    def stream(self, segmap: Optional[dict[str, str]], stats: Counter) -> Iterator[str]:
        rng = random.Random(self.cfg.seed)
        sub = (lambda m: segmap.get(m[0], m[0])) if segmap else None
        for text, cat in self._docs():
            p = self.keep_prob.get(cat, 1.0 if not self.cfg.sample else 0.0)
            if p < 1.0 and rng.random() >= p:
                continue
            stats[cat] += len(text)
            text = _normalize(text)
            if sub is not None:
                text = ARABIC_WORD_RE.sub(sub, text)
            yield text


def _build_segmap(cfg: TrainConfig, word_counts: Counter) -> dict[str, str]:
    from tqdm import tqdm

    seg = get_segmenter(cfg.segmenter)
    seg.fit(word_counts)
    segmap = {}
    for w in tqdm(word_counts, desc=f"segment ({cfg.segmenter})", unit="type",
                  disable=not cfg.show_progress):
        parts = seg.segment(w)
        if len(parts) > 1:
            segmap[w] = MORPH_MARK.join(parts)
    return segmap


def _finalize(tok_json: dict, cfg: TrainConfig) -> tuple[dict, dict]:
    """Append diacritic merges, switch to the run-time pre-tokenizer; returns (json, info)."""
    model = tok_json["model"]
    vocab: dict[str, int] = model["vocab"]
    merges = model["merges"]
    as_pairs = bool(merges) and isinstance(merges[0], list)
    b2u = bytes_to_unicode()
    added = 0
    for ch in DIACRITICS:
        pieces = [b2u[b] for b in ch.encode("utf-8")]
        token = "".join(pieces)
        if token in vocab or len(pieces) != 2:
            continue
        vocab[token] = len(vocab)
        merges.append(pieces if as_pairs else " ".join(pieces))
        added += 1
    tok_json["pre_tokenizer"] = json.loads(_pre_tokenizer_json())
    return tok_json, {"diacritic_merges": added}


def _pre_tokenizer_json() -> str:
    from tokenizers import Tokenizer, models

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = runtime_pre_tokenizer()
    return json.dumps(json.loads(t.to_str())["pre_tokenizer"])


#: What a tokenizer tool writes into its output directory (nothing else there is touched).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_tokenizer_output(out_dir: str, inputs, overwrite: bool) -> None:
    """The output rule (:mod:`megatron_ar.io.outputs`) for a tokenizer directory: never over an
    input (``CATEGORY=PATH`` specs and directories included), existing tokenizer files only with
    ``overwrite``."""
    paths = [split_category_spec(os.fspath(i))[1] for i in inputs]
    refuse_overlap([out_dir], paths)
    check_dir_output(out_dir, overwrite=overwrite, names=TOKENIZER_FILES)


def write_tokenizer_dir(tok, special_tokens, out_dir: str, overwrite: bool = False) -> None:
    """Write tokenizer.json + tokenizer_config.json into ``out_dir`` via a temp dir
    (:func:`megatron_ar.io.outputs.publish_into_dir`): other files in ``out_dir`` are kept;
    existing tokenizer files are replaced only with ``overwrite``."""
    with publish_into_dir(out_dir, overwrite=overwrite, names=TOKENIZER_FILES) as tmp:
        tok.save(os.path.join(tmp, "tokenizer.json"))
        sp = list(special_tokens)
        conf = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 1_000_000_000,
            "clean_up_tokenization_spaces": False,
            "added_tokens_decoder": {},
        }
        for k, v in (("bos_token", "<|begin_of_text|>"), ("eos_token", "<|end_of_text|>"),
                     ("pad_token", "<|pad|>")):
            if v in sp:
                conf[k] = v
        for t in tok.get_added_tokens_decoder().items():
            tid, at = t
            conf["added_tokens_decoder"][str(tid)] = {
                "content": at.content, "special": at.special, "lstrip": at.lstrip,
                "rstrip": at.rstrip, "normalized": at.normalized, "single_word": at.single_word,
            }
        with open(os.path.join(tmp, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(conf, f, ensure_ascii=False, indent=2)


def train_tokenizer(cfg: TrainConfig) -> dict:
    """Train and write ``cfg.output``/tokenizer.json (+ tokenizer_config.json). Returns the
    summary dict (``vocab_size``, ``seconds``, ...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    cfg.validate()
    t0 = time.perf_counter()
    morph = cfg.algorithm == "morph-bpe"
    corpus = _Corpus(cfg)
    timings = {}
    if morph or cfg.sample or cfg.max_chars:
        corpus.count(need_words=morph)
    timings["count_s"] = time.perf_counter() - t0
    segmap = None
    if morph:
        t1 = time.perf_counter()
        segmap = _build_segmap(cfg, corpus.word_counts)
        timings["segment_s"] = time.perf_counter() - t1

    n_special = len(cfg.special_tokens) + cfg.reserved
    n_learn = (cfg.model_vocab_size or cfg.vocab_size - n_special) - len(DIACRITICS)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _training_pre_tokenizer() if morph else runtime_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=n_learn,
        min_frequency=cfg.min_frequency,
        show_progress=cfg.show_progress,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    used_chars: Counter = Counter()
    t2 = time.perf_counter()
    tok.train_from_iterator(corpus.stream(segmap, used_chars), trainer=trainer,
                            length=corpus.n_docs or None)
    timings["train_s"] = time.perf_counter() - t2
    if not used_chars:
        raise ValueError(f"no training text found in {cfg.inputs}")

    tok_json, info = _finalize(json.loads(tok.to_str()), cfg)
    tok = Tokenizer.from_str(json.dumps(tok_json))
    n_model = tok.get_vocab_size()
    fill = cfg.vocab_size - n_model - n_special
    reserved = [f"<|reserved_special_token_{i}|>" for i in range(cfg.reserved + fill)]
    specials = (reserved + list(cfg.special_tokens) if cfg.specials_at_top
                else list(cfg.special_tokens) + reserved)
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if tok.get_vocab_size() != cfg.vocab_size:
        raise RuntimeError(
            f"internal: vocabulary has {tok.get_vocab_size()} entries, expected {cfg.vocab_size}"
        )
    write_tokenizer_dir(tok, cfg.special_tokens, cfg.output, overwrite=cfg.overwrite)
    seconds = time.perf_counter() - t0
    return {
        "algorithm": cfg.algorithm,
        "segmenter": cfg.segmenter if morph else None,
        "vocab_size": tok.get_vocab_size(),
        "learned_tokens": n_model - info["diacritic_merges"],
        "diacritic_tokens": info["diacritic_merges"],
        "special_tokens": len(cfg.special_tokens),
        "reserved_tokens": cfg.reserved + fill,
        "reserved_filled": fill,
        "segmented_types": len(segmap) if segmap is not None else None,
        "word_types": len(corpus.word_counts) if morph else None,
        "train_chars_by_category": dict(used_chars),
        "seconds": round(seconds, 3),
        **{k: round(v, 3) for k, v in timings.items()},
        "output": cfg.output,
    }

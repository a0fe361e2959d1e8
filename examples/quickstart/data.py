"""Data for the CPU quickstart (``examples/quickstart_cpu.sh``) and the training tests: a small
mixed Arabic / English / code corpus from real, locally installed text, a small tokenizer,
``.bin/.idx`` datasets and an Arabic cloze task.

Design choices
- The text comes from :mod:`examples.quickstart.sources` (installed packages, found at run time;
  nothing licensed is committed): Arabic = Sahih al-Bukhari hadith and Quran verses (as
  documents of 10 consecutive verses); English = the hadiths' English translation and the
  Python documentation sources; code = the Python standard library.
- The tokenizer is megatron_ar's MorphBPE trainer (``megatron_ar.tokenizers.morphbpe``) and the
  datasets are written by megatron_ar's ``preprocess`` (Megatron-LM's format, via megatron-core's
  ``IndexedDatasetBuilder``): the quickstart exercises the same path a real run uses.
- Held-out validation documents are the *last* documents of each source, never in training.
- The cloze task is :func:`megatron_ar.training.tasks.build_cloze_items` over Quran verses
  (Tanzil ``simple-clean``: no diacritics) or hadith: predict a verse's last word among
  ``num_choices``; a random model scores ~1/num_choices, one that learned the text more.
- Every output is written under a temporary name and renamed; a rerun skips finished outputs
  (delete the directory to rebuild with other sizes).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List

from examples.quickstart.sources import (bukhari_hadiths, python_docs_paths, python_stdlib_paths,
                                         quran_verses, read_texts)
from megatron_ar.training.tasks import build_cloze_items, write_task

CLOZE_SOURCES = ("quran", "hadith")


def mixed_documents(n_ar: int = 800, n_en: int = 800, n_code: int = 40, n_valid: int = 40) -> Dict[str, List[str]]:
    """``{ar, en, code, valid_ar, valid_en, valid_code}`` -> documents (deterministic)."""
    had = bukhari_hadiths()
    verses = quran_verses()
    quran_docs = [" ".join(verses[i:i + 10]) for i in range(0, len(verses), 10)]
    ar_all = [h["arabic"] for h in had if h.get("arabic")] + quran_docs
    en_all = [h["english"]["text"] for h in had if h.get("english", {}).get("text")]
    en_all = en_all[: max(n_en, 0) + n_valid]
    docs_en = read_texts(python_docs_paths()[:max(4, n_en // 40)])
    n_vc = max(2, n_valid // 10)
    code_all = read_texts(python_stdlib_paths()[:n_code + n_vc])
    return {
        "ar": ar_all[:n_ar], "valid_ar": ar_all[-n_valid:],
        "en": en_all[:n_en] + docs_en, "valid_en": en_all[-n_valid:],
        "code": code_all[:n_code], "valid_code": code_all[-n_vc:],
    }


def _write_jsonl(path: str, docs: List[str]) -> None:
    from megatron_ar.io.atomic import atomic_output

    with atomic_output(path) as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")


def build_corpus(out_dir: str, **sizes) -> Dict[str, str]:
    """Write one JSONL per category; returns ``{category: path}``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    docs = None
    for cat in ("ar", "en", "code", "valid_ar", "valid_en", "valid_code"):
        p = os.path.join(out_dir, f"{cat}.jsonl")
        if not os.path.isfile(p):
            docs = docs or mixed_documents(**sizes)
            _write_jsonl(p, docs[cat])
        paths[cat] = p
    return paths


def train_tokenizer(jsonl_paths: List[str], out_dir: str, vocab_size: int = 2048) -> str:
    """MorphBPE tokenizer over the training JSONL files (skipped if ``out_dir`` has one)."""
    if os.path.isfile(os.path.join(out_dir, "tokenizer.json")):
        return out_dir
    from megatron_ar.tokenizers.morphbpe import TrainConfig, train_tokenizer as _train

    _train(TrainConfig(inputs=list(jsonl_paths), output=out_dir, vocab_size=vocab_size,
                       show_progress=False))
    return out_dir


def preprocess(jsonl: str, tokenizer_dir: str, out_prefix: str) -> str:
    """JSONL -> ``{out_prefix}_text_document.{bin,idx}`` with an EOD after each document."""
    from megatron_ar.data.preprocess import PreprocessConfig, preprocess as _pre

    cfg = PreprocessConfig(input=[jsonl], output_prefix=out_prefix, tokenizer_type="HuggingFaceTokenizer",
                           tokenizer_model=tokenizer_dir, append_eod=True)
    prefix = cfg.output_paths("text")[0][:-4]
    if not os.path.isfile(prefix + ".idx"):
        _pre(cfg, progress=False)
    return prefix


def build_arabic_cloze(path: str, source: str = "quran", n: int = 200, num_choices: int = 4,
                       seed: int = 1234) -> str:
    """Write the Arabic cloze task (lm-evaluation-harness JSONL) from ``quran`` or ``hadith``."""
    if source == "quran":
        texts = quran_verses("simple-clean")
    elif source == "hadith":
        texts = [h["arabic"] for h in bukhari_hadiths() if h.get("arabic")]
    else:
        raise ValueError(f"source: must be one of {CLOZE_SOURCES}, got {source!r}")
    return write_task(build_cloze_items(texts, n, num_choices, seed), path)


SETTINGS = "settings.json"


def check_settings(out_dir: str, settings: dict) -> None:
    """Record ``settings`` in ``out_dir`` on first use; refuse a later build with others."""
    from megatron_ar.io.atomic import write_json_atomic

    path = os.path.join(out_dir, SETTINGS)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        if old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            shown = "; ".join(f"{k}: built with {old.get(k)!r}, asked {settings.get(k)!r}"
                              for k in diff)
            raise ValueError(f"{out_dir}: its data was built with other settings ({shown}); "
                             "choose another --out (or delete that folder yourself)")
        return
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ValueError(f"{out_dir}: not empty and has no {SETTINGS} (built by an older "
                         "version?): choose another --out (or delete that folder yourself)")
    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic(path, settings, indent=2)


def build_quickstart_data(out_dir: str, vocab_size: int = 2048, cloze_items: int = 200,
                          cloze_seed: int = 1234, **sizes) -> Dict[str, str]:
    """Corpus + tokenizer + datasets + the Quran cloze task under ``out_dir``; returns
    ``{"tokenizer": dir, <category>: dataset prefix, ..., "cloze": path}``. ``sizes`` go to
    :func:`mixed_documents`.

    Finished outputs are reused only when they were built with the same settings (recorded in
    ``out_dir/settings.json``); other settings are refused naming the differences, never mixed
    with the old outputs and never deleted.
    """
    check_settings(out_dir, dict(vocab_size=vocab_size, cloze_items=cloze_items,
                                 cloze_seed=cloze_seed, sizes=dict(sorted(sizes.items()))))
    corpus = build_corpus(os.path.join(out_dir, "jsonl"), **sizes)
    tok = train_tokenizer([corpus[c] for c in ("ar", "en", "code")], os.path.join(out_dir, "tokenizer"),
                          vocab_size)
    out = {"tokenizer": tok}
    for cat, path in corpus.items():
        out[cat] = preprocess(path, tok, os.path.join(out_dir, "data", cat))
    cloze = os.path.join(out_dir, "quran_cloze.jsonl")
    if not os.path.isfile(cloze):
        build_arabic_cloze(cloze, "quran", n=cloze_items, seed=cloze_seed)
    out["cloze"] = cloze
    return out

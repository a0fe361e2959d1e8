"""Fixtures for the training tests: real mixed ar/en/code data built once with megatron_ar's
quickstart builder and cached under .cache/training-tests-v1 (helpers: train_harness.py)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_harness import CACHE  # noqa: E402


@pytest.fixture(scope="session")
def train_data(bukhari_records, python_docs_paths):
    """Tokenizer + .bin/.idx datasets from the real material (megatron_ar's quickstart builder:
    MorphBPE tokenizer, megatron_ar preprocess) plus an Arabic cloze task."""
    from megatron_ar.training.quickstart import build_quickstart_data
    from megatron_ar.training.tasks import build_arabic_cloze

    out = build_quickstart_data(CACHE, vocab_size=2048, n_ar=500, n_en=500, n_code=24, n_valid=24)
    cloze = os.path.join(CACHE, "quran_cloze.jsonl")
    if not os.path.isfile(cloze):
        build_arabic_cloze(cloze, "quran", n=40, seed=7)
    out["cloze"] = cloze
    return out



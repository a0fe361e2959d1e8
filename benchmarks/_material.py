"""Real text for the benchmarks (the test material's packages, installed by .ci/install.sh).

Imported by the benchmark scripts as ``_material`` (a script's own folder is on ``sys.path``
when it runs, so no path editing is needed). A missing package ends the run with a message
saying what to install.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from functools import lru_cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sources():
    """The text-source loaders of the quickstart (examples/quickstart/sources.py), loaded by file
    path: one copy of them serves the quickstart, the tests and the benchmarks."""
    spec = importlib.util.spec_from_file_location(
        "quickstart_sources", os.path.join(REPO, "examples", "quickstart", "sources.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_SOURCES = _sources()


def _package_dir(name: str, pip_name: str) -> str:
    try:
        return _SOURCES.package_dir(name, pip_name)
    except Exception as exc:  # the loaders' own error names what to install
        sys.exit(f"benchmark material missing: {exc}")


@lru_cache(maxsize=1)
def bukhari_records() -> list[dict]:
    """Sahih al-Bukhari, 7,277 hadiths: dicts with 'arabic' and 'english' {'narrator', 'text'}."""
    try:
        return _SOURCES.bukhari_hadiths()
    except Exception as exc:
        sys.exit(f"benchmark material missing: {exc}")


def sentencepiece_model_path() -> str:
    """A real SentencePiece model (Mistral v1, 32,000 pieces)."""
    return os.path.join(_package_dir("mistral_common", "mistral-common"), "data", "tokenizer.model.v1")


def gemma_tokenizer_dir() -> str:
    """The real Gemma 256k tokenizer (tokenizer.json) fetched by .ci/install.sh."""
    d = os.path.join(REPO, ".cache", "material", "gemma")
    if not os.path.isfile(os.path.join(d, "tokenizer.json")):
        sys.exit(f"benchmark material missing: {d}/tokenizer.json (run .ci/install.sh)")
    return d


@lru_cache(maxsize=1)
def tests_material():
    """``tests/material.py`` (the tests' text loaders, task builders and tiny encoder), loaded by
    file path like the quickstart's sources."""
    spec = importlib.util.spec_from_file_location("tests_material",
                                                  os.path.join(REPO, "tests", "material.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

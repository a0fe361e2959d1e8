"""Fixtures for the training tests: real mixed ar/en/code data built once with the quickstart's
data builder (examples/quickstart/data.py) and cached under .cache/training-tests-v2 (helpers:
train_harness.py)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_harness import CACHE, STEPS, read_metrics, torchrun, write_recipe  # noqa: E402


@pytest.fixture(scope="session")
def train_data(bukhari_records, python_docs_paths):
    """Tokenizer + .bin/.idx datasets from the real material (the quickstart's builder:
    MorphBPE tokenizer, megatron_ar preprocess) plus an Arabic cloze task."""
    from examples.quickstart.data import build_quickstart_data

    return build_quickstart_data(CACHE, vocab_size=2048, cloze_items=40, cloze_seed=7,
                                 n_ar=500, n_en=500, n_code=24, n_valid=24)




@pytest.fixture(scope="session")
def run_a(tmp_path_factory, train_data):
    """The shared reference run: TP2 x PP2 + SP, distributed optimizer, 60 steps of 16 x 64
    tokens through two phases (change at step 25), checkpoints every 10 steps, keep-last 5.
    Several test files resume from its checkpoints; copy them, never write into this run."""
    d = tmp_path_factory.mktemp("train_a")
    run_dir = str(d / "run")
    recipe = write_recipe(str(d / "recipe.yaml"), train_data, run_dir, STEPS)
    out = torchrun(4, recipe)
    return {"dir": run_dir, "recipe": recipe, "log": out, "metrics": read_metrics(run_dir), "tmp": d}

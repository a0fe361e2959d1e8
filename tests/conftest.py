"""Shared pytest fixtures and the test tiers. Test material is installed by .ci/install.sh and
read here.

Tiers: every test module declares exactly one at module level (``pytestmark =
pytest.mark.unit``); collection fails naming each module that does not, so a new file cannot
slip into the wrong run. ``bash tests/run.sh --fast`` runs ``-m unit``.

- ``unit``: no process group, seconds per test (a tool's CLI in a subprocess or a worker pool
  is fine); the developer's inner loop.
- ``multiproc``: spawns process groups (``run_multiprocess``, torchrun) or training jobs.
- ``slow``: single-process but longer than about a minute on a 2-core machine.
- ``gpu``: needs CUDA; skipped, with the reason, where ``torch.cuda.is_available()`` is False.

Design choice: the tier is a module property, not a per-test one, so a file's cost is visible
at its top; a file that mixes fast and slow tests is split instead.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import material  # noqa: E402

# Strict device emulation for the whole session (spawned ranks and torchrun workers inherit the
# variable): tensors on the wrong device for a GPU run raise (megatron_ar.runtime.strict).
os.environ.setdefault("MEGATRON_AR_STRICT_DEVICE", "1")

TIERS = {
    "unit": "no process group, seconds per test (bash tests/run.sh --fast runs only these)",
    "multiproc": "spawns process groups (run_multiprocess, torchrun) or training jobs",
    "slow": "single process, longer than about a minute on a 2-core machine",
    "gpu": "needs CUDA; skipped where torch.cuda.is_available() is False",
}


def pytest_configure(config):
    for name, doc in TIERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")


def _module_tiers(module):
    marks = getattr(module, "pytestmark", [])
    marks = marks if isinstance(marks, (list, tuple)) else [marks]
    return [m.name for m in marks if getattr(m, "name", None) in TIERS]  # Mark or MarkDecorator


@pytest.hookimpl(tryfirst=True)  # before -m deselects anything: every collected module is checked
def pytest_collection_modifyitems(config, items):
    bad = {}
    for item in items:
        module = getattr(item, "module", None)
        if module is None:
            continue
        path = os.path.relpath(str(item.path), str(config.rootpath))
        declared = _module_tiers(module)
        if len(declared) != 1:
            bad[path] = (f"declares {declared or 'no tier'} at module level; add exactly one of "
                         f"`pytestmark = pytest.mark.<{'|'.join(TIERS)}>`")
            continue
        own = {m.name for m in item.iter_markers() if m.name in TIERS}
        if own != set(declared):
            bad[path] = (f"{item.name} carries tiers {sorted(own)}, its module declares "
                         f"{declared[0]!r}; move the test to a module of its tier")
    if bad:
        raise pytest.UsageError("test tiers (tests/conftest.py):\n" + "\n".join(
            f"  {p}: {why}" for p, why in sorted(bad.items())))
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        import torch

        if not torch.cuda.is_available():
            skip = pytest.mark.skip(reason="gpu tier: torch.cuda.is_available() is False")
            for item in gpu:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def bukhari_records():
    return material.bukhari_records()


@pytest.fixture(scope="session")
def quran_lines():
    return material.quran_lines("simple")


@pytest.fixture(scope="session")
def python_docs_paths():
    return material.python_docs_paths()


@pytest.fixture(scope="session")
def gemma_tokenizer_dir():
    return material.gemma_tokenizer_dir()


@pytest.fixture(scope="session")
def smollm2_hf_dir():
    return material.smollm2_hf_dir()


@pytest.fixture(scope="session")
def repo_root():
    return material.REPO

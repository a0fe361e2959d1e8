"""Shared pytest fixtures. Test material is installed by .ci/install.sh and read here."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import material  # noqa: E402

# Strict device emulation for the whole session (spawned ranks and torchrun workers inherit the
# variable): tensors on the wrong device for a GPU run raise (megatron_ar.runtime.strict).
os.environ.setdefault("MEGATRON_AR_STRICT_DEVICE", "1")


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

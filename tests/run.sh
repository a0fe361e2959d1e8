#!/usr/bin/env bash
# The test command (README): installs what the suite needs on a fresh machine, then runs it.
# Multi-process tests spawn real gloo process groups; the whole suite targets ~30 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec python3 -m pytest tests -q -rs --timeout=1200 --durations=25 "$@"

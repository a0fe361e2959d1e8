#!/usr/bin/env bash
# The test command (README): installs what the suite needs on a fresh machine, then runs it.
#   bash tests/run.sh           every tier (multi-process tests spawn real gloo process groups;
#                               ~30 min on 2 cores); CI runs this
#   bash tests/run.sh --fast    the unit tier only (-m unit, a few minutes): the inner loop
# Other arguments pass through to pytest (a path, -k, -x, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
args=()
for a in "$@"; do
  if [ "$a" = "--fast" ]; then args+=(-m unit); else args+=("$a"); fi
done
exec python3 -m pytest tests -q -rs --timeout=1200 --durations=25 ${args[@]+"${args[@]}"}

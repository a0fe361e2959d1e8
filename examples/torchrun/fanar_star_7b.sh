#!/usr/bin/env bash
# Fanar Star 7B from scratch, multi-node torchrun (run this on each of the NNODES nodes):
#   NODE_RANK=<0..NNODES-1> MASTER_ADDR=node001 bash examples/torchrun/fanar_star_7b.sh [--key value ...]
#   bash examples/torchrun/fanar_star_7b.sh --dry-run
set -euo pipefail
export RECIPE=${RECIPE:-examples/recipes/fanar_star_7b.yaml}
export NNODES=${NNODES:-21}
export GPUS_PER_NODE=${GPUS_PER_NODE:-8}
exec bash "$(dirname "$0")/_launch.sh" "$@"

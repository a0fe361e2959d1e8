#!/usr/bin/env bash
# Fanar Prime 9B continual pretraining, multi-node torchrun (run this on each of the NNODES nodes):
#   NODE_RANK=<0..NNODES-1> MASTER_ADDR=node001 bash examples/torchrun/fanar_prime_9b_cpt.sh [--key value ...]
#   bash examples/torchrun/fanar_prime_9b_cpt.sh --dry-run
set -euo pipefail
export RECIPE=${RECIPE:-examples/recipes/fanar_prime_9b_cpt.yaml}
export NNODES=${NNODES:-21}
export GPUS_PER_NODE=${GPUS_PER_NODE:-8}
exec bash "$(dirname "$0")/_launch.sh" "$@"

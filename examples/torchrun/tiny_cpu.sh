#!/usr/bin/env bash
# The CPU quickstart's tiny recipe (TP 2 x PP 2, gloo) across hosts with torchrun: run it on each
# of the NNODES hosts after examples/quickstart_cpu.sh (or its data step) has built .cache/quickstart:
#   NODE_RANK=0 MASTER_ADDR=host0 bash examples/torchrun/tiny_cpu.sh --run-dir runs/tiny2x2   # on host0
#   NODE_RANK=1 MASTER_ADDR=host0 bash examples/torchrun/tiny_cpu.sh --run-dir runs/tiny2x2   # on host1
# Defaults: 2 hosts x 2 processes on CPU (GPUS_PER_NODE=0); the other variables are listed in
# examples/cluster_env.sh.
set -euo pipefail
export RECIPE=${RECIPE:-examples/recipes/tiny_cpu.yaml}
export NNODES=${NNODES:-2}
export GPUS_PER_NODE=${GPUS_PER_NODE:-0}
export NPROC_PER_NODE=${NPROC_PER_NODE:-2}
exec bash "$(dirname "$0")/_launch.sh" "$@"

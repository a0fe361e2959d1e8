#!/usr/bin/env bash
# Body shared by the sbatch scripts: srun one task per GPU, each runs megatron_ar.train with the
# rank/world size Slurm assigns (no torchrun needed). Expects RECIPE and GPUS_PER_NODE.
# --dry-run prints the layout, batch arithmetic, steps per phase and memory estimate locally.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(pwd)}"
# shellcheck source=examples/cluster_env.sh
source examples/cluster_env.sh
NNODES=${SLURM_JOB_NUM_NODES:-${NNODES:-21}}
WORLD=$((NNODES * GPUS_PER_NODE))
if [[ "${1:-}" == "--dry-run" ]]; then
  shift
  exec python -m megatron_ar.train --config "$RECIPE" --dry-run --world-size "$WORLD" "$@"
fi
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR
export MASTER_PORT=${MASTER_PORT:-6000}
mkdir -p logs
# Each task maps Slurm's ids to the torch.distributed variables; --signal=USR1@300 (sbatch
# header) reaches every task, which saves a checkpoint and exits before the time limit.
# The variables must expand inside each task, not here: single quotes on purpose.
# shellcheck disable=SC2016
srun --kill-on-bad-exit=1 --cpu-bind=none bash -c '
  export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS
  exec python -m megatron_ar.train --config "$0" "$@"' "$RECIPE" "$@"

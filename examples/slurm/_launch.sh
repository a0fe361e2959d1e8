#!/usr/bin/env bash
# Body shared by the sbatch scripts: srun one task per GPU (or per CPU slot with
# GPUS_PER_NODE=0), each runs megatron_ar.train with the rank/world size Slurm assigns (no
# torchrun needed). --dry-run prints the layout, batch arithmetic, steps per phase and memory
# estimate locally.
#
# Variables (all optional except RECIPE, which the sbatch scripts set) are listed, with their
# defaults, in the table at the top of examples/cluster_env.sh (rows marked S): RECIPE,
# GPUS_PER_NODE (0 = CPU run over gloo), NNODES (--dry-run), TASKS_PER_NODE, CPUS_PER_TASK,
# OMP_NUM_THREADS, MASTER_PORT, PYTHON, ENV_ACTIVATE, CONTAINER_IMAGE, CONTAINER_MOUNTS, LOG_DIR,
# REQUEUE, and the network ones cluster_env.sh derives (NCCL/GLOO_SOCKET_IFNAME).
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(pwd)}"
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
if [[ -n "${SLURM_JOB_ID:-}" ]]; then
  # SLURM_NTASKS_PER_NODE is only set with --ntasks-per-node; SLURM_TASKS_PER_NODE is "2(x2)"
  TASKS_PER_NODE=${TASKS_PER_NODE:-${SLURM_NTASKS_PER_NODE:-${SLURM_TASKS_PER_NODE%%[(,]*}}}
  CPUS_PER_TASK=${CPUS_PER_TASK:-$((SLURM_CPUS_ON_NODE / TASKS_PER_NODE))}
  ((CPUS_PER_TASK >= 1)) || CPUS_PER_TASK=1
else
  TASKS_PER_NODE=${TASKS_PER_NODE:-$GPUS_PER_NODE}
  CPUS_PER_TASK=${CPUS_PER_TASK:-1}
fi
if [[ "$GPUS_PER_NODE" == 0 ]]; then
  export CUDA_VISIBLE_DEVICES=""  # gloo on CPU
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$CPUS_PER_TASK}
fi
# shellcheck source=examples/cluster_env.sh
source examples/cluster_env.sh  # activates ENV_ACTIVATE
PYTHON=${PYTHON:-python}
NNODES=${SLURM_JOB_NUM_NODES:-${NNODES:-21}}
WORLD=${SLURM_NTASKS:-$((NNODES * TASKS_PER_NODE))}
if [[ "${1:-}" == "--dry-run" ]]; then
  shift
  exec "$PYTHON" -m megatron_ar.train --config "$RECIPE" --dry-run --world-size "$WORLD" "$@"
fi
# The first node of the allocation by its Slurm address: nodes may share a host name (or
# resolve it to another interface), so neither `hostname` nor the bare node name is used.
first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_ADDR=$(scontrol show node "$first" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p' | head -n 1)
export MASTER_ADDR=${MASTER_ADDR:-$first}
# NCCL/GLOO_SOCKET_IFNAME: the interface of the route to MASTER_ADDR. gloo (the CPU backend, and
# megatron-core's gloo side groups on GPU runs) otherwise binds to the address `hostname`
# resolves to, often 127.0.0.1 ("Gloo connectFullMesh failed ... Connection refused").
cluster_net_env
export MASTER_PORT=${MASTER_PORT:-$((10000 + SLURM_JOB_ID % 50000))}
LOG_DIR=${LOG_DIR:-logs}
mkdir -p "$LOG_DIR"
marker="$LOG_DIR/.stopped-${SLURM_JOB_ID}"
rm -f "$marker"
echo "launcher: job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST}:" \
     "${SLURM_NTASKS} tasks, ${TASKS_PER_NODE}/node x ${CPUS_PER_TASK} CPUs," \
     "master ${MASTER_ADDR}:${MASTER_PORT}"
# `scancel --signal=USR1 --full` also signals this shell; the tasks (signalled directly) decide.
trap 'echo "launcher: SIGUSR1 reached the batch shell"' USR1
args=(--kill-on-bad-exit=1 --cpu-bind=none --cpus-per-task="$CPUS_PER_TASK")
if [[ -n "${CONTAINER_IMAGE:-}" ]]; then
  args+=(--container-image="$CONTAINER_IMAGE" --container-workdir="$PWD")
fi
if [[ -n "${CONTAINER_MOUNTS:-}" ]]; then
  args+=(--container-mounts="$CONTAINER_MOUNTS")
fi
# Each task maps Slurm's ids to the torch.distributed variables; --signal=USR1@300 (sbatch
# header) and `scancel --signal=USR1` reach every task (not this shell), which saves a checkpoint
# and exits 0; rank 0 then leaves the marker that makes this script requeue the job.
# The variables must expand inside each task, not here: single quotes on purpose.
# shellcheck disable=SC2016
srun "${args[@]}" bash -c '
  source examples/cluster_env.sh || exit  # ENV_ACTIVATE inside the task (and its container)
  export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS
  exec "$0" -m megatron_ar.train --config "$1" --stop-marker "$2" "${@:3}"' \
  "$PYTHON" "$RECIPE" "$marker" "$@"
if [[ -f "$marker" ]]; then
  echo "launcher: training stopped at step $(cat "$marker") with its checkpoint saved"
  rm -f "$marker"
  if [[ "${REQUEUE:-1}" == 1 ]]; then
    echo "launcher: requeueing job ${SLURM_JOB_ID}; it resumes from that checkpoint"
    scontrol requeue "$SLURM_JOB_ID"
  fi
fi

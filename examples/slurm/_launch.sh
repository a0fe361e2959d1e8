#!/usr/bin/env bash
# Body shared by the sbatch scripts: srun one task per GPU (or per CPU slot with
# GPUS_PER_NODE=0), each runs megatron_ar.train with the rank/world size Slurm assigns (no
# torchrun needed). --dry-run prints the layout, batch arithmetic, steps per phase and memory
# estimate locally.
#
# Variables (all optional except RECIPE, which the sbatch scripts set):
#   RECIPE           the YAML recipe
#   GPUS_PER_NODE    GPUs per node (sbatch scripts: 8). 0 = CPU run: CUDA hidden from the
#                    tasks, so megatron_ar picks gloo (with GPUs it picks nccl)
#   NNODES           --dry-run only: nodes to plan for (under Slurm: SLURM_JOB_NUM_NODES)
#   TASKS_PER_NODE   tasks per node (under Slurm: --ntasks-per-node; --dry-run: GPUS_PER_NODE)
#   CPUS_PER_TASK    srun --cpus-per-task (default: the node's CPUs / tasks per node; since
#                    Slurm 22.05 srun no longer inherits sbatch's --cpus-per-task)
#   GLOO_SOCKET_IFNAME  gloo's interface (default NCCL_SOCKET_IFNAME, examples/cluster_env.sh)
#   OMP_NUM_THREADS  default CPUS_PER_TASK on CPU runs (examples/cluster_env.sh: 8 otherwise)
#   MASTER_PORT      rendezvous port (default 10000 + job id % 50000); MASTER_ADDR is the
#                    first node's address from `scontrol show node` (NodeAddr), never `hostname`
#   PYTHON           interpreter of the tasks (default python)
#   ENV_ACTIVATE     a file sourced before python runs, in the batch shell and in every task
#                    (a venv's bin/activate, or a script doing `conda activate`)
#   CONTAINER_IMAGE  pyxis/enroot: srun --container-image (and --container-workdir=submit dir)
#   CONTAINER_MOUNTS pyxis/enroot: srun --container-mounts; each only passed when set
#   LOG_DIR          logs and the requeue marker (default logs; the #SBATCH --output path)
#   REQUEUE          1 (default): when the tasks stop early on SIGUSR1/SIGTERM after saving a
#                    checkpoint (scancel --signal=USR1, --signal=USR1@T before the time
#                    limit), requeue this job (sbatch --requeue); it resumes from that checkpoint
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
source examples/cluster_env.sh
# gloo (the CPU backend, and megatron-core's gloo side groups on GPU runs too) binds to the
# address `hostname` resolves to unless told an interface: often 127.0.0.1 in /etc/hosts, which
# the other nodes cannot reach ("Gloo connectFullMesh failed ... Connection refused").
export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-$NCCL_SOCKET_IFNAME}
if [[ -n "${ENV_ACTIVATE:-}" ]]; then
  # shellcheck disable=SC1090
  source "$ENV_ACTIVATE"
fi
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
  if [[ -n "${ENV_ACTIVATE:-}" ]]; then source "$ENV_ACTIVATE"; fi
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

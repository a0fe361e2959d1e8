#!/usr/bin/env bash
# Body shared by the torchrun scripts: run on every node; torchrun's c10d rendezvous at
# MASTER_ADDR:MASTER_PORT forms the job. Expects RECIPE, NNODES, GPUS_PER_NODE.
# --dry-run prints the plan (layout, batch arithmetic, steps per phase, memory) and exits.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=examples/cluster_env.sh
source examples/cluster_env.sh
if [[ "${1:-}" == "--dry-run" ]]; then
  shift
  exec python -m megatron_ar.train --config "$RECIPE" --dry-run --world-size "$((NNODES * GPUS_PER_NODE))" "$@"
fi
: "${MASTER_ADDR:?set MASTER_ADDR to the address of the first node}"
MASTER_PORT=${MASTER_PORT:-29500}
RDZV_ID=${RDZV_ID:-megatron-ar-$(basename "$RECIPE" .yaml)}
exec torchrun --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" \
  --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "$RDZV_ID" \
  --max_restarts 0 -m megatron_ar.train --config "$RECIPE" "$@"

#!/usr/bin/env bash
# Body shared by the torchrun scripts: run it on every node; torchrun's c10d rendezvous at
# MASTER_ADDR:MASTER_PORT forms the job of NNODES x NPROC_PER_NODE ranks. Sizes, recipe, device
# and timeouts come from variables (table: examples/cluster_env.sh), e.g. on two CPU hosts:
#   NODE_RANK=0 MASTER_ADDR=host0 NNODES=2 GPUS_PER_NODE=0 NPROC_PER_NODE=2 bash examples/torchrun/tiny_cpu.sh
#   NODE_RANK=1 MASTER_ADDR=host0 NNODES=2 GPUS_PER_NODE=0 NPROC_PER_NODE=2 bash examples/torchrun/tiny_cpu.sh
# --dry-run prints the plan (layout, batch arithmetic, steps per phase, memory) and exits.
#
# What fails fast, with one `error:` line (exit 2) instead of a hang:
# - malformed sizes/ports/timeouts, an unresolvable MASTER_ADDR, NODE_RANK=0 on a node that does
#   not own MASTER_ADDR's address;
# - a node other than the rendezvous host cannot reach MASTER_ADDR:MASTER_PORT within
#   RDZV_READ_TIMEOUT seconds (wrong address, firewall, master not started);
# - the rendezvous does not complete within RDZV_JOIN_TIMEOUT seconds (an agent missing, or
#   agents started with different NNODES / RDZV_ID).
# Design: torchrun's c10d rendezvous is kept (no static ranks), but the rendezvous host is chosen
# explicitly (is_host) and each node publishes LOCAL_ADDR, the source address of its route to
# MASTER_ADDR: torch otherwise decides both from `hostname`, which is wrong when nodes share a
# host name or it resolves to another interface (containers, namespaces, multi-homed nodes).
set -euo pipefail
cd "$(dirname "$0")/../.."

die() {
  echo "error: $*" >&2
  exit 2
}
posint() {  # NAME VALUE: a positive integer or exit 2
  [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1=$2: expected a positive integer"
}

: "${RECIPE:?set RECIPE to the YAML recipe}"
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
[[ "$GPUS_PER_NODE" =~ ^[0-9]+$ ]] || die "GPUS_PER_NODE=$GPUS_PER_NODE: expected a count (0 = CPU run)"
if [[ "$GPUS_PER_NODE" == 0 ]]; then
  # CPU run: no CUDA device is visible, so megatron_ar initialises gloo and its CPU layer.
  export CUDA_VISIBLE_DEVICES=""
  NPROC_PER_NODE=${NPROC_PER_NODE:-1}
  posint NPROC_PER_NODE "$NPROC_PER_NODE"
  ncpu=$(nproc 2>/dev/null || echo 1)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((ncpu / NPROC_PER_NODE > 0 ? ncpu / NPROC_PER_NODE : 1))}
else
  NPROC_PER_NODE=${NPROC_PER_NODE:-$GPUS_PER_NODE}
fi
posint NNODES "$NNODES"
posint NPROC_PER_NODE "$NPROC_PER_NODE"
PYTHON=${PYTHON:-python}
# shellcheck source=examples/cluster_env.sh
source examples/cluster_env.sh
if [[ "${1:-}" == "--dry-run" ]]; then
  shift
  exec "$PYTHON" -m megatron_ar.train --config "$RECIPE" --dry-run \
    --world-size "$((NNODES * NPROC_PER_NODE))" "$@"
fi

if ((NNODES == 1)); then
  MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
fi
[[ -n "${MASTER_ADDR:-}" ]] || die "MASTER_ADDR is not set: give every node the address of the rendezvous node (NODE_RANK=0)"
MASTER_PORT=${MASTER_PORT:-29500}
posint MASTER_PORT "$MASTER_PORT"
((MASTER_PORT < 65536)) || die "MASTER_PORT=$MASTER_PORT: expected a port below 65536"
RDZV_ID=${RDZV_ID:-megatron-ar-$(basename "$RECIPE" .yaml)}
# torch lets agents that disagree on --nnodes form a job when the smaller count happens to join
# last; with the node count in the id they never meet and both time out, naming NNODES.
rdzv_id="$RDZV_ID-n$NNODES"
RDZV_JOIN_TIMEOUT=${RDZV_JOIN_TIMEOUT:-600}
RDZV_READ_TIMEOUT=${RDZV_READ_TIMEOUT:-60}
posint RDZV_JOIN_TIMEOUT "$RDZV_JOIN_TIMEOUT"
posint RDZV_READ_TIMEOUT "$RDZV_READ_TIMEOUT"
if [[ -n "${NODE_RANK:-}" ]]; then
  if ! [[ "$NODE_RANK" =~ ^[0-9]+$ ]] || ((NODE_RANK >= NNODES)); then
    die "NODE_RANK=$NODE_RANK: expected 0..$((NNODES - 1)) (NNODES=$NNODES)"
  fi
fi

master_ip=$(cluster_resolve "$MASTER_ADDR") \
  || die "MASTER_ADDR=$MASTER_ADDR does not resolve to an IPv4 address on this node"
if command -v ip >/dev/null 2>&1; then
  route=$(cluster_route "$master_ip") || die "no route to MASTER_ADDR=$MASTER_ADDR ($master_ip) from this node"
elif [[ -n "${LOCAL_ADDR:-}" && -n "${NODE_RANK:-}" ]]; then
  route="unknown ? $LOCAL_ADDR"  # no iproute2: the user's LOCAL_ADDR and NODE_RANK
else
  die "iproute2's ip is not installed: it finds this node's address and interface (install iproute2, or set LOCAL_ADDR, NODE_RANK, NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME)"
fi
read -r route_type route_dev route_src <<<"$route"
LOCAL_ADDR=${LOCAL_ADDR:-$route_src}
if [[ -n "${NODE_RANK:-}" ]]; then
  is_host=$((NODE_RANK == 0 ? 1 : 0))
else
  is_host=$([[ "$route_type" == local ]] && echo 1 || echo 0)
fi
if ((is_host)) && [[ "$route_type" == unicast ]]; then
  die "NODE_RANK=0 hosts the rendezvous at MASTER_ADDR=$MASTER_ADDR ($master_ip), which is not an address of this node (run NODE_RANK=0 on that node, or fix MASTER_ADDR)"
fi

# A non-host node waits until the store port accepts connections: a wrong address or a master
# that never starts ends here, naming the address, instead of in torchrun's store timeout.
if ((!is_host)); then
  deadline=$((SECONDS + RDZV_READ_TIMEOUT))
  last=""
  # shellcheck disable=SC2016  # expanded by the inner bash (its $0 and $1)
  until last=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$master_ip" "$MASTER_PORT" 2>&1); do
    if ((SECONDS >= deadline)); then
      last=${last##*: }
      die "MASTER_ADDR=$MASTER_ADDR ($master_ip) port $MASTER_PORT is not reachable from this node ($LOCAL_ADDR via $route_dev) within RDZV_READ_TIMEOUT=${RDZV_READ_TIMEOUT}s (${last:-connect timed out}): start NODE_RANK=0 there first, or fix MASTER_ADDR/MASTER_PORT"
    fi
    sleep 1
  done
fi

echo "launcher: node ${NODE_RANK:-?} ($LOCAL_ADDR via $route_dev) of $NNODES x $NPROC_PER_NODE; rendezvous $rdzv_id at $MASTER_ADDR:$MASTER_PORT ($( ((is_host)) && echo host || echo client)); GPUS_PER_NODE=$GPUS_PER_NODE NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-} GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-}" >&2
# torchrun's stderr passes through unchanged; its first MiB is also kept to name a rendezvous
# failure afterwards (those happen before any worker starts). GNU tee -p keeps passing the
# stream through after head has stopped reading; without -p the whole stream is kept.
errlog=$(mktemp "${TMPDIR:-/tmp}/torchrun-launch.XXXXXX")
trap 'rm -f "$errlog"' EXIT
if tee -p </dev/null >/dev/null 2>&1; then
  capture() { tee -p >(head -c 1048576 >"$errlog") >&2; }
else
  capture() { tee "$errlog" >&2; }
fi
# In the background so that a TERM/INT/HUP sent to this script reaches torchrun (it stops its
# workers); background jobs ignore SIGINT, hence TERM for all three.
"$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" \
  --rdzv-backend c10d --rdzv-endpoint "$master_ip:$MASTER_PORT" --rdzv-id "$rdzv_id" \
  --rdzv-conf "is_host=$is_host,join_timeout=$RDZV_JOIN_TIMEOUT,read_timeout=$RDZV_READ_TIMEOUT" \
  --local-addr "$LOCAL_ADDR" --max-restarts 0 \
  -m megatron_ar.train --config "$RECIPE" "$@" 2> >(capture) &
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true' TERM INT HUP
rc=0
while :; do
  wait "$child" && rc=0 || rc=$?
  kill -0 "$child" 2>/dev/null || break
done
wait  # the tee of the process substitution
if ((rc != 0)); then
  sleep 0.2  # head, tee's reader, writes the last bytes it read
  if grep -q "RendezvousTimeoutError" "$errlog"; then
    die "rendezvous $rdzv_id at $MASTER_ADDR:$MASTER_PORT timed out after RDZV_JOIN_TIMEOUT=${RDZV_JOIN_TIMEOUT}s: not all NNODES=$NNODES agents joined (start this launcher on every node, all with the same NNODES, RDZV_ID and MASTER_ADDR:MASTER_PORT)"
  elif grep -q "RendezvousClosedError" "$errlog"; then
    die "rendezvous $rdzv_id at $MASTER_ADDR:$MASTER_PORT was closed by another agent (it timed out or failed; check that every node runs with the same NNODES, RDZV_ID and MASTER_ADDR:MASTER_PORT)"
  elif grep -q "RendezvousConnectionError\|DistNetworkError\|DistStoreError" "$errlog" \
      && ! grep -q "ChildFailedError" "$errlog"; then
    die "lost the rendezvous store at $MASTER_ADDR:$MASTER_PORT ($master_ip) (RDZV_READ_TIMEOUT=${RDZV_READ_TIMEOUT}s): the rendezvous host (NODE_RANK=0) stopped or is unreachable; see its log"
  fi
fi
exit "$rc"

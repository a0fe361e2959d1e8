#!/usr/bin/env bash
# Environment for multi-node training (sourced by the torchrun/ and slurm/ launchers): activates
# the Python environment, sets the NCCL/gloo network variables and the usual settings for 8x H100
# SXM nodes with ConnectX-7 HCAs. A variable already set in the environment always wins.
#
# Variables read by the scripts in examples/ (T = torchrun/, S = slurm/ training, D =
# slurm/data_pipeline.sbatch, which describes its own at its top, Q = quickstart_cpu.sh, E = this file). All are optional except where the default says "required".
#
#   name                  default                          meaning
#   RECIPE                set by each script (T, S)        YAML recipe to train
#   NNODES                T: 1 (fanar_*.sh: 21);           number of nodes (T: every node's torchrun
#                         S: SLURM_JOB_NUM_NODES, else 21  agent must say the same); S: --dry-run only
#   NPROC_PER_NODE        T: GPUS_PER_NODE, or 1 on CPU    processes (ranks) each torchrun agent starts
#   GPUS_PER_NODE         8                                GPUs per node; 0 = CPU run: CUDA hidden, so
#                                                          megatron_ar trains over gloo (T, S)
#   NODE_RANK             T: unset                         0 on the node at MASTER_ADDR: it hosts the
#                                                          rendezvous store (unset: the node that owns
#                                                          MASTER_ADDR's address); the rendezvous, not
#                                                          NODE_RANK, orders the global ranks
#   MASTER_ADDR           T: required when NNODES > 1      address or name of the rendezvous node
#                         (127.0.0.1 for one node);        (T); S: the first node's Slurm NodeAddr
#                         S: derived
#   MASTER_PORT           T: 29500; S: 10000 + job id %    rendezvous port (T: torchrun's c10d store)
#                         50000; Q: 29517
#   LOCAL_ADDR            T: source address of the route   this node's address as other nodes reach
#                         to MASTER_ADDR                   it (torchrun --local-addr; workers of
#                                                          global rank 0 publish it as MASTER_ADDR)
#   RDZV_ID               T: megatron-ar-<recipe name>     rendezvous id, equal on all nodes of a job
#                                                          (torchrun gets RDZV_ID-n<NNODES>: agents
#                                                          that disagree on NNODES never meet)
#   RDZV_JOIN_TIMEOUT     T: 600                           seconds the rendezvous waits for all
#                                                          NNODES agents before failing
#   RDZV_READ_TIMEOUT     T: 60                            seconds a node waits to reach the store at
#                                                          MASTER_ADDR:MASTER_PORT (launcher pre-check
#                                                          and torchrun's store timeout)
#   TASKS_PER_NODE        S: --ntasks-per-node             srun tasks per node
#   CPUS_PER_TASK         S: node CPUs / tasks per node;   srun --cpus-per-task (D: also the data
#                         D: 16                            tools' --workers)
#   CONTAINER_IMAGE       S: unset                         pyxis/enroot srun --container-image
#   CONTAINER_MOUNTS      S: unset                         pyxis/enroot srun --container-mounts
#   LOG_DIR               S: logs                          logs and the requeue marker
#   REQUEUE               S: 1                             requeue the job after a signalled stop
#   INPUT                 D: required                      glob of the raw JSONL inputs (quoted)
#   WORK                  D: required                      every data stage's outputs (shared FS)
#   TOKENIZER_MODEL       D: required                      tokenizer for preprocess_data
#   TOKENIZER_TYPE        D: HuggingFaceTokenizer          megatron-core tokenizer type
#   RULES                 D: examples/data/filter_rules_ar filter_data rules YAML
#   KENLM_MODEL           D: empty (no perplexity stage)   KenLM model of the perplexity stage
#   SP_MODEL              D: empty                         SentencePiece model of KENLM_MODEL
#   NUM_SHARDS            D: 4                             array size of every sharded data stage
#   OUTPUT_PREFIX         D: $WORK/dataset/ar              final dataset prefix
#   SBATCH_ARGS           D: empty                         extra sbatch flags for every data job
#   TIME_LIMIT            D: 24:00:00                      --time of every data job
#   STAGE_MEM             D: 300G                          --mem of the one-node dedup cluster stage
#   SLURM_*               set by Slurm (S)                 job id, node list, task counts, submit dir
#   PYTHON                python (T, S); python3 (Q)       interpreter of the launcher and workers
#   ENV_ACTIVATE          unset (E)                        Python environment to activate first: a
#                                                          venv directory (bin/activate), a conda
#                                                          environment prefix (conda-meta/), or a
#                                                          file to source
#   NCCL_SOCKET_IFNAME    E: the interface of the route    NCCL bootstrap/socket interface
#                         to MASTER_ADDR (unset without it)
#   GLOO_SOCKET_IFNAME    E: as NCCL_SOCKET_IFNAME         gloo's interface (CPU runs, gloo groups)
#   NCCL_IB_GID_INDEX     E: RoCE only (every RDMA port's  RoCE v2 GID index; never set on native
#                         link layer Ethernet): the first  InfiniBand
#                         RoCE v2 IPv4 GID, else 3
#   IB_SYSFS              /sys/class/infiniband (E)        where the RDMA devices are listed
#   NCCL_IB_HCA           mlx5_0..mlx5_7 (E)               HCAs NCCL uses
#   NCCL_NET_GDR_LEVEL    PHB (E)                          GPUDirect RDMA distance
#   NCCL_CROSS_NIC        0 (E)                            rings/trees may not cross NICs
#   NCCL_DEBUG            WARN (E)                         NCCL log level
#   OMP_NUM_THREADS       8 on GPU (E); CPU runs: the      threads per process
#                         node's CPUs / processes per node
#                         (T, S); Q: 1
#
# S rows describe slurm/_launch.sh with its CPU-run, container and requeue variables. Under Slurm
# MASTER_ADDR is known only after this file is sourced: the launcher calls cluster_net_env then.
#
# Always set: CUDA_DEVICE_MAX_CONNECTIONS=1 (megatron-core TP/SP comm-compute overlap),
# NCCL_IB_DISABLE=0, TORCH_NCCL_ASYNC_ERROR_HANDLING=1, TOKENIZERS_PARALLELISM=false,
# PYTHONUNBUFFERED=1.
#
# Functions for the launchers: cluster_net_env (after MASTER_ADDR is known; runs at source time
# when it is already set), cluster_resolve, cluster_route (dev/src/type of the route to an address).

# Activate ENV_ACTIVATE. `set -u` is lifted meanwhile: activation scripts read unset variables.
cluster_activate_env() {
  local env=${ENV_ACTIVATE:-} had_u=0 rc=0
  [[ -z "$env" ]] && return 0
  [[ $- == *u* ]] && had_u=1
  set +u
  if [[ -f "$env" ]]; then
    # shellcheck disable=SC1090
    source "$env" || rc=$?
  elif [[ -f "$env/bin/activate" ]]; then
    # shellcheck disable=SC1091
    source "$env/bin/activate" || rc=$?
  elif [[ -d "$env/conda-meta" ]]; then
    if command -v conda >/dev/null 2>&1; then
      eval "$(conda shell.bash hook)" && conda activate "$env" || rc=$?
    else  # no conda on PATH: what `conda activate` does for the launcher's purposes
      export CONDA_PREFIX="$env" PATH="$env/bin:$PATH"
    fi
  else
    echo "error: ENV_ACTIVATE=$env is neither a file to source, a venv (bin/activate) nor a conda environment (conda-meta/)" >&2
    rc=2
  fi
  ((had_u)) && set -u
  if ((rc != 0)) && ((rc != 2)); then
    echo "error: activating ENV_ACTIVATE=$env failed (exit $rc)" >&2
  fi
  return "$rc"
}

# The IPv4 address of a name or address (first of getent's answers); fails when it does not resolve.
cluster_resolve() {
  local ip
  ip=$(getent ahostsv4 "$1" 2>/dev/null | awk 'NR == 1 { print $1 }')
  [[ -n "$ip" ]] || return 1
  echo "$ip"
}

# "TYPE DEV SRC" of the route to an IPv4 address: TYPE is local when the address is this node's
# own; DEV is then the interface that owns it (lo for 127.0.0.1, eth0 for eth0's address): a
# route to one's own address goes through lo, but peers reach that address on its interface.
cluster_route() {
  local out type dev src
  out=$(ip -o route get "$1" 2>/dev/null) || return 1
  read -r type dev src < <(awk '{ t = ($1 == "local") ? "local" : "unicast";
    for (i = 1; i < NF; i++) { if ($i == "dev") d = $(i + 1); if ($i == "src") s = $(i + 1) }
    print t, d, s }' <<<"$out")
  if [[ "$type" == local ]]; then
    dev=$(ip -o addr show to "$1" 2>/dev/null | awk 'NR == 1 { print $2 }')
    src=$1
  fi
  [[ -n "$dev" ]] || return 1
  echo "$type $dev $src"
}

# NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME: the interface that carries traffic to MASTER_ADDR
# (every rank talks to the rendezvous node; a fixed eth0 is wrong on nodes whose fabric is ib0,
# bond0, enp...); left unset (NCCL/gloo pick) when the route is unknown.
cluster_net_env() {
  local ip route dev
  [[ -n "${MASTER_ADDR:-}" ]] || return 0
  command -v ip >/dev/null 2>&1 || return 0
  ip=$(cluster_resolve "$MASTER_ADDR") || return 0
  route=$(cluster_route "$ip") || return 0
  dev=$(awk '{ print $2 }' <<<"$route")
  export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-$dev}
  export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-$dev}
}

# NCCL_IB_GID_INDEX only on RoCE (every RDMA port's link layer is Ethernet); native InfiniBand
# routes by LID and must keep NCCL's default. The index is the first RoCE v2 GID holding an IPv4
# address (::ffff:a.b.c.d), else 3 (that GID in the default mlx5 table).
cluster_ib_env() {
  local sys=${IB_SYSFS:-/sys/class/infiniband} f ll n_eth=0 n_ib=0 gid idx=""
  for f in "$sys"/*/ports/*/link_layer; do
    [[ -r "$f" ]] || continue
    read -r ll <"$f" || true
    case "$ll" in
      Ethernet) n_eth=$((n_eth + 1)) ;;
      InfiniBand) n_ib=$((n_ib + 1)) ;;
    esac
  done
  if [[ ! -d "$sys" ]] && command -v ibv_devinfo >/dev/null 2>&1; then  # no sysfs view: ask the verbs library
    while read -r ll; do
      case "$ll" in
        Ethernet) n_eth=$((n_eth + 1)) ;;
        InfiniBand) n_ib=$((n_ib + 1)) ;;
      esac
    done < <(ibv_devinfo 2>/dev/null | awk '$1 == "link_layer:" { print $2 }')
  fi
  ((n_eth > 0 && n_ib == 0)) || return 0
  [[ -z "${NCCL_IB_GID_INDEX:-}" ]] || return 0
  for f in "$sys"/*/ports/*/gid_attrs/types/*; do
    [[ -r "$f" ]] || continue
    [[ "$(cat "$f" 2>/dev/null)" == "RoCE v2" ]] || continue
    gid=$(cat "${f%/gid_attrs/types/*}/gids/${f##*/}" 2>/dev/null) || continue
    if [[ "$gid" == 0000:0000:0000:0000:0000:ffff:* ]] && [[ -z "$idx" || ${f##*/} -lt $idx ]]; then
      idx=${f##*/}
    fi
  done
  export NCCL_IB_GID_INDEX=${idx:-3}
}

cluster_activate_env || return 2
export CUDA_DEVICE_MAX_CONNECTIONS=1          # megatron-core TP/SP comm-compute overlap
export NCCL_IB_DISABLE=0
export NCCL_IB_HCA=${NCCL_IB_HCA:-mlx5_0,mlx5_1,mlx5_2,mlx5_3,mlx5_4,mlx5_5,mlx5_6,mlx5_7}
cluster_ib_env
cluster_net_env
export NCCL_NET_GDR_LEVEL=${NCCL_NET_GDR_LEVEL:-PHB}
export NCCL_CROSS_NIC=${NCCL_CROSS_NIC:-0}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
export TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1

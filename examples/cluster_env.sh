#!/usr/bin/env bash
# Environment for multi-node H100 training over InfiniBand (sourced by the slurm/ and torchrun/
# launchers). Values are the usual ones for 8x H100 SXM nodes with 8 ConnectX-7 HCAs (NDR); check
# `ibv_devinfo` / your cluster's documentation and adapt NCCL_IB_HCA and NCCL_SOCKET_IFNAME.
export CUDA_DEVICE_MAX_CONNECTIONS=1          # megatron-core TP/SP comm-compute overlap
export NCCL_IB_DISABLE=0
export NCCL_IB_HCA=${NCCL_IB_HCA:-mlx5_0,mlx5_1,mlx5_2,mlx5_3,mlx5_4,mlx5_5,mlx5_6,mlx5_7}
export NCCL_IB_GID_INDEX=${NCCL_IB_GID_INDEX:-3}
export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-eth0}
export NCCL_NET_GDR_LEVEL=${NCCL_NET_GDR_LEVEL:-PHB}
export NCCL_CROSS_NIC=${NCCL_CROSS_NIC:-0}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
export TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1

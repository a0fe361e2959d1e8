"""Pipeline point-to-point communication settings that megatron-core cannot pick for gloo."""
from __future__ import annotations

#: The range :func:`batch_p2p_comm` was checked for.
WORKAROUND_RANGE = ((0, 16, 1), (0, 20, 0))


def batch_p2p_comm(on_gpu: bool) -> bool:
    """``TransformerConfig.batch_p2p_comm`` for a run on GPUs (NCCL) or on the CPU (gloo).

    Versions: ``>=0.16.1,<0.20`` (0.19.2: ``_batched_p2p_ops`` unchanged).
    Why: megatron-core's batched p2p (megatron/core/pipeline_parallel/p2p_communication.py
    ``_batched_p2p_ops``) posts ``[isend prev, irecv prev, isend next, irecv next]`` on every
    rank in one ``batch_isend_irecv``. gloo matches messages between two ranks by posting order
    only, so when the previous and the next pipeline peer are the same rank (PP=2, as the
    interleaved schedule's ``send_forward_backward_recv_forward_backward`` does) an activation
    and a gradient of the same shape are received into each other's buffers. The unbatched
    ``_p2p_ops`` orders the operations by rank parity and, for a two-rank group, sends the two
    directions over different groups, which is exact.
    Without it (gloo): PP=2 with virtual stages trains on swapped tensors silently (measured:
    loss off by 0.4%, gradients wrong). On GPUs megatron-core's default (batched) is kept.
    """
    return bool(on_gpu)

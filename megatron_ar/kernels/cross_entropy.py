"""Fused vocab-parallel cross-entropy with the optional final-logit soft-cap (Gemma-2).

:func:`fused_vocab_parallel_cross_entropy` is a drop-in for megatron-core's
``tensor_parallel.vocab_parallel_cross_entropy`` applied to ``softcap(logits)``: logits
``[s, b, v_local]`` (this rank's vocab shard, megatron's layout), target ``[s, b]`` of global
ids, per-token fp32 loss ``[s, b]`` out. The kernels are ``csrc/xent`` (CUDA) and
``csrc/xent_cpu`` (CPU), both built from the per-row functions of ``csrc/include/mar/xent.h``.

Design choices and trade-offs
- Forward = one kernel pass over the shard (soft-cap, local online max + sum of exp, target
  logit) then two small all-reduces over the TP group in Python: MAX of the row max, then one
  SUM of the stacked ``[sum_exp * exp(m_r - m), target_logit]`` (one message instead of
  megatron's two SUMs). Only the all-reduced ``(max, sum_exp)`` (fp32, two per row) and the
  target are kept for the backward besides the logits buffer itself.
- Backward = one kernel pass that recomputes ``softcap(x)`` and ``exp(z - max) / sum_exp`` (as
  megatron-core does; ``exp(z - lse)`` would put ~ulp(lse), 4e-6 at logits ~80, of relative
  error on every probability) and overwrites the logits buffer with ``d loss / d logits``
  (same dtype as the logits: bf16 logits give a bf16 gradient, as the output layer's matmul
  expects); it is returned as the gradient. Memory: no ``[tokens, v_local]`` tensor is
  allocated at any time (megatron-core's path upcasts bf16 logits to fp32 and keeps that
  softmax until the backward; with a soft-cap, the capped copy and the tanh's saved output come
  on top). benchmarks/cross_entropy.py on the CPU (2048 x 32768, cap 30): extra peak 0.1 MiB
  vs 1024 MiB (fp32) and 640 MiB (bf16) for megatron-core.
- Speed: on a GPU the op is memory-bound and reads the shard once forward, reads and writes
  it once backward (megatron-core with an explicit cap makes ~10 full passes). The CPU build
  is for CI parity and the CPU emulation, not speed: its scalar tanhf/expf loops are ~2.3x
  slower than torch's vectorised ops with a cap, ~1.7x without (same benchmark).
- CONSEQUENCE for callers: after the backward the logits tensor holds the gradient; do not read
  the logits after ``backward()`` (megatron-core's own fused cross-entropy and, for fp32 logits,
  ``vocab_parallel_cross_entropy`` itself, destroy them too). Read them before, or pass a clone.
- ``ignore_index`` rows: loss 0 and gradient 0 (megatron-core has no ignore index and relies on
  the loss mask; both compose). Targets outside ``[0, vocab)`` that are not ``ignore_index``
  get a target logit of 0, i.e. loss = log-sum-exp (megatron-core gives log-sum-exp - max
  there: its target logit 0 is taken after subtracting the max; neither is meaningful).
- Accumulation is fp32 for bf16 and fp32 logits; the loss is ``log(sum_exp) - (z_t - max)``
  in megatron-core's order.
- Without the compiled extension for the logits' device a pure-torch implementation of the
  same math runs (logged once through :func:`megatron_ar._ext.warn_fallback`); it does make
  temporary fp32 ``[tokens, v_local]`` tensors, and writes its gradient into the logits buffer
  too, so both paths have the same aliasing contract.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from megatron_ar import _ext
from megatron_ar.kernels import extension

__all__ = ["fused_vocab_parallel_cross_entropy"]


def _tp_group(group):
    if group is not None:
        return group
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        return parallel_state.get_tensor_model_parallel_group()
    return None  # no megatron parallel state: the whole vocabulary is local


def _group_rank_size(group):
    if group is None or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group=group), dist.get_world_size(group=group)


# ----------------------------------------------------------------------------- torch fallback
def _softcap(z: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.tanh(z / cap) * cap if cap > 0 else z


def _local_columns(tgt, start, end, ignore_index):
    valid = (tgt >= start) & (tgt < end) & (tgt != ignore_index)
    return valid, torch.where(valid, tgt - start, torch.zeros_like(tgt))


def _stats_torch(x2, tgt, start, end, cap, ignore_index, row_max, row_sumexp, target_logit):
    z = _softcap(x2.float(), cap)
    m = z.max(dim=-1).values
    row_max.copy_(m)
    row_sumexp.copy_(torch.exp(z - m.unsqueeze(-1)).sum(dim=-1))
    valid, col = _local_columns(tgt, start, end, ignore_index)
    picked = z.gather(1, col.unsqueeze(-1)).squeeze(-1)
    target_logit.copy_(torch.where(valid, picked, torch.zeros_like(picked)))


def _backward_torch(x2, tgt, row_max, row_sumexp, grad_loss, start, end, cap, ignore_index):
    z = _softcap(x2.float(), cap)
    grad = torch.exp(z - row_max.unsqueeze(-1)).div_(row_sumexp.unsqueeze(-1))
    valid, col = _local_columns(tgt, start, end, ignore_index)
    grad.scatter_add_(1, col.unsqueeze(-1), -valid.to(grad.dtype).unsqueeze(-1))
    if cap > 0:
        grad.mul_(1.0 - (z / cap) ** 2)
    scale = torch.where(tgt == ignore_index, torch.zeros_like(grad_loss), grad_loss)
    grad.mul_(scale.unsqueeze(-1))
    x2.copy_(grad)


class _TorchKernels:
    """The extension's API in pure torch (same arguments, same in-place contract)."""

    @staticmethod
    def forward_stats(logits, target, vocab_start, vocab_end, cap, ignore_index, row_max,
                      row_sumexp, target_logit):
        _stats_torch(logits, target, vocab_start, vocab_end, cap, ignore_index, row_max,
                     row_sumexp, target_logit)

    @staticmethod
    def backward_(logits, target, row_max, row_sumexp, grad_loss, vocab_start, vocab_end, cap,
                  ignore_index):
        _backward_torch(logits, target, row_max, row_sumexp, grad_loss, vocab_start, vocab_end,
                        cap, ignore_index)


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor) or t.device.type == "meta"


def _kernels(logits: torch.Tensor, force_torch: bool):
    # Fake / meta tensors (the dry run's memory probe, megatron_ar.runtime.fake) have no data
    # for a compiled kernel: the torch path traces them (and over-estimates, conservatively,
    # the fused path's memory by its fp32 temporaries).
    if force_torch or _is_fake(logits):
        return _TorchKernels
    device = logits.device
    ext = extension("xent", device)
    if ext is None:
        name = "xent" if device.type == "cuda" else "xent_cpu"
        _ext.warn_fallback(name, "the fused cross-entropy runs in pure torch (fp32 copies of "
                                 "the logits, several passes)")
        return _TorchKernels
    return ext


# ----------------------------------------------------------------------------- autograd
class _FusedVocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, group, cap, ignore_index, force_torch):
        v = logits.size(-1)
        x2 = logits.reshape(-1, v)  # a view for megatron's contiguous [s, b, v] logits
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        tgt = target.reshape(-1).to(torch.long).contiguous()
        if tgt.numel() != x2.size(0):
            raise ValueError(f"fused cross-entropy: target {tuple(target.shape)} does not match "
                             f"logits {tuple(logits.shape)}")
        rank, world = _group_rank_size(group)
        start, end = rank * v, (rank + 1) * v
        kern = _kernels(logits, force_torch)
        rows = x2.size(0)
        row_max = torch.empty(rows, dtype=torch.float32, device=logits.device)
        row_sumexp = torch.empty(rows, dtype=torch.float32, device=logits.device)
        target_logit = torch.empty(rows, dtype=torch.float32, device=logits.device)
        kern.forward_stats(x2, tgt, start, end, cap, ignore_index, row_max, row_sumexp,
                           target_logit)
        if world > 1:
            global_max = row_max.clone()
            dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)
            # One SUM for both: the rescaled partial sums and the owner's target logit.
            packed = torch.stack([row_sumexp * torch.exp(row_max - global_max), target_logit])
            dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
            row_max, row_sumexp, target_logit = global_max, packed[0], packed[1]
        loss = (torch.log(row_sumexp) - (target_logit - row_max)).masked_fill_(
            tgt == ignore_index, 0.0)
        ctx.save_for_backward(x2, tgt, row_max, row_sumexp)
        ctx.meta = (kern, start, end, cap, ignore_index, tuple(logits.shape))
        return loss.view(target.shape)

    @staticmethod
    def backward(ctx, grad_loss):
        x2, tgt, row_max, row_sumexp = ctx.saved_tensors
        kern, start, end, cap, ignore_index, shape = ctx.meta
        g = grad_loss.reshape(-1).to(torch.float32).contiguous()
        kern.backward_(x2, tgt, row_max, row_sumexp, g, start, end, cap, ignore_index)
        return x2.view(shape), None, None, None, None, None


def fused_vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                                       tp_group=None, softcap: Optional[float] = None,
                                       ignore_index: int = -100,
                                       _force_torch: bool = False) -> torch.Tensor:
    """Per-token cross-entropy of ``softcap * tanh(logits / softcap)`` (or of the logits when
    ``softcap`` is None/0) against ``target``, vocab-parallel over ``tp_group`` (default:
    megatron-core's tensor-parallel group; none when no parallel state is initialised).

    ``logits``: ``[..., v_local]`` fp32 or bf16, rank ``r`` of the group holding global ids
    ``[r * v_local, (r + 1) * v_local)``; ``target``: ``[...]`` global ids. Returns fp32 loss of
    ``target``'s shape. The backward OVERWRITES ``logits`` with its gradient (module docstring).
    ``_force_torch`` runs the pure-torch fallback (tests, benchmarks).
    """
    if logits.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"fused cross-entropy: logits must be float32 or bfloat16, got "
                        f"{logits.dtype}")
    cap = float(softcap) if softcap else 0.0
    if cap < 0:
        raise ValueError(f"fused cross-entropy: softcap must be positive or None, got {softcap}")
    return _FusedVocabParallelCrossEntropy.apply(logits, target, _tp_group(tp_group), cap,
                                                 int(ignore_index), bool(_force_torch))

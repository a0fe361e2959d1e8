"""Rank-side code of tests/kernels/test_rmsnorm_model.py (spawned by run_multiprocess).

Every rank builds the same tiny Gemma-2 model (post-norms, (1+w) RMSNorm) with
``fused_kernels: off`` (the oracle: our unfused RMSNorm and megatron-core's bias-dropout-add)
and ``on`` (the csrc/ kernel through megatron_ar.kernels.rmsnorm, the post-norms through the
fused ``add_after`` path), loads one set of weights into both and compares loss and every
gradient at TP=1 and at TP=2 with sequence parallelism (real gloo groups, megatron-core's
schedule and DDP). The kernel's autograd Function is wrapped with call counters, so a test
cannot pass because the fused path silently did not run.
"""
from __future__ import annotations

import os
import sys
from collections import Counter

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parallel"))
import mar_parallel_workers as pw  # noqa: E402  (the shared build / gradient helpers)

SEQ = 16


def _count_calls(counter: Counter):
    from megatron_ar.kernels import rmsnorm as K

    fwd, bwd = K._FusedRMSNorm.forward, K._FusedRMSNorm.backward

    def forward(ctx, x, residual, weight, kind, mode, *rest):
        counter[f"forward_mode{mode}_kind{kind}"] += 1
        return fwd(ctx, x, residual, weight, kind, mode, *rest)

    def backward(ctx, *grads):
        counter["backward"] += 1
        return bwd(ctx, *grads)

    K._FusedRMSNorm.forward = staticmethod(forward)
    K._FusedRMSNorm.backward = staticmethod(backward)


def _state(cfg):
    """The model's initial weights with its 1-D tensors (norm weights) perturbed, so that the
    (1+w) weights are not all zero and each one changes the result."""
    from megatron_ar.models import build_model, gather_full_state_dict

    pw._layout(1, 1)
    state = gather_full_state_dict(build_model(cfg), cfg)
    gen = torch.Generator().manual_seed(7)
    return {k: (v + 0.3 * torch.randn(v.shape, generator=gen) if v.ndim == 1 else v.clone())
            for k, v in state.items()}


def _batch(vocab: int, n: int = 4):
    gen = torch.Generator().manual_seed(11)
    tokens = torch.randint(0, vocab, (n, SEQ), generator=gen)
    labels = torch.randint(0, vocab, (n, SEQ), generator=gen)
    return [{"tokens": tokens[i:i + 1], "labels": labels[i:i + 1]} for i in range(n)]


def fused_vs_unfused(preset: str):
    from megatron_ar.models import get_preset

    off = get_preset(preset, fused_kernels="off")
    on = get_preset(preset, fused_kernels="on")
    counter: Counter = Counter()
    _count_calls(counter)
    state = _state(off)
    mbs = _batch(off.vocab_size)
    ref_loss, ref_grads = pw._reference(off, state, mbs)
    assert not counter, f"the unfused model ran the fused kernel: {dict(counter)}"
    out = {}
    loss, grads = pw._reference(on, state, mbs)
    errs = pw._rel_errors(grads, ref_grads)
    out["tp1"] = {"loss_diff": abs(loss - ref_loss), "ref_loss": ref_loss,
                  "max_grad_rel": max(errs.values()), "worst": max(errs, key=errs.get),
                  "n_tensors": len(errs), "calls": dict(counter)}
    counter.clear()
    # TP=2 + SP: the fused model against the single-process unfused one, and the unfused TP=2
    # model against it too (the reduction-order floor of this layout).
    out["tp2_sp"] = pw._equivalence(on, state, mbs, ref_loss, ref_grads, tp=2, pp=1, sp=True)
    out["tp2_sp"]["calls"] = dict(counter)
    counter.clear()
    out["tp2_sp_unfused"] = pw._equivalence(off, state, mbs, ref_loss, ref_grads, tp=2, pp=1,
                                            sp=True)
    out["tp2_sp_unfused"]["calls"] = dict(counter)
    return out

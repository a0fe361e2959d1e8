"""Rank-side code (and the shared reference) of tests/kernels/test_cross_entropy.py.

The reference is megatron-core's own cross-entropy applied after an explicit soft-cap:
- :func:`megatron_reference`: ``tensor_parallel.vocab_parallel_cross_entropy(softcap(x).clone(),
  target)`` with autograd, over megatron-core's tensor-parallel group (multi-process tests);
- :func:`megatron_local_reference`: the same ``VocabParallelCrossEntropy`` static methods that
  function chains, called without its (TP=1 no-op) collectives, so the unit tier needs no process
  group. Nothing is re-derived by hand on the reference side.
Ignored rows (target = -100): megatron-core has no ignore index, so its loss there is masked
out of the comparison and its upstream gradient is zeroed for those rows (the loss-mask
convention); ours must give loss 0 and gradient 0 by itself, whatever the upstream gradient.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

IGNORE = -100


def softcap(x: torch.Tensor, cap: Optional[float]) -> torch.Tensor:
    return torch.tanh(x / cap) * cap if cap else x


def megatron_reference(x: torch.Tensor, target: torch.Tensor, cap: Optional[float],
                       grad_out: torch.Tensor):
    """(loss, d loss / d x) in fp32 through megatron-core's vocab_parallel_cross_entropy."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    xr = x.detach().float().clone().requires_grad_(True)
    keep = target != IGNORE
    loss = vocab_parallel_cross_entropy(softcap(xr, cap).clone(), target.clamp(min=0))
    loss.backward(grad_out * keep)
    return loss.detach() * keep, xr.grad


def megatron_local_reference(x: torch.Tensor, target: torch.Tensor, cap: Optional[float],
                             grad_out: torch.Tensor):
    """:func:`megatron_reference` at TP=1 without a process group: megatron-core's
    ``_VocabParallelCrossEntropy`` forward/backward steps minus the collectives."""
    from megatron.core.tensor_parallel.cross_entropy import VocabParallelCrossEntropy as V

    xr = x.detach().float().clone().requires_grad_(True)
    z = softcap(xr, cap) if cap else xr * 1.0
    keep = target != IGNORE
    with torch.no_grad():
        logits, logits_max = V.calculate_logits_max(z.detach().clone())
        tmask, masked_1d, predicted, sum_exp, exp_logits = V.calculate_predicted_logits(
            logits, target.clamp(min=0), logits_max, 0, x.size(-1))
        softmax, loss = V.calculate_cross_entropy_loss(exp_logits, predicted, sum_exp)
        grad_2d, arange_1d, update, grad_input = V.prepare_gradient_calculation_operands(
            softmax, tmask)
        grad_z = V.calculate_gradients(grad_2d, arange_1d, masked_1d, update, grad_input,
                                       grad_out * keep)
    z.backward(grad_z)
    return loss * keep, xr.grad


def errors(loss, grad, ref_loss, ref_grad) -> Dict[str, float]:
    """Max abs errors, and relative ones (max abs error / max abs reference)."""
    loss, grad = loss.detach().float(), grad.detach().float()
    le = float((loss - ref_loss).abs().max())
    ge = float((grad - ref_grad).abs().max())
    return {"loss_abs": le, "loss_rel": le / float(ref_loss.abs().max()),
            "grad_abs": ge, "grad_rel": ge / float(ref_grad.abs().max())}


def case(seed: int, seq: int = 12, batch: int = 3, vocab: int = 1024, scale: float = 8.0):
    """Full-vocab logits [s, b, v] (a few large values, so a cap of 30 bends them), targets
    with ignored rows, and an upstream gradient."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(seq, batch, vocab, generator=gen) * scale
    x[..., ::97] *= 6.0
    target = torch.randint(0, vocab, (seq, batch), generator=gen)
    target[1, 0] = target[5, 2] = IGNORE
    grad_out = torch.rand(seq, batch, generator=gen) + 0.5
    return x, target, grad_out


# ----------------------------------------------------------------------------- op vs megatron
def _shard_check(tp: int, caps, seed: int):
    """Each rank: its vocab shard, ours vs megatron-core's at this TP (same processes)."""
    from megatron.core import parallel_state as ps

    from megatron_ar.kernels.cross_entropy import fused_vocab_parallel_cross_entropy
    from megatron_ar.runtime import init_distributed, to_device

    init_distributed(tp=tp, pp=1, seed=1234)
    r = ps.get_tensor_model_parallel_rank()
    x, target, grad_out = (to_device(t) for t in case(seed))
    v = x.size(-1) // tp
    shard = x[..., r * v:(r + 1) * v].contiguous()
    out = {}
    for cap in caps:
        ref_loss, ref_grad = megatron_reference(shard, target, cap, grad_out)
        for force_torch in (False, True):
            logits = shard.clone().requires_grad_(True) * 1.0  # non-leaf: its buffer gets the grad
            seen = []
            logits.register_hook(seen.append)
            loss = fused_vocab_parallel_cross_entropy(logits, target, softcap=cap,
                                                      _force_torch=force_torch)
            loss.backward(grad_out)
            e = errors(loss, seen[0], ref_loss, ref_grad)
            e["in_place"] = seen[0].data_ptr() == logits.data_ptr()
            e["ignored_zero"] = bool((loss[target == IGNORE] == 0).all()
                                     and (seen[0][target == IGNORE] == 0).all())
            out[f"tp{tp}/cap{cap}/{'torch' if force_torch else 'ext'}"] = e
    return out


def shards_world(payload):
    """TP = world size (and TP=1 in the same processes when asked)."""
    import torch.distributed as dist

    res = {}
    for tp in payload["tps"]:
        res.update(_shard_check(tp, payload["caps"], payload["seed"]))
    res["rank"] = dist.get_rank()
    return res


# ----------------------------------------------------------------------------- model on vs off
def _model_grads(cfg, state, microbatches, sp: bool):
    from megatron_ar.models import (build_model, gather_full_state_dict, load_full_state_dict,
                                    run_forward_backward)

    chunks = build_model(cfg, sequence_parallel=sp)
    load_full_state_dict(chunks, state, cfg)
    for c in chunks:
        c.train()
        c.zero_grad()
    loss = run_forward_backward(chunks, microbatches)
    return loss, gather_full_state_dict(chunks, cfg, grads=True), chunks


def model_world2(payload):
    """tiny-gemma2 (final_logit_softcap 3) with model.fused_kernels on vs off, at TP=1 and at
    TP=2 + sequence parallel: loss and every gradient; plus evidence that the fused model is
    the capped one (its loss differs from an uncapped model's) and that a forward without
    labels still returns capped logits."""
    from megatron_ar.models import (ModelConfig, build_model, forward_logits,
                                    gather_full_state_dict, load_full_state_dict)
    from megatron_ar.runtime import init_distributed

    cfg = ModelConfig.from_dict(payload["cfg"])
    mbs = payload["microbatches"]
    init_distributed(tp=1, pp=1, seed=1234)
    state = gather_full_state_dict(build_model(cfg), cfg)
    gen = torch.Generator().manual_seed(7)
    # Larger than the init so the soft-cap bends the logits (as tests/parallel does for HF).
    state = {k: (0.3 * torch.randn(v.shape, generator=gen) if v.ndim == 1
                 else 0.08 * torch.randn(v.shape, generator=gen)) for k, v in state.items()}
    res = {}
    for tp, sp in ((1, False), (2, True)):
        init_distributed(tp=tp, pp=1, seed=1234)
        runs = {}
        for mode in ("off", "on"):
            loss, grads, chunks = _model_grads(cfg.replace(fused_kernels=mode), state, mbs, sp)
            runs[mode] = (loss, grads, chunks[0].fused_cross_entropy)
        (l_off, g_off, f_off), (l_on, g_on, f_on) = runs["off"], runs["on"]
        rel = {k: float((g_on[k] - g_off[k]).abs().max()) / max(float(g_off[k].abs().max()),
                                                                 1e-30) for k in g_off}
        res[f"tp{tp}"] = {"loss_on": l_on, "loss_off": l_off, "fused": (f_off, f_on),
                          "grad_rel": max(rel.values()), "worst": max(rel, key=rel.get),
                          "n": len(rel), "keys_equal": set(g_on) == set(g_off)}
        if tp == 1:
            uncapped = cfg.replace(fused_kernels="on", final_logit_softcap=None)
            res["uncapped_loss"] = _model_grads(uncapped, state, mbs, sp)[0]
            tokens = mbs[0]["tokens"]
            logits = {}
            for mode in ("off", "on"):
                chunks = build_model(cfg.replace(fused_kernels=mode))
                load_full_state_dict(chunks, state, cfg)
                logits[mode] = forward_logits(chunks, tokens, cfg.vocab_size)
            res["logits_diff"] = float((logits["on"] - logits["off"]).abs().max())
            res["logits_absmax"] = float(logits["on"].abs().max())
    return res

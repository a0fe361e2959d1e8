"""Rank-side code of the multi-process model tests (spawned by megatron_ar.runtime.run_multiprocess).

One launch runs a whole suite: every rank first computes the single-process reference itself
(TP=1, PP=1, no DDP: purely local, no collectives), then megatron-core's parallel state is
re-initialised for each layout in turn and the same weights / batch are run there. Each rank
returns a dict of measured numbers; the pytest side asserts on them. Nothing is mocked: real
gloo process groups, megatron-core's schedules, DDP and distributed optimizer.
"""
from __future__ import annotations

from typing import Dict, List

import torch

DEFAULT_OPT = dict(lr=1e-2, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-3)


# ----------------------------------------------------------------------------- helpers
def _layout(tp: int, pp: int, vpp=None):
    from megatron_ar.runtime import init_distributed

    return init_distributed(tp=tp, pp=pp, vpp=vpp, seed=1234)


def _build(cfg, state, sp=False, ddp=False, distopt=False):
    from megatron_ar.models import build_model, load_full_state_dict, wrap_with_ddp

    chunks = build_model(cfg, sequence_parallel=sp)
    load_full_state_dict(chunks, state, cfg)
    if ddp:
        chunks = wrap_with_ddp(chunks, use_distributed_optimizer=distopt)
    return chunks


def _rel_errors(got: Dict[str, torch.Tensor], ref: Dict[str, torch.Tensor]) -> Dict[str, float]:
    if set(got) != set(ref):
        raise AssertionError(f"tensor names differ: only parallel {sorted(set(got) - set(ref))}, "
                             f"only reference {sorted(set(ref) - set(got))}")
    out = {}
    for k, r in ref.items():
        scale = float(r.abs().max())
        out[k] = float((got[k] - r).abs().max()) / max(scale, 1e-30)
    return out


def _logit_diff(chunks, cfg, tokens, ref_logits):
    from megatron_ar.models import forward_logits

    logits = forward_logits(chunks, tokens, cfg.vocab_size)
    if logits is None:
        return None
    return float((logits.float() - ref_logits).abs().max())


def _grads(chunks, cfg, microbatches):
    from megatron_ar.models import gather_full_state_dict, run_forward_backward

    for c in chunks:
        c.train()
        if hasattr(c, "zero_grad_buffer"):
            c.zero_grad_buffer()
        c.zero_grad()
    loss = run_forward_backward(chunks, microbatches)
    return loss, gather_full_state_dict(chunks, cfg, grads=True)


def _reference(cfg, state, microbatches):
    """Single-process model: loss and full gradients (local, TP=1/PP=1, no DDP)."""
    _layout(1, 1)
    chunks = _build(cfg, state)
    return _grads(chunks, cfg, microbatches)


def _dp_slice(microbatches: List[dict]) -> List[dict]:
    from megatron.core import parallel_state as ps

    dp, r = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    n = len(microbatches) // dp
    return microbatches[r * n:(r + 1) * n]


def _dp_mean(value):
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_ar.runtime import group_tensor

    if value is None:
        return None
    group = ps.get_data_parallel_group()
    t = group_tensor([value], torch.float64, group=group)
    dist.all_reduce(t, group=group)
    return float(t) / ps.get_data_parallel_world_size()


def _equivalence(cfg, state, microbatches, ref_loss, ref_grads, tp, pp, vpp=None, sp=False,
                 ddp=True):
    _layout(tp, pp, vpp)
    chunks = _build(cfg, state, sp=sp, ddp=ddp)
    loss, grads = _grads(chunks, cfg, _dp_slice(microbatches))
    loss = _dp_mean(loss) if pp == 1 else loss
    errs = _rel_errors(grads, ref_grads)
    return {"loss_diff": None if loss is None else abs(loss - ref_loss), "ref_loss": ref_loss,
            "max_grad_rel": max(errs.values()), "worst": max(errs, key=errs.get),
            "max_grad_rel_matrices": max(v for k, v in errs.items()
                                         if ref_grads[k].dim() > 1),
            "n_tensors": len(errs)}


def _adamw_reference(state, grads, opt):
    """torch AdamW on the full model with megatron's no-weight-decay rule (1-D params)."""
    params = {k: v.clone().requires_grad_(True) for k, v in state.items()}
    for k, p in params.items():
        p.grad = grads[k].clone()
    decay = [p for k, p in params.items() if p.ndim > 1]
    no_decay = [p for k, p in params.items() if p.ndim <= 1]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=opt["lr"], betas=(opt["beta1"], opt["beta2"]), eps=opt["eps"])
    norm = float(torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(p.grad) for p in params.values()])))
    optim.step()
    return {k: p.detach() for k, p in params.items()}, norm


def _distopt_step(cfg, state, microbatches, ref_after, ref_norm, tp, opt):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from megatron_ar.models import gather_full_state_dict, run_forward_backward

    world = torch.distributed.get_world_size()
    _layout(tp, 1)
    chunks = _build(cfg, state, sp=tp > 1, ddp=True, distopt=True)
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=opt["lr"], min_lr=opt["lr"],
                        weight_decay=opt["weight_decay"], adam_beta1=opt["beta1"],
                        adam_beta2=opt["beta2"], adam_eps=opt["eps"],
                        clip_grad=1e6,  # large: clipping is a no-op but the norm is computed
                        use_distributed_optimizer=True, params_dtype=torch.float32),
        chunks)
    # As in training: the scheduler applies lr and weight decay x wd_mult (0 for 1-D params).
    OptimizerParamScheduler(optimizer, init_lr=opt["lr"], max_lr=opt["lr"], min_lr=opt["lr"],
                            lr_warmup_steps=0, lr_decay_steps=10, lr_decay_style="constant",
                            start_wd=opt["weight_decay"], end_wd=opt["weight_decay"],
                            wd_incr_steps=10, wd_incr_style="constant")
    for c in chunks:
        c.train()
        c.zero_grad_buffer()
    optimizer.zero_grad()
    run_forward_backward(chunks, _dp_slice(microbatches))
    ok, grad_norm, _ = optimizer.step()
    after = gather_full_state_dict(chunks, cfg)
    diffs = {k: float((after[k] - ref_after[k]).abs().max()) for k in ref_after}
    updates = {k: float((ref_after[k] - state[k]).abs().max()) for k in ref_after}
    return {"ok": bool(ok), "world": world, "tp": tp, "grad_norm": float(grad_norm),
            "ref_grad_norm": ref_norm, "max_param_diff": max(diffs.values()),
            "worst": max(diffs, key=diffs.get), "max_update": max(updates.values()),
            "n_tensors": len(diffs)}


def _emulation_checks():
    """Facts of the CPU execution layer, measured inside a real rank."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    x = torch.empty(3, device="cuda")
    y = torch.ones(2).cuda()
    z = torch.zeros(2).to("cuda")
    with get_cuda_rng_tracker().fork():
        a = torch.rand(4)
    with get_cuda_rng_tracker().fork():
        b = torch.rand(4)
    return {"empty_device": str(x.device), "cuda_device": str(y.device), "to_device": str(z.device),
            "type_name": torch.ones(1).type(), "bf16_type_name": torch.ones(1).bfloat16().type(),
            "fork_streams_advance": bool((a != b).any()),
            "tp_rank_seed_sample": a.tolist()}


# ----------------------------------------------------------------------------- suites
def suite_world2(payload):
    """TP=1 / TP=2+SP / PP=2(+VPP) HF parity; TP=2+SP, PP=2+VPP, DP=2 gradient equivalence;
    distributed optimizer step at DP=2; CPU-emulation facts; built-model parameter counts."""
    from megatron_ar.models import (ModelConfig, build_model, gather_full_state_dict, get_preset,
                                    param_counts)

    res: Dict[str, object] = {"spawn_env": fail_on_rank(-1)}
    hf = {k: (ModelConfig.from_dict(v["cfg"]), v) for k, v in payload["hf"].items()}

    # single-process references + TP=1 parity + built-model numel vs analytic counts
    refs = {}
    for name, (cfg, d) in hf.items():
        loss, grads = _reference(cfg, d["state"], d["microbatches"])
        refs[name] = (loss, grads)
        chunks = build_model(cfg)
        from megatron_ar.models import load_full_state_dict

        load_full_state_dict(chunks, d["state"], cfg)
        res[f"parity/{name}/tp1"] = _logit_diff(chunks, cfg, d["tokens"], d["hf_logits"])
        numel = sum(p.numel() for p in chunks[0].parameters())
        res[f"numel/{name}"] = (numel, param_counts(cfg)["megatron_padded"]["total"])
    res["emulation/tp1"] = _emulation_checks()

    # TP=2 + SP
    for name, (cfg, d) in hf.items():
        _layout(2, 1)
        chunks = _build(cfg, d["state"], sp=True)
        res[f"parity/{name}/tp2sp"] = _logit_diff(chunks, cfg, d["tokens"], d["hf_logits"])
        res[f"sharded/{name}/tp2"] = {
            k: (v.key, tuple(v.global_shape), tuple(v.axis_fragmentations), tuple(v.replica_id))
            for k, v in chunks[0].sharded_state_dict().items() if "norm" in k}
        loss, grads = refs[name]
        res[f"equiv/{name}/tp2sp"] = _equivalence(cfg, d["state"], d["microbatches"], loss,
                                                 grads, tp=2, pp=1, sp=True)
    res["emulation/tp2"] = _emulation_checks()

    # PP=2 (parity without virtual stages, gradients with 2 virtual stages per rank)
    for name, (cfg, d) in hf.items():
        _layout(1, 2)
        chunks = _build(cfg, d["state"])
        res[f"parity/{name}/pp2"] = _logit_diff(chunks, cfg, d["tokens"], d["hf_logits"])
        _layout(1, 2, vpp=2)
        chunks = _build(cfg, d["state"])
        res[f"parity/{name}/pp2vpp2"] = _logit_diff(chunks, cfg, d["tokens"], d["hf_logits"])
        loss, grads = refs[name]
        res[f"equiv/{name}/pp2vpp2"] = _equivalence(cfg, d["state"], d["microbatches"], loss,
                                                   grads, tp=1, pp=2, vpp=2)

    # DP=2 with megatron DDP, then one distributed-optimizer step
    cfg, d = hf["gemma2"]
    loss, grads = refs["gemma2"]
    res["equiv/gemma2/dp2"] = _equivalence(cfg, d["state"], d["microbatches"], loss, grads,
                                           tp=1, pp=1)
    ref_after, ref_norm = _adamw_reference(d["state"], grads, payload["opt"])
    res["distopt/dp2"] = _distopt_step(cfg, d["state"], d["microbatches"], ref_after, ref_norm,
                                       tp=1, opt=payload["opt"])

    # learnable QK-norm weights at TP=2 without SP: their grads are partial per head shard and
    # must be summed over TP by finalize_model_grads (megatron-core's qk_layernorm rule)
    cfg = get_preset("tiny-llama", family="gpt", qk_norm=True, name="tiny-llama-qknorm")
    _layout(1, 1)
    torch.manual_seed(11)
    state = gather_full_state_dict(build_model(cfg), cfg)
    state = {k: v + 0.1 * torch.randn_like(v) if "layernorm" in k else v
             for k, v in state.items()}
    mb = payload["hf"]["llama"]["microbatches"]
    loss, grads = _reference(cfg, state, mb)
    res["equiv/qknorm/tp2"] = _equivalence(cfg, state, mb, loss, grads, tp=2, pp=1, sp=False)
    res["equiv/qknorm/n_qk"] = sum("q_layernorm" in k or "k_layernorm" in k for k in state)
    return res


def suite_world4(payload):
    """TP=2 x PP=2 HF parity and gradients; distributed optimizer at TP=2 x DP=2; the
    nanochat-style model (no HF oracle) at TP=2+SP x PP=2 against its single-process self."""
    from megatron_ar.models import ModelConfig, build_model, gather_full_state_dict, get_preset

    res: Dict[str, object] = {}
    hf = {k: (ModelConfig.from_dict(v["cfg"]), v) for k, v in payload["hf"].items()}
    refs = {name: _reference(cfg, d["state"], d["microbatches"]) for name, (cfg, d) in hf.items()}

    for name, (cfg, d) in hf.items():
        _layout(2, 2)
        chunks = _build(cfg, d["state"], sp=True)
        res[f"parity/{name}/tp2pp2"] = _logit_diff(chunks, cfg, d["tokens"], d["hf_logits"])
        loss, grads = refs[name]
        res[f"equiv/{name}/tp2pp2sp"] = _equivalence(cfg, d["state"], d["microbatches"], loss,
                                                    grads, tp=2, pp=2, sp=True)

    cfg, d = hf["llama"]
    loss, grads = refs["llama"]
    ref_after, ref_norm = _adamw_reference(d["state"], grads, payload["opt"])
    res["distopt/tp2dp2"] = _distopt_step(cfg, d["state"], d["microbatches"], ref_after,
                                          ref_norm, tp=2, opt=payload["opt"])

    # nanochat-style: reference = the single-process megatron model with its own init
    # megatron-core's init, not the preset's nanochat one: that one zeroes the output
    # projections and draws the LM head with std 0.001, leaving some per-layer scalars with
    # ~1e-12 gradients whose relative error is rounding noise
    cfg = get_preset("tiny-autoresearch", init="megatron")
    _layout(1, 1)
    torch.manual_seed(7)
    state = gather_full_state_dict(build_model(cfg), cfg)
    d = payload["nanochat"]
    ref_chunks = _build(cfg, state)
    from megatron_ar.models import forward_logits

    ref_logits = forward_logits(ref_chunks, d["tokens"], cfg.vocab_size)
    loss, grads = _reference(cfg, state, d["microbatches"])
    _layout(2, 2)
    chunks = _build(cfg, state, sp=True)
    res["nanochat/tp2pp2sp/logits"] = _logit_diff(chunks, cfg, d["tokens"], ref_logits)
    res["nanochat/tp2pp2sp"] = _equivalence(cfg, state, d["microbatches"], loss, grads, tp=2,
                                            pp=2, sp=True)
    res["nanochat/n_params"] = len(state)
    return res


def fail_on_rank(bad_rank: int):
    import os

    rank = int(os.environ["RANK"])
    if rank == bad_rank:
        raise ValueError(f"deliberate failure on rank {rank}")
    return {"rank": rank, "world": int(os.environ["WORLD_SIZE"]),
            "port": os.environ["MASTER_PORT"], "threads": torch.get_num_threads()}

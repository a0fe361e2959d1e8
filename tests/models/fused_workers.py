"""Rank-side code of test_fused_paths.py (a plain module so spawned ranks can unpickle it).

- ``fused_vs_unfused``: the fusion flags a bare CUDA stack gets (``decide_fusions`` with a
  hand-made H200 capability set) run through megatron-core's fused code paths on the CPU, with
  ``torch.compile`` in its ``force_eager`` stance (the same Python functions, not compiled), at
  TP=2 + sequence parallel in bf16, against the same model with every fusion off.
- ``overlap_vs_plain``: DP=2 with the distributed optimizer, ``overlap_grad_reduce`` and
  ``overlap_param_gather`` set by ``wrap_with_ddp``, three optimizer steps of two micro-batches
  through megatron-core's schedule, against the same run without overlap.
"""
from __future__ import annotations

from typing import Dict, List

import torch

BF16 = torch.bfloat16


def _quiet():
    import warnings

    for cat in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=cat)


def _autograd_functions(t: torch.Tensor) -> List[str]:
    """Qualified names of the custom autograd Functions in ``t``'s backward graph."""
    seen, out, stack = set(), set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        cls = getattr(fn, "_forward_cls", None)
        if cls is not None:
            out.add(f"{cls.__module__}.{cls.__qualname__}")
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return sorted(out)


def _bare_h200():
    from megatron_ar.runtime.fusions import StackCapabilities

    return StackCapabilities(cuda=True, device_name="NVIDIA H200", compute_capability=(9, 0),
                             torch_compile=True, torch_compile_detail="triton + cc")


def _fused_run(cfg, state, batch, fusions):
    from megatron.core import parallel_state

    from megatron_ar.models import build_model, gather_full_state_dict, load_full_state_dict

    chunks = build_model(cfg, sequence_parallel=True, params_dtype=BF16, fusions=fusions)
    load_full_state_dict(chunks, state, cfg)
    model = chunks[0]
    model.train()
    tokens, labels = batch
    pos = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    with torch.compiler.set_stance("force_eager"):
        per_token = model(tokens, pos, None, labels=labels)
        loss = per_token.float().mean()
        loss.backward()
    grads = gather_full_state_dict(chunks, cfg, grads=True)
    flags = {f: getattr(model.config, f) for f in
             ("bias_activation_fusion", "bias_dropout_fusion", "cross_entropy_loss_fusion")}
    out = {"loss": float(loss), "functions": _autograd_functions(per_token), "flags": flags,
           "grads": {k: v.float() for k, v in grads.items()}}
    assert parallel_state.get_tensor_model_parallel_world_size() == 2
    return out


def fused_vs_unfused(payload) -> Dict[str, dict]:
    from megatron_ar.models import ModelConfig
    from megatron_ar.runtime import init_distributed
    from megatron_ar.runtime.fusions import FusionDecision

    out = {}
    for name, case in payload["fused"].items():
        cfg = ModelConfig.from_dict(case["cfg"])
        decision = cfg.fusion_decision(BF16, _bare_h200())
        init_distributed(tp=2, seed=1234)
        fused = _fused_run(cfg, case["state"], case["batch"], decision)
        init_distributed(tp=2, seed=1234)
        plain = _fused_run(cfg, case["state"], case["batch"], FusionDecision.all_off("reference"))
        rel = {k: float((fused["grads"][k] - g).abs().max()) / max(float(g.abs().max()), 1e-30)
               for k, g in plain["grads"].items()}
        out[name] = {"decision": decision.enabled, "fused_flags": fused["flags"],
                     "plain_flags": plain["flags"], "fused_functions": fused["functions"],
                     "plain_functions": plain["functions"], "loss_fused": fused["loss"],
                     "loss_plain": plain["loss"], "max_grad_rel": max(rel.values()),
                     "worst": max(rel, key=rel.get)}
    return out


def _train(cfg, state, steps, overlap: bool):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megatron_ar.models import (build_model, gather_full_state_dict, load_full_state_dict,
                                    run_forward_backward, wrap_with_ddp)
    from megatron_ar.runtime import init_distributed

    init_distributed(tp=1, seed=1234)
    chunks = build_model(cfg)
    load_full_state_dict(chunks, state, cfg)
    # Small buckets: several reduce-scatters / all-gathers in flight, as on a real model.
    model = wrap_with_ddp(chunks, use_distributed_optimizer=True, overlap_grad_reduce=overlap,
                          overlap_param_gather=overlap, bucket_size=4000 if overlap else None)
    opt = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-2, weight_decay=0.1, adam_beta2=0.95,
                        clip_grad=0.0, use_distributed_optimizer=True,
                        overlap_param_gather=overlap),
        model, use_gloo_process_groups=True)
    rank = torch.distributed.get_rank()
    losses, stale = [], None
    for step, microbatches in enumerate(steps):
        for c in model:
            c.train()
            c.zero_grad_buffer()
        opt.zero_grad()
        losses.append(run_forward_backward(model, microbatches[rank]))
        opt.step()
        if overlap and step == len(steps) - 1:
            # Before the forced sync the other rank's shard is still the pre-step value.
            stale = {k: v.clone() for k, v in gather_full_state_dict(model, cfg).items()}
    if overlap:
        for c in model:
            c.start_param_sync(force_sync=True)
    cfg_obj = model[0].config
    hooks = {"no_sync_func": cfg_obj.no_sync_func is not None,
             "grad_sync_func": cfg_obj.grad_sync_func is not None,
             "param_sync_func": cfg_obj.param_sync_func is not None,
             "ddp_overlap_param_gather": model[0].ddp_config.overlap_param_gather,
             "ddp_overlap_grad_reduce": model[0].ddp_config.overlap_grad_reduce,
             "buckets": len(model[0].bucket_groups)}
    return losses, gather_full_state_dict(model, cfg), stale, hooks


def overlap_vs_plain(payload) -> dict:
    from megatron_ar.models import ModelConfig

    case = payload["overlap"]
    cfg = ModelConfig.from_dict(case["cfg"])
    l_ov, p_ov, stale, hooks = _train(cfg, case["state"], case["steps"], overlap=True)
    l_pl, p_pl, _, hooks_plain = _train(cfg, case["state"], case["steps"], overlap=False)
    diff = max(float((p_ov[k] - p_pl[k]).abs().max()) for k in p_pl)
    stale_diff = max(float((stale[k] - p_pl[k]).abs().max()) for k in p_pl)
    return {"losses_overlap": l_ov, "losses_plain": l_pl, "param_max_diff": diff,
            "stale_max_diff": stale_diff, "hooks": hooks, "hooks_plain": hooks_plain}


def suite(payload) -> dict:
    _quiet()
    return {"fused": fused_vs_unfused(payload), "overlap": overlap_vs_plain(payload)}

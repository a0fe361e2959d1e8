"""Rank-side code of tests/parallel/test_arkadiko_variants.py (one 2-rank launch).

Every rank builds the single-process references itself (TP=1, PP=1), then re-initialises
megatron-core's parallel state for TP=2+SP and PP=2 and runs the same weights and batch there.
Returns measured numbers; the pytest side asserts.
"""
from __future__ import annotations

from typing import Dict

import torch

from mar_parallel_workers import _build, _grads, _layout, _logit_diff, _rel_errors  # noqa: E402

VARIANTS = {"a": "tiny-arkadiko-v4a", "c": "tiny-arkadiko-v4c"}


def _bit_diff(x, y) -> float:
    return float((x - y).abs().max())


def _perturbed(state: Dict[str, torch.Tensor], seed: int) -> Dict[str, torch.Tensor]:
    """Nonzero cross-attention output projections / V4-C projection (zero at init), so the
    encoder path changes the logits and a parity test of it can fail."""
    gen = torch.Generator().manual_seed(seed)
    out = dict(state)
    for k, v in state.items():
        if k.endswith("cross_attention.linear_proj.weight") or k.startswith("laser_proj."):
            out[k] = 0.2 * torch.randn(v.shape, generator=gen)
    return out


def _optimizer_step(cfg, state, microbatches):
    """One DDP + megatron optimizer step: the encoder gets no grad, no buffer, no state."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megatron_ar.models import gather_full_state_dict, run_forward_backward, unwrap

    _layout(1, 1)
    chunks = _build(cfg, state, ddp=True)
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, clip_grad=1e6,
                        params_dtype=torch.float32), chunks)
    for c in chunks:
        c.train()
        c.zero_grad_buffer()
    optimizer.zero_grad()
    run_forward_backward(chunks, microbatches)
    enc = list(unwrap(chunks)[0].laser_encoder.parameters())
    grads_none = all(p.grad is None and getattr(p, "main_grad", None) is None for p in enc)
    in_buffers = sum(p in c.param_to_bucket_group for c in chunks for p in enc)
    opts = getattr(optimizer, "chained_optimizers", [optimizer])
    opt_ids = {id(p) for o in opts for g in o.param_groups for p in g["params"]}
    ok, _, _ = optimizer.step()
    enc_state = sum(1 for o in opts for p in enc if p in o.optimizer.state)
    after = gather_full_state_dict(chunks, cfg)
    enc_changed = max(float((after[k] - state[k]).abs().max()) for k in state
                      if k.startswith("laser_encoder."))
    trained = [k for k in state if k.startswith("laser_proj.") or "cross_attention" in k]
    trained_changed = min(float((after[k] - state[k]).abs().max()) for k in trained)
    return {"ok": bool(ok), "enc_requires_grad": any(p.requires_grad for p in enc),
            "enc_grads_none": grads_none, "enc_in_grad_buffers": in_buffers,
            "enc_in_optimizer": sum(id(p) in opt_ids for p in enc),
            "enc_state": enc_state, "n_opt_params": len(opt_ids),
            "enc_changed": enc_changed, "trained_changed": trained_changed,
            "n_trained": len(trained)}


def suite(payload):
    from megatron_ar.models import (build_model, forward_logits, gather_full_state_dict,
                                    get_preset, load_full_state_dict, param_counts, unwrap)
    from megatron_ar.models.encoder import load_laser_checkpoint

    res: Dict[str, object] = {}
    tokens, mbs = payload["tokens"], payload["microbatches"]

    # --- at initialisation A and C (C's projection zeroed) equal B: same decoder weights
    _layout(1, 1)
    torch.manual_seed(3)
    cfg_b = get_preset("tiny-arkadiko")
    chunks_b = build_model(cfg_b)
    state_b = gather_full_state_dict(chunks_b, cfg_b)
    logits_b = forward_logits(chunks_b, tokens, cfg_b.vocab_size)
    states = {}
    for v, name in VARIANTS.items():
        cfg = get_preset(name)
        chunks = build_model(cfg)
        model = unwrap(chunks)[0]
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        counts = param_counts(cfg)
        res[f"numel/{v}"] = (trainable, counts["megatron_padded"]["total"], frozen,
                             counts["laser_encoder_frozen"])
        fresh = gather_full_state_dict(chunks, cfg)
        if v == "a":
            res["a/init_proj_max"] = max(float(t.abs().max()) for k, t in fresh.items()
                                         if k.endswith("cross_attention.linear_proj.weight"))
        load_full_state_dict(chunks, state_b, cfg, strict=False)  # the decoder of B
        if v == "c":
            with torch.no_grad():
                model.laser_proj.weight.zero_()
        res[f"init/{v}/bit_diff"] = _bit_diff(forward_logits(chunks, tokens, cfg.vocab_size),
                                              logits_b)
        state = _perturbed(gather_full_state_dict(chunks, cfg), seed=5)
        load_full_state_dict(chunks, state, cfg)
        res[f"init/{v}/perturbed_diff"] = _bit_diff(
            forward_logits(chunks, tokens, cfg.vocab_size), logits_b)
        states[v] = (cfg, state)

    # --- LASER2-layout checkpoint file into a built model (laser2.pt's {'params', 'model'})
    cfg, state = states["a"]
    chunks = _build(cfg, state)
    enc_sd = {k[len("laser_encoder."):]: 0.5 * v for k, v in state.items()
              if k.startswith("laser_encoder.")}
    path = f"{payload['tmp']}/laser2-like-{torch.distributed.get_rank()}.pt"
    torch.save({"params": {"num_embeddings": cfg.vocab_size, "padding_idx": 1,
                           "embed_dim": cfg.laser_embed_dim, "hidden_size": cfg.laser_hidden,
                           "num_layers": cfg.laser_layers, "bidirectional": True},
                "model": enc_sd}, path)
    n_loaded = load_laser_checkpoint(chunks, path, cfg)
    got = gather_full_state_dict(chunks, cfg)
    res["loader/file"] = (n_loaded, max(float((got["laser_encoder." + k] - v).abs().max())
                                        for k, v in enc_sd.items()))

    # --- TP=2+SP and PP=2 against the single-process model (nonzero encoder paths)
    for v, (cfg, state) in states.items():
        _layout(1, 1)
        ref_logits = forward_logits(_build(cfg, state), tokens, cfg.vocab_size)
        ref_loss, ref_grads = _grads(_build(cfg, state), cfg, mbs)
        layouts = {"tp2sp": (2, 1, None, True), "pp2": (1, 2, None, False)}
        if v == "a":  # an encoder copy in every virtual chunk
            layouts["pp2vpp2"] = (1, 2, 2, False)
        for layout, (tp, pp, vpp, sp) in layouts.items():
            _layout(tp, pp, vpp)
            chunks = _build(cfg, state, sp=sp, ddp=True)
            logit = _logit_diff(chunks, cfg, tokens, ref_logits)
            loss, grads = _grads(chunks, cfg, mbs)
            errs = _rel_errors(grads, ref_grads)
            res[f"par/{v}/{layout}"] = {
                "logits": logit, "loss": None if loss is None else abs(loss - ref_loss),
                "grad_rel": max(errs.values()), "worst": max(errs, key=errs.get),
                "enc_grad_max": max(float(g.abs().max()) for k, g in grads.items()
                                    if k.startswith("laser_encoder."))}
            if layout == "pp2" and v == "a":
                # a dist checkpoint written at PP=2 carries the (here: reloaded) encoder
                load_laser_checkpoint(chunks, {"model": enc_sd}, cfg)
                sharded = unwrap(chunks)[0].sharded_state_dict()
                res["a/pp2/encoder_replica_ids"] = sorted(
                    {tuple(sh.replica_id) for k, sh in sharded.items() if "laser_encoder" in k})
                _dist_save(sharded, f"{payload['tmp']}/dist")
        res[f"opt/{v}"] = _optimizer_step(cfg, state, mbs)

    # --- that PP=2 checkpoint loads into a PP=1 model: encoder and decoder come back
    cfg, state = states["a"]
    _layout(1, 1)
    chunks = _build(cfg, state)
    model = unwrap(chunks)[0]
    from megatron.core import dist_checkpointing

    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()},
                                     f"{payload['tmp']}/dist")
    model.load_state_dict(loaded["model"], strict=False)
    got = gather_full_state_dict(chunks, cfg)
    expect = dict(state, **{"laser_encoder." + k: t for k, t in enc_sd.items()})
    res["dist/reload_max_diff"] = max(float((got[k] - t).abs().max()) for k, t in expect.items())
    res["dist/n_encoder"] = sum(k.startswith("laser_encoder.") for k in got)
    return res


def _dist_save(sharded, path):
    import os

    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    os.makedirs(path, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save({"model": sharded}, path)
    dist.barrier()

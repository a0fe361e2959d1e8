"""Rank-side code of tests/models/test_nanochat.py (a plain module so spawned ranks can unpickle
it): nanochat's logits, loss and gradients (tests/fixtures/nanochat, from nanochat's own code)
against our model at TP=1, TP=2 + sequence parallel (and PP=2 where the options allow it)."""
from __future__ import annotations

import os
from typing import Dict

import torch

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "fixtures", "nanochat")


def load_fixture(name: str) -> dict:
    return torch.load(os.path.join(FIXTURES, f"{name}.pt"), weights_only=True)


def fixture_state(fx: dict) -> Dict[str, torch.Tensor]:
    """The nanochat state dict the fixture's outputs were computed with."""
    return {k: fx["affine"][k][0] + fx["affine"][k][1] * q.float() for k, q in fx["q"].items()}


def fixture_config(fx: dict):
    from megatron_ar.models.nanochat import config_from_nanochat

    return config_from_nanochat(**fx["config"]["model"], name="nanochat-fixture")


def _quiet():
    import warnings

    for cat in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=cat)


def run_case(name: str, tp: int, pp: int, sp: bool, vpp=None,
             checkpoint=None, recompute: bool = False) -> Dict[str, float]:
    """Max abs logit diff, loss diff and max gradient diff / max |grad| for one fixture; the
    weights come from the fixture through the name table, or (``checkpoint``) from that
    fixture imported by megatron_ar.checkpoint.nanochat_io, loaded with ``load_into_model``."""
    from megatron_ar.models import (build_model, forward_logits, gather_full_state_dict,
                                    load_full_state_dict, run_forward_backward, wrap_with_ddp)
    from megatron_ar.models.nanochat import megatron_to_nanochat, nanochat_to_megatron
    from megatron_ar.runtime import init_distributed

    fx = load_fixture(name)
    cfg = fixture_config(fx)
    init_distributed(tp=tp, pp=pp, vpp=vpp, seed=1234)
    extra = (dict(recompute_granularity="full", recompute_method="uniform",
                  recompute_num_layers=1) if recompute else {})
    chunks = build_model(cfg, sequence_parallel=sp, **extra)
    if checkpoint:
        from megatron_ar.checkpoint import load_into_model

        load_into_model(chunks, checkpoint, cfg)
    else:
        load_full_state_dict(chunks, nanochat_to_megatron(fixture_state(fx), cfg), cfg)
    out: Dict[str, float] = {}
    if tp == 1 and pp == 1:
        out["n_params"] = float(sum(p.numel() for c in chunks for p in c.parameters()))
    chunks = wrap_with_ddp(chunks)
    n = fx["logits"].shape[1]
    logits = forward_logits(chunks, fx["tokens"], cfg.vocab_size)
    if logits is not None:
        out["logits"] = float((logits[:, -n:].float().cpu() - fx["logits"]).abs().max())
    if "grads" in fx:
        for c in chunks:
            c.train()
            c.zero_grad_buffer()
        tokens, targets = fx["tokens"], fx["targets"]
        mbs = 1 if vpp else tokens.shape[0]  # the interleaved schedule needs >= PP micro-batches
        loss = run_forward_backward(chunks, [{"tokens": tokens[i:i + mbs],
                                              "labels": targets[i:i + mbs]}
                                             for i in range(0, tokens.shape[0], mbs)])
        if loss is not None:
            out["loss"] = abs(loss - float(fx["loss"]))
        full = gather_full_state_dict(chunks, cfg, grads=True)
        grads = megatron_to_nanochat(full, cfg)
        worst = 0.0
        for k, ref in fx["grads"].items():
            scale = max(float(ref.abs().max()), 1e-6)
            err = float((grads[k] - ref).abs().max()) / scale
            if os.environ.get("NANOCHAT_DEBUG") and err > 1e-4:
                print("GRAD", k, err, flush=True)
            worst = max(worst, err)
        out["grad_rel"] = worst
    return out


def suite(payload) -> Dict[str, float]:
    _quiet()
    torch.manual_seed(0)
    res: Dict[str, float] = {}
    for layout, tp, pp, sp, vpp in payload["layouts"]:
        recompute = layout.endswith("-recompute")
        for name in payload["fixtures"]:
            if vpp and load_fixture(name)["tokens"].shape[0] % pp:
                continue
            for k, v in run_case(name, tp, pp, sp, vpp, recompute=recompute).items():
                res[f"{name}/{layout}/{k}"] = v
    if payload.get("check_recompute_refused"):
        from megatron_ar.models import build_model
        from megatron_ar.runtime import init_distributed

        init_distributed(tp=1, pp=1, seed=1234)
        try:
            build_model(fixture_config(load_fixture("gqa")), recompute_granularity="full",
                        recompute_method="uniform", recompute_num_layers=1)
            res["recompute_refused"] = 0.0
        except ValueError as exc:
            res["recompute_refused"] = float("recompute" in str(exc))
    for layout, tp, pp, sp, vpp in payload.get("checkpoint_layouts", []):
        name, directory = payload["checkpoint"]
        for k, v in run_case(name, tp, pp, sp, vpp, checkpoint=directory).items():
            res[f"{name}/{layout}/ckpt/{k}"] = v
    return res

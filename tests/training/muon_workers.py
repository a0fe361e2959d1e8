"""Rank functions for test_muon_parallel.py (a plain module so that spawned ranks can unpickle
them) and the test-side nanochat reference optimizer.

The reference is written from nanochat's definition (karpathy/nanochat 92d63d4, nanochat/optim.py
``muon_step_fused`` and ``adamw_step_fused``; nanochat/gpt.py ``setup_optimizer``), on full
single-process tensors, with separate Q/K/V and gate/up matrices as nanochat's model has them.
It imports nothing from megatron_ar.training.muon."""
from __future__ import annotations

from typing import Dict, List

import torch

PE = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def nanochat_muon_step(p, grad, buf, second, momentum, lr, wd, beta2, ns_steps):
    """nanochat's muon_step_fused for ONE matrix (stack of 1), fp32; ``second`` is the factored
    (rows,1)/(1,cols) buffer. Updates p, buf, second in place. ``lr`` is the group LR: the
    sqrt(max(1, rows/cols)) factor is applied here, as nanochat's _compute_muon does."""
    P, G, B = p.unsqueeze(0), grad.clone().unsqueeze(0), buf.unsqueeze(0)
    S = second.unsqueeze(0)
    lr = lr * max(1.0, p.shape[-2] / p.shape[-1]) ** 0.5
    red = -1 if p.shape[-2] >= p.shape[-1] else -2
    B.lerp_(G, 1 - momentum)
    g = G.lerp_(B, momentum)
    X = g
    target = X.norm(dim=(-2, -1), keepdim=True) / (X.size(-2) ** 0.5)
    row_norm = X.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    X = X * (target / row_norm)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.01 + 1e-6)
    if g.size(-2) > g.size(-1):
        for a, b, c in PE[:ns_steps]:
            A = X.mT @ X
            X = a * X + X @ (b * A + c * (A @ A))
    else:
        for a, b, c in PE[:ns_steps]:
            A = X @ X.mT
            X = a * X + (b * A + c * (A @ A)) @ X
    g = X
    g = g * (min(g.size(-2), g.size(-1)) ** 0.5 / g.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-6))
    v_mean = g.square().mean(dim=red, keepdim=True)
    n = g.size(red)
    v_norm = (v_mean.sum(dim=(-2, -1), keepdim=True) * n).sqrt()
    S.lerp_(v_mean, 1 - beta2)
    step_size = S.clamp_min(1e-10).rsqrt()
    v_norm_new = ((v_mean * n) * step_size.square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    g = g * (step_size * (v_norm / v_norm_new.clamp_min(1e-10)))
    mask = (g * P) >= 0
    P.sub_(lr * g + lr * wd * P * mask)


def _role(name, t):
    if t.ndim < 2:
        return "scalar"
    if "embedding" in name:
        return "embedding"
    if "output_layer" in name:
        return "output"
    return "muon"


def _pieces(name, shape, cfg):
    """Row index sets of the separate matrices inside a fused full weight (nanochat: c_q, c_k,
    c_v; gate and up of a GLU)."""
    rows = shape[0]
    if name.endswith("linear_qkv.weight"):
        kv = cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads
        q = cfg.num_attention_heads // (cfg.num_query_groups or cfg.num_attention_heads) * kv
        per = q + 2 * kv
        base = torch.arange(rows // per).unsqueeze(1) * per
        return [(base + torch.arange(lo, hi)).reshape(-1) for lo, hi in ((0, q), (q, q + kv), (q + kv, per))]
    if name.endswith("linear_fc1.weight") and cfg.activation in ("swiglu", "geglu"):
        return [torch.arange(0, rows // 2), torch.arange(rows // 2, rows)]
    return [torch.arange(rows)]


class NanochatReference:
    """Muon on every (sub-)matrix + nanochat's AdamW groups (torch AdamW == adamw_step_fused)."""

    def __init__(self, state: Dict[str, torch.Tensor], cfg, o: dict):
        self.cfg, self.o = cfg, o
        self.params = {k: v.clone() for k, v in state.items()}
        scale = (cfg.hidden_size / 768) ** -0.5
        spec = {"embedding": (o["embedding_lr"] * scale, (0.8, 0.995), 0.001),
                "output": (o["unembedding_lr"] * scale, (0.8, 0.96), 0.01),
                "scalar": (o["scalar_lr"] * 0.01, (0.8, 0.95), 0.05)}
        self.adam_params = {k: v.clone().requires_grad_(True) for k, v in state.items()
                            if _role(k, v) != "muon"}
        groups = [{"params": [p for k, p in self.adam_params.items() if _role(k, p) == r],
                   "lr": lr, "betas": b, "weight_decay": wd} for r, (lr, b, wd) in spec.items()]
        self.adam = torch.optim.AdamW([g for g in groups if g["params"]], eps=o["eps"])
        self.muon_state = {}

    def step(self, grads: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        o = self.o
        for k, p in self.adam_params.items():
            p.grad = grads[k].clone()
        self.adam.step()
        for k, p in self.adam_params.items():
            self.params[k] = p.detach().clone()
        for k, p in self.params.items():
            if _role(k, p) != "muon":
                continue
            for i, rows in enumerate(_pieces(k, p.shape, self.cfg)):
                sub = p.index_select(0, rows)
                key = (k, i)
                if key not in self.muon_state:
                    red_shape = (sub.shape[0], 1) if sub.shape[0] >= sub.shape[1] else (1, sub.shape[1])
                    self.muon_state[key] = (torch.zeros_like(sub), torch.zeros(red_shape))
                buf, second = self.muon_state[key]
                nanochat_muon_step(sub, grads[k].index_select(0, rows), buf, second,
                                   o["momentum"], o["lr"], o["weight_decay"], o["beta2"], o["ns_steps"])
                p.index_copy_(0, rows, sub)
        return {k: v.clone() for k, v in self.params.items()}


# ----------------------------------------------------------------------------------------------
# rank side
# ----------------------------------------------------------------------------------------------
def _train_config(o: dict, tp: int):
    from megatron_ar.training.config import TrainConfig

    cfg = TrainConfig()
    opt = cfg.optimizer
    opt.optimizer, opt.lr, opt.min_lr, opt.weight_decay = "muon", o["lr"], o["lr"], o["weight_decay"]
    opt.adam_eps, opt.clip_grad, opt.bf16 = o["eps"], 0.0, False
    opt.muon_momentum, opt.muon_beta2, opt.muon_ns_steps = o["momentum"], o["beta2"], o["ns_steps"]
    opt.muon_embedding_lr, opt.muon_unembedding_lr = o["embedding_lr"], o["unembedding_lr"]
    opt.muon_scalar_lr = o["scalar_lr"]
    cfg.parallel.tensor_model_parallel_size = tp
    return cfg


def _grads_of(chunks, cfg, microbatches, ddp):
    from megatron_ar.models import gather_full_state_dict, run_forward_backward

    for c in chunks:
        c.train()
        if ddp:
            c.zero_grad_buffer()
        c.zero_grad()
    run_forward_backward(chunks, microbatches)
    return gather_full_state_dict(chunks, cfg, grads=True)


def parity_suite(payload) -> dict:
    """Per layout (single process reference, TP=2, DP=2): full parameters after each of
    ``steps`` optimizer steps of ``optimizer: muon``; max abs diff against the reference."""
    import warnings

    warnings.filterwarnings("ignore")
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from megatron_ar.models import (ModelConfig, build_model, gather_full_state_dict,
                                    load_full_state_dict, wrap_with_ddp)
    from megatron_ar.runtime import init_distributed
    from megatron_ar.training.optimizer import build_optimizer

    mc = ModelConfig.from_dict(payload["cfg"])
    o, mbs, steps = payload["opt"], payload["microbatches"], payload["steps"]

    # single-process reference: local model (TP=1, no DDP), nanochat reference optimizer.
    # Initial weights: the built model's shapes filled from a seeded generator (same on every
    # rank); norm weights around 1, matrices ~ N(0, 0.08^2).
    init_distributed(tp=1, pp=1, seed=1234)
    gen = torch.Generator().manual_seed(payload["seed"])
    shapes = gather_full_state_dict(build_model(mc), mc)
    state0 = {k: (1.0 + 0.1 * torch.randn(v.shape, generator=gen)) if v.ndim == 1
              else 0.08 * torch.randn(v.shape, generator=gen) for k, v in sorted(shapes.items())}
    payload = dict(payload, state=state0)
    chunks = build_model(mc)
    load_full_state_dict(chunks, payload["state"], mc)
    ref = NanochatReference(payload["state"], mc, o)
    ref_after: List[Dict[str, torch.Tensor]] = []
    for _ in range(steps):
        grads = _grads_of(chunks, mc, mbs, ddp=False)
        after = ref.step(grads)
        ref_after.append(after)
        chunks = build_model(mc)
        load_full_state_dict(chunks, after, mc)

    res = {}
    for layout, tp in (("tp2", 2), ("dp2", 1)):
        init_distributed(tp=tp, pp=1, seed=1234)
        from megatron.core import parallel_state as ps

        dp, r = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
        n = len(mbs) // dp
        chunks = build_model(mc)
        load_full_state_dict(chunks, payload["state"], mc)
        chunks = wrap_with_ddp(chunks, use_distributed_optimizer=False)
        cfg = _train_config(o, tp)
        optimizer = build_optimizer(cfg, chunks, use_gloo_process_groups=False)
        OptimizerParamScheduler(optimizer, init_lr=o["lr"], max_lr=o["lr"], min_lr=o["lr"],
                                lr_warmup_steps=0, lr_decay_steps=10, lr_decay_style="constant",
                                start_wd=o["weight_decay"], end_wd=o["weight_decay"],
                                wd_incr_steps=10, wd_incr_style="constant")
        diffs = []
        for s in range(steps):
            optimizer.zero_grad()  # as the training loop does (megatron_ar.training.loop)
            _grads_of(chunks, mc, mbs[r * n:(r + 1) * n], ddp=True)
            ok, _, _ = optimizer.step()
            assert ok
            got = gather_full_state_dict(chunks, mc)
            per = {k: float((got[k] - ref_after[s][k]).abs().max()) for k in ref_after[s]}
            moved = {k: float((ref_after[s][k] - payload["state"][k]).abs().max()) for k in per}
            muon = [v for k, v in per.items() if _role(k, got[k]) == "muon"]
            diffs.append({"max": max(per.values()), "worst": max(per, key=per.get),
                          "max_muon": max(muon), "n_muon": len(muon),
                          "min_update": min(moved.values()), "n": len(per)})
        groups = [(type(sub.optimizer).__name__, sum(len(g["params"]) for g in sub.optimizer.param_groups))
                  for sub in optimizer.chained_optimizers]
        res[layout] = {"steps": diffs, "subs": groups}

    # bf16 at TP=2: megatron-core's Float16OptimizerWithFloat16Params around Muon (fp32 main
    # copies). One step against the fp32 reference, Muon parameters only (bf16 forward/backward
    # and bf16 weights: a looser, measured bound).
    from megatron_ar.models.builder import unwrap
    from megatron_ar.training.builder import build_model_and_optimizer

    init_distributed(tp=2, pp=1, seed=1234)
    cfg = _train_config(o, 2)
    cfg.optimizer.bf16 = True
    model, optimizer = build_model_and_optimizer(cfg, mc, use_gloo_process_groups=False)
    load_full_state_dict(unwrap(model), payload["state"], mc)
    optimizer.reload_model_params()
    OptimizerParamScheduler(optimizer, init_lr=o["lr"], max_lr=o["lr"], min_lr=o["lr"],
                            lr_warmup_steps=0, lr_decay_steps=10, lr_decay_style="constant",
                            start_wd=o["weight_decay"], end_wd=o["weight_decay"],
                            wd_incr_steps=10, wd_incr_style="constant")
    muon_opt = optimizer.chained_optimizers[0]
    splits = [(getattr(mp, "muon_split", None), getattr(fp, "muon_split", None))
              for mg, fg in zip(muon_opt.float16_groups, muon_opt.fp32_from_float16_groups)
              for mp, fp in zip(mg, fg)]
    optimizer.zero_grad()
    _grads_of(model, mc, mbs, ddp=True)
    ok, _, _ = optimizer.step()
    got = gather_full_state_dict(model, mc)
    per = {k: float((got[k] - ref_after[0][k]).abs().max()) for k in got
           if _role(k, got[k]) == "muon"}
    res["bf16_tp2"] = {"ok": bool(ok), "max_muon": max(per.values()), "n_muon": len(per),
                       "wrapper": type(muon_opt).__name__, "splits": splits}
    return res


def resume_suite(runs: List[dict]) -> Dict[str, dict]:
    """The real training path (load_config -> build_run -> fit; resumes from the run's own
    checkpoints when there are any) for each run in order; returns per-step loss/grad norm and
    the full parameters at the end."""
    import warnings

    warnings.filterwarnings("ignore")
    from megatron.core import parallel_state

    from megatron_ar.models import gather_full_state_dict
    from megatron_ar.training.builder import build_run
    from megatron_ar.training.callbacks import CheckpointCallback
    from megatron_ar.training.config import load_config
    from megatron_ar.training.loop import fit

    out = {}
    for run in runs:
        cfg = load_config(run["recipe"], list(run["overrides"]))
        state = build_run(cfg, callbacks=[CheckpointCallback(cfg)] if run["save"] else [])
        fit(state)
        out[run["name"]] = {
            "steps": {m["step"]: (m["loss"], m["grad_norm"]) for m in state.history},
            "params": gather_full_state_dict(state.model, state.model_config)}
        del state
        parallel_state.destroy_model_parallel()
    return out

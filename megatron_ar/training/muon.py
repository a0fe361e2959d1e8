"""Muon for the hidden matrices, AdamW for the rest: nanochat's optimizer on megatron-core.

Reference: karpathy/nanochat at commit 92d63d4e8bb4df75c3b71618f31ddde2378b2bcd
(``nanochat/optim.py``: ``muon_step_fused`` / ``MuonAdamW``; ``nanochat/gpt.py``:
``GPT.setup_optimizer``; ``scripts/base_train.py``: LR flags). The autoresearch-v2 540M card
names nanochat as its training framework; this module reproduces its optimizer.

The Muon step (per matrix, nanochat's order; :func:`muon_direction` + :meth:`Muon.step`)
1. Nesterov momentum: ``buf.lerp_(g, 1 - m)``; ``g = g.lerp(buf, m)`` (m = ``muon_momentum``).
2. MuonEq row equilibration (arXiv:2603.28254): every row rescaled to the mean row norm.
3. Polar Express (Amsel et al., arXiv:2505.16932): ``X /= 1.01 |X|_F + 1e-6``, then
   ``ns_steps`` (<= 5) quintic steps with nanochat's 5 coefficient triples, ``X^T X`` form for tall
   matrices, ``X X^T`` for wide ones.
4. Muon+ renormalisation (arXiv:2602.21545): Frobenius norm snapped to sqrt(min(rows, cols)).
5. NorMuon variance reduction (arXiv:2510.05491): an EMA (``muon_beta2``) of the mean square
   per row (tall/square) or per column (wide), update rescaled by its rsqrt, then renormalised to
   the Frobenius norm it had before.
6. Cautious weight decay with the shape-scaled LR ``lr_eff = lr * sqrt(max(1, rows/cols))``:
   ``p -= lr_eff * u + lr_eff * wd * p * [u * p >= 0]``.

Parameter groups (by rule, so per-layer scalars added later land in the right group)
- Muon: every parameter with ``ndim >= 2`` that is not an embedding or the output layer.
- AdamW (megatron-core's ``get_megatron_optimizer``, torch AdamW / TE FusedAdam):
  ``embedding`` (name contains ``embedding``, or the tied output copy ``shared_embedding``):
  LR ``muon_embedding_lr * (hidden/768)^-0.5``, betas (0.8, 0.995), wd 0.001;
  ``output`` (``output_layer``): LR ``muon_unembedding_lr * (hidden/768)^-0.5``, betas (0.8, 0.96),
  wd 0.01; ``scalar`` (``ndim < 2``: norm weights, biases, per-layer scalars): LR
  ``muon_scalar_lr * 0.01``, betas (0.8, 0.95), wd 0.05 -- nanochat's ``resid_lambdas`` group,
  the nearest analogue of per-channel gains initialised at 1 (nanochat's norms have no weights).
  eps is ``optimizer.adam_eps`` (nanochat: 1e-10); ``adam_beta1/2`` are not read with Muon.
  Each group's weight decay is its ``wd_mult`` (over a base of 1): megatron-core matches saved
  param groups to live ones by ``wd_mult``/``lr_mult``/..., so the groups must differ there.
- LR fields carry nanochat's ``base_train.py`` flag values (0.02 / 0.3 / 0.008 / 0.5); the
  ``(hidden/768)^-0.5`` and ``x0.01`` factors of ``setup_optimizer`` are applied here. Every
  group follows the one megatron-core schedule: its ``max_lr`` is the value above and its
  ``min_lr`` the same fraction ``min_lr / lr`` of it (nanochat scales all groups by one
  multiplier).

Fused matrices: nanochat has separate ``c_q``, ``c_k``, ``c_v`` and a non-gated MLP; megatron
fuses QKV (rows interleaved per query group) and, for SwiGLU, gate/up in ``linear_fc1``. Each
fused weight is orthogonalised per logical sub-matrix (Q of all heads, K, V; gate, up), each
with its own shape scale and NorMuon statistics, i.e. what the unfused model would do. Row order
inside a sub-matrix does not matter (every step is equivariant to row permutations).

Tensor parallelism: a TP-sharded matrix is orthogonalised as the full matrix: each sub-matrix's
momentum-updated gradient is all-gathered along ``param.partition_dim`` over the TP group, every
TP rank computes the identical full update ("duplicated" mode) and keeps its slice. Data
parallelism without the distributed optimizer: gradients are all-reduced by DDP, every rank
runs the same step.

Refused, with the config field named (``training.config.validate``): the distributed optimizer
(``parallel.use_distributed_optimizer``: it shards flat buffers across DP, so a rank holds an
arbitrary piece of a matrix; supporting it means gathering whole matrices per step, not done
here) and ``use_precision_aware_optimizer``.

Why not megatron-core's ``megatron/core/optimizer/muon.py`` (read in 0.16.1): its
``TensorParallelMuon`` subclasses ``emerging_optimizers``' ``OrthogonalizedOptimizer`` and calls
its ``newton_schulz_tp`` / ``get_muon_scale_factor``; that package is not installable here (only a
placeholder), so ``get_megatron_muon_optimizer`` stops at ``assert HAVE_EMERGING_OPTIMIZERS``.
Its options: momentum (Nesterov or not), decoupled or L2 weight decay, ``num_ns_steps`` with a
``coefficient_type`` (default "quintic") and a ``scale_mode`` (default "spectral") defined inside
that package, optional QKV splitting, TP modes blockwise / duplicated / distributed. It raises on
the distributed optimizer and on fp16, and sends every non-2-D / embedding / output parameter to
one ``get_megatron_optimizer`` AdamW call. Nothing there corresponds to MuonEq, the Polar Express
coefficients, Muon+, NorMuon or cautious weight decay. We follow its construction (freeze the
other parameters, wrap the inner optimizer in megatron-core's ``FP32Optimizer`` /
``Float16OptimizerWithFloat16Params``, build AdamW with ``get_megatron_optimizer`` and chain both
in ``ChainedOptimizer``), so gradient clipping, bf16 master weights and checkpointing are
megatron-core's.

Deviations from nanochat, on purpose
- fp32 arithmetic throughout (nanochat runs the polar iteration in bf16 on GPU for speed).
- Momentum and Muon weight decay are constant (``muon_momentum``, ``weight_decay``); nanochat
  ramps momentum 0.85 -> 0.97 -> 0.90 and cosine-decays weight decay to 0, and rescales LRs and
  weight decay with batch size/depth: set the recipe values accordingly. The LR schedule is
  megatron-core's (the recipe's warmup/decay), not nanochat's warmup/constant/warmdown.
- Gradient clipping (``optimizer.clip_grad``) is megatron-core's, over all parameters.
- The NorMuon second moment is stored expanded to the parameter's (local) shape, not factored:
  megatron-core's checkpointing requires parameter-shaped optimizer state
  (``optim_state_to_sharding_state``), and this makes it reshard across TP like Adam's state.
  Cost: Muon state = 2 x params, Adam's size.
- nanochat shards Muon work across ranks (ZeRO-2 style); here every DP rank computes all of it.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

#: Polar Express coefficients (num_iters=5, safety 2e-2, cushion 2), nanochat/optim.py.
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

#: nanochat GPT.setup_optimizer's AdamW groups: (betas, weight decay, LR factor rule).
ADAMW_GROUPS = {
    "embedding": ((0.8, 0.995), 0.001),
    "output": ((0.8, 0.96), 0.01),
    "scalar": ((0.8, 0.95), 0.05),
}
SCALAR_LR_FACTOR = 0.01  # nanochat: resid_lambdas lr = scalar_lr * 0.01
DMODEL_REF = 768  # nanochat: AdamW LRs of (un)embedding scale by (d_model / 768) ** -0.5


# ----------------------------------------------------------------------------------------------
# The per-matrix math (full matrices; no communication)
# ----------------------------------------------------------------------------------------------
def orthogonalize(g: torch.Tensor, ns_steps: int) -> torch.Tensor:
    """MuonEq row equilibration, Polar Express (``ns_steps`` iterations), Muon+ renormalisation."""
    x = g
    target = x.norm() / (x.size(-2) ** 0.5)
    x = x * (target / x.norm(dim=-1, keepdim=True).clamp_min(1e-6))
    x = x / (x.norm() * 1.01 + 1e-6)
    if g.size(-2) > g.size(-1):
        for a, b, c in POLAR_EXPRESS_COEFFS[:ns_steps]:
            A = x.mT @ x
            x = a * x + x @ (b * A + c * (A @ A))
    else:
        for a, b, c in POLAR_EXPRESS_COEFFS[:ns_steps]:
            A = x @ x.mT
            x = a * x + (b * A + c * (A @ A)) @ x
    target_norm = min(g.size(-2), g.size(-1)) ** 0.5
    return x * (target_norm / x.norm().clamp_min(1e-6))


def red_dim(shape: Sequence[int]) -> int:
    """NorMuon's reduction dim: per-row statistics (-1) for tall/square, per-column (-2) for wide."""
    return -1 if shape[-2] >= shape[-1] else -2


def variance_reduce(u: torch.Tensor, second: torch.Tensor, beta2: float) -> torch.Tensor:
    """NorMuon: update the factored second moment ``second`` (rows x 1 or 1 x cols) in place and
    return the rescaled update."""
    rd = red_dim(u.shape)
    v_mean = u.square().mean(dim=rd, keepdim=True)
    n = u.size(rd)
    v_norm = (v_mean.sum() * n).sqrt()
    second.lerp_(v_mean, 1 - beta2)
    step_size = second.clamp_min(1e-10).rsqrt()
    v_norm_new = ((v_mean * n) * step_size.square()).sum().sqrt()
    return u * (step_size * (v_norm / v_norm_new.clamp_min(1e-10)))


def lr_scale(shape: Sequence[int]) -> float:
    """nanochat's Muon LR factor sqrt(max(1, rows/cols)) of the (full) matrix."""
    return max(1.0, shape[-2] / shape[-1]) ** 0.5


# ----------------------------------------------------------------------------------------------
# Sub-matrices of fused weights (row index sets of the local shard)
# ----------------------------------------------------------------------------------------------
def sub_rows(split, rows: int, device=None) -> List[Optional[torch.Tensor]]:
    """Row indices of each logical sub-matrix of a local weight with ``rows`` rows; ``[None]``
    for an unfused matrix. ``("qkv", q_per_group_rows, kv_rows)``: megatron's interleaved
    [q_g; k_g; v_g] per query group; ``("glu",)``: [gate; up] halves."""
    if not split:
        return [None]
    if split[0] == "glu":
        half = rows // 2
        return [torch.arange(0, half, device=device), torch.arange(half, rows, device=device)]
    _, q, kv = split
    per = q + 2 * kv
    groups = rows // per
    base = torch.arange(groups, device=device).unsqueeze(1) * per
    return [(base + torch.arange(lo, hi, device=device)).reshape(-1)
            for lo, hi in ((0, q), (q, q + kv), (q + kv, per))]


def _gather(t: torch.Tensor, dim: int, group) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def _slice(t: torch.Tensor, dim: int, group) -> torch.Tensor:
    n, r = dist.get_world_size(group), dist.get_rank(group)
    size = t.size(dim) // n
    return t.narrow(dim, r * size, size)


class Muon(torch.optim.Optimizer):
    """nanochat's Muon step for 2-D parameters, TP-aware (see the module docstring).

    Group keys: ``lr``, ``weight_decay`` (cautious, scaled by the shape-scaled LR), ``momentum``,
    ``beta2``, ``ns_steps``. A fused weight carries ``param.muon_split``: ``("qkv", q_rows,
    kv_rows)`` or ``("glu",)`` (an attribute, not a group key: megatron-core matches saved param
    groups to live ones by ``wd_mult``/``lr_mult``/..., so groups that differ only in a key of
    ours would be confused on load). State per parameter: ``momentum_buffer`` and
    ``second_momentum_buffer`` (parameter-shaped)."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, beta2: float = 0.9,
                 ns_steps: int = 5, weight_decay: float = 0.0, tp_group=None):
        if not 1 <= ns_steps <= len(POLAR_EXPRESS_COEFFS):
            raise ValueError(f"ns_steps must be in 1..{len(POLAR_EXPRESS_COEFFS)}, got {ns_steps}")
        defaults = dict(lr=lr, momentum=momentum, beta2=beta2, ns_steps=ns_steps,
                        weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.tp_group = tp_group

    @staticmethod
    def init_state(opt, config=None) -> None:
        """Zero state for every parameter (megatron-core's ``init_state_fn`` hook, used before
        loading a checkpoint)."""
        for group in opt.param_groups:
            for p in group["params"]:
                st = opt.state[p]
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = torch.zeros_like(p)
                    st["second_momentum_buffer"] = torch.zeros_like(p)

    def _tp(self, p) -> Tuple[Optional[int], object]:
        group = self.tp_group
        if (group is None or dist.get_world_size(group) == 1
                or not getattr(p, "tensor_model_parallel", False)):
            return None, None
        return int(p.partition_dim), group

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("Muon.step does not take a closure")
        Muon.init_state(self)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._step_param(p, group)

    def _step_param(self, p, group) -> None:
        st = self.state[p]
        buf, second = st["momentum_buffer"], st["second_momentum_buffer"]
        m = group["momentum"]
        buf.lerp_(p.grad, 1 - m)
        g = p.grad.lerp(buf, m)
        pdim, tp = self._tp(p)
        update = torch.empty_like(g)
        scale = torch.empty_like(g[:, :1])  # the shape-scaled LR factor of each row's sub-matrix
        for rows in sub_rows(getattr(p, "muon_split", None), g.size(0), g.device):
            gl = g if rows is None else g.index_select(0, rows)
            sl = second if rows is None else second.index_select(0, rows)
            full = gl if tp is None else _gather(gl, pdim, tp)
            rd = red_dim(full.shape)
            # The stored statistics are expanded along rd: one row/column of them is the factor;
            # gathered over TP only when the shard cuts across it.
            cut = tp is not None and (pdim - 2) != rd
            fac = sl.narrow(rd, 0, 1)
            fac = (_gather(fac, pdim, tp) if cut else fac).clone()
            u = variance_reduce(orthogonalize(full, group["ns_steps"]), fac, group["beta2"])
            fac_local = _slice(fac, pdim, tp) if cut else fac
            ul = u if tp is None else _slice(u, pdim, tp)
            if rows is None:
                update.copy_(ul)
                second.copy_(fac_local.expand_as(second))
                scale.fill_(lr_scale(full.shape))
            else:
                update.index_copy_(0, rows, ul)
                second.index_copy_(0, rows, fac_local.expand(len(rows), second.size(1)).contiguous())
                scale.index_fill_(0, rows, lr_scale(full.shape))
        lr = group["lr"] * scale
        mask = (update * p) >= 0
        p.sub_(lr * update + lr * group["weight_decay"] * p * mask)


# ----------------------------------------------------------------------------------------------
# Building the chained optimizer
# ----------------------------------------------------------------------------------------------
def param_role(name: str, param) -> str:
    """``muon`` | ``embedding`` | ``output`` | ``scalar`` by rule (ndim and name)."""
    if param.ndim < 2:
        return "scalar"
    if getattr(param, "shared_embedding", False) or "embedding" in name:
        return "embedding"
    if "output_layer" in name:
        return "output"
    return "muon"


def _muon_split(name: str, config) -> Optional[tuple]:
    if name.endswith("linear_qkv.weight"):
        kv = config.kv_channels
        q = config.num_attention_heads // config.num_query_groups * kv
        return ("qkv", q, kv)
    if name.endswith("linear_fc1.weight") and config.gated_linear_unit:
        return ("glu",)
    return None


def adamw_overrides(o, hidden_size: int) -> Dict:
    """megatron-core ``config_overrides`` for the AdamW part (per-group LR, betas, weight decay)."""
    from megatron.core.optimizer.optimizer_config import ParamKey, ParamWithNamePredicate

    scale = (hidden_size / DMODEL_REF) ** -0.5
    frac = o.min_lr / o.lr
    lrs = {"embedding": o.muon_embedding_lr * scale, "output": o.muon_unembedding_lr * scale,
           "scalar": o.muon_scalar_lr * SCALAR_LR_FACTOR}
    out = {}
    for role, (betas, wd) in ADAMW_GROUPS.items():
        pred = ParamWithNamePredicate(name=f"muon_adamw_{role}",
                                      fn=lambda p, n, role=role: param_role(n, p) == role)
        # Weight decay as wd_mult over a per-group base of 1: megatron-core matches saved param
        # groups to live ones by (wd_mult, lr_mult, is_expert_parallel, is_decoupled_lr)
        # (optimizer.py param_group_identifier_keys), so the groups must differ in one of them.
        out[ParamKey(with_name_predicate=pred)] = {
            "max_lr": lrs[role], "min_lr": lrs[role] * frac, "start_wd": 1.0, "end_wd": 1.0,
            "wd_mult": wd, "betas": betas}
    assert len({wd for _, wd in ADAMW_GROUPS.values()}) == len(ADAMW_GROUPS)
    return out


def build_muon_optimizer(cfg, model_chunks, megatron_config, use_gloo_process_groups: bool):
    """megatron-core ``ChainedOptimizer``: [Muon (wrapped), AdamW sub-optimizers]."""
    from megatron.core import parallel_state
    from megatron.core.optimizer import get_megatron_optimizer
    from megatron.core.optimizer.optimizer import (ChainedOptimizer,
                                                   Float16OptimizerWithFloat16Params,
                                                   FP32Optimizer)
    from megatron.core.utils import get_model_config

    o = cfg.optimizer
    mconf = get_model_config(model_chunks[0])
    muon_list = []
    for chunk in model_chunks:
        for name, p in chunk.named_parameters():
            if p.requires_grad and param_role(name, p) == "muon":
                p.muon_split = _muon_split(name, mconf)
                muon_list.append(p)
    # One group (also when empty on this rank: megatron-core's checkpointing expects the same
    # param groups on every rank, and pipeline stages differ in parameters).
    group = {"params": muon_list, "max_lr": o.lr, "min_lr": o.min_lr, "wd_mult": 1.0,
             "lr_mult": 1.0, "is_expert_parallel": False, "is_decoupled_lr": False,
             "default_config": True}
    muon = Muon([group], lr=o.lr, momentum=o.muon_momentum, beta2=o.muon_beta2,
                ns_steps=o.muon_ns_steps, weight_decay=o.weight_decay,
                tp_group=parallel_state.get_tensor_model_parallel_group())
    if megatron_config.bf16:
        wrapped = Float16OptimizerWithFloat16Params(muon, megatron_config, None, Muon.init_state)
        # the fp32 main copies replace the model params in the group: give them the split too
        for model_ps, main_ps in zip(wrapped.float16_groups, wrapped.fp32_from_float16_groups):
            for mp, fp in zip(model_ps, main_ps):
                fp.muon_split = getattr(mp, "muon_split", None)
    else:
        wrapped = FP32Optimizer(muon, megatron_config, Muon.init_state)

    for p in muon_list:
        p.requires_grad_(False)
    try:
        adam = get_megatron_optimizer(megatron_config, model_chunks,
                                      config_overrides=adamw_overrides(o, mconf.hidden_size),
                                      use_gloo_process_groups=use_gloo_process_groups)
    finally:
        for p in muon_list:
            p.requires_grad_(True)
    first = adam.chained_optimizers[0]
    # Same grad-norm group and TP group as megatron-core's own sub-optimizers, so the chained
    # optimizer computes ONE global norm for clipping (ChainedOptimizer.get_grad_norm).
    wrapped.grad_stats_parallel_group = first.get_grad_stats_parallel_group()
    wrapped.tp_group = getattr(first, "tp_group", parallel_state.get_tensor_model_parallel_group())
    return ChainedOptimizer([wrapped] + list(adam.chained_optimizers))

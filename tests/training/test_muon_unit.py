"""``optimizer: muon`` without process groups: the Muon step against the test's own nanochat
reference (muon_workers.nanochat_muon_step, written from karpathy/nanochat 92d63d4
nanochat/optim.py ``muon_step_fused``), the fused-QKV split against separate matrices, the
polar factor against an SVD, and recipe errors that name the field."""
import os

import pytest
import torch

from muon_workers import nanochat_muon_step

from megatron_ar.training.config import ConfigError, load_config
from megatron_ar.training.muon import Muon, orthogonalize

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_ours(p0, grads, split=None, **hp):
    p = torch.nn.Parameter(p0.clone())
    p.muon_split = split
    opt = Muon([p], **hp)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


@pytest.mark.parametrize("shape", [(48, 32), (32, 80), (40, 40)])
def test_muon_steps_match_nanochat_reference(shape):
    """Three steps (momentum and NorMuon state carried), tall / wide / square."""
    gen = torch.Generator().manual_seed(sum(shape))
    p0 = 0.1 * torch.randn(shape, generator=gen)
    grads = [torch.randn(shape, generator=gen) for _ in range(3)]
    hp = dict(lr=0.02, momentum=0.9, beta2=0.8, ns_steps=5, weight_decay=0.3)
    ours = _run_ours(p0, grads, **hp)
    ref = p0.clone()
    buf = torch.zeros(shape)
    second = torch.zeros((shape[0], 1) if shape[0] >= shape[1] else (1, shape[1]))
    for g in grads:
        nanochat_muon_step(ref, g, buf, second, hp["momentum"], hp["lr"], hp["weight_decay"],
                           hp["beta2"], hp["ns_steps"])
    diff = float((ours - ref).abs().max())
    moved = float((ref - p0).abs().max())
    print(f"\n{shape}: max |ours - nanochat reference| = {diff:.2e} (update {moved:.2e})")
    assert diff <= 1e-6 and moved > 1e-2


def test_fused_qkv_equals_separate_matrices():
    """GQA 2 groups x (2 q heads + k + v) of 8 rows, hidden 24: Muon on the fused weight with
    ``("qkv", 16, 8)`` equals Muon on separate Q (32x24), K (16x24), V (16x24) matrices."""
    gen = torch.Generator().manual_seed(5)
    groups, q, kv, h = 2, 16, 8, 24
    per = q + 2 * kv
    p0 = 0.1 * torch.randn(groups * per, h, generator=gen)
    grads = [torch.randn(groups * per, h, generator=gen) for _ in range(2)]
    hp = dict(lr=0.02, momentum=0.95, beta2=0.9, ns_steps=5, weight_decay=0.1)
    fused = _run_ours(p0, grads, split=("qkv", q, kv), **hp)
    pieces = {"q": [], "k": [], "v": []}
    for gi in range(groups):
        base = gi * per
        pieces["q"] += list(range(base, base + q))
        pieces["k"] += list(range(base + q, base + q + kv))
        pieces["v"] += list(range(base + q + kv, base + per))
    sep = torch.empty_like(p0)
    for rows in pieces.values():
        idx = torch.tensor(rows)
        sep[idx] = _run_ours(p0[idx], [g[idx] for g in grads], **hp)
    whole = _run_ours(p0, grads, **hp)
    diff, vs_whole = float((fused - sep).abs().max()), float((fused - whole).abs().max())
    print(f"\nfused vs separate: {diff:.2e}; fused vs one matrix: {vs_whole:.2e}")
    assert diff <= 1e-6 and vs_whole > 1e-3


def test_polar_express_approximates_the_polar_factor():
    """After 5 Polar Express steps the (Muon+-renormalised) result is close to U V^T of the
    row-equilibrated input (torch.linalg.svd as the oracle)."""
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(64, 32, generator=gen) @ torch.diag(torch.logspace(0, -2, 32))
    x = g * (g.norm() / 64 ** 0.5 / g.norm(dim=-1, keepdim=True))
    u, _, vh = torch.linalg.svd(x, full_matrices=False)
    o = orthogonalize(g, 5)
    cos = float((o * (u @ vh)).sum() / (o.norm() * (u @ vh).norm()))
    sv = torch.linalg.svdvals(o)
    print(f"\ncosine to U V^T {cos:.4f}; singular values in [{float(sv.min()):.3f}, {float(sv.max()):.3f}]")
    assert cos > 0.95
    assert abs(float(o.norm()) - 32 ** 0.5) < 1e-4


BASE = """\
model:
  preset: tiny-llama
  seq_length: 64
optimizer:
  optimizer: muon
  lr: 2.0e-2
  min_lr: 2.0e-3
schedule:
  micro_batch_size: 2
  global_batch_size: 8
"""


@pytest.mark.parametrize("text,args,needle", [
    (BASE.replace("  min_lr: 2.0e-3\n", "  min_lr: 2.0e-3\n  muon_ns_steps: 7\n"), [],
     "r.yaml:8: optimizer.muon_ns_steps: must be in 1..5"),
    (BASE.replace("  min_lr: 2.0e-3\n", "  min_lr: 2.0e-3\n  muon_momentm: 0.9\n"), [],
     "r.yaml:8: optimizer.muon_momentm: unknown key"),
    (BASE, ["--muon-momentum", "1.0"], "optimizer.muon_momentum: must be in [0, 1)"),
    (BASE, ["--muon-embedding-lr", "0"], "optimizer.muon_embedding_lr: must be > 0"),
    (BASE, ["--use-distributed-optimizer"], "parallel.use_distributed_optimizer: optimizer: muon"),
    (BASE.replace("optimizer: muon", "optimizer: muonn"), [], "optimizer.optimizer: must be"),
])
def test_bad_muon_keys_name_the_field(tmp_path, text, args, needle):
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as ei:
        load_config(str(path), args)
    assert needle in str(ei.value), str(ei.value)


def test_autoresearch_recipe_uses_muon():
    cfg = load_config(os.path.join(REPO, "examples", "recipes", "autoresearch_v2_540m.yaml"))
    o = cfg.optimizer
    assert o.optimizer == "muon" and not cfg.parallel.use_distributed_optimizer
    assert (o.muon_embedding_lr, o.muon_unembedding_lr, o.muon_scalar_lr) == (0.3, 0.008, 0.5)

"""``optimizer: muon`` across layouts and across a resume (fp32, CPU, gloo).

Parity (one launch of 2 ranks): ``tiny-llama`` (GQA 2:1 so the fused QKV has unequal Q and K/V
blocks, SwiGLU so ``linear_fc1`` holds gate and up, RMSNorm weights for the scalar group,
untied embedding/output), same initial weights and batch; two optimizer steps of
``megatron_ar.training.optimizer.build_optimizer`` with ``optimizer: muon`` at TP=2 and at
DP=2 (megatron-core DDP), against the single-process oracle: the same model's full gradients
fed to the test's own nanochat reference optimizer (muon_workers.NanochatReference, written from
nanochat's definition, separate Q/K/V and gate/up matrices). Gradients differ between layouts
by fp32 reduction order only (~1e-7, tests/parallel); tolerance 1e-6 abs on every parameter.
A layout that orthogonalised the TP shard instead of the full matrix, or the fused QKV as one
matrix, is off by the size of an update (~lr = 1e-2).

Resume (one launch of 2 ranks, TP=2 + SP, real data and training path, 4 steps): uninterrupted
run A vs run B stopped by ``exit_interval: 2`` (checkpoint at 2, with Muon's momentum and
NorMuon buffers through megatron-core's sharded optimizer state) and resumed to 4: steps 2-3
loss/grad norm and final parameters bit-identical. Control C resumes B's step-2 checkpoint with
``--no-load-optim`` and must differ (so the test sees a lost optimizer state).
"""
import os

import pytest
import torch

import muon_workers as workers
from train_harness import write_recipe

from megatron_ar.runtime import run_multiprocess

pytestmark = pytest.mark.multiproc

# AdamW LRs: nanochat's eps 1e-10 makes Adam's first step ~ lr * g / |g|, whose sensitivity to
# the fp32 rounding of near-zero embedding gradients is ~lr / |g|; at embedding_lr 0.03 (x3.46 at
# hidden 64) that showed as 6.6e-6 at TP=2 (Muon parameters: <= 7.5e-8). Smaller AdamW LRs keep
# the AdamW groups inside the same 1e-6.
OPT = dict(lr=1e-2, weight_decay=0.2, eps=1e-10, momentum=0.95, beta2=0.9, ns_steps=5,
           embedding_lr=0.003, unembedding_lr=0.002, scalar_lr=0.5)
TOL = 1e-6
# bf16 smoke bound: the model weights (|w| up to ~0.35) are bf16, whose spacing there is 2e-3,
# so this bound is about bf16 rounding, not a check of the update's direction (measured 1.93e-3).
BF16_TOL = 3e-3


@pytest.fixture(scope="module")
def parity():
    from megatron_ar.models import get_preset

    cfg = get_preset("tiny-llama", vocab_size=256)  # no vocab padding at TP 1 or 2: the full
    # state is the whole model (padded rows would be lost when the reference reloads it)
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, cfg.vocab_size, (4, 16), generator=gen)
    labels = torch.randint(0, cfg.vocab_size, (4, 16), generator=gen)
    mbs = [{"tokens": tokens[i:i + 1], "labels": labels[i:i + 1]} for i in range(4)]
    payload = {"cfg": cfg.to_dict(), "microbatches": mbs, "opt": OPT, "steps": 2, "seed": 3}
    return run_multiprocess(workers.parity_suite, 2, payload, timeout=600)


@pytest.mark.parametrize("layout", ["tp2", "dp2"])
def test_muon_step_matches_single_process_nanochat_reference(parity, layout):
    for rank, res in enumerate(parity):
        r = res[layout]
        print(f"\n{layout} rank {rank}: " + "; ".join(
            f"step {i}: max |diff| {d['max']:.2e} ({d['worst']}), Muon params {d['max_muon']:.2e} "
            f"({d['n_muon']} tensors), smallest update {d['min_update']:.2e}"
            for i, d in enumerate(r["steps"])) + f"; sub-optimizers {r['subs']}")
        assert r["subs"][0][0] == "Muon" and r["subs"][0][1] > 0
        for d in r["steps"]:
            assert d["max"] <= TOL, (layout, rank, d)
            assert d["min_update"] > 100 * TOL, d  # every tensor really moved


def test_muon_bf16_main_params_keep_the_split(parity):
    """bf16: Muon runs on megatron-core's fp32 main copies, which carry the fused-weight split
    of their model parameter; one step stays within bf16 rounding of the fp32 reference (a
    wiring check: the fp32 parity above is the numerical one)."""
    for res in parity:
        r = res["bf16_tp2"]
        print(f"\nbf16 TP=2: max |Muon params - fp32 reference| {r['max_muon']:.2e} "
              f"({r['n_muon']} tensors), wrapper {r['wrapper']}")
        assert r["ok"] and r["wrapper"] == "Float16OptimizerWithFloat16Params"
        assert all(m == f for m, f in r["splits"]) and len(r["splits"]) == r["n_muon"]
        assert {m[0] for m, _ in r["splits"] if m} == {"qkv", "glu"}
        assert r["max_muon"] <= BF16_TOL


@pytest.fixture(scope="module")
def resume(tmp_path_factory, train_data):
    root = tmp_path_factory.mktemp("muon_resume")
    common = ["--model.preset", "tiny-llama", "--model.overrides", repr({"vocab_size": 2048}),
              "--pipeline-model-parallel-size", "1", "--no-use-distributed-optimizer",
              "--optimizer.optimizer", "muon", "--lr", "1e-2", "--min-lr", "1e-3",
              "--lr-warmup-iters", "1", "--lr-decay-style", "cosine", "--lr-cooldown-iters", "0",
              "--adam-eps", "1e-10", "--eval-interval", "1000", "--save-interval", "1000"]
    runs = []
    # C (control): B's step-2 checkpoint without the optimizer state (fresh Muon momentum and
    # NorMuon statistics, fresh Adam moments): must NOT reproduce A.
    control = ["--load", str(root / "B" / "checkpoints"), "--save", str(root / "C" / "checkpoints"),
               "--no-load-optim"]
    for name, extra, save in (("A", [], False), ("B1", ["--exit-interval", "2"], True),
                              ("C", control, False), ("B2", [], True)):
        run_dir = str(root / {"A": "A", "C": "C"}.get(name, "B"))
        recipe = write_recipe(str(root / f"{name}.yaml"), train_data, run_dir, train_iters=4)
        runs.append({"name": name, "recipe": recipe, "overrides": common + extra, "save": save})
    out = run_multiprocess(workers.resume_suite, 2, runs, timeout=600)
    assert os.path.isdir(str(root / "B" / "checkpoints"))
    return out


def test_muon_resume_is_bit_exact(resume):
    for res in resume:
        a, b1, b2 = res["A"], res["B1"], res["B2"]
        assert sorted(b1["steps"]) == [0, 1] and sorted(b2["steps"]) == [2, 3], (b1["steps"], b2["steps"])
        for s in (0, 1):
            assert b1["steps"][s] == a["steps"][s]
        for s in (2, 3):
            assert b2["steps"][s] == a["steps"][s], (s, b2["steps"][s], a["steps"][s])
        diff = max(float((b2["params"][k] - a["params"][k]).abs().max()) for k in a["params"])
        moved = min(float((b2["params"][k] - b1["params"][k]).abs().max()) for k in a["params"])
        print(f"\nresume: steps 2-3 losses {[a['steps'][s][0] for s in (2, 3)]}; final params max "
              f"|A - B| = {diff}; smallest per-tensor move over steps 2-3 = {moved:.2e}")
        assert diff == 0.0
        assert moved > 0.0
        c = res["C"]
        c_diff = max(float((c["params"][k] - a["params"][k]).abs().max()) for k in a["params"])
        print(f"control without optimizer state: step 3 loss {c['steps'][3][0]} vs {a['steps'][3][0]}, "
              f"final params max |A - C| = {c_diff:.2e}")
        assert sorted(c["steps"]) == [2, 3] and c["steps"][2][0] == a["steps"][2][0]
        assert c["steps"][3] != a["steps"][3] and c_diff > 1e-4

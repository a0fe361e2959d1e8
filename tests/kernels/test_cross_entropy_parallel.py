"""Multi-process (gloo) checks of the fused vocab-parallel cross-entropy: each rank holds its
vocab shard and compares loss and gradient shard with megatron-core's
``vocab_parallel_cross_entropy(softcap(shard).clone(), target)`` run in the same processes
(TP=1 and TP=2 in one 2-rank launch, TP=4 in a 4-rank launch), extension and torch fallback;
and a tiny Gemma-2 model (final_logit_softcap 3) with ``model.fused_kernels`` on vs off at
TP=1 and TP=2 + sequence parallel (2-rank launch).

Tolerances as in test_cross_entropy.py (fp32: loss 1e-6 relative, gradient 1e-6 absolute).
Model: loss within 1e-6 relative, every gradient tensor within 4e-6 relative (max abs error /
max abs value). ``fused_kernels: on`` switches the fused RMSNorm on too (the Gemma-2 norms and
post-norm residual adds), so both ops' fp32 rounding (~1e-7 each) is carried through the
backward; the unfused TP=2+SP model itself is ~1e-6 from TP=1 (tests/kernels/
test_rmsnorm_model.py measures the same margin for the norm alone).
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mar_xent_workers as W  # noqa: E402

from megatron_ar.runtime import run_multiprocess  # noqa: E402

pytestmark = pytest.mark.multiproc

TOL = 1e-6
GRAD_TOL = 4e-6
CAPS = (None, 30.0)


def _check_shards(results, tps):
    for res in results:
        keys = [k for k in res if k != "rank"]
        assert len(keys) == len(tps) * len(CAPS) * 2, keys
        for key in keys:
            e = res[key]
            where = f"rank {res['rank']} {key}: {e}"
            assert e["loss_rel"] <= TOL and e["grad_abs"] <= TOL, where
            assert e["in_place"] and e["ignored_zero"], where


def test_tp1_tp2_shards_match_megatron():
    results = run_multiprocess(W.shards_world, 2, {"tps": (1, 2), "caps": CAPS, "seed": 11})
    _check_shards(results, (1, 2))


def test_tp4_shards_match_megatron():
    results = run_multiprocess(W.shards_world, 4, {"tps": (4,), "caps": CAPS, "seed": 12})
    _check_shards(results, (4,))


def test_model_fused_on_equals_off():
    import torch

    from megatron_ar.models import get_preset

    cfg = get_preset("tiny-gemma2")
    assert cfg.final_logit_softcap
    gen = torch.Generator().manual_seed(5)
    seq = 16
    tokens = torch.randint(0, cfg.vocab_size, (4, seq), generator=gen)
    labels = torch.randint(0, cfg.vocab_size, (4, seq), generator=gen)
    mbs = [{"tokens": tokens[i:i + 2], "labels": labels[i:i + 2]} for i in (0, 2)]
    results = run_multiprocess(W.model_world2, 2, {"cfg": cfg.to_dict(), "microbatches": mbs})
    for rank, res in enumerate(results):
        for tp in ("tp1", "tp2"):
            r = res[tp]
            assert r["fused"] == (False, True), (rank, tp, r)  # "off" really off, "on" on
            assert r["keys_equal"] and r["n"] > 10, (rank, tp, r)
            assert abs(r["loss_on"] - r["loss_off"]) <= TOL * abs(r["loss_off"]), (rank, tp, r)
            assert r["grad_rel"] <= GRAD_TOL, (rank, tp, r)
        # the cap is applied once: the uncapped model's loss is clearly different
        assert abs(res["uncapped_loss"] - res["tp1"]["loss_on"]) > 1e-2, res
        # a forward without labels caps the logits as before (the hook): on == off up to the
        # fused norms' rounding, capped
        assert res["logits_diff"] <= GRAD_TOL and res["logits_absmax"] <= cfg.final_logit_softcap

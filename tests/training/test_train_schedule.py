"""LR schedule (megatron-core OptimizerParamScheduler + Fanar cool-down), FLOP formula: values
against hand formulas. The memory estimate against a built model: test_train_memory.py."""
import math
import types

import pytest

from lr_reference import reference_lr

from megatron_ar.training.config import load_config
from megatron_ar.training.metrics import FlopShape, flops_per_step
from megatron_ar.training.plan import build_run_plan

pytestmark = pytest.mark.unit


def _cfg(*args):
    return load_config(None, ["--lr", "3e-4", "--min-lr", "3e-5", "--lr-warmup-iters", "10", *args])


def _plan(cfg, train_iters):
    cfg.schedule.train_iters = train_iters
    return build_run_plan(cfg, 1)


def build_scheduler(cfg, opt, train_iters):
    return _plan(cfg, train_iters).build_scheduler(opt)


def _run(cfg, train_iters):
    opt = types.SimpleNamespace(param_groups=[{"params": []}])
    sch = build_scheduler(cfg, opt, train_iters)
    lrs = []
    for _ in range(train_iters + 3):
        lrs.append(opt.param_groups[0]["lr"])
        sch.step(1)
    return lrs, sch, opt


def fanar_by_hand(k, peak=3e-4, floor=3e-5, warm=10, decay_end=80, cool=20):
    """Fanar: linear warmup, cosine to floor at decay_end, then linear to zero over `cool`."""
    if k <= warm:
        return peak * k / warm
    if k <= decay_end:
        r = (k - warm) / (decay_end - warm)
        return floor + (peak - floor) * (1 + math.cos(math.pi * r)) / 2
    return floor * max(0.0, 1 - (k - decay_end) / cool)


def test_fanar_cosine_cooldown_matches_hand_formula():
    cfg = _cfg("--lr-decay-style", "cosine-cooldown", "--lr-cooldown-iters", "20")
    lrs, _, _ = _run(cfg, 100)
    for k in range(103):
        assert lrs[k] == pytest.approx(fanar_by_hand(k), rel=1e-12, abs=1e-15), k
        assert lrs[k] == pytest.approx(reference_lr(_plan(cfg, 100).lr, min(k, 100)) if k <= 100 else 0.0, abs=1e-15)
        if k < 100:  # the plan's LR of step k is the trained scheduler's
            assert _plan(cfg, 100).lr_at(k) == lrs[k]
    assert lrs[10] == pytest.approx(3e-4) and lrs[80] == pytest.approx(3e-5) and lrs[100] == 0.0


def test_wsd_and_cosine_match_reference():
    for args in (["--lr-decay-style", "WSD", "--lr-wsd-decay-iters", "30", "--lr-wsd-decay-style", "linear"],
                 ["--lr-decay-style", "cosine"], ["--lr-decay-style", "linear"]):
        cfg = _cfg(*args)
        lrs, _, _ = _run(cfg, 100)
        for k in range(101):
            assert lrs[k] == pytest.approx(reference_lr(_plan(cfg, 100).lr, k), rel=1e-12, abs=1e-15), (args, k)
    cfg = _cfg("--lr-decay-style", "WSD", "--lr-wsd-decay-iters", "30")
    lrs, _, _ = _run(cfg, 100)
    assert lrs[70] == pytest.approx(3e-4) and lrs[85] == pytest.approx(3e-5 + (3e-4 - 3e-5) * 0.5)


def test_scheduler_state_dict_resume():
    cfg = _cfg("--lr-decay-style", "cosine-cooldown", "--lr-cooldown-iters", "20")
    full, _, _ = _run(cfg, 100)
    opt = types.SimpleNamespace(param_groups=[{"params": []}])
    sch = build_scheduler(cfg, opt, 100)
    for _ in range(37):
        sch.step(1)
    sd = sch.state_dict()
    assert sd["lr_cooldown_steps"] == 20 and sd["num_steps"] == 37
    opt2 = types.SimpleNamespace(param_groups=[{"params": []}])
    sch2 = build_scheduler(cfg, opt2, 100)
    sch2.load_state_dict(sd)
    sch2.step(0)
    got = []
    for _ in range(63):
        got.append(opt2.param_groups[0]["lr"])
        sch2.step(1)
    assert got == full[37:100]
    # A changed schedule is refused (megatron-core's checkpoint value check).
    bad = build_scheduler(_cfg("--lr-decay-style", "cosine-cooldown", "--lr-cooldown-iters", "10"),
                          types.SimpleNamespace(param_groups=[{}]), 100)
    with pytest.raises(AssertionError):
        bad.load_state_dict(sd)


def test_flops_formula_against_6nd():
    """Without the logit layer the formula is 6 x (non-embedding params) x tokens (Kaplan et al.
    2020) plus the attention-score/context GEMMs, 12 x layers x hidden x seq per token."""
    L, h, s, b = 32, 4096, 4096, 3
    for groups in (32, 8):  # MHA and GQA (K/V projections shrink by groups/heads)
        shape = FlopShape(L, h, 4 * h, 32, groups, 128, 0, gated=False)
        params = L * (2 * h * h + 2 * h * h * groups / 32 + 2 * h * 4 * h)
        want = 6 * params * b * s + 12 * L * b * s * s * h
        assert flops_per_step(shape, b, s) == pytest.approx(want, rel=1e-12)
    # Gated MLP: three h x ffn matrices; logit layer 6 x V x h per token.
    shape = FlopShape(L, h, 11008, 32, 32, 128, 76800, gated=True)
    params = L * (4 * h * h + 3 * h * 11008)
    want = 6 * params * b * s + 12 * L * b * s * s * h + 6 * 76800 * h * b * s
    assert flops_per_step(shape, b, s) == pytest.approx(want, rel=1e-12)

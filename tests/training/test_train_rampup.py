"""Batch-size ramp-up (Megatron-LM ``--rampup-batch-size``): the step -> (consumed samples,
global batch) table against megatron-core's own calculator driven the way Megatron-LM's loop
drives it, the sample-based LR schedule against hand formulas, and one real 2-process gloo run
(DP=2, micro batch 2, ramp 8 -> 16 by 4 over 200 samples) through the curriculum's phase change:
per-step batch and consumed samples, every sample index used exactly once, tokens per step,
back-tracing a ramp step (digests verified), the dry-run plan, and a kill -9 inside the ramp
that resumes bit-exactly.

Ramp by hand (megatron-core: batch = start + increment * int(consumed / (ramp / #increments))
while consumed <= ramp; 2 increments -> 100 samples each): steps 0..12 take 8 samples (to 104),
steps 13..20 take 12 (to 200), steps 21.. take 16. Phase 'broad' is 25,600 / 64 = 400 samples,
so step 33 (starting at 200 + 12 x 16 = 392) straddles the phase change.
"""
import json
import os
import random
import shutil
import types

import pytest

from train_harness import copy_checkpoint, read_metrics, torchrun, torchrun_kill_at, write_recipe

pytestmark = pytest.mark.multiproc

RAMP = [8, 4, 200]
STEPS = 36
LAYOUT = ("--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "1",
          "--no-sequence-parallel", "--micro-batch-size", "2", "--rampup-batch-size", "8", "4", "200",
          "--eval-interval", "none")
BY_HAND = [8] * 13 + [12] * 8 + [16] * (STEPS - 21)


# ----------------------------------------------------------------------------------------------
# step -> (consumed, batch) against megatron-core's calculator
# ----------------------------------------------------------------------------------------------
def _megatron_lm_steps(rampup, gbs, mbs, dp, n):
    """Megatron-LM's loop: update the *global* calculator with consumed samples, train
    num_microbatches x mbs x dp samples, repeat."""
    from megatron.core import num_microbatches_calculator as nmc

    nmc.destroy_num_microbatches_calculator()
    nmc.init_num_microbatches_calculator(1, rampup, gbs, mbs, dp)
    try:
        out, consumed = [], 0
        for _ in range(n):
            nmc.update_num_microbatches(consumed, consistency_check=True)
            g = nmc.get_current_global_batch_size()
            assert g == nmc.get_num_microbatches() * mbs * dp
            out.append((consumed, g, nmc.get_num_microbatches()))
            consumed += g
        return out
    finally:
        nmc.destroy_num_microbatches_calculator()


@pytest.mark.parametrize("rampup,gbs,mbs,dp", [
    (RAMP, 16, 2, 2),
    ([32, 32, 1953125], 1536, 1, 8),  # GPT-3 175B (Brown et al. 2020, Megatron-LM example)
    ([64, 64, 1000], 1024, 2, 4),
    ([12, 12, 5000], 48, 3, 4),
])
def test_step_table_matches_megatron_core(rampup, gbs, mbs, dp):
    from megatron_ar.training.rampup import BatchSchedule

    bs = BatchSchedule(gbs, mbs, rampup, dp)
    n = bs.ramp_steps + 40
    ref = _megatron_lm_steps(rampup, gbs, mbs, dp, n)
    for k in range(n):
        c, g = bs.step(k)
        assert (c, g, bs.num_microbatches(c)) == ref[k], k
    # Random access far after the ramp (closed form) and the inverse maps.
    last_c, last_g, _ = ref[-1]
    for k in (n + 17, n + 1000):
        assert bs.step_start(k) == last_c + last_g + (k - n) * gbs
    rng = random.Random(0)
    for _ in range(200):
        s = rng.randrange(0, ref[-1][0] + 5 * gbs)
        k = bs.steps_to_reach(s)
        assert bs.step_start(k) >= s and (k == 0 or bs.step_start(k - 1) < s)
        m = bs.steps_within(s)
        assert bs.step_start(m) <= s < bs.step_start(m + 1)


def test_ramp_by_hand():
    from megatron_ar.training.rampup import BatchSchedule

    bs = BatchSchedule(16, 2, RAMP, 2)
    assert [bs.step(k)[1] for k in range(STEPS)] == BY_HAND
    assert [bs.step_start(k) for k in (0, 13, 21, 33, 36)] == [0, 104, 200, 392, 440]
    assert bs.num_microbatches(0) == 2 and bs.num_microbatches(104) == 3 and bs.num_microbatches(200) == 4
    # Curriculum of 400 + 640 samples: 21 ramp steps + 52 full steps, 8 samples left over.
    assert bs.steps_within(1040) == 73 and bs.step_start(73) == 1032
    ph = bs.phase_steps([("broad", 0, 400), ("arabic", 400, 1040)], 73)
    assert [(p["start_step"], p["steps"], p["mixed_step"]) for p in ph] == [(0, 34, 33), (34, 39, None)]


@pytest.mark.parametrize("args,needle", [
    (["--rampup-batch-size", "6", "2", "100"], "schedule.rampup_batch_size: start 6 is not a multiple of micro_batch_size = 4"),
    (["--rampup-batch-size", "8", "6", "100"], "schedule.rampup_batch_size: global_batch_size - start = 8 is not a multiple"),
    (["--rampup-batch-size", "16", "4", "100"], "schedule.rampup_batch_size: start batch 16 must be smaller"),
    (["--rampup-batch-size", "8", "4", "0"], "schedule.rampup_batch_size: ramp_samples must be > 0"),
    (["--rampup-batch-size", "8,4"], "schedule.rampup_batch_size: expected [start, increment, ramp_samples]"),
    (["--lr-warmup-samples", "100"], "schedule.lr_warmup_samples: only used with rampup_batch_size"),
])
def test_config_errors_name_the_key(args, needle):
    from megatron_ar.training.config import ConfigError, load_config

    with pytest.raises(ConfigError) as e:
        load_config(None, ["--global-batch-size", "16", "--micro-batch-size", "4", *args])
    assert needle in str(e.value)


def test_cli_spellings_and_world_size_check(tmp_path):
    from megatron_ar.training.config import ConfigError, load_config

    a = load_config(None, ["--global-batch-size", "16", "--micro-batch-size", "2", "--rampup-batch-size",
                           "8", "4", "200", "--lr", "1e-3"])
    b = load_config(None, ["--global-batch-size", "16", "--micro-batch-size", "2",
                           "--schedule.rampup_batch_size", "8,4,200"])
    assert a.schedule.rampup_batch_size == b.schedule.rampup_batch_size == RAMP and a.optimizer.lr == 1e-3
    assert a.num_microbatches(2) == 4
    with pytest.raises(ConfigError, match=r"schedule.rampup_batch_size: increment 4 is not a multiple of "
                                          r"micro_batch_size x data-parallel size = 8 \(2 x 4\)"):
        a.num_microbatches(4)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("schedule:\n  global_batch_size: 16\n  micro_batch_size: 2\n"
                      "  rampup_batch_size: [8, 5, 200]\n")
    with pytest.raises(ConfigError, match=r"r.yaml:4: schedule.rampup_batch_size: global_batch_size - start"):
        load_config(str(recipe))


# ----------------------------------------------------------------------------------------------
# LR schedule in samples
# ----------------------------------------------------------------------------------------------
def test_lr_schedule_counts_samples_under_rampup():
    import math

    from megatron_ar.training.config import load_config
    from megatron_ar.training.plan import build_run_plan
    from megatron_ar.training.rampup import BatchSchedule

    cfg = load_config(None, ["--lr", "1e-2", "--min-lr", "1e-3", "--global-batch-size", "16",
                             "--micro-batch-size", "2", "--rampup-batch-size", "8", "4", "200",
                             "--lr-warmup-iters", "5", "--lr-decay-style", "cosine-cooldown",
                             "--lr-cooldown-iters", "10", "--train-iters", str(STEPS)])
    plan = build_run_plan(cfg, 2)
    lr = plan.lr
    # 5 and 10 final global batches; the run trains 440 samples; decay ends at 440 - 160.
    assert (lr.warmup, lr.decay, lr.cooldown, lr.unit, lr.total) == (80, 280, 160, "samples", 440)
    opt = types.SimpleNamespace(param_groups=[{"params": []}])
    sch = plan.build_scheduler(opt)
    bs = BatchSchedule.from_config(cfg, 2)
    for k in range(STEPS):
        c, g = bs.step(k)
        if c <= 80:
            want = 1e-2 * c / 80
        elif c <= 280:
            want = 1e-3 + (1e-2 - 1e-3) * 0.5 * (1 + math.cos(math.pi * (c - 80) / 200))
        else:
            want = 1e-3 * (1 - (c - 280) / 160)
        assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12, abs=1e-15), k
        assert plan.lr_at(k) == pytest.approx(want, rel=1e-12, abs=1e-15), k
        sch.step(increment=g)
    assert sch.num_steps == 440 and opt.param_groups[0]["lr"] == 0.0
    # Megatron-LM's sample keys override the iteration conversion.
    cfg.schedule.lr_warmup_samples, cfg.schedule.lr_decay_samples = 50, 300
    lr = build_run_plan(cfg, 2).lr
    assert lr.warmup == 50 and lr.decay == 300


# ----------------------------------------------------------------------------------------------
# one real run
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ramp_run(tmp_path_factory, train_data):
    d = tmp_path_factory.mktemp("rampup")
    run_dir = str(d / "run")
    recipe = write_recipe(str(d / "recipe.yaml"), train_data, run_dir, STEPS)
    log = torchrun(2, recipe, *LAYOUT)
    return {"dir": run_dir, "recipe": recipe, "log": log, "metrics": read_metrics(run_dir), "tmp": d,
            "data": train_data}


def _records(run_dir, name):
    return {r["step"]: r for r in map(json.loads, open(os.path.join(run_dir, name)))}


def test_run_batch_sizes_and_sample_accounting(ramp_run):
    from lr_reference import reference_lr

    from megatron_ar.training.config import load_config
    from megatron_ar.training.plan import build_run_plan

    m = ramp_run["metrics"]
    assert sorted(m) == list(range(STEPS))
    ref = _megatron_lm_steps(RAMP, 16, 2, 2, STEPS)
    consumed = 0
    for k in range(STEPS):
        r = m[k]
        assert r["global_batch_size"] == BY_HAND[k] == ref[k][1]
        assert r["consumed_samples_before"] == consumed == ref[k][0]
        assert r["num_microbatches"] == BY_HAND[k] // 4
        assert r["loss_tokens"] == BY_HAND[k] * 64  # the loss really covers g samples of 64 tokens
        consumed += BY_HAND[k]
        assert r["consumed_samples"] == consumed and r["consumed_tokens"] == consumed * 64
    assert m[32]["phase"] == "broad" and m[33]["phase"] == "broad" and m[34]["phase"] == "arabic"
    # LR: the scheduler counts samples (warmup 5 x 16 = 80 samples).
    cfg = load_config(os.path.join(ramp_run["dir"], "config.yaml"))
    # Throughput counts the step's own batch (Megatron's FLOP formula at g sequences).
    from megatron_ar.training.builder import model_config_from
    from megatron_ar.training.metrics import flop_shape, flops_per_step

    shape = flop_shape(model_config_from(cfg), 1)
    for k in (0, 15, 30):
        want = flops_per_step(shape, BY_HAND[k], 64) / m[k]["step_time"] / 2 / 1e12
        assert m[k]["tflops_per_device"] == pytest.approx(want, rel=1e-9)
    assert cfg.schedule.rampup_batch_size == RAMP
    assert m[5]["lr"] == pytest.approx(1e-2 * 40 / 80, rel=1e-6)
    plan = build_run_plan(cfg, 2)
    for k in range(STEPS):
        assert m[k]["lr"] == pytest.approx(reference_lr(plan.lr, m[k]["consumed_samples_before"]),
                                           rel=1e-6, abs=1e-12)
        assert m[k]["lr"] == plan.lr_at(k)  # the plan answers with the trained scheduler's LR
    # Every global sample index in [0, 440) is trained exactly once, by the rank/micro-batch of
    # Megatron's sampler order.
    seen = []
    for name, rank in (("batches.jsonl", 0), ("batches_dp1.jsonl", 1)):
        recs = _records(ramp_run["dir"], name)
        assert sorted(recs) == list(range(STEPS))
        for k, rec in recs.items():
            c, g = ref[k][0], ref[k][1]
            assert rec["consumed_samples"] == c and rec["global_batch_size"] == g
            assert rec["indices"] == [[c + mb * 4 + rank * 2 + j for j in range(2)] for mb in range(g // 4)]
            seen += [i for mb in rec["indices"] for i in mb]
    assert sorted(seen) == list(range(440))


def test_backtrace_of_ramp_steps(ramp_run, tmp_path):
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_ar.training.backtrace import backtrace_step

    res = backtrace_step(ramp_run["dir"], 15)  # g = 12: 3 micro-batches of 2 per DP rank
    assert res["consumed_samples"] == 128 and res["global_batch_size"] == 12
    assert res["verified"] == {0: [True] * 3, 1: [True] * 3}
    assert sorted(r["global_index"] for r in res["samples"]) == list(range(128, 140))
    for row in res["samples"][:4]:
        ds = IndexedDataset(row["prefix"])
        toks = np.concatenate([ds.get(doc, offset=a, length=b - a) for doc, a, b in row["token_ranges"]])
        assert toks.tolist() == row["tokens"] and len(toks) == 65
    mixed = backtrace_step(ramp_run["dir"], 33, decode=False)
    assert mixed["verified"] == {0: [True] * 4, 1: [True] * 4}
    phases = [r["phase_name"] for r in sorted(mixed["samples"], key=lambda r: r["global_index"])]
    assert phases == ["broad"] * 8 + ["arabic"] * 8
    # Without batches.jsonl the step is rebuilt from the recipe's ramp alone.
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(os.path.join(ramp_run["dir"], "config.yaml"), bare / "config.yaml")
    again = backtrace_step(str(bare), 15, decode=False, data_parallel_size=2)
    assert (again["consumed_samples"], again["global_batch_size"]) == (128, 12)
    assert [r["tokens"] for r in again["samples"]] == [r["tokens"] for r in res["samples"]]


def test_plan_and_curriculum_tool_with_rampup(ramp_run, repo_root, capsys):
    import importlib.util

    from megatron_ar.training.config import load_config
    from megatron_ar.training.plan import format_plan, plan_run

    cfg_path = os.path.join(ramp_run["dir"], "config.yaml")
    pl = plan_run(load_config(cfg_path), 2)
    assert pl["train_iters"] == STEPS
    assert [(p["name"], p["steps"], p["start_step"]) for p in pl["phases"]] == [("broad", 34, 0), ("arabic", 2, 34)]
    assert [(r["global_batch_size"], r["steps"], r["num_microbatches"]) for r in pl["batch"]["rampup"]["table"]] \
        == [(8, 13, 2), (12, 8, 3), (16, 15, 4)]
    assert any("step 33 straddles the end of phase 'broad'" in w for w in pl["warnings"])
    assert pl["lr"]["steps"]["unit"] == "samples" and pl["lr"]["milestones"][0] == 0.0
    assert "steps 13..20: global batch 12 (3 micro-batches/rank)" in format_plan(pl)
    full = plan_run(load_config(cfg_path, ["--train-iters", "none"]), 2)  # length from the curriculum
    assert full["train_iters"] == 73 and [p["steps"] for p in full["phases"]] == [34, 39]
    assert any("last 8 samples" in w for w in full["warnings"])
    spec = importlib.util.spec_from_file_location("tool_cp", os.path.join(repo_root, "tools", "curriculum_plan.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main([ramp_run["recipe"], "--rampup-batch-size", "8", "4", "200", "--micro-batch-size", "2", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    r = summary["rampup"]
    assert r["total_steps"] == 73 and r["untrained_tail_samples"] == 8
    assert [(p["name"], p["steps"], p["mixed_step"]) for p in r["phases"]] == [("broad", 34, 33), ("arabic", 39, None)]


def test_kill9_inside_the_ramp_resumes_bit_exact(ramp_run):
    """A copy of the step-10 checkpoint (batch 8) resumes, saving every 2 steps, and is killed
    after a random step in [14, 16) (batch 12 since step 13); the resumed job runs to step 24
    (batch 16 from step 21): losses, LR, grad norms, batches and digests equal the reference."""
    kill_after = random.Random(0).randrange(14, 16)  # seeded: a failure reproduces
    print(f"\nSIGKILL after step {kill_after}")
    d = ramp_run["tmp"] / "b"
    run_b = str(d / "run")
    copy_checkpoint(ramp_run["dir"], 10, run_b)
    recipe = write_recipe(str(d / "recipe.yaml"), ramp_run["data"], run_b, STEPS)
    torchrun_kill_at(2, recipe, run_b, kill_after, 14, *LAYOUT, "--save-interval", "2")
    torchrun(2, recipe, *LAYOUT, "--exit-interval", "24")
    a, c = ramp_run["metrics"], read_metrics(run_b)
    assert sorted(c) == list(range(10, 24))
    for s in range(10, 24):
        for k in ("loss", "grad_norm", "lr", "consumed_samples_before", "global_batch_size"):
            assert c[s][k] == a[s][k], (s, k, c[s][k], a[s][k])  # bit for bit
    for name in ("batches.jsonl", "batches_dp1.jsonl"):
        ba, bc = _records(ramp_run["dir"], name), _records(run_b, name)
        for s in range(10, 24):
            assert bc[s]["indices"] == ba[s]["indices"] and bc[s]["digests"] == ba[s]["digests"]

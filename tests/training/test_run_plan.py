"""The run plan (megatron_ar.training.plan): one resolution of a recipe that the trainer, the dry
run and the planning tools share. Hand arithmetic and megatron-core's own scheduler and batch
calculator are the oracles."""
import os
import types

import pytest
import yaml
from lr_reference import reference_lr

from megatron_ar.training.config import ConfigError, load_config, save_config, to_dict
from megatron_ar.training.plan import build_run_plan, format_plan, plan_run

pytestmark = pytest.mark.unit

RECIPE = """\
model:
  preset: tiny-llama
  seq_length: 64
schedule:
  micro_batch_size: 2
  global_batch_size: 16
  lr_warmup_iters: 5
  lr_decay_style: cosine-cooldown
  lr_cooldown_iters: 0
optimizer:
  lr: 1.0e-2
  min_lr: 1.0e-3
data:
  datasets: {ar: /nonexistent/ar, en: /nonexistent/en}
  phases:
    - name: broad
      tokens: 25600
      blend:
        ar: {weight: 40, datasets: [ar]}
        en: {weight: 60, datasets: [en]}
    - name: cooldown
      tokens: 40000
      lr_schedule: linear_to_zero
      blend:
        ar: {weight: 80, datasets: {ar: 1}}
        en: {weight: 20, datasets: [en]}
"""


def _write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


def test_plan_from_token_budgets_by_hand(tmp_path):
    cfg = load_config(_write(tmp_path, RECIPE))
    plan = build_run_plan(cfg, 2)  # DP 2: 16 = 2 x 2 x 4
    # broad: 25600 / 64 = 400 samples = 25 steps; cooldown: ceil(40000 / 64) = 625 samples,
    # rounded up to whole global batches: 640 = 40 steps.
    assert [(p.name, p.start_sample, p.end_sample, p.start_step, p.end_step) for p in plan.phases] == \
        [("broad", 0, 400, 0, 25), ("cooldown", 400, 1040, 25, 65)]
    assert plan.train_iters == 65 and plan.total_samples == 1040
    assert plan.num_microbatches(0) == 4 and plan.step(7) == (112, 16)
    # Fanar's cool-down: the last phase (lr_schedule linear_to_zero) is the linear decay to 0.
    lr = plan.lr
    assert (lr.unit, lr.warmup, lr.decay, lr.cooldown, lr.total) == ("iterations", 5, 25, 40, 65)
    # lr_at(k) is megatron-core's scheduler at step k: the same values as stepping it.
    opt = types.SimpleNamespace(param_groups=[{"params": []}])
    sch = plan.build_scheduler(opt)
    for k in range(plan.train_iters):
        assert plan.lr_at(k) == opt.param_groups[0]["lr"], k
        assert plan.lr_at(k) == pytest.approx(reference_lr(lr, k), rel=1e-12, abs=1e-15), k
        sch.step(plan.scheduler_increment(plan.step(k)[1]))
    assert plan.lr_milestones() == {0: 0.0, 5: pytest.approx(1e-2), 25: pytest.approx(1e-3),
                                    64: pytest.approx(1e-3 * (1 - 39 / 40))}
    assert cfg.schedule.lr_cooldown_iters == 0  # resolved by the plan, the recipe is not mutated


def test_train_iters_must_fit_and_caps_the_phases(tmp_path):
    cfg = load_config(_write(tmp_path, RECIPE), ["--train-iters", "66"])
    with pytest.raises(ConfigError, match=r"schedule.train_iters: 66 steps need 1056 samples, the "
                                          r"curriculum has 1040 \(65 steps\)"):
        build_run_plan(cfg, 1)
    # A cap shorter than the automatic cool-down (the whole last phase) leaves no decay phase.
    with pytest.raises(ConfigError, match=r"schedule.lr_decay_iters: decay iterations \(-10\) must "
                                          r"exceed lr_warmup_iters \(5\)"):
        build_run_plan(load_config(_write(tmp_path, RECIPE), ["--train-iters", "30"]), 1)
    plan = build_run_plan(load_config(_write(tmp_path, RECIPE), ["--train-iters", "30",
                                                                 "--lr-decay-style", "cosine"]), 1)
    assert plan.train_iters == 30 and (plan.lr.decay, plan.lr.cooldown) == (30, 0)
    assert [(p.start_step, p.end_step, p.steps) for p in plan.phases] == [(0, 25, 25), (25, 30, 5)]


def test_plan_under_rampup_matches_megatron_calculator(tmp_path):
    from megatron.core.num_microbatches_calculator import RampupBatchsizeNumMicroBatchesCalculator

    cfg = load_config(_write(tmp_path, RECIPE), ["--rampup-batch-size", "4", "4", "100"])
    plan = build_run_plan(cfg, 2)
    calc = RampupBatchsizeNumMicroBatchesCalculator(16, 2, 2, False, 1, 4, 4, 100)
    consumed, starts = 0, []
    while consumed < 1040:
        calc.update(consumed, True)
        g = calc.get_current_global_batch_size()
        if consumed + g > 1040:
            break
        starts.append((consumed, g))
        consumed += g
    assert plan.train_iters == len(starts)
    assert [plan.step(k) for k in range(len(starts))] == starts
    # A phase boundary inside a step: the step belongs to the phase of its first sample.
    broad = plan.phases[0]
    k = broad.end_step - 1
    c, g = plan.step(k)
    assert c < 400 <= c + g or c + g == 400
    assert plan.lr.unit == "samples" and plan.lr.cooldown == 40 * 16


def test_unknown_and_misplaced_keys_name_path_and_line(tmp_path):
    bad = RECIPE.replace("        ar: {weight: 80, datasets: {ar: 1}}", "        ar: {wieght: 80, datasets: {ar: 1}}")
    with pytest.raises(ConfigError) as ei:
        load_config(_write(tmp_path, bad))
    assert "r.yaml:25: data.phases[1].blend.ar.wieght: unknown key" in str(ei.value), str(ei.value)
    bad = RECIPE.replace("  phases:\n", "  seq_length: 64\n  phases:\n")
    with pytest.raises(ConfigError, match=r"r.yaml:\d+: data.seq_length: a run-level value, set it once "
                                          r"as model.seq_length"):
        load_config(_write(tmp_path, bad))
    bad = RECIPE.replace("  seq_length: 64\n", "  seq_length: 64\n  overrides: {hiden_size: 64}\n", 1)
    with pytest.raises(ConfigError, match=r"r.yaml:\d+: model.overrides.hiden_size: unknown ModelConfig field"):
        load_config(_write(tmp_path, bad))
    with pytest.raises(ConfigError, match="r.yaml: the recipe is empty"):
        load_config(_write(tmp_path, "# nothing\n"))


def test_resolved_recipe_round_trips_with_its_curriculum(tmp_path):
    cfg = load_config(_write(tmp_path, RECIPE), ["--global-batch-size", "32"])
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, str(out))
    again = load_config(str(out))
    assert again.data == cfg.data and to_dict(again) == to_dict(cfg)
    assert again.data.global_batch_size == 32  # filled from the schedule section, stated once
    assert "global_batch_size" not in yaml.safe_load(out.read_text())["data"]


def test_dry_run_report_prints_the_resolved_plan(tmp_path):
    pl = plan_run(load_config(_write(tmp_path, RECIPE)), 2)
    text = format_plan(pl)
    assert "phase broad: 25,600 tokens, 25 steps (0..24)" in text
    assert "phase cooldown: 40,000 tokens, 40 steps (25..64), lr linear_to_zero" in text
    assert "train iters: 65" in text and "cool-down 40" in text


@pytest.mark.parametrize("flags,message", [
    (["--tensor-model-parallel-size", "3"],
     "tensor_model_parallel_size=3 must divide num_attention_heads=32 and num_query_groups=32"),
    (["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "3"],
     "num_layers=32 of model 'fanar-star-7b' is not divisible by pipeline_model_parallel_size"),
    (["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "4",
      "--num-layers-per-virtual-pipeline-stage", "3"], "num_layers 32 is not divisible"),
])
def test_plan_refuses_layouts_the_model_cannot_take(flags, message):
    # The real recipe at 168 GPUs: 168 is divisible by every TP x PP here, so only the model's
    # own divisibility can refuse it (before any process group or allocation).
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = load_config(os.path.join(repo, "examples", "recipes", "fanar_star_7b.yaml"), flags)
    with pytest.raises(ConfigError, match=message):
        build_run_plan(cfg, 168)

"""Recipe loading: typed sections, Megatron-LM flag overrides, errors that name the key."""
import os

import pytest
import yaml

from megatron_ar.training.config import ConfigError, load_config, save_config, to_dict

pytestmark = pytest.mark.unit

BASE = """\
model:
  preset: tiny-llama
  seq_length: 64
parallel:
  tensor_model_parallel_size: 2
optimizer:
  lr: 1.0e-3
  min_lr: 1.0e-4
schedule:
  micro_batch_size: 2
  global_batch_size: 8
"""


def _write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


def test_megatron_flag_overrides(tmp_path):
    cfg = load_config(_write(tmp_path, BASE), [
        "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
        "--num-layers-per-virtual-pipeline-stage", "1", "--sequence-parallel",
        "--use-distributed-optimizer", "--micro-batch-size", "4", "--global-batch-size=32",
        "--lr", "3e-4", "--min-lr", "3e-5", "--train-iters", "100", "--save", "ck",
        "--load", "ck2", "--save-interval", "10", "--eval-interval", "5", "--seed", "7",
        "--bf16", "--no-accumulate-allreduce-grads-in-fp32", "--num-layers", "8",
        "--optimizer.adam_beta2", "0.98"])
    p, o, s, c = cfg.parallel, cfg.optimizer, cfg.schedule, cfg.checkpoint
    assert (p.tensor_model_parallel_size, p.pipeline_model_parallel_size) == (2, 2)
    assert p.num_layers_per_virtual_pipeline_stage == 1 and p.sequence_parallel and p.use_distributed_optimizer
    assert (s.micro_batch_size, s.global_batch_size, s.train_iters, s.seed) == (4, 32, 100, 7)
    assert (o.lr, o.min_lr, o.adam_beta2, o.bf16, o.grad_reduce_in_fp32) == (3e-4, 3e-5, 0.98, True, False)
    assert (c.save, c.load, c.save_interval, cfg.eval.eval_interval) == ("ck", "ck2", 10, 5)
    assert cfg.model.overrides == {"num_layers": 8}
    # 8 layers / (PP 2 x 1 layer per virtual stage) = 4 virtual stages per rank
    assert cfg.vpp_size(8) == 4
    assert cfg.num_microbatches(world_size=8) == 32 // (4 * 2)


@pytest.mark.parametrize("text,args,needle", [
    (BASE.replace("lr: 1.0e-3", "lrr: 1.0e-3"), [], "r.yaml:7: optimizer.lrr: unknown key"),
    (BASE.replace("min_lr: 1.0e-4", "min_lr: 1.0e-2"), [], "r.yaml:8: optimizer.min_lr"),
    (BASE.replace("micro_batch_size: 2", "micro_batch_size: two"), [], "r.yaml:10: schedule.micro_batch_size"),
    (BASE, ["--sequence-parallel", "--tensor-model-parallel-size", "1"], "parallel.sequence_parallel"),
    (BASE, ["--global-batch-size", "9"], "schedule.global_batch_size"),
    (BASE, ["--lr-decay-style", "WSD"], "schedule.lr_wsd_decay_iters"),
    (BASE, ["--fp8-format", "e4m3"], "optimizer.fp8_format"),
    (BASE, ["--exp-avg-dtype", "bf16"], "optimizer.exp_avg_dtype"),
    (BASE, ["--bogus-flag", "1"], "--bogus-flag"),
    (BASE + "data:\n  datasets: {a: x}\n  phases: []\n", [], "data.phases"),
])
def test_errors_name_the_key(tmp_path, text, args, needle):
    with pytest.raises(ConfigError) as ei:
        load_config(_write(tmp_path, text), args)
    assert needle in str(ei.value), str(ei.value)


def test_world_size_batch_arithmetic_error_names_key(tmp_path):
    cfg = load_config(_write(tmp_path, BASE))
    with pytest.raises(ConfigError, match="schedule.global_batch_size"):
        cfg.num_microbatches(world_size=6)  # DP 3: 8 not divisible by 2 x 3
    with pytest.raises(ConfigError, match="parallel"):
        cfg.data_parallel_size(3)


def test_resolved_config_roundtrip_and_paths(tmp_path):
    d = tmp_path / "recipes"
    d.mkdir()
    text = BASE + "  train_iters: 5\neval:\n  valid_sets: {ar: data/valid_ar}\n" \
        "data:\n  datasets: {ar: data/ar}\n  phases:\n    - name: p\n      tokens: 1000\n" \
        "      blend: {ar: {datasets: [ar]}}\n"
    cfg = load_config(_write(d, text), ["--model.tokenizer", "tok"])
    # Inputs in the file resolve against the recipe folder, CLI ones against the CWD.
    assert cfg.eval.valid_sets["ar"] == str(d / "data" / "valid_ar")
    assert cfg.data.datasets["ar"] == str(d / "data" / "ar")
    assert cfg.model.tokenizer == os.path.join(os.getcwd(), "tok")
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, str(out))
    again = load_config(str(out))
    assert to_dict(again) == to_dict(cfg)
    assert yaml.safe_load(out.read_text())["data"]["datasets"]["ar"] == str(d / "data" / "ar")

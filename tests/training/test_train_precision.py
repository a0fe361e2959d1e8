"""Numerics of the multi-process loop: loss-spike skipping in a real TP2 x PP2 run, bf16 across
layouts and with bf16 gradient reduce, and the fp8 recipe keys.

Runs (all bf16, all starting from the same weights: a random transformers Llama converted with
megatron_ar.checkpoint.convert; launched by ``precision_driver.py``, which is megatron_ar.train
plus an observer that records per rank whether weights / optimizer state / scheduler changed):
  A: TP2 x PP2 + SP + distributed optimizer, skip_spike_updates. Curriculum: 12 steps of Arabic
     only, then code only. The first code step is a real spike (loss ~3.6 -> ~13.6, z ~ 20):
     steps 12, 13 are skipped, step 14 is recognised as a level shift (3 consecutive spikes
     under frozen weights) and trained on.
  D: 1 process (fp32 gradient accumulation), skipping off, stopped after step 13 (same LR
     schedule as A): steps 0-11 are A's steps in another layout; step 12 is logged as a spike
     and applied.
  F: DP=2 with grad_reduce_in_fp32: false (bf16 gradient buffers and reduce-scatter, the Fanar
     Prime setting), stopped after step 5.
(Three launches: each costs ~10 s of CPU per process just to import torch + megatron-core.)
The fp8 checks need no launch: without Transformer Engine (no GPU here) a real fp8 run is out of
reach; what is checked is the mapping of the recipe keys onto megatron-core's TransformerConfig
and the error that names the key (without it, megatron-core's local layers would silently train
in bf16 while the recipe says fp8).
"""
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

from train_harness import CACHE, REPO, converted_tiny_llama, read_metrics, torchrun

pytestmark = pytest.mark.multiproc

P = 12  # first step of the code phase (12 steps x 16 samples x 64 tokens of Arabic)
STEPS = P + 4

RECIPE = """\
model:
  preset: {mg_dir}
  seq_length: 64
  tokenizer: {tokenizer}
parallel:
  tensor_model_parallel_size: 2
  pipeline_model_parallel_size: 2
  sequence_parallel: true
  use_distributed_optimizer: true
optimizer:
  lr: 1.0e-2
  min_lr: 1.0e-3
  weight_decay: 0.01
  bf16: true
schedule:
  micro_batch_size: 4
  global_batch_size: 16
  train_iters: {steps}
  lr_warmup_iters: 3
  lr_decay_style: cosine
  spike_sigma: 6.0
  spike_window: 8
  spike_level_shift_steps: 3
  skip_spike_updates: true
data:
  datasets: {{ar: {ar}, code: {code}}}
  cache_dir: {cache}
  phases:
    - name: arabic
      tokens: {ar_tokens}
      blend:
        ar: {{weight: 100, datasets: [ar]}}
    - name: code
      tokens: 4096
      blend:
        code: {{weight: 100, datasets: [code]}}
checkpoint:
  pretrained_checkpoint: {mg_dir}
logging:
  run_dir: {run_dir}
"""


def _launch(nproc, recipe, run_dir, *overrides, timeout=400):
    log = torchrun(nproc, recipe, "--logging.run_dir", run_dir, *overrides, timeout=timeout,
                   entry=(os.path.join(REPO, "tests", "training", "precision_driver.py"),))
    return {"dir": run_dir, "log": log, "metrics": read_metrics(run_dir), "probe": _probe(run_dir, nproc)}


def _probe(run_dir, nproc):
    out = {}
    for r in range(nproc):
        with open(os.path.join(run_dir, f"probe_rank{r}.jsonl"), encoding="utf-8") as f:
            out[r] = {rec["step"]: rec for rec in map(json.loads, f)}
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, train_data):
    d = tmp_path_factory.mktemp("precision")
    hf, mg_dir = converted_tiny_llama(d, tensor_parallel_size=2)
    recipe = str(d / "recipe.yaml")
    with open(recipe, "w", encoding="utf-8") as f:
        f.write(RECIPE.format(mg_dir=mg_dir, tokenizer=train_data["tokenizer"], steps=STEPS,
                              ar=train_data["ar"], code=train_data["code"],
                              cache=os.path.join(CACHE, "index-cache"), ar_tokens=P * 16 * 64,
                              run_dir=str(d / "unused")))
    single = ["--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "1",
              "--no-sequence-parallel"]
    out = {"hf": hf, "A": _launch(4, recipe, str(d / "a"))}
    out["D"] = _launch(1, recipe, str(d / "d"), *single, "--no-use-distributed-optimizer",
                       "--no-skip-spike-updates", "--exit-interval", str(P + 2))
    out["F"] = _launch(2, recipe, str(d / "f"), *single, "--no-grad-reduce-in-fp32", "--exit-interval", "6")
    return out


# ----------------------------------------------------------------------------------------------
# loss spikes
# ----------------------------------------------------------------------------------------------
def test_spike_skipped_identically_on_every_rank(runs):
    a = runs["A"]
    m, probe = a["metrics"], a["probe"]
    assert sorted(m) == list(range(STEPS))
    assert m[P - 1]["phase"] == "arabic" and m[P]["phase"] == "code"
    spikes = [json.loads(x) for x in open(os.path.join(a["dir"], "spikes.jsonl"))]
    print("\nspikes:", [(s["step"], round(s["loss"], 3), round(s["z"], 1), s["skipped"]) for s in spikes],
          f"loss before the phase change {m[P - 1]['loss']:.4f}")
    assert [s["step"] for s in spikes] == [P, P + 1, P + 2]
    assert [(s["skipped"], s["level_shift"]) for s in spikes] == [(True, False), (True, False), (False, True)]
    assert all(s["ranks_flagged"] == s["world_size"] == 4 and s["z"] > 6 for s in spikes)
    assert [m[s]["skipped"] for s in range(STEPS)] == [s in (P, P + 1) for s in range(STEPS)]
    assert f"--step {P}" in a["log"] and "(update skipped)" in a["log"]
    for r, rows in probe.items():
        assert rows[STEPS - 1]["detector_spikes"] == [P, P + 1, P + 2], r  # same decision on every rank
        for s in range(STEPS):
            skipped = s in (P, P + 1)
            # Weights, fp32 main params and Adam moments/step: bit-identical across a skipped
            # step, changed by every other step (step 0 has LR 0: only Adam's state moves).
            assert rows[s]["model_changed"] == (not skipped and s > 0), (r, s)
            assert rows[s]["optim_changed"] == (not skipped), (r, s)
            # the LR schedule stands still, the data stream moves on
            assert rows[s]["sched_steps_after"] - rows[s]["sched_steps_before"] == (0 if skipped else 1), (r, s)
            assert rows[s]["consumed_samples"] == (s + 1) * 16
    assert m[P]["lr"] == m[P + 1]["lr"] == m[P + 2]["lr"] != m[P - 1]["lr"]
    assert [m[s]["consumed_samples"] for s in range(STEPS)] == [16 * (s + 1) for s in range(STEPS)]
    # Frozen weights: the three code losses differ only by their batches, and the first update
    # on code (step 14, the level shift) lowers the loss of the next code batch.
    assert m[P + 3]["loss"] < m[P + 2]["loss"]


def test_spike_backtrace_is_the_new_dataset(runs, repo_root, capsys):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_ar.training.backtrace import backtrace_step, spike_steps

    a = runs["A"]
    assert spike_steps(a["dir"]) == [P, P + 1, P + 2]
    res = backtrace_step(a["dir"], P)
    assert res["phase"] == "code" and res["consumed_samples"] == P * 16
    assert res["verified"] == {0: [True] * 4}  # digests of what the loop fed the model
    assert len(res["samples"]) == 16 and {row["dataset"] for row in res["samples"]} == {"code"}
    for row in res["samples"]:
        ds = IndexedDataset(row["prefix"])  # oracle: megatron-core's read of the token ranges
        toks = np.concatenate([ds.get(doc, offset=x, length=y - x) for doc, x, y in row["token_ranges"]])
        assert toks.tolist() == row["tokens"]
    # the one-command form: tools/backtrace.py --spikes
    import importlib.util

    spec = importlib.util.spec_from_file_location("tool_backtrace", os.path.join(repo_root, "tools", "backtrace.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--run-dir", a["dir"], "--spikes", "--no-text", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["steps"], summary["samples"], summary["verified"]) == ([P, P + 1, P + 2], 48, True)


def test_spike_without_skipping_is_logged_and_applied(runs):
    a, d = runs["A"]["metrics"], runs["D"]["metrics"]
    assert sorted(d) == list(range(P + 2))
    spikes = [json.loads(x) for x in open(os.path.join(runs["D"]["dir"], "spikes.jsonl"))]
    assert [(x["step"], x["skipped"]) for x in spikes] == [(P, False), (P + 1, False)]
    assert not d[P]["skipped"] and math.isfinite(d[P]["grad_norm"])
    rows = runs["D"]["probe"][0]
    assert rows[P]["model_changed"] and rows[P]["optim_changed"] and rows[P]["sched_steps_after"] == P + 1
    # After step 12, A's weights are still those of step 11 and D's have seen one code batch:
    # step 13's loss (same batch in both) tells them apart far beyond bf16/layout noise.
    print(f"\nstep {P + 1} loss: skipped (A) {a[P + 1]['loss']:.4f}, applied (D) {d[P + 1]['loss']:.4f}")
    assert d[P + 1]["loss"] < a[P + 1]["loss"] - 0.1
    assert abs(d[P]["loss"] - a[P]["loss"]) < 1e-2 * a[P]["loss"]
    # The schedule is a function of the number of updates: A is two behind after two skips.
    assert a[P + 3]["lr"] == d[P + 1]["lr"] and a[P + 1]["lr"] == d[P]["lr"]


# ----------------------------------------------------------------------------------------------
# bf16
# ----------------------------------------------------------------------------------------------
def _rel(x, y):
    return abs(x - y) / abs(y)


def test_bf16_tp2_pp2_matches_single_process(runs):
    a, d = runs["A"], runs["D"]
    for r, rows in list(a["probe"].items()) + list(d["probe"].items()):
        assert rows[0]["param_dtypes"] == ["torch.bfloat16"] and rows[0]["main_param_dtypes"] == ["torch.float32"]
        assert rows[0]["main_grad_dtypes"] == ["torch.float32"]
    steps = list(range(P))  # the Arabic phase, before A's spike
    rel = [_rel(a["metrics"][s]["loss"], d["metrics"][s]["loss"]) for s in steps]
    gn = [_rel(a["metrics"][s]["grad_norm"], d["metrics"][s]["grad_norm"]) for s in steps]
    print(f"\nbf16 TP2xPP2+SP+distopt vs 1 process: loss rel diff max {max(rel):.2e} "
          f"(per step {[f'{x:.1e}' for x in rel]}), grad norm rel diff max {max(gn):.2e}")
    assert max(rel) < 5e-3 and max(gn) < 2e-2  # bf16: ~1e-2 would still be acceptable
    assert d["metrics"][P - 1]["loss"] < d["metrics"][0]["loss"] - 3  # it trains

    # Oracle for step 0: transformers in fp32 on exactly the back-traced tokens.
    from megatron_ar.training.backtrace import backtrace_step

    rows = backtrace_step(a["dir"], 0, decode=False)["samples"]
    toks = torch.tensor(np.array([r["tokens"] for r in rows]), dtype=torch.long)
    with torch.no_grad():
        logits = runs["hf"](input_ids=toks[:, :-1]).logits.float()
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), toks[:, 1:].reshape(-1)).item()
    print(f"step-0 loss: bf16 TP2xPP2 {a['metrics'][0]['loss']:.6f}, bf16 1 process "
          f"{d['metrics'][0]['loss']:.6f}, transformers fp32 {ref:.6f}")
    assert _rel(a["metrics"][0]["loss"], ref) < 1e-3 and _rel(d["metrics"][0]["loss"], ref) < 1e-3


def test_bf16_gradient_reduce_at_dp2(runs):
    d, f = runs["D"], runs["F"]
    for r, rows in f["probe"].items():
        assert rows[0]["main_grad_dtypes"] == ["torch.bfloat16"], r  # the setting took effect
        assert rows[0]["main_param_dtypes"] == ["torch.float32"], r
    rel = [_rel(f["metrics"][s]["loss"], d["metrics"][s]["loss"]) for s in range(6)]
    print(f"\nbf16 grad reduce (DP2) vs fp32 gradients (1 process): loss rel diff max {max(rel):.2e} "
          f"(per step {[f'{x:.1e}' for x in rel]})")
    assert max(rel) < 5e-3
    assert f["metrics"][0]["loss"] == pytest.approx(d["metrics"][0]["loss"], rel=1e-4)  # same weights


# ----------------------------------------------------------------------------------------------
# fp8 recipe keys
# ----------------------------------------------------------------------------------------------
# Megatron-LM's definitions (megatron/training/arguments.py, _add_transformer_engine_args):
# flag -> (dest, default, kind). core_transformer_config_from_args copies every arg whose name
# is a TransformerConfig field and sets fp8_param = args.fp8_param_gather.
MEGATRON_LM_FP8_ARGS = {
    "--fp8-format": ("fp8", None, str),
    "--fp8-recipe": ("fp8_recipe", "delayed", str),
    "--fp8-margin": ("fp8_margin", 0, int),
    "--fp8-amax-history-len": ("fp8_amax_history_len", 1, int),
    "--fp8-amax-compute-algo": ("fp8_amax_compute_algo", "most_recent", str),
    "--no-fp8-wgrad": ("fp8_wgrad", True, "store_false"),
    "--fp8-param-gather": ("fp8_param_gather", False, "store_true"),
}


def _megatron_lm_transformer_kwargs(argv):
    import argparse
    import dataclasses

    from megatron.core.transformer.transformer_config import TransformerConfig

    ap = argparse.ArgumentParser()
    for flag, (dest, default, kind) in MEGATRON_LM_FP8_ARGS.items():
        if kind in ("store_true", "store_false"):
            ap.add_argument(flag, action=kind, dest=dest)
        else:
            ap.add_argument(flag, type=kind, default=default, dest=dest)
    args, _ = ap.parse_known_args(argv)
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    kw = {k: v for k, v in vars(args).items() if k in fields}
    kw["fp8_param"] = args.fp8_param_gather
    return kw


@pytest.mark.parametrize("argv", [
    ["--bf16", "--fp8-format", "hybrid"],
    ["--bf16", "--fp8-format", "e4m3", "--fp8-recipe", "tensorwise", "--fp8-margin", "2",
     "--fp8-amax-history-len", "1024", "--fp8-amax-compute-algo", "max", "--no-fp8-wgrad",
     "--fp8-param-gather"],
    ["--bf16", "--fp8-format", "hybrid", "--fp8-recipe", "mxfp8"],
])
def test_fp8_keys_map_like_megatron_lm(argv, tmp_path):
    from megatron_ar.training.builder import fp8_transformer_kwargs, model_config_from
    from megatron_ar.training.config import load_config

    cfg = load_config(text="model: {preset: tiny-llama, seq_length: 64}\n", overrides=argv)
    ours = fp8_transformer_kwargs(cfg)
    assert ours == _megatron_lm_transformer_kwargs(argv)
    # megatron-core accepts them and they land in the TransformerConfig the model is built from
    tc = model_config_from(cfg).to_transformer_config(params_dtype=torch.bfloat16, **ours)
    for k, v in ours.items():
        assert getattr(tc, k) == v, k
    assert tc.bf16
    # the recipe (YAML) spelling gives the same as the flags
    yaml_cfg = load_config(text="model: {preset: tiny-llama, seq_length: 64}\noptimizer:\n" + "".join(
        f"  {k}: {json.dumps(getattr(cfg.optimizer, k))}\n" for k in
        ("bf16", "fp8_format", "fp8_recipe", "fp8_margin", "fp8_amax_history_len",
         "fp8_amax_compute_algo", "fp8_wgrad", "fp8_param_gather")))
    assert fp8_transformer_kwargs(yaml_cfg) == ours
    from megatron_ar.training.optimizer import optimizer_config

    assert optimizer_config(cfg).fp8_recipe == cfg.optimizer.fp8_recipe  # as Megatron-LM's OptimizerConfig


def test_fp8_and_precision_aware_optimizer_without_te_name_the_key(tmp_path, monkeypatch):
    from megatron_ar.models.spec import te_available
    from megatron_ar.training.builder import build_run, transformer_overrides
    from megatron_ar.training.config import ConfigError, load_config

    # Transformer Engine made unimportable, so the outcome does not depend on the machine
    monkeypatch.setitem(sys.modules, "transformer_engine", None)
    te_available.cache_clear()
    assert not te_available()
    text = "model: {preset: tiny-llama, seq_length: 64}\n"
    cfg = load_config(text=text, overrides=["--bf16", "--fp8-format", "hybrid"])
    with pytest.raises(ConfigError, match=r"^optimizer\.fp8_format: fp8 needs Transformer Engine"):
        transformer_overrides(cfg)
    # build_run refuses before any process group or model exists
    with pytest.raises(ConfigError, match=r"^optimizer\.fp8_format"):
        build_run(cfg)
    import torch.distributed as dist

    assert not dist.is_initialized()
    cfg = load_config(text=text, overrides=["--bf16", "--use-precision-aware-optimizer",
                                            "--exp-avg-dtype", "bf16"])
    with pytest.raises(ConfigError, match=r"^optimizer\.use_precision_aware_optimizer"):
        build_run(cfg)
    # bad values name the key at load time
    for argv, key in ((["--fp8-format", "hybrid"], "optimizer.fp8_format"),
                      (["--bf16", "--fp8-format", "e5m2"], "optimizer.fp8_format"),
                      (["--bf16", "--fp8-format", "hybrid", "--fp8-amax-compute-algo", "mean"],
                       "optimizer.fp8_amax_compute_algo"),
                      (["--bf16", "--fp8-param-gather"], "optimizer.fp8_param_gather"),
                      (["--no-grad-reduce-in-fp32"], "optimizer.grad_reduce_in_fp32")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(text=text, overrides=argv)


# ----------------------------------------------------------------------------------------------
def test_level_shift_rebases_the_window(tmp_path):
    """Single process: an isolated spike is skipped and kept out of the window; a sustained
    higher level is skipped ``level_shift_steps - 1`` times, then accepted and becomes the new
    baseline, so a data phase with a higher loss is still trained on."""
    from megatron_ar.training.callbacks import LossSpikeDetector

    class St:
        iteration = 0
        consumed_samples = 0

    rng = np.random.default_rng(1)
    losses = list(3.0 + 0.02 * rng.standard_normal(30))
    losses[12] = 4.0  # isolated spike
    losses += list(6.0 + 0.02 * rng.standard_normal(20))  # level shift at 30
    det = LossSpikeDetector(sigma=6.0, window=10, skip=True, run_dir=str(tmp_path), level_shift_steps=3)
    st = St()
    skipped = []
    for i, loss in enumerate(losses):
        st.iteration = i
        if det.before_optimizer_step(st, loss):
            skipped.append(i)
    assert skipped == [12, 30, 31]
    recs = [json.loads(x) for x in open(tmp_path / "spikes.jsonl")]
    assert [(r["step"], r["skipped"], r["level_shift"]) for r in recs] == [
        (12, True, False), (30, True, False), (31, True, False), (32, False, True)]
    assert min(det.losses) > 5.5  # the window now describes the new level
    # the pending run survives a checkpoint round trip
    det.pending = [6.0]
    det2 = LossSpikeDetector(6.0, 10, True, str(tmp_path), level_shift_steps=3)
    det2.load_state_dict(json.loads(json.dumps(det.state_dict())))
    assert det2.pending == [6.0] and list(det2.losses) == list(det.losses)

"""End-to-end training on real text with megatron-core on CPU (gloo): TP=2 x PP=2 training
through a two-phase curriculum, kill -9 + bit-exact resume, resume under another layout,
back-tracing, evaluation. One reference run (module fixture) feeds all checks.

Layout of the runs (A is the session fixture `run_a` of conftest.py) (60 steps of 16 x 64 tokens; phase change at step 25; checkpoints every
10 steps, keep-last 5):
  A: reference, uninterrupted, TP2 x PP2 (4 processes), distributed optimizer.
  B: a copy of A's step-20 checkpoint, resumed, saving every 2 steps, SIGKILLed at a random
     step in [23, 25) after its step-22 checkpoint;  C: B resumed (across the phase change)
     until step 30 -> losses and consumed samples must equal A's bit for bit.
  D: A's step-40 checkpoint resumed at TP1 x PP2 x VPP2 x DP2 (4 processes), stopped by SIGUSR1.
"""
import json
import math
import os
import random

import numpy as np
import pytest

from train_harness import (STEPS, copy_checkpoint, data_of, read_metrics, torchrun, torchrun_kill_at,
                           write_recipe)

pytestmark = pytest.mark.multiproc



def _labels_entropy(run_dir, first_sample, last_sample):
    from megatron_ar.training.builder import build_data
    from megatron_ar.training.config import load_config

    ds = build_data(load_config(os.path.join(run_dir, "config.yaml")))
    toks = np.concatenate([np.asarray(ds[i]["labels"]) for i in range(first_sample, last_sample)])
    p = np.bincount(toks) / len(toks)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum()), len(toks)


def test_loss_falls_below_unigram_entropy(run_a):
    m = run_a["metrics"]
    assert sorted(m) == list(range(STEPS))
    assert m[0]["phase"] == "broad" and m[STEPS - 1]["phase"] == "arabic"
    change = min(s for s in m if m[s]["phase"] == "arabic")
    assert change == 25  # 25,600 tokens / (16 x 64) per step
    # Unigram entropy (plug-in estimate, biased *low*) of exactly the tokens of the last phase
    # that the run trained on, vs. the mean training loss of the last 10 steps.
    h_uni, n = _labels_entropy(run_a["dir"], change * 16, STEPS * 16)
    late = float(np.mean([m[s]["loss"] for s in range(STEPS - 10, STEPS)]))
    print(f"\nunigram entropy of phase-2 data: {h_uni:.3f} nats ({n} tokens); initial loss "
          f"{m[0]['loss']:.3f} (ln V = {math.log(2048):.3f}); mean loss of last 10 steps {late:.3f}")
    assert m[0]["loss"] > 7.0  # random init over a 2048 vocab
    assert late < h_uni - 0.4, (late, h_uni)


def test_checkpoints_published_and_pruned(run_a):
    ck = os.path.join(run_a["dir"], "checkpoints")
    entries = sorted(os.listdir(ck))
    assert entries == ["iter_0000020", "iter_0000030", "iter_0000040", "iter_0000050",
                       "iter_0000060", "latest_checkpointed_iteration.txt"]
    assert open(os.path.join(ck, "latest_checkpointed_iteration.txt")).read() == "60"
    ts = json.load(open(os.path.join(ck, "iter_0000060", "train_state.json")))
    assert ts["consumed_samples"] == 60 * 16 and ts["data"]["phase"] == "arabic"
    assert os.path.isfile(os.path.join(ck, "iter_0000060", "config.yaml"))
    assert os.path.isfile(os.path.join(run_a["dir"], "config.yaml"))
    assert os.path.isdir(os.path.join(run_a["dir"], "tensorboard"))


def test_kill9_and_resume_is_bit_exact(run_a):
    rng = random.Random(0)  # seeded: a failure reproduces at the same kill step
    kill_after = rng.randrange(23, 25)  # 0-based step logged before the kill
    print(f"\nSIGKILL after step {kill_after}")
    d = run_a["tmp"] / "b"
    run_b = str(d / "run")
    copy_checkpoint(run_a["dir"], 20, run_b)
    recipe = write_recipe(str(d / "recipe.yaml"), data_of(run_a), run_b, STEPS)
    torchrun_kill_at(4, recipe, run_b, kill_after, 22, "--save-interval", "2")
    pointer = int(open(os.path.join(run_b, "checkpoints", "latest_checkpointed_iteration.txt")).read())
    assert pointer in (22, 24)
    assert not any(e.startswith("iter_") and int(e[5:]) > pointer
                   for e in os.listdir(os.path.join(run_b, "checkpoints"))), "a partial checkpoint is visible"
    torchrun(4, recipe, "--exit-interval", "30")
    a, c = run_a["metrics"], read_metrics(run_b)
    assert sorted(c) == list(range(20, 30))
    for s in range(20, 30):
        assert c[s]["loss"] == a[s]["loss"], (s, c[s]["loss"], a[s]["loss"])  # bit for bit
        assert c[s]["grad_norm"] == a[s]["grad_norm"] and c[s]["lr"] == a[s]["lr"]
        assert c[s]["consumed_samples_before"] == a[s]["consumed_samples_before"] == s * 16
    # The consumed-sample sequence (global indices per micro-batch) and the tokens fed are equal.
    ba = {r["step"]: r for r in map(json.loads, open(os.path.join(run_a["dir"], "batches.jsonl")))}
    bc = {r["step"]: r for r in map(json.loads, open(os.path.join(run_b, "batches.jsonl")))}
    for s in range(20, 30):
        assert bc[s]["indices"] == ba[s]["indices"] and bc[s]["digests"] == ba[s]["digests"]


def test_resume_under_different_layout_and_sigusr1(run_a):
    """A's step-40 checkpoint (TP2 x PP2 + SP) continues at TP1 x PP2 with 2 virtual stages
    (interleaved 1F1B) x DP2; SIGUSR1 (Slurm pre-emption) after
    step 41 makes every rank save a checkpoint at the same step and exit cleanly."""
    import signal

    from train_harness import torchrun_signal_at

    d = run_a["tmp"] / "d"
    run_d = str(d / "run")
    copy_checkpoint(run_a["dir"], 40, run_d)
    recipe = write_recipe(str(d / "recipe.yaml"), data_of(run_a), run_d, STEPS)
    rc, log = torchrun_signal_at(4, recipe, run_d, 41, signal.SIGUSR1, "--tensor-model-parallel-size", "1",
                                 "--no-sequence-parallel", "--num-layers-per-virtual-pipeline-stage", "1",
                                 "--exit-interval", "50")
    assert rc == 0, log[-4000:]
    assert "TP=1 PP=2 VPP=2 DP=2" in log
    assert "RNG state not restored" in log and "stopping after step" in log and "SIGUSR1" in log
    a, m = run_a["metrics"], read_metrics(run_d)
    last = max(m)
    assert 41 <= last < 49 and sorted(m) == list(range(40, last + 1))
    pointer = int(open(os.path.join(run_d, "checkpoints", "latest_checkpointed_iteration.txt")).read())
    assert pointer == last + 1  # saved right after the step during which the signal arrived
    # Same weights and optimizer state, different reduction order (TP/PP -> DP): the first
    # loss agrees to fp32 rounding; Adam then amplifies last-bit gradient differences.
    assert m[40]["loss"] == pytest.approx(a[40]["loss"], rel=1e-5)
    assert m[40]["grad_norm"] == pytest.approx(a[40]["grad_norm"], rel=1e-4)
    for s in range(41, last + 1):
        assert m[s]["loss"] == pytest.approx(a[s]["loss"], rel=2e-2)
        assert m[s]["consumed_samples_before"] == a[s]["consumed_samples_before"]


def test_backtrace_returns_the_trained_tokens(run_a):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_ar.training.backtrace import backtrace_step
    from megatron_ar.training.builder import load_tokenizer
    from megatron_ar.training.config import load_config

    tok = load_tokenizer(load_config(os.path.join(run_a["dir"], "config.yaml")).model.tokenizer)
    for step in (3, 31):  # one step per phase
        res = backtrace_step(run_a["dir"], step)
        assert res["verified"] == {0: [True] * 4}  # digests of what the loop fed the model
        assert len(res["samples"]) == 16 and res["consumed_samples"] == step * 16
        assert res["phase"] == ("broad" if step < 25 else "arabic")
        for row in res["samples"]:
            # Oracle: megatron-core's IndexedDataset read of the reported token ranges.
            ds = IndexedDataset(row["prefix"])
            toks = np.concatenate([ds.get(doc, offset=a, length=b - a) for doc, a, b in row["token_ranges"]])
            assert toks.tolist() == row["tokens"] and len(row["tokens"]) == 65
            assert row["text"] == tok.decode(row["tokens"], skip_special_tokens=False) != ""  # the run's tokenizer


def _cloze_oracle(run_dir, iteration, hf_dir, margin=1e-3):
    """acc / acc_norm of the cloze task recomputed outside the training stack: the iteration's
    checkpoint exported to HF (the converter), transformers' fp32 log-likelihood of each choice's
    tokens given the query (lm-evaluation-harness: summed; acc_norm divides by the choice's
    characters). Also counts, per metric, the items whose best and second-best choices are within
    ``margin``: fp32 differences between the TP2 x PP2 forward and transformers may flip those."""
    import torch
    from transformers import AutoModelForCausalLM

    from megatron_ar.checkpoint import convert
    from megatron_ar.training.builder import load_tokenizer
    from megatron_ar.training.config import load_config
    from megatron_ar.training.eval import load_mc_task

    cfg = load_config(os.path.join(run_dir, "config.yaml"))
    convert("llama", "megatron", "hf", os.path.join(run_dir, "checkpoints", f"iter_{iteration:07d}"), hf_dir,
            progress=False)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tok = load_tokenizer(cfg.model.tokenizer)
    seq = cfg.model.seq_length
    hits, close = {"acc": 0, "acc_norm": 0}, {"acc": 0, "acc_norm": 0}
    items = load_mc_task(cfg.eval.mc_tasks["quran_cloze"], cfg.eval.mc_limit)
    for it in items:
        ctx = tok.encode(it["query"], add_special_tokens=False).ids
        ll = []
        for choice in it["choices"]:
            cont = tok.encode(choice, add_special_tokens=False).ids
            ids = (ctx + cont)[-(seq + 1):]  # the query truncated from the left to fit
            n = min(len(cont), len(ids) - 1)
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids[:-1]])).logits[0].double(), -1)
            ll.append(sum(float(logp[i - 1, ids[i]]) for i in range(len(ids) - n, len(ids))))
        for key, score in (("acc", ll), ("acc_norm", [x / len(c) for x, c in zip(ll, it["choices"])])):
            best, second = sorted(score, reverse=True)[:2]
            hits[key] += score.index(best) == it["gold"]
            close[key] += best - second < margin
    return len(items), hits, close


def test_eval_results(run_a):
    ev = read_metrics(run_a["dir"], kind="eval")
    r = ev[STEPS - 1]
    for name in ("ar", "en"):
        v = r["valid"][name]
        assert v["samples"] == 8 and v["tokens"] == 8 * 64
        assert v["bpb"] == pytest.approx(v["loss"] * v["tokens"] / math.log(2) / v["bytes"], rel=1e-9)
        assert 0.3 < v["bpb"] < 8
    t = r["tasks"]["quran_cloze"]
    n, hits, close = _cloze_oracle(run_a["dir"], STEPS, str(run_a["tmp"] / "hf_eval"))
    print(f"\nquran_cloze at step {STEPS}: {t}; transformers oracle: {hits} of {n} (near ties {close})")
    assert t["n"] == n == 16
    for key in ("acc", "acc_norm"):
        assert abs(t[key] * n - hits[key]) <= close[key], (key, t, hits, close)
    assert "[eval] step 60" in run_a["log"]


def _tool(repo_root, name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(repo_root, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_tools_backtrace_and_plot(run_a, repo_root, capsys):
    """The thin CLIs, in-process: --json puts one summary object on the last stdout line."""
    rc = _tool(repo_root, "backtrace")(["--run-dir", run_a["dir"], "--step", "26", "--rank", "0", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["verified"] is True and summary["samples"] == 16
    assert "phase arabic" in out and "dataset ar" in out
    rc = _tool(repo_root, "plot_run")([run_a["dir"], "--json"])
    pngs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pngs"]
    assert rc == 0
    assert {os.path.basename(x) for x in pngs} == {"loss_by_phase.png", "lr.png", "throughput.png",
                                                   "valid.png", "tasks.png"}
    assert all(os.path.getsize(x) > 5000 for x in pngs)

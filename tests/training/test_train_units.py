"""Single-process pieces of the training system: loss-spike detector, bytes per token (against
the tokenizer's own decode), checkpoint publishing/pruning, multiple-choice scoring."""
import json
import math
import os

import numpy as np
import pytest

from megatron_ar.training.callbacks import LossSpikeDetector, truncate_jsonl
from megatron_ar.training.checkpointing import POINTER, latest_iteration, prune_checkpoints
from megatron_ar.training.eval import TaskError, load_mc_task, score_mc, token_byte_lengths

pytestmark = pytest.mark.unit


class _State:
    def __init__(self):
        self.iteration = 0
        self.consumed_samples = 0


def test_spike_detector_flags_and_skips(tmp_path):
    rng = np.random.default_rng(0)
    losses = list(3.0 + 0.01 * rng.standard_normal(40))
    losses[30] = 3.5  # ~50 sigma
    det = LossSpikeDetector(sigma=6.0, window=20, skip=True, run_dir=str(tmp_path))
    st = _State()
    det.on_train_start(st)
    skipped = []
    for i, loss in enumerate(losses):
        st.iteration = i
        if det.before_optimizer_step(st, loss):
            skipped.append(i)
    assert skipped == [30]
    recs = [json.loads(x) for x in open(tmp_path / "spikes.jsonl")]
    assert [r["step"] for r in recs] == [30] and recs[0]["z"] > 6 and recs[0]["skipped"]
    # the window survives a checkpoint (JSON round trip) and judges the same
    det2 = LossSpikeDetector(6.0, 20, True, str(tmp_path))
    det2.load_state_dict(json.loads(json.dumps(det.state_dict())))
    # oracle: the last 20 losses that were not spikes (step 30 stays out of the window)
    w = np.asarray(losses[19:30] + losses[31:40])
    assert det2.judge(3.5) == pytest.approx({"mean": w.mean(), "std": w.std(), "z": (3.5 - w.mean()) / w.std()},
                                            rel=1e-12)
    assert det2.judge(3.0) is None
    assert list(det2.losses) == list(det.losses) == w.tolist()


def test_bytes_per_token_equal_decoded_utf8(gemma_tokenizer_dir, bukhari_records):
    """Σ bytes(token) over a text's ids equals len(decode(ids).encode()) for the real Gemma
    tokenizer (SentencePiece-style, byte fallback) on Arabic and English."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(gemma_tokenizer_dir, "tokenizer.json"))
    table = token_byte_lengths(tok)
    for rec in bukhari_records[:30]:
        for text in (rec["arabic"], rec["english"]["text"]):
            ids = tok.encode(text, add_special_tokens=False).ids
            assert table[ids].sum() == len(tok.decode(ids).encode("utf-8"))


def test_bytes_per_token_byte_level_bpe(bukhari_records):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [r["arabic"] for r in bukhari_records[:200]] + [r["english"]["text"] for r in bukhari_records[:200]]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<eod>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    table = token_byte_lengths(tok)
    assert table[tok.token_to_id("<eod>")] == 0
    for text in texts[:50]:
        ids = tok.encode(text).ids
        assert table[ids].sum() == len(text.encode("utf-8"))


def test_checkpoint_pointer_and_pruning(tmp_path):
    root = str(tmp_path)
    assert latest_iteration(root) is None
    for it in (10, 20, 30, 40):
        os.makedirs(os.path.join(root, f"iter_{it:07d}"))
    os.makedirs(os.path.join(root, ".tmp_iter_0000050"))  # an interrupted save: invisible
    with open(os.path.join(root, POINTER), "w") as f:
        f.write("40")
    assert latest_iteration(root) == 40
    assert prune_checkpoints(root, 2) == [10, 20]
    assert sorted(os.listdir(root)) == [".tmp_iter_0000050", "iter_0000030", "iter_0000040", POINTER]
    with open(os.path.join(root, POINTER), "w") as f:
        f.write("50")
    with pytest.raises(RuntimeError, match="iter_0000050 is missing"):
        latest_iteration(root)


def test_truncate_jsonl_drops_rewritten_steps(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text("".join(json.dumps({"step": i}) + "\n" for i in range(10)) + '{"step": 10, "lo')
    truncate_jsonl(str(p), 6)
    assert [json.loads(x)["step"] for x in p.read_text().splitlines()] == list(range(6))


def test_mc_scoring_and_errors(tmp_path):
    items = [{"query": "q", "choices": [" a", " bbbb"], "gold": 1},
             {"query": "q", "choices": [" a", " b", " c"], "gold": 0}]
    # item 0: raw argmax picks " a" (wrong); per-char normalisation picks " bbbb" (right)
    res = score_mc(items, [-2.0, -4.0, -1.0, -3.0, -5.0])
    assert res == {"acc": 0.5, "acc_norm": 1.0, "n": 2}
    p = tmp_path / "t.jsonl"
    p.write_text('{"query": "q", "choices": ["a", "b"], "gold": 0}\n{"query": "q", "choices": ["a"], "gold": 0}\n')
    with pytest.raises(TaskError, match="t.jsonl:2: 'choices'"):
        load_mc_task(str(p))


def test_dry_run_plan_of_the_fanar_recipes(repo_root):
    """The Fanar recipes carry the report's values (Fanar report, Tables 6 and 7, Secs.
    6.3-6.4) and the dry run resolves and prints them."""
    from megatron_ar.training.config import load_config
    from megatron_ar.training.plan import format_plan, plan_run

    star = plan_run(load_config(os.path.join(repo_root, "examples/recipes/fanar_star_7b.yaml")), 168)
    assert star["layout"]["dp"] == 84 and star["batch"]["num_microbatches"] == 8
    assert star["batch"]["tokens_per_step"] == 1344 * 4096  # ~5.5M tokens (Sec. 6.3.2)
    o = star["optimizer"]
    assert (o["lr"], o["min_lr"], o["adam_beta1"], o["adam_beta2"], o["adam_eps"], o["weight_decay"],
            o["clip_grad"], o["grad_reduce_dtype"], o["optimizer_state_dtype"]) == \
        (3e-4, 3e-5, 0.9, 0.95, 1e-5, 0.1, 1.0, "fp32", "fp32")
    assert star["lr"]["warmup_iters"] == 2000 and star["lr"]["style"] == "cosine-cooldown"
    cool = star["phases"][-1]
    assert cool["name"] == "cooldown" and cool["steps"] == math.ceil(100e9 / (1344 * 4096))
    assert star["lr"]["cooldown_iters"] == cool["steps"]  # LR linearly to zero over the cool-down
    assert [p["name"] for p in star["phases"]] == ["broad", "filtered", "cooldown"]
    assert star["phases"][0]["steps"] is None  # epoch budgets need the .idx files
    text = format_plan(star)
    assert "eps 1e-05" in text and "1344 = 2 x 84 (DP) x 8 (micro-batches)" in text
    prime = plan_run(load_config(os.path.join(repo_root, "examples/recipes/fanar_prime_9b_cpt.yaml")), 168)
    assert prime["layout"] == {"tp": 4, "pp": 2, "vpp": 1, "dp": 21, "sequence_parallel": True,
                               "distributed_optimizer": True}
    assert prime["batch"]["check"] == "1071 = 1 x 21 (DP) x 51 (micro-batches)"
    o = prime["optimizer"]
    assert (o["lr"], o["min_lr"], o["adam_eps"], o["weight_decay"], o["grad_reduce_dtype"],
            o["optimizer_state_dtype"]) == (8e-6, 1e-6, 1e-8, 0.01, "bf16", "bf16")
    assert prime["lr"]["warmup_iters"] == 100
    assert [p["name"] for p in prime["phases"]] == ["cpt", "cooldown"]
    assert prime["phases"][0]["epochs"] == 1 and prime["phases"][-1]["lr_schedule"] == "linear_to_zero"
    shares = {}
    import yaml

    raw = yaml.safe_load(open(os.path.join(repo_root, "examples/recipes/fanar_prime_9b_cpt.yaml")))
    for g, v in raw["data"]["phases"][0]["blend"].items():
        shares[g] = v["weight"]
    assert shares == {"ar": 45, "en": 45, "code": 10}  # Sec. 6.4.1
    # Memory: bf16 weights (2 B/param) + bf16 grad reduce (2) + (fp32 master 4 + bf16 Adam
    # moments 2 + 2) / DP 21 with the distributed optimizer.
    m = prime["memory_per_gpu"]
    assert m["grads_gib"] == pytest.approx(m["weights_gib"])
    assert m["optimizer_gib"] == pytest.approx(m["params_per_rank"] * 8 / 21 / 2**30)
    s = star["memory_per_gpu"]  # fp32 master + fp32 moments (12 B) / DP 84
    assert s["optimizer_gib"] == pytest.approx(s["params_per_rank"] * 12 / 84 / 2**30)


def test_dry_run_plan_of_the_autoresearch_recipe(repo_root):
    """The autoresearch-v2 recipe carries the card's curriculum: 47,674 steps of 256 x 2048
    tokens, phases ending at steps 7,151 (15%) and 19,069 (+25%), the rest (60%) full mix."""
    from megatron_ar.training.config import load_config
    from megatron_ar.training.plan import format_plan, plan_run

    cfg = load_config(os.path.join(repo_root, "examples/recipes/autoresearch_v2_540m.yaml"))
    pl = plan_run(cfg, 8)
    assert pl["batch"]["tokens_per_step"] == 256 * 2048
    assert [(p["name"], p["start_step"], p["steps"]) for p in pl["phases"]] == [
        ("broad", 0, 7151), ("arabic_immersion", 7151, 11918), ("full_mix", 19069, 28605)]
    assert pl["train_iters"] == 47674
    assert cfg.optimizer.fp8_format == "e4m3" and cfg.optimizer.fp8_recipe == "tensorwise"
    assert cfg.model.seq_length == 2048 and pl["model"]["padded_vocab_size"] == 32768
    assert "phase full_mix: 14,997,258,240 tokens, 28,605 steps" in format_plan(pl)


def test_stop_marker_only_for_a_signal_stop_before_the_end(tmp_path):
    """train.py --stop-marker: the Slurm launcher requeues when the file exists, so it must be
    written by rank 0 for a signal stop before the last step, and never for a finished run, an
    exit_interval stop or another rank."""
    from types import SimpleNamespace

    from megatron_ar.train import write_stop_marker

    def state(rank, iteration, reason):
        return SimpleNamespace(layout=SimpleNamespace(rank=rank), iteration=iteration,
                               train_iters=10, stop_reason=reason)

    cases = [((0, 4, "signal SIGUSR1"), True), ((0, 4, "signal on another rank"), True),
             ((1, 4, "signal SIGUSR1"), False), ((0, 10, "signal SIGTERM"), False),
             ((0, 4, "exit_interval 4"), False), ((0, 10, None), False)]
    for i, (args, written) in enumerate(cases):
        path = tmp_path / f"marker{i}"
        assert write_stop_marker(state(*args), str(path)) is written, args
        assert path.exists() is written, args
        if written:
            assert path.read_text() == f"4 {args[2]}\n"

"""Continual pretraining: an HF checkpoint converted with megatron_ar.checkpoint loads as the
initial weights of a parallel run, and the loss of step 0 equals transformers' loss on the same
batch (the oracle), fp32 on CPU.

- Llama (Fanar Star shape, untied) at TP=2.
- Gemma-2 (Fanar Prime's path) at TP=2 + SP + distributed optimizer: a tiny random
  ``Gemma2ForCausalLM`` with every Gemma-2 feature switched on (tied embeddings, both soft-caps,
  a sliding window of 16 < seq 64 on alternate layers, ``query_pre_attn_scalar`` 20 != head_dim
  24, head_dim != hidden/heads, GQA), first *vocabulary-pruned* with
  ``megatron_ar.tokenizers.prune_checkpoint`` (2,560 -> 2,048 rows, the 256,000 -> 128,256 step
  of Fanar Prime in miniature), then converted. Two oracles: transformers on the pruned
  checkpoint, and transformers on the *unpruned* original restricted to the kept rows (pruning
  a tied Gemma vocabulary must not change the distribution over kept tokens, up to the softmax
  normaliser over dropped ones).

Both runs go through the ``megatron_ar.train`` entry point under torchrun and read the batch
back with ``backtrace_step``. TP=2 x PP=2 (tied embedding split across stages) and PP=2 with
virtual stages are covered for Gemma-2, Llama and a tied GQA 8:1 model by
test_train_architectures.py (step-0 loss vs transformers in every layout), so these two stay at
two processes each.
"""
import math
import os

import numpy as np
import pytest
import torch

from arch_parity_workers import tiny_gemma2_hf
from train_harness import converted_tiny_llama, read_metrics, torchrun, write_recipe

pytestmark = pytest.mark.multiproc

# fp32 end to end; measured differences are ~1e-7 relative (printed with -s), the limit keeps
# a wide margin while any real mismatch (another init, a missing feature) is > 1e-3.
REL_TOL = 1e-5


def _backtraced_tokens(run_dir):
    from megatron_ar.training.backtrace import backtrace_step

    rows = backtrace_step(run_dir, 0, decode=False)["samples"]
    return torch.tensor(np.array([r["tokens"] for r in rows]), dtype=torch.long)


def _ce(logits, labels):
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1)).item()


def _cpt_flags(mg_dir):
    return ["--model.preset", mg_dir, "--model.overrides", "{}", "--pretrained-checkpoint", mg_dir,
            "--lr", "8e-6", "--min-lr", "1e-6", "--lr-warmup-iters", "0", "--lr-decay-style",
            "cosine", "--lr-cooldown-iters", "0", "--eval-interval", "1000"]


def test_converted_hf_checkpoint_is_the_starting_point(tmp_path, train_data):
    hf, mg_dir = converted_tiny_llama(tmp_path, tensor_parallel_size=2)

    run_dir = str(tmp_path / "run")
    recipe = write_recipe(str(tmp_path / "recipe.yaml"), train_data, run_dir, train_iters=2)
    torchrun(2, recipe, *_cpt_flags(mg_dir), "--pipeline-model-parallel-size", "1")
    ours = read_metrics(run_dir)[0]["loss"]

    # Oracle: transformers on exactly the tokens step 0 trained on (back-traced).
    toks = _backtraced_tokens(run_dir)
    with torch.no_grad():
        ref = _ce(hf(input_ids=toks[:, :-1]).logits, toks[:, 1:])
    print(f"\nllama step-0 loss: megatron_ar TP=2 {ours:.7f}, transformers {ref:.7f} "
          f"(rel diff {abs(ours - ref) / ref:.1e}; ln V = {math.log(2048):.4f})")
    # Agreement to 1e-5 is only possible with HF's weights: another init differs at 1e-3.
    assert ours == pytest.approx(ref, rel=REL_TOL)


ORIG_VOCAB, PRUNED_VOCAB = 2560, 2048


def test_pruned_gemma2_cpt_step0_matches_transformers(tmp_path, train_data):
    from transformers import AutoModelForCausalLM

    from megatron_ar.checkpoint import convert, read_checkpoint_info
    from megatron_ar.tokenizers.prune import make_id_map
    from megatron_ar.tokenizers.prune_checkpoint import prune_checkpoint

    hf = tiny_gemma2_hf(ORIG_VOCAB)
    assert hf.config.layer_types[:2] == ["sliding_attention", "full_attention"]
    hf_dir, pruned_dir, mg_dir = (str(tmp_path / n) for n in ("hf", "hf_pruned", "megatron"))
    hf.save_pretrained(hf_dir, safe_serialization=True)

    # Keep 2,048 of 2,560 ids (the special ids 0..2 among them), dropped ones spread over the range.
    rng = np.random.default_rng(5)
    dropped = rng.choice(np.arange(3, ORIG_VOCAB), ORIG_VOCAB - PRUNED_VOCAB, replace=False)
    keep = np.ones(ORIG_VOCAB, bool)
    keep[dropped] = False
    id_map = make_id_map(keep)
    kept_ids = torch.from_numpy(np.flatnonzero(keep))
    os.makedirs(pruned_dir)
    info = prune_checkpoint(hf_dir, pruned_dir, id_map, progress=False)
    assert info["tensors_pruned"] == ["model.embed_tokens.weight"]
    assert info["vocab_size"] == PRUNED_VOCAB

    convert("gemma2", "hf", "megatron", pruned_dir, mg_dir, target_tensor_parallel_size=2,
            progress=False)
    mc = read_checkpoint_info(mg_dir).model_config
    assert (mc.family, mc.tie_embeddings, mc.vocab_size, mc.sliding_window, mc.head_dim,
            mc.query_pre_attn_scalar, mc.attn_logit_softcap, mc.final_logit_softcap) == (
        "gemma2", True, PRUNED_VOCAB, 16, 24, 20, 5.0, 3.0)

    run_dir = str(tmp_path / "run")
    recipe = write_recipe(str(tmp_path / "recipe.yaml"), train_data, run_dir, train_iters=1)
    # TP=2 shards the pruned (tied) vocabulary; sequence parallel and the distributed
    # optimizer as in the recipe.
    torchrun(2, recipe, *_cpt_flags(mg_dir), "--pipeline-model-parallel-size", "1")
    ours = read_metrics(run_dir)[0]["loss"]

    toks = _backtraced_tokens(run_dir)
    assert int(toks.max()) < PRUNED_VOCAB
    pruned = AutoModelForCausalLM.from_pretrained(pruned_dir, attn_implementation="eager").float().eval()
    with torch.no_grad():
        ref_pruned = _ce(pruned(input_ids=toks[:, :-1]).logits, toks[:, 1:])
        # The unpruned original, fed the old ids, scored over the kept rows only.
        old_logits = hf(input_ids=kept_ids[toks[:, :-1]]).logits[..., kept_ids]
        ref_orig = _ce(old_logits, toks[:, 1:])
        # The same batch through the full 2,560-way softmax: pruning does change the loss by
        # the mass of the dropped rows, so the kept-row oracle above is a non-trivial check.
        full = _ce(hf(input_ids=kept_ids[toks[:, :-1]]).logits, kept_ids[toks[:, 1:]])
    print(f"\ngemma2 (pruned {ORIG_VOCAB}->{PRUNED_VOCAB}) step-0 loss: megatron_ar TP=2+SP "
          f"{ours:.7f}, transformers pruned {ref_pruned:.7f} (rel diff "
          f"{abs(ours - ref_pruned) / ref_pruned:.1e}), unpruned over kept rows {ref_orig:.7f} "
          f"(rel diff {abs(ours - ref_orig) / ref_orig:.1e}), unpruned full softmax {full:.7f}")
    assert ours == pytest.approx(ref_pruned, rel=REL_TOL)
    assert ours == pytest.approx(ref_orig, rel=REL_TOL)
    assert abs(full - ref_orig) > 100 * REL_TOL * ref_orig

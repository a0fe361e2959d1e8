"""Attention backends (megatron_ar.models.attention): selection, errors, and parity.

Oracles: HF transformers in fp32 (``Gemma2ForCausalLM`` eager attention: soft-cap, sliding
window, GQA), the unfused megatron-core reference (loss and every gradient) for the backends
that train on a CPU. Configs are held-out variants of the tiny presets: a Gemma-2 whose window
(5) is shorter than the sequence (16) and whose two soft-caps bend the logits, the same
model without caps (so ``sdpa`` may run it, window and all), and a Llama with GQA.
Tolerances: logits <= 1e-4 max abs vs HF; gradients <= 1e-5 relative to the reference.
"""
import dataclasses
import os
import sys

import pytest
import torch

from megatron_ar.models import get_preset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "parallel"))

pytestmark = pytest.mark.multiproc

LOGIT_TOL = 1e-4
GRAD_TOL = 1e-5


# ----------------------------------------------------------------------------- parity
def _cases():
    from test_parallel_models import _batch, _hf_model

    from megatron_ar.models import hf_to_megatron

    gemma = get_preset("tiny-gemma2")
    nocap = dataclasses.replace(gemma, attn_logit_softcap=None, final_logit_softcap=None)
    llama = get_preset("tiny-llama")
    out = []
    for name, cfg, backends, seed in (("gemma2-capped", gemma, ["unfused", "flex"], 3),
                                      ("gemma2-nocap", nocap, ["sdpa", "flex"], 4),
                                      ("llama", llama, ["sdpa", "flex"], 5)):
        model = _hf_model(cfg, seed)
        tokens, microbatches = _batch(cfg.vocab_size, seed + 1)
        with torch.no_grad():
            logits = model(tokens[:2]).logits
        out.append({"name": name, "cfg": cfg.to_dict(), "backends": backends,
                    "state": hf_to_megatron(model.state_dict(), cfg), "tokens": tokens[:2],
                    "hf_logits": logits, "microbatches": microbatches,
                    "train": name != "gemma2-capped"})
    return out


@pytest.fixture(scope="module")
def results():
    import mar_attention_workers as workers

    from megatron_ar.runtime import run_multiprocess

    per_rank = run_multiprocess(workers.suite, 2, {"cases": _cases()}, timeout=900)
    merged = {}
    for res in per_rank:
        for k, v in res.items():
            if v is not None:
                merged.setdefault(k, []).append(v)
    return merged


def test_caps_and_window_bite():
    """The held-out Gemma-2 batch is one where the caps and the window change HF's logits, so
    parity below cannot pass with either missing."""
    from test_parallel_models import _batch, _hf_model

    gemma = get_preset("tiny-gemma2")
    tokens, _ = _batch(gemma.vocab_size, 4)

    def logits(cfg):  # same seed and shapes: the same weights
        with torch.no_grad():
            return _hf_model(cfg, 3)(tokens[:2]).logits

    ref = logits(gemma)
    for change in (dict(attn_logit_softcap=None), dict(sliding_window=64)):
        other = logits(dataclasses.replace(gemma, **change))
        assert float((other - ref).abs().max()) > 100 * LOGIT_TOL, change


@pytest.mark.parametrize("layout", ["tp1", "tp2sp", "pp2"])
@pytest.mark.parametrize("case,backend", [
    ("gemma2-capped", "unfused"), ("gemma2-capped", "flex"), ("gemma2-nocap", "sdpa"),
    ("gemma2-nocap", "flex"), ("llama", "sdpa"), ("llama", "flex")])
def test_logits_match_hf(results, case, backend, layout):
    diffs = results[f"{case}/{backend}/{layout}/logits"]
    assert diffs and max(diffs) <= LOGIT_TOL, diffs


@pytest.mark.parametrize("layout", ["tp1", "tp2sp", "pp2"])
@pytest.mark.parametrize("case", ["gemma2-nocap", "llama"])
def test_sdpa_trains_like_the_reference(results, case, layout):
    grads = results[f"{case}/sdpa/{layout}/grad"]
    losses = results[f"{case}/sdpa/{layout}/loss"]
    assert max(grads) <= GRAD_TOL and max(losses) <= 1e-5, (grads, losses)



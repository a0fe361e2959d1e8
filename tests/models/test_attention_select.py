"""Attention backends (megatron_ar.models.attention): selection, errors and logging (parity:
test_attention_backends.py).

Oracles: HF transformers in fp32 (``Gemma2ForCausalLM`` eager attention: soft-cap, sliding
window, GQA), the unfused megatron-core reference (loss and every gradient) for the backends
that train on a CPU. Configs are held-out variants of the tiny presets: a Gemma-2 whose window
(5) is shorter than the sequence (16) and whose two soft-caps bend the logits, the same
model without caps (so ``sdpa`` may run it, window and all), and a Llama with GQA.
Tolerances: logits <= 1e-4 max abs vs HF; gradients <= 1e-5 relative to the reference.
"""
import dataclasses
import logging

import pytest

from megatron_ar.models import get_preset
from megatron_ar.models.attention import FlexAttention, SDPAttention, choose_backend


pytestmark = pytest.mark.unit


# ----------------------------------------------------------------------------- selection
def test_auto_choices():
    c = choose_backend("auto", None, use_te=False, device_type="cpu")
    assert c.backend == "sdpa"
    assert choose_backend("auto", 50.0, use_te=False, device_type="cpu").backend == "unfused"
    assert choose_backend("auto", 50.0, use_te=False, device_type="cuda").backend == "flex"
    assert choose_backend("auto", None, use_te=True, device_type="cuda").backend == "te"
    # TE without the soft-cap (TE PR 3391 / Megatron-LM PR 6590 absent): Flex inside the TE spec
    c = choose_backend("auto", 50.0, use_te=True, device_type="cuda", te_softcap=False)
    assert c.backend == "flex" and "TE spec" in c.reason
    assert choose_backend("auto", 50.0, use_te=True, device_type="cuda",
                          te_softcap=True).backend == "te"
    # context parallelism: only TE's attention can
    assert choose_backend("auto", None, use_te=True, device_type="cuda", cp=2).backend == "te"


@pytest.mark.parametrize("requested,softcap,use_te,cp,named", [
    ("sdpa", 50.0, False, 1, "cannot apply the attention soft-cap"),
    ("te", None, False, 1, "Transformer Engine spec is not in use"),
    ("flex", None, False, 2, "context_parallel_size=2"),
    ("unfused", None, True, 2, "context_parallel_size=2"),
    ("flash", None, False, 1, "unknown backend 'flash'"),
])
def test_wrong_override_names_key_and_available(requested, softcap, use_te, cp, named):
    with pytest.raises(ValueError) as e:
        choose_backend(requested, softcap, use_te=use_te, device_type="cpu", cp=cp)
    msg = str(e.value)
    assert msg.startswith("model.attention_backend: ") and named in msg, msg
    assert "auto" in msg  # the choices that can run are listed


def test_recipe_value_is_checked():
    from megatron_ar.models.config import ConfigError

    with pytest.raises(ConfigError, match=r"ModelConfig.attention_backend: must be one of"):
        dataclasses.replace(get_preset("tiny-llama"), attention_backend="flash")


def test_spec_carries_the_backend():
    from megatron_ar.models.modules import SoftcapDotProductAttention
    from megatron_ar.models.spec import layer_spec

    def core(cfg):
        return layer_spec(cfg, use_te=False).submodules.self_attention.submodules.core_attention

    gemma = get_preset("tiny-gemma2")
    assert core(gemma).module is SoftcapDotProductAttention  # CPU auto: the reference
    flex = core(dataclasses.replace(gemma, attention_backend="flex"))
    assert flex.module is FlexAttention and flex.params == {"logit_softcap": 5.0}
    assert core(get_preset("tiny-llama")).module is SDPAttention


def _build_and_log(presets):
    from megatron_ar.models import build_model
    from megatron_ar.runtime import init_distributed

    records = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    log = logging.getLogger("megatron_ar.models.builder")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    init_distributed(tp=1, pp=1)
    for name, backend in presets:
        build_model(dataclasses.replace(get_preset(name), attention_backend=backend))
    return [m for m in records if "attention backend" in m]


def test_build_logs_the_backend():
    from megatron_ar.runtime import run_multiprocess

    msgs = run_multiprocess(_build_and_log, 1, [("tiny-gemma2", "auto"),
                                                 ("tiny-llama", "flex")])[0]
    assert msgs[0].startswith("attention backend: unfused (attention soft-cap on CPU"), msgs
    assert msgs[1] == "attention backend: flex (set by model.attention_backend)", msgs

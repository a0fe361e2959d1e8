"""nanochat options without a process group: the name/shape table, the counts and the
initialisation against what nanochat's own code reported (tests/fixtures/nanochat, written by
make_fixtures.py from nanochat's ``GPT``: its state-dict shapes, ``num_scaling_params()``,
window sizes and the statistics of its ``init_weights()``), and the autoresearch card."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nanochat_workers as workers  # noqa: E402

from megatron_ar.models import get_preset  # noqa: E402
from megatron_ar.models.config import ConfigError  # noqa: E402
from megatron_ar.models.info import param_counts  # noqa: E402

pytestmark = pytest.mark.unit

FIXTURES = ["gqa", "window"]


@pytest.fixture(scope="module", params=FIXTURES)
def fx(request):
    return workers.load_fixture(request.param)


def test_table_covers_nanochats_state_dict(fx):
    from megatron_ar.models.nanochat import nanochat_shapes

    cfg = workers.fixture_config(fx)
    assert nanochat_shapes(cfg) == {k: tuple(v) for k, v in fx["shapes"].items()}


def test_round_trip_is_bit_exact(fx):
    from megatron_ar.models.nanochat import megatron_to_nanochat, nanochat_to_megatron

    cfg = workers.fixture_config(fx)
    state = workers.fixture_state(fx)
    state["transformer.wte.weight"][cfg.vocab_size:] = 7.0  # nanochat pad rows (none at 256)
    mg = nanochat_to_megatron(state, cfg, keep_vocab_padding=True)
    back = megatron_to_nanochat(mg, cfg)
    assert set(back) == set(state)
    for k, v in state.items():
        assert torch.equal(back[k], v), k
    # q/k heads are re-ordered (RoPE sign convention), v is not
    qkv = mg["decoder.layers.0.self_attention.linear_qkv.weight"]
    d = cfg.head_dim
    assert torch.equal(qkv[:d // 2], state["transformer.h.0.attn.c_q.weight"][d // 2:d])


def test_table_errors_name_the_tensor(fx):
    from megatron_ar.models.nanochat import nanochat_to_megatron

    cfg = workers.fixture_config(fx)
    state = workers.fixture_state(fx)
    with pytest.raises(KeyError, match="unused.*extra"):
        nanochat_to_megatron({**state, "extra": torch.zeros(1)}, cfg)
    missing = dict(state)
    del missing["smear_lambda"]
    with pytest.raises(KeyError, match="smear_lambda"):
        nanochat_to_megatron(missing, cfg)
    state["lm_head.weight"] = state["lm_head.weight"][:, :-1]
    with pytest.raises(ValueError, match="lm_head.weight"):
        nanochat_to_megatron(state, cfg)


def test_counts_equal_nanochats(fx):
    from megatron_ar.models.nanochat import nanochat_counts

    cfg = workers.fixture_config(fx)
    ours = nanochat_counts(cfg)
    assert {k: v for k, v in ours.items() if k != "scaling"} == fx["scaling"]
    assert ours["scaling"] == fx["scaling"]["transformer_matrices"] + fx["scaling"]["lm_head"]


def test_window_layers_equal_nanochats(fx):
    cfg = workers.fixture_config(fx)
    want = [w for w, _ in fx["window_sizes"]]
    got = [cfg.sliding_window - 1 if s else cfg.seq_length for s in cfg.sliding_layers()]
    assert got == want


def test_init_matches_nanochats_statistics():
    """init='nanochat' draws (per full megatron tensor) what nanochat's init_weights draws:
    constants equal, zeros zero, the per-layer ramps equal, large random tensors with
    nanochat's mean and standard deviation (10% of the std), small ones in its range."""
    from megatron_ar.models.nanochat import (full_shape, init_value, megatron_to_nanochat,
                                             weight_table)

    fx = workers.load_fixture("gqa")
    cfg = workers.fixture_config(fx)
    g = torch.Generator().manual_seed(0)
    state = {}
    for e in weight_table(cfg):
        shape = full_shape(cfg, e.megatron) if e.kind != "vocab" else (cfg.vocab_size,
                                                                      cfg.hidden_size)
        state[e.megatron] = init_value(e.megatron, shape, cfg, g)
    ours = megatron_to_nanochat(state, cfg)
    for name, (lo, hi, mean, std) in fx["init_stats"].items():
        t = ours[name].float()
        if lo == hi:  # constant (zeros, 0.2, ...)
            assert torch.allclose(t, torch.full_like(t, lo)), name
        elif t.numel() == len(fx["shapes"][name]) and t.dim() == 1 and t.numel() == cfg.num_layers:
            assert torch.allclose(t, torch.linspace(lo, hi, t.numel()) if t[0] < t[-1]
                                  else torch.linspace(hi, lo, t.numel()), atol=1e-6), name
        elif t.numel() >= 1000:  # normal or uniform: first two moments
            assert abs(float(t.std()) - std) <= 0.1 * std, name
            assert abs(float(t.mean()) - mean) <= 0.1 * std, name
        else:  # the small uniform gates: nanochat's range
            span = hi - lo
            assert t.min() >= lo - 0.1 * span and t.max() <= hi + 0.1 * span, name


def test_autoresearch_preset_counts_match_the_card():
    """Card: "540M total (235M scaling)"."""
    counts = param_counts(get_preset("autoresearch-540m"))
    assert abs(counts["total"] - 540e6) / 540e6 <= 0.01
    assert abs(counts["nanochat"]["scaling"] - 235e6) / 235e6 <= 0.005
    assert counts["nanochat"]["total"] == counts["total"]  # vocab 32768: no padding anywhere
    assert counts["total"] == counts["embedding"] + counts["non_embedding"]


@pytest.mark.parametrize("change,field", [
    (dict(qk_scale=-1.0), "qk_scale"),
    (dict(qk_scale=1.2, query_pre_attn_scalar=64), "qk_scale"),
    (dict(window_pattern="SXL"), "window_pattern"),
    (dict(window_pattern="SL", sliding_window=None), "window_pattern"),
    (dict(init="xavier"), "init"),
])
def test_validation_names_field(change, field):
    with pytest.raises(ConfigError, match=f"ModelConfig.{field}"):
        get_preset("tiny-autoresearch", **change)


def test_meta_json_round_trip():
    from megatron_ar.models.nanochat import config_from_meta, meta_model_config

    cfg = get_preset("autoresearch-540m")
    meta = {"model_config": meta_model_config(cfg)}
    assert config_from_meta(meta).replace(name=cfg.name) == cfg
    with pytest.raises(ConfigError, match="n_embd"):
        config_from_meta({"model_config": {"n_layer": 2}})

"""The frozen LASER2 encoder (megatron_ar.models.encoder): checkpoint mapping and forward.

Oracles: the LASER2 checkpoint layout as published (facebookresearch/LASER,
``laser_encoders/models.py`` ``LaserLstmEncoder``: ``embed_tokens`` [50004, 320], a 5-layer
bidirectional ``nn.LSTM`` with 512 units, keys ``lstm.weight_ih_l{k}[_reverse]`` ...), and a
step-by-step recomputation with ``torch.nn.LSTMCell`` per direction and layer followed by
LASER's max-pool over time with pad positions excluded. The model-level checks (frozen in DDP
and the optimizer, parallel parity) are in tests/parallel/test_arkadiko_variants.py.
"""
import pytest
import torch

from megatron_ar.models import ConfigError, get_preset
from megatron_ar.models.encoder import (LaserEncoder, LaserSpec, laser_shapes, laser_spec,
                                        laser_state_dict)

pytestmark = pytest.mark.unit

SPEC = LaserSpec(mode="input", vocab_size=40, num_layers=2, hidden=5, embed_dim=6,
                 pooling="max", padding_idx=1)


def _laser2_like(spec=SPEC, seed=0):
    """A checkpoint laid out as laser2.pt: {'params', 'model', 'dictionary'}."""
    gen = torch.Generator().manual_seed(seed)
    model = {k: 0.4 * torch.randn(s, generator=gen) for k, s in laser_shapes(spec).items()}
    params = {"num_embeddings": spec.vocab_size, "padding_idx": spec.padding_idx,
              "embed_dim": spec.embed_dim, "hidden_size": spec.hidden,
              "num_layers": spec.num_layers, "bidirectional": True, "left_pad": False}
    return {"params": params, "model": model, "dictionary": {"<s>": 0, "<pad>": 1}}


@torch.no_grad()
def _oracle(sd, tokens, spec=SPEC):
    """LSTMCell recurrence per direction and layer, then LASER's masked max-pool."""
    x = sd["embed_tokens.weight"][tokens].transpose(0, 1)  # [s, b, E]
    s, b = tokens.shape[1], tokens.shape[0]
    for k in range(spec.num_layers):
        outs = []
        for sfx, order in (("", range(s)), ("_reverse", reversed(range(s)))):
            cell = torch.nn.LSTMCell(x.shape[-1], spec.hidden)
            cell.load_state_dict({"weight_ih": sd[f"lstm.weight_ih_l{k}{sfx}"],
                                  "weight_hh": sd[f"lstm.weight_hh_l{k}{sfx}"],
                                  "bias_ih": sd[f"lstm.bias_ih_l{k}{sfx}"],
                                  "bias_hh": sd[f"lstm.bias_hh_l{k}{sfx}"]})
            h = c = torch.zeros(b, spec.hidden)
            y = [None] * s
            for t in order:
                h, c = cell(x[t], (h, c))
                y[t] = h
            outs.append(torch.stack(y))
        x = torch.cat(outs, -1)
    pad = tokens.eq(spec.padding_idx).t().unsqueeze(-1)
    return x, x.masked_fill(pad, float("-inf")).max(0).values


def test_laser2_shapes_are_the_published_ones():
    shapes = laser_shapes(laser_spec(get_preset("arkadiko-v4a")))
    assert shapes["embed_tokens.weight"] == (50004, 320)
    assert shapes["lstm.weight_ih_l0"] == shapes["lstm.weight_ih_l0_reverse"] == (2048, 320)
    assert shapes["lstm.weight_ih_l4_reverse"] == (2048, 1024)
    assert shapes["lstm.weight_hh_l3"] == (2048, 512) and shapes["lstm.bias_hh_l0"] == (2048,)
    assert len(shapes) == 1 + 5 * 2 * 4


def test_loader_maps_laser2_checkpoint_and_forward_matches_oracle():
    ckpt = _laser2_like()
    enc = LaserEncoder(SPEC)
    enc.load_state_dict(laser_state_dict(ckpt, SPEC))
    assert not any(p.requires_grad for p in enc.parameters())
    tokens = torch.tensor([[5, 7, 9, 1, 3, 8], [1, 2, 30, 31, 4, 1]])
    states, pooled = enc(tokens)
    ref_states, ref_pooled = _oracle(ckpt["model"], tokens)
    assert states.shape == (6, 2, 10) and pooled.shape == (2, 10)
    assert float((states - ref_states).abs().max()) < 1e-5
    assert float((pooled - ref_pooled).abs().max()) < 1e-5
    # the pooling really excludes pads (a pad position holds the max of some channel)
    raw_max = ref_states.max(0).values
    assert float((raw_max - ref_pooled).abs().max()) > 1e-4


def test_mean_pooling_and_all_pad_rows():
    spec = LaserSpec(**{**SPEC.__dict__, "pooling": "mean"})
    ckpt = _laser2_like(spec)
    enc = LaserEncoder(spec)
    enc.load_state_dict(laser_state_dict(ckpt, spec))
    tokens = torch.tensor([[5, 1, 9], [1, 1, 1]])
    states, pooled = enc(tokens)
    assert torch.allclose(pooled[0], (states[0, 0] + states[2, 0]) / 2, atol=1e-6)
    assert float(pooled[1].abs().max()) == 0.0
    _, maxpooled = LaserEncoder(SPEC)(tokens)
    assert float(maxpooled[1].abs().max()) == 0.0  # not -inf


def test_seeded_encoder_is_identical_across_builds():
    a, b = LaserEncoder(SPEC), LaserEncoder(SPEC)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    assert float(a.embed_tokens.weight[SPEC.padding_idx].abs().max()) == 0.0


@pytest.mark.parametrize("edit,err,match", [
    (lambda c: c["model"].update({"lstm.weight_ih_l9": torch.zeros(1)}), KeyError,
     "unknown key 'lstm.weight_ih_l9'"),
    (lambda c: c["model"].pop("lstm.bias_hh_l1_reverse"), KeyError,
     "missing key 'lstm.bias_hh_l1_reverse'"),
    (lambda c: c["model"].update({"embed_tokens.weight": torch.zeros(40, 7)}), ValueError,
     r"'embed_tokens.weight' has shape \(40, 7\), expected \(40, 6\)"),
    (lambda c: c["params"].update({"hidden_size": 512}), ValueError,
     r"params\['hidden_size'\]=512 but the model has ModelConfig.laser_hidden=5"),
    (lambda c: c["params"].update({"bidirectional": False}), ValueError, "bidirectional"),
])
def test_loader_errors_name_the_key(edit, err, match):
    ckpt = _laser2_like()
    edit(ckpt)
    with pytest.raises(err, match=match):
        laser_state_dict(ckpt, SPEC)


def test_bare_state_dict_is_accepted():
    ckpt = _laser2_like()
    assert set(laser_state_dict(ckpt["model"], SPEC)) == set(ckpt["model"])


@pytest.mark.parametrize("change,field", [
    ({"laser_mode": "prefix"}, "laser_mode"),
    ({"laser_pooling": "cls"}, "laser_pooling"),
    ({"laser_hidden": 40}, "laser_hidden"),  # 2 x 40 != hidden 64 for cross-attention
    ({"laser_layers": 0}, "laser_layers"),
    ({"laser_padding_idx": 250}, "laser_padding_idx"),
])
def test_config_validation_names_field(change, field):
    with pytest.raises(ConfigError, match=f"ModelConfig.{field}"):
        get_preset("tiny-arkadiko-v4a", **change)


def test_variants_have_no_hf_mapping():
    from megatron_ar.models import to_hf_config, weight_table

    for name in ("tiny-arkadiko-v4a", "tiny-arkadiko-v4c"):
        with pytest.raises(ConfigError, match="ModelConfig.laser_mode"):
            to_hf_config(get_preset(name))
        with pytest.raises(ConfigError, match="ModelConfig.laser_mode"):
            weight_table(get_preset(name))
    assert laser_spec(get_preset("tiny-arkadiko")) is None

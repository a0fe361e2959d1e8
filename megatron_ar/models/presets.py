"""Preset registry: named ModelConfigs for the models megatron_ar trains, plus tiny test twins.

Design choices
- A preset is a function returning a fresh :class:`ModelConfig` (configs are mutable
  dataclasses; a shared instance could be changed by one caller under another).
- The registry is a plain dict filled by this module's own definitions; users add presets
  explicitly with :func:`register_preset` (no registration as an import side effect of other
  modules).
- Sources: Fanar Star / Fanar Prime sizes from the Fanar report (Table 6; Prime is Gemma-2-9B
  with its vocabulary pruned 256,000 -> 128,256), Gemma-2-9B from its HF config, the
  autoresearch/nanochat GPT and Arkadiko (V4-A/B/C, the Arkadiko V4 card) from the project's
  specification. Where the sources
  are silent we state the choice: Fanar Star uses Llama-2 defaults (RoPE theta 10,000, RMSNorm
  eps 1e-5). The autoresearch preset is nanochat's GPT (``megatron_ar.models.nanochat``: value
  embeddings, residual/x0 scalars, smear, backout, ...) at the card's sizes: 537M parameters
  (card: 540M total) of which 235M are nanochat's "scaling" parameters (transformer matrices +
  LM head; card: 235M); ``python -m megatron_ar.models.info autoresearch-540m``.
- Tiny variants are *derived* from their parent preset (:data:`TINY_VARIANTS`): the parent's
  config with only the sizes (:data:`SIZE_FIELDS`) replaced, plus an explicit, per-variant list
  of scale-dependent values with the reason each must differ (soft-caps that bite at tiny
  scale, a ``query_pre_attn_scalar`` that differs from the tiny head dim). Every flag is the
  parent's, so a test on a tiny model runs the production architecture; a flag added to a
  parent reaches its tiny twin without an edit here. The sizes still cover the general cases
  (GQA, head_dim != hidden/heads, a window shorter than the test sequence, an unpadded vocab
  that exercises Megatron's vocab padding) and run in milliseconds on a CPU.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from megatron_ar.models.config import ModelConfig

_PRESETS: Dict[str, Callable[[], ModelConfig]] = {}


def register_preset(name: str, factory: Callable[[], ModelConfig]) -> None:
    """Add a preset; re-registering an existing name raises (no silent override)."""
    if name in _PRESETS:
        raise KeyError(f"preset {name!r} already registered")
    _PRESETS[name] = factory


def list_presets() -> List[str]:
    return sorted(_PRESETS)


def get_preset(preset: str, /, **overrides) -> ModelConfig:
    """A fresh ModelConfig for ``preset`` with ``overrides`` (any ModelConfig field, ``name``
    included) applied and validated."""
    if preset not in _PRESETS:
        raise KeyError(f"unknown preset {preset!r}; available: {', '.join(list_presets())}")
    cfg = _PRESETS[preset]()
    return cfg.replace(**overrides) if overrides else cfg


def _fanar_star_7b() -> ModelConfig:
    return ModelConfig(name="fanar-star-7b", family="llama", num_layers=32, hidden_size=4096,
                       ffn_hidden_size=11008, num_attention_heads=32, vocab_size=76800,
                       seq_length=4096, rotary_base=10000.0, activation="swiglu",
                       norm="rmsnorm", norm_eps=1e-5, tie_embeddings=False)


def _gemma2_9b(vocab_size: int = 256000, name: str = "gemma2-9b") -> ModelConfig:
    return ModelConfig(name=name, family="gemma2", num_layers=42, hidden_size=3584,
                       ffn_hidden_size=14336, num_attention_heads=16, num_query_groups=8,
                       kv_channels=256, vocab_size=vocab_size, seq_length=8192,
                       rotary_base=10000.0, activation="geglu_tanh", norm="rmsnorm_one_plus",
                       norm_eps=1e-6, tie_embeddings=True, embedding_scale=True,
                       post_norms=True, query_pre_attn_scalar=256, attn_logit_softcap=50.0,
                       final_logit_softcap=30.0, sliding_window=4096,
                       sliding_window_pattern="alternate",
                       hf_extra={"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0})


def _fanar_prime_9b() -> ModelConfig:
    return _gemma2_9b(vocab_size=128256, name="fanar-prime-9b")


def _autoresearch_540m() -> ModelConfig:
    # The card's GPTConfig (16 layers, 1024 wide, 8 heads of 128, 8 KV heads, vocab 32768,
    # seq 2048, window_pattern "L") with every option of nanochat's gpt.py.
    from megatron_ar.models.nanochat_config import config_from_nanochat

    return config_from_nanochat(n_layer=16, n_embd=1024, n_head=8, n_kv_head=8,
                                vocab_size=32768, sequence_len=2048, window_pattern="L",
                                name="autoresearch-540m")


def _arkadiko_v4b() -> ModelConfig:
    return ModelConfig(name="arkadiko-v4b", family="llama", num_layers=28, hidden_size=1024,
                       ffn_hidden_size=5504, num_attention_heads=16, num_query_groups=2,
                       kv_channels=64, vocab_size=50004, seq_length=2048, rotary_base=10000.0,
                       activation="swiglu", norm="rmsnorm", tie_embeddings=True)


# V4-A / V4-C: the B decoder plus a frozen LASER2 encoder (5-layer BiLSTM, 512 per direction,
# token embedding 320: LASER's LaserLstmEncoder / laser2.pt; Artetxe & Schwenk 2019). Pooling
# is LASER's max-pool; the card calls C's input "mean-pooled" (laser_pooling="mean" gives it).
def _arkadiko_v4a() -> ModelConfig:
    return _arkadiko_v4b().replace(name="arkadiko-v4a", laser_mode="cross_attention")


def _arkadiko_v4c() -> ModelConfig:
    return _arkadiko_v4b().replace(name="arkadiko-v4c", laser_mode="input")


# ------------------------------------------------------------------ tiny test variants
# What a tiny variant may change from its parent: the sizes, and nothing else unless listed in
# ``TinyVariant.scale_dependent`` with the reason (every flag -- family, activation, norm and its
# eps, tie_embeddings, qk_norm, post_norms, embedding scale/norm, the sliding pattern, rotary
# base, init std, HF token ids -- is the parent's). ``tests/models/test_model_config.py`` checks it.
SIZE_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
               "num_query_groups", "kv_channels", "vocab_size", "seq_length", "sliding_window",
               "laser_layers", "laser_hidden", "laser_embed_dim")
#: Sizes a tiny variant sets only when its parent uses the feature.
_OPTIONAL_SIZES = {"sliding_window": lambda c: bool(c.sliding_window),
                   "laser_layers": lambda c: c.laser_mode != "none",
                   "laser_hidden": lambda c: c.laser_mode != "none",
                   "laser_embed_dim": lambda c: c.laser_mode != "none"}


@dataclass(frozen=True)
class TinyVariant:
    """A tiny preset = ``parent`` with ``sizes`` (a value for every field of :data:`SIZE_FIELDS`
    the parent uses) and the ``scale_dependent`` values, each with the reason it must differ at
    tiny scale for the feature to be exercised."""

    parent: str
    sizes: Dict[str, Optional[int]]
    scale_dependent: Dict[str, Tuple[Any, str]] = field(default_factory=dict)

    def build(self, name: str) -> ModelConfig:
        parent = get_preset(self.parent)
        needed = {f for f in SIZE_FIELDS
                  if f not in _OPTIONAL_SIZES or _OPTIONAL_SIZES[f](parent)}
        if set(self.sizes) != needed:
            raise KeyError(f"tiny preset {name!r}: sizes must set exactly {sorted(needed)}, "
                           f"got {sorted(self.sizes)}")
        overlap = set(self.scale_dependent) & set(SIZE_FIELDS)
        if overlap:
            raise KeyError(f"tiny preset {name!r}: {sorted(overlap)} are sizes, not "
                           "scale-dependent values")
        return parent.replace(name=name, **self.sizes,
                              **{k: v for k, (v, _why) in self.scale_dependent.items()})


TINY_VARIANTS: Dict[str, TinyVariant] = {
    # GQA (2 groups of 2 heads) and head_dim 24 != 64 / 4, as the Fanar Star parent is MHA with
    # head_dim = hidden / heads: the tiny model covers the general case of the same code path.
    "tiny-llama": TinyVariant("fanar-star-7b", dict(
        num_layers=4, hidden_size=64, ffn_hidden_size=160, num_attention_heads=4,
        num_query_groups=2, kv_channels=24, vocab_size=250, seq_length=64)),
    # Window 5, shorter than every test sequence, so the local layers really mask; like every
    # tiny variant, an unpadded vocab of 250 exercises Megatron's vocab padding.
    "tiny-gemma2": TinyVariant("fanar-prime-9b", dict(
        num_layers=4, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
        num_query_groups=2, kv_channels=24, vocab_size=250, seq_length=64, sliding_window=5),
        scale_dependent={
            "query_pre_attn_scalar": (20, "differs from the tiny head_dim 24, so a model that "
                                          "ignored it (scale head_dim**-0.5) gives other "
                                          "logits; the parent's 256 equals its head_dim"),
            "attn_logit_softcap": (5.0, "the parent's 50 sits far above the attention logits "
                                        "of a tiny randomly initialised model, where tanh "
                                        "capping is nearly the identity; 5 bends them"),
            "final_logit_softcap": (3.0, "likewise for the output logits and the parent's 30"),
        }),
    "tiny-autoresearch": TinyVariant("autoresearch-540m", dict(
        num_layers=4, hidden_size=64, ffn_hidden_size=256, num_attention_heads=4,
        num_query_groups=4, kv_channels=16, vocab_size=250, seq_length=64)),
    "tiny-arkadiko": TinyVariant("arkadiko-v4b", dict(
        num_layers=4, hidden_size=64, ffn_hidden_size=160, num_attention_heads=4,
        num_query_groups=2, kv_channels=16, vocab_size=250, seq_length=64)),
    # The encoder keeps its 5 layers; 2 x 32 = hidden 64, as megatron-core's CrossAttention
    # reads K/V inputs of hidden_size (2 x 512 = 1024 in the parent).
    "tiny-arkadiko-v4a": TinyVariant("arkadiko-v4a", dict(
        num_layers=4, hidden_size=64, ffn_hidden_size=160, num_attention_heads=4,
        num_query_groups=2, kv_channels=16, vocab_size=250, seq_length=64, laser_layers=5,
        laser_hidden=32, laser_embed_dim=20)),
    "tiny-arkadiko-v4c": TinyVariant("arkadiko-v4c", dict(
        num_layers=4, hidden_size=64, ffn_hidden_size=160, num_attention_heads=4,
        num_query_groups=2, kv_channels=16, vocab_size=250, seq_length=64, laser_layers=5,
        laser_hidden=32, laser_embed_dim=20)),
}


for _name, _factory in (
    ("fanar-star-7b", _fanar_star_7b),
    ("gemma2-9b", _gemma2_9b),
    ("fanar-prime-9b", _fanar_prime_9b),
    ("autoresearch-540m", _autoresearch_540m),
    ("arkadiko-v4b", _arkadiko_v4b),
    ("arkadiko-v4a", _arkadiko_v4a),
    ("arkadiko-v4c", _arkadiko_v4c),
):
    register_preset(_name, _factory)
for _name, _variant in TINY_VARIANTS.items():
    register_preset(_name, functools.partial(_variant.build, _name))

"""Preset registry: named ModelConfigs for the models megatron_ar trains, plus tiny test twins.

Design choices
- A preset is a function returning a fresh :class:`ModelConfig` (configs are mutable
  dataclasses; a shared instance could be changed by one caller under another).
- The registry is a plain dict filled by this module's own definitions; users add presets
  explicitly with :func:`register_preset` (no registration as an import side effect of other
  modules).
- Sources: Fanar Star / Fanar Prime sizes from the Fanar report (Table 6; Prime is Gemma-2-9B
  with its vocabulary pruned 256,000 -> 128,256), Gemma-2-9B from its HF config, the
  autoresearch/nanochat GPT and Arkadiko from issue 2. Where the sources are silent we state
  the choice: Fanar Star uses Llama-2 defaults (RoPE theta 10,000, RMSNorm eps 1e-5); the
  autoresearch preset uses nanochat's final-logit soft-cap of 15 and its 4x ReLU^2 MLP, which
  with the issue's sizes gives ~268M parameters (the "540m" in the name is the issue's label,
  not a count; see ``python -m megatron_ar.models.info autoresearch-540m``).
- Tiny variants keep every feature of their parent (GQA, head_dim != hidden/heads, sliding
  window shorter than the test sequence, soft-caps, an unpadded vocab that exercises Megatron
  vocab padding) at a size that runs in milliseconds on a CPU.
"""
from __future__ import annotations

from typing import Callable, Dict, List

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
    return ModelConfig(name="autoresearch-540m", family="gpt", num_layers=16, hidden_size=1024,
                       ffn_hidden_size=4096, num_attention_heads=8, kv_channels=128,
                       vocab_size=32768, seq_length=2048, activation="relu2",
                       norm="rmsnorm_noparam", qk_norm=True, embedding_norm=True,
                       tie_embeddings=False, final_logit_softcap=15.0)


def _arkadiko_v4b() -> ModelConfig:
    return ModelConfig(name="arkadiko-v4b", family="llama", num_layers=28, hidden_size=1024,
                       ffn_hidden_size=5504, num_attention_heads=16, num_query_groups=2,
                       kv_channels=64, vocab_size=50004, seq_length=2048, rotary_base=10000.0,
                       activation="swiglu", norm="rmsnorm", tie_embeddings=True)


def _tiny_llama() -> ModelConfig:
    return ModelConfig(name="tiny-llama", family="llama", num_layers=4, hidden_size=64,
                       ffn_hidden_size=160, num_attention_heads=4, num_query_groups=2,
                       kv_channels=24, vocab_size=250, seq_length=64, rotary_base=10000.0,
                       activation="swiglu", norm="rmsnorm", norm_eps=1e-5,
                       tie_embeddings=False)


def _tiny_gemma2() -> ModelConfig:
    return ModelConfig(name="tiny-gemma2", family="gemma2", num_layers=4, hidden_size=64,
                       ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
                       kv_channels=24, vocab_size=250, seq_length=64, rotary_base=10000.0,
                       activation="geglu_tanh", norm="rmsnorm_one_plus", norm_eps=1e-6,
                       tie_embeddings=True, embedding_scale=True, post_norms=True,
                       query_pre_attn_scalar=20, attn_logit_softcap=5.0,
                       final_logit_softcap=3.0, sliding_window=5,
                       sliding_window_pattern="alternate")


def _tiny_autoresearch() -> ModelConfig:
    return ModelConfig(name="tiny-autoresearch", family="gpt", num_layers=4, hidden_size=64,
                       ffn_hidden_size=256, num_attention_heads=4, kv_channels=16,
                       vocab_size=250, seq_length=64, activation="relu2",
                       norm="rmsnorm_noparam", qk_norm=True, embedding_norm=True,
                       tie_embeddings=False, final_logit_softcap=15.0)


def _tiny_arkadiko() -> ModelConfig:
    return ModelConfig(name="tiny-arkadiko", family="llama", num_layers=4, hidden_size=64,
                       ffn_hidden_size=160, num_attention_heads=4, num_query_groups=2,
                       kv_channels=16, vocab_size=250, seq_length=64, activation="swiglu",
                       norm="rmsnorm", tie_embeddings=True)


for _name, _factory in (
    ("fanar-star-7b", _fanar_star_7b),
    ("gemma2-9b", _gemma2_9b),
    ("fanar-prime-9b", _fanar_prime_9b),
    ("autoresearch-540m", _autoresearch_540m),
    ("arkadiko-v4b", _arkadiko_v4b),
    ("tiny-llama", _tiny_llama),
    ("tiny-gemma2", _tiny_gemma2),
    ("tiny-autoresearch", _tiny_autoresearch),
    ("tiny-arkadiko", _tiny_arkadiko),
):
    register_preset(_name, _factory)

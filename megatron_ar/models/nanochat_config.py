"""The dependency-free part of :mod:`megatron_ar.models.nanochat` (no megatron-core import, so
presets and ``python -m megatron_ar.models.info`` stay light): nanochat's constants, its
``GPTConfig`` / ``meta_<step>.json`` <-> :class:`ModelConfig`, and its parameter counts.
Design notes are in :mod:`megatron_ar.models.nanochat`.
"""
from __future__ import annotations

from typing import Dict

import torch

from megatron_ar.models.config import ConfigError, ModelConfig

#: nanochat's constants (gpt.py): value-embedding gate input channels, smear gate channels,
#: its vocab padding multiple.
VE_GATE_CHANNELS = 12
SMEAR_CHANNELS = 24
NANOCHAT_VOCAB_MULTIPLE = 64
#: ``F.rms_norm(x, ...)`` with ``eps=None`` on fp32 activations.
FP32_RMS_EPS = float(torch.finfo(torch.float32).eps)


def has_value_embedding(layer: int, num_layers: int) -> bool:
    """nanochat's ``has_ve``: alternate layers, the last one always included (0-based)."""
    return layer % 2 == (num_layers - 1) % 2


def nanochat_padded_vocab(vocab_size: int) -> int:
    m = NANOCHAT_VOCAB_MULTIPLE
    return (vocab_size + m - 1) // m * m


def value_embedding_rows(cfg: ModelConfig) -> int:
    """Rows of our value-embedding tables: the vocab padded to 128 (Megatron's TP=1 padding; the
    tables split over TP along columns, so the rows do not depend on TP). nanochat's own rows
    (padded to 64) fit inside and survive import/export."""
    return cfg.padded_vocab_size(1)


def short_window(seq_len: int) -> int:
    """nanochat's short window (left context of an ``S`` layer): a quarter of the context,
    rounded up to a multiple of 128."""
    return -(-seq_len // 4 // 128) * 128


def window_layers(pattern: str, num_layers: int) -> str:
    """nanochat's per-layer window letters: ``pattern`` tiled, the last layer always ``L``."""
    letters = [pattern[i % len(pattern)] for i in range(num_layers)]
    letters[-1] = "L"
    return "".join(letters)


def uses_nanochat(cfg: ModelConfig) -> bool:
    return bool(cfg.value_embeddings or cfg.residual_scalars or cfg.smear or cfg.backout
                or cfg.logits_fp32)


def config_from_nanochat(n_layer: int, n_embd: int, n_head: int, n_kv_head: int,
                         vocab_size: int, sequence_len: int, window_pattern: str = "SSSL",
                         name: str = "nanochat") -> ModelConfig:
    """The ModelConfig of nanochat's ``GPTConfig`` (same fields, same meaning)."""
    pattern = window_pattern.upper()
    short = "S" in window_layers(pattern, n_layer)
    return ModelConfig(
        name=name, family="gpt", num_layers=n_layer, hidden_size=n_embd,
        ffn_hidden_size=4 * n_embd, num_attention_heads=n_head, num_query_groups=n_kv_head,
        kv_channels=n_embd // n_head, vocab_size=vocab_size, seq_length=sequence_len,
        rotary_base=100000.0, activation="relu2", norm="rmsnorm_noparam",
        norm_eps=FP32_RMS_EPS, qk_norm=True, qk_scale=1.2, embedding_norm=True,
        tie_embeddings=False, final_logit_softcap=15.0, logits_fp32=True,
        value_embeddings=True, residual_scalars=True, smear=True, backout=True,
        # nanochat's window (left, 0) sees left+1 keys; sliding_window counts the query itself
        sliding_window=(short_window(sequence_len) + 1) if short else None,
        window_pattern=pattern if short else None, init="nanochat")


def config_from_meta(meta: Dict) -> ModelConfig:
    """ModelConfig from a nanochat ``meta_<step>.json`` (its ``model_config``; a missing
    ``window_pattern`` means ``L``, as nanochat's checkpoint_manager patches it)."""
    mc = dict(meta.get("model_config") or {})
    need = ("n_layer", "n_embd", "n_head", "n_kv_head", "vocab_size", "sequence_len")
    missing = [k for k in need if k not in mc]
    if missing:
        raise ConfigError(f"meta model_config: missing {missing}")
    extra = sorted(set(mc) - set(need) - {"window_pattern"})
    if extra:
        raise ConfigError(f"meta model_config: unknown key(s) {extra}")
    return config_from_nanochat(**{k: mc[k] for k in need},
                                window_pattern=mc.get("window_pattern", "L"))


def meta_model_config(cfg: ModelConfig) -> Dict:
    """Inverse of :func:`config_from_meta`'s ``model_config``."""
    return {"sequence_len": cfg.seq_length, "vocab_size": cfg.vocab_size,
            "n_layer": cfg.num_layers, "n_head": cfg.num_attention_heads,
            "n_kv_head": cfg.groups, "n_embd": cfg.hidden_size,
            "window_pattern": cfg.window_pattern or "L"}


# --------------------------------------------------------------------------- counts
def nanochat_counts(cfg: ModelConfig) -> Dict[str, int]:
    """nanochat's ``GPT.num_scaling_params()`` for this config (its vocab padding to 64), plus
    ``scaling`` = ``transformer_matrices + lm_head`` as ``scripts/base_train.py``'s
    ``get_scaling_params`` computes it. ``transformer_matrices`` are the parameters of
    ``transformer.h`` (q, k, v, proj, MLP and the value-embedding gates); the per-layer
    scalars are model-level there (``scalars``)."""
    h, d, g, n, L = (cfg.hidden_size, cfg.head_dim, cfg.groups, cfg.num_attention_heads,
                     cfg.num_layers)
    vocab = nanochat_padded_vocab(cfg.vocab_size)
    ve_layers = sum(has_value_embedding(i, L) for i in range(L)) if cfg.value_embeddings else 0
    per_layer = (n * d * h + 2 * g * d * h + h * n * d
                 + (2 if cfg.gated else 1) * cfg.ffn_hidden_size * h + cfg.ffn_hidden_size * h)
    matrices = L * per_layer + ve_layers * g * VE_GATE_CHANNELS
    scalars = ((2 * L if cfg.residual_scalars else 0) + (SMEAR_CHANNELS + 1 if cfg.smear else 0)
               + (1 if cfg.backout else 0))
    out = {"wte": vocab * h, "value_embeds": ve_layers * vocab * g * d,
           "lm_head": 0 if cfg.tie_embeddings else vocab * h,
           "transformer_matrices": matrices, "scalars": scalars}
    out["total"] = sum(out.values())
    out["scaling"] = out["transformer_matrices"] + out["lm_head"]
    return out


def extra_param_counts(cfg: ModelConfig) -> Dict[str, int]:
    """Parameters the nanochat options add to a megatron model (real vocab for the value
    embeddings): {'value_embeddings', 'value_gates', 'scalars'}."""
    c = nanochat_counts(cfg)
    L = cfg.num_layers
    ve_layers = sum(has_value_embedding(i, L) for i in range(L)) if cfg.value_embeddings else 0
    return {"value_embeddings": ve_layers * value_embedding_rows(cfg)
            * cfg.groups * cfg.head_dim,
            "value_gates": ve_layers * cfg.groups * VE_GATE_CHANNELS,
            "scalars": c["scalars"]}

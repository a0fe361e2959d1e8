"""Parameter counts of a model config, computed analytically (``python -m megatron_ar.models.info``).

Usage: ``python -m megatron_ar.models.info PRESET [--tp N] [--json]``

Counting convention (Fanar report, Table 6): ``embedding`` = input embedding matrix
(vocab x hidden) plus nanochat's value-embedding tables (vocab x KV dim, also reported alone as
``value_embeddings``); ``non_embedding`` = everything else, *including* an untied LM head;
``total`` = their sum. Models with nanochat options also get ``nanochat``: the counts of
nanochat's ``GPT.num_scaling_params()`` (its vocab padding to 64) and ``scaling`` =
``transformer_matrices + lm_head`` (nanochat's ``scripts/base_train.py``), where
``transformer_matrices`` are the parameters of its ``transformer.h`` blocks (q, k, v, output
projection, MLP, value-embedding gates; not the per-layer scalars). A frozen LASER2 encoder
(Arkadiko V4-A/C) is reported apart as ``laser_encoder_frozen`` and is not in ``total``; V4-A's
cross-attention and V4-C's input projection are trained and are. Counts use the real
vocabulary; Megatron pads the vocabulary to a
multiple of 128 x TP and that padding is reported separately under ``megatron_padded`` (it is
memory, not model capacity). Analytic counts are cross-checked against built megatron-core
models in tests/models/test_model_info.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional

from megatron_ar.models.config import ModelConfig
from megatron_ar.models.nanochat_config import (extra_param_counts, nanochat_counts,
                                                uses_nanochat, value_embedding_rows)


def param_counts(cfg: ModelConfig, tp: int = 1) -> Dict[str, object]:
    """{'total', 'embedding', 'non_embedding', 'per_layer', 'lm_head', 'megatron_padded': {...}}."""
    h, d, heads, g = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.groups
    norm = 0 if cfg.norm == "rmsnorm_noparam" else 1
    qkv = (heads + 2 * g) * d * h + ((heads + 2 * g) * d if (cfg.add_bias_linear or cfg.add_qkv_bias) else 0)
    proj = heads * d * h + (h if cfg.add_bias_linear else 0)
    fc1_out = (2 if cfg.gated else 1) * cfg.ffn_hidden_size
    fc1 = fc1_out * h + (fc1_out if cfg.add_bias_linear else 0)
    fc2 = cfg.ffn_hidden_size * h + (h if cfg.add_bias_linear else 0)
    norms = norm * h * (2 + (2 if cfg.post_norms else 0)) + norm * (2 * d if cfg.qk_norm else 0)
    per_layer = qkv + proj + fc1 + fc2 + norms
    bias = 1 if cfg.add_bias_linear else 0
    laser_encoder = laser_input_proj = 0
    if cfg.laser_mode != "none":
        # frozen LASER2 BiLSTM (counted apart: not trained); per layer and direction
        # W_ih [4H, in], W_hh [4H, H], b_ih, b_hh [4H]
        hl, e = cfg.laser_hidden, cfg.laser_embed_dim
        laser_encoder = cfg.vocab_size * e + sum(
            2 * (4 * hl * (e if k == 0 else 2 * hl) + 4 * hl * hl + 8 * hl)
            for k in range(cfg.laser_layers))
    if cfg.laser_mode == "cross_attention":  # MHA cross-attention (megatron-core has no GQA)
        per_layer += norm * h + 4 * (heads * d * h) + bias * (3 * heads * d + h)
    if cfg.laser_mode == "input":
        laser_input_proj = 2 * cfg.laser_hidden * h + h
    nano = extra_param_counts(cfg)
    ve_real = nano["value_embeddings"] // value_embedding_rows(cfg) * cfg.vocab_size
    embedding = cfg.vocab_size * h + ve_real
    lm_head = 0 if cfg.tie_embeddings else cfg.vocab_size * h
    non_embedding = (cfg.num_layers * per_layer + norm * h + lm_head + nano["value_gates"]
                     + nano["scalars"] + laser_input_proj)
    padded_vocab = cfg.padded_vocab_size(tp)
    pad_params = ((padded_vocab - cfg.vocab_size) * h * (1 if cfg.tie_embeddings else 2)
                  + nano["value_embeddings"] - ve_real)
    total = embedding + non_embedding
    extra = {"nanochat": nanochat_counts(cfg)} if uses_nanochat(cfg) else {}
    return {
        "name": cfg.name,
        "total": total,
        "embedding": embedding,
        "non_embedding": non_embedding,
        "lm_head": lm_head,
        "per_layer": per_layer,
        "value_embeddings": ve_real,
        **extra,
        "megatron_padded": {"tp": tp, "vocab_size": padded_vocab,
                            "padding_params": pad_params, "total": total + pad_params},
        "laser_encoder_frozen": laser_encoder,
    }


def _fmt(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3f}{unit}"
    return str(n)


def main(argv: Optional[List[str]] = None) -> int:
    from megatron_ar.models.presets import get_preset, list_presets

    parser = argparse.ArgumentParser(prog="python -m megatron_ar.models.info",
                                     description="Parameter counts of a model preset.")
    parser.add_argument("preset", help="one of: " + ", ".join(list_presets()))
    parser.add_argument("--tp", type=int, default=1, help="tensor parallel size for vocab padding")
    parser.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    args = parser.parse_args(argv)
    try:
        cfg = get_preset(args.preset)
    except KeyError as exc:
        parser.error(str(exc.args[0]))
    if args.tp < 1:
        parser.error("--tp must be >= 1")
    counts = param_counts(cfg, tp=args.tp)
    pad = counts["megatron_padded"]
    print(f"{cfg.name}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
          f"{cfg.num_attention_heads} heads ({cfg.groups} KV) x {cfg.head_dim}, "
          f"ffn {cfg.ffn_hidden_size} ({cfg.activation}), vocab {cfg.vocab_size}, "
          f"{'tied' if cfg.tie_embeddings else 'untied'} embeddings")
    print(f"  total          {counts['total']:>16,d}  ({_fmt(counts['total'])})")
    print(f"  embedding      {counts['embedding']:>16,d}  ({_fmt(counts['embedding'])})")
    print(f"  non-embedding  {counts['non_embedding']:>16,d}  ({_fmt(counts['non_embedding'])})"
          + ("  incl. untied LM head" if counts["lm_head"] else ""))
    print(f"  Megatron vocab padding (TP={pad['tp']}): vocab {pad['vocab_size']}, "
          f"+{pad['padding_params']:,d} params, padded total {pad['total']:,d}")
    if counts["laser_encoder_frozen"]:
        n = counts["laser_encoder_frozen"]
        print(f"  + frozen LASER2 encoder ({cfg.laser_layers}-layer BiLSTM, "
              f"{cfg.laser_hidden}/direction, laser_mode={cfg.laser_mode}): {n:,d} "
              f"({_fmt(n)}), not in total")
    if "nanochat" in counts:
        nc = counts["nanochat"]
        print(f"  value embeddings {counts['value_embeddings']:>14,d}  (in embedding)")
        print(f"  nanochat scaling {nc['scaling']:>14,d}  ({_fmt(nc['scaling'])}; transformer "
              f"matrices {nc['transformer_matrices']:,d} + lm_head {nc['lm_head']:,d})")
        print(f"  nanochat total   {nc['total']:>14,d}  ({_fmt(nc['total'])}; its padded vocab)")
    if args.json:
        print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

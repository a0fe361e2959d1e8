"""HF transformers <-> megatron_ar: config translation and the per-architecture weight table.

Supported: ``LlamaForCausalLM`` (family ``llama``) and ``Gemma2ForCausalLM`` (family ``gemma2``).

Design choices
- :func:`weight_table` is the single description of how HF tensors map to megatron names
  (NAMES.md); both directions (:func:`hf_to_megatron`, :func:`megatron_to_hf`) and the streaming
  converter in ``megatron_ar.checkpoint`` are driven by it (one mapping table per
  architecture, no twin loops). Each entry is (megatron name, HF names, kind) with kind
  ``copy``, ``qkv`` (q/k/v -> megatron-core's grouped-per-query-group ``linear_qkv``) or ``fc1``
  (gate/up -> ``[gate; up]``). Tensors are transformed one entry at a time, so a caller can
  stream.
- Gemma's (1 + w) norm weights are stored raw on both sides (no +1/-1 round trip, so the
  conversion is bit exact).
- Everything HF has that the megatron model cannot express is rejected with an error naming the
  HF config key (rope scaling, biases, non-gated activations, ...), instead of converting to a
  silently different model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Tuple

import torch

from megatron_ar.models.config import ConfigError, ModelConfig

HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "gemma2": "Gemma2ForCausalLM"}
_HF_ACT = {"llama": {"silu": "swiglu"}, "gemma2": {"gelu_pytorch_tanh": "geglu_tanh"}}


# --------------------------------------------------------------------------- configs
def _hf_get(hf_config, key: str, default: Any = None) -> Any:
    return getattr(hf_config, key, default)


def _rope_theta(hf_config) -> float:
    # transformers >= 5 keeps RoPE settings in rope_parameters (rope_scaling is an alias);
    # 4.x has rope_theta plus an optional rope_scaling dict.
    params = _hf_get(hf_config, "rope_parameters") or _hf_get(hf_config, "rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in (None, "default"):
        raise ConfigError(f"HF config rope_parameters/rope_scaling rope_type={rope_type!r}: only "
                          "default RoPE is supported")
    theta = params.get("rope_theta", _hf_get(hf_config, "rope_theta"))
    return float(theta if theta is not None else 10000.0)


def from_hf_config(hf_config) -> ModelConfig:
    """ModelConfig for a transformers ``LlamaConfig`` / ``Gemma2Config`` (or its dict)."""
    if isinstance(hf_config, Mapping):
        from transformers import AutoConfig

        d = dict(hf_config)
        hf_config = AutoConfig.for_model(d.pop("model_type"), **d)
    family = _hf_get(hf_config, "model_type")
    if family not in HF_ARCHITECTURES:
        raise ConfigError(f"HF config model_type={family!r}: supported are "
                          f"{sorted(HF_ARCHITECTURES)}")
    act_key = "hidden_activation" if family == "gemma2" else "hidden_act"
    act_name = _hf_get(hf_config, act_key) or _hf_get(hf_config, "hidden_act")
    if act_name not in _HF_ACT[family]:
        raise ConfigError(f"HF config {act_key}={act_name!r}: supported for {family} are "
                          f"{sorted(_HF_ACT[family])}")
    for key in ("attention_bias", "mlp_bias"):
        if _hf_get(hf_config, key):
            raise ConfigError(f"HF config {key}=True: biases are not supported")
    heads = hf_config.num_attention_heads
    common = dict(
        family=family,
        name=_hf_get(hf_config, "_name_or_path") or f"hf-{family}",
        num_layers=hf_config.num_hidden_layers,
        hidden_size=hf_config.hidden_size,
        ffn_hidden_size=hf_config.intermediate_size,
        num_attention_heads=heads,
        num_query_groups=_hf_get(hf_config, "num_key_value_heads") or heads,
        kv_channels=_hf_get(hf_config, "head_dim") or hf_config.hidden_size // heads,
        vocab_size=hf_config.vocab_size,
        seq_length=hf_config.max_position_embeddings,
        rotary_base=_rope_theta(hf_config),
        activation=_HF_ACT[family][act_name],
        norm_eps=float(hf_config.rms_norm_eps),
        tie_embeddings=bool(_hf_get(hf_config, "tie_word_embeddings", False)),
        init_method_std=float(_hf_get(hf_config, "initializer_range", 0.02)),
        hf_extra={k: _hf_get(hf_config, k) for k in ("bos_token_id", "eos_token_id",
                                                      "pad_token_id")
                  if _hf_get(hf_config, k) is not None},
    )
    if family == "llama":
        return ModelConfig(norm="rmsnorm", **common)
    layer_types = list(_hf_get(hf_config, "layer_types") or [])
    window = _hf_get(hf_config, "sliding_window")
    alternate = ["sliding_attention" if i % 2 == 0 else "full_attention"
                 for i in range(hf_config.num_hidden_layers)]
    if window is not None and layer_types and layer_types != alternate:
        pattern = ("all" if all(t == "sliding_attention" for t in layer_types) else None)
        if pattern is None:
            raise ConfigError(f"HF config layer_types={layer_types}: only alternating "
                              "(even layers sliding) or all-sliding are supported")
    else:
        pattern = "alternate"
    return ModelConfig(
        norm="rmsnorm_one_plus",
        embedding_scale=True,
        post_norms=True,
        query_pre_attn_scalar=_hf_get(hf_config, "query_pre_attn_scalar"),
        attn_logit_softcap=_hf_get(hf_config, "attn_logit_softcapping"),
        final_logit_softcap=_hf_get(hf_config, "final_logit_softcapping"),
        sliding_window=window,
        sliding_window_pattern=pattern,
        **common,
    )


def to_hf_config(cfg: ModelConfig):
    """transformers ``LlamaConfig`` / ``Gemma2Config`` equivalent to ``cfg`` (family llama/gemma2)."""
    if cfg.family not in HF_ARCHITECTURES:
        raise ConfigError(f"ModelConfig.family: {cfg.family!r} has no HF equivalent "
                          f"(supported {sorted(HF_ARCHITECTURES)})")
    if cfg.add_bias_linear or cfg.add_qkv_bias:
        raise ConfigError("ModelConfig.add_bias_linear/add_qkv_bias: biases have no HF mapping")
    if cfg.qk_norm or cfg.embedding_norm:
        raise ConfigError("ModelConfig.qk_norm/embedding_norm: not expressible in "
                          f"{HF_ARCHITECTURES[cfg.family]}")
    _no_laser(cfg)
    common = dict(
        architectures=[HF_ARCHITECTURES[cfg.family]],
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.groups,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.seq_length,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_method_std,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rotary_base)},
        **cfg.hf_extra,
    )
    if cfg.family == "llama":
        from transformers import LlamaConfig

        _expect(cfg, activation="swiglu", norm="rmsnorm", post_norms=False, embedding_scale=False,
                attn_logit_softcap=None, final_logit_softcap=None, sliding_window=None,
                query_pre_attn_scalar=None)
        return LlamaConfig(hidden_act="silu", attention_bias=False, mlp_bias=False, **common)
    from transformers import Gemma2Config

    _expect(cfg, activation="geglu_tanh", norm="rmsnorm_one_plus", post_norms=True,
            embedding_scale=True)
    layer_types = ["sliding_attention" if s else "full_attention" for s in cfg.sliding_layers()]
    return Gemma2Config(
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=cfg.query_pre_attn_scalar or cfg.head_dim,
        attn_logit_softcapping=cfg.attn_logit_softcap,
        final_logit_softcapping=cfg.final_logit_softcap,
        sliding_window=cfg.sliding_window,
        layer_types=layer_types,
        **common,
    )


def _expect(cfg: ModelConfig, **expected):
    for key, value in expected.items():
        if getattr(cfg, key) != value:
            raise ConfigError(f"ModelConfig.{key}: {HF_ARCHITECTURES[cfg.family]} needs {value!r}"
                              f" (got {getattr(cfg, key)!r})")


# --------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class WeightEntry:
    """One megatron tensor and the HF tensor(s) it is made of."""

    megatron: str
    hf: Tuple[str, ...]
    kind: str  # "copy" | "qkv" | "fc1"


def _no_laser(cfg: ModelConfig) -> None:
    if cfg.laser_mode != "none":  # Arkadiko V4-A/C: the HF architecture has no LASER encoder
        raise ConfigError(f"ModelConfig.laser_mode: {cfg.laser_mode!r} has no HF equivalent "
                          "(only 'none' converts)")


def weight_table(cfg: ModelConfig) -> List[WeightEntry]:
    """Every tensor of the model, in order (embedding, layers, final norm, LM head)."""
    if cfg.family not in HF_ARCHITECTURES:
        raise ConfigError(f"ModelConfig.family: {cfg.family!r} has no HF weight mapping")
    _no_laser(cfg)
    E = WeightEntry
    table = [E("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "copy")]
    for i in range(cfg.num_layers):
        m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
        attn = h + "self_attn."
        table.append(E(m + "input_layernorm.weight", (h + "input_layernorm.weight",), "copy"))
        table.append(E(m + "self_attention.linear_qkv.weight",
                       (attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"),
                       "qkv"))
        table.append(E(m + "self_attention.linear_proj.weight", (attn + "o_proj.weight",), "copy"))
        if cfg.family == "gemma2":
            table.append(E(m + "post_self_attn_layernorm.weight",
                           (h + "post_attention_layernorm.weight",), "copy"))
            table.append(E(m + "pre_mlp_layernorm.weight",
                           (h + "pre_feedforward_layernorm.weight",), "copy"))
        else:
            table.append(E(m + "pre_mlp_layernorm.weight",
                           (h + "post_attention_layernorm.weight",), "copy"))
        table.append(E(m + "mlp.linear_fc1.weight",
                       (h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"), "fc1"))
        table.append(E(m + "mlp.linear_fc2.weight", (h + "mlp.down_proj.weight",), "copy"))
        if cfg.family == "gemma2":
            table.append(E(m + "post_mlp_layernorm.weight",
                           (h + "post_feedforward_layernorm.weight",), "copy"))
    table.append(E("decoder.final_layernorm.weight", ("model.norm.weight",), "copy"))
    if not cfg.tie_embeddings:
        table.append(E("output_layer.weight", ("lm_head.weight",), "copy"))
    return table


def expected_shape(cfg: ModelConfig, megatron_name: str) -> Tuple[int, ...]:
    """Full (TP=1, unpadded vocab) shape of a megatron tensor."""
    h, d = cfg.hidden_size, cfg.head_dim
    leaf = megatron_name.split(".", 3)[-1] if megatron_name.startswith("decoder.layers.") \
        else megatron_name
    shapes = {
        "embedding.word_embeddings.weight": (cfg.vocab_size, h),
        "output_layer.weight": (cfg.vocab_size, h),
        "decoder.final_layernorm.weight": (h,),
        "input_layernorm.weight": (h,),
        "pre_mlp_layernorm.weight": (h,),
        "post_self_attn_layernorm.weight": (h,),
        "post_mlp_layernorm.weight": (h,),
        "self_attention.linear_qkv.weight": ((cfg.num_attention_heads + 2 * cfg.groups) * d, h),
        "self_attention.linear_proj.weight": (h, cfg.num_attention_heads * d),
        "mlp.linear_fc1.weight": ((2 if cfg.gated else 1) * cfg.ffn_hidden_size, h),
        "mlp.linear_fc2.weight": (h, cfg.ffn_hidden_size),
    }
    if leaf not in shapes:
        raise KeyError(f"expected_shape: unknown tensor {megatron_name!r}")
    return shapes[leaf]


def qkv_to_megatron(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: ModelConfig
                    ) -> torch.Tensor:
    """HF q/k/v projections -> megatron-core ``linear_qkv``: per query group g the rows are
    [q heads of g; k_g; v_g]."""
    g, d = cfg.groups, cfg.head_dim
    per = cfg.num_attention_heads // g
    h = q.shape[-1]
    qkv = torch.cat([q.reshape(g, per * d, h), k.reshape(g, d, h), v.reshape(g, d, h)], 1)
    return qkv.reshape(-1, h)


def qkv_to_hf(qkv: torch.Tensor, cfg: ModelConfig) -> Tuple[torch.Tensor, ...]:
    g, d = cfg.groups, cfg.head_dim
    per = cfg.num_attention_heads // g
    h = qkv.shape[-1]
    grouped = qkv.reshape(g, (per + 2) * d, h)
    q, k, v = torch.split(grouped, [per * d, d, d], dim=1)
    return q.reshape(-1, h), k.reshape(-1, h), v.reshape(-1, h)


def entry_to_megatron(entry: WeightEntry, tensors: Iterable[torch.Tensor], cfg: ModelConfig
                      ) -> torch.Tensor:
    """Build the megatron tensor of ``entry`` from its HF tensors (same order as entry.hf);
    shapes are checked against the config."""
    tensors = list(tensors)
    if entry.kind == "qkv":
        out = qkv_to_megatron(*tensors, cfg)
    elif entry.kind == "fc1":
        out = torch.cat(tensors, 0)
    else:
        (out,) = tensors
    want = expected_shape(cfg, entry.megatron)
    if tuple(out.shape) != want:
        got = ", ".join(f"{n}{tuple(t.shape)}" for n, t in zip(entry.hf, tensors))
        raise ValueError(f"{entry.megatron}: expected shape {want} from {got}")
    return out.contiguous()


def entry_to_hf(entry: WeightEntry, tensor: torch.Tensor, cfg: ModelConfig
                ) -> Dict[str, torch.Tensor]:
    """Inverse of :func:`entry_to_megatron`: {HF name: tensor}."""
    want = expected_shape(cfg, entry.megatron)
    if tuple(tensor.shape) != want:
        raise ValueError(f"{entry.megatron}: expected shape {want}, got {tuple(tensor.shape)}")
    if entry.kind == "qkv":
        parts = qkv_to_hf(tensor, cfg)
    elif entry.kind == "fc1":
        parts = tensor.chunk(2, 0)
    else:
        parts = (tensor,)
    return {name: p.contiguous() for name, p in zip(entry.hf, parts)}


def hf_to_megatron(hf_state: Mapping[str, torch.Tensor], cfg: ModelConfig
                   ) -> Dict[str, torch.Tensor]:
    """In-memory: HF state dict -> full megatron state dict (NAMES.md names, unpadded vocab)."""
    out = {}
    for entry in weight_table(cfg):
        missing = [n for n in entry.hf if n not in hf_state]
        if missing:
            raise KeyError(f"hf_to_megatron: HF state dict lacks {missing} (for {entry.megatron})")
        out[entry.megatron] = entry_to_megatron(entry, (hf_state[n] for n in entry.hf), cfg)
    return out


def megatron_to_hf(state: Mapping[str, torch.Tensor], cfg: ModelConfig
                   ) -> Dict[str, torch.Tensor]:
    """In-memory: full megatron state dict -> HF state dict (``lm_head.weight`` omitted when tied,
    as HF's tied checkpoints do)."""
    out = {}
    for entry in weight_table(cfg):
        if entry.megatron not in state:
            raise KeyError(f"megatron_to_hf: state dict lacks {entry.megatron!r}")
        out.update(entry_to_hf(entry, state[entry.megatron], cfg))
    return out

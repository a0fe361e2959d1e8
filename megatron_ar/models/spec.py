"""The one spec builder: ModelConfig -> megatron-core ModuleSpecs (local/CPU or Transformer Engine).

Design choices
- A single function, :func:`layer_spec`, reads the architecture options and picks modules; the
  backend (local vs TE) only swaps the linear/norm/attention classes, the structure is shared
  (no twin code paths: a model difference is a spec option).
- The TE variant is chosen automatically when ``transformer_engine`` imports and CUDA is
  available (:func:`te_available`); on CPU it is never used. It follows megatron-core's
  ``get_gpt_layer_with_transformer_engine_spec``: the pre-norms are fused into
  ``TELayerNormColumnParallelLinear`` (so ``input_layernorm``/``pre_mlp_layernorm`` are
  IdentityOp and the norm weight lives at ``...linear_qkv.layer_norm_weight``), attention is
  ``TEDotProductAttention`` (sliding window is passed by megatron-core from ``config.window_size``),
  (1+w) norms use TE's ``zero_centered_gamma``. What TE cannot do falls back to our modules inside
  the TE spec: parameter-free norms (nanochat) use :class:`RMSNorm` + ``TEColumnParallelLinear``.
- Core attention is a separate choice (``model.attention_backend``,
  :mod:`megatron_ar.models.attention`): unfused reference, torch SDPA, FlexAttention (the
  soft-capped Gemma-2 path) or TE's; :func:`attention_choice` resolves ``auto`` and
  :func:`megatron_ar.models.builder.build_model` logs the result.
- The local variant uses megatron-core's ``ColumnParallelLinear``/``RowParallelLinear``/
  ``DotProductAttention`` and our :class:`RMSNorm` for *every* norm (``WrappedTorchNorm`` refuses
  sequence parallelism). It keeps megatron-core's local ``sharded_state_dict_keys_map`` so
  dist checkpoints use TE-compatible keys and load into either variant.
- The classes are data (:class:`LayerModules`): a custom or stand-in backend (tests use one that
  carries ``_extra_state`` the way TE's modules do) is one more ``LayerModules`` value, not a
  new builder.
- Nothing is registered on import; builders are plain functions.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from megatron_ar.models.attention import (
    AttentionChoice,
    FlexAttention,
    SDPAttention,
    choose_backend,
    te_softcap_attention_class,
)
from megatron_ar.models.config import ModelConfig
from megatron_ar.models.modules import RMSNorm, SandwichTransformerLayer, SoftcapDotProductAttention

# megatron-core's local-spec mapping: dist checkpoints store the pre-norms under TE's fused names.
LOCAL_SHARDED_KEYS_MAP = {
    "input_layernorm.": "self_attention.linear_qkv.layer_norm_",
    "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_",
}


@functools.lru_cache(maxsize=1)
def te_available() -> bool:
    """True when Transformer Engine imports and a CUDA device exists."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
        from megatron.core.extensions import transformer_engine as _mte  # noqa: F401
    except Exception:  # ImportError, or TE built against another torch/CUDA
        return False
    return True


def norm_spec(cfg: ModelConfig) -> ModuleSpec:
    """Our RMSNorm with the config's weight style ((1+w) comes from the TransformerConfig) and
    ``model.fused_kernels`` (the csrc/ kernel; decided per device on the first forward)."""
    return ModuleSpec(module=RMSNorm, params={"learnable": cfg.norm != "rmsnorm_noparam",
                                              "fused": cfg.fused_kernels})


def attention_choice(cfg: ModelConfig, use_te: Optional[bool] = None,
                     context_parallel_size: int = 1) -> AttentionChoice:
    """``cfg.attention_backend`` resolved for this machine (``auto``: see
    :func:`megatron_ar.models.attention.choose_backend`). The device is the real one
    (``torch.cuda.is_available()``), not the CPU emulation's tag."""
    if use_te is None:
        use_te = te_available()
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return choose_backend(cfg.attention_backend, cfg.attn_logit_softcap, use_te, device_type,
                          cp=context_parallel_size)


_TORCH_BACKENDS = {"unfused": SoftcapDotProductAttention, "sdpa": SDPAttention,
                   "flex": FlexAttention}


def core_attention_spec(cfg: ModelConfig, backend: str):
    """The core-attention spec of ``backend`` (one of megatron_ar.models.attention's)."""
    if backend == "te":
        if cfg.attn_logit_softcap:
            return ModuleSpec(module=te_softcap_attention_class(),
                              params={"logit_softcap": cfg.attn_logit_softcap})
        from megatron.core.extensions.transformer_engine import TEDotProductAttention

        return TEDotProductAttention
    params = {"logit_softcap": cfg.attn_logit_softcap} if cfg.attn_logit_softcap else {}
    return ModuleSpec(module=_TORCH_BACKENDS[backend], params=params)


@dataclass(frozen=True)
class LayerModules:
    """The classes a backend puts into the shared layer structure.

    ``column_in`` is the input-side column-parallel linear (QKV, FC1); with a fused norm (TE's
    ``TELayerNormColumnParallelLinear``) ``pre_norm`` is ``IdentityOp`` and the norm weight is a
    parameter of ``column_in``. ``keys_map`` renames state-dict prefixes in the sharded state
    dict so that every backend writes the same dist-checkpoint keys.
    """

    column_in: Any
    row: Any
    core_attention: Any
    pre_norm: Any
    branch_norm: Any
    qk_norm: Any
    final_norm: Any
    keys_map: Dict[str, str] = field(default_factory=dict)


def layer_modules(cfg: ModelConfig, use_te: Optional[bool] = None,
                  context_parallel_size: int = 1) -> LayerModules:
    """The local (megatron-core + ours) or Transformer Engine module set for ``cfg``
    (``use_te=None``: auto-detect), with the core attention of :func:`attention_choice`."""
    if use_te is None:
        use_te = te_available()
    norm = norm_spec(cfg)
    qk_norm = norm if cfg.qk_norm else IdentityOp
    core = core_attention_spec(cfg, attention_choice(cfg, use_te, context_parallel_size).backend)
    if not use_te:
        return LayerModules(column_in=ColumnParallelLinear, row=RowParallelLinear,
                            core_attention=core, pre_norm=norm,
                            branch_norm=norm, qk_norm=qk_norm, final_norm=norm,
                            keys_map=dict(LOCAL_SHARDED_KEYS_MAP))
    from megatron.core.extensions.transformer_engine import (
        TEColumnParallelLinear,
        TELayerNormColumnParallelLinear,
        TENorm,
        TERowParallelLinear,
    )

    fused_norm = cfg.norm != "rmsnorm_noparam"
    return LayerModules(
        column_in=TELayerNormColumnParallelLinear if fused_norm else TEColumnParallelLinear,
        row=TERowParallelLinear,
        core_attention=core,
        pre_norm=IdentityOp if fused_norm else norm,
        branch_norm=TENorm if fused_norm else norm,
        qk_norm=(TENorm if cfg.qk_norm and fused_norm else qk_norm),
        final_norm=TENorm if fused_norm else norm,
    )


def layer_spec(cfg: ModelConfig, use_te: Optional[bool] = None,
               modules: Optional[LayerModules] = None) -> ModuleSpec:
    """ModuleSpec of one transformer layer for ``cfg``; ``modules`` (default:
    :func:`layer_modules` of ``use_te``) picks the classes, the structure is the same."""
    from megatron_ar.models import nanochat

    m = modules if modules is not None else layer_modules(cfg, use_te)
    column_in, row, core = m.column_in, m.row, m.core_attention
    attention_class, attention_params = nanochat.attention_module(cfg)
    pre_norm, branch_norm, qk_norm, keys_map = m.pre_norm, m.branch_norm, m.qk_norm, m.keys_map

    submodules = TransformerLayerSubmodules(
        input_layernorm=pre_norm,
        self_attention=ModuleSpec(
            module=attention_class,
            params={"attn_mask_type": AttnMaskType.causal, **attention_params},
            submodules=SelfAttentionSubmodules(
                linear_qkv=column_in,
                core_attention=core,
                linear_proj=row,
                q_layernorm=qk_norm,
                k_layernorm=qk_norm,
            ),
        ),
        self_attn_bda=get_bias_dropout_add,
        pre_mlp_layernorm=pre_norm,
        mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=column_in, linear_fc2=row)),
        mlp_bda=get_bias_dropout_add,
        sharded_state_dict_keys_map=keys_map,
    )
    if cfg.laser_mode == "cross_attention":  # Arkadiko V4-A (megatron_ar.models.encoder)
        from megatron_ar.models.encoder import add_cross_attention

        submodules = add_cross_attention(submodules, m)
    nanochat_layer = nanochat.layer_module(cfg)
    if nanochat_layer is not None:
        if cfg.post_norms:
            raise ValueError("ModelConfig.post_norms: not combinable with nanochat's "
                             "residual_scalars / backout")
        layer_class, layer_params = nanochat_layer
        return ModuleSpec(module=layer_class, submodules=submodules, params=layer_params)
    if cfg.post_norms:
        return ModuleSpec(
            module=SandwichTransformerLayer,
            submodules=submodules,
            params={"post_self_attn_layernorm": branch_norm, "post_mlp_layernorm": branch_norm},
        )
    return ModuleSpec(module=TransformerLayer, submodules=submodules)


def final_norm_spec(cfg: ModelConfig, use_te: Optional[bool] = None,
                    modules: Optional[LayerModules] = None):
    m = modules if modules is not None else layer_modules(cfg, use_te)
    return m.final_norm


def block_spec(cfg: ModelConfig, transformer_config, use_te: Optional[bool] = None,
               vp_stage: Optional[int] = None, pp_rank: Optional[int] = None,
               modules: Optional[LayerModules] = None) -> TransformerBlockSubmodules:
    """Decoder-block spec for the layers this (pipeline rank, virtual stage) builds."""
    n = get_num_layers_to_build(transformer_config, vp_stage=vp_stage, pp_rank=pp_rank)
    m = modules if modules is not None else layer_modules(
        cfg, use_te, getattr(transformer_config, "context_parallel_size", 1) or 1)
    return TransformerBlockSubmodules(layer_specs=[layer_spec(cfg, modules=m)] * n,
                                      layer_norm=m.final_norm)

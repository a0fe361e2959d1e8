"""megatron_ar.models: ModelConfig, the spec builder, presets, HF mapping and parameter counts.

Public API
- :class:`ModelConfig`, :class:`ConfigError`, :func:`padded_vocab_size` (``models.config``)
- :func:`layer_spec`, :func:`block_spec`, :func:`te_available` (``models.spec``)
- :func:`build_model`, :func:`build_model_chunk`, :func:`wrap_with_ddp`,
  :func:`run_forward_backward`, :func:`forward_logits`, :func:`split_batch`, :func:`unwrap`
  (``models.builder``)
- :func:`load_full_state_dict`, :func:`gather_full_state_dict`, :func:`iter_global_params`
  (``models.sharding``)
- :func:`from_hf_config`, :func:`to_hf_config`, :func:`weight_table`, :func:`hf_to_megatron`,
  :func:`megatron_to_hf` (``models.hf``)
- :func:`get_preset`, :func:`list_presets`, :func:`register_preset` (``models.presets``)
- :func:`param_counts` (``models.info``)

Importing this package imports megatron-core but patches and registers nothing.
"""
from megatron_ar.models.config import ConfigError, ModelConfig, padded_vocab_size
from megatron_ar.models.presets import get_preset, list_presets, register_preset
from megatron_ar.models.info import param_counts
from megatron_ar.models.hf import (
    from_hf_config,
    hf_to_megatron,
    megatron_to_hf,
    to_hf_config,
    weight_table,
)
from megatron_ar.models.spec import block_spec, layer_spec, te_available
from megatron_ar.models.builder import (
    build_model,
    build_model_chunk,
    forward_logits,
    run_forward_backward,
    split_batch,
    unwrap,
    wrap_with_ddp,
)
from megatron_ar.models.sharding import (
    gather_full_state_dict,
    iter_global_params,
    load_full_state_dict,
)

__all__ = [
    "ConfigError", "ModelConfig", "padded_vocab_size", "get_preset", "list_presets",
    "register_preset", "param_counts", "from_hf_config", "hf_to_megatron", "megatron_to_hf",
    "to_hf_config", "weight_table", "block_spec", "layer_spec", "te_available", "build_model",
    "build_model_chunk", "forward_logits", "run_forward_backward", "split_batch", "unwrap",
    "wrap_with_ddp", "gather_full_state_dict", "iter_global_params", "load_full_state_dict",
]

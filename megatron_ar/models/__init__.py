"""megatron_ar.models: ModelConfig, the spec builder, presets, HF mapping and parameter counts.

Public API (all importable from ``megatron_ar.models``)
- ``ModelConfig``, ``ConfigError``, ``padded_vocab_size``                    (models.config)
- ``get_preset``, ``list_presets``, ``register_preset``                      (models.presets)
- ``param_counts``                                                          (models.info)
- ``from_hf_config``, ``to_hf_config``, ``weight_table``, ``WeightEntry``,
  ``hf_to_megatron``, ``megatron_to_hf``, ``entry_to_megatron``, ``entry_to_hf``,
  ``expected_shape``                                                        (models.hf)
- ``layer_spec``, ``block_spec``, ``final_norm_spec``, ``te_available``,
  ``LayerModules``, ``layer_modules``                                       (models.spec)
- ``build_model``, ``build_model_chunk``, ``wrap_with_ddp``, ``unwrap``    (models.builder)
- ``StepSpec``, ``forward_step``, ``run_schedule``, ``run_forward_backward``, ``forward_logits``,
  ``split_batch``, ``global_sums``                                          (models.step)
- ``load_full_state_dict``, ``gather_full_state_dict``, ``iter_global_params`` (models.sharding)

Names are resolved lazily (PEP 562), so ``import megatron_ar.models`` and the info CLI do not
pay megatron-core's multi-second import; nothing is patched or registered on import.
"""
import importlib

_EXPORTS = {
    "megatron_ar.models.config": ("ModelConfig", "ConfigError", "padded_vocab_size"),
    "megatron_ar.models.presets": ("get_preset", "list_presets", "register_preset"),
    "megatron_ar.models.info": ("param_counts",),
    "megatron_ar.models.hf": ("from_hf_config", "to_hf_config", "weight_table", "WeightEntry",
                              "hf_to_megatron", "megatron_to_hf", "entry_to_megatron",
                              "entry_to_hf", "expected_shape"),
    "megatron_ar.models.spec": ("layer_spec", "block_spec", "final_norm_spec", "te_available",
                                 "LayerModules", "layer_modules"),
    "megatron_ar.models.builder": ("build_model", "build_model_chunk", "wrap_with_ddp",
                                   "unwrap"),
    "megatron_ar.models.step": ("StepSpec", "forward_step", "run_schedule",
                                "run_forward_backward", "forward_logits", "split_batch",
                                "global_sums"),
    "megatron_ar.models.sharding": ("load_full_state_dict", "gather_full_state_dict",
                                    "iter_global_params"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'megatron_ar.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__

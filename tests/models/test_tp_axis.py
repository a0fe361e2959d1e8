"""One TP split-axis lookup for in-memory sharding and the checkpoint converter.

Oracle: megatron-core's own ``tensor_model_parallel`` / ``partition_dim`` attributes, which it
sets while initialising weights. The converter's meta-device model is built without
initialisation (no attributes on weights); its axes must come out the same."""
import pytest
import torch

from megatron_ar.checkpoint.megatron_io import single_process_group
from megatron_ar.models import build_model, get_preset
from megatron_ar.models.tp import VOCAB_PARAMS, tp_split_axes

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gemma2"])
def test_meta_model_axes_equal_megatron_core_attributes(preset):
    cfg = get_preset(preset)
    with single_process_group():
        torch.manual_seed(0)
        (real,) = build_model(cfg, use_te=False, perform_initialization=True,
                              use_cpu_initialization=True)
        with torch.device("meta"):
            (meta,) = build_model(cfg, use_te=False, perform_initialization=False,
                                  use_cpu_initialization=True)
    from_attrs = tp_split_axes(real)
    assert all(hasattr(p, "tensor_model_parallel") for n, p in real.named_parameters()
               if from_attrs[n] is not None)  # the real model's answers are megatron-core's own
    weights_without_attrs = [n for n, p in meta.named_parameters()
                             if n.endswith("weight") and not hasattr(p, "tensor_model_parallel")]
    assert weights_without_attrs  # the meta model really takes the module-class path
    assert tp_split_axes(meta) == from_attrs
    axes = from_attrs
    assert axes["embedding.word_embeddings.weight"] == 0
    assert axes["decoder.layers.0.self_attention.linear_qkv.weight"] == 0
    assert axes["decoder.layers.0.self_attention.linear_proj.weight"] == 1
    assert axes["decoder.layers.0.mlp.linear_fc1.weight"] == 0
    assert axes["decoder.layers.0.mlp.linear_fc2.weight"] == 1
    assert axes["decoder.final_layernorm.weight"] is None
    assert ("output_layer.weight" in axes) == (not cfg.tie_embeddings)
    assert set(VOCAB_PARAMS) >= {n for n in axes if "word_embeddings" in n or "output_layer" in n}

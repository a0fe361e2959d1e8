"""The Transformer Engine layer spec on a CUDA machine (gpu tier): auto-detection picks it, and
its fused-norm linears come from megatron-core's TE extension. A CUDA machine without a working
Transformer Engine fails here instead of silently training on the local spec."""
import pytest

from megatron_ar.models import get_preset, layer_spec, te_available

pytestmark = pytest.mark.gpu


def test_te_spec_built_and_auto_selected():
    assert te_available(), ("CUDA is available but Transformer Engine does not import (with "
                            "megatron.core.extensions.transformer_engine); install the TE that matches torch")
    from megatron.core.extensions.transformer_engine import TELayerNormColumnParallelLinear, TERowParallelLinear

    for spec in (layer_spec(get_preset("tiny-llama"), use_te=True), layer_spec(get_preset("tiny-llama"))):
        attn = spec.submodules.self_attention.submodules
        assert attn.linear_qkv is TELayerNormColumnParallelLinear and attn.linear_proj is TERowParallelLinear

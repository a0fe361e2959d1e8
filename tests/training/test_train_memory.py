"""Memory estimate against a real model: ``params_per_rank`` equals the parameter count of the
megatron-core model megatron_ar builds (one spawned rank: building it needs a process group,
which must not live in the pytest process), and the 7B estimate matches Fanar's Table 6."""
import pytest

pytestmark = pytest.mark.multiproc


def test_memory_param_count_matches_built_model():
    """params_per_rank at TP=PP=1 equals the number of parameters of the real megatron-core
    model built by megatron_ar.models (single process, gloo)."""
    from megatron_ar.models.presets import get_preset
    from megatron_ar.runtime.spawn import run_multiprocess
    from megatron_ar.training.memory import estimate_memory, params_per_rank

    mc = get_preset("tiny-llama")
    counted = run_multiprocess(_count_params, 1, "tiny-llama")[0]
    assert params_per_rank(mc, 1, 1) == counted
    est = estimate_memory(get_preset("fanar-star-7b"), tp=1, pp=1, dp=1, micro_batch_size=1,
                          seq_length=4096, num_microbatches=1, distributed_optimizer=False)
    # 7.1B params x 18 bytes (bf16 weight + fp32 grad + fp32 master + Adam m, v), Fanar Table 6
    assert est.params_per_rank == pytest.approx(7.1e9, rel=0.01)
    assert (est.weights_gib + est.grads_gib + est.optimizer_gib) * 2**30 == pytest.approx(18 * est.params_per_rank)


def _count_params(preset):
    from megatron_ar.models.builder import build_model
    from megatron_ar.models.presets import get_preset
    from megatron_ar.runtime import init_distributed

    init_distributed(tp=1, pp=1)
    chunks = build_model(get_preset(preset))
    return sum(p.numel() for c in chunks for p in c.parameters())

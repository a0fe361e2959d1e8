"""Fake-tensor run of the real job (megatron_ar.training.memory_probe): one rank of the real
layout builds the real model, DDP buffers and optimizer on FakeTensors over torch's fake process
group and takes a whole training step through megatron-core's schedule.

Oracles: the exact per-rank arithmetic from the ModelConfig (training.memory.static_memory:
parameters x bytes + megatron-core's DDP padding rule + the distributed optimizer's DP slices),
the analytic parameter count of models.info.param_counts, megatron-core's own registration of
the parameters (names and sizes), and the same probe run over every micro-batch of the step."""
import json
import os
import time

import pytest

from megatron_ar.training.config import ConfigError, load_config
from megatron_ar.training.memory import (
    GIB,
    estimate_memory,
    rank_params,
    static_memory,
)
from megatron_ar.training.memory_probe import (
    MemoryLimitError,
    MemoryProbeError,
    format_probe,
    probe_memory,
)

pytestmark = pytest.mark.slow

STAR = "examples/recipes/fanar_star_7b.yaml"
PRIME = "examples/recipes/fanar_prime_9b_cpt.yaml"
# Fanar Star's global batch of the Fanar report (1344 = 84 DP x 2 x 8 micro-batches).
CI_CONFIGS = {
    "star-tp2-dp84": (STAR, 168, ["--global-batch-size", "1344"]),
    "star-tp2-pp4-vpp2-dp21": (STAR, 168, ["--global-batch-size", "1344",
                                           "--pipeline-model-parallel-size", "4",
                                           "--num-layers-per-virtual-pipeline-stage", "4"]),
    # The recipe keeps Adam's moments in bf16 with megatron-core's precision-aware optimizer,
    # which needs TE's FusedAdam (a GPU): here the same layout with torch AdamW's fp32 moments.
    "prime-tp4-pp2-dp21": (PRIME, 168, ["--no-use-precision-aware-optimizer", "--exp-avg-dtype", "fp32",
                                        "--exp-avg-sq-dtype", "fp32"]),
    "arkadiko-1gpu": (None, 1, ["--model", "arkadiko-v4b", "--seq-length", "2048", "--bf16",
                                "--micro-batch-size", "4", "--global-batch-size", "32",
                                "--recompute-granularity", "selective"]),
}


def _cfg(repo_root, path, overrides):
    return load_config(os.path.join(repo_root, path) if path else None, overrides)


def _expected(cfg, probe):
    """Exact static bytes of the probed rank, computed here from the ModelConfig."""
    from megatron_ar.training.builder import model_config_from

    L, o, p = probe.layout, cfg.optimizer, cfg.parallel
    return static_memory(model_config_from(cfg), L["tp"], L["pp"], L["vpp"], L["dp"], L["pp_rank"],
                         L["dp_rank"], bf16=o.bf16, grad_reduce_in_fp32=o.grad_reduce_in_fp32,
                         distributed_optimizer=p.use_distributed_optimizer,
                         overlap_grad_reduce=p.overlap_grad_reduce)


@pytest.mark.parametrize("name", list(CI_CONFIGS))
def test_real_layouts_measured_on_fake_tensors(repo_root, name):
    from megatron_ar.models.info import param_counts
    from megatron_ar.training.builder import model_config_from

    path, world, overrides = CI_CONFIGS[name]
    cfg = _cfg(repo_root, path, overrides)
    mc = model_config_from(cfg)
    t0 = time.perf_counter()
    probe = probe_memory(cfg, world, gpu_memory_gib=80)
    wall = time.perf_counter() - t0
    print(f"\n[{name}] {wall:.1f} s wall\n{format_probe(probe)}")
    exp = _expected(cfg, probe)
    assert (probe.params, probe.weights, probe.grads, probe.optimizer) == (
        exp.params, exp.weights, exp.grads, exp.optimizer)
    p, o = cfg.parallel, cfg.optimizer
    L = probe.layout
    if L["pp"] == 1 and L["tp"] == 1:  # the whole model: models.info's analytic count
        assert probe.params == param_counts(mc, tp=1)["megatron_padded"]["total"]
    # bf16 weights (2 B) with fp32 (4 B) or bf16 (2 B) gradient buffers of the same padded size.
    assert probe.grads == probe.weights * (2 if o.grad_reduce_in_fp32 else 1)
    if p.use_distributed_optimizer:  # fp32 main param + 2 Adam moments on 1/DP of the elements
        assert probe.optimizer == 12 * exp.optimizer_params
        assert exp.optimizer_params * L["dp"] <= exp.buffer_numel
    # Default rank: the first rank of pipeline stage 0 for these layouts (embedding + most
    # micro-batches in flight), whose planning estimate is the largest.
    assert probe.rank == 0 and L["pp_rank"] == 0
    # Sanity the Korthikanti et al. bound justifies: whatever the recomputation, every layer in
    # flight keeps at least its bf16 input (the "full recomputation" figure of the same formula).
    lower = estimate_memory(mc, L["tp"], L["pp"], L["dp"], cfg.schedule.micro_batch_size,
                            cfg.model.seq_length, probe.num_microbatches, L["vpp"],
                            p.sequence_parallel, "full", o.bf16, p.use_distributed_optimizer,
                            o.grad_reduce_in_fp32, pp_rank=L["pp_rank"]).activations_gib * GIB
    assert probe.activations > lower
    if L["pp"] == 1:  # the loss head runs on this rank: fp32 logits of one micro-batch at least
        assert probe.logits >= cfg.schedule.micro_batch_size * cfg.model.seq_length * \
            mc.padded_vocab_size(L["tp"]) // L["tp"] * 4
    assert probe.fits and probe.peak <= 80 * GIB
    print(f"[{name}] peak / planning estimate = {probe.peak / GIB / probe.estimate['total_gib']:.2f}")


def test_layout_that_cannot_fit_is_refused_with_the_figure(repo_root):
    """Fanar Star on 168 GPUs as TP1 x DP168 without the distributed optimizer: every rank holds
    7.1B x (2 + 4 + 12) bytes of weights, gradients and optimizer state alone."""
    cfg = _cfg(repo_root, STAR, ["--global-batch-size", "1344", "--tensor-model-parallel-size", "1",
                                 "--no-sequence-parallel", "--no-use-distributed-optimizer",
                                 "--no-overlap-param-gather"])
    with pytest.raises(MemoryLimitError) as err:
        probe_memory(cfg, 168, gpu_memory_gib=80)
    probe = err.value.probe
    exp = _expected(cfg, probe)
    assert (probe.weights, probe.grads, probe.optimizer) == (exp.weights, exp.grads, exp.optimizer)
    assert probe.weights + probe.grads + probe.optimizer == 18 * probe.params  # no padding without it
    assert f"needs {probe.peak / GIB:.1f} GiB" in str(err.value) and "gpu_memory_gib=80" in str(err.value)
    assert probe.peak > 80 * GIB and probe.fits is False


def test_broken_layout_fails_with_a_clear_message():
    """Sequence parallelism splits the sequence over TP ranks: 2047 tokens on TP 2 is a shape
    error that only shows when the step runs."""
    cfg = load_config(None, ["--model", "arkadiko-v4b", "--seq-length", "2047", "--bf16",
                             "--tensor-model-parallel-size", "2", "--sequence-parallel",
                             "--micro-batch-size", "1", "--global-batch-size", "2"])
    with pytest.raises(MemoryProbeError) as err:
        probe_memory(cfg, 2)
    msg = str(err.value)
    assert msg.startswith("fake run of arkadiko-v4b rank 0 (pipeline stage 0) failed during the "
                          "training step: AssertionError: First dimension of the tensor should be "
                          "divisible by tensor parallel size")
    assert "(at megatron/core/tensor_parallel/mappings.py:" in msg
    assert "Traceback" in err.value.details


def test_invalid_layout_is_refused_before_running():
    cfg = load_config(None, ["--model", "arkadiko-v4b", "--tensor-model-parallel-size", "3"])
    with pytest.raises(ConfigError, match="parallel: .*tensor_model_parallel_size=3 must divide "
                                          "num_attention_heads=16"):
        probe_memory(cfg, 3)
    with pytest.raises(ConfigError, match="world size 7 is not divisible"):
        probe_memory(load_config(None, ["--tensor-model-parallel-size", "2"]), 7)


TINY = ["--model", "tiny-llama", "--num-layers", "8", "--seq-length", "64", "--bf16",
        "--use-distributed-optimizer", "--micro-batch-size", "1"]


def _steady_and_all(cfg, world, ranks):
    """Both probes of every rank in one process (the probe's child function, run in turn)."""
    from megatron_ar.training.memory_probe import _probe_rank

    return [(_probe_rank(cfg, world, r, "steady"), _probe_rank(cfg, world, r, "all")) for r in ranks]


@pytest.mark.parametrize("world,overrides,ranks", [
    (32, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "4",
          "--num-layers-per-virtual-pipeline-stage", "1", "--sequence-parallel",
          "--global-batch-size", "96"], (0, 24)),
    (8, ["--pipeline-model-parallel-size", "2", "--global-batch-size", "32"], (0, 4)),
    (2, ["--global-batch-size", "8"], (0,)),
])
def test_steady_state_microbatches_give_the_peak_of_the_whole_step(world, overrides, ranks):
    """The probe runs megatron-core's schedule up to its steady state; running every micro-batch
    gives the same peak. The one difference: the last stage keeps every micro-batch's loss report
    (2 fp32 values, training.loop._loss_func) in the schedule's output list until the step ends."""
    from megatron_ar.runtime import run_multiprocess

    cfg = load_config(None, TINY + overrides)
    for steady, full in run_multiprocess(_steady_and_all, 1, cfg, world, ranks, timeout=1800)[0]:
        assert "error" not in steady and "error" not in full
        assert steady["microbatches_run"] < full["microbatches_run"] == full["num_microbatches"]
        last = steady["layout"]["pp_rank"] == steady["layout"]["pp"] - 1
        reports = 8 * (full["microbatches_run"] - steady["microbatches_run"]) if last else 0
        # Both probes share the worker process, and a 4-byte scalar cached on first use counts
        # as "other" in the first one only: compare what the step allocates on top of it.
        assert full["activations"] - steady["activations"] == reports
        assert (full["peak"] - full["other"]) - (steady["peak"] - steady["other"]) == reports
        assert (full["peak_optimizer_step"] - full["other"]) - (
            steady["peak_optimizer_step"] - steady["other"]) == reports  # still held by train_step
        for key in ("weights", "grads", "optimizer", "logits"):
            assert full[key] == steady[key], key


_ATTRS = ("shared_embedding", "sequence_parallel", "tensor_model_parallel", "partition_dim",
          "allreduce")


def _parameter_names(preset, overrides, tp, pp, vpp, world):
    import torch
    from megatron.core.transformer.module import Float16Module

    from megatron_ar.models.builder import build_model
    from megatron_ar.models.presets import get_preset
    from megatron_ar.runtime.fake import FakeSession, destroy_fake_distributed, init_fake_distributed

    def listing(chunks):
        return [[(n, q.numel(), {a: getattr(q, a) for a in _ATTRS if hasattr(q, a)})
                 for n, q in c.named_parameters()] for c in chunks]

    out = []
    for pp_rank in range(pp):
        init_fake_distributed(world, pp_rank * (world // pp), tp=tp, pp=pp, vpp=vpp)
        try:
            with FakeSession():
                chunks = build_model(get_preset(preset, **overrides), params_dtype=torch.bfloat16)
                bare = listing(chunks)
                # As build_run: bf16 training wraps the chunks (Module._apply on fake params).
                wrapped = listing([Float16Module(c.config, c).module for c in chunks])
                out.append((bare, wrapped))
        finally:
            destroy_fake_distributed()
    return out


@pytest.mark.parametrize("preset,overrides,tp,pp,vpp", [
    ("tiny-gemma2", {"num_layers": 8}, 2, 2, 2),  # tied embeddings, sandwich norms, PP x VPP
    ("tiny-autoresearch", {}, 1, 2, None),  # parameter-free norms, QK norm, untied
    ("tiny-llama", {}, 2, 1, None),
])
def test_parameter_layout_arithmetic_matches_megatron_core(preset, overrides, tp, pp, vpp):
    """training.memory.chunk_params (the order the DDP padding depends on) equals the names,
    sizes and shared-embedding marks of the chunks megatron-core builds for every stage, and the
    megatron-core attributes of the fake parameters survive Float16Module's conversion."""
    from megatron_ar.models.presets import get_preset
    from megatron_ar.runtime import run_multiprocess

    world = tp * pp * 2
    built = run_multiprocess(_parameter_names, 1, preset, overrides, tp, pp, vpp, world)[0]
    mc = get_preset(preset, **overrides)
    for pp_rank in range(pp):
        bare, wrapped = built[pp_rank]
        want = [[(e.name, e.numel, e.shared_embedding) for e in chunk]
                for chunk in rank_params(mc, tp, pp, vpp, pp_rank)]
        assert [[(n, k, a.get("shared_embedding", False)) for n, k, a in c] for c in bare] == want
        assert wrapped == bare
        assert any(a.get("tensor_model_parallel") for c in bare for _, _, a in c)


def test_ddp_buffer_arithmetic_small_cases():
    """Hand-checked cases of megatron-core's padding rule (params laid out in reverse)."""
    from megatron_ar.training.memory import ParamEntry, ddp_buffer_layout, shard_elements

    ps = [ParamEntry("a", 100), ParamEntry("b", 10)]
    # Distributed optimizer: b at 0..10, a starts at pad64(10)=64 -> 164, bucket end pad to
    # lcm(4, 128) = 128 -> 256.
    lay = ddp_buffer_layout(ps, 4, True, None)
    assert lay.param_ranges == ((64, 164), (0, 10)) and lay.buckets == ((0, 256),)
    # DP rank slices of 64: rank 0 holds b (10) and nothing of a; rank 1 holds a[0:64]...
    assert [shard_elements(lay, 4, r) for r in range(4)] == [(10, 1), (64, 1), (36, 1), (0, 0)]
    # Without it: packed, no padding.
    assert ddp_buffer_layout(ps, 4, False, None).numel == 110
    # bucket_size 50: b alone does not fill a bucket, a closes it.
    assert ddp_buffer_layout(ps, 4, True, 50).buckets == ((0, 256),)
    assert ddp_buffer_layout(ps, 4, True, 5).buckets == ((0, 128), (128, 256))


def test_tool_prints_estimate_and_measurement(repo_root, tmp_path, capsys):
    """tools/estimate_memory.py keeps its estimate lines and JSON keys and adds the measurement
    (the arkadiko-v4b 1-GPU configuration above); --analytic-only skips it; an impossible layout
    exits 2 with one line."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("estimate_memory",
                                                  os.path.join(repo_root, "tools/estimate_memory.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    recipe = tmp_path / "arkadiko.yaml"
    recipe.write_text("model: {preset: arkadiko-v4b, seq_length: 2048}\noptimizer: {bf16: true}\n"
                      "parallel: {recompute_granularity: selective}\n"
                      "schedule: {micro_batch_size: 4, global_batch_size: 32}\n")
    cfg_args = []
    base = ["--config", str(recipe), "--world-size", "1"]
    assert tool.main(base + ["--analytic-only", "--json"] + cfg_args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    analytic = json.loads(out[-1])
    assert "measured" not in analytic and out[0].strip().startswith("params_per_rank:")
    assert tool.main(base + ["--json", "--gpu-memory-gib", "80"] + cfg_args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    measured = json.loads(out[-1])
    assert {k: v for k, v in measured.items() if k != "measured"} == analytic
    assert measured["measured"]["static_matches_arithmetic"] is True and measured["measured"]["fits"]
    assert any(line.startswith("measured (fake tensors): rank 0 of 1") for line in out)
    assert tool.main(base + ["--tensor-model-parallel-size", "2"] + cfg_args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: parallel: world size 1")  # tools/_cli.py convention


def test_tool_measures_the_prime_recipe_without_transformer_engine(repo_root, capsys):
    """The precision-aware (bf16-moment) Fanar Prime recipe is measured as the dry run measures
    it: with fp32 moments, an upper bound, and a note with the exact difference."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("estimate_memory",
                                                  os.path.join(repo_root, "tools/estimate_memory.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    recipe = os.path.join(repo_root, "examples/recipes/fanar_prime_9b_cpt.yaml")
    assert tool.main(["--config", recipe, "--world-size", "168", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["measured"]["static_matches_arithmetic"] is True
    assert res["measured_note"].startswith("measured with fp32 Adam moments")
    assert "bf16/bf16 moments take" in res["measured_note"]

"""The GPU check: every figure of a single-GPU run of megatron_ar, one part per subprocess.

    python benchmarks/gpu/check.py [--folder .gpu-check] [--out gpu_check.json]
        [--device auto|cuda|cpu] [--steps 30] [--tiny] [--budget 400] [--parts a,b,...]

Parts (each in its own process with its own time limit, so one failure or hang still leaves
the others' figures; results are printed as they arrive and rewritten to ``--out`` after each):
  env                 versions, the stack probe (``megatron_ar.runtime.fusions``), the fusion
                      decision of every model below, a torch.compile smoke test on the device.
  logits              (b) our model vs transformers on the prepared tiny Llama / Gemma-2
                      checkpoints, bf16 and fp32, on the device: max abs / rel differences.
                      PASS: fp32 max abs diff <= 1e-3, and our bf16 logits no further from
                      transformers' fp32 logits than 2x transformers' own bf16 error + 1e-3.
  train-llama, train-gemma2
                      (a) ``--steps`` bf16 steps through ``megatron_ar.train`` under torchrun
                      (1 process, NCCL on CUDA) from the prepared converted checkpoint; PASS:
                      exit 0 and every step's loss within 2e-2 of the fp32 CPU reference.
  perf-fanar-star, perf-gemma2-9b
                      (c) model TFLOP/s and MFU (peak 989 dense BF16) of a 2-layer slice at full
                      width (Fanar Star: hidden 4096, FFN 11008, 32 heads, vocab 76,800;
                      Gemma-2-9B / Fanar Prime: hidden 3584, FFN 14336, 16/8 heads of 256,
                      soft-caps, window 4096, vocab 128,256), seq 4096, bf16, distributed
                      optimizer, after warm-up; FLOPs = ``training.metrics.flops_per_step``;
                      ``torch.cuda.max_memory_allocated``. PASS: the steps ran (a figure, no
                      threshold).
  mem-fanar-star, mem-gemma2-9b
                      (d) ``megatron_ar.training.memory_probe.probe_memory`` for the same slice
                      (fake-CUDA prediction), compared with the measured peak of the perf part;
                      "not available" when the probe is not importable.
  build-kernels       ``python setup.py build_ext --inplace``: the csrc/ CUDA extensions with
                      the machine's nvcc and CUDA torch; the build report per extension.
  bench-attention     benchmarks/attention.py at Gemma-2-9B's attention (seq 4096, 16/8 heads
                      of 256, soft-cap 50, window 4096, bf16: unfused vs FlexAttention) and at
                      Fanar Star's (32 heads of 128, no cap: unfused vs SDPA vs Flex).
                      Targets (figures, not pass criteria): Flex fwd+bwd >= 3x faster, >= 4x
                      less peak memory than unfused.
  bench-xent          benchmarks/cross_entropy.py at seq 4096 x vocab 128,256 (TP=1; /TP is
                      the same per-rank work): fused CE vs megatron-core's. Target >= 1.5x.
  bench-rmsnorm       benchmarks/rmsnorm.py at 4096 tokens x hidden 3584 bf16.
                      The kernel and bench parts are issue figures; give them their own call:
                      ``bash benchmarks/gpu/check.sh --parts env,build-kernels,bench-attention,
                      bench-xent,bench-rmsnorm``.
``--device cpu --tiny --steps 2`` is the plumbing mode CI runs (tests/benchmarks): the same parts
with tiny shapes on the CPU; GPU-only figures are skipped with a message.
Exit status: 0 when no part failed (skips allowed), 1 otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
import traceback
from typing import Any, Dict, List, Optional

import gpu_check_common as common  # noqa: E402

# Part -> (time limit on a GPU in seconds, minimum worth starting).
# Order = priority when the total budget runs short: (a), (b) first, then (c), then (d).
PARTS = {
    "env": (60, 20),
    "logits": (120, 40),
    "train-llama": (180, 60),
    "train-gemma2": (180, 60),
    "perf-fanar-star": (120, 45),
    "perf-gemma2-9b": (120, 45),
    "mem-fanar-star": (90, 30),
    "mem-gemma2-9b": (90, 30),
    "build-kernels": (240, 90),
    "bench-attention": (200, 60),
    "bench-xent": (120, 40),
    "bench-rmsnorm": (90, 30),
}
# bench part -> [(label, script, GPU arguments, CPU plumbing arguments)]
BENCHES = {
    "bench-attention": [
        ("gemma2-9b", "benchmarks/attention.py", ["--gemma"],
         ["--seq", "128", "--heads", "4", "--groups", "2", "--head-dim", "32", "--softcap",
          "50", "--window", "64", "--repeats", "1"]),
        ("fanar-star", "benchmarks/attention.py",
         ["--seq", "4096", "--heads", "32", "--groups", "32", "--head-dim", "128", "--dtype",
          "bf16"],
         ["--seq", "128", "--heads", "4", "--groups", "4", "--head-dim", "32", "--repeats", "1"]),
    ],
    "bench-xent": [("gemma2-9b", "benchmarks/cross_entropy.py", ["--gemma", "--dtype",
                                                                  "bfloat16"],
                    ["--tokens", "256", "--vocab", "4096", "--reps", "1"])],
    "bench-rmsnorm": [("gemma2-9b", "benchmarks/rmsnorm.py",
                       ["--tokens", "4096", "--hidden", "3584", "--dtypes", "bfloat16",
                        "--kinds", "1+w", "--modes", "none,add_after"],
                       ["--tokens", "256", "--hidden", "256", "--reps", "1", "--kinds", "1+w",
                        "--modes", "none"])],
}
SLICES = {  # name -> (preset, overrides) of the full-width slices
    "fanar-star": ("fanar-star-7b", {"num_layers": 2}),
    "gemma2-9b": ("fanar-prime-9b", {"num_layers": 2}),
}
TINY_SLICES = {  # the same architectures at plumbing size (CPU)
    "fanar-star": ("fanar-star-7b", {"num_layers": 2, "hidden_size": 128, "ffn_hidden_size": 352,
                                     "num_attention_heads": 4, "num_query_groups": 4,
                                     "kv_channels": 32, "vocab_size": 1000}),
    "gemma2-9b": ("fanar-prime-9b", {"num_layers": 2, "hidden_size": 128,
                                     "ffn_hidden_size": 512, "num_attention_heads": 4,
                                     "num_query_groups": 2, "kv_channels": 64,
                                     "query_pre_attn_scalar": 64, "sliding_window": 64,
                                     "vocab_size": 1000}),
}
SEQ_PERF, SEQ_PERF_TINY = 4096, 128


# ----------------------------------------------------------------------------------------------
# helpers (rank side)
# ----------------------------------------------------------------------------------------------
def _quiet():
    import warnings

    for cat in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=cat)


def _device(args) -> str:
    import torch

    if args.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch.cuda.is_available() is False "
                           f"(torch {torch.__version__})")
    return args.device


def _init_single_rank():
    """World size 1 process group (NCCL on CUDA, gloo + the CPU layer otherwise)."""
    from megatron_ar.runtime import init_distributed

    return init_distributed(tp=1, pp=1, seed=1234, rank=0, world_size=1,
                            master_addr="127.0.0.1", master_port=common.free_port())


def _sync(device: str):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _max_abs(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


# ----------------------------------------------------------------------------------------------
# parts
# ----------------------------------------------------------------------------------------------
def part_env(args) -> dict:
    import torch
    import transformers

    import megatron.core
    from megatron_ar.models import get_preset
    from megatron_ar.runtime.fusions import probe_stack

    dev = _device(args)
    caps = probe_stack()
    models = {"tiny-llama": common.model_config("llama"), "tiny-gemma2": common.model_config("gemma2"),
              "fanar-star-7b": get_preset("fanar-star-7b"), "fanar-prime-9b": get_preset("fanar-prime-9b")}
    decisions = {k: m.fusion_decision(torch.bfloat16).summary() for k, m in models.items()}
    out = {"device": dev, "python": sys.version.split()[0], "torch": torch.__version__,
           "cuda_runtime": torch.version.cuda, "transformers": transformers.__version__,
           "megatron_core": megatron.core.__version__, "megatron_core_path": megatron.core.__file__,
           "capabilities": caps.to_dict(), "fusions_bf16": decisions,
           "CUDA_DEVICE_MAX_CONNECTIONS": os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS")}
    try:
        import importlib

        importlib.import_module("megatron_ar.training.memory_probe")
        out["memory_probe"] = "importable"
    except Exception as exc:
        out["memory_probe"] = f"not available ({type(exc).__name__}: {exc})"
    if dev == "cuda":
        props = torch.cuda.get_device_properties(0)
        out["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2 ** 30, 1),
                      "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count()}
        # The fused kernels megatron-core builds with torch.compile: does the toolchain work?
        t0 = time.time()
        try:
            fn = torch.compile(lambda x, y: torch.nn.functional.silu(x) * y)
            x = torch.randn(64, 64, device="cuda")
            ok = bool(torch.allclose(fn(x, x), torch.nn.functional.silu(x) * x))
            out["torch_compile_smoke"] = {"ok": ok, "seconds": round(time.time() - t0, 1)}
        except Exception as exc:
            out["torch_compile_smoke"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:400]}
        out["status"] = "PASS" if out["torch_compile_smoke"]["ok"] or not caps.torch_compile else "FAIL"
    else:
        out["status"] = "PASS"
        out["note"] = "no CUDA device: GPU figures skipped"
    return out


def _our_logits(name: str, dtype, tokens, device: str):
    import torch
    from megatron.core.transformer.module import Float16Module

    from megatron_ar.checkpoint import load_into_model
    from megatron_ar.models import build_model, forward_logits
    from megatron_ar.runtime import to_host

    mc = common.model_config(name)
    chunks = build_model(mc, params_dtype=dtype)
    if dtype == torch.bfloat16:
        chunks = [Float16Module(c.config, c) for c in chunks]
    load_into_model(chunks, common.paths(args_folder(), name)["megatron"], model_config=mc)
    logits = forward_logits(chunks, tokens, mc.vocab_size).float()
    # Our logits live on the training device; HF's on ``device``. Compare both on the host so
    # the comparison is the same on a GPU and under the CPU layer's strict device emulation.
    return to_host(logits)


def _hf_logits(name: str, dtype, tokens, device: str):
    import torch
    from transformers import AutoModelForCausalLM

    from megatron_ar.runtime import to_host

    model = AutoModelForCausalLM.from_pretrained(common.paths(args_folder(), name)["hf"],
                                                 dtype=dtype, attn_implementation="eager")
    model = model.to(device).eval()
    with torch.no_grad():
        return to_host(model(input_ids=tokens).logits.float())


_FOLDER: List[str] = []


def args_folder() -> str:
    return _FOLDER[0]


def part_logits(args) -> dict:
    import torch

    dev = _device(args)
    _init_single_rank()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gen = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, common.VOCAB, (2, common.SEQ), generator=gen)
    tokens = tokens.to(dev)
    out, ok = {"device": dev}, True
    for name in common.MODELS:
        ours32 = _our_logits(name, torch.float32, tokens, dev)
        hf32 = _hf_logits(name, torch.float32, tokens, dev)
        ours16 = _our_logits(name, torch.bfloat16, tokens, dev)
        hf16 = _hf_logits(name, torch.bfloat16, tokens, dev)
        scale = float(hf32.abs().max())
        r = {"fp32_max_abs": _max_abs(ours32, hf32),
             "bf16_max_abs_vs_hf_bf16": _max_abs(ours16, hf16),
             "bf16_ours_vs_hf_fp32": _max_abs(ours16, hf32),
             "bf16_hf_vs_hf_fp32": _max_abs(hf16, hf32),
             "bf16_mean_abs_vs_hf_bf16": float((ours16 - hf16).abs().mean()),
             "logit_scale": scale}
        r["fp32_max_rel"] = r["fp32_max_abs"] / scale
        r["bf16_max_rel_vs_hf_bf16"] = r["bf16_max_abs_vs_hf_bf16"] / scale
        r["pass"] = (r["fp32_max_abs"] <= 1e-3
                     and r["bf16_ours_vs_hf_fp32"] <= 2 * r["bf16_hf_vs_hf_fp32"] + 1e-3)
        ok = ok and r["pass"]
        out[name] = r
    out["status"] = "PASS" if ok else "FAIL"
    return out


def part_train(args, name: str) -> dict:
    with open(os.path.join(args.folder, common.REFERENCE), encoding="utf-8") as f:
        ref = json.load(f)[name]
    steps = min(args.steps, ref["steps"])
    run_dir = os.path.join(args.work, f"train-{name}")
    recipe = common.write_recipe(args.folder, name, run_dir, bf16=True, steps=ref["steps"],
                                 stop_after=steps if steps < ref["steps"] else None)
    t0 = time.time()
    rc, output = common.torchrun_train(recipe, timeout=args.part_timeout - 10)
    losses, evals = common.read_metrics(run_dir)
    diffs = [abs(a - b) for a, b in zip(losses, ref["losses"])]
    out = {"rc": rc, "seconds": round(time.time() - t0, 1), "steps_run": len(losses),
           "steps_expected": steps, "losses_bf16": losses, "losses_fp32_cpu": ref["losses"][:steps],
           "max_abs_diff": max(diffs) if diffs else None,
           "step_of_max_diff": diffs.index(max(diffs)) if diffs else None,
           "tolerance": common.LOSS_TOL, "fusions": common.fusion_line(output)}
    if evals and ref.get("eval") and steps == ref["steps"]:
        ours = evals[-1]["valid"]["ar"]["loss"]
        theirs = ref["eval"]["valid"]["ar"]["loss"]
        out["valid_ar_loss"] = {"bf16": ours, "fp32_cpu": theirs, "abs_diff": abs(ours - theirs)}
    out["status"] = "PASS" if (rc == 0 and len(losses) == steps and diffs
                               and max(diffs) <= common.LOSS_TOL) else "FAIL"
    if out["status"] != "PASS":
        out["log_tail"] = output[-3000:]
    return out


def slice_config(args, slice_name: str):
    """TrainConfig of a perf slice (no data section: batches are random tokens)."""
    import yaml

    from megatron_ar.training.config import load_config

    preset, overrides = (TINY_SLICES if args.tiny else SLICES)[slice_name]
    raw = {"model": {"preset": preset, "seq_length": SEQ_PERF_TINY if args.tiny else SEQ_PERF,
                     "overrides": overrides},
           "parallel": {"use_distributed_optimizer": True},
           "optimizer": {"bf16": True, "lr": 1.0e-4},
           "schedule": {"micro_batch_size": 1, "global_batch_size": 1, "train_iters": 100},
           "logging": {"run_dir": os.path.join(args.work, f"perf-{slice_name}"),
                       "peak_tflops": common.PEAK_TFLOPS}}
    path = os.path.join(args.work, f"slice-{slice_name}.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(raw, f, sort_keys=False)
    return load_config(path, [])


def part_perf(args, slice_name: str) -> dict:
    """Model build as ``training.builder.build_run`` does it (without data), then timed steps
    of megatron-core's schedule + optimizer on random tokens."""
    import torch
    from megatron.core.transformer.module import Float16Module

    from megatron_ar.models import build_model, run_forward_backward, wrap_with_ddp
    from megatron_ar.training.builder import model_config_from, transformer_overrides
    from megatron_ar.training.metrics import flop_shape, flops_per_step, throughput
    from megatron_ar.training.optimizer import build_optimizer

    dev = _device(args)
    cfg = slice_config(args, slice_name)
    mc = model_config_from(cfg)
    _init_single_rank()
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    p, o = cfg.parallel, cfg.optimizer
    t0 = time.time()
    chunks = build_model(mc, sequence_parallel=p.sequence_parallel, params_dtype=torch.bfloat16,
                         **transformer_overrides(cfg))
    decision = chunks[0].config
    fused = [f for f in ("gradient_accumulation_fusion", "bias_activation_fusion",
                         "bias_dropout_fusion", "apply_rope_fusion", "masked_softmax_fusion",
                         "cross_entropy_loss_fusion", "persist_layer_norm") if getattr(decision, f)]
    chunks = [Float16Module(c.config, c) for c in chunks]
    model = wrap_with_ddp(chunks, use_distributed_optimizer=p.use_distributed_optimizer,
                          grad_reduce_in_fp32=o.grad_reduce_in_fp32,
                          fp8_param_gather=o.fp8_param_gather,
                          overlap_grad_reduce=p.overlap_grad_reduce,
                          overlap_param_gather=p.overlap_param_gather)
    optimizer = build_optimizer(cfg, model)
    model[0].config.grad_scale_func = optimizer.scale_loss
    build_s = time.time() - t0
    allocated = {}
    if dev == "cuda":
        allocated["after_build_gib"] = torch.cuda.memory_allocated() / 2 ** 30
    seq = cfg.model.seq_length
    gen = torch.Generator().manual_seed(3)
    batch = {"tokens": torch.randint(0, mc.vocab_size, (1, seq), generator=gen).to(dev),
             "labels": torch.randint(0, mc.vocab_size, (1, seq), generator=gen).to(dev)}
    warmup, timed = (1, 2) if args.tiny else (3, 5)
    times, losses = [], []
    for i in range(warmup + timed):
        _sync(dev)
        t = time.perf_counter()
        for c in model:
            c.zero_grad_buffer()
        optimizer.zero_grad()
        losses.append(run_forward_backward(model, [batch]))
        ok, grad_norm, _ = optimizer.step()
        _sync(dev)
        if i == 0 and dev == "cuda":  # weights + gradient buffers + optimizer state
            allocated["after_first_step_gib"] = torch.cuda.memory_allocated() / 2 ** 30
        if i >= warmup:
            times.append(time.perf_counter() - t)
    flops = flops_per_step(flop_shape(mc), 1, seq)
    step_s = sorted(times)[len(times) // 2]
    n_params = sum(x.numel() for x in model[0].module.parameters())
    out = {"device": dev, "slice": slice_name, "model": dataclasses.asdict(flop_shape(mc)),
           "seq_length": seq, "micro_batch": 1, "parameters": n_params, "fusions_on": fused,
           "build_s": round(build_s, 1), "warmup_steps": warmup, "step_times_s": times,
           "median_step_s": step_s, "tokens_per_s": seq / step_s, "flops_per_step": flops,
           "losses": losses,
           "peak_tflops": common.PEAK_TFLOPS}
    if dev == "cuda":
        tp = throughput(flops, step_s, 1, common.PEAK_TFLOPS)
        out.update(model_tflops=tp["tflops_per_device"], mfu=tp["mfu"],
                   max_memory_allocated_gib=torch.cuda.max_memory_allocated() / 2 ** 30,
                   memory_allocated_gib=torch.cuda.memory_allocated() / 2 ** 30,
                   max_memory_reserved_gib=torch.cuda.max_memory_reserved() / 2 ** 30,
                   memory_allocated_at=allocated)
    else:
        out["note"] = "TFLOP/s, MFU and CUDA memory are GPU-only figures: skipped on the CPU"
    finite = all(math.isfinite(x) for x in losses if x is not None)
    out["status"] = "PASS" if finite else "FAIL"
    return out


def part_mem(args, slice_name: str) -> dict:
    try:
        from megatron_ar.training.memory_probe import probe_memory
    except Exception as exc:
        return {"status": "SKIP", "note": f"not available: {type(exc).__name__}: {exc}"}
    cfg = slice_config(args, slice_name)
    t0 = time.time()
    result = probe_memory(cfg, 1)
    if hasattr(result, "to_dict"):
        result = result.to_dict()
    elif dataclasses.is_dataclass(result):
        result = dataclasses.asdict(result)
    out = {"status": "PASS", "seconds": round(time.time() - t0, 1), "prediction": _jsonable(result)}
    return out


def _jsonable(x):
    try:
        json.dumps(x)
        return x
    except TypeError:
        if isinstance(x, dict):
            return {str(k): _jsonable(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [_jsonable(v) for v in x]
        return repr(x)


def _find_peak(pred) -> Optional[float]:
    """The predicted peak in bytes from probe_memory's result (``MemoryProbe.peak``, bytes)."""
    if isinstance(pred, dict):
        if isinstance(pred.get("peak"), (int, float)):
            return float(pred["peak"])
        if isinstance(pred.get("peak_gib"), (int, float)):
            return float(pred["peak_gib"]) * 2 ** 30
    return None


def part_build(args) -> dict:
    """Build the extensions in place; report what setup.py recorded for each."""
    if _device(args) != "cuda":
        return {"status": "SKIP", "note": "no CUDA device: the CUDA extensions are not built "
                "here (the CPU builds come with the install)"}
    rc, output = common.run_cmd([sys.executable, "setup.py", "build_ext", "--inplace"],
                                args.part_timeout - 10)
    report_path = os.path.join(common.REPO, "megatron_ar", "_ext", "build_report.json")
    report = {}
    if os.path.isfile(report_path):
        with open(report_path, encoding="utf-8") as f:
            report = json.load(f)
    cuda = {k: v for k, v in report.items() if not k.endswith("_cpu") and "dedup" not in k}
    built = [k for k, v in cuda.items() if v == "built"]
    out = {"rc": rc, "report": report, "cuda_built": built, "log_tail": output[-2000:]}
    out["status"] = "PASS" if rc == 0 and built and len(built) == len(cuda) else "FAIL"
    return out


def part_bench(args, name: str) -> dict:
    """Run the part's benchmark scripts (their --json summary is the figure)."""
    gpu = _device(args) == "cuda"
    out: Dict[str, Any] = {"runs": {}}
    for label, script, gpu_args, cpu_args in BENCHES[name]:
        cmd = [sys.executable, script, "--device", "cuda" if gpu else "cpu"] + \
              (gpu_args if gpu else cpu_args) + ["--json"]
        rc, output = common.run_cmd(cmd, max(30, args.part_timeout / len(BENCHES[name]) - 5))
        lines = [x for x in output.strip().splitlines() if x.startswith("{")]
        out["runs"][label] = {"rc": rc, "command": " ".join(cmd[1:]),
                              "summary": json.loads(lines[-1]) if rc == 0 and lines else None,
                              "printed": output[-2500:]}
    ok = all(r["rc"] == 0 and r["summary"] is not None for r in out["runs"].values())
    out["status"] = "PASS" if ok else "FAIL"
    return out


def run_part(args, name: str) -> dict:
    if name == "build-kernels":
        return part_build(args)
    if name.startswith("bench-"):
        return part_bench(args, name)
    if name == "env":
        return part_env(args)
    if name == "logits":
        return part_logits(args)
    if name.startswith("train-"):
        return part_train(args, name[len("train-"):])
    if name.startswith("perf-"):
        return part_perf(args, name[len("perf-"):])
    if name.startswith("mem-"):
        return part_mem(args, name[len("mem-"):])
    raise ValueError(f"unknown part {name!r}")


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------
def _summary_line(name: str, r: dict) -> str:
    s = r.get("status", "?")
    if name == "env":
        caps = r.get("capabilities", {})
        fig = (f"{r.get('gpu', {}).get('name', r.get('device'))}, torch {r.get('torch')}, "
               f"mcore {r.get('megatron_core')}, TE {caps.get('te_version')}, "
               f"compile {r.get('torch_compile_smoke', {}).get('ok', caps.get('torch_compile'))}")
    elif name == "logits" and "llama" in r:
        fig = "; ".join(f"{m}: fp32 {r[m]['fp32_max_abs']:.1e}, bf16 {r[m]['bf16_max_abs_vs_hf_bf16']:.1e}"
                        f" (HF own bf16 err {r[m]['bf16_hf_vs_hf_fp32']:.1e})"
                        for m in common.MODELS if m in r)
    elif name.startswith("train-") and "max_abs_diff" in r:
        fig = (f"{r['steps_run']}/{r['steps_expected']} steps, max |dloss| "
               f"{r['max_abs_diff'] if r['max_abs_diff'] is None else format(r['max_abs_diff'], '.2e')}"
               f" (tol {r['tolerance']}), rc {r['rc']}")
    elif name.startswith("perf-") and "median_step_s" in r:
        fig = f"step {r['median_step_s']:.3f} s"
        if "model_tflops" in r:
            fig += (f", {r['model_tflops']:.0f} TFLOP/s, MFU {100 * r['mfu']:.1f}%, peak mem "
                    f"{r['max_memory_allocated_gib']:.1f} GiB")
    elif name.startswith("bench-") and "runs" in r:
        parts = []
        for label, run in r["runs"].items():
            summ = run.get("summary") or {}
            backends = summ.get("backends") or {}
            cases = summ.get("cases") or []
            if "time_ratio" in summ:  # cross_entropy.py: ours / megatron-core
                parts.append(f"{label}: time x{summ['time_ratio']:.2f}, extra peak memory "
                             f"x{summ.get('memory_ratio') or 0:.2f} (ours/megatron)")
            elif cases:  # rmsnorm.py: ours / unfused per case
                parts.append(label + ": " + ", ".join(
                    f"{c['mode']}/{c['dtype']} time x{c['ms_ratio']:.2f} peak "
                    f"x{c['peak_bytes_ratio']:.2f}" for c in cases))
            elif backends:
                parts.append(label + ": " + ", ".join(
                    f"{b} fwd+bwd x{v.get('speedup_fwd_bwd') or v.get('speedup_fwd') or 0:.2f} "
                    f"mem x{v.get('memory_ratio') or 0:.2f}" for b, v in backends.items()
                    if b != "unfused" and "error" not in v))
            else:
                parts.append(f"{label}: rc {run.get('rc')}")
        fig = "; ".join(parts)
    elif name == "build-kernels":
        fig = r.get("note") or f"built {r.get('cuda_built')}, rc {r.get('rc')}"
    elif name.startswith("mem-"):
        fig = r.get("note") or r.get("comparison") or "prediction printed above"
    else:
        fig = r.get("error", r.get("note", ""))
    return f"{name:<16} {s:<5} {fig}"[:220]


def _compare_memory(results: Dict[str, dict]) -> None:
    for sl in SLICES:
        mem, perf = results.get(f"mem-{sl}"), results.get(f"perf-{sl}")
        if not mem or mem.get("status") != "PASS" or not perf:
            continue
        pred = _find_peak(mem.get("prediction"))
        meas = perf.get("max_memory_allocated_gib")
        if pred is None:
            mem["comparison"] = "no 'peak' figure in the prediction"
            continue
        if meas is None:
            mem["comparison"] = (f"predicted peak {pred / 2 ** 30:.3f} GiB; the measured peak "
                                 "(torch.cuda.max_memory_allocated) is a GPU-only figure")
            continue
        mem["comparison"] = (f"predicted peak {pred / 2 ** 30:.2f} GiB vs measured "
                             f"max_memory_allocated {meas:.2f} GiB (ratio {pred / 2 ** 30 / meas:.3f})")
        mem["predicted_peak_gib"] = pred / 2 ** 30
        mem["measured_peak_gib"] = meas
        p = mem.get("prediction") or {}
        static = [p.get(k) for k in ("weights", "grads", "optimizer", "other")]
        after = perf.get("memory_allocated_at", {}).get("after_first_step_gib")
        if all(isinstance(x, (int, float)) for x in static) and after is not None:
            mem["predicted_static_gib"] = sum(static) / 2 ** 30
            mem["measured_after_first_step_gib"] = after


def _write(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, default=repr)
    os.replace(path + ".tmp", path)


def drive(args) -> int:
    t_start = time.time()
    names = [p for p in (args.parts.split(",") if args.parts else PARTS) if p]
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        print(f"error: --parts: unknown {unknown}; choose from {list(PARTS)}", file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(args.folder, common.REFERENCE)):
        print(f"error: {args.folder}/{common.REFERENCE} missing: run benchmarks/gpu/prepare.py "
              "first (on a CPU machine) and carry the folder", file=sys.stderr)
        return 2
    payload: Dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "args": vars(args), "parts": {}}
    results: Dict[str, dict] = payload["parts"]
    for name in names:
        limit, minimum = PARTS[name]
        left = args.budget - (time.time() - t_start) - 5
        if left < minimum:
            results[name] = {"status": "SKIP", "note": f"total time budget ({args.budget} s) "
                             f"exhausted: {left:.0f} s left, needs {minimum} s"}
        else:
            timeout = min(limit * (3 if args.device == "cpu" else 1), left)
            part_out = os.path.join(args.work, f"part-{name}.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--run-part", name,
                   "--part-out", part_out, "--part-timeout", str(int(timeout)),
                   "--folder", args.folder, "--work", args.work, "--device", args.device,
                   "--steps", str(args.steps)] + (["--tiny"] if args.tiny else [])
            t0 = time.time()
            rc, output = common.run_cmd(cmd, timeout)
            if os.path.isfile(part_out):
                with open(part_out, encoding="utf-8") as f:
                    results[name] = json.load(f)
            else:
                results[name] = {"status": "FAIL", "error": f"part exited {rc} without a result",
                                 "log_tail": output[-3000:]}
            results[name]["part_seconds"] = round(time.time() - t0, 1)
        _compare_memory(results)
        print(f"\n=== {name}: {results[name]['status']} ===")
        print(json.dumps(results[name], indent=1, default=repr)[:6000], flush=True)
        _write(args.out, payload)
    payload["total_seconds"] = round(time.time() - t_start, 1)
    payload["summary"] = [_summary_line(n, results[n]) for n in names]
    failed = [n for n in names if results[n]["status"] not in ("PASS", "SKIP")]
    payload["failed"] = failed
    _write(args.out, payload)
    print("\n" + "=" * 100)
    print(f"GPU check summary ({payload['total_seconds']:.0f} s, peak {common.PEAK_TFLOPS:.0f} "
          f"TFLOP/s dense BF16):")
    for line in payload["summary"]:
        print("  " + line)
    print(f"results: {args.out}")
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", default=common.DEFAULT_DIR, help="what prepare.py wrote")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_check.json"))
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--steps", type=int, default=common.STEPS)
    ap.add_argument("--tiny", action="store_true", help="tiny perf slices (CPU plumbing mode)")
    ap.add_argument("--budget", type=float, default=400.0, help="total seconds for all parts")
    ap.add_argument("--parts", default="", help=f"comma list of {list(PARTS)}")
    ap.add_argument("--run-part", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--part-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--part-timeout", type=float, default=600, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.folder = os.path.abspath(args.folder)
    args.out = os.path.abspath(args.out)
    _FOLDER.append(args.folder)
    if args.work is None:
        args.work = tempfile.mkdtemp(prefix="gpu-check-")
    os.makedirs(args.work, exist_ok=True)
    if args.run_part is None:
        return drive(args)
    _quiet()
    try:
        result = run_part(args, args.run_part)
    except Exception as exc:
        result = {"status": "FAIL", "error": f"{type(exc).__name__}: {exc}"[:2000],
                  "traceback": traceback.format_exc()[-4000:]}
    _write(args.part_out, _jsonable(result))
    try:
        from megatron_ar.runtime import destroy_distributed

        destroy_distributed()
    except Exception:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

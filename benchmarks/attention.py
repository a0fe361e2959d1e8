"""Attention backends against megatron-core's unfused DotProductAttention, measured in one run.

    python benchmarks/attention.py [--device cpu|cuda] [--seq 1024] [--batch 1] [--heads 8]
        [--groups 4] [--head-dim 64] [--softcap 50] [--window 0] [--dtype fp32|bf16]
        [--repeats 5] [--json]
    python benchmarks/attention.py --device cuda --gemma     # Gemma-2-9B: seq 4096, 16 heads /
                                                             # 8 groups of 256, cap 50, window 4096

Each backend (``unfused`` = megatron-core's local ``DotProductAttention`` with our soft-cap,
the reference; ``sdpa``; ``flex``) runs in its own subprocess, built exactly as the model builds
it (megatron_ar.models.attention, one layer, a 1-rank process group), on the same seeded q/k/v.
Reported per backend: forward time, forward+backward time (median of ``--repeats`` after one
warm-up; no backward for FlexAttention on a CPU, which torch lacks), peak memory (CUDA:
``torch.cuda.max_memory_allocated`` over the timed calls; CPU: the subprocess's peak RSS above
the RSS after inputs were made, which counts allocator slack too), the max abs difference of
the output from the reference (on every 97th element), and every figure as a ratio to the reference. ``sdpa`` is
skipped for a soft-capped run (it cannot cap). ``--json``: the summary as one JSON object on the
last stdout line.

What the CPU figures mean: the CPU math kernels say little about GPU speed (FlexAttention
eager on a CPU materialises the scores, as the reference does); the memory column shows what
each backend keeps. The targets of the issue (Flex fwd+bwd >= 3x faster and >= 4x less peak
memory than unfused at seq 4096) are GPU targets: ``benchmarks/gpu/check.py`` runs this script
with ``--device cuda --gemma``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("unfused", "sdpa", "flex")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _module(backend: str, a):
    import torch
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_ar.models import ModelConfig
    from megatron_ar.models.spec import core_attention_spec

    cfg = ModelConfig(num_layers=2, hidden_size=a.heads * a.head_dim, ffn_hidden_size=64,
                      num_attention_heads=a.heads, num_query_groups=a.groups,
                      kv_channels=a.head_dim, vocab_size=256, seq_length=a.seq,
                      family="gpt", activation="gelu", attn_logit_softcap=a.softcap or None,
                      sliding_window=a.window or None, sliding_window_pattern="all",
                      attention_backend=backend)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    tc = cfg.to_transformer_config(tp=1, pp=1, params_dtype=dtype)
    spec = core_attention_spec(cfg, backend)
    return spec.module(config=tc, layer_number=1, attn_mask_type=AttnMaskType.causal,
                       attention_type="self", **spec.params)


def worker(backend: str, a) -> dict:
    import torch

    from megatron_ar.runtime import init_distributed
    from megatron_ar.runtime.spawn import find_free_port

    init_distributed(tp=1, pp=1, rank=0, world_size=1, master_addr="127.0.0.1",
                     master_port=find_free_port(), backend="nccl" if a.device == "cuda" else "gloo")
    from megatron_ar.runtime import current_device

    dev = current_device()  # CUDA, or the CPU emulation's device megatron-core's buffers use
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    gen = torch.Generator().manual_seed(0)
    shape_q = (a.seq, a.batch, a.heads, a.head_dim)
    shape_kv = (a.seq, a.batch, a.groups, a.head_dim)
    q, k, v = (torch.randn(s, generator=gen).mul(2.0).to(dev, dtype) for s in
               (shape_q, shape_kv, shape_kv))
    mod = _module(backend, a).to(dev)
    backward = not (backend == "flex" and a.device == "cpu")
    if a.device == "cuda":
        assert dev.type == "cuda", dev
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mib()

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    def fwd():
        with torch.no_grad():
            return mod(q, k, v, None)

    def fwd_bwd():
        qq, kk, vv = (t.detach().requires_grad_(True) for t in (q, k, v))
        out = mod(qq, kk, vv, None)
        out.float().square().mean().backward()
        return out

    out = fwd()  # warm-up (FlexAttention compiles on CUDA here)
    times = {"fwd": [], "fwd_bwd": []}
    for _ in range(a.repeats):
        sync()
        t0 = time.perf_counter()
        fwd()
        sync()
        times["fwd"].append(time.perf_counter() - t0)
    if backward:
        fwd_bwd()
        for _ in range(a.repeats):
            sync()
            t0 = time.perf_counter()
            fwd_bwd()
            sync()
            times["fwd_bwd"].append(time.perf_counter() - t0)
    if a.device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _peak_rss_mib() - base
    return {"backend": backend, "fwd_ms": 1e3 * statistics.median(times["fwd"]),
            "fwd_bwd_ms": 1e3 * statistics.median(times["fwd_bwd"]) if backward else None,
            "peak_mib": round(peak, 1), "out": out.float().cpu().flatten()[::97].tolist()}


def _run_worker(backend: str, argv) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", backend] + list(argv)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if p.returncode != 0:
        return {"backend": backend, "error": p.stderr.strip().splitlines()[-1:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--softcap", type=float, default=0.0, help="attention soft-cap (0: none)")
    ap.add_argument("--window", type=int, default=0, help="sliding window (0: none)")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gemma", action="store_true",
                    help="Gemma-2-9B's attention: seq 4096, 16 heads, 8 groups, head 256, cap "
                         "50, window 4096, bf16")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = _parser().parse_args(argv)
    if a.gemma:
        a.seq, a.heads, a.groups, a.head_dim = 4096, 16, 8, 256
        a.softcap, a.window, a.dtype = 50.0, 4096, "bf16"
    if a.worker:
        print(json.dumps(worker(a.worker, a)))
        return 0
    passed = [x for x in argv if x != "--json"]
    backends = [b for b in BACKENDS if not (b == "sdpa" and a.softcap)]
    rows = {b: _run_worker(b, passed) for b in backends}
    ref = rows["unfused"]
    if "error" in ref:
        print(f"the unfused reference failed: {ref['error']}", file=sys.stderr)
        return 1
    summary = {"device": a.device, "seq": a.seq, "batch": a.batch, "heads": a.heads,
               "groups": a.groups, "head_dim": a.head_dim, "softcap": a.softcap or None,
               "window": a.window or None, "dtype": a.dtype, "backends": {}}
    print(f"attention: seq {a.seq} batch {a.batch} heads {a.heads}/{a.groups} head_dim "
          f"{a.head_dim} cap {a.softcap or '-'} window {a.window or '-'} {a.dtype} on {a.device}")
    print(f"{'backend':<9}{'fwd ms':>10}{'fwd+bwd ms':>12}{'peak MiB':>10}{'fwd x':>8}"
          f"{'f+b x':>8}{'mem x':>8}{'max|d|':>11}")
    for b, r in rows.items():
        if "error" in r:
            print(f"{b:<9} failed: {r['error']}")
            summary["backends"][b] = {"error": r["error"]}
            continue
        diff = max(abs(x - y) for x, y in zip(r["out"], ref["out"])) if "out" in ref else None

        def ratio(key):
            return (ref[key] / r[key]) if r.get(key) and ref.get(key) else None

        entry = {k: r[k] for k in ("fwd_ms", "fwd_bwd_ms", "peak_mib")}
        entry.update(speedup_fwd=ratio("fwd_ms"), speedup_fwd_bwd=ratio("fwd_bwd_ms"),
                     memory_ratio=(ref["peak_mib"] / r["peak_mib"]) if r["peak_mib"] > 0
                     else None, max_abs_diff_vs_unfused=diff)
        summary["backends"][b] = entry

        def f(x, fmt):
            width = int(fmt.split(".")[0])
            return format(x, fmt) if x is not None else "-".rjust(width)

        print(f"{b:<9}{f(r['fwd_ms'], '10.2f')}{f(r['fwd_bwd_ms'], '12.2f')}"
              f"{f(r['peak_mib'], '10.1f')}{f(entry['speedup_fwd'], '8.2f')}"
              f"{f(entry['speedup_fwd_bwd'], '8.2f')}{f(entry['memory_ratio'], '8.2f')}"
              f"{f(diff, '11.2e')}")
    print("ratios: reference time (or memory) / backend's; > 1 means faster (or smaller)")
    if a.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

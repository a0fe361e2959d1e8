"""Fused vocab-parallel cross-entropy vs megatron-core's, forward + backward time and peak memory.

    python benchmarks/cross_entropy.py [--tokens 2048 --vocab 32768] [--gemma] [--tp 1]
        [--dtype float32|bfloat16] [--softcap 30 | --no-softcap] [--reps 3]
        [--device cpu|cuda] [--json]

Compares, at TP=1 on one shard of ``vocab / tp`` columns (what one rank of a TP=tp run holds):
- ``ours``: ``megatron_ar.kernels.cross_entropy.fused_vocab_parallel_cross_entropy(logits,
  target, softcap=cap)`` (the compiled extension for the device; the script says which);
- ``megatron``: ``softcap(logits)`` as an explicit op, then megatron-core's
  ``tensor_parallel.vocab_parallel_cross_entropy`` (which upcasts to fp32 itself), i.e. what
  ArGPTModel runs with ``model.fused_kernels: off``.
``--gemma``: 4096 tokens x vocab 128256 (split by ``--tp``) with soft-cap 30, a Gemma-2-style
final layer at a Llama-3-size vocabulary.

Each implementation runs in its own fresh process (so one's allocator state and peak do not
leak into the other's): inputs are allocated and an 8-row warm-up step runs (imports, library
loading), then one untimed forward+backward measures the
peak memory above that baseline (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the process's
peak RSS, VmHWM, over its RSS before the step, the peak mark being reset first through
``/proc/self/clear_refs`` (Linux); glibc serves these large blocks by mmap and returns them, so
RSS tracks the live tensors), then ``--reps`` timed steps (the
logits are refilled before each step outside the timing: both implementations overwrite them).
Prints milliseconds per step, extra peak MiB, and the ratios ours/megatron; ``--json`` puts the
summary as one JSON object on the last stdout line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _status_mib(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (VmHWM; writing 5 to clear_refs, Linux >= 4.0) so that
    earlier peaks (input creation, imports) do not count; returns the current RSS in MiB."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")
    return _status_mib("VmRSS")


def _child(args) -> dict:
    import torch

    from megatron_ar.kernels import extension

    dev = torch.device(args.device)
    if args.impl == "megatron":
        from megatron_ar.runtime import find_free_port, init_distributed

        init_distributed(tp=1, pp=1, rank=0, world_size=1, master_addr="127.0.0.1",
                         master_port=find_free_port(),
                         backend="nccl" if dev.type == "cuda" else "gloo")
        from megatron_ar.runtime import current_device

        # megatron-core on a CPU runs through the emulation layer: its collectives take the
        # tensors of the (emulated) device, as they would on a GPU
        dev = current_device()
    dtype = getattr(torch, args.dtype)
    rows, v = args.tokens, args.vocab // args.tp
    cap = args.softcap
    gen = torch.Generator().manual_seed(0)  # the same numbers for both implementations
    source = (torch.randn(rows, 1, v, generator=gen) * 4).to(dev, dtype)
    target = torch.randint(0, v, (rows, 1), generator=gen).to(dev)
    grad = torch.ones(rows, 1, device=dev)
    x = torch.empty_like(source).requires_grad_(True)

    if args.impl == "ours":
        from megatron_ar.kernels.cross_entropy import fused_vocab_parallel_cross_entropy

        def step():
            fused_vocab_parallel_cross_entropy(x, target, softcap=cap).backward(grad)
    else:
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        def step():
            z = torch.tanh(x / cap) * cap if cap else x
            vocab_parallel_cross_entropy(z, target).backward(grad)

    def refill():
        with torch.no_grad():
            x.copy_(source)
        x.grad = None

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    # Warm-up on 8 rows: imports, extension loading and first-call allocations happen before
    # the baseline, so the peak below is the step's own working memory.
    small = source[:8].clone().requires_grad_(True)
    if args.impl == "ours":
        fused_vocab_parallel_cross_entropy(small, target[:8], softcap=cap).backward(grad[:8])
    else:
        zs = torch.tanh(small / cap) * cap if cap else small
        vocab_parallel_cross_entropy(zs, target[:8]).backward(grad[:8])
    del small
    refill()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2 ** 20
    else:
        base = _reset_peak_rss()
    step()
    sync()
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak = _status_mib("VmHWM")
    times = []
    for _ in range(args.reps):
        refill()
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    built = extension("xent", dev) is not None
    # max(0, .): RSS can end a few pages below the baseline when the allocator trims
    return {"ms": 1e3 * min(times), "extra_peak_mib": max(0.0, peak - base),
            "logits_mib": source.numel() * source.element_size() / 2 ** 20,
            "extension": built if args.impl == "ours" else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=2048, help="rows (sequence x micro-batch)")
    p.add_argument("--vocab", type=int, default=32768, help="global vocabulary (split by --tp)")
    p.add_argument("--tp", type=int, default=1, help="the shard measured is vocab / tp columns")
    p.add_argument("--gemma", action="store_true",
                   help="4096 tokens x vocab 128256, soft-cap 30 (Gemma-2-style, one TP shard)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--softcap", type=float, default=30.0)
    p.add_argument("--no-softcap", dest="softcap", action="store_const", const=None)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", action="store_true")
    p.add_argument("--impl", choices=("ours", "megatron"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.gemma:
        args.tokens, args.vocab, args.softcap = 4096, 128256, 30.0
    if args.vocab % args.tp:
        p.error(f"--vocab {args.vocab} is not divisible by --tp {args.tp}")
    if args.impl:  # child process
        print(json.dumps(_child(args)))
        return 0
    res = {}
    for impl in ("ours", "megatron"):
        cmd = [sys.executable, os.path.abspath(__file__), "--impl", impl, "--tokens",
               str(args.tokens), "--vocab", str(args.vocab), "--tp", str(args.tp), "--dtype",
               args.dtype, "--reps", str(args.reps), "--device", args.device]
        cmd += ["--softcap", str(args.softcap)] if args.softcap else ["--no-softcap"]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            sys.exit(f"{impl} run failed:\n{out.stderr[-4000:]}")
        res[impl] = json.loads(out.stdout.strip().splitlines()[-1])
    o, m = res["ours"], res["megatron"]
    summary = {
        "device": args.device, "dtype": args.dtype, "tokens": args.tokens,
        "vocab_shard": args.vocab // args.tp, "tp": args.tp, "softcap": args.softcap,
        "logits_mib": o["logits_mib"], "ours_extension": o["extension"],
        "ours_ms": o["ms"], "megatron_ms": m["ms"], "time_ratio": o["ms"] / m["ms"],
        "ours_extra_peak_mib": o["extra_peak_mib"],
        "megatron_extra_peak_mib": m["extra_peak_mib"],
        "memory_ratio": o["extra_peak_mib"] / max(m["extra_peak_mib"], 1e-9),
        "ours_rows_kib": 4 * 4 * args.tokens / 1024,  # what ours keeps: fp32 max/sumexp/target
    }
    print(f"{args.device} {args.dtype}: {args.tokens} tokens x {args.vocab // args.tp} vocab "
          f"shard (TP={args.tp}), soft-cap {args.softcap}, logits {o['logits_mib']:.0f} MiB; "
          f"ours uses the {'compiled extension' if o['extension'] else 'torch FALLBACK'}")
    print(f"  fwd+bwd   ours {o['ms']:9.1f} ms   megatron {m['ms']:9.1f} ms   "
          f"ratio {summary['time_ratio']:.2f}")
    print(f"  extra peak ours {o['extra_peak_mib']:8.1f} MiB  megatron "
          f"{m['extra_peak_mib']:8.1f} MiB  ratio {summary['memory_ratio']:.2f}")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

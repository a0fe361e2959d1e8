"""Fused RMSNorm (+ residual add) vs the unfused module: forward + backward time and memory.

    python benchmarks/rmsnorm.py [--device cpu|cuda] [--tokens 8192] [--hidden 4096]
        [--dtypes float32,bfloat16] [--modes none,add_after] [--kinds 1+w] [--reps 5] [--json]

Ours: ``megatron_ar.kernels.rmsnorm.rms_norm`` through the compiled extension of the device
(``rmsnorm_cpu`` here, ``rmsnorm`` on a GPU; the run stops if it is not built). Reference,
measured in the same run on the same inputs: our unfused
:class:`megatron_ar.models.modules.RMSNorm` (``fused="off"``), with the residual added by torch
(``add_after``: ``residual + norm(x)``; ``add_before``: ``h = x + residual; norm(h)``).

Per case: median wall time of ``reps`` forward + backward passes (after one warm-up; CUDA
synchronised), the bytes autograd saves for backward (``saved_tensors_hooks``, storages counted
once: the activation memory a layer keeps until its backward) and the peak memory of one
forward + backward above the inputs: ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the
peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` before each case) minus the RSS
once the inputs exist, in one child process started with ``MALLOC_MMAP_THRESHOLD_`` set so that
freed tensors are returned to the OS (glibc would otherwise keep them, and a later case would
reuse resident pages without raising the peak). Prints ratios ours / reference (< 1: ours is
faster / smaller); ``--json`` puts a summary on the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _case_inputs(a, dtype, mode, kind, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.tokens, a.hidden, generator=g).to(device=device, dtype=dtype)
    res = torch.randn(a.tokens, a.hidden, generator=g).to(device=device, dtype=dtype) \
        if mode != "none" else None
    cot = torch.randn(a.tokens, a.hidden, generator=g).to(device=device, dtype=dtype)
    return x, res, cot


def _module(a, dtype, kind, device, fused):
    from megatron_ar.models.modules import RMSNorm

    cfg = SimpleNamespace(layernorm_zero_centered_gamma=kind == "1+w", params_dtype=dtype,
                          sequence_parallel=False)
    m = RMSNorm(cfg, a.hidden, eps=1e-6, learnable=kind != "none", fused=fused).to(device)
    if m.weight is not None:
        with torch.no_grad():
            m.weight.normal_(0.0 if kind == "1+w" else 1.0, 0.3)
    return m


def _step(m, impl, mode, x, res, cot):
    """One forward + backward; returns the saved-for-backward bytes."""
    from megatron_ar.kernels.rmsnorm import rms_norm

    x = x.detach().requires_grad_(True)
    r = res.detach().requires_grad_(True) if res is not None else None
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if impl == "ours":
            out = rms_norm(x, m.weight, m.eps, zero_centered_gamma=m.zero_centered_gamma,
                           residual=r, mode=mode)
        elif mode == "none":
            out = m(x)
        elif mode == "add_after":
            out = r + m(x)
        else:
            h = x + r
            out = (m(h), h)
    outs = out if isinstance(out, tuple) else (out,)
    torch.autograd.backward(outs, [cot] * len(outs))
    return sum(seen.values())


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _cases(a):
    return [(mode, kind, dtype) for dtype in a.dtypes.split(",") for mode in a.modes.split(",")
            for kind in a.kinds.split(",")]


def child_peaks(a) -> None:
    """--child-peaks: every case's CPU peak, one after the other in this process. The peak RSS
    (VmHWM) is reset before each forward + backward (``/proc/self/clear_refs``), and the parent
    sets ``MALLOC_MMAP_THRESHOLD_`` so that freed tensors go back to the OS between cases."""
    device = torch.device("cpu")
    out = {}
    for mode, kind, dtype in _cases(a):
        for impl in ("ours", "reference"):
            m = _module(a, DTYPES[dtype], kind, device, "on" if impl == "ours" else "off")
            x, res, cot = _case_inputs(a, DTYPES[dtype], mode, kind, device)
            _step(m, impl, mode, x, res, cot)  # first-call costs (imports, thread pool)
            base = _status_bytes("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            _step(m, impl, mode, x, res, cot)
            out[f"{impl},{mode},{kind},{dtype}"] = max(0, _status_bytes("VmHWM") - base)
            del m, x, res, cot
    print(json.dumps(out))


def _cpu_peaks(a) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child-peaks", "--tokens", str(a.tokens),
           "--hidden", str(a.hidden), "--dtypes", a.dtypes, "--modes", a.modes, "--kinds",
           a.kinds]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=os.pathsep.join(
        [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        sys.exit(f"peak-memory child failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _peak(impl, mode, kind, dtype, device, m, x, res, cot, cpu_peaks) -> int:
    if device.type != "cuda":
        return cpu_peaks[f"{impl},{mode},{kind},{dtype}"]
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    _step(m, impl, mode, x, res, cot)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def bench_case(a, mode, kind, dtype_name, device, cpu_peaks):
    dtype = DTYPES[dtype_name]
    x, res, cot = _case_inputs(a, dtype, mode, kind, device)
    row = {"mode": mode, "kind": kind, "dtype": dtype_name}
    for impl in ("ours", "reference"):
        m = _module(a, dtype, kind, device, "on" if impl == "ours" else "off")
        saved = _step(m, impl, mode, x, res, cot)  # warm-up
        times = []
        for _ in range(a.reps):
            _sync(device)
            t0 = time.perf_counter()
            _step(m, impl, mode, x, res, cot)
            _sync(device)
            times.append(time.perf_counter() - t0)
        row[impl] = {"ms": 1e3 * statistics.median(times), "saved_bytes": saved,
                     "peak_bytes": _peak(impl, mode, kind, dtype_name, device, m, x, res, cot,
                                           cpu_peaks)}
    for key in ("ms", "saved_bytes", "peak_bytes"):
        ref = row["reference"][key]
        row[f"{key}_ratio"] = row["ours"][key] / ref if ref else None
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--modes", default="none,add_after",
                   help="comma list of none, add_after, add_before")
    p.add_argument("--kinds", default="1+w", help="comma list of none, w, 1+w")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child-peaks", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child_peaks:
        child_peaks(a)
        return 0
    from megatron_ar.kernels import extension

    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch.cuda.is_available() is False")
    ext_name = "rmsnorm" if device.type == "cuda" else "rmsnorm_cpu"
    if extension("rmsnorm", device) is None:
        sys.exit(f"megatron_ar._ext.{ext_name} is not built: python setup.py build_ext --inplace")
    rows = []
    cpu_peaks = _cpu_peaks(a) if device.type == "cpu" else {}
    print(f"fused RMSNorm vs unfused module: {a.tokens} tokens x {a.hidden}, device "
          f"{a.device}, {torch.get_num_threads()} threads, median of {a.reps}")
    print(f"{'mode':>10} {'w':>4} {'dtype':>9} | {'ours ms':>8} {'ref ms':>8} {'ratio':>6} | "
          f"{'saved MB':>9} {'ref':>7} {'ratio':>6} | {'peak MB':>8} {'ref':>7} {'ratio':>6}")
    mb = 2.0 ** 20
    fmt = lambda v: f"{v:6.2f}" if v is not None else "   n/a"  # noqa: E731
    for mode, kind, dtype in _cases(a):
        r = bench_case(a, mode, kind, dtype, device, cpu_peaks)
        rows.append(r)
        o, f = r["ours"], r["reference"]
        print(f"{mode:>10} {kind:>4} {dtype:>9} | {o['ms']:8.1f} {f['ms']:8.1f} "
              f"{fmt(r['ms_ratio'])} | {o['saved_bytes'] / mb:9.1f} "
              f"{f['saved_bytes'] / mb:7.1f} {fmt(r['saved_bytes_ratio'])} | "
              f"{o['peak_bytes'] / mb:8.1f} {f['peak_bytes'] / mb:7.1f} "
              f"{fmt(r['peak_bytes_ratio'])}", flush=True)
    summary = {"benchmark": "rmsnorm", "device": a.device, "tokens": a.tokens,
               "hidden": a.hidden, "threads": torch.get_num_threads(), "reps": a.reps,
               "extension": ext_name, "cases": rows}
    if a.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

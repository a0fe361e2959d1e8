"""Peak memory of streaming checkpoint conversion vs checkpoint size (target: peak RSS / bytes < 0.25).

    python benchmarks/convert_memory.py [--hidden 2048 --layers 22 ...] [--dtype float32]
        [--work-dir DIR] [--keep] [--json]

1. Writes a synthetic Llama checkpoint (default 1.12B parameters: 22 layers, hidden 2048, GQA
   16/4 heads, SwiGLU 5632, vocab 32000 untied) to disk, streaming tensor by tensor
   (``megatron_ar.io.safetensors.ShardedSafetensorsWriter``, 2 GB shards + index), so
   generation itself stays small.
2. Runs ``tools/checkpoint/convert.py`` HF -> Megatron (TP=2 layout) and Megatron -> HF, each in a
   fresh process; each reports ``ru_maxrss`` (peak RSS over the whole process) and its RSS just
   before the first tensor is streamed (torch/megatron-core/transformers imports, meta model,
   plan: the fixed cost, the baseline measured in the same process as the conversion).
3. Checks the round trip is bit-identical (streamed comparison, one tensor at a time).

Prints, per direction, peak RSS / checkpoint bytes (the target) and (peak - baseline) /
checkpoint bytes (what streaming adds: about the largest tensor plus one shard);
``--json`` puts them on the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_synthetic_hf(directory: str, hidden: int, layers: int, heads: int, kv_heads: int,
                      ffn: int, vocab: int, dtype: torch.dtype) -> int:
    """Write a random LlamaForCausalLM checkpoint tensor by tensor; returns its tensor bytes."""
    from transformers import LlamaConfig

    from megatron_ar.io.safetensors import ShardedSafetensorsWriter
    from megatron_ar.checkpoint.mapping import expected_hf_shapes, weight_table
    from megatron_ar.models.hf import expected_shape, from_hf_config

    hf_cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, max_position_embeddings=4096,
                         tie_word_embeddings=False, dtype=str(dtype).replace("torch.", ""))
    cfg = from_hf_config(hf_cfg)
    plan = []
    for e in weight_table(cfg):
        for name, shape in expected_hf_shapes(e, expected_shape(cfg, e.megatron), cfg).items():
            plan.append((name, shape, dtype))
    os.makedirs(directory, exist_ok=True)
    writer = ShardedSafetensorsWriter(directory, plan, max_shard_bytes=2 * 1024 ** 3)
    gen = torch.Generator().manual_seed(0)
    for name, shape, _ in plan:
        t = torch.randn(shape, generator=gen, dtype=torch.float32).mul_(0.02).to(dtype)
        writer.write(name, t)
        del t
    writer.finish()
    hf_cfg.save_pretrained(directory)
    return writer.total_size


def run_convert(args) -> dict:
    cmd = [sys.executable, os.path.join(REPO, "tools", "checkpoint", "convert.py"), *args,
           "--json", "--no-progress"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stderr[-4000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def same_tensors(a_dir: str, b_dir: str) -> int:
    from megatron_ar.io.safetensors import SafetensorsReader

    a, b = SafetensorsReader(a_dir), SafetensorsReader(b_dir)
    if sorted(a.keys()) != sorted(b.keys()):
        raise AssertionError("tensor names differ after the round trip")
    for name in a.keys():
        x, y = a.get(name), b.get(name)
        if x.dtype != y.dtype or not torch.equal(x, y):
            raise AssertionError(f"{name} differs after the round trip")
    return len(a.keys())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=22)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=5632)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--target-tp", type=int, default=2)
    p.add_argument("--work-dir", default=None, help="default: a temporary directory")
    p.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    work = a.work_dir or tempfile.mkdtemp(prefix="convert_memory_")
    hf, meg, back = (os.path.join(work, n) for n in ("hf", "megatron", "hf_back"))
    for d in (hf, meg, back):
        shutil.rmtree(d, ignore_errors=True)
    try:
        t0 = time.time()
        nbytes = make_synthetic_hf(hf, a.hidden, a.layers, a.heads, a.kv_heads, a.ffn, a.vocab,
                                   getattr(torch, a.dtype))
        gen_s = time.time() - t0
        common = ["--model-type", "llama"]
        imp = run_convert(common + ["--loader", "hf", "--saver", "megatron", "--load-dir", hf,
                                    "--save-dir", meg, "--target-tensor-parallel-size",
                                    str(a.target_tp)])
        exp = run_convert(common + ["--loader", "megatron", "--saver", "hf", "--load-dir", meg,
                                    "--save-dir", back])
        n_tensors = same_tensors(hf, back)
    finally:
        if not a.keep and a.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    params = imp["num_elements"]
    summary = {"parameters": params, "checkpoint_bytes": nbytes, "dtype": a.dtype,
               "generate_seconds": round(gen_s, 1), "roundtrip_bit_identical_tensors": n_tensors}
    print(f"synthetic Llama: {params / 1e9:.3f}B parameters, {nbytes / 1e9:.2f} GB "
          f"({a.dtype}), generated in {gen_s:.0f} s")
    for key, r in (("hf_to_megatron", imp), ("megatron_to_hf", exp)):
        ratio = r["peak_rss_bytes"] / nbytes
        added = (r["peak_rss_bytes"] - r["rss_before_streaming_bytes"]) / nbytes
        summary[key] = {"peak_rss_bytes": r["peak_rss_bytes"],
                        "baseline_rss_bytes": r["rss_before_streaming_bytes"],
                        "seconds": r["seconds"],
                        "peak_rss_over_checkpoint_bytes": round(ratio, 4),
                        "added_rss_over_checkpoint_bytes": round(added, 4)}
        print(f"{key}: {r['seconds']:.0f} s, peak RSS {r['peak_rss_bytes'] / 1e6:.0f} MB "
              f"(baseline {r['rss_before_streaming_bytes'] / 1e6:.0f} MB) -> peak/checkpoint "
              f"{ratio:.3f} "
              f"(target < 0.25), added/checkpoint {added:.3f}")
    summary["target"] = 0.25
    summary["passed"] = all(summary[k]["peak_rss_over_checkpoint_bytes"] < 0.25
                            for k in ("hf_to_megatron", "megatron_to_hf"))
    print(f"round trip bit-identical over {n_tensors} tensors; "
          f"{'PASS' if summary['passed'] else 'FAIL'} (peak RSS / checkpoint bytes < 0.25)")
    if a.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

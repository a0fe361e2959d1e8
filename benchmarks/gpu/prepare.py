"""Prepare the GPU check on a CPU machine: everything ``check.sh`` needs, in one folder.

    python benchmarks/gpu/prepare.py [--out .gpu-check] [--steps 30] [--models llama,gemma2]

The GPU machine has neither our test material nor a network, so this builds, under ``--out``
(git-ignored, a few MB):
1. ``corpus/``: a small Arabic / English / code corpus from the locally installed text packages,
   its MorphBPE tokenizer (2,048 tokens) and ``.bin/.idx`` datasets, with megatron_ar's own
   quickstart builder (``python -m examples.quickstart.build_data``).
2. ``<model>/hf``: a random tiny HF checkpoint per model (transformers ``LlamaForCausalLM`` /
   ``Gemma2ForCausalLM`` from ``to_hf_config`` of the ``tiny-llama`` / ``tiny-gemma2`` presets,
   HF's initialisation, seed 0), and ``<model>/megatron``: it converted with
   ``megatron_ar.checkpoint.convert`` (the library behind ``tools/checkpoint/convert.py``).
3. ``reference.json``: the fp32 CPU losses of ``--steps`` steps of ``megatron_ar.train`` (one
   process, gloo) from that converted checkpoint, with the recipe check.py reruns in bf16 on
   CUDA (``gpu_check_common.recipe_dict``), plus the validation loss after the last step.
4. ``manifest.json``: sizes, versions and timings.

Reruns reuse finished outputs (corpus, checkpoints); the reference runs are always redone.
Exit status 1 when a reference run fails (its log tail is printed).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import gpu_check_common as common  # noqa: E402


def build_corpus(folder: str) -> dict:
    """The quickstart's corpus builder (its documented command, run from the repository root:
    examples/ is a demo folder, not an installed package)."""
    import subprocess

    cmd = [sys.executable, "-m", "examples.quickstart.build_data", "--out",
           os.path.join(os.path.abspath(folder), "corpus"), "--vocab-size", str(common.VOCAB),
           "--n-ar", "300", "--n-en", "300", "--n-code", "12", "--n-valid", "16", "--json"]
    res = subprocess.run(cmd, cwd=common.REPO, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    shutil.rmtree(os.path.join(folder, "corpus", "jsonl"), ignore_errors=True)  # not needed
    return out


def build_checkpoints(folder: str, name: str, seed: int = 0) -> dict:
    """Random HF checkpoint of model ``name`` and its megatron conversion (skipped if done)."""
    import torch
    from transformers import AutoModelForCausalLM

    from megatron_ar.checkpoint import convert
    from megatron_ar.models import to_hf_config

    p = common.paths(folder, name)
    if not os.path.isfile(os.path.join(p["hf"], "config.json")):
        hf_config = to_hf_config(common.model_config(name))
        hf_config._attn_implementation = "eager"
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(hf_config).float()
        tmp = p["hf"] + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        os.replace(tmp, p["hf"])
    if not os.path.isdir(p["megatron"]):
        convert(common.model_config(name).family, "hf", "megatron", p["hf"], p["megatron"],
                target_tensor_parallel_size=1, progress=False)
    return p


def reference_run(folder: str, name: str, steps: int, timeout: float = 1800) -> dict:
    run_dir = os.path.join(folder, "ref-runs", name)
    shutil.rmtree(run_dir, ignore_errors=True)
    recipe = common.write_recipe(folder, name, run_dir, bf16=False, steps=steps)
    t0 = time.time()
    rc, out = common.torchrun_train(recipe, timeout)
    losses, evals = common.read_metrics(run_dir)
    if rc != 0 or len(losses) != steps:
        raise RuntimeError(f"reference run of {name} failed (rc {rc}, {len(losses)}/{steps} "
                           f"steps):\n{out[-4000:]}")
    result = {"losses": losses, "steps": steps, "seconds": round(time.time() - t0, 1),
              "eval": evals[-1] if evals else None,
              "recipe": common.recipe_dict(".", name, "RUN_DIR", bf16=False, steps=steps)}
    shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints and index caches are not carried
    return result


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)


def prepare(folder: str, steps: int = common.STEPS, models=tuple(common.MODELS)) -> dict:
    import torch
    import transformers

    import megatron.core

    os.makedirs(folder, exist_ok=True)
    t0 = time.time()
    build_corpus(folder)
    timings = {"corpus_s": round(time.time() - t0, 1)}
    reference = {}
    for name in models:
        t1 = time.time()
        build_checkpoints(folder, name)
        timings[f"{name}_checkpoints_s"] = round(time.time() - t1, 1)
        reference[name] = reference_run(folder, name, steps)
        print(f"[prepare] {name}: fp32 CPU reference, {steps} steps in "
              f"{reference[name]['seconds']:.0f} s, loss {reference[name]['losses'][0]:.4f} -> "
              f"{reference[name]['losses'][-1]:.4f}", flush=True)
    ref_path = os.path.join(folder, common.REFERENCE)
    with open(ref_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(reference, f, indent=1)
    os.replace(ref_path + ".tmp", ref_path)
    manifest = {"bytes": folder_bytes(folder), "models": list(models), "steps": steps,
                "timings": timings, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                             "megatron_core": megatron.core.__version__,
                             "transformers": transformers.__version__}}
    with open(os.path.join(folder, common.MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    print(f"[prepare] {folder}: {manifest['bytes'] / 1e6:.1f} MB", flush=True)
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=common.DEFAULT_DIR)
    ap.add_argument("--steps", type=int, default=common.STEPS)
    ap.add_argument("--models", default=",".join(common.MODELS))
    a = ap.parse_args(argv)
    models = tuple(m for m in a.models.split(",") if m)
    unknown = [m for m in models if m not in common.MODELS]
    if unknown:
        print(f"error: --models: unknown {unknown}, choose from {list(common.MODELS)}",
              file=sys.stderr)
        return 2
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    try:
        prepare(os.path.abspath(a.out), a.steps, models)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

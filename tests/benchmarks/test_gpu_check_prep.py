"""The prepared GPU check (benchmarks/gpu) on the CPU, so that a typo cannot waste GPU minutes.

1. ``prepare.py`` builds its folder here (corpus + tokenizer from the installed material, tiny
   HF Llama / Gemma-2 checkpoints, their conversions, fp32 CPU reference losses) and it is small
   enough to carry (< 30 MB). Oracles: the step-0 loss of a freshly initialised model is
   ln(vocab) to within 0.05 (HF's 0.02-std init gives near-uniform logits), the converted
   checkpoint's architecture equals the preset's, the reference recipe is the one check.py
   reruns.
2. ``check.py`` runs every part end to end in its plumbing mode (``--device cpu --tiny --steps
   2``): bf16 training through ``megatron_ar.train`` compared with the fp32 reference steps,
   logits vs transformers (fp32 must agree to 1e-4 on the CPU), the perf slices with tiny
   shapes, the memory probe when importable. GPU-only figures must be reported as skipped.
Measured on 2 loaded cores: prepare ~7 min, plumbing ~10 min (each part is its own process
that imports torch + megatron-core).
"""
import json
import math
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks", "gpu"))
import check  # noqa: E402
import gpu_check_common as common  # noqa: E402
import prepare  # noqa: E402

pytestmark = pytest.mark.slow

STEPS = 4


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, bukhari_records, python_docs_paths):
    folder = str(tmp_path_factory.mktemp("gpu-check"))
    manifest = prepare.prepare(folder, steps=STEPS)
    return folder, manifest


def test_prepare_writes_a_small_complete_folder(prepared):
    from megatron_ar.checkpoint import read_checkpoint_info

    folder, manifest = prepared
    total = prepare.folder_bytes(folder)
    assert 0 < manifest["bytes"] <= total < 30 * 2 ** 20  # manifest.json itself comes after
    with open(os.path.join(folder, common.REFERENCE), encoding="utf-8") as f:
        ref = json.load(f)
    assert set(ref) == set(common.MODELS)
    for name, r in ref.items():
        assert r["steps"] == STEPS and len(r["losses"]) == STEPS
        print(f"\n{name}: reference losses {r['losses']}")
        assert abs(r["losses"][0] - math.log(common.VOCAB)) < 0.05
        assert all(math.isfinite(x) for x in r["losses"])
        assert r["eval"]["valid"]["ar"]["tokens"] > 0
        assert r["recipe"] == common.recipe_dict(".", name, "RUN_DIR", bf16=False, steps=STEPS)
        p = common.paths(folder, name)
        assert os.path.isfile(os.path.join(p["hf"], "config.json"))
        got = read_checkpoint_info(p["megatron"]).model_config
        want = common.model_config(name)
        assert got.replace(name=want.name, hf_extra=want.hf_extra) == want
    assert not os.path.exists(os.path.join(folder, "ref-runs", "llama"))  # not carried


def test_check_plumbing_runs_every_part_on_cpu(prepared, tmp_path):
    folder, _ = prepared
    out = str(tmp_path / "out" / "gpu_check.json")
    rc = check.main(["--folder", folder, "--device", "cpu", "--tiny", "--steps", "2",
                     "--budget", "3000", "--out", out, "--work", str(tmp_path / "work")])
    with open(out, encoding="utf-8") as f:
        res = json.load(f)
    parts = res["parts"]
    print("\n" + "\n".join(res["summary"]))
    assert rc == 0 and res["failed"] == []
    assert list(parts) == list(check.PARTS) and len(res["summary"]) == len(check.PARTS)

    assert parts["env"]["status"] == "PASS" and parts["env"]["capabilities"]["cuda"] is False
    assert set(parts["env"]["fusions_bf16"]) == {"tiny-llama", "tiny-gemma2", "fanar-star-7b",
                                                 "fanar-prime-9b"}

    with open(os.path.join(folder, common.REFERENCE), encoding="utf-8") as f:
        ref = json.load(f)
    for name in common.MODELS:
        t = parts[f"train-{name}"]
        assert t["status"] == "PASS", t.get("log_tail")
        assert t["rc"] == 0 and t["steps_run"] == 2
        assert t["losses_fp32_cpu"] == ref[name]["losses"][:2]
        assert t["max_abs_diff"] <= common.LOSS_TOL

        lg = parts["logits"][name]
        assert lg["fp32_max_abs"] <= 1e-4  # fp32 on the CPU: the parity tests' tolerance
        assert lg["bf16_max_abs_vs_hf_bf16"] > 0  # a real bf16 run, not fp32 twice
    assert parts["logits"]["status"] == "PASS"

    for sl in check.SLICES:
        perf = parts[f"perf-{sl}"]
        assert perf["status"] == "PASS", perf.get("traceback")
        assert "GPU-only" in perf["note"] and "model_tflops" not in perf
        assert perf["flops_per_step"] > 0 and len(perf["step_times_s"]) == 2
        assert perf["losses"][0] == pytest.approx(math.log(perf["model"]["padded_vocab_size"]),
                                                  abs=0.5)
        mem = parts[f"mem-{sl}"]
        assert mem["status"] in ("PASS", "SKIP")
        if mem["status"] == "SKIP":
            assert mem["note"].startswith("not available")

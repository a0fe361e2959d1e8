"""tools/model_health.py on the real SmolLM2-135M weights with planted defects the report must
find (checks that fail when the analysis is wrong), and the Megatron-checkpoint reader against
the HF reader of the same weights.

Planted in a copy of SmolLM2: layer 3's q_proj replaced by a rank-4 matrix (effective rank must
drop to <= 4 while every other q_proj stays > 100 of 576), layer 6 an exact copy of layer 5
(block similarity 5-6 must be ~1 while every other adjacent pair of the real model is < 0.5),
one row of layer 2's gate_proj zeroed (one dead row, where the real model has none).
"""
import json
import os
import shutil
import sys

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def planted(smollm2_hf_dir, tmp_path_factory):
    from safetensors.torch import load_file, save_file

    d = tmp_path_factory.mktemp("planted")
    for f in os.listdir(smollm2_hf_dir):
        if f != "model.safetensors":
            shutil.copy(os.path.join(smollm2_hf_dir, f), d / f)
    sd = load_file(os.path.join(smollm2_hf_dir, "model.safetensors"))
    q = sd["model.layers.3.self_attn.q_proj.weight"]
    g = torch.Generator().manual_seed(0)
    low = torch.randn(q.shape[0], 4, generator=g) @ torch.randn(4, q.shape[1], generator=g)
    sd["model.layers.3.self_attn.q_proj.weight"] = (low * (q.std() / low.std())).to(q.dtype)
    for k in [k for k in sd if k.startswith("model.layers.5.")]:
        sd[k.replace("layers.5.", "layers.6.")] = sd[k].clone()
    sd["model.layers.2.mlp.gate_proj.weight"][17].zero_()
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


@pytest.fixture(scope="module")
def report(planted, tmp_path_factory):
    from megatron_ar_tools.model_health import main

    out = tmp_path_factory.mktemp("report") / "health"
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main([str(planted), "--out", str(out), "--json", "--no-progress"])
    assert rc == 0
    last = json.loads(buf.getvalue().strip().splitlines()[-1])
    with open(out / "health.json", encoding="utf-8") as f:
        return out, last, json.load(f)


def test_planted_low_rank_matrix(report):
    _, _, h = report
    per = h["per_tensor"]
    ranks = {i: per[f"model.layers.{i}.self_attn.q_proj.weight"]["effective_rank"]
             for i in range(30)}
    assert ranks[3] <= 4.0, ranks[3]
    assert min(r for i, r in ranks.items() if i != 3) > 100, ranks
    assert h["lowest_effective_rank"][0][0] == "model.layers.3.self_attn.q_proj.weight"


def test_duplicated_block(report):
    _, _, h = report
    adj = h["adjacent_similarity"]
    assert adj[5] > 0.999, adj[5]
    assert max(a for i, a in enumerate(adj) if i != 5) < 0.5, adj
    assert h["block_similarity"][5][6] == pytest.approx(adj[5])


def test_zeroed_row_is_dead(report):
    _, last, h = report
    assert h["per_tensor"]["model.layers.2.mlp.gate_proj.weight"]["dead_rows"] == 1
    assert h["dead_rows_total"] == 1 and last["dead rows"] == 1


def test_outputs_and_scripts(report):
    out, last, h = report
    assert sorted(os.listdir(out)) == sorted(["health.json", "histograms.png", "spectra.png",
                                              "block_similarity.png", "embedding_pca.png"])
    scripts = h["embedding_pca"]["scripts"]
    assert sum(v["count"] for v in scripts.values()) == 49152
    assert scripts["latin"]["count"] > 40000 and scripts["arabic"]["count"] > 0
    assert h["parameters"] == 134515008 and last["tensors"] == 272


def test_script_classes():
    from megatron_ar.checkpoint.health import script_of

    assert [script_of(t) for t in ("مرحبا", " hello", "2024", "{}();", "中文", " ", "Ġé")] == \
        ["arabic", "latin", "digits", "code", "other", "other", "latin"]


def test_megatron_checkpoint_reads_like_hf(tmp_path):
    """The same weights through both readers give the same report."""
    sys.path.insert(0, os.path.join(REPO, "tests", "checkpoint"))
    from mar_checkpoint_fixtures import tiny_hf_model

    from megatron_ar.checkpoint.convert import convert
    from megatron_ar.checkpoint.health import HealthConfig, model_health

    tiny_hf_model("gemma2").save_pretrained(str(tmp_path / "hf"))
    convert("gemma2", "hf", "megatron", str(tmp_path / "hf"), str(tmp_path / "meg"),
            progress=False)
    cfg = HealthConfig(plots=False)
    a = model_health(str(tmp_path / "hf"), str(tmp_path / "a"), cfg, progress=False)
    b = model_health(str(tmp_path / "meg"), str(tmp_path / "b"), cfg, progress=False)
    assert set(a["per_tensor"]) == set(b["per_tensor"])
    for k, v in a["per_tensor"].items():
        w = b["per_tensor"][k]
        assert v["histogram"] == w["histogram"] and v["shape"] == w["shape"], k
        if "effective_rank" in v:
            assert v["effective_rank"] == pytest.approx(w["effective_rank"], rel=1e-6), k
    import numpy as np

    assert np.allclose(a["block_similarity"], b["block_similarity"], atol=1e-9)

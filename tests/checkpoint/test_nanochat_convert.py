"""nanochat checkpoint import/export (megatron_ar.checkpoint.nanochat_io): a checkpoint written
the way nanochat's checkpoint_manager writes it (``model_<step>.pt`` with bf16 embeddings as on
a GPU, ``meta_<step>.json``) imports into a megatron dist checkpoint whose tensors are the
table's (checked against the in-memory conversion) and exports back bit-exact: same keys in the
same order, same dtypes, equal tensors, same meta JSON. Weights: the ``gqa`` parity fixture."""
import json
import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "models"))
import nanochat_workers as workers  # noqa: E402

from megatron_ar.checkpoint import CheckpointError  # noqa: E402

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STEP = 1200


def _write_nanochat(directory, state, meta):
    os.makedirs(directory, exist_ok=True)
    torch.save(state, os.path.join(directory, f"model_{STEP:06d}.pt"))
    with open(os.path.join(directory, f"meta_{STEP:06d}.json"), "w") as f:
        json.dump(meta, f, indent=2)


@pytest.fixture(scope="module")
def nanochat_dir(tmp_path_factory):
    fx = workers.load_fixture("gqa")
    state = workers.fixture_state(fx)
    for k in state:  # nanochat keeps wte and the value embeddings in the compute dtype
        if k == "transformer.wte.weight" or k.startswith("value_embeds."):
            state[k] = state[k].to(torch.bfloat16)
    meta = {"step": STEP, "val_bpb": 1.25, "model_config": fx["config"]["model"],
            "user_config": {"depth": 4}}
    d = str(tmp_path_factory.mktemp("nanochat"))
    _write_nanochat(d, state, meta)
    return d, state, meta


def test_import_export_bit_exact(nanochat_dir, tmp_path):
    from megatron_ar.checkpoint import megatron_io as mio
    from megatron_ar.checkpoint.nanochat_io import import_nanochat
    from megatron_ar.models.nanochat import nanochat_to_megatron

    src, state, meta = nanochat_dir
    mg_dir, back_dir = str(tmp_path / "mg"), str(tmp_path / "back")
    r = import_nanochat(src, mg_dir)
    assert r["step"] == STEP and r["num_tensors"] == len(state)
    info = mio.read_checkpoint_info(mg_dir)
    want = nanochat_to_megatron(state, info.model_config, keep_vocab_padding=True)
    with mio.single_process_group():
        layout = mio.layout_from_info(info)
        for name in ("decoder.layers.1.self_attention.linear_qkv.weight",
                     "decoder.layers.3.self_attention.value_embedding.weight", "smear.gate"):
            got = mio.load_param(layout, mg_dir, name)
            assert torch.equal(got[: want[name].shape[0]], want[name].float()), name
    # back through the CLI (tools/checkpoint/convert.py -> megatron_ar.checkpoint.convert)
    out = subprocess.run([sys.executable, "tools/checkpoint/convert.py", "--model-type",
                          "nanochat", "--loader", "megatron", "--saver", "nanochat",
                          "--load-dir", mg_dir, "--save-dir", back_dir, "--json",
                          "--no-progress"], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["direction"] == "megatron->nanochat"
    assert summary["num_parameters"] == len(state)
    back = torch.load(os.path.join(back_dir, f"model_{STEP:06d}.pt"), weights_only=True)
    assert list(back) == list(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    with open(os.path.join(back_dir, f"meta_{STEP:06d}.json")) as f:
        assert json.load(f) == meta


def test_unused_and_missing_tensors_raise(nanochat_dir, tmp_path):
    from megatron_ar.checkpoint.nanochat_io import import_nanochat

    _src, state, meta = nanochat_dir
    bad = str(tmp_path / "extra")
    _write_nanochat(bad, {**state, "transformer.h.0.attn.bias": torch.zeros(2)}, meta)
    with pytest.raises(CheckpointError, match="transformer.h.0.attn.bias"):
        import_nanochat(bad, str(tmp_path / "o1"))
    missing = dict(state)
    del missing["backout_lambda"]
    bad2 = str(tmp_path / "missing")
    _write_nanochat(bad2, missing, meta)
    with pytest.raises(CheckpointError, match="backout_lambda"):
        import_nanochat(bad2, str(tmp_path / "o2"))
    assert not os.path.exists(str(tmp_path / "o1")) and not os.path.exists(str(tmp_path / "o2"))

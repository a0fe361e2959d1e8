"""HF -> Megatron -> HF conversion of small random Llama / Gemma-2 checkpoints (single process).

Oracles: the original safetensors files (round trip must be bit-identical tensor by tensor),
``transformers.AutoModelForCausalLM.from_pretrained`` (the export must load with no custom
code), and megatron-core's own ``dist_checkpointing`` metadata (the chunk layout a TP=T save
produces). Logit parity of the converted weights inside the megatron model is checked in
test_convert_parity.py.
"""
import json
import math
import os
import shutil

import pytest
import torch

from mar_checkpoint_fixtures import (
    VOCAB,
    assert_bit_identical,
    read_safetensors_dir,
    tiny_hf_model,
)
from megatron_ar.checkpoint import (
    CheckpointError,
    ConfigMismatchError,
    UnknownModelTypeError,
    check_config_compatible,
    convert,
    read_checkpoint_info,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for kind in ("llama", "gemma2"):
        d = str(root / kind)
        tiny_hf_model(kind).save_pretrained(d)
        out[kind] = d
    return out


def _dcp_chunks(directory, key):
    from torch.distributed.checkpoint import FileSystemReader

    md = FileSystemReader(directory).read_metadata().state_dict_metadata[key]
    return sorted((tuple(c.offsets), tuple(c.sizes)) for c in md.chunks), tuple(md.size)


@pytest.mark.parametrize("kind,tp,pp", [("llama", 1, 1), ("llama", 2, 2), ("llama", 4, 1),
                                        ("gemma2", 1, 1), ("gemma2", 2, 1), ("gemma2", 2, 2)])
def test_roundtrip_bit_identical(hf_dirs, tmp_path, kind, tp, pp):
    src = hf_dirs[kind]
    meg, back = str(tmp_path / "meg"), str(tmp_path / "back")
    r1 = convert(kind, "hf", "megatron", src, meg, target_tensor_parallel_size=tp,
                 target_pipeline_parallel_size=pp, progress=False)
    padded = math.ceil(VOCAB[kind] / (128 * tp)) * 128 * tp
    assert r1.padded_vocab_size == padded and r1.vocab_size == VOCAB[kind]
    info = read_checkpoint_info(meg)
    assert (info.padded_vocab_size, info.tensor_model_parallel_size,
            info.pipeline_model_parallel_size, info.dtype) == (padded, tp, pp, "float32")
    assert info.model_config.family == kind

    # The stored shards are the ones a TP=tp run saves: column-parallel split on rows,
    # row-parallel on columns, gated fc1 as [gate_0..gate_T-1, up_0..up_T-1], norms whole.
    L = 4
    chunks, size = _dcp_chunks(meg, "decoder.layers.self_attention.linear_qkv.weight")
    assert len(chunks) == L * tp and all(s[1] == size[1] // tp for _, s in chunks)
    chunks, size = _dcp_chunks(meg, "decoder.layers.self_attention.linear_proj.weight")
    assert len(chunks) == L * tp and all(s[2] == size[2] // tp for _, s in chunks)
    chunks, size = _dcp_chunks(meg, "decoder.layers.mlp.linear_fc1.weight")
    assert len(chunks) == L * 2 * tp and all(s[1] == size[1] // (2 * tp) for _, s in chunks)
    chunks, size = _dcp_chunks(meg, "decoder.layers.self_attention.linear_qkv.layer_norm_weight")
    assert len(chunks) == L
    chunks, size = _dcp_chunks(meg, "embedding.word_embeddings.weight")
    assert size == (padded, 64) and len(chunks) == tp
    if kind == "gemma2":  # tied: no separate output layer; sandwich norms stored
        assert _dcp_chunks(meg, "decoder.layers.post_mlp_layernorm.weight")[1][0] == L
        with pytest.raises(KeyError):
            _dcp_chunks(meg, "output_layer.weight")

    r2 = convert(kind, "megatron", "hf", meg, back, progress=False)
    assert r2.num_parameters == r1.num_parameters
    assert_bit_identical(read_safetensors_dir(src), read_safetensors_dir(back))
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(back)
    assert type(reloaded).__name__ == ("LlamaForCausalLM" if kind == "llama"
                                       else "Gemma2ForCausalLM")
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    # conversion set up its own 1-process group and CPU emulation and removed both again
    from megatron_ar.runtime import cpu_emulation_installed

    assert not torch.distributed.is_initialized() and not cpu_emulation_installed()


def test_sharded_export_has_index(hf_dirs, tmp_path):
    meg, back = str(tmp_path / "meg"), str(tmp_path / "back")
    convert("llama", "hf", "megatron", hf_dirs["llama"], meg, progress=False)
    convert("llama", "megatron", "hf", meg, back, progress=False, max_shard_bytes=200_000)
    with open(os.path.join(back, "model.safetensors.index.json")) as f:
        index = json.load(f)
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and all(os.path.isfile(os.path.join(back, n)) for n in files)
    assert_bit_identical(read_safetensors_dir(hf_dirs["llama"]), read_safetensors_dir(back))
    # ... and our reader reads an indexed checkpoint back into Megatron identically.
    meg2, back2 = str(tmp_path / "meg2"), str(tmp_path / "back2")
    convert("llama", "hf", "megatron", back, meg2, progress=False)
    convert("llama", "megatron", "hf", meg2, back2, progress=False)
    assert_bit_identical(read_safetensors_dir(hf_dirs["llama"]), read_safetensors_dir(back2))


def test_bf16_roundtrip_keeps_dtype(tmp_path):
    src = str(tmp_path / "hf")
    tiny_hf_model("llama").to(torch.bfloat16).save_pretrained(src)
    meg, back = str(tmp_path / "meg"), str(tmp_path / "back")
    assert convert("llama", "hf", "megatron", src, meg, progress=False).dtype == "bfloat16"
    convert("llama", "megatron", "hf", meg, back, progress=False)
    b = read_safetensors_dir(back)
    assert all(t.dtype == torch.bfloat16 for t in b.values())
    assert_bit_identical(read_safetensors_dir(src), b)


# ------------------------------------------------------------------------------ error cases
def _rewrite(src, dst, edit):
    """Copy an HF dir, applying ``edit(state_dict)`` to its tensors."""
    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    sd = read_safetensors_dir(src)
    edit(sd)
    os.remove(os.path.join(dst, "model.safetensors"))
    save_file(sd, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_unknown_model_type(hf_dirs, tmp_path):
    with pytest.raises(UnknownModelTypeError, match="mistral"):
        convert("mistral", "hf", "megatron", hf_dirs["llama"], str(tmp_path / "x"))


def test_model_type_mismatch(hf_dirs, tmp_path):
    with pytest.raises(ConfigMismatchError, match=r"config\.json.*'llama'.*gemma2"):
        convert("gemma2", "hf", "megatron", hf_dirs["llama"], str(tmp_path / "x"))
    assert not os.path.exists(tmp_path / "x")


def test_missing_tensor(hf_dirs, tmp_path):
    bad = _rewrite(hf_dirs["llama"], str(tmp_path / "bad"),
                   lambda sd: sd.pop("model.layers.2.self_attn.k_proj.weight"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.2\.self_attn\.k_proj\.weight"):
        convert("llama", "hf", "megatron", bad, str(tmp_path / "out"), progress=False)
    assert os.listdir(tmp_path) == ["bad"]  # nothing half-written, no temp dir left


def test_misshaped_tensor(hf_dirs, tmp_path):
    def edit(sd):
        sd["model.layers.1.mlp.up_proj.weight"] = torch.zeros(95, 64)

    bad = _rewrite(hf_dirs["llama"], str(tmp_path / "bad"), edit)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor "
                                              r"'model\.layers\.1\.mlp\.up_proj\.weight' has shape "
                                              r"\(95, 64\).*\(96, 64\)"):
        convert("llama", "hf", "megatron", bad, str(tmp_path / "out"), progress=False)


def test_unused_tensor(hf_dirs, tmp_path):
    def edit(sd):
        sd["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)

    bad = _rewrite(hf_dirs["llama"], str(tmp_path / "bad"), edit)
    with pytest.raises(CheckpointError, match=r"unused.*q_proj\.bias \(model\.safetensors\)"):
        convert("llama", "hf", "megatron", bad, str(tmp_path / "out"), progress=False)


def test_tied_lm_head_must_equal_embedding(hf_dirs, tmp_path):
    def edit(sd):
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"] + 1

    bad = _rewrite(hf_dirs["gemma2"], str(tmp_path / "bad"), edit)
    with pytest.raises(CheckpointError, match="lm_head.weight.*differs"):
        convert("gemma2", "hf", "megatron", bad, str(tmp_path / "out"), progress=False)


def test_existing_save_dir_and_bad_parallel_sizes(hf_dirs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # a foreign file: allowed, never touched
    convert("llama", "hf", "megatron", hf_dirs["llama"], str(out), progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(CheckpointError, match="already holds this tool's output"):
        convert("llama", "hf", "megatron", hf_dirs["llama"], str(out))
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    with pytest.raises(CheckpointError, match="contains the input"):
        convert("llama", "hf", "megatron", hf_dirs["llama"], os.path.dirname(hf_dirs["llama"]),
                overwrite=True)
    with pytest.raises(CheckpointError, match="lies inside the input"):
        convert("llama", "hf", "megatron", hf_dirs["llama"],
                os.path.join(hf_dirs["llama"], "meg"), overwrite=True)
    # --overwrite replaces the checkpoint's own files; the foreign one stays.
    convert("llama", "hf", "megatron", hf_dirs["llama"], str(out), overwrite=True, progress=False)
    assert (out / "notes.txt").read_text() == "mine" and (out / "model_config.json").is_file()
    with pytest.raises(ConfigMismatchError, match="num_query_groups=2"):
        convert("gemma2", "hf", "megatron", hf_dirs["gemma2"], str(tmp_path / "o2"),
                target_tensor_parallel_size=4)
    with pytest.raises(ConfigMismatchError, match="num_layers=4"):
        convert("llama", "hf", "megatron", hf_dirs["llama"], str(tmp_path / "o3"),
                target_pipeline_parallel_size=3)


def test_megatron_side_errors(hf_dirs, tmp_path):
    with pytest.raises(CheckpointError, match="model_config.json not found"):
        convert("llama", "megatron", "hf", hf_dirs["llama"], str(tmp_path / "x"))
    meg = str(tmp_path / "meg")
    convert("llama", "hf", "megatron", hf_dirs["llama"], meg, progress=False)
    with pytest.raises(ConfigMismatchError, match="family is 'llama'"):
        convert("gemma2", "megatron", "hf", meg, str(tmp_path / "x"))
    # A config that disagrees with the stored tensors: one layer more than saved.
    path = os.path.join(meg, "model_config.json")
    with open(path) as f:
        raw = json.load(f)
    raw["model_config"]["num_layers"] = 5
    with open(path, "w") as f:
        json.dump(raw, f)
    with pytest.raises(CheckpointError, match=r"'decoder\.layers\..*' has shape \(4, .*\(5, "):
        convert("llama", "megatron", "hf", meg, str(tmp_path / "y"), progress=False)
    assert not os.path.exists(tmp_path / "y")


def test_truncated_or_missing_dist_checkpoint_file_is_named(hf_dirs, tmp_path):
    import glob

    from megatron_ar.checkpoint.megatron_io import check_storage_complete

    meg = str(tmp_path / "meg")
    convert("llama", "hf", "megatron", hf_dirs["llama"], meg, progress=False)
    check_storage_complete(meg)
    (data,) = glob.glob(os.path.join(meg, "*.distcp"))
    size = os.path.getsize(data)
    with open(data, "r+b") as f:
        f.truncate(size - 1)
    with pytest.raises(CheckpointError, match=rf"{data}: {size - 1:,} bytes but the checkpoint's "
                                              rf"\.metadata needs {size:,} \(truncated\)"):
        convert("llama", "megatron", "hf", meg, str(tmp_path / "y"), progress=False)
    os.remove(data)
    with pytest.raises(CheckpointError, match=rf"{data}: missing"):
        convert("llama", "megatron", "hf", meg, str(tmp_path / "y"), progress=False)
    assert not os.path.exists(tmp_path / "y")


def test_config_compatibility_names_fields():
    from megatron_ar.models import ModelConfig

    a = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=96, num_attention_heads=4,
                    vocab_size=100, seq_length=32)
    check_config_compatible(a, a.replace(seq_length=64, name="other"), "ckpt")  # run-only fields
    with pytest.raises(ConfigMismatchError, match=r"(?s)ModelConfig\.hidden_size.*ModelConfig\."
                                                  r"num_attention_heads"):
        check_config_compatible(a, a.replace(hidden_size=128, num_attention_heads=8), "ckpt")

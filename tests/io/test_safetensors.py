"""Streaming safetensors reader/writer against the safetensors library itself (the oracle for
the format: ``save_file`` bytes, ``safe_open`` reads) and transformers' sharded layout."""
import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from megatron_ar.io.safetensors import (
    INDEX_NAME,
    SINGLE_NAME,
    SafetensorsError,
    SafetensorsFileWriter,
    SafetensorsReader,
    ShardedSafetensorsWriter,
    write_index,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tensors():
    g = torch.Generator().manual_seed(0)
    return {  # one dtype per file keeps save_file's order = name order
        "model.embed_tokens.weight": torch.randn(300, 24, generator=g),
        "model.layers.0.mlp.down_proj.weight": torch.randn(24, 40, generator=g),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(24, 24, generator=g),
        "model.norm.weight": torch.randn(24, generator=g),
    }


def test_file_writer_bytes_equal_save_file(tmp_path, tensors):
    for dtype in (torch.float32, torch.bfloat16):
        ts = {k: v.to(dtype) for k, v in sorted(tensors.items())}
        ref, ours = tmp_path / f"ref-{dtype}.safetensors", tmp_path / f"ours-{dtype}.safetensors"
        save_file(ts, str(ref), metadata={"format": "pt"})
        w = SafetensorsFileWriter(str(ours), [(k, v.dtype, v.shape) for k, v in ts.items()],
                                  {"format": "pt"})
        for k, v in ts.items():
            if k == "model.embed_tokens.weight":  # streamed in row pieces
                w.begin(k)
                for part in v.split(77):
                    w.write(part)
                w.end()
            else:
                w.write_tensor(k, v)
        w.close()
        assert ours.read_bytes() == ref.read_bytes()


def test_reader_matches_safe_open(tmp_path, tensors):
    d = tmp_path / "ck"
    d.mkdir()
    ts = dict(tensors, **{"ids": torch.arange(10, dtype=torch.int64),
                          "half": tensors["model.norm.weight"].to(torch.bfloat16)})
    save_file(ts, str(d / SINGLE_NAME), metadata={"format": "pt", "k": "v"})
    r = SafetensorsReader(str(d))
    with safe_open(str(d / SINGLE_NAME), framework="pt") as f:
        assert r.keys() == list(f.keys()) == r.file_tensors(SINGLE_NAME)
        assert r.file_metadata(SINGLE_NAME) == f.metadata()
        for k in f.keys():
            ref = f.get_tensor(k)
            got = r.get(k)
            assert got.dtype == ref.dtype and torch.equal(got, ref)
            assert r.shape(k) == tuple(ref.shape) and r.dtype(k) == ref.dtype
    emb = tensors["model.embed_tokens.weight"]
    rows = r.read_bytes("model.embed_tokens.weight", (100, 130))
    assert rows.shape == (30, 24 * 4)
    assert np.array_equal(rows, emb[100:130].contiguous().view(torch.uint8).numpy())
    assert r.nbytes() == sum(t.numel() * t.element_size() for t in ts.values())


def test_sharded_writer_and_index(tmp_path, tensors):
    out = tmp_path / "sharded"
    out.mkdir()
    plan = [(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]
    w = ShardedSafetensorsWriter(str(out), plan, max_shard_bytes=30_000)
    for k, v in tensors.items():
        w.write(k, v)
    files = w.finish()
    assert len(files) == 2 and files[0] == "model-00001-of-00002.safetensors"
    index = json.loads((out / INDEX_NAME).read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in tensors.values())
    assert sorted(set(index["weight_map"].values())) == files
    for fn in files:  # each shard is a valid safetensors file holding what the index says
        with safe_open(str(out / fn), framework="pt") as f:
            assert sorted(f.keys()) == sorted(k for k, v in index["weight_map"].items() if v == fn)
            for k in f.keys():
                assert torch.equal(f.get_tensor(k), tensors[k])
    r = SafetensorsReader(str(out))
    assert r.index == index and all(torch.equal(r.get(k), v) for k, v in tensors.items())
    # an index derived from a source keeps its fields and order, with the new sizes
    base = {"metadata": {"total_parameters": 1, "total_size": 0}, "weight_map": {}, "x": 1}
    write_index(str(out), index["weight_map"], 99, base=base, total_parameters=7)
    derived = json.loads((out / INDEX_NAME).read_text())
    assert list(derived) == ["metadata", "weight_map", "x"]
    assert derived["metadata"] == {"total_parameters": 7, "total_size": 99}


def test_errors_name_file_and_tensor(tmp_path, tensors):
    d = tmp_path / "bad"
    d.mkdir()
    with pytest.raises(SafetensorsError, match="no model.safetensors"):
        SafetensorsReader(str(d))
    (d / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(SafetensorsError, match="pytorch_model.bin is not supported"):
        SafetensorsReader(str(d))
    save_file({"a": torch.zeros(1000)}, str(d / SINGLE_NAME))
    data = (d / SINGLE_NAME).read_bytes()
    (d / SINGLE_NAME).write_bytes(data[:-100])
    with pytest.raises(SafetensorsError, match=r"model\.safetensors"):
        SafetensorsReader(str(d)).get("a")  # safe_open rejects the short file, or our read does
    (d / INDEX_NAME).write_text(json.dumps({"weight_map": {"a": "missing.safetensors"}}))
    with pytest.raises(KeyError, match="missing.safetensors"):
        SafetensorsReader(str(d), error=KeyError)  # the caller's error type
    w = SafetensorsFileWriter(str(tmp_path / "w.safetensors"),
                              [("a", "F32", (2,)), ("b", "F32", (3,))])
    with pytest.raises(SafetensorsError, match="expected tensor 'a' next, got 'b'"):
        w.write_tensor("b", torch.zeros(3))
    with pytest.raises(SafetensorsError, match=r"tensor 'a' is \(3,\) F32, planned \(2,\) F32"):
        w.write_tensor("a", torch.zeros(3))
    w.write_tensor("a", torch.zeros(2))
    with pytest.raises(SafetensorsError, match="1 planned tensors were not written"):
        w.close()

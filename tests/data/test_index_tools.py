"""Index tools: dataset_info, merge_datasets, dump_document.

Datasets are made from real hadiths with the real Mistral SentencePiece model; expectations
come from sentencepiece itself and from megatron-core's IndexedDataset.
"""
import json
import os
import runpy

import numpy as np
import pytest

import material

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tool(name):
    return runpy.run_path(os.path.join(REPO, "tools", name), run_name="tool")["main"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, bukhari_records, quran_lines):
    from megatron_ar.data.preprocess import PreprocessConfig, preprocess

    d = tmp_path_factory.mktemp("idx")
    sets = {"a": [r["arabic"] for r in bukhari_records[200:240]],
            "b": list(quran_lines[:25]) + [""]}
    out = {"dir": d, "texts": sets}
    for name, texts in sets.items():
        p = d / f"{name}.jsonl"
        with open(p, "w", encoding="utf-8") as f:
            for t in texts:
                f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
        out[name + "_jsonl"] = str(p)
        cfg = PreprocessConfig(input=[str(p)], output_prefix=str(d / name),
                               tokenizer_type="SentencePieceTokenizer",
                               tokenizer_model=material.sentencepiece_model_path(),
                               append_eod=True)
        preprocess(cfg, progress=False)
        out[name] = str(d / f"{name}_text_document")
    return out


@pytest.fixture(scope="module")
def sp():
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=material.sentencepiece_model_path())


def _lengths(texts, sp):
    return [len(sp.encode(t)) + 1 if sp.encode(t) else 0 for t in texts]


def test_dataset_info(built, sp, capsys):
    from megatron_ar.data.indexed import dataset_info

    lens = _lengths(built["texts"]["a"], sp)
    info = dataset_info(built["a"] + ".idx")  # a .idx/.bin path is accepted too
    assert info["documents"] == 40 and info["sequences"] == 40
    assert info["tokens"] == sum(lens)
    assert info["dtype"] == "uint16" and info["bin_bytes"] == 2 * sum(lens)
    assert info["tokens_per_doc"]["max"] == max(lens)
    assert info["tokens_per_doc"]["mean"] == pytest.approx(np.mean(lens))
    hist = info["histogram"]
    assert sum(h["documents"] for h in hist) == 40
    for h in hist:
        assert h["documents"] == sum(h["lo"] <= n <= h["hi"] for n in lens)
    main = _tool("dataset_info.py")
    assert main([built["a"], built["b"], "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    blens = _lengths(built["texts"]["b"], sp)
    assert out["total"]["documents"] == 66 and out["total"]["tokens"] == sum(lens) + sum(blens)
    assert out["datasets"][1]["histogram"][0] == {"range": "0", "lo": 0, "hi": 0, "documents": 1}


def test_merge_equals_single_run_and_reads_back(built, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_ar.data.indexed import merge_datasets
    from megatron_ar.data.preprocess import PreprocessConfig, preprocess

    merged = str(tmp_path / "ab")
    info = merge_datasets([built["a"], built["b"]], merged)
    assert info["documents"] == 66
    # oracle: one preprocess run over both inputs writes the same bytes
    both = PreprocessConfig(input=[built["a_jsonl"], built["b_jsonl"]],
                            output_prefix=str(tmp_path / "both"),
                            tokenizer_type="SentencePieceTokenizer",
                            tokenizer_model=material.sentencepiece_model_path(), append_eod=True)
    preprocess(both, progress=False)
    for e in (".bin", ".idx"):
        with open(merged + e, "rb") as f1, open(str(tmp_path / "both_text_document") + e, "rb") as f2:
            assert f1.read() == f2.read()
    ab, a, b = IndexedDataset(merged), IndexedDataset(built["a"]), IndexedDataset(built["b"])
    assert np.array_equal(ab[3], a[3]) and np.array_equal(ab[40 + 2], b[2])


def test_merge_rejects_mixed_dtypes(built, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_ar.data.indexed import merge_datasets

    other = str(tmp_path / "wide")
    b = IndexedDatasetBuilder(other + ".bin", dtype=np.int32)
    b.add_document([1, 2, 3], [3])
    b.finalize(other + ".idx")
    with pytest.raises(ValueError, match="wide: dtype int32 differs"):
        merge_datasets([built["a"], other], str(tmp_path / "x"))
    assert not os.path.exists(str(tmp_path / "x.bin"))
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        merge_datasets([built["a"], str(tmp_path / "missing")], str(tmp_path / "y"))


def test_dump_document(built, capsys):
    from megatron_ar.data.indexed import dump_document, tokenizer_from_flags

    tok = tokenizer_from_flags("SentencePieceTokenizer", material.sentencepiece_model_path())
    texts = built["texts"]["b"]
    for i in (0, 7, 24):
        d = dump_document(built["b"], i, tok)
        assert d["text"] == texts[i]
        assert d["ids"][-1] == tok.eod
    assert dump_document(built["b"], -1, tok)["tokens"] == 0  # the empty document
    with pytest.raises(IndexError, match="document 26 out of range"):
        dump_document(built["b"], 26)
    main = _tool("dump_document.py")
    argv = [built["a"], "5", "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", material.sentencepiece_model_path()]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == built["texts"]["a"][5]
    assert main(argv + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["document"] == 5


def _copy_pair(prefix, dst):
    import shutil

    for ext in (".bin", ".idx"):
        shutil.copy(prefix + ext, dst + ext)
    return dst


def test_truncated_bin_is_refused_before_any_output(built, tmp_path, capsys):
    bad = _copy_pair(built["a"], str(tmp_path / "trunc"))
    size = os.path.getsize(bad + ".bin")
    with open(bad + ".bin", "r+b") as f:
        f.truncate(size - 6)
    out = str(tmp_path / "merged")
    rc = _tool("merge_datasets.py")(["--input", built["b"], bad, "--output-prefix", out])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {bad}.bin: {size - 6:,} bytes but ")
    assert "truncated" in err
    assert sorted(os.listdir(tmp_path)) == ["trunc.bin", "trunc.idx"]  # nothing written
    assert _tool("dataset_info.py")([bad]) == 2
    assert "truncated" in capsys.readouterr().err


def test_damaged_idx_names_the_file(built, tmp_path, capsys):
    bad = _copy_pair(built["b"], str(tmp_path / "dmg"))
    with open(bad + ".idx", "r+b") as f:
        f.write(b"NOTMMIDX")  # the magic header
    for tool, argv in (("dataset_info.py", [bad]), ("dump_document.py", [bad, "0"]),
                       ("merge_datasets.py", ["--input", bad, "--output-prefix",
                                              str(tmp_path / "m")])):
        assert _tool(tool)(argv) == 2, tool
        err = capsys.readouterr().err
        assert err.startswith(f"error: {bad}.idx: damaged or not a Megatron index"), (tool, err)
        assert "Traceback" not in err

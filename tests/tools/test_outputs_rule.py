"""No tool writes over its inputs or deletes what it did not write (megatron_ar.io.outputs),
through the real tools' ``main``. Oracle: SHA-256 of every file under the test folder before
and after a refused run (nothing changes), and the exact file set after an accepted one."""
import hashlib
import json
import os

import pytest

from megatron_ar.io.records import dump_record

pytestmark = pytest.mark.unit


def _tool(name):
    import importlib

    return importlib.import_module(f"megatron_ar_tools.{name}").main


def _hashes(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture()
def corpus(tmp_path, bukhari_records):
    p = tmp_path / "corpus.jsonl"
    p.write_text("".join(dump_record({"id": f"b{r['id']}", "text": r["arabic"] + " " +
                                      r["english"]["text"]}) for r in bukhari_records[:300]),
                 encoding="utf-8")
    return p


def _refused(main, argv, root, capsys, match):
    before = _hashes(root)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err, err
    assert "Traceback" not in err
    assert _hashes(root) == before


TOK = ["--algorithm", "bpe", "--vocab-size", "1024", "--min-frequency", "1"]


def test_train_tokenizer_keeps_foreign_files_and_refuses_its_input_inside(tmp_path, corpus,
                                                                          capsys):
    main = _tool("train_tokenizer")
    out = tmp_path / "tok"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"not the tool's")
    assert main(["--input", str(corpus), "--output", str(out), *TOK]) == 0
    assert sorted(os.listdir(out)) == ["model.safetensors", "tokenizer.json",
                                       "tokenizer_config.json"]
    assert (out / "model.safetensors").read_bytes() == b"not the tool's"
    capsys.readouterr()
    _refused(main, ["--input", str(corpus), "--output", str(out), *TOK], tmp_path, capsys,
             "already holds this tool's output (tokenizer.json, tokenizer_config.json)")
    # The corpus inside --output (the reported loss of the tool's own input).
    inner = out / "corpus.jsonl"
    inner.write_bytes(corpus.read_bytes())
    _refused(main, ["--input", f"ar={inner}", "--output", str(out), "--overwrite", *TOK],
             tmp_path, capsys, "contains the input")
    tok_before = json.loads((out / "tokenizer.json").read_text())
    assert main(["--input", str(corpus), "--output", str(out), "--overwrite", *TOK,
                 "--seed", "1"]) == 0
    assert (out / "model.safetensors").read_bytes() == b"not the tool's"
    assert inner.read_bytes() == corpus.read_bytes()
    assert json.loads((out / "tokenizer.json").read_text())["model"]["vocab"] == \
        tok_before["model"]["vocab"]  # same data, same BPE: replaced by an equal file


def test_merge_tokenizers_refuses_a_source_as_output(tmp_path, corpus, capsys):
    train = _tool("train_tokenizer")
    for name, vocab in (("a", "1024"), ("b", "2048")):
        assert train(["--input", str(corpus), "--output", str(tmp_path / name), "--algorithm",
                      "bpe", "--vocab-size", vocab, "--min-frequency", "1"]) == 0
    capsys.readouterr()
    main = _tool("merge_tokenizers")
    _refused(main, ["--tokenizer", str(tmp_path / "a"), "--tokenizer", str(tmp_path / "b"),
                    "--target-vocab-size", "2048", "--output", str(tmp_path / "a"),
                    "--overwrite"], tmp_path, capsys, "is the input")


def test_dedup_output_equal_to_input_is_refused(tmp_path, corpus, capsys):
    main = _tool("dedup")
    _refused(main, ["--input", str(corpus), "--output", str(corpus), "--no-progress",
                    "--workers", "1"], tmp_path, capsys, "--output")
    _refused(main, ["--input", str(corpus), "--output", str(tmp_path / "o.jsonl"),
                    "--clusters", str(corpus), "--no-progress", "--workers", "1"], tmp_path,
             capsys, "--clusters")


def test_shard_tool_output_dir_holding_the_input_is_refused(tmp_path, corpus, capsys):
    _refused(_tool("normalize_text"), ["--input", str(corpus), "--output-dir", str(tmp_path),
                                       "--workers", "1", "--no-progress"],
             tmp_path, capsys, "contains the input")


def test_preprocess_and_merge_datasets_never_write_over_inputs(tmp_path, corpus, capsys):
    from megatron_ar_tools._cli import EXIT_OK  # noqa: F401  (the tools' own module)

    tok = tmp_path / "tok"
    assert _tool("train_tokenizer")(["--input", str(corpus), "--output", str(tok), *TOK]) == 0
    pre = _tool("preprocess_data")
    base = ["--json-keys", "text", "--tokenizer-type", "HuggingFaceTokenizer",
            "--tokenizer-model", str(tok), "--workers", "1"]
    # A JSONL input whose name is what the output prefix produces.
    named = tmp_path / "ds_text_document.bin"
    named.write_bytes(corpus.read_bytes())
    capsys.readouterr()
    _refused(pre, ["--input", str(named), "--output-prefix", str(tmp_path / "ds"), *base],
             tmp_path, capsys, "is the input")
    assert pre(["--input", str(corpus), "--output-prefix", str(tmp_path / "a"), *base]) == 0
    capsys.readouterr()
    _refused(_tool("merge_datasets"), ["--input", str(tmp_path / "a_text_document"),
                                       "--output-prefix", str(tmp_path / "a_text_document")],
             tmp_path, capsys, "is the input")

"""The shared CLI conventions of tools/ (tools/_cli.py), exercised through real tools.

Exit status 2 with one ``error: ...`` line naming the file and line for bad input (a traceback
only with --debug), the --json summary as the last stdout line, --on-error skip counting a
truncated compressed input as bad_compression, and no sys.path editing in tools/ or
benchmarks/ (scripts import the shared module as ``megatron_ar_tools``)."""
import ast
import gzip
import json
import os
import subprocess
import sys

import pytest
import zstandard

from megatron_ar.io.records import dump_record

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def docs(bukhari_records):
    return [{"id": f"b{r['id']}", "text": r["arabic"]} for r in bukhari_records[:120]]


def _tool(name):
    import importlib

    return importlib.import_module(f"megatron_ar_tools.{name}").main


def test_bad_line_is_one_error_line_exit_2(tmp_path, docs, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(dump_record(docs[0]) + '{"id": "x", "text": 5}\n', encoding="utf-8")
    main = _tool("quality_signals")
    argv = ["--input", str(src), "--output-dir", str(tmp_path / "out"), "--workers", "1",
            "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {src}:2: bad_type: key 'text' is int, not str"]
    assert main(argv + ["--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip().endswith(
        f"error: {src}:2: bad_type: key 'text' is int, not str")


def test_skip_counts_truncated_input_as_bad_compression(tmp_path, docs, capsys):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl.gz").write_bytes(gzip.compress("".join(map(dump_record, docs[:60])).encode(),
                                                 mtime=0))
    data = zstandard.ZstdCompressor(level=3).compress("".join(map(dump_record, docs[60:])).encode())
    (d / "b.jsonl.zst").write_bytes(data[: len(data) // 2])
    complete = zstandard.ZstdDecompressor().decompressobj().decompress(
        data[: len(data) // 2]).count(b"\n")
    main = _tool("quality_signals")
    argv = ["--input", str(d / "*"), "--output-dir", str(tmp_path / "out"), "--workers", "1",
            "--no-progress", "--json"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {d / 'b.jsonl.zst'}:{complete + 1}: bad_compression: input ends inside a zstd "
        f"frame (truncated) (at compressed byte {len(data) // 2})")
    assert main(argv + ["--on-error", "skip"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["errors"]["counts"] == {"bad_compression": 1}
    assert summary["docs_in"] == 60 + complete


def test_scripts_run_as_files_without_path_edits(tmp_path):
    """Run as files (how users run them): tools/ and tools/checkpoint/ both reach _cli."""
    r = subprocess.run([sys.executable, "tools/checkpoint/compare_hf.py", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "--json" in r.stdout and "--debug" in r.stdout, r.stderr
    pattern = str(tmp_path / "nope*")
    r = subprocess.run([sys.executable, "tools/merge_datasets.py", "--input", pattern,
                        "--output-prefix", str(tmp_path / "m")], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {pattern!r} matched nothing"]


def _edits_sys_path(path: str) -> bool:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return any(isinstance(n, ast.Attribute) and n.attr == "path" and isinstance(n.value, ast.Name)
               and n.value.id == "sys" for n in ast.walk(tree))


def test_no_sys_path_edits_in_tools_and_benchmarks():
    files = [os.path.join(d, f) for top in ("tools", "benchmarks")
             for d, _, fs in os.walk(os.path.join(REPO, top)) for f in fs if f.endswith(".py")]
    assert len(files) > 20
    assert [os.path.relpath(p, REPO) for p in files if _edits_sys_path(p)] == []


def test_every_tool_uses_the_shared_module():
    tools = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(REPO, "tools"))
             for f in fs if f.endswith(".py") and not f.startswith("_")]
    missing = []
    for p in tools:
        with open(p, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        if not any(isinstance(n, ast.ImportFrom) and n.module == "megatron_ar_tools._cli"
                   for n in ast.walk(tree)):
            missing.append(os.path.relpath(p, REPO))
    assert missing == []


def test_bad_recipe_and_bad_run_dir_are_one_error_line_exit_2(tmp_path, capsys):
    from megatron_ar.train import main as train_main

    bad = tmp_path / "r.yaml"
    bad.write_text("model:\n  preset: [\n", encoding="utf-8")
    assert train_main(["--config", str(bad)]) == 2
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert errors == [f"error: {bad}:3: invalid YAML: expected the node content, but found "
                      "'<stream end>'"]
    assert _tool("backtrace")(["--run-dir", str(tmp_path), "--step", "0"]) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path}: no config.yaml" in err and "Traceback" not in err

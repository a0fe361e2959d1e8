"""Record IO: formats, malformed-line reporting, atomic outputs, shard runner resume/parallel."""
import glob
import gzip
import json
import os

import pytest
import zstandard

from megatron_ar.io.atomic import atomic_output
from megatron_ar.io.compression import open_text
from megatron_ar.io.outputs import OutputError
from megatron_ar.io.records import ErrorStats, RecordError, dump_record, expand_inputs, iter_records
from megatron_ar.io.shards import ShardRunner, run_shards
from megatron_ar.io.summary import Summary, merge_summaries
from megatron_ar.text.annotate import AnnotateConfig, annotate_shard

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def hadith_docs(bukhari_records):
    return [{"id": f"b{r['id']}", "text": r["arabic"], "metadata": {"en": r["english"]["text"]}}
            for r in bukhari_records[:300]]


def _write_raw(path, lines: list[bytes]):
    with open(path, "wb") as f:
        f.write(b"".join(lines))


def test_roundtrip_plain_gz_zst(tmp_path, hadith_docs):
    for ext in (".jsonl", ".jsonl.gz", ".jsonl.zst"):
        path = str(tmp_path / f"h{ext}")
        with atomic_output(path) as f:
            for d in hadith_docs:
                f.write(dump_record(d))
        # read back with the format's own library, not ours
        if ext == ".jsonl.gz":
            raw = gzip.decompress(open(path, "rb").read())
        elif ext == ".jsonl.zst":
            raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb")).read()
        else:
            raw = open(path, "rb").read()
        assert [json.loads(x) for x in raw.decode("utf-8").splitlines()] == hadith_docs
        assert [r for _, r in iter_records(path)] == hadith_docs
        with open_text(path) as f:
            assert json.loads(f.readline()) == hadith_docs[0]
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_expand_inputs(tmp_path):
    for name in ("b.jsonl", "a.jsonl.gz", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    got = expand_inputs([str(tmp_path / "*.jsonl*"), str(tmp_path / "b.jsonl")])
    assert got == [str(tmp_path / "a.jsonl.gz"), str(tmp_path / "b.jsonl")]
    with pytest.raises(FileNotFoundError, match=r"nope\*\.jsonl"):
        expand_inputs([str(tmp_path / "*.jsonl"), str(tmp_path / "nope*.jsonl")])


MALFORMED = [
    (b'{"id": 2, "text": "\xd8\xa3\xff"}\n', "invalid_utf8"),
    (b'{"id": 2, "text": "x"\n', "bad_json"),
    (b'["text", "x"]\n', "not_object"),
    (b'{"id": 2, "body": "x"}\n', "missing_key"),
    (b'{"id": 2, "text": 17}\n', "bad_type"),
    (b'{"id": 2, "text": "a\\ud800b"}\n', "invalid_utf8"),  # escaped lone surrogate
]


@pytest.mark.parametrize("line,kind", MALFORMED, ids=[k for _, k in MALFORMED[:-1]] + ["lone_surrogate"])
def test_malformed_line_reported_with_file_and_line(tmp_path, hadith_docs, line, kind):
    path = str(tmp_path / "in.jsonl")
    good = [dump_record(d).encode() for d in hadith_docs[:3]]
    _write_raw(path, [good[0], b"\n", good[1], line, good[2]])  # the bad line is line 4
    with pytest.raises(RecordError) as ei:
        list(iter_records(path))
    assert str(ei.value).startswith(f"{path}:4: {kind}")
    assert ei.value.line_no == 4 and ei.value.kind == kind
    stats = ErrorStats()
    got = list(iter_records(path, on_error="skip", stats=stats))
    assert [n for n, _ in got] == [1, 3, 5]  # blank line 2 ignored, line numbers kept
    assert stats.counts == {kind: 1} and stats.examples[0].startswith(f"{path}:4:")


def test_truncated_gzip(tmp_path, hadith_docs):
    path = str(tmp_path / "t.jsonl.gz")
    with atomic_output(path) as f:
        for d in hadith_docs[:50]:
            f.write(dump_record(d))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(RecordError, match="bad_compression"):
        list(iter_records(path))


def test_atomic_output_failure_leaves_nothing(tmp_path):
    path = str(tmp_path / "out.jsonl.zst")
    with atomic_output(path) as f:
        f.write("old\n")
    with pytest.raises(RuntimeError):
        with atomic_output(path) as f:
            f.write("new, half written\n")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == ["out.jsonl.zst"]
    with open_text(path) as f:
        assert f.read() == "old\n"


def test_merge_summaries_and_summary_json(capsys):
    a = {"docs_in": 2, "removed_by_rule": {"x": 1}, "errors": {"examples": ["a"] * 4}}
    b = {"docs_in": 3, "removed_by_rule": {"x": 2, "y": 1}, "errors": {"examples": ["b"] * 4}}
    m = merge_summaries(a, b)
    assert m["docs_in"] == 5 and m["removed_by_rule"] == {"x": 3, "y": 1}
    assert len(m["errors"]["examples"]) == 5
    Summary("t", m).emit(json_mode=True)
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]) == m


def _shards(tmp_path, docs, n):
    d = tmp_path / "in"
    d.mkdir()
    per = len(docs) // n
    exts = [".jsonl", ".jsonl.gz", ".jsonl.zst"]
    for i in range(n):
        with atomic_output(str(d / f"part{i}{exts[i % 3]}")) as f:
            for doc in docs[i * per:(i + 1) * per]:
                f.write(dump_record(doc))
    return expand_inputs([str(d / "*")])


def test_runner_parallel_equals_serial_and_resumes(tmp_path, hadith_docs):
    inputs = _shards(tmp_path, hadith_docs, 4)
    cfg = AnnotateConfig()
    s1 = run_shards(inputs, str(tmp_path / "serial"), annotate_shard, workers=1, options=cfg, progress=False)
    s2 = run_shards(inputs, str(tmp_path / "par"), annotate_shard, workers=2, options=cfg, progress=False)
    assert s1["docs_in"] == s2["docs_in"] == 300 and s2["shards_skipped"] == 0
    for p in inputs:
        name = os.path.basename(p)
        a = [r for _, r in iter_records(str(tmp_path / "serial" / name))]
        b = [r for _, r in iter_records(str(tmp_path / "par" / name))]
        assert a == b and len(a) == 75
    # a rerun skips every finished shard; touching one input redoes only that one
    s3 = run_shards(inputs, str(tmp_path / "serial"), annotate_shard, workers=1, options=cfg, progress=False)
    assert s3["shards_skipped"] == 4 and s3["docs_in"] == 300
    os.utime(inputs[1], ns=(1, 1))
    s4 = run_shards(inputs, str(tmp_path / "serial"), annotate_shard, workers=1, options=cfg, progress=False)
    assert s4["shards_skipped"] == 3
    # other options -> other fingerprint: the outputs are refused, naming why, unless overwrite
    before = {p: open(p, "rb").read() for p in glob.glob(str(tmp_path / "serial" / "*"))}
    with pytest.raises(OutputError, match=r"part0.jsonl \(written with other options\).*--overwrite"):
        run_shards(inputs, str(tmp_path / "serial"), annotate_shard, workers=1,
                   options=AnnotateConfig(signals_key="qs"), progress=False)
    assert {p: open(p, "rb").read() for p in glob.glob(str(tmp_path / "serial" / "*"))} == before
    s5 = run_shards(inputs, str(tmp_path / "serial"), annotate_shard, workers=1,
                    options=AnnotateConfig(signals_key="qs"), progress=False, overwrite=True)
    assert s5["shards_skipped"] == 0
    first = next(iter_records(str(tmp_path / "serial" / os.path.basename(inputs[0]))))[1]
    assert "qs" in first and "quality_signals" not in first
    # a file that is no run's output, under a shard's name: refused; others in the folder: kept
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / os.path.basename(inputs[2])).write_text("mine\n")
    (foreign / "notes.txt").write_text("mine too\n")
    with pytest.raises(OutputError, match="no record of this tool writing it"):
        run_shards(inputs, str(foreign), annotate_shard, options=cfg, progress=False)
    run_shards(inputs, str(foreign), annotate_shard, options=cfg, progress=False, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine too\n"


def test_runner_error_in_worker_names_file_line(tmp_path, hadith_docs):
    inputs = _shards(tmp_path, hadith_docs[:40], 2)
    bad = inputs[1]  # part1.jsonl.gz: a broken line after its 20 good ones
    data = gzip.decompress(open(bad, "rb").read()) + b"{broken\n"
    open(bad, "wb").write(gzip.compress(data))
    out = str(tmp_path / "out")
    with pytest.raises(RecordError, match=rf"{os.path.basename(bad)}:21: bad_json"):
        run_shards(inputs, out, annotate_shard, workers=1, options=AnnotateConfig(), progress=False)
    assert not os.path.exists(os.path.join(out, os.path.basename(bad)))  # nothing half-written
    s = run_shards(inputs, out, annotate_shard, workers=1, options=AnnotateConfig(), on_error="skip",
                   progress=False)
    assert s["docs_in"] == 40 and s["errors"]["counts"] == {"bad_json": 1}
    assert s["shards_skipped"] == 1  # the good shard finished in the failed run


def test_runner_refuses_to_overwrite_input(tmp_path, hadith_docs):
    inputs = _shards(tmp_path, hadith_docs[:10], 1)
    with open(inputs[0], "rb") as f:
        before = f.read()
    with pytest.raises(ValueError, match="--output-dir .*: contains the input .*part0.jsonl"):
        ShardRunner(inputs, os.path.dirname(inputs[0]), annotate_shard, options=AnnotateConfig(),
                    progress=False).run()
    with open(inputs[0], "rb") as f:
        assert f.read() == before
    assert sorted(os.listdir(os.path.dirname(inputs[0]))) == [os.path.basename(inputs[0])]

"""Cluster-scale data pipeline: every data tool run as 4 array tasks (--shard-index 0..3
--num-shards 4, one of them from SLURM_ARRAY_* variables) gives the one-process run's outputs
byte for byte (dedup: the same kept set and clusters); a failed task reruns alone.

Material: real hadith text (Arabic with diacritics, English), spread over 8 input files of
different sizes, pages of three sites carrying planted headers so that boilerplate sources
span files. Oracle: the same tool run once over all inputs (megatron_ar.io.shards.ShardSpec of
1), and for preprocess_data the single run's .bin/.idx.
"""
import importlib
import json
import os
import shutil

import pytest

import material
from megatron_ar.io.shards import ShardSpec, shard_inputs, shard_of_inputs

pytestmark = pytest.mark.unit

N = 4


def _main(tool):
    return importlib.import_module(f"megatron_ar_tools.{tool}").main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, bukhari_records):
    d = tmp_path_factory.mktemp("corpus")
    recs = [r for r in bukhari_records[:900] if r["arabic"].strip() and r["english"]["text"].strip()]
    sites = ["https://sunnah.example/h/", "http://www.hadith.example.org/p?id=", "blog.example/"]
    heads = ["Sunnah Library | Home | Books", "حديث شريف — الصفحة الرئيسية", ""]
    k = 0
    for f in range(8):
        with open(d / f"part{f}.jsonl", "w", encoding="utf-8") as fh:
            for j in range(12 + 9 * f):  # files of different sizes: the split is by bytes
                r = recs[k % len(recs)]
                s = k % 3
                body = r["arabic"] if k % 2 else r["english"]["text"]
                text = (heads[s] + "\n" if heads[s] else "") + body.strip()
                if k % 17 == 0:  # a few exact copies for dedup
                    text = (heads[s] + "\n" if heads[s] else "") + recs[0]["arabic"].strip()
                fh.write(json.dumps({"id": f"d{k}", "text": text,
                                     "metadata": {"url": f"{sites[s]}{k}"}},
                                    ensure_ascii=False) + "\n")
                k += 1
    return d


def _inputs(d):
    return sorted(str(p) for p in d.glob("part*.jsonl"))


def _tree(out):
    """Every output file's bytes (markers and reports aside)."""
    got = {}
    for root, dirs, files in os.walk(out):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        for f in files:
            if not f.startswith("."):
                p = os.path.join(root, f)
                got[os.path.relpath(p, out)] = open(p, "rb").read()
    return got


def _run(tool, args, capsys):
    rc = _main(tool)(args + ["--json"] + (["--no-progress"] if tool != "merge_datasets" else []))
    cap = capsys.readouterr()
    out = cap.out.strip().splitlines()
    return rc, (json.loads(out[-1]) if rc == 0 else cap.err)


def _sharded(tool, args, capsys, monkeypatch, n=N):
    """Tasks 0..n-2 by flags; the last one from a Slurm array that starts at 1."""
    sums = []
    for k in range(n - 1):
        rc, s = _run(tool, args + ["--shard-index", str(k), "--num-shards", str(n)], capsys)
        assert rc == 0
        sums.append(s)
    with monkeypatch.context() as m:
        m.setenv("SLURM_ARRAY_TASK_ID", str(n))
        m.setenv("SLURM_ARRAY_TASK_MIN", "1")
        m.setenv("SLURM_ARRAY_TASK_COUNT", str(n))
        rc, s = _run(tool, args, capsys)
    assert rc == 0 and s.get("shard_index", n - 1) == n - 1
    return sums + [s]


def test_partition_rule(corpus):
    paths = _inputs(corpus)
    sizes = [os.path.getsize(p) for p in paths]
    owner = shard_of_inputs(paths, N)
    assert owner == sorted(owner) and owner[0] == 0 and owner[-1] == N - 1  # contiguous ranges
    parts = [shard_inputs(paths, ShardSpec(k, N)) for k in range(N)]
    assert sum(parts, []) == paths  # disjoint, complete, in order
    for part in parts:  # balanced: no part exceeds its share by more than one file
        assert sum(os.path.getsize(p) for p in part) <= sum(sizes) / N + max(sizes)


@pytest.mark.parametrize("env,flags,want", [
    ({}, [], (0, 1)),
    ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "3"},
     [], (2, 3)),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_STEP": "2",
      "SLURM_ARRAY_TASK_COUNT": "4"}, [], (2, 4)),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}, ["--shard-index", "1"], (1, 4)),
])
def test_shard_defaults(env, flags, want):
    idx = int(flags[1]) if flags else None
    s = ShardSpec.resolve(idx, None, env)
    assert (s.index, s.count) == want


@pytest.mark.parametrize("env,flags,names", [
    ({}, ["--shard-index", "4", "--num-shards", "4"], "--shard-index"),
    ({}, ["--shard-index", "-1", "--num-shards", "4"], "--shard-index"),
    ({}, ["--shard-index", "0", "--num-shards", "0"], "--num-shards"),
    ({}, ["--num-shards", "4"], "--shard-index"),
    ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"}, [], "SLURM_ARRAY_TASK_ID"),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "four"}, [], "SLURM_ARRAY_TASK_COUNT"),
    ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4"}, [], "SLURM_ARRAY_TASK_ID"),
])
def test_bad_shard_values_exit_2(corpus, tmp_path, monkeypatch, capsys, env, flags, names):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rc = _main("normalize_text")(["--input", *_inputs(corpus), "--output-dir",
                                  str(tmp_path / "o"), "--no-progress", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and names in err[0], err
    assert not (tmp_path / "o").exists()


def _rules(tmp_path):
    p = tmp_path / "rules.yaml"
    # an absolute rule and a percentile one (resolved over all inputs in every task)
    p.write_text("rules:\n  - signal: word_count\n    min: 12\n"
                 "  - signal: mean_word_length\n    max_percentile: 80\n")
    return str(p)


@pytest.fixture(scope="module")
def arpa(tmp_path_factory, bukhari_records):
    pytest.importorskip("kenlm", reason="kenlm not installed (.ci/install.sh installs it)")
    from megatron_ar.text.perplexity import ccnet_normalize, write_arpa

    p = tmp_path_factory.mktemp("lm") / "ar.arpa"
    write_arpa([ccnet_normalize(r["arabic"]).split() for r in bukhari_records[2000:2600]],
               str(p), order=2)
    return str(p)


@pytest.mark.parametrize("tool", ["normalize_text", "quality_signals", "filter_data", "perplexity"])
def test_per_file_tools_sharded_equal_single(tool, corpus, tmp_path, capsys, monkeypatch, request):
    extra = {"filter_data": lambda: ["--rules", _rules(tmp_path), "--write-removed"],
             "perplexity": lambda: ["--model", request.getfixturevalue("arpa")]}.get(tool, list)()
    base = ["--input", *_inputs(corpus), "--workers", "1", *extra]
    rc, one = _run(tool, base + ["--output-dir", str(tmp_path / "one")], capsys)
    assert rc == 0
    sums = _sharded(tool, base + ["--output-dir", str(tmp_path / "four")], capsys, monkeypatch)
    want, got = _tree(tmp_path / "one"), _tree(tmp_path / "four")
    assert len(want) >= 8 and got == want
    key = "docs" if tool == "perplexity" else "docs_in"
    assert sum(s[key] for s in sums) == one[key] == 8 * 12 + 9 * 28
    assert sum(s["shards"] for s in sums) == 8 and all(s["num_shards"] == N for s in sums)


@pytest.fixture(scope="module")
def ft_model(tmp_path_factory):
    pytest.importorskip("fasttext", reason="fasttext not installed (.ci/install.sh installs it)")
    from megatron_ar_tools.quality_classifier import main

    d = tmp_path_factory.mktemp("clf")
    with open(d / "ann.jsonl", "w", encoding="utf-8") as f:
        for r in material.quality_task(120):
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    assert main(["train", "--annotations", str(d / "ann.jsonl"), "--output", str(d / "m"),
                 "--dim", "8", "--epochs", "2", "--no-progress"]) == 0
    return str(d / "m")


def test_classifier_score_sharded_equal_single(ft_model, corpus, tmp_path, capsys, monkeypatch):
    base = ["score", "--model", ft_model, "--input", *_inputs(corpus), "--workers", "1"]
    rc, one = _run("quality_classifier", base + ["--output-dir", str(tmp_path / "one")], capsys)
    assert rc == 0
    sums = _sharded("quality_classifier", base + ["--output-dir", str(tmp_path / "four")],
                    capsys, monkeypatch)
    want, got = _tree(tmp_path / "one"), _tree(tmp_path / "four")
    assert len(want) == 8 and got == want
    assert sum(s["docs"] for s in sums) == one["docs"] == 8 * 12 + 9 * 28
    assert sum(s["shards"] for s in sums) == 8


def test_empty_shard_exits_0(corpus, tmp_path, capsys):
    paths = _inputs(corpus)
    owner = shard_of_inputs(paths, 12)
    empty = min(set(range(12)) - set(owner))  # 8 files, 12 shards: some shard gets none
    rc, s = _run("quality_signals", ["--input", *paths, "--output-dir", str(tmp_path / "o"),
                                     "--shard-index", str(empty), "--num-shards", "12"], capsys)
    assert rc == 0 and s["shards"] == 0 and "docs_in" not in s
    assert _tree(tmp_path / "o") == {}


def test_failed_shard_reruns_alone(corpus, tmp_path, capsys):
    src = tmp_path / "in"
    shutil.copytree(corpus, src)
    paths = _inputs(src)
    bad = shard_inputs(paths, ShardSpec(2, N))[0]
    good = open(bad, "rb").read()
    with open(bad, "ab") as f:
        f.write(b"{not json\n")
    out = tmp_path / "out"
    args = ["--input", *paths, "--output-dir", str(out), "--workers", "1", "--num-shards", str(N)]
    rcs = [_run("normalize_text", args + ["--shard-index", str(k)], capsys)[0] for k in range(N)]
    assert rcs == [0, 0, 2, 0]
    markers = {p: os.stat(out / ".shards" / p).st_mtime_ns
               for p in os.listdir(out / ".shards") if p.endswith(".done.json")}
    assert len(markers) == 8 - len(shard_inputs(paths, ShardSpec(2, N)))
    with open(bad, "wb") as f:
        f.write(good)
    sums = [_run("normalize_text", args + ["--shard-index", str(k)], capsys)[1] for k in range(N)]
    # the array requeued as a whole: the finished tasks skip all their inputs, task 2 redoes its own
    assert [s["shards_skipped"] == s["shards"] for s in sums] == [True, True, False, True]
    assert sums[2]["shards_skipped"] == 0
    for p, t in markers.items():
        assert os.stat(out / ".shards" / p).st_mtime_ns == t
    rc, _ = _run("normalize_text", ["--input", *_inputs(corpus), "--output-dir",
                                    str(tmp_path / "one")], capsys)
    assert rc == 0 and _tree(out) == _tree(tmp_path / "one")


def test_boilerplate_two_stages_equal_single(corpus, tmp_path, capsys, monkeypatch):
    base = ["--input", *_inputs(corpus), "--min-docs", "3"]
    rc, one = _run("strip_boilerplate", base + ["--output-dir", str(tmp_path / "one")], capsys)
    assert rc == 0 and one["lines_removed"] >= 2 * 100  # two planted headers on 2/3 of the pages
    four = base + ["--output-dir", str(tmp_path / "four")]
    # stage 2 before stage 1 finished: refused, naming the input without counts
    rc = _main("strip_boilerplate")(four + ["--stage", "strip", "--shard-index", "0",
                                            "--num-shards", str(N), "--no-progress"])
    assert rc == 2 and "--stage count" in capsys.readouterr().err
    _sharded("strip_boilerplate", four + ["--stage", "count"], capsys, monkeypatch)
    sums = _sharded("strip_boilerplate", four + ["--stage", "strip"], capsys, monkeypatch)
    assert _tree(tmp_path / "four") == _tree(tmp_path / "one")
    assert sum(s["lines_removed"] for s in sums) == one["lines_removed"]
    assert sum(s["docs_out"] for s in sums) == one["docs_out"]
    assert len([f for f in os.listdir(tmp_path / "four") if f.startswith(".boilerplate_report_shard")]) == N
    # a strip task rerun (requeued) skips its finished inputs (done markers)
    rc, again = _run("strip_boilerplate", four + ["--stage", "strip", "--shard-index", "1",
                                                  "--num-shards", str(N)], capsys)
    assert rc == 0 and again["lines_removed"] == sums[1]["lines_removed"]
    assert again["shards_skipped"] == again["shards"] >= 1


def test_preprocess_shards_merge_to_single(corpus, tmp_path, capsys, monkeypatch):
    sp = material.sentencepiece_model_path()
    base = ["--input", *_inputs(corpus), "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", sp, "--append-eod", "--workers", "1"]
    rc, one = _run("preprocess_data", base + ["--output-prefix", str(tmp_path / "one")], capsys)
    assert rc == 0
    sums = _sharded("preprocess_data", base + ["--output-prefix", str(tmp_path / "ar")], capsys,
                    monkeypatch)
    assert sum(s["documents"] for s in sums) == one["documents"]
    rc, m = _run("merge_datasets", ["--input", str(tmp_path / f"ar_shard*_of_{N}_text_document.idx"),
                                    "--output-prefix", str(tmp_path / "merged")], capsys)
    assert rc == 0 and len(m["inputs"]) == N
    for ext in (".bin", ".idx"):
        assert (open(tmp_path / f"merged{ext}", "rb").read()
                == open(tmp_path / f"one_text_document{ext}", "rb").read())
    rc = _main("preprocess_data")(base + ["--output-prefix", str(tmp_path / "p"), "--partitions",
                                          "2", "--shard-index", "0", "--num-shards", "2"])
    assert rc == 2 and "--partitions" in capsys.readouterr().err


def test_dedup_two_stages_same_kept_set(corpus, tmp_path, capsys, monkeypatch):
    base = ["--input", *_inputs(corpus), "--workers", "1"]
    rc, one = _run("dedup", base + ["--output", str(tmp_path / "one.jsonl"), "--clusters",
                                    str(tmp_path / "one.clusters.jsonl")], capsys)
    assert rc == 0 and one["duplicates"] >= 20  # the planted copies (and site templates)
    work = ["--work-dir", str(tmp_path / "dd.work")]
    stage2 = base + work + ["--stage", "cluster", "--output", str(tmp_path / "two.jsonl"),
                            "--clusters", str(tmp_path / "two.clusters.jsonl")]
    sums = _sharded("dedup", base + work + ["--stage", "keys"], capsys, monkeypatch)
    assert sum(s.get("docs_in", 0) for s in sums) == one["docs_in"]
    # stage 2 reads the key files only: the inputs' texts are not hashed again
    rc, two = _run("dedup", stage2, capsys)
    assert rc == 0, two
    assert two["duplicates"] == one["duplicates"]
    for a, b in (("one.jsonl", "two.jsonl"), ("one.clusters.jsonl", "two.clusters.jsonl")):
        assert open(tmp_path / a, "rb").read() == open(tmp_path / b, "rb").read()
    # stage 2 keeping only the kept set, then stage 3 (array) writing per-input files
    rc, s2 = _run("dedup", base + work + ["--stage", "cluster"], capsys)
    assert rc == 0 and s2["duplicates"] == one["duplicates"]
    _sharded("dedup", base + work + ["--stage", "write", "--output", str(tmp_path / "kept")],
             capsys, monkeypatch)
    files = sorted((tmp_path / "kept").glob("part*.jsonl"))
    assert len(files) == 8
    assert b"".join(f.read_bytes() for f in files) == (tmp_path / "one.jsonl").read_bytes()
    # a key file that is missing, or made with other options: refused, naming the input
    os.remove(tmp_path / "dd.work" / ".shards" / "part3.jsonl.done.json")
    rc = _main("dedup")(stage2 + ["--overwrite", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "part3.jsonl" in err and "--stage keys" in err
    rc = _main("dedup")(base + work + ["--stage", "cluster", "--ngram", "5", "--output",
                                       str(tmp_path / "x.jsonl"), "--no-progress"])
    assert rc == 2 and "other options" in capsys.readouterr().err

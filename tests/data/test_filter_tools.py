"""The data tools end to end: filter counts against an independent count, histogram buckets,
malformed input through the CLI, and kill/resume of a tool run."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

import material
from megatron_ar.io.atomic import atomic_output
from megatron_ar.io.records import dump_record, expand_inputs, iter_records
from megatron_ar.text.annotate import annotate_files
from megatron_ar.text.filters import FilterConfig, filter_files, load_rules, parse_rules
from megatron_ar.text.histogram import HistogramConfig, signal_histograms

pytestmark = pytest.mark.unit

REPO = material.REPO
ENV = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}

RULES = {
    "min_arabic_fraction": 0.5,
    "rules": [
        {"name": "too_short", "signal": "word_count", "min": 40},
        {"name": "repeated_lines", "signal": "duplicate_line_fraction", "max": 0.2},
    ],
}


def _tool(name, *args, check=True):
    p = subprocess.run([sys.executable, os.path.join("tools", name), *args, "--no-progress"],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{name} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, bukhari_records):
    """600 Arabic hadiths + their 600 English translations, in 3 shards (plain, gz, zst)."""
    d = tmp_path_factory.mktemp("corpus")
    recs = []
    for r in bukhari_records[:600]:
        recs.append({"id": f"ar-{r['id']}", "text": r["arabic"]})
        recs.append({"id": f"en-{r['id']}", "text": r["english"]["text"]})
    for i, ext in enumerate((".jsonl", ".jsonl.gz", ".jsonl.zst")):
        with atomic_output(str(d / f"part{i}{ext}")) as f:
            for rec in recs[i * 400:(i + 1) * 400]:
                f.write(dump_record(rec))
    return d, recs


def _independent(recs):
    """The same three rules, counted without megatron_ar: Arabic vs Latin letters by regex,
    words = whitespace tokens with a word character once diacritics are gone, lines split on \\n+."""
    removed = {"min_arabic_fraction": 0, "too_short": 0, "repeated_lines": 0}
    kept = []
    for r in recs:
        t = r["text"]
        ar = len(re.findall(r"[\u0621-\u064a\u0671-\u06d3\ufb50-\ufdff\ufe70-\ufefc]", t))
        lat = len(re.findall(r"[A-Za-z]", t))
        words = [w for w in re.sub(r"[\u064b-\u0652\u0670\u0640]", "", t).split() if re.search(r"\w", w)]
        lines = [x for x in re.split(r"\n+", t.strip())]
        dup = len(lines) - len(set(lines))
        if ar / (ar + lat) < 0.5:
            removed["min_arabic_fraction"] += 1
        elif len(words) < 40:
            removed["too_short"] += 1
        elif dup / len(lines) > 0.2:
            removed["repeated_lines"] += 1
        else:
            kept.append(r["id"])
    return removed, kept


def test_filter_counts_match_independent_count(corpus, tmp_path):
    d, recs = corpus
    removed, kept = _independent(recs)
    assert removed["min_arabic_fraction"] == 600 and removed["too_short"] > 50  # the rules bite
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    out = tmp_path / "filtered"
    p = _tool("filter_data.py", "--input", str(d / "*"), "--output-dir", str(out), "--rules", str(rules),
              "--workers", "1", "--json")
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["docs_in"] == 1200
    assert summary["docs_out"] == len(kept)
    assert summary["removed_by_rule"] == removed
    got = [r["id"] for f in expand_inputs([str(out / "*")]) for _, r in iter_records(f)]
    assert got == kept
    # library call, annotated input (signals read, not recomputed) and removed records written
    ann = tmp_path / "ann"
    annotate_files(expand_inputs([str(d / "*")]), str(ann), progress=False)
    s = filter_files(expand_inputs([str(ann / "*")]), str(tmp_path / "f2"),
                     FilterConfig(rules=load_rules(str(rules)), write_removed=True), progress=False)
    assert s["removed_by_rule"] == removed and s["signals_computed"] == 0
    tagged = [r["filter_rule"] for f in expand_inputs([str(tmp_path / "f2" / "removed" / "*")])
              for _, r in iter_records(f)]
    assert {k: tagged.count(k) for k in removed} == removed


def test_example_rules_file_loads():
    rules = load_rules(os.path.join(REPO, "examples", "data", "filter_rules_ar.yaml"))
    assert rules[0].name == "min_arabic_fraction" and len(rules) > 10
    assert not any("paragraph" in r.signal and r.min for r in rules)  # no C4 paragraph rule


@pytest.mark.parametrize("bad,match", [
    ({"rules": [{"signal": "word_cnt", "min": 1}]}, r"rules\[0\].*unknown signal 'word_cnt'"),
    ({"rules": [{"signal": "word_count", "min": 5, "max": 1}]}, r"rules\[0\].*min 5 > max 1"),
    ({"rules": [{"signal": "word_count", "minimum": 5}]}, r"rules\[0\].*unknown key"),
    ({"min_arabic_fraction": 2}, "min_arabic_fraction"),
    ({"rule": []}, "unknown top-level"),
])
def test_bad_rules_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        parse_rules(bad, "rules.yaml")


def test_malformed_line_through_cli(corpus, tmp_path):
    d, recs = corpus
    src = tmp_path / "in.jsonl"
    lines = [dump_record(r) for r in recs[:5]]
    lines.insert(3, '{"id": "x", "txt": "no text key"}\n')
    src.write_text("".join(lines), encoding="utf-8")
    out = tmp_path / "o"
    p = _tool("quality_signals.py", "--input", str(src), "--output-dir", str(out), "--workers", "1",
              check=False)
    assert p.returncode == 2
    assert f"{src}:4: missing_key" in p.stderr and "Traceback" not in p.stderr
    assert not (out / "in.jsonl").exists()
    p = _tool("quality_signals.py", "--input", str(src), "--output-dir", str(out), "--workers", "1",
              "--on-error", "skip", "--json")
    s = json.loads(p.stdout.strip().splitlines()[-1])
    assert s["docs_in"] == 5 and s["errors"]["counts"] == {"missing_key": 1}
    assert s["errors"]["examples"][0].startswith(f"{src}:4:")
    p = _tool("quality_signals.py", "--input", str(tmp_path / "none*.jsonl"), "--output-dir", str(out),
              check=False)
    assert p.returncode == 2 and "none*.jsonl" in p.stderr


def test_normalize_tool_on_quran(tmp_path):
    simple, clean = material.quran_lines("simple"), material.quran_lines("simple-clean")
    src = tmp_path / "quran.jsonl.zst"
    with atomic_output(str(src)) as f:
        for i, v in enumerate(simple):
            f.write(dump_record({"id": i, "text": v, "metadata": {"variant": "simple"}}))
    out = tmp_path / "n"
    p = _tool("normalize_text.py", "--input", str(src), "--output-dir", str(out), "--workers", "1",
              "--no-remove-quranic-marks", "--json")
    s = json.loads(p.stdout.strip().splitlines()[-1])
    assert s["docs_in"] == s["docs_out"] == 6236
    got = [r for _, r in iter_records(str(out / "quran.jsonl.zst"))]
    assert [r["text"] for r in got] == clean  # Tanzil's own undiacritized text
    assert got[0]["metadata"] == {"variant": "simple",
                                  "normalization": {"arabic": {"remove_quranic_marks": False}}}


def test_histogram_buckets_and_samples(corpus, tmp_path):
    d, recs = corpus
    sigs = ("arabic_fraction", "word_count", "diacritics_fraction")
    out = tmp_path / "h"
    s = signal_histograms(expand_inputs([str(d / "*")]), str(out),
                          HistogramConfig(signals=sigs, samples_per_bucket=3), progress=False)
    hist = json.load(open(out / "histogram.json"))["signals"]
    # independent bucketing of word_count: whitespace tokens with a word character (see above)
    wc = [len([w for w in re.sub(r"[\u064b-\u0652\u0670\u0640]", "", r["text"]).split()
               if re.search(r"\w", w)]) for r in recs]
    lo, hi = min(wc), max(wc)
    assert (hist["word_count"]["min"], hist["word_count"]["max"]) == (lo, hi)
    exp = [0] * 10
    for x in wc:
        exp[min(9, int((x - lo) / (hi - lo) * 10))] += 1
    assert hist["word_count"]["counts"] == exp
    # Arabic and English docs split into the two end buckets
    assert hist["arabic_fraction"]["counts"][0] == 600 and hist["arabic_fraction"]["counts"][9] == 600
    rows = [json.loads(x) for x in open(out / "samples.jsonl", encoding="utf-8")]
    for sig in sigs:
        for b in range(10):
            got = [r for r in rows if r["signal"] == sig and r["bucket"] == b]
            assert len(got) == min(3, hist[sig]["counts"][b])
            for r in got:
                a, z = r["bucket_range"]
                assert a - 1e-9 <= r["value"] <= z + 1e-9
                assert r["source"].split(":")[-1].isdigit() and r["text"]
    assert s["docs"] == 1200 and s["samples"] == len(rows)
    # a rerun resumes both passes and gives the same sample
    s2 = signal_histograms(expand_inputs([str(d / "*")]), str(out),
                           HistogramConfig(signals=sigs, samples_per_bucket=3), progress=False)
    assert s2["shards_skipped"] == 3
    assert [json.loads(x) for x in open(out / "samples.jsonl", encoding="utf-8")] == rows


def test_kill_and_resume_tool(tmp_path, bukhari_records):
    """SIGKILL quality_signals.py after two of six shards, rerun it, compare with an
    uninterrupted run: same bytes, finished shards not redone."""
    src = tmp_path / "in"
    src.mkdir()
    recs = [{"id": f"b{r['id']}", "text": r["arabic"]} for r in bukhari_records[:1200]]
    for i in range(6):
        with atomic_output(str(src / f"s{i}.jsonl.gz")) as f:
            for r in recs[i * 200:(i + 1) * 200]:
                f.write(dump_record(r))
    inputs = expand_inputs([str(src / "*")])
    ref = tmp_path / "ref"
    annotate_files(inputs, str(ref), progress=False)

    out = tmp_path / "out"
    marks = out / ".shards"
    cmd = [sys.executable, "tools/quality_signals.py", "--input", str(src / "*"), "--output-dir", str(out),
           "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    def n_done():
        return len([n for n in os.listdir(marks) if n.endswith(".done.json")]) if marks.is_dir() else 0

    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if n_done() >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    done_before = n_done()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert 2 <= done_before < 6
    p = _tool("quality_signals.py", "--input", str(src / "*"), "--output-dir", str(out), "--workers", "1",
              "--json")
    s = json.loads(p.stdout.strip().splitlines()[-1])
    assert s["shards_skipped"] == done_before and s["docs_in"] == 1200
    for name in sorted(os.listdir(ref)):
        if name.startswith("."):
            continue
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert not [n for n in os.listdir(out) if ".tmp-" in n]  # the killed run's temp file is gone

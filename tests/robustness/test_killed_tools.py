"""kill -9 in the middle of a tool, then a rerun: the killed run's debris (temp files and
folders under :mod:`megatron_ar.io.atomic`'s temp names) is removed by the rerun, which says
so on stderr, and the rerun's output equals an uninterrupted run's, byte for byte.

The kill is real (SIGKILL of a subprocess once its temp output is seen on disk), on inputs
large enough that the temp lives for a while: SmolLM2-135M's real weights for ``convert``.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from megatron_ar.io.atomic import TEMP_RE

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "PYTHONPATH": REPO}


def _temps(d):
    return sorted(n for n in os.listdir(d) if TEMP_RE.match(n)) if os.path.isdir(d) else []


def _tree_digest(root):
    h = {}
    for d, _, files in os.walk(root):
        for f in sorted(files):
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                h[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return h


def _kill_when_temp_appears(cmd, watch_dir, timeout=240):
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline and proc.poll() is None:
        seen = _temps(watch_dir)
        if seen:
            time.sleep(0.3)  # let it write into the temp for a moment
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"finished before the kill: {err[-2000:]}"
    return seen


def test_convert_killed_then_rerun(smollm2_hf_dir, tmp_path):
    out = tmp_path / "meg"
    ref = tmp_path / "ref"
    base = [sys.executable, "tools/checkpoint/convert.py", "--model-type", "llama", "--loader",
            "hf", "--saver", "megatron", "--load-dir", smollm2_hf_dir]
    subprocess.run(base + ["--save-dir", str(ref)], cwd=REPO, env=ENV, check=True,
                   capture_output=True)
    seen = _kill_when_temp_appears(base + ["--save-dir", str(out)], str(tmp_path))
    assert seen and _temps(str(tmp_path)), "the killed run left no debris to clean"
    assert not out.exists()  # nothing under the final name
    p = subprocess.run(base + ["--save-dir", str(out)], cwd=REPO, env=ENV, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert _temps(str(tmp_path)) == []
    assert "removed" in p.stderr and seen[0] in p.stderr, p.stderr[-3000:]
    a, b = _tree_digest(str(ref)), _tree_digest(str(out))
    # the run metadata (timestamps) may differ; every tensor file must not
    assert {k: v for k, v in a.items() if k.endswith(".distcp")} == \
        {k: v for k, v in b.items() if k.endswith(".distcp")} and len(a) == len(b)


def test_quality_classifier_score_killed_then_resumed(tmp_path):
    """kill -9 while the second of three shards is being scored: the rerun keeps the finished
    shard (its done marker), removes the killed shard's temp and ends byte-identical to an
    uninterrupted run."""
    pytest.importorskip("fasttext", reason="fasttext not installed (.ci/install.sh)")
    import json

    import material
    from megatron_ar.text.classifier import TrainConfig, train_classifier

    recs = material.quality_task(600)
    with open(tmp_path / "ann.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
    train_classifier(TrainConfig(annotations=(str(tmp_path / "ann.jsonl"),),
                                 output=str(tmp_path / "m"), dim=16, epochs=5))
    for i in range(3):  # ~1-2 s of scoring each
        with open(tmp_path / f"p{i}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"id": f"{i}-{k}-{j}", "text": r["text"]},
                                    ensure_ascii=False) + "\n"
                         for k in range(6) for j, r in enumerate(recs))
    base = [sys.executable, "tools/quality_classifier.py", "score", "--model",
            str(tmp_path / "m"), "--input"] + [str(tmp_path / f"p{i}.jsonl") for i in range(3)] \
        + ["--workers", "1", "--no-progress", "--json", "--output-dir"]
    subprocess.run(base + [str(tmp_path / "ref")], cwd=REPO, env=ENV, check=True,
                   capture_output=True)
    out = tmp_path / "out"
    proc = subprocess.Popen(base + [str(out)], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, seen = time.time() + 240, []
    while time.time() < deadline and proc.poll() is None:
        if (out / ".shards" / "p0.jsonl.done.json").exists():
            seen = [n for n in _temps(str(out)) if "p1.jsonl" in n]
            if seen:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "finished before the kill"
    assert not (out / "p1.jsonl").exists() and (out / "p0.jsonl").exists()
    p = subprocess.run(base + [str(out)], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout.strip().splitlines()[-1])["shards_skipped"] == 1
    assert "removed" in p.stderr and seen[0] in p.stderr, p.stderr[-3000:]
    assert _temps(str(out)) == []
    assert {k: v for k, v in _tree_digest(str(out)).items() if not k.startswith(".shards")} == \
        {k: v for k, v in _tree_digest(str(tmp_path / "ref")).items()
         if not k.startswith(".shards")}

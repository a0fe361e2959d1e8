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

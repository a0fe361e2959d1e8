"""The one atomic publisher: complete under the final name or absent; temps of killed writers
cleaned up (and only those)."""
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from megatron_ar.io.atomic import (
    TEMP_RE,
    atomic_output,
    publish_dir,
    publish_file,
    publish_files,
    remove_stale_temps,
    temp_path,
    write_json_atomic,
)

pytestmark = pytest.mark.unit


def test_temp_name_convention(tmp_path):
    t = temp_path(str(tmp_path / "data.bin"))
    assert os.path.dirname(t) == str(tmp_path)
    m = TEMP_RE.match(os.path.basename(t))
    assert m and m.group("name") == "data.bin" and int(m.group("pid")) == os.getpid()
    assert TEMP_RE.match(os.path.basename(temp_path(str(tmp_path / "d"), old=True))).group("old")


def test_publish_file_any_writer_and_failure(tmp_path):
    path = str(tmp_path / "ids.npy")
    ids = np.arange(1000, dtype=np.int32)
    with publish_file(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, ids)
        assert not os.path.exists(path)  # invisible until the block succeeds
    assert np.array_equal(np.load(path), ids)
    with pytest.raises(RuntimeError, match="boom"):
        with publish_file(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["ids.npy"]
    assert np.array_equal(np.load(path), ids)  # the old file is untouched


def test_publish_files_pair(tmp_path):
    a, b = str(tmp_path / "x.bin"), str(tmp_path / "x.idx")
    with publish_files([a, b]) as (ta, tb):
        open(ta, "wb").write(b"bin")
        open(tb, "wb").write(b"idx")
    assert open(a, "rb").read() == b"bin" and open(b, "rb").read() == b"idx"
    with pytest.raises(ValueError):
        with publish_files([a, b]) as (ta, tb):
            open(ta, "wb").write(b"new")
            raise ValueError("bad input")
    assert open(a, "rb").read() == b"bin" and sorted(os.listdir(tmp_path)) == ["x.bin", "x.idx"]


def test_publish_dir_error_replace_keep(tmp_path):
    out = str(tmp_path / "model")
    with publish_dir(out) as d:
        open(os.path.join(d, "a.json"), "w").write("1")
    with pytest.raises(FileExistsError):
        with publish_dir(out) as d:
            open(os.path.join(d, "a.json"), "w").write("2")
    assert open(os.path.join(out, "a.json")).read() == "1"
    with publish_dir(out, exist="keep") as d:
        open(os.path.join(d, "a.json"), "w").write("3")
    assert open(os.path.join(out, "a.json")).read() == "1"
    with publish_dir(out, exist="replace") as d:
        os.makedirs(os.path.join(d, "sub"))
        open(os.path.join(d, "sub", "b.json"), "w").write("4")
    assert sorted(os.listdir(out)) == ["sub"]
    with pytest.raises(KeyError):
        with publish_dir(out, exist="replace") as d:
            raise KeyError("x")
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temp, no displaced copy left


def test_atomic_output_compression_by_final_name(tmp_path):
    import gzip

    import zstandard

    rows = [{"id": i, "text": "نص عربي " * i} for i in range(50)]
    for name in ("r.jsonl", "r.jsonl.gz", "r.jsonl.zst"):
        write_json_atomic(str(tmp_path / name), rows)
    raw = (tmp_path / "r.jsonl").read_bytes()
    assert json.loads(raw) == rows and raw.endswith(b"\n")
    assert gzip.decompress((tmp_path / "r.jsonl.gz").read_bytes()) == raw
    assert zstandard.ZstdDecompressor().stream_reader(
        open(tmp_path / "r.jsonl.zst", "rb")).read() == raw
    with atomic_output(str(tmp_path / "b.bin"), "wb") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


_WRITER = textwrap.dedent("""
    import sys, time
    from megatron_ar.io.atomic import publish_file, publish_dir
    with publish_file(sys.argv[1]) as t, publish_dir(sys.argv[2]) as d:
        open(t, "w").write("partial")
        print("ready", flush=True)
        time.sleep(600)
""")


def _start_writer(tmp_path, tag):
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / f"{tag}.txt"),
                             str(tmp_path / f"{tag}-dir")], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_remove_stale_temps_only_of_dead_writers(tmp_path, caplog):
    killed = _start_writer(tmp_path, "killed")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    alive = _start_writer(tmp_path, "alive")
    try:
        foreign = tmp_path / ".x.txt.tmp-otherhost-1"
        foreign.write_text("a writer on another node")
        other = tmp_path / ".y.txt.tmp-7"  # not this module's convention: never touched
        other.write_text("?")
        names = sorted(os.listdir(tmp_path))
        stale = [n for n in names if TEMP_RE.match(n) and f"-{killed.pid}" in n]
        assert len(stale) == 2  # the killed writer's file and directory temps
        with caplog.at_level(logging.WARNING, logger="megatron_ar.io.atomic"):
            removed = remove_stale_temps([str(tmp_path)])
        assert sorted(os.path.basename(p) for p in removed) == stale
        assert len(caplog.records) == 2
        assert all("killed run" in r.getMessage() for r in caplog.records)
        assert sorted(os.listdir(tmp_path)) == sorted(set(names) - set(stale))
        assert not (tmp_path / "killed.txt").exists()
    finally:
        alive.kill()
        alive.wait()
    # the other writer's temps are stale once it is gone
    assert len(remove_stale_temps([str(tmp_path)])) == 2
    assert sorted(os.listdir(tmp_path)) == sorted([foreign.name, other.name])

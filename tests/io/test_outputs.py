"""The output rule (megatron_ar.io.outputs): oracles are the file system's own state before and
after (names, bytes, inode numbers)."""
import os

import pytest

from megatron_ar.io.atomic import temp_path
from megatron_ar.io.outputs import (
    OutputError,
    check_dir_output,
    check_file_output,
    publish_into_dir,
    refuse_overlap,
)

pytestmark = pytest.mark.unit


def _tree(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def test_overlap_is_contains_inside_and_symlinks(tmp_path):
    corpus = tmp_path / "data" / "corpus.jsonl"
    corpus.parent.mkdir()
    corpus.write_text("{}\n")
    with pytest.raises(OutputError, match=r"--output .*: is the input"):
        refuse_overlap([str(corpus)], [str(corpus)])
    with pytest.raises(OutputError, match="contains the input"):
        refuse_overlap([str(tmp_path / "data")], [str(corpus)])
    with pytest.raises(OutputError, match="lies inside the input"):
        refuse_overlap([str(tmp_path / "data" / "out")], [str(tmp_path / "data")])
    link = tmp_path / "link.jsonl"
    link.symlink_to(corpus)
    with pytest.raises(OutputError, match="is the input"):
        refuse_overlap([str(link)], [str(corpus)], key="--clusters")
    # A sibling whose name starts like the input is not inside it.
    refuse_overlap([str(tmp_path / "data2")], [str(tmp_path / "data")])
    refuse_overlap([str(tmp_path / "out.jsonl")], [str(corpus)])


def test_file_output(tmp_path):
    f = tmp_path / "x.jsonl"
    check_file_output(str(f), overwrite=False)
    f.write_text("1")
    with pytest.raises(OutputError, match="exists; pass --overwrite"):
        check_file_output(str(f), overwrite=False)
    check_file_output(str(f), overwrite=True)
    with pytest.raises(OutputError, match="is a directory"):
        check_file_output(str(tmp_path), overwrite=True)


def test_new_directory_is_published_whole(tmp_path):
    out = tmp_path / "tok"
    with publish_into_dir(str(out), overwrite=False, names=("a.json",)) as tmp:
        assert not out.exists()
        (open(os.path.join(tmp, "a.json"), "w")).write("new")
    assert _tree(out) == {"a.json": b"new"}
    assert os.listdir(tmp_path) == ["tok"]  # no temp left


def test_foreign_files_survive_and_owned_need_overwrite(tmp_path):
    out = tmp_path / "tok"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"weights")  # foreign to a tokenizer tool
    (out / "sub").mkdir()
    (out / "sub" / "notes.txt").write_text("keep")
    with publish_into_dir(str(out), overwrite=False, names=("tokenizer.json",)) as tmp:
        open(os.path.join(tmp, "tokenizer.json"), "w").write("v1")
    assert _tree(out) == {"model.safetensors": b"weights", "sub/notes.txt": b"keep",
                          "tokenizer.json": b"v1"}
    with pytest.raises(OutputError, match=r"already holds this tool's output \(tokenizer.json\)"):
        check_dir_output(str(out), overwrite=False, names=("tokenizer.json",))
    with pytest.raises(OutputError, match="already holds"):
        with publish_into_dir(str(out), overwrite=False, names=("tokenizer.json",)) as tmp:
            raise AssertionError("not reached: refused before the block")
    with publish_into_dir(str(out), overwrite=True, names=("tokenizer.json",)) as tmp:
        open(os.path.join(tmp, "tokenizer.json"), "w").write("v2")
    assert _tree(out) == {"model.safetensors": b"weights", "sub/notes.txt": b"keep",
                          "tokenizer.json": b"v2"}


def test_writing_a_foreign_name_needs_overwrite(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "README").write_text("theirs")
    with pytest.raises(OutputError, match="already has README"):
        with publish_into_dir(str(out), overwrite=False, names=("x",)) as tmp:
            open(os.path.join(tmp, "README"), "w").write("ours")
    assert _tree(out) == {"README": b"theirs"}
    assert sorted(os.listdir(tmp_path)) == ["o"]


def test_stale_owned_entries_are_removed_on_overwrite(tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    for i in range(1, 5):
        (out / f"model-0000{i}-of-00004.safetensors").write_bytes(b"old")
    (out / "train_log.txt").write_text("foreign")
    with publish_into_dir(str(out), overwrite=True, patterns=("*.safetensors",)) as tmp:
        for i in range(1, 3):
            open(os.path.join(tmp, f"model-0000{i}-of-00002.safetensors"), "wb").write(b"new")
    assert _tree(out) == {"model-00001-of-00002.safetensors": b"new",
                          "model-00002-of-00002.safetensors": b"new", "train_log.txt": b"foreign"}


def test_error_in_block_leaves_target_untouched_and_no_temp(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "a").write_text("old")
    with pytest.raises(RuntimeError):
        with publish_into_dir(str(out), overwrite=True, names=("a",)) as tmp:
            open(os.path.join(tmp, "a"), "w").write("half")
            raise RuntimeError("killed")
    assert _tree(out) == {"a": b"old"} and sorted(os.listdir(tmp_path)) == ["o"]


def test_stale_temp_of_a_killed_run_is_removed(tmp_path, caplog):
    out = tmp_path / "ckpt"
    dead = temp_path(str(out)).rsplit("-", 1)[0] + "-999999"  # same host, a pid that is gone
    os.makedirs(dead)
    with publish_into_dir(str(out), overwrite=False, names=("a",)) as tmp:
        open(os.path.join(tmp, "a"), "w").write("x")
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert "killed run" in caplog.text

"""The curriculum fingerprint covers ``.bin`` content (a resumed run must fail loudly when the
data changed under it): a token file rewritten in place with the same size.

The dataset is an 8 MiB ``.bin`` (4M uint16 tokens in 2,000 documents, written with megatron-core's
``IndexedDatasetBuilder``), big enough that ``sampled`` mode leaves unsampled gaps. Oracles: the
``full`` digest is ``hashlib.sha256`` of the file; which byte flips are detected follows from the
documented block geometry (first/last + 32 evenly spaced 64 KiB blocks).
"""
from __future__ import annotations

import hashlib
import os

import numpy
import pytest
import torch
import yaml

from megatron_ar.data.curriculum import CurriculumConfig, CurriculumDataset, CurriculumMismatchError
from megatron_ar.data.curriculum_plan import (
    BIN_BLOCK,
    BIN_INTERIOR_BLOCKS,
    bin_digest,
    bin_sample_offsets,
    build_manifest,
    fingerprint_of,
    plan_curriculum,
)

pytestmark = pytest.mark.unit

SEQ, GBS = 64, 8
DOCS, DOC_TOKENS = 2000, 2048


@pytest.fixture(scope="module")
def big_prefix(tmp_path_factory):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = str(tmp_path_factory.mktemp("fp") / "big_text_document")
    rng = numpy.random.default_rng(11)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.uint16)
    tokens = rng.integers(0, 4096, DOCS * DOC_TOKENS, dtype=numpy.int64)
    builder.add_document(torch.from_numpy(tokens), [DOC_TOKENS] * DOCS)  # DOCS sequences
    builder.finalize(prefix + ".idx")
    assert os.path.getsize(prefix + ".bin") == DOCS * DOC_TOKENS * 2
    return prefix


def _recipe(prefix, cache, mode=None):
    data = {"datasets": {"big": prefix}, "cache_dir": cache,
            "phases": [{"name": "only", "tokens": 32 * SEQ, "datasets": ["big"]}]}
    if mode:
        data["bin_fingerprint"] = mode
    return {"model": {"seq_length": SEQ}, "schedule": {"global_batch_size": GBS}, "data": data}


def _cc(recipe):
    """The recipe's curriculum, read by the one recipe loader (the trainer's)."""
    from megatron_ar.training.config import load_config

    return load_config(text=yaml.safe_dump(recipe, sort_keys=False)).data


def _flip(path, offset, n=8):
    """Invert ``n`` bytes at ``offset`` in place (same size, same .idx)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(n)
        f.seek(offset)
        f.write(bytes(x ^ 0xFF for x in b))


def _gap_offset(size):
    """A byte in the middle of the gap between the 17th and 18th sampled blocks."""
    offs = bin_sample_offsets(size)
    lo, hi = offs[16] + BIN_BLOCK, offs[17]
    assert hi - lo > 1024, "the test file must leave unsampled gaps"
    return (lo + hi) // 2


def test_sample_geometry_and_full_oracle(big_prefix):
    path = big_prefix + ".bin"
    size = os.path.getsize(path)
    offs = bin_sample_offsets(size)
    n = BIN_INTERIOR_BLOCKS + 2
    assert len(offs) == n and offs[0] == 0 and offs[-1] == size - BIN_BLOCK
    steps = numpy.diff(offs)
    assert steps.min() >= BIN_BLOCK and steps.max() - steps.min() <= 1  # evenly spaced, no overlap
    assert bin_sample_offsets(n * BIN_BLOCK) == [0]  # small files are hashed whole
    full = bin_digest(path, "full")
    with open(path, "rb") as f:
        assert full == {"bin_bytes": size, "bin_hash": "full", "bin_sha256": hashlib.sha256(f.read()).hexdigest()}
    sampled = bin_digest(path)
    assert sampled["bin_hash"] == f"sampled:{n}x{BIN_BLOCK}" and sampled["bin_bytes"] == size
    assert bin_digest(path, "size") == {"bin_bytes": size, "bin_hash": "size", "bin_sha256": None}


@pytest.fixture()
def copy_prefix(big_prefix, tmp_path):
    import shutil

    prefix = str(tmp_path / "big_text_document")
    for ext in (".bin", ".idx"):
        shutil.copy(big_prefix + ext, prefix + ext)
    return prefix


def test_rewrite_inside_sampled_block_fails_resume_naming_the_file(copy_prefix, tmp_path):
    cache = str(tmp_path / "cache")
    ds = CurriculumDataset(_cc(_recipe(copy_prefix, cache)))
    ds.advance(GBS)
    state = ds.state_dict()
    size = os.path.getsize(copy_prefix + ".bin")
    middle = bin_sample_offsets(size)[17] + 1000  # inside a sampled block in the middle
    _flip(copy_prefix + ".bin", middle)
    assert os.path.getsize(copy_prefix + ".bin") == size
    # a fresh run on the changed data works: its index is built under the new fingerprint
    again = CurriculumDataset(_cc(_recipe(copy_prefix, cache)))
    assert again.fingerprint != ds.fingerprint and again.index_dir != ds.index_dir
    assert len(again) == len(ds) and again.manifest["datasets"]["big"]["idx_sha256"] == \
        ds.manifest["datasets"]["big"]["idx_sha256"]  # .idx identical: only the .bin digest saw it
    assert len(os.listdir(os.path.join(cache, "gpt"))) == 1  # megatron's epoch indices are reused
    # ... but resuming the old run's data position is refused, naming the .bin
    with pytest.raises(CurriculumMismatchError) as exc:
        again.load_state_dict(state)
    assert f"datasets.big ({copy_prefix}.bin) changed: bin_sha256" in str(exc.value)


def test_rewrite_in_unsampled_gap_is_the_documented_blind_spot(copy_prefix, tmp_path):
    cache = str(tmp_path / "cache")
    path = copy_prefix + ".bin"
    size = os.path.getsize(path)
    sampled = CurriculumDataset(_cc(_recipe(copy_prefix, cache)))
    full = CurriculumDataset(_cc(_recipe(copy_prefix, cache, "full")))
    size_only = CurriculumDataset(_cc(_recipe(copy_prefix, cache, "size")))
    states = {m: d.state_dict() for m, d in (("sampled", sampled), ("full", full), ("size", size_only))}
    assert len({s["fingerprint"] for s in states.values()}) == 3  # the mode is fingerprinted
    _flip(path, _gap_offset(size))
    # sampled: not detected (the change is confined to bytes it does not read)
    after = CurriculumDataset(_cc(_recipe(copy_prefix, cache)))
    assert after.fingerprint == sampled.fingerprint
    after.load_state_dict(states["sampled"])
    # size only: not detected either
    CurriculumDataset(_cc(_recipe(copy_prefix, cache, "size"))).load_state_dict(states["size"])
    # full: detected, naming the file
    with pytest.raises(CurriculumMismatchError) as exc:
        CurriculumDataset(_cc(_recipe(copy_prefix, cache, "full"))).load_state_dict(states["full"])
    assert f"datasets.big ({copy_prefix}.bin) changed: bin_sha256" in str(exc.value) and "(full)" in str(exc.value)
    # switching modes between save and resume is refused with a message that says so
    with pytest.raises(CurriculumMismatchError, match=r"fingerprint mode changed sampled:34x65536 -> full"):
        CurriculumDataset(_cc(_recipe(copy_prefix, cache, "full"))).load_state_dict(states["sampled"])


def test_first_and_last_blocks_are_always_sampled(copy_prefix, tmp_path):
    cfg = _cc(_recipe(copy_prefix, str(tmp_path / "cache")))
    plan = plan_curriculum(cfg)
    fp0 = fingerprint_of(build_manifest(cfg, plan))
    size = os.path.getsize(copy_prefix + ".bin")
    for off in (3, size - 5):
        _flip(copy_prefix + ".bin", off, 2)
        fp = fingerprint_of(build_manifest(cfg, plan))
        assert fp != fp0
        _flip(copy_prefix + ".bin", off, 2)  # restore
        assert fingerprint_of(build_manifest(cfg, plan)) == fp0


def test_bad_mode_and_missing_bin_name_the_key_and_file(copy_prefix, tmp_path):
    from megatron_ar.data.curriculum import CurriculumConfigError, CurriculumDataError

    from megatron_ar.training.config import ConfigError

    with pytest.raises(CurriculumConfigError, match="data.bin_fingerprint: must be sampled, full or size"):
        CurriculumConfig.from_dict(_recipe(copy_prefix, str(tmp_path), "md5")["data"])
    with pytest.raises(ConfigError, match="data.bin_fingerprint: must be sampled, full or size"):
        _cc(_recipe(copy_prefix, str(tmp_path), "md5"))
    cfg = _cc(_recipe(copy_prefix, str(tmp_path / "cache")))
    plan = plan_curriculum(cfg)  # .idx only
    os.remove(copy_prefix + ".bin")
    with pytest.raises(CurriculumDataError, match=rf"data.datasets.big: file not found: {copy_prefix}\.bin"):
        build_manifest(cfg, plan)

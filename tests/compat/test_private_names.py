"""megatron_ar.compat's private-name accessors against the installed megatron-core: the names
and signatures they need exist, and what they return agrees with megatron-core's public API
(oracle: ``IndexedDataset`` over the same files; megatron-core's own RNG tracker)."""
import numpy
import pytest
import torch

from megatron_ar.compat import dist_checkpointing as cdc
from megatron_ar.compat import indexed, optimizer_state, rng
from megatron_ar.compat.version import MegatronCoreAPIError, upstream_attr

pytestmark = pytest.mark.unit


def test_upstream_attr_names_the_missing_name_and_the_user():
    import megatron.core.tensor_parallel.random as mrandom

    with pytest.raises(MegatronCoreAPIError, match=r"megatron-core 0\.\d+\.\d+: megatron\.core\.tensor_parallel"
                                                   r"\.random\._no_such_name does not exist; me\.fn"):
        upstream_attr(mrandom, "_no_such_name", "me.fn")
    with pytest.raises(MegatronCoreAPIError, match=r"_get_cuda_rng_state takes \('device', 'clone', "
                                                   r"'graph_safe'\), me\.fn expects \('seed',\)"):
        upstream_attr(mrandom, "_get_cuda_rng_state", "me.fn", ("seed",))


def test_rng_patches_drive_megatron_core_tracker_on_cpu():
    """Installed by the CPU layer, the two patches make megatron-core's CudaRNGStatesTracker fork
    the CPU generator: two forks of one seeded stream continue that seed's draws (oracle: a
    torch.Generator with the same seed), and the default stream is untouched by the forks."""
    import megatron.core.tensor_parallel.random as mrandom
    from megatron.core.tensor_parallel.random import CudaRNGStatesTracker

    from megatron_ar.runtime import install_cpu_emulation, uninstall_cpu_emulation

    patches = rng.cuda_rng_state_patches()
    assert [(owner, name) for owner, name, _ in patches] == [
        (mrandom, "_get_cuda_rng_state"), (mrandom, "_set_cuda_rng_state")]
    originals = (mrandom._get_cuda_rng_state, mrandom._set_cuda_rng_state)
    torch.manual_seed(5)
    expected_default = torch.rand(3)
    install_cpu_emulation()
    try:
        assert mrandom._get_cuda_rng_state is not originals[0]
        torch.manual_seed(5)
        tracker = CudaRNGStatesTracker()
        tracker.add("tp", 77)
        with tracker.fork("tp"):
            a = torch.rand(4)
        with tracker.fork("tp"):
            b = torch.rand(4)
        after = torch.rand(3)
    finally:
        uninstall_cpu_emulation()
    assert (mrandom._get_cuda_rng_state, mrandom._set_cuda_rng_state) == originals
    g = torch.Generator().manual_seed(77)
    assert torch.equal(a, torch.rand(4, generator=g)) and torch.equal(b, torch.rand(4, generator=g))
    assert torch.equal(after, expected_default)


def test_open_index_matches_indexed_dataset(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    rs = numpy.random.RandomState(3)
    prefix = str(tmp_path / "ds")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.uint16)
    for n in rs.randint(1, 50, size=17):
        builder.add_document(torch.from_numpy(rs.randint(0, 60000, size=int(n)).astype(numpy.int64)), [int(n)])
    builder.finalize(prefix + ".idx")
    reader = indexed.open_index(prefix + ".idx")
    ds = IndexedDataset(prefix)
    assert numpy.array_equal(reader.sequence_lengths, ds.sequence_lengths)
    assert numpy.array_equal(reader.document_indices, ds.document_indices)
    assert numpy.dtype(reader.dtype) == numpy.uint16


def test_open_index_rejects_a_non_idx_file(tmp_path):
    bad = tmp_path / "x.idx"
    bad.write_bytes(b"not an index at all")
    with pytest.raises(AssertionError, match="bad header"):
        indexed.open_index(str(bad))


def test_optimizer_layout_facts():
    assert {"fully_reshardable", "fully_sharded_model_space"} <= set(optimizer_state.fully_reshardable_formats())
    assert "dp_reshardable" not in optimizer_state.fully_reshardable_formats()
    assert {"wd_mult", "lr_mult", "is_expert_parallel", "is_decoupled_lr"} <= set(
        optimizer_state.param_group_identifier_keys())
    assert optimizer_state.saved_optimizer_kind({"param_state_sharding_type": "dp_reshardable"}) == (
        optimizer_state.DIST, "dp_reshardable")
    assert optimizer_state.saved_optimizer_kind({"optimizer": {"param_groups": []}}) == (optimizer_state.PLAIN_MIXED, None)
    assert optimizer_state.saved_optimizer_kind({"param_groups": []}) == (optimizer_state.PLAIN_FP32, None)
    assert optimizer_state.saved_optimizer_kind({"foo": 1}) is None
    assert optimizer_state.split_chained({0: "a", 1: "b"}, 2) == ["a", "b"]
    assert optimizer_state.join_chained(["a", "b"]) == {0: "a", 1: "b"}
    assert optimizer_state.join_chained(["a"]) == "a"


def test_rename_optimizer_state_key_renames_only_that_key():
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    sd = {"a": ShardedTensor.from_rank_offsets("optimizer.state.param.decoder.w", torch.zeros(2)),
          "b": [ShardedTensor.from_rank_offsets("optimizer.state.exp_avg.decoder.w", torch.zeros(2))],
          "c": 3}
    optimizer_state.rename_optimizer_state_key(sd, "param", "fp32_param")
    assert sd["a"].key == "optimizer.state.fp32_param.decoder.w"
    assert sd["b"][0].key == "optimizer.state.exp_avg.decoder.w" and sd["c"] == 3


def test_replace_state_dict_keys_groups_shards_by_key():
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    a = ShardedTensor.from_rank_offsets("w", torch.zeros(4))
    flat, _, _ = cdc.replace_state_dict_keys_with_sharded_keys({"x": {"y": a}})
    assert list(flat) == ["w"] and flat["w"] == [a]

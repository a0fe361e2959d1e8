"""Multi-phase curricula across two gloo ranks (forked): rank 0 builds the index cache, rank 1
reads it, and each rank's micro-batches are its slice of the single-process sample order. The
data, recipe and single-process build are test_curriculum.py's."""
import json
import os

import pytest
import torch

from megatron_ar.data.curriculum import CurriculumDataset, batch_layout
from test_curriculum import GBS, _cc, _recipe, built, corpus  # noqa: F401  (module fixtures, rebuilt here)

pytestmark = pytest.mark.multiproc


def _dist_worker(rank, world, port, recipe, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=rank, world_size=world)
    try:
        ds = CurriculumDataset(_cc(recipe))  # rank 0 builds, rank 1 reads
        ds.advance(2 * GBS)
        it = iter(ds.sampler(micro_batch_size=2, data_parallel_rank=rank, data_parallel_size=world))
        got = [[ds.sample_tokens(i).tolist() for i in next(it)] for _ in range(4)]
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"fingerprint": ds.fingerprint, "tokens": got}, f)
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_share_one_build(corpus, built, tmp_path):
    import socket

    _, ds = built
    recipe = _recipe(corpus, cache_dir=str(tmp_path / "cache"))
    with socket.socket() as s_:
        s_.bind(("127.0.0.1", 0))
        port = s_.getsockname()[1]
    # fork: the children reuse the imported torch/megatron (spawn re-imports them: ~1 min on 2 cores)
    torch.multiprocessing.start_processes(_dist_worker, args=(2, port, recipe, str(tmp_path)), nprocs=2,
                                          join=True, start_method="fork")
    res = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    assert res[0]["fingerprint"] == res[1]["fingerprint"] == ds.fingerprint
    for r in range(2):  # each rank got its slice of steps 2 and 3, same tokens as one process
        idx = [batch_layout(c, GBS, 2, 2)[m, r] for c in (2 * GBS, 3 * GBS) for m in range(2)]
        assert res[r]["tokens"] == [[ds.sample_tokens(int(i)).tolist() for i in mb] for mb in idx]

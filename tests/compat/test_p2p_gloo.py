"""megatron_ar.compat.p2p: megatron-core's batched pipeline p2p on gloo swaps the activation and
the gradient when the previous and the next stage are the same rank (PP=2); the unbatched path
that compat picks for gloo delivers them right. Oracle: what each rank sent. Two spawned ranks."""
import os
import sys

import pytest

from megatron_ar.compat.p2p import WORKAROUND_RANGE, batch_p2p_comm
from megatron_ar.compat.version import MCORE_VERSION, fmt, in_range, range_str
from megatron_ar.runtime import run_multiprocess

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mar_compat_workers as workers  # noqa: E402

pytestmark = pytest.mark.multiproc


def _expected(rank):
    peer = 1 - rank
    # what the peer sent: its activation (100*peer+1) to its next stage, its gradient
    # (100*peer+2) to its previous stage; with PP=2 both go to this rank.
    return {"from_prev": [100.0 * peer + 1] * 4, "from_next": [100.0 * peer + 2] * 4}


def test_batched_p2p_swaps_messages_on_gloo():
    if not in_range(MCORE_VERSION, *WORKAROUND_RANGE):
        pytest.skip(f"megatron-core {fmt(MCORE_VERSION)} is outside {range_str(*WORKAROUND_RANGE)}")
    assert batch_p2p_comm(on_gpu=False) is False and batch_p2p_comm(on_gpu=True) is True
    unbatched = run_multiprocess(workers.p2p_exchange, 2, False, timeout=600)
    for r in unbatched:
        exp = _expected(r["rank"])
        assert (r["from_prev"], r["from_next"]) == (exp["from_prev"], exp["from_next"]), r
    batched = run_multiprocess(workers.p2p_exchange, 2, True, timeout=600)
    swapped = [(r["from_prev"], r["from_next"]) == (_expected(r["rank"])["from_next"],
                                                    _expected(r["rank"])["from_prev"]) for r in batched]
    assert all(swapped), (
        f"upstream fixed batched p2p message order on gloo in megatron-core {fmt(MCORE_VERSION)} "
        f"(got {batched}): remove megatron_ar.compat.p2p.batch_p2p_comm")

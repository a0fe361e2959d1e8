"""The two GPU bugs that motivated strict device emulation, re-introduced into the real step
code of a 2-rank megatron-core job, are each caught with the operation and the file:line of the
faulty call; the correct code passes (strict_workers.py)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import strict_workers  # noqa: E402

from megatron_ar.runtime import run_multiprocess  # noqa: E402

pytestmark = pytest.mark.multiproc


@pytest.fixture(scope="module")
def results():
    return run_multiprocess(strict_workers.reintroduced_bugs, 2, 1234, timeout=900,
                            env={"MEGATRON_AR_STRICT_DEVICE": "1"})


def _source_line(location: str) -> str:
    path, line = location.split(" in ")[0].rsplit(":", 1)
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()[int(line) - 1]


def _file(module) -> str:
    return os.path.abspath(module.__file__)


def _step_file() -> str:
    import megatron_ar.models.step as step

    return _file(step)


def test_correct_step_passes(results):
    for r in results:
        assert r["strict"] is True
    # the global loss is the token-weighted mean over both DP ranks (64 target tokens each),
    # identical on every rank; the ranks' own losses differ (different data)
    local = [r["local_loss"] for r in results]
    assert local[0] != local[1]
    for r in results:
        assert r["global_loss"] == pytest.approx(sum(local) / 2, rel=1e-12)


def test_cpu_batch_is_caught(results):
    for r in results:
        c = r["cpu_batch"]
        assert c["op"] == "torch.nn.functional.embedding", c
        assert c["location"].startswith(_step_file() + ":"), c
        assert "model(tokens" in _source_line(c["location"]), c
        assert "CPU tensor (argument 0: int64[2, 16])" in c["message"], c


def test_cpu_allreduce_is_caught(results):
    import megatron_ar.training.loop as loop

    for r in results:
        c = r["cpu_allreduce"]
        assert c["op"] == "torch.distributed.all_reduce", c
        assert c["location"].startswith(_file(loop) + ":"), c
        assert "dist.all_reduce(" in _source_line(c["location"]), c
        assert "float32[1]" in c["message"] and "NCCL" in c["message"], c


def test_cpu_loss_sums_are_caught(results):
    for r in results:
        c = r["cpu_loss_sums"]
        assert c["op"] == "torch.Tensor.add_", c
        assert c["location"].startswith(_step_file() + ":"), c
        assert "+= x[LOSS_KEY]" in _source_line(c["location"]), c
        assert "CPU tensor (argument 0: float64[2])" in c["message"], c

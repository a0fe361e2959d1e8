"""In-process checks of megatron_ar.runtime argument handling (no process group is created and
the CPU emulation must stay uninstalled in the pytest process)."""
import pytest

from megatron_ar.runtime import cpu_emulation_installed, init_distributed, run_multiprocess

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("kwargs,match", [
    ({"tp": 0}, "tp must be a positive int"),
    ({"pp": 1, "vpp": 2}, "vpp > 1 needs pp >= 2"),
    ({"backend": "mpi"}, "backend must be 'gloo' or 'nccl'"),
])
def test_init_distributed_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        init_distributed(**kwargs)
    assert not cpu_emulation_installed()


def test_init_distributed_names_missing_rendezvous(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="RANK.*WORLD_SIZE.*MASTER_ADDR.*MASTER_PORT"):
        init_distributed(backend="gloo")
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(ValueError, match="RANK='zero'"):
        init_distributed(backend="gloo")
    assert not cpu_emulation_installed()


def test_run_multiprocess_rejects_bad_world():
    with pytest.raises(ValueError, match="world_size"):
        run_multiprocess(print, 0)

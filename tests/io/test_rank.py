"""Rank-aware printing: the launcher's RANK before a process group exists, the group's rank once
one does; importing it never imports torch.distributed."""
import subprocess
import sys

import pytest

from megatron_ar.io.rank import global_rank, is_rank, print_rank

pytestmark = pytest.mark.unit


def test_import_does_not_load_torch_distributed():
    code = "import sys, megatron_ar.io.rank; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_env_rank_then_process_group_rank(monkeypatch, capsys):
    import torch.distributed as dist

    from megatron_ar.runtime import find_free_port

    monkeypatch.setenv("RANK", "3")
    assert global_rank() == 3 and is_rank(3) and not is_rank(0)
    print_rank("from rank 0")
    print_rank("from rank 3", rank=3)
    print_rank("everyone", rank=None)
    assert capsys.readouterr().out.splitlines() == ["from rank 3", "[rank 3] everyone"]
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{find_free_port()}", rank=0,
                            world_size=1)
    try:
        assert global_rank() == dist.get_rank() == 0  # the group's rank wins over RANK=3
        print_rank("now rank 0")
        assert capsys.readouterr().out == "now rank 0\n"
    finally:
        dist.destroy_process_group()

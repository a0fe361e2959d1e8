"""Strict device emulation in one process: each kind of device error CUDA/NCCL would raise is
raised with the operation and this file's line; what CUDA accepts passes; placements propagate
through ops, moves and backward.

The oracle for "legal" and "illegal" is CUDA's documented behaviour (same-device rule of
TensorIterator ops with the 0-dim CPU scalar exception, cross-device ``copy_``/``to``, CPU
indices in advanced indexing, NCCL's device-only tensors), not our own code.
"""
import inspect
import os
import pickle

import numpy as np
import pytest
import torch
import torch.distributed as dist

from megatron_ar.runtime import (DeviceMismatchError, cpu_emulation_installed, current_device,
                                 find_free_port, group_device, group_tensor, install_cpu_emulation,
                                 module_to_device, strict_device_emulation, to_device,
                                 uninstall_cpu_emulation)
from megatron_ar.runtime.strict import DEVICE, ENV, HOST, TAG, UNKNOWN, placement, strict_from_env

pytestmark = pytest.mark.unit

HERE = os.path.abspath(__file__)


def _next_line() -> str:
    """``this_file:<line after the caller's line>``: where the statement under test is."""
    return f"{HERE}:{inspect.currentframe().f_back.f_lineno + 1}"


@pytest.fixture
def strict():
    assert not cpu_emulation_installed(), "another test left the CPU layer installed"
    install_cpu_emulation(strict=True)
    torch.manual_seed(0)
    try:
        yield
    finally:
        uninstall_cpu_emulation()


@pytest.fixture
def group(strict):
    """A one-rank gloo default group (NCCL on a GPU cluster) plus a gloo side group."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{find_free_port()}", rank=0,
                            world_size=1)
    try:
        yield dist.new_group([0], backend="gloo")
    finally:
        dist.destroy_process_group()


def _gpu(*shape):
    return torch.randn(*shape, device="cuda")


# ----------------------------------------------------------------------------- violations
def test_mixed_op_names_op_and_line(strict):
    d, h = _gpu(3), torch.ones(3)
    with pytest.raises(DeviceMismatchError) as err:
        where = _next_line()
        d + h
    msg = str(err.value)
    assert "torch.Tensor.add" in msg and where in msg, msg
    assert err.value.op == "torch.Tensor.add"
    assert err.value.location.startswith(where)
    with pytest.raises(DeviceMismatchError, match="torch.matmul") as err:
        where = _next_line()
        torch.matmul(h.reshape(1, 3), d.reshape(3, 1))
    assert where in str(err.value)
    with pytest.raises(DeviceMismatchError, match=r"torch\.cat"):
        torch.cat([d, h])


def test_model_forward_on_cpu_batch(strict):
    emb = module_to_device(torch.nn.Embedding(10, 4))
    assert placement(emb.weight) == DEVICE
    tokens = torch.from_numpy(np.array([[1, 2, 3]]))  # a batch built on the CPU, not moved
    with pytest.raises(DeviceMismatchError, match="torch.nn.functional.embedding") as err:
        where = _next_line()
        emb(tokens)
    assert where in str(err.value) and "int64[1, 3]" in str(err.value)
    out = emb(to_device(tokens))  # moved: fine
    assert placement(out) == DEVICE


def test_collective_on_cpu_tensor(group):
    with pytest.raises(DeviceMismatchError, match="torch.distributed.all_reduce") as err:
        where = _next_line()
        dist.all_reduce(torch.zeros(2))
    assert where in str(err.value) and "NCCL" in str(err.value)
    with pytest.raises(DeviceMismatchError, match="torch.distributed.all_gather_into_tensor"):
        dist.all_gather_into_tensor(_gpu(2), torch.zeros(2))
    with pytest.raises(DeviceMismatchError, match="torch.distributed.broadcast"):
        dist.broadcast(torch.zeros(2), src=0, group=None)
    # 0-dim CPU tensors are rejected by NCCL too
    with pytest.raises(DeviceMismatchError, match="all_reduce"):
        dist.all_reduce(torch.tensor(1.0))
    # megatron-core's import-time aliases are checked as well
    from megatron.core.tensor_parallel import mappings

    with pytest.raises(DeviceMismatchError, match="all_gather_into_tensor") as err:
        where = _next_line()
        mappings.dist_all_gather_func(torch.zeros(2), torch.zeros(2))
    assert where in str(err.value)


def test_p2p_on_cpu_tensor(group):
    op = dist.P2POp(dist.isend, torch.zeros(2), 0)
    assert op.op is dist.distributed_c10d.isend  # torch's identity check on the op still holds
    with pytest.raises(DeviceMismatchError, match=r"batch_isend_irecv\(isend\)") as err:
        where = _next_line()
        dist.batch_isend_irecv([op])
    assert where in str(err.value)
    with pytest.raises(DeviceMismatchError, match="torch.distributed.isend"):
        dist.isend(torch.zeros(2), dst=0)


def test_collectives_legal_on_their_device(group):
    t = _gpu(3)
    dist.all_reduce(t)  # device tensor, default (NCCL) group
    host = torch.ones(3)
    dist.all_reduce(host, group=group)  # CPU tensor on a gloo side group: right on a GPU cluster
    assert host.tolist() == [1.0, 1.0, 1.0]
    assert group_device(group) == torch.device("cpu")
    assert placement(group_tensor([1.0], torch.float32)) == DEVICE
    assert placement(group_tensor([1.0], torch.float32, group=group)) == HOST
    objs = [None]
    dist.all_gather_object(objs, {"a": 1})  # torch places the byte tensors itself
    assert objs == [{"a": 1}]


def test_numpy_of_device_tensor(strict):
    d = _gpu(2)
    with pytest.raises(DeviceMismatchError, match="torch.Tensor.numpy") as err:
        where = _next_line()
        d.numpy()
    assert where in str(err.value)
    with pytest.raises(DeviceMismatchError, match="__array__"):
        np.asarray(d)
    with pytest.raises(DeviceMismatchError, match="pin_memory"):
        d.pin_memory()
    assert np.allclose(d.cpu().numpy(), d.tolist())


def test_grad_of_other_device(strict):
    p = torch.nn.Parameter(_gpu(3))
    with pytest.raises(DeviceMismatchError, match="torch.Tensor.grad"):
        p.grad = torch.zeros(3)


# ----------------------------------------------------------------------------- legal mixes
def test_legal_mixes_pass(strict):
    d, h = _gpu(4), torch.arange(4.0)
    assert placement(d * torch.tensor(2.0)) == DEVICE  # 0-dim CPU scalar
    assert placement(torch.where(d > 0, d, torch.tensor(0.0))) == DEVICE
    d2 = d.clone()
    d2.copy_(h)  # host -> device copy
    assert torch.equal(d2.cpu(), h)
    h2 = torch.empty(4)
    h2.copy_(d)  # device -> host copy
    assert placement(h2) == HOST
    idx = torch.tensor([0, 2])  # CPU index into a device tensor
    assert placement(d[idx]) == DEVICE and torch.equal(d[idx].cpu(), d.cpu()[idx])
    d[idx] = 7.0
    d[torch.tensor([True, False, False, False])] = torch.tensor([5.0])
    assert placement(d.index_put((torch.tensor([1]),), torch.tensor(3.0))) == DEVICE
    with pytest.raises(DeviceMismatchError, match="index_put_"):
        d.index_put_((torch.tensor([1]),), torch.ones(1))
    assert d.tolist()[0] == 5.0 and d.tolist()[2] == 7.0
    assert isinstance(d.sum().item(), float)
    assert placement(torch.tensor([d.sum().item(), 1.0])) == HOST  # torch.tensor(data): CPU
    assert placement(d.to("cpu") + h) == HOST
    assert placement(h.cuda() + d) == DEVICE
    assert placement(h.to(d) + d) == DEVICE and placement(d.to(h) + h) == HOST


def test_unknown_never_raises(strict):
    u = torch.ones(3)
    delattr(u, TAG)  # as made by the autograd engine or another thread
    assert placement(u) == UNKNOWN
    assert placement(u + _gpu(3)) == DEVICE
    assert placement(u + torch.ones(3)) == HOST
    assert placement(u * 2) == UNKNOWN


# ----------------------------------------------------------------------------- propagation
def test_placements_of_factories_and_moves(strict):
    h = torch.zeros(2)
    d = torch.zeros(2, device=torch.cuda.current_device())
    assert (placement(h), placement(d)) == (HOST, DEVICE)
    assert placement(torch.empty(2, device="cuda:0")) == DEVICE
    assert placement(torch.empty(2, device=d.device)) == DEVICE  # device=x.device idiom
    assert placement(torch.empty(2, device=h.device)) == HOST
    assert placement(torch.empty(2, device="cpu")) == HOST
    assert torch.empty(2, device="meta").device.type == "meta"  # only CPU devices are marked
    assert placement(torch.zeros_like(h, device="cuda")) == DEVICE
    assert placement(d.new_zeros(3)) == DEVICE
    assert placement(torch.from_numpy(np.ones(2))) == HOST
    assert placement(torch.as_tensor(np.ones(2))) == HOST
    assert placement(torch.frombuffer(bytearray(8), dtype=torch.uint8)) == HOST
    moved = h.cuda()
    assert placement(moved) == DEVICE and placement(h) == HOST  # the source stays on the CPU
    assert placement(d.cpu()) == HOST and placement(d) == DEVICE
    assert placement(h.to("cuda")) == DEVICE and placement(h.to(current_device())) == DEVICE
    assert placement(d.float().double()) == DEVICE
    assert placement(torch.nn.Parameter(d)) == DEVICE
    batch = to_device({"tokens": torch.ones(2, 3, dtype=torch.long), "n": 3})
    assert placement(batch["tokens"]) == DEVICE and batch["n"] == 3
    assert d.type() == "torch.cuda.FloatTensor"


def test_placements_through_backward(strict):
    lin = module_to_device(torch.nn.Linear(3, 2))
    assert {placement(p) for p in lin.parameters()} == {DEVICE}
    x = to_device(torch.randn(4, 3))
    lin(x).square().sum().backward()
    assert placement(lin.weight.grad) == DEVICE and placement(lin.bias.grad) == DEVICE
    with pytest.raises(DeviceMismatchError, match="torch.Tensor.add"):
        lin.weight.grad + torch.ones(2, 3)
    xi = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(lin(xi).sum(), [xi])
    assert placement(g) == DEVICE
    assert torch.allclose(g.cpu(), lin.weight.detach().cpu().sum(0).expand(4, 3))


def test_module_to_device_keeps_values_and_meta(strict):
    lin = torch.nn.Linear(3, 2)
    before = lin.weight.detach().clone()
    assert placement(lin.weight) == HOST
    module_to_device(lin)
    assert placement(lin.weight) == DEVICE and torch.equal(lin.weight.detach().cpu(), before)
    with torch.device("meta"):
        meta = torch.nn.Linear(3, 2)
    assert module_to_device(meta).weight.is_meta


def test_tag_is_not_pickled(strict):
    d = _gpu(2)
    assert TAG not in (torch._utils._get_obj_state(d) or {})
    assert placement(pickle.loads(pickle.dumps(d))) != DEVICE
    assert placement(pickle.loads(pickle.dumps(torch.nn.Parameter(d)))) != DEVICE


def test_fake_tensors_carry_placements(strict):
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    with FakeTensorMode():
        d = torch.empty(4, 4, device="cuda")
        h = torch.empty(4, 4)
        assert isinstance(d, FakeTensor)
        assert placement(d @ d) == DEVICE and placement(h @ h) == HOST
        with pytest.raises(DeviceMismatchError, match="torch.matmul"):
            torch.matmul(d, h)


# ----------------------------------------------------------------------------- switching it on
def test_strict_switch(monkeypatch):
    assert not cpu_emulation_installed()
    monkeypatch.setenv(ENV, "1")
    assert strict_from_env()
    monkeypatch.setenv(ENV, "0")
    assert not strict_from_env()
    monkeypatch.setenv(ENV, "maybe")
    with pytest.raises(ValueError, match=ENV):
        strict_from_env()
    monkeypatch.setenv(ENV, "1")
    install_cpu_emulation()
    try:
        assert strict_device_emulation()
        with pytest.raises(ValueError, match="already installed with strict=True"):
            install_cpu_emulation(strict=False)
    finally:
        uninstall_cpu_emulation()
    # uninstall restores torch and torch.distributed
    assert not hasattr(torch.Tensor, TAG) and not hasattr(torch.from_numpy, "__wrapped__")
    assert dist.all_reduce is dist.distributed_c10d.all_reduce
    assert dist.P2POp is dist.distributed_c10d.P2POp
    assert "__getstate__" not in torch.Tensor.__dict__
    install_cpu_emulation(strict=False)
    try:
        h = torch.ones(2)  # the plain layer does not track placements
        assert not strict_device_emulation()
        assert torch.equal(h + torch.ones(2, device="cuda"), torch.full((2,), 2.0))
    finally:
        uninstall_cpu_emulation()

"""Fused vocab-parallel cross-entropy (csrc/xent*, megatron_ar.kernels.cross_entropy) against
megatron-core's ``vocab_parallel_cross_entropy`` applied after an explicit soft-cap.

Tolerances: fp32 loss <= 1e-6 relative (max abs error / max |loss|; losses here are ~10-60, so
this is also a few 1e-6 absolute) and gradient <= 1e-6 absolute (entries are probabilities
times the upstream gradient, <= 1.5). bf16 logits against the fp32 reference on the same
(bf16-representable) values: the loss is computed in fp32 from the exact same inputs, so
<= 1e-6 relative still; the gradient is stored in bf16: <= 2^-8 relative per element.
The multi-process tests run TP=1 and TP=2 in one 2-rank launch and TP=4 in a 4-rank one, and
the model-level test (tiny-gemma2, fused on vs off, TP=1 and TP=2 + SP) in the 2-rank launch;
they live in test_cross_entropy_parallel.py (multiproc tier).
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mar_xent_workers as W  # noqa: E402

from megatron_ar.kernels import extension  # noqa: E402
from megatron_ar.kernels.cross_entropy import fused_vocab_parallel_cross_entropy  # noqa: E402
from megatron_ar.runtime import (cpu_emulation_installed, install_cpu_emulation,  # noqa: E402
                                 uninstall_cpu_emulation)

pytestmark = pytest.mark.unit

TOL = 1e-6
CAP = 30.0


@pytest.fixture
def strict():
    """Strict device emulation: logits made with device="cuda" are device tensors, so a
    host tensor created inside the op (a missing device=) raises."""
    assert not cpu_emulation_installed(), "another test left the CPU layer installed"
    install_cpu_emulation(strict=True)
    try:
        yield
    finally:
        uninstall_cpu_emulation()


def _ours(x, target, grad_out, cap, force_torch=False, dtype=torch.float32):
    leaf = x.to(dtype).requires_grad_(True)
    logits = leaf * 1  # a non-leaf like the output layer's result
    seen = []
    logits.register_hook(seen.append)
    loss = fused_vocab_parallel_cross_entropy(logits, target, softcap=cap,
                                              _force_torch=force_torch)
    loss.backward(grad_out)
    return loss, seen[0], logits


def _device_case(seed=0):
    return tuple(t.to("cuda") for t in W.case(seed))


def test_cpu_extension_is_built():
    assert extension("xent", torch.device("cpu")) is not None, (
        "megatron_ar._ext.xent_cpu missing: python setup.py build_ext --inplace")


@pytest.mark.parametrize("force_torch", [False, True], ids=["ext", "torch-fallback"])
@pytest.mark.parametrize("cap", [None, CAP], ids=["nocap", "cap30"])
def test_fp32_matches_megatron(strict, cap, force_torch):
    x, target, grad_out = _device_case()
    ref_loss, ref_grad = W.megatron_local_reference(x, target, cap, grad_out)
    loss, grad, logits = _ours(x, target, grad_out, cap, force_torch)
    e = W.errors(loss, grad, ref_loss, ref_grad)
    assert e["loss_rel"] <= TOL and e["grad_abs"] <= TOL, e
    assert loss.dtype == torch.float32 and loss.shape == target.shape
    # the gradient is the logits buffer itself, and ignored rows are exactly zero
    assert grad.data_ptr() == logits.data_ptr()
    ignored = target == W.IGNORE
    assert (loss[ignored] == 0).all() and (grad[ignored] == 0).all()
    assert (grad[~ignored].abs().sum(-1) > 0).all()


def test_cap_changes_loss_and_gradient(strict):
    x, target, grad_out = _device_case(1)
    l_cap, g_cap, _ = _ours(x, target, grad_out, CAP)
    l_raw, g_raw, _ = _ours(x, target, grad_out, None)
    assert float((l_cap - l_raw).abs().max()) > 1.0
    assert float((g_cap - g_raw).abs().max()) > 1e-2
    # and the capped loss is the uncapped loss of the capped logits
    l_pre, _, _ = _ours(W.softcap(x, CAP), target, grad_out, None)
    assert float((l_cap - l_pre).abs().max()) <= TOL * float(l_pre.abs().max())


@pytest.mark.parametrize("force_torch", [False, True], ids=["ext", "torch-fallback"])
@pytest.mark.parametrize("cap", [None, CAP], ids=["nocap", "cap30"])
def test_bf16_logits(strict, cap, force_torch):
    x, target, grad_out = _device_case(2)
    xb = x.to(torch.bfloat16)
    ref_loss, ref_grad = W.megatron_local_reference(xb.float(), target, cap, grad_out)
    loss, grad, logits = _ours(xb, target, grad_out, cap, force_torch, dtype=torch.bfloat16)
    assert grad.dtype == torch.bfloat16 and grad.data_ptr() == logits.data_ptr()
    e = W.errors(loss, grad, ref_loss, ref_grad)
    assert e["loss_rel"] <= TOL, e
    err = (grad.float() - ref_grad).abs()
    assert bool((err <= 2.0 ** -8 * ref_grad.abs() + TOL).all()), float(err.max())


def test_extension_equals_fallback(strict):
    """Same inputs, two implementations: agree to fp32 rounding (the CPU extension is the
    header code the GPU runs; the fallback is plain torch)."""
    x, target, grad_out = _device_case(3)
    a = _ours(x, target, grad_out, CAP)
    b = _ours(x, target, grad_out, CAP, force_torch=True)
    assert float((a[0] - b[0]).abs().max()) <= TOL * float(b[0].abs().max())
    assert float((a[1] - b[1]).abs().max()) <= TOL


def test_host_target_with_device_logits_raises(strict):
    from megatron_ar.runtime import DeviceMismatchError

    x, target, grad_out = _device_case(4)
    with pytest.raises(DeviceMismatchError):
        fused_vocab_parallel_cross_entropy(x.requires_grad_(True) * 1, target.cpu(), softcap=CAP)


def test_bad_arguments_name_the_problem():
    x = torch.randn(2, 3, 8)
    t = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        fused_vocab_parallel_cross_entropy(x.half(), t)
    with pytest.raises(ValueError, match="softcap"):
        fused_vocab_parallel_cross_entropy(x, t, softcap=-1.0)
    with pytest.raises(ValueError, match="does not match"):
        fused_vocab_parallel_cross_entropy(x, t[:1])


def test_fake_tensors_take_the_torch_path():
    """The dry run's memory probe runs the model on FakeTensors: no kernel can read them, so
    the op traces through the torch path (shapes and dtypes right, no data access)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.randn(4, 2, 64, dtype=torch.bfloat16).requires_grad_(True)
        t = torch.randint(0, 64, (4, 2))
        loss = fused_vocab_parallel_cross_entropy(x * 1, t, softcap=CAP)
        loss.sum().backward()
        assert loss.shape == (4, 2) and loss.dtype == torch.float32
        assert x.grad.shape == x.shape and x.grad.dtype == torch.bfloat16

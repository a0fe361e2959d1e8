"""The CUDA build of the fused cross-entropy (megatron_ar._ext.xent) on a real GPU: against
megatron-core's cross-entropy steps after an explicit soft-cap (as the unit tier does for the CPU
build) and against the CPU build on the same inputs, for a short shard (fewer columns than the
512 threads of a block) and a long one. Tolerances as in test_cross_entropy.py.

Where the GPU tier runs, the CUDA build is expected: a missing one fails, naming the build's
reason (a skip would hide a broken build on exactly the machines that need it).
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mar_xent_workers as W  # noqa: E402

from megatron_ar import _ext  # noqa: E402
from megatron_ar.kernels import extension  # noqa: E402
from megatron_ar.kernels.cross_entropy import fused_vocab_parallel_cross_entropy  # noqa: E402

pytestmark = pytest.mark.gpu

TOL = 1e-6


@pytest.fixture(scope="module", autouse=True)
def cuda_build():
    if extension("xent", torch.device("cuda")) is None:
        pytest.fail(f"megatron_ar._ext.xent (CUDA build) missing: {_ext.build_reason('xent')}; "
                    "pip install --no-build-isolation -e . with a CUDA torch and nvcc")


def _run(x, target, grad_out, cap, dtype):
    logits = x.to(dtype).requires_grad_(True) * 1
    seen = []
    logits.register_hook(seen.append)
    loss = fused_vocab_parallel_cross_entropy(logits, target, softcap=cap)
    loss.backward(grad_out)
    assert seen[0].data_ptr() == logits.data_ptr()
    return loss.detach(), seen[0].detach()


@pytest.mark.parametrize("vocab", [300, 40000], ids=["short-row", "long-row"])
@pytest.mark.parametrize("cap", [None, 30.0], ids=["nocap", "cap30"])
def test_cuda_fp32_matches_megatron_and_cpu_build(cap, vocab):
    x, target, grad_out = W.case(21, vocab=vocab)
    ref_loss, ref_grad = W.megatron_local_reference(x.cuda(), target.cuda(), cap,
                                                    grad_out.cuda())
    loss, grad = _run(x.cuda(), target.cuda(), grad_out.cuda(), cap, torch.float32)
    e = W.errors(loss, grad, ref_loss, ref_grad)
    assert e["loss_rel"] <= TOL and e["grad_abs"] <= TOL, e
    cpu_loss, cpu_grad = _run(x, target, grad_out, cap, torch.float32)
    assert float((loss.cpu() - cpu_loss).abs().max()) <= TOL * float(cpu_loss.abs().max())
    assert float((grad.cpu() - cpu_grad).abs().max()) <= TOL
    ignored = target.cuda() == W.IGNORE
    assert (loss[ignored] == 0).all() and (grad[ignored] == 0).all()


@pytest.mark.parametrize("cap", [None, 30.0], ids=["nocap", "cap30"])
def test_cuda_bf16(cap):
    x, target, grad_out = (t.cuda() for t in W.case(22, vocab=40000))
    xb = x.to(torch.bfloat16)
    ref_loss, ref_grad = W.megatron_local_reference(xb.float(), target, cap, grad_out)
    loss, grad = _run(xb, target, grad_out, cap, torch.bfloat16)
    assert grad.dtype == torch.bfloat16
    e = W.errors(loss, grad, ref_loss, ref_grad)
    assert e["loss_rel"] <= TOL, e
    err = (grad.float() - ref_grad).abs()
    assert bool((err <= 2.0 ** -8 * ref_grad.abs() + TOL).all()), float(err.max())

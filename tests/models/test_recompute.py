"""Activation recomputation on the CPU layer: megatron-core's selective and full recomputation
give the gradients of the plain backward pass, bit for bit (recomputation repeats the same ops).
The oracle is the same model without recomputation. Both Fanar recipes train with selective
recomputation, so the CPU path that tests them must run it: since torch 2.13
``torch.autograd.backward`` hands itself to active torch-function modes and ran the recomputation
outside the CPU layer ("Torch not compiled with CUDA enabled")."""
import pytest
import torch

from megatron_ar.runtime import run_multiprocess

pytestmark = pytest.mark.multiproc


def _grads(preset, granularity, tp):
    from megatron_ar.models import build_model, get_preset
    from megatron_ar.models.sharding import iter_global_params
    from megatron_ar.models.step import run_forward_backward
    from megatron_ar.runtime import init_distributed

    init_distributed(tp=tp, pp=1)
    mc = get_preset(preset)
    kw = {}
    if granularity == "selective":
        kw = dict(recompute_granularity="selective")
    elif granularity == "full":
        kw = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    torch.manual_seed(0)
    chunks = build_model(mc, sequence_parallel=tp > 1, **kw)
    g = torch.Generator().manual_seed(1)
    tok = torch.randint(0, mc.vocab_size, (2, mc.seq_length + 1), generator=g)
    loss = run_forward_backward(chunks, [{"tokens": tok[:, :-1], "labels": tok[:, 1:]}])
    return loss, {name: p.grad.clone() for name, p in iter_global_params(chunks, mc)}


@pytest.mark.parametrize("preset,tp", [("tiny-llama", 1), ("tiny-gemma2", 2)])
def test_recomputation_gives_the_plain_gradients(preset, tp):
    ref = run_multiprocess(_grads, tp, preset, None, tp)
    for gran in ("selective", "full"):
        got = run_multiprocess(_grads, tp, preset, gran, tp)
        for rank in range(tp):
            loss, grads = got[rank]
            assert loss == ref[rank][0], (gran, rank)
            assert grads.keys() == ref[rank][1].keys() and len(grads) > 10
            for name, g in grads.items():
                assert torch.equal(g, ref[rank][1][name]), (gran, rank, name)

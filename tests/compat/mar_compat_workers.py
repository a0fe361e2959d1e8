"""Rank functions for tests/compat (module-level so that spawned ranks can import them).

Each worker builds real megatron-core objects (a tiny Llama GPTModel in megatron-core's DDP with
its optimizer, or megatron-core's pipeline P2PCommunicator on a real gloo group) and returns
plain observations; the tests assert on them in the parent process.
"""
from __future__ import annotations

import os

SHARDING = {"distrib_optim_sharding_type": "fully_reshardable", "chained_optim_avoid_prefix": True}


def _build(seed: int):
    import torch
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megatron_ar.models import build_model, get_preset, wrap_with_ddp

    torch.manual_seed(seed)
    chunks = build_model(get_preset("tiny-llama"))
    ddp = wrap_with_ddp(chunks, use_distributed_optimizer=True)
    opt = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-2, weight_decay=0.1, bf16=False,
                        params_dtype=torch.float32, use_distributed_optimizer=True),
        ddp, use_gloo_process_groups=False)
    (dopt,) = opt.chained_optimizers
    return chunks, ddp, opt, dopt


def _steps(ddp, opt, seeds):
    """One optimizer step per seed, with seeded random gradients in megatron-core's DDP buffers."""
    import torch

    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        for m in ddp:
            m.zero_grad_buffer()
            for p in m.parameters():
                p.main_grad.copy_(torch.randn(p.shape, generator=g))
        opt.zero_grad()
        assert opt.step()[0], "optimizer step was skipped"


def _load(chunks, opt, ckpt):
    from megatron.core import dist_checkpointing

    osd = opt.sharded_state_dict(chunks[0].sharded_state_dict(), is_loading=True, metadata=SHARDING)
    return dist_checkpointing.load({"optimizer": osd}, ckpt)["optimizer"]


def _steps_of(dopt):
    return [float(st["step"]) for st in dopt.optimizer.state.values()]


def _step_ids(dopt):
    return len({id(st["step"]) for st in dopt.optimizer.state.values()})


def optimizer_defects(workdir: str) -> dict:
    """Reproduce the three DistributedOptimizer + torch Adam defects with and without
    megatron_ar.compat.optimizer's workarounds (one rank)."""
    import torch
    from megatron.core import dist_checkpointing

    from megatron_ar.compat.optimizer import (
        init_optimizer_state,
        prepare_for_load,
        unshare_step_tensors,
    )
    from megatron_ar.runtime import init_distributed

    init_distributed(tp=1, pp=1, seed=1234)
    out = {}

    # 1. sharded_state_dict(is_loading=True) on an optimizer that never stepped.
    chunks, ddp, opt, dopt = _build(1)
    try:
        dopt.sharded_state_dict(chunks[0].sharded_state_dict(), is_loading=True, metadata=SHARDING)
        out["fresh_error"] = None
    except Exception as exc:  # the defect: AssertionError in DistributedOptimizer.state_dict
        out["fresh_error"] = f"{type(exc).__name__}: {exc}"
    chunks, ddp, opt, dopt = _build(1)
    init_optimizer_state(dopt)
    dopt.sharded_state_dict(chunks[0].sharded_state_dict(), is_loading=True, metadata=SHARDING)
    out["fresh_with_workaround"] = "ok"

    # A reference run: 3 steps, saved, then a 4th step.
    ca, da, oa, _ = _build(1)
    _steps(da, oa, [11, 12, 13])
    ckpt = os.path.join(workdir, "ckpt")
    os.makedirs(ckpt)
    dist_checkpointing.save(
        {"optimizer": oa.sharded_state_dict(ca[0].sharded_state_dict(), is_loading=False,
                                            metadata=SHARDING)}, ckpt)
    weights_at_save = [p.detach().clone() for p in ca[0].parameters()]
    _steps(da, oa, [14])
    out["reference_step4"] = [p.detach().clone() for p in ca[0].parameters()]

    def resumed(seed):
        c, d, o, do = _build(seed)
        with torch.no_grad():  # the model weights as a checkpoint load would set them
            for p, w in zip(c[0].parameters(), weights_at_save):
                p.copy_(w)
        for m in d:  # the distributed optimizer's fp32 main params start from the model params
            m.zero_grad_buffer()
        return c, d, o, do

    # 2. load without the 'step' copy patch.
    c, d, o, do = resumed(2)
    init_optimizer_state(do)
    try:
        o.load_state_dict(_load(c, o, ckpt))
        out["step_copy_error"] = None
    except Exception as exc:  # the defect: KeyError 'step' in _set_main_param_and_optimizer_states
        out["step_copy_error"] = f"{type(exc).__name__}: {exc}"

    # 3. load with the patch but without unsharing the step tensors, then one step.
    c, d, o, do = resumed(3)
    prepare_for_load(o)
    o.load_state_dict(_load(c, o, ckpt))
    out["n_states"] = len(do.optimizer.state)
    out["shared_step_ids"] = _step_ids(do)
    out["shared_steps_after_load"] = sorted(set(_steps_of(do)))
    _steps(d, o, [14])
    out["shared_steps_after_step"] = sorted(set(_steps_of(do)))
    out["shared_step4"] = [p.detach().clone() for p in c[0].parameters()]

    # 4. all three workarounds: the resumed step equals the uninterrupted one.
    c, d, o, do = resumed(4)
    prepare_for_load(o)
    o.load_state_dict(_load(c, o, ckpt))
    unshare_step_tensors(o)
    out["unshared_step_ids"] = _step_ids(do)
    _steps(d, o, [14])
    out["unshared_steps_after_step"] = sorted(set(_steps_of(do)))
    out["unshared_step4"] = [p.detach().clone() for p in c[0].parameters()]
    return out


def p2p_exchange(batched: bool) -> dict:
    """Both directions at once between the two stages of a PP=2 gloo group, through
    megatron-core's P2PCommunicator (what the interleaved schedule calls)."""
    import torch
    from megatron.core import parallel_state
    from megatron.core.model_parallel_config import ModelParallelConfig
    from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator

    from megatron_ar.runtime import current_device, init_distributed

    layout = init_distributed(tp=1, pp=2, seed=1234)
    config = ModelParallelConfig(pipeline_model_parallel_size=2, pipeline_dtype=torch.float32,
                                 batch_p2p_comm=batched)
    comm = P2PCommunicator(parallel_state.get_pipeline_model_parallel_group(), config)
    r = layout.rank
    act = torch.full((4,), 100.0 * r + 1, device=current_device())   # to the next stage
    grad = torch.full((4,), 100.0 * r + 2, device=current_device())  # to the previous stage
    recv_prev, recv_next = comm.send_forward_backward_recv_forward_backward(
        act, grad, recv_prev=True, recv_next=True, tensor_shape=(4,))
    return {"rank": r, "from_prev": recv_prev.tolist(), "from_next": recv_next.tolist()}

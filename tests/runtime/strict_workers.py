"""Rank-side code of test_strict_multiproc.py (a plain module, so spawned ranks can unpickle it).

The two GPU bugs the strict device emulation exists for, re-introduced into the real step code
of a 2-rank job (DP=2, megatron-core DDP, tiny Llama, real gloo groups):
(a) a micro-batch handed to the model on the CPU (the forward step's device move disabled);
(b) an all-reduce of a CPU tensor: the loop's stop agreement with its flag made by
    ``torch.tensor`` instead of on the group's device; and the old ``reduce_loss``, which summed
    the device loss reports into a ``torch.zeros`` CPU buffer before all-reducing it (CUDA fails
    at that sum already, and so does strict mode).
Each returns what the raised :class:`DeviceMismatchError` says, and the losses of the correct run.
"""
from __future__ import annotations

from typing import Dict


def _run(chunks, microbatches):
    """(this rank's token-mean loss, the global one) of one forward-backward."""
    from megatron_ar.models.step import global_sums, local_sums, run_schedule, token_mean

    mbs, seq = microbatches[0]["tokens"].shape
    reports = run_schedule(chunks, microbatches, len(microbatches), mbs, seq, forward_only=False)
    return token_mean(local_sums(reports)), token_mean(global_sums(reports))


def _caught(fn) -> Dict[str, object]:
    from megatron_ar.runtime import DeviceMismatchError

    try:
        fn()
    except DeviceMismatchError as exc:
        return {"op": exc.op, "location": exc.location, "ours": exc.megatron_ar_location,
                "message": str(exc)}
    return {"op": None}


def reintroduced_bugs(seed: int) -> Dict[str, object]:
    import torch

    import megatron_ar.models.step as step
    from megatron_ar.models import build_model, get_preset, split_batch, wrap_with_ddp
    from megatron_ar.runtime import init_distributed, strict_device_emulation

    layout = init_distributed(tp=1, pp=1, seed=seed)
    cfg = get_preset("tiny-llama")
    torch.manual_seed(seed)
    chunks = wrap_with_ddp(build_model(cfg))
    gen = torch.Generator().manual_seed(seed + layout.dp_rank)
    tokens = torch.randint(0, cfg.vocab_size, (4, 17), generator=gen)
    microbatches = split_batch(tokens[:, :-1], tokens[:, 1:], 2)
    out: Dict[str, object] = {"strict": strict_device_emulation()}

    out["local_loss"], out["global_loss"] = _run(chunks, microbatches)

    move = step.to_device
    step.to_device = lambda batch, device=None: batch  # (a) the batch stays on the CPU
    try:
        out["cpu_batch"] = _caught(lambda: _run(chunks, microbatches))
    finally:
        step.to_device = move

    import megatron_ar.training.loop as loop

    make = loop.group_tensor
    loop.group_tensor = lambda data, dtype, group=None: torch.tensor(data, dtype=dtype)  # (b)
    try:
        out["cpu_allreduce"] = _caught(lambda: loop._agree_stop(False))
    finally:
        loop.group_tensor = make

    zeros = step.group_zeros
    step.group_zeros = lambda shape, dtype, group=None: torch.zeros(shape, dtype=dtype)  # (b)
    try:
        out["cpu_loss_sums"] = _caught(lambda: _run(chunks, microbatches))
    finally:
        step.group_zeros = zeros
    return out

"""The forward step, the loss and the schedule runner: one implementation for training,
evaluation (validation loss, bits per byte, multiple-choice scoring, generation), checkpoint
comparison and the parallel parity tests.

Design choices
- Everything runs through megatron-core's ``get_forward_backward_func`` (no pipelining, 1F1B or
  interleaved virtual stages, chosen from the parallel state), so one step function serves every
  TP/PP/VPP/DP layout, forward-only or with backward.
- :func:`forward_step` takes a :class:`StepSpec`: with labels it returns ``GPTModel(labels=...)``'s
  per-token NLL (megatron-core's vocab-parallel cross entropy, no logits gathered) and
  :func:`lm_loss`; without labels it returns the logits and :func:`collect_logits` (gathered over
  TP via ``collect_non_loss_data``).
- The loss follows Megatron-LM's 3-tuple protocol ``(loss sum, token count, report)``: the schedule
  divides the loss by the global token count (token-mean per step) and scales the backward; the
  report is a detached copy (the schedule divides the returned tensor in place). Reports: ``"lm
  loss"`` = ``[NLL sum, tokens]``, optionally ``"per_sample"`` (per-sample NLL sums: the
  multiple-choice log-likelihoods; the total is then the sum of those sums, a different float32
  summation order than the flat sum used for training, kept so logged numbers do not move) and
  ``"bytes"`` (UTF-8 bytes of the target tokens, from a token -> bytes table on the device, for
  bits per byte).
- Micro-batches are built on the CPU by the data code and moved to the current device inside the
  forward step, one at a time (:func:`megatron_ar.runtime.to_device`: pinned memory and
  non-blocking copies on CUDA, as Megatron-LM's ``get_batch``); ranks that need no data
  (intermediate pipeline stages) get ``None`` iterators.
- Reported sums are reduced over ranks on device tensors (:func:`global_sums`): only the last
  pipeline stage's TP-rank-0 ranks contribute, one all-reduce over the default group, float64
  accumulated micro-batch by micro-batch, so every rank gets the same global token-mean.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_ar.runtime.device import group_zeros, to_device

LOSS_KEY = "lm loss"


@dataclass(frozen=True)
class StepSpec:
    """What :func:`forward_step` computes and reports.

    Attributes:
        labels: compute the LM loss from ``batch["labels"]`` (else return gathered logits).
        per_sample: also report per-sample NLL sums (``"per_sample"``).
        byte_table: int64 tensor, token id -> UTF-8 bytes, on the current device; when given,
            ``"bytes"`` (bytes of the target tokens under the loss mask) is reported.
    """

    labels: bool = True
    per_sample: bool = False
    byte_table: Optional[torch.Tensor] = None


def lm_loss(spec: StepSpec, loss_mask: torch.Tensor, nbytes: Optional[torch.Tensor],
            output_tensor: torch.Tensor, non_loss_data: bool = False):
    """Megatron-LM 3-tuple loss of one micro-batch (see module docstring)."""
    losses = output_tensor.float()
    mask = loss_mask.float()
    per_sample = None
    if spec.per_sample:
        per_sample = (losses * mask).sum(dim=1)
        total = per_sample.sum()
    else:
        total = torch.sum(losses.reshape(-1) * mask.reshape(-1))
    num_tokens = mask.sum().to(torch.int)
    report = {LOSS_KEY: torch.stack([total.detach().clone(), num_tokens.detach().float()])}
    if per_sample is not None:
        report["per_sample"] = per_sample.detach().clone()
    if nbytes is not None:
        report["bytes"] = nbytes
    return total, num_tokens, report


def collect_logits(output_tensor: torch.Tensor, non_loss_data: bool = False) -> torch.Tensor:
    """Logits gathered over tensor-parallel ranks (vocab dimension), detached."""
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    return gather_from_tensor_model_parallel_region(output_tensor).detach()


def forward_step(spec: StepSpec, data_iterator, model):
    """megatron-core forward-step function (bind ``spec`` with ``functools.partial``)."""
    batch = next(data_iterator) if data_iterator is not None else None
    tokens = labels = position_ids = mask = nbytes = None
    if batch is not None:
        batch = to_device(batch)
        tokens = batch["tokens"]
        position_ids = torch.arange(tokens.shape[1], dtype=torch.long, device=tokens.device)
        position_ids = position_ids.unsqueeze(0).expand_as(tokens)
        if spec.labels:
            labels = batch["labels"]
            mask = batch.get("loss_mask")
            if mask is None:
                mask = torch.ones_like(labels, dtype=torch.float)
            if spec.byte_table is not None:
                nbytes = (spec.byte_table[labels].double() * mask.double()).sum()
    if not spec.labels:
        return model(tokens, position_ids, None), collect_logits
    out = model(tokens, position_ids, None, labels=labels)
    return out, partial(lm_loss, spec, mask, nbytes)


def run_schedule(model: Sequence[torch.nn.Module], batches: Optional[Sequence[Dict]],
                 num_microbatches: int, micro_batch_size: int, seq_length: int,
                 forward_only: bool, spec: StepSpec = StepSpec(),
                 collect_non_loss_data: bool = False) -> List[Any]:
    """megatron-core's schedule over ``batches`` (micro-batch dicts of CPU or device tensors,
    ``tokens``/``labels``/optional ``loss_mask``, each [micro_batch, seq]; ``None`` on ranks that
    need no data). Every model chunk reads its own iterator over the same micro-batches. Returns
    the per-micro-batch reports (last pipeline stage; empty elsewhere)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_ar.models.nanochat import stage_batch_multiple

    iters = [None if batches is None else iter(batches) for _ in model]
    return get_forward_backward_func()(
        forward_step_func=partial(forward_step, spec),
        data_iterator=iters if len(iters) > 1 else iters[0],
        model=list(model),
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        # p2p shape: nanochat's x0 / backout residuals ride along the micro-batch dim
        micro_batch_size=micro_batch_size * stage_batch_multiple(model),
        forward_only=forward_only,
        collect_non_loss_data=collect_non_loss_data,
    )


def is_reporter() -> bool:
    """The ranks whose reports count in :func:`global_sums`: last pipeline stage, TP rank 0."""
    return (parallel_state.is_pipeline_last_stage(ignore_virtual=True)
            and parallel_state.get_tensor_model_parallel_rank() == 0)


def local_sums(reports: Iterable[Dict[str, torch.Tensor]], with_bytes: bool = False
               ) -> torch.Tensor:
    """float64 ``[NLL sum, tokens(, bytes)]`` over this rank's reports, on the default group's
    device (accumulated micro-batch by micro-batch)."""
    t = group_zeros(3 if with_bytes else 2, torch.float64)
    for x in reports:
        t[:2] += x[LOSS_KEY].double()
        if with_bytes and "bytes" in x:
            t[2] += x["bytes"].double()
    return t


def global_sums(reports: Iterable[Dict[str, torch.Tensor]], with_bytes: bool = False
                ) -> torch.Tensor:
    """:func:`local_sums` of the reporting ranks, summed over all ranks (every rank gets it)."""
    t = local_sums(reports if is_reporter() else [], with_bytes)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def token_mean(sums: torch.Tensor) -> float:
    """NLL sum / tokens of a :func:`local_sums` / :func:`global_sums` vector."""
    return float(sums[0] / max(float(sums[1]), 1.0))


def run_forward_backward(chunks: Sequence[torch.nn.Module], microbatches: Sequence[Dict],
                         forward_only: bool = False) -> Optional[float]:
    """The schedule over ``microbatches`` (every rank passes the same list). Gradients
    accumulate in the parameters (``.main_grad`` under DDP, after ``finalize_model_grads``); the
    caller sets train/eval mode and zeroes gradients (``zero_grad_buffer()`` under DDP). Returns
    this rank's token-mean loss on the last pipeline stage, None elsewhere (no reduction over
    data-parallel ranks)."""
    mbs, seq = microbatches[0]["tokens"].shape
    reports = run_schedule(chunks, microbatches, len(microbatches), mbs, seq, forward_only)
    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    return token_mean(local_sums(reports))


def forward_logits(chunks: Sequence[torch.nn.Module], tokens: torch.Tensor,
                   vocab_size: Optional[int] = None) -> Optional[torch.Tensor]:
    """Logits [batch, seq, vocab] on the current device (gathered over TP, Megatron vocab padding
    stripped when ``vocab_size`` is given) on the last pipeline stage; None on other stages. One
    micro-batch holds the whole batch, except with virtual pipeline stages, whose interleaved
    schedule needs at least PP micro-batches: there each sample is a micro-batch (batch must be a
    multiple of PP)."""
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if len(chunks) > 1:
        if tokens.shape[0] % pp:
            raise ValueError(f"forward_logits: with virtual pipeline stages the batch "
                             f"({tokens.shape[0]}) must be a multiple of PP={pp}")
        microbatches = [{"tokens": tokens[i:i + 1]} for i in range(tokens.shape[0])]
    else:
        microbatches = [{"tokens": tokens}]
    was_training = [chunk.training for chunk in chunks]
    for chunk in chunks:
        chunk.eval()
    try:
        with torch.no_grad():
            out = run_schedule(chunks, microbatches, len(microbatches),
                               microbatches[0]["tokens"].shape[0], tokens.shape[1],
                               forward_only=True, spec=StepSpec(labels=False),
                               collect_non_loss_data=True)
    finally:
        for chunk, mode in zip(chunks, was_training):
            chunk.train(mode)
    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    logits = torch.cat(list(out), 0)
    if vocab_size is not None:
        logits = logits[..., :vocab_size]
    return logits


def split_batch(tokens: torch.Tensor, labels: torch.Tensor, micro_batch_size: int,
                loss_mask: Optional[torch.Tensor] = None) -> List[Dict[str, torch.Tensor]]:
    """Cut a [batch, seq] batch into micro-batch dicts for :func:`run_forward_backward`."""
    if tokens.shape[0] % micro_batch_size:
        raise ValueError(f"split_batch: batch {tokens.shape[0]} not divisible by "
                         f"micro_batch_size {micro_batch_size}")
    out = []
    for i in range(0, tokens.shape[0], micro_batch_size):
        mb = {"tokens": tokens[i:i + micro_batch_size], "labels": labels[i:i + micro_batch_size]}
        if loss_mask is not None:
            mb["loss_mask"] = loss_mask[i:i + micro_batch_size]
        out.append(mb)
    return out

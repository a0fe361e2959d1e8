"""Build megatron-core GPT models from a ModelConfig and run them (forward / forward-backward).

Design choices
- :func:`build_model` returns the list of model chunks this rank owns (one per virtual pipeline
  stage, a single-element list otherwise), exactly what megatron-core's schedules, DDP and
  optimizer take, so training code never special-cases virtual pipelining.
- Parallel sizes are read from megatron-core's ``parallel_state`` (set by
  :func:`megatron_ar.runtime.init_distributed`), so a caller cannot build a TP=2 model in a TP=1
  process group by accident.
- :func:`run_forward_backward` / :func:`forward_logits` go through megatron-core's
  ``get_forward_backward_func`` (no-pipelining, 1F1B or interleaved schedule) rather than calling
  the model directly: the same code path as training, valid for every TP/PP/VPP layout.
- The loss is token-mean cross entropy via ``GPTModel(labels=...)`` (vocab-parallel CE) and the
  3-tuple loss protocol (sum, num_tokens, report), i.e. per-microbatch token means averaged over
  microbatches; DDP averages over data-parallel ranks.
"""
from __future__ import annotations

from functools import partial
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

from megatron_ar.models.config import ModelConfig
from megatron_ar.models.modules import ArGPTModel, embedding_multiplier
from megatron_ar.models.spec import block_spec


def build_model_chunk(cfg: ModelConfig, transformer_config, pre_process: bool = True,
                      post_process: bool = True, vp_stage: Optional[int] = None,
                      use_te: Optional[bool] = None) -> ArGPTModel:
    """One GPTModel (pipeline stage / virtual stage) for ``cfg``."""
    tp = transformer_config.tensor_model_parallel_size
    return ArGPTModel(
        config=transformer_config,
        transformer_layer_spec=block_spec(cfg, transformer_config, use_te, vp_stage=vp_stage,
                                          pp_rank=parallel_state.get_pipeline_model_parallel_rank()),
        vocab_size=cfg.padded_vocab_size(tp),
        max_sequence_length=cfg.seq_length,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=cfg.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=cfg.rotary_base,
        vp_stage=vp_stage,
        embedding_scale=embedding_multiplier(cfg.hidden_size) if cfg.embedding_scale else None,
        embedding_norm=cfg.embedding_norm,
        final_logit_softcap=cfg.final_logit_softcap,
    )


def build_model(cfg: ModelConfig, sequence_parallel: bool = False,
                params_dtype: torch.dtype = torch.float32, use_te: Optional[bool] = None,
                transformer_config=None, **config_overrides) -> List[ArGPTModel]:
    """All model chunks of this rank for the current megatron-core parallel state.

    ``transformer_config`` defaults to ``cfg.to_transformer_config`` with the sizes of the
    initialised parallel state; ``config_overrides`` go to that call.
    """
    if not parallel_state.model_parallel_is_initialized():
        raise RuntimeError("build_model: call megatron_ar.runtime.init_distributed() first")
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    vpp = parallel_state.get_virtual_pipeline_model_parallel_world_size()
    if transformer_config is None:
        transformer_config = cfg.to_transformer_config(
            tp=tp, pp=pp, vpp=vpp, sequence_parallel=sequence_parallel,
            params_dtype=params_dtype, **config_overrides)
    chunks = []
    stages = range(vpp) if (vpp or 1) > 1 else [None]
    for vp_stage in stages:
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
        chunks.append(build_model_chunk(cfg, transformer_config, pre, post, vp_stage, use_te))
    return chunks


def wrap_with_ddp(chunks: Sequence[torch.nn.Module], use_distributed_optimizer: bool = False,
                  grad_reduce_in_fp32: bool = True, overlap_grad_reduce: bool = False,
                  bucket_size: Optional[int] = None,
                  fp8_param_gather: bool = False,
                  overlap_param_gather: bool = False) -> List[torch.nn.Module]:
    """Wrap chunks in megatron-core ``DistributedDataParallel`` and install
    ``finalize_model_grads`` (DP reduction, TP all-reduce of sequence-parallel norm grads,
    tied-embedding all-reduce across pipeline stages).

    Communication overlap is set up as Megatron-LM's ``get_model`` / ``train`` do
    (megatron/training/training.py): ``overlap_grad_reduce`` installs the chunks' ``no_sync`` /
    ``start_grad_sync`` as the schedule's ``no_sync_func`` / ``grad_sync_func``;
    ``overlap_param_gather`` (distributed optimizer and ``overlap_grad_reduce`` required, see
    :func:`megatron_ar.runtime.fusions.overlap_errors`) all-gathers parameters in forward
    pre-hooks, aligned across pipeline stages (``align_param_gather`` + ``param_sync_func``)
    only with virtual stages, where Megatron-LM aligns them. With ``overlap_param_gather`` the
    optimizer step leaves other ranks' parameter shards stale until the next forward: call
    ``chunk.start_param_sync(force_sync=True)`` on every chunk before reading weights outside a
    forward (checkpoint save, export), as Megatron-LM's ``disable_forward_pre_hook`` does."""
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )

    from megatron_ar.runtime.fusions import overlap_errors

    errors = overlap_errors(use_distributed_optimizer=use_distributed_optimizer,
                            overlap_grad_reduce=overlap_grad_reduce,
                            overlap_param_gather=overlap_param_gather)
    if errors:
        raise ValueError("wrap_with_ddp: " + "; ".join(f"{k} {m}" for k, m in errors))
    interleaved = len(chunks) > 1
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=grad_reduce_in_fp32,
        overlap_grad_reduce=overlap_grad_reduce,
        overlap_param_gather=overlap_param_gather,
        align_param_gather=overlap_param_gather and interleaved,
        use_distributed_optimizer=use_distributed_optimizer,
        bucket_size=bucket_size,
        fp8_param_gather=fp8_param_gather,  # all-gather fp8 params (needs TE fp8 params)
    )
    wrapped = []
    for i, chunk in enumerate(chunks):
        wrapped.append(DistributedDataParallel(
            config=chunk.config, ddp_config=ddp_config, module=chunk,
            # Only the first chunk may use a bucket for its (possibly shared) embedding.
            disable_bucketing=i > 0,
        ))

    def per_chunk(fns):
        return fns if interleaved else fns[0]

    config = chunks[0].config
    config.no_sync_func = per_chunk([w.no_sync for w in wrapped]) if overlap_grad_reduce else None
    config.grad_sync_func = (per_chunk([w.start_grad_sync for w in wrapped])
                             if overlap_grad_reduce else None)
    config.param_sync_func = (per_chunk([w.start_param_sync for w in wrapped])
                              if ddp_config.align_param_gather else None)
    config.finalize_model_grads_func = finalize_model_grads
    return wrapped


def _lm_loss(loss_mask: torch.Tensor, output_tensor: torch.Tensor, non_loss_data: bool = False):
    losses = output_tensor.float()
    mask = loss_mask.float().reshape(-1)
    total = torch.sum(losses.reshape(-1) * mask)
    num_tokens = mask.sum().to(torch.int)
    # The schedule divides the returned tensor in place: report a detached copy.
    return total, num_tokens, {"lm loss": torch.stack([total.detach().clone(),
                                                       num_tokens.float()])}


def _forward_step(data_iterator, model, with_labels: bool = True):
    batch = next(data_iterator)
    tokens = batch["tokens"]
    position_ids = torch.arange(tokens.shape[1], dtype=torch.long, device=tokens.device)
    position_ids = position_ids.unsqueeze(0).expand_as(tokens)
    if with_labels:
        out = model(tokens, position_ids, None, labels=batch["labels"])
        mask = batch.get("loss_mask")
        if mask is None:
            mask = torch.ones_like(batch["labels"], dtype=torch.float)
        return out, partial(_lm_loss, mask)
    out = model(tokens, position_ids, None)
    return out, _collect_logits


def _collect_logits(output_tensor, non_loss_data: bool = False):
    return gather_from_tensor_model_parallel_region(output_tensor).detach()


def _iterators(chunks, microbatches):
    if len(chunks) == 1:
        return iter(microbatches)
    return [iter(microbatches) for _ in chunks]


def run_forward_backward(chunks: Sequence[torch.nn.Module], microbatches: Sequence[Dict],
                         forward_only: bool = False) -> Optional[float]:
    """Run megatron-core's schedule over ``microbatches`` (dicts with ``tokens``, ``labels``,
    optional ``loss_mask``; all [micro_batch, seq]). Gradients accumulate in the parameters
    (``.main_grad`` under DDP, after ``finalize_model_grads``); the caller sets train/eval
    mode and zeroes gradients (``zero_grad_buffer()`` under DDP). Returns the token-mean loss
    on the last pipeline stage, None elsewhere."""
    mbs, seq = microbatches[0]["tokens"].shape
    losses = get_forward_backward_func()(
        forward_step_func=_forward_step,
        data_iterator=_iterators(chunks, microbatches),
        model=list(chunks),
        num_microbatches=len(microbatches),
        seq_length=seq,
        micro_batch_size=mbs,
        forward_only=forward_only,
    )
    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    total = sum(float(x["lm loss"][0]) for x in losses)
    count = sum(float(x["lm loss"][1]) for x in losses)
    return total / max(count, 1.0)


def forward_logits(chunks: Sequence[torch.nn.Module], tokens: torch.Tensor,
                   vocab_size: Optional[int] = None) -> Optional[torch.Tensor]:
    """Logits [batch, seq, vocab] (gathered over TP, Megatron vocab padding stripped when
    ``vocab_size`` is given) on the last pipeline stage; None on other stages. Runs the
    forward-only schedule, so it works for every TP/PP/VPP layout. One microbatch holds the
    whole batch, except with virtual pipeline stages, whose interleaved schedule needs at least
    PP microbatches: there each sample is a microbatch (batch must be a multiple of PP)."""
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
            out = get_forward_backward_func()(
                forward_step_func=partial(_forward_step, with_labels=False),
                data_iterator=_iterators(chunks, microbatches),
                model=list(chunks),
                num_microbatches=len(microbatches),
                seq_length=tokens.shape[1],
                micro_batch_size=microbatches[0]["tokens"].shape[0],
                forward_only=True,
                collect_non_loss_data=True,
            )
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
    """Cut a [batch, seq] batch into microbatch dicts for :func:`run_forward_backward`."""
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


def unwrap(chunks: Iterable[torch.nn.Module]) -> List[torch.nn.Module]:
    """The bare GPTModels under DDP / Float16Module wrappers."""
    out = []
    for c in chunks:
        while hasattr(c, "module") and not isinstance(c, ArGPTModel):
            c = c.module
        out.append(c)
    return out

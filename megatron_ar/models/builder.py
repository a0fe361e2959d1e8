"""Build megatron-core GPT models from a ModelConfig (running them: :mod:`megatron_ar.models.step`).

Design choices
- :func:`build_model` returns the list of model chunks this rank owns (one per virtual pipeline
  stage, a single-element list otherwise), exactly what megatron-core's schedules, DDP and
  optimizer take, so training code never special-cases virtual pipelining.
- Parallel sizes are read from megatron-core's ``parallel_state`` (set by
  :func:`megatron_ar.runtime.init_distributed`), so a caller cannot build a TP=2 model in a TP=1
  process group by accident.
- The chunks are moved to the current device after construction, as Megatron-LM's
  ``get_model`` does (``model_module.cuda(torch.cuda.current_device())``): parameters made on the
  CPU (``use_cpu_initialization``, the RMSNorm weights) would otherwise stay there on a GPU.
  Meta-device builds (checkpoint layouts) stay on the meta device.
"""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence

import torch
from megatron.core import parallel_state

from megatron_ar.models.config import ModelConfig
from megatron_ar.models.encoder import laser_spec
from megatron_ar.models.modules import ArGPTModel, embedding_multiplier
from megatron_ar.models.spec import LayerModules, attention_choice, block_spec
from megatron_ar.models.wrappers import unwrap  # noqa: F401  (re-exported: callers import it here)
from megatron_ar.runtime.device import module_to_device

log = logging.getLogger(__name__)


def build_model_chunk(cfg: ModelConfig, transformer_config, pre_process: bool = True,
                      post_process: bool = True, vp_stage: Optional[int] = None,
                      use_te: Optional[bool] = None,
                      modules: Optional[LayerModules] = None) -> ArGPTModel:
    """One GPTModel (pipeline stage / virtual stage) for ``cfg``."""
    from megatron_ar.models import nanochat

    tp = transformer_config.tensor_model_parallel_size
    model = ArGPTModel(
        config=transformer_config,
        transformer_layer_spec=block_spec(cfg, transformer_config, use_te, vp_stage=vp_stage,
                                          pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
                                          modules=modules),
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
        fused_kernels=cfg.fused_kernels,
        laser=laser_spec(cfg),
    )
    nanochat.install(model, cfg)  # no-op without nanochat options
    return model


def build_model(cfg: ModelConfig, sequence_parallel: bool = False,
                params_dtype: torch.dtype = torch.float32, use_te: Optional[bool] = None,
                transformer_config=None, modules: Optional[LayerModules] = None,
                **config_overrides) -> List[ArGPTModel]:
    """All model chunks of this rank for the current megatron-core parallel state.

    ``modules`` overrides the layer classes ``use_te`` would pick (see
    :class:`megatron_ar.models.spec.LayerModules`).

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
    if modules is None:
        choice = attention_choice(cfg, use_te, transformer_config.context_parallel_size or 1)
        log.info("attention backend: %s (%s)", choice.backend, choice.reason)
    chunks = []
    stages = range(vpp) if (vpp or 1) > 1 else [None]
    for vp_stage in stages:
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
        chunk = build_model_chunk(cfg, transformer_config, pre, post, vp_stage, use_te, modules)
        chunks.append(module_to_device(chunk))
    if cfg.init == "nanochat" and getattr(transformer_config, "perform_initialization", True):
        from megatron_ar.models.nanochat import init_weights

        init_weights(chunks, cfg, seed=torch.initial_seed())
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

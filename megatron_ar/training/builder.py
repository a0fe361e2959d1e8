"""Build a run from a recipe: process groups, model chunks, DDP, optimizer, schedule, data,
callbacks, and resume/initial-weights loading. ``train.py`` is parse -> build -> fit -> close.

Design choices
- Everything is megatron-core or a sibling package: ``megatron_ar.runtime.init_distributed``
  (gloo + CPU execution layer without a GPU), ``megatron_ar.models`` presets and
  ``build_model``/``wrap_with_ddp``, ``megatron_ar.data.curriculum.CurriculumDataset``.
- Precedence at start-up (Megatron-LM's): a checkpoint under ``checkpoint.load`` (or ``save``)
  resumes the run (model, optimizer, schedule, data position, RNG); otherwise
  ``checkpoint.pretrained_checkpoint`` provides initial weights only (continual pretraining
  from a converted HF checkpoint, resharded to this run's TP/PP on load); ``finetune: true``
  with ``load`` also takes weights only.
- Length, batch of every step, phase bounds and the LR schedule come from the run plan
  (:func:`megatron_ar.training.plan.build_run_plan`) resolved from the recipe and the training
  dataset's own curriculum plan; the builder derives none of them itself.
"""
from __future__ import annotations

import os
from typing import Any, List, Optional

import torch

from megatron_ar.training.config import ConfigError, TrainConfig, save_config
from megatron_ar.training.plan import model_config_from  # noqa: F401  (re-exported for callers)


def fp8_transformer_kwargs(cfg: TrainConfig) -> dict:
    """megatron-core ``TransformerConfig`` fields of the recipe's fp8 keys, set the way
    Megatron-LM's ``core_transformer_config_from_args`` sets them: every argument whose name is a
    TransformerConfig field is copied (``--fp8-format`` has ``dest='fp8'``; recipe, margin, amax
    history length/algorithm and ``fp8_wgrad`` keep their names), and ``fp8_param`` comes from
    ``--fp8-param-gather``. With ``fp8`` None the other fields are inert, as in Megatron-LM."""
    o = cfg.optimizer
    return dict(fp8=o.fp8_format, fp8_recipe=o.fp8_recipe, fp8_margin=o.fp8_margin,
                fp8_amax_history_len=o.fp8_amax_history_len,
                fp8_amax_compute_algo=o.fp8_amax_compute_algo, fp8_wgrad=o.fp8_wgrad,
                fp8_param=o.fp8_param_gather)


def check_precision_support(cfg: TrainConfig) -> None:
    """Fail before any process group or model exists, naming the key, when the recipe asks for
    precision features that need Transformer Engine on a GPU. Without TE, megatron-core 0.16
    *silently ignores* ``fp8`` with the local layer spec (measured: a model built with
    ``fp8="hybrid"`` trains in bf16 with no warning), and the precision-aware optimizer crashes
    inside torch's AdamW (``exp_avg_dtype`` is not one of its arguments)."""
    from megatron_ar.models.spec import te_available

    o = cfg.optimizer
    if o.fp8_format is not None and not te_available():
        raise ConfigError("optimizer.fp8_format: fp8 needs Transformer Engine on a GPU "
                          "(pip install megatron_ar[te]); set fp8_format: null on this machine")
    if o.use_precision_aware_optimizer and not te_available():
        raise ConfigError("optimizer.use_precision_aware_optimizer: needs Transformer Engine's "
                          "FusedAdam on a GPU (torch's AdamW keeps fp32 state only); set it to false")


def transformer_overrides(cfg: TrainConfig) -> dict:
    p = cfg.parallel
    out: dict = {}
    if p.recompute_granularity == "full":
        out.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    elif p.recompute_granularity == "selective":
        out.update(recompute_granularity="selective")
    check_precision_support(cfg)
    if cfg.optimizer.fp8_format is not None:
        out.update(fp8_transformer_kwargs(cfg))
    return out


def build_data(cfg: TrainConfig):
    from megatron_ar.data.curriculum import CurriculumDataset

    if cfg.data is None:
        raise ConfigError("data: the recipe has no data section")
    cache = cfg.data.cache_dir or os.path.join(cfg.logging.run_dir, "data_cache")
    return CurriculumDataset(cfg.data, cache_dir=cache)


def load_tokenizer(path: Optional[str]):
    """The recipe's tokenizer (``model.tokenizer``), None when the recipe names none; loaded by
    the one tokenizer loader of the package (``megatron_ar.tokenizers.io``)."""
    if not path:
        return None
    from megatron_ar.tokenizers.io import load_tokenizer as load

    try:
        return load(path)
    except FileNotFoundError as exc:
        raise ConfigError(f"model.tokenizer: {exc}") from None


def default_callbacks(cfg: TrainConfig, model_config) -> List[Any]:
    from megatron_ar.training import callbacks as cb

    out: List[Any] = [cb.LossSpikeDetector(cfg.schedule.spike_sigma, cfg.schedule.spike_window,
                                           cfg.schedule.skip_spike_updates, cfg.logging.run_dir,
                                           level_shift_steps=cfg.schedule.spike_level_shift_steps)]
    if cfg.logging.record_batches:
        out.append(cb.BatchRecorder(cfg.logging.run_dir))
    out.append(cb.MetricsLogger(cfg, model_config))
    from megatron_ar.training.wandb_logger import WandbLogger

    if WandbLogger.configured(cfg):  # before eval: a step's train row precedes its eval row
        out.append(WandbLogger(cfg, model_config))
    if cfg.eval.eval_interval and (cfg.eval.valid_sets or cfg.eval.mc_tasks or cfg.eval.generate_prompts):
        out.append(cb.EvalCallback(cfg))
    out.append(cb.CheckpointCallback(cfg))
    return out


def build_model_and_optimizer(cfg: TrainConfig, mc, use_gloo_process_groups: Optional[bool] = None):
    """The recipe's model chunks (bf16 wrapper, megatron-core DDP) and megatron-core optimizer,
    in the initialised parallel state: what the trainer and the fake-tensor memory probe
    (:mod:`megatron_ar.training.memory_probe`) both build."""
    from megatron.core.transformer.module import Float16Module

    from megatron_ar.models.builder import build_model, wrap_with_ddp
    from megatron_ar.training.optimizer import build_optimizer

    p, o = cfg.parallel, cfg.optimizer
    dtype = torch.bfloat16 if o.bf16 else torch.float32
    chunks = build_model(mc, sequence_parallel=p.sequence_parallel, params_dtype=dtype,
                         **transformer_overrides(cfg))
    if o.bf16:
        chunks = [Float16Module(c.config, c) for c in chunks]
    model = wrap_with_ddp(chunks, use_distributed_optimizer=p.use_distributed_optimizer,
                          grad_reduce_in_fp32=o.grad_reduce_in_fp32,
                          fp8_param_gather=o.fp8_param_gather,
                          overlap_grad_reduce=p.overlap_grad_reduce,
                          overlap_param_gather=p.overlap_param_gather)
    optimizer = build_optimizer(cfg, model, use_gloo_process_groups=use_gloo_process_groups)
    model[0].config.grad_scale_func = optimizer.scale_loss
    return model, optimizer


def build_run(cfg: TrainConfig, callbacks: Optional[List[Any]] = None):
    """Initialise distributed state and build a :class:`TrainState` ready for ``fit``."""
    from megatron_ar.runtime import init_distributed
    from megatron_ar.training import checkpointing
    from megatron_ar.training.loop import TrainState
    from megatron_ar.training.plan import build_run_plan

    p = cfg.parallel
    check_precision_support(cfg)  # before process groups: a clear error naming the key
    mc = model_config_from(cfg)
    vpp = cfg.vpp_size(mc.num_layers)
    layout = init_distributed(tp=p.tensor_model_parallel_size, pp=p.pipeline_model_parallel_size,
                              vpp=vpp, seed=cfg.schedule.seed)
    cfg.num_microbatches(layout.world_size)  # validates batch arithmetic, naming the key
    check_run_inputs(cfg, mc, layout)
    os.makedirs(cfg.logging.run_dir, exist_ok=True)
    data = build_data(cfg)
    plan = build_run_plan(cfg, layout.world_size, curriculum=data.plan, model_config=mc)
    model, optimizer = build_model_and_optimizer(cfg, mc)
    scheduler = plan.build_scheduler(optimizer)
    state = TrainState(cfg=cfg, layout=layout, model_config=mc, model=model, optimizer=optimizer,
                       scheduler=scheduler, data=data, plan=plan,
                       tokenizer=load_tokenizer(cfg.model.tokenizer))
    state.callbacks = callbacks if callbacks is not None else default_callbacks(cfg, mc)
    load_dir = cfg.load_dir()
    resumed = checkpointing.latest_iteration(load_dir) is not None if load_dir else False
    if resumed and not cfg.checkpoint.finetune:
        checkpointing.load_checkpoint(state, load_dir)
    elif resumed and cfg.checkpoint.finetune:
        checkpointing.load_weights(model, load_dir)
        optimizer.reload_model_params()
    elif cfg.checkpoint.pretrained_checkpoint:
        load_initial_weights(model, cfg.checkpoint.pretrained_checkpoint, mc)
        optimizer.reload_model_params()
    if hasattr(data, "load_state_dict") and not resumed:
        data.consumed_samples = state.consumed_samples
    if layout.rank == 0:
        save_config(cfg, os.path.join(cfg.logging.run_dir, "config.yaml"))
    return state


def check_run_inputs(cfg: TrainConfig, mc, layout) -> None:
    """Paths and vocabulary coverage (megatron_ar.training.inputs), checked by rank 0 and agreed
    on by every rank, so all of them stop with the same error before anything is built."""
    import torch.distributed as dist

    from megatron_ar.training.inputs import input_problems

    problems = [input_problems(cfg, mc, layout.tp, progress=True) if layout.rank == 0 else None]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(problems, src=0)
    if problems[0]:
        raise ConfigError("the recipe's inputs: " + "; ".join(problems[0]))


def load_initial_weights(model, path: str, mc) -> None:
    """Weights only: a megatron_ar training checkpoint (root or iter dir), or a checkpoint
    written by the HF->Megatron converter (architecture checked field by field against the
    recipe's model). Resharded to this run's TP/PP on load."""
    from megatron_ar.training import checkpointing

    if not os.path.exists(path):
        raise ConfigError(f"checkpoint.pretrained_checkpoint: {path} does not exist")
    if (os.path.isfile(os.path.join(path, "train_state.json"))
            or os.path.isfile(os.path.join(path, checkpointing.POINTER))):
        checkpointing.load_weights(model, path)
        return
    from megatron_ar.checkpoint import load_into_model

    load_into_model(model, path, model_config=mc)


def close_run(state) -> None:
    from megatron_ar.runtime import destroy_distributed

    for cb in state.callbacks:
        if hasattr(cb, "close"):
            cb.close()
    destroy_distributed()

"""Typed training recipe: one YAML file describes a run; any key can be overridden on the CLI.

Design choices
- A recipe is a tree of dataclasses (:class:`TrainConfig` with sections ``model``, ``parallel``,
  ``optimizer``, ``schedule``, ``data``, ``checkpoint``, ``eval``, ``logging``). Field names are
  Megatron-LM's argument names (``micro_batch_size``, ``lr_warmup_iters``, ``save_interval``...),
  so every field has a natural command-line spelling ``--micro-batch-size``; users coming from
  Megatron-LM keep their flags. A field can also be addressed by its dotted
  path (``--optimizer.lr 3e-4``), which is unambiguous and is what error messages print.
- Validation errors always name the key (``optimizer.lr``) and, for YAML input, the file and line
  (we keep the YAML node marks), because a typo in a 200-line recipe must be findable.
- The ``data`` section is the curriculum's own dataclass (``megatron_ar.data.curriculum``); this
  module only routes the YAML mapping to it, so the recipe and the curriculum tool
  (``tools/curriculum_plan.py``) read the same schema.
- The resolved config (after overrides and derived values) is written as YAML to the run
  directory and beside every checkpoint, so a run is reproducible from its own output.

Trade-off: a hand-rolled typed loader (about 150 lines) instead of OmegaConf/Hydra: no new
dependency, exact Megatron flag names, and errors that name file:line:key.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import yaml

from megatron_ar.data.curriculum_config import CurriculumConfig, CurriculumConfigError


class ConfigError(ValueError):
    """A recipe error. The message always starts with the offending key (and file:line)."""


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------
@dataclass
class ModelSection:
    """Which model to build: a preset of ``megatron_ar.models`` plus field overrides."""

    preset: str = "tiny-llama"  # a megatron_ar.models preset or a converted checkpoint dir
    seq_length: int = 4096
    # Overrides of ModelConfig fields (num_layers, hidden_size, ...); checked against ModelConfig.
    overrides: Dict[str, Any] = field(default_factory=dict)
    # Tokenizer directory (HF tokenizer.json) used for decoding in backtrace / BPB / generation.
    tokenizer: Optional[str] = None
    # Core attention: auto | unfused | sdpa | flex | te (megatron_ar.models.attention); auto is
    # chosen per model and device and printed in the plan. Implementation only: the weights
    # and checkpoints are the same for every backend.
    attention_backend: str = "auto"
    # The csrc/ fused kernels (cross-entropy, RMSNorm): auto (on a GPU when built) | on | off.
    fused_kernels: str = "auto"


@dataclass
class ParallelSection:
    """The megatron-core parallel layout and its DDP/recomputation options (Megatron-LM names)."""

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    # Megatron-LM semantics: layers per virtual stage; None = no interleaving.
    num_layers_per_virtual_pipeline_stage: Optional[int] = None
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False
    # Recompute activations of whole layers ("full") or attention core ("selective").
    recompute_granularity: Optional[str] = None


@dataclass
class OptimizerSection:
    """AdamW/SGD/Muon hyper-parameters, precision (bf16, fp8 through Transformer Engine), gradient
    reduce dtype and the precision-aware optimizer's state dtypes (Megatron-LM names)."""

    optimizer: str = "adam"  # adam (AdamW, as Fanar Table 7) | sgd | muon
    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    bf16: bool = False
    # fp8 through Transformer Engine (Megatron-LM's --fp8-format, dest ``fp8``): None | "e4m3" |
    # "hybrid"; recipe: delayed|tensorwise|mxfp8|blockwise. These keys and the four below map
    # onto megatron-core TransformerConfig fields as Megatron-LM's core_transformer_config_from_args
    # does (training.builder.fp8_transformer_kwargs); defaults are Megatron-LM's.
    fp8_format: Optional[str] = None
    fp8_recipe: str = "delayed"
    fp8_margin: int = 0  # delayed scaling only
    fp8_amax_history_len: int = 1  # delayed scaling only
    fp8_amax_compute_algo: str = "most_recent"  # most_recent | max; delayed scaling only
    fp8_wgrad: bool = True  # --no-fp8-wgrad: weight gradients in higher precision
    fp8_param_gather: bool = False  # fp8 compute params + fp8 param all-gather (TransformerConfig.fp8_param)
    # Gradient reduce dtype: fp32 (Megatron default) or bf16 (Fanar Prime); needs bf16=True.
    grad_reduce_in_fp32: bool = True
    # Optimizer state dtypes (only with use_precision_aware_optimizer, which needs TE FusedAdam).
    use_precision_aware_optimizer: bool = False
    exp_avg_dtype: str = "fp32"
    exp_avg_sq_dtype: str = "fp32"
    # optimizer: muon (megatron_ar.training.muon, nanochat's MuonAdamW): Muon for 2-D hidden
    # matrices with lr/min_lr and weight_decay (cautious); AdamW for embeddings, the output layer
    # and 1-D params. The three AdamW LRs are nanochat's base_train flags; the (hidden/768)^-0.5
    # (embedding, unembedding) and x0.01 (scalars) factors are applied by the builder.
    muon_momentum: float = 0.95
    muon_beta2: float = 0.9  # NorMuon second-moment EMA
    muon_ns_steps: int = 5  # Polar Express iterations (1..5)
    muon_embedding_lr: float = 0.3
    muon_unembedding_lr: float = 0.008
    muon_scalar_lr: float = 0.5


@dataclass
class ScheduleSection:
    """Batch sizes (incl. ramp-up), length, the learning-rate schedule and loss-spike handling."""

    micro_batch_size: int = 1
    global_batch_size: int = 8
    # Total optimizer steps. None: derived from the data curriculum's token budgets (with
    # ramp-up: as many ramped steps as fit in the curriculum; a given value counts ramped steps,
    # see megatron_ar.training.rampup).
    train_iters: Optional[int] = None
    # Megatron-LM --rampup-batch-size [start, increment, ramp_samples]: the global batch grows
    # from start by increment over ramp_samples samples to global_batch_size. With it the LR
    # schedule counts samples (*_iters keys mean that many final global batches).
    rampup_batch_size: Optional[List[int]] = None
    lr_warmup_iters: int = 0
    # Sample-valued LR keys (Megatron-LM --lr-warmup-samples/--lr-decay-samples), ramp-up only.
    lr_warmup_samples: Optional[int] = None
    lr_decay_samples: Optional[int] = None
    lr_warmup_init: float = 0.0
    # constant | linear | cosine | WSD | cosine-cooldown (Fanar: warmup -> cosine to min_lr ->
    # linear cool-down to zero over lr_cooldown_iters)
    lr_decay_style: str = "cosine"
    lr_decay_iters: Optional[int] = None  # None: train_iters - lr_cooldown_iters
    lr_wsd_decay_iters: Optional[int] = None
    lr_wsd_decay_style: str = "linear"
    lr_cooldown_iters: int = 0
    seed: int = 1234
    # Megatron-LM --exit-interval: stop (after checkpointing) when iteration % N == 0.
    exit_interval: Optional[int] = None
    # Loss-spike handling: log steps above k sigma of a rolling window; skip the update if set.
    spike_sigma: float = 6.0
    spike_window: int = 50
    skip_spike_updates: bool = False
    # After this many consecutive spike steps the loss level shifted (e.g. a new data phase):
    # the detector re-bases its window and stops skipping (callbacks.LossSpikeDetector).
    spike_level_shift_steps: int = 5


@dataclass
class CheckpointSection:
    """Where checkpoints go and come from, how often, and continual-pretraining initial weights."""

    save: Optional[str] = None  # checkpoint root; default <run_dir>/checkpoints
    load: Optional[str] = None  # resume from here (latest pointer); default = save
    save_interval: Optional[int] = None
    keep_last: Optional[int] = None  # keep-last-K published checkpoints (None: keep all)
    # Initial weights only (no optimizer/scheduler/data state): continual pretraining.
    pretrained_checkpoint: Optional[str] = None
    finetune: bool = False  # with load: take weights only, reset step/optimizer/data
    no_load_optim: bool = False
    no_load_rng: bool = False
    exit_on_signal: bool = True  # save + exit on SIGTERM/SIGUSR1 (Slurm pre-emption)


@dataclass
class EvalSection:
    """In-loop evaluation: validation sets, multiple-choice tasks, greedy generations."""

    eval_interval: Optional[int] = None
    eval_iters: int = 4  # micro-batches per validation set and DP rank
    # name -> dataset path prefix (.bin/.idx) of a validation set
    valid_sets: Dict[str, str] = field(default_factory=dict)
    # name -> JSONL file {query, choices, gold}
    mc_tasks: Dict[str, str] = field(default_factory=dict)
    mc_limit: Optional[int] = None  # first N items of each task
    generate_prompts: List[str] = field(default_factory=list)
    generate_tokens: int = 32


@dataclass
class LoggingSection:
    """Run directory, log cadence, TensorBoard/wandb and the peak used for MFU."""

    run_dir: str = "runs/default"
    log_interval: int = 1
    tensorboard: bool = True
    # wandb (only if installed; Megatron-LM's --wandb-project/--wandb-exp-name/--wandb-save-dir):
    # no project = no wandb. exp name default: run_dir's folder name; save dir default: run_dir.
    wandb_project: Optional[str] = None
    wandb_exp_name: Optional[str] = None
    wandb_save_dir: Optional[str] = None
    # Stated dense peak per device for MFU (TFLOP/s). H100 SXM bf16 dense: 989.
    peak_tflops: float = 989.0
    record_batches: bool = True  # per-step sample ids for tools/backtrace.py


@dataclass
class TrainConfig:
    """A whole recipe: typed sections, each field named as Megatron-LM's argument, loaded once by
    :func:`load_config`; ``data`` is the curriculum's own typed config."""

    model: ModelSection = field(default_factory=ModelSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    # The curriculum (megatron_ar.data.curriculum_config.CurriculumConfig), parsed by the data
    # layer's own schema; its run-level values (seq_length, global batch, seed) come from the
    # model/schedule sections and are filled in by load_config.
    data: Optional[CurriculumConfig] = None
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval: EvalSection = field(default_factory=EvalSection)
    logging: LoggingSection = field(default_factory=LoggingSection)

    # ---- derived values -----------------------------------------------------------------
    def data_parallel_size(self, world_size: int) -> int:
        mp = self.parallel.tensor_model_parallel_size * self.parallel.pipeline_model_parallel_size
        if world_size % mp:
            raise ConfigError(
                f"parallel: world size {world_size} is not divisible by tensor x pipeline "
                f"parallel size {mp}")
        return world_size // mp

    def num_microbatches(self, world_size: int) -> int:
        """Micro-batches per data-parallel rank of a full global batch (after any ramp-up)."""
        dp = self.data_parallel_size(world_size)
        s = self.schedule
        check_divisible(s.global_batch_size, s.micro_batch_size, dp, "schedule.global_batch_size")
        if s.rampup_batch_size is not None:
            check_rampup(s.rampup_batch_size, s.global_batch_size, s.micro_batch_size, dp)
        return s.global_batch_size // (s.micro_batch_size * dp)

    def vpp_size(self, num_layers: int) -> Optional[int]:
        """Virtual stages per pipeline rank from ``num_layers_per_virtual_pipeline_stage``."""
        n = self.parallel.num_layers_per_virtual_pipeline_stage
        if n is None:
            return None
        pp = self.parallel.pipeline_model_parallel_size
        if num_layers % (pp * n):
            raise ConfigError(
                f"parallel.num_layers_per_virtual_pipeline_stage: num_layers {num_layers} is not "
                f"divisible by pipeline size {pp} x {n}")
        v = num_layers // (pp * n)
        return v if v > 1 else None

    def save_dir(self) -> str:
        return self.checkpoint.save or os.path.join(self.logging.run_dir, "checkpoints")

    def load_dir(self) -> Optional[str]:
        return self.checkpoint.load or self.save_dir()


_RAMP_KEY = "schedule.rampup_batch_size"


def check_divisible(batch: int, micro_batch_size: int, dp: int, key: str) -> None:
    """A global batch must split into whole micro-batches of every data-parallel rank."""
    per = micro_batch_size * dp
    if batch % per:
        raise ConfigError(f"{key}: {batch} is not divisible by micro_batch_size x data-parallel "
                          f"size = {micro_batch_size} x {dp}")


def check_rampup(rampup: List[int], global_batch_size: int, micro_batch_size: int,
                 data_parallel_size: Optional[int] = None) -> None:
    """Megatron-LM's requirements on ``--rampup-batch-size START INCREMENT SAMPLES``, as errors
    naming the key. With ``data_parallel_size`` the start and increment must be multiples of
    micro_batch x DP (every step's batch splits into whole micro-batches of every DP rank);
    without it, of micro_batch."""
    if len(rampup) != 3:
        raise ConfigError(f"{_RAMP_KEY}: expected [start, increment, ramp_samples], got {list(rampup)}")
    start, incr, ramp = (int(x) for x in rampup)
    if start <= 0 or incr <= 0:
        raise ConfigError(f"{_RAMP_KEY}: start ({start}) and increment ({incr}) must be > 0")
    if ramp <= 0:
        raise ConfigError(f"{_RAMP_KEY}: ramp_samples must be > 0, got {ramp}")
    if start >= global_batch_size:
        raise ConfigError(f"{_RAMP_KEY}: start batch {start} must be smaller than "
                          f"schedule.global_batch_size={global_batch_size}")
    if (global_batch_size - start) % incr:
        raise ConfigError(f"{_RAMP_KEY}: global_batch_size - start = {global_batch_size - start} is "
                          f"not a multiple of the increment {incr}")
    dp = data_parallel_size or 1
    what = "micro_batch_size x data-parallel size" if data_parallel_size else "micro_batch_size"
    per = micro_batch_size * dp
    for name, v in (("start", start), ("increment", incr)):
        if v % per:
            raise ConfigError(f"{_RAMP_KEY}: {name} {v} is not a multiple of {what} = {per}"
                              + (f" ({micro_batch_size} x {dp})" if data_parallel_size else ""))


SECTIONS = ("model", "parallel", "optimizer", "schedule", "data", "checkpoint", "eval", "logging")


# ----------------------------------------------------------------------------------------------
# YAML -> dataclass with key-naming errors
# ----------------------------------------------------------------------------------------------
def _marks(node, prefix: str, out: Dict[str, int]) -> None:
    """Map key path (``data.phases[1].blend.ar.weight``) -> 1-based YAML line, for errors."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}.{k.value}" if prefix else str(k.value)
            out[key] = k.start_mark.line + 1
            _marks(v, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            key = f"{prefix}[{i}]"
            out.setdefault(key, v.start_mark.line + 1)
            _marks(v, key, out)


class _Where:
    def __init__(self, source: Optional[str], lines: Dict[str, int]):
        self.source, self.lines = source, lines

    def line_of(self, key: str) -> Optional[int]:
        """Line of ``key`` or of its nearest enclosing key (an unknown key's parent)."""
        while key:
            if key in self.lines:
                return self.lines[key]
            cut = max(key.rfind("."), key.rfind("["))
            key = key[:cut] if cut > 0 else ""
        return None

    def __call__(self, key: str) -> str:
        if self.source is None:
            return key
        line = self.line_of(key)
        return f"{self.source}:{line}: {key}" if line else f"{self.source}: {key}"


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: _Where) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        return _coerce(value, inner[0], key, where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, where)
    if origin in (list, List):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where(key)}: expected a list, got {value!r}")
        return [_coerce(v, args[0] if args else Any, f"{key}[{i}]", where)
                for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as exc:
                raise ConfigError(f"{where(key)}: expected a mapping, got {value!r}") from exc
        if not isinstance(value, dict):
            raise ConfigError(f"{where(key)}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{key}.{k}", where) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where(key)}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where(key)}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
        raise ConfigError(f"{where(key)}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where(key)}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where(key)}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{where(key)}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where(key)}: unsupported type {_type_name(tp)}")


def _build(cls, mapping: Any, prefix: str, where: _Where):
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where(prefix)}: expected a mapping of {cls.__name__} fields, "
                          f"got {mapping!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in mapping.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            close = [n for n in names if n.replace("_", "") == str(k).replace("_", "").replace("-", "")]
            hint = f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(sorted(names))})"
            raise ConfigError(f"{where(key)}: unknown key{hint}")
        if k == "data" and cls is TrainConfig:
            kwargs[k] = v  # parsed by the curriculum's own schema in _finish
            continue
        kwargs[k] = _coerce(v, hints[k], key, where)
    return cls(**kwargs)


def _finish(cfg: TrainConfig, where: _Where) -> TrainConfig:
    if isinstance(cfg.data, dict):
        # The curriculum owns its schema (megatron_ar.data.curriculum_config); relative dataset
        # prefixes resolve against the recipe's folder, run-level values come from our sections.
        base_dir = os.path.dirname(os.path.abspath(where.source)) if where.source else None
        try:
            cfg.data = CurriculumConfig.from_dict(cfg.data, base_dir=base_dir).resolved(
                seq_length=cfg.model.seq_length,
                global_batch_size=cfg.schedule.global_batch_size,
                seed=cfg.schedule.seed)
        except CurriculumConfigError as exc:
            msg = str(exc)
            if not msg.startswith("data"):
                msg = f"data: {msg}"
            key, _, rest = msg.partition(": ")
            raise ConfigError(f"{where(key)}: {rest}") from None
    elif cfg.data is not None and not isinstance(cfg.data, CurriculumConfig):
        raise ConfigError(f"{where('data')}: expected a mapping, got {cfg.data!r}")
    validate(cfg, where)
    return cfg


def validate(cfg: TrainConfig, where: Optional[_Where] = None) -> None:
    """Cross-field checks; each error names the key."""
    w = where or _Where(None, {})
    p, o, s, c, e, lg = cfg.parallel, cfg.optimizer, cfg.schedule, cfg.checkpoint, cfg.eval, cfg.logging

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{w(key)}: {msg}")

    need(p.tensor_model_parallel_size >= 1, "parallel.tensor_model_parallel_size", "must be >= 1")
    need(p.pipeline_model_parallel_size >= 1, "parallel.pipeline_model_parallel_size", "must be >= 1")
    need(not p.sequence_parallel or p.tensor_model_parallel_size > 1, "parallel.sequence_parallel",
         "needs tensor_model_parallel_size > 1")
    need(p.num_layers_per_virtual_pipeline_stage is None or p.pipeline_model_parallel_size > 1,
         "parallel.num_layers_per_virtual_pipeline_stage", "needs pipeline_model_parallel_size > 1")
    from megatron_ar.runtime.fusions import overlap_errors

    for key, msg in overlap_errors(use_distributed_optimizer=p.use_distributed_optimizer,
                                   overlap_grad_reduce=p.overlap_grad_reduce,
                                   overlap_param_gather=p.overlap_param_gather):
        need(False, f"parallel.{key}", msg)
    need(p.recompute_granularity in (None, "full", "selective"), "parallel.recompute_granularity",
         "must be null, 'full' or 'selective'")
    need(o.optimizer in ("adam", "sgd", "muon"), "optimizer.optimizer", "must be 'adam', 'sgd' or 'muon'")
    if o.optimizer == "muon":
        need(not p.use_distributed_optimizer, "parallel.use_distributed_optimizer",
             "optimizer: muon needs whole matrices on every rank; the distributed optimizer shards "
             "them across data-parallel ranks (set use_distributed_optimizer: false)")
        need(not o.use_precision_aware_optimizer, "optimizer.use_precision_aware_optimizer",
             "not supported with optimizer: muon")
        need(0 <= o.muon_momentum < 1, "optimizer.muon_momentum", f"must be in [0, 1), got {o.muon_momentum}")
        need(0 <= o.muon_beta2 < 1, "optimizer.muon_beta2", f"must be in [0, 1), got {o.muon_beta2}")
        need(1 <= o.muon_ns_steps <= 5, "optimizer.muon_ns_steps",
             f"must be in 1..5 (Polar Express has 5 coefficient sets), got {o.muon_ns_steps}")
        for k in ("muon_embedding_lr", "muon_unembedding_lr", "muon_scalar_lr"):
            need(getattr(o, k) > 0, f"optimizer.{k}", f"must be > 0, got {getattr(o, k)}")
    need(o.lr > 0, "optimizer.lr", f"must be > 0, got {o.lr}")
    need(0 <= o.min_lr <= o.lr, "optimizer.min_lr", f"must be in [0, lr={o.lr}], got {o.min_lr}")
    need(o.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
    need(0 <= o.adam_beta1 < 1, "optimizer.adam_beta1", "must be in [0, 1)")
    need(0 <= o.adam_beta2 < 1, "optimizer.adam_beta2", "must be in [0, 1)")
    need(o.adam_eps > 0, "optimizer.adam_eps", "must be > 0")
    need(o.clip_grad >= 0, "optimizer.clip_grad", "must be >= 0 (0 disables clipping)")
    need(o.fp8_format in (None, "e4m3", "hybrid"), "optimizer.fp8_format",
         "must be null, 'e4m3' or 'hybrid'")
    need(o.fp8_recipe in ("delayed", "tensorwise", "mxfp8", "blockwise"), "optimizer.fp8_recipe",
         "must be delayed|tensorwise|mxfp8|blockwise")
    need(o.fp8_format is None or o.bf16, "optimizer.fp8_format", "fp8 training needs bf16: true")
    need(o.fp8_margin >= 0, "optimizer.fp8_margin", "must be >= 0")
    need(o.fp8_amax_history_len >= 1, "optimizer.fp8_amax_history_len", "must be >= 1")
    need(o.fp8_amax_compute_algo in ("most_recent", "max"), "optimizer.fp8_amax_compute_algo",
         "must be 'most_recent' or 'max'")
    need(not o.fp8_param_gather or o.fp8_format is not None, "optimizer.fp8_param_gather",
         "needs optimizer.fp8_format")
    need(o.grad_reduce_in_fp32 or o.bf16, "optimizer.grad_reduce_in_fp32",
         "false (bf16 gradient reduce) needs bf16: true")
    for k in ("exp_avg_dtype", "exp_avg_sq_dtype"):
        need(getattr(o, k) in ("fp32", "bf16", "fp16", "fp8"), f"optimizer.{k}", "must be fp32|bf16|fp16|fp8")
        need(getattr(o, k) == "fp32" or o.use_precision_aware_optimizer, f"optimizer.{k}",
             "a non-fp32 optimizer state needs use_precision_aware_optimizer: true")
    need(s.micro_batch_size >= 1, "schedule.micro_batch_size", "must be >= 1")
    need(s.global_batch_size >= s.micro_batch_size, "schedule.global_batch_size",
         "must be >= micro_batch_size")
    need(s.global_batch_size % s.micro_batch_size == 0, "schedule.global_batch_size",
         f"must be a multiple of micro_batch_size={s.micro_batch_size}")
    need(s.train_iters is None or s.train_iters >= 1, "schedule.train_iters", "must be >= 1")
    need(s.lr_decay_style in ("constant", "linear", "cosine", "WSD", "cosine-cooldown",
                              "inverse-square-root"),
         "schedule.lr_decay_style", "must be constant|linear|cosine|WSD|cosine-cooldown|inverse-square-root")
    need(s.lr_warmup_iters >= 0, "schedule.lr_warmup_iters", "must be >= 0")
    if s.rampup_batch_size is not None:
        try:
            check_rampup(s.rampup_batch_size, s.global_batch_size, s.micro_batch_size)
        except ConfigError as exc:
            raise ConfigError(f"{w(_RAMP_KEY)}{str(exc)[len(_RAMP_KEY):]}") from None
    for k in ("lr_warmup_samples", "lr_decay_samples"):
        need(getattr(s, k) is None or s.rampup_batch_size is not None, f"schedule.{k}",
             "only used with rampup_batch_size (the schedule counts iterations without ramp-up)")
        need(getattr(s, k) is None or getattr(s, k) >= 0, f"schedule.{k}", "must be >= 0")
    need(s.lr_cooldown_iters >= 0, "schedule.lr_cooldown_iters", "must be >= 0")
    need(s.lr_cooldown_iters == 0 or s.lr_decay_style == "cosine-cooldown", "schedule.lr_cooldown_iters",
         "only used with lr_decay_style: cosine-cooldown")
    need(s.lr_decay_style != "WSD" or s.lr_wsd_decay_iters, "schedule.lr_wsd_decay_iters",
         "required with lr_decay_style: WSD")
    need(s.lr_wsd_decay_style in ("linear", "cosine", "exponential", "minus_sqrt"),
         "schedule.lr_wsd_decay_style", "must be linear|cosine|exponential|minus_sqrt")
    need(s.lr_warmup_init <= o.lr, "schedule.lr_warmup_init", "must be <= optimizer.lr")
    need(s.exit_interval is None or s.exit_interval >= 1, "schedule.exit_interval", "must be >= 1")
    need(s.spike_sigma > 0, "schedule.spike_sigma", "must be > 0")
    need(s.spike_window >= 2, "schedule.spike_window", "must be >= 2")
    need(s.spike_level_shift_steps >= 1, "schedule.spike_level_shift_steps", "must be >= 1")
    need(c.save_interval is None or c.save_interval >= 1, "checkpoint.save_interval", "must be >= 1")
    need(c.keep_last is None or c.keep_last >= 1, "checkpoint.keep_last", "must be >= 1")
    need(not (c.finetune and c.pretrained_checkpoint), "checkpoint.finetune",
         "use either finetune (with load) or pretrained_checkpoint, not both")
    need(e.eval_interval is None or e.eval_interval >= 1, "eval.eval_interval", "must be >= 1")
    need(e.eval_iters >= 1, "eval.eval_iters", "must be >= 1")
    need(lg.log_interval >= 1, "logging.log_interval", "must be >= 1")
    need(lg.peak_tflops > 0, "logging.peak_tflops", "must be > 0")
    need(cfg.model.seq_length >= 2, "model.seq_length", "must be >= 2")
    from megatron_ar.models.config import ATTENTION_BACKENDS, FUSED_KERNELS

    need(cfg.model.attention_backend in ATTENTION_BACKENDS, "model.attention_backend",
         f"must be one of {', '.join(ATTENTION_BACKENDS)}")
    need(cfg.model.fused_kernels in FUSED_KERNELS, "model.fused_kernels",
         f"must be one of {', '.join(FUSED_KERNELS)}")
    for key in ("attention_backend", "fused_kernels"):
        need(key not in cfg.model.overrides, f"model.overrides.{key}",
             f"set model.{key} instead (one place for it)")
    if cfg.model.overrides:
        import dataclasses as _dc

        from megatron_ar.models.config import ModelConfig

        fields = {f.name for f in _dc.fields(ModelConfig)}
        for k in cfg.model.overrides:
            need(k in fields, f"model.overrides.{k}",
                 f"unknown ModelConfig field (valid: {', '.join(sorted(fields))})")
        need("seq_length" not in cfg.model.overrides, "model.overrides.seq_length",
             "set model.seq_length instead (one place for the sequence length)")


# ----------------------------------------------------------------------------------------------
# CLI overrides with Megatron-LM flag names
# ----------------------------------------------------------------------------------------------
def _field_index() -> Dict[str, Tuple[str, str]]:
    """flag name (dashes) -> (section, field) for every section field, plus aliases."""
    idx: Dict[str, Tuple[str, str]] = {}
    for sec in SECTIONS:
        if sec == "data":
            continue
        cls = typing.get_type_hints(TrainConfig)[sec]
        for f in dataclasses.fields(cls):
            idx[f.name.replace("_", "-")] = (sec, f.name)
    # Megatron-LM spellings that differ from our field names.
    idx.update({
        "tensorboard-dir": ("logging", "run_dir"),
        "seq-length": ("model", "seq_length"),
        "no-load-optim": ("checkpoint", "no_load_optim"),
        "no-load-rng": ("checkpoint", "no_load_rng"),
        "pretrained-checkpoint": ("checkpoint", "pretrained_checkpoint"),
        "lr-warmup-init": ("schedule", "lr_warmup_init"),
        "tokenizer-model": ("model", "tokenizer"),
        "accumulate-allreduce-grads-in-fp32": ("optimizer", "grad_reduce_in_fp32"),
        "fp8": ("optimizer", "fp8_format"),
        "seed": ("schedule", "seed"),
        "eval-iters": ("eval", "eval_iters"),
        "model": ("model", "preset"),
    })
    # Model architecture flags become model.overrides entries.
    for name in ("num-layers", "hidden-size", "ffn-hidden-size", "num-attention-heads",
                 "num-query-groups", "kv-channels", "vocab-size", "max-position-embeddings"):
        idx[name] = ("model.overrides", name.replace("-", "_"))
    return idx


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: Dict[str, Any], argv: List[str], seen: Optional[set] = None) -> Dict[str, Any]:
    """Apply ``--flag value`` / ``--section.key value`` / ``--bool-flag`` / ``--no-bool-flag``
    overrides to the raw recipe mapping (before typing). Unknown flags raise ConfigError."""
    idx = _field_index()
    hints = {sec: typing.get_type_hints(typing.get_type_hints(TrainConfig)[sec])
             for sec in SECTIONS if sec != "data"}
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--"):
            raise ConfigError(f"command line: unexpected argument {tok!r} (overrides are --key value)")
        name, eq, inline = tok[2:].partition("=")
        negate = False
        if "." in name:
            path = name.replace("-", "_").split(".")
        else:
            target = idx.get(name)
            if target is None and name.startswith("no-") and name[3:] in idx:
                target, negate = idx[name[3:]], True
            if target is None:
                raise ConfigError(f"command line: unknown flag --{name}")
            path = target[0].split(".") + [target[1]]
        sec = path[0]
        if sec not in SECTIONS:
            raise ConfigError(f"command line: --{name}: unknown section {sec!r}")
        ftype = hints.get(sec, {}).get(path[1]) if len(path) == 2 else None
        is_bool = ftype is bool or ftype == Optional[bool]
        is_list = any(typing.get_origin(t) in (list, List) for t in (ftype, *typing.get_args(ftype)))
        if eq:
            value: Any = _parse_scalar(inline)
            i += 1
        elif is_list and i + 2 < len(argv) and not argv[i + 1].startswith("--") \
                and not argv[i + 2].startswith("--"):
            # Megatron-LM's nargs flags: --rampup-batch-size 32 32 1953125
            j = i + 1
            value = []
            while j < len(argv) and not argv[j].startswith("--"):
                value.append(_parse_scalar(argv[j]))
                j += 1
            i = j
        elif is_bool and (i + 1 >= len(argv) or argv[i + 1].startswith("--")
                          or str(argv[i + 1]).lower() not in ("true", "false", "1", "0", "yes", "no")):
            value = not negate
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"command line: --{name} needs a value")
            value = _parse_scalar(argv[i + 1])
            i += 2
        node = raw
        for p in path[:-1]:
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"command line: --{name}: {'.'.join(path[:-1])} is not a mapping")
            node = node[p]
        node[path[-1]] = value
        if seen is not None:
            seen.add(".".join(path))
    return raw


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None,
                text: Optional[str] = None) -> TrainConfig:
    """Load a recipe from ``path`` (or YAML ``text``), apply CLI ``overrides``, validate."""
    lines: Dict[str, int] = {}
    source = None
    raw: Dict[str, Any] = {}
    if path is not None or text is not None:
        if path is not None:
            source = path
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except OSError as exc:
                raise ConfigError(f"{path}: cannot read recipe: {exc}") from exc
        try:
            node = yaml.compose(text)
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{source or '<recipe>'}{where}: invalid YAML: {what}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{source or '<recipe>'}: top level must be a mapping of sections")
        if not raw:
            raise ConfigError(f"{source or '<recipe>'}: the recipe is empty")
        if node is not None:
            _marks(node, "", lines)
    cli_keys: set = set()
    if overrides:
        raw = apply_overrides(raw, list(overrides), cli_keys)
    where = _Where(source, lines)
    cfg = _build(TrainConfig, raw, "", where)
    _resolve_paths(cfg, os.path.dirname(os.path.abspath(source)) if source else os.getcwd(), cli_keys)
    return _finish(cfg, where)


# Input files named in a recipe resolve against the recipe's folder (like the curriculum's
# dataset prefixes); the same keys given on the command line resolve against the working
# directory. Outputs (run_dir, save, load) are relative to the working directory, as in
# Megatron-LM.
_INPUT_PATHS = (("model", "tokenizer"), ("checkpoint", "pretrained_checkpoint"))
_INPUT_MAPS = (("eval", "valid_sets"), ("eval", "mc_tasks"))


def _resolve_paths(cfg: TrainConfig, base_dir: str, cli_keys: set) -> None:
    def fix(value: str, key: str) -> str:
        value = os.path.expanduser(value)
        if os.path.isabs(value):
            return value
        root = os.getcwd() if key in cli_keys or key.rsplit(".", 1)[0] in cli_keys else base_dir
        return os.path.normpath(os.path.join(root, value))

    for sec, name in _INPUT_PATHS:
        v = getattr(getattr(cfg, sec), name)
        if isinstance(v, str) and v:
            setattr(getattr(cfg, sec), name, fix(v, f"{sec}.{name}"))
    for sec, name in _INPUT_MAPS:
        m = getattr(getattr(cfg, sec), name)
        for k, v in list(m.items()):
            m[k] = fix(v, f"{sec}.{name}.{k}")


def to_dict(cfg: TrainConfig) -> Dict[str, Any]:
    """The resolved recipe as plain data; :func:`load_config` reads it back unchanged."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            to = getattr(v, "to_dict", None)
            v = to() if callable(to) else dataclasses.asdict(v)
        out[f.name] = v
    return out


def save_config(cfg: TrainConfig, path: str) -> None:
    """Write the resolved recipe as YAML, atomically (:mod:`megatron_ar.io.atomic`)."""
    from megatron_ar.io.atomic import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))

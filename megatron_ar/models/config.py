"""Typed architecture config (:class:`ModelConfig`) and its translation to megatron-core.

Design choices
- One flat dataclass of architecture options covers Llama (Fanar Star), Gemma-2 (Fanar Prime)
  and nanochat-style GPTs: every model difference is an option read by the one spec builder
  (``megatron_ar.models.spec``), never a subclass.
- Parallelism, precision and initialisation are *not* architecture: they are arguments of
  :meth:`ModelConfig.to_transformer_config`, so one preset serves every TP/PP layout.
- Validation happens in ``__post_init__``; each error names the offending field
  (``ModelConfig.<field>: ...``) so a bad recipe/preset fails at load time, not mid-build.
- Features megatron-core already has are mapped onto it (sliding window ->
  ``window_size``/``window_attn_skip_freq``, ``query_pre_attn_scalar`` -> ``softmax_scale``,
  (1+w) norms -> ``layernorm_zero_centered_gamma``, QK-norm -> ``qk_layernorm``); only the rest
  lives in ``megatron_ar.models.modules``.
- Vocab padding follows Megatron-LM: to a multiple of ``128 * TP`` (``make_vocab_size_divisible_by``).
- megatron-core's fusion flags are a :class:`~megatron_ar.runtime.fusions.FusionDecision`
  passed to :meth:`ModelConfig.to_transformer_config` (decided from the installed stack when
  not given), so the device-specific probing stays in ``runtime`` and tests can drive it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import torch

if TYPE_CHECKING:
    from megatron_ar.runtime.fusions import FusionDecision, StackCapabilities

ACTIVATIONS = ("swiglu", "geglu_tanh", "relu2", "gelu")
NORMS = ("rmsnorm", "rmsnorm_one_plus", "rmsnorm_noparam")
SLIDING_PATTERNS = ("all", "alternate")
FAMILIES = ("llama", "gemma2", "gpt")
#: Core-attention implementations (megatron_ar.models.attention); ``auto`` picks per model/device.
ATTENTION_BACKENDS = ("auto", "unfused", "sdpa", "flex", "te")
#: model.fused_kernels: the csrc/ kernels (fused cross-entropy, fused RMSNorm); see
#: megatron_ar.kernels.use_fused.
FUSED_KERNELS = ("auto", "on", "off")
#: model.laser_mode: how a frozen LASER2 encoder feeds the decoder (megatron_ar.models.encoder):
#: none (Arkadiko V4-B), cross_attention (V4-A), input (V4-C).
LASER_MODES = ("none", "cross_attention", "input")
LASER_POOLINGS = ("max", "mean")
#: model.init: megatron-core's normal init, or nanochat's (megatron_ar.models.nanochat).
INITS = ("megatron", "nanochat")


class ConfigError(ValueError):
    """Invalid ModelConfig; the message starts with ``ModelConfig.<field>``."""


def padded_vocab_size(vocab_size: int, tp: int = 1, divisible_by: int = 128) -> int:
    """Megatron-LM's padded vocab: the next multiple of ``divisible_by * tp``."""
    multiple = divisible_by * tp
    return int(math.ceil(vocab_size / multiple) * multiple)


@dataclass
class ModelConfig:
    """Architecture of a decoder-only model (see module docstring). Fields:

    family: which HF architecture it converts to (``llama`` -> LlamaForCausalLM,
        ``gemma2`` -> Gemma2ForCausalLM, ``gpt`` -> no HF equivalent, e.g. nanochat-style).
    kv_channels: per-head dim; None means ``hidden_size // num_attention_heads``.
    num_query_groups: KV heads (GQA); None means MHA.
    activation: ``swiglu`` (SiLU-gated), ``geglu_tanh`` (tanh-GELU-gated, Gemma),
        ``relu2`` (ReLU^2, nanochat, not gated), ``gelu`` (not gated).
    norm: ``rmsnorm`` (w*x), ``rmsnorm_one_plus`` ((1+w)*x, w stored raw, Gemma),
        ``rmsnorm_noparam`` (no weight, nanochat). Used for every norm incl. QK-norm.
    embedding_norm: parameter-free RMSNorm right after the embedding (nanochat).
    embedding_scale: multiply embeddings by sqrt(hidden_size) (Gemma).
    query_pre_attn_scalar: attention scale is ``query_pre_attn_scalar ** -0.5`` (Gemma-2);
        None means ``kv_channels ** -0.5``.
    sliding_window: window length W (a query sees itself and W-1 earlier tokens, HF semantics);
        ``sliding_window_pattern``: ``all`` layers or ``alternate`` (0-based even layers local,
        odd layers global, Gemma-2).
    post_norms: Gemma-2 sandwich norms after attention and MLP.
    attention_backend: core attention implementation, one of ``ATTENTION_BACKENDS``
        (``auto``: chosen from the model and the device, logged; an implementation choice
        that leaves the math and the checkpoint unchanged).
    fused_kernels: the csrc/ kernels (``auto``: on a GPU when built; ``on``/``off``).
    hf_extra: HF-only config keys carried through conversion unchanged (token ids).
    laser_mode: a frozen LASER2 BiLSTM encoder over the same token ids (one of ``LASER_MODES``,
        see :mod:`megatron_ar.models.encoder`); ``laser_layers`` / ``laser_hidden`` (per
        direction) / ``laser_embed_dim`` / ``laser_padding_idx`` its shape, ``laser_pooling``
        the sentence embedding (``max`` as LASER, ``mean``).
    value_embeddings, residual_scalars, smear, backout, qk_scale, window_pattern, logits_fp32,
        init: nanochat's GPT options, documented in :mod:`megatron_ar.models.nanochat`
        (``window_pattern``: ``S``/``L`` tiled over layers, last layer ``L``, ``S`` layers use
        ``sliding_window``; ``init``: ``megatron`` (megatron-core's normal init with
        ``init_method_std``) or ``nanochat``).
    """

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    vocab_size: int
    seq_length: int
    num_query_groups: Optional[int] = None
    kv_channels: Optional[int] = None
    family: str = "llama"
    name: str = "custom"
    rotary_base: float = 10000.0
    activation: str = "swiglu"
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qk_norm: bool = False
    embedding_norm: bool = False
    embedding_scale: bool = False
    query_pre_attn_scalar: Optional[float] = None
    attn_logit_softcap: Optional[float] = None
    final_logit_softcap: Optional[float] = None
    sliding_window: Optional[int] = None
    sliding_window_pattern: str = "alternate"
    post_norms: bool = False
    add_bias_linear: bool = False
    add_qkv_bias: bool = False
    init_method_std: float = 0.02
    attention_backend: str = "auto"
    fused_kernels: str = "auto"
    hf_extra: Dict[str, Any] = field(default_factory=dict)
    laser_mode: str = "none"
    laser_layers: int = 5
    laser_hidden: int = 512
    laser_embed_dim: int = 320
    laser_pooling: str = "max"
    laser_padding_idx: int = 1
    # nanochat GPT options (megatron_ar.models.nanochat)
    value_embeddings: bool = False
    residual_scalars: bool = False
    smear: bool = False
    backout: bool = False
    qk_scale: Optional[float] = None
    window_pattern: Optional[str] = None
    logits_fp32: bool = False
    init: str = "megatron"

    def __post_init__(self):
        self.validate()
        # Canonical form: MHA / default head_dim written out, so equal models compare equal.
        self.num_query_groups = self.groups
        self.kv_channels = self.head_dim

    # ------------------------------------------------------------------ validation
    def _fail(self, name: str, msg: str):
        raise ConfigError(f"ModelConfig.{name}: {msg} (got {getattr(self, name)!r})")

    def validate(self) -> None:
        for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                     "vocab_size", "seq_length"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                self._fail(name, "must be a positive int")
        for name in ("num_query_groups", "kv_channels", "sliding_window"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                self._fail(name, "must be None or a positive int")
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            self._fail("kv_channels", "must be set when hidden_size is not divisible by "
                       "num_attention_heads")
        if self.num_attention_heads % self.groups:
            self._fail("num_query_groups", f"must divide num_attention_heads="
                       f"{self.num_attention_heads}")
        if self.activation not in ACTIVATIONS:
            self._fail("activation", f"must be one of {ACTIVATIONS}")
        if self.norm not in NORMS:
            self._fail("norm", f"must be one of {NORMS}")
        if self.family not in FAMILIES:
            self._fail("family", f"must be one of {FAMILIES}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            self._fail("attention_backend", f"must be one of {ATTENTION_BACKENDS}")
        if self.fused_kernels not in FUSED_KERNELS:
            self._fail("fused_kernels", f"must be one of {FUSED_KERNELS}")
        if self.sliding_window_pattern not in SLIDING_PATTERNS:
            self._fail("sliding_window_pattern", f"must be one of {SLIDING_PATTERNS}")
        if not (isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0):
            self._fail("norm_eps", "must be a positive float")
        if not (isinstance(self.rotary_base, (int, float)) and self.rotary_base > 0):
            self._fail("rotary_base", "must be a positive number")
        for name in ("query_pre_attn_scalar", "attn_logit_softcap", "final_logit_softcap"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and v > 0):
                self._fail(name, "must be None or a positive number")
        if self.embedding_norm and self.norm == "rmsnorm_one_plus":
            self._fail("embedding_norm", "is parameter-free RMSNorm; combine it with norm="
                       "'rmsnorm' or 'rmsnorm_noparam'")
        self._validate_laser()
        if self.qk_scale is not None:
            if not (isinstance(self.qk_scale, (int, float)) and self.qk_scale > 0):
                self._fail("qk_scale", "must be None or a positive number")
            if self.query_pre_attn_scalar is not None:
                self._fail("qk_scale", "and query_pre_attn_scalar both set the attention scale")
        if self.window_pattern is not None:
            if not (isinstance(self.window_pattern, str) and self.window_pattern
                    and set(self.window_pattern) <= {"S", "L"}):
                self._fail("window_pattern", "must be a non-empty string of 'S' and 'L'")
            if self.sliding_window is None and "S" in self.window_pattern:
                self._fail("window_pattern", "has 'S' layers: set sliding_window")
        if self.init not in INITS:
            self._fail("init", f"must be one of {INITS}")
        nanochat = [n for n in ("value_embeddings", "residual_scalars", "smear", "backout")
                    if getattr(self, n)]
        if nanochat and self.family in ("llama", "gemma2"):
            self._fail(nanochat[0], f"is a nanochat option; family {self.family!r} has no "
                       "such HF weights (use family='gpt')")
        if self.family in ("llama", "gemma2") and self.activation not in ("swiglu", "geglu_tanh"):
            self._fail("activation", f"family {self.family!r} converts to HF only with a gated "
                       "activation (swiglu or geglu_tanh); use family='gpt'")

    def _validate_laser(self) -> None:
        if self.laser_mode not in LASER_MODES:
            self._fail("laser_mode", f"must be one of {LASER_MODES}")
        if self.laser_pooling not in LASER_POOLINGS:
            self._fail("laser_pooling", f"must be one of {LASER_POOLINGS}")
        for name in ("laser_layers", "laser_hidden", "laser_embed_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                self._fail(name, "must be a positive int")
        if not (isinstance(self.laser_padding_idx, int)
                and 0 <= self.laser_padding_idx < self.vocab_size):
            self._fail("laser_padding_idx", f"must be a token id below vocab_size={self.vocab_size}")
        if self.laser_mode == "cross_attention" and 2 * self.laser_hidden != self.hidden_size:
            # megatron-core's CrossAttention projects K/V from inputs of config.hidden_size
            self._fail("laser_hidden", f"2 x laser_hidden must equal hidden_size="
                       f"{self.hidden_size} for laser_mode='cross_attention'")

    # ------------------------------------------------------------------ derived values
    @property
    def groups(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def gated(self) -> bool:
        return self.activation in ("swiglu", "geglu_tanh")

    def sliding_layers(self) -> Tuple[bool, ...]:
        """Per layer (0-based): True when the layer uses the sliding window."""
        if self.sliding_window is None:
            return tuple(False for _ in range(self.num_layers))
        if self.window_pattern is not None:  # nanochat: tiled, the last layer always long
            tiled = [self.window_pattern[i % len(self.window_pattern)] == "S"
                     for i in range(self.num_layers)]
            return tuple(tiled[:-1]) + (False,)
        if self.sliding_window_pattern == "all":
            return tuple(True for _ in range(self.num_layers))
        return tuple(i % 2 == 0 for i in range(self.num_layers))

    def check_layout(self, tp: int, pp: int = 1, vpp: Optional[int] = None,
                     sequence_parallel: bool = False, where: str = "parallel") -> None:
        """Raise :class:`ConfigError` when the model cannot be split this way: TP must divide
        the attention heads and the query groups (megatron-core splits both), PP x VPP the
        layers, and sequence parallelism needs TP >= 2."""
        if sequence_parallel and tp < 2:
            raise ConfigError(f"{where}: sequence_parallel needs tensor_model_parallel_size >= 2")
        if self.num_attention_heads % tp or self.groups % tp:
            raise ConfigError(f"{where}: tensor_model_parallel_size={tp} must divide "
                              f"num_attention_heads={self.num_attention_heads} and "
                              f"num_query_groups={self.groups} of model {self.name!r}")
        if self.num_layers % (pp * (vpp or 1)):
            raise ConfigError(f"{where}: num_layers={self.num_layers} of model {self.name!r} is "
                              f"not divisible by pipeline_model_parallel_size x virtual stages "
                              f"= {pp} x {vpp or 1}")

    def padded_vocab_size(self, tp: int = 1, divisible_by: int = 128) -> int:
        return padded_vocab_size(self.vocab_size, tp, divisible_by)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"ModelConfig: unknown field(s) {unknown}")
        return cls(**data)

    # ------------------------------------------------------------------ megatron-core
    def activation_func(self):
        import torch.nn.functional as F

        from megatron_ar.models.modules import gelu_tanh, relu2

        if self.activation == "relu2" and torch.cuda.is_available():
            from megatron.core.activations import squared_relu

            return squared_relu  # torch.compile-fused on GPU
        return {"swiglu": F.silu, "geglu_tanh": gelu_tanh, "relu2": relu2,
                "gelu": F.gelu}[self.activation]

    def to_transformer_config(
        self,
        tp: int = 1,
        pp: int = 1,
        vpp: Optional[int] = None,
        cp: int = 1,
        sequence_parallel: bool = False,
        params_dtype: torch.dtype = torch.float32,
        use_cpu_initialization: Optional[bool] = None,
        fusions: Optional["FusionDecision"] = None,
        **overrides: Any,
    ):
        """megatron-core ``TransformerConfig`` for this architecture and parallel layout.

        ``params_dtype`` bf16/fp16 also turns on the matching mixed-precision flag.
        ``fusions``: the megatron-core fusion flags as data (:class:`FusionDecision`); None
        decides them from the installed stack (:meth:`fusion_decision`; all off without CUDA)
        and prints the one-line decision on rank 0 of a CUDA run. ``overrides`` are passed
        through last (e.g. ``recompute_granularity``, ``hidden_dropout``).
        """
        from megatron.core.transformer.transformer_config import TransformerConfig

        from megatron_ar.compat.p2p import batch_p2p_comm

        self.check_layout(tp, pp, vpp, sequence_parallel, where="to_transformer_config")
        on_gpu = torch.cuda.is_available()
        window = None
        skip = None
        if self.sliding_window is not None:
            window = (self.sliding_window - 1, 0)  # HF: kv_idx > q_idx - W
            skip = [1 if s else 0 for s in self.sliding_layers()]
        kwargs = dict(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            ffn_hidden_size=self.ffn_hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_query_groups=self.groups,
            kv_channels=self.head_dim,
            normalization="RMSNorm",
            layernorm_epsilon=float(self.norm_eps),
            layernorm_zero_centered_gamma=self.norm == "rmsnorm_one_plus",
            qk_layernorm=self.qk_norm,
            add_bias_linear=self.add_bias_linear,
            add_qkv_bias=self.add_qkv_bias,
            gated_linear_unit=self.gated,
            activation_func=self.activation_func(),
            softmax_scale=(float(self.qk_scale) ** 2 * self.head_dim ** -0.5
                           if self.qk_scale is not None
                           else None if self.query_pre_attn_scalar is None
                           else float(self.query_pre_attn_scalar) ** -0.5),
            window_size=window,
            window_attn_skip_freq=skip,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            init_method_std=self.init_method_std,
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            virtual_pipeline_model_parallel_size=vpp if (vpp or 1) > 1 else None,
            context_parallel_size=cp,
            sequence_parallel=sequence_parallel,
            params_dtype=params_dtype,
            pipeline_dtype=params_dtype,
            bf16=params_dtype == torch.bfloat16,
            fp16=params_dtype == torch.float16,
            use_cpu_initialization=(not on_gpu) if use_cpu_initialization is None
            else use_cpu_initialization,
            attention_softmax_in_fp32=True,
            # Megatron-LM's default: a pipeline stage frees the data of the activations it sent
            # on once they are sent (only their grad_fn is needed for backward).
            deallocate_pipeline_outputs=True,
            # Unbatched p2p on gloo: megatron-core's batched p2p swaps same-shape activations
            # and gradients there when prev == next peer (see megatron_ar.compat.p2p).
            batch_p2p_comm=batch_p2p_comm(on_gpu),
        )
        if fusions is None:
            from megatron_ar.runtime.fusions import announce_fusions

            fusions = self.fusion_decision(params_dtype)
            if fusions.enabled or on_gpu:
                announce_fusions(fusions)
        # CUDA-only fusions (megatron-core picks torch fallbacks when off); the rule of each
        # flag is in megatron_ar.runtime.fusions.
        kwargs.update(fusions.transformer_config_kwargs())
        kwargs.update(overrides)
        return TransformerConfig(**kwargs)

    def fusion_decision(self, params_dtype: torch.dtype = torch.float32,
                        capabilities: Optional["StackCapabilities"] = None) -> "FusionDecision":
        """megatron-core fusions for this architecture on ``capabilities`` (default: the
        installed stack, :func:`megatron_ar.runtime.fusions.probe_stack`)."""
        from megatron_ar.runtime.fusions import decide_fusions, probe_stack

        return decide_fusions(
            probe_stack() if capabilities is None else capabilities,
            activation_func=self.activation_func(),
            gated_linear_unit=self.gated,
            add_bias_linear=self.add_bias_linear,
            sliding_window=self.sliding_window is not None,
            params_dtype=params_dtype,
        )

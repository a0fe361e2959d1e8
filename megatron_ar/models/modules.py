"""Small modules that megatron-core 0.16 lacks, plugged into its ModuleSpecs / GPTModel.

What and why (Gemma-2 = Gemma Team 2024, arXiv:2408.00118; nanochat = Karpathy 2025):
- :class:`RMSNorm`: one norm for every variant, computed with ``torch.nn.functional.rms_norm``
  in fp32. Options: learnable weight (Llama), ``(1 + w)`` weight with the raw ``w`` stored
  (Gemma, zero-init = identity; selected by ``config.layernorm_zero_centered_gamma`` like TE's
  norms), or no parameters (nanochat). megatron-core's ``WrappedTorchNorm`` refuses sequence
  parallelism, so this norm marks its weight ``sequence_parallel`` (megatron's DDP /
  ``finalize_model_grads`` then all-reduces its grad over TP, as for TE norms).
  ``fused`` (``model.fused_kernels``, from ``spec.norm_spec``) runs the csrc/ kernel
  (:func:`megatron_ar.kernels.rmsnorm.rms_norm`, same math, fp32 inside); the decision needs the
  device, so it is taken on the first forward from the input's device (and kept per device
  type). The TE spec keeps TE's norms; only its parameter-free norms are this module.
- :class:`SoftcapDotProductAttention`: megatron-core's local ``DotProductAttention`` plus
  Gemma-2's tanh soft-capping of the attention logits, applied between the scaled ``QK^T`` and
  the (sliding-window) causal mask, exactly where HF's ``eager_attention_forward`` applies it.
  Query scaling by ``query_pre_attn_scalar ** -0.5`` and the sliding window itself are
  megatron-core features (``softmax_scale``, ``window_size`` + ``window_attn_skip_freq``).
- :class:`SandwichTransformerLayer`: Gemma-2's post-attention / post-MLP norms. The layer adds
  ``post_self_attn_layernorm`` / ``post_mlp_layernorm`` (names at layer level, see NAMES.md) and
  wraps its bias-dropout-add callables so the branch output is normalised before the residual
  add; megatron-core's forward (recompute, offloading, CUDA graphs) is not copied. With a fused
  norm and no active dropout (eval, or ``hidden_dropout`` 0) the wrapper computes
  ``residual + norm(out)`` in one kernel (``mode="add_after"``), the one norm + residual-add
  fusion point that lives in our code; megatron-core's pre-norm layers do ``bda`` then the next
  pre-norm inside their own forward, which we do not copy, so their add stays separate.
- :class:`ArGPTModel`: GPTModel plus the two model-level extras: the embedding transform
  (``* sqrt(hidden)`` for Gemma, param-free RMSNorm for nanochat) and the final logit soft-cap.
  They are forward hooks on ``embedding`` / ``output_layer`` so megatron-core's ``_preprocess``
  / ``_postprocess`` (SP scatter, MTP, inference paths) stay untouched; both are elementwise or
  per-token, so they commute with the sequence-parallel scatter and the vocab-parallel split.
  With ``fused_kernels`` selecting the fused cross-entropy (megatron_ar.kernels.cross_entropy),
  a forward with labels skips the hook's cap and ``compute_language_model_loss`` applies it
  inside the kernel (no capped copy of the logits); a forward without labels caps as before.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.spec_utils import build_module
from megatron.core.transformer.transformer_layer import TransformerLayer

from megatron_ar.kernels import use_fused


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (Gemma's ``gelu_pytorch_tanh``); module-level so that
    TransformerConfig stays picklable."""
    return F.gelu(x, approximate="tanh")


def relu2(x: torch.Tensor) -> torch.Tensor:
    """ReLU^2 (nanochat), eager. megatron-core's ``squared_relu`` is wrapped in torch.compile,
    which on a CPU spends seconds compiling C++ per new shape; it is used on GPUs only."""
    return torch.square(F.relu(x))


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """``cap * tanh(x / cap)`` (Gemma-2 soft-capping)."""
    return torch.tanh(x / cap) * cap


class RMSNorm(torch.nn.Module):
    """RMSNorm over the last dim; ``learnable=False`` gives nanochat's parameter-free norm.

    Signature matches what megatron-core's ``build_module`` passes to norms
    (``config, hidden_size, eps``); ``learnable`` comes from ``ModuleSpec.params``.
    """

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, learnable: bool = True,
                 fused: str = "off", **unused):
        super().__init__()
        from megatron_ar.kernels import FUSED_KERNEL_CHOICES

        if fused not in FUSED_KERNEL_CHOICES:
            raise ValueError(f"model.fused_kernels: must be one of {FUSED_KERNEL_CHOICES}, "
                             f"got {fused!r}")
        self.hidden_size = hidden_size
        self.eps = eps
        self.fused = fused
        self._fused_on = {}  # device type -> use the fused kernel (decided on first forward)
        self.zero_centered_gamma = bool(getattr(config, "layernorm_zero_centered_gamma", False))
        if learnable:
            init = torch.zeros if self.zero_centered_gamma else torch.ones
            self.weight = torch.nn.Parameter(init(hidden_size, dtype=config.params_dtype))
            # Sequence parallel: each TP rank sees a different slice of tokens, so the weight's
            # grad is partial and megatron's finalize_model_grads sums it over TP.
            setattr(self.weight, "sequence_parallel", bool(config.sequence_parallel))
        else:
            self.register_parameter("weight", None)

    def uses_fused_kernel(self, x: torch.Tensor) -> bool:
        """Whether the csrc/ kernel runs for ``x`` (``model.fused_kernels`` on x's device)."""
        dev = x.device.type
        if dev not in self._fused_on:
            from megatron_ar.kernels import use_fused

            self._fused_on[dev] = use_fused(self.fused, "rmsnorm", x.device)
        return self._fused_on[dev]

    def _fused_call(self, x: torch.Tensor, residual=None, mode: str = "none"):
        from megatron_ar.kernels.rmsnorm import rms_norm

        return rms_norm(x, self.weight, self.eps, zero_centered_gamma=self.zero_centered_gamma,
                        residual=residual, mode=mode)

    def add_after(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + self(x)``, in one kernel when the norm is fused."""
        if self.uses_fused_kernel(x):
            return self._fused_call(x, residual, "add_after")
        return residual + self(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_fused_kernel(x):
            return self._fused_call(x)
        y = F.rms_norm(x.float(), (self.hidden_size,), eps=self.eps)
        if self.weight is not None:
            w = self.weight.float()
            y = y * (1.0 + w if self.zero_centered_gamma else w)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        kind = "none" if self.weight is None else ("1+w" if self.zero_centered_gamma else "w")
        return f"{self.hidden_size}, eps={self.eps}, weight={kind}"


class _SoftcappedSoftmax(torch.nn.Module):
    """Applies the soft-cap to raw scores, then megatron's scale/mask/softmax module."""

    def __init__(self, inner: torch.nn.Module, cap: float):
        super().__init__()
        self.inner = inner
        self.cap = cap

    def forward(self, scores, mask, softmax_offset=None):
        return self.inner(softcap(scores, self.cap), mask, softmax_offset)


class SoftcapDotProductAttention(DotProductAttention):
    """megatron-core ``DotProductAttention`` with optional attention-logit soft-capping."""

    def __init__(self, *args, logit_softcap: Optional[float] = None, **kwargs):
        super().__init__(*args, **kwargs)
        if logit_softcap:
            if self.config.apply_query_key_layer_scaling:
                raise ValueError("attention soft-capping with apply_query_key_layer_scaling is "
                                 "not supported (the cap must see the final scaled logits)")
            self.scale_mask_softmax = _SoftcappedSoftmax(self.scale_mask_softmax, logit_softcap)
        self.logit_softcap = logit_softcap


class SandwichTransformerLayer(TransformerLayer):
    """TransformerLayer with post-norms on the attention and MLP branches (Gemma-2).

    ``post_self_attn_layernorm`` and ``post_mlp_layernorm`` are norm specs passed through
    ``ModuleSpec.params``; they are built with the same (config, hidden_size, eps) as the
    pre-norms.
    """

    def __init__(self, config, submodules, *args, post_self_attn_layernorm=None,
                 post_mlp_layernorm=None, **kwargs):
        super().__init__(config, submodules, *args, **kwargs)
        self.post_self_attn_layernorm = build_module(
            post_self_attn_layernorm, config=self.config, hidden_size=self.config.hidden_size,
            eps=self.config.layernorm_epsilon)
        self.post_mlp_layernorm = build_module(
            post_mlp_layernorm, config=self.config, hidden_size=self.config.hidden_size,
            eps=self.config.layernorm_epsilon)
        self.self_attn_bda = self._normed_bda(self.self_attn_bda, "post_self_attn_layernorm")
        self.mlp_bda = self._normed_bda(self.mlp_bda, "post_mlp_layernorm")

    def _normed_bda(self, bda_builder, norm_name: str):
        layer = self

        def builder(training: bool, fused: bool):
            bda = bda_builder(training, fused)

            def apply(out_with_bias, residual, prob):
                out, bias = out_with_bias
                if bias is not None:  # the norm must see the full branch output
                    out = out + bias
                norm = getattr(layer, norm_name)
                if ((not training or prob == 0.0) and isinstance(norm, RMSNorm)
                        and norm.uses_fused_kernel(out)):
                    # no dropout between norm and add: one kernel for residual + norm(out);
                    # the residual in out's dtype, as megatron's bias-dropout-add casts it
                    return norm.add_after(out, residual.to(out.dtype))
                return bda((norm(out), None), residual, prob)

            return apply

        return builder


class _EmbeddingTransform(torch.nn.Module):
    def __init__(self, scale: Optional[float], norm: Optional[torch.nn.Module]):
        super().__init__()
        self.scale = scale
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            # HF Gemma multiplies by sqrt(hidden) cast to the activation dtype; do the same so
            # bf16 runs round identically.
            x = x * torch.tensor(self.scale, dtype=x.dtype, device=x.device)
        if self.norm is not None:
            x = self.norm(x)
        return x


class ArGPTModel(GPTModel):
    """GPTModel + embedding scaling / embedding norm + final logit soft-cap (module docstring).

    Extra args: ``embedding_scale`` (multiply embeddings by it, e.g. sqrt(hidden)),
    ``embedding_norm`` (parameter-free RMSNorm after the embedding), ``final_logit_softcap``,
    ``laser`` (a :class:`megatron_ar.models.encoder.LaserSpec`: the frozen LASER2 encoder).
    """

    def __init__(self, *args, embedding_scale: Optional[float] = None,
                 embedding_norm: bool = False, final_logit_softcap: Optional[float] = None,
                 fused_kernels: str = "auto", laser=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.final_logit_softcap = final_logit_softcap
        # model.fused_kernels for the LM loss: decided once for the process's device (an
        # ``on`` without the built extension fails here, at build time, not at the first step).
        self.fused_cross_entropy = bool(self.post_process) and use_fused(fused_kernels, "xent")
        # Set by a pre-hook at every forward: True when this forward's loss goes through the
        # fused kernel; the output-layer hook then leaves the logits uncapped for it to cap.
        self._cap_in_loss = False
        self.register_forward_pre_hook(self._labels_pre_hook, with_kwargs=True)
        self.embedding_transform = None
        if self.pre_process and (embedding_scale is not None or embedding_norm):
            norm = (RMSNorm(self.config, self.config.hidden_size, self.config.layernorm_epsilon,
                            learnable=False) if embedding_norm else None)
            self.embedding_transform = _EmbeddingTransform(embedding_scale, norm)
            self.embedding.register_forward_hook(self._embedding_hook)
        if self.post_process and final_logit_softcap:
            self.output_layer.register_forward_hook(self._logits_hook)
        if laser is not None:  # Arkadiko V4-A / V4-C (megatron_ar.models.encoder)
            from megatron_ar.models.encoder import attach_laser

            attach_laser(self, laser)

    def _embedding_hook(self, module, inputs, output):
        return self.embedding_transform(output)

    def _logits_hook(self, module, inputs, output):
        if self._cap_in_loss:
            return None  # compute_language_model_loss caps inside the fused kernel
        logits, bias = output
        return softcap(logits, self.final_logit_softcap), bias

    def _labels_pre_hook(self, module, args, kwargs):
        # GPTModel.forward(input_ids, position_ids, attention_mask, decoder_input, labels, ...).
        # A pre-hook, not a forward override: no frame of ours sits between the caller and
        # megatron-core's forward (strict device emulation names the caller's line).
        labels = kwargs["labels"] if "labels" in kwargs else (args[4] if len(args) > 4 else None)
        self._cap_in_loss = self.fused_cross_entropy and labels is not None

    def compute_language_model_loss(self, labels: torch.Tensor,
                                    logits: torch.Tensor) -> torch.Tensor:
        """megatron-core's loss ([b, s] labels, [s, b, v/tp] logits -> [b, s] loss) through the
        fused kernel when ``fused_kernels`` selected it. The logits are capped by the kernel when
        the forward deferred the cap (``_cap_in_loss``), else they arrive capped by the hook
        (a direct call from outside a labelled forward): never twice. The backward overwrites
        the logits with their gradient (megatron_ar.kernels.cross_entropy)."""
        if not self.fused_cross_entropy:
            return super().compute_language_model_loss(labels, logits)
        from megatron_ar.kernels.cross_entropy import fused_vocab_parallel_cross_entropy

        cap = self.final_logit_softcap if self._cap_in_loss else None
        loss = fused_vocab_parallel_cross_entropy(
            logits, labels.transpose(0, 1).contiguous(), tp_group=self.pg_collection.tp,
            softcap=cap)
        return loss.transpose(0, 1).contiguous()


def embedding_multiplier(hidden_size: int) -> float:
    """Gemma's embedding normaliser ``sqrt(hidden_size)``."""
    return math.sqrt(hidden_size)

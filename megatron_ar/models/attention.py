"""Core-attention backends, one spec option (``model.attention_backend``), chosen per model and
device with a logged reason.

Backends (all take megatron-core's core-attention arguments: q ``[sq, b, np, hn]``, k/v
``[sk, b, ng, hn]``, a boolean mask where True means *masked*; all return ``[sq, b, np*hn]``):

- ``unfused``: :class:`~megatron_ar.models.modules.SoftcapDotProductAttention`, megatron-core's
  local ``DotProductAttention`` (full ``S x S`` scores) plus Gemma-2's soft-cap. The reference
  every other backend is tested against.
- ``sdpa``: :class:`SDPAttention`, ``torch.nn.functional.scaled_dot_product_attention``. On a
  GPU torch dispatches to flash / cuDNN / memory-efficient kernels (flash only without an
  explicit mask: the plain causal case passes ``is_causal``); on a CPU it is the math kernel.
  SDPA has no hook on the scores, so it cannot soft-cap.
- ``flex``: :class:`FlexAttention`, ``torch.nn.attention.flex_attention`` with a tanh soft-cap
  ``score_mod`` and a causal (+ sliding-window, + the batch's own mask) block mask; compiled
  with ``torch.compile`` on a GPU (eager FlexAttention materialises the scores). Gemma-2's
  soft-capped attention is the model that needs it (Gemma Team 2024, arXiv:2408.00118; the
  soft-cap ``score_mod`` is FlexAttention's own example, PyTorch blog "FlexAttention", 2024).
  torch has no FlexAttention backward on a CPU, so CPU training never picks it; a forward
  runs (the CPU tests check it against the reference).
- ``te``: Transformer Engine's ``DotProductAttention`` through megatron-core's
  ``TEDotProductAttention``. With a soft-cap it needs both TE's ``softcap`` argument
  (TransformerEngine PR 3391: FlashAttention-2 only, cuDNN's fused attention is disqualified)
  and megatron-core's ``TransformerConfig.attn_logit_softcapping`` (Megatron-LM PR 6590); both
  are probed by signature and field, as that PR does, not by version. Without them the TE
  spec uses ``flex`` for its core attention.

``auto`` picks: TE spec -> ``te`` (``flex`` for a soft-cap TE cannot do); local spec with a
soft-cap -> ``flex`` on CUDA, ``unfused`` on CPU; otherwise ``sdpa``. Context parallelism is
only in TE's attention: every other backend refuses ``context_parallel_size > 1`` by name.
A backend changes no parameter and no checkpoint key (none has weights), so checkpoints move
freely between backends.

Trade-offs: masks are converted per call (SDPA: one boolean ``[b|1, 1, sq, sk]`` tensor;
Flex: a block mask cached per shape/window while no batch mask is given, rebuilt per batch
when one is, e.g. ``reset_attention_mask`` document masking). The batch mask is *combined*
with the causal/window mask here, where megatron-core's unfused softmax replaces a given mask
by the window mask on windowed layers.
"""
from __future__ import annotations

import copy
import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.utils import is_layer_window_attention

log = logging.getLogger(__name__)

__all__ = ["AttentionChoice", "choose_backend", "backend_problems", "SDPAttention",
           "FlexAttention", "te_softcap_supported", "flex_available"]


@functools.lru_cache(maxsize=1)
def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa
    except ImportError:
        return False
    return True


def te_softcap_supported() -> bool:
    """TE's ``DotProductAttention`` takes ``softcap`` and megatron-core's TransformerConfig has
    ``attn_logit_softcapping`` (the two halves of TE PR 3391 / Megatron-LM PR 6590)."""
    try:
        import transformer_engine.pytorch as te
        from megatron.core.transformer.transformer_config import TransformerConfig
    except Exception:
        return False
    params = inspect.signature(te.DotProductAttention.__init__).parameters
    fields = getattr(TransformerConfig, "__dataclass_fields__", {})
    return "softcap" in params and "attn_logit_softcapping" in fields


@dataclass(frozen=True)
class AttentionChoice:
    backend: str
    reason: str


def backend_problems(softcap: Optional[float], use_te: bool, device_type: str,
                     cp: int = 1, te_softcap: Optional[bool] = None) -> Dict[str, Optional[str]]:
    """backend -> None when it can run this model here, else why not."""
    out: Dict[str, Optional[str]] = {}
    no_cp = (f"context_parallel_size={cp} needs Transformer Engine's attention (backend 'te')"
             if cp > 1 else None)
    out["unfused"] = no_cp
    out["sdpa"] = no_cp or ("scaled_dot_product_attention cannot apply the attention "
                            "soft-cap (model.attn_logit_softcap)" if softcap else None)
    out["flex"] = no_cp or (None if flex_available() else
                            "torch.nn.attention.flex_attention is not in this torch")
    if not use_te:
        out["te"] = "the Transformer Engine spec is not in use (no TE or no CUDA device)"
    elif softcap and not (te_softcap if te_softcap is not None else te_softcap_supported()):
        out["te"] = ("the installed Transformer Engine / megatron-core cannot soft-cap "
                     "attention logits (TE's DotProductAttention(softcap=...) and "
                     "TransformerConfig.attn_logit_softcapping are both needed)")
    else:
        out["te"] = None
    return out


def choose_backend(requested: str, softcap: Optional[float], use_te: bool, device_type: str,
                   cp: int = 1, te_softcap: Optional[bool] = None) -> AttentionChoice:
    """Resolve ``model.attention_backend`` (``requested``) for this model/device; an explicit
    choice that cannot run raises ``ValueError`` naming the key and the backends that can."""
    problems = backend_problems(softcap, use_te, device_type, cp, te_softcap)
    ok = [b for b, why in problems.items() if why is None]
    if requested != "auto":
        if requested not in problems:
            raise ValueError(f"model.attention_backend: unknown backend {requested!r}; "
                             f"choose one of {['auto'] + list(problems)}")
        if problems[requested] is not None:
            raise ValueError(f"model.attention_backend: {requested!r} cannot run this model "
                             f"here: {problems[requested]}; available: {['auto'] + ok}")
        return AttentionChoice(requested, "set by model.attention_backend")
    if use_te and problems["te"] is None:
        return AttentionChoice("te", "Transformer Engine spec")
    if softcap:
        if device_type == "cuda" and problems["flex"] is None:
            return AttentionChoice("flex", "attention soft-cap: FlexAttention score_mod"
                                   + (" inside the TE spec" if use_te else ""))
        return AttentionChoice("unfused", "attention soft-cap on CPU: FlexAttention has no CPU "
                               "backward, the unfused reference runs")
    if problems["sdpa"] is None:
        return AttentionChoice("sdpa", "no soft-cap: torch scaled_dot_product_attention")
    return AttentionChoice("unfused", "; ".join(f"{b}: {w}" for b, w in problems.items() if w))


# ----------------------------------------------------------------------------- modules


class _TorchAttention(DotProductAttention):
    """Shared set-up of the torch backends: megatron-core's constructor (scale, head counts per
    TP rank, the layer's window) and the layout changes around a [b, h, s, d] kernel."""

    def __init__(self, *args, logit_softcap: Optional[float] = None, **kwargs):
        super().__init__(*args, **kwargs)  # refuses context parallelism (megatron-core assert)
        if self.config.apply_query_key_layer_scaling:
            raise ValueError(f"model.attention_backend: {type(self).__name__} does not support "
                             "apply_query_key_layer_scaling")
        self.logit_softcap = logit_softcap
        cfg = self.config
        self.window = (tuple(cfg.window_size) if is_layer_window_attention(
            cfg.window_size, cfg.window_attn_skip_freq, self.layer_number) else None)
        self.dropout_p = float(self.attention_dropout.p)

    def _check(self, attention_bias, packed_seq_params) -> None:
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError(f"model.attention_backend: {type(self).__name__} supports neither "
                             "packed sequences nor an attention bias (use 'te')")
        if self.attn_mask_type != AttnMaskType.causal:
            raise ValueError(f"model.attention_backend: {type(self).__name__} is causal-only, "
                             f"got {self.attn_mask_type}")

    def _allowed(self, sq: int, sk: int, mask: Optional[torch.Tensor], device) -> torch.Tensor:
        """Boolean [1|b, 1, sq, sk], True where a query may attend (causal, window, mask)."""
        i = torch.arange(sq, device=device).unsqueeze(1) + (sk - sq)
        j = torch.arange(sk, device=device).unsqueeze(0)
        allowed = j <= i
        if self.window is not None:
            allowed = allowed & (j >= i - self.window[0])
        allowed = allowed.view(1, 1, sq, sk)
        if mask is not None:
            allowed = allowed & ~mask.bool()
        return allowed

    @staticmethod
    def _to_bhsd(t: torch.Tensor) -> torch.Tensor:
        return t.permute(1, 2, 0, 3)

    def _out(self, ctx: torch.Tensor) -> torch.Tensor:
        # [b, h, sq, d] -> [sq, b, h*d], megatron-core's core-attention output layout
        sq, b = ctx.size(2), ctx.size(0)
        return ctx.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)


class SDPAttention(_TorchAttention):
    """Core attention through ``F.scaled_dot_product_attention`` (module docstring)."""

    def __init__(self, *args, logit_softcap: Optional[float] = None, **kwargs):
        if logit_softcap:
            raise ValueError("model.attention_backend: 'sdpa' cannot apply the attention "
                             "soft-cap (model.attn_logit_softcap); use 'flex' or 'unfused'")
        super().__init__(*args, **kwargs)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        self._check(attention_bias, packed_seq_params)
        q, k, v = self._to_bhsd(query), self._to_bhsd(key), self._to_bhsd(value)
        sq, sk = q.size(2), k.size(2)
        plain_causal = self.window is None and attention_mask is None and sq == sk
        ctx = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=None if plain_causal else self._allowed(sq, sk, attention_mask, q.device),
            is_causal=plain_causal,
            dropout_p=self.dropout_p if self.training else 0.0,
            scale=self.softmax_scale,
            enable_gqa=k.size(1) != q.size(1))
        return self._out(ctx)


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


class FlexAttention(_TorchAttention):
    """Core attention through FlexAttention with the soft-cap as a ``score_mod`` (module
    docstring). Compiled on CUDA; eager (forward only) on CPU."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.dropout_p:
            raise ValueError("model.attention_backend: 'flex' has no attention dropout "
                             f"(attention_dropout={self.dropout_p}); use 'sdpa' or 'unfused'")
        self._block_masks: Dict[Any, Any] = {}

    def _block_mask(self, b: int, sq: int, sk: int, mask: Optional[torch.Tensor], device):
        from torch.nn.attention.flex_attention import create_block_mask

        key = (sq, sk, str(device))
        if mask is None and key in self._block_masks:
            return self._block_masks[key]
        offset, window = sk - sq, self.window
        dense = None if mask is None else ~mask.bool()

        def mask_mod(bi, h, qi, ki):
            ok = ki <= qi + offset
            if window is not None:
                ok = ok & (ki >= qi + offset - window[0])
            if dense is not None:
                ok = ok & dense[bi if dense.size(0) > 1 else 0, 0, qi, ki]
            return ok

        bm = create_block_mask(mask_mod, b if mask is not None and mask.size(0) > 1 else None,
                               None, sq, sk, device=device)
        if mask is None:
            self._block_masks[key] = bm
        return bm

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        self._check(attention_bias, packed_seq_params)
        from torch.nn.attention.flex_attention import flex_attention

        q, k, v = self._to_bhsd(query), self._to_bhsd(key), self._to_bhsd(value)
        cap = self.logit_softcap
        score_mod = None
        if cap:
            def score_mod(score, b, h, qi, ki):  # the score arrives scaled, as in HF Gemma-2
                return torch.tanh(score / cap) * cap
        bm = self._block_mask(q.size(0), q.size(2), k.size(2), attention_mask, q.device)
        fn = _compiled_flex() if q.is_cuda else flex_attention
        ctx = fn(q, k, v, score_mod=score_mod, block_mask=bm, scale=self.softmax_scale,
                 enable_gqa=k.size(1) != q.size(1))
        return self._out(ctx)


def te_softcap_attention_class():
    """megatron-core's ``TEDotProductAttention`` with the soft-cap set on (a copy of) its
    config, which megatron-core (Megatron-LM PR 6590) passes on as TE's ``softcap``."""
    from megatron.core.extensions.transformer_engine import TEDotProductAttention

    class TESoftcapDotProductAttention(TEDotProductAttention):
        def __init__(self, config, *args, logit_softcap: Optional[float] = None, **kwargs):
            if logit_softcap:
                config = copy.copy(config)
                config.attn_logit_softcapping = float(logit_softcap)
            super().__init__(config, *args, **kwargs)

    return TESoftcapDotProductAttention

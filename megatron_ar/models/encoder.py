"""The frozen LASER2 encoder of Arkadiko V4-A / V4-C and how it feeds the decoder.

Sources: Artetxe & Schwenk 2019, "Massively Multilingual Sentence Embeddings for Zero-Shot
Cross-Lingual Transfer and Beyond" (TACL; arXiv:1812.10464): a BiLSTM encoder whose sentence
embedding is the max-pool over time of the last layer's states; the public LASER2 checkpoint
(facebookresearch/LASER, ``laser_encoders/models.py`` class ``LaserLstmEncoder`` and
``source/embed.py``): ``{'params': {num_embeddings, padding_idx, embed_dim, hidden_size,
num_layers, bidirectional, ...}, 'model': state dict, 'dictionary': ...}`` with
``embed_tokens.weight`` [50004, 320] (padding id 1) and ``nn.LSTM`` keys ``lstm.weight_ih_l{k}``
[4*512, in], ``lstm.weight_hh_l{k}`` [4*512, 512], ``lstm.bias_ih_l{k}``, ``lstm.bias_hh_l{k}``
and the same with ``_reverse`` (5 layers, 512 per direction -> 1024-dim states, input 320 for
layer 0 and 1024 above). The Arkadiko V4 card (architecture / variants sections): A adds to
every block a cross-attention from the decoder to the per-token LASER2 states with a
zero-initialised output projection; C adds ``Linear(1024 -> 1024)`` of the pooled sentence
embedding to every token embedding; B has no encoder.

Design choices and trade-offs
- One module, :class:`LaserEncoder` (same parameter names as ``LaserLstmEncoder``, so
  :func:`laser_state_dict` is a checked identity mapping), frozen: ``requires_grad=False`` on
  every parameter, run under ``torch.no_grad``. megatron-core's DDP buckets only
  ``requires_grad`` parameters (distributed_data_parallel.py, ``if not param.requires_grad:
  continue``) and ``get_megatron_optimizer`` skips them too (optimizer/__init__.py), so it has
  neither grad buffer nor optimizer state. Its weights live in the model's state dict (full
  state dicts / checkpoints carry them) and come from a LASER2 checkpoint through
  :func:`load_laser_checkpoint`; a fresh model draws them from a fixed-seed generator
  (``seed``), so every rank and pipeline stage builds the same encoder.
- It reads the decoder's own token ids (the card: both use the LASER2 SPM vocabulary of 50,004
  ids, fairseq offset 4), so each pipeline stage that needs it recomputes it from the ids that
  the forward step already hands every stage (``GPTModel.forward(input_ids, ...)``): no extra
  pipeline communication, at the price of running the (small, ~43M-parameter) BiLSTM once per
  stage and per virtual chunk and of a replicated copy on every rank. V4-C needs it only on the
  first stage (the embedding), V4-A on every stage. With PP > 2 the training loop must give
  the middle stages data for V4-A (``megatron_ar.training.loop.needs_data(model)``).
- No packing: the BiLSTM runs over the full (packed-document) sequence, pads included; the
  pooling ignores ``laser_padding_idx`` positions as LASER does (an all-pad row pools to 0).
  Pooling is LASER's max over time (``laser_pooling='max'``, the presets' choice, following
  the LASER papers); the card describes C's input as "mean-pooled", which
  ``laser_pooling='mean'`` gives.
- Cost (measured by ``benchmarks/arkadiko.py``): the card saw ~0.6x (A) and ~0.8x (C) of B's
  tokens/s on a GPU; the recurrence is sequential over time, so its share grows with sequence
  length and does not shrink with TP (every rank runs all of it).
- V4-A is megatron-core's own ``CrossAttention`` in ``TransformerLayerSubmodules``
  (``pre_cross_attn_layernorm`` / ``cross_attention`` / ``cross_attn_bda``), added to the one
  spec by :func:`add_cross_attention`. megatron-core 0.16 refuses grouped-query cross-attention
  ("Group query attention is not currently supported in cross attention"), so
  :class:`LaserCrossAttention` hands it a copy of the config with ``num_query_groups =
  num_attention_heads`` (MHA; the card's counts agree: A - B = 708M - 592M = 116M = 28 layers x
  4.19M, i.e. full 1024x1024 q, k, v, o per layer) and zeroes ``linear_proj`` after
  construction. The cross-attention has no mask: every position sees every encoder state.
- Sequence parallelism: the context goes through ``scatter_to_sequence_parallel_region`` (each
  TP rank keeps its slice of positions), because ``linear_kv`` all-gathers its input along the
  sequence as for the decoder states (as Megatron-LM's T5 does with its encoder output).
- V4-C's projection is a plain ``torch.nn.Linear`` on the first stage, replicated over TP,
  added by a forward hook on ``embedding`` (after megatron-core's SP scatter: broadcast over
  positions commutes with it); under SP its weight and bias are marked ``sequence_parallel``
  so ``finalize_model_grads`` sums their partial grads over TP.
- Caveat, stated plainly: with the encoder reading the very sequence the decoder predicts, the
  backward LSTM direction, the pooled embedding and the unmasked cross-attention all carry
  tokens to the right of the position being predicted (label leakage) -- as the card
  describes the variants. A causal use needs a separate encoder input (e.g. a prompt), which
  this module does not provide.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.transformer.attention import CrossAttention, CrossAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec

#: Seed of a fresh encoder's weights (identical on every rank; real runs load laser2.pt).
DEFAULT_SEED = 20190917
#: Position of ``extra_block_kwargs`` in ``GPTModel.forward``.
_EXTRA_BLOCK_KWARGS_POS = 7


@dataclass(frozen=True)
class LaserSpec:
    """What :func:`attach_laser` needs from a ModelConfig (see :func:`laser_spec`)."""

    mode: str
    vocab_size: int
    num_layers: int
    hidden: int
    embed_dim: int
    pooling: str
    padding_idx: int
    seed: int = DEFAULT_SEED

    @property
    def out_dim(self) -> int:
        return 2 * self.hidden


def laser_spec(cfg) -> Optional[LaserSpec]:
    """The encoder of ``cfg`` (a ModelConfig), None for ``laser_mode='none'``."""
    if cfg.laser_mode == "none":
        return None
    return LaserSpec(cfg.laser_mode, cfg.vocab_size, cfg.laser_layers, cfg.laser_hidden,
                     cfg.laser_embed_dim, cfg.laser_pooling, cfg.laser_padding_idx)


class LaserEncoder(torch.nn.Module):
    """LASER2-shaped BiLSTM: token ids [b, s] -> (states [s, b, 2H], sentence emb [b, 2H]).

    Parameter names are LASER's ``LaserLstmEncoder`` ones (``embed_tokens``, ``lstm``)."""

    def __init__(self, spec: LaserSpec, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.pooling = spec.pooling
        self.padding_idx = spec.padding_idx
        self.embed_tokens = torch.nn.Embedding(spec.vocab_size, spec.embed_dim,
                                               padding_idx=spec.padding_idx, dtype=dtype)
        self.lstm = torch.nn.LSTM(spec.embed_dim, spec.hidden, num_layers=spec.num_layers,
                                  bidirectional=True, dtype=dtype)
        gen = torch.Generator().manual_seed(spec.seed)
        bound = spec.hidden ** -0.5  # nn.LSTM's own init range, from a fixed generator
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name == "embed_tokens.weight":
                    p.copy_(torch.randn(p.shape, generator=gen) * spec.embed_dim ** -0.5)
                    p[spec.padding_idx].zero_()
                else:
                    p.copy_(torch.rand(p.shape, generator=gen) * 2 * bound - bound)
        self.requires_grad_(False)

    #: Whether this copy is the one a dist checkpoint saves (the first pipeline stage's); the
    #: copies of V4-A's other stages / virtual chunks are replicas (set by attach_laser).
    main_copy: bool = True

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (),
                           metadata: Optional[dict] = None):
        """megatron-core's default sharded tensors (replicated over TP, DP-replica ids), with
        the copies on later pipeline stages / virtual chunks marked as replicas, as
        ``LanguageModule`` does for the last stage's tied embedding."""
        from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

        out = make_sharded_tensors_for_checkpoint(self.state_dict(prefix="", keep_vars=True),
                                                  prefix, {}, sharded_offsets)
        if not self.main_copy:
            for sh in out.values():
                sh.replica_id = (1,) + tuple(sh.replica_id[1:])
        return out

    def forward(self, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            x = self.embed_tokens(tokens).transpose(0, 1)  # [s, b, E]
            states, _ = self.lstm(x)  # zero initial states, as LASER
            pad = tokens.eq(self.padding_idx).t().unsqueeze(-1)  # [s, b, 1]
            if self.pooling == "max":
                pooled = states.masked_fill(pad, float("-inf")).max(dim=0).values
                pooled = torch.where(torch.isinf(pooled), torch.zeros_like(pooled), pooled)
            else:
                keep = (~pad).to(states.dtype)
                pooled = (states * keep).sum(0) / keep.sum(0).clamp(min=1.0)
        return states, pooled


# ------------------------------------------------------------------ V4-A: cross-attention spec
class LaserCrossAttention(CrossAttention):
    """megatron-core ``CrossAttention`` with MHA heads (it refuses GQA) and a zero-initialised
    output projection, so a freshly added block is a no-op (module docstring)."""

    def __init__(self, config, submodules: CrossAttentionSubmodules, layer_number: int,
                 attn_mask_type: AttnMaskType = AttnMaskType.no_mask, **kwargs):
        mha = copy.copy(config)
        mha.num_query_groups = config.num_attention_heads
        mha.window_size = None  # a decoder's sliding window is not the encoder's
        mha.window_attn_skip_freq = None
        super().__init__(mha, submodules, layer_number, attn_mask_type, **kwargs)
        with torch.no_grad():
            self.linear_proj.weight.zero_()
            if getattr(self.linear_proj, "bias", None) is not None:
                self.linear_proj.bias.zero_()


def add_cross_attention(submodules, modules) -> Any:
    """``submodules`` (a ``TransformerLayerSubmodules``) with V4-A's cross-attention, built from
    the classes of ``modules`` (a :class:`megatron_ar.models.spec.LayerModules`): with a fused
    TE norm-linear the cross-attention gets TE's plain column linear and a separate norm."""
    te = getattr(modules.row, "__module__", "").startswith("megatron.core.extensions")
    if te:
        from megatron.core.extensions.transformer_engine import (
            TEColumnParallelLinear,
            TEDotProductAttention,
        )

        column, core = TEColumnParallelLinear, TEDotProductAttention
        norm = modules.branch_norm if modules.pre_norm is IdentityOp else modules.pre_norm
    else:
        from megatron.core.transformer.dot_product_attention import DotProductAttention

        column, core, norm = modules.column_in, DotProductAttention, modules.pre_norm
    return dataclasses.replace(
        submodules,
        pre_cross_attn_layernorm=norm,
        cross_attention=ModuleSpec(
            module=LaserCrossAttention, params={"attn_mask_type": AttnMaskType.no_mask},
            submodules=CrossAttentionSubmodules(linear_q=column, linear_kv=column,
                                                core_attention=core, linear_proj=modules.row)),
        cross_attn_bda=get_bias_dropout_add,
    )


# ------------------------------------------------------------------ model hooks
def encoder_on_stage(spec: LaserSpec, pre_process: bool) -> bool:
    """Whether a model chunk runs the encoder: every stage for V4-A, the first for V4-C."""
    return spec.mode == "cross_attention" or pre_process


def attach_laser(model, spec: LaserSpec) -> None:
    """Add the frozen encoder (and V4-C's projection) to a megatron-core GPTModel chunk and the
    hooks that feed it: a forward pre-hook runs the encoder on ``input_ids`` (V4-A: passes the
    states as ``extra_block_kwargs['context']``), an ``embedding`` forward hook adds V4-C's
    projected sentence embedding."""
    config = model.config
    model.laser_mode = spec.mode
    if not encoder_on_stage(spec, model.pre_process):
        return
    model.laser_encoder = LaserEncoder(spec, dtype=config.params_dtype)
    model.laser_encoder.main_copy = bool(model.pre_process)
    model._laser_sentemb = None
    if spec.mode == "input":
        proj = torch.nn.Linear(spec.out_dim, config.hidden_size, dtype=config.params_dtype)
        gen = torch.Generator().manual_seed(spec.seed + 1)  # same on every TP rank
        with torch.no_grad():
            proj.weight.copy_(torch.randn(proj.weight.shape, generator=gen)
                              * config.init_method_std)
            proj.bias.zero_()
        for p in proj.parameters():
            setattr(p, "sequence_parallel", bool(config.sequence_parallel))
        model.laser_proj = proj
        model.embedding.register_forward_hook(_make_embedding_hook(model))
    model.register_forward_pre_hook(_laser_pre_hook, with_kwargs=True)


def _laser_pre_hook(model, args, kwargs):
    input_ids = kwargs["input_ids"] if "input_ids" in kwargs else (args[0] if args else None)
    if input_ids is None:
        raise RuntimeError("LASER encoder: this pipeline stage got no token ids; variants with "
                           "laser_mode='cross_attention' need them on every stage "
                           "(megatron_ar.training.loop.needs_data)")
    states, sentemb = model.laser_encoder(input_ids)
    if model.laser_mode == "input":
        model._laser_sentemb = sentemb
        return None
    context = states.to(model.config.params_dtype)
    if model.config.sequence_parallel:
        from megatron.core.tensor_parallel.mappings import scatter_to_sequence_parallel_region

        context = scatter_to_sequence_parallel_region(context, group=model.pg_collection.tp)
    args = list(args)
    if len(args) > _EXTRA_BLOCK_KWARGS_POS:
        extra = dict(args[_EXTRA_BLOCK_KWARGS_POS] or {})
        extra.update(context=context, context_mask=None)
        args[_EXTRA_BLOCK_KWARGS_POS] = extra
    else:
        extra = dict(kwargs.get("extra_block_kwargs") or {})
        extra.update(context=context, context_mask=None)
        kwargs["extra_block_kwargs"] = extra
    return tuple(args), kwargs


def _make_embedding_hook(model):
    def hook(module, inputs, output):
        sentemb, model._laser_sentemb = model._laser_sentemb, None
        if sentemb is None:
            raise RuntimeError("LASER input injection: embedding ran outside the model forward")
        return output + model.laser_proj(sentemb.to(output.dtype)).unsqueeze(0)

    return hook


def needs_tokens_on_every_stage(chunks) -> bool:
    """True when some chunk's encoder must read the token ids on a non-first stage (V4-A)."""
    from megatron_ar.models.wrappers import unwrap

    return any(getattr(c, "laser_mode", "none") == "cross_attention" for c in unwrap(chunks))


# ------------------------------------------------------------------ LASER2 checkpoints
def laser_shapes(spec: LaserSpec) -> Dict[str, Tuple[int, ...]]:
    """Every parameter of a LASER2-shaped encoder and its shape (LASER's names)."""
    h4 = 4 * spec.hidden
    shapes: Dict[str, Tuple[int, ...]] = {"embed_tokens.weight": (spec.vocab_size,
                                                                 spec.embed_dim)}
    for k in range(spec.num_layers):
        inp = spec.embed_dim if k == 0 else 2 * spec.hidden
        for sfx in ("", "_reverse"):
            shapes[f"lstm.weight_ih_l{k}{sfx}"] = (h4, inp)
            shapes[f"lstm.weight_hh_l{k}{sfx}"] = (h4, spec.hidden)
            shapes[f"lstm.bias_ih_l{k}{sfx}"] = (h4,)
            shapes[f"lstm.bias_hh_l{k}{sfx}"] = (h4,)
    return shapes


#: ``params`` entries of a LASER2 checkpoint -> (LaserSpec attribute, ModelConfig field).
_PARAMS_CHECK = {"num_embeddings": ("vocab_size", "vocab_size"),
                 "padding_idx": ("padding_idx", "laser_padding_idx"),
                 "embed_dim": ("embed_dim", "laser_embed_dim"),
                 "hidden_size": ("hidden", "laser_hidden"),
                 "num_layers": ("num_layers", "laser_layers")}


def laser_state_dict(checkpoint: Mapping[str, Any], spec: LaserSpec) -> Dict[str, torch.Tensor]:
    """Map a LASER2 checkpoint (``{'params', 'model', ...}`` as laser2.pt, or a bare state dict)
    onto :class:`LaserEncoder`'s parameter names. Unknown, missing or mis-shaped keys raise
    naming the key; ``params`` that disagree with ``spec`` raise naming the entry."""
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError("LASER checkpoint: expected a dict with a 'model' state dict")
    params = checkpoint.get("params") if "model" in checkpoint else None
    if isinstance(params, Mapping):
        if params.get("bidirectional", True) is not True:
            raise ValueError("LASER checkpoint: params['bidirectional'] must be True "
                             "(LASER2 is a BiLSTM)")
        for key, (ours, field) in _PARAMS_CHECK.items():
            if key in params and params[key] != getattr(spec, ours):
                raise ValueError(f"LASER checkpoint: params[{key!r}]={params[key]!r} but the "
                                 f"model has ModelConfig.{field}={getattr(spec, ours)!r}")
    shapes = laser_shapes(spec)
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in shapes:
            raise KeyError(f"LASER checkpoint: unknown key {key!r} in 'model'")
        if tuple(value.shape) != shapes[key]:
            raise ValueError(f"LASER checkpoint: {key!r} has shape {tuple(value.shape)}, "
                             f"expected {shapes[key]}")
        out[key] = value
    missing = [k for k in shapes if k not in out]
    if missing:
        raise KeyError(f"LASER checkpoint: missing key {missing[0]!r}"
                       + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
    return out


def load_laser_checkpoint(chunks, checkpoint, cfg) -> int:
    """Copy a LASER2 checkpoint (a path to laser2.pt or its loaded dict) into the encoder of
    every model chunk of this rank; returns how many encoders were loaded. A path is read with
    ``torch.load(weights_only=True)``; the public laser2.pt also pickles a fairseq dictionary,
    which that refuses: re-save ``{'params', 'model'}`` once from a trusted copy."""
    from megatron_ar.models.wrappers import unwrap

    spec = laser_spec(cfg)
    if spec is None:
        raise ValueError(f"load_laser_checkpoint: model {cfg.name!r} has laser_mode='none'")
    if not isinstance(checkpoint, Mapping):
        import pickle

        try:
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(
                f"{checkpoint}: not loadable with weights_only=True ({str(exc).splitlines()[0]}); "
                "laser2.pt pickles a fairseq dictionary: re-save {'params': ..., 'model': ...} "
                "from a trusted copy, or pass the loaded dict") from None
    state = laser_state_dict(checkpoint, spec)
    n = 0
    for chunk in unwrap(chunks):
        enc = getattr(chunk, "laser_encoder", None)
        if enc is None:
            continue
        with torch.no_grad():
            for name, p in enc.named_parameters():
                p.copy_(state[name].to(p.dtype))
        n += 1
    return n

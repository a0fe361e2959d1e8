"""nanochat's GPT (Karpathy 2025, github.com/karpathy/nanochat ``nanochat/gpt.py``) as spec
options of the one builder: the modules, the initialisation, its parameter counts and the
nanochat <-> megatron name/shape table.

The options (``ModelConfig`` fields; each is off by default and independent):

- ``value_embeddings``: ResFormer-style value embeddings (Zhou et al. 2024, arXiv:2410.17897) on
  the layers with ``i % 2 == (L - 1) % 2`` (alternate layers, the last always included): a
  ``vocab x (kv heads * head_dim)`` table looked up with the token ids and added to V, gated per
  KV head by ``3 * sigmoid(W_g x[..., :12])`` where ``x`` is the attention's (normed) input.
  :class:`NanochatSelfAttention` adds it after megatron-core's QKV split; the table is split over
  TP along its columns (the rank's KV heads), the gate is a ``ColumnParallelLinear`` (12 -> KV
  heads, so sequence parallelism gathers its input like any column-parallel input).
- ``residual_scalars``: per layer ``x <- resid_scale_i * x + x0_scale_i * x0`` before the layer,
  ``x0`` being the (normed, smeared) embedding output (modded-nanogpt's x0 lambdas).
- ``smear``: after the embedding norm, ``x_t += smear.scale * sigmoid(x_t[:24] . smear.gate) *
  x_{t-1}`` (t >= 1), a cheap bigram feature. Under sequence parallelism the embedding output is
  gathered over the sequence for this (the previous token may sit on another rank) and scattered
  back; the gather's backward splits (``tensor_parallel_output_grad=False``) since the smear is
  computed identically on every TP rank.
- ``backout``: the output of layer ``L // 2`` is kept and ``backout.scale *`` it is subtracted
  before the final norm.
- ``qk_scale``: q and k are multiplied by it after QK-norm (nanochat: 1.2). Both products meet
  only in ``q . k``, so it is megatron-core's ``softmax_scale = qk_scale**2 / sqrt(head_dim)``.
- ``window_pattern``: nanochat's ``S``/``L`` string tiled over the layers, the last layer always
  ``L``; ``S`` layers use ``sliding_window``.
- ``logits_fp32``: the LM-head output is cast to fp32 before the final soft-cap (a
  ``prepend`` forward hook, so it runs before :class:`ArGPTModel`'s cap).
- ``init="nanochat"``: :func:`init_weights`, nanochat's ``init_weights``.

Design choices and trade-offs
- Layout differences are absorbed by the conversion table, not by runtime options. nanochat's
  RoPE rotates by ``-theta`` (its comment: kept for checkpoint compatibility); megatron-core
  rotates by ``+theta`` with the same half-split layout. Swapping the two halves of every q and k
  head turns one into the other (``R(-t)`` on ``(a, b)`` equals the swap of ``R(t)`` on
  ``(b, a)``), and the swap commutes with the weightless QK-norm and cancels in ``q . k``; so the
  table swaps the halves of the q/k rows (an involution: bit-exact both ways) and the model keeps
  megatron-core's rotary code. nanochat normalises q/k after RoPE, megatron-core before: RoPE
  preserves each pair's norm, so the two orders agree.
- nanochat's ``F.rms_norm`` uses ``eps=None`` (``torch.finfo(dtype).eps``); the preset sets
  ``norm_eps`` to the fp32 value, exact for fp32 runs (nanochat's bf16 runs use bf16's eps).
- Model-level state (token ids for the value embeddings, ``x0``, the backout residual) lives in
  a :class:`NanochatState` per model chunk, written by hooks during the forward; nothing of
  megatron-core's forward is copied. Trade-off: full activation recompute re-runs layers whose
  input ``x0`` comes from outside the checkpointed region (and, under 1F1B, whose token ids
  have moved on to the next micro-batch), so ``recompute_granularity='full'`` is refused with
  ``residual_scalars`` (and with ``value_embeddings`` at PP > 1); selective recompute is exact.
- Pipeline parallelism: later stages need ``x0`` and (when the backout layer sits on an
  earlier stage) the backout residual. A non-last stage sends ``cat([x, x0, x_backout], 1)``
  along the micro-batch dim (only the parts the options use; zeros for a backout residual not
  computed yet) and the next stage splits it in ``set_input_tensor``; autograd carries the
  gradients of all parts back. :func:`megatron_ar.models.step.run_schedule` multiplies the
  micro-batch size of the p2p shape by :func:`stage_batch_multiple`. (megatron-core's
  ``variable_seq_lengths`` would allow a wider hidden dim instead, but its shape exchange is
  always a batched p2p, which deadlocks on gloo with virtual stages at PP=2.)
- The scalars are 1-D parameters with explicit names (``resid_scale``, ``x0_scale``,
  ``smear.gate``, ``smear.scale``, ``backout.scale``), so ndim-based optimizer grouping sends
  them to AdamW as nanochat does; those applied to sequence-parallel activations are marked
  ``sequence_parallel`` (their grads are summed over TP by ``finalize_model_grads``).
- Vocab rows: nanochat pads its tables to a multiple of 64, Megatron to 128 x TP. The word
  embedding and LM head use Megatron's padding (``VOCAB_PARAMS``); the value-embedding tables
  have :func:`value_embedding_rows` rows (128-padding, TP-independent since TP splits their
  columns). nanochat's pad rows are kept inside ours, so they survive import/export.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel.layers import (
    ColumnParallelLinear,
    set_tensor_model_parallel_attributes,
)
from megatron.core.tensor_parallel.mappings import (
    gather_from_sequence_parallel_region,
    scatter_to_sequence_parallel_region,
)
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.transformer_layer import TransformerLayer

from megatron_ar.models.config import ModelConfig
from megatron_ar.models.nanochat_config import (  # noqa: F401  (re-exported)
    FP32_RMS_EPS,
    SMEAR_CHANNELS,
    VE_GATE_CHANNELS,
    config_from_meta,
    config_from_nanochat,
    extra_param_counts,
    has_value_embedding,
    meta_model_config,
    nanochat_counts,
    nanochat_padded_vocab,
    short_window,
    uses_nanochat,
    value_embedding_rows,
    window_layers,
)

# --------------------------------------------------------------------------- modules
@dataclass
class NanochatState:
    """Per model chunk, per forward: token ids, ``x0`` and the backout residual."""

    input_ids: Optional[torch.Tensor] = None
    x0: Optional[torch.Tensor] = None
    x_backout: Optional[torch.Tensor] = None
    recv_x0: Optional[torch.Tensor] = None  # from the previous pipeline stage
    recv_backout: Optional[torch.Tensor] = None


def _scalar(value: float, config, sequence_parallel: bool) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.full((1,), float(value), dtype=config.params_dtype))
    setattr(p, "sequence_parallel", bool(sequence_parallel and config.sequence_parallel))
    return p


class ValueEmbedding(torch.nn.Module):
    """``rows x (local KV heads * head_dim)`` table, split over TP along dim 1."""

    def __init__(self, rows: int, cols: int, config):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(rows, cols, dtype=config.params_dtype))
        set_tensor_model_parallel_attributes(self.weight, True, 1, 1)
        if config.perform_initialization:  # megatron-core's init (init="nanochat" redraws it)
            with torch.no_grad():
                config.init_method(self.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class NanochatSelfAttention(SelfAttention):
    """SelfAttention + gated value embeddings on nanochat's layers (module docstring)."""

    def __init__(self, config, submodules, layer_number, *args, value_embeddings: bool = False,
                 value_embedding_rows: int = 0, **kwargs):
        super().__init__(config, submodules, layer_number, *args, **kwargs)
        self._nanochat_state: Optional[NanochatState] = None
        self.value_embedding = self.value_gate = None
        if value_embeddings and has_value_embedding(layer_number - 1, config.num_layers):
            cols = self.num_query_groups_per_partition * self.hidden_size_per_attention_head
            self.value_embedding = ValueEmbedding(value_embedding_rows, cols, config)
            self.value_gate = ColumnParallelLinear(
                VE_GATE_CHANNELS, config.num_query_groups, config=config,
                init_method=config.init_method, bias=False, gather_output=False,
                skip_bias_add=True)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None):
        """megatron-core's, with the value-embedding table and gate under per-layer keys
        (``decoder.layers.self_attention.value_embedding.<global i>.weight``, likewise
        ``value_gate``; no layer axis): they exist on every other layer only, so megatron-core's
        layer-stacked keys (a layer axis over all layers) would describe a stack with holes."""
        from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

        hidden = {n: self._modules.get(n) for n in ("value_embedding", "value_gate")}
        for n in hidden:
            self._modules[n] = None
        try:
            out = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        finally:
            self._modules.update(hidden)
        if self.value_embedding is None:
            return out
        layer = self.layer_number - 1
        for name, axis in (("value_embedding", 1), ("value_gate", 0)):
            key = f"{prefix}{name}.{layer}."  # the block rewrites the layer prefix only
            sh = make_sharded_tensors_for_checkpoint(
                {"weight": getattr(self, name).weight}, key, {"weight": axis}, ())
            out[f"{prefix}{name}.weight"] = sh[key + "weight"]
        return out

    def get_query_key_value_tensors(self, hidden_states, key_value_states=None,
                                    output_gate: bool = False, split_qkv: bool = True):
        out = super().get_query_key_value_tensors(hidden_states, key_value_states,
                                                  output_gate=output_gate, split_qkv=split_qkv)
        if self.value_embedding is None:
            return out
        if not split_qkv:
            raise RuntimeError("value_embeddings need megatron-core's split q/k/v path")
        state = self._nanochat_state
        if state is None or state.input_ids is None:
            raise RuntimeError("value_embeddings: the model forward got no input_ids on this "
                               "stage")
        query, key, value = out[0], out[1], out[2]
        s, b, g, d = value.shape
        ve = self.value_embedding(state.input_ids).transpose(0, 1).reshape(s, b, g, d)
        gate_in = hidden_states[..., :VE_GATE_CHANNELS].contiguous()
        gate = 3 * torch.sigmoid(self.value_gate(gate_in)[0])  # [s, b, g]
        value = value + gate.unsqueeze(-1) * ve.to(value.dtype)
        return (query, key, value) + tuple(out[3:])


class NanochatTransformerLayer(TransformerLayer):
    """TransformerLayer with nanochat's per-layer ``resid_scale`` / ``x0_scale`` (applied to
    the layer input) and the backout capture after layer ``num_layers // 2``."""

    def __init__(self, config, submodules, layer_number: int = 1, *args,
                 residual_scalars: bool = False, backout: bool = False, **kwargs):
        super().__init__(config, submodules, layer_number, *args, **kwargs)
        self._nanochat_state: Optional[NanochatState] = None
        self.residual_scalars = residual_scalars
        self.backout_here = backout and (self.layer_number - 1) == config.num_layers // 2
        if residual_scalars:
            self.resid_scale = _scalar(1.0, config, sequence_parallel=True)
            self.x0_scale = _scalar(0.0, config, sequence_parallel=True)

    def forward(self, *args, **kwargs):
        state = self._nanochat_state
        if self.residual_scalars:
            if "hidden_states" in kwargs:
                h = kwargs["hidden_states"]
            else:
                h, args = args[0], args[1:]
            if state is None or state.x0 is None:
                raise RuntimeError("residual_scalars: no x0 (embedding output) on this stage")
            kwargs["hidden_states"] = ((self.resid_scale * h).to(h.dtype)
                                       + (self.x0_scale * state.x0).to(h.dtype))
        out = super().forward(*args, **kwargs)
        if self.backout_here:
            state.x_backout = out[0] if isinstance(out, tuple) else out
        return out


class Smear(torch.nn.Module):
    """nanochat's smear (module docstring); works on megatron's ``[s, b, h]`` layout."""

    def __init__(self, config):
        super().__init__()
        self.gate = torch.nn.Parameter(torch.zeros(SMEAR_CHANNELS, dtype=config.params_dtype))
        self.scale = _scalar(0.0, config, sequence_parallel=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cur = x[1:]
        g = torch.sigmoid(F.linear(cur[..., :SMEAR_CHANNELS], self.gate.to(x.dtype)[None]))
        gate = self.scale.to(x.dtype) * g
        return torch.cat([x[:1], cur + gate * x[:-1]], dim=0)


class Backout(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.scale = _scalar(0.2, config, sequence_parallel=True)


def attention_module(cfg: ModelConfig):
    """(SelfAttention class, extra ModuleSpec params) for the spec builder."""
    if not cfg.value_embeddings:
        return SelfAttention, {}
    return NanochatSelfAttention, {"value_embeddings": True,
                                   "value_embedding_rows": value_embedding_rows(cfg)}


def layer_module(cfg: ModelConfig):
    """(TransformerLayer class, extra ModuleSpec params), or None for the plain layer."""
    if not (cfg.residual_scalars or cfg.backout):
        return None
    return NanochatTransformerLayer, {"residual_scalars": cfg.residual_scalars,
                                      "backout": cfg.backout}


def install(model, cfg: ModelConfig) -> None:
    """Give an ArGPTModel chunk its model-level nanochat parts (``smear``, ``backout``) and the
    hooks that feed :class:`NanochatState` (module docstring). Called by the builder."""
    if not uses_nanochat(cfg):
        return
    config = model.config
    pp = config.pipeline_model_parallel_size
    if config.recompute_granularity == "full" and (
            cfg.residual_scalars or (cfg.value_embeddings and pp > 1)):
        # x0 enters a recomputed layer from outside its checkpoint (megatron-core's
        # CheckpointFunction would back-propagate into the embedding twice), and under 1F1B the
        # token ids of a re-run layer already belong to the next micro-batch
        raise ValueError("ModelConfig.residual_scalars / value_embeddings: full activation "
                         "recompute is not supported with these options (use "
                         "recompute_granularity='selective')")
    state = NanochatState()
    model._nanochat_state = state
    for mod in model.modules():
        if isinstance(mod, (NanochatSelfAttention, NanochatTransformerLayer)):
            mod._nanochat_state = state

    def ids_pre_hook(module, args, kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else (args[0] if args else None)
        state.input_ids, state.x0, state.x_backout = ids, state.recv_x0, state.recv_backout

    model.register_forward_pre_hook(ids_pre_hook, with_kwargs=True)
    carried = int(cfg.residual_scalars) + int(cfg.backout)
    if carried and not model.pre_process:
        plain_set_input_tensor = model.set_input_tensor

        def set_input_tensor(input_tensor):
            t = input_tensor[0] if isinstance(input_tensor, (list, tuple)) else input_tensor
            if t is None:
                return plain_set_input_tensor(input_tensor)
            parts = list(t.chunk(1 + carried, dim=1))
            state.recv_x0 = parts.pop(1) if cfg.residual_scalars else None
            state.recv_backout = parts.pop(1) if cfg.backout else None
            return plain_set_input_tensor([parts[0]])

        model.set_input_tensor = set_input_tensor  # what megatron-core's schedules call
    if carried and not model.post_process:
        def carry_hook(module, inputs, output):
            parts = [output]
            if cfg.residual_scalars:
                parts.append(state.x0)
            if cfg.backout:
                parts.append(state.x_backout if state.x_backout is not None
                             else torch.zeros_like(output))
            return torch.cat(parts, dim=1)

        model.register_forward_hook(carry_hook)
    model._stage_batch_multiple = 1 + carried
    if model.pre_process:
        if cfg.smear:
            model.smear = Smear(config)

        def embedding_hook(module, inputs, output):
            x = output
            if cfg.smear:
                if config.sequence_parallel:
                    full = gather_from_sequence_parallel_region(
                        x, tensor_parallel_output_grad=False)
                    x = scatter_to_sequence_parallel_region(model.smear(full))
                else:
                    x = model.smear(x)
            state.x0 = x
            return x

        # registered after ArGPTModel's embedding-norm hook, so it sees the normed embedding
        model.embedding.register_forward_hook(embedding_hook)
    if model.post_process:
        if cfg.backout:
            model.backout = Backout(config)

            def backout_pre_hook(module, args):
                x = args[0]
                return (x - model.backout.scale.to(x.dtype) * state.x_backout,) + tuple(args[1:])

            model.decoder.final_layernorm.register_forward_pre_hook(backout_pre_hook)
        if cfg.logits_fp32:
            def fp32_hook(module, inputs, output):
                logits, bias = output
                return logits.float(), bias

            # prepend: runs before ArGPTModel's soft-cap hook
            model.output_layer.register_forward_hook(fp32_hook, prepend=True)


def stage_batch_multiple(chunks) -> int:
    """How many micro-batches' worth of rows a pipeline stage sends (module docstring)."""
    from megatron_ar.models.wrappers import unwrap

    return max([getattr(c, "_stage_batch_multiple", 1) for c in unwrap(chunks)] or [1])


# --------------------------------------------------------------------------- initialisation
def init_value(name: str, shape: Sequence[int], cfg: ModelConfig,
               generator: torch.Generator) -> torch.Tensor:
    """nanochat's ``init_weights`` value of the full (TP=1) megatron tensor ``name``."""
    h = cfg.hidden_size
    s = 3 ** 0.5 * h ** -0.5
    n = cfg.num_layers
    leaf = name.split(".", 3)[-1] if name.startswith("decoder.layers.") else name
    i = int(name.split(".")[2]) if name.startswith("decoder.layers.") else -1
    t = torch.empty(tuple(shape), dtype=torch.float32)

    def uniform(lo, hi):
        return t.uniform_(lo, hi, generator=generator)

    if name == "embedding.word_embeddings.weight":
        return t.normal_(0.0, 0.8, generator=generator)
    if name == "output_layer.weight":
        return t.normal_(0.0, 0.001, generator=generator)
    if leaf in ("self_attention.linear_qkv.weight", "self_attention.value_embedding.weight"):
        return uniform(-s, s)
    if leaf in ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight"):
        return t.zero_()
    if leaf == "mlp.linear_fc1.weight":
        return uniform(-0.4 * s, 0.4 * s)
    if leaf in ("self_attention.value_gate.weight",) or name == "smear.gate":
        return uniform(0.0, 0.02)
    if leaf == "resid_scale":
        return t.fill_(1.15 - 0.10 * i / max(n - 1, 1))
    if leaf == "x0_scale":
        return t.fill_(0.20 - 0.15 * i / max(n - 1, 1))
    if name == "smear.scale":
        return t.zero_()
    if name == "backout.scale":
        return t.fill_(0.2)
    if leaf.endswith("layernorm.weight") or name == "decoder.final_layernorm.weight":
        return t.fill_(1.0)
    raise KeyError(f"init=nanochat: no rule for parameter {name!r}")


@torch.no_grad()
def init_weights(chunks, cfg: ModelConfig, seed: int) -> None:
    """nanochat's initialisation of this rank's parameters. Each full tensor is drawn from its
    own generator (``seed`` + CRC32 of the global name), then sharded: the model is the same for
    every TP/PP layout (megatron-core's per-rank RNG would give a layout-dependent model)."""
    from megatron.core import parallel_state

    from megatron_ar.models.sharding import iter_global_params, shard_tensor
    from megatron_ar.models.tp import VOCAB_PARAMS

    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    for name, p in iter_global_params(chunks, cfg):
        shape = full_shape(cfg, name) if name not in VOCAB_PARAMS else (cfg.vocab_size,
                                                                          cfg.hidden_size)
        g = torch.Generator().manual_seed((int(seed) + zlib.crc32(name.encode())) % 2 ** 63)
        full = init_value(name, shape, cfg, g)
        p.copy_(shard_tensor(name, full.to(p.dtype), p, cfg, tp_rank, tp))


def full_shape(cfg: ModelConfig, name: str) -> Tuple[int, ...]:
    """Full (TP=1) shape of a megatron tensor of a nanochat-option model (unpadded vocab for
    the word embedding / LM head)."""
    h, d, g, n = cfg.hidden_size, cfg.head_dim, cfg.groups, cfg.num_attention_heads
    leaf = name.split(".", 3)[-1] if name.startswith("decoder.layers.") else name
    shapes = {
        "embedding.word_embeddings.weight": (cfg.vocab_size, h),
        "output_layer.weight": (cfg.vocab_size, h),
        "self_attention.linear_qkv.weight": ((n + 2 * g) * d, h),
        "self_attention.linear_proj.weight": (h, n * d),
        "mlp.linear_fc1.weight": ((2 if cfg.gated else 1) * cfg.ffn_hidden_size, h),
        "mlp.linear_fc2.weight": (h, cfg.ffn_hidden_size),
        "self_attention.value_embedding.weight": (value_embedding_rows(cfg), g * d),
        "self_attention.value_gate.weight": (g, VE_GATE_CHANNELS),
        "resid_scale": (1,), "x0_scale": (1,),
        "smear.gate": (SMEAR_CHANNELS,), "smear.scale": (1,), "backout.scale": (1,),
        "input_layernorm.weight": (h,), "pre_mlp_layernorm.weight": (h,),
        "decoder.final_layernorm.weight": (h,),
        "self_attention.q_layernorm.weight": (d,), "self_attention.k_layernorm.weight": (d,),
    }
    if leaf not in shapes:
        raise KeyError(f"unknown tensor {name!r}")
    return shapes[leaf]


# --------------------------------------------------------------------------- name/shape table
@dataclass(frozen=True)
class NanochatEntry:
    """One megatron tensor and the nanochat tensor(s) it is made of. ``kind``: ``copy``;
    ``vocab`` (rows are the vocabulary; nanochat pads them to a multiple of 64); ``ve`` (a
    value-embedding table: nanochat's rows zero-padded to :func:`value_embedding_rows`); ``qkv``
    (c_q, c_k, c_v -> megatron's grouped ``linear_qkv``, q/k head halves swapped: module
    docstring); ``element`` (element ``index`` of a per-layer vector); ``flatten`` ((1, n) ->
    (n,))."""

    megatron: str
    nanochat: Tuple[str, ...]
    kind: str
    index: int = 0


def weight_table(cfg: ModelConfig) -> List[NanochatEntry]:
    """Every tensor of a nanochat model, in nanochat's order. The one table both directions
    (:func:`nanochat_to_megatron`, :func:`megatron_to_nanochat`) and the checkpoint converter
    use."""
    E = NanochatEntry
    L = cfg.num_layers
    table = [E("embedding.word_embeddings.weight", ("transformer.wte.weight",), "vocab")]
    for i in range(L):
        m, n = f"decoder.layers.{i}.", f"transformer.h.{i}."
        table.append(E(m + "self_attention.linear_qkv.weight",
                       (n + "attn.c_q.weight", n + "attn.c_k.weight", n + "attn.c_v.weight"),
                       "qkv"))
        table.append(E(m + "self_attention.linear_proj.weight", (n + "attn.c_proj.weight",),
                       "copy"))
        if cfg.value_embeddings and has_value_embedding(i, L):
            table.append(E(m + "self_attention.value_gate.weight", (n + "attn.ve_gate.weight",),
                           "copy"))
        table.append(E(m + "mlp.linear_fc1.weight", (n + "mlp.c_fc.weight",), "copy"))
        table.append(E(m + "mlp.linear_fc2.weight", (n + "mlp.c_proj.weight",), "copy"))
    if not cfg.tie_embeddings:
        table.append(E("output_layer.weight", ("lm_head.weight",), "vocab"))
    if cfg.residual_scalars:
        table += [E(f"decoder.layers.{i}.resid_scale", ("resid_lambdas",), "element", i)
                  for i in range(L)]
        table += [E(f"decoder.layers.{i}.x0_scale", ("x0_lambdas",), "element", i)
                  for i in range(L)]
    if cfg.smear:
        table += [E("smear.gate", ("smear_gate.weight",), "flatten"),
                  E("smear.scale", ("smear_lambda",), "copy")]
    if cfg.backout:
        table.append(E("backout.scale", ("backout_lambda",), "copy"))
    if cfg.value_embeddings:
        table += [E(f"decoder.layers.{i}.self_attention.value_embedding.weight",
                    (f"value_embeds.{i}.weight",), "ve")
                  for i in range(L) if has_value_embedding(i, L)]
    return table


def nanochat_shapes(cfg: ModelConfig) -> Dict[str, Tuple[int, ...]]:
    """nanochat's state-dict shapes for ``cfg`` (vocab rows padded to 64)."""
    h, d, g, n, L = (cfg.hidden_size, cfg.head_dim, cfg.groups, cfg.num_attention_heads,
                     cfg.num_layers)
    vocab = nanochat_padded_vocab(cfg.vocab_size)
    out: Dict[str, Tuple[int, ...]] = {}
    for e in weight_table(cfg):
        if e.kind == "qkv":
            out[e.nanochat[0]], out[e.nanochat[1]], out[e.nanochat[2]] = \
                (n * d, h), (g * d, h), (g * d, h)
        elif e.kind == "vocab":
            out[e.nanochat[0]] = (vocab, h)
        elif e.kind == "ve":
            out[e.nanochat[0]] = (vocab, g * d)
        elif e.kind == "element":
            out[e.nanochat[0]] = (L,)
        elif e.kind == "flatten":
            out[e.nanochat[0]] = (1,) + full_shape(cfg, e.megatron)
        else:
            out[e.nanochat[0]] = full_shape(cfg, e.megatron)
    return out


def _swap_head_halves(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Swap the two halves of every head's rows (an involution; module docstring)."""
    rows, cols = w.shape
    return w.reshape(rows // head_dim, 2, head_dim // 2, cols).flip(1).reshape(rows, cols)


def entry_to_megatron(entry: NanochatEntry, tensors: Sequence[torch.Tensor],
                      cfg: ModelConfig) -> torch.Tensor:
    """The megatron tensor of ``entry`` from its nanochat tensors (shapes checked; ``vocab``
    rows keep nanochat's padding)."""
    from megatron_ar.models.hf import qkv_to_megatron

    shapes = nanochat_shapes(cfg)
    for name, t in zip(entry.nanochat, tensors):
        if tuple(t.shape) != shapes[name]:
            raise ValueError(f"{name}: expected shape {shapes[name]}, got {tuple(t.shape)}")
    if entry.kind == "qkv":
        q, k, v = tensors
        d = cfg.head_dim
        return qkv_to_megatron(_swap_head_halves(q, d), _swap_head_halves(k, d), v,
                               cfg).contiguous()
    (t,) = tensors
    if entry.kind == "element":
        return t[entry.index:entry.index + 1].clone()
    if entry.kind == "flatten":
        return t.reshape(-1).clone()
    if entry.kind == "ve":  # zero rows up to our table's rows
        rows = value_embedding_rows(cfg)
        return torch.cat([t, t.new_zeros((rows - t.shape[0],) + tuple(t.shape[1:]))])
    return t.contiguous()


def nanochat_to_megatron(state: Dict[str, torch.Tensor], cfg: ModelConfig,
                         keep_vocab_padding: bool = False) -> Dict[str, torch.Tensor]:
    """nanochat state dict -> full megatron state dict (NAMES.md convention: vocab rows
    unpadded, unless ``keep_vocab_padding``). ``_orig_mod.`` prefixes (torch.compile) are
    removed as nanochat's loader does. Missing, unused or mis-shaped tensors raise KeyError /
    ValueError naming them."""
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    table = weight_table(cfg)
    wanted = {n for e in table for n in e.nanochat}
    missing = sorted(wanted - set(state))
    unused = sorted(set(state) - wanted)
    if missing or unused:
        raise KeyError(f"nanochat state dict: missing {missing[:6]}, unused {unused[:6]}")
    out = {}
    for e in table:
        t = entry_to_megatron(e, [state[n] for n in e.nanochat], cfg)
        if e.kind == "vocab" and not keep_vocab_padding:
            t = t[: cfg.vocab_size]
        out[e.megatron] = t
    return out


def megatron_to_nanochat(state: Dict[str, torch.Tensor], cfg: ModelConfig
                         ) -> Dict[str, torch.Tensor]:
    """Inverse of :func:`nanochat_to_megatron` through the same table. ``vocab`` tensors with
    fewer rows than nanochat's padded vocab are zero-padded, with more rows cut to it."""
    from megatron_ar.models.hf import qkv_to_hf

    table = weight_table(cfg)
    missing = sorted({e.megatron for e in table} - set(state))
    unused = sorted(set(state) - {e.megatron for e in table})
    if missing or unused:
        raise KeyError(f"megatron state dict: missing {missing[:6]}, unused {unused[:6]}")
    shapes = nanochat_shapes(cfg)
    out: Dict[str, torch.Tensor] = {}
    for e in table:
        t = state[e.megatron]
        if e.kind == "qkv":
            if tuple(t.shape) != full_shape(cfg, e.megatron):
                raise ValueError(f"{e.megatron}: expected shape {full_shape(cfg, e.megatron)}, "
                                 f"got {tuple(t.shape)}")
            q, k, v = qkv_to_hf(t, cfg)
            d = cfg.head_dim
            for name, part in zip(e.nanochat, (_swap_head_halves(q, d),
                                               _swap_head_halves(k, d), v)):
                out[name] = part.contiguous()
            continue
        (name,) = e.nanochat
        if e.kind in ("vocab", "ve"):
            rows = shapes[name][0]
            if t.shape[0] < rows:
                t = torch.cat([t, t.new_zeros((rows - t.shape[0],) + tuple(t.shape[1:]))])
            out[name] = t[:rows].contiguous()
        elif e.kind == "element":
            if name not in out:
                out[name] = torch.empty(shapes[name], dtype=t.dtype)
            out[name][e.index] = t.reshape(())
        elif e.kind == "flatten":
            out[name] = t.reshape(shapes[name]).clone()
        else:
            out[name] = t.contiguous()
    for name, t in out.items():
        if tuple(t.shape) != shapes[name]:
            raise ValueError(f"{name}: expected shape {shapes[name]}, got {tuple(t.shape)}")
    return out

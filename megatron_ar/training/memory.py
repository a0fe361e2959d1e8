"""Per-GPU memory of a recipe and parallel layout: a planning estimate and the exact static bytes.

Two kinds of figures live here, both pure arithmetic on the ModelConfig and the layout:

1. :func:`estimate_memory` / :func:`estimate_for_recipe` -- the planning estimate printed by
   ``--dry-run`` and ``tools/estimate_memory.py``.
2. :func:`static_memory` -- the *exact* bytes of weights, gradient buffers and optimizer state
   of one rank, following megatron-core 0.16's allocation rules. The fake-tensor probe
   (:mod:`megatron_ar.training.memory_probe`) measures the same bytes on the real model and its
   tests assert equality.

Design choices
- Parameters per rank are counted from the ModelConfig, placed the way megatron-core places
  them: layers split evenly over PP and virtual stages (``get_num_layers_to_build``), tensors over
  TP, the embedding on the first stage, the output layer and final norm on the last (a tied
  embedding is duplicated on the last stage when PP > 1, megatron's ``shared_embedding``).
  :func:`chunk_params` lists them in the registration order of megatron-core's local-spec
  GPTModel (the spec built without Transformer Engine), because the DDP buffer padding depends
  on that order. Transformer Engine fuses the pre-norms into ``linear_qkv``/``linear_fc1``, so on
  a TE build the order (and thus the padding, < 64 elements per parameter) differs slightly.
- DDP buffers (:func:`ddp_buffer_layout`) follow ``_ParamAndGradBuffer.__init__``
  (megatron/core/distributed/param_and_grad_buffer.py): parameters are laid out in reverse order;
  with the distributed optimizer each parameter starts at a multiple of 64 elements and each
  bucket ends at a multiple of lcm(DP, 128); buckets close once they hold ``bucket_size``
  elements, a ``shared_embedding`` parameter gets its own bucket. ``bucket_size`` follows
  ``DistributedDataParallel.__init__``: ``max(40M, 1M x DP)`` with ``overlap_grad_reduce``, else
  one bucket; one bucket for model chunks after the first and for pipeline stages after the
  first. With the distributed optimizer the bf16 parameters live in a buffer of the same
  (padded) size as the gradients; without it they stay separate tensors.
- Optimizer state (:func:`static_memory`): the distributed optimizer gives DP rank ``r`` the
  ``r``-th of DP equal slices of every bucket (``DistributedOptimizer._build_model_gbuf_range``)
  and keeps fp32 main parameters (bf16 training) plus Adam's ``exp_avg``/``exp_avg_sq`` for the
  parameter elements inside it; padding holds no state. Without it every parameter has a main
  copy and two moments. fp32 training has no separate main copy (the optimizer updates the
  model's parameters). torch's Adam also keeps a ``step`` scalar per parameter on the host (not
  on the GPU; not counted).
- The planning estimate keeps Megatron-LM's accounting (``report_theoretical_memory`` in
  megatron/training/theoretical_memory_usage.py): bf16 weights (2) + fp32 gradient buffer (4, or
  2 with bf16 gradient reduce) + fp32 master weights and two Adam moments (12), the last
  sharded over DP by the distributed optimizer; fp32 training has no separate master copy
  (4+4+8); no padding.
- Activations use Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
  Transformer Models", arXiv:2205.05198, Sec. 4): per layer and micro-batch
  ``s*b*h*(10 + 24/t + 5*a*s/(h*t))`` bytes with TP only, ``s*b*h/t*(34 + 5*a*s/h)`` with
  sequence parallelism, the ``5as/h`` attention term dropped under selective recomputation or a
  fused (flash) attention kernel, and ``2*s*b*h/t`` (layer inputs only) under full
  recomputation. The formula assumes a 4h MLP and full multi-head attention; for SwiGLU
  (8/3 h x 3 matrices) and GQA it is an approximation within ~10% (stated, not hidden). The
  number of micro-batches in flight on a stage is megatron-core's warm-up count plus one
  (``get_pp_rank_microbatches``: ``pp - r - 1`` for 1F1B, ``2(pp - r - 1) + (v - 1) pp`` virtual
  micro-batches of ``L/(pp v)`` layers when interleaved), which for the first stage equals
  Korthikanti's ``pp`` micro-batches times ``1 + (pp-1)/(pp v)``. The last stage adds the fp32
  logits of one micro-batch for the loss (``s*b*V/t*4``).
- Not modelled: CUDA context and allocator fragmentation (typically 2-5 GB on H100), NCCL
  buffers, TE workspaces. The estimate is a planning number, not a guarantee; the fake-tensor
  probe measures the real model's tensors.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

GIB = 1024 ** 3


@dataclass
class MemoryEstimate:
    """The analytic per-GPU memory of one rank by category (GiB) and the parameters it holds."""

    params_per_rank: int
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float
    logits_gib: float
    total_gib: float
    notes: str

    def to_dict(self):
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# exact parameter layout of one rank
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamEntry:
    """One parameter of a model chunk: megatron-core name, elements on this rank, and whether
    it is the (pipeline-duplicated) tied embedding (megatron's ``shared_embedding``)."""

    name: str
    numel: int
    shared_embedding: bool = False


def _layer_entries(mc, tp: int, prefix: str, layer: int = 0) -> List[ParamEntry]:
    from megatron_ar.models.nanochat_config import (VE_GATE_CHANNELS, has_value_embedding,
                                                    value_embedding_rows)

    h, d = mc.hidden_size, mc.head_dim
    norm = mc.norm != "rmsnorm_noparam"
    q, kv = mc.num_attention_heads * d, mc.groups * d
    fc1 = mc.ffn_hidden_size * (2 if mc.gated else 1)
    qkv_bias = mc.add_bias_linear or mc.add_qkv_bias
    out: List[Tuple[str, int]] = []
    if mc.residual_scalars:  # the layer's own parameters come before its submodules'
        out += [("resid_scale", 1), ("x0_scale", 1)]
    if norm:
        out.append(("input_layernorm.weight", h))
    # Attention.__init__ builds linear_proj before SelfAttention builds linear_qkv and QK norms.
    out.append(("self_attention.linear_proj.weight", h * q // tp))
    if mc.add_bias_linear:
        out.append(("self_attention.linear_proj.bias", h))
    out.append(("self_attention.linear_qkv.weight", (q + 2 * kv) * h // tp))
    if qkv_bias:
        out.append(("self_attention.linear_qkv.bias", (q + 2 * kv) // tp))
    if mc.qk_norm and norm:
        out += [("self_attention.q_layernorm.weight", d), ("self_attention.k_layernorm.weight", d)]
    if mc.value_embeddings and has_value_embedding(layer, mc.num_layers):
        out += [("self_attention.value_embedding.weight",
                 value_embedding_rows(mc) * kv // tp),
                ("self_attention.value_gate.weight", mc.groups * VE_GATE_CHANNELS // tp)]
    if norm:
        out.append(("pre_mlp_layernorm.weight", h))
    out.append(("mlp.linear_fc1.weight", fc1 * h // tp))
    if mc.add_bias_linear:
        out.append(("mlp.linear_fc1.bias", fc1 // tp))
    out.append(("mlp.linear_fc2.weight", h * mc.ffn_hidden_size // tp))
    if mc.add_bias_linear:
        out.append(("mlp.linear_fc2.bias", h))
    if mc.post_norms and norm:  # SandwichTransformerLayer registers them after the MLP
        out += [("post_self_attn_layernorm.weight", h), ("post_mlp_layernorm.weight", h)]
    return [ParamEntry(prefix + n, k) for n, k in out]


def chunk_params(mc, tp: int, pp: int, vpp: Optional[int], pp_rank: int,
                 vp_stage: Optional[int] = None) -> List[ParamEntry]:
    """Parameters of one model chunk (``vp_stage`` of pipeline rank ``pp_rank``) in the order
    megatron-core's local-spec GPTModel registers them (``named_parameters``)."""
    v = vpp if (vpp or 1) > 1 else 1
    if mc.num_layers % (pp * v):
        raise ValueError(f"num_layers {mc.num_layers} is not divisible by pp x vpp = {pp * v}")
    per_chunk = mc.num_layers // (pp * v)
    stage = vp_stage or 0
    first = pp_rank == 0 and stage == 0
    last = pp_rank == pp - 1 and stage == v - 1
    h, vocab = mc.hidden_size, mc.padded_vocab_size(tp)
    shared = mc.tie_embeddings and pp > 1
    out: List[ParamEntry] = []
    if first:
        out.append(ParamEntry("embedding.word_embeddings.weight", vocab * h // tp, shared))
    # global index of this chunk's first layer (megatron-core's interleaved layer offset)
    offset = (stage * pp + pp_rank) * per_chunk
    for i in range(per_chunk):
        out += _layer_entries(mc, tp, f"decoder.layers.{i}.", offset + i)
    if last:
        if mc.norm != "rmsnorm_noparam":
            out.append(ParamEntry("decoder.final_layernorm.weight", h))
        if not (mc.tie_embeddings and first):
            out.append(ParamEntry("output_layer.weight", vocab * h // tp, shared))
    # nanochat's model-level modules, added after GPTModel's own (megatron_ar.models.nanochat)
    if first and mc.smear:
        from megatron_ar.models.nanochat_config import SMEAR_CHANNELS

        out += [ParamEntry("smear.gate", SMEAR_CHANNELS), ParamEntry("smear.scale", 1)]
    if last and mc.backout:
        out.append(ParamEntry("backout.scale", 1))
    return out


def rank_params(mc, tp: int, pp: int, vpp: Optional[int], pp_rank: int) -> List[List[ParamEntry]]:
    """The parameter lists of every model chunk of pipeline rank ``pp_rank``."""
    stages = range(vpp) if (vpp or 1) > 1 else [None]
    return [chunk_params(mc, tp, pp, vpp, pp_rank, s) for s in stages]


def ddp_bucket_size(overlap_grad_reduce: bool, dp: int, chunk_index: int, pp_rank: int) -> Optional[int]:
    """Bucket size of megatron-core 0.16 ``DistributedDataParallel.__init__`` (None: one
    bucket) for model chunk ``chunk_index`` (``wrap_with_ddp`` disables bucketing after the
    first chunk)."""
    if not overlap_grad_reduce or chunk_index > 0 or pp_rank > 0:
        return None
    return max(40_000_000, 1_000_000 * dp)


@dataclass(frozen=True)
class BufferLayout:
    """A DDP param/grad buffer: total elements, bucket (start, end), and per parameter (in the
    order given) its (start, end) range."""

    numel: int
    buckets: Tuple[Tuple[int, int], ...]
    param_ranges: Tuple[Tuple[int, int], ...]


def ddp_buffer_layout(params: Sequence[ParamEntry], dp: int, distributed_optimizer: bool,
                      bucket_size: Optional[int]) -> BufferLayout:
    """Layout of megatron-core 0.16 ``_ParamAndGradBuffer`` for ``params`` (registration order);
    see the module docstring for the rule."""

    def pad(n: int, k: int) -> int:
        return -(-n // k) * k

    bucket_div = math.lcm(dp, 128)
    ranges = [None] * len(params)
    buckets: List[Tuple[int, int]] = []
    start = bucket_start = 0
    in_bucket = 0
    end = 0

    def close(param_end: int) -> int:
        nonlocal bucket_start, in_bucket
        bucket_end = pad(param_end, bucket_div) if distributed_optimizer else param_end
        buckets.append((bucket_start, bucket_end))
        bucket_start, in_bucket = bucket_end, 0
        return bucket_end

    for i in reversed(range(len(params))):
        p = params[i]
        if distributed_optimizer:
            start = pad(start, 64)
        own_bucket = p.shared_embedding and distributed_optimizer
        if own_bucket and in_bucket:
            start = close(start)
        end = start + p.numel
        ranges[i] = (start, end)
        in_bucket += 1
        if (bucket_size is not None and end - bucket_start >= bucket_size) or own_bucket:
            start = close(end)
        else:
            start = end
    if in_bucket:
        close(end)
    return BufferLayout(buckets[-1][1] if buckets else 0, tuple(buckets), tuple(ranges))


def shard_elements(layout: BufferLayout, dp: int, dp_rank: int) -> Tuple[int, int]:
    """(parameter elements, parameters touched) in DP rank ``dp_rank``'s slice of every bucket
    (megatron-core 0.16 ``DistributedOptimizer._build_model_gbuf_range``)."""
    elements = touched = 0
    for b_start, b_end in layout.buckets:
        size = (b_end - b_start) // dp
        lo = b_start + dp_rank * size
        hi = min(b_end, lo + size)
        for p_start, p_end in layout.param_ranges:
            n = min(p_end, hi) - max(p_start, lo)
            if n > 0:
                elements += n
                touched += 1
    return elements, touched


@dataclass
class StaticMemory:
    """Exact bytes of one rank's persistent training state (see the module docstring)."""

    params: int  # parameters on this rank (all chunks)
    weights: int  # bf16/fp32 parameters (the DDP param buffer with the distributed optimizer)
    grads: int  # DDP gradient buffers
    optimizer: int  # main parameters + Adam exp_avg / exp_avg_sq on this rank
    optimizer_params: int  # parameter elements whose optimizer state lives on this rank
    buffer_numel: int  # elements of the DDP buffers, padding included

    def to_dict(self):
        return asdict(self)


def static_memory(mc, tp: int, pp: int, vpp: Optional[int], dp: int, pp_rank: int, dp_rank: int = 0,
                  bf16: bool = True, grad_reduce_in_fp32: bool = True,
                  distributed_optimizer: bool = True, overlap_grad_reduce: bool = False) -> StaticMemory:
    """Exact weights / gradient / optimizer bytes of the rank at (``pp_rank``, ``dp_rank``)."""
    w_bytes = 2 if bf16 else 4
    g_bytes = 4 if (grad_reduce_in_fp32 or not bf16) else 2
    state_bytes = 12 if bf16 else 8  # fp32 main copy (bf16 only) + exp_avg + exp_avg_sq
    params = weights = grads = opt_elems = buf = 0
    for i, chunk in enumerate(rank_params(mc, tp, pp, vpp, pp_rank)):
        n = sum(p.numel for p in chunk)
        layout = ddp_buffer_layout(chunk, dp, distributed_optimizer,
                                   ddp_bucket_size(overlap_grad_reduce, dp, i, pp_rank))
        params += n
        buf += layout.numel
        grads += layout.numel * g_bytes
        weights += (layout.numel if distributed_optimizer else n) * w_bytes
        opt_elems += shard_elements(layout, dp, dp_rank)[0] if distributed_optimizer else n
    return StaticMemory(params, weights, grads, opt_elems * state_bytes, opt_elems, buf)


# ----------------------------------------------------------------------------------------------
# planning estimate
# ----------------------------------------------------------------------------------------------
def layer_params(mc) -> int:
    h, d = mc.hidden_size, mc.head_dim
    q = mc.num_attention_heads * d
    kv = mc.groups * d
    attn = h * (q + 2 * kv) + q * h
    mlp = h * mc.ffn_hidden_size * (3 if mc.gated else 2)
    norms = 2 * h * (2 if mc.post_norms else 1) + (2 * d if mc.qk_norm else 0)
    return attn + mlp + norms


def params_per_rank(mc, tp: int, pp: int) -> int:
    """Parameters on the most loaded rank (first or last pipeline stage)."""
    vocab = mc.padded_vocab_size(tp)
    layers = math.ceil(mc.num_layers / pp)
    body = layers * layer_params(mc) // tp
    emb = vocab * mc.hidden_size // tp
    out = 0 if mc.tie_embeddings else emb
    if pp == 1:
        return body + emb + out + mc.hidden_size
    first = body + emb
    last = body + (emb if mc.tie_embeddings else out) + mc.hidden_size
    return max(first, last)


def stage_params(mc, tp: int, pp: int, pp_rank: int) -> int:
    """Parameters of pipeline stage ``pp_rank`` (planning count, as :func:`params_per_rank`)."""
    vocab = mc.padded_vocab_size(tp)
    body = (mc.num_layers // pp) * layer_params(mc) // tp
    emb = vocab * mc.hidden_size // tp
    n = body + (emb if pp_rank == 0 else 0)
    if pp_rank == pp - 1:
        n += mc.hidden_size + (0 if (mc.tie_embeddings and pp == 1) else emb)
    return n


def layers_in_flight(num_layers: int, pp: int, vpp: Optional[int], num_microbatches: int,
                     pp_rank: int) -> float:
    """Layers whose activations stage ``pp_rank`` holds at its peak: megatron-core's warm-up
    micro-batches plus one (``get_pp_rank_microbatches``), each of ``L/(pp v)`` layers."""
    v = vpp if (vpp or 1) > 1 else 1
    per_chunk = num_layers / (pp * v)
    if pp == 1:
        return per_chunk
    total = num_microbatches * v
    warmup = (pp - pp_rank - 1) if v == 1 else 2 * (pp - pp_rank - 1) + (v - 1) * pp
    return per_chunk * min(warmup + 1, total)


def estimate_memory(mc, tp: int, pp: int, dp: int, micro_batch_size: int, seq_length: int,
                    num_microbatches: int, vpp: Optional[int] = None, sequence_parallel: bool = False,
                    recompute: Optional[str] = None, bf16: bool = True,
                    distributed_optimizer: bool = True, grad_reduce_in_fp32: bool = True,
                    flash_attention: bool = True, pp_rank: Optional[int] = None,
                    moment_bytes: int = 8) -> MemoryEstimate:
    """Planning estimate of the most loaded rank, or of pipeline stage ``pp_rank`` if given.
    ``moment_bytes``: bytes per parameter of Adam's two moments (8 in fp32; 4 with
    megatron-core's precision-aware optimizer keeping them in bf16, as Fanar Prime does)."""
    n = params_per_rank(mc, tp, pp) if pp_rank is None else stage_params(mc, tp, pp, pp_rank)
    if bf16:
        w, g, o = 2, (4 if grad_reduce_in_fp32 else 2), 4 + moment_bytes
    else:
        w, g, o = 4, 4, moment_bytes
    opt = o / dp if distributed_optimizer else o
    s, b, h, a, t = seq_length, micro_batch_size, mc.hidden_size, mc.num_attention_heads, tp
    attn_term = 0.0 if (recompute == "selective" or flash_attention) else 5 * a * s / h
    if recompute == "full":
        per_layer = 2 * s * b * h / (t if sequence_parallel else 1)
    elif sequence_parallel:
        per_layer = s * b * h / t * (34 + attn_term)
    else:
        per_layer = s * b * h * (10 + 24 / t + attn_term / t)
    if not bf16:
        per_layer *= 2
    if pp_rank is None:
        layers_here = mc.num_layers / pp
        in_flight = min(pp, num_microbatches) if pp > 1 else 1
        interleave = 1 + (pp - 1) / (pp * vpp) if vpp and vpp > 1 else 1.0
        act = per_layer * layers_here * in_flight * interleave
        has_logits = True
    else:
        act = per_layer * layers_in_flight(mc.num_layers, pp, vpp, num_microbatches, pp_rank)
        has_logits = pp_rank == pp - 1
    logits = s * b * mc.padded_vocab_size(tp) / t * 4 if has_logits else 0.0
    total = n * (w + g + opt) + act + logits
    notes = ("excludes CUDA context/allocator fragmentation (~2-5 GiB), NCCL and TE workspaces; "
             "activation formula of Korthikanti et al. 2022 (approximate for SwiGLU/GQA)")
    return MemoryEstimate(n, n * w / GIB, n * g / GIB, n * opt / GIB, act / GIB, logits / GIB,
                          total / GIB, notes)

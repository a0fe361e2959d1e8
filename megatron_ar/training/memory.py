"""Per-GPU memory estimate for a recipe and parallel layout (``tools/estimate_memory.py``).

Design choices
- Parameters per rank are counted from the ModelConfig (attention with GQA, gated or plain MLP,
  norms, embedding and untied output layer over the TP-padded vocabulary), placed the way
  megatron-core places them: layers split over PP (and virtual stages), tensors over TP,
  embedding on the first stage and the output layer on the last. The reported figure is the
  most loaded stage.
- Bytes per parameter follow Megatron-LM's accounting (``report_theoretical_memory`` in
  megatron/training/theoretical_memory_usage.py): bf16 weights (2) + fp32 gradient buffer (4, or
  2 with bf16 gradient reduce) + fp32 master weights and two Adam moments (12), the last sharded
  over DP by the distributed optimizer. fp32 training has no separate master copy (4+4+8).
- Activations use Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
  Transformer Models", arXiv:2205.05198, Sec. 4): per layer and micro-batch
  ``s*b*h*(10 + 24/t + 5*a*s/(h*t))`` bytes with TP only, ``s*b*h/t*(34 + 5*a*s/h)`` with
  sequence parallelism, the ``5as/h`` attention term dropped under selective recomputation or a
  fused (flash) attention kernel, and ``2*s*b*h/t`` (layer inputs only) under full
  recomputation. The formula assumes a 4h MLP and full multi-head attention; for SwiGLU
  (8/3 h x 3 matrices) and GQA it is an approximation within ~10% (stated, not hidden). 1F1B
  keeps ``pp`` micro-batches in flight on the first stage (interleaving adds
  ``(pp-1)/(pp*v)``), so that stage holds ``L/pp * min(pp, microbatches)`` layers' worth.
  The last stage adds the fp32 logits of one micro-batch for the loss (``s*b*V/t*4``).
- Not modelled: CUDA context and allocator fragmentation (typically 2-5 GB on H100), NCCL
  buffers, TE workspaces. The estimate is a planning number, not a guarantee.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

GIB = 1024 ** 3


@dataclass
class MemoryEstimate:
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


def estimate_memory(mc, tp: int, pp: int, dp: int, micro_batch_size: int, seq_length: int,
                    num_microbatches: int, vpp: Optional[int] = None, sequence_parallel: bool = False,
                    recompute: Optional[str] = None, bf16: bool = True,
                    distributed_optimizer: bool = True, grad_reduce_in_fp32: bool = True,
                    flash_attention: bool = True, moment_bytes: int = 8) -> MemoryEstimate:
    """``moment_bytes``: bytes per parameter of Adam's two moments (8 in fp32; 4 with
    megatron-core's precision-aware optimizer keeping them in bf16, as Fanar Prime does)."""
    n = params_per_rank(mc, tp, pp)
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
    layers_here = mc.num_layers / pp
    in_flight = min(pp, num_microbatches) if pp > 1 else 1
    interleave = 1 + (pp - 1) / (pp * vpp) if vpp and vpp > 1 else 1.0
    act = per_layer * layers_here * in_flight * interleave
    logits = s * b * mc.padded_vocab_size(tp) / t * 4
    total = n * (w + g + opt) + act + logits
    notes = ("excludes CUDA context/allocator fragmentation (~2-5 GiB), NCCL and TE workspaces; "
             "activation formula of Korthikanti et al. 2022 (approximate for SwiGLU/GQA)")
    return MemoryEstimate(n, n * w / GIB, n * g / GIB, n * opt / GIB, act / GIB, logits / GIB,
                          total / GIB, notes)

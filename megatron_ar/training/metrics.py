"""Throughput metrics: model FLOPs per step (Megatron-LM's formula), TFLOP/s and MFU.

Design choices
- FLOPs follow Megatron-LM's ``num_floating_point_operations`` (megatron/training/training.py),
  i.e. the appendix "Floating-point operation counting" of Narayanan et al. 2021
  (arXiv:2104.04473): every GEMM runs three times (forward, weight-grad, data-grad), a GEMM of
  (m x n) by (n x k) costs 2mnk, and the count covers the QKV/output projections (with GQA the
  K and V projections shrink by ``groups/heads``), the attention score and context GEMMs
  (full ``s x s``, no causal discount, as Megatron-LM counts), the MLP (x 3/2 when gated) and
  the logit layer over the *padded* vocabulary. Activation recomputation is not counted:
  this is *model* FLOPs, so MFU is comparable across recompute settings.
- MFU = achieved model TFLOP/s per device / stated peak per device. The peak is a recipe
  value (``logging.peak_tflops``), default 989 = H100 SXM dense BF16 (NVIDIA datasheet, no
  sparsity). On CPU the figure is meaningless and we print it anyway: it is what the formula
  says for the stated peak.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FlopShape:
    """The model dimensions Megatron-LM's FLOP formula needs (padded vocabulary included)."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    kv_channels: int
    padded_vocab_size: int
    gated: bool


def flop_shape(model_config, tp: int = 1) -> FlopShape:
    """Shape numbers from a ``megatron_ar.models.ModelConfig``."""
    return FlopShape(
        num_layers=model_config.num_layers,
        hidden_size=model_config.hidden_size,
        ffn_hidden_size=model_config.ffn_hidden_size,
        num_attention_heads=model_config.num_attention_heads,
        num_query_groups=model_config.groups,
        kv_channels=model_config.head_dim,
        padded_vocab_size=model_config.padded_vocab_size(tp),
        gated=model_config.gated,
    )


def flops_per_step(shape: FlopShape, batch_size: int, seq_length: int) -> float:
    """Model FLOPs of one training step (forward + backward) over ``batch_size`` sequences."""
    L, h, s = shape.num_layers, shape.hidden_size, seq_length
    q_ratio = shape.kv_channels * shape.num_attention_heads / h
    gqa = shape.num_query_groups / shape.num_attention_heads
    attention = (1 + gqa + s / h) * q_ratio  # Q,O + K,V (GQA) + scores/context, in units of h^2
    mlp = (shape.ffn_hidden_size / h) * (1.5 if shape.gated else 1.0)
    logits = shape.padded_vocab_size / (2 * L * h)
    three_passes_two_gemms_two_flops = 3 * 2 * 2
    return float(three_passes_two_gemms_two_flops * batch_size * s * L * h * h
                 * (attention + mlp + logits))


def throughput(flops: float, seconds: float, world_size: int, peak_tflops: float) -> dict:
    """TFLOP/s per device and MFU for one step that took ``seconds`` on ``world_size`` devices."""
    per_dev = flops / max(seconds, 1e-12) / world_size / 1e12
    return {"tflops_per_device": per_dev, "mfu": per_dev / peak_tflops}

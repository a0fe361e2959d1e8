"""Fused RMSNorm (+ residual add): autograd Functions over the csrc/ kernels and a functional API.

``rms_norm(x, weight, eps, zero_centered_gamma=..., residual=..., mode=...)`` computes, over the
last dim, ``y = x * rsqrt(mean(x^2) + eps) * g`` with ``g = w`` (Llama), ``1 + w`` (Gemma,
``zero_centered_gamma``) or 1 (``weight=None``, nanochat), in fp32, the result in ``x``'s dtype,
and optionally the residual add:

- ``mode="none"``: returns ``y``;
- ``mode="add_after"``: returns ``residual + y`` (Gemma-2's post-norm followed by the residual
  add; :class:`megatron_ar.models.modules.SandwichTransformerLayer` uses it). ``y`` is rounded to
  ``x``'s dtype before the add, exactly as the unfused ``residual + norm(x)``;
- ``mode="add_before"``: returns ``(y, h)`` with ``h = x + residual`` and ``y = norm(h)``
  (vLLM's ``fused_add_rms_norm``). No layer uses it yet: megatron-core's pre-norm layers do the
  residual add and the next pre-norm inside their own ``forward``, which we do not copy; it is
  exposed and tested for a future layer of ours.

Design choices and trade-offs
- One CUDA build (``megatron_ar._ext.rmsnorm``) and one CPU build (``rmsnorm_cpu``) run the same
  per-row functions (``csrc/include/mar/rmsnorm.h``); :func:`megatron_ar.kernels.extension` picks
  the build for ``x``'s device. Without it (or for dtypes other than fp32/bf16) a pure-torch
  implementation of the same math runs (:func:`reference_rms_norm`, autograd by torch) and
  :func:`megatron_ar._ext.warn_fallback` logs once that the extension is missing.
- Backward saves the normalised input (``x``, or ``h`` for ``add_before``) and one fp32 ``rstd``
  per row; ``xhat`` is recomputed. ``dw`` comes back in fp32 (summed in a fixed order, so it is
  deterministic) and is cast to the weight's dtype, as autograd of ``w.float()`` does.
- The residual's gradient is the output's gradient (``add_after``) or ``dx`` (``add_before``);
  for ``add_before`` the gradient that reaches ``h`` directly (``h`` feeds the next residual) is
  added in the kernel.
- Strict device emulation (:mod:`megatron_ar.runtime.strict`) cannot see inside an extension:
  the inputs' placements are checked here (a CPU weight with a GPU activation raises like CUDA
  would) and the outputs get the activation's placement.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from megatron_ar import _ext
from megatron_ar.kernels import extension

__all__ = ["rms_norm", "reference_rms_norm", "MODES", "WEIGHT_KINDS"]

MODES = {"none": 0, "add_after": 1, "add_before": 2}
WEIGHT_KINDS = {"none": 0, "w": 1, "1+w": 2}
_DTYPES = (torch.float32, torch.bfloat16)


def _kind(weight: Optional[torch.Tensor], zero_centered_gamma: bool) -> int:
    if weight is None:
        return WEIGHT_KINDS["none"]
    return WEIGHT_KINDS["1+w" if zero_centered_gamma else "w"]


def reference_rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, eps: float = 1e-5,
                       *, zero_centered_gamma: bool = False,
                       residual: Optional[torch.Tensor] = None, mode: str = "none"):
    """The unfused torch math (the fallback, and the oracle of the tests): same arguments and
    results as :func:`rms_norm`."""
    _check_mode(mode, residual)
    h = x + residual if mode == "add_before" else x
    y = torch.nn.functional.rms_norm(h.float(), (h.shape[-1],), eps=eps)
    if weight is not None:
        w = weight.float()
        y = y * (1.0 + w if zero_centered_gamma else w)
    y = y.to(x.dtype)
    if mode == "add_after":
        return residual + y
    if mode == "add_before":
        return y, h
    return y


def _check_mode(mode: str, residual) -> None:
    if mode not in MODES:
        raise ValueError(f"rms_norm: mode must be one of {tuple(MODES)}, got {mode!r}")
    if (mode == "none") != (residual is None):
        raise ValueError(f"rms_norm: mode={mode!r} " + (
            "takes no residual" if mode == "none" else "needs a residual"))


def _check_placements(*tensors) -> int:
    """Strict device emulation: the placement of the tensors, raising on a CPU/GPU mix."""
    from megatron_ar.runtime import strict

    places = {strict.placement(t) for t in tensors if t is not None}
    if strict.HOST in places and strict.DEVICE in places:
        caller, ours = strict.locate()
        raise strict.DeviceMismatchError(
            "megatron_ar.kernels.rms_norm", "tensors on the emulated GPU and on the CPU "
            "(Expected all tensors to be on the same device)", caller, ours)
    return strict.DEVICE if strict.DEVICE in places else (
        strict.HOST if strict.HOST in places else strict.UNKNOWN)


def _tag(place: int, *tensors) -> None:
    from megatron_ar.runtime import strict

    if place != strict.UNKNOWN:
        for t in tensors:
            if t is not None:
                setattr(t, strict.TAG, place)


class _FusedRMSNorm(torch.autograd.Function):
    """Rows ``[rows, n]``; returns ``out`` (modes none / add_after) or ``(y, h)`` (add_before)."""

    @staticmethod
    def forward(ctx, x, residual, weight, kind, mode, eps, ext, place):
        out, h, rstd = ext.forward(x, residual, weight, kind, mode, eps)
        _tag(place, out, h, rstd)
        ctx.ext, ctx.kind, ctx.mode, ctx.place = ext, kind, mode, place
        ctx.save_for_backward(h if mode == MODES["add_before"] else x, weight, rstd)
        if mode == MODES["add_before"]:
            return out, h
        return out

    @staticmethod
    def backward(ctx, dout, dh=None):
        xin, weight, rstd = ctx.saved_tensors
        if dout is None:  # add_before with y unused
            dout = torch.zeros_like(xin)
        dout = dout.contiguous()
        dh = dh.contiguous() if dh is not None else None
        dx, dw = ctx.ext.backward(dout, dh, xin, weight, rstd, ctx.kind)
        _tag(ctx.place, dx, dw)
        if dw is not None:
            dw = dw.to(weight.dtype)
        if ctx.mode == MODES["add_after"]:
            dres = dout
        elif ctx.mode == MODES["add_before"]:
            dres = dx
        else:
            dres = None
        return dx, dres, dw, None, None, None, None, None


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, eps: float = 1e-5, *,
             zero_centered_gamma: bool = False, residual: Optional[torch.Tensor] = None,
             mode: str = "none", use_extension: bool = True
             ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Fused RMSNorm over the last dim (module docstring). ``use_extension=False`` runs the
    pure-torch implementation (no warning: an explicit choice)."""
    _check_mode(mode, residual)
    n = x.shape[-1]
    if weight is not None and tuple(weight.shape) != (n,):
        raise ValueError(f"rms_norm: weight has shape {tuple(weight.shape)}, expected ({n},)")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"rms_norm: residual has shape {tuple(residual.shape)}, expected "
                         f"{tuple(x.shape)}")
    if residual is not None and residual.dtype != x.dtype:
        raise ValueError(f"rms_norm: residual dtype {residual.dtype} differs from x's {x.dtype}")
    ext = extension("rmsnorm", x.device) if use_extension else None
    if (ext is None or x.dtype not in _DTYPES or x.numel() == 0
            or (weight is not None and weight.dtype not in _DTYPES)):
        if use_extension and ext is None:
            name = "rmsnorm" if x.device.type == "cuda" else "rmsnorm_cpu"
            _ext.warn_fallback(name, "RMSNorm runs as unfused torch ops (more memory traffic)")
        return reference_rms_norm(x, weight, eps, zero_centered_gamma=zero_centered_gamma,
                                  residual=residual, mode=mode)
    place = _check_placements(x, residual, weight)
    rows = x.contiguous().view(-1, n)
    res = residual.contiguous().view(-1, n) if residual is not None else None
    w = weight.contiguous() if weight is not None else None
    out = _FusedRMSNorm.apply(rows, res, w, _kind(weight, zero_centered_gamma), MODES[mode],
                              float(eps), ext, place)
    if mode == "add_before":
        return out[0].view(x.shape), out[1].view(x.shape)
    return out.view(x.shape)

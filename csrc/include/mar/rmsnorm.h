// Per-row math of the fused RMSNorm (+ residual add), shared by the CPU extension
// (csrc/rmsnorm_cpu) and the CUDA kernels (csrc/rmsnorm/rmsnorm.cu).
//
//   xhat = x * rstd,  rstd = rsqrt(mean(x^2) + eps),  y = xhat * g,  g = w | 1 + w | 1
//
// Residual modes:
// - kNoResidual:   out = y.
// - kAddAfter:     out = residual + y (Gemma-2 post-norm followed by the residual add; y is
//                  rounded to the storage type before the add, as the unfused
//                  ``residual + norm(x)`` does, so bf16 results round at the same points).
// - kAddBefore:    h = x + residual (rounded to the storage type), y = norm(h); both are outputs
//                  (vLLM's fused_add_rms_norm).
//
// Choices:
// - Every function works on the elements j = start, start + stride, ... of one row, so one CPU
//   thread calls it with (0, 1) and a CUDA thread of a block-per-row kernel with
//   (threadIdx.x, blockDim.x); the caller reduces the returned partial sums (nothing for the
//   CPU, a block reduction on the GPU) and passes the total to the next phase. The arithmetic
//   per element is therefore identical; only the summation order of mean(x^2) and of the
//   backward's dot product differs (fp32 accumulation, ~1e-7 relative).
// - Only rstd (fp32, one per row) is saved for backward; xhat is recomputed from the input (or
//   from h for kAddBefore), which costs a multiply instead of a row of memory.
// - dw is accumulated by the caller-owned fp32 row ``dw_acc`` (the same thread always owns the
//   same columns, so no atomics); callers reduce the per-thread/per-block rows in a fixed order,
//   so results are deterministic.
#pragma once

#include <math.h>

#include "mar/common.h"

namespace mar {
namespace rmsnorm {

enum WeightKind : int { kNoWeight = 0, kWeight = 1, kOnePlusWeight = 2 };
enum ResidualMode : int { kNoResidual = 0, kAddAfter = 1, kAddBefore = 2 };

// v rounded to the storage type T (identity for fp32).
MAR_HD float round_to(const float*, float v) { return v; }
MAR_HD float round_to(const bf16*, float v) { return bf16_to_float(float_to_bf16(v)); }

template <typename W>
MAR_HD float gain(const W* w, int kind, int64_t j) {
  if (kind == kNoWeight) return 1.0f;
  float v = load(w, j);
  return kind == kOnePlusWeight ? 1.0f + v : v;
}

// The normalised input of element j: x, or round(x + residual) for kAddBefore.
template <typename T>
MAR_HD float input_at(const T* x, const T* residual, int mode, int64_t j) {
  float v = load(x, j);
  if (mode == kAddBefore) v = round_to(x, v + load(residual, j));
  return v;
}

// Phase 1 of forward: this thread's partial sum of squares of the normalised input.
template <typename T>
MAR_HD float forward_sumsq(const T* x, const T* residual, int mode, int64_t n, int64_t start,
                           int64_t stride) {
  float acc = 0.0f;
  for (int64_t j = start; j < n; j += stride) {
    float v = input_at(x, residual, mode, j);
    acc += v * v;
  }
  return acc;
}

MAR_HD float rstd_from_sumsq(float sumsq, int64_t n, float eps) {
#if defined(__CUDA_ARCH__)
  return rsqrtf(sumsq / static_cast<float>(n) + eps);
#else
  return 1.0f / sqrtf(sumsq / static_cast<float>(n) + eps);
#endif
}

// Phase 2 of forward: write out (and h for kAddBefore) for this thread's elements.
template <typename T, typename W>
MAR_HD void forward_apply(const T* x, const T* residual, const W* w, int kind, int mode,
                          float rstd, int64_t n, int64_t start, int64_t stride, T* out, T* h) {
  for (int64_t j = start; j < n; j += stride) {
    float v = input_at(x, residual, mode, j);
    float y = v * rstd * gain(w, kind, j);
    if (mode == kAddAfter) {
      y = load(residual, j) + round_to(out, y);
    } else if (mode == kAddBefore) {
      store(h, j, v);
    }
    store(out, j, y);
  }
}

// Phase 1 of backward: this thread's partial sum of g * dy * xhat (xin: the normalised input,
// i.e. x, or h for kAddBefore).
template <typename T, typename W>
MAR_HD float backward_dot(const T* dy, const T* xin, const W* w, int kind, float rstd, int64_t n,
                          int64_t start, int64_t stride) {
  float acc = 0.0f;
  for (int64_t j = start; j < n; j += stride) {
    acc += gain(w, kind, j) * load(dy, j) * load(xin, j) * rstd;
  }
  return acc;
}

// Phase 2 of backward: dx = rstd * (g * dy - xhat * dot / n) (+ dh, the gradient reaching h
// directly for kAddBefore; may be null); dw_acc[j] += dy * xhat (null: no weight).
template <typename T, typename W>
MAR_HD void backward_apply(const T* dy, const T* dh, const T* xin, const W* w, int kind, float rstd,
                           float dot, int64_t n, int64_t start, int64_t stride, T* dx,
                           float* dw_acc) {
  float mean_dot = dot / static_cast<float>(n);
  for (int64_t j = start; j < n; j += stride) {
    float g = load(dy, j);
    float xhat = load(xin, j) * rstd;
    float v = rstd * (gain(w, kind, j) * g - xhat * mean_dot);
    if (dh != nullptr) v += load(dh, j);
    store(dx, j, v);
    if (dw_acc != nullptr) dw_acc[j] += g * xhat;
  }
}

// One whole row on one thread (the CPU extension): forward, returns rstd.
template <typename T, typename W>
MAR_HD float forward_row(const T* x, const T* residual, const W* w, int kind, int mode, float eps,
                         int64_t n, T* out, T* h) {
  float rstd = rstd_from_sumsq(forward_sumsq(x, residual, mode, n, 0, 1), n, eps);
  forward_apply(x, residual, w, kind, mode, rstd, n, 0, 1, out, h);
  return rstd;
}

// One whole row on one thread: backward.
template <typename T, typename W>
MAR_HD void backward_row(const T* dy, const T* dh, const T* xin, const W* w, int kind, float rstd,
                         int64_t n, T* dx, float* dw_acc) {
  float dot = backward_dot(dy, xin, w, kind, rstd, n, 0, 1);
  backward_apply(dy, dh, xin, w, kind, rstd, dot, n, 0, 1, dx, dw_acc);
}

}  // namespace rmsnorm
}  // namespace mar

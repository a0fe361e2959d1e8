// Per-row math of the fused vocab-parallel cross-entropy (megatron_ar.kernels.cross_entropy),
// shared by the CUDA kernel (csrc/xent/xent_kernels.cu, one thread block per row) and the CPU
// extension (csrc/xent_cpu/xent_cpu.cpp, one row per at::parallel_for item): both call these
// functions, so the CPU build that CI tests runs the GPU's arithmetic.
//
// Layout: logits [rows, v_local] with a contiguous last dim; this rank owns the global vocab ids
// [vocab_start, vocab_end). z = softcap(x) = cap * tanh(x / cap) (cap <= 0: z = x).
//
// Choices:
// - Forward statistics in ONE read of the shard: an online (running max, sum of exp) pair
//   (Milakov & Gimelshein 2018). Each thread keeps its own pair over a strided slice of the row
//   (`stride` = blockDim.x on the GPU, 1 on the CPU) and pairs merge with `combine`, the same
//   rule the TP step applies across ranks (m = max_r m_r, s = sum_r s_r exp(m_r - m)): one
//   all-reduce MAX and one SUM. The online update costs an extra exp only when the running max
//   grows (O(log n) times for random data).
// - Only the all-reduced (max, sumexp) pair (two fp32 per row) is kept for the backward, which
//   recomputes z = softcap(x) and softmax = exp(z - max) / sumexp from the logits buffer and
//   overwrites that buffer with the gradient: no [rows, v] fp32 tensor is ever materialised.
//   exp(z - max) / sumexp rather than exp(z - lse): z - max is exact for nearby values, while
//   rounding lse = max + log(sumexp) to fp32 costs ~ulp(lse) relative error in every
//   probability (4e-6 at |logits| ~ 80), above the 1e-6 agreement with megatron-core we test.
// - All arithmetic is fp32 (bf16 loads are widened by mar::load); tanhf/expf/logf exist on both
//   sides. The soft-cap derivative is written from z (1 - (z/cap)^2), which is tanh' without a
//   second tanh.
// - Ignored rows (target == ignore_index) have target logit 0 and gradient 0; their loss is
//   zeroed by the caller (it owns the all-reduced statistics).
#pragma once

#include <math.h>

#include "mar/common.h"

namespace mar {
namespace xent {

// Running (max, sum of exp(z - max)) of a set of capped logits; m = -inf means "empty".
struct Stats {
  float m;
  float s;
};

MAR_HD Stats empty_stats() {
  Stats st;
  st.m = -INFINITY;
  st.s = 0.f;
  return st;
}

MAR_HD float softcap(float x, float cap) { return cap > 0.f ? cap * tanhf(x / cap) : x; }

// d softcap(x) / dx written from z = softcap(x): 1 - tanh^2 = 1 - (z / cap)^2.
MAR_HD float softcap_grad(float z, float cap) {
  if (cap <= 0.f) return 1.f;
  float t = z / cap;
  return 1.f - t * t;
}

MAR_HD void update(Stats& st, float z) {
  if (z > st.m) {
    // New max: rescale what was summed so far (exp(-inf) = 0 covers the empty start).
    st.s = st.s * expf(st.m - z) + 1.f;
    st.m = z;
  } else {
    st.s += expf(z - st.m);
  }
}

// Merge two partial statistics (threads of a block, or TP ranks in the caller).
MAR_HD Stats combine(Stats a, Stats b) {
  Stats out;
  out.m = a.m > b.m ? a.m : b.m;
  if (out.m == -INFINITY) {  // both empty: avoid exp(-inf - -inf) = NaN
    out.s = 0.f;
    return out;
  }
  out.s = a.s * expf(a.m - out.m) + b.s * expf(b.m - out.m);
  return out;
}

// Statistics of row[begin], row[begin + stride], ... < n.
template <typename T>
MAR_HD Stats row_stats(const T* row, int64_t begin, int64_t n, int64_t stride, float cap) {
  Stats st = empty_stats();
  for (int64_t j = begin; j < n; j += stride) update(st, softcap(load(row, j), cap));
  return st;
}

// The capped logit of the target when this shard holds it, else 0 (the TP sum adds the
// owner's value); 0 for ignored rows too.
template <typename T>
MAR_HD float target_logit(const T* row, int64_t target, int64_t vocab_start, int64_t vocab_end,
                          float cap, int64_t ignore_index) {
  if (target == ignore_index || target < vocab_start || target >= vocab_end) return 0.f;
  return softcap(load(row, target - vocab_start), cap);
}

// d loss / d x_j for one element: dloss * (exp(z_j - max) / sumexp - [j == target]) * dz/dx.
MAR_HD float grad_element(float x, float max, float sumexp, float cap, bool is_target,
                          float dloss) {
  float z = softcap(x, cap);
  float p = expf(z - max) / sumexp;
  return dloss * (p - (is_target ? 1.f : 0.f)) * softcap_grad(z, cap);
}

// Overwrite row[begin], row[begin + stride], ... < n with the gradient. `local_target` is the
// target's column in this shard or -1; ignored rows get 0 everywhere.
template <typename T>
MAR_HD void row_backward(T* row, int64_t begin, int64_t n, int64_t stride, int64_t local_target,
                         bool ignored, float max, float sumexp, float cap, float dloss) {
  if (ignored) {
    for (int64_t j = begin; j < n; j += stride) store(row, j, 0.f);
    return;
  }
  for (int64_t j = begin; j < n; j += stride)
    store(row, j, grad_element(load(row, j), max, sumexp, cap, j == local_target, dloss));
}

// Column of `target` in the shard [vocab_start, vocab_end), or -1.
MAR_HD int64_t local_column(int64_t target, int64_t vocab_start, int64_t vocab_end) {
  return (target >= vocab_start && target < vocab_end) ? target - vocab_start : -1;
}

}  // namespace xent
}  // namespace mar

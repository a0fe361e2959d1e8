// CUDA build of the fused vocab-parallel cross-entropy: one thread block per row, each thread a
// strided slice of the row through the per-row functions of csrc/include/mar/xent.h (the CPU
// extension csrc/xent_cpu/ runs the same functions with stride 1). No torch header: raw pointers,
// sizes and a stream in, so .ci/check_cuda.sh compile-checks this file with bare nvcc; the torch
// binding is csrc/xent/xent.cpp. (Not named xent.cu: setuptools names objects after the source's
// stem, so xent.cu and xent.cpp would both compile to xent.o and one would overwrite the other.)
//
// Choices:
// - Forward: every thread folds its slice into an online (max, sumexp) pair; the block merges
//   the pairs with warp shuffles then one shared-memory step (mar::xent::combine), so the row is
//   read from global memory once. Thread 0 reads the target logit (one element).
// - Backward: the (max, sumexp) and dloss of the row are scalars; each thread rewrites its
//   slice in place.
// - 512 threads per block: a shard of a 128k+ vocabulary gives each thread >= 30 elements at
//   TP=8, enough to hide the latency of the loads; short rows simply leave threads idle.
#include <cuda_runtime.h>
#include <stdint.h>

#include "mar/xent.h"

namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ mar::xent::Stats warp_combine(mar::xent::Stats st) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    mar::xent::Stats other;
    other.m = __shfl_xor_sync(0xffffffffu, st.m, offset);
    other.s = __shfl_xor_sync(0xffffffffu, st.s, offset);
    st = mar::xent::combine(st, other);
  }
  return st;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const T* __restrict__ logits, int64_t n, int64_t ld,
                   const int64_t* __restrict__ target, int64_t vocab_start, int64_t vocab_end,
                   float cap, int64_t ignore_index, float* __restrict__ row_max,
                   float* __restrict__ row_sumexp, float* __restrict__ target_logit) {
  const int64_t r = blockIdx.x;
  const T* row = logits + r * ld;
  mar::xent::Stats st = mar::xent::row_stats(row, threadIdx.x, n, kThreads, cap);
  st = warp_combine(st);
  __shared__ float sm[kWarps], ss[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sm[warp] = st.m;
    ss[warp] = st.s;
  }
  __syncthreads();
  if (warp == 0) {
    st = lane < kWarps ? mar::xent::Stats{sm[lane], ss[lane]} : mar::xent::empty_stats();
    st = warp_combine(st);
    if (lane == 0) {
      row_max[r] = st.m;
      row_sumexp[r] = st.s;
      target_logit[r] =
          mar::xent::target_logit(row, target[r], vocab_start, vocab_end, cap, ignore_index);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(T* __restrict__ logits, int64_t n, int64_t ld,
                    const int64_t* __restrict__ target, const float* __restrict__ row_max,
                    const float* __restrict__ row_sumexp,
                    const float* __restrict__ grad_loss, int64_t vocab_start, int64_t vocab_end,
                    float cap, int64_t ignore_index) {
  const int64_t r = blockIdx.x;
  const int64_t t = target[r];
  mar::xent::row_backward(logits + r * ld, threadIdx.x, n, kThreads,
                          mar::xent::local_column(t, vocab_start, vocab_end), t == ignore_index,
                          row_max[r], row_sumexp[r], cap, grad_loss[r]);
}

template <typename T>
cudaError_t launch_forward(const void* logits, int64_t rows, int64_t n, int64_t ld,
                           const int64_t* target, int64_t vocab_start, int64_t vocab_end,
                           float cap, int64_t ignore_index, float* row_max, float* row_sumexp,
                           float* target_logit, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  forward_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      static_cast<const T*>(logits), n, ld, target, vocab_start, vocab_end, cap, ignore_index,
      row_max, row_sumexp, target_logit);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_backward(void* logits, int64_t rows, int64_t n, int64_t ld,
                            const int64_t* target, const float* row_max, const float* row_sumexp,
                            const float* grad_loss, int64_t vocab_start, int64_t vocab_end,
                            float cap, int64_t ignore_index, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  backward_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      static_cast<T*>(logits), n, ld, target, row_max, row_sumexp, grad_loss, vocab_start,
      vocab_end, cap, ignore_index);
  return cudaGetLastError();
}

}  // namespace

// Launchers called by csrc/xent/xent.cpp (declared there with the same signatures).
// is_bf16: logits are bfloat16 (raw 16 bits, mar::bf16), else float32.
cudaError_t mar_xent_forward(const void* logits, bool is_bf16, int64_t rows, int64_t n,
                             int64_t ld, const int64_t* target, int64_t vocab_start,
                             int64_t vocab_end, float cap, int64_t ignore_index, float* row_max,
                             float* row_sumexp, float* target_logit, cudaStream_t stream) {
  return is_bf16 ? launch_forward<mar::bf16>(logits, rows, n, ld, target, vocab_start, vocab_end,
                                             cap, ignore_index, row_max, row_sumexp,
                                             target_logit, stream)
                 : launch_forward<float>(logits, rows, n, ld, target, vocab_start, vocab_end, cap,
                                         ignore_index, row_max, row_sumexp, target_logit, stream);
}

cudaError_t mar_xent_backward(void* logits, bool is_bf16, int64_t rows, int64_t n, int64_t ld,
                              const int64_t* target, const float* row_max,
                              const float* row_sumexp, const float* grad_loss,
                              int64_t vocab_start, int64_t vocab_end, float cap,
                              int64_t ignore_index, cudaStream_t stream) {
  return is_bf16 ? launch_backward<mar::bf16>(logits, rows, n, ld, target, row_max, row_sumexp,
                                              grad_loss, vocab_start, vocab_end, cap,
                                              ignore_index, stream)
                 : launch_backward<float>(logits, rows, n, ld, target, row_max, row_sumexp,
                                          grad_loss, vocab_start, vocab_end, cap, ignore_index,
                                          stream);
}

// CUDA kernels of the fused RMSNorm (+ residual add): one block per row (grid-stride over rows),
// each thread running the per-row functions of csrc/include/mar/rmsnorm.h on the elements
// threadIdx.x, threadIdx.x + blockDim.x, ...; the partial sums are combined with a warp-shuffle
// block reduction. No torch header (see rmsnorm_launch.h).
//
// Choices:
// - A block per row rather than a warp per row: the rows of a transformer are long (hidden
//   size 1024-16384), so a block keeps every SM busy with few rows in flight and needs no
//   per-hidden-size template.
// - dw: the backward grid is capped (a few blocks per SM); each block walks its rows and each
//   thread adds dy * xhat into the block's own fp32 row of a [blocks, n] workspace at the
//   columns it always owns (no atomics), then a second kernel sums the rows in block order, so
//   dw is deterministic run to run.
#include <cuda_runtime.h>

#include "mar/rmsnorm.h"
#include "rmsnorm_launch.h"

namespace {

namespace R = mar::rmsnorm;

// Sum of v over the block; every thread gets the result. shm: 33 floats. Starts with a barrier
// so that a previous call's readers are done with shm.
__device__ float block_sum(float v, float* shm) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) shm[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int warps = (blockDim.x + 31) >> 5;
    v = lane < warps ? shm[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) shm[32] = v;
  }
  __syncthreads();
  return shm[32];
}

template <typename T, typename W>
__global__ void forward_kernel(const T* __restrict__ x, const T* __restrict__ residual,
                               const W* __restrict__ w, int kind, int mode, float eps,
                               int64_t rows, int64_t n, T* __restrict__ out, T* __restrict__ h,
                               float* __restrict__ rstd) {
  __shared__ float shm[33];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t o = r * n;
    const T* rr = residual ? residual + o : nullptr;
    float s = block_sum(R::forward_sumsq(x + o, rr, mode, n, threadIdx.x, blockDim.x), shm);
    float rs = R::rstd_from_sumsq(s, n, eps);
    R::forward_apply(x + o, rr, w, kind, mode, rs, n, threadIdx.x, blockDim.x, out + o,
                     h ? h + o : nullptr);
    if (threadIdx.x == 0) rstd[r] = rs;
  }
}

template <typename T, typename W>
__global__ void backward_kernel(const T* __restrict__ dy, const T* __restrict__ dh,
                                const T* __restrict__ xin, const W* __restrict__ w,
                                const float* __restrict__ rstd, int kind, int64_t rows, int64_t n,
                                T* __restrict__ dx, float* __restrict__ dw_partial) {
  __shared__ float shm[33];
  float* acc = dw_partial ? dw_partial + blockIdx.x * n : nullptr;
  if (acc) {
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) acc[j] = 0.0f;  // owned columns only
  }
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t o = r * n;
    const float rs = rstd[r];
    float dot = block_sum(R::backward_dot(dy + o, xin + o, w, kind, rs, n, threadIdx.x,
                                          blockDim.x), shm);
    R::backward_apply(dy + o, dh ? dh + o : nullptr, xin + o, w, kind, rs, dot, n, threadIdx.x,
                      blockDim.x, dx + o, acc);
  }
}

__global__ void reduce_dw_kernel(const float* __restrict__ partial, int64_t blocks, int64_t n,
                                 float* __restrict__ dw) {
  for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < n;
       j += (int64_t)gridDim.x * blockDim.x) {
    float s = 0.0f;
    for (int64_t b = 0; b < blocks; ++b) s += partial[b * n + j];  // fixed order
    dw[j] = s;
  }
}

int threads_for(int64_t n) {
  // ~8 elements per thread for long rows, at least one warp, at most 1024 threads
  int64_t t = 32;
  while (t < 1024 && t * 8 < n) t *= 2;
  return static_cast<int>(t);
}

unsigned grid_rows(int64_t rows) {
  return static_cast<unsigned>(rows < 65535 ? (rows > 0 ? rows : 1) : 65535);
}

template <typename F>
cudaError_t dispatch(mar::rmsnorm_cuda::DType xt, mar::rmsnorm_cuda::DType wt, F&& f) {
  using mar::bf16;
  const bool xb = xt == mar::rmsnorm_cuda::kBFloat16, wb = wt == mar::rmsnorm_cuda::kBFloat16;
  if (!xb && !wb) f(float{}, float{});
  else if (!xb && wb) f(float{}, bf16{});
  else if (xb && !wb) f(bf16{}, float{});
  else f(bf16{}, bf16{});
  return cudaGetLastError();
}

}  // namespace

namespace mar {
namespace rmsnorm_cuda {

cudaError_t forward(DType xt, DType wt, const void* x, const void* residual, const void* w,
                    int kind, int mode, float eps, int64_t rows, int64_t n, void* out, void* h,
                    float* rstd, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return dispatch(xt, wt, [&](auto t_tag, auto w_tag) {
    using T = decltype(t_tag);
    using Wt = decltype(w_tag);
    forward_kernel<T, Wt><<<grid_rows(rows), threads_for(n), 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(residual), static_cast<const Wt*>(w),
        kind, mode, eps, rows, n, static_cast<T*>(out), static_cast<T*>(h), rstd);
  });
}

int64_t backward_blocks(int64_t rows) {
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) == cudaSuccess) {
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  }
  const int64_t cap = 4 * static_cast<int64_t>(sms);
  return rows < cap ? (rows > 0 ? rows : 1) : cap;
}

cudaError_t backward(DType xt, DType wt, const void* dy, const void* dh, const void* xin,
                     const void* w, const float* rstd, int kind, int64_t rows, int64_t n,
                     void* dx, float* dw_partial, int64_t blocks, float* dw,
                     cudaStream_t stream) {
  const bool has_w = kind != R::kNoWeight;
  if (rows == 0) {
    if (has_w) return cudaMemsetAsync(dw, 0, n * sizeof(float), stream);
    return cudaSuccess;
  }
  cudaError_t err = dispatch(xt, wt, [&](auto t_tag, auto w_tag) {
    using T = decltype(t_tag);
    using Wt = decltype(w_tag);
    backward_kernel<T, Wt><<<static_cast<unsigned>(blocks), threads_for(n), 0, stream>>>(
        static_cast<const T*>(dy), static_cast<const T*>(dh), static_cast<const T*>(xin),
        static_cast<const Wt*>(w), rstd, kind, rows, n, static_cast<T*>(dx),
        has_w ? dw_partial : nullptr);
  });
  if (err != cudaSuccess || !has_w) return err;
  const int threads = 256;
  const int64_t grid = (n + threads - 1) / threads;
  reduce_dw_kernel<<<static_cast<unsigned>(grid < 65535 ? grid : 65535), threads, 0, stream>>>(
      dw_partial, blocks, n, dw);
  return cudaGetLastError();
}

}  // namespace rmsnorm_cuda
}  // namespace mar

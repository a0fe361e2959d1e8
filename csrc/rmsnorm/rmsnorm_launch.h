// Launchers of the fused RMSNorm CUDA kernels (rmsnorm.cu), called by the torch binding
// (rmsnorm.cpp). Plain pointers, sizes and a stream: no torch header, so rmsnorm.cu compiles
// with bare nvcc (.ci/check_cuda.sh). Element types are codes (kFloat32, kBFloat16); kind and
// mode are mar::rmsnorm::WeightKind / ResidualMode (csrc/include/mar/rmsnorm.h).
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

namespace mar {
namespace rmsnorm_cuda {

enum DType : int { kFloat32 = 0, kBFloat16 = 1 };

// out (and h for add_before) = fused RMSNorm of [rows, n] rows; rstd: [rows] fp32.
cudaError_t forward(DType xt, DType wt, const void* x, const void* residual, const void* w,
                    int kind, int mode, float eps, int64_t rows, int64_t n, void* out, void* h,
                    float* rstd, cudaStream_t stream);

// Number of blocks the backward kernel uses for ``rows`` rows on the current device: the
// caller allocates a [blocks, n] fp32 workspace for the per-block dw partials.
int64_t backward_blocks(int64_t rows);

// dx (+ dh when given) and, for kind != none, dw (fp32, [n]) summed in a fixed block order.
cudaError_t backward(DType xt, DType wt, const void* dy, const void* dh, const void* xin,
                     const void* w, const float* rstd, int kind, int64_t rows, int64_t n,
                     void* dx, float* dw_partial, int64_t blocks, float* dw,
                     cudaStream_t stream);

}  // namespace rmsnorm_cuda
}  // namespace mar

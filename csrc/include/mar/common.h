// Shared by host (C++) and device (CUDA) code: the per-row math of megatron_ar's kernels lives
// in headers under csrc/include/mar/ written against these helpers, so the CPU extension built
// in CI executes the very functions the CUDA kernels call.
//
// Choices:
// - MAR_HD marks a function for both compilers (__host__ __device__ under nvcc, plain inline
//   otherwise); no torch header is included here, so the .cu files compile with bare nvcc.
// - bf16 is handled as its raw 16 bits (uint16_t) with round-to-nearest-even conversion, the
//   same rounding as torch's c10::BFloat16 and CUDA's __float2bfloat16_rn, so host and device
//   produce the same bits. Accumulation is always fp32.
#pragma once

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define MAR_HD __host__ __device__ __forceinline__
#else
#define MAR_HD inline
#endif

namespace mar {

struct bf16 {
  uint16_t bits;
};

MAR_HD float bf16_to_float(bf16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

MAR_HD bf16 float_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  bf16 out;
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) {  // NaN: keep it a quiet NaN
    out.bits = static_cast<uint16_t>((u >> 16) | 0x0040u);
    return out;
  }
  uint32_t rounding_bias = 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  out.bits = static_cast<uint16_t>((u + rounding_bias) >> 16);
  return out;
}

// Load / store any supported element type as fp32.
MAR_HD float load(const float* p, int64_t i) { return p[i]; }
MAR_HD float load(const bf16* p, int64_t i) { return bf16_to_float(p[i]); }
MAR_HD void store(float* p, int64_t i, float v) { p[i] = v; }
MAR_HD void store(bf16* p, int64_t i, float v) { p[i] = float_to_bf16(v); }

}  // namespace mar

// fp32 <-> fp16 / bf16 casts (the FP16 and BF16 codecs). Twins: lib/compress/cast.c.
// The per-element conversions are codec_math.h's (round to nearest even, NaN -> 0x7FFF), the
// same code the CPU runs, and accumulation is one correctly rounded add: bitwise equal.
//
// Work split: a grid-stride loop, one element per thread per step; consecutive threads touch
// consecutive elements, so loads and stores coalesce. Memory-bound.
// Bytes per element: encode reads 4, writes 2 (6); decode reads 2 and writes 4 (6), plus
// reads 4 more when accumulating (10).
#include <cuda_runtime.h>

#include "codec_common.cuh"
#include "kernels.h"

namespace {

constexpr int kThreads = 256;

__global__ void cast_f32_to_f16_kernel(const float *__restrict__ x, uint16_t *__restrict__ out, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    out[i] = lh_f32_to_f16(x[i]);
}

__global__ void cast_f32_to_bf16_kernel(const float *__restrict__ x, uint16_t *__restrict__ out, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    out[i] = lh_f32_to_bf16(x[i]);
}

template <bool BF16>
__global__ void cast_to_f32_kernel(const uint16_t *__restrict__ in, float *__restrict__ out, size_t n,
                                   int accumulate) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float v = BF16 ? lh_bf16_to_f32(in[i]) : lh_f16_to_f32(in[i]);
    out[i] = accumulate ? LH_FADD(out[i], v) : v;
  }
}

}  // namespace

extern "C" int lh_cuda_cast_f32_to_f16(const float *x, uint16_t *out, size_t n, void *stream) {
  if (n == 0)
    return 0;
  if (!x || !out)
    return (int)cudaErrorInvalidValue;
  cast_f32_to_f16_kernel<<<lh_codec::grid_for(n, kThreads), kThreads, 0, (cudaStream_t)stream>>>(x, out, n);
  return (int)cudaGetLastError();
}

extern "C" int lh_cuda_cast_f32_to_bf16(const float *x, uint16_t *out, size_t n, void *stream) {
  if (n == 0)
    return 0;
  if (!x || !out)
    return (int)cudaErrorInvalidValue;
  cast_f32_to_bf16_kernel<<<lh_codec::grid_for(n, kThreads), kThreads, 0, (cudaStream_t)stream>>>(x, out, n);
  return (int)cudaGetLastError();
}

extern "C" int lh_cuda_cast_f16_to_f32(const uint16_t *in, float *out, size_t n, int accumulate, void *stream) {
  if (n == 0)
    return 0;
  if (!in || !out)
    return (int)cudaErrorInvalidValue;
  cast_to_f32_kernel<false><<<lh_codec::grid_for(n, kThreads), kThreads, 0, (cudaStream_t)stream>>>(in, out, n,
                                                                                                   accumulate);
  return (int)cudaGetLastError();
}

extern "C" int lh_cuda_cast_bf16_to_f32(const uint16_t *in, float *out, size_t n, int accumulate, void *stream) {
  if (n == 0)
    return 0;
  if (!in || !out)
    return (int)cudaErrorInvalidValue;
  cast_to_f32_kernel<true><<<lh_codec::grid_for(n, kThreads), kThreads, 0, (cudaStream_t)stream>>>(in, out, n,
                                                                                                  accumulate);
  return (int)cudaGetLastError();
}

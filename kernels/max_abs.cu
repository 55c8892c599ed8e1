// max |x| over a device array, as float bits: the input check of the codecs' device path
// (lib/compress/codec.c). Twin: lh_qz_max_abs_bits (lib/compress/blockq.c).
//
// The bits of |x| (sign cleared) order like the values for finite x, and every infinity or NaN
// is >= 0x7F800000 above them all, so one max answers both "is anything non-finite" and "is
// anything above a limit". Max is exact and order-free: any reduction tree gives the twin's
// word. Each block reduces in registers and shared memory, then one atomicMax per block; the
// grid is capped so that the atomics stay few. Memory-bound: reads 4 bytes per element.
#include <cuda_runtime.h>

#include "codec_common.cuh"
#include "kernels.h"

namespace {

constexpr int kThreads = 256;
constexpr size_t kMaxBlocks = 1024;

__global__ void max_abs_bits_kernel(const float *__restrict__ x, size_t n, unsigned *__restrict__ out) {
  unsigned m = 0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const unsigned a = __float_as_uint(x[i]) & 0x7FFFFFFFu;
    m = a > m ? a : m;
  }
  for (int off = 16; off >= 1; off >>= 1) {
    const unsigned o = __shfl_xor_sync(lh_codec::kFullMask, m, off);
    m = o > m ? o : m;
  }
  __shared__ unsigned warp_max[kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0)
    warp_max[warp] = m;
  __syncthreads();
  if (warp == 0) {
    m = lane < kThreads / 32 ? warp_max[lane] : 0u;
    for (int off = 16; off >= 1; off >>= 1) {
      const unsigned o = __shfl_xor_sync(lh_codec::kFullMask, m, off);
      m = o > m ? o : m;
    }
    if (lane == 0 && m != 0)
      atomicMax(out, m);
  }
}

}  // namespace

extern "C" int lh_cuda_qz_max_abs_bits(const float *x, size_t n, uint32_t *out, void *stream) {
  if (!out || (n > 0 && !x))
    return (int)cudaErrorInvalidValue;
  cudaStream_t s = (cudaStream_t)stream;
  cudaError_t rc = cudaMemsetAsync(out, 0, sizeof *out, s);
  if (rc != cudaSuccess || n == 0)
    return (int)rc;
  size_t blocks = (n + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocks)
    blocks = kMaxBlocks;
  max_abs_bits_kernel<<<(unsigned)blocks, kThreads, 0, s>>>(x, n, reinterpret_cast<unsigned *>(out));
  return (int)cudaGetLastError();
}

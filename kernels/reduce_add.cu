// Element-wise reductions used by the ring all-reduce on device buffers.
// Twins: lib/collective/reduce.c. IEEE float add and divide are correctly rounded on both
// sides (no FMA contraction is possible here), so results are bitwise equal to the CPU's.
#include <cuda_runtime.h>

#include "kernels.h"

namespace {

__global__ void reduce_add_f32_kernel(float *__restrict__ acc, const float *__restrict__ x, size_t n) {
  // Grid-stride loop: one launch shape serves every n.
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    acc[i] = __fadd_rn(acc[i], x[i]);
}

__global__ void reduce_div_f32_kernel(float *__restrict__ x, float divisor, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    x[i] = __fdiv_rn(x[i], divisor);
}

__global__ void residual_add_f32_kernel(float *__restrict__ err, const float *__restrict__ in,
                                        const float *__restrict__ decoded, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    err[i] = __fadd_rn(err[i], __fsub_rn(in[i], decoded[i]));
}

unsigned grid_for(size_t n, unsigned block) {
  size_t blocks = (n + block - 1) / block;
  return (unsigned)(blocks < 65535 ? (blocks ? blocks : 1) : 65535);
}

}  // namespace

extern "C" int lh_cuda_reduce_add_f32(float *acc, const float *x, size_t n, void *stream) {
  if (n == 0)
    return 0;
  reduce_add_f32_kernel<<<grid_for(n, 256), 256, 0, (cudaStream_t)stream>>>(acc, x, n);
  return (int)cudaGetLastError();
}

extern "C" int lh_cuda_reduce_div_f32(float *x, float divisor, size_t n, void *stream) {
  if (n == 0)
    return 0;
  reduce_div_f32_kernel<<<grid_for(n, 256), 256, 0, (cudaStream_t)stream>>>(x, divisor, n);
  return (int)cudaGetLastError();
}

extern "C" int lh_cuda_residual_add_f32(float *err, const float *in, const float *decoded, size_t n, void *stream) {
  if (n == 0)
    return 0;
  residual_add_f32_kernel<<<grid_for(n, 256), 256, 0, (cudaStream_t)stream>>>(err, in, decoded, n);
  return (int)cudaGetLastError();
}

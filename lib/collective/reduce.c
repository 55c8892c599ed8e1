/* CPU twins of the reduction kernels, and dispatch to host or device. */
#include "collective/collective_internal.h"
#include "common/internal.h"

#ifdef LH_HAVE_CUDA
#include <cuda_runtime.h>
#include "kernels.h"
#endif

void lh_reduce_add_f32(float *acc, const float *x, size_t n) {
  for (size_t i = 0; i < n; i++)
    acc[i] += x[i];
}

void lh_reduce_div_f32(float *x, float divisor, size_t n) {
  for (size_t i = 0; i < n; i++)
    x[i] /= divisor;
}

#ifdef LH_HAVE_CUDA
static lh_status lh_cuda_result(int rc, const char *what) {
  if (rc == 0)
    rc = (int)cudaDeviceSynchronize();
  if (rc != 0)
    return lh_error(LH_ERR_CUDA, "%s: %s", what, cudaGetErrorString((cudaError_t)rc));
  return LH_SUCCESS;
}
#endif

lh_status lh_reduce_add(int on_device, float *acc, const float *x, size_t n) {
  if (!on_device) {
    lh_reduce_add_f32(acc, x, n);
    return LH_SUCCESS;
  }
#ifdef LH_HAVE_CUDA
  return lh_cuda_result(lh_cuda_reduce_add_f32(acc, x, n, NULL), "reduce_add_f32 kernel");
#else
  return lh_error(LH_ERR_NOT_SUPPORTED, "device buffers need a build with CUDA");
#endif
}

lh_status lh_reduce_div(int on_device, float *x, float divisor, size_t n) {
  if (!on_device) {
    lh_reduce_div_f32(x, divisor, n);
    return LH_SUCCESS;
  }
#ifdef LH_HAVE_CUDA
  return lh_cuda_result(lh_cuda_reduce_div_f32(x, divisor, n, NULL), "reduce_div_f32 kernel");
#else
  return lh_error(LH_ERR_NOT_SUPPORTED, "device buffers need a build with CUDA");
#endif
}

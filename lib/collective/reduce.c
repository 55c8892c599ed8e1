/* CPU twins of the reduction kernels, and dispatch to host or device. */
#include "collective/collective_internal.h"
#include "common/internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

void lh_residual_add_f32(float *err, const float *in, const float *decoded, size_t n) {
  for (size_t i = 0; i < n; i++)
    err[i] += in[i] - decoded[i];
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

lh_status lh_residual_add(int on_device, float *err, const float *in, const float *decoded, size_t n) {
  if (!on_device) {
    lh_residual_add_f32(err, in, decoded, n);
    return LH_SUCCESS;
  }
#ifdef LH_HAVE_CUDA
  return lh_cuda_result(lh_cuda_residual_add_f32(err, in, decoded, n, NULL), "residual_add_f32 kernel");
#else
  return lh_error(LH_ERR_NOT_SUPPORTED, "device buffers need a build with CUDA");
#endif
}

/* Scans in blocks with a branch-free OR of "exponent all ones", so the loop vectorizes; the
 * element is located only once a block is known to hold one. */
static size_t first_non_finite(const float *x, size_t n) {
  const size_t block = 4096;
  for (size_t b = 0; b < n; b += block) {
    size_t end = b + block < n ? b + block : n;
    uint32_t any = 0;
    for (size_t i = b; i < end; i++) {
      uint32_t u;
      memcpy(&u, &x[i], sizeof u);
      any |= (uint32_t)((u & 0x7F800000u) == 0x7F800000u);
    }
    if (any)
      for (size_t i = b; i < end; i++)
        if (!isfinite(x[i]))
          return i;
  }
  return n;
}

lh_status lh_check_finite(int on_device, const float *x, size_t n, const char *what) {
  if (n == 0)
    return LH_SUCCESS;
  size_t bad = n;
  if (!on_device) {
    bad = first_non_finite(x, n);
  } else {
#ifdef LH_HAVE_CUDA
    uint32_t *word = NULL, bits = 0;
    LH_CHECK(lh_device_alloc((void **)&word, sizeof *word));
    lh_status st = lh_cuda_result(lh_cuda_qz_max_abs_bits(x, n, word, NULL), "max_abs kernel");
    if (st == LH_SUCCESS)
      st = lh_copy_to_host(&bits, word, sizeof bits);
    lh_device_free(word);
    LH_CHECK(st);
    if (bits >= 0x7F800000u) { /* rare: find the element on a host copy */
      float *host = lh_malloc(n * sizeof(float), "a host copy for the finiteness check");
      if (!host)
        return LH_ERR_OUT_OF_MEMORY;
      st = lh_copy_to_host(host, x, n * sizeof(float));
      bad = st == LH_SUCCESS ? first_non_finite(host, n) : n;
      free(host);
      LH_CHECK(st);
    }
#else
    return lh_error(LH_ERR_NOT_SUPPORTED, "device buffers need a build with CUDA");
#endif
  }
  if (bad < n)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "%s: element %zu is infinite or NaN; the compressed all-reduce takes finite values", what, bad);
  return LH_SUCCESS;
}

lh_status lh_zero_f32(int on_device, float *p, size_t n) {
  if (n == 0)
    return LH_SUCCESS;
  if (!on_device) {
    memset(p, 0, n * sizeof(float));
    return LH_SUCCESS;
  }
#ifdef LH_HAVE_CUDA
  return lh_cuda_result((int)cudaMemset(p, 0, n * sizeof(float)), "device memset");
#else
  return lh_error(LH_ERR_NOT_SUPPORTED, "device buffers need a build with CUDA");
#endif
}

lh_status lh_copy_f32(int on_device, float *dst, const float *src, size_t n) {
  if (dst == src || n == 0)
    return LH_SUCCESS;
  if (!on_device) {
    memmove(dst, src, n * sizeof(float));
    return LH_SUCCESS;
  }
#ifdef LH_HAVE_CUDA
  return lh_cuda_result((int)cudaMemcpy(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice), "device copy");
#else
  return lh_error(LH_ERR_NOT_SUPPORTED, "device buffers need a build with CUDA");
#endif
}

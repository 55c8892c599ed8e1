/* C-callable launchers of the CUDA kernels. Each has a CPU twin in lib/ with the same name
 * minus the "_cuda" part, which is the no-GPU path and the reference the GPU tests use.
 * Launchers return a cudaError_t value as int (0 = success); stream NULL = default stream. */
#ifndef LH_KERNELS_H
#define LH_KERNELS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* acc[i] += x[i] for i < n. Twin: lh_reduce_add_f32 (lib/collective/reduce.c). */
int lh_cuda_reduce_add_f32(float *acc, const float *x, size_t n, void *stream);
/* x[i] /= divisor for i < n. Twin: lh_reduce_div_f32. */
int lh_cuda_reduce_div_f32(float *x, float divisor, size_t n, void *stream);

#ifdef __cplusplus
}
#endif
#endif

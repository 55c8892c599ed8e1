/* Collective internals: the element-wise reductions (CPU twins of kernels/reduce_add.cu)
 * and the ring. Never installed. */
#ifndef LH_COLLECTIVE_INTERNAL_H
#define LH_COLLECTIVE_INTERNAL_H

#include <stddef.h>
#include <longhaul/allreduce.h>

#ifdef __cplusplus
extern "C" {
#endif

/* acc[i] += x[i]. CPU twin of lh_cuda_reduce_add_f32. */
void lh_reduce_add_f32(float *acc, const float *x, size_t n);
/* x[i] /= divisor. CPU twin of lh_cuda_reduce_div_f32. */
void lh_reduce_div_f32(float *x, float divisor, size_t n);

/* The same on host or device memory (device: the CUDA launchers, then a sync). */
lh_status lh_reduce_add(int on_device, float *acc, const float *x, size_t n);
lh_status lh_reduce_div(int on_device, float *x, float divisor, size_t n);

/* In-place chunked, pipelined ring all-reduce of `data` (host memory, or device memory for a
 * backend that moves device buffers). */
lh_status lh_ring_allreduce(lh_comm comm, float *data, size_t count, lh_reduce_op op, size_t chunk_bytes,
                            int on_device);

#ifdef __cplusplus
}
#endif
#endif

/* C-callable launchers of the CUDA kernels. Each has a CPU twin in lib/ with the same name
 * minus the "_cuda" part, which is the no-GPU path and the reference the GPU tests use.
 * Launchers return a cudaError_t value as int (0 = success); stream NULL = default stream. */
#ifndef LH_KERNELS_H
#define LH_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* The parameter structs and lh_rng_key of the codecs' CPU twins (lib/ on the include path). */
#include "compress/payload.h"

#ifdef __cplusplus
extern "C" {
#endif

/* acc[i] += x[i] for i < n. Twin: lh_reduce_add_f32 (lib/collective/reduce.c). */
int lh_cuda_reduce_add_f32(float *acc, const float *x, size_t n, void *stream);
/* x[i] /= divisor for i < n. Twin: lh_reduce_div_f32. */
int lh_cuda_reduce_div_f32(float *x, float divisor, size_t n, void *stream);
/* err[i] += in[i] - decoded[i]. Twin: lh_residual_add_f32. */
int lh_cuda_residual_add_f32(float *err, const float *in, const float *decoded, size_t n, void *stream);

/* ---- Codec kernels (kernels/cast.cu, blockq.cu, sign.cu, topk.cu, powersgd.cu) ----------------
 * Twins: the same names without "_cuda" in lib/compress/ (payload.h), which give the same
 * payload bytes, decoded values and residuals bit for bit (PowerSGD: within rounding).
 * Pointers to data are device pointers; parameter structs and keys are host structs read by
 * the launcher. Payload byte pointers (uint8_t *) may have any alignment (the casts' u16
 * arrays are 2-byte aligned, as their type says). n = 0 launches nothing. Launchers check
 * their arguments cheaply (cudaErrorInvalidValue) but not the data: encoders do not refuse
 * what the twins refuse (non-finite input; |x| above 65504 under fp16 scales; they write some
 * payload: a caller that needs the refusal checks first), and decoders trust the payload
 * (validate it on the host, as the twins' decoders do, before handing it over). Everything
 * is queued on `stream` (NULL: the default stream); nothing synchronizes. */

/* The input check of the codecs' device path: *out (a device word) = the largest of the bits of
 * |x[i]| (sign cleared), 0 for n = 0; >= 0x7F800000 when any x[i] is infinite or NaN. Twin:
 * lh_qz_max_abs_bits (compress/quant_internal.h). kernels/max_abs.cu. */
int lh_cuda_qz_max_abs_bits(const float *x, size_t n, uint32_t *out, void *stream);

/* fp32 <-> fp16 / bf16, round to nearest even; decode: out[i] = v, or out[i] += v. */
int lh_cuda_cast_f32_to_f16(const float *x, uint16_t *out, size_t n, void *stream);
int lh_cuda_cast_f32_to_bf16(const float *x, uint16_t *out, size_t n, void *stream);
int lh_cuda_cast_f16_to_f32(const uint16_t *in, float *out, size_t n, int accumulate, void *stream);
int lh_cuda_cast_bf16_to_f32(const uint16_t *in, float *out, size_t n, int accumulate, void *stream);

/* Block quantization. key may be NULL unless p->stochastic. encode_ef: e = x + e;
 * out = Q(e); e -= D(out) (x may equal e). decode with accumulate: out += D(in). */
int lh_cuda_blockq_encode(const lh_blockq_params *p, const lh_rng_key *key, const float *x, size_t n,
                          uint8_t *out, void *stream);
int lh_cuda_blockq_encode_ef(const lh_blockq_params *p, const lh_rng_key *key, const float *x, float *e,
                             size_t n, uint8_t *out, void *stream);
int lh_cuda_blockq_decode(const lh_blockq_params *p, const uint8_t *in, size_t n, float *out, int accumulate,
                          void *stream);

/* 1-bit sign with a mean |x| scale per block (summed in lh_lane_fold32's order). */
int lh_cuda_sign_encode(const lh_sign_params *p, const float *x, size_t n, uint8_t *out, void *stream);
int lh_cuda_sign_encode_ef(const lh_sign_params *p, const float *x, float *e, size_t n, uint8_t *out,
                           void *stream);
int lh_cuda_sign_decode(const lh_sign_params *p, const uint8_t *in, size_t n, float *out, int accumulate,
                        void *stream);

/* Top-k per chunk, exact. p->sampled is accepted and runs exact: topk.c defines the sampled
 * rule so that both give the same bytes. encode_ef: e = x + e; out = topk(e); e[i] = 0 where
 * sent. decode: out zeroed (unless accumulate), then the entries scattered; the payload must
 * have been validated (indices in their chunk, strictly increasing). */
int lh_cuda_topk_encode(const lh_topk_params *p, const float *x, size_t n, uint8_t *out, void *stream);
int lh_cuda_topk_encode_ef(const lh_topk_params *p, const float *x, float *e, size_t n, uint8_t *out,
                           void *stream);
int lh_cuda_topk_decode(const lh_topk_params *p, const uint8_t *in, size_t n, float *out, int accumulate,
                        void *stream);

/* PowerSGD's steps; cublas_handle is a cublasHandle_t (its stream, pointer and math modes are
 * set for the call and restored). A cuBLAS failure returns the CUDA error it left, else
 * cudaErrorUnknown. orthonormalize does not use the handle (may be NULL). decode: out = P Q^T
 * (or +=) from a [P | Q] payload of any alignment (an unaligned one is copied first). */
int lh_cuda_powersgd_compute_p(const lh_powersgd_params *p, const float *m, const float *q, float *pm,
                               void *cublas_handle, void *stream);
int lh_cuda_powersgd_orthonormalize(const lh_powersgd_params *p, float *pm, void *cublas_handle, void *stream);
int lh_cuda_powersgd_compute_q(const lh_powersgd_params *p, const float *m, const float *pm, float *q,
                               void *cublas_handle, void *stream);
int lh_cuda_powersgd_decode(const lh_powersgd_params *p, const uint8_t *in, float *out, int accumulate,
                            void *cublas_handle, void *stream);

#ifdef __cplusplus
}
#endif
#endif

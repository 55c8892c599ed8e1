/* The payload formats of the codecs and their CPU implementations.
 *
 * Each function here is the CPU twin of a CUDA launcher in kernels/kernels.h with the same name
 * plus "_cuda" after "lh" (lh_blockq_encode <-> lh_cuda_blockq_encode). The twin is the no-GPU
 * path and the reference the GPU tests compare against: for every codec but PowerSGD the two
 * must give the same bytes. Per-element arithmetic lives in codec_math.h, shared by both.
 *
 * A payload is what a frame carries after its header (frame.c), before the optional zstd
 * stage. Layouts are fixed byte for byte (little-endian, as every supported host and GPU is):
 *
 *  cast (FP16/BF16)   n x u16.
 *  BLOCKQ             nb = ceil(n / block) scales (fp32, or fp16 rounded toward +inf), then
 *                     the codes bit-packed: element i has bits [i*b, i*b + b) of the byte
 *                     stream, least significant bit first (byte j holds stream bits 8j..8j+7).
 *                     Eight elements fill exactly b bytes. ceil(n*b/8) code bytes; unused
 *                     high bits of the last byte are 0. Codes are lh_quant_code's u in [0, M].
 *  SIGN               nb scales (mean |x| of the block, fp32 or fp16 to nearest) summed in the
 *                     lh_lane_fold32 order; then ceil(n/8) bytes of bits, LSB first: 1 when
 *                     x >= 0 (+0, -0 included), decoded as +scale, 0 as -scale.
 *  SHAREDQ            n signed codes c = u - M/2 (u from lh_quant_code with the shared block
 *                     scale S and M = 2^b - 2, so |c| <= 2^(b-1) - 1), each in an int8, int16 or
 *                     int32 container: the smallest holding b + ceil(log2 ranks) bits. Decoded
 *                     as (2c) * (S / M), so a sum of codes decodes to the sum of values.
 *                     The scales are not sent: every rank holds the agreed ones.
 *  TOPK               per chunk c of len_c = min(chunk, n - c*chunk) elements, k_c = min(k,
 *                     len_c) entries; chunk c's entries start at entry c*min(k, chunk).
 *                     K = sum k_c. First K u16 chunk-local indices (strictly increasing
 *                     within a chunk), zero padding to a multiple of 4 bytes, then K fp32
 *                     values (x at that index).
 *                     Exact: the k_c largest |x| of the chunk, ties to the lower index (|x| is
 *                     compared as the bits of fabsf(x)).
 *  RANDK              K fp32 values in the same chunk/entry order as TOPK; entry j of chunk c is
 *                     element (off_c + floor(j * len_c / k_c)) mod len_c of the chunk, with
 *                     off_c = lh_rng_u32(shared key, c) mod len_c. No indices on the wire.
 *  POWERSGD           P (rows x r, row-major fp32, orthonormal columns), then Q (cols x r,
 *                     row-major fp32); the matrix is P Q^T.
 *
 * The stochastic variants take element i's random word from lh_rng_u32(key, i), i counted
 * from the start of the tensor, so any split of the work gives the same bytes.
 * Encoders refuse non-finite input (LH_ERR_INVALID_ARGUMENT naming the block) before writing;
 * decoders check what a payload can get wrong on its own (a non-finite or negative scale, an
 * index out of its chunk or out of order) and return LH_ERR_CORRUPT before writing.
 * Never installed. */
#ifndef LH_COMPRESS_PAYLOAD_H
#define LH_COMPRESS_PAYLOAD_H

#include <stddef.h>
#include <stdint.h>
#include <longhaul/status.h>

#include "compress/codec_math.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- casts (cast.c) ---- */
void lh_cast_f32_to_f16(const float *x, uint16_t *out, size_t n);
void lh_cast_f32_to_bf16(const float *x, uint16_t *out, size_t n);
/* out[i] = value, or out[i] += value when accumulate. */
void lh_cast_f16_to_f32(const uint16_t *in, float *out, size_t n, int accumulate);
void lh_cast_bf16_to_f32(const uint16_t *in, float *out, size_t n, int accumulate);

/* ---- block quantization (blockq.c) ---- */
typedef struct lh_blockq_params {
  int bits;       /* 1..8 */
  int block;      /* elements per scale, >= 1 */
  int scale_fp16; /* 1: scales stored as fp16 (rounded up), 0: fp32 */
  int stochastic; /* 1: stochastic rounding from the key, 0: nearest even */
} lh_blockq_params;

size_t lh_blockq_payload_bytes(const lh_blockq_params *p, size_t n);
lh_status lh_blockq_encode(const lh_blockq_params *p, const lh_rng_key *key, const float *x,
                           size_t n, uint8_t *out);
/* Error feedback fused: e = x + e; out = Q(e); e = e - D(out). x may equal e. */
lh_status lh_blockq_encode_ef(const lh_blockq_params *p, const lh_rng_key *key, const float *x,
                              float *e, size_t n, uint8_t *out);
lh_status lh_blockq_decode(const lh_blockq_params *p, const uint8_t *in, size_t n, float *out,
                           int accumulate);

/* ---- 1-bit sign with a per-block scale (sign.c) ---- */
typedef struct lh_sign_params {
  int block;
  int scale_fp16;
} lh_sign_params;

size_t lh_sign_payload_bytes(const lh_sign_params *p, size_t n);
lh_status lh_sign_encode(const lh_sign_params *p, const float *x, size_t n, uint8_t *out);
lh_status lh_sign_encode_ef(const lh_sign_params *p, const float *x, float *e, size_t n,
                            uint8_t *out);
lh_status lh_sign_decode(const lh_sign_params *p, const uint8_t *in, size_t n, float *out,
                         int accumulate);

/* ---- shared-scale integer quantization (sharedq.c) ---- */
typedef struct lh_sharedq_params {
  int bits;  /* 2..8 */
  int block; /* elements per shared scale */
  int ranks; /* codes of up to this many ranks may be summed */
  int stochastic;
} lh_sharedq_params;

int lh_sharedq_code_bytes(const lh_sharedq_params *p); /* 1, 2 or 4 */
size_t lh_sharedq_scale_count(const lh_sharedq_params *p, size_t n);
size_t lh_sharedq_payload_bytes(const lh_sharedq_params *p, size_t n);
/* This rank's max |x| per block; LH_ERR_INVALID_ARGUMENT for non-finite input. */
lh_status lh_sharedq_local_scales(const lh_sharedq_params *p, const float *x, size_t n,
                                  float *scales);
/* x must satisfy |x| <= scale of its block (scales are a max over ranks of local scales);
 * larger values are clipped. */
lh_status lh_sharedq_encode(const lh_sharedq_params *p, const lh_rng_key *key, const float *scales,
                            const float *x, size_t n, uint8_t *out);
lh_status lh_sharedq_encode_ef(const lh_sharedq_params *p, const lh_rng_key *key,
                               const float *scales, const float *x, float *e, size_t n,
                               uint8_t *out);
/* A payload holding the sum of up to `ranks` payloads decodes to the sum of their values.
 * LH_ERR_CORRUPT when a code exceeds ranks * (2^(b-1) - 1). */
lh_status lh_sharedq_decode(const lh_sharedq_params *p, const float *scales, const uint8_t *in,
                            size_t n, float *out, int accumulate);
/* acc += in, code by code (integer addition: exact). */
lh_status lh_sharedq_sum(const lh_sharedq_params *p, uint8_t *acc, const uint8_t *in, size_t n);

/* ---- top-k per chunk (topk.c) ---- */
typedef struct lh_topk_params {
  int chunk;   /* 1..65536 */
  int k;       /* 1..65536 */
  int sampled; /* 0: exact, 1: sampled threshold */
} lh_topk_params;

size_t lh_topk_entries(const lh_topk_params *p, size_t n); /* K */
size_t lh_topk_payload_bytes(const lh_topk_params *p, size_t n);
lh_status lh_topk_encode(const lh_topk_params *p, const float *x, size_t n, uint8_t *out);
/* e = x + e; out = topk(e); e[i] = 0 where i was sent. */
lh_status lh_topk_encode_ef(const lh_topk_params *p, const float *x, float *e, size_t n,
                            uint8_t *out);
/* LH_ERR_CORRUPT unless every chunk's indices are inside the chunk and strictly increasing
 * (what lh_topk_decode checks first; p must be valid). Writes nothing. */
lh_status lh_topk_validate(const lh_topk_params *p, const uint8_t *in, size_t n);
/* Not accumulating: out is zeroed, then the entries are written. */
lh_status lh_topk_decode(const lh_topk_params *p, const uint8_t *in, size_t n, float *out,
                         int accumulate);

/* ---- random-k per chunk from a shared seed (randk.c) ---- */
typedef struct lh_randk_params {
  int chunk;
  int k;
} lh_randk_params;

size_t lh_randk_entries(const lh_randk_params *p, size_t n);
size_t lh_randk_payload_bytes(const lh_randk_params *p, size_t n);
/* key->rank is ignored: the choice is shared by all ranks. */
lh_status lh_randk_encode(const lh_randk_params *p, const lh_rng_key *key, const float *x,
                          size_t n, uint8_t *out);
lh_status lh_randk_encode_ef(const lh_randk_params *p, const lh_rng_key *key, const float *x,
                             float *e, size_t n, uint8_t *out);
lh_status lh_randk_decode(const lh_randk_params *p, const lh_rng_key *key, const uint8_t *in,
                          size_t n, float *out, int accumulate);
lh_status lh_randk_sum(const lh_randk_params *p, uint8_t *acc, const uint8_t *in, size_t n);

/* ---- PowerSGD (powersgd.c; OpenBLAS) ---- */
typedef struct lh_powersgd_params {
  int rank;    /* r, 1..8 */
  size_t rows; /* the matrix is rows x cols, row-major */
  size_t cols;
} lh_powersgd_params;

size_t lh_powersgd_payload_bytes(const lh_powersgd_params *p); /* (rows + cols) * r * 4 */
/* The first Q (cols x r): uniform in [-1, 1) from the shared stream of key (rank ignored). */
void lh_powersgd_init_q(const lh_powersgd_params *p, const lh_rng_key *key, float *q);
/* The three steps, for an all-reduce that sums P and Q between them:
 *   P = M Q;  orthonormalize the columns of P (modified Gram-Schmidt, two sweeps; a column that
 *   vanishes is replaced by a unit vector, so P has min(r, rows) orthonormal columns and any
 *   further ones are zero);  Q = M^T P.  */
void lh_powersgd_compute_p(const lh_powersgd_params *p, const float *m, const float *q, float *pm);
void lh_powersgd_orthonormalize(const lh_powersgd_params *p, float *pm);
void lh_powersgd_compute_q(const lh_powersgd_params *p, const float *m, const float *pm, float *q);
/* One rank's whole round: payload = [P | Q] from m and the warm-start q (updated to the new Q). */
lh_status lh_powersgd_encode(const lh_powersgd_params *p, const float *m, float *q, uint8_t *out);
/* out = P Q^T (or out += P Q^T). */
lh_status lh_powersgd_decode(const lh_powersgd_params *p, const uint8_t *in, float *out,
                             int accumulate);

#ifdef __cplusplus
}
#endif
#endif

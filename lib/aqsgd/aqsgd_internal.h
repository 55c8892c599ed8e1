/* AQ-SGD internals shared by the contexts (aqsgd.c), the frame (frame.c), the stores
 * (store*.c), the CPU twins (quant.c) and the CUDA kernels (kernels/aqsgd.cu). Never installed.
 *
 * ---- The quantizer twins --------------------------------------------------------------------
 * A call works on `rows` rows of E = tokens x channels elements. Row r of the call is row
 * batch_rows[r] of the caller's batch `a` (batch_rows NULL: row r), belongs to example ids[r],
 * whose visit count is visits[r], and whose buffer is row slots[r] of the store
 * (m + slots[r] * E elements of p->storage). m == NULL means "no buffer" (DirectQ forward,
 * every backward): the delta is a itself and nothing is updated.
 * Element j (0 <= j < E) of row r is
 *   - read as fp32 from a (type p->dtype) and from m (type p->storage);
 *   - keyed, for stochastic rounding, by lh_rng_key{seed = p->seed, step = visits[r],
 *     rank = p->stream} at element index ids[r] * E + j (independent of batching);
 *   - code number g = r * E + j of the call: bits [g b, g b + b) of `codes`, LSB first (the
 *     byte stream is ceil(rows E b / 8) bytes; unused high bits of the last byte are 0).
 * Scales are fp16 bit patterns: PER_CHANNEL: scales[c] for c < channels, over every row and
 * token of the call; PER_TOKEN_GROUP: scales[(r * tokens + t) * (channels / group) + k].
 * A scale is lh_aq_scale_from_max_bits(max over its group of the bits of |d|), so NaN and
 * infinity give 0x7FFF and a max above 65504 gives 0x7C00: any scale >= 0x7C00 means the
 * frame must be refused (the context checks; the twins just must not crash on it).
 * Quantization of d with scale s = f16_to_f32(scale), M = lh_quant_max_code(bits):
 *   u = lh_quant_code(d, lh_quant_inv_scale(s, M), M, stochastic, rng bits);
 *   q = lh_dequant_code(u, M, lh_quant_step(s, M));
 *   m' = round_to_storage(LH_FADD(m, q))    (when m != NULL)
 * so both ends compute m' from the same bytes with the same operations (codec_math.h). */
#ifndef LH_AQSGD_INTERNAL_H
#define LH_AQSGD_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "compress/codec_math.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Values of lh_aq_dtype and lh_aq_quantizer (the kernels do not include the public header). */
enum { LH_AQ_T_FP32 = 0, LH_AQ_T_FP16 = 1, LH_AQ_T_BF16 = 2 };
enum { LH_AQ_Q_PER_CHANNEL = 0, LH_AQ_Q_PER_TOKEN_GROUP = 1 };

typedef struct lh_aq_qparams {
  size_t tokens, channels; /* E = tokens * channels */
  int bits;                /* 2-8 */
  int quantizer;           /* LH_AQ_Q_* */
  int group;               /* PER_TOKEN_GROUP: 32, 64 or 128, dividing channels */
  int stochastic;          /* 0: round to nearest even */
  int dtype;               /* LH_AQ_T_* of a and out */
  int storage;             /* LH_AQ_T_* of m and of full-precision rows on the wire */
  uint64_t seed;
  uint32_t stream;         /* 2 * boundary (forward), 2 * boundary + 1 (backward) */
} lh_aq_qparams;

LH_HD size_t lh_aq_dtype_bytes(int t) { return t == LH_AQ_T_FP32 ? 4 : 2; }

LH_HD float lh_aq_load(const void *p, int t, size_t i) {
  if (t == LH_AQ_T_FP32)
    return ((const float *)p)[i];
  uint16_t h = ((const uint16_t *)p)[i];
  return t == LH_AQ_T_FP16 ? lh_f16_to_f32(h) : lh_bf16_to_f32(h);
}
/* Store v rounded (to nearest even) to type t. */
LH_HD void lh_aq_put(void *p, int t, size_t i, float v) {
  if (t == LH_AQ_T_FP32)
    ((float *)p)[i] = v;
  else
    ((uint16_t *)p)[i] = t == LH_AQ_T_FP16 ? lh_f32_to_f16(v) : lh_f32_to_bf16(v);
}
/* The scale of a group whose largest |d| has bits max_bits (sign cleared). */
LH_HD uint16_t lh_aq_scale_from_max_bits(uint32_t max_bits) {
  return max_bits >= 0x7F800000u ? (uint16_t)0x7FFFu : lh_f32_to_f16_up(lh_bits_f32(max_bits));
}

/* Number of scales of a call. */
LH_HD size_t lh_aq_scale_count(const lh_aq_qparams *p, size_t rows) {
  if (rows == 0)
    return 0;
  return p->quantizer == LH_AQ_Q_PER_CHANNEL ? p->channels : rows * p->tokens * (p->channels / (size_t)p->group);
}
LH_HD size_t lh_aq_code_bytes(const lh_aq_qparams *p, size_t rows) {
  return (rows * p->tokens * p->channels * (size_t)p->bits + 7) / 8;
}

/* ---- CPU twins (quant.c); the kernels are the same names with lh_cuda_ (kernels/aqsgd.cu) --- */
/* PER_CHANNEL only: scales[c] over every row and token (m NULL: of |a|). */
void lh_aq_channel_scales(const lh_aq_qparams *p, const void *a, const uint32_t *batch_rows, const void *m,
                          const int64_t *slots, size_t rows, uint16_t *scales);
/* Quantize d = a - m (or a), write codes, update m (when not NULL). PER_TOKEN_GROUP computes and
 * writes its scales; PER_CHANNEL reads them (from lh_aq_channel_scales). */
void lh_aq_encode(const lh_aq_qparams *p, const void *a, const uint32_t *batch_rows, void *m,
                  const int64_t *slots, const int64_t *ids, const uint32_t *visits, size_t rows, uint16_t *scales,
                  uint8_t *codes);
/* Dequantize: with m, m = round(m + q) and out row batch_rows[r] = m; without, out = q. Both in
 * out's type p->dtype. */
void lh_aq_decode(const lh_aq_qparams *p, const uint8_t *codes, const uint16_t *scales, void *m,
                  const int64_t *slots, size_t rows, void *out, const uint32_t *batch_rows);
/* Full-precision rows: wire row r = round_to_storage(a row batch_rows[r]); m row = the same
 * (m may be NULL). */
void lh_aq_full_encode(const lh_aq_qparams *p, const void *a, const uint32_t *batch_rows, void *m,
                       const int64_t *slots, size_t rows, void *wire);
/* wire -> m row (m may be NULL) and -> out row batch_rows[r] in p->dtype. */
void lh_aq_full_decode(const lh_aq_qparams *p, const void *wire, void *m, const int64_t *slots, size_t rows,
                       void *out, const uint32_t *batch_rows);

/* Launchers: same arguments, all arrays device memory (p is a host struct), queued on `stream`
 * (a cudaStream_t, NULL = default); return a cudaError_t as int. */
int lh_cuda_aq_channel_scales(const lh_aq_qparams *p, const void *a, const uint32_t *batch_rows, const void *m,
                              const int64_t *slots, size_t rows, uint16_t *scales, void *stream);
int lh_cuda_aq_encode(const lh_aq_qparams *p, const void *a, const uint32_t *batch_rows, void *m,
                      const int64_t *slots, const int64_t *ids, const uint32_t *visits, size_t rows,
                      uint16_t *scales, uint8_t *codes, void *stream);
int lh_cuda_aq_decode(const lh_aq_qparams *p, const uint8_t *codes, const uint16_t *scales, void *m,
                      const int64_t *slots, size_t rows, void *out, const uint32_t *batch_rows, void *stream);
int lh_cuda_aq_full_encode(const lh_aq_qparams *p, const void *a, const uint32_t *batch_rows, void *m,
                           const int64_t *slots, size_t rows, void *wire, void *stream);
int lh_cuda_aq_full_decode(const lh_aq_qparams *p, const void *wire, void *m, const int64_t *slots, size_t rows,
                           void *out, const uint32_t *batch_rows, void *stream);

#ifdef __cplusplus
}
#endif
#endif

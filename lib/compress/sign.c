/* 1-bit sign with a per-block scale (the SIGN payload of payload.h): the scale is the block's
 * mean |x|, summed in lh_lane_fold32's order so that the GPU kernel gets the same bits; a bit
 * is 1 for x >= 0 and decodes as +scale, 0 as -scale.
 *
 * The tile loops and the bit packing are blockq.c's (lh_qz_*). */
#include <float.h>
#include <math.h>

#include "common/internal.h"
#include "compress/payload.h"
#include "compress/quant_internal.h"

static lh_status sign_check_params(const char *fn, const lh_sign_params *p) {
  if (!p)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: params is NULL", fn);
  if (p->block < 1)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: block is %d, not >= 1", fn, p->block);
  if (p->scale_fp16 != 0 && p->scale_fp16 != 1)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: scale_fp16 is %d, not 0 or 1", fn, p->scale_fp16);
  return LH_SUCCESS;
}

static size_t scale_bytes(const lh_sign_params *p, size_t n) {
  size_t blocks = n / (size_t)p->block + (n % (size_t)p->block != 0);
  return blocks * (p->scale_fp16 ? 2u : 4u);
}

size_t lh_sign_payload_bytes(const lh_sign_params *p, size_t n) {
  if (!p || p->block < 1 || (unsigned)p->scale_fp16 > 1)
    return 0;
  return scale_bytes(p, n) + n / 8 + (n % 8 != 0);
}

/* Lane j adds |v| of elements j, j + 32, ... in order (v = x, or x + e when e is given). */
static inline __attribute__((always_inline)) float lane_mean(const float *x, const float *e,
                                                             size_t len) {
  float lane[32] = {0};
  size_t i = 0;
  for (; i + 32 <= len; i += 32)
    for (int j = 0; j < 32; j++)
      lane[j] = LH_FADD(lane[j], fabsf(e ? LH_FADD(x[i + j], e[i + j]) : x[i + j]));
  for (size_t j = 0; i + j < len; j++)
    lane[j] = LH_FADD(lane[j], fabsf(e ? LH_FADD(x[i + j], e[i + j]) : x[i + j]));
  return LH_FDIV(lh_lane_fold32(lane), (float)len);
}

/* The block's scale before rounding: mean |x| (|x + e| when e is given), len >= 1. */
LH_QZ_HOT static float block_mean(const float *x, const float *e, size_t len) {
  return e ? lane_mean(x, e, len) : lane_mean(x, NULL, len);
}

/* A block's mean is at most its max |value| times the rounding growth of a sum of `block`
 * terms; only when that bound reaches the largest scale can a scale overflow. Then every
 * block's mean is computed first (rare), so that nothing is written before the error. */
static lh_status sign_check_scales_fit(const char *fn, const lh_sign_params *p, const float *x,
                                       const float *e, size_t n, uint32_t max_abs_bits) {
  double block = (double)p->block;
  double bound = (double)lh_bits_f32(max_abs_bits) * (1.0 + block * 0x1p-23);
  if (p->scale_fp16 ? bound < 65504.0 : bound * block < (double)FLT_MAX)
    return LH_SUCCESS;
  for (size_t i = 0; i < n; i += (size_t)p->block) {
    size_t len = n - i < (size_t)p->block ? n - i : (size_t)p->block;
    float mean = block_mean(x + i, e ? e + i : NULL, len);
    int overflows = p->scale_fp16 ? (lh_f32_to_f16(mean) & 0x7FFFu) == 0x7C00u : !isfinite(mean);
    if (overflows)
      return lh_error(LH_ERR_INVALID_ARGUMENT,
                      "%s: the mean |x| of block %zu (elements %zu..) overflows an %s scale", fn,
                      i / (size_t)p->block, i, p->scale_fp16 ? "fp16" : "fp32");
  }
  return LH_SUCCESS;
}

typedef struct sign_encoder {
  const lh_sign_params *p;
  const float *x;
  float *e; /* the residual with error feedback, else NULL */
  uint8_t *scales;
  float scale; /* the stored scale of the block being coded */
} sign_encoder;

static void sign_begin_block(void *ctx, size_t i, size_t len) {
  sign_encoder *enc = ctx;
  float mean;
  if (enc->e) {
    lh_qz_add_residual(enc->x + i, enc->e + i, len);
    mean = block_mean(enc->e + i, NULL, len);
  } else {
    mean = block_mean(enc->x + i, NULL, len);
  }
  enc->scale =
      lh_qz_store_scale(enc->scales, i / (size_t)enc->p->block, enc->p->scale_fp16, 0, mean);
}

/* Bit 1 for v >= 0 (-0 included); with e (equal to src) also e -= the decoded +-scale. */
LH_QZ_HOT static void sign_bits(const float *src, float *e, size_t n, float scale, uint8_t *codes) {
  if (e) {
    for (size_t j = 0; j < n; j++) {
      uint8_t bit = src[j] >= 0.0f;
      codes[j] = bit;
      e[j] = LH_FSUB(e[j], bit ? scale : -scale);
    }
  } else {
    for (size_t j = 0; j < n; j++)
      codes[j] = src[j] >= 0.0f;
  }
}

static void sign_code_run(void *ctx, size_t i, size_t len, const uint32_t *words, uint8_t *codes) {
  (void)words;
  sign_encoder *enc = ctx;
  const float *src = enc->e ? enc->e + i : enc->x + i;
  sign_bits(src, enc->e ? enc->e + i : NULL, len, enc->scale, codes);
}

static lh_status sign_encode_any(const char *fn, const lh_sign_params *p, const float *x, float *e,
                                 int ef, size_t n, uint8_t *out) {
  LH_CHECK(sign_check_params(fn, p));
  if (n == 0)
    return LH_SUCCESS;
  if (!x || !out || (ef && !e))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: NULL buffer for %zu elements", fn, n);
  uint32_t max_abs_bits;
  LH_CHECK(lh_qz_check_input(fn, x, e, n, (size_t)p->block, FLT_MAX, &max_abs_bits));
  LH_CHECK(sign_check_scales_fit(fn, p, x, e, n, max_abs_bits));
  sign_encoder enc = {.p = p, .x = x, .e = e, .scales = out};
  lh_qz_encode_packed(&(lh_qz_packed_encoder){
      .n = n,
      .block = (size_t)p->block,
      .bits = 1,
      .key = NULL,
      .codes_out = out + scale_bytes(p, n),
      .begin_block = sign_begin_block,
      .code_run = sign_code_run,
      .ctx = &enc,
  });
  return LH_SUCCESS;
}

lh_status lh_sign_encode(const lh_sign_params *p, const float *x, size_t n, uint8_t *out) {
  return sign_encode_any("lh_sign_encode", p, x, NULL, 0, n, out);
}

lh_status lh_sign_encode_ef(const lh_sign_params *p, const float *x, float *e, size_t n,
                            uint8_t *out) {
  return sign_encode_any("lh_sign_encode_ef", p, x, e, 1, n, out);
}

typedef struct sign_decoder {
  const lh_sign_params *p;
  const uint8_t *scales;
  float *out;
  int accumulate;
} sign_decoder;

LH_QZ_HOT static void sign_values(const uint8_t *codes, size_t n, float scale, float *out,
                                  int accumulate) {
  if (accumulate) {
    for (size_t j = 0; j < n; j++)
      out[j] = LH_FADD(out[j], codes[j] ? scale : -scale);
  } else {
    for (size_t j = 0; j < n; j++)
      out[j] = codes[j] ? scale : -scale;
  }
}

static void sign_value_run(void *ctx, size_t k, size_t first, size_t len, const uint8_t *codes) {
  const sign_decoder *dec = ctx;
  float scale = lh_qz_load_scale(dec->scales, k, dec->p->scale_fp16);
  sign_values(codes, len, scale, dec->out + first, dec->accumulate);
}

lh_status lh_sign_decode(const lh_sign_params *p, const uint8_t *in, size_t n, float *out,
                         int accumulate) {
  const char *fn = "lh_sign_decode";
  LH_CHECK(sign_check_params(fn, p));
  if (n == 0)
    return LH_SUCCESS;
  if (!in || !out)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: NULL buffer for %zu elements", fn, n);
  size_t block = (size_t)p->block;
  LH_CHECK(lh_qz_check_scales(fn, in, n / block + (n % block != 0), p->scale_fp16, LH_ERR_CORRUPT));
  sign_decoder dec = {p, in, out, accumulate};
  lh_qz_decode_packed(in + scale_bytes(p, n), n, block, 1, sign_value_run, &dec);
  return LH_SUCCESS;
}

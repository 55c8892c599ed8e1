/* Shared-scale integer quantization (the SHAREDQ payload of payload.h): every rank codes its
 * block with the same agreed scale S, so codes c = u - M/2 of several ranks add as integers
 * and the sum decodes, as (2c) * (S / M), to the sum of the decoded values. The container
 * (int8, int16 or int32) has ceil(log2 ranks) bits of headroom for that sum.
 *
 * Quantizing, random words and input checks are blockq.c's (lh_qz_*). */
#include <float.h>
#include <string.h>

#include "common/internal.h"
#include "compress/payload.h"
#include "compress/quant_internal.h"

/* The largest `ranks`: 16 bits of headroom keep 8-bit codes' sums inside an int32 and 2c
 * inside int32 arithmetic. The same bound as LH_CP_RANKS. */
#define SHAREDQ_MAX_RANKS 65536

/* Elements coded per pass: their codes and random words stay in L1. */
#define SHAREDQ_TILE 2048

static int params_ok(const lh_sharedq_params *p) {
  return p && p->bits >= 2 && p->bits <= 8 && p->block >= 1 && p->ranks >= 1 &&
         p->ranks <= SHAREDQ_MAX_RANKS && (unsigned)p->stochastic <= 1;
}

static lh_status sharedq_check_params(const char *fn, const lh_sharedq_params *p) {
  if (!p)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: params is NULL", fn);
  if (p->bits < 2 || p->bits > 8)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: bits is %d, not in 2..8", fn, p->bits);
  if (p->block < 1)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: block is %d, not >= 1", fn, p->block);
  if (p->ranks < 1 || p->ranks > SHAREDQ_MAX_RANKS)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: ranks is %d, not in 1..%d", fn, p->ranks,
                    SHAREDQ_MAX_RANKS);
  if (p->stochastic != 0 && p->stochastic != 1)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: stochastic is %d, not 0 or 1", fn, p->stochastic);
  return LH_SUCCESS;
}

int lh_sharedq_code_bytes(const lh_sharedq_params *p) {
  if (!params_ok(p))
    return 0;
  int headroom = 0; /* ceil(log2 ranks) */
  while ((1 << headroom) < p->ranks)
    headroom++;
  int bits = p->bits + headroom;
  return bits <= 8 ? 1 : bits <= 16 ? 2 : 4;
}

size_t lh_sharedq_scale_count(const lh_sharedq_params *p, size_t n) {
  if (!params_ok(p))
    return 0;
  return n / (size_t)p->block + (n % (size_t)p->block != 0);
}

size_t lh_sharedq_payload_bytes(const lh_sharedq_params *p, size_t n) {
  return n * (size_t)lh_sharedq_code_bytes(p);
}

/* The largest |c| a sum of `ranks` payloads can hold: ranks * (2^(b-1) - 1). */
static int32_t code_limit(const lh_sharedq_params *p) {
  return (int32_t)p->ranks * ((1 << (p->bits - 1)) - 1);
}

/* Container access, little-endian like the payload; `width` is a constant where inlined. */
static inline __attribute__((always_inline)) int32_t load_code(const uint8_t *in, size_t i,
                                                               int width) {
  if (width == 1) {
    int8_t c;
    memcpy(&c, in + i, 1);
    return c;
  }
  if (width == 2) {
    int16_t c;
    memcpy(&c, in + 2 * i, 2);
    return c;
  }
  int32_t c;
  memcpy(&c, in + 4 * i, 4);
  return c;
}

static inline __attribute__((always_inline)) void store_code(uint8_t *out, size_t i, int width,
                                                             int32_t c) {
  if (width == 1) {
    int8_t v = (int8_t)c;
    memcpy(out + i, &v, 1);
  } else if (width == 2) {
    int16_t v = (int16_t)c;
    memcpy(out + 2 * i, &v, 2);
  } else {
    memcpy(out + 4 * i, &c, 4);
  }
}

lh_status lh_sharedq_local_scales(const lh_sharedq_params *p, const float *x, size_t n,
                                  float *scales) {
  const char *fn = "lh_sharedq_local_scales";
  LH_CHECK(sharedq_check_params(fn, p));
  if (n == 0)
    return LH_SUCCESS;
  if (!x || !scales)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: NULL buffer for %zu elements", fn, n);
  size_t block = (size_t)p->block;
  LH_CHECK(lh_qz_check_input(fn, x, NULL, n, block, FLT_MAX, NULL));
  for (size_t i = 0; i < n; i += block)
    scales[i / block] = lh_bits_f32(lh_qz_max_abs_bits(x + i, n - i < block ? n - i : block));
  return LH_SUCCESS;
}

/* c = u - M/2 into the containers; one loop per width. */
LH_QZ_HOT static void store_codes(const uint8_t *codes, size_t n, int32_t half, int width,
                                  uint8_t *out) {
  switch (width) {
  case 1:
    for (size_t j = 0; j < n; j++)
      store_code(out, j, 1, (int32_t)codes[j] - half);
    break;
  case 2:
    for (size_t j = 0; j < n; j++)
      store_code(out, j, 2, (int32_t)codes[j] - half);
    break;
  default:
    for (size_t j = 0; j < n; j++)
      store_code(out, j, 4, (int32_t)codes[j] - half);
    break;
  }
}

static lh_status sharedq_encode_any(const char *fn, const lh_sharedq_params *p,
                                    const lh_rng_key *key, const float *scales, const float *x,
                                    float *e, int ef, size_t n, uint8_t *out) {
  LH_CHECK(sharedq_check_params(fn, p));
  if (n == 0)
    return LH_SUCCESS;
  if (!scales || !x || !out || (ef && !e))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: NULL buffer for %zu elements", fn, n);
  if (p->stochastic && !key)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: stochastic rounding needs a key", fn);
  size_t block = (size_t)p->block;
  LH_CHECK(
      lh_qz_check_scales(fn, scales, lh_sharedq_scale_count(p, n), 0, LH_ERR_INVALID_ARGUMENT));
  LH_CHECK(lh_qz_check_input(fn, x, e, n, block, FLT_MAX, NULL));
  int max_code = lh_quant_max_code(p->bits), width = lh_sharedq_code_bytes(p);
  uint8_t codes[SHAREDQ_TILE];
  uint32_t words[SHAREDQ_TILE];
  for (size_t t0 = 0; t0 < n; t0 += SHAREDQ_TILE) {
    size_t tend = n - t0 < SHAREDQ_TILE ? n : t0 + SHAREDQ_TILE;
    if (p->stochastic)
      lh_qz_rng_words(key, t0, tend - t0, words);
    for (size_t i = t0; i < tend;) { /* runs of one block within the tile */
      size_t k = i / block;
      size_t end = (k + 1) * block < tend ? (k + 1) * block : tend;
      float s = scales[k];
      if (e)
        lh_qz_add_residual(x + i, e + i, end - i);
      lh_qz_quantize(e ? e + i : x + i, e ? e + i : NULL, p->stochastic ? words + (i - t0) : NULL,
                     end - i, lh_quant_inv_scale(s, max_code), lh_quant_step(s, max_code), max_code,
                     codes + (i - t0));
      i = end;
    }
    store_codes(codes, tend - t0, max_code / 2, width, out + t0 * (size_t)width);
  }
  return LH_SUCCESS;
}

lh_status lh_sharedq_encode(const lh_sharedq_params *p, const lh_rng_key *key, const float *scales,
                            const float *x, size_t n, uint8_t *out) {
  return sharedq_encode_any("lh_sharedq_encode", p, key, scales, x, NULL, 0, n, out);
}

lh_status lh_sharedq_encode_ef(const lh_sharedq_params *p, const lh_rng_key *key,
                               const float *scales, const float *x, float *e, size_t n,
                               uint8_t *out) {
  return sharedq_encode_any("lh_sharedq_encode_ef", p, key, scales, x, e, 1, n, out);
}

/* How many codes lie outside [-limit, limit]: c + limit as unsigned exceeds 2 * limit exactly
 * then (limit < 2^31), one compare that vectorises. */
static inline __attribute__((always_inline)) size_t
count_out_of_range_w(const uint8_t *in, size_t n, int width, int32_t limit) {
  size_t bad = 0;
  for (size_t i = 0; i < n; i++)
    bad += (uint32_t)load_code(in, i, width) + (uint32_t)limit > 2u * (uint32_t)limit;
  return bad;
}

LH_QZ_HOT static size_t count_out_of_range(const uint8_t *in, size_t n, int width, int32_t limit) {
  switch (width) {
  case 1: return count_out_of_range_w(in, n, 1, limit);
  case 2: return count_out_of_range_w(in, n, 2, limit);
  default: return count_out_of_range_w(in, n, 4, limit);
  }
}

static inline __attribute__((always_inline)) void values_w(const uint8_t *in, size_t n, int width,
                                                           float step, float *out, int accumulate) {
  for (size_t j = 0; j < n; j++) {
    float v = LH_FMUL((float)(2 * load_code(in, j, width)), step);
    out[j] = accumulate ? LH_FADD(out[j], v) : v;
  }
}

/* out = (2c) * step (or out += it) for one block's codes. */
LH_QZ_HOT static void sharedq_values(const uint8_t *in, size_t n, int width, float step, float *out,
                                     int accumulate) {
  switch (width * 2 + (accumulate != 0)) {
  case 2: values_w(in, n, 1, step, out, 0); break;
  case 3: values_w(in, n, 1, step, out, 1); break;
  case 4: values_w(in, n, 2, step, out, 0); break;
  case 5: values_w(in, n, 2, step, out, 1); break;
  case 8: values_w(in, n, 4, step, out, 0); break;
  default: values_w(in, n, 4, step, out, 1); break;
  }
}

lh_status lh_sharedq_decode(const lh_sharedq_params *p, const float *scales, const uint8_t *in,
                            size_t n, float *out, int accumulate) {
  const char *fn = "lh_sharedq_decode";
  LH_CHECK(sharedq_check_params(fn, p));
  if (n == 0)
    return LH_SUCCESS;
  if (!scales || !in || !out)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: NULL buffer for %zu elements", fn, n);
  LH_CHECK(
      lh_qz_check_scales(fn, scales, lh_sharedq_scale_count(p, n), 0, LH_ERR_INVALID_ARGUMENT));
  int width = lh_sharedq_code_bytes(p), max_code = lh_quant_max_code(p->bits);
  int32_t limit = code_limit(p);
  if (count_out_of_range(in, n, width, limit) != 0) {
    size_t i = 0;
    while (load_code(in, i, width) >= -limit && load_code(in, i, width) <= limit)
      i++;
    return lh_error(LH_ERR_CORRUPT,
                    "%s: code %d of element %zu exceeds %d, the most %d ranks can sum to", fn,
                    (int)load_code(in, i, width), i, (int)limit, p->ranks);
  }
  size_t block = (size_t)p->block;
  for (size_t i = 0; i < n; i += block) {
    size_t len = n - i < block ? n - i : block;
    float step = lh_quant_step(scales[i / block], max_code);
    sharedq_values(in + i * (size_t)width, len, width, step, out + i, accumulate);
  }
  return LH_SUCCESS;
}

/* Integer addition wraps modulo the container like two's complement: exact while the sum
 * fits, which ceil(log2 ranks) bits of headroom guarantee for up to `ranks` payloads. */
LH_QZ_HOT static void add_codes(uint8_t *acc, const uint8_t *in, size_t n, int width) {
  switch (width) {
  case 1:
    for (size_t i = 0; i < n; i++)
      acc[i] = (uint8_t)(acc[i] + in[i]);
    break;
  case 2:
    for (size_t i = 0; i < n; i++) {
      uint16_t a, b;
      memcpy(&a, acc + 2 * i, 2);
      memcpy(&b, in + 2 * i, 2);
      a = (uint16_t)(a + b);
      memcpy(acc + 2 * i, &a, 2);
    }
    break;
  default:
    for (size_t i = 0; i < n; i++) {
      uint32_t a, b;
      memcpy(&a, acc + 4 * i, 4);
      memcpy(&b, in + 4 * i, 4);
      a += b;
      memcpy(acc + 4 * i, &a, 4);
    }
    break;
  }
}

lh_status lh_sharedq_sum(const lh_sharedq_params *p, uint8_t *acc, const uint8_t *in, size_t n) {
  const char *fn = "lh_sharedq_sum";
  LH_CHECK(sharedq_check_params(fn, p));
  if (n == 0)
    return LH_SUCCESS;
  if (!acc || !in)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: NULL buffer for %zu elements", fn, n);
  add_codes(acc, in, n, lh_sharedq_code_bytes(p));
  return LH_SUCCESS;
}

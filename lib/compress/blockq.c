/* Block quantization (the BLOCKQ payload of payload.h), and the helpers that the sign and
 * shared-scale quantizers (sign.c, sharedq.c) use as well.
 *
 * Speed comes from two choices. The work runs over tiles of LH_QZ_TILE elements: a tile's
 * codes and random words live in small arrays, so the quantizing loop, the Philox loop and
 * the bit packer are each a simple loop that gcc vectorises. And the hot loops are compiled
 * twice (AVX2 and baseline x86-64, picked at load time), Philox three ways (AVX-512, AVX2,
 * portable, picked at run time); without FMA contraction all give the same bits, which are
 * codec_math.h's.
 *
 * Encoders validate the whole input before writing anything (one read-only pass, cheaper
 * than undoing writes), so an error never leaves a half-written payload or residual. */
#include <float.h>
#include <string.h>

#include "common/internal.h"
#include "compress/payload.h"
#include "compress/quant_internal.h"

static inline uint32_t abs_bits(float v) { return lh_f32_bits(v) & 0x7FFFFFFFu; }

/* max |x[i]| (or |x[i] + e[i]|) as bits: ordered like the values for finite ones, and at
 * least 0x7F800000 when one is infinite or NaN. Exact and order-free. */
LH_QZ_HOT static uint32_t max_abs_bits_of(const float *x, const float *e, size_t n) {
  uint32_t m = 0;
  if (e) {
    for (size_t i = 0; i < n; i++) {
      uint32_t a = abs_bits(LH_FADD(x[i], e[i]));
      m = a > m ? a : m;
    }
  } else {
    for (size_t i = 0; i < n; i++) {
      uint32_t a = abs_bits(x[i]);
      m = a > m ? a : m;
    }
  }
  return m;
}

uint32_t lh_qz_max_abs_bits(const float *x, size_t n) { return max_abs_bits_of(x, NULL, n); }

/* Refuses input (x, or x + e with error feedback) holding a non-finite value or one above
 * `limit`, naming the first such element; *max_abs_bits (may be NULL) gets max |value|. */
lh_status lh_qz_check_input(const char *fn, const float *x, const float *e, size_t n, size_t block,
                            float limit, uint32_t *max_abs_bits) {
  uint32_t limit_bits = lh_f32_bits(limit);
  uint32_t m = max_abs_bits_of(x, e, n);
  if (max_abs_bits)
    *max_abs_bits = m;
  if (m <= limit_bits)
    return LH_SUCCESS;
  size_t i = 0; /* the rare error path: find the element */
  float v = 0.0f;
  for (; i < n; i++) {
    v = e ? LH_FADD(x[i], e[i]) : x[i];
    if (abs_bits(v) > limit_bits)
      break;
  }
  const char *what = e ? "x + e" : "x";
  if (!isfinite(v))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: element %zu (block %zu) of %s is not finite", fn,
                    i, i / block, what);
  return lh_error(LH_ERR_INVALID_ARGUMENT,
                  "%s: element %zu (block %zu) of %s is %g, above %g, the largest fp16 scale", fn,
                  i, i / block, what, (double)v, (double)limit);
}

/* e = x + e (the value error feedback encodes); returns max |e| of the result. */
LH_QZ_HOT float lh_qz_add_residual(const float *x, float *e, size_t n) {
  uint32_t m = 0;
  for (size_t i = 0; i < n; i++) {
    float v = LH_FADD(x[i], e[i]);
    e[i] = v;
    uint32_t a = abs_bits(v);
    m = a > m ? a : m;
  }
  return lh_bits_f32(m);
}

/* ---- Philox words, many counter blocks at a time ----
 * lh_rng_block computes one counter block (4 words); in a plain loop gcc vectorises it across
 * blocks but spends most of its time on shuffles (1.8 ns a word with AVX2). These do the
 * same rounds on 16 (AVX-512) or 8 (AVX2) blocks held one per 32-bit lane: the 32 x 32 -> 64
 * products of even and odd lanes are recombined with blends or two-source permutes, and the
 * words are transposed into element order at the end (0.46 and 0.98 ns a word). The
 * arithmetic is lh_philox4x32_10's; the tests hold the words to lh_rng_u32. The low counter
 * word must not wrap within one call: the caller checks. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LH_QZ_PHILOX_SIMD 1
#include <immintrin.h>

/* lh_rng_block's Philox key of a stream, and its bump per round. */
static inline void philox_key(const lh_rng_key *key, uint32_t *k0, uint32_t *k1) {
  *k0 = (uint32_t)key->seed;
  *k1 = (uint32_t)(key->seed >> 32) ^ (uint32_t)(key->step >> 32);
}
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u

__attribute__((target("avx512f"))) static void philox16_avx512(const lh_rng_key *key,
                                                               uint64_t block0, uint32_t *words) {
  /* mul_epu32 multiplies the even lanes (e) and, after a 32-bit shift, the odd ones (o) into
   * 64-bit products; lane l's low half is dword l of e (l even) or dword l - 1 of o (l odd),
   * its high half dword l + 1 of e or dword l of o. Index 16 + j is dword j of o. */
  const __m512i idx_lo =
      _mm512_set_epi32(30, 14, 28, 12, 26, 10, 24, 8, 22, 6, 20, 4, 18, 2, 16, 0);
  const __m512i idx_hi =
      _mm512_set_epi32(31, 15, 29, 13, 27, 11, 25, 9, 23, 7, 21, 5, 19, 3, 17, 1);
  const __m512i m0 = _mm512_set1_epi32((int)PHILOX_M0), m1 = _mm512_set1_epi32((int)PHILOX_M1);
  __m512i c0 =
      _mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)block0),
                       _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0));
  __m512i c1 = _mm512_set1_epi32((int)(uint32_t)(block0 >> 32));
  __m512i c2 = _mm512_set1_epi32((int)(uint32_t)key->step);
  __m512i c3 = _mm512_set1_epi32((int)key->rank);
  uint32_t k0, k1;
  philox_key(key, &k0, &k1);
  for (int round = 0; round < 10; round++, k0 += PHILOX_W0, k1 += PHILOX_W1) {
    __m512i e0 = _mm512_mul_epu32(c0, m0), o0 = _mm512_mul_epu32(_mm512_srli_epi64(c0, 32), m0);
    __m512i e2 = _mm512_mul_epu32(c2, m1), o2 = _mm512_mul_epu32(_mm512_srli_epi64(c2, 32), m1);
    __m512i hi0 = _mm512_permutex2var_epi32(e0, idx_hi, o0);
    __m512i hi2 = _mm512_permutex2var_epi32(e2, idx_hi, o2);
    /* 0x96: a ^ b ^ c */
    c0 = _mm512_ternarylogic_epi32(hi2, c1, _mm512_set1_epi32((int)k0), 0x96);
    c2 = _mm512_ternarylogic_epi32(hi0, c3, _mm512_set1_epi32((int)k1), 0x96);
    c1 = _mm512_permutex2var_epi32(e2, idx_lo, o2);
    c3 = _mm512_permutex2var_epi32(e0, idx_lo, o0);
  }
  /* Transpose: words[4 l + w] = c_w[l]. The unpacks put blocks 4j .. 4j + 3 in 128-bit lane j
   * of q0 .. q3; the shuffles gather each 64-byte run of four consecutive blocks. */
  __m512i t01lo = _mm512_unpacklo_epi32(c0, c1), t01hi = _mm512_unpackhi_epi32(c0, c1);
  __m512i t23lo = _mm512_unpacklo_epi32(c2, c3), t23hi = _mm512_unpackhi_epi32(c2, c3);
  __m512i q0 = _mm512_unpacklo_epi64(t01lo, t23lo), q1 = _mm512_unpackhi_epi64(t01lo, t23lo);
  __m512i q2 = _mm512_unpacklo_epi64(t01hi, t23hi), q3 = _mm512_unpackhi_epi64(t01hi, t23hi);
  __m512i r0 = _mm512_shuffle_i32x4(q0, q1, 0x44), r1 = _mm512_shuffle_i32x4(q2, q3, 0x44);
  __m512i r2 = _mm512_shuffle_i32x4(q0, q1, 0xEE), r3 = _mm512_shuffle_i32x4(q2, q3, 0xEE);
  _mm512_storeu_si512(words, _mm512_shuffle_i32x4(r0, r1, 0x88));
  _mm512_storeu_si512(words + 16, _mm512_shuffle_i32x4(r0, r1, 0xDD));
  _mm512_storeu_si512(words + 32, _mm512_shuffle_i32x4(r2, r3, 0x88));
  _mm512_storeu_si512(words + 48, _mm512_shuffle_i32x4(r2, r3, 0xDD));
}
/* The high and low halves of the 32 x 32 -> 64-bit products of a's lanes by m's. */
__attribute__((target("avx2"))) static inline void mulhilo8(__m256i a, __m256i m, __m256i *hi,
                                                            __m256i *lo) {
  __m256i even = _mm256_mul_epu32(a, m), odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

__attribute__((target("avx2"))) static void philox8_avx2(const lh_rng_key *key, uint64_t block0,
                                                         uint32_t *words) {
  const __m256i m0 = _mm256_set1_epi32((int)PHILOX_M0), m1 = _mm256_set1_epi32((int)PHILOX_M1);
  __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)block0),
                                _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0));
  __m256i c1 = _mm256_set1_epi32((int)(uint32_t)(block0 >> 32));
  __m256i c2 = _mm256_set1_epi32((int)(uint32_t)key->step);
  __m256i c3 = _mm256_set1_epi32((int)key->rank);
  uint32_t k0, k1;
  philox_key(key, &k0, &k1);
  for (int round = 0; round < 10; round++, k0 += PHILOX_W0, k1 += PHILOX_W1) {
    __m256i hi0, lo0, hi2, lo2;
    mulhilo8(c0, m0, &hi0, &lo0);
    mulhilo8(c2, m1, &hi2, &lo2);
    c0 = _mm256_xor_si256(_mm256_xor_si256(hi2, c1), _mm256_set1_epi32((int)k0));
    c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32((int)k1));
    c1 = lo2;
    c3 = lo0;
  }
  /* Transpose as above: 128-bit lane j of q0 .. q3 holds blocks 4j .. 4j + 3. */
  __m256i t01lo = _mm256_unpacklo_epi32(c0, c1), t01hi = _mm256_unpackhi_epi32(c0, c1);
  __m256i t23lo = _mm256_unpacklo_epi32(c2, c3), t23hi = _mm256_unpackhi_epi32(c2, c3);
  __m256i q0 = _mm256_unpacklo_epi64(t01lo, t23lo), q1 = _mm256_unpackhi_epi64(t01lo, t23lo);
  __m256i q2 = _mm256_unpacklo_epi64(t01hi, t23hi), q3 = _mm256_unpackhi_epi64(t01hi, t23hi);
  _mm256_storeu_si256((__m256i *)words, _mm256_permute2x128_si256(q0, q1, 0x20));
  _mm256_storeu_si256((__m256i *)(words + 8), _mm256_permute2x128_si256(q2, q3, 0x20));
  _mm256_storeu_si256((__m256i *)(words + 16), _mm256_permute2x128_si256(q0, q1, 0x31));
  _mm256_storeu_si256((__m256i *)(words + 24), _mm256_permute2x128_si256(q2, q3, 0x31));
}
#endif

/* Any machine: gcc still vectorises this loop across blocks. */
LH_QZ_HOT static void rng_words_portable(const lh_rng_key *key, uint64_t block0, size_t blocks,
                                         uint32_t *words) {
  for (size_t b = 0; b < blocks; b++)
    lh_rng_block(key, block0 + b, words + 4 * b);
}

/* The random words of elements first .. first + n - 1 (first a multiple of 4) into words[],
 * which must hold n rounded up to a multiple of 4: four words per Philox counter block. */
void lh_qz_rng_words(const lh_rng_key *key, uint64_t first, size_t n, uint32_t *words) {
  uint64_t block0 = first >> 2;
  size_t blocks = (n + 3) / 4, b = 0;
#ifdef LH_QZ_PHILOX_SIMD
  size_t lanes = __builtin_cpu_supports("avx512f") ? 16 : __builtin_cpu_supports("avx2") ? 8 : 0;
  for (; lanes && b + lanes <= blocks; b += lanes) {
    uint64_t c = block0 + b;
    if ((uint32_t)c > UINT32_MAX - (lanes - 1)) /* the low word wraps inside: once in 2^32 */
      rng_words_portable(key, c, lanes, words + 4 * b);
    else if (lanes == 16)
      philox16_avx512(key, c, words + 4 * b);
    else
      philox8_avx2(key, c, words + 4 * b);
  }
#endif
  rng_words_portable(key, block0 + b, blocks - b, words + 4 * b);
}

/* One loop per (stochastic, error feedback) pair, so each is branch-free and vectorises. */
static inline __attribute__((always_inline)) void quantize_loop(const float *src, float *e,
                                                                const uint32_t *words, size_t n,
                                                                float inv, float step, int max_code,
                                                                int stochastic, uint8_t *codes) {
  for (size_t j = 0; j < n; j++) {
    uint32_t u = lh_quant_code(src[j], inv, max_code, stochastic, stochastic ? words[j] : 0u);
    codes[j] = (uint8_t)u;
    if (e)
      e[j] = LH_FSUB(e[j], lh_dequant_code(u, max_code, step));
  }
}

/* codes[j] = lh_quant_code of src[j] (words: the elements' random words, NULL for round to
 * nearest); with e (the residual, equal to src) also e[j] -= the decoded value. */
LH_QZ_HOT void lh_qz_quantize(const float *src, float *e, const uint32_t *words, size_t n,
                              float inv, float step, int max_code, uint8_t *codes) {
  if (!(inv <= FLT_MAX)) {
    /* A scale so small (below about M * 2^-129) that M / (2s) overflows: x * inv is NaN for
     * x = 0, and converting NaN to an integer is undefined in C. The GPU's conversion gives
     * 0, so give 0 here too and keep the twins equal. Rare: a plain loop will do. */
    for (size_t j = 0; j < n; j++) {
      uint32_t u = src[j] == 0.0f
                       ? 0u
                       : lh_quant_code(src[j], inv, max_code, words != NULL, words ? words[j] : 0u);
      codes[j] = (uint8_t)u;
      if (e)
        e[j] = LH_FSUB(e[j], lh_dequant_code(u, max_code, step));
    }
  } else if (words && e) {
    quantize_loop(src, e, words, n, inv, step, max_code, 1, codes);
  } else if (words) {
    quantize_loop(src, NULL, words, n, inv, step, max_code, 1, codes);
  } else if (e) {
    quantize_loop(src, e, NULL, n, inv, step, max_code, 0, codes);
  } else {
    quantize_loop(src, NULL, NULL, n, inv, step, max_code, 0, codes);
  }
}

/* Eight codes of b bits fill b bytes, least significant bit first. `b` is a constant in each
 * instantiation, so the shifts are too. */
static inline __attribute__((always_inline)) void pack_groups(const uint8_t *codes, size_t groups,
                                                              uint8_t *out, int b) {
  for (size_t g = 0; g < groups; g++) {
    uint64_t w = 0;
    for (int k = 0; k < 8; k++)
      w |= (uint64_t)codes[8 * g + k] << (k * b);
    for (int k = 0; k < b; k++)
      out[g * b + k] = (uint8_t)(w >> (8 * k));
  }
}

static inline __attribute__((always_inline)) void unpack_groups(const uint8_t *in, size_t groups,
                                                                uint8_t *codes, int b) {
  for (size_t g = 0; g < groups; g++) {
    uint64_t w = 0;
    for (int k = 0; k < b; k++)
      w |= (uint64_t)in[g * b + k] << (8 * k);
    for (int k = 0; k < 8; k++)
      codes[8 * g + k] = (uint8_t)((w >> (k * b)) & ((1u << b) - 1u));
  }
}

LH_QZ_HOT static void pack_full_groups(const uint8_t *codes, size_t groups, int bits,
                                       uint8_t *out) {
  switch (bits) {
  case 1: pack_groups(codes, groups, out, 1); break;
  case 2: pack_groups(codes, groups, out, 2); break;
  case 3: pack_groups(codes, groups, out, 3); break;
  case 4: pack_groups(codes, groups, out, 4); break;
  case 5: pack_groups(codes, groups, out, 5); break;
  case 6: pack_groups(codes, groups, out, 6); break;
  case 7: pack_groups(codes, groups, out, 7); break;
  default: memcpy(out, codes, groups * 8); break;
  }
}

LH_QZ_HOT static void unpack_full_groups(const uint8_t *in, size_t groups, int bits,
                                         uint8_t *codes) {
  switch (bits) {
  case 1: unpack_groups(in, groups, codes, 1); break;
  case 2: unpack_groups(in, groups, codes, 2); break;
  case 3: unpack_groups(in, groups, codes, 3); break;
  case 4: unpack_groups(in, groups, codes, 4); break;
  case 5: unpack_groups(in, groups, codes, 5); break;
  case 6: unpack_groups(in, groups, codes, 6); break;
  case 7: unpack_groups(in, groups, codes, 7); break;
  default: memcpy(codes, in, groups * 8); break;
  }
}

/* Packs n codes (the first one at a multiple of 8 in the stream) into ceil(n * bits / 8)
 * bytes; the unused high bits of a last partial byte are 0. Codes must be below 2^bits. */
void lh_qz_pack(const uint8_t *codes, size_t n, int bits, uint8_t *out) {
  size_t groups = n / 8, rest = n % 8;
  pack_full_groups(codes, groups, bits, out);
  if (rest) {
    uint8_t last[8] = {0}, bytes[8];
    memcpy(last, codes + 8 * groups, rest);
    pack_full_groups(last, 1, bits, bytes);
    memcpy(out + groups * (size_t)bits, bytes, (rest * (size_t)bits + 7) / 8);
  }
}

/* The inverse: reads ceil(n * bits / 8) bytes, writes n codes. */
void lh_qz_unpack(const uint8_t *in, size_t n, int bits, uint8_t *codes) {
  size_t groups = n / 8, rest = n % 8;
  unpack_full_groups(in, groups, bits, codes);
  if (rest) {
    uint8_t bytes[8] = {0}, last[8];
    memcpy(bytes, in + groups * (size_t)bits, (rest * (size_t)bits + 7) / 8);
    unpack_full_groups(bytes, 1, bits, last);
    memcpy(codes + 8 * groups, last, rest);
  }
}

/* Scale k of a payload's scale array; returns the value a decoder will read back. fp16
 * rounds to nearest, or up (round_up) so that a stored scale never clips its block. */
float lh_qz_store_scale(uint8_t *scales, size_t k, int fp16, int round_up, float s) {
  if (!fp16) {
    memcpy(scales + 4 * k, &s, 4);
    return s;
  }
  uint16_t h = round_up ? lh_f32_to_f16_up(s) : lh_f32_to_f16(s);
  memcpy(scales + 2 * k, &h, 2);
  return lh_f16_to_f32(h);
}

float lh_qz_load_scale(const uint8_t *scales, size_t k, int fp16) {
  if (fp16) {
    uint16_t h;
    memcpy(&h, scales + 2 * k, 2);
    return lh_f16_to_f32(h);
  }
  float s;
  memcpy(&s, scales + 4 * k, 4);
  return s;
}

/* Scales must be finite and >= 0 (-0 is 0); the first one that is not is named. */
lh_status lh_qz_check_scales(const char *fn, const void *scales, size_t nb, int fp16,
                             lh_status status) {
  for (size_t k = 0; k < nb; k++) {
    float s = lh_qz_load_scale(scales, k, fp16);
    if (!(s >= 0.0f && s <= FLT_MAX))
      return lh_error(status, "%s: the scale of block %zu is %g, not a finite value >= 0", fn, k,
                      (double)s);
  }
  return LH_SUCCESS;
}

void lh_qz_encode_packed(const lh_qz_packed_encoder *enc) {
  uint8_t codes[LH_QZ_TILE];
  uint32_t words[LH_QZ_TILE];
  size_t block_end = 0; /* of the block being coded, which the next tile may continue */
  for (size_t t0 = 0; t0 < enc->n; t0 += LH_QZ_TILE) {
    size_t tend = enc->n - t0 < LH_QZ_TILE ? enc->n : t0 + LH_QZ_TILE;
    if (enc->key)
      lh_qz_rng_words(enc->key, t0, tend - t0, words);
    for (size_t i = t0; i < tend;) {
      if (i == block_end) {
        size_t len = enc->n - i < enc->block ? enc->n - i : enc->block;
        enc->begin_block(enc->ctx, i, len);
        block_end = i + len;
      }
      size_t end = block_end < tend ? block_end : tend;
      enc->code_run(enc->ctx, i, end - i, enc->key ? words + (i - t0) : NULL, codes + (i - t0));
      i = end;
    }
    lh_qz_pack(codes, tend - t0, enc->bits, enc->codes_out + t0 / 8 * (size_t)enc->bits);
  }
}

void lh_qz_decode_packed(const uint8_t *codes_in, size_t n, size_t block, int bits,
                         void (*value_run)(void *ctx, size_t k, size_t first, size_t len,
                                           const uint8_t *codes),
                         void *ctx) {
  uint8_t codes[LH_QZ_TILE];
  for (size_t t0 = 0; t0 < n; t0 += LH_QZ_TILE) {
    size_t tend = n - t0 < LH_QZ_TILE ? n : t0 + LH_QZ_TILE;
    lh_qz_unpack(codes_in + t0 / 8 * (size_t)bits, tend - t0, bits, codes);
    for (size_t i = t0; i < tend;) {
      size_t k = i / block;
      size_t end = (k + 1) * block < tend ? (k + 1) * block : tend;
      value_run(ctx, k, i, end - i, codes + (i - t0));
      i = end;
    }
  }
}

/* ---- BLOCKQ ---- */

static lh_status blockq_check_params(const char *fn, const lh_blockq_params *p) {
  if (!p)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: params is NULL", fn);
  if (p->bits < 1 || p->bits > 8)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: bits is %d, not in 1..8", fn, p->bits);
  if (p->block < 1)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: block is %d, not >= 1", fn, p->block);
  if (p->scale_fp16 != 0 && p->scale_fp16 != 1)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: scale_fp16 is %d, not 0 or 1", fn, p->scale_fp16);
  if (p->stochastic != 0 && p->stochastic != 1)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: stochastic is %d, not 0 or 1", fn, p->stochastic);
  return LH_SUCCESS;
}

static size_t blocks_of(size_t n, size_t block) { return n / block + (n % block != 0); }

static size_t scale_bytes(const lh_blockq_params *p, size_t n) {
  return blocks_of(n, (size_t)p->block) * (p->scale_fp16 ? 2u : 4u);
}

/* ceil(n * bits / 8) without overflowing for any n a buffer can hold. */
static size_t code_bytes(size_t n, int bits) {
  return n / 8 * (size_t)bits + (n % 8 * (size_t)bits + 7) / 8;
}

size_t lh_blockq_payload_bytes(const lh_blockq_params *p, size_t n) {
  if (!p || p->bits < 1 || p->bits > 8 || p->block < 1 || (unsigned)p->scale_fp16 > 1 ||
      (unsigned)p->stochastic > 1)
    return 0; /* what blockq_check_params refuses */
  return scale_bytes(p, n) + code_bytes(n, p->bits);
}

/* The state of one encode, for the tile driver's callbacks. */
typedef struct blockq_encoder {
  const lh_blockq_params *p;
  int max_code;
  const float *x;
  float *e; /* the residual with error feedback, else NULL */
  uint8_t *scales;
  float inv, step; /* of the block being coded */
} blockq_encoder;

/* The block of len elements from element i: its scale (of x + e, first stored into e, with
 * error feedback), stored, and the multipliers of the stored value. */
static void blockq_begin_block(void *ctx, size_t i, size_t len) {
  blockq_encoder *enc = ctx;
  float s = enc->e ? lh_qz_add_residual(enc->x + i, enc->e + i, len)
                   : lh_bits_f32(lh_qz_max_abs_bits(enc->x + i, len));
  s = lh_qz_store_scale(enc->scales, i / (size_t)enc->p->block, enc->p->scale_fp16, 1, s);
  enc->inv = lh_quant_inv_scale(s, enc->max_code);
  enc->step = lh_quant_step(s, enc->max_code);
}

static void blockq_code_run(void *ctx, size_t i, size_t len, const uint32_t *words,
                            uint8_t *codes) {
  blockq_encoder *enc = ctx;
  const float *src = enc->e ? enc->e + i : enc->x + i;
  lh_qz_quantize(src, enc->e ? enc->e + i : NULL, words, len, enc->inv, enc->step, enc->max_code,
                 codes);
}

static lh_status blockq_encode_any(const char *fn, const lh_blockq_params *p, const lh_rng_key *key,
                                   const float *x, float *e, int ef, size_t n, uint8_t *out) {
  LH_CHECK(blockq_check_params(fn, p));
  if (n == 0)
    return LH_SUCCESS;
  if (!x || !out || (ef && !e))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: NULL buffer for %zu elements", fn, n);
  if (p->stochastic && !key)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: stochastic rounding needs a key", fn);
  LH_CHECK(
      lh_qz_check_input(fn, x, e, n, (size_t)p->block, p->scale_fp16 ? 65504.0f : FLT_MAX, NULL));
  blockq_encoder enc = {
      .p = p, .max_code = lh_quant_max_code(p->bits), .x = x, .e = e, .scales = out};
  lh_qz_encode_packed(&(lh_qz_packed_encoder){
      .n = n,
      .block = (size_t)p->block,
      .bits = p->bits,
      .key = p->stochastic ? key : NULL,
      .codes_out = out + scale_bytes(p, n),
      .begin_block = blockq_begin_block,
      .code_run = blockq_code_run,
      .ctx = &enc,
  });
  return LH_SUCCESS;
}

lh_status lh_blockq_encode(const lh_blockq_params *p, const lh_rng_key *key, const float *x,
                           size_t n, uint8_t *out) {
  return blockq_encode_any("lh_blockq_encode", p, key, x, NULL, 0, n, out);
}

lh_status lh_blockq_encode_ef(const lh_blockq_params *p, const lh_rng_key *key, const float *x,
                              float *e, size_t n, uint8_t *out) {
  return blockq_encode_any("lh_blockq_encode_ef", p, key, x, e, 1, n, out);
}

typedef struct blockq_decoder {
  const lh_blockq_params *p;
  int max_code;
  const uint8_t *scales;
  float *out;
  int accumulate;
} blockq_decoder;

LH_QZ_HOT static void blockq_dequantize(const uint8_t *codes, size_t n, int max_code, float step,
                                        float *out, int accumulate) {
  if (accumulate) {
    for (size_t j = 0; j < n; j++)
      out[j] = LH_FADD(out[j], lh_dequant_code(codes[j], max_code, step));
  } else {
    for (size_t j = 0; j < n; j++)
      out[j] = lh_dequant_code(codes[j], max_code, step);
  }
}

static void blockq_value_run(void *ctx, size_t k, size_t first, size_t len, const uint8_t *codes) {
  const blockq_decoder *dec = ctx;
  float step = lh_quant_step(lh_qz_load_scale(dec->scales, k, dec->p->scale_fp16), dec->max_code);
  blockq_dequantize(codes, len, dec->max_code, step, dec->out + first, dec->accumulate);
}

lh_status lh_blockq_decode(const lh_blockq_params *p, const uint8_t *in, size_t n, float *out,
                           int accumulate) {
  const char *fn = "lh_blockq_decode";
  LH_CHECK(blockq_check_params(fn, p));
  if (n == 0)
    return LH_SUCCESS;
  if (!in || !out)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: NULL buffer for %zu elements", fn, n);
  size_t block = (size_t)p->block;
  LH_CHECK(lh_qz_check_scales(fn, in, blocks_of(n, block), p->scale_fp16, LH_ERR_CORRUPT));
  blockq_decoder dec = {p, lh_quant_max_code(p->bits), in, out, accumulate};
  lh_qz_decode_packed(in + scale_bytes(p, n), n, block, p->bits, blockq_value_run, &dec);
  return LH_SUCCESS;
}

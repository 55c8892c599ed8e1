/* Per-element arithmetic shared by the CPU twins (lib/compress/) and the CUDA kernels
 * (kernels/): the counter-based RNG, the fp16/bf16 conversions and the quantizer's
 * arithmetic. Both sides include this one file, so their results agree bit for bit by
 * construction rather than by testing alone.
 *
 * Rules that keep the two sides equal:
 *  - every float product and sum goes through LH_FMUL/LH_FADD: on the GPU these are the
 *    _rn intrinsics, which nvcc never contracts into an FMA; on the CPU lib/compress is
 *    compiled with -ffp-contract=off;
 *  - rounding to an integer uses the 1.5 * 2^23 trick (round half to even in the default
 *    rounding mode), not rintf/lrintf, so it vectorises on any x86-64 and means the same on
 *    the GPU;
 *  - reductions whose result depends on order (the sign codec's mean |x|) use the fixed
 *    32-lane order described at lh_lane_sum32.
 * Never installed. */
#ifndef LH_COMPRESS_CODEC_MATH_H
#define LH_COMPRESS_CODEC_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

#if defined(__CUDACC__)
#define LH_HD __host__ __device__ __forceinline__
#else
#define LH_HD static inline
#endif

#if defined(__CUDA_ARCH__)
#define LH_FMUL(a, b) __fmul_rn((a), (b))
#define LH_FADD(a, b) __fadd_rn((a), (b))
#define LH_FSUB(a, b) __fsub_rn((a), (b))
#define LH_FDIV(a, b) __fdiv_rn((a), (b))
#else
#define LH_FMUL(a, b) ((a) * (b))
#define LH_FADD(a, b) ((a) + (b))
#define LH_FSUB(a, b) ((a) - (b))
#define LH_FDIV(a, b) ((a) / (b))
#endif

#if defined(__CUDA_ARCH__)
LH_HD uint32_t lh_f32_bits(float f) { return __float_as_uint(f); }
LH_HD float lh_bits_f32(uint32_t u) { return __uint_as_float(u); }
#else
LH_HD uint32_t lh_f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}
LH_HD float lh_bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
#endif

/* ---- Philox4x32-10 (Salmon et al., SC'11) ------------------------------------------------
 * The random bits of element i under key (seed, step, rank) are word (i & 3) of
 *   philox(counter = {lo32(i >> 2), hi32(i >> 2), lo32(step), rank},
 *          key     = {lo32(seed), hi32(seed) ^ hi32(step)}).
 * Any thread or launch layout that computes element i gets the same 32 bits. Streams that
 * all ranks must share (random-k's choice, PowerSGD's first Q) use rank LH_RNG_SHARED_RANK. */
#define LH_RNG_SHARED_RANK 0xFFFFFFFFu

typedef struct lh_rng_key {
  uint64_t seed;
  uint64_t step;
  uint32_t rank;
} lh_rng_key;

LH_HD void lh_philox4x32_10(const uint32_t ctr_in[4], const uint32_t key_in[2], uint32_t out[4]) {
  uint32_t c0 = ctr_in[0], c1 = ctr_in[1], c2 = ctr_in[2], c3 = ctr_in[3];
  uint32_t k0 = key_in[0], k1 = key_in[1];
  for (int round = 0; round < 10; round++) {
    uint64_t p0 = (uint64_t)0xD2511F53u * c0;
    uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
    uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    c1 = (uint32_t)p1;
    c3 = (uint32_t)p0;
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

/* The four words of counter block `block` (elements 4*block .. 4*block+3). */
LH_HD void lh_rng_block(const lh_rng_key *key, uint64_t block, uint32_t out[4]) {
  uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)key->step, key->rank};
  uint32_t k[2] = {(uint32_t)key->seed, (uint32_t)(key->seed >> 32) ^ (uint32_t)(key->step >> 32)};
  lh_philox4x32_10(ctr, k, out);
}

/* The 32 random bits of one element (computes a whole block: loops should use lh_rng_block). */
LH_HD uint32_t lh_rng_u32(const lh_rng_key *key, uint64_t element) {
  uint32_t out[4];
  lh_rng_block(key, element >> 2, out);
  return out[element & 3];
}

/* A uniform float in [0, 1) from 32 random bits: the top 24 bits, exactly representable. */
LH_HD float lh_rng_unit(uint32_t bits) { return (float)(bits >> 8) * 0x1p-24f; }

/* ---- fp16 and bf16, round to nearest even -----------------------------------------------
 * NaN becomes 0x7FFF in both formats (what CUDA's __float2half_rn and __float2bfloat16_rn
 * give), overflow becomes infinity, fp16 subnormals are rounded correctly. */
LH_HD uint16_t lh_f32_to_bf16(float f) {
  uint32_t u = lh_f32_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u)
    return 0x7FFF;
  u += 0x7FFFu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
LH_HD float lh_bf16_to_f32(uint16_t h) { return lh_bits_f32((uint32_t)h << 16); }

#if defined(__CUDA_ARCH__)
/* On the GPU the hardware conversion (cvt.rn.f16.f32) rounds exactly as the CPU code below:
 * to nearest even, subnormals included, 65520 and above to infinity; only NaN is mapped by
 * hand, to the same 0x7FFF. One instruction instead of about fifteen: the AQ-SGD kernels
 * convert three values per element and were bound by it. */
LH_HD uint16_t lh_f32_to_f16(float f) {
  uint16_t h = __half_as_ushort(__float2half_rn(f));
  return (lh_f32_bits(f) & 0x7FFFFFFFu) > 0x7F800000u ? (uint16_t)0x7FFFu : h;
}
/* fp16 -> fp32 is exact in hardware; NaN keeps its payload by hand, as on the CPU. */
LH_HD float lh_f16_to_f32(uint16_t h) {
  float v = __half2float(__ushort_as_half(h));
  uint32_t nan = ((uint32_t)(h & 0x8000u) << 16) | 0x7F800000u | ((uint32_t)(h & 0x3FFu) << 13);
  return (h & 0x7C00u) == 0x7C00u && (h & 0x3FFu) ? lh_bits_f32(nan) : v;
}
#else
/* Without branches, so that loops over it vectorise (branches mispredict on gradients, which
 * straddle fp16's normal and subnormal ranges): every case is computed and one selected. Checked
 * against a branching reference for all 2^32 inputs when written; the tests check a dense sample. */
LH_HD uint16_t lh_f32_to_f16(float f) {
  uint32_t a = lh_f32_bits(f) & 0x7FFFFFFFu;
  uint32_t sign = (lh_f32_bits(f) >> 16) & 0x8000u;
  /* Normal: rebias the exponent (127 -> 15) and round the 13 dropped bits to nearest even; a
   * carry out of the mantissa correctly bumps the exponent. */
  uint32_t r = a - 0x38000000u;
  uint32_t normal = (r + 0xFFFu + ((r >> 13) & 1u)) >> 13;
  /* Below 2^-14 the fp16 is round(|f| * 2^24): adding 0.5, whose ulp is 2^-24, rounds |f| to
   * that multiple to nearest even in the FPU, ties and the carry into 2^-14 included. */
  uint32_t subnormal = lh_f32_bits(LH_FADD(lh_bits_f32(a), 0.5f)) - 0x3F000000u;
  uint32_t h = a < 0x38800000u ? subnormal : normal;
  h = a >= 0x477FF000u ? 0x7C00u : h; /* rounds to 65520 or more: infinity */
  h |= sign;
  return (uint16_t)(a > 0x7F800000u ? 0x7FFFu : h); /* NaN, without its sign */
}

LH_HD float lh_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  if (exp == 0x1F) /* infinity or NaN: keep the payload */
    return lh_bits_f32(sign | 0x7F800000u | (mant << 13));
  if (exp == 0) { /* zero or subnormal: mant * 2^-24, exact in float */
    float v = (float)mant * 0x1p-24f;
    return sign ? -v : v;
  }
  return lh_bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}
#endif

/* fp16 rounding toward +infinity of a non-negative finite scale, so that a stored scale never
 * clips the block it scales. Infinity when s > 65504 (the caller refuses such a block). */
LH_HD uint16_t lh_f32_to_f16_up(float s) {
  uint16_t h = lh_f32_to_f16(s);
  if (h < 0x7C00u && lh_f16_to_f32(h) < s)
    h++;
  return h;
}

/* ---- The block quantizer ------------------------------------------------------------------
 * b bits give codes u in [0, M], M = 1 for b = 1 and 2^b - 2 for b >= 2 (so b >= 2 has an
 * exact zero: u = M/2; the code 2^b - 1 is never produced). A block with stored scale s
 * (the max |x|, rounded up to fp16 when stored as fp16) maps
 *   x -> t = x * (M / (2s)) + M/2, clamped to [0, M], then rounded (nearest even or
 *   stochastic: floor(t + uniform)), and back  u -> (2u - M) * (s / M).                   */
LH_HD int lh_quant_max_code(int bits) { return bits == 1 ? 1 : (1 << bits) - 2; }

/* Round half to even for 0 <= t < 2^22. */
LH_HD float lh_round_even(float t) {
  return LH_FSUB(LH_FADD(t, 12582912.0f), 12582912.0f);
}

/* The per-block multiplier M / (2s); 0 for an all-zero block (every code becomes M/2). Capped
 * at FLT_MAX: a tiny fp32 scale would overflow it to infinity, and 0 * inf is NaN. */
LH_HD float lh_quant_inv_scale(float s, int max_code) {
  float inv = s > 0.0f ? LH_FDIV(0.5f * (float)max_code, s) : 0.0f;
  /* fminf, not a compare and branch: gcc 13.3's floating-point range propagation threads the
   * branch and miscompiles the caller's s / max_code on the capped path (seen on Ubuntu 24.04:
   * 1-bit blockq error feedback on subnormal blocks left the residual undecremented). inv is
   * never NaN here, so fminf is the same function on CPU and GPU. */
  return fminf(inv, 3.402823466e38f);
}

/* One element's code. `bits32` is its random word (ignored for round to nearest). */
LH_HD uint32_t lh_quant_code(float x, float inv, int max_code, int stochastic, uint32_t bits32) {
  float m = (float)max_code;
  float t = LH_FADD(LH_FMUL(x, inv), 0.5f * m);
  t = t >= 0.0f ? t : 0.0f; /* also maps NaN, which the encoders refuse earlier, to 0 */
  t = t > m ? m : t;
  float r;
  if (stochastic) {
    /* Up with probability frac(t). Not floor(t + u): for a large t that sum rounds, and a
     * whole t could be pushed up. t - floor(t) is exact. */
    float down = floorf(t);
    r = lh_rng_unit(bits32) < LH_FSUB(t, down) ? LH_FADD(down, 1.0f) : down;
  } else {
    r = lh_round_even(t);
  }
  return (uint32_t)r;
}

/* The step s / M of a block's dequantization. */
LH_HD float lh_quant_step(float s, int max_code) { return LH_FDIV(s, (float)max_code); }

LH_HD float lh_dequant_code(uint32_t u, int max_code, float step) {
  return LH_FMUL((float)(2 * (int32_t)u - max_code), step);
}

/* ---- Fixed-order sum of 32 lanes ----------------------------------------------------------
 * Where a block reduction must give the same bits on CPU and GPU (the sign codec's mean |x|),
 * lane j (0..31) sums elements j, j+32, j+64, ... of the block in increasing order, then the
 * lanes are folded as a warp does with shuffles: for off = 16, 8, 4, 2, 1, lane[i] += lane[i +
 * off] for i < off. The result is lane[0]. */
LH_HD float lh_lane_fold32(float lane[32]) {
  for (int off = 16; off >= 1; off >>= 1)
    for (int i = 0; i < off; i++)
      lane[i] = LH_FADD(lane[i], lane[i + off]);
  return lane[0];
}

#endif

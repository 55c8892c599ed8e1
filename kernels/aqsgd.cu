// AQ-SGD's quantizer on the GPU. Twins: lib/aqsgd/quant.c; what both compute is specified in
// lib/aqsgd/aqsgd_internal.h, and every per-element operation (conversions, the code, the
// dequantized value, the buffer update, the random words) is codec_math.h's, so the bytes equal
// the twins' whatever the launch shape. Max is exact and order-free, so any reduction tree gives
// the twins' scales.
//
// Two families of kernels. The fast ones (encode_group_fast, decode_fast) take most calls:
// PER_TOKEN_GROUP encodes whose a and m are 16-byte aligned, and decodes with E a multiple of 16
// and out and m 16-byte aligned. Their work unit is 16 consecutive elements of one row (two
// octets, 32-byte fp16 accesses), the element types are template parameters (one kernel per
// pair dtype x storage, so no per-element type switch), the code width is a uniform switch per
// unit into constant-shift packers (every width 2-8), and fp16 conversions skip codec_math.h's
// per-element NaN fix-up where no NaN can occur (see "the fast kernels" below). The generic
// kernels, runtime types and width, handle everything else.
//
// Generic work unit: an "octet", the 8 consecutive codes 8u .. 8u + 7 of the call's code stream,
// which fill exactly `bits` bytes at byte u * bits: a thread owns its octet's bytes and writes
// them without touching anyone else's, whatever the width (a fast unit owns 2 octets). When E =
// tokens x channels is a multiple of 8 an octet lies in one row, its elements are contiguous in
// a, m and out, and (pointers 16-byte aligned) a thread moves them with 16-byte accesses.
// Otherwise (PER_CHANNEL with E not a multiple of 8, and the full-precision rows) each element
// finds its row on its own: correct, slower, rare.
//
// Kernels:
//  - encode_group_fast / encode_group: PER_TOKEN_GROUP's fused sender, one pass: the lanes of a
//    group (group / 16 or group / 8) are consecutive lanes of a warp; each loads its deltas
//    d = a - m, the group max of the bits of |d| is a segmented xor-shuffle max, the first lane
//    writes the scale, and every lane quantizes its values from registers, writes its code
//    bytes and m' = m + q.
//  - channel_max: PER_CHANNEL's scales: each block takes 256 channels over a share of the
//    (row, token) lines, reduces the max bits in registers and shared memory, and merges its
//    scale per channel with an atomic max on the fp16 bit pattern (the launcher zeroes the
//    scales first). lh_aq_scale_from_max_bits is monotone in the max's bits, so the max of the
//    blocks' scales is the scale of the max (the unit test checks the monotonicity).
//  - encode_channel: PER_CHANNEL's quantize pass, reading the scales; each block first turns
//    the channels' scales into multipliers and steps in shared memory (up to kChannelCache
//    channels; beyond, every element computes its own).
//  - decode_fast / decode: the receiver, both quantizers: dequantize; with m, m' = m + q in
//    place and out = m'.
//  - full_encode / full_decode: the full-precision rows (first visits).
//
// Bytes per element that must move (fp16 a, m and out; b-bit codes; a scale per 128):
//   encode_group    2 (a) + 2 (m) + 2 (m') + b/8 + 2/128      = 6.27 at b = 2
//   decode          b/8 + 2/128 + 2 (m) + 2 (m') + 2 (out)      = 6.27 at b = 2
//   direct encode   2 (a) + b/8 + 2/128; direct decode b/8 + 2/128 + 2 (out)
//   PER_CHANNEL     channel_max reads a and m (4), encode_channel the same as encode_group
#include <cuda_runtime.h>

#include "aqsgd/aqsgd_internal.h"
#include "codec_common.cuh"

namespace {

using namespace lh_codec;

constexpr int kThreads = 256;
constexpr int kBlocksPerSm = 16;       // grid-stride kernels: two waves of full occupancy
constexpr size_t kChannelCache = 4096;  // PER_CHANNEL multipliers and steps in shared memory

// n / d by a multiply-high (Granlund and Montgomery's round-up method) when every numerator
// fits 32 bits; a plain 64-bit division otherwise.
struct Divider {
  uint64_t d;
  uint32_t mul, shift;
  bool wide;
  __device__ __forceinline__ uint64_t div(uint64_t n) const {
    if (wide)
      return n / d;
    const uint32_t n32 = (uint32_t)n;
    return (uint32_t)(((uint64_t)__umulhi(n32, mul) + n32) >> shift);
  }
};

Divider make_divider(uint64_t d, uint64_t max_numerator) {
  Divider v;
  v.d = d ? d : 1;
  v.wide = max_numerator > UINT32_MAX || v.d > UINT32_MAX;
  v.mul = 0;
  v.shift = 0;
  if (!v.wide) {
    while (v.shift < 32 && (uint64_t{1} << v.shift) < v.d)
      v.shift++;
    v.mul = (uint32_t)(((uint64_t{1} << 32) * ((uint64_t{1} << v.shift) - v.d)) / v.d + 1);
  }
  return v;
}

struct AqArgs {
  size_t rows, E, E8, channels, tokens;
  size_t units;    // octets of the call (ceil(rows E / 8))
  size_t total;    // codes (elements) of the call: rows E
  Divider row_of;  // octet (aligned kernels) or element index -> row
  Divider chan_of; // column j -> j / channels
  Divider line_of; // channel_max: line (row * tokens + token) -> row
  int bits, max_code, seg_shift, stochastic, dtype, storage, quantizer;
  int cached;      // PER_CHANNEL: factors in shared memory
  bool vec_a, vec_m, vec_out;
  uint64_t seed;
  uint32_t stream;
  const void *a;
  const uint32_t *batch_rows;
  void *m;
  const int64_t *slots, *ids;
  const uint32_t *visits;
  uint16_t *scales;        // encode_group writes, channel_max merges into
  const uint16_t *cscales; // read: PER_CHANNEL encode, decode
  uint8_t *codes;
  const uint8_t *codes_in;
  void *out;               // decode's output, full_encode's wire
  const void *wire;        // full_decode's input
};

// ---- typed element access --------------------------------------------------------------------

// Element i .. i + 7 of p (type t) as fp32. vec: p + i is 16-byte aligned (p was checked, i is
// a multiple of 8).
__device__ __forceinline__ void load8t(const void *p, int t, size_t i, bool vec, float v[8]) {
  if (t == LH_AQ_T_FP32) {
    load8(static_cast<const float *>(p), i, 8, vec, v);
    return;
  }
  const uint16_t *h = static_cast<const uint16_t *>(p) + i;
  uint16_t w[8];
  if (vec) {
    const uint4 x = *reinterpret_cast<const uint4 *>(h);
    const uint32_t words[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
      w[2 * k] = (uint16_t)words[k];
      w[2 * k + 1] = (uint16_t)(words[k] >> 16);
    }
  } else {
#pragma unroll
    for (int k = 0; k < 8; k++)
      w[k] = h[k];
  }
#pragma unroll
  for (int k = 0; k < 8; k++)
    v[k] = t == LH_AQ_T_FP16 ? lh_f16_to_f32(w[k]) : lh_bf16_to_f32(w[k]);
}

// Element i .. i + 7 of p (type t) = v rounded to t.
__device__ __forceinline__ void store8t(void *p, int t, size_t i, bool vec, const float v[8]) {
  if (t == LH_AQ_T_FP32) {
    store8(static_cast<float *>(p), i, 8, vec, v);
    return;
  }
  uint16_t w[8];
#pragma unroll
  for (int k = 0; k < 8; k++)
    w[k] = t == LH_AQ_T_FP16 ? lh_f32_to_f16(v[k]) : lh_f32_to_bf16(v[k]);
  uint16_t *h = static_cast<uint16_t *>(p) + i;
  if (vec) {
    uint4 x;
    x.x = w[0] | ((uint32_t)w[1] << 16);
    x.y = w[2] | ((uint32_t)w[3] << 16);
    x.z = w[4] | ((uint32_t)w[5] << 16);
    x.w = w[6] | ((uint32_t)w[7] << 16);
    *reinterpret_cast<uint4 *>(h) = x;
  } else {
#pragma unroll
    for (int k = 0; k < 8; k++)
      h[k] = w[k];
  }
}

// Type t's rounding of v, back in fp32: what storing then loading gives.
__device__ __forceinline__ float round_to(int t, float v) {
  if (t == LH_AQ_T_FP16)
    return lh_f16_to_f32(lh_f32_to_f16(v));
  if (t == LH_AQ_T_BF16)
    return lh_bf16_to_f32(lh_f32_to_bf16(v));
  return v;
}

// Where row r's elements start in a / out (batch row), and in m (slot).
__device__ __forceinline__ size_t batch_base(const AqArgs &g, size_t r) {
  return (g.batch_rows ? (size_t)g.batch_rows[r] : r) * g.E;
}
__device__ __forceinline__ size_t slot_base(const AqArgs &g, size_t r) { return (size_t)g.slots[r] * g.E; }

__device__ __forceinline__ lh_rng_key row_key(const AqArgs &g, size_t r) {
  lh_rng_key key;
  key.seed = g.seed;
  key.step = g.visits[r];
  key.rank = g.stream;
  return key;
}

// The 8 random words of elements e0 .. e0 + 7, e0 a multiple of 8: Philox blocks e0/4, e0/4 + 1.
__device__ __forceinline__ void octet_random(const lh_rng_key &key, uint64_t e0, uint32_t rnd[8]) {
  lh_rng_block(&key, e0 >> 2, rnd);
  lh_rng_block(&key, (e0 >> 2) + 1, rnd + 4);
}

// Octet u of an aligned call (E a multiple of 8): its row and first column.
__device__ __forceinline__ void octet_position(const AqArgs &g, size_t u, size_t *r, size_t *j) {
  *r = (size_t)g.row_of.div(u);
  *j = (u - *r * g.E8) * 8;
}

// ---- PER_TOKEN_GROUP: the fused sender -------------------------------------------------------

// The loop runs over whole warps (base is a multiple of 32 and the same for all lanes), so every
// lane reaches the shuffles; a group's L lanes are all in range or all out (the call's octets
// are whole groups).
template <bool HAS_M, bool STOCH>
__global__ void __launch_bounds__(kThreads) encode_group_kernel(AqArgs g) {
  const int lane = threadIdx.x & 31;
  const unsigned L = 1u << g.seg_shift;
  const size_t warp = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
  const size_t nwarps = ((size_t)gridDim.x * blockDim.x) >> 5;
  for (size_t base = warp * 32; base < g.units; base += nwarps * 32) {
    const size_t u = base + lane;
    const bool active = u < g.units;
    float d[8], mv[8];
    size_t r = 0, j = 0, mbase = 0;
    uint32_t mx = 0;
    if (active) {
      octet_position(g, u, &r, &j);
      load8t(g.a, g.dtype, batch_base(g, r) + j, g.vec_a, d);
      if (HAS_M) {
        mbase = slot_base(g, r) + j;
        load8t(g.m, g.storage, mbase, g.vec_m, mv);
#pragma unroll
        for (int k = 0; k < 8; k++)
          d[k] = LH_FSUB(d[k], mv[k]);
      }
#pragma unroll
      for (int k = 0; k < 8; k++) {
        const uint32_t b = lh_f32_bits(d[k]) & 0x7FFFFFFFu;
        mx = b > mx ? b : mx;
      }
    }
    for (unsigned off = L >> 1; off >= 1; off >>= 1) {
      const uint32_t other = __shfl_xor_sync(kFullMask, mx, off);
      mx = other > mx ? other : mx;
    }
    if (!active)
      continue;
    const uint16_t h = lh_aq_scale_from_max_bits(mx);
    if ((u & (L - 1)) == 0)
      g.scales[u >> g.seg_shift] = h;
    const float s = lh_f16_to_f32(h);
    const float inv = lh_quant_inv_scale(s, g.max_code), step = lh_quant_step(s, g.max_code);
    uint32_t rnd[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (STOCH)
      octet_random(row_key(g, r), (uint64_t)g.ids[r] * g.E + j, rnd);
    uint64_t packed = 0;
    float next[8];
#pragma unroll
    for (int k = 0; k < 8; k++) {
      const uint32_t code = lh_quant_code(d[k], inv, g.max_code, STOCH, rnd[k]);
      packed |= (uint64_t)code << (k * g.bits);
      if (HAS_M)
        next[k] = LH_FADD(mv[k], lh_dequant_code(code, g.max_code, step));
    }
    put_bytes(g.codes + u * (size_t)g.bits, packed, g.bits);
    if (HAS_M)
      store8t(g.m, g.storage, mbase, g.vec_m, next);
  }
}

// ---- PER_CHANNEL: scales ---------------------------------------------------------------------

// 16-bit atomic max by compare-and-swap (sm_70 and later have a 16-bit atomicCAS).
__device__ __forceinline__ void atomic_max_u16(uint16_t *addr, uint16_t v) {
  unsigned short *p = reinterpret_cast<unsigned short *>(addr);
  unsigned short seen = 0;
  while (seen < v) {
    const unsigned short prev = atomicCAS(p, seen, (unsigned short)v);
    if (prev == seen)
      break;
    seen = prev;
  }
}

// Block (32, 8): threadIdx.x takes channels c0 .. c0 + 7 of the block's 256, threadIdx.y every
// 8th line of the block's share. vec: channels is a multiple of 8 and a, m 16-byte aligned.
constexpr int kMaxLinesPerBlock = 8;

template <bool HAS_M>
__global__ void __launch_bounds__(kThreads) channel_max_kernel(AqArgs g, bool vec) {
  __shared__ uint32_t part[kMaxLinesPerBlock][32 * 8];
  const size_t c0 = (blockIdx.x * (size_t)32 + threadIdx.x) * 8;
  const size_t lines = g.rows * g.tokens;
  uint32_t mx[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if (c0 < g.channels) {
    for (size_t line = blockIdx.y * (size_t)kMaxLinesPerBlock + threadIdx.y; line < lines;
         line += (size_t)gridDim.y * kMaxLinesPerBlock) {
      const size_t r = (size_t)g.line_of.div(line);
      const size_t col = (line - r * g.tokens) * g.channels + c0;  // column of channel c0
      float d[8];
      if (vec) {
        load8t(g.a, g.dtype, batch_base(g, r) + col, g.vec_a, d);
        if (HAS_M) {
          float mv[8];
          load8t(g.m, g.storage, slot_base(g, r) + col, g.vec_m, mv);
#pragma unroll
          for (int k = 0; k < 8; k++)
            d[k] = LH_FSUB(d[k], mv[k]);
        }
      } else {
        const size_t ab = batch_base(g, r) + col, mb = HAS_M ? slot_base(g, r) + col : 0;
#pragma unroll
        for (int k = 0; k < 8; k++) {
          d[k] = 0.0f;
          if (c0 + k < g.channels) {
            d[k] = lh_aq_load(g.a, g.dtype, ab + k);
            if (HAS_M)
              d[k] = LH_FSUB(d[k], lh_aq_load(g.m, g.storage, mb + k));
          }
        }
      }
#pragma unroll
      for (int k = 0; k < 8; k++) {
        const uint32_t b = lh_f32_bits(d[k]) & 0x7FFFFFFFu;
        mx[k] = b > mx[k] ? b : mx[k];
      }
    }
  }
#pragma unroll
  for (int k = 0; k < 8; k++)
    part[threadIdx.y][threadIdx.x * 8 + k] = mx[k];
  __syncthreads();
  const int cc = threadIdx.y * 32 + threadIdx.x;  // one of the block's 256 channels
  const size_t c = blockIdx.x * (size_t)256 + cc;
  uint32_t m = 0;
#pragma unroll
  for (int y = 0; y < kMaxLinesPerBlock; y++)
    m = part[y][cc] > m ? part[y][cc] : m;
  if (c < g.channels && m != 0)
    atomic_max_u16(g.scales + c, lh_aq_scale_from_max_bits(m));
}

// ---- PER_CHANNEL: quantize -------------------------------------------------------------------

// The multiplier and step of channel c: from the block's cache, or computed.
struct ChannelFactors {
  const float *inv, *step;  // shared memory, or NULL
  __device__ __forceinline__ void get(const AqArgs &g, size_t c, float *i, float *s) const {
    if (inv) {
      *i = inv[c];
      *s = step[c];
    } else {
      const float sc = lh_f16_to_f32(g.cscales[c]);
      *i = lh_quant_inv_scale(sc, g.max_code);
      *s = lh_quant_step(sc, g.max_code);
    }
  }
};

// Fills the block's cache (when the launcher gave it shared memory: g.cached) and returns it.
__device__ __forceinline__ ChannelFactors channel_factors(const AqArgs &g, float *smem) {
  ChannelFactors f = {nullptr, nullptr};
  if (g.cached) {
    for (size_t c = threadIdx.x; c < g.channels; c += blockDim.x) {
      const float sc = lh_f16_to_f32(g.cscales[c]);
      smem[c] = lh_quant_inv_scale(sc, g.max_code);
      smem[g.channels + c] = lh_quant_step(sc, g.max_code);
    }
    __syncthreads();
    f.inv = smem;
    f.step = smem + g.channels;
  }
  return f;
}

// ALIGNED: E is a multiple of 8 (an octet is 8 contiguous elements of one row). Otherwise each
// element of the octet tracks its own row and column.
template <bool ALIGNED, bool HAS_M, bool STOCH>
__global__ void __launch_bounds__(kThreads) encode_channel_kernel(AqArgs g) {
  extern __shared__ float smem[];
  const ChannelFactors f = channel_factors(g, smem);
  for (size_t u = blockIdx.x * (size_t)blockDim.x + threadIdx.x; u < g.units; u += (size_t)gridDim.x * blockDim.x) {
    uint64_t packed = 0;
    if (ALIGNED) {
      size_t r, j;
      octet_position(g, u, &r, &j);
      float d[8], mv[8], next[8];
      load8t(g.a, g.dtype, batch_base(g, r) + j, g.vec_a, d);
      const size_t mbase = HAS_M ? slot_base(g, r) + j : 0;
      if (HAS_M) {
        load8t(g.m, g.storage, mbase, g.vec_m, mv);
#pragma unroll
        for (int k = 0; k < 8; k++)
          d[k] = LH_FSUB(d[k], mv[k]);
      }
      uint32_t rnd[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      if (STOCH)
        octet_random(row_key(g, r), (uint64_t)g.ids[r] * g.E + j, rnd);
      size_t c = j - (size_t)g.chan_of.div(j) * g.channels;
#pragma unroll
      for (int k = 0; k < 8; k++) {
        float inv, step;
        f.get(g, c, &inv, &step);
        const uint32_t code = lh_quant_code(d[k], inv, g.max_code, STOCH, rnd[k]);
        packed |= (uint64_t)code << (k * g.bits);
        if (HAS_M)
          next[k] = LH_FADD(mv[k], lh_dequant_code(code, g.max_code, step));
        if (++c == g.channels)
          c = 0;
      }
      if (HAS_M)
        store8t(g.m, g.storage, mbase, g.vec_m, next);
      put_bytes(g.codes + u * (size_t)g.bits, packed, g.bits);
    } else {
      const size_t e0 = u * 8;
      const int cnt = g.total - e0 < 8 ? (int)(g.total - e0) : 8;
      size_t r = (size_t)g.row_of.div(e0), j = e0 - r * g.E;
      size_t c = j - (size_t)g.chan_of.div(j) * g.channels;
      for (int k = 0; k < cnt; k++) {
        const size_t ai = batch_base(g, r) + j, mi = HAS_M ? slot_base(g, r) + j : 0;
        float d = lh_aq_load(g.a, g.dtype, ai), mv = 0.0f;
        if (HAS_M) {
          mv = lh_aq_load(g.m, g.storage, mi);
          d = LH_FSUB(d, mv);
        }
        const lh_rng_key key = STOCH ? row_key(g, r) : lh_rng_key{0, 0, 0};
        const uint32_t word = STOCH ? lh_rng_u32(&key, (uint64_t)g.ids[r] * g.E + j) : 0u;
        float inv, step;
        f.get(g, c, &inv, &step);
        const uint32_t code = lh_quant_code(d, inv, g.max_code, STOCH, word);
        packed |= (uint64_t)code << (k * g.bits);
        if (HAS_M)
          lh_aq_put(g.m, g.storage, mi, LH_FADD(mv, lh_dequant_code(code, g.max_code, step)));
        if (++c == g.channels)
          c = 0;
        if (++j == g.E) {
          j = 0;
          c = 0;
          r++;
        }
      }
      put_bytes(g.codes + u * (size_t)g.bits, packed, (cnt * g.bits + 7) / 8);
    }
  }
}

// ---- the receiver ----------------------------------------------------------------------------

template <bool ALIGNED, bool HAS_M, bool GROUP>
__global__ void __launch_bounds__(kThreads) decode_kernel(AqArgs g) {
  extern __shared__ float smem[];
  const ChannelFactors f = GROUP ? ChannelFactors{nullptr, nullptr} : channel_factors(g, smem);
  const uint32_t mask = (1u << g.bits) - 1u;
  for (size_t u = blockIdx.x * (size_t)blockDim.x + threadIdx.x; u < g.units; u += (size_t)gridDim.x * blockDim.x) {
    if (ALIGNED) {
      size_t r, j;
      octet_position(g, u, &r, &j);
      const uint64_t packed = get_bytes(g.codes_in + u * (size_t)g.bits, g.bits);
      float v[8];
      if (GROUP) {
        const float step = lh_quant_step(lh_f16_to_f32(g.cscales[u >> g.seg_shift]), g.max_code);
#pragma unroll
        for (int k = 0; k < 8; k++)
          v[k] = lh_dequant_code((uint32_t)(packed >> (k * g.bits)) & mask, g.max_code, step);
      } else {
        size_t c = j - (size_t)g.chan_of.div(j) * g.channels;
#pragma unroll
        for (int k = 0; k < 8; k++) {
          float inv, step;
          f.get(g, c, &inv, &step);
          v[k] = lh_dequant_code((uint32_t)(packed >> (k * g.bits)) & mask, g.max_code, step);
          if (++c == g.channels)
            c = 0;
        }
      }
      if (HAS_M) {
        float mv[8];
        const size_t mbase = slot_base(g, r) + j;
        load8t(g.m, g.storage, mbase, g.vec_m, mv);
#pragma unroll
        for (int k = 0; k < 8; k++)
          v[k] = round_to(g.storage, LH_FADD(mv[k], v[k]));
        store8t(g.m, g.storage, mbase, g.vec_m, v);
      }
      store8t(g.out, g.dtype, batch_base(g, r) + j, g.vec_out, v);
    } else {
      const size_t e0 = u * 8;
      const int cnt = g.total - e0 < 8 ? (int)(g.total - e0) : 8;
      const uint64_t packed = get_bytes(g.codes_in + u * (size_t)g.bits, (cnt * g.bits + 7) / 8);
      size_t r = (size_t)g.row_of.div(e0), j = e0 - r * g.E;
      size_t c = j - (size_t)g.chan_of.div(j) * g.channels;
      for (int k = 0; k < cnt; k++) {
        float step;
        if (GROUP) {
          step = lh_quant_step(lh_f16_to_f32(g.cscales[(e0 + k) >> (g.seg_shift + 3)]), g.max_code);
        } else {
          float inv;
          f.get(g, c, &inv, &step);
        }
        float v = lh_dequant_code((uint32_t)(packed >> (k * g.bits)) & mask, g.max_code, step);
        if (HAS_M) {
          const size_t mi = slot_base(g, r) + j;
          v = round_to(g.storage, LH_FADD(lh_aq_load(g.m, g.storage, mi), v));
          lh_aq_put(g.m, g.storage, mi, v);
        }
        lh_aq_put(g.out, g.dtype, batch_base(g, r) + j, v);
        if (++c == g.channels)
          c = 0;
        if (++j == g.E) {
          j = 0;
          c = 0;
          r++;
        }
      }
    }
  }
}

// ---- full-precision rows ---------------------------------------------------------------------

// wire (call row r) = a (batch row) rounded to the storage type; m (slot) = the same.
template <bool ALIGNED>
__global__ void __launch_bounds__(kThreads) full_encode_kernel(AqArgs g) {
  void *wire = g.out;
  for (size_t u = blockIdx.x * (size_t)blockDim.x + threadIdx.x; u < g.units; u += (size_t)gridDim.x * blockDim.x) {
    if (ALIGNED) {
      size_t r, j;
      octet_position(g, u, &r, &j);
      float v[8];
      load8t(g.a, g.dtype, batch_base(g, r) + j, g.vec_a, v);
      store8t(wire, g.storage, u * 8, g.vec_out, v);
      if (g.m)
        store8t(g.m, g.storage, slot_base(g, r) + j, g.vec_m, v);
    } else {
      const size_t e0 = u * 8;
      const int cnt = g.total - e0 < 8 ? (int)(g.total - e0) : 8;
      size_t r = (size_t)g.row_of.div(e0), j = e0 - r * g.E;
      for (int k = 0; k < cnt; k++) {
        const float v = lh_aq_load(g.a, g.dtype, batch_base(g, r) + j);
        lh_aq_put(wire, g.storage, e0 + k, v);
        if (g.m)
          lh_aq_put(g.m, g.storage, slot_base(g, r) + j, v);
        if (++j == g.E) {
          j = 0;
          r++;
        }
      }
    }
  }
}

// Copies elements si .. si + 7 of src to di .. di + 7 of dst, `bytes` bytes each (2 or 4), bit for
// bit. vec: both runs 16-byte aligned.
__device__ __forceinline__ void copy8(void *dst, size_t di, const void *src, size_t si, size_t bytes, bool vec) {
  const uint8_t *s = static_cast<const uint8_t *>(src) + si * bytes;
  uint8_t *d = static_cast<uint8_t *>(dst) + di * bytes;
  if (vec) {
    for (size_t k = 0; k < bytes / 2; k++)
      reinterpret_cast<uint4 *>(d)[k] = reinterpret_cast<const uint4 *>(s)[k];
  } else if (bytes == 4) {
#pragma unroll
    for (int k = 0; k < 8; k++)
      reinterpret_cast<uint32_t *>(d)[k] = reinterpret_cast<const uint32_t *>(s)[k];
  } else {
#pragma unroll
    for (int k = 0; k < 8; k++)
      reinterpret_cast<uint16_t *>(d)[k] = reinterpret_cast<const uint16_t *>(s)[k];
  }
}

// m (slot) = the wire row's bytes; out (batch row) = them converted to dtype.
template <bool ALIGNED>
__global__ void __launch_bounds__(kThreads) full_decode_kernel(AqArgs g, bool vec_copy) {
  const size_t msz = lh_aq_dtype_bytes(g.storage);
  for (size_t u = blockIdx.x * (size_t)blockDim.x + threadIdx.x; u < g.units; u += (size_t)gridDim.x * blockDim.x) {
    if (ALIGNED) {
      size_t r, j;
      octet_position(g, u, &r, &j);
      float v[8];
      load8t(g.wire, g.storage, u * 8, g.vec_a, v);
      if (g.m)
        copy8(g.m, slot_base(g, r) + j, g.wire, u * 8, msz, vec_copy);
      store8t(g.out, g.dtype, batch_base(g, r) + j, g.vec_out, v);
    } else {
      const size_t e0 = u * 8;
      const int cnt = g.total - e0 < 8 ? (int)(g.total - e0) : 8;
      size_t r = (size_t)g.row_of.div(e0), j = e0 - r * g.E;
      for (int k = 0; k < cnt; k++) {
        const size_t wi = e0 + k;
        if (g.m) {
          if (msz == 4)
            static_cast<uint32_t *>(g.m)[slot_base(g, r) + j] = static_cast<const uint32_t *>(g.wire)[wi];
          else
            static_cast<uint16_t *>(g.m)[slot_base(g, r) + j] = static_cast<const uint16_t *>(g.wire)[wi];
        }
        lh_aq_put(g.out, g.dtype, batch_base(g, r) + j, lh_aq_load(g.wire, g.storage, wi));
        if (++j == g.E) {
          j = 0;
          r++;
        }
      }
    }
  }
}

// ---- the fast kernels: types known at compile time, 16 elements a thread ----------------------
//
// A "unit" is 16 consecutive elements of a row (two octets): the fast kernels run when E is a
// multiple of 16 (always for PER_TOKEN_GROUP) and a, m and out are 16-byte aligned, so a thread
// moves its unit with 16-byte accesses whatever the types. The element types are template
// parameters (no per-element type switch, no conversion computed and thrown away); the code
// width is a uniform switch per unit into a constant-width packer. The per-unit costs (the row,
// the slot, the scale's two IEEE divisions, the shuffles) are paid once per 16 elements.
//
// Conversions. On the GPU codec_math.h's fp16 conversions are the hardware cvt plus a NaN fix-up
// per element. The fix-up only changes NaN, so the kernels skip it where no NaN can occur:
//  - loads check the unit's raw words for an all-ones exponent (inf or NaN) with one add per
//    word, and use the plain conversion when there is none, codec_math.h's otherwise;
//  - stores take a promise `no_nan` from the caller (plain conversion, else codec_math.h's):
//    the sender promises it when the group's scale is below 0x7C00 (then every |d| of the group
//    is finite, so a, m, the step and q are finite and m + q is not NaN); the receiver when the
//    scale is below 0x7C00 and its m unit holds no inf or NaN.
// So every value equals what codec_math.h's functions give, NaN included.
constexpr int kUnit = 16;

template <int T>
struct Raw16 {  // one unit of type T as 32-bit words: 16 of fp32, 8 of fp16 / bf16 (two each)
  static constexpr int kWords = T == LH_AQ_T_FP32 ? 16 : 8;
  uint32_t w[kWords];
};

// Bits of an all-ones exponent (inf or NaN) in each element of a word of type T: adding the
// exponent's low bit to the masked exponent carries into the element's sign bit exactly then.
template <int T>
__device__ __forceinline__ uint32_t special_bits(uint32_t w) {
  if (T == LH_AQ_T_FP32)
    return ((w & 0x7F800000u) + 0x00800000u) & 0x80000000u;
  if (T == LH_AQ_T_FP16)
    return ((w & 0x7C007C00u) + 0x04000400u) & 0x80008000u;
  return ((w & 0x7F807F80u) + 0x00800080u) & 0x80008000u;
}

// The plain conversions, equal to codec_math.h's for every input but NaN (and, below, the
// CPU emulation of these kernels: there they deliberately differ on NaN and infinity, so a
// wrong promise shows in the tests).
__device__ __forceinline__ float plain_f16_to_f32(uint16_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));
#else
  return (h & 0x7C00u) == 0x7C00u ? lh_bits_f32(0x7FC00001u) : lh_f16_to_f32(h);
#endif
}
__device__ __forceinline__ uint32_t plain_f32x2_to_f16x2(float lo, float hi) {
#if defined(__CUDA_ARCH__)
  const __half2 h = __floats2half2_rn(lo, hi);  // one cvt.rn.f16x2.f32
  return *reinterpret_cast<const uint32_t *>(&h);
#else
  const uint32_t l = lo != lo ? 0x7E01u : lh_f32_to_f16(lo), u = hi != hi ? 0x7E01u : lh_f32_to_f16(hi);
  return l | (u << 16);
#endif
}
__device__ __forceinline__ uint16_t plain_f32_to_bf16(float f) {  // lh_f32_to_bf16 without its NaN case
  uint32_t u = lh_f32_bits(f);
#if !defined(__CUDA_ARCH__)
  if ((u & 0x7FFFFFFFu) > 0x7F800000u)
    return 0x7E01u;
#endif
  u += 0x7FFFu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

// Raw words of type T -> fp32 values; returns whether an element was inf or NaN.
template <int T>
__device__ __forceinline__ bool unpack16(const Raw16<T> &r, float v[kUnit]) {
  // (Callers that ignore the answer do not pay for it: the compiler drops the unused test.)
  uint32_t special = 0;
#pragma unroll
  for (int k = 0; k < Raw16<T>::kWords; k++)
    special |= special_bits<T>(r.w[k]);
  if (T == LH_AQ_T_FP32) {
#pragma unroll
    for (int k = 0; k < kUnit; k++)
      v[k] = lh_bits_f32(r.w[k]);
  } else if (T == LH_AQ_T_BF16) {  // exact for every input
#pragma unroll
    for (int k = 0; k < kUnit; k++)
      v[k] = lh_bf16_to_f32((uint16_t)(r.w[k / 2] >> (16 * (k & 1))));
  } else if (special == 0) {
#pragma unroll
    for (int k = 0; k < kUnit; k++)
      v[k] = plain_f16_to_f32((uint16_t)(r.w[k / 2] >> (16 * (k & 1))));
  } else {
#pragma unroll
    for (int k = 0; k < kUnit; k++)
      v[k] = lh_f16_to_f32((uint16_t)(r.w[k / 2] >> (16 * (k & 1))));
  }
  return special != 0;
}

// fp32 values -> raw words of type T, rounded to nearest even (codec_math.h's functions; the
// plain conversions when the caller promises no NaN).
template <int T>
__device__ __forceinline__ void pack16(const float v[kUnit], bool no_nan, Raw16<T> &r) {
  if (T == LH_AQ_T_FP32) {
#pragma unroll
    for (int k = 0; k < kUnit; k++)
      r.w[k] = lh_f32_bits(v[k]);
  } else if (no_nan) {
#pragma unroll
    for (int k = 0; k < 8; k++)
      r.w[k] = T == LH_AQ_T_FP16 ? plain_f32x2_to_f16x2(v[2 * k], v[2 * k + 1])
                                 : plain_f32_to_bf16(v[2 * k]) | ((uint32_t)plain_f32_to_bf16(v[2 * k + 1]) << 16);
  } else {
#pragma unroll
    for (int k = 0; k < 8; k++)
      r.w[k] = T == LH_AQ_T_FP16 ? lh_f32_to_f16(v[2 * k]) | ((uint32_t)lh_f32_to_f16(v[2 * k + 1]) << 16)
                                 : lh_f32_to_bf16(v[2 * k]) | ((uint32_t)lh_f32_to_bf16(v[2 * k + 1]) << 16);
  }
}

// Element i .. i + 15 of p (type T), p + i 16-byte aligned.
template <int T>
__device__ __forceinline__ void load_raw16(const void *p, size_t i, Raw16<T> &r) {
  const uint4 *q = reinterpret_cast<const uint4 *>(p) + i * lh_aq_dtype_bytes(T) / 16;
#pragma unroll
  for (int k = 0; k < Raw16<T>::kWords / 4; k++) {
    const uint4 x = q[k];
    r.w[4 * k] = x.x;
    r.w[4 * k + 1] = x.y;
    r.w[4 * k + 2] = x.z;
    r.w[4 * k + 3] = x.w;
  }
}
template <int T>
__device__ __forceinline__ void store_raw16(void *p, size_t i, const Raw16<T> &r) {
  uint4 *q = reinterpret_cast<uint4 *>(p) + i * lh_aq_dtype_bytes(T) / 16;
#pragma unroll
  for (int k = 0; k < Raw16<T>::kWords / 4; k++) {
    uint4 x;
    x.x = r.w[4 * k];
    x.y = r.w[4 * k + 1];
    x.z = r.w[4 * k + 2];
    x.w = r.w[4 * k + 3];
    q[k] = x;
  }
}

template <int T>
__device__ __forceinline__ bool load16(const void *p, size_t i, float v[kUnit]) {
  Raw16<T> r;
  load_raw16<T>(p, i, r);
  return unpack16<T>(r, v);
}
template <int T>
__device__ __forceinline__ void store16(void *p, size_t i, const float v[kUnit], bool no_nan) {
  Raw16<T> r;
  pack16<T>(v, no_nan, r);
  store_raw16<T>(p, i, r);
}

// The 16 codes of a unit: 2 B bytes, LSB first, at any byte address (the code stream has no
// alignment promise), each octet packed into B bytes with constant shifts.
template <int B>
__device__ __forceinline__ void put_codes_w(uint8_t *dst, const uint32_t c[kUnit]) {
#pragma unroll
  for (int o = 0; o < 2; o++) {
    uint64_t packed = 0;
#pragma unroll
    for (int k = 0; k < 8; k++)
      packed |= (uint64_t)c[8 * o + k] << (k * B);
#pragma unroll
    for (int i = 0; i < B; i++)
      dst[o * B + i] = (uint8_t)(packed >> (8 * i));
  }
}
template <int B>
__device__ __forceinline__ void get_codes_w(const uint8_t *src, uint32_t c[kUnit]) {
#pragma unroll
  for (int o = 0; o < 2; o++) {
    uint64_t packed = 0;
#pragma unroll
    for (int i = 0; i < B; i++)
      packed |= (uint64_t)src[o * B + i] << (8 * i);
#pragma unroll
    for (int k = 0; k < 8; k++)
      c[8 * o + k] = (uint32_t)(packed >> (k * B)) & ((1u << B) - 1u);
  }
}
// The width is the same for every thread: the switch is a uniform branch.
__device__ __forceinline__ void put_codes(int bits, uint8_t *dst, const uint32_t c[kUnit]) {
  switch (bits) {
    case 2: put_codes_w<2>(dst, c); break;
    case 3: put_codes_w<3>(dst, c); break;
    case 4: put_codes_w<4>(dst, c); break;
    case 5: put_codes_w<5>(dst, c); break;
    case 6: put_codes_w<6>(dst, c); break;
    case 7: put_codes_w<7>(dst, c); break;
    default: put_codes_w<8>(dst, c); break;
  }
}
__device__ __forceinline__ void get_codes(int bits, const uint8_t *src, uint32_t c[kUnit]) {
  switch (bits) {
    case 2: get_codes_w<2>(src, c); break;
    case 3: get_codes_w<3>(src, c); break;
    case 4: get_codes_w<4>(src, c); break;
    case 5: get_codes_w<5>(src, c); break;
    case 6: get_codes_w<6>(src, c); break;
    case 7: get_codes_w<7>(src, c); break;
    default: get_codes_w<8>(src, c); break;
  }
}

// Unit w of a call (E a multiple of 16): its row and first column. g.row_of divides by the
// units per row here.
__device__ __forceinline__ void unit_position(const AqArgs &g, size_t w, size_t *r, size_t *j) {
  *r = (size_t)g.row_of.div(w);
  *j = (w - *r * (g.E / kUnit)) * kUnit;
}

// PER_TOKEN_GROUP's fused sender, as encode_group_kernel with units: the L = group / 16 lanes
// of a group (g.seg_shift = log2 L) are consecutive lanes of a warp.
template <bool HAS_M, bool STOCH, int AT, int MT>
__global__ void __launch_bounds__(kThreads) encode_group_fast(AqArgs g) {
  const int lane = threadIdx.x & 31;
  const unsigned L = 1u << g.seg_shift;
  const size_t warp = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
  const size_t nwarps = ((size_t)gridDim.x * blockDim.x) >> 5;
  for (size_t base = warp * 32; base < g.units; base += nwarps * 32) {
    const size_t w = base + lane;
    const bool active = w < g.units;
    float d[kUnit], mv[kUnit];
    size_t r = 0, j = 0, mbase = 0;
    uint32_t mx = 0;
    if (active) {
      unit_position(g, w, &r, &j);
      load16<AT>(g.a, batch_base(g, r) + j, d);
      if (HAS_M) {
        mbase = slot_base(g, r) + j;
        load16<MT>(g.m, mbase, mv);
#pragma unroll
        for (int k = 0; k < kUnit; k++)
          d[k] = LH_FSUB(d[k], mv[k]);
      }
#pragma unroll
      for (int k = 0; k < kUnit; k++) {
        const uint32_t b = lh_f32_bits(d[k]) & 0x7FFFFFFFu;
        mx = b > mx ? b : mx;
      }
    }
    for (unsigned off = L >> 1; off >= 1; off >>= 1) {
      const uint32_t other = __shfl_xor_sync(kFullMask, mx, off);
      mx = other > mx ? other : mx;
    }
    if (!active)
      continue;
    const uint16_t h = lh_aq_scale_from_max_bits(mx);
    if ((w & (L - 1)) == 0)
      g.scales[w >> g.seg_shift] = h;
    const float s = lh_f16_to_f32(h);
    const float inv = lh_quant_inv_scale(s, g.max_code), step = lh_quant_step(s, g.max_code);
    uint32_t rnd[kUnit];
#pragma unroll
    for (int k = 0; k < kUnit; k++)
      rnd[k] = 0;
    if (STOCH) {
      const lh_rng_key key = row_key(g, r);
      const uint64_t e0 = (uint64_t)g.ids[r] * g.E + j;
      octet_random(key, e0, rnd);
      octet_random(key, e0 + 8, rnd + 8);
    }
    uint32_t code[kUnit];
    float next[kUnit];
#pragma unroll
    for (int k = 0; k < kUnit; k++) {
      code[k] = lh_quant_code(d[k], inv, g.max_code, STOCH, rnd[k]);
      if (HAS_M)
        next[k] = LH_FADD(mv[k], lh_dequant_code(code[k], g.max_code, step));
    }
    put_codes(g.bits, g.codes + w * 2 * (size_t)g.bits, code);
    if (HAS_M)
      store16<MT>(g.m, mbase, next, h < 0x7C00u);
  }
}

// The receiver, both quantizers, as decode_kernel with units (PER_TOKEN_GROUP: g.seg_shift =
// log2(group / 16)). With m: m' = round_to_storage(m + q); out = m' (its bytes when the types
// are the same, as the twin copies them).
template <bool HAS_M, bool GROUP, int AT, int MT>
__global__ void __launch_bounds__(kThreads) decode_fast(AqArgs g) {
  extern __shared__ float smem[];
  const ChannelFactors f = GROUP ? ChannelFactors{nullptr, nullptr} : channel_factors(g, smem);
  for (size_t w = blockIdx.x * (size_t)blockDim.x + threadIdx.x; w < g.units; w += (size_t)gridDim.x * blockDim.x) {
    size_t r, j;
    unit_position(g, w, &r, &j);
    uint32_t code[kUnit];
    get_codes(g.bits, g.codes_in + w * 2 * (size_t)g.bits, code);
    float v[kUnit];
    bool no_nan = false;  // PER_CHANNEL: the channels' steps are not checked; codec_math's stores
    if (GROUP) {
      const uint16_t h = g.cscales[w >> g.seg_shift];
      const float step = lh_quant_step(lh_f16_to_f32(h), g.max_code);
#pragma unroll
      for (int k = 0; k < kUnit; k++)
        v[k] = lh_dequant_code(code[k], g.max_code, step);
      no_nan = h < 0x7C00u;  // a finite step: q is finite
    } else {
      size_t c = j - (size_t)g.chan_of.div(j) * g.channels;
#pragma unroll
      for (int k = 0; k < kUnit; k++) {
        float inv, step;
        f.get(g, c, &inv, &step);
        v[k] = lh_dequant_code(code[k], g.max_code, step);
        if (++c == g.channels)
          c = 0;
      }
    }
    const size_t obase = batch_base(g, r) + j;
    if (!HAS_M) {
      store16<AT>(g.out, obase, v, no_nan);
      continue;
    }
    const size_t mbase = slot_base(g, r) + j;
    float mv[kUnit];
    Raw16<MT> mr;
    load_raw16<MT>(g.m, mbase, mr);
    const bool m_special = unpack16<MT>(mr, mv);
#pragma unroll
    for (int k = 0; k < kUnit; k++)
      v[k] = LH_FADD(mv[k], v[k]);
    // A finite m and a finite q give an m + q that is not NaN.
    no_nan = no_nan && !m_special;
    pack16<MT>(v, no_nan, mr);
    store_raw16<MT>(g.m, mbase, mr);
    if (AT == MT) {
      store_raw16<MT>(g.out, obase, mr);
    } else {
      unpack16<MT>(mr, v);  // the stored m' as fp32 (exact whatever its bits)
      store16<AT>(g.out, obase, v, no_nan);
    }
  }
}

// ---- launchers -------------------------------------------------------------------------------

bool valid_type(int t) { return t == LH_AQ_T_FP32 || t == LH_AQ_T_FP16 || t == LH_AQ_T_BF16; }

// The call's shape, checked: false for parameters the twins do not define.
bool make_args(const lh_aq_qparams *p, size_t rows, AqArgs *g) {
  if (!p || p->bits < 2 || p->bits > 8 || !valid_type(p->dtype) || !valid_type(p->storage) || p->channels == 0 ||
      p->tokens == 0)
    return false;
  if (p->quantizer == LH_AQ_Q_PER_TOKEN_GROUP) {
    if ((p->group != 32 && p->group != 64 && p->group != 128) || p->channels % (size_t)p->group != 0)
      return false;
  } else if (p->quantizer != LH_AQ_Q_PER_CHANNEL) {
    return false;
  }
  *g = AqArgs();
  g->rows = rows;
  g->tokens = p->tokens;
  g->channels = p->channels;
  g->E = p->tokens * p->channels;
  g->E8 = g->E / 8;
  g->total = rows * g->E;
  g->units = (g->total + 7) / 8;
  g->bits = p->bits;
  g->max_code = lh_quant_max_code(p->bits);
  g->quantizer = p->quantizer;
  g->seg_shift = 0;
  if (p->quantizer == LH_AQ_Q_PER_TOKEN_GROUP)
    while ((8 << g->seg_shift) < p->group)
      g->seg_shift++;
  g->stochastic = p->stochastic ? 1 : 0;
  g->dtype = p->dtype;
  g->storage = p->storage;
  g->seed = p->seed;
  g->stream = p->stream;
  g->chan_of = make_divider(p->channels, g->E);
  g->line_of = make_divider(p->tokens, rows * p->tokens);
  return true;
}

bool aligned_call(const AqArgs &g) { return g.E % 8 == 0; }

// Octet (aligned) or element index -> row.
void set_row_divider(AqArgs *g, bool aligned) {
  g->row_of = aligned ? make_divider(g->E8, g->units) : make_divider(g->E, g->total);
}

int sm_count() {
  int dev = 0, n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
      n < 1)
    n = 16;
  return n;
}

// Blocks for a grid-stride kernel over `units` work items, one per thread.
unsigned blocks_for(size_t units) {
  const size_t cap = (size_t)sm_count() * kBlocksPerSm;
  size_t blocks = (units + kThreads - 1) / kThreads;
  if (blocks > cap)
    blocks = cap;
  return (unsigned)(blocks ? blocks : 1);
}

// PER_CHANNEL kernels: shared memory for the channels' multipliers and steps when they fit.
size_t channel_cache_bytes(AqArgs *g) {
  g->cached = g->quantizer == LH_AQ_Q_PER_CHANNEL && g->channels <= kChannelCache;
  return g->cached ? 2 * g->channels * sizeof(float) : 0;
}

template <bool HAS_M>
void launch_encode_group(const AqArgs &g, cudaStream_t s) {
  const unsigned blocks = blocks_for(g.units);
  if (g.stochastic)
    encode_group_kernel<HAS_M, true><<<blocks, kThreads, 0, s>>>(g);
  else
    encode_group_kernel<HAS_M, false><<<blocks, kThreads, 0, s>>>(g);
}

template <bool ALIGNED, bool HAS_M>
void launch_encode_channel(AqArgs g, cudaStream_t s) {
  const size_t shared = channel_cache_bytes(&g);
  const unsigned blocks = blocks_for(g.units);
  if (g.stochastic)
    encode_channel_kernel<ALIGNED, HAS_M, true><<<blocks, kThreads, shared, s>>>(g);
  else
    encode_channel_kernel<ALIGNED, HAS_M, false><<<blocks, kThreads, shared, s>>>(g);
}

template <bool ALIGNED, bool HAS_M>
void launch_decode(AqArgs g, cudaStream_t s) {
  const unsigned blocks = blocks_for(g.units);
  if (g.quantizer == LH_AQ_Q_PER_TOKEN_GROUP) {
    g.cached = 0;
    decode_kernel<ALIGNED, HAS_M, true><<<blocks, kThreads, 0, s>>>(g);
  } else {
    const size_t shared = channel_cache_bytes(&g);
    decode_kernel<ALIGNED, HAS_M, false><<<blocks, kThreads, shared, s>>>(g);
  }
}

// ---- fast-kernel launchers ---------------------------------------------------------------------

template <int AT, int MT>
struct TypePair {
  static constexpr int a = AT, m = MT;
};

// Calls f(TypePair<dtype, storage>()): one instantiation per pair of types (without m, the
// storage type is unused and only dtype's three are made).
template <int AT, bool HAS_M, class F>
void with_storage(int storage, F &&f) {
  if constexpr (!HAS_M)
    f(TypePair<AT, AT>());
  else if (storage == LH_AQ_T_FP32)
    f(TypePair<AT, LH_AQ_T_FP32>());
  else if (storage == LH_AQ_T_FP16)
    f(TypePair<AT, LH_AQ_T_FP16>());
  else
    f(TypePair<AT, LH_AQ_T_BF16>());
}
template <bool HAS_M, class F>
void with_types(int dtype, int storage, F &&f) {
  if (dtype == LH_AQ_T_FP32)
    with_storage<LH_AQ_T_FP32, HAS_M>(storage, f);
  else if (dtype == LH_AQ_T_FP16)
    with_storage<LH_AQ_T_FP16, HAS_M>(storage, f);
  else
    with_storage<LH_AQ_T_BF16, HAS_M>(storage, f);
}

// The fast kernels' view of a call (E a multiple of 16): units of 16 elements, the row of a
// unit, and for PER_TOKEN_GROUP the lanes of a group: group / 16.
void to_units(AqArgs *g) {
  g->units = g->total / kUnit;
  g->row_of = make_divider(g->E / kUnit, g->units);
  if (g->quantizer == LH_AQ_Q_PER_TOKEN_GROUP)
    g->seg_shift -= 1;  // log2(group / 8) - 1; group >= 32
}

template <bool HAS_M>
void launch_encode_group_fast(AqArgs g, cudaStream_t s) {
  to_units(&g);
  const unsigned blocks = blocks_for(g.units);
  with_types<HAS_M>(g.dtype, g.storage, [&](auto t) {
    using T = decltype(t);
    if (g.stochastic)
      encode_group_fast<HAS_M, true, T::a, T::m><<<blocks, kThreads, 0, s>>>(g);
    else
      encode_group_fast<HAS_M, false, T::a, T::m><<<blocks, kThreads, 0, s>>>(g);
  });
}

template <bool HAS_M>
void launch_decode_fast(AqArgs g, cudaStream_t s) {
  to_units(&g);
  const unsigned blocks = blocks_for(g.units);
  const bool group = g.quantizer == LH_AQ_Q_PER_TOKEN_GROUP;
  size_t shared = 0;
  if (group)
    g.cached = 0;
  else
    shared = channel_cache_bytes(&g);
  with_types<HAS_M>(g.dtype, g.storage, [&](auto t) {
    using T = decltype(t);
    if (group)
      decode_fast<HAS_M, true, T::a, T::m><<<blocks, kThreads, 0, s>>>(g);
    else
      decode_fast<HAS_M, false, T::a, T::m><<<blocks, kThreads, shared, s>>>(g);
  });
}

}  // namespace

extern "C" int lh_cuda_aq_channel_scales(const lh_aq_qparams *p, const void *a, const uint32_t *batch_rows,
                                         const void *m, const int64_t *slots, size_t rows, uint16_t *scales,
                                         void *stream) {
  AqArgs g;
  if (!make_args(p, rows, &g))
    return (int)cudaErrorInvalidValue;
  if (rows == 0)
    return 0;
  if (!a || !scales || (m && !slots))
    return (int)cudaErrorInvalidValue;
  g.a = a;
  g.batch_rows = batch_rows;
  g.m = const_cast<void *>(m);
  g.slots = slots;
  g.scales = scales;
  g.vec_a = aligned16(a);
  g.vec_m = m && aligned16(m);
  cudaStream_t s = (cudaStream_t)stream;
  cudaError_t rc = cudaMemsetAsync(scales, 0, g.channels * sizeof(uint16_t), s);
  if (rc != cudaSuccess)
    return (int)rc;
  const bool vec = g.channels % 8 == 0 && g.vec_a && (!m || g.vec_m);
  const size_t lines = rows * g.tokens;
  const size_t gx = (g.channels + 255) / 256;
  size_t gy = ((size_t)sm_count() * 8 + gx - 1) / gx;  // about 8 blocks per SM in all
  const size_t line_groups = (lines + kMaxLinesPerBlock - 1) / kMaxLinesPerBlock;
  if (gy > line_groups)
    gy = line_groups;
  if (gy > 65535)
    gy = 65535;
  if (gx > 0x7FFFFFFF)
    return (int)cudaErrorInvalidValue;
  const dim3 grid((unsigned)gx, (unsigned)(gy ? gy : 1)), block(32, kMaxLinesPerBlock);
  if (m)
    channel_max_kernel<true><<<grid, block, 0, s>>>(g, vec);
  else
    channel_max_kernel<false><<<grid, block, 0, s>>>(g, vec);
  return (int)cudaGetLastError();
}

extern "C" int lh_cuda_aq_encode(const lh_aq_qparams *p, const void *a, const uint32_t *batch_rows, void *m,
                                 const int64_t *slots, const int64_t *ids, const uint32_t *visits, size_t rows,
                                 uint16_t *scales, uint8_t *codes, void *stream) {
  AqArgs g;
  if (!make_args(p, rows, &g))
    return (int)cudaErrorInvalidValue;
  if (rows == 0)
    return 0;
  if (!a || !scales || !codes || (m && !slots) || (g.stochastic && (!ids || !visits)))
    return (int)cudaErrorInvalidValue;
  g.a = a;
  g.batch_rows = batch_rows;
  g.m = m;
  g.slots = slots;
  g.ids = ids;
  g.visits = visits;
  g.scales = scales;
  g.cscales = scales;
  g.codes = codes;
  const bool aligned = aligned_call(g);
  g.vec_a = aligned && aligned16(a);
  g.vec_m = aligned && m && aligned16(m);
  set_row_divider(&g, aligned);
  cudaStream_t s = (cudaStream_t)stream;
  // PER_TOKEN_GROUP: E is a multiple of the group, so of 16.
  if (g.quantizer == LH_AQ_Q_PER_TOKEN_GROUP && g.vec_a && (!m || g.vec_m)) {
    if (m)
      launch_encode_group_fast<true>(g, s);
    else
      launch_encode_group_fast<false>(g, s);
  } else if (g.quantizer == LH_AQ_Q_PER_TOKEN_GROUP) {
    if (m)
      launch_encode_group<true>(g, s);
    else
      launch_encode_group<false>(g, s);
  } else if (aligned) {
    if (m)
      launch_encode_channel<true, true>(g, s);
    else
      launch_encode_channel<true, false>(g, s);
  } else {
    if (m)
      launch_encode_channel<false, true>(g, s);
    else
      launch_encode_channel<false, false>(g, s);
  }
  return (int)cudaGetLastError();
}

extern "C" int lh_cuda_aq_decode(const lh_aq_qparams *p, const uint8_t *codes, const uint16_t *scales, void *m,
                                 const int64_t *slots, size_t rows, void *out, const uint32_t *batch_rows,
                                 void *stream) {
  AqArgs g;
  if (!make_args(p, rows, &g))
    return (int)cudaErrorInvalidValue;
  if (rows == 0)
    return 0;
  if (!codes || !scales || !out || (m && !slots))
    return (int)cudaErrorInvalidValue;
  g.codes_in = codes;
  g.cscales = scales;
  g.m = m;
  g.slots = slots;
  g.out = out;
  g.batch_rows = batch_rows;
  const bool aligned = aligned_call(g);
  g.vec_m = aligned && m && aligned16(m);
  g.vec_out = aligned && aligned16(out);
  set_row_divider(&g, aligned);
  cudaStream_t s = (cudaStream_t)stream;
  // Measured on an H200 (bench/RESULTS.md): with a buffer in 16 bits and fp32 output the
  // 8-element kernel is faster (363 against 278 G elements/s), so that case stays on it.
  const bool wide_out_narrow_m = m && g.dtype == LH_AQ_T_FP32 && g.storage != LH_AQ_T_FP32;
  if (g.E % kUnit == 0 && g.vec_out && (!m || g.vec_m) && !wide_out_narrow_m) {
    if (m)
      launch_decode_fast<true>(g, s);
    else
      launch_decode_fast<false>(g, s);
  } else if (aligned) {
    if (m)
      launch_decode<true, true>(g, s);
    else
      launch_decode<true, false>(g, s);
  } else {
    if (m)
      launch_decode<false, true>(g, s);
    else
      launch_decode<false, false>(g, s);
  }
  return (int)cudaGetLastError();
}

extern "C" int lh_cuda_aq_full_encode(const lh_aq_qparams *p, const void *a, const uint32_t *batch_rows, void *m,
                                      const int64_t *slots, size_t rows, void *wire, void *stream) {
  AqArgs g;
  if (!make_args(p, rows, &g))
    return (int)cudaErrorInvalidValue;
  if (rows == 0)
    return 0;
  if (!a || !wire || (m && !slots))
    return (int)cudaErrorInvalidValue;
  g.a = a;
  g.batch_rows = batch_rows;
  g.m = m;
  g.slots = slots;
  g.out = wire;
  const bool aligned = aligned_call(g);
  g.vec_a = aligned && aligned16(a);
  g.vec_m = aligned && m && aligned16(m);
  g.vec_out = aligned && aligned16(wire);
  set_row_divider(&g, aligned);
  const unsigned blocks = blocks_for(g.units);
  cudaStream_t s = (cudaStream_t)stream;
  if (aligned)
    full_encode_kernel<true><<<blocks, kThreads, 0, s>>>(g);
  else
    full_encode_kernel<false><<<blocks, kThreads, 0, s>>>(g);
  return (int)cudaGetLastError();
}

extern "C" int lh_cuda_aq_full_decode(const lh_aq_qparams *p, const void *wire, void *m, const int64_t *slots,
                                      size_t rows, void *out, const uint32_t *batch_rows, void *stream) {
  AqArgs g;
  if (!make_args(p, rows, &g))
    return (int)cudaErrorInvalidValue;
  if (rows == 0)
    return 0;
  if (!wire || !out || (m && !slots))
    return (int)cudaErrorInvalidValue;
  g.wire = wire;
  g.m = m;
  g.slots = slots;
  g.out = out;
  g.batch_rows = batch_rows;
  const bool aligned = aligned_call(g);
  g.vec_a = aligned && aligned16(wire);  // the wire is what this kernel reads
  g.vec_out = aligned && aligned16(out);
  const bool vec_copy = aligned && m && aligned16(m) && aligned16(wire);
  set_row_divider(&g, aligned);
  const unsigned blocks = blocks_for(g.units);
  cudaStream_t s = (cudaStream_t)stream;
  if (aligned)
    full_decode_kernel<true><<<blocks, kThreads, 0, s>>>(g, vec_copy);
  else
    full_decode_kernel<false><<<blocks, kThreads, 0, s>>>(g, vec_copy);
  return (int)cudaGetLastError();
}

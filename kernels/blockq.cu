// Block quantization (the BLOCKQ payload of lib/compress/payload.h). Twins: lib/compress/blockq.c.
//
// Payload: nb = ceil(n / block) scales (fp32, or fp16 rounded up), then the codes, LSB-first
// bit-packed: the 8 elements of "group" g = elements 8g .. 8g+7 fill exactly `bits` bytes at
// code byte g * bits, so a thread that owns a group writes its bytes without touching anyone
// else's. All per-element arithmetic (scale rounding, the code, dequantization, the random
// word) is codec_math.h's, and the block max is exact and order-free, so the bytes equal the
// CPU twin's whatever the launch shape.
//
// Input the CPU twin refuses (non-finite values; |x| above 65504 under fp16 scales, whose
// scale would round up to infinity): these kernels do not look and write some payload; the
// caller checks the input first when it matters.
//
// Encode, two shapes:
//  - block = 8 L with L a power of two <= 32 (block 8, 16, ..., 256; 128 is the default):
//    one kernel, one pass. A thread owns one group; the L threads of a quantization block are
//    L consecutive lanes of one warp, so the block max is a segmented xor-shuffle max (offsets
//    below L stay inside the segment) and each thread quantizes its 8 values from registers.
//  - any other block: a scales kernel (one warp per quantization block, or a whole 256-thread
//    block for quantization blocks over 4096 elements so long blocks still spread over the
//    GPU) writes the scales; a codes kernel (one thread per group) reads them back from the
//    payload (one scale per group when block / 8 is a power of two, else per element). x is
//    read twice (the second time mostly from L2).
// Error feedback (encode_ef): v = x + e is formed wherever x is read (it is cheap and exactly
// repeatable), the scale is the max of |v|, and the thread that writes a group's codes writes
// e = v - D(code) for its 8 elements. x may alias e: every element is read and then written
// by the one thread that owns it, and the scales kernel only reads.
// Decode: one thread per group reads its b bytes, the (at most few) scales its elements use,
// and writes (or adds to) 8 floats.
//
// Bytes per element that must move (b bits, B = block, S = 4 or 2 scale bytes):
//   encode          4 (x) + b/8 + S/B
//   encode_ef       4 (x) + 4 (e in) + 4 (e out) + b/8 + S/B
//   decode          b/8 + S/B + 4 (out), + 4 more (reading out) when accumulating
#include <cuda_runtime.h>

#include "codec_common.cuh"
#include "kernels.h"

namespace {

using namespace lh_codec;

constexpr int kThreads = 256;
constexpr size_t kNoBlock = ~(size_t)0;

struct BqGeom {
  size_t n;
  size_t nb;       // number of quantization blocks (= scales)
  size_t block;    // elements per scale
  size_t ngroups;  // ceil(n / 8)
  int bits;
  int max_code;
  int fp16;
  int stochastic;
  int group_shift; // log2(block / 8) when that is a whole number, else -1
  int seg_shift;   // encode's one-pass path: group_shift when block / 8 <= 32, else -1
  bool vec;        // x (and e) are 16-byte aligned: full groups use float4 accesses
  lh_rng_key key;
};

// The 8 random words of group g (elements 8g .. 8g+7): words of Philox blocks 2g and 2g+1,
// keyed by the global element index as codec_math.h defines.
__device__ __forceinline__ void group_random(const BqGeom &a, size_t g, uint32_t rnd[8]) {
  lh_rng_block(&a.key, 2 * g, rnd);
  lh_rng_block(&a.key, 2 * g + 1, rnd + 4);
}

// Quantizes v[0..cnt) of group g (cnt = elements of the group below n) and writes the group's
// code bytes; with EF writes e = v - D(code). UNIFORM: all 8 elements are in one quantization
// block, whose multiplier and step the caller passes. Otherwise element 8g + j belongs to
// block (8g + j) / block, and each block's scale is read back from the payload.
template <bool EF, bool UNIFORM>
__device__ __forceinline__ void quantize_group(const BqGeom &a, size_t g, int cnt, const float v[8],
                                               const uint8_t *scales, uint8_t *codes, float *e, float inv,
                                               float step) {
  const size_t i0 = g * 8;
  uint32_t rnd[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if (a.stochastic)
    group_random(a, g, rnd);
  size_t q = 0, r = 0, have = kNoBlock;
  if (!UNIFORM) {
    q = i0 / a.block;
    r = i0 % a.block;
  }
  uint64_t packed = 0;
  float res[8];
#pragma unroll
  for (int j = 0; j < 8; j++) {
    res[j] = 0.0f;
    if (j < cnt) {
      if (!UNIFORM && q != have) {
        const float s = load_scale(scales, q, a.fp16);
        inv = lh_quant_inv_scale(s, a.max_code);
        step = lh_quant_step(s, a.max_code);
        have = q;
      }
      const uint32_t u = lh_quant_code(v[j], inv, a.max_code, a.stochastic, rnd[j]);
      packed |= (uint64_t)u << (j * a.bits);
      if (EF)
        res[j] = LH_FSUB(v[j], lh_dequant_code(u, a.max_code, step));
    }
    if (!UNIFORM && ++r == a.block) {
      r = 0;
      q++;
    }
  }
  put_bytes(codes + g * (size_t)a.bits, packed, (cnt * a.bits + 7) / 8);
  if (EF)
    store8(e, i0, cnt, a.vec, res);
}

// Loads group g's values: x, or x + e with error feedback.
template <bool EF>
__device__ __forceinline__ void load_group(const BqGeom &a, const float *x, const float *e, size_t g, int cnt,
                                           float v[8]) {
  load8(x, g * 8, cnt, a.vec, v);
  if (EF) {
    float w[8];
    load8(e, g * 8, cnt, a.vec, w);
#pragma unroll
    for (int j = 0; j < 8; j++)
      v[j] = LH_FADD(v[j], w[j]);
  }
}

__device__ __forceinline__ int group_count(const BqGeom &a, size_t g) {
  size_t left = a.n - g * 8;
  return left < 8 ? (int)left : 8;
}

// Fast path (block = 8 L, L = 1 << seg_shift <= 32): thread per group, one pass.
// The loop runs over whole warps (base is a multiple of 32 and the same for all lanes), so
// every lane reaches the shuffles; lanes past the last group take part with max 0.
template <bool EF>
__global__ void blockq_encode_segmented_kernel(BqGeom a, const float *x, float *e, uint8_t *scales, uint8_t *codes) {
  const int lane = threadIdx.x & 31;
  const int L = 1 << a.seg_shift;
  const size_t warp = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
  const size_t nwarps = ((size_t)gridDim.x * blockDim.x) >> 5;
  for (size_t base = warp * 32; base < a.ngroups; base += nwarps * 32) {
    const size_t g = base + lane;
    const bool active = g < a.ngroups;
    const int cnt = active ? group_count(a, g) : 0;
    float v[8];
    if (active)
      load_group<EF>(a, x, e, g, cnt, v);
    else
      for (int j = 0; j < 8; j++)
        v[j] = 0.0f;
    float m = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++)
      m = fmaxf(m, fabsf(v[j]));  // v[j] = 0 past n: neutral, as |x| >= 0
    for (int off = L >> 1; off >= 1; off >>= 1)
      m = fmaxf(m, __shfl_xor_sync(kFullMask, m, off));
    const size_t q = g >> a.seg_shift;
    const bool writer = active && (g & (size_t)(L - 1)) == 0;
    const float s = store_scale(scales, q, a.fp16, 1, m, writer);
    if (active)
      quantize_group<EF, true>(a, g, cnt, v, scales, codes, e, lh_quant_inv_scale(s, a.max_code),
                               lh_quant_step(s, a.max_code));
  }
}

// General path, step 1: the scales. A team of TEAM threads (a warp, or the whole block when
// TEAM == blockDim.x == kThreads) per quantization block, grid-stride over blocks.
template <int TEAM, bool EF>
__global__ void blockq_scales_kernel(BqGeom a, const float *x, const float *e, uint8_t *scales) {
  __shared__ float warp_max_of[kThreads / 32 + 1];
  const int rank = threadIdx.x % TEAM;
  const int teams_per_block = blockDim.x / TEAM;
  const size_t team = blockIdx.x * (size_t)teams_per_block + threadIdx.x / TEAM;
  const size_t nteams = (size_t)gridDim.x * teams_per_block;
  // The loop bound is the same for all threads of a team (all of the block when TEAM is the
  // block), so the shuffles and barriers below are reached by all of them.
  for (size_t q = team; q < a.nb; q += nteams) {
    const size_t start = q * a.block;
    const size_t end = start + a.block < a.n ? start + a.block : a.n;
    float m = 0.0f;
    for (size_t i = start + rank; i < end; i += TEAM) {
      float v = x[i];
      if (EF)
        v = LH_FADD(v, e[i]);
      m = fmaxf(m, fabsf(v));
    }
    m = warp_max(m);
    if (TEAM > 32) {
      const int w = threadIdx.x >> 5;
      if ((threadIdx.x & 31) == 0)
        warp_max_of[w] = m;
      __syncthreads();
      if (threadIdx.x < 32) {
        float t = (int)threadIdx.x < TEAM / 32 ? warp_max_of[threadIdx.x] : 0.0f;
        t = warp_max(t);
        if (threadIdx.x == 0)
          warp_max_of[kThreads / 32] = t;
      }
      __syncthreads();
      m = warp_max_of[kThreads / 32];
      __syncthreads();  // the slots are reused by the next block
    }
    store_scale(scales, q, a.fp16, 1, m, rank == 0);
  }
}

// General path, step 2: thread per group; scales read back from the payload.
template <bool EF>
__global__ void blockq_codes_kernel(BqGeom a, const float *x, float *e, const uint8_t *scales, uint8_t *codes) {
  for (size_t g = blockIdx.x * (size_t)blockDim.x + threadIdx.x; g < a.ngroups; g += (size_t)gridDim.x * blockDim.x) {
    const int cnt = group_count(a, g);
    float v[8];
    load_group<EF>(a, x, e, g, cnt, v);
    if (a.group_shift >= 0) {  // the group lies in one block: no per-element tracking
      const float s = load_scale(scales, g >> a.group_shift, a.fp16);
      quantize_group<EF, true>(a, g, cnt, v, scales, codes, e, lh_quant_inv_scale(s, a.max_code),
                               lh_quant_step(s, a.max_code));
    } else {
      quantize_group<EF, false>(a, g, cnt, v, scales, codes, e, 0.0f, 0.0f);
    }
  }
}

// Decode: thread per group. vec: out is 16-byte aligned. With group_shift >= 0 (block = 8 *
// 2^group_shift) a group lies in block g >> group_shift; otherwise each element's block is
// tracked from one division per group.
__global__ void blockq_decode_kernel(BqGeom a, const uint8_t *scales, const uint8_t *codes, float *out,
                                     int accumulate) {
  const uint32_t mask = (1u << a.bits) - 1u;
  for (size_t g = blockIdx.x * (size_t)blockDim.x + threadIdx.x; g < a.ngroups; g += (size_t)gridDim.x * blockDim.x) {
    const int cnt = group_count(a, g);
    const size_t i0 = g * 8;
    const uint64_t packed = get_bytes(codes + g * (size_t)a.bits, (cnt * a.bits + 7) / 8);
    float y[8];
    if (accumulate)
      load8(out, i0, cnt, a.vec, y);
    size_t q, r = 0, have = kNoBlock;
    float step = 0.0f;
    if (a.group_shift >= 0) {
      q = g >> a.group_shift;
      step = lh_quant_step(load_scale(scales, q, a.fp16), a.max_code);
      have = q;
    } else {
      q = i0 / a.block;
      r = i0 % a.block;
    }
#pragma unroll
    for (int j = 0; j < 8; j++) {
      if (j < cnt) {
        if (q != have) {
          step = lh_quant_step(load_scale(scales, q, a.fp16), a.max_code);
          have = q;
        }
        const float d = lh_dequant_code((uint32_t)(packed >> (j * a.bits)) & mask, a.max_code, step);
        y[j] = accumulate ? LH_FADD(y[j], d) : d;
      }
      if (a.group_shift < 0 && ++r == a.block) {
        r = 0;
        q++;
      }
    }
    store8(out, i0, cnt, a.vec, y);
  }
}

int check_params(const lh_blockq_params *p, const lh_rng_key *key) {
  if (!p || p->bits < 1 || p->bits > 8 || p->block < 1)
    return (int)cudaErrorInvalidValue;
  if (p->stochastic && !key)
    return (int)cudaErrorInvalidValue;
  return 0;
}

BqGeom make_geom(const lh_blockq_params *p, const lh_rng_key *key, size_t n) {
  BqGeom a;
  a.n = n;
  a.block = (size_t)p->block;
  a.nb = (n + a.block - 1) / a.block;
  a.ngroups = (n + 7) / 8;
  a.bits = p->bits;
  a.max_code = lh_quant_max_code(p->bits);
  a.fp16 = p->scale_fp16 ? 1 : 0;
  a.stochastic = p->stochastic ? 1 : 0;
  a.group_shift = -1;
  if (p->block % 8 == 0) {
    const int l = p->block / 8;
    if ((l & (l - 1)) == 0)
      for (a.group_shift = 0; (1 << a.group_shift) < l; a.group_shift++) {
      }
  }
  a.seg_shift = a.group_shift >= 0 && a.group_shift <= 5 ? a.group_shift : -1;
  a.vec = false;
  if (key)
    a.key = *key;
  else
    a.key = lh_rng_key{0, 0, 0};
  return a;
}

template <bool EF>
int encode(const lh_blockq_params *p, const lh_rng_key *key, const float *x, float *e, size_t n, uint8_t *out,
           void *stream) {
  int rc = check_params(p, key);
  if (rc)
    return rc;
  if (n == 0)
    return 0;
  if (!x || !out || (EF && !e))
    return (int)cudaErrorInvalidValue;
  BqGeom a = make_geom(p, key, n);
  a.vec = aligned16(x) && (!EF || aligned16(e));
  uint8_t *scales = out;
  uint8_t *codes = out + a.nb * (a.fp16 ? 2 : 4);
  cudaStream_t s = (cudaStream_t)stream;
  if (a.seg_shift >= 0) {
    blockq_encode_segmented_kernel<EF><<<grid_for(a.ngroups, kThreads), kThreads, 0, s>>>(a, x, e, scales, codes);
    return (int)cudaGetLastError();
  }
  if (a.block <= 4096)
    blockq_scales_kernel<32, EF><<<grid_for(a.nb, kThreads / 32), kThreads, 0, s>>>(a, x, e, scales);
  else
    blockq_scales_kernel<kThreads, EF><<<grid_for(a.nb, 1), kThreads, 0, s>>>(a, x, e, scales);
  rc = (int)cudaGetLastError();
  if (rc)
    return rc;
  blockq_codes_kernel<EF><<<grid_for(a.ngroups, kThreads), kThreads, 0, s>>>(a, x, e, scales, codes);
  return (int)cudaGetLastError();
}

}  // namespace

extern "C" int lh_cuda_blockq_encode(const lh_blockq_params *p, const lh_rng_key *key, const float *x, size_t n,
                                     uint8_t *out, void *stream) {
  return encode<false>(p, key, x, nullptr, n, out, stream);
}

extern "C" int lh_cuda_blockq_encode_ef(const lh_blockq_params *p, const lh_rng_key *key, const float *x, float *e,
                                        size_t n, uint8_t *out, void *stream) {
  return encode<true>(p, key, x, e, n, out, stream);
}

extern "C" int lh_cuda_blockq_decode(const lh_blockq_params *p, const uint8_t *in, size_t n, float *out,
                                     int accumulate, void *stream) {
  if (!p || p->bits < 1 || p->bits > 8 || p->block < 1)  // the rounding mode does not matter here
    return (int)cudaErrorInvalidValue;
  if (n == 0)
    return 0;
  if (!in || !out)
    return (int)cudaErrorInvalidValue;
  BqGeom a = make_geom(p, nullptr, n);
  a.stochastic = 0;
  a.vec = aligned16(out);
  const uint8_t *scales = in;
  const uint8_t *codes = in + a.nb * (a.fp16 ? 2 : 4);
  blockq_decode_kernel<<<grid_for(a.ngroups, kThreads), kThreads, 0, (cudaStream_t)stream>>>(a, scales, codes, out,
                                                                                            accumulate ? 1 : 0);
  return (int)cudaGetLastError();
}

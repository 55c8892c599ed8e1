// 1-bit sign with a per-block mean |x| scale (the SIGN payload of lib/compress/payload.h).
// Twins: lib/compress/sign.c.
//
// Payload: nb = ceil(n / block) scales (fp32, or fp16 to nearest), then ceil(n / 8) bytes of
// bits, LSB first: 1 when x >= 0 (-0 included), decoded as +scale, 0 as -scale.
//
// The scale is a sum, whose bits depend on the order: it must be lh_lane_fold32's order
// exactly, which is what one warp per block computes naturally: lane j sums the block's
// elements j, j+32, j+64, ... in increasing order, then a __shfl_down_sync tree with offsets
// 16, 8, 4, 2, 1 folds the lanes (codec_common.cuh's warp_sum_fold32), then LH_FDIV by the
// block's length. So the scale is always one warp per block, whatever the block size (a long
// block is summed by one warp only: the order allows no more parallelism).
//
// Encode, two shapes:
//  - block % 8 == 0: one kernel. After the scale, the same warp walks its block again 32
//    elements at a time; __ballot_sync gives their 32 sign bits, which are 4 whole payload
//    bytes (the block starts on a byte boundary), written by lanes 0..3. The second walk reads
//    what the first just read (L1/L2).
//  - otherwise a byte can hold bits of two blocks: the warp kernel writes only the scales and
//    a second kernel, one thread per 8 elements, writes the bytes (and the EF residual, with
//    the scales read back from the payload).
// Error feedback: v = x + e wherever x is read; e = v - (bit ? s : -s) with s the stored
// scale. x may alias e: each element is read, then written, by the one thread that owns it.
// Decode: one thread per byte (8 elements).
//
// Bytes per element that must move (S = 4 or 2 scale bytes, B = block):
//   encode      4 + 1/8 + S/B
//   encode_ef   4 + 4 + 4 + 1/8 + S/B
//   decode      1/8 + S/B + 4, + 4 when accumulating
#include <cuda_runtime.h>

#include "codec_common.cuh"
#include "kernels.h"

namespace {

using namespace lh_codec;

constexpr int kThreads = 256;
constexpr size_t kNoBlock = ~(size_t)0;

struct SgGeom {
  size_t n;
  size_t nb;
  size_t block;
  size_t nbytes;  // ceil(n / 8)
  int fp16;
  int group_shift;  // log2(block / 8) when that is a whole number, else -1
};

// One warp per block: the scale; with BITS (block % 8 == 0) also the bits and the residual.
template <bool EF, bool BITS>
__global__ void sign_warp_kernel(SgGeom a, const float *x, float *e, uint8_t *scales, uint8_t *bits) {
  const int lane = threadIdx.x & 31;
  const size_t warp = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
  const size_t nwarps = ((size_t)gridDim.x * blockDim.x) >> 5;
  for (size_t q = warp; q < a.nb; q += nwarps) {  // warp-uniform
    const size_t start = q * a.block;
    const size_t end = start + a.block < a.n ? start + a.block : a.n;
    float acc = 0.0f;
    for (size_t i = start + lane; i < end; i += 32) {
      float v = x[i];
      if (EF)
        v = LH_FADD(v, e[i]);
      acc = LH_FADD(acc, fabsf(v));
    }
    const float sum = warp_sum_fold32(acc);
    const float s = store_scale(scales, q, a.fp16, 0, LH_FDIV(sum, (float)(end - start)), lane == 0);
    for (size_t t = start; BITS && t < end; t += 32) {  // warp-uniform
      const size_t i = t + lane;
      const bool in = i < end;
      float v = 0.0f;
      if (in) {
        v = x[i];
        if (EF)
          v = LH_FADD(v, e[i]);
      }
      const bool bit = in && v >= 0.0f;
      const unsigned mask = __ballot_sync(kFullMask, bit);
      if (EF && in)
        e[i] = LH_FSUB(v, bit ? s : -s);
      const size_t count = end - t < 32 ? end - t : 32;
      if ((size_t)lane * 8 < count)
        bits[t / 8 + lane] = (uint8_t)(mask >> (8 * lane));
    }
  }
}

// Thread per byte (elements 8g .. 8g+7), for blocks that are not a multiple of 8.
template <bool EF>
__global__ void sign_bits_kernel(SgGeom a, const float *x, float *e, const uint8_t *scales, uint8_t *bits) {
  for (size_t g = blockIdx.x * (size_t)blockDim.x + threadIdx.x; g < a.nbytes; g += (size_t)gridDim.x * blockDim.x) {
    const size_t i0 = g * 8;
    const int cnt = a.n - i0 < 8 ? (int)(a.n - i0) : 8;
    size_t q = i0 / a.block, r = i0 % a.block, have = kNoBlock;
    float s = 0.0f;
    unsigned byte = 0;
    for (int j = 0; j < cnt; j++) {
      const size_t i = i0 + j;
      float v = x[i];
      if (EF)
        v = LH_FADD(v, e[i]);
      const bool bit = v >= 0.0f;
      byte |= (unsigned)bit << j;
      if (EF) {
        if (q != have) {
          s = load_scale(scales, q, a.fp16);
          have = q;
        }
        e[i] = LH_FSUB(v, bit ? s : -s);
      }
      if (++r == a.block) {
        r = 0;
        q++;
      }
    }
    bits[g] = (uint8_t)byte;
  }
}

__global__ void sign_decode_kernel(SgGeom a, const uint8_t *scales, const uint8_t *bits, float *out, int accumulate) {
  for (size_t g = blockIdx.x * (size_t)blockDim.x + threadIdx.x; g < a.nbytes; g += (size_t)gridDim.x * blockDim.x) {
    const size_t i0 = g * 8;
    const int cnt = a.n - i0 < 8 ? (int)(a.n - i0) : 8;
    const unsigned byte = bits[g];
    size_t q, r = 0, have = kNoBlock;
    float s = 0.0f;
    if (a.group_shift >= 0) {  // the byte's 8 elements lie in block g >> group_shift
      q = g >> a.group_shift;
      s = load_scale(scales, q, a.fp16);
      have = q;
    } else {
      q = i0 / a.block;
      r = i0 % a.block;
    }
    for (int j = 0; j < cnt; j++) {
      if (q != have) {
        s = load_scale(scales, q, a.fp16);
        have = q;
      }
      const float d = (byte >> j) & 1u ? s : -s;
      out[i0 + j] = accumulate ? LH_FADD(out[i0 + j], d) : d;
      if (a.group_shift < 0 && ++r == a.block) {
        r = 0;
        q++;
      }
    }
  }
}

SgGeom make_geom(const lh_sign_params *p, size_t n) {
  SgGeom a;
  a.n = n;
  a.block = (size_t)p->block;
  a.nb = (n + a.block - 1) / a.block;
  a.nbytes = (n + 7) / 8;
  a.fp16 = p->scale_fp16 ? 1 : 0;
  a.group_shift = -1;
  if (p->block % 8 == 0) {
    const int l = p->block / 8;
    if ((l & (l - 1)) == 0)
      for (a.group_shift = 0; (1 << a.group_shift) < l; a.group_shift++) {
      }
  }
  return a;
}

template <bool EF>
int encode(const lh_sign_params *p, const float *x, float *e, size_t n, uint8_t *out, void *stream) {
  if (!p || p->block < 1)
    return (int)cudaErrorInvalidValue;
  if (n == 0)
    return 0;
  if (!x || !out || (EF && !e))
    return (int)cudaErrorInvalidValue;
  const SgGeom a = make_geom(p, n);
  uint8_t *scales = out;
  uint8_t *bits = out + a.nb * (a.fp16 ? 2 : 4);
  cudaStream_t s = (cudaStream_t)stream;
  const unsigned grid = grid_for(a.nb, kThreads / 32);
  if (a.block % 8 == 0) {
    sign_warp_kernel<EF, true><<<grid, kThreads, 0, s>>>(a, x, e, scales, bits);
    return (int)cudaGetLastError();
  }
  sign_warp_kernel<EF, false><<<grid, kThreads, 0, s>>>(a, x, e, scales, bits);
  int rc = (int)cudaGetLastError();
  if (rc)
    return rc;
  sign_bits_kernel<EF><<<grid_for(a.nbytes, kThreads), kThreads, 0, s>>>(a, x, e, scales, bits);
  return (int)cudaGetLastError();
}

}  // namespace

extern "C" int lh_cuda_sign_encode(const lh_sign_params *p, const float *x, size_t n, uint8_t *out, void *stream) {
  return encode<false>(p, x, nullptr, n, out, stream);
}

extern "C" int lh_cuda_sign_encode_ef(const lh_sign_params *p, const float *x, float *e, size_t n, uint8_t *out,
                                      void *stream) {
  return encode<true>(p, x, e, n, out, stream);
}

extern "C" int lh_cuda_sign_decode(const lh_sign_params *p, const uint8_t *in, size_t n, float *out, int accumulate,
                                   void *stream) {
  if (!p || p->block < 1)
    return (int)cudaErrorInvalidValue;
  if (n == 0)
    return 0;
  if (!in || !out)
    return (int)cudaErrorInvalidValue;
  const SgGeom a = make_geom(p, n);
  const uint8_t *scales = in;
  const uint8_t *bits = in + a.nb * (a.fp16 ? 2 : 4);
  sign_decode_kernel<<<grid_for(a.nbytes, kThreads), kThreads, 0, (cudaStream_t)stream>>>(a, scales, bits, out,
                                                                                         accumulate ? 1 : 0);
  return (int)cudaGetLastError();
}

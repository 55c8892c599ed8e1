// Helpers shared by the codec kernels (cast.cu, blockq.cu, sign.cu, topk.cu, powersgd.cu):
// launch sizing, byte-wise payload access and warp reductions. Device-only; never installed.
//
// Payload pointers carry no alignment promise: a payload follows a frame header, fp16 scales
// leave the codes at an odd offset when their count is odd, and top-k's values are 4-aligned
// only relative to the payload start. So every payload access here goes byte by byte (the
// bytes are little-endian, like every supported host and GPU). Float arrays (x, e, out) are
// float-aligned by their type; 16-byte vector paths are taken only where the launcher has
// checked the pointers.
#ifndef LH_KERNELS_CODEC_COMMON_CUH
#define LH_KERNELS_CODEC_COMMON_CUH

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "compress/codec_math.h"

namespace lh_codec {

constexpr unsigned kFullMask = 0xffffffffu;
// Grid-stride loops everywhere: the grid is capped so that one launch shape serves every n.
constexpr size_t kMaxGrid = 65535;

// Blocks for `items` work items at `per_block` items per block, at least 1, at most kMaxGrid.
inline unsigned grid_for(size_t items, size_t per_block) {
  size_t blocks = (items + per_block - 1) / per_block;
  if (blocks == 0)
    blocks = 1;
  return (unsigned)(blocks < kMaxGrid ? blocks : kMaxGrid);
}

inline bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

// ---- byte-wise payload access ---------------------------------------------------------------
__device__ __forceinline__ void put_bytes(uint8_t *dst, uint64_t v, int count) {
  for (int i = 0; i < count; i++)
    dst[i] = (uint8_t)(v >> (8 * i));
}
__device__ __forceinline__ uint64_t get_bytes(const uint8_t *src, int count) {
  uint64_t v = 0;
  for (int i = 0; i < count; i++)
    v |= (uint64_t)src[i] << (8 * i);
  return v;
}
__device__ __forceinline__ void put_f32(uint8_t *dst, float f) { put_bytes(dst, lh_f32_bits(f), 4); }
__device__ __forceinline__ float get_f32(const uint8_t *src) { return lh_bits_f32((uint32_t)get_bytes(src, 4)); }
__device__ __forceinline__ void put_u16(uint8_t *dst, uint16_t v) { put_bytes(dst, v, 2); }
__device__ __forceinline__ uint16_t get_u16(const uint8_t *src) { return (uint16_t)get_bytes(src, 2); }

// Scale q of a scale array that starts at `scales`: fp16 (2 bytes each) or fp32 (4 bytes).
__device__ __forceinline__ float load_scale(const uint8_t *scales, size_t q, int fp16) {
  return fp16 ? lh_f16_to_f32(get_u16(scales + 2 * q)) : get_f32(scales + 4 * q);
}
// Stores scale q and returns the value the codec then works with: the decoded stored scale.
// round_up: fp16 rounded toward +inf (block quantization, so a scale never clips its block);
// otherwise to nearest (sign).
__device__ __forceinline__ float store_scale(uint8_t *scales, size_t q, int fp16, int round_up, float s,
                                             bool write) {
  if (fp16) {
    uint16_t h = round_up ? lh_f32_to_f16_up(s) : lh_f32_to_f16(s);
    if (write)
      put_u16(scales + 2 * q, h);
    return lh_f16_to_f32(h);
  }
  if (write)
    put_f32(scales + 4 * q, s);
  return s;
}

// ---- reductions -------------------------------------------------------------------------------
// Max over the 32 lanes (every lane gets it). Max is exact and order-free, so any tree works.
__device__ __forceinline__ float warp_max(float v) {
  for (int off = 16; off >= 1; off >>= 1)
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

// The sum of the 32 lanes in lh_lane_fold32's order (codec_math.h): for off = 16, 8, 4, 2, 1,
// lane i adds lane i + off. Lanes below `off` then hold exactly what the sequential fold holds
// (they read lanes in [off, 2 off), which that step does not change), so lane 0 ends with the
// fold's result; it is broadcast to every lane.
__device__ __forceinline__ float warp_sum_fold32(float v) {
  for (int off = 16; off >= 1; off >>= 1)
    v = LH_FADD(v, __shfl_down_sync(kFullMask, v, off));
  return __shfl_sync(kFullMask, v, 0);
}

// ---- 8 consecutive floats -------------------------------------------------------------------------
// Loads x[i0 .. i0+cnt) into v[0..cnt), zeros the rest. vec: x + i0 is 16-byte aligned (the
// launcher checked x, and i0 is a multiple of 8), so a full group takes two 16-byte loads.
__device__ __forceinline__ void load8(const float *x, size_t i0, int cnt, bool vec, float v[8]) {
  if (vec && cnt == 8) {
    float4 a = reinterpret_cast<const float4 *>(x + i0)[0];
    float4 b = reinterpret_cast<const float4 *>(x + i0)[1];
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    return;
  }
#pragma unroll
  for (int j = 0; j < 8; j++)
    v[j] = j < cnt ? x[i0 + j] : 0.0f;
}
__device__ __forceinline__ void store8(float *y, size_t i0, int cnt, bool vec, const float v[8]) {
  if (vec && cnt == 8) {
    reinterpret_cast<float4 *>(y + i0)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4 *>(y + i0)[1] = make_float4(v[4], v[5], v[6], v[7]);
    return;
  }
#pragma unroll
  for (int j = 0; j < 8; j++)
    if (j < cnt)
      y[i0 + j] = v[j];
}

}  // namespace lh_codec

#endif

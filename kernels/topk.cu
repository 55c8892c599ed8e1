// Top-k per chunk, exact (the TOPK payload of lib/compress/payload.h). Twins: lib/compress/topk.c.
//
// Payload: K u16 chunk-local indices, zero padding to a multiple of 4 bytes, K fp32 values;
// chunk c sends k_c = min(k, len_c) entries starting at entry c * min(k, chunk), in index order:
// its k_c largest keys (key = bits of fabsf(x) as a uint32), ties to the lower index.
//
// Encode: one thread block per chunk (grid-stride over chunks), streaming the chunk from global
// memory (a chunk is at most 65536 floats = 256 KiB, more than shared memory holds; repeated
// passes hit L2/L1), so any chunk size works with a small fixed shared footprint (a 256-bin
// histogram and cub's scan storage: 1.3 to 3.2 KiB):
//  1. MSD radix select of the k_c-th largest key T: four passes, one per 8-bit digit from the
//     top, each a 256-bin shared histogram of the keys that match the digits chosen so far
//     (warp-aggregated: lanes with the same digit add once, so ties and all-zero chunks do
//     not serialize on one bin); the bin holding the k_c-th largest fixes the next digit. It
//     ends with T and `need`, how many keys equal to T belong to the top k_c (the keys above
//     T number k_c - need).
//  2. One pass in index order, a tile of THREADS elements at a time: key > T is sent; key == T
//     is sent when fewer than `need` equal keys come before it (a block exclusive scan of the
//     equal flags, plus the count from earlier tiles); a second block scan of the sent flags
//     gives each sent element its entry. Stops once k_c entries are out.
// The selection is unique, so the bytes equal the CPU twin's (which uses other digit widths).
// Sampled mode: topk.c defines it so that its payload is the same bytes as exact, so the GPU
// runs exact for it too.
// Error feedback: step 0 forms e = x + e for the chunk in place (x may alias e), the select
// reads e, and step 2 zeroes e where it sends.
// Non-finite input: keys are just bits (a NaN's key is above infinity's), as on the CPU.
//
// Decode: the output is zeroed (cudaMemsetAsync) unless accumulating, then one thread per entry
// scatters its value. The payload must have been validated on the host (indices inside their
// chunk, strictly increasing: lh_topk_decode's checks); the kernel trusts it, and increasing
// indices are what make the scatter race-free.
//
// Bytes per element that must move (K = entries, n elements):
//   encode      4 (x) + 6 K/n (index + value)          (the select re-reads x from cache)
//   encode_ef   4 (x) + 4 (e in) + 4 (e out) + 6 K/n
//   decode      4 (out; memset or read+write: 8 when accumulating) + 6 K/n
#include <cub/block/block_scan.cuh>
#include <cuda_runtime.h>

#include "codec_common.cuh"
#include "kernels.h"

namespace {

using namespace lh_codec;

struct TkGeom {
  size_t n;
  size_t chunk;
  size_t nchunks;
  size_t kfull;    // entries of a full chunk, min(k, chunk): chunk c starts at entry c * kfull
  size_t entries;  // K
  size_t k;
};

__device__ __forceinline__ uint32_t topk_key(float v) { return lh_f32_bits(v) & 0x7FFFFFFFu; }

template <int THREADS, bool EF>
__global__ void __launch_bounds__(THREADS) topk_encode_kernel(TkGeom a, const float *x, float *e, uint8_t *idx_out,
                                                                 uint8_t *val_out) {
  using Scan = cub::BlockScan<unsigned, THREADS>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ unsigned hist[256];
  __shared__ unsigned s_prefix, s_need;
  const int tid = threadIdx.x;
  const int lane = tid & 31;

  for (size_t c = blockIdx.x; c < a.nchunks; c += gridDim.x) {  // block-uniform
    const size_t start = c * a.chunk;
    const unsigned len = (unsigned)(a.n - start < a.chunk ? a.n - start : a.chunk);
    const unsigned kc = (unsigned)(a.k < len ? a.k : len);
    const float *v = x + start;
    if (EF) {
      float *ec = e + start;
      for (unsigned i = tid; i < len; i += THREADS)
        ec[i] = LH_FADD(x[start + i], ec[i]);
      __syncthreads();  // makes the block's writes to e visible to the whole block
      v = ec;
    }

    // 1. Radix select.
    unsigned prefix = 0, digits_mask = 0, need = kc;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = tid; b < 256; b += THREADS)
        hist[b] = 0;
      __syncthreads();
      for (unsigned base = 0; base < len; base += THREADS) {  // block-uniform: all lanes shuffle
        const unsigned i = base + tid;
        unsigned digit = 256;  // "none"
        if (i < len) {
          const uint32_t key = topk_key(v[i]);
          if ((key & digits_mask) == prefix)
            digit = (key >> shift) & 255u;
        }
        const unsigned peers = __match_any_sync(kFullMask, digit);
        if (digit < 256 && lane == __ffs(peers) - 1)
          atomicAdd(&hist[digit], (unsigned)__popc(peers));
      }
      __syncthreads();
      if (tid == 0) {
        // The keys matching the prefix number at least `need` (>= 1): find the digit whose bin
        // holds the need-th largest of them.
        unsigned above = 0;
        int d = 255;
        for (; d > 0; d--) {
          if (above + hist[d] >= need)
            break;
          above += hist[d];
        }
        s_prefix = prefix | ((unsigned)d << shift);
        s_need = need - above;
      }
      __syncthreads();
      prefix = s_prefix;
      need = s_need;
      digits_mask |= 255u << shift;
      __syncthreads();  // s_prefix, s_need and hist are rewritten by the next pass
    }
    const uint32_t kth = prefix;

    // 2. Emit in index order.
    const size_t entry0 = c * a.kfull;
    unsigned eq_before = 0, sent = 0;  // over earlier tiles; the same in every thread
    for (unsigned base = 0; base < len && sent < kc; base += THREADS) {  // block-uniform
      const unsigned i = base + tid;
      float value = 0.0f;
      uint32_t key = 0;
      bool gt = false, eq = false;
      if (i < len) {
        value = v[i];
        key = topk_key(value);
        gt = key > kth;
        eq = key == kth;
      }
      unsigned eq_rank, eq_total;
      Scan(scan_storage).ExclusiveSum(eq ? 1u : 0u, eq_rank, eq_total);
      __syncthreads();  // scan_storage is reused
      const bool send = gt || (eq && eq_before + eq_rank < need);
      unsigned pos, send_total;
      Scan(scan_storage).ExclusiveSum(send ? 1u : 0u, pos, send_total);
      __syncthreads();
      if (send) {
        const size_t entry = entry0 + sent + pos;
        put_u16(idx_out + 2 * entry, (uint16_t)i);
        put_f32(val_out + 4 * entry, value);
        if (EF)
          e[start + i] = 0.0f;
      }
      eq_before += eq_total;
      sent += send_total;
    }
    // No barrier needed before the next chunk: its first shared write (hist) follows the
    // barriers above, and every thread has left the last scan (the barrier after it).
  }
}

__global__ void topk_decode_kernel(TkGeom a, const uint8_t *idx_in, const uint8_t *val_in, float *out,
                                   int accumulate) {
  for (size_t j = blockIdx.x * (size_t)blockDim.x + threadIdx.x; j < a.entries; j += (size_t)gridDim.x * blockDim.x) {
    const size_t c = j / a.kfull;
    const size_t i = c * a.chunk + get_u16(idx_in + 2 * j);
    const float v = get_f32(val_in + 4 * j);
    out[i] = accumulate ? LH_FADD(out[i], v) : v;
  }
}

bool params_ok(const lh_topk_params *p) {
  return p && p->chunk >= 1 && p->chunk <= 65536 && p->k >= 1 && p->k <= 65536;
}

TkGeom make_geom(const lh_topk_params *p, size_t n) {
  TkGeom a;
  a.n = n;
  a.chunk = (size_t)p->chunk;
  a.k = (size_t)p->k;
  a.kfull = a.k < a.chunk ? a.k : a.chunk;
  a.nchunks = (n + a.chunk - 1) / a.chunk;
  // As lh_topk_entries: full chunks give kfull entries, the short last one min(rest, k).
  const size_t rest = n % a.chunk;
  a.entries = n / a.chunk * a.kfull + (rest < a.k ? rest : a.k);
  return a;
}

size_t values_offset(size_t entries) { return (entries * 2 + 3) & ~(size_t)3; }

template <bool EF>
int encode(const lh_topk_params *p, const float *x, float *e, size_t n, uint8_t *out, void *stream) {
  if (!params_ok(p))
    return (int)cudaErrorInvalidValue;
  if (n == 0)
    return 0;
  if (!x || !out || (EF && !e))
    return (int)cudaErrorInvalidValue;
  const TkGeom a = make_geom(p, n);
  cudaStream_t s = (cudaStream_t)stream;
  uint8_t *idx = out;
  uint8_t *val = out + values_offset(a.entries);
  if (values_offset(a.entries) > 2 * a.entries) {  // the padding: 2 zero bytes when K is odd
    cudaError_t rc = cudaMemsetAsync(out + 2 * a.entries, 0, values_offset(a.entries) - 2 * a.entries, s);
    if (rc != cudaSuccess)
      return (int)rc;
  }
  const unsigned grid = grid_for(a.nchunks, 1);
  // Threads per block: enough for a chunk in one or a few tiles, no more.
  if (a.chunk <= 64)
    topk_encode_kernel<64, EF><<<grid, 64, 0, s>>>(a, x, e, idx, val);
  else if (a.chunk <= 256)
    topk_encode_kernel<256, EF><<<grid, 256, 0, s>>>(a, x, e, idx, val);
  else
    topk_encode_kernel<512, EF><<<grid, 512, 0, s>>>(a, x, e, idx, val);
  return (int)cudaGetLastError();
}

}  // namespace

extern "C" int lh_cuda_topk_encode(const lh_topk_params *p, const float *x, size_t n, uint8_t *out, void *stream) {
  return encode<false>(p, x, nullptr, n, out, stream);
}

extern "C" int lh_cuda_topk_encode_ef(const lh_topk_params *p, const float *x, float *e, size_t n, uint8_t *out,
                                      void *stream) {
  return encode<true>(p, x, e, n, out, stream);
}

extern "C" int lh_cuda_topk_decode(const lh_topk_params *p, const uint8_t *in, size_t n, float *out, int accumulate,
                                   void *stream) {
  if (!params_ok(p))
    return (int)cudaErrorInvalidValue;
  if (n == 0)
    return 0;
  if (!in || !out)
    return (int)cudaErrorInvalidValue;
  const TkGeom a = make_geom(p, n);
  cudaStream_t s = (cudaStream_t)stream;
  if (!accumulate) {
    cudaError_t rc = cudaMemsetAsync(out, 0, n * sizeof(float), s);
    if (rc != cudaSuccess)
      return (int)rc;
  }
  topk_decode_kernel<<<grid_for(a.entries, 256), 256, 0, s>>>(a, in, in + values_offset(a.entries), out,
                                                             accumulate ? 1 : 0);
  return (int)cudaGetLastError();
}

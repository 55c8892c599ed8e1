/* Top-k per chunk: the TOPK payload of payload.h.
 *
 * Elements are ranked by their key, the bits of fabsf(x) read as a uint32. For finite values
 * that orders like |x|; a NaN key sorts above infinity, so non-finite input (which the codec
 * refuses before it gets here) is selected like any other value instead of breaking anything.
 * A chunk sends its k_c largest keys, ties going to the lower index, in index order.
 *
 * Exact: a radix select finds the k_c-th largest key T of the chunk and how many keys beat it;
 * one more pass in index order takes every key above T and the first remaining ones equal to T.
 *
 * Sampled, the rule (the GPU twin needs no more than the last paragraph):
 *   - stride s = floor(len_c / TOPK_SAMPLE); the sample is the keys of elements 0, s, 2s, ...,
 *     (TOPK_SAMPLE - 1) s of the chunk;
 *   - t = 2 ceil(k_c / s) + TOPK_SAMPLE_MARGIN: each sampled element stands for s elements,
 *     so about t s = 2 k_c + 8 s elements of the chunk reach the sample's t-th largest key, and
 *     fewer than k_c only when t or more of the sample land among the chunk's k_c - 1 largest
 *     (for data in random order a Poisson tail of mean about k_c / s: below 1e-5 for any k_c);
 *   - threshold = the t-th largest key of the sample; the candidates are the elements whose key
 *     is >= threshold, found in one pass in index order;
 *   - the chunk's entries are the k_c largest candidates (ties to the lower index);
 *   - the chunk is done exactly instead when it is shorter than 2 * TOPK_SAMPLE, when
 *     t > TOPK_SAMPLE (the sample would filter nothing) or when fewer than k_c candidates pass.
 * As soon as k_c candidates pass, every element at least as large as the chunk's k_c-th
 * largest key is among them, so each branch sends exactly the exact top-k: SAMPLED and EXACT
 * payloads are the same bytes. The sample only decides how much of the chunk the radix select
 * has to look at (about 2 k_c + 8 s keys instead of len_c), which is where the time goes. */
#include <stdlib.h>
#include <string.h>

#include "common/internal.h"
#include "compress/payload.h"

#define TOPK_MAX_CHUNK 65536
#define TOPK_MAX_K 65536
#define TOPK_SAMPLE 256
#define TOPK_SAMPLE_MARGIN 8

/* Radix select digits. Keys are fabsf bits: 31 significant bits, split most significant first.
 * A whole chunk uses 11-bit digits, the first being the exponent and 3 mantissa bits, which
 * spreads typical data over many buckets; a short list (a sample, the candidates) uses 8-bit
 * digits, as clearing and scanning 2048 buckets would cost more than counting its keys. */
#define TOPK_MAX_BINS 2048
#define TOPK_SHORT_LIST 1024
typedef struct topk_radix_layout {
  int levels;
  int shift[4];
} topk_radix_layout;
static const topk_radix_layout topk_long_layout = {3, {20, 10, 0, 0}};
static const topk_radix_layout topk_short_layout = {4, {23, 15, 7, 0}};

static int topk_params_ok(const lh_topk_params *p) {
  return p && p->chunk >= 1 && p->chunk <= TOPK_MAX_CHUNK && p->k >= 1 && p->k <= TOPK_MAX_K;
}

/* The entries of a full chunk. Only the last chunk may be short, so chunk c's entries start at
 * entry c * this (which is c * k whenever k <= chunk). */
static size_t topk_full_chunk_entries(const lh_topk_params *p) {
  return (size_t)(p->k < p->chunk ? p->k : p->chunk);
}

static size_t topk_min(size_t a, size_t b) { return a < b ? a : b; }

size_t lh_topk_entries(const lh_topk_params *p, size_t n) {
  if (!topk_params_ok(p))
    return 0;
  size_t chunk = (size_t)p->chunk;
  return n / chunk * topk_full_chunk_entries(p) + topk_min(n % chunk, (size_t)p->k);
}

/* The values follow the u16 indices, padded to a multiple of 4 bytes. */
static size_t topk_values_offset(size_t entries) { return (entries * 2 + 3) & ~(size_t)3; }

size_t lh_topk_payload_bytes(const lh_topk_params *p, size_t n) {
  size_t entries = lh_topk_entries(p, n);
  return topk_values_offset(entries) + entries * sizeof(float);
}

static inline uint32_t topk_key(float x) { return lh_f32_bits(x) & 0x7FFFFFFFu; }

typedef struct topk_scratch {
  uint32_t *keys;      /* what is being selected from: the chunk's, the sample's or the
                          candidates' keys */
  uint32_t *survivors; /* the radix select's shrinking work list */
  uint16_t *cand;      /* sampled: the candidates' chunk-local indices, ascending */
  uint16_t *sel;       /* the chunk's chosen indices, ascending */
  float *vals;         /* their values, staged for the (maybe unaligned) payload */
  uint32_t *hist;      /* radix buckets */
  void *block;
} topk_scratch;

static lh_status topk_scratch_alloc(const lh_topk_params *p, topk_scratch *s, const char *fn) {
  size_t chunk = (size_t)p->chunk, kfull = topk_full_chunk_entries(p);
  size_t keys_n = chunk > TOPK_SAMPLE ? chunk : TOPK_SAMPLE;
  size_t bytes = (2 * keys_n + TOPK_MAX_BINS + kfull) * sizeof(uint32_t) +
                 (chunk + kfull) * sizeof(uint16_t);
  uint8_t *block = lh_malloc(bytes, "top-k scratch");
  if (!block)
    return lh_error_context(LH_ERR_OUT_OF_MEMORY, "%s", fn);
  /* 4-byte arrays first, then the 2-byte ones: every array is aligned to its type. */
  s->block = block;
  s->keys = (uint32_t *)(void *)block;
  s->survivors = s->keys + keys_n;
  s->hist = s->survivors + keys_n;
  s->vals = (float *)(void *)(s->hist + TOPK_MAX_BINS);
  s->cand = (uint16_t *)(void *)(s->vals + kfull);
  s->sel = s->cand + chunk;
  return LH_SUCCESS;
}

/* The k-th largest of keys[0..count) (1 <= k <= count, keys < 2^31); *above gets how many keys
 * are strictly larger, so k - *above of the keys equal to the result belong to the k largest.
 * MSD radix select: each level counts one digit over the keys that share the digits chosen so
 * far and keeps only the bucket holding the k-th largest, so the work is O(count) whatever the
 * values, ties included. */
static uint32_t topk_kth_largest(const uint32_t *keys, uint32_t count, uint32_t k,
                                 topk_scratch *s, uint32_t *above) {
  const topk_radix_layout *layout = count <= TOPK_SHORT_LIST ? &topk_short_layout
                                                             : &topk_long_layout;
  const uint32_t *work = keys;
  uint32_t work_count = count, need = k, larger = 0, kth = 0;
  for (int level = 0; level < layout->levels; level++) {
    int shift = layout->shift[level];
    int top_bit = level == 0 ? 31 : layout->shift[level - 1];
    uint32_t bins = 1u << (top_bit - shift), mask = bins - 1;
    uint32_t *hist = s->hist;
    memset(hist, 0, bins * sizeof *hist);
    /* The scan starts at the largest key's bucket, not at the (mostly empty) top; when the
     * keys left are all equal (a chunk of zeros, heavy ties) that key is the answer. */
    uint32_t largest = 0, smallest = UINT32_MAX;
    for (uint32_t i = 0; i < work_count; i++) {
      uint32_t key = work[i];
      hist[(key >> shift) & mask]++;
      largest = key > largest ? key : largest;
      smallest = key < smallest ? key : smallest;
    }
    if (smallest == largest) {
      kth = largest;
      break;
    }
    uint32_t bucket = (largest >> shift) & mask;
    while (hist[bucket] < need) {
      need -= hist[bucket];
      larger += hist[bucket];
      bucket--;
    }
    kth |= bucket << shift;
    if (level + 1 == layout->levels || hist[bucket] == work_count)
      continue; /* the last digit, or nothing to drop */
    /* Keep the bucket's keys. Branch-free; in place from the second level on, which is safe
     * because the write position never passes the read position. */
    uint32_t kept = 0;
    for (uint32_t i = 0; i < work_count; i++) {
      uint32_t key = work[i];
      s->survivors[kept] = key;
      kept += ((key >> shift) & mask) == bucket;
    }
    work = s->survivors;
    work_count = kept;
  }
  *above = larger;
  return kth;
}

/* Writes to sel, in index order, the k entries among keys[0..count) that the top-k rule picks,
 * given their k-th largest key kth and the number of keys above it. index (NULL: identity)
 * maps a position in keys to its chunk index. */
static void topk_emit(const uint32_t *keys, const uint16_t *index, uint32_t count, uint32_t kth,
                      uint32_t above, uint32_t k, uint16_t *sel) {
  uint32_t ties_left = k - above, m = 0;
  for (uint32_t i = 0; i < count; i++) {
    uint32_t key = keys[i];
    if (key > kth || (key == kth && ties_left > 0)) {
      ties_left -= key == kth;
      sel[m++] = (uint16_t)(index ? index[i] : i);
    }
  }
}

static void topk_select_exact(const float *x, uint32_t len, uint32_t k, topk_scratch *s) {
  for (uint32_t i = 0; i < len; i++)
    s->keys[i] = topk_key(x[i]);
  uint32_t above;
  uint32_t kth = topk_kth_largest(s->keys, len, k, s, &above);
  topk_emit(s->keys, NULL, len, kth, above, k, s->sel);
}

/* The candidates of the sampled rule: the indices of the chunk whose key is >= threshold, in
 * index order. Branch-free, a write per element and the count moving past the passing ones:
 * a few percent pass, at places a branch predictor cannot guess. */
static uint32_t topk_candidates(const float *x, uint32_t len, uint32_t threshold,
                                uint16_t *cand) {
  uint32_t count = 0;
  for (uint32_t i = 0; i < len; i++) {
    cand[count] = (uint16_t)i;
    count += topk_key(x[i]) >= threshold;
  }
  return count;
}

/* The sampled rule of the header comment. */
static void topk_select_sampled(const float *x, uint32_t len, uint32_t k, topk_scratch *s) {
  uint32_t stride = len / TOPK_SAMPLE;
  uint32_t count = 0;
  if (len >= 2 * TOPK_SAMPLE) {
    uint32_t rank = 2 * ((k + stride - 1) / stride) + TOPK_SAMPLE_MARGIN;
    if (rank <= TOPK_SAMPLE) {
      for (uint32_t j = 0; j < TOPK_SAMPLE; j++)
        s->keys[j] = topk_key(x[j * stride]);
      uint32_t unused;
      uint32_t threshold = topk_kth_largest(s->keys, TOPK_SAMPLE, rank, s, &unused);
      count = topk_candidates(x, len, threshold, s->cand);
    }
  }
  if (count < k) { /* no sample taken, or too few passed */
    topk_select_exact(x, len, k, s);
    return;
  }
  for (uint32_t i = 0; i < count; i++)
    s->keys[i] = topk_key(x[s->cand[i]]);
  uint32_t above;
  uint32_t kth = topk_kth_largest(s->keys, count, k, s, &above);
  topk_emit(s->keys, s->cand, count, kth, above, k, s->sel);
}

static lh_status topk_check(const lh_topk_params *p, const void *x, size_t n, const void *out,
                            const char *fn) {
  if (!topk_params_ok(p))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: chunk %d and k %d must be in 1..%d", fn,
                    p ? p->chunk : 0, p ? p->k : 0, TOPK_MAX_CHUNK);
  if (n > 0 && (!x || !out))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: NULL buffer for %zu elements", fn, n);
  return LH_SUCCESS;
}

/* Both encoders. With e: e += x chunk by chunk, select from e, zero what was sent. */
static lh_status topk_encode_chunks(const lh_topk_params *p, const float *x, float *e, size_t n,
                                    uint8_t *out, const char *fn) {
  LH_CHECK(topk_check(p, x, n, out, fn));
  if (n == 0)
    return LH_SUCCESS;
  topk_scratch s = {.block = NULL};
  LH_CHECK(topk_scratch_alloc(p, &s, fn));
  size_t entries = lh_topk_entries(p, n), kfull = topk_full_chunk_entries(p);
  size_t chunk = (size_t)p->chunk, values_at = topk_values_offset(entries);
  memset(out + 2 * entries, 0, values_at - 2 * entries); /* padding: same input, same bytes */
  for (size_t c = 0, base = 0; base < n; c++, base += chunk) {
    uint32_t len = (uint32_t)topk_min(chunk, n - base);
    uint32_t k = (uint32_t)topk_min((size_t)p->k, len);
    const float *src = x + base;
    if (e) {
      float *ec = e + base;
      for (uint32_t i = 0; i < len; i++)
        ec[i] = LH_FADD(src[i], ec[i]);
      src = ec;
    }
    if (p->sampled)
      topk_select_sampled(src, len, k, &s);
    else
      topk_select_exact(src, len, k, &s);
    for (uint32_t j = 0; j < k; j++)
      s.vals[j] = src[s.sel[j]];
    if (e)
      for (uint32_t j = 0; j < k; j++)
        e[base + s.sel[j]] = 0.0f;
    size_t entry0 = c * kfull;
    memcpy(out + 2 * entry0, s.sel, k * sizeof(uint16_t));
    memcpy(out + values_at + 4 * entry0, s.vals, k * sizeof(float));
  }
  free(s.block);
  return LH_SUCCESS;
}

lh_status lh_topk_encode(const lh_topk_params *p, const float *x, size_t n, uint8_t *out) {
  return topk_encode_chunks(p, x, NULL, n, out, "lh_topk_encode");
}

lh_status lh_topk_encode_ef(const lh_topk_params *p, const float *x, float *e, size_t n,
                            uint8_t *out) {
  if (n > 0 && !e)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_topk_encode_ef: NULL residual for %zu elements",
                    n);
  return topk_encode_chunks(p, x, e, n, out, "lh_topk_encode_ef");
}

static uint16_t topk_read_index(const uint8_t *in, size_t entry) {
  uint16_t v;
  memcpy(&v, in + 2 * entry, sizeof v);
  return v;
}

/* Every chunk's indices must be inside the chunk and strictly increasing; checked for the whole
 * payload before anything is written, so a refused payload leaves out untouched. Also what the
 * device path (codec.c) checks on the host before the decode kernel sees a payload. */
lh_status lh_topk_validate(const lh_topk_params *p, const uint8_t *in, size_t n) {
  size_t chunk = (size_t)p->chunk, kfull = topk_full_chunk_entries(p);
  for (size_t c = 0, base = 0; base < n; c++, base += chunk) {
    size_t len = topk_min(chunk, n - base), k = topk_min((size_t)p->k, len);
    long previous = -1;
    for (size_t j = 0; j < k; j++) {
      uint16_t index = topk_read_index(in, c * kfull + j);
      if (index >= len)
        return lh_error(LH_ERR_CORRUPT,
                        "lh_topk_decode: chunk %zu entry %zu: index %u is outside the chunk of "
                        "%zu elements", c, j, (unsigned)index, len);
      if ((long)index <= previous)
        return lh_error(LH_ERR_CORRUPT,
                        "lh_topk_decode: chunk %zu entry %zu: index %u does not follow %ld",
                        c, j, (unsigned)index, previous);
      previous = index;
    }
  }
  return LH_SUCCESS;
}

lh_status lh_topk_decode(const lh_topk_params *p, const uint8_t *in, size_t n, float *out,
                         int accumulate) {
  LH_CHECK(topk_check(p, in, n, out, "lh_topk_decode"));
  LH_CHECK(lh_topk_validate(p, in, n));
  if (!accumulate && n > 0)
    memset(out, 0, n * sizeof *out);
  size_t entries = lh_topk_entries(p, n), kfull = topk_full_chunk_entries(p);
  size_t chunk = (size_t)p->chunk;
  const uint8_t *values = in + topk_values_offset(entries);
  for (size_t c = 0, base = 0; base < n; c++, base += chunk) {
    size_t k = topk_min((size_t)p->k, topk_min(chunk, n - base));
    float *dst = out + base;
    for (size_t j = 0, entry = c * kfull; j < k; j++, entry++) {
      float v;
      memcpy(&v, values + 4 * entry, sizeof v);
      uint16_t index = topk_read_index(in, entry);
      dst[index] = accumulate ? LH_FADD(dst[index], v) : v;
    }
  }
  return LH_SUCCESS;
}

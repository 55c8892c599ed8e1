/* Random-k per chunk from a shared seed: the RANDK payload of payload.h.
 *
 * Every rank derives the same positions from the key (its rank field replaced by
 * LH_RNG_SHARED_RANK), so only values travel, and payloads of different ranks add entry by
 * entry. Chunk c sends k_c = min(k, len_c) evenly spaced elements from a random offset:
 * entry j is element (off_c + floor(j * len_c / k_c)) mod len_c, off_c = rng(c) mod len_c.
 * The chunk/entry layout is TOPK's, without the indices. */
#include <string.h>

#include "common/internal.h"
#include "compress/payload.h"

#define RANDK_MAX 65536

static int randk_params_ok(const lh_randk_params *p) {
  return p && p->chunk >= 1 && p->chunk <= RANDK_MAX && p->k >= 1 && p->k <= RANDK_MAX;
}

/* The entry layout is TOPK's; topk.c owns the arithmetic. */
static lh_topk_params randk_as_topk(const lh_randk_params *p) {
  lh_topk_params t = {p->chunk, p->k, 0};
  return t;
}

size_t lh_randk_entries(const lh_randk_params *p, size_t n) {
  if (!randk_params_ok(p))
    return 0;
  lh_topk_params t = randk_as_topk(p);
  return lh_topk_entries(&t, n);
}

size_t lh_randk_payload_bytes(const lh_randk_params *p, size_t n) {
  return lh_randk_entries(p, n) * sizeof(float);
}

/* The positions of one chunk, in entry order. floor(j * len / k) is kept as a quotient and a
 * remainder stepped by len = step * k + rem, which equals the 64-bit product formula without a
 * division per entry. */
typedef struct randk_walk {
  uint32_t len, k;
  uint32_t step, rem; /* len / k, len % k */
  uint32_t offset;    /* off_c */
  uint32_t quotient;  /* floor(j * len / k) */
  uint32_t fraction;  /* (j * len) mod k */
} randk_walk;

static randk_walk randk_walk_start(const lh_rng_key *shared, uint64_t chunk_index, uint32_t len,
                                   uint32_t k) {
  randk_walk w;
  w.len = len;
  w.k = k;
  w.step = len / k;
  w.rem = len % k;
  w.offset = lh_rng_u32(shared, chunk_index) % len;
  w.quotient = 0;
  w.fraction = 0;
  return w;
}

static inline uint32_t randk_walk_next(randk_walk *w) {
  uint32_t pos = w->offset + w->quotient; /* < 2 len <= 2^17 */
  if (pos >= w->len)
    pos -= w->len;
  w->quotient += w->step;
  w->fraction += w->rem;
  if (w->fraction >= w->k) {
    w->fraction -= w->k;
    w->quotient++;
  }
  return pos;
}

static lh_status randk_check(const lh_randk_params *p, const void *a, const void *b, size_t n,
                             const char *fn) {
  if (!randk_params_ok(p))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: chunk %d and k %d must be in 1..%d", fn,
                    p ? p->chunk : 0, p ? p->k : 0, RANDK_MAX);
  if (n > 0 && (!a || !b))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: NULL buffer for %zu elements", fn, n);
  return LH_SUCCESS;
}

static lh_status randk_check_keyed(const lh_randk_params *p, const lh_rng_key *key, const void *a,
                                   const void *b, size_t n, const char *fn) {
  LH_CHECK(randk_check(p, a, b, n, fn));
  if (!key)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: NULL key", fn);
  return LH_SUCCESS;
}

static lh_rng_key randk_shared_key(const lh_rng_key *key) {
  lh_rng_key shared = *key;
  shared.rank = LH_RNG_SHARED_RANK;
  return shared;
}

static size_t randk_min(size_t a, size_t b) { return a < b ? a : b; }

/* What the chunk walks do with the element at a position. */
typedef enum { RANDK_GATHER, RANDK_GATHER_ZERO, RANDK_SCATTER, RANDK_SCATTER_ADD } randk_action;

/* Walks every chunk: gathers the chosen elements of data into the payload (zeroing them with
 * RANDK_GATHER_ZERO: error feedback), or scatters the payload into data. */
static void randk_walk_chunks(const lh_randk_params *p, const lh_rng_key *key, float *data,
                              size_t n, uint8_t *payload, randk_action action) {
  lh_rng_key shared = randk_shared_key(key);
  size_t chunk = (size_t)p->chunk, kfull = randk_min((size_t)p->k, chunk);
  for (size_t c = 0, base = 0; base < n; c++, base += chunk) {
    uint32_t len = (uint32_t)randk_min(chunk, n - base);
    uint32_t k = (uint32_t)randk_min((size_t)p->k, len);
    randk_walk w = randk_walk_start(&shared, c, len, k);
    float *d = data + base;
    uint8_t *entry = payload + 4 * c * kfull;
    for (uint32_t j = 0; j < k; j++, entry += 4) {
      uint32_t pos = randk_walk_next(&w);
      float v;
      switch (action) {
      case RANDK_GATHER:
        memcpy(entry, &d[pos], sizeof v);
        break;
      case RANDK_GATHER_ZERO:
        memcpy(entry, &d[pos], sizeof v);
        d[pos] = 0.0f;
        break;
      case RANDK_SCATTER:
        memcpy(&d[pos], entry, sizeof v);
        break;
      case RANDK_SCATTER_ADD:
        memcpy(&v, entry, sizeof v);
        d[pos] = LH_FADD(d[pos], v);
        break;
      }
    }
  }
}

lh_status lh_randk_encode(const lh_randk_params *p, const lh_rng_key *key, const float *x,
                          size_t n, uint8_t *out) {
  LH_CHECK(randk_check_keyed(p, key, x, out, n, "lh_randk_encode"));
  /* RANDK_GATHER only reads data. */
  randk_walk_chunks(p, key, (float *)(uintptr_t)x, n, out, RANDK_GATHER);
  return LH_SUCCESS;
}

lh_status lh_randk_encode_ef(const lh_randk_params *p, const lh_rng_key *key, const float *x,
                             float *e, size_t n, uint8_t *out) {
  LH_CHECK(randk_check_keyed(p, key, x, out, n, "lh_randk_encode_ef"));
  if (n > 0 && !e)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_randk_encode_ef: NULL residual for %zu elements",
                    n);
  for (size_t i = 0; i < n; i++)
    e[i] = LH_FADD(x[i], e[i]);
  randk_walk_chunks(p, key, e, n, out, RANDK_GATHER_ZERO);
  return LH_SUCCESS;
}

lh_status lh_randk_decode(const lh_randk_params *p, const lh_rng_key *key, const uint8_t *in,
                          size_t n, float *out, int accumulate) {
  LH_CHECK(randk_check_keyed(p, key, in, out, n, "lh_randk_decode"));
  if (n == 0)
    return LH_SUCCESS;
  if (!accumulate)
    memset(out, 0, n * sizeof *out);
  /* The scatter actions only read the payload. */
  randk_walk_chunks(p, key, out, n, (uint8_t *)(uintptr_t)in,
                    accumulate ? RANDK_SCATTER_ADD : RANDK_SCATTER);
  return LH_SUCCESS;
}

lh_status lh_randk_sum(const lh_randk_params *p, uint8_t *acc, const uint8_t *in, size_t n) {
  LH_CHECK(randk_check(p, acc, in, n, "lh_randk_sum"));
  size_t entries = lh_randk_entries(p, n);
  for (size_t i = 0; i < entries; i++) {
    float a, b;
    memcpy(&a, acc + 4 * i, sizeof a);
    memcpy(&b, in + 4 * i, sizeof b);
    a = LH_FADD(a, b);
    memcpy(acc + 4 * i, &a, sizeof a);
  }
  return LH_SUCCESS;
}

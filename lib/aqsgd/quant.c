/* AQ-SGD's quantizer on the CPU: the twins of kernels/aqsgd.cu, which are both the no-GPU hot
 * path and the reference the GPU tests hold the kernels to. What they compute is specified in
 * aqsgd_internal.h; every per-element operation is codec_math.h's, so the bits are the
 * kernels'.
 *
 * Speed: each row is worked through in tiles of TILE elements held in small arrays (a's and
 * m's values as fp32, the deltas, the random words, the codes, each element's multiplier and
 * step), so every step is a simple loop over a tile that gcc vectorises, and the hot tile
 * functions are compiled for AVX2 and for baseline x86-64 (LH_QZ_HOT). The random words come
 * from blockq.c's SIMD Philox, the bit packing from its packers (compress/quant_internal.h).
 *
 * The code stream runs over the whole call (code g = r E + j at bits [g b, g b + b)), so when
 * E is not a multiple of 8 a row starts inside a byte. Eight codes always fill exactly b whole
 * bytes, so the encoder carries the (at most 7) codes that do not complete a group of 8 over to
 * the next tile or row (code_sink), and the decoder unpacks from the group boundary before the
 * run it needs (unpack_run).
 *
 * The twins check nothing (the context does): a non-finite delta gives the scale 0x7FFF and
 * harmless garbage elsewhere (lh_quant_code maps NaN to 0, and every code is in [0, M]). */
#include <stdlib.h>
#include <string.h>

#include "aqsgd/aqsgd_internal.h"
#include "common/internal.h"
#include "compress/quant_internal.h"

/* Elements per tile: a multiple of 128 (a tile holds whole PER_TOKEN_GROUP groups, as E is a
 * multiple of the group) and of 8. About 25 KiB of stack in all. */
#define TILE 1024

#define FORCE_INLINE static inline __attribute__((always_inline))

/* ---- typed runs <-> fp32 ------------------------------------------------------------------ */

/* dst[k] = element i0 + k of src (type t) as fp32. */
FORCE_INLINE void load_run(const void *src, int t, size_t i0, size_t n, float *dst) {
  if (t == LH_AQ_T_FP32) {
    memcpy(dst, (const float *)src + i0, n * sizeof(float));
  } else if (t == LH_AQ_T_FP16) {
    const uint16_t *h = (const uint16_t *)src + i0;
    for (size_t k = 0; k < n; k++)
      dst[k] = lh_f16_to_f32(h[k]);
  } else {
    const uint16_t *h = (const uint16_t *)src + i0;
    for (size_t k = 0; k < n; k++)
      dst[k] = lh_bf16_to_f32(h[k]);
  }
}

/* Element i0 + k of dst (type t) = v[k] rounded to t. */
FORCE_INLINE void store_run(void *dst, int t, size_t i0, size_t n, const float *v) {
  if (t == LH_AQ_T_FP32) {
    memcpy((float *)dst + i0, v, n * sizeof(float));
  } else if (t == LH_AQ_T_FP16) {
    uint16_t *h = (uint16_t *)dst + i0;
    for (size_t k = 0; k < n; k++)
      h[k] = lh_f32_to_f16(v[k]);
  } else {
    uint16_t *h = (uint16_t *)dst + i0;
    for (size_t k = 0; k < n; k++)
      h[k] = lh_f32_to_bf16(v[k]);
  }
}

/* Type t's rounding of v, back in fp32: what a store then a load gives. */
FORCE_INLINE void round_run(int t, size_t n, float *v) {
  if (t == LH_AQ_T_FP16) {
    for (size_t k = 0; k < n; k++)
      v[k] = lh_f16_to_f32(lh_f32_to_f16(v[k]));
  } else if (t == LH_AQ_T_BF16) {
    for (size_t k = 0; k < n; k++)
      v[k] = lh_bf16_to_f32(lh_f32_to_bf16(v[k]));
  }
}

static inline uint32_t abs_bits(float v) { return lh_f32_bits(v) & 0x7FFFFFFFu; }

/* Row r's row of the caller's batch, and its example's key. */
static inline size_t batch_row(const uint32_t *batch_rows, size_t r) { return batch_rows ? batch_rows[r] : r; }

static inline lh_rng_key row_key(const lh_aq_qparams *p, const uint32_t *visits, size_t r) {
  lh_rng_key key = {p->seed, visits ? visits[r] : 0u, p->stream};
  return key;
}

/* ---- multipliers and steps ----------------------------------------------------------------- */

/* PER_CHANNEL: every channel's multiplier and step. Computed per element they would cost two
 * divisions and a call (lh_quant_inv_scale's fminf does not vectorise), more than all the rest,
 * so they are computed once per call into a heap table of 2 x channels floats, from which each
 * tile copies its runs of channels. Without that memory each tile computes its own: the same
 * values, more slowly. */
typedef struct channel_table {
  const uint16_t *scales;
  size_t channels;
  int max_code;
  float *inv, *step; /* NULL: not allocated */
} channel_table;

static void channel_table_init(channel_table *t, const lh_aq_qparams *p, const uint16_t *scales) {
  t->scales = scales;
  t->channels = p->channels;
  t->max_code = lh_quant_max_code(p->bits);
  t->inv = lh_malloc(2 * p->channels * sizeof(float), "AQ-SGD per-channel factors");
  t->step = t->inv ? t->inv + p->channels : NULL;
  for (size_t c = 0; t->inv && c < p->channels; c++) {
    float s = lh_f16_to_f32(scales[c]);
    t->inv[c] = lh_quant_inv_scale(s, t->max_code);
    t->step[c] = lh_quant_step(s, t->max_code);
  }
}

static void channel_table_free(channel_table *t) { free(t->inv); }

/* inv[k] (unless inv is NULL) and step[k] of elements j0 .. j0 + n - 1 of a row: element j is
 * channel j mod channels, so a tile is runs of consecutive channels. */
FORCE_INLINE void channel_factors(const channel_table *t, size_t j0, size_t n, float *inv, float *step) {
  size_t c = j0 % t->channels;
  for (size_t k = 0; k < n;) {
    size_t run = t->channels - c < n - k ? t->channels - c : n - k;
    if (t->inv) {
      if (inv)
        memcpy(inv + k, t->inv + c, run * sizeof(float));
      memcpy(step + k, t->step + c, run * sizeof(float));
    } else {
      for (size_t i = 0; i < run; i++) {
        float s = lh_f16_to_f32(t->scales[c + i]);
        if (inv)
          inv[k + i] = lh_quant_inv_scale(s, t->max_code);
        step[k + i] = lh_quant_step(s, t->max_code);
      }
    }
    k += run;
    c = 0;
  }
}

/* PER_TOKEN_GROUP: the scale of each group of the tile's deltas d[0..n) (n a multiple of
 * group), written to scales[0..n / group), and every element's multiplier and step. */
FORCE_INLINE void group_factors(const float *d, size_t n, size_t group, int max_code, uint16_t *scales, float *inv,
                                float *step) {
  for (size_t g0 = 0; g0 < n; g0 += group) {
    uint32_t mx = 0;
    for (size_t k = 0; k < group; k++) {
      uint32_t b = abs_bits(d[g0 + k]);
      mx = b > mx ? b : mx;
    }
    uint16_t h = lh_aq_scale_from_max_bits(mx);
    scales[g0 / group] = h;
    float s = lh_f16_to_f32(h);
    float gi = lh_quant_inv_scale(s, max_code), gs = lh_quant_step(s, max_code);
    for (size_t k = 0; k < group; k++) {
      inv[g0 + k] = gi;
      step[g0 + k] = gs;
    }
  }
}

/* The random words of elements first .. first + n - 1 (any first): blockq.c's generator wants
 * a multiple of 4, so it starts at the counter block's first word. words holds n + 7. */
static const uint32_t *rng_run(const lh_rng_key *key, uint64_t first, size_t n, uint32_t *words) {
  size_t lead = (size_t)(first & 3u);
  lh_qz_rng_words(key, first - lead, n + lead, words);
  return words + lead;
}

/* ---- the code stream ----------------------------------------------------------------------- */

/* Writes the call's codes in order. Whole groups of 8 go straight to their b bytes; the codes
 * of an unfinished group wait in `pending`. */
typedef struct code_sink {
  uint8_t *out;
  int bits;
  uint64_t flushed; /* codes written, a multiple of 8 */
  uint8_t pending[8];
  size_t npending;
} code_sink;

static void sink_put(code_sink *s, const uint8_t *codes, size_t n) {
  size_t k = 0;
  if (s->npending) {
    while (s->npending < 8 && k < n)
      s->pending[s->npending++] = codes[k++];
    if (s->npending < 8)
      return;
    lh_qz_pack(s->pending, 8, s->bits, s->out + s->flushed / 8 * (uint64_t)s->bits);
    s->flushed += 8;
    s->npending = 0;
  }
  size_t whole = (n - k) / 8 * 8;
  lh_qz_pack(codes + k, whole, s->bits, s->out + s->flushed / 8 * (uint64_t)s->bits);
  s->flushed += whole;
  k += whole;
  memcpy(s->pending, codes + k, n - k);
  s->npending = n - k;
}

/* The last, partial group: its unused high bits are 0 (lh_qz_pack zero-fills them). */
static void sink_finish(code_sink *s) {
  if (s->npending)
    lh_qz_pack(s->pending, s->npending, s->bits, s->out + s->flushed / 8 * (uint64_t)s->bits);
  s->npending = 0;
}

/* Codes g .. g + n - 1 of the stream: unpacked from the start of g's group of 8 into tmp
 * (n + 8 codes), returned at their offset. Reads no byte past code g + n - 1's. */
static const uint8_t *unpack_run(const uint8_t *in, int bits, uint64_t g, size_t n, uint8_t *tmp) {
  uint64_t g8 = g & ~(uint64_t)7;
  size_t lead = (size_t)(g - g8);
  lh_qz_unpack(in + g8 / 8 * (uint64_t)bits, lead + n, bits, tmp);
  return tmp + lead;
}

/* ---- tiles --------------------------------------------------------------------------------- */

/* codes[k] = the code of d[k]; q[k] = its dequantized value. stochastic: a constant in each
 * instantiation, so the loop is branch-free. */
FORCE_INLINE void quantize_loop(const float *d, const float *inv, const float *step, const uint32_t *words,
                                size_t n, int max_code, int stochastic, uint8_t *codes, float *q) {
  for (size_t k = 0; k < n; k++) {
    uint32_t u = lh_quant_code(d[k], inv[k], max_code, stochastic, stochastic ? words[k] : 0u);
    codes[k] = (uint8_t)u;
    q[k] = lh_dequant_code(u, max_code, step[k]);
  }
}

/* One tile of an encode: elements j0 .. j0 + n - 1 of one row. arow / mrow: the row's
 * elements in a and m (mrow NULL: direct). key: the row's key, NULL for round to nearest;
 * first: the random word index of element j0. group_scales: PER_TOKEN_GROUP, where the tile's
 * scales go; channels: PER_CHANNEL, the call's factors. */
LH_QZ_HOT static void encode_tile(const lh_aq_qparams *p, const void *arow, void *mrow, size_t j0, size_t n,
                                  const lh_rng_key *key, uint64_t first, uint16_t *group_scales,
                                  const channel_table *channels, uint8_t *codes) {
  float d[TILE], mv[TILE], inv[TILE], step[TILE], q[TILE];
  uint32_t words[TILE + 8];
  const int max_code = lh_quant_max_code(p->bits);
  load_run(arow, p->dtype, j0, n, d);
  if (mrow) {
    load_run(mrow, p->storage, j0, n, mv);
    for (size_t k = 0; k < n; k++)
      d[k] = LH_FSUB(d[k], mv[k]);
  }
  if (p->quantizer == LH_AQ_Q_PER_TOKEN_GROUP)
    group_factors(d, n, (size_t)p->group, max_code, group_scales, inv, step);
  else
    channel_factors(channels, j0, n, inv, step);
  if (key)
    quantize_loop(d, inv, step, rng_run(key, first, n, words), n, max_code, 1, codes, q);
  else
    quantize_loop(d, inv, step, NULL, n, max_code, 0, codes, q);
  if (mrow) {
    for (size_t k = 0; k < n; k++)
      q[k] = LH_FADD(mv[k], q[k]);
    store_run(mrow, p->storage, j0, n, q);
  }
}

/* One tile of a decode: the codes of elements j0 .. j0 + n - 1 of one row; group_scales:
 * PER_TOKEN_GROUP, the tile's scales; channels: PER_CHANNEL, the call's factors. With m:
 * m = round(m + q), out = m as stored; without: out = q. */
LH_QZ_HOT static void decode_tile(const lh_aq_qparams *p, const uint8_t *codes, const uint16_t *group_scales,
                                  const channel_table *channels, void *mrow, void *orow, size_t j0, size_t n) {
  float v[TILE], step[TILE], mv[TILE];
  const int max_code = lh_quant_max_code(p->bits);
  if (p->quantizer == LH_AQ_Q_PER_TOKEN_GROUP) {
    const size_t group = (size_t)p->group;
    for (size_t g0 = 0; g0 < n; g0 += group) {
      float s = lh_quant_step(lh_f16_to_f32(group_scales[g0 / group]), max_code);
      for (size_t k = 0; k < group; k++)
        step[g0 + k] = s;
    }
  } else {
    channel_factors(channels, j0, n, NULL, step);
  }
  for (size_t k = 0; k < n; k++)
    v[k] = lh_dequant_code(codes[k], max_code, step[k]);
  if (!mrow) {
    store_run(orow, p->dtype, j0, n, v);
    return;
  }
  load_run(mrow, p->storage, j0, n, mv);
  for (size_t k = 0; k < n; k++)
    v[k] = LH_FADD(mv[k], v[k]);
  store_run(mrow, p->storage, j0, n, v);
  /* out = m as stored. In the same type that is m's bytes: a store of a stored value's load
   * gives its bytes back, NaN included (the stores write NaN as 0x7FFF, which loads and stores
   * back as 0x7FFF), so the kernel's store of the rounded value writes these same bytes. */
  if (p->dtype == p->storage) {
    size_t sz = lh_aq_dtype_bytes(p->dtype);
    memcpy((char *)orow + j0 * sz, (const char *)mrow + j0 * sz, n * sz);
  } else {
    round_run(p->storage, n, v);
    store_run(orow, p->dtype, j0, n, v);
  }
}

/* Max |d| bits of channels c0 .. c0 + n - 1 over one token (elements at `first` of the rows). */
LH_QZ_HOT static void channel_max_run(const lh_aq_qparams *p, const void *arow, const void *mrow, size_t first,
                                      size_t n, uint32_t *acc) {
  float d[TILE], mv[TILE];
  load_run(arow, p->dtype, first, n, d);
  if (mrow) {
    load_run(mrow, p->storage, first, n, mv);
    for (size_t k = 0; k < n; k++)
      d[k] = LH_FSUB(d[k], mv[k]);
  }
  for (size_t k = 0; k < n; k++) {
    uint32_t b = abs_bits(d[k]);
    acc[k] = b > acc[k] ? b : acc[k];
  }
}

/* Converts elements j0 .. j0 + n - 1 of a row from type `from` to type `to`. */
LH_QZ_HOT static void convert_tile(const void *src, int from, void *dst, int to, size_t j0, size_t n) {
  float v[TILE];
  load_run(src, from, j0, n, v);
  store_run(dst, to, j0, n, v);
}

/* ---- the twins ----------------------------------------------------------------------------- */

static size_t elements_of(const lh_aq_qparams *p) { return p->tokens * p->channels; }

void lh_aq_channel_scales(const lh_aq_qparams *p, const void *a, const uint32_t *batch_rows, const void *m,
                          const int64_t *slots, size_t rows, uint16_t *scales) {
  const size_t E = elements_of(p), C = p->channels;
  const size_t asz = lh_aq_dtype_bytes(p->dtype), msz = lh_aq_dtype_bytes(p->storage);
  if (rows == 0)
    return;
  /* A chunk of channels at a time, over every row and token, so each element is read once and
   * the running maxima stay in a small array. */
  for (size_t c0 = 0; c0 < C; c0 += TILE) {
    size_t n = C - c0 < TILE ? C - c0 : TILE;
    uint32_t acc[TILE];
    memset(acc, 0, n * sizeof *acc);
    for (size_t r = 0; r < rows; r++) {
      const char *arow = (const char *)a + batch_row(batch_rows, r) * E * asz;
      const char *mrow = m ? (const char *)m + (size_t)slots[r] * E * msz : NULL;
      for (size_t t = 0; t < p->tokens; t++)
        channel_max_run(p, arow, mrow, t * C + c0, n, acc);
    }
    for (size_t k = 0; k < n; k++)
      scales[c0 + k] = lh_aq_scale_from_max_bits(acc[k]);
  }
}

void lh_aq_encode(const lh_aq_qparams *p, const void *a, const uint32_t *batch_rows, void *m,
                  const int64_t *slots, const int64_t *ids, const uint32_t *visits, size_t rows, uint16_t *scales,
                  uint8_t *codes) {
  const size_t E = elements_of(p);
  const size_t asz = lh_aq_dtype_bytes(p->dtype), msz = lh_aq_dtype_bytes(p->storage);
  const int per_group = p->quantizer == LH_AQ_Q_PER_TOKEN_GROUP;
  code_sink sink = {codes, p->bits, 0, {0}, 0};
  uint8_t tile_codes[TILE];
  channel_table channels = {NULL, 0, 0, NULL, NULL};
  if (!per_group && rows)
    channel_table_init(&channels, p, scales);
  for (size_t r = 0; r < rows; r++) {
    const char *arow = (const char *)a + batch_row(batch_rows, r) * E * asz;
    char *mrow = m ? (char *)m + (size_t)slots[r] * E * msz : NULL;
    const lh_rng_key key = row_key(p, visits, r);
    const uint64_t first = p->stochastic ? (uint64_t)ids[r] * E : 0;
    for (size_t j0 = 0; j0 < E; j0 += TILE) {
      size_t n = E - j0 < TILE ? E - j0 : TILE;
      uint16_t *tile_scales = per_group ? scales + (r * E + j0) / (size_t)p->group : NULL;
      encode_tile(p, arow, mrow, j0, n, p->stochastic ? &key : NULL, first + j0, tile_scales, &channels,
                  tile_codes);
      sink_put(&sink, tile_codes, n);
    }
  }
  sink_finish(&sink);
  channel_table_free(&channels);
}

void lh_aq_decode(const lh_aq_qparams *p, const uint8_t *codes, const uint16_t *scales, void *m,
                  const int64_t *slots, size_t rows, void *out, const uint32_t *batch_rows) {
  const size_t E = elements_of(p);
  const size_t osz = lh_aq_dtype_bytes(p->dtype), msz = lh_aq_dtype_bytes(p->storage);
  const int per_group = p->quantizer == LH_AQ_Q_PER_TOKEN_GROUP;
  uint8_t tmp[TILE + 8];
  channel_table channels = {NULL, 0, 0, NULL, NULL};
  if (!per_group && rows)
    channel_table_init(&channels, p, scales);
  for (size_t r = 0; r < rows; r++) {
    char *orow = (char *)out + batch_row(batch_rows, r) * E * osz;
    char *mrow = m ? (char *)m + (size_t)slots[r] * E * msz : NULL;
    for (size_t j0 = 0; j0 < E; j0 += TILE) {
      size_t n = E - j0 < TILE ? E - j0 : TILE;
      const uint8_t *tile_codes = unpack_run(codes, p->bits, (uint64_t)r * E + j0, n, tmp);
      const uint16_t *tile_scales = per_group ? scales + (r * E + j0) / (size_t)p->group : NULL;
      decode_tile(p, tile_codes, tile_scales, &channels, mrow, orow, j0, n);
    }
  }
  channel_table_free(&channels);
}

void lh_aq_full_encode(const lh_aq_qparams *p, const void *a, const uint32_t *batch_rows, void *m,
                       const int64_t *slots, size_t rows, void *wire) {
  const size_t E = elements_of(p);
  const size_t asz = lh_aq_dtype_bytes(p->dtype), msz = lh_aq_dtype_bytes(p->storage);
  for (size_t r = 0; r < rows; r++) {
    const char *arow = (const char *)a + batch_row(batch_rows, r) * E * asz;
    char *wrow = (char *)wire + r * E * msz;
    for (size_t j0 = 0; j0 < E; j0 += TILE)
      convert_tile(arow, p->dtype, wrow, p->storage, j0, E - j0 < TILE ? E - j0 : TILE);
    if (m)
      memcpy((char *)m + (size_t)slots[r] * E * msz, wrow, E * msz);
  }
}

void lh_aq_full_decode(const lh_aq_qparams *p, const void *wire, void *m, const int64_t *slots, size_t rows,
                       void *out, const uint32_t *batch_rows) {
  const size_t E = elements_of(p);
  const size_t osz = lh_aq_dtype_bytes(p->dtype), msz = lh_aq_dtype_bytes(p->storage);
  for (size_t r = 0; r < rows; r++) {
    const char *wrow = (const char *)wire + r * E * msz;
    char *orow = (char *)out + batch_row(batch_rows, r) * E * osz;
    if (m)
      memcpy((char *)m + (size_t)slots[r] * E * msz, wrow, E * msz);
    for (size_t j0 = 0; j0 < E; j0 += TILE)
      convert_tile(wrow, p->storage, orow, p->dtype, j0, E - j0 < TILE ? E - j0 : TILE);
  }
}

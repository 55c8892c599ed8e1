/* The codec context: parameters and their bounds, state kept between calls (error-feedback
 * residual, PowerSGD's Q, shared scales, zstd contexts, scratch), and the path
 *   input -> [error feedback] -> payload (a CPU twin in payload.h) -> [zstd] -> frame
 * and back. The payload formats themselves live in the twins; this file only dispatches,
 * checks and frames.
 *
 * Device memory (CUDA builds): fp32 data in device memory goes through the codec kernels
 * (kernels/, each the bitwise twin of the host path) where there is one and error feedback is
 * off; only the payload bytes cross to or from the host, and the frame around them (header,
 * zstd, CRC) is made and checked on the host exactly as for host data, so a frame does not
 * depend on where its data lived. Everything else runs the host path on a host copy of the
 * fp32 data (see "device memory" below). */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "common/internal.h"
#include "compress/compress_internal.h"
#include "compress/payload.h"
#include "compress/quant_internal.h"

#ifdef LH_HAVE_CUDA
#include <cuda_runtime.h>
#include "kernels.h"
#endif

/* ---- what each codec is and takes ---------------------------------------------------- */

#define P(x) (1u << (x))
#define LOSSY_PARAMS (P(LH_CP_ZSTD_LEVEL) | P(LH_CP_ERROR_FEEDBACK))

typedef struct codec_desc {
  const char *name;
  unsigned flags;  /* LH_CODEC_F_* (STATEFUL is added when error feedback is on) */
  unsigned params; /* bit p set: the codec takes parameter p */
} codec_desc;

static const codec_desc codecs[LH_CODEC_COUNT] = {
    [LH_CODEC_NONE] = {"none", LH_CODEC_F_LOSSLESS | LH_CODEC_F_DETERMINISTIC, P(LH_CP_ZSTD_LEVEL)},
    [LH_CODEC_FP16] = {"fp16", LH_CODEC_F_SUMMABLE | LH_CODEC_F_DETERMINISTIC, LOSSY_PARAMS},
    [LH_CODEC_BF16] = {"bf16", LH_CODEC_F_SUMMABLE | LH_CODEC_F_DETERMINISTIC, LOSSY_PARAMS},
    [LH_CODEC_BLOCKQ] = {"blockq", LH_CODEC_F_DETERMINISTIC,
                         LOSSY_PARAMS | P(LH_CP_BITS) | P(LH_CP_BLOCK) | P(LH_CP_SCALE_TYPE) |
                             P(LH_CP_ROUNDING)},
    [LH_CODEC_SHAREDQ] = {"sharedq",
                          LH_CODEC_F_SUMMABLE | LH_CODEC_F_SHARED_SCALE | LH_CODEC_F_DETERMINISTIC,
                          LOSSY_PARAMS | P(LH_CP_BITS) | P(LH_CP_BLOCK) | P(LH_CP_ROUNDING) |
                              P(LH_CP_RANKS)},
    [LH_CODEC_SIGN] = {"sign", LH_CODEC_F_DETERMINISTIC,
                       LOSSY_PARAMS | P(LH_CP_BLOCK) | P(LH_CP_SCALE_TYPE)},
    [LH_CODEC_TOPK] = {"topk", LH_CODEC_F_DETERMINISTIC,
                       LOSSY_PARAMS | P(LH_CP_CHUNK) | P(LH_CP_K) | P(LH_CP_TOPK_METHOD)},
    [LH_CODEC_RANDK] = {"randk",
                        LH_CODEC_F_SUMMABLE | LH_CODEC_F_SHARED_SEED | LH_CODEC_F_DETERMINISTIC,
                        LOSSY_PARAMS | P(LH_CP_CHUNK) | P(LH_CP_K)},
    [LH_CODEC_POWERSGD] = {"powersgd",
                           LH_CODEC_F_SHARED_SEED | LH_CODEC_F_DETERMINISTIC | LH_CODEC_F_STATEFUL,
                           LOSSY_PARAMS | P(LH_CP_RANK) | P(LH_CP_ROWS)},
};

typedef struct param_desc {
  const char *name;
  int lo, hi, def;
} param_desc;

static const param_desc params[LH_CP_COUNT] = {
    [LH_CP_BITS] = {"bits", 1, 8, 8},
    [LH_CP_BLOCK] = {"block", 8, 1 << 20, 128},
    [LH_CP_SCALE_TYPE] = {"scale_type", LH_SCALE_FP32, LH_SCALE_FP16, LH_SCALE_FP32},
    [LH_CP_ROUNDING] = {"rounding", LH_ROUND_NEAREST, LH_ROUND_STOCHASTIC, LH_ROUND_NEAREST},
    [LH_CP_CHUNK] = {"chunk", 1, 65536, 4096},
    [LH_CP_K] = {"k", 1, 65536, 41},
    [LH_CP_TOPK_METHOD] = {"topk_method", LH_TOPK_EXACT, LH_TOPK_SAMPLED, LH_TOPK_EXACT},
    [LH_CP_RANK] = {"rank", 1, 8, 2},
    [LH_CP_ROWS] = {"rows", 1, 1 << 30, 1},
    [LH_CP_RANKS] = {"ranks", 1, 65536, 1},
    [LH_CP_ZSTD_LEVEL] = {"zstd_level", 0, 19, 0},
    [LH_CP_ERROR_FEEDBACK] = {"error_feedback", 0, 1, 0},
};

struct lh_codec_s {
  lh_codec_id id;
  int param[LH_CP_COUNT];
  lh_rng_key key;
  float *residual; /* error feedback: what earlier frames failed to carry */
  size_t residual_n;
  float *q; /* PowerSGD's warm-started Q (cols x r) */
  size_t q_n;
  float *scales; /* SHAREDQ's agreed scales */
  size_t scale_n;
  void *raw; /* the payload before zstd, when zstd is on */
  size_t raw_cap;
  float *work; /* error feedback without a fused twin: x + e, then its decode */
  size_t work_n;
  ZSTD_CCtx *zc;
  ZSTD_DCtx *zd;
  /* Device memory (CUDA builds): grow-only device scratch, [check word | pad | payload] (see
   * DEVICE_PAYLOAD_AT), on device dev_id; and a grow-only host copy of device fp32 data for the
   * paths that run on the host. */
  void *dev;
  size_t dev_cap; /* payload bytes dev holds */
  int dev_id;
  float *stage;
  size_t stage_n;
};

/* ---- names and bounds ---------------------------------------------------------------- */

lh_status lh_codec_name(lh_codec_id id, const char **name) {
  if (!name)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_name: NULL name");
  if ((unsigned)id >= LH_CODEC_COUNT)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_name: unknown codec id %d", (int)id);
  *name = codecs[id].name;
  return LH_SUCCESS;
}

lh_status lh_codec_parse(const char *name, lh_codec_id *id) {
  if (!name || !id)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_parse: NULL argument");
  for (int i = 0; i < LH_CODEC_COUNT; i++)
    if (strcmp(name, codecs[i].name) == 0) {
      *id = (lh_codec_id)i;
      return LH_SUCCESS;
    }
  return lh_error(LH_ERR_INVALID_ARGUMENT,
                  "unknown codec '%s' (known: none fp16 bf16 blockq sharedq sign topk randk powersgd)", name);
}

lh_status lh_codec_param_name(lh_codec_param param, const char **name) {
  if (!name)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_param_name: NULL name");
  if ((unsigned)param >= LH_CP_COUNT)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_param_name: unknown parameter id %d", (int)param);
  *name = params[param].name;
  return LH_SUCCESS;
}

lh_status lh_codec_param_bounds(lh_codec_id id, lh_codec_param param, int *lo, int *hi,
                                int *default_value) {
  if ((unsigned)id >= LH_CODEC_COUNT)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_param_bounds: unknown codec id %d", (int)id);
  if ((unsigned)param >= LH_CP_COUNT)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_param_bounds: unknown parameter id %d", (int)param);
  if (!(codecs[id].params & P(param)))
    return lh_error(LH_ERR_NOT_SUPPORTED, "codec %s has no parameter %s", codecs[id].name,
                    params[param].name);
  param_desc d = params[param];
  if (id == LH_CODEC_SHAREDQ && param == LH_CP_BITS)
    d.lo = 2; /* one bit has no zero level to sum around */
  if (lo)
    *lo = d.lo;
  if (hi)
    *hi = d.hi;
  if (default_value)
    *default_value = d.def;
  return LH_SUCCESS;
}

/* ---- life cycle and state ------------------------------------------------------------ */

static void drop_state(lh_codec *c) {
  free(c->residual);
  free(c->q);
  free(c->scales);
  c->residual = c->q = c->scales = NULL;
  c->residual_n = c->q_n = c->scale_n = 0;
}

lh_status lh_codec_create(lh_codec_id id, lh_codec **codec) {
  if (!codec)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_create: NULL codec");
  *codec = NULL;
  if ((unsigned)id >= LH_CODEC_COUNT)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_create: unknown codec id %d", (int)id);
  lh_codec *c = lh_calloc(1, sizeof *c, "codec context");
  if (!c)
    return LH_ERR_OUT_OF_MEMORY;
  c->id = id;
  for (int p = 0; p < LH_CP_COUNT; p++)
    c->param[p] = params[p].def;
  *codec = c;
  return LH_SUCCESS;
}

static void device_scratch_free(lh_codec *c);

void lh_codec_free(lh_codec *c) {
  if (!c)
    return;
  drop_state(c);
  free(c->raw);
  free(c->work);
  free(c->stage);
  device_scratch_free(c);
  ZSTD_freeCCtx(c->zc);
  ZSTD_freeDCtx(c->zd);
  free(c);
}

lh_status lh_codec_set_param(lh_codec *c, lh_codec_param param, int value) {
  if (!c)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_set_param: NULL codec");
  int lo, hi;
  LH_CHECK(lh_codec_param_bounds(c->id, param, &lo, &hi, NULL));
  if (value < lo || value > hi)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "codec %s: %s = %d is out of range [%d, %d]",
                    codecs[c->id].name, params[param].name, value, lo, hi);
  if (c->param[param] != value)
    drop_state(c);
  c->param[param] = value;
  return LH_SUCCESS;
}

lh_status lh_codec_get_param(const lh_codec *c, lh_codec_param param, int *value) {
  if (!c || !value)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_get_param: NULL argument");
  LH_CHECK(lh_codec_param_bounds(c->id, param, NULL, NULL, NULL));
  *value = c->param[param];
  return LH_SUCCESS;
}

unsigned lh_codec_flags(const lh_codec *c) {
  if (!c)
    return 0;
  unsigned f = codecs[c->id].flags;
  if (c->param[LH_CP_ERROR_FEEDBACK])
    f |= LH_CODEC_F_STATEFUL;
  return f;
}

lh_codec_id lh_codec_get_id(const lh_codec *c) { return c ? c->id : LH_CODEC_COUNT; }

lh_status lh_codec_set_key(lh_codec *c, uint64_t seed, uint64_t step, uint32_t rank) {
  if (!c)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_set_key: NULL codec");
  c->key.seed = seed;
  c->key.step = step;
  c->key.rank = rank;
  return LH_SUCCESS;
}

lh_status lh_codec_reset(lh_codec *c) {
  if (!c)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_reset: NULL codec");
  drop_state(c);
  return LH_SUCCESS;
}

lh_status lh_codec_residual(const lh_codec *c, const float **residual, size_t *n) {
  if (!c || !residual || !n)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_residual: NULL argument");
  *residual = c->residual;
  *n = c->residual_n;
  return LH_SUCCESS;
}

/* ---- the twins' parameter structs ------------------------------------------------------ */

static lh_blockq_params blockq_of(const lh_codec *c) {
  lh_blockq_params p = {c->param[LH_CP_BITS], c->param[LH_CP_BLOCK],
                        c->param[LH_CP_SCALE_TYPE] == LH_SCALE_FP16,
                        c->param[LH_CP_ROUNDING] == LH_ROUND_STOCHASTIC};
  return p;
}
static lh_sign_params sign_of(const lh_codec *c) {
  lh_sign_params p = {c->param[LH_CP_BLOCK], c->param[LH_CP_SCALE_TYPE] == LH_SCALE_FP16};
  return p;
}
static lh_sharedq_params sharedq_of(const lh_codec *c) {
  lh_sharedq_params p = {c->param[LH_CP_BITS], c->param[LH_CP_BLOCK], c->param[LH_CP_RANKS],
                         c->param[LH_CP_ROUNDING] == LH_ROUND_STOCHASTIC};
  return p;
}
static lh_topk_params topk_of(const lh_codec *c) {
  lh_topk_params p = {c->param[LH_CP_CHUNK], c->param[LH_CP_K],
                      c->param[LH_CP_TOPK_METHOD] == LH_TOPK_SAMPLED};
  return p;
}
static lh_randk_params randk_of(const lh_codec *c) {
  lh_randk_params p = {c->param[LH_CP_CHUNK], c->param[LH_CP_K]};
  return p;
}
static lh_powersgd_params powersgd_of(const lh_codec *c, size_t n) {
  size_t rows = (size_t)c->param[LH_CP_ROWS];
  lh_powersgd_params p = {c->param[LH_CP_RANK], rows, n / rows};
  return p;
}

/* Payload bytes for n elements; 0 with *ok = 0 when n cannot be encoded. */
static size_t payload_bytes(const lh_codec *c, size_t n, int *ok) {
  *ok = 1;
  if (n == 0) /* an empty tensor is an empty payload, whatever the codec */
    return 0;
  switch (c->id) {
  case LH_CODEC_NONE: return n * sizeof(float);
  case LH_CODEC_FP16:
  case LH_CODEC_BF16: return n * sizeof(uint16_t);
  case LH_CODEC_BLOCKQ: { lh_blockq_params p = blockq_of(c); return lh_blockq_payload_bytes(&p, n); }
  case LH_CODEC_SHAREDQ: { lh_sharedq_params p = sharedq_of(c); return lh_sharedq_payload_bytes(&p, n); }
  case LH_CODEC_SIGN: { lh_sign_params p = sign_of(c); return lh_sign_payload_bytes(&p, n); }
  case LH_CODEC_TOPK: { lh_topk_params p = topk_of(c); return lh_topk_payload_bytes(&p, n); }
  case LH_CODEC_RANDK: { lh_randk_params p = randk_of(c); return lh_randk_payload_bytes(&p, n); }
  case LH_CODEC_POWERSGD: {
    if (n % (size_t)c->param[LH_CP_ROWS] != 0) {
      *ok = 0;
      return 0;
    }
    lh_powersgd_params p = powersgd_of(c, n);
    return lh_powersgd_payload_bytes(&p);
  }
  default: *ok = 0; return 0;
  }
}

/* The payload size, or an error saying why n cannot be one frame. */
static lh_status checked_payload_bytes(const lh_codec *c, size_t n, size_t *bytes) {
  int ok;
  *bytes = payload_bytes(c, n, &ok);
  if (!ok)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "codec powersgd: %zu elements are not a matrix of %d rows",
                    n, c->param[LH_CP_ROWS]);
  if (*bytes > UINT32_MAX)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "codec %s: %zu elements make a %zu-byte payload, more than "
                    "one frame holds (4 GiB): split the tensor", codecs[c->id].name, n, *bytes);
  return LH_SUCCESS;
}

size_t lh_codec_max_wire_bytes(const lh_codec *c, size_t n) {
  if (!c)
    return 0;
  int ok;
  size_t raw = payload_bytes(c, n, &ok);
  if (!ok || raw > UINT32_MAX)
    return 0;
  if (c->param[LH_CP_ZSTD_LEVEL] > 0)
    raw = ZSTD_compressBound(raw);
  return LH_FRAME_HEADER_BYTES + raw;
}

/* ---- scratch ------------------------------------------------------------------------- */

static lh_status grow(void **buf, size_t *cap, size_t bytes, const char *what) {
  if (*cap >= bytes)
    return LH_SUCCESS;
  void *p = realloc(*buf, bytes ? bytes : 1);
  if (!p)
    return lh_error(LH_ERR_OUT_OF_MEMORY, "codec: cannot allocate %zu bytes for %s", bytes, what);
  *buf = p;
  *cap = bytes;
  return LH_SUCCESS;
}

static lh_status grow_work(lh_codec *c, size_t floats) {
  size_t cap = c->work_n * sizeof(float);
  LH_CHECK(grow((void **)&c->work, &cap, floats * sizeof(float), "error-feedback scratch"));
  c->work_n = cap / sizeof(float);
  return LH_SUCCESS;
}

/* The first non-finite element of x, or n when all are finite. Branch-free over blocks so it
 * runs at memory speed; the element is located only on failure. */
static size_t first_non_finite(const float *x, size_t n) {
  const size_t block = 1024;
  for (size_t b = 0; b < n; b += block) {
    size_t end = b + block < n ? b + block : n;
    uint32_t bad = 0;
    for (size_t i = b; i < end; i++)
      bad |= (lh_f32_bits(x[i]) & 0x7F800000u) == 0x7F800000u;
    if (bad)
      for (size_t i = b; i < end; i++)
        if ((lh_f32_bits(x[i]) & 0x7F800000u) == 0x7F800000u)
          return i;
  }
  return n;
}

static lh_status check_finite(const lh_codec *c, const float *x, size_t n) {
  size_t bad = first_non_finite(x, n);
  if (bad < n)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "codec %s: input element %zu is %s; only finite values "
                    "can be encoded", codecs[c->id].name, bad, isnan(x[bad]) ? "NaN" : "infinite");
  return LH_SUCCESS;
}

/* ---- payloads ------------------------------------------------------------------------ */

static lh_status sharedq_scales_ready(const lh_codec *c, size_t n) {
  lh_sharedq_params p = sharedq_of(c);
  size_t need = lh_sharedq_scale_count(&p, n);
  if (!c->scales)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "codec sharedq: no shared scales: call "
                    "lh_codec_local_scales, max-reduce across ranks, then lh_codec_set_scales");
  if (c->scale_n != need)
    return lh_error(LH_ERR_MISMATCH, "codec sharedq: %zu shared scales were set but %zu elements need %zu",
                    c->scale_n, n, need);
  return LH_SUCCESS;
}

static lh_status powersgd_q_ready(lh_codec *c, const lh_powersgd_params *p) {
  size_t need = p->cols * (size_t)p->rank;
  if (c->q && c->q_n == need)
    return LH_SUCCESS; /* warm start from the last step's Q */
  free(c->q);
  c->q = lh_malloc((need ? need : 1) * sizeof(float), "PowerSGD Q");
  if (!c->q) {
    c->q_n = 0;
    return LH_ERR_OUT_OF_MEMORY;
  }
  c->q_n = need;
  lh_powersgd_init_q(p, &c->key, c->q);
  return LH_SUCCESS;
}

/* Encodes x into out without error feedback. */
static lh_status encode_plain(lh_codec *c, const float *x, size_t n, uint8_t *out) {
  if (n == 0)
    return LH_SUCCESS;
  switch (c->id) {
  case LH_CODEC_NONE: if (n) memcpy(out, x, n * sizeof(float)); return LH_SUCCESS;
  case LH_CODEC_FP16: lh_cast_f32_to_f16(x, (uint16_t *)(void *)out, n); return LH_SUCCESS;
  case LH_CODEC_BF16: lh_cast_f32_to_bf16(x, (uint16_t *)(void *)out, n); return LH_SUCCESS;
  case LH_CODEC_BLOCKQ: { lh_blockq_params p = blockq_of(c); return lh_blockq_encode(&p, &c->key, x, n, out); }
  case LH_CODEC_SHAREDQ: {
    lh_sharedq_params p = sharedq_of(c);
    return lh_sharedq_encode(&p, &c->key, c->scales, x, n, out);
  }
  case LH_CODEC_SIGN: { lh_sign_params p = sign_of(c); return lh_sign_encode(&p, x, n, out); }
  case LH_CODEC_TOPK: { lh_topk_params p = topk_of(c); return lh_topk_encode(&p, x, n, out); }
  case LH_CODEC_RANDK: { lh_randk_params p = randk_of(c); return lh_randk_encode(&p, &c->key, x, n, out); }
  case LH_CODEC_POWERSGD: {
    lh_powersgd_params p = powersgd_of(c, n);
    LH_CHECK(powersgd_q_ready(c, &p));
    return lh_powersgd_encode(&p, x, c->q, out);
  }
  default: return lh_error(LH_ERR_INTERNAL, "codec: no encoder for id %d", (int)c->id);
  }
}

/* Decodes (or accumulates) a payload whose size was already checked. */
static lh_status decode_plain(lh_codec *c, const lh_rng_key *key, const uint8_t *in, size_t n,
                              float *out, int acc) {
  if (n == 0)
    return LH_SUCCESS;
  switch (c->id) {
  case LH_CODEC_NONE:
    if (acc) {
      for (size_t i = 0; i < n; i++) {
        float v;
        memcpy(&v, in + i * sizeof v, sizeof v);
        out[i] += v;
      }
    } else if (n) {
      memcpy(out, in, n * sizeof(float));
    }
    return LH_SUCCESS;
  case LH_CODEC_FP16: lh_cast_f16_to_f32((const uint16_t *)(const void *)in, out, n, acc); return LH_SUCCESS;
  case LH_CODEC_BF16: lh_cast_bf16_to_f32((const uint16_t *)(const void *)in, out, n, acc); return LH_SUCCESS;
  case LH_CODEC_BLOCKQ: { lh_blockq_params p = blockq_of(c); return lh_blockq_decode(&p, in, n, out, acc); }
  case LH_CODEC_SHAREDQ: {
    lh_sharedq_params p = sharedq_of(c);
    return lh_sharedq_decode(&p, c->scales, in, n, out, acc);
  }
  case LH_CODEC_SIGN: { lh_sign_params p = sign_of(c); return lh_sign_decode(&p, in, n, out, acc); }
  case LH_CODEC_TOPK: { lh_topk_params p = topk_of(c); return lh_topk_decode(&p, in, n, out, acc); }
  case LH_CODEC_RANDK: { lh_randk_params p = randk_of(c); return lh_randk_decode(&p, key, in, n, out, acc); }
  case LH_CODEC_POWERSGD: { lh_powersgd_params p = powersgd_of(c, n); return lh_powersgd_decode(&p, in, out, acc); }
  default: return lh_error(LH_ERR_INTERNAL, "codec: no decoder for id %d", (int)c->id);
  }
}

/* Error feedback: e = x + e; out = C(e); e = e - D(C(e)). The quantizers and sparsifiers do it
 * fused in one pass; casts and PowerSGD go through the generic form. */
static lh_status encode_with_feedback(lh_codec *c, const float *x, size_t n, uint8_t *out) {
  if (c->residual && c->residual_n != n)
    return lh_error(LH_ERR_MISMATCH, "codec %s: error feedback holds a residual of %zu elements, this "
                    "call has %zu (lh_codec_reset to start over)", codecs[c->id].name, c->residual_n, n);
  if (!c->residual) {
    c->residual = lh_calloc(n ? n : 1, sizeof(float), "error-feedback residual");
    if (!c->residual)
      return LH_ERR_OUT_OF_MEMORY;
    c->residual_n = n;
  }
  float *e = c->residual;
  if (n == 0)
    return LH_SUCCESS;
  switch (c->id) {
  case LH_CODEC_BLOCKQ: { lh_blockq_params p = blockq_of(c); return lh_blockq_encode_ef(&p, &c->key, x, e, n, out); }
  case LH_CODEC_SHAREDQ: {
    lh_sharedq_params p = sharedq_of(c);
    return lh_sharedq_encode_ef(&p, &c->key, c->scales, x, e, n, out);
  }
  case LH_CODEC_SIGN: { lh_sign_params p = sign_of(c); return lh_sign_encode_ef(&p, x, e, n, out); }
  case LH_CODEC_TOPK: { lh_topk_params p = topk_of(c); return lh_topk_encode_ef(&p, x, e, n, out); }
  case LH_CODEC_RANDK: { lh_randk_params p = randk_of(c); return lh_randk_encode_ef(&p, &c->key, x, e, n, out); }
  default: break;
  }
  /* Generic: work[0..n) = x + e, work[n..2n) = its decode. */
  LH_CHECK(grow_work(c, 2 * n));
  float *target = c->work, *decoded = c->work + n;
  for (size_t i = 0; i < n; i++)
    target[i] = x[i] + e[i];
  LH_CHECK(check_finite(c, target, n));
  LH_CHECK(encode_plain(c, target, n, out));
  LH_CHECK(decode_plain(c, &c->key, out, n, decoded, 0));
  for (size_t i = 0; i < n; i++)
    e[i] = target[i] - decoded[i];
  return LH_SUCCESS;
}

/* ---- frames -------------------------------------------------------------------------- */

static void header_of(const lh_codec *c, size_t n, lh_frame_header *h) {
  memset(h, 0, sizeof *h);
  unsigned used = codecs[c->id].params;
  h->codec = (uint8_t)c->id;
  if (used & P(LH_CP_BITS)) h->bits = (uint8_t)c->param[LH_CP_BITS];
  if (used & P(LH_CP_SCALE_TYPE)) h->scale_type = (uint8_t)c->param[LH_CP_SCALE_TYPE];
  if (used & P(LH_CP_ROUNDING)) h->rounding = (uint8_t)c->param[LH_CP_ROUNDING];
  if (used & P(LH_CP_TOPK_METHOD)) h->topk_method = (uint8_t)c->param[LH_CP_TOPK_METHOD];
  if (used & P(LH_CP_RANK)) h->rank = (uint16_t)c->param[LH_CP_RANK];
  if (used & P(LH_CP_BLOCK)) h->block = (uint32_t)c->param[LH_CP_BLOCK];
  if (used & P(LH_CP_CHUNK)) h->chunk = (uint32_t)c->param[LH_CP_CHUNK];
  if (used & P(LH_CP_K)) h->k = (uint32_t)c->param[LH_CP_K];
  if (used & P(LH_CP_ROWS)) h->rows = (uint32_t)c->param[LH_CP_ROWS];
  if (used & P(LH_CP_RANKS)) h->rows = (uint32_t)c->param[LH_CP_RANKS];
  h->error_feedback = (uint8_t)c->param[LH_CP_ERROR_FEEDBACK];
  h->zstd_level = (uint8_t)c->param[LH_CP_ZSTD_LEVEL];
  h->count = n;
  h->step = c->key.step;
  h->seed_lo = (uint32_t)c->key.seed;
}

/* Where the payload is made: in place after the header, or in c->raw when zstd is on (it then
 * compresses into place). */
static lh_status payload_target(lh_codec *c, uint8_t *frame, size_t raw_bytes, uint8_t **raw) {
  *raw = frame + LH_FRAME_HEADER_BYTES;
  if (c->param[LH_CP_ZSTD_LEVEL] > 0) {
    LH_CHECK(grow(&c->raw, &c->raw_cap, raw_bytes, "zstd input"));
    *raw = c->raw;
  }
  return LH_SUCCESS;
}

/* The frame around a payload made at payload_target's raw: zstd, header, CRC. */
static lh_status finish_frame(lh_codec *c, size_t n, uint8_t *frame, size_t need, const uint8_t *raw,
                              size_t raw_bytes, size_t *out_bytes) {
  int zstd_level = c->param[LH_CP_ZSTD_LEVEL];
  lh_frame_header h;
  header_of(c, n, &h);
  h.raw_bytes = (uint32_t)raw_bytes;
  h.wire_bytes = (uint32_t)raw_bytes;
  if (zstd_level > 0) {
    if (!c->zc && !(c->zc = ZSTD_createCCtx()))
      return lh_error(LH_ERR_OUT_OF_MEMORY, "codec: cannot create a zstd compression context");
    size_t z = ZSTD_compressCCtx(c->zc, frame + LH_FRAME_HEADER_BYTES, need - LH_FRAME_HEADER_BYTES,
                                 raw, raw_bytes, zstd_level);
    if (ZSTD_isError(z))
      return lh_error(LH_ERR_INTERNAL, "codec: zstd compression failed: %s", ZSTD_getErrorName(z));
    if (z < raw_bytes) {
      h.flags |= LH_FRAME_FLAG_ZSTD;
      h.wire_bytes = (uint32_t)z;
    } else if (raw_bytes) { /* incompressible: send it as it is */
      memcpy(frame + LH_FRAME_HEADER_BYTES, raw, raw_bytes);
    }
  }
  lh_frame_write_header(&h, frame);
  lh_frame_seal(frame, h.wire_bytes);
  *out_bytes = LH_FRAME_HEADER_BYTES + h.wire_bytes;
  return LH_SUCCESS;
}

/* The host path: the payload from host data x by the CPU twins. */
static lh_status encode_host(lh_codec *c, const float *x, size_t n, uint8_t *frame, size_t need,
                             size_t raw_bytes, size_t *out_bytes) {
  /* The quantizer twins refuse non-finite blocks themselves, in the pass they already make. */
  if (c->id != LH_CODEC_NONE && c->id != LH_CODEC_BLOCKQ && c->id != LH_CODEC_SIGN &&
      c->id != LH_CODEC_SHAREDQ)
    LH_CHECK(check_finite(c, x, n));
  uint8_t *raw;
  LH_CHECK(payload_target(c, frame, raw_bytes, &raw));
  if (c->param[LH_CP_ERROR_FEEDBACK])
    LH_CHECK(encode_with_feedback(c, x, n, raw));
  else
    LH_CHECK(encode_plain(c, x, n, raw));
  return finish_frame(c, n, frame, need, raw, raw_bytes, out_bytes);
}

/* ---- device memory ----------------------------------------------------------------------
 * fp32 data in device memory (CUDA builds). Kernels, with error feedback off, for NONE, FP16,
 * BF16, BLOCKQ, SIGN and TOPK: encode = an input check and the encode kernel into device
 * scratch, then only the payload bytes to the host; decode = the payload checked on the host
 * as the twin's decoder checks it, its bytes to device scratch, then the decode kernel into (or
 * onto) the caller's memory. The rest runs the host path on a host copy of the fp32 data (a
 * round trip over PCIe, correct but slow): SHAREDQ and RANDK have no kernels; PowerSGD's
 * cuBLAS kernels agree with its CPU twin only within rounding, and a frame must not depend on
 * where its data lived; error feedback keeps its residual in host memory (lh_codec_residual),
 * so an encode with it on runs on the host copy too. The input check is one max |x| kernel:
 * when it finds what the twin may refuse (a non-finite value; above 65504 under BLOCKQ's fp16
 * scales; a SIGN mean that might overflow its scale), the host path runs on a copy and refuses
 * with the twin's message, or encodes after all where the bound was only conservative. */

#ifdef LH_HAVE_CUDA

/* The payload's offset in c->dev, past the check word: 256 keeps it aligned for any element. */
#define DEVICE_PAYLOAD_AT 256u

/* A grow-only host copy of n floats; from device memory `from` when not NULL. */
static lh_status stage_floats(lh_codec *c, const float *from, size_t n, float **host) {
  size_t cap = c->stage_n * sizeof(float);
  LH_CHECK(grow((void **)&c->stage, &cap, n * sizeof(float), "host copy of device data"));
  c->stage_n = cap / sizeof(float);
  if (from)
    LH_CHECK(lh_copy_to_host(c->stage, from, n * sizeof(float)));
  *host = c->stage;
  return LH_SUCCESS;
}

static lh_status cuda_failed(const lh_codec *c, int rc, const char *what) {
  return lh_error(LH_ERR_CUDA, "codec %s on device memory: %s: %s", codecs[c->id].name, what,
                  cudaGetErrorString((cudaError_t)rc));
}

static void device_scratch_free(lh_codec *c) {
  if (!c->dev)
    return;
  int prev = -1; /* cudaFree on the device that holds it */
  int switched = cudaGetDevice(&prev) == cudaSuccess && prev != c->dev_id &&
                 cudaSetDevice(c->dev_id) == cudaSuccess;
  cudaFree(c->dev);
  if (switched)
    cudaSetDevice(prev);
  cudaGetLastError(); /* nothing to report from a free: do not leave an error behind */
  c->dev = NULL;
  c->dev_cap = 0;
}

/* For one call: the calling thread works on the device that holds ptr (a worker thread may
 * never have selected it), restored by device_leave. */
typedef struct device_scope {
  int prev, switched;
} device_scope;

static lh_status device_enter(const lh_codec *c, const void *ptr, device_scope *s) {
  s->switched = 0;
  struct cudaPointerAttributes a;
  cudaError_t rc = cudaPointerGetAttributes(&a, ptr);
  if (rc != cudaSuccess)
    return cuda_failed(c, rc, "cudaPointerGetAttributes");
  if ((rc = cudaGetDevice(&s->prev)) != cudaSuccess)
    return cuda_failed(c, rc, "cudaGetDevice");
  if (a.device >= 0 && a.device != s->prev) {
    if ((rc = cudaSetDevice(a.device)) != cudaSuccess)
      return cuda_failed(c, rc, "cudaSetDevice");
    s->switched = 1;
  }
  return LH_SUCCESS;
}

static void device_leave(const device_scope *s) {
  if (s->switched)
    cudaSetDevice(s->prev);
}

/* Device scratch on the current device: the check word at c->dev, room for `bytes` of payload
 * at *payload. */
static lh_status device_scratch(lh_codec *c, size_t bytes, uint8_t **payload) {
  int dev = 0;
  cudaError_t rc = cudaGetDevice(&dev);
  if (rc != cudaSuccess)
    return cuda_failed(c, rc, "cudaGetDevice");
  if (!c->dev || c->dev_id != dev || c->dev_cap < bytes) {
    device_scratch_free(c);
    void *p = NULL;
    if ((rc = cudaMalloc(&p, DEVICE_PAYLOAD_AT + bytes)) != cudaSuccess) {
      cudaGetLastError();
      return lh_error(rc == cudaErrorMemoryAllocation ? LH_ERR_OUT_OF_MEMORY : LH_ERR_CUDA,
                      "codec %s: cudaMalloc(%zu bytes) for device scratch: %s", codecs[c->id].name,
                      (size_t)DEVICE_PAYLOAD_AT + bytes, cudaGetErrorString(rc));
    }
    c->dev = p;
    c->dev_cap = bytes;
    c->dev_id = dev;
  }
  *payload = (uint8_t *)c->dev + DEVICE_PAYLOAD_AT;
  return LH_SUCCESS;
}

/* The codecs with kernels for both directions, bitwise twins of the host path. */
static int has_kernels(lh_codec_id id) {
  return id == LH_CODEC_NONE || id == LH_CODEC_FP16 || id == LH_CODEC_BF16 || id == LH_CODEC_BLOCKQ ||
         id == LH_CODEC_SIGN || id == LH_CODEC_TOPK;
}

/* Whether input whose largest |x| has the bits max_bits surely passes the host path's checks
 * (check_finite, lh_qz_check_input, sign.c's scale bound, which this repeats). */
static int device_input_passes(const lh_codec *c, uint32_t max_bits) {
  switch (c->id) {
  case LH_CODEC_BLOCKQ:
    return max_bits <= lh_f32_bits(c->param[LH_CP_SCALE_TYPE] == LH_SCALE_FP16 ? 65504.0f : FLT_MAX);
  case LH_CODEC_SIGN: {
    if (max_bits > lh_f32_bits(FLT_MAX))
      return 0;
    double block = (double)c->param[LH_CP_BLOCK];
    double bound = (double)lh_bits_f32(max_bits) * (1.0 + block * 0x1p-23);
    return c->param[LH_CP_SCALE_TYPE] == LH_SCALE_FP16 ? bound < 65504.0 : bound * block < (double)FLT_MAX;
  }
  default: return max_bits < 0x7F800000u;
  }
}

/* The payload of device data x by the kernels, into host memory raw[0..raw_bytes), error
 * feedback off. *done = 0, with raw untouched, when the host path must run instead (the input
 * check found what the twin may refuse). */
static lh_status device_encode(lh_codec *c, const float *x, size_t n, uint8_t *raw, size_t raw_bytes,
                               int *done) {
  *done = 0;
  if (c->id == LH_CODEC_NONE) { /* the payload is the data: no check, no kernel */
    cudaError_t rc = cudaMemcpy(raw, x, raw_bytes, cudaMemcpyDeviceToHost);
    if (rc != cudaSuccess)
      return cuda_failed(c, rc, "copying the payload to the host");
    *done = 1;
    return LH_SUCCESS;
  }
  uint8_t *payload;
  LH_CHECK(device_scratch(c, raw_bytes, &payload));
  uint32_t *check = c->dev;
  /* The check and the encode queue back to back; the encode's output is only used when the
   * check passes (the kernels write some payload for any input, and stay in bounds). */
  int rc = lh_cuda_qz_max_abs_bits(x, n, check, NULL);
  if (rc == 0) {
    switch (c->id) {
    case LH_CODEC_FP16: rc = lh_cuda_cast_f32_to_f16(x, (uint16_t *)(void *)payload, n, NULL); break;
    case LH_CODEC_BF16: rc = lh_cuda_cast_f32_to_bf16(x, (uint16_t *)(void *)payload, n, NULL); break;
    case LH_CODEC_BLOCKQ: {
      lh_blockq_params p = blockq_of(c);
      rc = lh_cuda_blockq_encode(&p, &c->key, x, n, payload, NULL);
      break;
    }
    case LH_CODEC_SIGN: { lh_sign_params p = sign_of(c); rc = lh_cuda_sign_encode(&p, x, n, payload, NULL); break; }
    case LH_CODEC_TOPK: { lh_topk_params p = topk_of(c); rc = lh_cuda_topk_encode(&p, x, n, payload, NULL); break; }
    default: return lh_error(LH_ERR_INTERNAL, "codec %s: no encode kernel", codecs[c->id].name);
    }
  }
  if (rc != 0)
    return cuda_failed(c, rc, "launching the input check or the encode kernel");
  uint32_t max_bits = 0;
  cudaError_t e = cudaMemcpy(&max_bits, check, sizeof max_bits, cudaMemcpyDeviceToHost);
  if (e != cudaSuccess)
    return cuda_failed(c, e, "the input check or the encode kernel");
  if (!device_input_passes(c, max_bits))
    return LH_SUCCESS;
  if ((e = cudaMemcpy(raw, payload, raw_bytes, cudaMemcpyDeviceToHost)) != cudaSuccess)
    return cuda_failed(c, e, "copying the payload to the host");
  *done = 1;
  return LH_SUCCESS;
}

static lh_status encode_device(lh_codec *c, const float *x, size_t n, uint8_t *frame, size_t need,
                               size_t raw_bytes, size_t *out_bytes) {
  device_scope scope;
  LH_CHECK(device_enter(c, x, &scope));
  lh_status st = LH_SUCCESS;
  int done = 0;
  uint8_t *raw = NULL;
  if (!c->param[LH_CP_ERROR_FEEDBACK] && has_kernels(c->id)) {
    LH_CHECK_GOTO(payload_target(c, frame, raw_bytes, &raw), st, out);
    LH_CHECK_GOTO(device_encode(c, x, n, raw, raw_bytes, &done), st, out);
  }
  if (done) {
    st = finish_frame(c, n, frame, need, raw, raw_bytes, out_bytes);
  } else {
    float *host;
    LH_CHECK_GOTO(stage_floats(c, x, n, &host), st, out);
    st = encode_host(c, host, n, frame, need, raw_bytes, out_bytes);
  }
out:
  device_leave(&scope);
  return st;
}

/* What the twins' decoders refuse in a payload, checked on the host before a kernel sees it
 * (the kernels trust their payloads). Writes nothing. */
static lh_status device_payload_check(const lh_codec *c, const uint8_t *payload, size_t n) {
  switch (c->id) {
  case LH_CODEC_BLOCKQ: {
    lh_blockq_params p = blockq_of(c);
    size_t nb = n / (size_t)p.block + (n % (size_t)p.block != 0);
    return lh_qz_check_scales("lh_blockq_decode", payload, nb, p.scale_fp16, LH_ERR_CORRUPT);
  }
  case LH_CODEC_SIGN: {
    lh_sign_params p = sign_of(c);
    size_t nb = n / (size_t)p.block + (n % (size_t)p.block != 0);
    return lh_qz_check_scales("lh_sign_decode", payload, nb, p.scale_fp16, LH_ERR_CORRUPT);
  }
  case LH_CODEC_TOPK: { lh_topk_params p = topk_of(c); return lh_topk_validate(&p, payload, n); }
  default: return LH_SUCCESS;
  }
}

/* Decodes (or accumulates) a checked-size host payload into device memory out by the kernels. */
static lh_status device_decode(lh_codec *c, const uint8_t *in, size_t bytes, size_t n, float *out,
                               int acc) {
  LH_CHECK(device_payload_check(c, in, n));
  cudaError_t e;
  if (c->id == LH_CODEC_NONE && !acc) { /* the payload is the data */
    if ((e = cudaMemcpy(out, in, bytes, cudaMemcpyHostToDevice)) != cudaSuccess)
      return cuda_failed(c, e, "copying the payload to the device");
    return LH_SUCCESS;
  }
  uint8_t *payload;
  LH_CHECK(device_scratch(c, bytes, &payload));
  if ((e = cudaMemcpy(payload, in, bytes, cudaMemcpyHostToDevice)) != cudaSuccess)
    return cuda_failed(c, e, "copying the payload to the device");
  int rc;
  switch (c->id) {
  case LH_CODEC_NONE: rc = lh_cuda_reduce_add_f32(out, (const float *)(const void *)payload, n, NULL); break;
  case LH_CODEC_FP16: rc = lh_cuda_cast_f16_to_f32((const uint16_t *)(const void *)payload, out, n, acc, NULL); break;
  case LH_CODEC_BF16: rc = lh_cuda_cast_bf16_to_f32((const uint16_t *)(const void *)payload, out, n, acc, NULL); break;
  case LH_CODEC_BLOCKQ: { lh_blockq_params p = blockq_of(c); rc = lh_cuda_blockq_decode(&p, payload, n, out, acc, NULL); break; }
  case LH_CODEC_SIGN: { lh_sign_params p = sign_of(c); rc = lh_cuda_sign_decode(&p, payload, n, out, acc, NULL); break; }
  case LH_CODEC_TOPK: { lh_topk_params p = topk_of(c); rc = lh_cuda_topk_decode(&p, payload, n, out, acc, NULL); break; }
  default: return lh_error(LH_ERR_INTERNAL, "codec %s: no decode kernel", codecs[c->id].name);
  }
  if (rc != 0)
    return cuda_failed(c, rc, "launching the decode kernel");
  return LH_SUCCESS;
}

/* The host path into device memory: a host copy of out (of its old values when accumulating),
 * the twin's decode, and back. out is untouched when the payload is refused. */
static lh_status staged_decode(lh_codec *c, const lh_rng_key *key, const uint8_t *in, size_t n,
                               float *out, int acc) {
  float *host;
  LH_CHECK(stage_floats(c, acc ? out : NULL, n, &host));
  LH_CHECK(decode_plain(c, key, in, n, host, acc));
  return lh_copy_to_device(out, host, n * sizeof(float));
}

static lh_status decode_device(lh_codec *c, const lh_rng_key *key, const uint8_t *in, size_t bytes,
                               size_t n, float *out, int acc) {
  device_scope scope;
  LH_CHECK(device_enter(c, out, &scope));
  lh_status st = has_kernels(c->id) ? device_decode(c, in, bytes, n, out, acc)
                                    : staged_decode(c, key, in, n, out, acc);
  /* out is the caller's when this returns, whatever stream it is read on next: a copy from
   * pageable memory may still be in flight when cudaMemcpy returns, a kernel surely is. */
  cudaError_t e = st == LH_SUCCESS ? cudaStreamSynchronize(NULL) : cudaSuccess;
  if (e != cudaSuccess)
    st = cuda_failed(c, e, "the decode into device memory");
  device_leave(&scope);
  return st;
}

#else /* no CUDA: every pointer is host memory */

static void device_scratch_free(lh_codec *c) { (void)c; }

#endif

lh_status lh_codec_encode(lh_codec *c, const float *in, size_t n, void *out, size_t out_capacity,
                          size_t *out_bytes) {
  if (!c || !out || !out_bytes || (n && !in))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_encode: NULL %s",
                    !c ? "codec" : !out ? "out" : !out_bytes ? "out_bytes" : "in");
  *out_bytes = 0;
  size_t raw_bytes;
  LH_CHECK(checked_payload_bytes(c, n, &raw_bytes));
  size_t need = lh_codec_max_wire_bytes(c, n);
  if (out_capacity < need)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_encode: out has %zu bytes, a frame of %zu %s "
                    "elements may need %zu (lh_codec_max_wire_bytes)", out_capacity, n,
                    codecs[c->id].name, need);
  if (c->id == LH_CODEC_SHAREDQ)
    LH_CHECK(sharedq_scales_ready(c, n));
#ifdef LH_HAVE_CUDA
  if (n > 0 && lh_is_device_pointer(in))
    return encode_device(c, in, n, out, need, raw_bytes, out_bytes);
#endif
  return encode_host(c, in, n, out, need, raw_bytes, out_bytes);
}

/* Checks a parsed frame against this context and n; names the first field that differs. */
static lh_status frame_matches(const lh_codec *c, const lh_frame_header *got, size_t n) {
  if (got->codec != c->id) {
    const char *name = got->codec < LH_CODEC_COUNT ? codecs[got->codec].name : "?";
    return lh_error(LH_ERR_MISMATCH, "frame holds codec %s, this context decodes %s", name,
                    codecs[c->id].name);
  }
  if (got->count != n)
    return lh_error(LH_ERR_MISMATCH, "frame holds %llu elements, the caller's buffer has %zu",
                    (unsigned long long)got->count, n);
  lh_frame_header want;
  header_of(c, n, &want);
#define SAME(field, what)                                                                       \
  if (got->field != want.field)                                                                 \
  return lh_error(LH_ERR_MISMATCH, "frame was encoded with %s = %lu, this %s context has %lu", what, \
                  (unsigned long)got->field, codecs[c->id].name, (unsigned long)want.field)
  SAME(bits, "bits");
  SAME(scale_type, "scale_type");
  SAME(rounding, "rounding");
  SAME(topk_method, "topk_method");
  SAME(rank, "rank");
  SAME(block, "block");
  SAME(chunk, "chunk");
  SAME(k, "k");
  SAME(rows, c->id == LH_CODEC_SHAREDQ ? "ranks" : "rows");
  if (codecs[c->id].flags & LH_CODEC_F_SHARED_SEED)
    SAME(seed_lo, "seed (low 32 bits)");
#undef SAME
  int ok;
  size_t expect = payload_bytes(c, n, &ok);
  if (!ok)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "codec powersgd: %zu elements are not a matrix of %d rows",
                    n, c->param[LH_CP_ROWS]);
  if (got->raw_bytes != expect)
    return lh_error(LH_ERR_CORRUPT, "frame: payload of %u bytes, but %zu %s elements take %zu",
                    got->raw_bytes, n, codecs[c->id].name, expect);
  return LH_SUCCESS;
}

/* Parses, checks and (if needed) decompresses a frame; *payload points at raw_bytes bytes. */
static lh_status open_frame(lh_codec *c, const void *in, size_t in_bytes, size_t n,
                            lh_frame_header *h, const uint8_t **payload) {
  LH_CHECK(lh_frame_parse(in, in_bytes, h));
  LH_CHECK(frame_matches(c, h, n));
  if (c->id == LH_CODEC_SHAREDQ)
    LH_CHECK(sharedq_scales_ready(c, n));
  const uint8_t *wire = (const uint8_t *)in + LH_FRAME_HEADER_BYTES;
  if (!(h->flags & LH_FRAME_FLAG_ZSTD)) {
    *payload = wire;
    return LH_SUCCESS;
  }
  LH_CHECK(grow(&c->raw, &c->raw_cap, h->raw_bytes, "zstd output"));
  if (!c->zd && !(c->zd = ZSTD_createDCtx()))
    return lh_error(LH_ERR_OUT_OF_MEMORY, "codec: cannot create a zstd decompression context");
  size_t got = ZSTD_decompressDCtx(c->zd, c->raw, h->raw_bytes, wire, h->wire_bytes);
  if (ZSTD_isError(got))
    return lh_error(LH_ERR_CORRUPT, "frame: zstd payload does not decompress: %s", ZSTD_getErrorName(got));
  if (got != h->raw_bytes)
    return lh_error(LH_ERR_CORRUPT, "frame: zstd payload decompresses to %zu bytes, header says %u", got,
                    h->raw_bytes);
  *payload = c->raw;
  return LH_SUCCESS;
}

static lh_status decode_frame(lh_codec *c, const void *in, size_t in_bytes, float *out, size_t n,
                              int acc, const char *fn) {
  if (!c || !in || (n && !out))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: NULL %s", fn, !c ? "codec" : !in ? "in" : "out");
  lh_frame_header h;
  const uint8_t *payload = NULL;
  LH_CHECK(open_frame(c, in, in_bytes, n, &h, &payload));
  lh_rng_key key = c->key;
  key.step = h.step; /* random-k's choice belongs to the sender's step */
#ifdef LH_HAVE_CUDA
  if (n > 0 && lh_is_device_pointer(out))
    return decode_device(c, &key, payload, h.raw_bytes, n, out, acc);
#endif
  return decode_plain(c, &key, payload, n, out, acc);
}

lh_status lh_codec_decode(lh_codec *c, const void *in, size_t in_bytes, float *out, size_t n) {
  return decode_frame(c, in, in_bytes, out, n, 0, "lh_codec_decode");
}

lh_status lh_codec_decode_accumulate(lh_codec *c, const void *in, size_t in_bytes, float *acc,
                                     size_t n) {
  return decode_frame(c, in, in_bytes, acc, n, 1, "lh_codec_decode_accumulate");
}

lh_status lh_frame_inspect(const void *frame, size_t frame_bytes, lh_codec_id *id, uint64_t *count,
                           size_t *payload_bytes_out) {
  lh_frame_header h;
  LH_CHECK(lh_frame_parse(frame, frame_bytes, &h));
  if (id)
    *id = (lh_codec_id)h.codec;
  if (count)
    *count = h.count;
  if (payload_bytes_out)
    *payload_bytes_out = h.raw_bytes;
  return LH_SUCCESS;
}

lh_status lh_codec_roundtrip(lh_codec_id id, const float *x, float *y, size_t n, size_t *wire_bytes) {
  lh_codec *c;
  LH_CHECK(lh_codec_create(id, &c));
  lh_status st = LH_SUCCESS;
  size_t cap = lh_codec_max_wire_bytes(c, n), used = 0;
  void *wire = lh_malloc(cap ? cap : 1, "round-trip frame");
  if (!wire) {
    st = LH_ERR_OUT_OF_MEMORY;
    goto done;
  }
  LH_CHECK_GOTO(lh_codec_encode(c, x, n, wire, cap, &used), st, done);
  LH_CHECK_GOTO(lh_codec_decode(c, wire, used, y, n), st, done);
  if (wire_bytes)
    *wire_bytes = used;
done:
  free(wire);
  lh_codec_free(c);
  return st;
}

/* ---- shared scales and sums on the wire ---------------------------------------------- */

size_t lh_codec_scale_count(const lh_codec *c, size_t n) {
  if (!c || c->id != LH_CODEC_SHAREDQ)
    return 0;
  lh_sharedq_params p = sharedq_of(c);
  return lh_sharedq_scale_count(&p, n);
}

static lh_status need_sharedq(const lh_codec *c, const char *fn) {
  if (!c)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: NULL codec", fn);
  if (c->id != LH_CODEC_SHAREDQ)
    return lh_error(LH_ERR_NOT_SUPPORTED, "%s: codec %s has no shared scales (sharedq has)", fn,
                    codecs[c->id].name);
  return LH_SUCCESS;
}

lh_status lh_codec_local_scales(const lh_codec *c, const float *in, size_t n, float *scales) {
  LH_CHECK(need_sharedq(c, "lh_codec_local_scales"));
  if ((n && !in) || (lh_codec_scale_count(c, n) && !scales))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_local_scales: NULL %s", in || !n ? "scales" : "in");
  lh_sharedq_params p = sharedq_of(c);
#ifdef LH_HAVE_CUDA
  if (n > 0 && lh_is_device_pointer(in)) {
    /* No kernel: the twin on a host copy (c is const here, so a copy of its own). */
    float *host = lh_malloc(n * sizeof(float), "host copy of device input");
    if (!host)
      return LH_ERR_OUT_OF_MEMORY;
    lh_status st = lh_copy_to_host(host, in, n * sizeof(float));
    if (st == LH_SUCCESS)
      st = lh_sharedq_local_scales(&p, host, n, scales);
    free(host);
    return st;
  }
#endif
  return lh_sharedq_local_scales(&p, in, n, scales);
}

lh_status lh_codec_set_scales(lh_codec *c, const float *scales, size_t count) {
  LH_CHECK(need_sharedq(c, "lh_codec_set_scales"));
  if (count && !scales)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_set_scales: NULL scales");
  for (size_t i = 0; i < count; i++)
    if (!(scales[i] >= 0.0f) || isinf(scales[i]))
      return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_set_scales: scale %zu is %g; scales must be "
                      "finite and non-negative", i, (double)scales[i]);
  float *copy = lh_malloc((count ? count : 1) * sizeof(float), "shared scales");
  if (!copy)
    return LH_ERR_OUT_OF_MEMORY;
  if (count)
    memcpy(copy, scales, count * sizeof(float));
  free(c->scales);
  c->scales = copy;
  c->scale_n = count;
  return LH_SUCCESS;
}

/* acc += in for two cast payloads: each sum rounded back to the cast's format, in tiles. */
static void sum_cast(int bf16, uint8_t *acc, const uint8_t *in, size_t n) {
  enum { TILE = 1024 };
  float a[TILE], b[TILE];
  for (size_t off = 0; off < n; off += TILE) {
    size_t m = n - off < TILE ? n - off : TILE;
    uint16_t *acc16 = (uint16_t *)(void *)(acc + 2 * off);
    const uint16_t *in16 = (const uint16_t *)(const void *)(in + 2 * off);
    if (bf16) {
      lh_cast_bf16_to_f32(acc16, a, m, 0);
      lh_cast_bf16_to_f32(in16, b, m, 0);
    } else {
      lh_cast_f16_to_f32(acc16, a, m, 0);
      lh_cast_f16_to_f32(in16, b, m, 0);
    }
    for (size_t i = 0; i < m; i++)
      a[i] += b[i];
    if (bf16)
      lh_cast_f32_to_bf16(a, acc16, m);
    else
      lh_cast_f32_to_f16(a, acc16, m);
  }
}

lh_status lh_codec_sum_wire(lh_codec *c, void *acc, size_t acc_capacity, size_t *acc_bytes,
                            const void *in, size_t in_bytes) {
  if (!c || !acc || !acc_bytes || !in)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_sum_wire: NULL argument");
  if (!(codecs[c->id].flags & LH_CODEC_F_SUMMABLE))
    return lh_error(LH_ERR_NOT_SUPPORTED, "lh_codec_sum_wire: codec %s payloads cannot be summed "
                    "on the wire (decode, add, re-encode instead)", codecs[c->id].name);
  lh_frame_header ha, hb;
  LH_CHECK(lh_frame_parse(acc, *acc_bytes, &ha));
  LH_CHECK(lh_frame_parse(in, in_bytes, &hb));
  if ((ha.flags | hb.flags) & LH_FRAME_FLAG_ZSTD)
    return lh_error(LH_ERR_NOT_SUPPORTED, "lh_codec_sum_wire: zstd-compressed frames cannot be "
                    "summed; set zstd_level 0 for frames that are summed on the way");
  size_t n = (size_t)ha.count;
  LH_CHECK(frame_matches(c, &ha, n));
  LH_CHECK(frame_matches(c, &hb, n));
  if (ha.step != hb.step)
    return lh_error(LH_ERR_MISMATCH, "lh_codec_sum_wire: frames of steps %llu and %llu",
                    (unsigned long long)ha.step, (unsigned long long)hb.step);
  if (acc_capacity < *acc_bytes)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_codec_sum_wire: acc_capacity %zu < acc_bytes %zu",
                    acc_capacity, *acc_bytes);
  uint8_t *pa = (uint8_t *)acc + LH_FRAME_HEADER_BYTES;
  const uint8_t *pb = (const uint8_t *)in + LH_FRAME_HEADER_BYTES;
  switch (c->id) {
  case LH_CODEC_FP16: sum_cast(0, pa, pb, n); break;
  case LH_CODEC_BF16: sum_cast(1, pa, pb, n); break;
  case LH_CODEC_SHAREDQ: { lh_sharedq_params p = sharedq_of(c); LH_CHECK(lh_sharedq_sum(&p, pa, pb, n)); break; }
  case LH_CODEC_RANDK: { lh_randk_params p = randk_of(c); LH_CHECK(lh_randk_sum(&p, pa, pb, n)); break; }
  default: return lh_error(LH_ERR_INTERNAL, "lh_codec_sum_wire: no sum for codec %s", codecs[c->id].name);
  }
  /* The sum is a new frame: no single sender's residual stands behind it. */
  ((uint8_t *)acc)[12] = 0;
  lh_frame_seal(acc, ha.wire_bytes);
  return LH_SUCCESS;
}

/* The compressed engine: what every compressed algorithm shares. Config defaults and checks,
 * the choice AUTO makes, the codec contexts, the per-frame key, grow-only buffers, and
 * timed encode/decode. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "collective/collective_internal.h"
#include "common/bytes.h"
#include "transport/transport_internal.h"

/* Which codecs each algorithm can run, as a bit set over lh_codec_id. */
#define CODEC_BIT(id) (1u << (id))
static unsigned algo_codecs(lh_allreduce_algo algo) {
  switch (algo) {
  case LH_ALLREDUCE_RING:
  case LH_ALLREDUCE_MPI:
    return CODEC_BIT(LH_CODEC_NONE);
  case LH_ALLREDUCE_QRING: /* the partial is decoded and re-encoded per hop: any per-element code */
    return CODEC_BIT(LH_CODEC_NONE) | CODEC_BIT(LH_CODEC_FP16) | CODEC_BIT(LH_CODEC_BF16) | CODEC_BIT(LH_CODEC_BLOCKQ);
  case LH_ALLREDUCE_SHARED_RING:
    return CODEC_BIT(LH_CODEC_SHAREDQ);
  case LH_ALLREDUCE_OWNER:
  case LH_ALLREDUCE_ALLGATHER:
    return CODEC_BIT(LH_CODEC_NONE) | CODEC_BIT(LH_CODEC_FP16) | CODEC_BIT(LH_CODEC_BF16) |
           CODEC_BIT(LH_CODEC_BLOCKQ) | CODEC_BIT(LH_CODEC_SIGN) | CODEC_BIT(LH_CODEC_TOPK) | CODEC_BIT(LH_CODEC_RANDK);
  case LH_ALLREDUCE_POWERSGD:
    return CODEC_BIT(LH_CODEC_POWERSGD);
  default:
    return 0;
  }
}

static const char *codec_name(lh_codec_id id) {
  const char *name = "?";
  lh_codec_name(id, &name);
  return name;
}

static const char *algo_name(lh_allreduce_algo algo) {
  const char *name = "?";
  lh_allreduce_algo_name(algo, &name);
  return name;
}

/* Mean latency and bandwidth of the links between distinct ranks: the simulated ones when
 * simulated, else a LAN-like guess (only the OWNER/ALLGATHER choice depends on it). */
static void link_model(lh_comm comm, double *alpha, double *beta) {
  *alpha = 1e-4;
  *beta = 1.25e9;
  if (!comm->sim || comm->size < 2)
    return;
  double a = 0, b = 0;
  int pairs = 0, unlimited = 0;
  for (int i = 0; i < comm->size; i++)
    for (int j = 0; j < comm->size; j++) {
      if (i == j)
        continue;
      size_t k = (size_t)comm->sim_rank[i] * comm->sim->n + comm->sim_rank[j];
      a += comm->sim->latency[k];
      if (comm->sim->bandwidth[k] > 0)
        b += comm->sim->bandwidth[k];
      else
        unlimited++;
      pairs++;
    }
  *alpha = a / pairs;
  if (pairs > unlimited)
    *beta = b / (pairs - unlimited);
}

/* TOPK and RANDK keep k of every chunk, and a frame's last chunk can be short: a piece shorter
 * than topk_chunk would keep far more than `density` of itself. So each frame is cut into
 * equal chunks of about topk_chunk elements, k = density x that, set per frame (the frame
 * header carries both, and the decoder derives the same from n). */
static lh_status fit_chunks(const lh_engine *e, lh_codec *c, size_t n) {
  if (e->cfg.codec != LH_CODEC_TOPK && e->cfg.codec != LH_CODEC_RANDK)
    return LH_SUCCESS;
  size_t full = (size_t)e->cfg.topk_chunk, chunk = full; /* n == SIZE_MAX: full chunks */
  if (n > 0 && n != SIZE_MAX) {
    size_t chunks = (n + full - 1) / full;
    chunk = (n + chunks - 1) / chunks;
  }
  long k = lround(e->cfg.density * (double)chunk);
  if (k < 1)
    k = 1;
  int have_chunk, have_k;
  LH_CHECK(lh_codec_get_param(c, LH_CP_CHUNK, &have_chunk));
  LH_CHECK(lh_codec_get_param(c, LH_CP_K, &have_k));
  if ((size_t)have_chunk != chunk) /* parameters are set only on change: setting drops scratch */
    LH_CHECK(lh_codec_set_param(c, LH_CP_CHUNK, (int)chunk));
  if (have_k != (int)k)
    LH_CHECK(lh_codec_set_param(c, LH_CP_K, (int)k));
  return LH_SUCCESS;
}

/* A frame of up to n elements cut as fit_chunks does has at most ceil(n / topk_chunk) chunks,
 * none keeping more than a full chunk's k: a frame of n rounded up to whole full chunks bounds
 * it (n itself would not: the codec keeps fewer of a short last chunk). */
size_t lh_engine_max_frame(lh_engine *e, size_t n) {
  if (fit_chunks(e, e->enc, SIZE_MAX) != LH_SUCCESS)
    return 0;
  if (e->cfg.codec == LH_CODEC_TOPK || e->cfg.codec == LH_CODEC_RANDK) {
    size_t full = (size_t)e->cfg.topk_chunk;
    n = (n + full - 1) / full * full;
  }
  return lh_codec_max_wire_bytes(e->enc, n);
}

/* AUTO for a codec. SIGN, TOPK and RANDK go to OWNER unless gathering everything is cheaper:
 * OWNER sends 2(n-1)/n of the compressed tensor W and waits two latencies, ALLGATHER sends
 * (n-1) W and waits one, so gathering wins only when (n-1)(1 - 2/n) W / beta < alpha. */
static lh_allreduce_algo auto_algo(lh_engine *e, size_t count) {
  switch (e->cfg.codec) {
  case LH_CODEC_NONE:
    return LH_ALLREDUCE_RING;
  case LH_CODEC_FP16:
  case LH_CODEC_BF16:
  case LH_CODEC_BLOCKQ:
    return LH_ALLREDUCE_QRING;
  case LH_CODEC_SHAREDQ:
    return LH_ALLREDUCE_SHARED_RING;
  case LH_CODEC_POWERSGD:
    return LH_ALLREDUCE_POWERSGD;
  default: {
    int n = e->comm->size;
    if (n <= 2)
      return LH_ALLREDUCE_ALLGATHER; /* the same bytes, and no re-encode at the owner */
    double alpha, beta;
    link_model(e->comm, &alpha, &beta);
    double w = (double)lh_engine_max_frame(e, count);
    return (n - 1) * (1.0 - 2.0 / n) * w / beta < alpha ? LH_ALLREDUCE_ALLGATHER : LH_ALLREDUCE_OWNER;
  }
  }
}

static lh_status set_param(lh_codec *c, lh_codec_param p, int value) {
  lh_status st = lh_codec_set_param(c, p, value);
  if (st != LH_SUCCESS)
    lh_error_context(st, "compressed all-reduce config");
  return st;
}

/* A codec context configured from the (defaulted) config. */
static lh_status make_codec(const lh_allreduce_config *cfg, int ranks, lh_codec **out) {
  lh_codec *c = NULL;
  LH_CHECK(lh_codec_create(cfg->codec, &c));
  lh_status st = LH_SUCCESS;
  switch (cfg->codec) {
  case LH_CODEC_BLOCKQ:
  case LH_CODEC_SHAREDQ:
    LH_CHECK_GOTO(set_param(c, LH_CP_BITS, cfg->bits), st, fail);
    LH_CHECK_GOTO(set_param(c, LH_CP_BLOCK, cfg->block), st, fail);
    LH_CHECK_GOTO(set_param(c, LH_CP_ROUNDING, (int)cfg->rounding), st, fail);
    if (cfg->codec == LH_CODEC_SHAREDQ)
      LH_CHECK_GOTO(set_param(c, LH_CP_RANKS, ranks), st, fail);
    break;
  case LH_CODEC_SIGN:
    LH_CHECK_GOTO(set_param(c, LH_CP_BLOCK, cfg->block), st, fail);
    break;
  case LH_CODEC_TOPK:
  case LH_CODEC_RANDK: {
    int k = (int)lround(cfg->density * cfg->topk_chunk);
    LH_CHECK_GOTO(set_param(c, LH_CP_CHUNK, cfg->topk_chunk), st, fail);
    LH_CHECK_GOTO(set_param(c, LH_CP_K, k < 1 ? 1 : k), st, fail);
    if (cfg->codec == LH_CODEC_TOPK) /* the same bytes as exact, faster on most inputs */
      LH_CHECK_GOTO(set_param(c, LH_CP_TOPK_METHOD, LH_TOPK_SAMPLED), st, fail);
    break;
  }
  default:
    break;
  }
  if (cfg->zstd_level > 0)
    LH_CHECK_GOTO(set_param(c, LH_CP_ZSTD_LEVEL, cfg->zstd_level), st, fail);
  *out = c;
  return LH_SUCCESS;
fail:
  lh_codec_free(c);
  return st;
}

/* Fills defaults and checks every field, naming the first bad one. */
static lh_status resolve_config(const lh_allreduce_config *in, lh_allreduce_config *cfg) {
  *cfg = *in;
  if ((int)cfg->codec < 0 || cfg->codec >= LH_CODEC_COUNT)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "all-reduce config: unknown codec %d", (int)cfg->codec);
  if ((int)cfg->algo < 0 || cfg->algo >= LH_ALLREDUCE_ALGO_COUNT)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "all-reduce config: unknown algorithm %d", (int)cfg->algo);
  if (cfg->bits == 0)
    cfg->bits = 8;
  if (cfg->block == 0)
    cfg->block = 128;
  if (cfg->topk_chunk == 0)
    cfg->topk_chunk = 4096;
  if (cfg->density == 0.0)
    cfg->density = 0.01;
  if (cfg->powersgd_rank == 0)
    cfg->powersgd_rank = 2;
  if (cfg->warmup_steps < 0)
    cfg->warmup_steps = cfg->codec == LH_CODEC_POWERSGD ? 10 : 0;
  if (cfg->error_feedback < -1 || cfg->error_feedback > 1)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "all-reduce config: error_feedback is %d (expected -1, 0 or 1)",
                    cfg->error_feedback);
  if (cfg->error_feedback < 0)
    cfg->error_feedback = cfg->codec != LH_CODEC_NONE;
  if (!(cfg->density > 0.0 && cfg->density <= 1.0))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "all-reduce config: density %g is outside (0, 1]", cfg->density);
  if (cfg->powersgd_rank < 1 || cfg->powersgd_rank > 8)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "all-reduce config: powersgd_rank %d is outside 1..8",
                    cfg->powersgd_rank);
  if (cfg->zstd_level < 0 || cfg->zstd_level > 19)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "all-reduce config: zstd_level %d is outside 0..19", cfg->zstd_level);
  if (cfg->rounding != LH_ROUND_NEAREST && cfg->rounding != LH_ROUND_STOCHASTIC)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "all-reduce config: unknown rounding %d", (int)cfg->rounding);
  if (cfg->chunk_bytes == 0)
    LH_CHECK(lh_env_size("LH_RING_CHUNK_BYTES", &cfg->chunk_bytes));
  if (cfg->chunk_bytes < sizeof(float))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "all-reduce config: chunk_bytes %zu is smaller than one float",
                    cfg->chunk_bytes);
  if (cfg->algo != LH_ALLREDUCE_AUTO && !(algo_codecs(cfg->algo) & CODEC_BIT(cfg->codec)))
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "all-reduce config: algorithm %s cannot carry codec %s (%s)", algo_name(cfg->algo),
                    codec_name(cfg->codec),
                    cfg->codec == LH_CODEC_SIGN || cfg->codec == LH_CODEC_TOPK || cfg->codec == LH_CODEC_RANDK
                        ? "its frames cannot be summed hop by hop: use owner or allgather"
                    : cfg->codec == LH_CODEC_SHAREDQ  ? "use shared_ring"
                    : cfg->codec == LH_CODEC_POWERSGD ? "use powersgd"
                    : cfg->codec == LH_CODEC_NONE     ? "use ring"
                                                      : "use qring, owner or allgather");
  if (cfg->zstd_level > 0 && (cfg->algo == LH_ALLREDUCE_SHARED_RING || cfg->codec == LH_CODEC_SHAREDQ))
    return lh_error(LH_ERR_NOT_SUPPORTED,
                    "all-reduce config: shared_ring adds payloads on the wire at every hop, which zstd would "
                    "hide; set zstd_level 0 for codec sharedq");
  return LH_SUCCESS;
}

lh_status lh_engine_init(lh_engine *e, lh_comm comm, const lh_allreduce_config *config, size_t count) {
  memset(e, 0, sizeof *e);
  e->comm = comm;
  lh_status bad = resolve_config(config, &e->cfg);
  if (bad != LH_SUCCESS) { /* the agreement still reads the engine: leave nothing half-set */
    memset(&e->cfg, 0, sizeof e->cfg);
    return bad;
  }
  lh_status st = LH_SUCCESS;
  if (e->cfg.codec != LH_CODEC_NONE || e->cfg.algo == LH_ALLREDUCE_QRING || e->cfg.algo == LH_ALLREDUCE_OWNER ||
      e->cfg.algo == LH_ALLREDUCE_ALLGATHER) {
    LH_CHECK_GOTO(make_codec(&e->cfg, comm->size, &e->enc), st, fail);
    LH_CHECK_GOTO(make_codec(&e->cfg, comm->size, &e->dec), st, fail);
  }
  e->algo = lh_engine_choose(e, count);
  switch (e->cfg.codec) {
  case LH_CODEC_BLOCKQ:
  case LH_CODEC_SHAREDQ:
  case LH_CODEC_SIGN:
    e->granule = (size_t)e->cfg.block;
    break;
  case LH_CODEC_TOPK:
  case LH_CODEC_RANDK:
    e->granule = (size_t)e->cfg.topk_chunk;
    break;
  default:
    e->granule = 1;
  }
  /* A piece holds chunk_bytes of fp32, grown until its frame is a quarter of that: a frame
   * of a few kilobytes (top-1% of 256K floats is 16 KB) costs the sender and the receiver a
   * wake-up each, and on a busy host those, not the wire, would set the pace. */
  size_t piece = e->cfg.chunk_bytes / sizeof(float);
  if (e->enc) {
    size_t frame = lh_engine_max_frame(e, piece), target = e->cfg.chunk_bytes / 4;
    if (frame > 0 && frame < target) {
      double grown = (double)piece * (double)target / (double)frame;
      piece = grown < (double)((size_t)1 << 28) ? (size_t)grown : (size_t)1 << 28;
    }
  }
  e->piece_elems = (piece + e->granule - 1) / e->granule * e->granule;
  return LH_SUCCESS;
fail:
  lh_engine_release(e);
  return st;
}

lh_allreduce_algo lh_engine_choose(lh_engine *e, size_t count) {
  return e->cfg.algo == LH_ALLREDUCE_AUTO ? auto_algo(e, count) : e->cfg.algo;
}

void lh_engine_release(lh_engine *e) {
  lh_codec_free(e->enc);
  lh_codec_free(e->dec);
  free(e->frames);
  free(e->scratch);
  lh_device_free(e->dscratch);
  memset(e, 0, sizeof *e);
}

int lh_engine_agreement(const lh_engine *e, long long *values, const char **names, int capacity) {
  const lh_allreduce_config *c = &e->cfg;
  const long long v[] = {(long long)e->algo,      (long long)c->op,        (long long)c->codec,
                         (long long)c->bits,      (long long)c->block,     llround(c->density * 1e9),
                         (long long)c->topk_chunk,(long long)c->rounding,  (long long)c->powersgd_rank,
                         (long long)c->zstd_level,(long long)c->error_feedback, (long long)c->warmup_steps,
                         (long long)(c->seed >> 32), (long long)(c->seed & 0xffffffffu),
                         (long long)e->piece_elems};
  static const char *const n[] = {"algorithms", "ops", "codecs", "bits", "blocks", "densities", "topk chunks",
                                  "roundings", "PowerSGD ranks", "zstd levels", "error-feedback settings",
                                  "warm-up steps", "seeds (high bits)", "seeds (low bits)",
                                  "pipeline chunks"};
  int count = (int)(sizeof v / sizeof v[0]);
  if (count > capacity)
    count = capacity;
  for (int i = 0; i < count; i++) {
    values[i] = v[i];
    names[i] = n[i];
  }
  return count;
}

lh_status lh_engine_key(lh_engine *e, lh_codec *c, size_t offset) {
  /* Mixing spreads the frame's offset over the whole seed, so no two frames of a call share a
   * random stream (the codec's element counter restarts at 0 in every frame). */
  return lh_codec_set_key(c, lh_mix64(e->cfg.seed ^ lh_mix64((uint64_t)offset)), e->step, (uint32_t)e->comm->rank);
}

lh_status lh_engine_frames(lh_engine *e, size_t bytes, void **frames) {
  if (bytes > e->frames_bytes) {
    void *p = realloc(e->frames, bytes);
    if (!p)
      return lh_error(LH_ERR_OUT_OF_MEMORY, "out of memory for %zu bytes of all-reduce frames", bytes);
    e->frames = p;
    e->frames_bytes = bytes;
  }
  *frames = e->frames;
  return LH_SUCCESS;
}

lh_status lh_engine_scratch(lh_engine *e, size_t floats, float **scratch) {
  size_t bytes = floats * sizeof(float);
  if (e->on_device) {
    if (bytes > e->dscratch_bytes) {
      lh_device_free(e->dscratch);
      e->dscratch = NULL;
      e->dscratch_bytes = 0;
      LH_CHECK(lh_device_alloc((void **)&e->dscratch, bytes));
      e->dscratch_bytes = bytes;
    }
    *scratch = e->dscratch;
    return LH_SUCCESS;
  }
  if (bytes > e->scratch_bytes) {
    void *p = realloc(e->scratch, bytes);
    if (!p)
      return lh_error(LH_ERR_OUT_OF_MEMORY, "out of memory for %zu bytes of all-reduce scratch", bytes);
    e->scratch = p;
    e->scratch_bytes = bytes;
  }
  *scratch = e->scratch;
  return LH_SUCCESS;
}

lh_status lh_engine_encode(lh_engine *e, const float *x, size_t n, size_t offset, void *frame, size_t cap,
                           size_t *bytes) {
  double t0 = lh_now();
  lh_status st = fit_chunks(e, e->enc, n);
  if (st == LH_SUCCESS)
    st = lh_engine_key(e, e->enc, offset);
  if (st == LH_SUCCESS)
    st = lh_codec_encode(e->enc, x, n, frame, cap, bytes);
  e->codec_seconds += lh_now() - t0;
  if (st != LH_SUCCESS)
    lh_error_context(st, "encoding elements %zu..%zu", offset, offset + n);
  return st;
}

lh_status lh_engine_decode(lh_engine *e, const void *frame, size_t bytes, float *out, size_t n, size_t offset,
                           int accumulate) {
  double t0 = lh_now();
  lh_status st = fit_chunks(e, e->dec, n);
  if (st == LH_SUCCESS)
    st = lh_engine_key(e, e->dec, offset);
  if (st == LH_SUCCESS)
    st = accumulate ? lh_codec_decode_accumulate(e->dec, frame, bytes, out, n)
                    : lh_codec_decode(e->dec, frame, bytes, out, n);
  e->codec_seconds += lh_now() - t0;
  if (st != LH_SUCCESS)
    lh_error_context(st, "decoding elements %zu..%zu", offset, offset + n);
  return st;
}

lh_status lh_engine_run(lh_engine *e, float *data, size_t count, float *err) {
  switch (e->algo) {
  case LH_ALLREDUCE_QRING: LH_CHECK(lh_qring_allreduce(e, data, count, err)); break;
  case LH_ALLREDUCE_SHARED_RING: LH_CHECK(lh_shared_ring_allreduce(e, data, count, err)); break;
  case LH_ALLREDUCE_OWNER: LH_CHECK(lh_owner_allreduce(e, data, count, err)); break;
  case LH_ALLREDUCE_ALLGATHER: LH_CHECK(lh_allgather_allreduce(e, data, count, err)); break;
  default:
    return lh_error(LH_ERR_INTERNAL, "lh_engine_run: algorithm %s is not a bucket algorithm", algo_name(e->algo));
  }
  if (e->cfg.op == LH_OP_MEAN && e->comm->size > 1 && count > 0)
    LH_CHECK(lh_reduce_div(e->on_device, data, (float)e->comm->size, count));
  return LH_SUCCESS;
}

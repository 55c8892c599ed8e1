/* lh_reducer: the reusable all-reduce context. It keeps, per tensor key, the error-feedback
 * residual and PowerSGD state; packs a bucket of tensors into one buffer so a step pays the
 * ring's latency once; and runs the work on a thread of its own so the caller's backward pass
 * overlaps the communication.
 *
 * Why a private communicator: the worker thread must own every request it waits on. The
 * reducer's communicator is split from the caller's at creation and marked exclusive while a
 * worker runs, so the caller's lh_wait calls never progress it, and the worker's progress
 * scope never touches the caller's messages. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "collective/collective_internal.h"
#include "common/state_file.h"
#include "transport/transport_internal.h"

typedef struct {
  uint64_t key;
  size_t count, rows;
  int used, on_device;
  float *residual; /* count floats where the tensor lives; NULL until a lossy step needs it */
  lh_psgd_state psgd;
  uint64_t mark; /* the call that last named it: catches a key passed twice in one call */
  int shaped;    /* count and rows are those of a call every rank accepted */
} entry;

struct lh_reducer_s {
  lh_comm comm; /* private, split from the caller's */
  lh_allreduce_config cfg;
  lh_engine e;
  entry *tab;
  size_t tab_cap, tab_used;
  uint64_t step, calls_started;
  int threads; /* MPI gives MPI_THREAD_MULTIPLE: run on a worker thread */
  /* the operation in flight */
  int busy, on_thread;
  pthread_t thread;
  lh_tensor *work;
  entry **work_entry;
  int nwork;
  atomic_int finished;
  lh_status result;
  char error[512];
  /* host or device buckets, grow-only */
  float *bucket, *errbucket;
  size_t bucket_floats;
  int bucket_on_device;
  lh_reducer_stats stats;
};

/* ---- the key table (open addressing; keys are arbitrary 64-bit values) ------------------ */

static size_t key_hash(uint64_t key) {
  key ^= key >> 33;
  key *= 0xff51afd7ed558ccdull;
  key ^= key >> 33;
  return (size_t)key;
}

static entry *table_find(struct lh_reducer_s *r, uint64_t key, int insert) {
  if (insert && 2 * (r->tab_used + 1) > r->tab_cap) {
    size_t cap = r->tab_cap ? 2 * r->tab_cap : 64;
    entry *t = lh_calloc(cap, sizeof(entry), "the reducer's tensor table");
    if (!t)
      return NULL;
    for (size_t i = 0; i < r->tab_cap; i++)
      if (r->tab[i].used) {
        size_t h = key_hash(r->tab[i].key) & (cap - 1);
        while (t[h].used)
          h = (h + 1) & (cap - 1);
        t[h] = r->tab[i];
      }
    free(r->tab);
    r->tab = t;
    r->tab_cap = cap;
  }
  if (!r->tab_cap)
    return NULL;
  size_t h = key_hash(key) & (r->tab_cap - 1);
  while (r->tab[h].used) {
    if (r->tab[h].key == key)
      return &r->tab[h];
    h = (h + 1) & (r->tab_cap - 1);
  }
  if (!insert)
    return NULL;
  r->tab[h].used = 1;
  r->tab[h].key = key;
  r->tab_used++;
  return &r->tab[h];
}

static void entry_clear(entry *t) {
  if (t->on_device)
    lh_device_free(t->residual);
  else
    free(t->residual);
  free(t->psgd.q);
  t->residual = NULL;
  t->psgd.q = NULL;
}

/* ---- creation ------------------------------------------------------------------------------ */

lh_status lh_reducer_create(lh_comm comm, const lh_allreduce_config *config, lh_reducer *out) {
  lh_error_clear();
  if (!out)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_reducer_create: reducer must not be NULL");
  *out = NULL;
  LH_CHECK(lh_comm_check(comm, "lh_reducer_create"));
  lh_allreduce_config cfg = LH_ALLREDUCE_CONFIG_INIT;
  if (config) {
    if (config->size != sizeof cfg)
      return lh_error(LH_ERR_INVALID_ARGUMENT,
                      "lh_reducer_create: config->size is %zu, expected %zu (start from LH_ALLREDUCE_CONFIG_INIT)",
                      config->size, sizeof cfg);
    cfg = *config;
  }
  lh_reducer r = lh_calloc(1, sizeof *r, "a reducer");
  if (!r)
    return LH_ERR_OUT_OF_MEMORY;
  r->cfg = cfg;
  r->stats = (lh_reducer_stats)LH_REDUCER_STATS_INIT;
  lh_status st = lh_engine_init(&r->e, comm, &cfg, 0);
  char detail[512];
  snprintf(detail, sizeof detail, "%s", st != LH_SUCCESS ? lh_last_error() : "");
  /* Every rank must reach the split and the agreement even when its own config is bad, or
   * the others would hang there; a rank's own error wins over the mismatch it causes. */
  lh_status split = lh_comm_split(comm, 0, comm->rank, &r->comm);
  if (split != LH_SUCCESS) {
    lh_engine_release(&r->e);
    free(r);
    return split;
  }
  r->e.comm = r->comm;
  long long values[16];
  const char *names[16];
  int k = lh_engine_agreement(&r->e, values, names, 15);
  values[k] = st == LH_SUCCESS;
  names[k++] = "verdicts on their configs (a rank refused its own)";
  lh_status agreed = lh_comm_agree(r->comm, values, k, names, "lh_reducer_create");
  if (st == LH_SUCCESS)
    st = agreed;
  else
    lh_error(st, "%s", detail);
  if (st != LH_SUCCESS) {
    snprintf(detail, sizeof detail, "%s", lh_last_error());
    lh_comm_destroy(r->comm);
    lh_engine_release(&r->e);
    free(r);
    return lh_error(st, "%s", detail);
  }
  int provided = MPI_THREAD_SINGLE;
  MPI_Query_thread(&provided);
  r->threads = provided == MPI_THREAD_MULTIPLE;
  if (!r->threads)
    lh_log(LH_LOG_INFO, "collective",
           "MPI gives thread level %d, not MPI_THREAD_MULTIPLE: lh_reducer_start runs the reduction before "
           "returning (no overlap)",
           provided);
  *out = r;
  return LH_SUCCESS;
}

/* ---- the work ---------------------------------------------------------------------------- */

static void free_buckets(lh_reducer r) {
  if (r->bucket_on_device) {
    lh_device_free(r->bucket);
    lh_device_free(r->errbucket);
  } else {
    free(r->bucket);
    free(r->errbucket);
  }
  r->bucket = r->errbucket = NULL;
}

static lh_status ensure_bucket(lh_reducer r, size_t floats, int on_device) {
  if (floats <= r->bucket_floats && on_device == r->bucket_on_device)
    return LH_SUCCESS;
  free_buckets(r);
  r->bucket_floats = 0;
  r->bucket_on_device = on_device;
  if (on_device) {
    LH_CHECK(lh_device_alloc((void **)&r->bucket, floats * sizeof(float)));
    LH_CHECK(lh_device_alloc((void **)&r->errbucket, floats * sizeof(float)));
  } else {
    r->bucket = lh_malloc(floats * sizeof(float), "the reducer's bucket");
    r->errbucket = lh_malloc(floats * sizeof(float), "the reducer's bucket");
    if (!r->bucket || !r->errbucket)
      return LH_ERR_OUT_OF_MEMORY;
  }
  r->bucket_floats = floats;
  return LH_SUCCESS;
}

static lh_status ensure_residual(entry *t, int on_device) {
  if (t->residual)
    return LH_SUCCESS;
  t->on_device = on_device;
  if (on_device) {
    LH_CHECK(lh_device_alloc((void **)&t->residual, t->count * sizeof(float)));
    return lh_zero_f32(1, t->residual, t->count);
  }
  t->residual = lh_calloc(t->count ? t->count : 1, sizeof(float), "an error-feedback residual");
  return t->residual ? LH_SUCCESS : LH_ERR_OUT_OF_MEMORY;
}

/* The plain ring (or MPI) on one buffer, through lh_allreduce: it stages device memory for
 * backends that cannot move it. */
static lh_status plain_allreduce(lh_reducer r, float *data, size_t count, lh_allreduce_algo algo) {
  lh_allreduce_config plain = LH_ALLREDUCE_CONFIG_INIT;
  plain.algo = algo == LH_ALLREDUCE_MPI ? LH_ALLREDUCE_MPI : LH_ALLREDUCE_RING;
  plain.chunk_bytes = r->e.cfg.chunk_bytes;
  if (r->comm->size > 1)
    r->e.wire_bytes += lh_ring_bytes_sent(count, r->comm->size, r->comm->rank);
  return lh_allreduce(r->comm, data, data, count, &plain);
}

/* The bucket's tensors back to back in v, with their residuals added when ef. */
static lh_status pack(lh_reducer r, float *v, int on_device, int ef) {
  size_t off = 0;
  for (int i = 0; i < r->nwork; i++) {
    LH_CHECK(lh_copy_f32(on_device, v + off, r->work[i].data, r->work[i].count));
    if (ef)
      LH_CHECK(lh_reduce_add(on_device, v + off, r->work_entry[i]->residual, r->work[i].count));
    off += r->work[i].count;
  }
  return LH_SUCCESS;
}

/* And back: the results to the tensors, err (when not NULL) to their residuals. */
static lh_status unpack(lh_reducer r, const float *v, const float *err, int on_device) {
  size_t off = 0;
  for (int i = 0; i < r->nwork; i++) {
    LH_CHECK(lh_copy_f32(on_device, r->work[i].data, v + off, r->work[i].count));
    if (err)
      LH_CHECK(lh_copy_f32(on_device, r->work_entry[i]->residual, err + off, r->work[i].count));
    off += r->work[i].count;
  }
  return LH_SUCCESS;
}

/* QRING, SHARED_RING, OWNER, ALLGATHER on the packed bucket (or the tensor itself when alone):
 * v = x + residual, run, then the residuals take what this rank's encodes missed. */
static lh_status bucket_step(lh_reducer r, int on_device, int ef, size_t total) {
  float *v, *err = NULL;
  int alone = r->nwork == 1;
  if (alone) {
    v = r->work[0].data;
    if (ef) {
      LH_CHECK(lh_reduce_add(on_device, v, r->work_entry[0]->residual, total));
      LH_CHECK(lh_zero_f32(on_device, r->work_entry[0]->residual, total));
      err = r->work_entry[0]->residual;
    }
  } else {
    LH_CHECK(ensure_bucket(r, total, on_device));
    v = r->bucket;
    LH_CHECK(pack(r, v, on_device, ef));
    if (ef) {
      err = r->errbucket;
      LH_CHECK(lh_zero_f32(on_device, err, total));
    }
  }
  LH_CHECK(lh_engine_run(&r->e, v, total, err));
  return alone ? LH_SUCCESS : unpack(r, v, err, on_device);
}

/* Whether PowerSGD pays for a tensor: its factors must be smaller than the matrix. */
static int worth_factoring(const lh_tensor *t, int rank) {
  if (t->rows <= 1 || t->count % t->rows)
    return 0;
  size_t cols = t->count / t->rows;
  return cols > 1 && (t->rows + cols) * (size_t)rank < t->count;
}

/* PowerSGD: matrices are factored (with their residuals), everything else goes in one
 * uncompressed ring. Device tensors are worked on through host copies. */
static lh_status powersgd_step(lh_reducer r, int on_device, int ef) {
  int rank = r->e.cfg.powersgd_rank, k = 0;
  size_t vec_total = 0;
  for (int i = 0; i < r->nwork; i++) {
    if (worth_factoring(&r->work[i], rank))
      k++;
    else
      vec_total += r->work[i].count;
  }
  float **m = lh_calloc((size_t)k + 1, sizeof(float *), "PowerSGD matrices");
  float **err = lh_calloc((size_t)k + 1, sizeof(float *), "PowerSGD residuals");
  lh_psgd_state **state = lh_calloc((size_t)k + 1, sizeof(lh_psgd_state *), "PowerSGD state");
  lh_status st = LH_SUCCESS;
  if (!m || !err || !state) {
    st = LH_ERR_OUT_OF_MEMORY;
    goto done;
  }
  if (vec_total) { /* the vectors, batched uncompressed */
    LH_CHECK_GOTO(ensure_bucket(r, vec_total, on_device), st, done);
    size_t off = 0;
    for (int i = 0; i < r->nwork; i++)
      if (!worth_factoring(&r->work[i], rank)) {
        LH_CHECK_GOTO(lh_copy_f32(on_device, r->bucket + off, r->work[i].data, r->work[i].count), st, done);
        off += r->work[i].count;
      }
    LH_CHECK_GOTO(plain_allreduce(r, r->bucket, vec_total, LH_ALLREDUCE_RING), st, done);
    if (r->cfg.op == LH_OP_MEAN && r->comm->size > 1)
      LH_CHECK_GOTO(lh_reduce_div(on_device, r->bucket, (float)r->comm->size, vec_total), st, done);
    off = 0;
    for (int i = 0; i < r->nwork; i++)
      if (!worth_factoring(&r->work[i], rank)) {
        LH_CHECK_GOTO(lh_copy_f32(on_device, r->work[i].data, r->bucket + off, r->work[i].count), st, done);
        off += r->work[i].count;
      }
  }
  k = 0;
  for (int i = 0; i < r->nwork; i++) {
    if (!worth_factoring(&r->work[i], rank))
      continue;
    entry *t = r->work_entry[i];
    size_t n = r->work[i].count;
    if (on_device) { /* host copies of the matrix and its residual */
      m[k] = lh_malloc(n * sizeof(float), "a PowerSGD host copy");
      err[k] = ef ? lh_malloc(n * sizeof(float), "a PowerSGD host copy") : NULL;
      if (!m[k] || (ef && !err[k])) {
        free(m[k]);
        free(err[k]);
        st = LH_ERR_OUT_OF_MEMORY;
        goto done;
      }
      LH_CHECK_GOTO(lh_copy_to_host(m[k], r->work[i].data, n * sizeof(float)), st, done_k);
      if (ef)
        LH_CHECK_GOTO(lh_copy_to_host(err[k], t->residual, n * sizeof(float)), st, done_k);
    } else {
      m[k] = r->work[i].data;
      err[k] = ef ? t->residual : NULL;
    }
    if (ef) {
      lh_reduce_add_f32(m[k], err[k], n);
      memset(err[k], 0, n * sizeof(float));
    }
    t->psgd.rows = r->work[i].rows;
    t->psgd.cols = n / r->work[i].rows;
    t->psgd.rank = rank;
    state[k] = &t->psgd;
    k++;
  }
  r->e.on_device = 0;
  LH_CHECK_GOTO(lh_powersgd_allreduce(&r->e, k, m, state, err), st, done_k);
  k = 0;
  for (int i = 0; i < r->nwork; i++) {
    if (!worth_factoring(&r->work[i], rank))
      continue;
    size_t n = r->work[i].count;
    if (r->cfg.op == LH_OP_MEAN && r->comm->size > 1)
      lh_reduce_div_f32(m[k], (float)r->comm->size, n);
    if (on_device) {
      LH_CHECK_GOTO(lh_copy_to_device(r->work[i].data, m[k], n * sizeof(float)), st, done_k);
      if (ef)
        LH_CHECK_GOTO(lh_copy_to_device(r->work_entry[i]->residual, err[k], n * sizeof(float)), st, done_k);
    }
    k++;
  }
done_k:
  if (on_device)
    for (int i = 0; i < k + 1 && m; i++) {
      free(m[i]);
      if (err)
        free(err[i]);
    }
done:
  free(m);
  free(err);
  free(state);
  return st;
}

static lh_status do_work(lh_reducer r) {
  lh_engine *e = &r->e;
  size_t total = 0;
  for (int i = 0; i < r->nwork; i++)
    total += r->work[i].count;
  int on_device = r->nwork > 0 && total > 0 && lh_is_device_pointer(r->work[0].data);
  e->on_device = on_device;
  e->step = r->step;
  lh_allreduce_algo algo = lh_engine_choose(e, total);
  e->algo = algo; /* the same on every rank: chosen from the agreed config and total */
  r->stats.last_algo = algo;
  int warm = r->step < (uint64_t)e->cfg.warmup_steps;
  int ef = e->cfg.error_feedback && e->cfg.codec != LH_CODEC_NONE && !warm;
  if (ef)
    for (int i = 0; i < r->nwork; i++)
      LH_CHECK(ensure_residual(r->work_entry[i], on_device));
  if (total == 0)
    return LH_SUCCESS;
  if (algo == LH_ALLREDUCE_RING || algo == LH_ALLREDUCE_MPI || warm) {
    /* uncompressed: one buffer for the bucket */
    float *v = r->work[0].data;
    if (r->nwork > 1) {
      LH_CHECK(ensure_bucket(r, total, on_device));
      v = r->bucket;
      LH_CHECK(pack(r, v, on_device, 0));
    }
    LH_CHECK(plain_allreduce(r, v, total, algo == LH_ALLREDUCE_MPI ? algo : LH_ALLREDUCE_RING));
    if (r->cfg.op == LH_OP_MEAN && r->comm->size > 1)
      LH_CHECK(lh_reduce_div(on_device, v, (float)r->comm->size, total));
    return r->nwork > 1 ? unpack(r, v, NULL, on_device) : LH_SUCCESS;
  }
  if (algo == LH_ALLREDUCE_POWERSGD)
    return powersgd_step(r, on_device, ef);
  return bucket_step(r, on_device, ef, total);
}

static void run_work(lh_reducer r) {
  double t0 = lh_now();
  unsigned long long wire0 = r->e.wire_bytes;
  double codec0 = r->e.codec_seconds;
  size_t total = 0;
  for (int i = 0; i < r->nwork; i++)
    total += r->work[i].count;
  lh_error_clear();
  r->result = do_work(r);
  snprintf(r->error, sizeof r->error, "%s", r->result != LH_SUCCESS ? lh_last_error() : "");
  if (r->result == LH_SUCCESS) {
    r->stats.calls++;
    r->stats.elements += total;
    r->stats.raw_bytes += lh_ring_bytes_sent(total, r->comm->size, r->comm->rank);
    r->stats.wire_bytes += r->e.wire_bytes - wire0;
    r->stats.codec_seconds += r->e.codec_seconds - codec0;
    r->stats.seconds += lh_now() - t0;
    r->step++;
  }
  atomic_store(&r->finished, 1);
}

static void *worker_main(void *arg) {
  lh_reducer r = arg;
  lh_progress_scope(r->comm);
  run_work(r);
  lh_progress_scope(NULL);
  return NULL;
}

/* ---- start / test / wait ------------------------------------------------------------------- */

static lh_status check_reducer(lh_reducer r, const char *fn) {
  if (!r)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: reducer must not be NULL", fn);
  return lh_comm_check(r->comm, fn);
}

/* Validates the tensors and binds them to their table entries; names the first bad one. */
static lh_status bind_tensors(lh_reducer r, const lh_tensor *tensors, int count) {
  if (count < 0 || (count > 0 && !tensors))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_reducer_start: %d tensors at %p", count, (const void *)tensors);
  free(r->work);
  free(r->work_entry);
  r->work = lh_calloc((size_t)count + 1, sizeof(lh_tensor), "the bucket's tensors");
  r->work_entry = lh_calloc((size_t)count + 1, sizeof(entry *), "the bucket's tensors");
  if (!r->work || !r->work_entry)
    return LH_ERR_OUT_OF_MEMORY;
  r->nwork = count;
  uint64_t call = ++r->calls_started;
  int kind = -1;
  for (int i = 0; i < count; i++) {
    const lh_tensor *t = &tensors[i];
    if (t->size < sizeof(lh_tensor))
      return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_reducer_start: tensors[%d].size is %zu, expected %zu", i, t->size,
                      sizeof(lh_tensor));
    if (t->count > ((size_t)1 << 40) || (t->count > 0 && !t->data))
      return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_reducer_start: tensors[%d] (key %llu) has %zu elements at %p", i,
                      (unsigned long long)t->key, t->count, (void *)t->data);
    if (t->rows > 1 && t->count % t->rows)
      return lh_error(LH_ERR_INVALID_ARGUMENT,
                      "lh_reducer_start: tensors[%d] (key %llu): %zu elements are not a matrix of %zu rows", i,
                      (unsigned long long)t->key, t->count, t->rows);
    if (t->count > 0) {
      int dev = lh_is_device_pointer(t->data);
      if (kind >= 0 && dev != kind)
        return lh_error(LH_ERR_INVALID_ARGUMENT,
                        "lh_reducer_start: tensors[%d] (key %llu) is %s memory but tensors before it are %s memory; "
                        "one call takes one kind",
                        i, (unsigned long long)t->key, dev ? "device" : "host", kind ? "device" : "host");
      kind = dev;
    }
    entry *en = table_find(r, t->key, 1);
    if (!en)
      return LH_ERR_OUT_OF_MEMORY;
    if (en->mark == call)
      return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_reducer_start: key %llu appears twice in one call",
                      (unsigned long long)t->key);
    en->mark = call;
    if (en->shaped && (en->count != t->count || en->rows != t->rows))
      return lh_error(LH_ERR_MISMATCH,
                      "lh_reducer_start: tensor key %llu had %zu elements (%zu rows) and now has %zu (%zu rows); "
                      "call lh_reducer_reset to change shapes",
                      (unsigned long long)t->key, en->count, en->rows, t->count, t->rows);
    if (en->residual && t->count > 0 && en->on_device != kind)
      return lh_error(LH_ERR_MISMATCH, "lh_reducer_start: tensor key %llu moved between host and device memory",
                      (unsigned long long)t->key);
    r->work[i] = *t;
    if (t->count > 0 && r->e.algo != LH_ALLREDUCE_RING && r->e.algo != LH_ALLREDUCE_MPI) {
      char what[64];
      snprintf(what, sizeof what, "lh_reducer_start: tensor key %llu", (unsigned long long)t->key);
      LH_CHECK(lh_check_finite(kind == 1, t->data, t->count, what));
    }
  }
  /* bind after the table stopped growing: a rehash moves entries */
  for (int i = 0; i < count; i++)
    r->work_entry[i] = table_find(r, tensors[i].key, 0);
  return LH_SUCCESS;
}

/* FNV-1a over the bucket's shape: keys, counts and rows in order. */
static long long bucket_signature(const lh_tensor *t, int count) {
  uint64_t h = 1469598103934665603ull;
  for (int i = 0; i < count; i++) {
    uint64_t v[3] = {t[i].key, t[i].count, t[i].rows};
    const unsigned char *p = (const unsigned char *)v;
    for (size_t b = 0; b < sizeof v; b++)
      h = (h ^ p[b]) * 1099511628211ull;
  }
  return (long long)(h >> 1);
}

lh_status lh_reducer_start(lh_reducer r, const lh_tensor *tensors, int count) {
  lh_error_clear();
  LH_CHECK(check_reducer(r, "lh_reducer_start"));
  if (r->busy)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_reducer_start: an operation is still in flight; call lh_reducer_wait first");
  lh_status st = bind_tensors(r, tensors, count);
  /* The agreement runs even when this rank's tensors are bad, so the others learn of it
   * instead of hanging; a rank's own error wins over the mismatch it causes. */
  size_t total = 0;
  for (int i = 0; st == LH_SUCCESS && i < count; i++)
    total += tensors[i].count;
  char detail[512];
  snprintf(detail, sizeof detail, "%s", st != LH_SUCCESS ? lh_last_error() : "");
  long long values[20];
  const char *names[20];
  int k = lh_engine_agreement(&r->e, values, names, 16);
  values[k] = st == LH_SUCCESS;
  names[k++] = "verdicts on their tensors (a rank refused its own arguments)";
  values[k] = count;
  names[k++] = "tensor counts";
  values[k] = (long long)total;
  names[k++] = "element totals";
  values[k] = st == LH_SUCCESS ? bucket_signature(tensors, count) : 0;
  names[k++] = "tensor keys, counts or rows";
  lh_status agreed = lh_comm_agree(r->comm, values, k, names, "lh_reducer_start");
  if (st != LH_SUCCESS)
    return lh_error(st, "%s", detail);
  if (agreed != LH_SUCCESS)
    return agreed;
  for (int i = 0; i < count; i++) { /* shapes are recorded only once every rank accepted them */
    r->work_entry[i]->shaped = 1;
    r->work_entry[i]->count = tensors[i].count;
    r->work_entry[i]->rows = tensors[i].rows;
  }
  r->busy = 1;
  atomic_store(&r->finished, 0);
  r->on_thread = 0;
  if (r->threads && r->comm->size > 1) {
    r->comm->exclusive = 1;
    if (pthread_create(&r->thread, NULL, worker_main, r) == 0) {
      r->on_thread = 1;
      return LH_SUCCESS;
    }
    r->comm->exclusive = 0;
    lh_log(LH_LOG_WARN, "collective", "could not start the reducer's worker thread; reducing in the caller's thread");
  }
  run_work(r);
  return LH_SUCCESS;
}

lh_status lh_reducer_test(lh_reducer r, int *done) {
  lh_error_clear();
  if (!done)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_reducer_test: done must not be NULL");
  if (!r)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_reducer_test: reducer must not be NULL");
  *done = !r->busy || atomic_load(&r->finished);
  return LH_SUCCESS;
}

lh_status lh_reducer_wait(lh_reducer r) {
  lh_error_clear();
  if (!r)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_reducer_wait: reducer must not be NULL");
  if (!r->busy)
    return LH_SUCCESS;
  if (r->on_thread) {
    pthread_join(r->thread, NULL);
    r->comm->exclusive = 0;
    r->on_thread = 0;
  }
  r->busy = 0;
  if (r->result != LH_SUCCESS)
    return lh_error(r->result, "%s", r->error);
  return LH_SUCCESS;
}

lh_status lh_reducer_allreduce(lh_reducer r, const lh_tensor *tensors, int count) {
  LH_CHECK(lh_reducer_start(r, tensors, count));
  return lh_reducer_wait(r);
}

/* ---- state and statistics ------------------------------------------------------------------ */

lh_status lh_reducer_reset(lh_reducer r) {
  lh_error_clear();
  if (!r)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_reducer_reset: reducer must not be NULL");
  if (r->busy)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_reducer_reset: an operation is in flight; wait for it first");
  for (size_t i = 0; i < r->tab_cap; i++)
    if (r->tab[i].used)
      entry_clear(&r->tab[i]);
  free(r->tab);
  r->tab = NULL;
  r->tab_cap = r->tab_used = 0;
  r->step = 0;
  return LH_SUCCESS;
}

/* ---- checkpoints --------------------------------------------------------------------------- */

#define LH_REDUCER_MAGIC "LHREDUCE"
#define LH_REDUCER_VERSION 1

/* Writes n floats of a residual that may live on the device, through a host copy. */
static void write_floats(lh_state_writer *w, const float *data, size_t n, int on_device) {
  if (!on_device) {
    lh_state_write_bytes(w, data, n * sizeof(float));
    return;
  }
  float *host = lh_malloc(n * sizeof(float) + 1, "a residual's host copy");
  if (!host) {
    w->status = LH_ERR_OUT_OF_MEMORY;
    return;
  }
  if (w->status == LH_SUCCESS)
    w->status = lh_copy_to_host(host, data, n * sizeof(float));
  lh_state_write_bytes(w, host, n * sizeof(float));
  free(host);
}

lh_status lh_reducer_save(lh_reducer r, const char *path) {
  lh_error_clear();
  if (!r || !path)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_reducer_save: reducer and path must not be NULL");
  if (r->busy)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_reducer_save: an operation is in flight; wait for it first");
  lh_state_writer w;
  lh_status st = lh_state_write_open(&w, path, "lh_reducer_save", LH_REDUCER_MAGIC, LH_REDUCER_VERSION);
  lh_state_write_u64(&w, r->step);
  lh_state_write_u64(&w, r->tab_used);
  for (size_t i = 0; i < r->tab_cap; i++) {
    const entry *t = &r->tab[i];
    if (!t->used)
      continue;
    uint64_t fields[8] = {t->key, t->count, t->rows, (uint64_t)t->shaped, t->residual != NULL,
                          t->psgd.rows, t->psgd.cols, t->psgd.q ? (uint64_t)t->psgd.rank : 0};
    for (int k = 0; k < 8; k++)
      lh_state_write_u64(&w, fields[k]);
    if (t->residual)
      write_floats(&w, t->residual, t->count, t->on_device);
    if (t->psgd.q)
      lh_state_write_bytes(&w, t->psgd.q, t->psgd.cols * (size_t)t->psgd.rank * sizeof(float));
  }
  if (st == LH_SUCCESS)
    return lh_state_write_close(&w);
  if (w.file)
    lh_state_write_close(&w);
  return st;
}

lh_status lh_reducer_load(lh_reducer r, const char *path) {
  lh_error_clear();
  if (!r || !path)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_reducer_load: reducer and path must not be NULL");
  if (r->busy)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_reducer_load: an operation is in flight; wait for it first");
  /* Everything goes into a fresh table first: the reducer changes only when the file is whole. */
  lh_state_reader rd;
  if (lh_state_read_open(&rd, path, "lh_reducer_load", LH_REDUCER_MAGIC, LH_REDUCER_VERSION) != LH_SUCCESS)
    return lh_state_read_close(&rd);
  uint64_t step = lh_state_read_u64(&rd), entries = lh_state_read_u64(&rd);
  if (rd.status == LH_SUCCESS && entries > ((uint64_t)1 << 24))
    lh_state_fail(&rd, LH_ERR_CORRUPT, "it claims an impossible number of tensors");
  struct lh_reducer_s fresh;
  memset(&fresh, 0, sizeof fresh);
  for (uint64_t e = 0; e < entries && rd.status == LH_SUCCESS; e++) {
    uint64_t f[8];
    for (int k = 0; k < 8; k++)
      f[k] = lh_state_read_u64(&rd);
    if (rd.status != LH_SUCCESS)
      break;
    /* Sizes a damaged file could make absurd are checked before they allocate. */
    if (f[1] > ((uint64_t)1 << 40) || f[6] > ((uint64_t)1 << 40) || f[7] > 64 || (f[2] > 1 && f[1] % f[2])) {
      lh_state_fail(&rd, LH_ERR_CORRUPT, "a tensor's sizes are impossible");
      break;
    }
    entry *t = table_find(&fresh, f[0], 0);
    if (t) {
      lh_state_fail(&rd, LH_ERR_CORRUPT, "a tensor key appears twice");
      break;
    }
    t = table_find(&fresh, f[0], 1);
    if (!t) {
      lh_state_fail(&rd, LH_ERR_OUT_OF_MEMORY, "no memory for its tensor table");
      break;
    }
    t->count = (size_t)f[1];
    t->rows = (size_t)f[2];
    t->shaped = f[3] != 0;
    if (f[4]) {
      t->residual = lh_malloc(t->count * sizeof(float) + 1, "an error-feedback residual");
      if (!t->residual || !lh_state_read_bytes(&rd, t->residual, t->count * sizeof(float)))
        lh_state_fail(&rd, LH_ERR_OUT_OF_MEMORY, "no memory for a residual");
    }
    t->psgd.rows = (size_t)f[5];
    t->psgd.cols = (size_t)f[6];
    t->psgd.rank = (int)f[7];
    if (f[7] && rd.status == LH_SUCCESS) {
      t->psgd.q = lh_malloc(t->psgd.cols * f[7] * sizeof(float) + 1, "PowerSGD's Q");
      if (!t->psgd.q || !lh_state_read_bytes(&rd, t->psgd.q, t->psgd.cols * f[7] * sizeof(float)))
        lh_state_fail(&rd, LH_ERR_OUT_OF_MEMORY, "no memory for PowerSGD's Q");
    }
  }
  lh_status st = lh_state_read_close(&rd);
  if (st != LH_SUCCESS) {
    for (size_t i = 0; i < fresh.tab_cap; i++)
      if (fresh.tab[i].used)
        entry_clear(&fresh.tab[i]);
    free(fresh.tab);
    return st;
  }
  /* Residuals come back in host memory; a tensor that now lives on the device gets a device copy
   * from its first call (bind_tensors refuses a move, so the caller must keep the same kind). */
  LH_CHECK(lh_reducer_reset(r));
  r->tab = fresh.tab;
  r->tab_cap = fresh.tab_cap;
  r->tab_used = fresh.tab_used;
  r->step = step;
  return LH_SUCCESS;
}

lh_status lh_reducer_get_stats(lh_reducer r, lh_reducer_stats *stats) {
  lh_error_clear();
  if (!r || !stats)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_reducer_get_stats: reducer and stats must not be NULL");
  if (stats->size < sizeof *stats)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_reducer_get_stats: stats->size is %zu, expected %zu", stats->size,
                    sizeof *stats);
  *stats = r->stats;
  return LH_SUCCESS;
}

lh_status lh_reducer_reset_stats(lh_reducer r) {
  lh_error_clear();
  if (!r)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_reducer_reset_stats: reducer must not be NULL");
  lh_allreduce_algo last = r->stats.last_algo;
  r->stats = (lh_reducer_stats)LH_REDUCER_STATS_INIT;
  r->stats.last_algo = last;
  return LH_SUCCESS;
}

lh_status lh_reducer_residual(lh_reducer r, uint64_t key, const float **residual, size_t *count) {
  lh_error_clear();
  if (!r || !residual || !count)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_reducer_residual: reducer, residual and count must not be NULL");
  entry *t = table_find(r, key, 0);
  *residual = t ? t->residual : NULL;
  *count = t && t->residual ? t->count : 0;
  return LH_SUCCESS;
}

lh_status lh_reducer_free(lh_reducer r) {
  if (!r)
    return LH_SUCCESS;
  lh_status st = lh_reducer_wait(r);
  char detail[512];
  snprintf(detail, sizeof detail, "%s", lh_last_error());
  for (size_t i = 0; i < r->tab_cap; i++)
    if (r->tab[i].used)
      entry_clear(&r->tab[i]);
  free(r->tab);
  free(r->work);
  free(r->work_entry);
  free_buckets(r);
  lh_engine_release(&r->e);
  lh_status destroyed = lh_comm_destroy(r->comm);
  free(r);
  if (st != LH_SUCCESS)
    return lh_error(st, "%s", detail);
  return destroyed;
}

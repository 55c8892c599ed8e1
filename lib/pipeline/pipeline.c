/* The pipeline runtime: one stage per rank, the schedule of schedule.c, and an AQ-SGD context
 * at each end of the rank's stage boundaries.
 *
 * Communicators. The caller's is split twice: per replica (color replica, key stage), so that
 * stage s talks to ranks s - 1 and s + 1 of its replica communicator, and per stage (color
 * stage, key replica) for the caller's data-parallel all-reduce of the stage's gradients.
 *
 * Messages. Activations go s -> s + 1 on LH_TAG_PIPELINE_FORWARD, gradients s + 1 -> s on
 * LH_TAG_PIPELINE_BACKWARD. Frames carry no micro-batch index: messages of a pair of ranks
 * match in posting order, and every stage runs its forwards and its backwards in micro-batch
 * order (schedule.c). Frame sizes depend on the data (an example's first visit goes at full
 * precision), so receives take any size up to lh_aq_max_frame_bytes.
 *
 * Overlap without deadlock. Each direction keeps a window of receives posted ahead of use
 * (the stage's in-flight bound plus one), so a frame moves while the stage computes. Sends
 * never block mid-step: a send frame is reused only once its send has completed, and when
 * every frame is still on the wire the pool grows by one (it ends about as large as the
 * in-flight count). Sends that never block are the condition under which the schedules are
 * deadlock-free (tests/unit/test_pipeline_schedule.cc). A step ends when its sends have
 * completed, so no message of one step is pending in the next.
 *
 * Activation memory. The callbacks' buffers are valid only during a call, so the runtime
 * needs one micro-batch of each (input, output, their gradients), not one per micro-batch in
 * flight: what the backward needs from the forward, the caller's model keeps.
 *
 * Failure. A failed step abandons its outstanding requests and leaves the stages out of step
 * (the others wait for frames that never come, then time out): the pipeline refuses later
 * calls with the first failure's detail; free it and create a new one. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pipeline/pipeline_internal.h"
#include "transport/transport_internal.h"

/* ---- frames in: receives posted ahead, used in order --------------------------------------- */

typedef struct lh_inbox {
  lh_comm comm;
  int peer, tag;
  int window;       /* receives posted ahead */
  size_t capacity;  /* bytes of one slot */
  char *bufs;       /* window x capacity */
  lh_request *reqs; /* per slot */
  size_t *got;      /* per slot: the size sent */
  int posted, used, total;
} lh_inbox;

static lh_status lh_inbox_init(lh_inbox *in, int window, size_t capacity) {
  in->window = window;
  in->capacity = capacity;
  in->bufs = lh_malloc((size_t)window * capacity, "pipeline receive frames");
  in->reqs = lh_calloc((size_t)window, sizeof *in->reqs, "pipeline receive requests");
  in->got = lh_calloc((size_t)window, sizeof *in->got, "pipeline receive sizes");
  return in->bufs && in->reqs && in->got ? LH_SUCCESS : LH_ERR_OUT_OF_MEMORY;
}

static void lh_inbox_abandon(lh_inbox *in) { lh_requests_abandon(in->reqs, (size_t)in->window); }

static void lh_inbox_free(lh_inbox *in) {
  lh_inbox_abandon(in);
  free(in->bufs);
  free(in->reqs);
  free(in->got);
  memset(in, 0, sizeof *in);
}

static lh_status lh_inbox_post(lh_inbox *in) {
  int slot = in->posted % in->window;
  LH_CHECK(lh_irecv_upto(in->comm, in->bufs + (size_t)slot * in->capacity, in->capacity, &in->got[slot], in->peer,
                         in->tag, &in->reqs[slot]));
  in->posted++;
  return LH_SUCCESS;
}

/* Expects `total` frames: posts the first window of receives. */
static lh_status lh_inbox_start(lh_inbox *in, int total) {
  in->total = total;
  in->posted = in->used = 0;
  while (in->posted < total && in->posted < in->window)
    LH_CHECK(lh_inbox_post(in));
  return LH_SUCCESS;
}

/* Waits for the next frame in order; it stays valid until lh_inbox_done. */
static lh_status lh_inbox_next(lh_inbox *in, char **frame, size_t *bytes) {
  int slot = in->used % in->window;
  LH_CHECK(lh_wait(&in->reqs[slot]));
  *frame = in->bufs + (size_t)slot * in->capacity;
  *bytes = in->got[slot];
  return LH_SUCCESS;
}

/* The frame of lh_inbox_next is used up: its slot takes the receive of a later frame. */
static lh_status lh_inbox_done(lh_inbox *in) {
  in->used++;
  return in->posted < in->total ? lh_inbox_post(in) : LH_SUCCESS;
}

/* ---- frames out: a pool of send buffers, each reused once its send completed -------------- */

typedef struct lh_outbox {
  lh_comm comm;
  int peer, tag;
  size_t capacity;
  char **bufs;
  lh_request *reqs;
  int count;
} lh_outbox;

static lh_status lh_outbox_grow(lh_outbox *out) {
  char **bufs = realloc(out->bufs, (size_t)(out->count + 1) * sizeof *bufs);
  if (bufs)
    out->bufs = bufs;
  lh_request *reqs = realloc(out->reqs, (size_t)(out->count + 1) * sizeof *reqs);
  if (reqs)
    out->reqs = reqs;
  if (!bufs || !reqs)
    return lh_error(LH_ERR_OUT_OF_MEMORY, "out of memory growing the pipeline's send frames to %d", out->count + 1);
  out->reqs[out->count] = NULL;
  out->bufs[out->count] = lh_malloc(out->capacity, "a pipeline send frame");
  if (!out->bufs[out->count])
    return LH_ERR_OUT_OF_MEMORY;
  out->count++;
  return LH_SUCCESS;
}

static lh_status lh_outbox_init(lh_outbox *out, int slots, size_t capacity) {
  out->capacity = capacity;
  for (int i = 0; i < slots; i++)
    LH_CHECK(lh_outbox_grow(out));
  return LH_SUCCESS;
}

static void lh_outbox_abandon(lh_outbox *out) { lh_requests_abandon(out->reqs, (size_t)out->count); }

static void lh_outbox_free(lh_outbox *out) {
  lh_outbox_abandon(out);
  for (int i = 0; i < out->count; i++)
    free(out->bufs[i]);
  free(out->bufs);
  free(out->reqs);
  memset(out, 0, sizeof *out);
}

/* A slot whose previous send has completed; a new one when every send is still on the wire. */
static lh_status lh_outbox_acquire(lh_outbox *out, int *slot) {
  for (int i = 0; i < out->count; i++) {
    int done = 1;
    if (out->reqs[i])
      LH_CHECK(lh_test(&out->reqs[i], &done));
    if (done) {
      *slot = i;
      return LH_SUCCESS;
    }
  }
  LH_CHECK(lh_outbox_grow(out));
  *slot = out->count - 1;
  return LH_SUCCESS;
}

static lh_status lh_outbox_send(lh_outbox *out, int slot, size_t bytes) {
  return lh_isend(out->comm, out->bufs[slot], bytes, out->peer, out->tag, &out->reqs[slot]);
}

static lh_status lh_outbox_flush(lh_outbox *out) { return out->count ? lh_waitall(out->count, out->reqs) : LH_SUCCESS; }

/* ---- the pipeline --------------------------------------------------------------------------- */

struct lh_pipeline_s {
  lh_pipeline_config cfg; /* the caller's, tokens resolved; its arrays are not kept */
  size_t *channels;       /* the stages - 1 boundary widths (a copy) */
  int stage, replica, world_rank;
  int last; /* this is the last stage */
  lh_comm replica_comm, stage_comm;
  lh_aq_receiver from_prev;           /* boundary stage - 1; NULL on stage 0 */
  lh_aq_sender to_next;               /* boundary stage; NULL on the last stage */
  lh_aq_store prev_store, next_store; /* stores this pipeline made (DEVICE, MMAP); NULL: the context's own */
  size_t in_elems, out_elems;         /* floats per example at the input and at the output boundary */
  float *input, *output, *grad_input, *grad_output; /* one micro-batch each */
  lh_pipe_action *actions;                          /* 2 x micro_batches */
  int window;                                       /* receives posted ahead, per direction */
  lh_inbox fwd_in, bwd_in;                          /* activations from stage - 1, gradients from stage + 1 */
  lh_outbox fwd_out, bwd_out;                       /* activations to stage + 1, gradients to stage - 1 */
  lh_status failed;                                 /* a step or eval that failed part-way */
  char failed_reason[400];
};

/* What one call accumulates for its stats. */
typedef struct lh_pipe_run {
  double start, compute, codec, loss;
  size_t examples;
  unsigned long long to_next, to_prev, from_prev, from_next, raw_sent;
} lh_pipe_run;

static size_t lh_pipe_storage_bytes(lh_aq_dtype t) { return t == LH_AQ_FP32 ? 4 : 2; }

static uint64_t lh_pipe_fnv(uint64_t h, uint64_t v) {
  for (int i = 0; i < 8; i++)
    h = (h ^ ((v >> (8 * i)) & 0xFF)) * 1099511628211ull;
  return h;
}

/* Where world rank r sits. */
static void lh_pipe_place(const lh_pipeline_config *c, int r, int *stage, int *replica) {
  *stage = c->stage_of_rank ? c->stage_of_rank[r] : r % c->stages;
  *replica = c->replica_of_rank ? c->replica_of_rank[r] : r / c->stages;
}

/* The placement must give every (stage, replica) pair to exactly one rank. */
static lh_status lh_pipe_check_placement(const lh_pipeline_config *c, int ranks) {
  if (!c->stage_of_rank != !c->replica_of_rank)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_pipeline_create: stage_of_rank and replica_of_rank go together: give both or neither");
  if (!c->stage_of_rank)
    return LH_SUCCESS;
  int *owner = lh_malloc((size_t)ranks * sizeof *owner, "the placement check");
  if (!owner)
    return LH_ERR_OUT_OF_MEMORY;
  for (int i = 0; i < ranks; i++)
    owner[i] = -1;
  lh_status st = LH_SUCCESS;
  for (int r = 0; r < ranks && st == LH_SUCCESS; r++) {
    int s, d;
    lh_pipe_place(c, r, &s, &d);
    if (s < 0 || s >= c->stages || d < 0 || d >= c->replicas)
      st = lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_pipeline_create: rank %d is placed at stage %d, replica %d; allowed: stages 0..%d, "
                    "replicas 0..%d",
                    r, s, d, c->stages - 1, c->replicas - 1);
    else if (owner[s * c->replicas + d] >= 0)
      st = lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_pipeline_create: ranks %d and %d are both placed at stage %d, replica %d (the placement "
                    "must give each (stage, replica) to one rank)",
                    owner[s * c->replicas + d], r, s, d);
    else
      owner[s * c->replicas + d] = r;
  }
  free(owner);
  return st;
}

/* The settings every rank must share, for the agreement (c NULL: zeros). */
static int lh_pipe_summary(const lh_pipeline_config *c, int ranks, long long *v, const char **names) {
  lh_pipeline_config none;
  memset(&none, 0, sizeof none);
  if (!c)
    c = &none;
  uint64_t widths = 1469598103934665603ull, placement = widths;
  for (int b = 0; c->boundary_channels && b < c->stages - 1; b++)
    widths = lh_pipe_fnv(widths, c->boundary_channels[b]);
  /* The effective placement: arrays equal to the default agree with no arrays. */
  for (int r = 0; c->stages >= 1 && c->replicas >= 1 && r < ranks; r++) {
    int s, d;
    lh_pipe_place(c, r, &s, &d);
    placement = lh_pipe_fnv(lh_pipe_fnv(placement, (uint64_t)s), (uint64_t)d);
  }
  const struct {
    const char *name;
    long long value;
  } fields[] = {{"stages", c->stages},
                {"replicas", c->replicas},
                {"micro_batches", c->micro_batches},
                {"micro_batch", (long long)c->micro_batch},
                {"examples", (long long)c->examples},
                {"tokens", (long long)(c->tokens ? c->tokens : 1)},
                {"schedule", c->schedule},
                {"boundary_channels", (long long)widths},
                {"placement (stage_of_rank, replica_of_rank)", (long long)placement},
                {"aq.mode", c->aq.mode},
                {"aq.storage", c->aq.storage},
                {"aq.forward_bits", c->aq.forward_bits},
                {"aq.backward_bits", c->aq.backward_bits},
                {"aq.quantizer", c->aq.quantizer},
                {"aq.group", c->aq.group},
                {"aq.rounding", c->aq.rounding},
                {"aq.warmup_epochs", c->aq.warmup_epochs},
                {"aq.seed", (long long)c->aq.seed}};
  int k = (int)(sizeof fields / sizeof *fields);
  for (int i = 0; i < k; i++) {
    names[i] = fields[i].name;
    v[i] = fields[i].value;
  }
  return k;
}

/* The AQ-SGD config of boundary b: the caller's template with the pipeline's shape. */
static lh_aq_config lh_pipe_aq_config(const struct lh_pipeline_s *p, int b, lh_aq_store store) {
  lh_aq_config a = p->cfg.aq;
  a.examples = p->cfg.examples;
  a.tokens = p->cfg.tokens;
  a.channels = p->channels[b];
  a.boundary = b;
  a.dtype = LH_AQ_FP32;
  a.store = store;
  return a;
}

/* The store of one side of boundary b. HOST (and every kind when the mode keeps no buffers,
 * DIRECT and OFF: the context needs visit counts only) is the context's own; DEVICE and MMAP
 * are made here. MMAP files are named by boundary, side, world rank and process, so ranks
 * sharing a directory never collide. */
static lh_status lh_pipe_store(struct lh_pipeline_s *p, int b, const char *side, const char *dir, lh_aq_store *store) {
  *store = NULL;
  lh_aq_dtype t = p->cfg.aq.storage;
  if (t != LH_AQ_FP32 && t != LH_AQ_FP16 && t != LH_AQ_BF16)
    return LH_SUCCESS; /* the context refuses it, in its own words */
  if (p->cfg.store_kind == LH_AQ_STORE_HOST || p->cfg.aq.mode != LH_AQ_DELTA)
    return LH_SUCCESS;
  static unsigned made; /* tells apart the files of pipelines of one process */
  char path[4096];
  lh_aq_store_config sc = LH_AQ_STORE_CONFIG_INIT;
  sc.kind = p->cfg.store_kind;
  sc.examples = p->cfg.examples;
  sc.row_bytes = p->cfg.tokens * p->channels[b] * lh_pipe_storage_bytes(t);
  if (sc.kind == LH_AQ_STORE_MMAP) {
    int n = snprintf(path, sizeof path, "%s/lh-aq-boundary%d-%s-rank%d-pid%ld-%u.buf", dir, b, side, p->world_rank,
                     (long)getpid(), __atomic_fetch_add(&made, 1u, __ATOMIC_RELAXED));
    if (n < 0 || (size_t)n >= sizeof path)
      return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_pipeline_create: store_dir '%.200s...' is too long", dir);
    sc.path = path;
  }
  lh_status st = lh_aq_store_create(&sc, store);
  if (st != LH_SUCCESS)
    return lh_error_context(st, "lh_pipeline_create: the %s store of boundary %d", side, b);
  return LH_SUCCESS;
}

static lh_status lh_pipe_floats(size_t count, size_t elems, float **buf, const char *what) {
  if (elems && count > SIZE_MAX / sizeof(float) / elems)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_pipeline_create: %zu x %zu floats of %s overflow", count, elems, what);
  *buf = lh_malloc(count * elems * sizeof(float), what);
  return *buf ? LH_SUCCESS : LH_ERR_OUT_OF_MEMORY;
}

/* Opens this rank's ends of its boundaries: the contexts (which validates the AQ settings),
 * frame windows and pools sized by lh_aq_max_frame_bytes, and the callbacks' buffers. */
static lh_status lh_pipe_open_boundaries(struct lh_pipeline_s *p, const char *store_dir) {
  size_t mb = p->cfg.micro_batch;
  if (p->stage > 0) {
    int b = p->stage - 1;
    p->in_elems = p->cfg.tokens * p->channels[b];
    LH_CHECK(lh_pipe_store(p, b, "recv", store_dir, &p->prev_store));
    lh_aq_config a = lh_pipe_aq_config(p, b, p->prev_store);
    lh_status st = lh_aq_receiver_create(&a, &p->from_prev);
    if (st != LH_SUCCESS)
      return lh_error_context(st, "lh_pipeline_create: receiver of boundary %d (cfg.aq)", b);
    size_t fwd = 0, bwd = 0;
    LH_CHECK(lh_aq_max_frame_bytes(&a, mb, 0, &fwd));
    LH_CHECK(lh_aq_max_frame_bytes(&a, mb, 1, &bwd));
    LH_CHECK(lh_inbox_init(&p->fwd_in, p->window, fwd));
    LH_CHECK(lh_outbox_init(&p->bwd_out, 1, bwd));
    LH_CHECK(lh_pipe_floats(mb, p->in_elems, &p->input, "the stage's input"));
    LH_CHECK(lh_pipe_floats(mb, p->in_elems, &p->grad_input, "the gradient of the stage's input"));
  }
  if (!p->last) {
    int b = p->stage;
    p->out_elems = p->cfg.tokens * p->channels[b];
    LH_CHECK(lh_pipe_store(p, b, "send", store_dir, &p->next_store));
    lh_aq_config a = lh_pipe_aq_config(p, b, p->next_store);
    lh_status st = lh_aq_sender_create(&a, &p->to_next);
    if (st != LH_SUCCESS)
      return lh_error_context(st, "lh_pipeline_create: sender of boundary %d (cfg.aq)", b);
    size_t fwd = 0, bwd = 0;
    LH_CHECK(lh_aq_max_frame_bytes(&a, mb, 0, &fwd));
    LH_CHECK(lh_aq_max_frame_bytes(&a, mb, 1, &bwd));
    LH_CHECK(lh_outbox_init(&p->fwd_out, 1, fwd));
    LH_CHECK(lh_inbox_init(&p->bwd_in, p->window, bwd));
    LH_CHECK(lh_pipe_floats(mb, p->out_elems, &p->output, "the stage's output"));
    LH_CHECK(lh_pipe_floats(mb, p->out_elems, &p->grad_output, "the gradient of the stage's output"));
  }
  return LH_SUCCESS;
}

/* Everything a rank can check and build alone, before the ranks compare notes. */
static lh_status lh_pipe_setup(struct lh_pipeline_s *p, lh_comm comm, const lh_pipeline_config *c) {
  if (!c)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_pipeline_create: config must not be NULL");
  if (c->size != sizeof *c)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_pipeline_create: config->size is %zu, expected %zu (start from LH_PIPELINE_CONFIG_INIT)",
                    c->size, sizeof *c);
  if (c->stages < 1 || c->replicas < 1)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_pipeline_create: stages is %d and replicas %d; both must be >= 1",
                    c->stages, c->replicas);
  if ((long long)c->stages * c->replicas != comm->size)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_pipeline_create: stages x replicas = %d x %d = %lld, but the communicator has %d ranks",
                    c->stages, c->replicas, (long long)c->stages * c->replicas, comm->size);
  LH_CHECK(lh_pipe_check_placement(c, comm->size));
  if (c->micro_batches < 1 || c->micro_batch < 1)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_pipeline_create: micro_batches is %d and micro_batch %zu; both must be >= 1", c->micro_batches,
                    c->micro_batch);
  if (c->examples < 1)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_pipeline_create: examples is 0; set it to the number of training examples (ids run "
                    "0 .. examples - 1)");
  if (c->stages > 1 && !c->boundary_channels)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_pipeline_create: boundary_channels is NULL; %d stages need %d boundary widths", c->stages,
                    c->stages - 1);
  for (int b = 0; b < c->stages - 1; b++)
    if (c->boundary_channels[b] < 1)
      return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_pipeline_create: boundary_channels[%d] is 0; widths must be >= 1",
                      b);
  if (!c->forward || !c->backward)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_pipeline_create: the %s callback is NULL; forward and backward are both required",
                    !c->forward ? "forward" : "backward");
  if (c->store_kind != LH_AQ_STORE_HOST && c->store_kind != LH_AQ_STORE_DEVICE && c->store_kind != LH_AQ_STORE_MMAP)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_pipeline_create: store_kind %d is not one of HOST (%d), DEVICE (%d), MMAP (%d)",
                    (int)c->store_kind, LH_AQ_STORE_HOST, LH_AQ_STORE_DEVICE, LH_AQ_STORE_MMAP);
  if (c->store_kind == LH_AQ_STORE_MMAP && (!c->store_dir || !*c->store_dir))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_pipeline_create: store_kind MMAP needs store_dir (the directory "
                                             "of the buffer files)");

  p->cfg = *c;
  p->cfg.tokens = c->tokens ? c->tokens : 1;
  p->cfg.stage_of_rank = p->cfg.replica_of_rank = NULL;
  p->cfg.boundary_channels = NULL;
  p->cfg.store_dir = NULL; /* used during creation only */
  p->world_rank = comm->rank;
  lh_pipe_place(c, comm->rank, &p->stage, &p->replica);
  p->last = p->stage == c->stages - 1;
  p->channels = lh_calloc((size_t)c->stages, sizeof *p->channels, "the boundary widths");
  if (!p->channels)
    return LH_ERR_OUT_OF_MEMORY;
  for (int b = 0; b < c->stages - 1; b++)
    p->channels[b] = c->boundary_channels[b];

  int m = c->micro_batches;
  p->actions = lh_calloc((size_t)m * 2, sizeof *p->actions, "the schedule");
  if (!p->actions)
    return LH_ERR_OUT_OF_MEMORY;
  lh_status st = lh_pipe_schedule(c->schedule, c->stages, p->stage, m, p->actions);
  if (st != LH_SUCCESS)
    return lh_error_context(st, "lh_pipeline_create");
  int ahead = lh_pipe_max_in_flight(p->actions, 2 * m) + 1;
  p->window = ahead < m ? ahead : m;
  return lh_pipe_open_boundaries(p, c->store_dir);
}

static void lh_pipe_destroy(struct lh_pipeline_s *p) {
  lh_inbox_free(&p->fwd_in);
  lh_inbox_free(&p->bwd_in);
  lh_outbox_free(&p->fwd_out);
  lh_outbox_free(&p->bwd_out);
  lh_aq_receiver_free(p->from_prev); /* the contexts before the stores they use */
  lh_aq_sender_free(p->to_next);
  lh_aq_store_free(p->prev_store);
  lh_aq_store_free(p->next_store);
  lh_comm_destroy(p->replica_comm);
  lh_comm_destroy(p->stage_comm);
  free(p->input);
  free(p->output);
  free(p->grad_input);
  free(p->grad_output);
  free(p->actions);
  free(p->channels);
  free(p);
}

lh_status lh_pipeline_create(lh_comm comm, const lh_pipeline_config *config, lh_pipeline *pipeline) {
  lh_error_clear();
  LH_CHECK(lh_comm_check(comm, "lh_pipeline_create"));
  if (pipeline)
    *pipeline = NULL;
  /* Every rank reaches the agreement, even with a config it refused, or the others would wait
   * there; a rank's own error wins over the mismatch it causes. */
  struct lh_pipeline_s *p = lh_calloc(1, sizeof *p, "a pipeline");
  lh_status st = !pipeline ? lh_error(LH_ERR_INVALID_ARGUMENT, "lh_pipeline_create: pipeline must not be NULL")
                 : !p      ? LH_ERR_OUT_OF_MEMORY
                           : lh_pipe_setup(p, comm, config);
  char detail[1024];
  snprintf(detail, sizeof detail, "%s", st != LH_SUCCESS ? lh_last_error() : "");
  int readable = config && config->size == sizeof *config;
  long long values[32];
  const char *names[32];
  int k = lh_pipe_summary(readable ? config : NULL, comm->size, values, names);
  values[k] = st == LH_SUCCESS;
  names[k++] = "verdicts on their configs (a rank refused its own)";
  lh_status agreed = lh_comm_agree(comm, values, k, names, "lh_pipeline_create");
  if (st == LH_SUCCESS && agreed != LH_SUCCESS) {
    st = agreed;
    snprintf(detail, sizeof detail, "%s", lh_last_error());
  }
  /* Now every rank goes on, or none. */
  if (st == LH_SUCCESS)
    st = lh_comm_split(comm, p->replica, p->stage, &p->replica_comm);
  if (st == LH_SUCCESS)
    st = lh_comm_split(comm, p->stage, p->replica, &p->stage_comm);
  if (st != LH_SUCCESS) {
    if (detail[0] == '\0')
      snprintf(detail, sizeof detail, "%s", lh_last_error());
    if (p)
      lh_pipe_destroy(p);
    return lh_error(st, "%s", detail);
  }
  p->fwd_in.comm = p->fwd_out.comm = p->bwd_in.comm = p->bwd_out.comm = p->replica_comm;
  p->fwd_in.peer = p->bwd_out.peer = p->stage - 1;
  p->fwd_out.peer = p->bwd_in.peer = p->stage + 1;
  p->fwd_in.tag = p->fwd_out.tag = LH_TAG_PIPELINE_FORWARD;
  p->bwd_in.tag = p->bwd_out.tag = LH_TAG_PIPELINE_BACKWARD;
  *pipeline = p;
  return LH_SUCCESS;
}

lh_status lh_pipeline_free(lh_pipeline pipeline) {
  lh_error_clear();
  if (pipeline)
    lh_pipe_destroy(pipeline);
  return LH_SUCCESS;
}

lh_status lh_pipeline_position(lh_pipeline pipeline, int *stage, int *replica) {
  lh_error_clear();
  if (!pipeline)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_pipeline_position: pipeline must not be NULL");
  if (stage)
    *stage = pipeline->stage;
  if (replica)
    *replica = pipeline->replica;
  return LH_SUCCESS;
}

lh_status lh_pipeline_stage_comm(lh_pipeline pipeline, lh_comm *comm) {
  lh_error_clear();
  if (!pipeline || !comm)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_pipeline_stage_comm: pipeline and comm must not be NULL");
  *comm = pipeline->stage_comm;
  return LH_SUCCESS;
}

lh_status lh_pipeline_replica_comm(lh_pipeline pipeline, lh_comm *comm) {
  lh_error_clear();
  if (!pipeline || !comm)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_pipeline_replica_comm: pipeline and comm must not be NULL");
  *comm = pipeline->replica_comm;
  return LH_SUCCESS;
}

lh_status lh_pipeline_aq(lh_pipeline pipeline, lh_aq_receiver *from_prev, lh_aq_sender *to_next) {
  lh_error_clear();
  if (!pipeline)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_pipeline_aq: pipeline must not be NULL");
  if (from_prev)
    *from_prev = pipeline->from_prev;
  if (to_next)
    *to_next = pipeline->to_next;
  return LH_SUCCESS;
}

/* ---- a step ---------------------------------------------------------------------------------- */

static lh_stage_call lh_pipe_call(const struct lh_pipeline_s *p, int micro, int training, const int64_t *ids,
                                  size_t count) {
  lh_stage_call call;
  memset(&call, 0, sizeof call);
  call.size = sizeof call;
  call.stage = p->stage;
  call.replica = p->replica;
  call.micro = micro;
  call.training = training;
  call.ids = ids;
  call.count = count;
  return call;
}

static lh_status lh_pipe_callback(const struct lh_pipeline_s *p, int backward, lh_stage_call *call, lh_pipe_run *run) {
  const char *what = backward ? "backward" : "forward";
  lh_error_clear();
  double t = lh_now();
  lh_status st = (backward ? p->cfg.backward : p->cfg.forward)(p->cfg.user, call);
  run->compute += lh_now() - t;
  if (st == LH_SUCCESS)
    return LH_SUCCESS;
  if (lh_last_error()[0])
    return lh_error_context(st, "the %s callback of stage %d (replica %d), micro-batch %d", what, p->stage, p->replica,
                            call->micro);
  return lh_error(st, "the %s callback of stage %d (replica %d) returned '%s' on micro-batch %d", what, p->stage,
                  p->replica, lh_status_string(st), call->micro);
}

static lh_status lh_pipe_codec_failed(const struct lh_pipeline_s *p, lh_status st, const char *what, int micro) {
  return lh_error_context(st, "stage %d (replica %d), %s of micro-batch %d", p->stage, p->replica, what, micro);
}

static lh_status lh_pipe_forward(struct lh_pipeline_s *p, int micro, const int64_t *ids, lh_pipe_run *run) {
  size_t count = p->cfg.micro_batch;
  lh_stage_call call = lh_pipe_call(p, micro, 1, ids, count);
  if (p->stage > 0) {
    char *frame;
    size_t bytes;
    LH_CHECK(lh_inbox_next(&p->fwd_in, &frame, &bytes));
    double t = lh_now();
    lh_status st = lh_aq_receive(p->from_prev, frame, bytes, ids, count, p->input);
    run->codec += lh_now() - t;
    if (st != LH_SUCCESS)
      return lh_pipe_codec_failed(p, st, "decoding the activations", micro);
    run->from_prev += bytes;
    LH_CHECK(lh_inbox_done(&p->fwd_in));
    call.input = p->input;
  }
  call.output = p->last ? NULL : p->output;
  LH_CHECK(lh_pipe_callback(p, 0, &call, run));
  if (p->last) {
    run->loss += call.loss;
    return LH_SUCCESS;
  }
  int slot;
  size_t bytes;
  LH_CHECK(lh_outbox_acquire(&p->fwd_out, &slot));
  double t = lh_now();
  lh_status st = lh_aq_send(p->to_next, p->output, ids, count, p->fwd_out.bufs[slot], p->fwd_out.capacity, &bytes);
  run->codec += lh_now() - t;
  if (st != LH_SUCCESS)
    return lh_pipe_codec_failed(p, st, "encoding the activations", micro);
  LH_CHECK(lh_outbox_send(&p->fwd_out, slot, bytes));
  run->to_next += bytes;
  run->raw_sent += count * p->out_elems * sizeof(float);
  return LH_SUCCESS;
}

static lh_status lh_pipe_backward(struct lh_pipeline_s *p, int micro, const int64_t *ids, lh_pipe_run *run) {
  size_t count = p->cfg.micro_batch;
  lh_stage_call call = lh_pipe_call(p, micro, 1, ids, count);
  if (!p->last) {
    char *frame;
    size_t bytes;
    LH_CHECK(lh_inbox_next(&p->bwd_in, &frame, &bytes));
    double t = lh_now();
    lh_status st = lh_aq_receive_grad(p->to_next, frame, bytes, ids, count, p->grad_output);
    run->codec += lh_now() - t;
    if (st != LH_SUCCESS)
      return lh_pipe_codec_failed(p, st, "decoding the gradient", micro);
    run->from_next += bytes;
    LH_CHECK(lh_inbox_done(&p->bwd_in));
    call.grad_output = p->grad_output;
  }
  call.grad_input = p->stage > 0 ? p->grad_input : NULL;
  LH_CHECK(lh_pipe_callback(p, 1, &call, run));
  if (p->stage == 0)
    return LH_SUCCESS;
  int slot;
  size_t bytes;
  LH_CHECK(lh_outbox_acquire(&p->bwd_out, &slot));
  double t = lh_now();
  lh_status st =
      lh_aq_send_grad(p->from_prev, p->grad_input, ids, count, p->bwd_out.bufs[slot], p->bwd_out.capacity, &bytes);
  run->codec += lh_now() - t;
  if (st != LH_SUCCESS)
    return lh_pipe_codec_failed(p, st, "encoding the gradient", micro);
  LH_CHECK(lh_outbox_send(&p->bwd_out, slot, bytes));
  run->to_prev += bytes;
  run->raw_sent += count * p->in_elems * sizeof(float);
  return LH_SUCCESS;
}

/* Asks the boundaries' stores for a micro-batch's rows ahead of use (a no-op but for MMAP
 * stores, where it overlaps the page-ins with this micro-batch's compute). Advisory: a
 * failure here only costs the overlap, and the ids are checked again when they are used. */
static void lh_pipe_prefetch(const struct lh_pipeline_s *p, const int64_t *ids) {
  lh_aq_store store;
  if (p->from_prev && lh_aq_receiver_store(p->from_prev, &store) == LH_SUCCESS && store)
    (void)lh_aq_store_prefetch(store, ids, p->cfg.micro_batch);
  if (p->to_next && lh_aq_sender_store(p->to_next, &store) == LH_SUCCESS && store)
    (void)lh_aq_store_prefetch(store, ids, p->cfg.micro_batch);
  lh_error_clear();
}

static lh_status lh_pipe_train(struct lh_pipeline_s *p, const int64_t *ids, lh_pipe_run *run) {
  int m = p->cfg.micro_batches;
  if (p->stage > 0)
    LH_CHECK(lh_inbox_start(&p->fwd_in, m));
  if (!p->last)
    LH_CHECK(lh_inbox_start(&p->bwd_in, m));
  for (int a = 0; a < 2 * m; a++) {
    lh_pipe_action x = p->actions[a];
    const int64_t *mine = ids + (size_t)x.micro * p->cfg.micro_batch;
    if (x.op == LH_PIPE_FORWARD && x.micro + 1 < m) /* memory-mapped buffers: page the next rows in */
      lh_pipe_prefetch(p, mine + p->cfg.micro_batch);
    LH_CHECK(x.op == LH_PIPE_FORWARD ? lh_pipe_forward(p, x.micro, mine, run)
                                     : lh_pipe_backward(p, x.micro, mine, run));
  }
  LH_CHECK(lh_outbox_flush(&p->fwd_out));
  return lh_outbox_flush(&p->bwd_out);
}

/* After a failure part-way: the outstanding requests are dropped and the pipeline refuses
 * later calls (its stages are out of step). */
static lh_status lh_pipe_fail(struct lh_pipeline_s *p, lh_status st, const char *fn) {
  char detail[sizeof p->failed_reason];
  snprintf(detail, sizeof detail, "%s", lh_last_error());
  lh_inbox_abandon(&p->fwd_in);
  lh_inbox_abandon(&p->bwd_in);
  lh_outbox_abandon(&p->fwd_out);
  lh_outbox_abandon(&p->bwd_out);
  p->failed = st;
  snprintf(p->failed_reason, sizeof p->failed_reason, "%s", detail);
  return lh_error(st, "%s: %s", fn, detail);
}

static lh_status lh_pipe_usable(const struct lh_pipeline_s *p, const lh_pipeline_stats *stats, const char *fn) {
  if (!p)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: pipeline must not be NULL", fn);
  if (stats && stats->size < sizeof *stats)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: stats->size is %zu, expected %zu (start from LH_PIPELINE_STATS_INIT)",
                    fn, stats->size, sizeof *stats);
  if (p->failed != LH_SUCCESS)
    return lh_error(p->failed,
                    "%s: an earlier step failed and left the stages out of step (%s); free the pipeline and create "
                    "a new one",
                    fn, p->failed_reason);
  return LH_SUCCESS;
}

static void lh_pipe_report(const struct lh_pipeline_s *p, const lh_pipe_run *run, lh_pipeline_stats *s) {
  if (!s)
    return;
  *s = (lh_pipeline_stats)LH_PIPELINE_STATS_INIT;
  s->step_seconds = lh_now() - run->start;
  s->compute_seconds = run->compute;
  s->codec_seconds = run->codec;
  double wait = s->step_seconds - run->compute - run->codec;
  s->wait_seconds = wait > 0 ? wait : 0;
  s->has_loss = p->last;
  s->loss = p->last ? run->loss : 0;
  s->examples = run->examples;
  s->bytes_to_next = run->to_next;
  s->bytes_to_prev = run->to_prev;
  s->bytes_from_prev = run->from_prev;
  s->bytes_from_next = run->from_next;
  s->raw_bytes_sent = run->raw_sent;
  unsigned long long wire = run->to_next + run->to_prev;
  s->compression = wire ? (double)run->raw_sent / (double)wire : 1.0;
}

static int lh_pipe_cmp_id(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* AQ-SGD needs the ids of a micro-batch distinct. Its contexts check too, but only on the
 * stages that have one end of the boundary where the frame is refused; checked here, every
 * stage of the replica refuses the step before anything is sent. */
static lh_status lh_pipe_check_distinct(const struct lh_pipeline_s *p, const int64_t *ids) {
  size_t mb = p->cfg.micro_batch;
  if (p->cfg.stages == 1 || mb == 1)
    return LH_SUCCESS;
  int64_t *sorted = lh_malloc(mb * sizeof *sorted, "the id check");
  if (!sorted)
    return LH_ERR_OUT_OF_MEMORY;
  lh_status st = LH_SUCCESS;
  for (int k = 0; k < p->cfg.micro_batches && st == LH_SUCCESS; k++) {
    memcpy(sorted, ids + (size_t)k * mb, mb * sizeof *sorted);
    qsort(sorted, mb, sizeof *sorted, lh_pipe_cmp_id);
    for (size_t i = 1; i < mb && st == LH_SUCCESS; i++)
      if (sorted[i] == sorted[i - 1])
        st = lh_error(LH_ERR_INVALID_ARGUMENT,
                      "lh_pipeline_step: example id %lld appears twice in micro-batch %d (AQ-SGD keys its buffers "
                      "by id: the ids of a micro-batch must be distinct)",
                      (long long)sorted[i], k);
  }
  free(sorted);
  return st;
}

lh_status lh_pipeline_step(lh_pipeline pipeline, const int64_t *ids, lh_pipeline_stats *stats) {
  lh_error_clear();
  struct lh_pipeline_s *p = pipeline;
  LH_CHECK(lh_pipe_usable(p, stats, "lh_pipeline_step"));
  size_t total = (size_t)p->cfg.micro_batches * p->cfg.micro_batch;
  if (!ids)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_pipeline_step: ids must not be NULL (%d x %zu example ids)",
                    p->cfg.micro_batches, p->cfg.micro_batch);
  /* Every stage of a replica checks the same ids, so they refuse together (no stage waits). */
  for (size_t i = 0; i < total; i++)
    if (ids[i] < 0 || (uint64_t)ids[i] >= p->cfg.examples)
      return lh_error(LH_ERR_INVALID_ARGUMENT,
                      "lh_pipeline_step: ids[%zu] = %lld is outside 0 .. %zu (config.examples - 1)", i,
                      (long long)ids[i], p->cfg.examples - 1);
  LH_CHECK(lh_pipe_check_distinct(p, ids));
  lh_pipe_run run;
  memset(&run, 0, sizeof run);
  run.start = lh_now();
  run.examples = total;
  lh_status st = lh_pipe_train(p, ids, &run);
  if (st != LH_SUCCESS)
    st = lh_pipe_fail(p, st, "lh_pipeline_step");
  lh_pipe_report(p, &run, stats);
  return st;
}

/* ---- evaluation: forward only, float32 on the wire, no AQ-SGD buffer touched ---------------- */

static lh_status lh_pipe_eval_run(struct lh_pipeline_s *p, const int64_t *ids, size_t count, lh_inbox *in,
                                  lh_outbox *out, lh_pipe_run *run) {
  size_t mb = p->cfg.micro_batch;
  int batches = (int)((count + mb - 1) / mb);
  if (p->stage > 0)
    LH_CHECK(lh_inbox_start(in, batches));
  for (int k = 0; k < batches; k++) {
    size_t first = (size_t)k * mb, n = count - first < mb ? count - first : mb;
    lh_stage_call call = lh_pipe_call(p, k, 0, ids + first, n);
    if (p->stage > 0) {
      char *frame;
      size_t bytes;
      LH_CHECK(lh_inbox_next(in, &frame, &bytes));
      if (bytes != n * p->in_elems * sizeof(float))
        return lh_error(LH_ERR_MISMATCH,
                        "lh_pipeline_eval: stage %d got %zu bytes for micro-batch %d of %zu examples, expected %zu "
                        "(ranks of the replica passed different counts?)",
                        p->stage, bytes, k, n, n * p->in_elems * sizeof(float));
      run->from_prev += bytes;
      call.input = (const float *)frame;
    }
    int slot = 0;
    if (!p->last) {
      LH_CHECK(lh_outbox_acquire(out, &slot));
      call.output = (float *)out->bufs[slot]; /* the forward writes straight into the send frame */
    }
    LH_CHECK(lh_pipe_callback(p, 0, &call, run));
    if (p->stage > 0)
      LH_CHECK(lh_inbox_done(in));
    if (p->last) {
      run->loss += call.loss;
      continue;
    }
    size_t bytes = n * p->out_elems * sizeof(float);
    LH_CHECK(lh_outbox_send(out, slot, bytes));
    run->to_next += bytes;
    run->raw_sent += bytes;
  }
  return lh_outbox_flush(out);
}

lh_status lh_pipeline_eval(lh_pipeline pipeline, const int64_t *ids, size_t count, lh_pipeline_stats *stats) {
  lh_error_clear();
  struct lh_pipeline_s *p = pipeline;
  LH_CHECK(lh_pipe_usable(p, stats, "lh_pipeline_eval"));
  if (!ids && count > 0)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_pipeline_eval: ids is NULL with count %zu", count);
  if ((count + p->cfg.micro_batch - 1) / p->cfg.micro_batch > (size_t)INT_MAX / 2)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_pipeline_eval: %zu examples are too many micro-batches of %zu", count,
                    p->cfg.micro_batch);
  /* Frames of raw float32, in buffers of their own: an evaluation is rare, and the step's are
   * sized for compressed frames. Eval ids are not checked against config.examples: held-out
   * examples have no AQ-SGD buffer and need none. */
  lh_inbox in;
  lh_outbox out;
  memset(&in, 0, sizeof in);
  memset(&out, 0, sizeof out);
  lh_pipe_run run;
  memset(&run, 0, sizeof run);
  run.start = lh_now();
  run.examples = count;
  lh_status st = LH_SUCCESS;
  if (p->stage > 0) {
    st = lh_inbox_init(&in, 2, p->cfg.micro_batch * p->in_elems * sizeof(float));
    in.comm = p->replica_comm;
    in.peer = p->stage - 1;
    in.tag = LH_TAG_PIPELINE_FORWARD;
  }
  if (st == LH_SUCCESS && !p->last) {
    st = lh_outbox_init(&out, 1, p->cfg.micro_batch * p->out_elems * sizeof(float));
    out.comm = p->replica_comm;
    out.peer = p->stage + 1;
    out.tag = LH_TAG_PIPELINE_FORWARD;
  }
  if (st == LH_SUCCESS && count > 0) {
    st = lh_pipe_eval_run(p, ids, count, &in, &out, &run);
    if (st != LH_SUCCESS)
      st = lh_pipe_fail(p, st, "lh_pipeline_eval");
  }
  lh_inbox_free(&in);
  lh_outbox_free(&out);
  lh_pipe_report(p, &run, stats);
  return st;
}

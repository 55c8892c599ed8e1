/* train_gpt: a small GPT trained with pipeline and data parallelism over slow links.
 *
 *   mpirun -np 4 build/examples/train_gpt --links examples/links/demo4.links --pp 2 --dp 2
 *   LH_LINKS=examples/links/demo4.links mpirun -np 4 -x LH_LINKS build/examples/train_gpt ...
 *
 * The model (gpt.c): a byte-level decoder-only transformer; the data (data.c): the Debian
 * `fortunes` collection or any text file. The scheduler places P stages x D replicas on the
 * ranks from a link file (or from the probe's measurement), the pipeline runtime moves
 * activations forward and gradients backward through AQ-SGD, and each stage's replicas average
 * their gradients with the (compressed) all-reduce of an lh_reducer. AdamW then takes the same
 * step on every replica. Progress lines carry `loss=<number>`; a checkpoint is written every K
 * steps and on Ctrl-C, and --resume continues with identical results.
 *
 * Only the public Longhaul API, the model (BLAS) and libc are used. Run --help for the flags. */
#define _POSIX_C_SOURCE 200809L /* sigaction, popen, mkdir */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <longhaul/longhaul.h>

#include "checkpoint.h"
#include "data.h"
#include "gpt.h"
#include "optim.h"
#include "options.h"
#ifdef TRAIN_GPT_CUDA
#include "gpt_cuda.h"
#endif

/* ---- run state ------------------------------------------------------------------------------ */

typedef struct {
  options o;
  lh_comm world;
  int rank, size;
  data_corpus *data;
  lh_links *links; /* for the plan and the link classes; NULL when none */
  lh_plan *plan;
  lh_pipeline pipe;
  lh_comm stage_comm;
  lh_reducer reducer;
  int stage, replica, first_layer, last_layer;
  gpt_stage *model;       /* the CPU model; with a GPU, the host copy of parameters and gradients */
#ifdef TRAIN_GPT_CUDA
  gpt_cuda_stage *gpu;    /* the stage's compute when --device cuda */
  int gpu_device;         /* its CUDA device number, and name */
  char gpu_name[128];
#endif
  gpt_adamw adam;
  unsigned char *decay;
  lh_tensor *tensors;
  int ntensors;
  int *tokens, *targets; /* micro_batch x T scratch for the callbacks */
  int64_t shard_first, shard_count;
  int64_t *epoch_order;
  int epoch_loaded;
  int micro_batches;
  int on_gpu;            /* the model computes on a GPU (then `model` is its host mirror) */
  FILE *history;         /* rank 0: step, seconds, loss, val_loss */
} run;

static volatile sig_atomic_t interrupted = 0;
static void on_interrupt(int sig) {
  (void)sig;
  interrupted = 1;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* One sentence on stderr (from rank 0, or from any rank when r is NULL), then exit 1. */
static void die(const run *r, const char *fmt, ...) {
  if (!r || r->rank == 0) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "train_gpt: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
  }
  exit(1);
}

static void check(const run *r, lh_status st, const char *what) {
  if (st != LH_SUCCESS) {
    fprintf(stderr, "train_gpt[rank %d]: %s: %s: %s\n", r ? r->rank : -1, what, lh_status_string(st),
            lh_last_error());
    exit(1);
  }
}

/* ---- the stage callbacks ---------------------------------------------------------------------- */

static const char *model_error(const run *r) {
#ifdef TRAIN_GPT_CUDA
  if (r->gpu)
    return gpt_cuda_error();
#endif
  (void)r;
  return gpt_error();
}

/* With a GPU the host arrays are a mirror: gradients come down after the pipeline step,
 * parameters go up after the optimizer (the all-reduce and AdamW run on the host). */
static void model_sync(run *r, int grads_down, int params_up) {
#ifdef TRAIN_GPT_CUDA
  if (!r->gpu)
    return;
  if ((grads_down && gpt_cuda_stage_grads_to_host(r->gpu, gpt_stage_grads(r->model)) != 0) ||
      (params_up && gpt_cuda_stage_params_from_host(r->gpu, gpt_stage_params(r->model)) != 0))
    die(NULL, "rank %d: copying between the GPU and the host: %s", r->rank, gpt_cuda_error());
#else
  (void)r;
  (void)grads_down;
  (void)params_up;
#endif
}

static void model_zero_grad(run *r) {
#ifdef TRAIN_GPT_CUDA
  if (r->gpu && gpt_cuda_stage_zero_grad(r->gpu) != 0)
    die(NULL, "rank %d: %s", r->rank, gpt_cuda_error());
#endif
  gpt_stage_zero_grad(r->model);
}

static int slot_of(const run *r, const lh_stage_call *call) { return call->training ? call->micro : 0; }

static void fill_tokens(run *r, const lh_stage_call *call, data_split split) {
  int T = r->o.context;
  for (size_t e = 0; e < call->count; e++)
    data_example(r->data, split, call->ids[e], r->tokens + e * T, r->targets + e * T);
}

static lh_status forward(void *user, lh_stage_call *call) {
  run *r = user;
  data_split split = call->training ? DATA_TRAIN : DATA_VAL;
  int first = r->stage == 0, last = r->stage == r->o.pp - 1;
  if (first || last)
    fill_tokens(r, call, split);
  double loss = 0;
  int failed;
#ifdef TRAIN_GPT_CUDA
  if (r->gpu)
    failed = gpt_cuda_stage_forward(r->gpu, slot_of(r, call), (int)call->count, first ? r->tokens : NULL,
                                    call->input, call->output, last ? r->targets : NULL, &loss) != 0;
  else
#endif
    failed = gpt_stage_forward(r->model, slot_of(r, call), (int)call->count, first ? r->tokens : NULL, call->input,
                               call->output, last ? r->targets : NULL, &loss) != 0;
  if (failed) {
    fprintf(stderr, "train_gpt[rank %d]: the model's forward: %s\n", r->rank, model_error(r));
    return LH_ERR_INVALID_ARGUMENT;
  }
  if (last)
    call->loss = loss * (double)call->count; /* summed over examples: the runtime adds micro-batches */
  return LH_SUCCESS;
}

static lh_status backward(void *user, lh_stage_call *call) {
  run *r = user;
  int failed;
#ifdef TRAIN_GPT_CUDA
  if (r->gpu)
    failed = gpt_cuda_stage_backward(r->gpu, slot_of(r, call), (int)call->count, call->grad_output,
                                     call->grad_input, 1.0f / (float)r->micro_batches) != 0;
  else
#endif
    failed = gpt_stage_backward(r->model, slot_of(r, call), (int)call->count, call->grad_output, call->grad_input,
                                1.0f / (float)r->micro_batches) != 0;
  if (failed) {
    fprintf(stderr, "train_gpt[rank %d]: the model's backward: %s\n", r->rank, model_error(r));
    return LH_ERR_INVALID_ARGUMENT;
  }
  return LH_SUCCESS;
}

/* ---- placement --------------------------------------------------------------------------------- */

/* Bytes per element on the wire for the scheduler's model: what AQ-SGD and the codec send. */
static double grad_bytes_per_param(const options *o) {
  switch (o->grad.codec) {
  case LH_CODEC_NONE: return 4;
  case LH_CODEC_FP16:
  case LH_CODEC_BF16: return 2;
  case LH_CODEC_BLOCKQ: return o->grad.bits / 8.0 + 2.0 / 128; /* codes + one fp16 scale per block */
  case LH_CODEC_SIGN: return 1 / 8.0 + 4.0 / 128;
  case LH_CODEC_TOPK: return o->grad.density * 8; /* an index and a value per kept element */
  case LH_CODEC_POWERSGD: return 4.0 * 2 * o->grad.powersgd_rank / o->channels;
  default: return 4;
  }
}

/* Seconds of one layer's forward + backward on one micro-batch where the model computes (this
 * host's CPUs or its GPU, copies to and from the GPU included): the scheduler's speed 1.0. The
 * best of three, so the first call's set-up does not count. */
static double measure_layer_seconds(const run *r) {
  const options *o = &r->o;
  gpt_config cfg = {DATA_VOCAB, o->context, o->channels, o->heads, 1};
  gpt_stage *s = NULL;
#ifdef TRAIN_GPT_CUDA
  gpt_cuda_stage *g = NULL;
  if (r->on_gpu ? gpt_cuda_stage_create(&cfg, 0, 1, 0, 0, o->micro_batch, 1, 1, &g) != 0
                : gpt_stage_create(&cfg, 0, 1, 0, 0, o->micro_batch, 1, 1, &s) != 0)
    return 0.01;
#else
  if (gpt_stage_create(&cfg, 0, 1, 0, 0, o->micro_batch, 1, 1, &s) != 0)
    return 0.01;
#endif
  size_t n = (size_t)o->micro_batch * o->context * o->channels;
  float *x = calloc(n, sizeof(float)), *y = calloc(n, sizeof(float)), *gx = calloc(n, sizeof(float));
  double best = 1e9;
  int ok = x && y && gx;
  for (int rep = 0; rep < 3 && ok; rep++) {
    double t0 = now();
#ifdef TRAIN_GPT_CUDA
    if (g)
      ok = gpt_cuda_stage_forward(g, 0, o->micro_batch, NULL, x, y, NULL, NULL) == 0 &&
           gpt_cuda_stage_backward(g, 0, o->micro_batch, y, gx, 1) == 0;
    else
#endif
      ok = gpt_stage_forward(s, 0, o->micro_batch, NULL, x, y, NULL, NULL) == 0 &&
           gpt_stage_backward(s, 0, o->micro_batch, y, gx, 1) == 0;
    best = fmin(best, now() - t0);
  }
  free(x);
  free(y);
  free(gx);
  gpt_stage_free(s);
#ifdef TRAIN_GPT_CUDA
  gpt_cuda_stage_free(g);
#endif
  return ok && best < 1e9 ? best : 0.01;
}

static void plan_model(const options *o, lh_sched_model *m, double layer_seconds) {
  *m = (lh_sched_model)LH_SCHED_MODEL_DTFM;
  double C = o->channels;
  m->layers = o->layers;
  m->params_per_layer = 12 * C * C + 13 * C; /* attention 4C^2 + 4C, MLP 8C^2 + 5C, two norms 4C */
  m->activation_elements = (double)o->micro_batch * o->context * o->channels;
  m->micro_batches = o->micro_batches;
  m->activation_element_bytes = o->aq_mode == LH_AQ_OFF ? 4 : o->fw_bits / 8.0;
  m->activation_grad_element_bytes = o->aq_mode == LH_AQ_OFF ? 4 : o->bw_bits / 8.0;
  m->gradient_element_bytes = grad_bytes_per_param(o);
  m->layer_seconds = layer_seconds;
}

/* The plan: from --plan, or solved on rank 0 (the search's time budget could make ranks
 * differ) and sent to all. */
static void make_plan(run *r) {
  options *o = &r->o;
  if (o->plan_file) {
    check(r, lh_plan_read_file(o->plan_file, &r->plan), "reading the plan");
    return;
  }
  int n = r->size;
  int *grid = malloc(sizeof(int) * (size_t)(2 * n + 2));
  if (!grid)
    die(r, "out of memory");
  if (r->rank == 0) {
    lh_sched_config sc = LH_SCHED_CONFIG_INIT;
    sc.pp = o->pp;
    sc.dp = o->dp;
    sc.seed = o->seed;
    plan_model(o, &sc.model, measure_layer_seconds(r));
    lh_status st = lh_sched_solve(r->links, &sc, &r->plan);
    grid[0] = st == LH_SUCCESS;
    if (st != LH_SUCCESS)
      fprintf(stderr, "train_gpt: no plan for %d ranks as --pp %d --dp %d: %s\n", n, o->pp, o->dp, lh_last_error());
    lh_plan_info info = LH_PLAN_INFO_INIT;
    if (st == LH_SUCCESS)
      lh_plan_get_info(r->plan, &info);
    grid[1] = info.pp;
    for (int d = 0; st == LH_SUCCESS && d < n; d++)
      lh_plan_device(r->plan, d, &grid[2 + d], &grid[2 + n + d]);
  }
  check(r, lh_bcast(r->world, grid, sizeof(int) * (size_t)(2 * n + 2), 0), "sending the plan");
  if (!grid[0])
    exit(1); /* rank 0 said why */
  if (r->rank != 0)
    check(r, lh_plan_create(n, grid[1], n / grid[1], grid + 2, grid + 2 + n, &r->plan), "receiving the plan");
  free(grid);
}

/* ---- link classes ------------------------------------------------------------------------------ */

enum { MAX_CLASSES = 6 };

typedef struct {
  int count;
  double bandwidth[MAX_CLASSES]; /* bytes/s, ascending */
} link_classes;

/* Bandwidths within 10% are one class (measured links differ in their last digits): the
 * nearest class by ratio. */
static int class_of(const link_classes *lc, double bw) {
  int best = 0;
  for (int k = 1; k < lc->count; k++)
    if (fabs(log(bw / lc->bandwidth[k])) < fabs(log(bw / lc->bandwidth[best])))
      best = k;
  return best;
}

/* The distinct bandwidths of the links the plan uses (pipeline hops and rings), slowest first;
 * the same on every rank. */
static void find_classes(const run *r, link_classes *lc) {
  lc->count = 0;
  if (!r->links)
    return;
  lh_plan_info info = LH_PLAN_INFO_INIT;
  lh_plan_get_info(r->plan, &info);
  for (int s = 0; s < info.pp; s++)
    for (int i = 0; i < info.dp; i++) {
      int d, e[2] = {-1, -1};
      lh_plan_device_at(r->plan, s, i, &d);
      if (s + 1 < info.pp)
        lh_plan_device_at(r->plan, s + 1, i, &e[0]);
      if (info.dp > 1)
        lh_plan_device_at(r->plan, s, (i + 1) % info.dp, &e[1]);
      for (int k = 0; k < 2; k++) {
        if (e[k] < 0)
          continue;
        double a, bw;
        lh_links_get(r->links, d, e[k], &a, &bw);
        int known = 0;
        for (int c = 0; c < lc->count; c++)
          known |= fabs(log(bw / lc->bandwidth[c])) < log(1.1);
        if (!known && lc->count < MAX_CLASSES) {
          int at = lc->count++;
          while (at > 0 && lc->bandwidth[at - 1] > bw) {
            lc->bandwidth[at] = lc->bandwidth[at - 1];
            at--;
          }
          lc->bandwidth[at] = bw;
        }
      }
    }
}

/* "25M", "100M", "9.6G": three significant digits name a class (two would print 100 as 1e+02). */
static void format_bandwidth(double Bps, char *out, size_t cap) {
  double bits = Bps * 8;
  if (bits >= 1e9)
    snprintf(out, cap, "%.3gG", bits / 1e9);
  else
    snprintf(out, cap, "%.3gM", bits / 1e6);
}

/* ---- setup ------------------------------------------------------------------------------------- */

#ifdef TRAIN_GPT_CUDA
/* This rank's index among the ranks on its host (by host name), so that ranks sharing a host
 * with several GPUs take one each (the order LH_BIND=gpu assumes too). */
static int local_rank(const run *r) {
  char mine[256], other[256];
  int k = 0;
  check(r, lh_comm_host(r->world, r->rank, mine, sizeof mine), "this rank's host name");
  for (int i = 0; i < r->rank; i++) {
    check(r, lh_comm_host(r->world, i, other, sizeof other), "a rank's host name");
    k += strcmp(mine, other) == 0;
  }
  return k;
}
#endif

/* Where the model computes (--device), settled before anything slow: a --device cuda that
 * cannot be had is refused before the probe runs. */
static void choose_device(run *r) {
  const options *o = &r->o;
#ifdef TRAIN_GPT_CUDA
  r->on_gpu = o->device == 1 || (o->device == 0 && gpt_cuda_device_count() > 0);
  if (o->device == 1 && gpt_cuda_device_count() <= 0)
    die(NULL, "rank %d: --device cuda, but this host has no usable CUDA device", r->rank);
  if (r->on_gpu && (r->gpu_device = gpt_cuda_use_device(local_rank(r), r->gpu_name, sizeof r->gpu_name)) < 0)
    die(NULL, "rank %d: choosing a GPU: %s", r->rank, gpt_cuda_error());
#else
  if (o->device == 1)
    die(r, "--device cuda: this train_gpt was built without CUDA (configure with -DLH_WITH_CUDA=ON)");
#endif
}

static void setup_stage(run *r) {
  options *o = &r->o;
  lh_plan_info info = LH_PLAN_INFO_INIT;
  check(r, lh_plan_get_info(r->plan, &info), "the plan");
  o->pp = info.pp;
  o->dp = info.dp;
  check(r, lh_plan_device(r->plan, r->rank, &r->stage, &r->replica), "this rank's place in the plan");
  int *layers = malloc(sizeof(int) * (size_t)o->pp);
  lh_sched_model model;
  plan_model(o, &model, 0.01);
  if (!layers)
    die(r, "out of memory");
  check(r, lh_plan_stage_layers(r->plan, &model, layers, o->pp), "splitting the layers over the stages");
  r->first_layer = 0;
  for (int s = 0; s < r->stage; s++)
    r->first_layer += layers[s];
  r->last_layer = r->first_layer + layers[r->stage];
  free(layers);
  gpt_config cfg = {DATA_VOCAB, o->context, o->channels, o->heads, o->layers};
  r->micro_batches = o->micro_batches;
  const int on_gpu = r->on_gpu;
  /* With a GPU the CPU stage only mirrors parameters and gradients: one slot of one example. */
  if (gpt_stage_create(&cfg, r->first_layer, r->last_layer, r->stage == 0, r->stage == o->pp - 1,
                       on_gpu ? 1 : o->micro_batch, on_gpu ? 1 : o->micro_batches, o->seed, &r->model) != 0)
    die(r, "the model: %s", gpt_error());
#ifdef TRAIN_GPT_CUDA
  if (on_gpu && gpt_cuda_stage_create(&cfg, r->first_layer, r->last_layer, r->stage == 0, r->stage == o->pp - 1,
                                      o->micro_batch, o->micro_batches, o->seed, &r->gpu) != 0)
    die(NULL, "rank %d: the model on the GPU: %s", r->rank, gpt_cuda_error());
#endif
  size_t n = gpt_stage_param_count(r->model);
  r->decay = malloc(n ? n : 1);
  if (!r->decay || gpt_adamw_init(&r->adam, n) != 0)
    die(r, "out of memory for the optimizer");
  gpt_stage_decay_mask(r->model, r->decay);
  /* One reducer tensor per parameter tensor: PowerSGD factors each matrix (rows = count / C). */
  r->ntensors = (int)gpt_stage_tensor_count(r->model);
  r->tensors = calloc((size_t)r->ntensors + 1, sizeof(lh_tensor));
  if (!r->tensors)
    die(r, "out of memory");
  float *grads = gpt_stage_grads(r->model);
  for (int i = 0; i < r->ntensors; i++) {
    gpt_tensor_info t;
    gpt_stage_tensor(r->model, (size_t)i, &t);
    lh_tensor *x = &r->tensors[i];
    x->size = sizeof(lh_tensor);
    x->key = (uint64_t)i + 1;
    x->data = grads + t.offset;
    x->count = t.count;
    x->rows = t.decay && t.count % (size_t)o->channels == 0 ? t.count / (size_t)o->channels : 1;
  }
  r->tokens = malloc(sizeof(int) * (size_t)o->micro_batch * o->context);
  r->targets = malloc(sizeof(int) * (size_t)o->micro_batch * o->context);
  if (!r->tokens || !r->targets)
    die(r, "out of memory");
}

static void setup_pipeline(run *r) {
  options *o = &r->o;
  int64_t total = data_train_examples(r->data);
  if (o->examples > 0 && o->examples < total)
    total = o->examples;
  int64_t per_step = (int64_t)o->micro_batches * o->micro_batch;
  r->shard_count = total / o->dp;
  r->shard_first = r->replica * r->shard_count;
  if (r->shard_count < per_step)
    die(r, "%lld training examples make shards of %lld per replica, fewer than one step's %lld "
           "(--micro-batches x --micro-batch); use more data or smaller batches",
        (long long)total, (long long)r->shard_count, (long long)per_step);
  r->epoch_order = malloc(sizeof(int64_t) * (size_t)r->shard_count);
  if (!r->epoch_order)
    die(r, "out of memory");
  r->epoch_loaded = -1;

  int *stage_of = malloc(sizeof(int) * (size_t)r->size), *replica_of = malloc(sizeof(int) * (size_t)r->size);
  size_t *widths = malloc(sizeof(size_t) * (size_t)(o->pp > 1 ? o->pp : 1));
  if (!stage_of || !replica_of || !widths)
    die(r, "out of memory");
  check(r, lh_plan_placement(r->plan, stage_of, replica_of, r->size), "the plan's placement");
  for (int k = 0; k + 1 < o->pp; k++)
    widths[k] = (size_t)o->channels;
  lh_pipeline_config pc = LH_PIPELINE_CONFIG_INIT;
  pc.stages = o->pp;
  pc.replicas = o->dp;
  pc.stage_of_rank = stage_of;
  pc.replica_of_rank = replica_of;
  pc.micro_batches = o->micro_batches;
  pc.micro_batch = (size_t)o->micro_batch;
  pc.examples = (size_t)(r->shard_count * o->dp);
  pc.tokens = (size_t)o->context;
  pc.boundary_channels = widths;
  pc.schedule = o->schedule;
  pc.aq.mode = o->aq_mode;
  /* Uncompressed means fp32 on the wire (the runtime's OFF sends rows in the storage type). */
  if (o->aq_mode == LH_AQ_OFF)
    pc.aq.storage = LH_AQ_FP32;
  pc.aq.forward_bits = o->fw_bits;
  pc.aq.backward_bits = o->bw_bits;
  pc.aq.seed = o->seed;
  pc.forward = forward;
  pc.backward = backward;
  pc.user = r;
  check(r, lh_pipeline_create(r->world, &pc, &r->pipe), "creating the pipeline");
  free(stage_of);
  free(replica_of);
  free(widths);
  check(r, lh_pipeline_stage_comm(r->pipe, &r->stage_comm), "the stage communicator");
  if (o->dp > 1)
    check(r, lh_reducer_create(r->stage_comm, &o->grad, &r->reducer), "the gradient all-reduce");
}

/* ---- checkpoints -------------------------------------------------------------------------------- */

static uint64_t config_hash(const run *r) {
  const options *o = &r->o;
  int64_t v[] = {o->context, o->channels, o->heads, o->layers, o->pp, o->dp, o->micro_batches, o->micro_batch,
                 (int64_t)o->seed, o->aq_mode, o->fw_bits, o->bw_bits, o->grad.codec, o->grad.bits,
                 (int64_t)(o->grad.density * 1e9), o->grad.powersgd_rank, o->schedule, r->shard_count,
                 (int64_t)data_hash(r->data)};
  uint64_t h = 1469598103934665603ULL;
  const unsigned char *p = (const unsigned char *)v;
  for (size_t i = 0; i < sizeof v; i++)
    h = (h ^ p[i]) * 1099511628211ULL;
  return h;
}

static void aq_stores(const run *r, lh_aq_store *prev, lh_aq_store *next) {
  lh_aq_receiver from_prev = NULL;
  lh_aq_sender to_next = NULL;
  *prev = *next = NULL;
  check(r, lh_pipeline_aq(r->pipe, &from_prev, &to_next), "the pipeline's AQ-SGD contexts");
  if (from_prev)
    check(r, lh_aq_receiver_store(from_prev, prev), "the receiver's store");
  if (to_next)
    check(r, lh_aq_sender_store(to_next, next), "the sender's store");
}

/* The library's part of a checkpoint, this rank's files in dir: the AQ-SGD stores of the
 * boundaries before and after its stage, and the all-reduce's error feedback. */
static void library_state(run *r, const char *dir, int save) {
  char path[4200];
  lh_aq_store stores[2];
  const char *names[2] = {"aq-prev", "aq-next"};
  aq_stores(r, &stores[0], &stores[1]);
  for (int k = 0; k < 2; k++) {
    if (!stores[k])
      continue;
    ckpt_path(path, sizeof path, dir, r->rank, names[k]);
    check(r, save ? lh_aq_store_save(stores[k], path) : lh_aq_store_load(stores[k], path),
          save ? "saving the AQ-SGD buffers" : "loading the AQ-SGD buffers");
  }
  if (r->reducer) {
    ckpt_path(path, sizeof path, dir, r->rank, "reducer");
    check(r, save ? lh_reducer_save(r->reducer, path) : lh_reducer_load(r->reducer, path),
          save ? "saving the all-reduce's error feedback" : "loading the all-reduce's error feedback");
  }
}

/* Every rank writes its files into DIR/step-N; after a barrier rank 0 points DIR/latest at it. */
static void save_checkpoint(run *r, int64_t step, double seconds) {
  char dir[4096], path[4200], err[512], name[64];
  snprintf(name, sizeof name, "step-%06lld", (long long)step);
  snprintf(dir, sizeof dir, "%s/%s", r->o.checkpoint_dir, name);
  if (ckpt_mkdir(r->o.checkpoint_dir) != 0 || ckpt_mkdir(dir) != 0)
    die(r, "cannot create the checkpoint directory %s: %s", dir, strerror(errno));
  ckpt_header h = {config_hash(r), step, seconds, r->adam.step};
  ckpt_path(path, sizeof path, dir, r->rank, "model");
  if (ckpt_write_model(path, &h, gpt_stage_params(r->model), r->adam.m, r->adam.v, r->adam.n, err, sizeof err) != 0)
    die(NULL, "rank %d: %s", r->rank, err);
  library_state(r, dir, 1);
  check(r, lh_barrier(r->world), "waiting for every rank's checkpoint");
  if (r->rank == 0) {
    if (ckpt_write_latest(r->o.checkpoint_dir, name, err, sizeof err) != 0)
      die(r, "%s", err);
    printf("checkpoint %s/%s written (step %lld)\n", r->o.checkpoint_dir, name, (long long)step);
    fflush(stdout);
  }
}

/* Returns the steps done of the checkpoint loaded and sets *seconds. */
static int64_t load_checkpoint(run *r, double *seconds) {
  char name[256] = {0}, dir[4096], path[4200], err[512];
  /* Rank 0's DIR/latest names the checkpoint for everyone: the other hosts need only their
   * own rank files, not a shared file system. */
  int ok = r->rank != 0 || ckpt_read_latest(r->o.checkpoint_dir, name, sizeof name, err, sizeof err) == 0;
  if (!ok) {
    fprintf(stderr, "train_gpt: %s\n", err);
    name[0] = 0;
  }
  check(r, lh_bcast(r->world, name, sizeof name, 0), "agreeing on the checkpoint");
  if (!name[0])
    exit(1);
  snprintf(dir, sizeof dir, "%s/%s", r->o.checkpoint_dir, name);
  ckpt_header h;
  ckpt_path(path, sizeof path, dir, r->rank, "model");
  if (ckpt_read_model(path, &h, gpt_stage_params(r->model), r->adam.m, r->adam.v, r->adam.n, err, sizeof err) != 0)
    die(NULL, "rank %d: %s", r->rank, err);
  if (h.config_hash != config_hash(r))
    die(r, "the checkpoint %s was written by a run with other flags, data or placement; resume with the same ones",
        dir);
  r->adam.step = h.adam_step;
  library_state(r, dir, 0);
  model_sync(r, 0, 1);
  *seconds = h.seconds;
  return h.step;
}

/* ---- evaluation ----------------------------------------------------------------------------------- */

/* The validation loss of the model as it is (uncompressed forward over the first
 * --val-examples validation examples); every rank gets it. */
static double validation_loss(run *r) {
  int64_t n = r->o.val_examples;
  if (n > data_val_examples(r->data))
    n = data_val_examples(r->data);
  /* The pipeline keys examples by id within its range; validation ids index the validation
   * split, and evaluation touches no AQ-SGD buffer. */
  if ((size_t)n > (size_t)(r->shard_count * r->o.dp))
    n = r->shard_count * r->o.dp;
  int64_t *ids = malloc(sizeof(int64_t) * (size_t)n);
  if (!ids)
    die(r, "out of memory");
  for (int64_t i = 0; i < n; i++)
    ids[i] = i;
  lh_pipeline_stats st = LH_PIPELINE_STATS_INIT;
  check(r, lh_pipeline_eval(r->pipe, ids, (size_t)n, &st), "the validation pass");
  free(ids);
  /* Replica 0's last stage has the sum; everyone learns it. */
  float v[2] = {st.has_loss && r->replica == 0 ? (float)st.loss : 0.0f, st.has_loss && r->replica == 0 ? (float)n : 0};
  check(r, lh_allreduce(r->world, v, v, 2, NULL), "collecting the validation loss");
  return v[1] > 0 ? v[0] / v[1] : NAN;
}

/* ---- the training loop --------------------------------------------------------------------------- */

static float learning_rate(const options *o, int64_t step) {
  if (step < o->warmup_steps)
    return o->lr * (float)(step + 1) / (float)o->warmup_steps;
  double progress = o->steps > o->warmup_steps ? (double)(step - o->warmup_steps) / (o->steps - o->warmup_steps) : 1;
  return o->min_lr + (o->lr - o->min_lr) * (float)(0.5 * (1 + cos(3.14159265358979323846 * fmin(progress, 1))));
}

/* What a progress line sums over the ranks since the last one, in one all-reduce: times,
 * bytes and the stop flag at fixed places, then each replica's training loss and examples in
 * places of their own (S_COUNT + replica, S_COUNT + dp + replica). Alone in its place, a loss
 * passes the world's sum exactly, and rank 0 adds the replicas in their order, so the printed
 * loss does not depend on which ranks the plan put the last stage on. */
enum {
  S_STEP, S_COMPUTE, S_WAIT, S_CODEC, S_DP, S_RAW, S_WIRE, S_STOP, S_CLASS0,
  S_COUNT = S_CLASS0 + MAX_CLASSES
};

/* Rank 0's totals over this run's steps, for the summary at the end (sums over the ranks). */
typedef struct {
  double sum[S_COUNT];
  int64_t steps;
  double last_loss, best_val;
  int64_t best_step;
} run_totals;

/* " MB/step 25M:3.83 1G:8.39": the bytes sent per step on each link class. */
static void print_class_mb(const link_classes *lc, const double *class_bytes, double steps) {
  if (!lc->count)
    return;
  printf(" MB/step");
  for (int k = 0; k < lc->count; k++) {
    char bw[32];
    format_bandwidth(lc->bandwidth[k], bw, sizeof bw);
    printf(" %s:%.2f", bw, class_bytes[k] / 1e6 / steps);
  }
}

static void print_summary(const run *r, const run_totals *t, const link_classes *lc, int64_t tokens_per_step) {
  const double *x = t->sum;
  const double n = (double)(t->steps ? t->steps : 1), ranks = r->size, step_s = x[S_STEP] / ranks / n;
  printf("summary  %lld steps this run: final loss=%.4f", (long long)t->steps, t->last_loss);
  if (t->best_step > 0)
    printf(", best val=%.4f at step %lld", t->best_val, (long long)t->best_step);
  printf(", %.0f tok/s\n         step %.3fs (compute %.3f wait %.3f codec %.3f dp %.3f)",
         (double)tokens_per_step / step_s, step_s, x[S_COMPUTE] / ranks / n, x[S_WAIT] / ranks / n,
         x[S_CODEC] / ranks / n, x[S_DP] / ranks / n);
  print_class_mb(lc, x + S_CLASS0, n);
  printf(", %.1f MB sent in all, compression x%.1f\n", x[S_WIRE] / 1e6, x[S_WIRE] > 0 ? x[S_RAW] / x[S_WIRE] : 1.0);
}

static void train(run *r, int64_t start, double seconds_before) {
  options *o = &r->o;
  int64_t per_step = (int64_t)o->micro_batches * o->micro_batch;
  int64_t steps_per_epoch = r->shard_count / per_step;
  size_t n = gpt_stage_param_count(r->model);
  float *params = gpt_stage_params(r->model), *grads = gpt_stage_grads(r->model);
  link_classes lc;
  find_classes(r, &lc);
  /* The links this rank sends on, by class: to the next stage, the previous one, and its ring. */
  int to_next = -1, to_prev = -1, ring = -1, d;
  if (lc.count) {
    double a, bw;
    if (r->stage + 1 < o->pp && lh_plan_device_at(r->plan, r->stage + 1, r->replica, &d) == LH_SUCCESS &&
        lh_links_get(r->links, r->rank, d, &a, &bw) == LH_SUCCESS)
      to_next = class_of(&lc, bw);
    if (r->stage > 0 && lh_plan_device_at(r->plan, r->stage - 1, r->replica, &d) == LH_SUCCESS &&
        lh_links_get(r->links, r->rank, d, &a, &bw) == LH_SUCCESS)
      to_prev = class_of(&lc, bw);
    if (o->dp > 1 && lh_plan_device_at(r->plan, r->stage, (r->replica + 1) % o->dp, &d) == LH_SUCCESS &&
        lh_links_get(r->links, r->rank, d, &a, &bw) == LH_SUCCESS)
      ring = class_of(&lc, bw);
  }
  const size_t nsums = S_COUNT + 2 * (size_t)o->dp;
  float *sums = calloc(nsums, sizeof(float));
  if (!sums)
    die(r, "out of memory");
  float *loss_at = sums + S_COUNT, *examples_at = loss_at + o->dp;
  int since = 0;
  double run_start = now() - seconds_before, last_val = NAN;
  run_totals totals = {.last_loss = NAN, .best_val = INFINITY};
  int stopped = 0;
  unsigned long long dp_wire_before = 0, dp_raw_before = 0;
  for (int64_t step = start; step < o->steps; step++) {
    int epoch = (int)(step / steps_per_epoch);
    if (epoch != r->epoch_loaded) {
      data_shuffle(o->seed, epoch, r->shard_first, r->shard_count, r->epoch_order);
      r->epoch_loaded = epoch;
    }
    const int64_t *ids = r->epoch_order + (step % steps_per_epoch) * per_step;
    double t0 = now();
    model_zero_grad(r);
    lh_pipeline_stats ps = LH_PIPELINE_STATS_INIT;
    check(r, lh_pipeline_step(r->pipe, ids, &ps), "a pipeline step");
    model_sync(r, 1, 0);
    double t1 = now();
    if (r->reducer) /* the replicas' mean gradient */
      check(r, lh_reducer_allreduce(r->reducer, r->tensors, r->ntensors), "the gradient all-reduce");
    double t2 = now();
    /* Clipped per stage (a global norm would cost a round trip through the pipeline every
     * step): each stage's share of the limit is limit / sqrt(P). */
    if (o->clip > 0)
      gpt_grad_scale(grads, n, gpt_clip_factor(gpt_grad_sumsq(grads, n), o->clip / sqrt((double)o->pp)));
    gpt_adamw_hparams hp = {learning_rate(o, step), 0.9f, 0.95f, 1e-8f, o->weight_decay};
    gpt_adamw_step(&r->adam, params, grads, r->decay, &hp);
    model_sync(r, 0, 1);
    double t3 = now();

    loss_at[r->replica] += ps.has_loss ? (float)ps.loss : 0;
    examples_at[r->replica] += ps.has_loss ? (float)ps.examples : 0;
    sums[S_STEP] += (float)(t3 - t0);
    sums[S_COMPUTE] += (float)(ps.compute_seconds + (t3 - t2));
    sums[S_WAIT] += (float)ps.wait_seconds;
    sums[S_CODEC] += (float)ps.codec_seconds;
    sums[S_DP] += (float)(t2 - t1);
    unsigned long long dp_wire = 0, dp_raw = 0;
    if (r->reducer) {
      lh_reducer_stats rs = LH_REDUCER_STATS_INIT;
      lh_reducer_get_stats(r->reducer, &rs);
      dp_wire = rs.wire_bytes - dp_wire_before;
      dp_raw = rs.raw_bytes - dp_raw_before;
      dp_wire_before = rs.wire_bytes;
      dp_raw_before = rs.raw_bytes;
    }
    sums[S_RAW] += (float)(ps.raw_bytes_sent + dp_raw);
    sums[S_WIRE] += (float)(ps.bytes_to_next + ps.bytes_to_prev + dp_wire);
    if (to_next >= 0)
      sums[S_CLASS0 + to_next] += (float)ps.bytes_to_next;
    if (to_prev >= 0)
      sums[S_CLASS0 + to_prev] += (float)ps.bytes_to_prev;
    if (ring >= 0)
      sums[S_CLASS0 + ring] += (float)dp_wire;
    since++;

    int last = step + 1 == o->steps;
    int log_now = (step + 1) % o->log_every == 0 || last;
    int eval_now = (o->eval_every > 0 && (step + 1) % o->eval_every == 0) || last;
    int ckpt_now = o->checkpoint_every > 0 && (step + 1) % o->checkpoint_every == 0 && !last;
    if (!log_now && !eval_now && !ckpt_now)
      continue;
    /* One all-reduce over the world for the line (and to agree on Ctrl-C). */
    sums[S_STOP] = interrupted ? 1.0f : 0.0f;
    check(r, lh_allreduce(r->world, sums, sums, nsums, NULL), "collecting the progress line");
    int stop = sums[S_STOP] > 0;
    if (eval_now)
      last_val = validation_loss(r);
    double elapsed = now() - run_start;
    if (r->rank == 0) {
      double loss_sum = 0, examples = 0;
      for (int i = 0; i < o->dp; i++) {
        loss_sum += loss_at[i];
        examples += examples_at[i];
      }
      double loss = examples > 0 ? loss_sum / examples : NAN;
      double step_s = sums[S_STEP] / r->size / since;
      double tokens = (double)per_step * o->dp * o->context;
      if (!o->quiet) {
        printf("step %5lld/%d epoch %5.2f loss=%.4f", (long long)step + 1, o->steps,
               (double)(step + 1) / steps_per_epoch, loss);
        if (eval_now)
          printf(" val=%.4f", last_val);
        printf(" tok/s %7.0f step %.3fs (compute %.3f wait %.3f codec %.3f dp %.3f)", tokens / step_s, step_s,
               sums[S_COMPUTE] / r->size / since, sums[S_WAIT] / r->size / since, sums[S_CODEC] / r->size / since,
               sums[S_DP] / r->size / since);
        double class_bytes[MAX_CLASSES];
        for (int k = 0; k < lc.count; k++)
          class_bytes[k] = sums[S_CLASS0 + k];
        print_class_mb(&lc, class_bytes, since);
        printf(" x%.1f\n", sums[S_WIRE] > 0 ? sums[S_RAW] / sums[S_WIRE] : 1.0);
        fflush(stdout);
      }
      for (int k = 0; k < S_COUNT; k++)
        totals.sum[k] += sums[k];
      totals.steps += since;
      totals.last_loss = loss;
      if (eval_now && last_val < totals.best_val) {
        totals.best_val = last_val;
        totals.best_step = step + 1;
      }
      if (r->history) {
        fprintf(r->history, "%lld,%.3f,%.6f,%s", (long long)step + 1, elapsed, loss, "");
        if (eval_now)
          fprintf(r->history, "%.6f", last_val);
        fprintf(r->history, "\n");
        fflush(r->history);
      }
    }
    memset(sums, 0, nsums * sizeof *sums);
    since = 0;
    if (ckpt_now || stop)
      save_checkpoint(r, step + 1, elapsed);
    if (stop) {
      if (r->rank == 0)
        printf("stopped by Ctrl-C after step %lld; resume with --resume\n", (long long)step + 1);
      stopped = 1;
      break;
    }
  }
  if (r->rank == 0 && totals.steps > 0 && !stopped)
    print_summary(r, &totals, &lc, per_step * o->dp * o->context);
  free(sums);
}

/* ---- what the user sees -------------------------------------------------------------------------- */

static void banner(run *r) {
  const options *o = &r->o;
  int hosts = 1, simulated = 0;
  char sim[256] = "";
  lh_comm_host_count(r->world, &hosts);
  lh_comm_simulation(r->world, &simulated, sim, sizeof sim);
  lh_plan_info info = LH_PLAN_INFO_INIT;
  lh_plan_get_info(r->plan, &info);
  if (r->rank != 0)
    return;
  printf("train_gpt (Longhaul %s): %s, %d ranks on %d host%s, %s\n", LH_VERSION_STRING, o->name, r->size, hosts,
         hosts == 1 ? "" : "s", simulated ? sim : "real links");
  if (o->quiet)
    return;
  char where[192] = "CPUs (OpenBLAS)";
#ifdef TRAIN_GPT_CUDA
  if (r->gpu)
    snprintf(where, sizeof where, "GPUs with cuBLAS (rank 0: device %d, %s)", r->gpu_device, r->gpu_name);
#endif
  printf("  model    %d layers x %d channels x %d heads, context %d, %zu parameters on this rank's stage, on %s\n",
         o->layers, o->channels, o->heads, o->context, gpt_stage_param_count(r->model), where);
  printf("  data     %s: %zu bytes, %lld training examples (%lld per replica), %lld validation\n",
         data_source(r->data), data_size(r->data), (long long)(r->shard_count * o->dp), (long long)r->shard_count,
         (long long)data_val_examples(r->data));
  printf("  plan     %d stages x %d replicas%s; predicted %.3f s per step (pp %.3f + dp %.3f), lower bound %.3f\n",
         info.pp, info.dp, o->plan_file ? " (from --plan)" : "", info.cost, info.pp_cost, info.dp_cost,
         info.lower_bound);
  for (int s = 0; s < info.pp; s++) {
    printf("           stage %d:", s);
    for (int i = 0; i < info.dp; i++) {
      int d;
      lh_plan_device_at(r->plan, s, i, &d);
      printf(" rank %d", d);
    }
    printf("\n");
  }
  if (o->aq_mode == LH_AQ_OFF)
    printf("  codecs   activations fp32 (AQ-SGD off), gradients %s\n", o->grad_name);
  else
    printf("  codecs   AQ-SGD %d-bit forward / %d-bit backward, gradients %s\n", o->fw_bits, o->bw_bits,
           o->grad_name);
  if (r->links) {
    int n;
    double amin = 1e300, amax = 0, bmin = 1e300, bmax = 0;
    lh_links_devices(r->links, &n);
    for (int i = 0; i < n; i++)
      for (int j = 0; j < n; j++)
        if (i != j) {
          double a, b;
          lh_links_get(r->links, i, j, &a, &b);
          amin = fmin(amin, a);
          amax = fmax(amax, a);
          bmin = fmin(bmin, b);
          bmax = fmax(bmax, b);
        }
    printf("  links    %d devices, latency %.1f-%.1f ms, bandwidth %.0f-%.0f Mbit/s%s\n", n, amin * 1e3, amax * 1e3,
           bmin * 8e-6, bmax * 8e-6, o->links ? "" : " (measured by the probe)");
  }
  printf("  training %d steps of %d micro-batches x %d examples per replica, %s, lr %g -> %g, seed %llu\n", o->steps,
         o->micro_batches, o->micro_batch, o->schedule == LH_SCHEDULE_GPIPE ? "GPipe" : "1F1B", o->lr, o->min_lr,
         (unsigned long long)o->seed);
  fflush(stdout);
}

/* gnuplot, when installed: loss against wall time. */
static void plot(const options *o) {
  if (!o->plot || !o->history)
    return;
  if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
    printf("no plot: gnuplot is not installed (apt-get install gnuplot-nox); the numbers are in %s\n", o->history);
    return;
  }
  FILE *g = popen("gnuplot", "w");
  if (!g)
    return;
  fprintf(g,
          "set terminal pngcairo size 900,500 noenhanced\n"
          "set output '%s'\nset datafile separator ','\nset key top right\n"
          "set title '%s: loss against wall time'\nset xlabel 'wall time (s)'\nset ylabel 'loss (nats per byte)'\n"
          "plot '%s' using 2:3 with lines lw 2 title 'training', '' using 2:($4 > 0 ? $4 : 1/0) with linespoints "
          "pt 7 title 'validation'\n",
          o->plot, o->name, o->history);
  if (pclose(g) == 0)
    printf("plot: %s\n", o->plot);
  else
    printf("no plot: gnuplot failed; the numbers are in %s\n", o->history);
}

int main(int argc, char **argv) {
  static run r;
  const char *env_rank = getenv("OMPI_COMM_WORLD_RANK");
  int speak = !env_rank || !strcmp(env_rank, "0");
  int parsed = options_parse(argc, argv, &r.o, speak);
  if (parsed == 1)
    return 0;
  if (parsed != 0)
    return 2;
  options *o = &r.o;
  lh_comm_config cc = LH_COMM_CONFIG_INIT;
  check(NULL, lh_comm_create(&cc, &r.world), "creating the communicator");
  lh_comm_rank(r.world, &r.rank);
  lh_comm_size(r.world, &r.size);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_interrupt;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);

  choose_device(&r);
  if ((o->data ? data_load(o->data, o->context, &r.data) : data_load_fortunes(NULL, o->context, &r.data)) != 0)
    die(&r, "%s", data_error());
  if (o->pp > 0 && o->dp > 0 && o->pp * o->dp != r.size)
    die(&r, "--pp %d x --dp %d = %d, but there are %d ranks; run mpirun -np %d", o->pp, o->dp, o->pp * o->dp, r.size,
        o->pp * o->dp);
  if (o->links) {
    check(&r, lh_links_read_file(o->links, &r.links), "reading the link file");
    int n;
    lh_links_devices(r.links, &n);
    if (n != r.size)
      die(&r, "%s describes %d devices but there are %d ranks; run mpirun -np %d", o->links, n, r.size, n);
  } else if (!o->plan_file) {
    if (r.rank == 0 && !o->quiet)
      printf("no --links: measuring the links with the probe...\n");
    lh_probe_config pc = LH_PROBE_CONFIG_INIT;
    pc.target_seconds = 0.05;
    check(&r, lh_probe_links(r.world, &pc, &r.links), "measuring the links");
  }
  make_plan(&r);
  setup_stage(&r);
  setup_pipeline(&r);
  int64_t start = 0;
  double seconds = 0;
  if (o->resume) {
    start = load_checkpoint(&r, &seconds);
    if (r.rank == 0)
      printf("resuming after step %lld from %s\n", (long long)start, o->checkpoint_dir);
  }
  banner(&r);
  if (r.rank == 0 && o->history) {
    r.history = fopen(o->history, o->resume ? "a" : "w");
    if (!r.history)
      die(&r, "cannot write %s: %s", o->history, strerror(errno));
    fseek(r.history, 0, SEEK_END);
    if (ftell(r.history) == 0) /* a new file (a resumed run appends to its own) */
      fprintf(r.history, "step,seconds,loss,val_loss\n");
  }
  double t0 = now();
  train(&r, start, seconds);
  double wall = now() - t0 + seconds;
  if (r.rank == 0) {
    if (r.history)
      fclose(r.history);
    if (!interrupted) {
      printf("done: %d steps in %.1f s (%.1f s this run); results in %s\n", o->steps, wall, now() - t0,
             o->history ? o->history : "(no history)");
      plot(o);
    }
  }
  lh_reducer_free(r.reducer);
  lh_pipeline_free(r.pipe);
#ifdef TRAIN_GPT_CUDA
  gpt_cuda_stage_free(r.gpu);
#endif
  gpt_stage_free(r.model);
  gpt_adamw_destroy(&r.adam);
  lh_plan_free(r.plan);
  lh_links_free(r.links);
  data_free(r.data);
  lh_comm_destroy(r.world);
  lh_finalize();
  return 0;
}

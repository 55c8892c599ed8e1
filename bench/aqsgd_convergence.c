/* aqsgd_convergence: does AQ-SGD fine-tune as well as uncompressed training, where direct
 * activation quantization does not? And how fast is the pipeline on slow links?
 *
 *   mpirun -np 2 ./bench/aqsgd_convergence                      # 3 seeds, every arm
 *   mpirun -np 2 ./bench/aqsgd_convergence --quick --assert     # the ctest configuration
 *   mpirun -np 2 -x LH_SIM_BW=100mbit -x LH_SIM_LAT=10ms ./bench/aqsgd_convergence --throughput
 *
 * The experiment of design/aqsgd.md ("A convergence experiment that fits a 2-core machine"),
 * run through the real pipeline runtime: stage 0 on rank 0, stage 1 on rank 1, activations
 * forward and gradients backward through the AQ-SGD contexts of lh_pipeline.
 *
 * The model. Every example is T tokens of d_in inputs. Stage 0, per token: a two-layer MLP
 * (ReLU) ending in a linear layer, times fixed per-channel gains (every 16th channel x20, like
 * the outlier channels of a transformer's residual stream): the boundary activation is linear
 * and unbounded, and nothing random (no dropout) sits before it. Stage 1 divides by the gains
 * (the fixed scale a normalisation would apply), flattens the T x H boundary, and classifies
 * it with a ReLU MLP under softmax cross-entropy. Training dynamics therefore do not depend on
 * the gains, but the wire does: large channels are what a shared scale would have to carry.
 *
 * The data. Inputs are Gaussian, from (seed, example, element). A fixed random teacher (ReLU
 * features of the whole example, centred) labels them twice: task A and task B use the same
 * features and different, correlated read-outs. Every rank pretrains the whole model on task A
 * locally (no pipeline, same seed, so the same bits everywhere), then each arm fine-tunes on
 * task B through the pipeline with SGD + momentum from the same pretrained weights and the
 * same example order. The first fine-tune epoch's activations go uncompressed in every arm
 * (warmup_epochs = 1: each example's first visit is sent full, in DIRECT mode too); gradients
 * are quantized from the first step (the contexts have no backward warm-up). The metric is the
 * training loss of task B under the exact forward pass (lh_pipeline_eval: float32, no buffer).
 *
 * Only the public API is used, plus MPI for bookkeeping (results travel to rank 0 over
 * MPI_COMM_WORLD, not over the pipeline's possibly simulated links). */
#define _POSIX_C_SOURCE 200809L /* strtok_r, nanosleep */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>
#include <mpi.h>
#include <longhaul/longhaul.h>
#include <longhaul/aqsgd.h>
#include <longhaul/pipeline.h>

enum { EXIT_USAGE = 2 };

#define GAIN_EVERY 16     /* every 16th boundary channel is a large-gain channel */
#define LARGE_GAIN 20.0f
#define CLASSES 8
#define TEACHER_HIDDEN 32
#define TASK_B_MIX 0.6f   /* task B's read-out: 0.6 x task A's + 0.8 x a fresh one */

/* ---- arms --------------------------------------------------------------------------------- */

typedef struct {
  const char *key;   /* for --arms */
  const char *label; /* for tables */
  lh_aq_mode mode;
  int forward_bits, backward_bits;
} arm_def;

static const arm_def arm_defs[] = {
  {"fp32", "FP32", LH_AQ_OFF, 0, 0},
  {"aq2", "AQ-SGD fw2/bw4", LH_AQ_DELTA, 2, 4},
  {"dq2", "DirectQ fw2/bw4", LH_AQ_DIRECT, 2, 4},
  {"aq3", "AQ-SGD fw3/bw6", LH_AQ_DELTA, 3, 6},
  {"dq3", "DirectQ fw3/bw6", LH_AQ_DIRECT, 3, 6},
  {"aq4", "AQ-SGD fw4/bw8", LH_AQ_DELTA, 4, 8},
  {"dq4", "DirectQ fw4/bw8", LH_AQ_DIRECT, 4, 8},
};
enum { ARM_COUNT = sizeof arm_defs / sizeof arm_defs[0], ARM_FP32 = 0, ARM_AQ2 = 1, ARM_DQ2 = 2, ARM_AQ4 = 5 };

/* ---- options ------------------------------------------------------------------------------ */

typedef struct {
  int throughput, quick, do_assert;
  unsigned arms; /* bit per arm_defs entry */
  int seeds, epochs, pretrain_epochs;
  size_t examples, tokens, channels, micro_batch;
  int micro_batches;
  int d_in, hidden0, hidden1;
  double lr, pretrain_lr, momentum, compute_ms;
  lh_aq_quantizer quantizer;
  lh_rounding rounding;
  lh_aq_dtype storage;
  lh_pipeline_schedule schedule;
} options;

static const char usage_text[] =
  "Usage: mpirun -np 2 aqsgd_convergence [flags]\n"
  "AQ-SGD convergence experiment (design/aqsgd.md): pretrain a 2-stage model on task A, fine-tune\n"
  "on task B through lh_pipeline (stage 0 on rank 0, stage 1 on rank 1) in each arm, and report the\n"
  "final training loss under the exact forward pass, relative to FP32.\n"
  "  --arms LIST          comma-separated: fp32, aq2 aq3 aq4 (AQ-SGD fw2/bw4, fw3/bw6, fw4/bw8),\n"
  "                       dq2 dq3 dq4 (DirectQ, the same bits), or all (default: all; with\n"
  "                       --throughput fp32,aq4,aq2). fp32 is always run: ratios need it\n"
  "  --seeds N            seeds 1..N (default 3)\n"
  "  --epochs N           fine-tune epochs, the first with full activations (default 20); with\n"
  "                       --throughput, timed epochs after one warm-up epoch (default 2)\n"
  "  --examples N         training examples, a multiple of micro-batch x micro-batches\n"
  "                       (default 2048; --throughput 256)\n"
  "  --pretrain-epochs N  task A epochs before fine-tuning (default 30)\n"
  "  --tokens N           tokens per example at the boundary (default 4; --throughput 32)\n"
  "  --channels N         boundary channels, a multiple of 32 (default 64; --throughput 512)\n"
  "  --micro-batch N      examples per micro-batch (default 32; --throughput 8)\n"
  "  --micro-batches N    micro-batches per step (default 4; --throughput 8)\n"
  "  --lr X               fine-tune learning rate (default 0.02); momentum 0.9\n"
  "  --quantizer channel|group   per-channel max-abs scales (the reference, default) or one scale\n"
  "                       per group of contiguous channels of each token (128, or the largest of\n"
  "                       64 and 32 that divides the channels)\n"
  "  --rounding nearest|stochastic   (default nearest, the reference's)\n"
  "  --schedule 1f1b|gpipe   the pipeline's schedule (default 1f1b)\n"
  "  --storage fp16|bf16|fp32   type of the buffers m(x) and of full rows (default fp16); the FP32\n"
  "                       arm always uses fp32\n"
  "  --quick              the ctest configuration: arms fp32,aq2,dq2 and 1024 examples (flags\n"
  "                       given explicitly still win)\n"
  "  --assert             exit 1 unless, on every seed, AQ-SGD fw2/bw4 <= 1.3 x FP32 loss and\n"
  "                       DirectQ fw2/bw4 >= 2 x FP32 loss, and every measured forward frame\n"
  "                       equals 48 + scale bytes + ceil(n b / 8)\n"
  "  --throughput         pipeline throughput instead: a synthetic model with a large boundary and\n"
  "                       --compute-ms of simulated compute per micro-batch, arms timed after a\n"
  "                       warm-up epoch, on the links of LH_SIM_BW / LH_SIM_LAT\n"
  "  --compute-ms X       --throughput: simulated compute per stage and micro-batch, forward\n"
  "                       (backward takes twice that; default 5)\n"
  "  -h, --help           this text\n"
  "Exit status: 0 ok, 1 a failed --assert or a library error, 2 bad usage.\n";

enum {
  GIVEN_SEEDS = 1 << 0, GIVEN_EPOCHS = 1 << 1, GIVEN_EXAMPLES = 1 << 2, GIVEN_ARMS = 1 << 3,
  GIVEN_TOKENS = 1 << 4, GIVEN_CHANNELS = 1 << 5, GIVEN_MB = 1 << 6, GIVEN_MBS = 1 << 7
};

static int usage_error(const char *fmt, ...) {
  const char *rank = getenv("OMPI_COMM_WORLD_RANK");
  if (rank && strcmp(rank, "0") != 0)
    return EXIT_USAGE;
  char text[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  fprintf(stderr, "aqsgd_convergence: %s (see --help).\n", text);
  return EXIT_USAGE;
}

static int parse_long(const char *flag, const char *text, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = text ? strtol(text, &end, 10) : 0;
  if (!text || errno || end == text || *end || v < lo || v > hi)
    return usage_error("%s '%s': expected a whole number from %ld to %ld", flag, text ? text : "", lo, hi);
  *out = v;
  return 0;
}

static int parse_double(const char *flag, const char *text, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double v = text ? strtod(text, &end) : 0;
  if (!text || errno || end == text || *end || !(v >= lo && v <= hi))
    return usage_error("%s '%s': expected a number from %g to %g", flag, text ? text : "", lo, hi);
  *out = v;
  return 0;
}

static int parse_arms(const char *text, unsigned *arms) {
  *arms = 0;
  char list[256];
  if (!text || strlen(text) >= sizeof list)
    return usage_error("--arms needs a list such as fp32,aq2,dq2");
  strcpy(list, text);
  for (char *save = NULL, *name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
    if (strcmp(name, "all") == 0) {
      *arms |= (1u << ARM_COUNT) - 1;
      continue;
    }
    int found = -1;
    for (int a = 0; a < ARM_COUNT; a++)
      if (strcmp(name, arm_defs[a].key) == 0)
        found = a;
    if (found < 0)
      return usage_error("--arms: unknown arm '%s'; the arms are fp32 aq2 aq3 aq4 dq2 dq3 dq4 all", name);
    *arms |= 1u << found;
  }
  if (!*arms)
    return usage_error("--arms needs a list such as fp32,aq2,dq2");
  return 0;
}

/* Returns -1 to run, 0 after --help, else the exit status. */
static int parse_args(int argc, char **argv, options *o) {
  *o = (options){.seeds = 3, .epochs = 20, .pretrain_epochs = 30, .examples = 2048, .tokens = 4, .channels = 64,
                 .micro_batch = 32, .micro_batches = 4, .d_in = 32, .hidden0 = 64, .hidden1 = 128, .lr = 0.02,
                 .pretrain_lr = 0.05, .momentum = 0.9, .compute_ms = 5, .quantizer = LH_AQ_PER_CHANNEL,
                 .rounding = LH_ROUND_NEAREST, .storage = LH_AQ_FP16, .schedule = LH_SCHEDULE_1F1B};
  unsigned given = 0;
  for (int i = 1; i < argc; i++) {
    const char *flag = argv[i];
    const char *value = i + 1 < argc ? argv[i + 1] : NULL;
    long v;
    int rc = 0, takes = 1;
    if (strcmp(flag, "-h") == 0 || strcmp(flag, "--help") == 0) {
      fputs(usage_text, stdout);
      return 0;
    } else if (strcmp(flag, "--quick") == 0) {
      o->quick = 1, takes = 0;
    } else if (strcmp(flag, "--assert") == 0) {
      o->do_assert = 1, takes = 0;
    } else if (strcmp(flag, "--throughput") == 0) {
      o->throughput = 1, takes = 0;
    } else if (strcmp(flag, "--arms") == 0) {
      rc = parse_arms(value, &o->arms), given |= GIVEN_ARMS;
    } else if (strcmp(flag, "--seeds") == 0) {
      rc = parse_long(flag, value, 1, 1000, &v), o->seeds = (int)v, given |= GIVEN_SEEDS;
    } else if (strcmp(flag, "--epochs") == 0) {
      rc = parse_long(flag, value, 1, 100000, &v), o->epochs = (int)v, given |= GIVEN_EPOCHS;
    } else if (strcmp(flag, "--pretrain-epochs") == 0) {
      rc = parse_long(flag, value, 0, 100000, &v), o->pretrain_epochs = (int)v;
    } else if (strcmp(flag, "--examples") == 0) {
      rc = parse_long(flag, value, 1, 1L << 24, &v), o->examples = (size_t)v, given |= GIVEN_EXAMPLES;
    } else if (strcmp(flag, "--tokens") == 0) {
      rc = parse_long(flag, value, 1, 4096, &v), o->tokens = (size_t)v, given |= GIVEN_TOKENS;
    } else if (strcmp(flag, "--channels") == 0) {
      rc = parse_long(flag, value, 32, 65536, &v), o->channels = (size_t)v, given |= GIVEN_CHANNELS;
      if (!rc && v % 32)
        rc = usage_error("--channels %ld: must be a multiple of 32", v);
    } else if (strcmp(flag, "--micro-batch") == 0) {
      rc = parse_long(flag, value, 1, 4096, &v), o->micro_batch = (size_t)v, given |= GIVEN_MB;
    } else if (strcmp(flag, "--micro-batches") == 0) {
      rc = parse_long(flag, value, 1, 1024, &v), o->micro_batches = (int)v, given |= GIVEN_MBS;
    } else if (strcmp(flag, "--lr") == 0) {
      rc = parse_double(flag, value, 1e-6, 10, &o->lr);
    } else if (strcmp(flag, "--compute-ms") == 0) {
      rc = parse_double(flag, value, 0, 10000, &o->compute_ms);
    } else if (strcmp(flag, "--quantizer") == 0) {
      if (value && strcmp(value, "channel") == 0)
        o->quantizer = LH_AQ_PER_CHANNEL;
      else if (value && strcmp(value, "group") == 0)
        o->quantizer = LH_AQ_PER_TOKEN_GROUP;
      else
        rc = usage_error("--quantizer '%s': the quantizer must be channel or group", value ? value : "");
    } else if (strcmp(flag, "--rounding") == 0) {
      if (value && strcmp(value, "nearest") == 0)
        o->rounding = LH_ROUND_NEAREST;
      else if (value && strcmp(value, "stochastic") == 0)
        o->rounding = LH_ROUND_STOCHASTIC;
      else
        rc = usage_error("--rounding '%s': the rounding must be nearest or stochastic", value ? value : "");
    } else if (strcmp(flag, "--schedule") == 0) {
      if (value && strcmp(value, "1f1b") == 0)
        o->schedule = LH_SCHEDULE_1F1B;
      else if (value && strcmp(value, "gpipe") == 0)
        o->schedule = LH_SCHEDULE_GPIPE;
      else
        rc = usage_error("--schedule '%s': the schedule must be 1f1b or gpipe", value ? value : "");
    } else if (strcmp(flag, "--storage") == 0) {
      if (!value || lh_aq_dtype_parse(value, &o->storage) != LH_SUCCESS)
        rc = usage_error("--storage '%s': the storage must be fp16, bf16 or fp32", value ? value : "");
    } else {
      return usage_error("unknown flag '%s'", flag);
    }
    if (rc)
      return rc;
    if (takes && !value)
      return usage_error("%s needs a value", flag);
    i += takes;
  }
  if (o->throughput) {
    if (!(given & GIVEN_EPOCHS)) o->epochs = 2;
    if (!(given & GIVEN_EXAMPLES)) o->examples = 256;
    if (!(given & GIVEN_TOKENS)) o->tokens = 32;
    if (!(given & GIVEN_CHANNELS)) o->channels = 512;
    if (!(given & GIVEN_MB)) o->micro_batch = 8;
    if (!(given & GIVEN_MBS)) o->micro_batches = 8;
    if (!(given & GIVEN_ARMS)) o->arms = 1u << ARM_FP32 | 1u << ARM_AQ4 | 1u << ARM_AQ2;
  } else if (o->quick) {
    if (!(given & GIVEN_EXAMPLES)) o->examples = 1024;
    if (!(given & GIVEN_ARMS)) o->arms = 1u << ARM_FP32 | 1u << ARM_AQ2 | 1u << ARM_DQ2;
  }
  if (!o->arms)
    o->arms = (1u << ARM_COUNT) - 1;
  o->arms |= 1u << ARM_FP32;
  size_t step = o->micro_batch * (size_t)o->micro_batches;
  if (o->examples % step)
    return usage_error("--examples %zu: must be a multiple of micro-batch x micro-batches = %zu", o->examples, step);
  if (o->do_assert && !o->throughput && (!(o->arms & 1u << ARM_AQ2) || !(o->arms & 1u << ARM_DQ2)))
    return usage_error("--assert needs the arms aq2 and dq2");
  if (o->do_assert && !o->throughput && o->epochs < 2)
    return usage_error("--assert needs --epochs 2 or more (frame sizes are measured in the second epoch)");
  if (o->throughput && o->do_assert)
    return usage_error("--assert does not apply to --throughput");
  return -1;
}

/* ---- errors ------------------------------------------------------------------------------- */

/* A failed rank would leave its peer blocked inside the pipeline: report and abort the job. */
static void check_lib(const char *what, lh_status st) {
  if (st == LH_SUCCESS)
    return;
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const char *detail = lh_last_error();
  fprintf(stderr, "aqsgd_convergence: rank %d: %s: %s%s%s\n", rank, what, lh_status_string(st), *detail ? ": " : "",
          detail);
  MPI_Abort(MPI_COMM_WORLD, 1);
  exit(1);
}

static void *xcalloc(size_t count, size_t size) {
  void *p = calloc(count ? count : 1, size);
  if (!p) {
    fprintf(stderr, "aqsgd_convergence: out of memory (%zu x %zu bytes)\n", count, size);
    MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
  }
  return p;
}

/* ---- deterministic random numbers --------------------------------------------------------- */

static uint64_t mix64(uint64_t x) { /* the splitmix64 finalizer */
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

static uint64_t key_of(uint64_t seed, uint64_t stream) { return mix64(seed * 0x9e3779b97f4a7c15ULL + stream); }

static double uniform01(uint64_t key, uint64_t i) { /* (0, 1) */
  return ((double)(mix64(key + i * 0x9e3779b97f4a7c15ULL) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static float gaussian(uint64_t key, uint64_t i) { /* Box-Muller on two counter draws */
  double u1 = uniform01(key, 2 * i), u2 = uniform01(key, 2 * i + 1);
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* Fisher-Yates from (key): the same order on every rank and in every arm. */
static void permutation(uint64_t key, int64_t *ids, size_t n) {
  for (size_t i = 0; i < n; i++)
    ids[i] = (int64_t)i;
  for (size_t i = n; i > 1; i--) {
    size_t j = (size_t)(uniform01(key, i) * (double)i);
    int64_t t = ids[i - 1];
    ids[i - 1] = ids[j];
    ids[j] = t;
  }
}

enum { STREAM_X = 1, STREAM_TEACHER_U, STREAM_TEACHER_A, STREAM_TEACHER_B, STREAM_INIT0, STREAM_INIT1,
       STREAM_PRETRAIN_ORDER, STREAM_FINETUNE_ORDER, STREAM_AQ, STREAM_SYNTH };

/* ---- the data ----------------------------------------------------------------------------- */

typedef struct {
  size_t n, T, D;
  float *x;          /* n x T x D */
  int *label_a, *label_b;
} dataset;

static void dataset_create(dataset *ds, uint64_t seed, size_t n, size_t T, size_t D) {
  ds->n = n, ds->T = T, ds->D = D;
  size_t in = T * D;
  ds->x = xcalloc(n * in, sizeof(float));
  ds->label_a = xcalloc(n, sizeof(int));
  ds->label_b = xcalloc(n, sizeof(int));
  uint64_t kx = key_of(seed, STREAM_X);
  for (size_t i = 0; i < n * in; i++)
    ds->x[i] = gaussian(kx, i);
  /* The teacher: ReLU features of the whole example, centred over the data set (else the
   * read-out's column sums would decide the class), then two correlated read-outs. */
  float *u = xcalloc(in * TEACHER_HIDDEN, sizeof(float)), *feat = xcalloc(n * TEACHER_HIDDEN, sizeof(float));
  float *va = xcalloc(TEACHER_HIDDEN * CLASSES, sizeof(float)), *vb = xcalloc(TEACHER_HIDDEN * CLASSES, sizeof(float));
  uint64_t ku = key_of(seed, STREAM_TEACHER_U), ka = key_of(seed, STREAM_TEACHER_A), kb = key_of(seed, STREAM_TEACHER_B);
  for (size_t i = 0; i < in * TEACHER_HIDDEN; i++)
    u[i] = gaussian(ku, i) / sqrtf((float)in);
  for (size_t i = 0; i < TEACHER_HIDDEN * CLASSES; i++) {
    va[i] = gaussian(ka, i);
    vb[i] = TASK_B_MIX * va[i] + sqrtf(1.0f - TASK_B_MIX * TASK_B_MIX) * gaussian(kb, i);
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, TEACHER_HIDDEN, (int)in, 1.0f, ds->x, (int)in, u,
              TEACHER_HIDDEN, 0.0f, feat, TEACHER_HIDDEN);
  for (size_t j = 0; j < TEACHER_HIDDEN; j++) {
    double mean = 0;
    for (size_t e = 0; e < n; e++)
      mean += feat[e * TEACHER_HIDDEN + j] > 0 ? feat[e * TEACHER_HIDDEN + j] : 0;
    mean /= (double)n;
    for (size_t e = 0; e < n; e++) {
      float *f = &feat[e * TEACHER_HIDDEN + j];
      *f = (*f > 0 ? *f : 0) - (float)mean;
    }
  }
  for (size_t e = 0; e < n; e++) {
    float best_a = -INFINITY, best_b = -INFINITY;
    for (int c = 0; c < CLASSES; c++) {
      float sa = 0, sb = 0;
      for (size_t j = 0; j < TEACHER_HIDDEN; j++) {
        sa += feat[e * TEACHER_HIDDEN + j] * va[j * CLASSES + c];
        sb += feat[e * TEACHER_HIDDEN + j] * vb[j * CLASSES + c];
      }
      if (sa > best_a) best_a = sa, ds->label_a[e] = c;
      if (sb > best_b) best_b = sb, ds->label_b[e] = c;
    }
  }
  free(u), free(feat), free(va), free(vb);
}

static void dataset_free(dataset *ds) { free(ds->x), free(ds->label_a), free(ds->label_b); }

/* ---- the model ---------------------------------------------------------------------------- */

typedef struct {
  size_t n;
  float *w, *grad, *vel;
} param_set;

static void params_alloc(param_set *p, size_t n) {
  p->n = n;
  p->w = xcalloc(n, sizeof(float));
  p->grad = xcalloc(n, sizeof(float));
  p->vel = xcalloc(n, sizeof(float));
}

static void params_free(param_set *p) { free(p->w), free(p->grad), free(p->vel); }

/* Weights from w, fresh optimizer state. */
static void params_copy(param_set *dst, const param_set *src) {
  memcpy(dst->w, src->w, src->n * sizeof(float));
  memset(dst->grad, 0, src->n * sizeof(float));
  memset(dst->vel, 0, src->n * sizeof(float));
}

static void sgd_momentum(param_set *p, float lr, float momentum) {
  for (size_t i = 0; i < p->n; i++) {
    p->vel[i] = momentum * p->vel[i] + p->grad[i];
    p->w[i] -= lr * p->vel[i];
    p->grad[i] = 0;
  }
}

/* Stage 0, per token: P = X Wa + ba (d_in -> hidden0), R = relu(P), Z = R Wb + bb (-> H),
 * A = gain * Z. Stage 1: U = A / gain flattened (T*H), Q = U Wc + bc (-> hidden1),
 * S = relu(Q), logits = S Wd + bd (-> CLASSES). Parameters of a stage are one array. */
typedef struct {
  size_t T, D, F0, H, F1;
  size_t wa, ba, wb, bb, n0;  /* offsets into stage 0's array, and its length */
  size_t wc, bc, wd, bd, n1;  /* stage 1's */
  const dataset *data;
  const int *labels;          /* of the task being trained */
  float *gain;                /* H */
  param_set s0, s1;
  int slots;                  /* micro-batch caches: micro_batches for training, one for eval */
  size_t micro_batch;
  float grad_scale;           /* 1 / examples per step: the loss is the step's mean */
  float *x, *r0;              /* stage 0 caches: slots x (mb T D), (mb T F0) */
  float *u, *s, *prob;        /* stage 1 caches: slots x (mb T H), (mb F1), (mb CLASSES) */
  float *dz, *dr0, *dlogit, *ds, *dq; /* scratch */
  float *act, *dact;          /* local training: the boundary and its gradient */
} model;

static void gemm(int trans_a, int trans_b, size_t m, size_t n, size_t k, const float *a, const float *b, float beta,
                 float *c) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n,
              (int)k, 1.0f, a, trans_a ? (int)m : (int)k, b, trans_b ? (int)k : (int)n, beta, c, (int)n);
}

static void add_bias(float *y, const float *b, size_t rows, size_t n) {
  for (size_t r = 0; r < rows; r++)
    for (size_t j = 0; j < n; j++)
      y[r * n + j] += b[j];
}

static void bias_grad(float *db, const float *dy, size_t rows, size_t n) {
  for (size_t r = 0; r < rows; r++)
    for (size_t j = 0; j < n; j++)
      db[j] += dy[r * n + j];
}

static void init_block(float *w, size_t fan_in, size_t count, uint64_t key, uint64_t first) {
  float scale = sqrtf(2.0f / (float)fan_in);
  for (size_t i = 0; i < count; i++)
    w[i] = scale * gaussian(key, first + i);
}

static void model_create(model *m, const options *o, const dataset *ds, uint64_t seed) {
  *m = (model){.T = o->tokens, .D = (size_t)o->d_in, .F0 = (size_t)o->hidden0, .H = o->channels,
               .F1 = (size_t)o->hidden1, .data = ds, .labels = ds->label_a, .slots = o->micro_batches + 1,
               .micro_batch = o->micro_batch};
  m->wa = 0, m->ba = m->D * m->F0, m->wb = m->ba + m->F0, m->bb = m->wb + m->F0 * m->H, m->n0 = m->bb + m->H;
  size_t in1 = m->T * m->H;
  m->wc = 0, m->bc = in1 * m->F1, m->wd = m->bc + m->F1, m->bd = m->wd + m->F1 * CLASSES, m->n1 = m->bd + CLASSES;
  params_alloc(&m->s0, m->n0);
  params_alloc(&m->s1, m->n1);
  uint64_t k0 = key_of(seed, STREAM_INIT0), k1 = key_of(seed, STREAM_INIT1);
  init_block(m->s0.w + m->wa, m->D, m->D * m->F0, k0, 0);
  init_block(m->s0.w + m->wb, m->F0, m->F0 * m->H, k0, m->wb);
  init_block(m->s1.w + m->wc, in1, in1 * m->F1, k1, 0);
  init_block(m->s1.w + m->wd, m->F1, m->F1 * CLASSES, k1, m->wd);
  m->gain = xcalloc(m->H, sizeof(float));
  for (size_t c = 0; c < m->H; c++)
    m->gain[c] = c % GAIN_EVERY == 0 ? LARGE_GAIN : 1.0f;
  size_t mb = m->micro_batch, rows = mb * m->T, slots = (size_t)m->slots;
  m->x = xcalloc(slots * rows * m->D, sizeof(float));
  m->r0 = xcalloc(slots * rows * m->F0, sizeof(float));
  m->u = xcalloc(slots * rows * m->H, sizeof(float));
  m->s = xcalloc(slots * mb * m->F1, sizeof(float));
  m->prob = xcalloc(slots * mb * CLASSES, sizeof(float));
  m->dz = xcalloc(rows * m->H, sizeof(float));
  m->dr0 = xcalloc(rows * m->F0, sizeof(float));
  m->dlogit = xcalloc(mb * CLASSES, sizeof(float));
  m->ds = xcalloc(mb * m->F1, sizeof(float));
  m->dq = xcalloc(rows * m->H, sizeof(float));
  m->act = xcalloc(rows * m->H, sizeof(float));
  m->dact = xcalloc(rows * m->H, sizeof(float));
}

static void model_free(model *m) {
  params_free(&m->s0), params_free(&m->s1);
  free(m->gain), free(m->x), free(m->r0), free(m->u), free(m->s), free(m->prob);
  free(m->dz), free(m->dr0), free(m->dlogit), free(m->ds), free(m->dq), free(m->act), free(m->dact);
}

static void stage0_forward(model *m, int slot, const int64_t *ids, size_t count, float *out) {
  size_t rows = count * m->T, cap = m->micro_batch * m->T;
  float *x = m->x + (size_t)slot * cap * m->D, *r = m->r0 + (size_t)slot * cap * m->F0;
  const float *w = m->s0.w;
  for (size_t e = 0; e < count; e++)
    memcpy(x + e * m->T * m->D, m->data->x + (size_t)ids[e] * m->T * m->D, m->T * m->D * sizeof(float));
  gemm(0, 0, rows, m->F0, m->D, x, w + m->wa, 0.0f, r);
  add_bias(r, w + m->ba, rows, m->F0);
  for (size_t i = 0; i < rows * m->F0; i++)
    r[i] = r[i] > 0 ? r[i] : 0;
  gemm(0, 0, rows, m->H, m->F0, r, w + m->wb, 0.0f, out);
  add_bias(out, w + m->bb, rows, m->H);
  for (size_t i = 0; i < rows; i++)
    for (size_t c = 0; c < m->H; c++)
      out[i * m->H + c] *= m->gain[c];
}

static void stage0_backward(model *m, int slot, size_t count, const float *grad_out) {
  size_t rows = count * m->T, cap = m->micro_batch * m->T;
  const float *x = m->x + (size_t)slot * cap * m->D, *r = m->r0 + (size_t)slot * cap * m->F0;
  float *g = m->s0.grad;
  for (size_t i = 0; i < rows; i++)
    for (size_t c = 0; c < m->H; c++)
      m->dz[i * m->H + c] = grad_out[i * m->H + c] * m->gain[c];
  gemm(1, 0, m->F0, m->H, rows, r, m->dz, 1.0f, g + m->wb);
  bias_grad(g + m->bb, m->dz, rows, m->H);
  gemm(0, 1, rows, m->F0, m->H, m->dz, m->s0.w + m->wb, 0.0f, m->dr0);
  for (size_t i = 0; i < rows * m->F0; i++)
    m->dr0[i] = r[i] > 0 ? m->dr0[i] : 0;
  gemm(1, 0, m->D, m->F0, rows, x, m->dr0, 1.0f, g + m->wa);
  bias_grad(g + m->ba, m->dr0, rows, m->F0);
}

/* Returns the micro-batch's summed cross-entropy. */
static double stage1_forward(model *m, int slot, const int64_t *ids, size_t count, const float *in) {
  size_t in1 = m->T * m->H, mb = m->micro_batch;
  float *u = m->u + (size_t)slot * mb * in1, *s = m->s + (size_t)slot * mb * m->F1;
  float *prob = m->prob + (size_t)slot * mb * CLASSES;
  const float *w = m->s1.w;
  for (size_t i = 0; i < count * in1; i++)
    u[i] = in[i] / m->gain[i % m->H];
  gemm(0, 0, count, m->F1, in1, u, w + m->wc, 0.0f, s);
  add_bias(s, w + m->bc, count, m->F1);
  for (size_t i = 0; i < count * m->F1; i++)
    s[i] = s[i] > 0 ? s[i] : 0;
  gemm(0, 0, count, CLASSES, m->F1, s, w + m->wd, 0.0f, prob);
  add_bias(prob, w + m->bd, count, CLASSES);
  double loss = 0;
  for (size_t e = 0; e < count; e++) {
    float *p = prob + e * CLASSES, top = p[0];
    for (int c = 1; c < CLASSES; c++)
      top = p[c] > top ? p[c] : top;
    double sum = 0;
    for (int c = 0; c < CLASSES; c++)
      sum += exp((double)(p[c] - top));
    loss += log(sum) - (double)(p[m->labels[ids[e]]] - top);
    for (int c = 0; c < CLASSES; c++)
      p[c] = (float)(exp((double)(p[c] - top)) / sum);
  }
  return loss;
}

static void stage1_backward(model *m, int slot, const int64_t *ids, size_t count, float *grad_in) {
  size_t in1 = m->T * m->H, mb = m->micro_batch;
  const float *u = m->u + (size_t)slot * mb * in1, *s = m->s + (size_t)slot * mb * m->F1;
  const float *prob = m->prob + (size_t)slot * mb * CLASSES;
  float *g = m->s1.grad;
  for (size_t e = 0; e < count; e++)
    for (int c = 0; c < CLASSES; c++)
      m->dlogit[e * CLASSES + c] = (prob[e * CLASSES + c] - (c == m->labels[ids[e]] ? 1.0f : 0.0f)) * m->grad_scale;
  gemm(1, 0, m->F1, CLASSES, count, s, m->dlogit, 1.0f, g + m->wd);
  bias_grad(g + m->bd, m->dlogit, count, CLASSES);
  gemm(0, 1, count, m->F1, CLASSES, m->dlogit, m->s1.w + m->wd, 0.0f, m->ds);
  for (size_t i = 0; i < count * m->F1; i++)
    m->ds[i] = s[i] > 0 ? m->ds[i] : 0;
  gemm(1, 0, in1, m->F1, count, u, m->ds, 1.0f, g + m->wc);
  bias_grad(g + m->bc, m->ds, count, m->F1);
  gemm(0, 1, count, in1, m->F1, m->ds, m->s1.w + m->wc, 0.0f, m->dq);
  for (size_t i = 0; i < count * in1; i++)
    grad_in[i] = m->dq[i] / m->gain[i % m->H];
}

/* Both stages in one process, no compression: pretraining, and the exact loss before the
 * pipeline exists. */
static void local_step(model *m, const int64_t *ids, int micro_batches, float lr, float momentum) {
  m->grad_scale = 1.0f / (float)(m->micro_batch * (size_t)micro_batches);
  for (int i = 0; i < micro_batches; i++) {
    const int64_t *mid = ids + (size_t)i * m->micro_batch;
    stage0_forward(m, i, mid, m->micro_batch, m->act);
    stage1_forward(m, i, mid, m->micro_batch, m->act);
    stage1_backward(m, i, mid, m->micro_batch, m->dact);
    stage0_backward(m, i, m->micro_batch, m->dact);
  }
  sgd_momentum(&m->s0, lr, momentum);
  sgd_momentum(&m->s1, lr, momentum);
}

static double local_loss(model *m) {
  int slot = m->slots - 1;
  double loss = 0;
  int64_t ids[4096];
  for (size_t first = 0; first < m->data->n; first += m->micro_batch) {
    size_t count = m->data->n - first < m->micro_batch ? m->data->n - first : m->micro_batch;
    for (size_t e = 0; e < count; e++)
      ids[e] = (int64_t)(first + e);
    stage0_forward(m, slot, ids, count, m->act);
    loss += stage1_forward(m, slot, ids, count, m->act);
  }
  return loss / (double)m->data->n;
}

static void pretrain(model *m, const options *o, uint64_t seed) {
  size_t step = m->micro_batch * (size_t)o->micro_batches, n = m->data->n;
  int64_t *order = xcalloc(n, sizeof(int64_t));
  m->labels = m->data->label_a;
  for (int epoch = 0; epoch < o->pretrain_epochs; epoch++) {
    permutation(key_of(seed, STREAM_PRETRAIN_ORDER) + (uint64_t)epoch, order, n);
    for (size_t first = 0; first < n; first += step)
      local_step(m, order + first, o->micro_batches, (float)o->pretrain_lr, (float)o->momentum);
  }
  free(order);
}

/* ---- the pipeline callbacks --------------------------------------------------------------- */

static lh_status model_forward(void *user, lh_stage_call *call) {
  model *m = user;
  if (call->count > m->micro_batch)
    return LH_ERR_INVALID_ARGUMENT;
  int slot = call->training ? call->micro : m->slots - 1;
  if (call->stage == 0)
    stage0_forward(m, slot, call->ids, call->count, call->output);
  else
    call->loss = stage1_forward(m, slot, call->ids, call->count, call->input);
  return LH_SUCCESS;
}

static lh_status model_backward(void *user, lh_stage_call *call) {
  model *m = user;
  if (call->stage == 0)
    stage0_backward(m, call->micro, call->count, call->grad_output);
  else
    stage1_backward(m, call->micro, call->ids, call->count, call->grad_input);
  return LH_SUCCESS;
}

/* ---- the convergence experiment ----------------------------------------------------------- */

typedef struct {
  double loss;           /* final exact training loss (task B) */
  double *drift;         /* per epoch: sqrt(sum |a - m|^2 / sum |a|^2) over quantized rows; < 0: none */
  double wire_measured;  /* forward bytes per message in a step with no first visits; < 0: none */
  double wire_expected;
  double seconds;
} run_result;

static int group_for(size_t channels) {
  return channels % 128 == 0 ? 128 : channels % 64 == 0 ? 64 : 32;
}

static size_t expected_forward_frame(const options *o, int bits) {
  size_t n = o->micro_batch * o->tokens * o->channels;
  size_t scales = o->quantizer == LH_AQ_PER_CHANNEL ? o->channels
                                                    : o->micro_batch * o->tokens * (o->channels / (size_t)group_for(o->channels));
  return LH_AQ_FRAME_HEADER_BYTES + scales * 2 + (n * (size_t)bits + 7) / 8;
}

static void pipeline_config_for(lh_pipeline_config *cfg, const options *o, const arm_def *arm, uint64_t seed,
                                const size_t *width) {
  *cfg = (lh_pipeline_config)LH_PIPELINE_CONFIG_INIT;
  cfg->stages = 2;
  cfg->replicas = 1;
  cfg->micro_batches = o->micro_batches;
  cfg->micro_batch = o->micro_batch;
  cfg->examples = o->examples;
  cfg->tokens = o->tokens;
  cfg->boundary_channels = width;
  cfg->schedule = o->schedule;
  cfg->aq.mode = arm->mode;
  cfg->aq.storage = arm->mode == LH_AQ_OFF ? LH_AQ_FP32 : o->storage;
  cfg->aq.forward_bits = arm->mode == LH_AQ_OFF ? 0 : arm->forward_bits;
  cfg->aq.backward_bits = arm->mode == LH_AQ_OFF ? 0 : arm->backward_bits;
  cfg->aq.quantizer = o->quantizer;
  cfg->aq.group = o->quantizer == LH_AQ_PER_TOKEN_GROUP ? group_for(o->channels) : 0;
  cfg->aq.rounding = o->rounding;
  cfg->aq.warmup_epochs = 1;
  cfg->aq.seed = key_of(seed, STREAM_AQ);
  cfg->aq.track_drift = arm->mode == LH_AQ_DELTA;
}

/* Fine-tunes the pretrained model on task B in one arm. Every rank returns the same result
 * (rank 1's loss and rank 0's sender statistics are exchanged over MPI). */
static void run_arm(lh_comm comm, const options *o, const arm_def *arm, uint64_t seed, model *m,
                    const param_set *pre0, const param_set *pre1, run_result *res) {
  double start = MPI_Wtime();
  params_copy(&m->s0, pre0);
  params_copy(&m->s1, pre1);
  m->labels = m->data->label_b;
  size_t width[1] = {o->channels}, step = o->micro_batch * (size_t)o->micro_batches, n = o->examples;
  m->grad_scale = 1.0f / (float)step;
  lh_pipeline_config cfg;
  pipeline_config_for(&cfg, o, arm, seed, width);
  cfg.forward = model_forward;
  cfg.backward = model_backward;
  cfg.user = m;
  lh_pipeline p;
  check_lib("lh_pipeline_create", lh_pipeline_create(comm, &cfg, &p));
  int stage, replica;
  check_lib("lh_pipeline_position", lh_pipeline_position(p, &stage, &replica));
  lh_aq_receiver from_prev;
  lh_aq_sender to_next;
  check_lib("lh_pipeline_aq", lh_pipeline_aq(p, &from_prev, &to_next));
  param_set *mine = stage == 0 ? &m->s0 : &m->s1;

  int64_t *order = xcalloc(n, sizeof(int64_t));
  double prev_num = 0, prev_den = 0;
  res->wire_measured = -1;
  res->wire_expected = arm->mode == LH_AQ_OFF ? -1 : (double)expected_forward_frame(o, arm->forward_bits);
  for (int epoch = 0; epoch < o->epochs; epoch++) {
    permutation(key_of(seed, STREAM_FINETUNE_ORDER) + (uint64_t)epoch, order, n);
    for (size_t first = 0; first < n; first += step) {
      lh_pipeline_stats st = LH_PIPELINE_STATS_INIT;
      check_lib("lh_pipeline_step", lh_pipeline_step(p, order + first, &st));
      sgd_momentum(mine, (float)o->lr, (float)o->momentum);
      /* Every example has been seen once after the first epoch: this step's forward frames are
       * all deltas (or direct codes), the frames whose size the format promises. */
      if (epoch == 1 && first == 0 && stage == 0 && arm->mode != LH_AQ_OFF)
        res->wire_measured = (double)st.bytes_to_next / (double)o->micro_batches;
    }
    res->drift[epoch] = -1;
    if (to_next && arm->mode == LH_AQ_DELTA) {
      lh_aq_stats as = LH_AQ_STATS_INIT;
      check_lib("lh_aq_sender_get_stats", lh_aq_sender_get_stats(to_next, &as));
      double num = as.drift_num - prev_num, den = as.drift_den - prev_den;
      prev_num = as.drift_num, prev_den = as.drift_den;
      if (den > 0)
        res->drift[epoch] = sqrt(num / den);
    }
  }
  int64_t *all = order;
  for (size_t i = 0; i < n; i++)
    all[i] = (int64_t)i;
  lh_pipeline_stats st = LH_PIPELINE_STATS_INIT;
  check_lib("lh_pipeline_eval", lh_pipeline_eval(p, all, n, &st));
  res->loss = st.has_loss ? st.loss / (double)n : 0;
  check_lib("lh_pipeline_free", lh_pipeline_free(p));
  free(order);

  /* Rank 1 has the loss, rank 0 the sender's numbers: everyone gets both. */
  MPI_Bcast(&res->loss, 1, MPI_DOUBLE, 1, MPI_COMM_WORLD);
  MPI_Bcast(res->drift, o->epochs, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  MPI_Bcast(&res->wire_measured, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  res->seconds = MPI_Wtime() - start;
}

static const char *quantizer_text(const options *o) {
  return o->quantizer == LH_AQ_PER_CHANNEL ? "per-channel" : "per-token groups";
}

static const char *schedule_text(const options *o) { return o->schedule == LH_SCHEDULE_GPIPE ? "GPipe" : "1F1B"; }

static int run_convergence(lh_comm comm, const options *o, int rank) {
  int arms[ARM_COUNT], narms = 0;
  for (int a = 0; a < ARM_COUNT; a++)
    if (o->arms & 1u << a)
      arms[narms++] = a;
  run_result *res = xcalloc((size_t)narms * (size_t)o->seeds, sizeof(run_result));
  for (int i = 0; i < narms * o->seeds; i++)
    res[i].drift = xcalloc((size_t)o->epochs, sizeof(double));
  const char *storage_name = "?";
  lh_aq_dtype_name(o->storage, &storage_name);
  if (rank == 0) {
    printf("# aqsgd_convergence: 2 stages over MPI (lh_pipeline, %s), %zu examples, micro-batch %zu x %d\n",
           schedule_text(o), o->examples, o->micro_batch, o->micro_batches);
    printf("# model: %zu tokens x d_in %d -> MLP(%d, ReLU) -> linear boundary %zu tokens x %zu channels "
           "(every %dth x%.0f) -> MLP(%d, ReLU) -> %d classes\n",
           o->tokens, o->d_in, o->hidden0, o->tokens, o->channels, GAIN_EVERY, (double)LARGE_GAIN, o->hidden1, CLASSES);
    printf("# pretrain task A %d epochs (lr %g), fine-tune task B %d epochs (lr %g, momentum %g), first epoch's "
           "activations full, gradients quantized throughout\n",
           o->pretrain_epochs, o->pretrain_lr, o->epochs, o->lr, o->momentum);
    printf("# quantizer %s, rounding %s, storage %s (FP32 arm: fp32); loss = exact training loss of task B\n",
           quantizer_text(o), o->rounding == LH_ROUND_NEAREST ? "nearest" : "stochastic", storage_name);
    printf("#\n# %-17s %4s %12s %9s %8s\n", "arm", "seed", "loss", "ratio", "time(s)");
    fflush(stdout);
  }
  for (int seed = 1; seed <= o->seeds; seed++) {
    dataset ds;
    dataset_create(&ds, (uint64_t)seed, o->examples, o->tokens, (size_t)o->d_in);
    model m;
    model_create(&m, o, &ds, (uint64_t)seed);
    pretrain(&m, o, (uint64_t)seed);
    double loss_a = local_loss(&m);
    m.labels = ds.label_b;
    double loss_b = local_loss(&m);
    if (rank == 0) {
      printf("# seed %d: after pretraining, exact loss task A %.4f, task B %.4f\n", seed, loss_a, loss_b);
      fflush(stdout);
    }
    param_set pre0, pre1;
    params_alloc(&pre0, m.n0), params_alloc(&pre1, m.n1);
    params_copy(&pre0, &m.s0), params_copy(&pre1, &m.s1);
    for (int a = 0; a < narms; a++) {
      run_result *r = &res[a * o->seeds + seed - 1];
      run_arm(comm, o, &arm_defs[arms[a]], (uint64_t)seed, &m, &pre0, &pre1, r);
      double fp32 = res[0 * o->seeds + seed - 1].loss; /* arms[0] is FP32 */
      if (rank == 0) {
        printf("  %-17s %4d %12.5f %9.3f %8.1f\n", arm_defs[arms[a]].label, seed, r->loss, r->loss / fp32, r->seconds);
        fflush(stdout);
      }
    }
    params_free(&pre0), params_free(&pre1);
    model_free(&m);
    dataset_free(&ds);
  }

  int failed = 0;
  if (rank == 0) {
    printf("\n# summary: final exact training loss / FP32's, over %d seed(s)\n", o->seeds);
    printf("# %-17s %10s %9s %9s %9s\n", "arm", "mean loss", "mean", "min", "max");
    for (int a = 0; a < narms; a++) {
      double sum = 0, lo = INFINITY, hi = -INFINITY, lsum = 0;
      for (int s = 0; s < o->seeds; s++) {
        double ratio = res[a * o->seeds + s].loss / res[s].loss;
        sum += ratio, lsum += res[a * o->seeds + s].loss;
        lo = ratio < lo ? ratio : lo, hi = ratio > hi ? ratio : hi;
      }
      printf("  %-17s %10.5f %9.3f %9.3f %9.3f\n", arm_defs[arms[a]].label, lsum / o->seeds, sum / o->seeds, lo, hi);
    }
    int any_delta = 0;
    for (int a = 0; a < narms; a++)
      any_delta |= arm_defs[arms[a]].mode == LH_AQ_DELTA;
    if (any_delta) {
      printf("\n# mean relative delta sqrt(sum |a - m|^2 / sum |a|^2) per epoch (sender, quantized rows; mean over "
             "seeds)\n# %5s", "epoch");
      for (int a = 0; a < narms; a++)
        if (arm_defs[arms[a]].mode == LH_AQ_DELTA)
          printf(" %15s", arm_defs[arms[a]].label);
      printf("\n");
      for (int e = 0; e < o->epochs; e++) {
        printf("  %5d", e + 1);
        for (int a = 0; a < narms; a++) {
          if (arm_defs[arms[a]].mode != LH_AQ_DELTA)
            continue;
          double sum = 0;
          int got = 0;
          for (int s = 0; s < o->seeds; s++)
            if (res[a * o->seeds + s].drift[e] >= 0)
              sum += res[a * o->seeds + s].drift[e], got++;
          if (got)
            printf(" %15.4f", sum / got);
          else
            printf(" %15s", "full");
        }
        printf("\n");
      }
    }
    printf("\n# forward frame bytes, no first visits (micro-batch %zu x %zu x %zu = %zu elements): expected = 48 "
           "header + %s fp16 scales + ceil(n b / 8)\n",
           o->micro_batch, o->tokens, o->channels, o->micro_batch * o->tokens * o->channels, quantizer_text(o));
    printf("# %-17s %10s %10s %6s\n", "arm", "expected", "measured", "check");
    for (int a = 0; a < narms; a++) {
      if (arm_defs[arms[a]].mode == LH_AQ_OFF)
        continue;
      for (int s = 0; s < o->seeds; s++) {
        const run_result *r = &res[a * o->seeds + s];
        int ok = r->wire_measured == r->wire_expected;
        if (s == 0 || !ok)
          printf("  %-17s %10.0f %10.1f %6s%s\n", arm_defs[arms[a]].label, r->wire_expected, r->wire_measured,
                 ok ? "ok" : "WRONG", s ? " (a later seed)" : "");
        if (!ok && o->do_assert) {
          printf("# ASSERT FAILED: %s seed %d: forward frame %.1f bytes, expected %.0f\n", arm_defs[arms[a]].label,
                 s + 1, r->wire_measured, r->wire_expected);
          failed = 1;
        }
      }
    }
    if (o->epochs < 2)
      printf("# (one epoch: every step had first visits, nothing measured)\n");
    if (o->do_assert) {
      int ia = -1, id = -1;
      for (int a = 0; a < narms; a++)
        ia = arms[a] == ARM_AQ2 ? a : ia, id = arms[a] == ARM_DQ2 ? a : id;
      double aq_worst = 0, dq_worst = INFINITY;
      for (int s = 0; s < o->seeds; s++) {
        double fp32 = res[s].loss, aq = res[ia * o->seeds + s].loss / fp32, dq = res[id * o->seeds + s].loss / fp32;
        aq_worst = aq > aq_worst ? aq : aq_worst;
        dq_worst = dq < dq_worst ? dq : dq_worst;
        if (!(aq <= 1.3)) {
          printf("# ASSERT FAILED: seed %d: AQ-SGD fw2/bw4 loss is %.3f x FP32's (limit 1.3)\n", s + 1, aq);
          failed = 1;
        }
        if (!(dq >= 2.0)) {
          printf("# ASSERT FAILED: seed %d: DirectQ fw2/bw4 loss is %.3f x FP32's (needs >= 2)\n", s + 1, dq);
          failed = 1;
        }
      }
      printf("# assert: AQ-SGD fw2/bw4 worst %.3f x FP32 (limit 1.3), DirectQ fw2/bw4 least %.3f x FP32 (needs >= 2)"
             ": %s\n",
             aq_worst, dq_worst, failed ? "FAILED" : "PASSED");
    }
    fflush(stdout);
  }
  MPI_Bcast(&failed, 1, MPI_INT, 0, MPI_COMM_WORLD);
  for (int i = 0; i < narms * o->seeds; i++)
    free(res[i].drift);
  free(res);
  return failed ? 1 : 0;
}

/* ---- throughput ------------------------------------------------------------------------- */

/* The simulated compute: sleeping, as a host does while its accelerator computes. */
static void compute_for(double ms) {
  if (ms <= 0)
    return;
  double until = MPI_Wtime() + ms * 1e-3;
  for (double now = MPI_Wtime(); now < until; now = MPI_Wtime()) {
    double left = until - now;
    struct timespec ts = {(time_t)left, (long)((left - (double)(time_t)left) * 1e9)};
    nanosleep(&ts, NULL);
  }
}

typedef struct {
  size_t row;       /* tokens x channels */
  size_t n;
  float *base;      /* stage 0: n x row, the activation at the first visit */
  uint32_t *visits; /* stage 0: how often each example went forward in training */
  float *grad;      /* stage 1: row x 2, read from an offset per example */
  double compute_ms;
} synthetic;

/* Activations that drift a little per visit, as a converging model's do, so AQ-SGD's deltas
 * are small but not zero; gradients of a fixed random pattern, shifted per example. */
static lh_status synth_forward(void *user, lh_stage_call *call) {
  synthetic *sy = user;
  if (call->stage == 0) {
    for (size_t e = 0; e < call->count; e++) {
      size_t id = (size_t)call->ids[e];
      const float *b = sy->base + id * sy->row, *d = sy->base + ((id + 1) % sy->n) * sy->row;
      float t = 0.01f * (float)sy->visits[id];
      for (size_t i = 0; i < sy->row; i++)
        call->output[e * sy->row + i] = b[i] + t * d[i];
      sy->visits[id] += (uint32_t)call->training;
    }
  } else {
    call->loss = 0;
  }
  compute_for(sy->compute_ms);
  return LH_SUCCESS;
}

static lh_status synth_backward(void *user, lh_stage_call *call) {
  synthetic *sy = user;
  if (call->stage == 1)
    for (size_t e = 0; e < call->count; e++)
      memcpy(call->grad_input + e * sy->row, sy->grad + (size_t)call->ids[e] % sy->row, sy->row * sizeof(float));
  compute_for(2 * sy->compute_ms);
  return LH_SUCCESS;
}

static int run_throughput(lh_comm comm, const options *o, int rank) {
  synthetic sy = {.row = o->tokens * o->channels, .n = o->examples, .compute_ms = o->compute_ms};
  sy.base = xcalloc(sy.n * sy.row, sizeof(float));
  sy.visits = xcalloc(sy.n, sizeof(uint32_t));
  sy.grad = xcalloc(2 * sy.row, sizeof(float));
  uint64_t key = key_of(1, STREAM_SYNTH);
  for (size_t i = 0; i < 2 * sy.row; i++)
    sy.grad[i] = 1e-3f * gaussian(key + 1, i);
  for (size_t i = 0; i < sy.n * sy.row; i++) /* a residual stream: unit channels and every 16th x20 */
    sy.base[i] = gaussian(key, i) * ((i % o->channels) % GAIN_EVERY == 0 ? LARGE_GAIN : 1.0f);
  int simulated = 0;
  char links[200] = "";
  check_lib("lh_comm_simulation", lh_comm_simulation(comm, &simulated, links, sizeof links));
  size_t step = o->micro_batch * (size_t)o->micro_batches, msg = o->micro_batch * sy.row * sizeof(float);
  double ideal = (double)(o->examples / step) * (o->micro_batches + 1) * 3 * o->compute_ms * 1e-3;
  if (rank == 0) {
    printf("# aqsgd_convergence --throughput: 2 stages (%s), %zu examples, micro-batch %zu x %d, boundary %zu "
           "tokens x %zu channels (%zu B per fp32 message)\n",
           schedule_text(o), o->examples, o->micro_batch, o->micro_batches, o->tokens, o->channels, msg);
    printf("# compute %.1f ms per stage and micro-batch forward, %.1f backward (no communication: %.3f s/epoch); "
           "links: %s\n",
           o->compute_ms, 2 * o->compute_ms, ideal, simulated ? links : "not simulated");
    printf("# %d timed epoch(s) after one warm-up epoch (first visits, full rows); quantizer %s\n", o->epochs,
           quantizer_text(o));
    printf("# %-17s %10s %9s %11s %11s %7s %7s\n", "arm", "examples/s", "s/epoch", "fwd B/msg", "bwd B/msg", "wait%",
           "speedup");
    fflush(stdout);
  }
  int64_t *order = xcalloc(sy.n, sizeof(int64_t));
  for (size_t i = 0; i < sy.n; i++)
    order[i] = (int64_t)i;
  size_t width[1] = {o->channels};
  double fp32_rate = 0;
  for (int a = 0; a < ARM_COUNT; a++) {
    if (!(o->arms & 1u << a))
      continue;
    memset(sy.visits, 0, sy.n * sizeof(uint32_t));
    lh_pipeline_config cfg;
    pipeline_config_for(&cfg, o, &arm_defs[a], 1, width);
    cfg.aq.track_drift = 0;
    cfg.forward = synth_forward;
    cfg.backward = synth_backward;
    cfg.user = &sy;
    lh_pipeline p;
    check_lib("lh_pipeline_create", lh_pipeline_create(comm, &cfg, &p));
    for (size_t first = 0; first < sy.n; first += step)
      check_lib("lh_pipeline_step", lh_pipeline_step(p, order + first, NULL));
    MPI_Barrier(MPI_COMM_WORLD);
    double start = MPI_Wtime(), wait = 0, total = 0;
    unsigned long long fwd = 0, bwd = 0, steps = 0;
    for (int epoch = 0; epoch < o->epochs; epoch++)
      for (size_t first = 0; first < sy.n; first += step) {
        lh_pipeline_stats st = LH_PIPELINE_STATS_INIT;
        check_lib("lh_pipeline_step", lh_pipeline_step(p, order + first, &st));
        wait += st.wait_seconds, total += st.step_seconds;
        fwd += st.bytes_to_next, bwd += st.bytes_to_prev, steps++;
      }
    double mine = MPI_Wtime() - start, elapsed = 0;
    MPI_Allreduce(&mine, &elapsed, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    unsigned long long sent[2] = {fwd, bwd}, all[2] = {0, 0};
    MPI_Allreduce(sent, all, 2, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    double waits[2] = {wait, total}, waits_all[2] = {0, 0};
    MPI_Allreduce(waits, waits_all, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    check_lib("lh_pipeline_free", lh_pipeline_free(p));
    double rate = (double)sy.n * o->epochs / elapsed, msgs = (double)steps * o->micro_batches;
    if (a == ARM_FP32)
      fp32_rate = rate;
    if (rank == 0) {
      printf("  %-17s %10.1f %9.3f %11.0f %11.0f %7.1f %7.2f\n", arm_defs[a].label, rate, elapsed / o->epochs,
             (double)all[0] / msgs, (double)all[1] / msgs, 100 * waits_all[0] / waits_all[1],
             fp32_rate > 0 ? rate / fp32_rate : 1.0);
      fflush(stdout);
    }
  }
  free(order), free(sy.base), free(sy.visits), free(sy.grad);
  return 0;
}

/* ---- main ------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
  options o;
  int rc = parse_args(argc, argv, &o);
  if (rc >= 0)
    return rc;
  MPI_Init(&argc, &argv);
  openblas_set_num_threads(1); /* two ranks share two cores */
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size != 2) {
    if (rank == 0)
      fprintf(stderr, "aqsgd_convergence: needs exactly 2 ranks (mpirun -np 2), got %d\n", size);
    MPI_Finalize();
    return EXIT_USAGE;
  }
  lh_comm_config cc = LH_COMM_CONFIG_INIT;
  lh_comm comm;
  check_lib("lh_comm_create", lh_comm_create(&cc, &comm));
  rc = o.throughput ? run_throughput(comm, &o, rank) : run_convergence(comm, &o, rank);
  check_lib("lh_comm_destroy", lh_comm_destroy(comm));
  lh_finalize();
  MPI_Finalize();
  return rc;
}

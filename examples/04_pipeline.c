/* Example 4: a model cut into two pipeline stages, activations compressed with AQ-SGD.
 *
 *   LH_SIM_BW=100mbit LH_SIM_LAT=20ms mpirun -np 4 -x LH_SIM_BW -x LH_SIM_LAT ./04_pipeline
 *
 * 4 ranks = 2 stages x 2 replicas. The model is a linear regression through a hidden layer,
 * y = x W0 W1, on sequences of TOKENS rows: stage 0 holds W0 and sends x W0 (HIDDEN wide per
 * row) to stage 1, which holds W1 and the loss. A step pushes MICRO micro-batches through the
 * pipeline (1F1B); then the replicas of each stage average its gradient over the stage
 * communicator and take the same SGD step. The program trains twice from the same start:
 * uncompressed (fp32 on the wire) and with AQ-SGD (2-bit activation deltas forward, 4-bit
 * gradients backward), and prints the training loss per epoch, the loss of the final model
 * evaluated exactly, and the bytes on the links between the stages. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <longhaul/longhaul.h>

enum { EXAMPLES = 256, TOKENS = 32, IN = 8, HIDDEN = 64, OUT = 4, MICRO = 4, MICRO_BATCH = 8, MAX_EPOCHS = 20 };

static void check(lh_status st, const char *what) {
  if (st != LH_SUCCESS) {
    fprintf(stderr, "04_pipeline: %s: %s: %s\n", what, lh_status_string(st), lh_last_error());
    exit(1);
  }
}

/* Deterministic values in [-1, 1): the data set and the first weights. */
static float value(unsigned a, unsigned b) {
  unsigned h = a * 2654435761u ^ b * 40503u;
  h ^= h >> 15;
  h *= 0x2c1b3c6du;
  h ^= h >> 12;
  return (float)(h % 20001u) / 10000.0f - 1.0f;
}
static float input(int64_t id, int t, int i) { return value((unsigned)(id * TOKENS + t), (unsigned)i); }
static float target(int64_t id, int t, int o) { /* a teacher: y = x A */
  float y = 0;
  for (int i = 0; i < IN; i++)
    y += input(id, t, i) * value(7777u + (unsigned)i, (unsigned)o);
  return y;
}

/* rows x k times k x n; with `transposed`, b is n x k. */
static void matmul(const float *a, const float *b, float *c, int rows, int k, int n, int transposed) {
  for (int r = 0; r < rows; r++)
    for (int j = 0; j < n; j++) {
      float s = 0;
      for (int i = 0; i < k; i++)
        s += a[r * k + i] * (transposed ? b[j * k + i] : b[i * n + j]);
      c[r * n + j] = s;
    }
}
/* g += a^T d: the weight gradient of a layer from its input a and output gradient d. */
static void add_outer(const float *a, const float *d, float *g, int rows, int k, int n) {
  for (int r = 0; r < rows; r++)
    for (int i = 0; i < k; i++)
      for (int j = 0; j < n; j++)
        g[i * n + j] += a[r * k + i] * d[r * n + j];
}

typedef struct {
  int stage;
  float *w, *grad;                               /* stage 0: IN x HIDDEN; stage 1: HIDDEN x OUT */
  float x[MICRO][MICRO_BATCH * TOKENS * HIDDEN]; /* each micro-batch's input, kept for its backward */
} model;

static int width_in(const model *m) { return m->stage == 0 ? IN : HIDDEN; }
static int width_out(const model *m) { return m->stage == 0 ? HIDDEN : OUT; }

static lh_status forward(void *user, lh_stage_call *call) {
  model *m = user;
  int rows = (int)call->count * TOKENS, k = width_in(m), n = width_out(m);
  float *x = m->x[call->training ? call->micro : 0], y[MICRO_BATCH * TOKENS * OUT];
  for (size_t e = 0; e < call->count; e++) /* stage 0 reads its inputs by example id */
    for (int t = 0; t < TOKENS; t++)
      for (int i = 0; i < k; i++)
        x[(e * TOKENS + t) * k + i] = m->stage == 0 ? input(call->ids[e], t, i) : call->input[(e * TOKENS + t) * k + i];
  matmul(x, m->w, m->stage == 0 ? call->output : y, rows, k, n, 0);
  if (m->stage == 1) /* the last stage: squared error against the teacher */
    for (size_t e = 0; e < call->count; e++)
      for (int t = 0; t < TOKENS; t++)
        for (int o = 0; o < OUT; o++) {
          double d = y[(e * TOKENS + t) * OUT + o] - target(call->ids[e], t, o);
          call->loss += 0.5 * d * d / TOKENS;
        }
  return LH_SUCCESS;
}

static lh_status backward(void *user, lh_stage_call *call) {
  model *m = user;
  int rows = (int)call->count * TOKENS, k = width_in(m), n = width_out(m);
  const float *x = m->x[call->micro], *dy = call->grad_output;
  float d[MICRO_BATCH * TOKENS * OUT];
  if (m->stage == 1) { /* d loss / d y, from the input kept by the forward */
    matmul(x, m->w, d, rows, k, n, 0);
    for (size_t e = 0; e < call->count; e++)
      for (int t = 0; t < TOKENS; t++)
        for (int o = 0; o < OUT; o++)
          d[(e * TOKENS + t) * OUT + o] = (d[(e * TOKENS + t) * OUT + o] - target(call->ids[e], t, o)) / TOKENS;
    dy = d;
    matmul(dy, m->w, call->grad_input, rows, n, k, 1); /* what goes back to stage 0 */
  }
  add_outer(x, dy, m->grad, rows, k, n);
  return LH_SUCCESS;
}

typedef struct {
  double loss[MAX_EPOCHS], eval_loss;
  double to_next, to_prev; /* bytes per replica over the whole run */
} result;

/* Trains from the first weights with cfg.aq as given; every rank gets the result. */
static result train(lh_comm world, lh_pipeline_config cfg, int epochs) {
  result res;
  memset(&res, 0, sizeof res);
  model *m = calloc(1, sizeof *m);
  if (!m)
    check(LH_ERR_OUT_OF_MEMORY, "allocating the model");
  lh_pipeline p;
  int replica;
  lh_comm dp;
  cfg.user = m;
  check(lh_pipeline_create(world, &cfg, &p), "creating the pipeline");
  lh_pipeline_position(p, &m->stage, &replica);
  lh_pipeline_stage_comm(p, &dp);
  size_t nw = (size_t)width_in(m) * width_out(m);
  m->w = malloc(nw * sizeof(float));
  m->grad = malloc(nw * sizeof(float));
  if (!m->w || !m->grad)
    check(LH_ERR_OUT_OF_MEMORY, "allocating the weights");
  for (size_t i = 0; i < nw; i++)
    m->w[i] = value(100u + (unsigned)m->stage, (unsigned)i) / sqrtf((float)width_in(m));
  const int per_step = MICRO * MICRO_BATCH, shard = EXAMPLES / cfg.replicas, steps = shard / per_step;
  int64_t ids[MICRO * MICRO_BATCH];
  for (int epoch = 0; epoch < epochs; epoch++) {
    double loss = 0;
    for (int step = 0; step < steps; step++) {
      /* Each replica keeps its own shard of the data set, in another order every epoch: its
       * AQ-SGD buffers are its own, so an example that changed replica would start over. */
      for (int k = 0; k < per_step; k++)
        ids[k] = replica * shard + ((step * per_step + k) * 37 + epoch * 11) % shard;
      memset(m->grad, 0, nw * sizeof(float));
      lh_pipeline_stats stats = LH_PIPELINE_STATS_INIT;
      check(lh_pipeline_step(p, ids, &stats), "a training step");
      loss += stats.loss;
      res.to_next += (double)stats.bytes_to_next;
      res.to_prev += (double)stats.bytes_to_prev;
      /* data parallel: average the stage's gradient over its replicas, the same step everywhere */
      check(lh_allreduce(dp, m->grad, m->grad, nw, NULL), "averaging the gradient");
      for (size_t i = 0; i < nw; i++)
        m->w[i] -= 0.05f * m->grad[i] / (float)(cfg.replicas * per_step);
    }
    float sum = (float)loss; /* stage 1: its replicas' losses; stage 0 adds zeros */
    check(lh_allreduce(dp, &sum, &sum, 1, NULL), "summing the loss");
    res.loss[epoch] = sum / EXAMPLES;
  }
  /* The model as it is, evaluated uncompressed: each replica takes its shard. */
  int64_t eval_ids[EXAMPLES];
  for (int k = 0; k < shard; k++)
    eval_ids[k] = replica * shard + k;
  lh_pipeline_stats stats = LH_PIPELINE_STATS_INIT;
  check(lh_pipeline_eval(p, eval_ids, (size_t)shard, &stats), "evaluating");
  float sum = (float)stats.loss;
  check(lh_allreduce(dp, &sum, &sum, 1, NULL), "summing the loss");
  res.eval_loss = sum / EXAMPLES;
  /* Rank 1 (stage 1) knows the losses and the backward bytes, rank 0 the forward bytes. */
  check(lh_bcast(world, res.loss, sizeof res.loss, 1), "sharing the losses");
  check(lh_bcast(world, &res.eval_loss, sizeof res.eval_loss, 1), "sharing the losses");
  check(lh_bcast(world, &res.to_prev, sizeof res.to_prev, 1), "sharing the byte counts");
  check(lh_bcast(world, &res.to_next, sizeof res.to_next, 0), "sharing the byte counts");
  check(lh_pipeline_free(p), "freeing the pipeline");
  free(m->w);
  free(m->grad);
  free(m);
  return res;
}

int main(int argc, char **argv) {
  int epochs = 6;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--epochs") && i + 1 < argc && atoi(argv[i + 1]) >= 1 && atoi(argv[i + 1]) <= MAX_EPOCHS) {
      epochs = atoi(argv[++i]);
    } else {
      int help = !strcmp(argv[i], "-h") || !strcmp(argv[i], "--help");
      fprintf(help ? stdout : stderr,
              "%susage: mpirun -np 4 %s [--epochs N]\n"
              "Trains a 2-stage x 2-replica linear regression with the pipeline runtime, twice: fp32\n"
              "activations and AQ-SGD (2-bit forward, 4-bit backward); prints the loss per epoch (N, 1-%d,\n"
              "default 6) and the bytes between the stages. LH_SIM_BW / LH_SIM_LAT simulate slow links.\n",
              help ? "" : "04_pipeline: unknown argument\n", argv[0], MAX_EPOCHS);
      return help ? 0 : 2;
    }
  }
  lh_comm world;
  check(lh_comm_create(NULL, &world), "creating the communicator");
  int rank, size;
  lh_comm_rank(world, &rank);
  lh_comm_size(world, &size);
  if (size != 4) {
    if (rank == 0)
      fprintf(stderr, "04_pipeline: run it on 4 ranks (2 stages x 2 replicas), not %d\n", size);
    lh_comm_destroy(world);
    lh_finalize();
    return 2;
  }

  size_t widths[1] = {HIDDEN};
  lh_pipeline_config cfg = LH_PIPELINE_CONFIG_INIT;
  cfg.stages = 2;
  cfg.replicas = 2;
  cfg.micro_batches = MICRO;
  cfg.micro_batch = MICRO_BATCH;
  cfg.examples = EXAMPLES;
  cfg.tokens = TOKENS;
  cfg.boundary_channels = widths;
  cfg.forward = forward;
  cfg.backward = backward;

  cfg.aq.mode = LH_AQ_OFF; /* the baseline: every row in fp32 */
  cfg.aq.storage = LH_AQ_FP32;
  result off = train(world, cfg, epochs);
  cfg.aq.mode = LH_AQ_DELTA; /* AQ-SGD: fp16 buffers; the first visit of an example goes in full */
  cfg.aq.storage = LH_AQ_FP16;
  cfg.aq.forward_bits = 2;
  cfg.aq.backward_bits = 4;
  cfg.aq.rounding = LH_ROUND_STOCHASTIC;
  result aq = train(world, cfg, epochs);

  if (rank == 0) {
    int simulated;
    char links[160];
    lh_comm_simulation(world, &simulated, links, sizeof links);
    printf("2 stages x 2 replicas, %d examples of %d x %d floats at the boundary, links: %s\n", EXAMPLES, TOKENS,
           HIDDEN, simulated ? links : "real");
    printf("epoch  training loss fp32  AQ-SGD fw2/bw4\n");
    for (int e = 0; e < epochs; e++)
      printf("%5d  %18.5f  %14.5f\n", e + 1, off.loss[e], aq.loss[e]);
    printf("bytes per replica, stage 0 -> 1: fp32 %.0f KiB, AQ-SGD %.0f KiB; stage 1 -> 0: fp32 %.0f KiB, "
           "AQ-SGD %.0f KiB\n",
           off.to_next / 1024, aq.to_next / 1024, off.to_prev / 1024, aq.to_prev / 1024);
    printf("2 stages x 2 replicas: AQ-SGD fw2/bw4 final loss %.5f (fp32 %.5f), %.1fx fewer bytes between stages\n",
           aq.eval_loss, off.eval_loss, (off.to_next + off.to_prev) / (aq.to_next + aq.to_prev));
  }
  check(lh_comm_destroy(world), "destroying the communicator");
  lh_finalize();
  return 0;
}

/* sched_validate: does the scheduler's `pipelined` objective predict what the runtime does, and
 * does its plan beat random ones on real (simulated) links?
 *
 *   mpirun -np 8 --oversubscribe ./bench/sched_validate                 # the default testbed
 *   mpirun -np 8 --oversubscribe ./bench/sched_validate --links my.links --pp 4 --dp 2
 *
 * Every rank simulates the link file's links (latency, bandwidth, speed per device; see
 * examples/links/validate8.links: three sites, four link classes, three device speeds). A
 * synthetic model with the message sizes of the objective's model runs through the real
 * runtime: lh_pipeline (GPipe, activations uncompressed) for the micro-batches, then a ring
 * lh_allreduce of each stage's gradients over its data-parallel group. A stage's compute is a
 * sleep of layers x layer_seconds / speed (a third forward, two thirds backward), so eight
 * ranks share two cores without their computes competing. Each plan (the scheduler's and
 * --random others) runs --iters measured iterations after one warm-up; an iteration is the
 * time from a common start to the last rank's all-reduce end. The table gives the predicted
 * and the measured (median) iteration time, the error, and the scheduler's speed-up.
 *
 * Only the public API is used, plus MPI for the common start and the results. */
#define _POSIX_C_SOURCE 200809L /* nanosleep, mkstemp */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mpi.h>
#include <longhaul/longhaul.h>

enum { EXIT_USAGE = 2, MAX_PLANS = 64 };

typedef struct {
  const char *links;
  int pp, dp, random_plans, iters, quick;
  uint64_t seed;
  int layers, micro_batches, micro_batch, tokens, channels;
  double params_per_layer, layer_seconds, budget;
} options;

static void usage(FILE *f) {
  fprintf(f,
          "Usage: mpirun -np N sched_validate [options]   (N = the link file's devices)\n"
          "Runs the scheduler's plan and random plans through the pipeline runtime on simulated\n"
          "links and compares the measured iteration time with the `pipelined` objective's.\n"
          "  --links FILE          link file (default: examples/links/validate8.links, 8 devices)\n"
          "  --pp P, --dp D        degrees, P x D = N (default 4 x 2)\n"
          "  --random K            random plans to compare with (default 5)\n"
          "  --iters I             measured iterations per plan, after one warm-up (default 3)\n"
          "  --seed S              seed of the scheduler and of the random plans (default 1)\n"
          "  --layers L            model layers (default 8)\n"
          "  --params-per-layer X  parameters per layer, fp32 on the wire (default 500000)\n"
          "  --layer-seconds X     forward + backward of a layer on one micro-batch at speed 1 (default 0.02)\n"
          "  --micro-batches M     per iteration (default 4)\n"
          "  --shape B,T,C         micro-batch examples, tokens, channels at every boundary\n"
          "                        (default 4,16,1024: 256 KiB of fp32 per message)\n"
          "  --time-budget SEC     the scheduler's (default 1)\n"
          "  --quick               --random 2 --iters 1 (a smoke run)\n"
          "  --help                this text\n"
          "Exit status: 0 every run completed with the expected results, 1 a failure, 2 bad flags.\n");
}

static int parse_number(const char *flag, const char *text, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double v = strtod(text, &end);
  if (errno || end == text || *end || !(v >= lo && v <= hi)) {
    fprintf(stderr, "sched_validate: %s wants a number from %g to %g, not '%s'\n", flag, lo, hi, text);
    return 0;
  }
  *out = v;
  return 1;
}

static int parse_options(int argc, char **argv, options *o) {
  *o = (options){NULL, 4, 2, 5, 3, 0, 1, 8, 4, 4, 16, 1024, 500000, 0.02, 1.0};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    double v;
    if (!strcmp(a, "--help")) {
      usage(stdout);
      exit(0);
    }
    if (!strcmp(a, "--quick")) {
      o->quick = 1;
      o->random_plans = 2;
      o->iters = 1;
      continue;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "sched_validate: unknown option '%s' (or it lacks its value); see --help\n", a);
      return 0;
    }
    const char *val = argv[++i];
    if (!strcmp(a, "--links"))
      o->links = val;
    else if (!strcmp(a, "--pp") && parse_number(a, val, 1, 4096, &v))
      o->pp = (int)v;
    else if (!strcmp(a, "--dp") && parse_number(a, val, 1, 4096, &v))
      o->dp = (int)v;
    else if (!strcmp(a, "--random") && parse_number(a, val, 0, MAX_PLANS - 1, &v))
      o->random_plans = (int)v;
    else if (!strcmp(a, "--iters") && parse_number(a, val, 1, 1000, &v))
      o->iters = (int)v;
    else if (!strcmp(a, "--seed") && parse_number(a, val, 0, 1e15, &v))
      o->seed = (uint64_t)v;
    else if (!strcmp(a, "--layers") && parse_number(a, val, 1, 1e6, &v))
      o->layers = (int)v;
    else if (!strcmp(a, "--params-per-layer") && parse_number(a, val, 1, 1e9, &v))
      o->params_per_layer = v;
    else if (!strcmp(a, "--layer-seconds") && parse_number(a, val, 0, 60, &v))
      o->layer_seconds = v;
    else if (!strcmp(a, "--micro-batches") && parse_number(a, val, 1, 1024, &v))
      o->micro_batches = (int)v;
    else if (!strcmp(a, "--time-budget") && parse_number(a, val, 1e-3, 3600, &v))
      o->budget = v;
    else if (!strcmp(a, "--shape")) {
      if (sscanf(val, "%d,%d,%d", &o->micro_batch, &o->tokens, &o->channels) != 3 || o->micro_batch < 1 ||
          o->tokens < 1 || o->channels < 1) {
        fprintf(stderr, "sched_validate: --shape wants B,T,C (three positive integers), not '%s'\n", val);
        return 0;
      }
    } else {
      if (!strcmp(a, "--links") || !strcmp(a, "--pp") || !strcmp(a, "--dp") || !strcmp(a, "--random") ||
          !strcmp(a, "--iters") || !strcmp(a, "--seed") || !strcmp(a, "--layers") ||
          !strcmp(a, "--params-per-layer") || !strcmp(a, "--layer-seconds") || !strcmp(a, "--micro-batches") ||
          !strcmp(a, "--time-budget"))
        return 0; /* parse_number said why */
      fprintf(stderr, "sched_validate: unknown option '%s'; see --help\n", a);
      return 0;
    }
  }
  return 1;
}

static void die(lh_status st, const char *what) {
  fprintf(stderr, "sched_validate: %s: %s: %s\n", what, lh_status_string(st), lh_last_error());
  MPI_Abort(MPI_COMM_WORLD, 1);
}
#define CHECK(call, what)         \
  do {                            \
    lh_status st_ = (call);       \
    if (st_ != LH_SUCCESS)        \
      die(st_, what);             \
  } while (0)

static void sleep_for(double seconds) {
  if (seconds <= 0)
    return;
  struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* The stage this rank runs: its compute time per micro-batch. */
typedef struct {
  double forward_s, backward_s;
  size_t floats_per_example; /* tokens x channels at the boundary */
} stage_work;

static lh_status forward(void *user, lh_stage_call *call) {
  const stage_work *w = user;
  sleep_for(w->forward_s);
  if (call->output) /* defined values on the wire; which ones does not matter */
    memset(call->output, 0, call->count * w->floats_per_example * sizeof(float));
  return LH_SUCCESS;
}
static lh_status backward(void *user, lh_stage_call *call) {
  const stage_work *w = user;
  sleep_for(w->backward_s);
  (void)call;
  return LH_SUCCESS;
}

static double median(double *v, int n) {
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
      double t = v[j];
      v[j] = v[j - 1];
      v[j - 1] = t;
    }
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Runs one plan; returns the median measured iteration time (the same on every rank). */
static double run_plan(lh_comm world, const options *o, const lh_plan *plan, const lh_links *links,
                       const lh_sched_model *model) {
  int rank, size;
  lh_comm_rank(world, &rank);
  lh_comm_size(world, &size);
  int *stage_of = malloc(sizeof(int) * (size_t)size), *replica_of = malloc(sizeof(int) * (size_t)size);
  int *layers = malloc(sizeof(int) * (size_t)o->pp);
  size_t *widths = malloc(sizeof(size_t) * (size_t)(o->pp > 1 ? o->pp - 1 : 1));
  if (!stage_of || !replica_of || !layers || !widths)
    die(LH_ERR_OUT_OF_MEMORY, "allocating the placement");
  CHECK(lh_plan_placement(plan, stage_of, replica_of, size), "the plan's placement");
  CHECK(lh_plan_stage_layers(plan, model, layers, o->pp), "the plan's layers per stage");
  for (int k = 0; k + 1 < o->pp; k++)
    widths[k] = (size_t)o->channels;
  const char *site;
  double speed;
  CHECK(lh_links_get_device(links, rank, &site, &speed), "this rank's device speed");
  int stage = stage_of[rank];
  double compute = layers[stage] * o->layer_seconds / speed;
  stage_work work = {compute / 3, compute - compute / 3, (size_t)o->tokens * (size_t)o->channels};

  lh_pipeline_config cfg = LH_PIPELINE_CONFIG_INIT;
  cfg.stages = o->pp;
  cfg.replicas = o->dp;
  cfg.stage_of_rank = stage_of;
  cfg.replica_of_rank = replica_of;
  cfg.micro_batches = o->micro_batches;
  cfg.micro_batch = (size_t)o->micro_batch;
  cfg.tokens = (size_t)o->tokens;
  cfg.boundary_channels = widths;
  cfg.examples = (size_t)o->micro_batches * o->micro_batch * o->dp;
  cfg.schedule = LH_SCHEDULE_GPIPE;
  cfg.aq.mode = LH_AQ_OFF; /* fp32 on the wire: the objective's 4 bytes per element */
  cfg.forward = forward;
  cfg.backward = backward;
  cfg.user = &work;
  lh_pipeline p;
  CHECK(lh_pipeline_create(world, &cfg, &p), "creating the pipeline");
  lh_comm dp_comm;
  CHECK(lh_pipeline_stage_comm(p, &dp_comm), "the stage communicator");
  size_t grad_count = (size_t)llround(layers[stage] * o->params_per_layer);
  float *grad = calloc(grad_count ? grad_count : 1, sizeof(float));
  int64_t *ids = malloc(sizeof(int64_t) * (size_t)o->micro_batches * o->micro_batch);
  if (!grad || !ids)
    die(LH_ERR_OUT_OF_MEMORY, "allocating the gradients");
  int replica = replica_of[rank];
  for (int i = 0; i < o->micro_batches * o->micro_batch; i++)
    ids[i] = (int64_t)replica * o->micro_batches * o->micro_batch + i;
  lh_allreduce_config ar = LH_ALLREDUCE_CONFIG_INIT;
  ar.algo = LH_ALLREDUCE_RING; /* the collective the objective models */

  double times[1000];
  for (int it = 0; it <= o->iters; it++) {
    MPI_Barrier(MPI_COMM_WORLD);
    double start = MPI_Wtime();
    CHECK(lh_pipeline_step(p, ids, NULL), "a pipeline step");
    CHECK(lh_allreduce(dp_comm, grad, grad, grad_count, &ar), "the stage's all-reduce");
    double end = MPI_Wtime(), first_start, last_end;
    MPI_Allreduce(&start, &first_start, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(&end, &last_end, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (it > 0) /* the first is the warm-up */
      times[it - 1] = last_end - first_start;
  }
  for (size_t i = 0; i < grad_count; i++)
    if (grad[i] != 0)
      die(LH_ERR_INTERNAL, "the all-reduce of zeros gave a non-zero");
  CHECK(lh_pipeline_free(p), "freeing the pipeline");
  free(stage_of);
  free(replica_of);
  free(layers);
  free(widths);
  free(grad);
  free(ids);
  return median(times, o->iters);
}

int main(int argc, char **argv) {
  options o;
  MPI_Init(&argc, &argv);
  int wrank;
  MPI_Comm_rank(MPI_COMM_WORLD, &wrank);
  if (!parse_options(argc, argv, &o)) {
    MPI_Finalize();
    return EXIT_USAGE;
  }
  char default_links[4096];
  if (!o.links) {
    const char *dir = getenv("LONGHAUL_SOURCE_DIR");
    snprintf(default_links, sizeof default_links, "%s/examples/links/validate8.links", dir ? dir : LH_SOURCE_DIR);
    o.links = default_links;
  }
  lh_links *links;
  CHECK(lh_links_read_file(o.links, &links), "reading the link file");
  int devices, size;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  lh_links_devices(links, &devices);
  if (devices != size || o.pp * o.dp != size) {
    if (wrank == 0)
      fprintf(stderr, "sched_validate: %s has %d devices and --pp x --dp is %d x %d; run with mpirun -np %d\n",
              o.links, devices, o.pp, o.dp, devices);
    MPI_Finalize();
    return EXIT_USAGE;
  }
  lh_comm_config cc = LH_COMM_CONFIG_INIT;
  cc.links_path = o.links;
  lh_comm world;
  CHECK(lh_comm_create(&cc, &world), "creating the communicator on simulated links");

  lh_sched_config sc = LH_SCHED_CONFIG_INIT;
  sc.objective = LH_SCHED_PIPELINED;
  sc.pp = o.pp;
  sc.dp = o.dp;
  sc.seed = o.seed;
  sc.time_budget_s = o.budget;
  sc.model.layers = o.layers;
  sc.model.params_per_layer = o.params_per_layer;
  sc.model.activation_elements = (double)o.micro_batch * o.tokens * o.channels;
  sc.model.micro_batches = o.micro_batches;
  sc.model.activation_element_bytes = 4;
  sc.model.activation_grad_element_bytes = 4;
  sc.model.gradient_element_bytes = 4;
  sc.model.layer_seconds = o.layer_seconds;

  /* The scheduler's plan, solved on rank 0 and sent to all (the time budget could make ranks
   * differ), then the random ones every rank draws alike. */
  int nplans = 1 + o.random_plans;
  lh_plan *plans[MAX_PLANS];
  int *stage = malloc(sizeof(int) * (size_t)size), *replica = malloc(sizeof(int) * (size_t)size);
  if (!stage || !replica)
    die(LH_ERR_OUT_OF_MEMORY, "allocating plans");
  if (wrank == 0) {
    CHECK(lh_sched_solve(links, &sc, &plans[0]), "solving");
    for (int d = 0; d < size; d++)
      CHECK(lh_plan_device(plans[0], d, &stage[d], &replica[d]), "reading the plan");
  }
  MPI_Bcast(stage, size, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Bcast(replica, size, MPI_INT, 0, MPI_COMM_WORLD);
  if (wrank != 0)
    CHECK(lh_plan_create(size, o.pp, o.dp, stage, replica, &plans[0]), "receiving the plan");
  for (int k = 1; k < nplans; k++)
    CHECK(lh_plan_random(size, o.pp, o.dp, o.seed * 1000 + (uint64_t)k, &plans[k]), "a random plan");

  double predicted[MAX_PLANS], measured[MAX_PLANS], error[MAX_PLANS];
  if (wrank == 0) {
    printf("# sched_validate: %d ranks on %s, %d x %d (pp x dp), GPipe, %d micro-batches of %d x %d x %d fp32, "
           "%d layers x %.0f parameters, %g s per layer at speed 1; %d measured iterations per plan\n",
           size, o.links, o.pp, o.dp, o.micro_batches, o.micro_batch, o.tokens, o.channels, o.layers,
           o.params_per_layer, o.layer_seconds, o.iters);
    printf("%-10s %12s %12s %8s %9s   %s\n", "plan", "predicted_s", "measured_s", "error%", "speedup",
           "stages (devices by replica)");
    fflush(stdout);
  }
  for (int k = 0; k < nplans; k++) {
    CHECK(lh_sched_evaluate(links, &sc, plans[k], &predicted[k], NULL, NULL), "predicting");
    measured[k] = run_plan(world, &o, plans[k], links, &sc.model);
    error[k] = (measured[k] - predicted[k]) / measured[k];
    if (wrank == 0) {
      char name[32], layout[512];
      snprintf(name, sizeof name, k == 0 ? "scheduler" : "random %d", k);
      size_t used = 0;
      layout[0] = 0;
      for (int s = 0; s < o.pp && used < sizeof layout - 32; s++) {
        used += (size_t)snprintf(layout + used, sizeof layout - used, s ? " | " : "");
        for (int r = 0; r < o.dp; r++) {
          int d;
          lh_plan_device_at(plans[k], s, r, &d);
          used += (size_t)snprintf(layout + used, sizeof layout - used, r ? " %d" : "%d", d);
        }
      }
      printf("%-10s %12.3f %12.3f %+8.1f %9.2f   %s\n", name, predicted[k], measured[k], 100 * error[k],
             measured[k] / measured[0], layout);
      fflush(stdout);
    }
  }
  int status = 0;
  if (wrank == 0) {
    double abs_err[MAX_PLANS], worst_random = 0, sum_speedup = 0, min_speedup = INFINITY;
    for (int k = 0; k < nplans; k++)
      abs_err[k] = fabs(error[k]);
    for (int k = 1; k < nplans; k++) {
      double s = measured[k] / measured[0];
      sum_speedup += s;
      min_speedup = fmin(min_speedup, s);
      worst_random = fmax(worst_random, measured[k]);
    }
    double med = median(abs_err, nplans);
    printf("# median |error| %.1f%% over %d plans (goal <= 15%%: %s)\n", 100 * med, nplans,
           med <= 0.15 ? "met" : "NOT MET");
    if (nplans > 1)
      printf("# scheduler's plan vs %d random plans: %.2fx faster on average, %.2fx at least\n", nplans - 1,
             sum_speedup / (nplans - 1), min_speedup);
    /* Correctness of the run, not its speed: every plan ran and every prediction is a time. */
    for (int k = 0; k < nplans; k++)
      if (!(predicted[k] > 0 && measured[k] > 0))
        status = 1;
    (void)worst_random;
  }
  MPI_Bcast(&status, 1, MPI_INT, 0, MPI_COMM_WORLD);
  for (int k = 0; k < nplans; k++)
    lh_plan_free(plans[k]);
  free(stage);
  free(replica);
  lh_links_free(links);
  lh_comm_destroy(world);
  lh_finalize();
  MPI_Finalize();
  return status;
}

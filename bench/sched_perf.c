/* sched_perf: the scheduler's quality and speed. For each instance (DT-FM's five 64-device
 * scenarios under both objectives, a 256-device world-wide variant of scenario 5, random
 * networks) it solves a P x D placement and sets the cost beside the lower bound, the costs
 * DT-FM's genetic algorithm reaches, and the best and median of many uniformly random
 * placements. The same run checks what must hold for every plan (bound <= cost, the reported
 * cost is what lh_sched_evaluate recomputes, the solver beats random placements) and DT-FM's
 * costs; those make the exit status 1. Timing targets are printed as verdicts only, since they
 * depend on the machine. See --help for the flags and columns. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <longhaul/longhaul.h>

#ifndef LH_SOURCE_DIR
#define LH_SOURCE_DIR "."
#endif

/* DT-FM's five reference scenarios and the costs its genetic algorithm reaches (to 3 decimals,
 * hence the half-unit slack in the verdict). */
static const struct {
  const char *name, *file;
  double target;
} kScenarios[] = {{"dtfm1", "dtfm-1-datacenter-on-demand.links", 3.440},
                  {"dtfm2", "dtfm-2-datacenter-spot.links", 31.634},
                  {"dtfm3", "dtfm-3-multi-datacenter.links", 16.087},
                  {"dtfm4", "dtfm-4-regional.links", 34.802},
                  {"dtfm5", "dtfm-5-worldwide.links", 49.218}};
enum { kScenarioCount = 5 };
static const double kTargetSlack = 0.0005;
/* Timing targets: verdict text only. */
static const double kSolveTarget64 = 1.0, kConstructTarget64 = 0.050, kSolveTarget256 = 10.0;

typedef struct options {
  double budget, budget_256;
  uint64_t seed;
  int randoms, random_k, run_256, csv;
  const char *write_256, *scenarios;
} options;

/* The checks every row must pass, counted over the run. */
enum { CHECK_BOUND_COST, CHECK_BOUND_RANDOM, CHECK_EVALUATE, CHECK_BEATS_RANDOM, CHECK_COUNT };
static const char *const kCheckNames[CHECK_COUNT] = {
    "lower_bound <= cost", "lower_bound <= random_best", "lh_sched_evaluate(plan) == cost (exactly)",
    "cost <= random_best"};

typedef struct tally {
  long wrong[CHECK_COUNT];
  long rows, target_rows, misses, errors;
} tally;

typedef struct row {
  char name[32];
  int devices, pp, dp;
  lh_sched_objective objective;
  lh_plan_info info;
  double target; /* < 0: none */
  double random_best, random_median;
  char verdict[48];
} row;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int library_failed(const char *what, lh_status st) {
  fprintf(stderr, "sched_perf: %s failed: %s (%s)\n", what, lh_status_string(st), lh_last_error());
  return 1;
}

static int compare_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* ---- the table ----------------------------------------------------------------------------- */

static void print_legend(const options *o) {
  printf("# sched_perf: the scheduler (lh_sched_solve) on DT-FM's scenarios, a 256-device world-wide\n"
         "# variant and random networks; seed %" PRIu64 ", time budget %g s (256 devices: %g s), %d random\n"
         "# placements per row.\n",
         o->seed, o->budget, o->budget_256, o->randoms);
  printf("#   objective     dtfm: DT-FM's communication cost; pipelined: the runtime's iteration time\n"
         "#   cost          the solved plan's cost under the objective (seconds)\n"
         "#   target        the cost DT-FM's genetic algorithm reaches (dtfm scenarios only)\n"
         "#   lower_bound   no P x D placement can cost less; gap%% = (cost - lower_bound) / cost\n"
         "#   construct_ms  of solve_s, building and ranking the constructive starts\n"
         "#   budget_hit    yes: the time budget stopped the search (the result may vary with speed)\n"
         "#   random_best, random_median  over lh_plan_random seeds 0..%d; x_median = random_median / cost\n"
         "#   verdict       ok/MISS: cost <= target + %.4f; 256-device row ok/SLOW: solve_s <= %g s;\n"
         "#                 +SLOW: a 64-device solve over %g s, +SLOWC: its construction over %g ms\n"
         "#                 (timing verdicts depend on the machine and never change the exit status)\n",
         o->randoms - 1, kTargetSlack, kSolveTarget256, kSolveTarget64, 1e3 * kConstructTarget64);
  printf("%-12s %7s %5s %-9s %10s %8s %11s %6s %8s %12s %10s %11s %13s %8s  %s\n", "instance", "devices", "PxD",
         "objective", "cost", "target", "lower_bound", "gap%", "solve_s", "construct_ms", "budget_hit",
         "random_best", "random_median", "x_median", "verdict");
}

static void print_row(const row *r, int csv) {
  const char *objective = "?";
  lh_sched_objective_name(r->objective, &objective);
  char pxd[16], target[16];
  snprintf(pxd, sizeof pxd, "%dx%d", r->pp, r->dp);
  if (r->target >= 0)
    snprintf(target, sizeof target, "%.3f", r->target);
  else
    snprintf(target, sizeof target, "-");
  const lh_plan_info *i = &r->info;
  double x_median = i->cost > 0 ? r->random_median / i->cost : 0;
  if (csv)
    printf("%s,%d,%s,%s,%.6f,%s,%.6f,%.3f,%.4f,%.3f,%d,%.6f,%.6f,%.4f,%s\n", r->name, r->devices, pxd, objective,
           i->cost, r->target >= 0 ? target : "", i->lower_bound, 100.0 * i->gap, i->solve_seconds,
           1e3 * i->construct_seconds, i->budget_hit, r->random_best, r->random_median, x_median, r->verdict);
  else
    printf("%-12s %7d %5s %-9s %10.4f %8s %11.4f %6.1f %8.3f %12.1f %10s %11.4f %13.4f %8.2f  %s\n", r->name,
           r->devices, pxd, objective, i->cost, target, i->lower_bound, 100.0 * i->gap, i->solve_seconds,
           1e3 * i->construct_seconds, i->budget_hit ? "yes" : "no", r->random_best, r->random_median, x_median,
           r->verdict);
  fflush(stdout);
}

/* ---- one instance ---------------------------------------------------------------------------- */

/* Solves, scores the random placements, checks, prints the row. Returns 1 when the library
 * refused (the row is then missing), else 0; failed checks land in the tally. */
static int run_instance(const char *name, const lh_links *links, lh_sched_objective objective, int pp, int dp,
                        double budget, double target, const options *o, tally *t) {
  row r;
  memset(&r, 0, sizeof r);
  snprintf(r.name, sizeof r.name, "%s", name);
  r.pp = pp;
  r.dp = dp;
  r.objective = objective;
  r.target = target;
  lh_status st = lh_links_devices(links, &r.devices);
  if (st != LH_SUCCESS)
    return library_failed("lh_links_devices", st);

  lh_sched_config cfg = LH_SCHED_CONFIG_INIT;
  cfg.pp = pp;
  cfg.dp = dp;
  cfg.objective = objective;
  cfg.seed = o->seed;
  cfg.time_budget_s = budget;

  const char *objective_name = "?";
  lh_sched_objective_name(objective, &objective_name);
  double started = now_s();
  fprintf(stderr, "sched_perf: %s (%s, %d devices, %dx%d): solving (budget %g s), then %d random placements\n",
          name, objective_name, r.devices, pp, dp, budget, o->randoms);

  lh_plan *plan = NULL;
  st = lh_sched_solve(links, &cfg, &plan);
  if (st != LH_SUCCESS)
    return library_failed("lh_sched_solve", st);
  r.info.size = sizeof r.info;
  st = lh_plan_get_info(plan, &r.info);
  double evaluated = NAN;
  if (st == LH_SUCCESS)
    st = lh_sched_evaluate(links, &cfg, plan, &evaluated, NULL, NULL);
  lh_plan_free(plan);
  if (st != LH_SUCCESS)
    return library_failed("lh_plan_get_info / lh_sched_evaluate", st);

  double *costs = malloc((size_t)o->randoms * sizeof *costs);
  if (!costs) {
    fprintf(stderr, "sched_perf: cannot allocate %d costs\n", o->randoms);
    return 1;
  }
  double scoring = now_s();
  for (int s = 0; s < o->randoms; s++) {
    /* Each lh_sched_evaluate prepares the links anew (milliseconds at 256 devices): say so when
     * the scoring will be long. */
    if (s == 10 && (now_s() - scoring) * o->randoms / 10 > 1.0)
      fprintf(stderr, "sched_perf: %s (%s): solved in %.1f s; scoring %d random placements (about %.0f s)\n", name,
              objective_name, r.info.solve_seconds, o->randoms, (now_s() - scoring) * o->randoms / 10);
    lh_plan *random = NULL;
    st = lh_plan_random(r.devices, pp, dp, (uint64_t)s, &random);
    if (st == LH_SUCCESS)
      st = lh_sched_evaluate(links, &cfg, random, &costs[s], NULL, NULL);
    lh_plan_free(random);
    if (st != LH_SUCCESS) {
      free(costs);
      return library_failed("lh_plan_random / lh_sched_evaluate", st);
    }
  }
  qsort(costs, (size_t)o->randoms, sizeof *costs, compare_double);
  r.random_best = costs[0];
  r.random_median = o->randoms % 2 ? costs[o->randoms / 2]
                                   : 0.5 * (costs[o->randoms / 2 - 1] + costs[o->randoms / 2]);
  free(costs);

  /* Exact comparisons: the bound and the costs come from the same evaluator and links. */
  const lh_plan_info *i = &r.info;
  int bad[CHECK_COUNT] = {!(i->lower_bound <= i->cost), !(i->lower_bound <= r.random_best),
                          !(evaluated == i->cost), !(i->cost <= r.random_best)};
  for (int c = 0; c < CHECK_COUNT; c++)
    if (bad[c]) {
      t->wrong[c]++;
      fprintf(stderr, "sched_perf: %s (%s): WRONG: %s does not hold (cost %.17g, lower_bound %.17g, evaluate %.17g, "
              "random_best %.17g)\n", name, objective_name, kCheckNames[c], i->cost, i->lower_bound, evaluated,
              r.random_best);
    }
  t->rows++;

  /* The verdict: the quality target first, then timing misses. */
  const char *quality = "-";
  if (target >= 0) {
    t->target_rows++;
    int miss = !(i->cost <= target + kTargetSlack);
    t->misses += miss;
    quality = miss ? "MISS" : "ok";
  }
  char timing[32] = "";
  if (r.devices > 64)
    quality = i->solve_seconds <= kSolveTarget256 ? "ok" : "SLOW";
  else {
    if (i->solve_seconds > kSolveTarget64)
      strcat(timing, "+SLOW");
    if (i->construct_seconds > kConstructTarget64)
      strcat(timing, "+SLOWC");
  }
  if (!strcmp(quality, "-") && timing[0])
    snprintf(r.verdict, sizeof r.verdict, "%s", timing + 1);
  else
    snprintf(r.verdict, sizeof r.verdict, "%s%s", quality, timing);
  print_row(&r, o->csv);
  double took = now_s() - started;
  if (took > 1.0)
    fprintf(stderr, "sched_perf: %s (%s): done in %.1f s\n", name, objective_name, took);
  return 0;
}

/* ---- the 256-device variant ------------------------------------------------------------------ */

/* Scenario 5 with every device copied 4 times: device j of 256 is device j / 4 of 64. Two
 * copies of the same device get the links from that device to another device of its city (the
 * intra-city values), so the copies behave as 4 devices in the same city. The file names no
 * sites; its cities are contiguous blocks of 8 devices, and the sibling taken from the block is
 * checked to have the same links to every third device (else the file is not what we think). */
static lh_status expand_x4(const lh_links *base, lh_links **out) {
  enum { kCity = 8 };
  *out = NULL;
  int n;
  lh_status st = lh_links_devices(base, &n);
  if (st != LH_SUCCESS)
    return st;
  if (n % kCity != 0) {
    fprintf(stderr, "sched_perf: scenario 5 has %d devices, not whole cities of %d\n", n, kCity);
    return LH_ERR_INVALID_ARGUMENT;
  }
  int *sibling = malloc((size_t)n * sizeof *sibling);
  if (!sibling)
    return LH_ERR_OUT_OF_MEMORY;
  for (int d = 0; d < n && st == LH_SUCCESS; d++) {
    int e = d / kCity * kCity + (d % kCity + 1) % kCity;
    sibling[d] = e;
    for (int z = 0; z < n && st == LH_SUCCESS; z++) {
      double a[4], b[4];
      if (z == d || z == e)
        continue;
      if ((st = lh_links_get(base, d, z, &a[0], &b[0])) != LH_SUCCESS ||
          (st = lh_links_get(base, e, z, &a[1], &b[1])) != LH_SUCCESS ||
          (st = lh_links_get(base, z, d, &a[2], &b[2])) != LH_SUCCESS ||
          (st = lh_links_get(base, z, e, &a[3], &b[3])) != LH_SUCCESS)
        break;
      if (a[0] != a[1] || b[0] != b[1] || a[2] != a[3] || b[2] != b[3]) {
        fprintf(stderr, "sched_perf: scenario 5's devices %d and %d (one city block) differ in their links to "
                "device %d; cannot copy them\n", d, e, z);
        st = LH_ERR_INVALID_ARGUMENT;
      }
    }
  }
  lh_links *big = NULL;
  if (st == LH_SUCCESS)
    st = lh_links_create(4 * n, 0.0, 1.0, &big);
  for (int j = 0; j < 4 * n && st == LH_SUCCESS; j++) {
    const char *site;
    double speed, uplink;
    st = lh_links_get_device(base, j / 4, &site, &speed);
    if (st == LH_SUCCESS)
      st = lh_links_set_device(big, j, site, speed);
    if (st == LH_SUCCESS)
      st = lh_links_get_uplink(base, j / 4, &uplink);
    if (st == LH_SUCCESS)
      st = lh_links_set_uplink(big, j, uplink);
    for (int k = 0; k < 4 * n && st == LH_SUCCESS; k++) {
      if (k == j)
        continue;
      int a = j / 4, b = k / 4;
      double latency, bandwidth;
      st = lh_links_get(base, a, a == b ? sibling[a] : b, &latency, &bandwidth);
      if (st == LH_SUCCESS)
        st = lh_links_set(big, j, k, latency, bandwidth);
    }
  }
  free(sibling);
  if (st != LH_SUCCESS) {
    lh_links_free(big);
    return st;
  }
  *out = big;
  return LH_SUCCESS;
}

/* ---- the command line ------------------------------------------------------------------------ */

static void usage(FILE *f) {
  fprintf(f,
          "Usage: sched_perf [--time-budget SEC] [--seed S] [--randoms R] [--random K] [--budget-256 SEC]\n"
          "                  [--no-256] [--write-256 FILE] [--scenarios DIR] [--quick] [--csv]\n"
          "  Solves stage x replica placements with lh_sched_solve and prints one row per instance:\n"
          "  DT-FM's five 64-device scenarios (8x8) under the dtfm objective against the costs DT-FM's\n"
          "  genetic algorithm reaches, the same under the pipelined objective, a 256-device world-wide\n"
          "  variant of scenario 5 (8x32, dtfm), and K random 64-device networks (8x8, both objectives).\n"
          "  Every row is compared with R uniformly random placements and checked: lower_bound <= cost,\n"
          "  lower_bound <= random_best, lh_sched_evaluate(plan) == cost exactly, cost <= random_best.\n"
          "  --time-budget SEC  solver time budget for the 64-device rows (default 1)\n"
          "  --seed S           solver seed (default 1)\n"
          "  --randoms R        random placements per row, seeds 0..R-1 (default 1000)\n"
          "  --random K         random networks (lh_sched_random_instance, 64 devices in 8 cities,\n"
          "                     seeds 1..K; default 3; 0: none)\n"
          "  --budget-256 SEC   solver time budget for the 256-device row (default 8)\n"
          "  --no-256           skip the 256-device row\n"
          "  --write-256 FILE   write the 256-device link file (for lh-plan --links FILE)\n"
          "  --scenarios DIR    where the dtfm-*.links files are (default: the source tree's\n"
          "                     examples/links/scenarios, or $LONGHAUL_SOURCE_DIR's)\n"
          "  --quick            --randoms 100 --random 1 --no-256, unless those are given\n"
          "  --csv              comma-separated rows with a header line, no legend\n"
          "Timing targets (64 devices: solve <= 1 s, construction <= 50 ms; 256 devices: solve <= 10 s)\n"
          "are verdict text only. Exits 1 when a check fails, a dtfm scenario misses DT-FM's cost or the\n"
          "library refuses; 2 on bad flags.\n");
}

static int refuse(const char *fmt, const char *arg) {
  fprintf(stderr, "sched_perf: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, " (see --help).\n");
  return 2;
}

static int parse_seconds(const char *s, double *v) {
  char *end;
  errno = 0;
  double x = strtod(s, &end);
  if (*s == '\0' || *end || errno || !isfinite(x) || !(x > 0) || x > 1e6)
    return -1;
  *v = x;
  return 0;
}

static int parse_int(const char *s, int lo, int hi, int *v) {
  char *end;
  errno = 0;
  long x = strtol(s, &end, 10);
  if (*s == '\0' || *end || errno || x < lo || x > hi)
    return -1;
  *v = (int)x;
  return 0;
}

static int parse_u64(const char *s, uint64_t *v) {
  char *end;
  errno = 0;
  unsigned long long x = strtoull(s, &end, 10);
  if (*s == '\0' || *s == '-' || *end || errno)
    return -1;
  *v = (uint64_t)x;
  return 0;
}

int main(int argc, char **argv) {
  options o = {1.0, 8.0, 1, 1000, 3, 1, 0, NULL, NULL};
  int quick = 0, randoms_given = 0, random_given = 0;
  for (int i = 1; i < argc; i++) {
    const char *flag = argv[i], *arg = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(flag, "--help") || !strcmp(flag, "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(flag, "--quick")) {
      quick = 1;
      continue;
    } else if (!strcmp(flag, "--no-256")) {
      o.run_256 = 0;
      continue;
    } else if (!strcmp(flag, "--csv")) {
      o.csv = 1;
      continue;
    }
    if (strcmp(flag, "--time-budget") && strcmp(flag, "--seed") && strcmp(flag, "--randoms") &&
        strcmp(flag, "--random") && strcmp(flag, "--budget-256") && strcmp(flag, "--write-256") &&
        strcmp(flag, "--scenarios"))
      return refuse("unknown option '%s'", flag);
    if (!arg)
      return refuse("'%s' needs a value", flag);
    i++;
    if (!strcmp(flag, "--time-budget")) {
      if (parse_seconds(arg, &o.budget))
        return refuse("--time-budget '%s': expected seconds above 0", arg);
    } else if (!strcmp(flag, "--budget-256")) {
      if (parse_seconds(arg, &o.budget_256))
        return refuse("--budget-256 '%s': expected seconds above 0", arg);
    } else if (!strcmp(flag, "--seed")) {
      if (parse_u64(arg, &o.seed))
        return refuse("--seed '%s': expected a whole number >= 0", arg);
    } else if (!strcmp(flag, "--randoms")) {
      if (parse_int(arg, 1, 10000000, &o.randoms))
        return refuse("--randoms '%s': expected a whole number from 1 to 10000000", arg);
      randoms_given = 1;
    } else if (!strcmp(flag, "--random")) {
      if (parse_int(arg, 0, 100000, &o.random_k))
        return refuse("--random '%s': expected a whole number from 0 to 100000", arg);
      random_given = 1;
    } else if (!strcmp(flag, "--write-256")) {
      o.write_256 = arg;
    } else {
      o.scenarios = arg;
    }
  }
  if (quick) {
    o.run_256 = 0;
    if (!randoms_given)
      o.randoms = 100;
    if (!random_given)
      o.random_k = 1;
  }
  char dir[4096];
  if (o.scenarios)
    snprintf(dir, sizeof dir, "%s", o.scenarios);
  else {
    const char *root = getenv("LONGHAUL_SOURCE_DIR");
    snprintf(dir, sizeof dir, "%s/examples/links/scenarios", root && *root ? root : LH_SOURCE_DIR);
  }

  /* Load everything first, so that a missing file stops the run before any solving. */
  lh_links *scenario[kScenarioCount] = {NULL};
  int failed = 0;
  for (int s = 0; s < kScenarioCount && !failed; s++) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, kScenarios[s].file);
    lh_status st = lh_links_read_file(path, &scenario[s]);
    if (st != LH_SUCCESS) {
      fprintf(stderr, "sched_perf: cannot read DT-FM scenario %d: %s (give --scenarios DIR)\n", s + 1,
              lh_last_error());
      failed = 1;
    }
  }
  lh_links *world = NULL;
  if (!failed && (o.run_256 || o.write_256)) {
    lh_status st = expand_x4(scenario[4], &world);
    if (st != LH_SUCCESS)
      failed = library_failed("building the 256-device variant of scenario 5", st);
    else if (o.write_256 && (st = lh_links_write_file(world, o.write_256)) != LH_SUCCESS)
      failed = library_failed("lh_links_write_file", st);
    else if (o.write_256)
      fprintf(stderr, "sched_perf: wrote the 256-device link file to %s\n", o.write_256);
  }

  tally t;
  memset(&t, 0, sizeof t);
  if (!failed) {
    if (o.csv)
      printf("instance,devices,PxD,objective,cost,target,lower_bound,gap_percent,solve_s,construct_ms,budget_hit,"
             "random_best,random_median,x_median,verdict\n");
    else
      print_legend(&o);
  }
  for (int s = 0; s < kScenarioCount && !failed; s++)
    failed = run_instance(kScenarios[s].name, scenario[s], LH_SCHED_DTFM, 8, 8, o.budget, kScenarios[s].target, &o, &t);
  for (int s = 0; s < kScenarioCount && !failed; s++)
    failed = run_instance(kScenarios[s].name, scenario[s], LH_SCHED_PIPELINED, 8, 8, o.budget, -1, &o, &t);
  if (!failed && o.run_256)
    failed = run_instance("dtfm5-x4", world, LH_SCHED_DTFM, 8, 32, o.budget_256, -1, &o, &t);
  for (int k = 1; k <= o.random_k && !failed; k++) {
    lh_sched_instance in = LH_SCHED_INSTANCE_INIT;
    in.devices = 64;
    in.cities = 8;
    in.seed = (uint64_t)k;
    lh_links *links = NULL;
    lh_status st = lh_sched_random_instance(&in, &links);
    if (st != LH_SUCCESS) {
      failed = library_failed("lh_sched_random_instance", st);
      break;
    }
    char name[32];
    snprintf(name, sizeof name, "random-s%d", k);
    failed = run_instance(name, links, LH_SCHED_DTFM, 8, 8, o.budget, -1, &o, &t);
    if (!failed)
      failed = run_instance(name, links, LH_SCHED_PIPELINED, 8, 8, o.budget, -1, &o, &t);
    lh_links_free(links);
  }
  for (int s = 0; s < kScenarioCount; s++)
    lh_links_free(scenario[s]);
  lh_links_free(world);

  if (!t.rows && failed)
    return 1; /* nothing ran; the reason is on stderr */
  /* The summary: on stdout with the table, on stderr when stdout holds CSV. */
  FILE *f = o.csv ? stderr : stdout;
  long wrong = 0;
  fprintf(f, "#\n");
  for (int c = 0; c < CHECK_COUNT; c++) {
    fprintf(f, "# check %-42s %ld wrong of %ld rows\n", kCheckNames[c], t.wrong[c], t.rows);
    wrong += t.wrong[c];
  }
  fprintf(f, "# DT-FM's costs (cost <= target + %.4f):      %ld missed of %ld rows\n", kTargetSlack, t.misses,
          t.target_rows);
  if (failed)
    fprintf(f, "# FAILED: the run stopped early (see above)\n");
  else if (wrong || t.misses)
    fprintf(f, "# FAILED: %ld wrong, %ld DT-FM costs missed\n", wrong, t.misses);
  else
    fprintf(f, "# OK: 0 wrong, 0 DT-FM costs missed\n");
  return failed || wrong || t.misses ? 1 : 0;
}

/* lh-plan: places pipeline stages and data-parallel replicas on the devices of a link file,
 * scores an existing plan, or writes a random heterogeneous network to try it on.
 *
 *   lh-plan --links net.links --pp 8 --dp 8 --out plan.json
 *   lh-plan --links net.links --evaluate plan.json
 *   lh-plan --random-instance 64 --cities 8 --seed 3 --out random.links
 *
 * Exit status: 0 done, 1 the library refused or failed (the reason is printed), 2 bad flags. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <longhaul/longhaul.h>

typedef struct {
  const char *links, *out, *evaluate;
  lh_sched_config cfg;
  int objective_given, seed_given;
  int random_devices; /* 0: no --random-instance */
  lh_sched_instance instance;
  int cities_given;
  const char *instance_flag; /* the first flag that only --random-instance uses */
  const char *solver_flag;   /* the first flag that only solving or scoring uses */
  const char *search_flag;   /* the first flag that only solving uses (not --evaluate) */
  int quiet;
} options;

static void usage(FILE *f) {
  const lh_sched_config c = LH_SCHED_CONFIG_INIT;
  const lh_sched_instance in = LH_SCHED_INSTANCE_INIT;
  const lh_sched_model *m = &c.model;
  fprintf(f,
          "usage: lh-plan --links FILE [options]\n"
          "       lh-plan --links FILE --evaluate PLAN.json [options]\n"
          "       lh-plan --random-instance N [instance options] [--out FILE]\n"
          "Places P pipeline stages x D data-parallel replicas on the N = P x D devices of a link file\n"
          "so that heavy traffic rides fast links (after DT-FM, NeurIPS 2022), prints the cost, a lower\n"
          "bound and the placement, and writes the plan as JSON.\n\n"
          "Solving:\n"
          "  --links FILE              link file (lh-probe's output, examples/links/*.links)\n"
          "  --pp P|choose             pipeline stages (default choose: N / D, or the cheapest P x D = N)\n"
          "  --dp D|choose             data-parallel replicas (default choose)\n"
          "  --objective NAME          pipelined (the runtime's iteration time, default) or dtfm\n"
          "                            (DT-FM's communication cost, for comparison)\n"
          "  --seed S                  every random choice derives from it (default %" PRIu64 ")\n"
          "  --time-budget SEC         search time limit in seconds (default %g)\n"
          "  --restarts N              constructive starts (default %d)\n"
          "  --out FILE                write the plan (or, with --random-instance, the link file) here\n"
          "  --evaluate PLAN.json      score this plan on --links instead of solving\n"
          "  --quiet                   print nothing but errors (and a link file without --out)\n"
          "  --help                    this text\n\n"
          "The model (defaults: DT-FM's GPT3-XL, 1.3e9 parameters in 24 layers, fp32 gradients, one\n"
          "macro-batch of 3.77 Gbit of fp16 activations in 8 micro-batches):\n"
          "  --layers L                layers, L >= P (default %d)\n"
          "  --params-per-layer X      parameters per layer (default %.10g)\n"
          "  --activation-elements X   elements crossing a stage boundary per micro-batch (default %.10g)\n"
          "  --micro-batches M         micro-batches per iteration (default %d)\n"
          "  --activation-bytes X      forward wire bytes per activation element (default %g; AQ-SGD less)\n"
          "  --activation-grad-bytes X backward wire bytes per element (default %g)\n"
          "  --gradient-bytes X        all-reduce wire bytes per parameter (default %g; a codec less)\n"
          "  --layer-seconds X         forward + backward of one layer on one micro-batch on a device of\n"
          "                            speed 1.0, pipelined only (default %g)\n"
          "  --ring-chunk BYTES        the all-reduce ring's chunk, e.g. 1M (default 1 MiB)\n\n"
          "Random instances (written instead of solving):\n"
          "  --random-instance N       N devices spread unevenly over cities on a globe\n"
          "  --cities C                cities, 1..N (default %d, or N if smaller)\n"
          "  --min-uplink G            slowest device uplink in Gbit/s (default %g)\n"
          "  --max-uplink G            fastest device uplink in Gbit/s (default %g)\n"
          "  --jitter J                every link value times 1 +- J, 0 <= J < 1 (default %g)\n"
          "  --speed-spread S          device speeds in [1 - S, 1 + S], 0 <= S < 1 (default %g)\n"
          "  --seed S                  as above (default %" PRIu64 ")\n\n"
          "Plan files are JSON: {\"format\": \"longhaul-plan\", \"version\": 1, \"devices\": N, \"pp\": P,\n"
          "\"dp\": D, \"objective\": ..., \"cost\", \"dp_cost\", \"pp_cost\", \"lower_bound\", \"gap\",\n"
          "\"solve_seconds\", \"seed\", \"restarts\", \"budget_hit\", \"stages\": [[devices of stage 0 by\n"
          "replica], ...], \"assignment\": [{\"device\": d, \"stage\": s, \"replica\": r}, ...]}. A reader\n"
          "needs format, version, devices, pp, dp and assignment (every device and every (stage, replica)\n"
          "exactly once); unknown keys are skipped.\n\n"
          "Exit status: 0 done, 1 the library failed (the reason is printed), 2 bad flags.\n",
          c.seed, c.time_budget_s, c.restarts, m->layers, m->params_per_layer, m->activation_elements,
          m->micro_batches, m->activation_element_bytes, m->activation_grad_element_bytes, m->gradient_element_bytes,
          m->layer_seconds, in.cities, in.min_uplink_gbps, in.max_uplink_gbps, in.jitter, in.speed_spread, in.seed);
}

/* ---- strict number parsing: digits first (no sign, space, inf or nan), nothing after ---- */

static int bad_value(const char *flag, const char *wanted, const char *text) {
  fprintf(stderr, "lh-plan: %s needs %s, not '%s'.\n", flag, wanted, text);
  return 2;
}

static int parse_int(const char *flag, const char *text, int min, int *out) {
  char wanted[64];
  snprintf(wanted, sizeof wanted, "a whole number from %d to %d", min, INT_MAX);
  if (!(text[0] >= '0' && text[0] <= '9'))
    return bad_value(flag, wanted, text);
  errno = 0;
  char *end = NULL;
  long v = strtol(text, &end, 10);
  if (*end || errno == ERANGE || v < min || v > INT_MAX)
    return bad_value(flag, wanted, text);
  *out = (int)v;
  return 0;
}

/* A finite decimal number >= 0, or > 0 when `positive`. */
static int parse_real(const char *flag, const char *text, int positive, double *out) {
  const char *wanted = positive ? "a number > 0" : "a number >= 0";
  int starts = (text[0] >= '0' && text[0] <= '9') || (text[0] == '.' && text[1] >= '0' && text[1] <= '9');
  if (!starts || strpbrk(text, "xX")) /* no hex floats */
    return bad_value(flag, wanted, text);
  char *end = NULL;
  double v = strtod(text, &end);
  if (*end || !isfinite(v) || (positive && !(v > 0)))
    return bad_value(flag, wanted, text);
  *out = v;
  return 0;
}

static int parse_u64(const char *flag, const char *text, uint64_t *out) {
  if (!(text[0] >= '0' && text[0] <= '9'))
    return bad_value(flag, "a whole number from 0 to 18446744073709551615", text);
  errno = 0;
  char *end = NULL;
  unsigned long long v = strtoull(text, &end, 10);
  if (*end || errno == ERANGE)
    return bad_value(flag, "a whole number from 0 to 18446744073709551615", text);
  *out = (uint64_t)v;
  return 0;
}

static int parse_degree(const char *flag, const char *text, int *out) {
  if (!strcmp(text, "choose")) {
    *out = 0;
    return 0;
  }
  errno = 0;
  char *end = NULL;
  long v = text[0] >= '0' && text[0] <= '9' ? strtol(text, &end, 10) : 0;
  if (!end || *end || errno == ERANGE || v < 1 || v > INT_MAX)
    return bad_value(flag, "'choose' or a whole number >= 1", text);
  *out = (int)v;
  return 0;
}

/* Returns 0 to go on, 1 after --help, 2 after a message about bad flags. */
static int parse(int argc, char **argv, options *o) {
  static const char *const with_value[] = {
    "--links", "--pp", "--dp", "--objective", "--seed", "--time-budget", "--restarts", "--out", "--layers",
    "--params-per-layer", "--activation-elements", "--micro-batches", "--activation-bytes",
    "--activation-grad-bytes", "--gradient-bytes", "--layer-seconds", "--ring-chunk", "--evaluate",
    "--random-instance", "--cities", "--min-uplink", "--max-uplink", "--jitter", "--speed-spread"};
  lh_sched_model *m = &o->cfg.model;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int takes_value = 0;
    for (size_t k = 0; k < sizeof with_value / sizeof with_value[0]; k++)
      takes_value |= !strcmp(a, with_value[k]);
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 1;
    }
    if (!strcmp(a, "--quiet")) {
      o->quiet = 1;
      continue;
    }
    if (!takes_value) {
      fprintf(stderr, "lh-plan: unknown option '%s'; see lh-plan --help.\n", a);
      return 2;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "lh-plan: %s needs a value; see lh-plan --help.\n", a);
      return 2;
    }
    const char *v = argv[++i];
    int rc = 0;
    /* Which mode a flag belongs to, to refuse mixtures that would silently ignore it. */
    static const char *const instance_only[] = {"--cities", "--min-uplink", "--max-uplink", "--jitter",
                                                "--speed-spread"};
    static const char *const search_only[] = {"--pp", "--dp", "--time-budget", "--restarts"};
    for (size_t k = 0; k < sizeof instance_only / sizeof instance_only[0]; k++)
      if (!strcmp(a, instance_only[k]) && !o->instance_flag)
        o->instance_flag = instance_only[k];
    int search = 0;
    for (size_t k = 0; k < sizeof search_only / sizeof search_only[0]; k++)
      search |= !strcmp(a, search_only[k]);
    if (search && !o->search_flag)
      o->search_flag = a;
    int solver = search || !strcmp(a, "--links") || !strcmp(a, "--evaluate") || !strcmp(a, "--objective") ||
                 !strcmp(a, "--layers") || !strcmp(a, "--layer-seconds") || !strcmp(a, "--params-per-layer") ||
                 !strncmp(a, "--activation", 12) || !strcmp(a, "--micro-batches") ||
                 !strcmp(a, "--gradient-bytes") || !strcmp(a, "--ring-chunk");
    if (solver && !o->solver_flag)
      o->solver_flag = a;

    if (!strcmp(a, "--links")) {
      o->links = v;
    } else if (!strcmp(a, "--out")) {
      o->out = v;
    } else if (!strcmp(a, "--evaluate")) {
      o->evaluate = v;
    } else if (!strcmp(a, "--pp")) {
      rc = parse_degree(a, v, &o->cfg.pp);
    } else if (!strcmp(a, "--dp")) {
      rc = parse_degree(a, v, &o->cfg.dp);
    } else if (!strcmp(a, "--objective")) {
      if (lh_sched_objective_parse(v, &o->cfg.objective) != LH_SUCCESS)
        rc = bad_value(a, "pipelined or dtfm", v);
      o->objective_given = 1;
    } else if (!strcmp(a, "--seed")) {
      rc = parse_u64(a, v, &o->cfg.seed);
      o->instance.seed = o->cfg.seed;
      o->seed_given = 1;
    } else if (!strcmp(a, "--time-budget")) {
      rc = parse_real(a, v, 1, &o->cfg.time_budget_s);
    } else if (!strcmp(a, "--restarts")) {
      rc = parse_int(a, v, 1, &o->cfg.restarts);
    } else if (!strcmp(a, "--layers")) {
      rc = parse_int(a, v, 1, &m->layers);
    } else if (!strcmp(a, "--params-per-layer")) {
      rc = parse_real(a, v, 1, &m->params_per_layer);
    } else if (!strcmp(a, "--activation-elements")) {
      rc = parse_real(a, v, 1, &m->activation_elements);
    } else if (!strcmp(a, "--micro-batches")) {
      rc = parse_int(a, v, 1, &m->micro_batches);
    } else if (!strcmp(a, "--activation-bytes")) {
      rc = parse_real(a, v, 0, &m->activation_element_bytes);
    } else if (!strcmp(a, "--activation-grad-bytes")) {
      rc = parse_real(a, v, 0, &m->activation_grad_element_bytes);
    } else if (!strcmp(a, "--gradient-bytes")) {
      rc = parse_real(a, v, 0, &m->gradient_element_bytes);
    } else if (!strcmp(a, "--layer-seconds")) {
      rc = parse_real(a, v, 0, &m->layer_seconds);
    } else if (!strcmp(a, "--ring-chunk")) {
      if (lh_parse_size(v, &o->cfg.ring_chunk_bytes) != LH_SUCCESS || o->cfg.ring_chunk_bytes == 0)
        rc = bad_value(a, "a size > 0 such as 65536, 64K or 1M", v);
    } else if (!strcmp(a, "--random-instance")) {
      rc = parse_int(a, v, 1, &o->random_devices);
    } else if (!strcmp(a, "--cities")) {
      rc = parse_int(a, v, 1, &o->instance.cities);
      o->cities_given = 1;
    } else if (!strcmp(a, "--min-uplink")) {
      rc = parse_real(a, v, 1, &o->instance.min_uplink_gbps);
    } else if (!strcmp(a, "--max-uplink")) {
      rc = parse_real(a, v, 1, &o->instance.max_uplink_gbps);
    } else if (!strcmp(a, "--jitter")) {
      rc = parse_real(a, v, 0, &o->instance.jitter);
    } else if (!strcmp(a, "--speed-spread")) {
      rc = parse_real(a, v, 0, &o->instance.speed_spread);
    }
    if (rc)
      return rc;
  }

  if (o->random_devices) {
    if (o->solver_flag) {
      fprintf(stderr, "lh-plan: %s does not apply with --random-instance, which only writes a link file.\n",
              o->solver_flag);
      return 2;
    }
    if (!o->cities_given && o->instance.cities > o->random_devices)
      o->instance.cities = o->random_devices;
    if (o->instance.cities > o->random_devices) {
      fprintf(stderr, "lh-plan: --cities %d is more than the %d devices of --random-instance.\n", o->instance.cities,
              o->random_devices);
      return 2;
    }
    if (o->instance.min_uplink_gbps > o->instance.max_uplink_gbps) {
      fprintf(stderr, "lh-plan: --min-uplink %g is above --max-uplink %g.\n", o->instance.min_uplink_gbps,
              o->instance.max_uplink_gbps);
      return 2;
    }
    if (!(o->instance.jitter < 1) || !(o->instance.speed_spread < 1)) {
      fprintf(stderr, "lh-plan: %s must be below 1 (a fraction).\n",
              !(o->instance.jitter < 1) ? "--jitter" : "--speed-spread");
      return 2;
    }
    o->instance.devices = o->random_devices;
    return 0;
  }
  if (o->instance_flag) {
    fprintf(stderr, "lh-plan: %s only applies with --random-instance N.\n", o->instance_flag);
    return 2;
  }
  if (!o->links) {
    fprintf(stderr, "lh-plan: --links FILE is required (or --random-instance N); see lh-plan --help.\n");
    return 2;
  }
  if (o->evaluate && o->search_flag) {
    fprintf(stderr, "lh-plan: %s only applies when solving, not with --evaluate (the plan fixes the placement).\n",
            o->search_flag);
    return 2;
  }
  return 0;
}

static int fail(const char *what, lh_status st) {
  fprintf(stderr, "lh-plan: %s: %s: %s\n", what, lh_status_string(st), lh_last_error());
  return 1;
}

static int digits_of(int v) {
  int n = 1;
  while (v >= 10) {
    v /= 10;
    n++;
  }
  return n;
}

/* The summary and the placement table. */
static int print_plan(const lh_plan *plan, const lh_sched_config *cfg, const char *evaluated) {
  lh_plan_info info = LH_PLAN_INFO_INIT;
  lh_status st = lh_plan_get_info(plan, &info);
  if (st != LH_SUCCESS)
    return fail("reading the plan", st);
  const char *objective = "?";
  lh_sched_objective_name(info.objective, &objective);
  printf("lh-plan: %d devices as %d stage%s x %d replica%s (pp x dp), objective %s\n", info.devices, info.pp,
         info.pp == 1 ? "" : "s", info.dp, info.dp == 1 ? "" : "s", objective);
  printf("  cost         %.6g s per iteration = dp %.6g s + pp %.6g s\n", info.cost, info.dp_cost, info.pp_cost);
  printf("  lower bound  %.6g s (gap %.2f %%)\n", info.lower_bound, info.gap * 100);
  if (evaluated)
    printf("  plan         %s (evaluated, not solved)\n", evaluated);
  else
    printf("  solve        %.3f s, %d restarts, seed %" PRIu64 ", time budget hit: %s\n", info.solve_seconds,
           info.restarts, info.seed, info.budget_hit ? "yes (results may vary between runs)" : "no");

  int *layers = malloc((size_t)info.pp * sizeof *layers);
  if (!layers) {
    fprintf(stderr, "lh-plan: out of memory for the placement table\n");
    return 1;
  }
  st = lh_plan_stage_layers(plan, &cfg->model, layers, info.pp);
  if (st != LH_SUCCESS) {
    free(layers);
    return fail("splitting the layers", st);
  }
  int width = digits_of(info.devices - 1) + 1;
  if (width < 4)
    width = 4;
  printf("\nstage layers  devices of replica 0..%d\n", info.dp - 1);
  for (int s = 0; s < info.pp; s++) {
    printf("%5d %6d ", s, layers[s]);
    for (int r = 0; r < info.dp; r++) {
      int device = -1;
      lh_plan_device_at(plan, s, r, &device);
      printf("%*d", width, device);
    }
    printf("\n");
  }
  free(layers);
  return 0;
}

static int write_instance(const options *o) {
  lh_links *links = NULL;
  lh_status st = lh_sched_random_instance(&o->instance, &links);
  if (st != LH_SUCCESS)
    return fail("making the random instance", st);
  st = o->out ? lh_links_write_file(links, o->out) : lh_links_write_stream(links, stdout);
  lh_links_free(links);
  if (st != LH_SUCCESS)
    return fail("writing the link file", st);
  if (o->out && !o->quiet)
    fprintf(stderr, "lh-plan: wrote %s (%d devices in %d cities, seed %" PRIu64 ")\n", o->out, o->instance.devices,
            o->instance.cities, o->instance.seed);
  return 0;
}

int main(int argc, char **argv) {
  options o;
  memset(&o, 0, sizeof o);
  o.cfg = (lh_sched_config)LH_SCHED_CONFIG_INIT;
  o.instance = (lh_sched_instance)LH_SCHED_INSTANCE_INIT;
  int rc = parse(argc, argv, &o);
  if (rc)
    return rc == 1 ? 0 : 2;
  if (o.random_devices)
    return write_instance(&o);

  lh_links *links = NULL;
  lh_plan *plan = NULL;
  lh_status st = lh_links_read_file(o.links, &links);
  if (st != LH_SUCCESS)
    return fail("reading the link file", st);
  if (o.evaluate) {
    st = lh_plan_read_file(o.evaluate, &plan);
    if (st != LH_SUCCESS) {
      rc = fail("reading the plan", st);
      goto done;
    }
    lh_plan_info info = LH_PLAN_INFO_INIT;
    lh_plan_get_info(plan, &info);
    o.cfg.pp = info.pp;
    o.cfg.dp = info.dp;
    if (!o.objective_given)
      o.cfg.objective = info.objective; /* score it as it was solved unless told otherwise */
    st = lh_plan_score(plan, links, &o.cfg);
    if (st != LH_SUCCESS) {
      rc = fail("scoring the plan", st);
      goto done;
    }
  } else {
    st = lh_sched_solve(links, &o.cfg, &plan);
    if (st != LH_SUCCESS) {
      rc = fail("solving", st);
      goto done;
    }
  }
  if (!o.quiet && (rc = print_plan(plan, &o.cfg, o.evaluate)) != 0)
    goto done;
  if (o.out) {
    st = lh_plan_write_file(plan, o.out);
    if (st != LH_SUCCESS) {
      rc = fail("writing the plan", st);
      goto done;
    }
    if (!o.quiet)
      printf("\nwrote %s\n", o.out);
  }
done:
  lh_plan_free(plan);
  lh_links_free(links);
  return rc;
}

/* The two objectives (dtfm, pipelined) evaluated from an assignment, their lower bounds, and the
 * network matrices they read. Formulas are in sched.h; this file is their one implementation,
 * used by the solver, lh_sched_evaluate and the tests alike. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/internal.h"
#include "netmodel/ring_model.h"
#include "sched/sched_internal.h"

/* ---- the network --------------------------------------------------------------------------- */

/* x and y can trade places without changing any cost: same speed, same links to every third
 * device in both directions, and the same link between them both ways. */
static int lh_net_interchangeable(const lh_net *net, int x, int y) {
  int n = net->n;
  if (net->speed[x] != net->speed[y])
    return 0;
  if (net->alpha_dir[x * n + y] != net->alpha_dir[y * n + x] || net->beta_dir[x * n + y] != net->beta_dir[y * n + x])
    return 0;
  for (int z = 0; z < n; z++) {
    if (z == x || z == y)
      continue;
    if (net->alpha_dir[x * n + z] != net->alpha_dir[y * n + z] || net->beta_dir[x * n + z] != net->beta_dir[y * n + z] ||
        net->alpha_dir[z * n + x] != net->alpha_dir[z * n + y] || net->beta_dir[z * n + x] != net->beta_dir[z * n + y])
      return 0;
  }
  return 1;
}

/* Classes of pairwise interchangeable devices: a device joins a class only if it can trade
 * places with every member, so any two members of a class are interchangeable. */
static lh_status lh_net_classes(lh_net *net) {
  int n = net->n;
  int *first = lh_malloc((size_t)n * sizeof *first, "scheduler device classes");
  int *next = lh_malloc((size_t)n * sizeof *next, "scheduler device classes");
  if (!first || !next) {
    free(first);
    free(next);
    return LH_ERR_OUT_OF_MEMORY;
  }
  net->classes = 0;
  for (int d = 0; d < n; d++) {
    int joined = -1;
    for (int c = 0; c < net->classes && joined < 0; c++) {
      int ok = 1;
      for (int m = first[c]; m >= 0 && ok; m = next[m])
        ok = lh_net_interchangeable(net, d, m);
      if (ok)
        joined = c;
    }
    next[d] = -1;
    if (joined < 0) {
      joined = net->classes++;
      first[joined] = d;
    } else {
      int m = first[joined];
      while (next[m] >= 0)
        m = next[m];
      next[m] = d;
    }
    net->klass[d] = joined;
  }
  free(first);
  free(next);
  return LH_SUCCESS;
}

lh_status lh_net_build(const lh_links *links, lh_net *net) {
  memset(net, 0, sizeof *net);
  int n;
  LH_CHECK(lh_links_devices(links, &n));
  size_t nn = (size_t)n * (size_t)n;
  net->n = n;
  net->alpha = lh_malloc(nn * sizeof(double), "scheduler latency matrix");
  net->beta = lh_malloc(nn * sizeof(double), "scheduler bandwidth matrix");
  net->alpha_dir = lh_malloc(nn * sizeof(double), "scheduler latency matrix");
  net->beta_dir = lh_malloc(nn * sizeof(double), "scheduler bandwidth matrix");
  net->speed = lh_malloc((size_t)n * sizeof(double), "scheduler device speeds");
  net->klass = lh_malloc((size_t)n * sizeof(int), "scheduler device classes");
  if (!net->alpha || !net->beta || !net->alpha_dir || !net->beta_dir || !net->speed || !net->klass) {
    lh_net_free(net);
    return LH_ERR_OUT_OF_MEMORY;
  }
  for (int i = 0; i < n; i++) {
    double cap;
    const char *site;
    lh_links_get_uplink(links, i, &cap);
    lh_links_get_device(links, i, &site, &net->speed[i]);
    for (int j = 0; j < n; j++) {
      double a, b;
      lh_links_get(links, i, j, &a, &b);
      /* The cost model's reading of a link: a sender's NIC cap limits all its links. */
      if (i != j && cap > 0 && cap < b)
        b = cap;
      net->alpha_dir[(size_t)i * n + j] = a;
      net->beta_dir[(size_t)i * n + j] = b;
    }
  }
  /* DT-FM symmetrises each pair as the mean of both directions. */
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) {
      size_t ij = (size_t)i * n + j, ji = (size_t)j * n + i;
      net->alpha[ij] = 0.5 * (net->alpha_dir[ij] + net->alpha_dir[ji]);
      net->beta[ij] = 0.5 * (net->beta_dir[ij] + net->beta_dir[ji]);
    }
  lh_status st = lh_net_classes(net);
  if (st != LH_SUCCESS)
    lh_net_free(net);
  return st;
}

void lh_net_free(lh_net *net) {
  free(net->alpha);
  free(net->beta);
  free(net->alpha_dir);
  free(net->beta_dir);
  free(net->speed);
  free(net->klass);
  memset(net, 0, sizeof *net);
}

/* ---- configuration --------------------------------------------------------------------------- */

static int lh_positive(double x) { return isfinite(x) && x > 0; }

lh_status lh_sched_config_check(const lh_sched_config *config, int devices) {
  if (config->size < sizeof(lh_sched_config))
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_sched_config.size is %zu; start from LH_SCHED_CONFIG_INIT (size %zu)", config->size,
                    sizeof(lh_sched_config));
  if (config->version != LH_VERSION_CODE)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_sched_config.version is %d but this library is %d; start from LH_SCHED_CONFIG_INIT",
                    config->version, LH_VERSION_CODE);
  if (config->objective != LH_SCHED_PIPELINED && config->objective != LH_SCHED_DTFM)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_config.objective is %d; it must be LH_SCHED_PIPELINED or LH_SCHED_DTFM",
                    (int)config->objective);
  if (config->pp < 0 || config->dp < 0)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_config: pp (%d) and dp (%d) must be >= 0 (0 = choose)",
                    config->pp, config->dp);
  if (config->pp > 0 && devices % config->pp != 0)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_config.pp is %d, which does not divide the %d devices",
                    config->pp, devices);
  if (config->dp > 0 && devices % config->dp != 0)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_config.dp is %d, which does not divide the %d devices",
                    config->dp, devices);
  if (config->pp > 0 && config->dp > 0 && config->pp * config->dp != devices)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_config: pp x dp = %d x %d = %d, but the links have %d devices",
                    config->pp, config->dp, config->pp * config->dp, devices);
  if (!(isfinite(config->time_budget_s) && config->time_budget_s > 0))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_config.time_budget_s is %g; it must be a positive number of seconds",
                    config->time_budget_s);
  if (config->restarts < 1)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_config.restarts is %d; it must be >= 1", config->restarts);
  const lh_sched_model *m = &config->model;
  if (m->size < sizeof(lh_sched_model))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_model.size is %zu; start from LH_SCHED_MODEL_DTFM (size %zu)",
                    m->size, sizeof(lh_sched_model));
  if (m->layers < 1)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_model.layers is %d; it must be >= 1", m->layers);
  if (m->micro_batches < 1)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_model.micro_batches is %d; it must be >= 1", m->micro_batches);
  struct {
    const char *name;
    double value;
    int zero_ok;
  } fields[] = {{"params_per_layer", m->params_per_layer, 0},
                {"activation_elements", m->activation_elements, 0},
                {"activation_element_bytes", m->activation_element_bytes, 0},
                {"activation_grad_element_bytes", m->activation_grad_element_bytes, 0},
                {"gradient_element_bytes", m->gradient_element_bytes, 0},
                {"layer_seconds", m->layer_seconds, 1}};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
    if (!(lh_positive(fields[i].value) || (fields[i].zero_ok && fields[i].value == 0)))
      return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_model.%s is %g; it must be a %s number", fields[i].name,
                      fields[i].value, fields[i].zero_ok ? "finite, non-negative" : "finite, positive");
  return LH_SUCCESS;
}

/* ---- objectives ------------------------------------------------------------------------------ */

lh_status lh_plan_stage_layers(const lh_plan *plan, const lh_sched_model *model, int *layers, int pp) {
  lh_error_clear();
  if (!plan || !model || !layers)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_plan_stage_layers: plan, model and layers must not be NULL");
  if (pp != plan->pp)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_plan_stage_layers: pp is %d but the plan has %d stages", pp, plan->pp);
  if (model->layers < pp)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_plan_stage_layers: %d layers cannot fill %d stages", model->layers, pp);
  /* Earlier stages take the remainder: the last stage also computes the loss. */
  for (int k = 0; k < pp; k++)
    layers[k] = model->layers / pp + (k < model->layers % pp);
  return LH_SUCCESS;
}

void lh_objective_free(lh_objective *obj) {
  free(obj->dp_edge);
  free(obj->pp_edge);
  free(obj->stage_layers);
  free(obj->stage_grad_bytes);
  free(obj->scratch);
  free(obj->path);
  free(obj->done);
  free(obj->stage_start);
  memset(obj, 0, sizeof *obj);
}

lh_status lh_objective_build(const lh_net *net, const lh_sched_config *config, int pp, int dp, lh_objective *obj) {
  memset(obj, 0, sizeof *obj);
  const lh_sched_model *m = &config->model;
  int n = net->n;
  if (pp * dp != n)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "scheduler: %d x %d placements do not cover %d devices", pp, dp, n);
  if (m->layers < pp)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_model.layers is %d: too few for %d pipeline stages", m->layers, pp);
  if (config->objective == LH_SCHED_DTFM && m->layers % pp != 0)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "the dtfm objective gives every stage the same gradient bytes: %d layers do not split evenly "
                    "over %d stages",
                    m->layers, pp);
  obj->kind = config->objective;
  obj->pp = pp;
  obj->dp = dp;
  obj->m = m->micro_batches;
  obj->layer_seconds = m->layer_seconds;
  obj->ring_chunk = config->ring_chunk_bytes ? config->ring_chunk_bytes : (size_t)1 << 20;
  obj->stage_layers = lh_malloc((size_t)pp * sizeof(int), "scheduler stage layers");
  obj->stage_grad_bytes = lh_malloc((size_t)pp * sizeof(double), "scheduler stage gradients");
  obj->scratch = lh_malloc(((size_t)pp + 2 * (size_t)m->micro_batches) * sizeof(double), "scheduler pipeline scratch");
  obj->path = lh_malloc((size_t)pp * sizeof(int), "scheduler pipeline scratch");
  obj->done = lh_malloc((size_t)pp * sizeof(double), "scheduler pipeline scratch");
  obj->stage_start = lh_malloc((size_t)pp * sizeof(double), "scheduler pipeline scratch");
  if (!obj->stage_layers || !obj->stage_grad_bytes || !obj->scratch || !obj->path || !obj->done ||
      !obj->stage_start) {
    lh_objective_free(obj);
    return LH_ERR_OUT_OF_MEMORY;
  }
  for (int k = 0; k < pp; k++) {
    obj->stage_layers[k] = m->layers / pp + (k < m->layers % pp);
    obj->stage_grad_bytes[k] = obj->stage_layers[k] * m->params_per_layer * m->gradient_element_bytes;
  }
  obj->fwd_bytes = m->activation_elements * m->activation_element_bytes;
  obj->bwd_bytes = m->activation_elements * m->activation_grad_element_bytes;
  if (obj->kind != LH_SCHED_DTFM)
    return LH_SUCCESS;

  /* DT-FM: one message of a stage's gradients per group, one macro-batch per boundary. */
  obj->c_dp = obj->stage_grad_bytes[0];
  obj->c_pp = obj->fwd_bytes * m->micro_batches;
  size_t nn = (size_t)n * (size_t)n;
  obj->dp_edge = lh_malloc(nn * sizeof(double), "scheduler DP edge costs");
  obj->pp_edge = lh_malloc(nn * sizeof(double), "scheduler PP edge costs");
  if (!obj->dp_edge || !obj->pp_edge) {
    lh_objective_free(obj);
    return LH_ERR_OUT_OF_MEMORY;
  }
  for (size_t ij = 0; ij < nn; ij++) {
    if (ij / (size_t)n == ij % (size_t)n) {
      obj->dp_edge[ij] = obj->pp_edge[ij] = 0;
      continue;
    }
    obj->dp_edge[ij] = 2 * (net->alpha[ij] + obj->c_dp / (dp * net->beta[ij]));
    obj->pp_edge[ij] = net->alpha[ij] + obj->c_pp / net->beta[ij];
  }
  return LH_SUCCESS;
}

double lh_dtfm_group_cost(const lh_objective *obj, int n, const int *group, int dp) {
  double worst = 0;
  for (int a = 0; a < dp; a++) {
    double sum = 0;
    for (int b = 0; b < dp; b++)
      if (b != a)
        sum += obj->dp_edge[(size_t)group[a] * n + group[b]];
    worst = fmax(worst, sum);
  }
  return worst;
}

/* One replica's GPipe pass, event by event: stage k's device runs the m forwards in order,
 * each when its input has arrived; a link carries one message at a time (its occupancy) and
 * delivers it a latency later; the last stage turns to the backwards once its forwards are
 * done, and every device runs its backwards after its own forwards. done[k] gets the time
 * stage k finishes its last backward. Returns the replica's end (stage 0's last backward). */
double lh_pipelined_replica(const lh_net *net, const lh_objective *obj, const int *path, double *done) {
  int n = net->n, P = obj->pp, m = obj->m;
  double *avail = obj->scratch, *finish = avail + m, *forwards_end = finish + m;
  for (int j = 0; j < m; j++)
    avail[j] = 0;
  for (int k = 0; k < P; k++) {
    /* A layer's backward costs about twice its forward. */
    double c = obj->stage_layers[k] * obj->layer_seconds / net->speed[path[k]], f = c / 3;
    double t = 0;
    for (int j = 0; j < m; j++) {
      t = (avail[j] > t ? avail[j] : t) + f;
      finish[j] = t;
    }
    forwards_end[k] = t;
    if (k + 1 < P) {
      size_t link = (size_t)path[k] * n + path[k + 1];
      double occupancy = obj->fwd_bytes / net->beta_dir[link], free_at = 0;
      for (int j = 0; j < m; j++) {
        free_at = (finish[j] > free_at ? finish[j] : free_at) + occupancy;
        avail[j] = free_at + net->alpha_dir[link];
      }
    }
  }
  for (int j = 0; j < m; j++)
    avail[j] = 0; /* the last stage's backward inputs are its own forwards */
  for (int k = P - 1; k >= 0; k--) {
    double c = obj->stage_layers[k] * obj->layer_seconds / net->speed[path[k]], b = c - c / 3;
    double t = forwards_end[k];
    for (int j = 0; j < m; j++) {
      t = (avail[j] > t ? avail[j] : t) + b;
      finish[j] = t;
    }
    done[k] = t;
    if (k > 0) {
      size_t link = (size_t)path[k] * n + path[k - 1];
      double occupancy = obj->bwd_bytes / net->beta_dir[link], free_at = 0;
      for (int j = 0; j < m; j++) {
        free_at = (finish[j] > free_at ? finish[j] : free_at) + occupancy;
        avail[j] = free_at + net->alpha_dir[link];
      }
    }
  }
  return done[0];
}

typedef struct lh_ring_on_net {
  const lh_net *net;
  const int *ring;
  int ranks;
} lh_ring_on_net;
static void lh_ring_link_of_net(const void *user, int k, double *alpha, double *beta) {
  const lh_ring_on_net *r = user;
  size_t ij = (size_t)r->ring[k] * r->net->n + r->ring[(k + 1) % r->ranks];
  *alpha = r->net->alpha_dir[ij];
  *beta = r->net->beta_dir[ij];
}

double lh_pipelined_stage_allreduce(const lh_net *net, const lh_objective *obj, int stage, const int *ring) {
  lh_ring_on_net r = {net, ring, obj->dp};
  return lh_ring_allreduce_seconds(obj->dp, (size_t)llround(obj->stage_grad_bytes[stage]), obj->ring_chunk,
                                   lh_ring_link_of_net, &r);
}

void lh_objective_eval(const lh_net *net, const lh_objective *obj, const int *grid, double *cost, double *dp_cost,
                       double *pp_cost) {
  int n = net->n, P = obj->pp, D = obj->dp;
  double dp = 0, pp = 0, total;
  if (obj->kind == LH_SCHED_DTFM) {
    for (int k = 0; k < P; k++)
      dp = fmax(dp, lh_dtfm_group_cost(obj, n, grid + (size_t)k * D, D));
    /* Boundaries summed in stage order: the solver sums its path the same way, so a plan
     * recomputes to the very bits it was reported with. */
    double path = 0;
    for (int k = 0; k + 1 < P; k++) {
      double hop = 0;
      for (int i = 0; i < D; i++)
        hop = fmax(hop, obj->pp_edge[(size_t)grid[k * D + i] * n + grid[(k + 1) * D + i]]);
      path += hop;
    }
    pp = 2 * path;
    total = dp + pp;
  } else {
    /* A stage's all-reduce starts when all its replicas have finished their backwards, while
     * earlier stages may still be busy: the iteration ends with the last all-reduce. */
    int *path = obj->path;
    double *done = obj->done, *start = obj->stage_start;
    for (int k = 0; k < P; k++)
      start[k] = 0;
    for (int i = 0; i < D; i++) {
      for (int k = 0; k < P; k++)
        path[k] = grid[k * D + i];
      pp = fmax(pp, lh_pipelined_replica(net, obj, path, done));
      for (int k = 0; k < P; k++)
        start[k] = fmax(start[k], done[k]);
    }
    double end = pp;
    for (int k = 0; k < P; k++)
      end = fmax(end, start[k] + lh_pipelined_stage_allreduce(net, obj, k, grid + (size_t)k * D));
    dp = end - pp; /* the all-reduce time not hidden behind other stages' backwards */
    total = end;
  }
  if (dp_cost)
    *dp_cost = dp;
  if (pp_cost)
    *pp_cost = pp;
  if (cost)
    *cost = total;
}

/* ---- lower bounds ---------------------------------------------------------------------------- */

double lh_objective_lower_bound(const lh_net *net, const lh_objective *obj) {
  int n = net->n, P = obj->pp, D = obj->dp;
  double *row = lh_malloc((size_t)n * sizeof(double), "scheduler lower bound");
  double *w = P > 1 ? lh_malloc((size_t)n * n * sizeof(double), "scheduler lower bound") : NULL;
  if (!row || (P > 1 && !w)) {
    free(row);
    free(w);
    return 0; /* a bound of 0 is always valid */
  }
  double lb_dp = 0, lb_pp = 0;
  if (obj->kind == LH_SCHED_DTFM) {
    /* Every device is in some group: it pays at least its D - 1 cheapest DP edges. */
    for (int d = 0; d < n && D > 1; d++) {
      int k = 0;
      for (int e = 0; e < n; e++)
        if (e != d)
          row[k++] = obj->dp_edge[(size_t)d * n + e];
      qsort(row, (size_t)k, sizeof(double), lh_sched_cmp_double);
      double sum = 0;
      for (int j = 0; j < D - 1; j++)
        sum += row[j];
      lb_dp = fmax(lb_dp, sum);
    }
    /* The D pipelines are D disjoint paths covering every device, a spanning forest of D
     * trees; a boundary's bottleneck is at least the mean of its D hops. */
    if (P > 1)
      lb_pp = 2.0 / D * lh_min_spanning_forest(obj->pp_edge, n, D);
  } else {
    double lmin = obj->stage_layers[P - 1]; /* the last stages hold the fewest layers */
    double slowest = 0, fastest = INFINITY, all = 0;
    for (int d = 0; d < n; d++) {
      double c = lmin * obj->layer_seconds / net->speed[d];
      slowest = fmax(slowest, c);
      fastest = fmin(fastest, c);
      all += c;
    }
    /* The slowest device runs m forwards and m backwards; or: the average replica runs its
     * computes and its links once and its slowest stage m - 1 more times. */
    double links = 0;
    if (P > 1) {
      for (int x = 0; x < n; x++)
        for (int y = 0; y < n; y++) {
          size_t xy = (size_t)x * n + y, yx = (size_t)y * n + x;
          double one = obj->fwd_bytes / net->beta_dir[xy] + net->alpha_dir[xy] + obj->bwd_bytes / net->beta_dir[yx] +
                       net->alpha_dir[yx];
          double other = obj->fwd_bytes / net->beta_dir[yx] + net->alpha_dir[yx] +
                         obj->bwd_bytes / net->beta_dir[xy] + net->alpha_dir[xy];
          w[xy] = x == y ? 0 : fmin(one, other);
        }
      links = lh_min_spanning_forest(w, n, D);
    }
    lb_pp = fmax(obj->m * slowest, (all + links) / D + (obj->m - 1) * fastest);
    /* Every device's ring sends 2(D - 1) segments over one of its links, and cannot start
     * before its stage has run its m forwards and backwards. */
    if (D > 1) {
      double bytes = obj->stage_grad_bytes[P - 1];
      size_t whole = (size_t)llround(bytes);
      double segment = (double)(whole / (size_t)D + (whole % (size_t)D != 0)), ring = 0;
      for (int d = 0; d < n; d++) {
        double best = INFINITY;
        for (int e = 0; e < n; e++)
          if (e != d) {
            size_t de = (size_t)d * n + e;
            best = fmin(best, 2.0 * (D - 1) * segment / net->beta_dir[de] + net->alpha_dir[de]);
          }
        ring = fmax(ring, best);
      }
      lb_dp = fmax(0, obj->m * fastest + ring - lb_pp); /* the total: max(lb_pp, m c + ring) */
    }
  }
  free(row);
  free(w);
  /* The bound and a plan's cost add the same terms in different orders; shaving the last
   * digits keeps a bound that a plan meets exactly from reading above it by rounding. */
  return (lb_dp + lb_pp) * (1 - 1e-12);
}

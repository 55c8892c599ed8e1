/* The scheduler's entry points: solve (every candidate P x D within the budget), evaluate a
 * plan from its assignment alone, the lower bound, and scoring a plan in place. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/internal.h"
#include "sched/sched_internal.h"

static lh_status lh_sched_args(const char *who, const lh_links *links, const lh_sched_config *config, int *devices) {
  if (!links || !config)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: %s must not be NULL", who, !links ? "links" : "config");
  LH_CHECK(lh_links_devices(links, devices));
  return lh_sched_config_check(config, *devices);
}

static double lh_gap(double cost, double bound) { return cost > 0 ? (cost - bound) / cost : 0; }

lh_status lh_sched_solve(const lh_links *links, const lh_sched_config *config, lh_plan **plan_out) {
  lh_error_clear();
  if (!plan_out)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_solve: plan must not be NULL");
  *plan_out = NULL;
  int n;
  LH_CHECK(lh_sched_args("lh_sched_solve", links, config, &n));
  double t0 = lh_now();

  /* The degrees to try: as given, or every P x D = n the model can fill. */
  int *cands = lh_malloc((size_t)n * sizeof(int), "scheduler degrees");
  if (!cands)
    return LH_ERR_OUT_OF_MEMORY;
  int count = 0;
  if (config->pp > 0)
    cands[count++] = config->pp;
  else if (config->dp > 0)
    cands[count++] = n / config->dp;
  else
    for (int P = 1; P <= n; P++)
      if (n % P == 0 && P <= config->model.layers &&
          (config->objective != LH_SCHED_DTFM || config->model.layers % P == 0))
        cands[count++] = P;
  if (count == 0) {
    free(cands);
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_sched_solve: no pipeline depth divides both the %d devices and the model's %d layers",
                    n, config->model.layers);
  }

  lh_net net;
  lh_status st = lh_net_build(links, &net);
  if (st != LH_SUCCESS) {
    free(cands);
    return st;
  }
  int *grid = lh_malloc((size_t)n * sizeof(int), "scheduler plan");
  int *best_grid = lh_malloc((size_t)n * sizeof(int), "scheduler plan");
  if (!grid || !best_grid)
    st = LH_ERR_OUT_OF_MEMORY;
  double best = INFINITY;
  int best_pp = 0, starts = 0, budget_hit = 0;
  double construct = 0;
  for (int c = 0; c < count && st == LH_SUCCESS; c++) {
    int P = cands[c], D = n / P;
    lh_objective obj;
    st = lh_objective_build(&net, config, P, D, &obj);
    if (st != LH_SUCCESS)
      break;
    /* Each candidate gets its share of the budget, less a twentieth kept for building and
     * scoring the plan, so that a search cut by the budget still returns within it. */
    lh_search_result r;
    st = lh_search_run(&net, &obj, config->seed ^ ((uint64_t)P << 32), config->restarts,
                       t0 + 0.95 * config->time_budget_s * (c + 1) / count, grid, &r);
    lh_objective_free(&obj);
    if (st != LH_SUCCESS)
      break;
    starts += r.starts;
    construct += r.construct_seconds;
    budget_hit |= r.budget_hit;
    if (r.cost < best) {
      best = r.cost;
      best_pp = P;
      memcpy(best_grid, grid, (size_t)n * sizeof(int));
    }
  }
  lh_plan *plan = NULL;
  if (st == LH_SUCCESS)
    st = lh_plan_alloc(n, best_pp, n / best_pp, &plan);
  if (st == LH_SUCCESS) {
    memcpy(plan->device_at, best_grid, (size_t)n * sizeof(int));
    st = lh_plan_index_from_grid(plan, "lh_sched_solve");
  }
  if (st == LH_SUCCESS) {
    lh_objective obj;
    st = lh_objective_build(&net, config, best_pp, n / best_pp, &obj);
    if (st == LH_SUCCESS) {
      lh_plan_info *info = &plan->info;
      info->objective = config->objective;
      lh_objective_eval(&net, &obj, plan->device_at, &info->cost, &info->dp_cost, &info->pp_cost);
      info->lower_bound = lh_objective_lower_bound(&net, &obj);
      info->gap = lh_gap(info->cost, info->lower_bound);
      info->seed = config->seed;
      info->restarts = starts;
      info->budget_hit = budget_hit;
      info->solve_seconds = lh_now() - t0;
      info->construct_seconds = construct;
      lh_objective_free(&obj);
    }
  }
  free(grid);
  free(best_grid);
  free(cands);
  lh_net_free(&net);
  if (st != LH_SUCCESS) {
    lh_plan_free(plan);
    return st;
  }
  *plan_out = plan;
  return LH_SUCCESS;
}

/* Net and objective for a plan's own degrees. */
static lh_status lh_sched_prepare(const char *who, const lh_links *links, const lh_sched_config *config,
                                  const lh_plan *plan, lh_net *net, lh_objective *obj) {
  int n;
  if (!plan)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: plan must not be NULL", who);
  LH_CHECK(lh_sched_args(who, links, config, &n));
  if (plan->devices != n)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: the plan places %d devices but the links have %d", who,
                    plan->devices, n);
  LH_CHECK(lh_net_build(links, net));
  lh_status st = lh_objective_build(net, config, plan->pp, plan->dp, obj);
  if (st != LH_SUCCESS)
    lh_net_free(net);
  return st;
}

lh_status lh_sched_evaluate(const lh_links *links, const lh_sched_config *config, const lh_plan *plan, double *cost,
                            double *dp_cost, double *pp_cost) {
  lh_error_clear();
  lh_net net;
  lh_objective obj;
  LH_CHECK(lh_sched_prepare("lh_sched_evaluate", links, config, plan, &net, &obj));
  lh_objective_eval(&net, &obj, plan->device_at, cost, dp_cost, pp_cost);
  lh_objective_free(&obj);
  lh_net_free(&net);
  return LH_SUCCESS;
}

lh_status lh_plan_score(lh_plan *plan, const lh_links *links, const lh_sched_config *config) {
  lh_error_clear();
  lh_net net;
  lh_objective obj;
  LH_CHECK(lh_sched_prepare("lh_plan_score", links, config, plan, &net, &obj));
  lh_plan_info *info = &plan->info;
  info->objective = config->objective;
  lh_objective_eval(&net, &obj, plan->device_at, &info->cost, &info->dp_cost, &info->pp_cost);
  info->lower_bound = lh_objective_lower_bound(&net, &obj);
  info->gap = lh_gap(info->cost, info->lower_bound);
  lh_objective_free(&obj);
  lh_net_free(&net);
  return LH_SUCCESS;
}

lh_status lh_sched_lower_bound(const lh_links *links, const lh_sched_config *config, double *bound) {
  lh_error_clear();
  int n;
  if (!bound)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_lower_bound: bound must not be NULL");
  LH_CHECK(lh_sched_args("lh_sched_lower_bound", links, config, &n));
  if (config->pp <= 0 || config->dp <= 0)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_lower_bound: give both pp and dp (they are %d and %d)",
                    config->pp, config->dp);
  lh_net net;
  lh_objective obj;
  LH_CHECK(lh_net_build(links, &net));
  lh_status st = lh_objective_build(&net, config, config->pp, config->dp, &obj);
  if (st == LH_SUCCESS) {
    *bound = lh_objective_lower_bound(&net, &obj);
    lh_objective_free(&obj);
  }
  lh_net_free(&net);
  return st;
}

/* The plan object: an assignment of (stage, replica) to every device, kept both ways (per
 * device and per grid cell) so that the solver and the runtime can each read it in O(1), plus
 * the costs it was scored with. Every way into a plan goes through one bijection check. */
#include <stdlib.h>
#include <string.h>

#include "common/internal.h"
#include "netmodel/links_internal.h"
#include "sched/sched_internal.h"

/* A degree or device count is checked before anything is allocated; the product is taken in
 * 64 bits so that pp x dp cannot overflow while being compared. */
static lh_status lh_plan_check_sizes(int devices, int pp, int dp, const char *who) {
  if (devices < 1 || devices > LH_LINKS_MAX_DEVICES)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: devices is %d; it must be from 1 to %d", who, devices,
                    LH_LINKS_MAX_DEVICES);
  if (pp < 1 || dp < 1)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: pp is %d and dp is %d; both must be >= 1", who, pp, dp);
  if ((long long)pp * dp != devices)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: devices is %d but pp x dp is %d x %d = %lld; they must be equal",
                    who, devices, pp, dp, (long long)pp * dp);
  return LH_SUCCESS;
}

lh_status lh_plan_alloc(int devices, int pp, int dp, lh_plan **plan) {
  *plan = NULL;
  LH_CHECK(lh_plan_check_sizes(devices, pp, dp, "lh_plan_alloc"));
  lh_plan *p = lh_calloc(1, sizeof *p, "a plan");
  if (!p)
    return LH_ERR_OUT_OF_MEMORY;
  size_t n = (size_t)devices;
  p->stage = lh_malloc(n * sizeof *p->stage, "a plan's stages");
  p->replica = p->stage ? lh_malloc(n * sizeof *p->replica, "a plan's replicas") : NULL;
  p->device_at = p->replica ? lh_malloc(n * sizeof *p->device_at, "a plan's grid") : NULL;
  if (!p->device_at) {
    lh_plan_free(p);
    return LH_ERR_OUT_OF_MEMORY;
  }
  for (size_t i = 0; i < n; i++)
    p->stage[i] = p->replica[i] = p->device_at[i] = -1;
  p->devices = devices;
  p->pp = pp;
  p->dp = dp;
  p->info = (lh_plan_info)LH_PLAN_INFO_INIT;
  p->info.devices = devices;
  p->info.pp = pp;
  p->info.dp = dp;
  *plan = p;
  return LH_SUCCESS;
}

lh_status lh_plan_index_from_grid(lh_plan *plan, const char *who) {
  int n = plan->devices, dp = plan->dp;
  /* Mark every device as unseen first: a device met twice is found by its stage being set. */
  for (int d = 0; d < n; d++)
    plan->stage[d] = plan->replica[d] = -1;
  for (int cell = 0; cell < n; cell++) {
    int d = plan->device_at[cell], s = cell / dp, r = cell % dp;
    if (d < 0 || d >= n) {
      for (int i = 0; i < n; i++)
        plan->stage[i] = plan->replica[i] = -1;
      return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: stage %d, replica %d holds device %d, out of range for %d devices",
                      who, s, r, d, n);
    }
    if (plan->stage[d] >= 0) {
      int s0 = plan->stage[d], r0 = plan->replica[d];
      for (int i = 0; i < n; i++)
        plan->stage[i] = plan->replica[i] = -1;
      return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: device %d holds both stage %d, replica %d and stage %d, replica %d",
                      who, d, s0, r0, s, r);
    }
    plan->stage[d] = s;
    plan->replica[d] = r;
  }
  return LH_SUCCESS;
}

lh_status lh_plan_grid_from_index(lh_plan *plan, const char *who) {
  int n = plan->devices, pp = plan->pp, dp = plan->dp;
  for (int cell = 0; cell < n; cell++)
    plan->device_at[cell] = -1;
  for (int d = 0; d < n; d++) {
    int s = plan->stage[d], r = plan->replica[d];
    const char *bad = s < 0 || s >= pp ? "stage" : r < 0 || r >= dp ? "replica" : NULL;
    if (bad) {
      for (int i = 0; i < n; i++)
        plan->device_at[i] = -1;
      return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: device %d has %s %d, out of range for pp %d x dp %d", who, d,
                      bad, bad[0] == 's' ? s : r, pp, dp);
    }
    int cell = s * dp + r;
    if (plan->device_at[cell] >= 0) {
      int other = plan->device_at[cell];
      for (int i = 0; i < n; i++)
        plan->device_at[i] = -1;
      return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: device %d and device %d both hold stage %d, replica %d", who,
                      other, d, s, r);
    }
    plan->device_at[cell] = d;
  }
  /* n devices in n distinct cells: every cell is filled, so the assignment is a bijection. */
  return LH_SUCCESS;
}

lh_status lh_plan_create(int devices, int pp, int dp, const int *stage, const int *replica, lh_plan **plan) {
  lh_error_clear();
  if (!plan)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_plan_create: plan must not be NULL");
  *plan = NULL;
  if (!stage || !replica)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_plan_create: %s must not be NULL", !stage ? "stage" : "replica");
  LH_CHECK(lh_plan_check_sizes(devices, pp, dp, "lh_plan_create"));
  lh_plan *p = NULL;
  LH_CHECK(lh_plan_alloc(devices, pp, dp, &p));
  memcpy(p->stage, stage, (size_t)devices * sizeof *stage);
  memcpy(p->replica, replica, (size_t)devices * sizeof *replica);
  lh_status st = lh_plan_grid_from_index(p, "lh_plan_create");
  if (st != LH_SUCCESS) {
    lh_plan_free(p);
    return st;
  }
  *plan = p;
  return LH_SUCCESS;
}

lh_status lh_plan_random(int devices, int pp, int dp, uint64_t seed, lh_plan **plan) {
  lh_error_clear();
  if (!plan)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_plan_random: plan must not be NULL");
  *plan = NULL;
  LH_CHECK(lh_plan_check_sizes(devices, pp, dp, "lh_plan_random"));
  lh_plan *p = NULL;
  LH_CHECK(lh_plan_alloc(devices, pp, dp, &p));
  for (int i = 0; i < devices; i++)
    p->device_at[i] = i;
  /* Fisher-Yates from the top: every permutation equally likely, one draw per position. */
  uint64_t state = seed;
  for (int i = devices - 1; i > 0; i--) {
    int j = lh_sched_below(&state, i + 1);
    int t = p->device_at[i];
    p->device_at[i] = p->device_at[j];
    p->device_at[j] = t;
  }
  lh_status st = lh_plan_index_from_grid(p, "lh_plan_random");
  if (st != LH_SUCCESS) { /* cannot happen for a permutation; kept so a bug cannot leak a bad plan */
    lh_plan_free(p);
    return st;
  }
  p->info.seed = seed;
  *plan = p;
  return LH_SUCCESS;
}

lh_status lh_plan_free(lh_plan *plan) {
  if (!plan)
    return LH_SUCCESS;
  free(plan->stage);
  free(plan->replica);
  free(plan->device_at);
  free(plan);
  return LH_SUCCESS;
}

lh_status lh_plan_get_info(const lh_plan *plan, lh_plan_info *info) {
  lh_error_clear();
  if (!plan || !info)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_plan_get_info: %s must not be NULL", !plan ? "plan" : "info");
  if (info->size < sizeof *info)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_plan_get_info: info->size is %zu, expected at least %zu (start from LH_PLAN_INFO_INIT)",
                    info->size, sizeof *info);
  *info = plan->info;
  info->size = sizeof *info;
  return LH_SUCCESS;
}

lh_status lh_plan_device(const lh_plan *plan, int device, int *stage, int *replica) {
  lh_error_clear();
  if (!plan)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_plan_device: plan must not be NULL");
  if (!stage && !replica)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_plan_device: stage and replica are both NULL; nothing to return");
  if (device < 0 || device >= plan->devices)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_plan_device: device %d is out of range for a plan of %d devices",
                    device, plan->devices);
  if (stage)
    *stage = plan->stage[device];
  if (replica)
    *replica = plan->replica[device];
  return LH_SUCCESS;
}

lh_status lh_plan_device_at(const lh_plan *plan, int stage, int replica, int *device) {
  lh_error_clear();
  if (!plan || !device)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_plan_device_at: %s must not be NULL", !plan ? "plan" : "device");
  if (stage < 0 || stage >= plan->pp || replica < 0 || replica >= plan->dp)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_plan_device_at: stage %d, replica %d is out of range for a plan of pp %d x dp %d", stage,
                    replica, plan->pp, plan->dp);
  *device = plan->device_at[stage * plan->dp + replica];
  return LH_SUCCESS;
}

/* ---- names -------------------------------------------------------------------------------- */

static const char *const lh_objective_names[] = {[LH_SCHED_PIPELINED] = "pipelined", [LH_SCHED_DTFM] = "dtfm"};
#define LH_OBJECTIVES ((int)(sizeof lh_objective_names / sizeof lh_objective_names[0]))

lh_status lh_sched_objective_name(lh_sched_objective objective, const char **name) {
  lh_error_clear();
  if (!name)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_objective_name: name must not be NULL");
  /* Compared as int: a value outside the enum must not index the table. */
  int k = (int)objective;
  if (k < 0 || k >= LH_OBJECTIVES)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_objective_name: objective %d is not %d (pipelined) or %d (dtfm)",
                    k, LH_SCHED_PIPELINED, LH_SCHED_DTFM);
  *name = lh_objective_names[k];
  return LH_SUCCESS;
}

lh_status lh_sched_objective_parse(const char *name, lh_sched_objective *objective) {
  lh_error_clear();
  if (!name || !objective)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_objective_parse: %s must not be NULL",
                    !name ? "name" : "objective");
  for (int k = 0; k < LH_OBJECTIVES; k++)
    if (!strcmp(name, lh_objective_names[k])) {
      *objective = (lh_sched_objective)k;
      return LH_SUCCESS;
    }
  return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_objective_parse: unknown objective '%.64s' (expected pipelined or dtfm)",
                  name);
}

lh_status lh_plan_placement(const lh_plan *plan, int *stage_of_rank, int *replica_of_rank, int ranks) {
  lh_error_clear();
  if (!plan || !stage_of_rank || !replica_of_rank)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_plan_placement: plan, stage_of_rank and replica_of_rank must not be NULL");
  if (ranks != plan->devices)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_plan_placement: the plan places %d devices but there are %d ranks; run it with mpirun -np %d",
                    plan->devices, ranks, plan->devices);
  for (int d = 0; d < ranks; d++) {
    stage_of_rank[d] = plan->stage[d];
    replica_of_rank[d] = plan->replica[d];
  }
  return LH_SUCCESS;
}

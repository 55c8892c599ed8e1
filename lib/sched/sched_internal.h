/* The scheduler's shared pieces: the plan object, the symmetrised link matrices the objectives
 * read, and the exact inner solvers (bottleneck assignment, open path, spanning forest). */
#ifndef LH_SCHED_INTERNAL_H
#define LH_SCHED_INTERNAL_H

#include <stdint.h>
#include <longhaul/sched.h>

/* ---- the plan ---------------------------------------------------------------------------- */
struct lh_plan {
  int devices, pp, dp;
  int *stage;     /* per device */
  int *replica;   /* per device */
  int *device_at; /* [stage * dp + replica] -> device */
  lh_plan_info info;
};
/* An empty plan (every entry -1) with info's size, devices, pp and dp set. */
lh_status lh_plan_alloc(int devices, int pp, int dp, lh_plan **plan);
/* Fill stage/replica from device_at (or device_at from stage/replica) after checking that the
 * assignment is a bijection; `who` names the caller in errors. */
lh_status lh_plan_index_from_grid(lh_plan *plan, const char *who);
lh_status lh_plan_grid_from_index(lh_plan *plan, const char *who);

/* ---- the network as the objectives see it ------------------------------------------------ */
/* Symmetrised (mean of both directions) latency in seconds and bandwidth in bytes/s, with the
 * uplink caps applied, plus the directed matrices for the pipelined objective. */
typedef struct lh_net {
  int n;
  double *alpha, *beta;         /* n x n, symmetric */
  double *alpha_dir, *beta_dir; /* n x n, from row to column */
  double *speed;                /* n */
  int *klass;                   /* n: devices with the same class have identical rows and speed */
  int classes;
} lh_net;
lh_status lh_net_build(const lh_links *links, lh_net *net);
void lh_net_free(lh_net *net);

/* ---- objectives -------------------------------------------------------------------------- */
/* What an objective needs, derived once from config and the degrees. */
typedef struct lh_objective {
  lh_sched_objective kind;
  int pp, dp, m;
  double c_dp, c_pp;           /* dtfm: bytes of a stage's gradients, of a macro-batch boundary */
  double *dp_edge, *pp_edge;   /* dtfm: n x n symmetric edge costs (seconds) */
  int *stage_layers;           /* pp */
  double *stage_grad_bytes;    /* pp: pipelined all-reduce bytes */
  double fwd_bytes, bwd_bytes; /* pipelined: per micro-batch and boundary */
  double layer_seconds;
  size_t ring_chunk;
  double *scratch;             /* pp + 2 m: one replica's event times */
  int *path;                   /* pp: one replica's devices */
  double *done, *stage_start;  /* pp each: when stages finish their backwards */
} lh_objective;
lh_status lh_objective_build(const lh_net *net, const lh_sched_config *config, int pp, int dp,
                             lh_objective *obj);
void lh_objective_free(lh_objective *obj);
/* Cost of a full assignment grid[stage * dp + replica] = device, from scratch. */
void lh_objective_eval(const lh_net *net, const lh_objective *obj, const int *grid, double *cost,
                       double *dp_cost, double *pp_cost);
/* Pipelined parts, reused by the solver's incremental evaluation. */
/* One replica (path = its P devices): done[k] = when stage k ends its last backward; returns
 * the replica's end. */
double lh_pipelined_replica(const lh_net *net, const lh_objective *obj, const int *path, double *done);
double lh_pipelined_stage_allreduce(const lh_net *net, const lh_objective *obj, int stage, const int *ring);
/* dtfm DATAP of one group of dp devices. */
double lh_dtfm_group_cost(const lh_objective *obj, int n, const int *group, int dp);
double lh_objective_lower_bound(const lh_net *net, const lh_objective *obj);
/* Check the config fields that do not depend on the degrees; resolve the candidate degrees. */
lh_status lh_sched_config_check(const lh_sched_config *config, int devices);

/* ---- exact inner solvers ----------------------------------------------------------------- */
/* Bottleneck assignment of `rows` to `cols` (rows <= cols) over cost[r * cols + c]: the
 * smallest t such that every row can be matched to a distinct column with cost <= t, and a
 * matching reaching it; among matchings at t, the one of least total cost when min_sum is set
 * (Hungarian over the admissible edges), else the first found. match[r] = column. Returns t. */
typedef struct lh_bottleneck_work lh_bottleneck_work;
lh_status lh_bottleneck_work_create(int max_rows, int max_cols, lh_bottleneck_work **work);
void lh_bottleneck_work_free(lh_bottleneck_work *work);
double lh_bottleneck_assign(lh_bottleneck_work *work, const double *cost, int rows, int cols,
                            int min_sum, int *match);

/* Cheapest open path through all n nodes over the symmetric w[i * n + j]; order[] gets the
 * nodes in path order. Exact (Held-Karp) for n <= 16, else nearest-neighbour starts improved by
 * 2-opt and Or-opt. Returns the path's weight summed in path order. */
typedef struct lh_path_work lh_path_work;
lh_status lh_path_work_create(int max_n, lh_path_work **work);
void lh_path_work_free(lh_path_work *work);
double lh_open_path(lh_path_work *work, const double *w, int n, int *order);
/* Improve `order` in place by 2-opt and Or-opt until neither helps; scratch holds n ints. */
void lh_path_local_search(const double *w, int n, int *order, int *scratch);
/* Weight of the path `order` summed in order (the one summation every caller uses). */
double lh_path_weight(const double *w, int n, const int *order);

/* Weight of a minimum spanning forest with exactly `trees` trees over the complete graph of
 * symmetric edge weights w (n x n): Kruskal stopped after n - trees edges. */
double lh_min_spanning_forest(const double *w, int n, int trees);

/* ---- the search ---------------------------------------------------------------------------- */
/* Constructive multi-start and swap polishing for one P x D under one objective, until done
 * or `deadline` (lh_clock seconds). grid[stage * dp + replica] = device of the best plan. */
typedef struct lh_search_result {
  double cost;
  int starts;     /* constructive starts polished */
  int budget_hit; /* the deadline cut the search short */
  double construct_seconds;
} lh_search_result;
lh_status lh_search_run(const lh_net *net, const lh_objective *obj, uint64_t seed, int restarts, double deadline,
                        int *grid, lh_search_result *result);

/* qsort's ascending order of doubles. */
static inline int lh_sched_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* A splitmix64 stream: the scheduler's only randomness. */
static inline uint64_t lh_sched_rand(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
/* Uniform in [0, 1). */
static inline double lh_sched_uniform(uint64_t *state) { return (double)(lh_sched_rand(state) >> 11) * 0x1.0p-53; }
/* Uniform in [0, n). */
static inline int lh_sched_below(uint64_t *state, int n) { return (int)(lh_sched_uniform(state) * n); }

#endif

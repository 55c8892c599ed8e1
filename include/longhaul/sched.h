/* The scheduler: place pipeline stages and data-parallel replicas on devices joined by
 * measured links, so that heavy traffic rides fast links (after Yuan et al., "Decentralized
 * Training of Foundation Models in Heterogeneous Environments", NeurIPS 2022).
 *
 * N devices (the link file's, = world ranks) run P pipeline stages x D data-parallel
 * replicas, N = P x D. A plan gives every device its (stage, replica): the D devices of one
 * stage form its data-parallel group, the P devices of one replica form one pipeline, with
 * stage 0 first.
 *
 *   lh_links *links; lh_links_read_file("net.links", &links);
 *   lh_sched_config cfg = LH_SCHED_CONFIG_INIT;          // objective "pipelined", DT-FM's model
 *   cfg.pp = 8; cfg.dp = 8; cfg.seed = 1;
 *   lh_plan *plan; lh_sched_solve(links, &cfg, &plan);
 *   lh_plan_info info = LH_PLAN_INFO_INIT; lh_plan_get_info(plan, &info);
 *   lh_plan_write_file(plan, "plan.json");
 *
 * Objectives (one evaluator each, both from an assignment alone, so the plan that is
 * deployed is the plan that was scored):
 *   LH_SCHED_DTFM      DT-FM's cost model, exactly: with the symmetrised links (mean of both
 *                      directions) and c_DP = a stage's gradient bytes, c_PP = the activation
 *                      bytes of one macro-batch (all micro-batches),
 *                        DATAP = max over groups C, devices d in C of
 *                                sum_{d' in C, d' != d} 2 (alpha + c_DP / (D beta)),
 *                        PIPEP = sum over boundaries k of max over replicas of
 *                                alpha + c_PP / beta   (the link from stage k to k + 1),
 *                        cost  = DATAP + 2 PIPEP          (dp_cost = DATAP, pp_cost = 2 PIPEP).
 *                      The solver makes each boundary a bottleneck matching and the stage
 *                      order an optimal open path, as DT-FM scores a partition.
 *   LH_SCHED_PIPELINED the iteration as the runtime runs it (lh_pipeline with GPipe, then a
 *                      ring all-reduce per stage), replayed event by event per replica: a
 *                      stage's device runs its m forwards (a third of the stage's compute,
 *                      layers x layer_seconds / speed) as their inputs arrive, then its m
 *                      backwards; a link carries one message at a time (bytes / beta) and
 *                      delivers it alpha later (the directed link, as lh_comm simulates it).
 *                      For m identical micro-batches this is the flow shop's
 *                        sum of every stage's and link's time + latencies + (m - 1) x the slowest
 *                      per direction. A stage's all-reduce (lh_model_ring_allreduce's formula in
 *                      replica order) starts when all its replicas have finished their
 *                      backwards, while earlier stages may still be busy:
 *                        cost    = max over stages k of (backwards of k done + ring of k),
 *                        pp_cost = the last replica's end, dp_cost = cost - pp_cost (the part
 *                                  of the all-reduces no backward hides).
 *
 * Lower bounds (printed with every plan, valid for every placement with the same P x D):
 *   dtfm:      max_d (sum of the D - 1 cheapest DP edges of d)
 *              + (2 / D) x weight of a minimum spanning forest with D trees over PP edges.
 *   pipelined: the slowest device's m forwards and backwards; or the average replica's
 *              computes and links (a spanning forest again) plus (m - 1) x the fastest
 *              device's; or the fastest device's m computes plus the ring of the device whose
 *              best link is slowest; whichever is largest.
 *
 * The solver: exact bottleneck assignment (threshold search + bipartite matching), exact open
 * path (Held-Karp up to 16 stages, 2-opt and Or-opt beyond), a constructive multi-start that
 * grows all D pipelines stage by stage, then swap polishing with incremental evaluation under
 * the time budget. Deterministic for a given seed as long as the budget is not reached
 * (lh_plan_info.budget_hit says when it was).
 *
 * Stability: experimental. */
#ifndef LONGHAUL_SCHED_H
#define LONGHAUL_SCHED_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <longhaul/status.h>
#include <longhaul/version.h>
#include <longhaul/links.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lh_sched_objective {
  LH_SCHED_PIPELINED = 0, /* the runtime's iteration time (default) */
  LH_SCHED_DTFM = 1       /* DT-FM's communication cost, for comparison */
} lh_sched_objective;

/* What is being trained. Bytes are what travels: AQ-SGD and gradient codecs change them. */
typedef struct lh_sched_model {
  size_t size;                          /* sizeof(lh_sched_model) */
  int layers;                           /* L >= P; stage k gets L / P layers, the first L % P one more */
  double params_per_layer;              /* parameters per layer, > 0 */
  double activation_elements;           /* elements crossing a boundary per micro-batch, > 0 */
  int micro_batches;                    /* m per iteration, >= 1 */
  double activation_element_bytes;      /* forward wire bytes per element (fp16: 2; AQ-SGD fw2: ~0.25) */
  double activation_grad_element_bytes; /* backward wire bytes per element */
  double gradient_element_bytes;        /* data-parallel wire bytes per parameter (fp32: 4; int4: ~0.5) */
  double layer_seconds;                 /* forward + backward of one layer on one micro-batch on a
                                           device of speed 1.0 (pipelined only), >= 0 */
} lh_sched_model;
/* DT-FM's GPT3-XL (1.3e9 parameters, 24 layers, fp32 gradients; one macro-batch of 3.77 Gbit of
 * fp16 activations cut into 8 micro-batches): with P = 8 a stage has c_DP = 0.65e9 bytes and a
 * boundary c_PP = 3.77e9 / 8 bytes, DT-FM's constants. */
#define LH_SCHED_MODEL_DTFM \
  {sizeof(lh_sched_model), 24, 1.3e9 / 24, 29453125.0, 8, 2.0, 2.0, 4.0, 0.05}

typedef struct lh_sched_config {
  size_t size;                  /* sizeof(lh_sched_config) */
  int version;                  /* LH_VERSION_CODE */
  int pp, dp;                   /* degrees; 0 = choose (one 0: N / the other; both 0: try every
                                   P x D = N with P <= layers and keep the cheapest) */
  lh_sched_objective objective; /* default LH_SCHED_PIPELINED */
  lh_sched_model model;
  uint64_t seed;                /* every random choice derives from it */
  double time_budget_s;         /* > 0; default 1 */
  int restarts;                 /* constructive starts, >= 1; default 32 */
  size_t ring_chunk_bytes;      /* pipelined: the all-reduce ring's chunk; 0 = 1 MiB (LH_RING_CHUNK_BYTES' default) */
} lh_sched_config;
#define LH_SCHED_CONFIG_INIT \
  {sizeof(lh_sched_config), LH_VERSION_CODE, 0, 0, LH_SCHED_PIPELINED, LH_SCHED_MODEL_DTFM, 0, 1.0, 32, 0}

typedef struct lh_plan lh_plan; /* opaque */

typedef struct lh_plan_info {
  size_t size;                  /* sizeof(lh_plan_info) */
  int devices, pp, dp;
  lh_sched_objective objective;
  double cost, dp_cost, pp_cost; /* seconds per iteration (dtfm: DT-FM's units, also seconds) */
  double lower_bound;            /* for any placement with this pp x dp */
  double gap;                    /* (cost - lower_bound) / cost; 0 when cost is 0 */
  double solve_seconds;          /* 0 for a plan that was not solved */
  double construct_seconds;      /* of which building and ranking the constructive starts */
  uint64_t seed;
  int restarts;                  /* constructive starts run */
  int budget_hit;                /* 1: the time budget stopped the search (results may then vary) */
} lh_plan_info;
#define LH_PLAN_INFO_INIT {sizeof(lh_plan_info), 0, 0, 0, LH_SCHED_PIPELINED, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

/* ---- solving ------------------------------------------------------------------------------ */

/* Errors: LH_ERR_INVALID_ARGUMENT naming the field (N not P x D, P > layers, a negative size,
 * an unknown objective, a dtfm model whose layers P does not divide). */
lh_status lh_sched_solve(const lh_links *links, const lh_sched_config *config, lh_plan **plan);
/* The cost of a plan under config's objective and model, recomputed from its assignment alone;
 * cost, dp_cost, pp_cost may each be NULL. The plan's devices must equal the links'. */
lh_status lh_sched_evaluate(const lh_links *links, const lh_sched_config *config, const lh_plan *plan,
                            double *cost, double *dp_cost, double *pp_cost);
/* The lower bound for pp x dp placements (pp and dp must be given). */
lh_status lh_sched_lower_bound(const lh_links *links, const lh_sched_config *config, double *bound);

/* ---- plans -------------------------------------------------------------------------------- */

/* A plan from an assignment: stage[d], replica[d] for d < devices, every (stage, replica)
 * pair exactly once. Its costs read 0 until lh_plan_score. */
lh_status lh_plan_create(int devices, int pp, int dp, const int *stage, const int *replica, lh_plan **plan);
/* A uniformly random placement (a seeded shuffle). */
lh_status lh_plan_random(int devices, int pp, int dp, uint64_t seed, lh_plan **plan);
/* Evaluate under config (as lh_sched_evaluate) and store cost, split and lower bound in the plan. */
lh_status lh_plan_score(lh_plan *plan, const lh_links *links, const lh_sched_config *config);
lh_status lh_plan_free(lh_plan *plan); /* NULL is fine */
lh_status lh_plan_get_info(const lh_plan *plan, lh_plan_info *info);
lh_status lh_plan_device(const lh_plan *plan, int device, int *stage, int *replica);
/* The device of (stage, replica). */
lh_status lh_plan_device_at(const lh_plan *plan, int stage, int replica, int *device);
/* The placement arrays lh_pipeline_config takes: stage_of_rank[d], replica_of_rank[d] for the
 * `ranks` world ranks, which must equal the plan's devices (device d runs on rank d). */
lh_status lh_plan_placement(const lh_plan *plan, int *stage_of_rank, int *replica_of_rank, int ranks);
/* Layers of each stage (pp entries), as the objective's model split them. */
lh_status lh_plan_stage_layers(const lh_plan *plan, const lh_sched_model *model, int *layers, int pp);

/* JSON, schema in examples/links/README.md ("Plan files"): an object with "format":
 * "longhaul-plan", "version": 1, "devices", "pp", "dp", "objective", numbers "cost", "dp_cost",
 * "pp_cost", "lower_bound", "gap", "solve_seconds", "seed", and "assignment": a list of
 * {"device": d, "stage": s, "replica": r}, one per device. The reader needs devices, pp, dp and
 * assignment, checks that every device and every (stage, replica) appears exactly once, and
 * refuses anything else with LH_ERR_PARSE naming the source, line and what was expected. */
lh_status lh_plan_write_file(const lh_plan *plan, const char *path);
lh_status lh_plan_write_stream(const lh_plan *plan, FILE *stream);
lh_status lh_plan_read_file(const char *path, lh_plan **plan);
lh_status lh_plan_parse(const char *text, size_t length, const char *source_name, lh_plan **plan);

/* ---- instances ---------------------------------------------------------------------------- */

/* Random heterogeneous networks for tests and benchmarks: devices spread unevenly over cities
 * (sites), city-to-city latency from their distance, per-device uplinks drawn between
 * min and max, a link's bandwidth = min of both ends' uplinks (inside a city) or a share of the
 * city pair's capacity, every value jittered by +-jitter (a fraction). */
typedef struct lh_sched_instance {
  size_t size;           /* sizeof(lh_sched_instance) */
  int devices;           /* >= 1 */
  int cities;            /* 1 .. devices */
  double min_uplink_gbps, max_uplink_gbps; /* 0 < min <= max */
  double jitter;         /* 0 <= jitter < 1 */
  double speed_spread;   /* device speeds drawn from [1 - spread, 1 + spread], 0 <= spread < 1 */
  uint64_t seed;
} lh_sched_instance;
#define LH_SCHED_INSTANCE_INIT {sizeof(lh_sched_instance), 64, 8, 0.1, 2.0, 0.1, 0.0, 1}
lh_status lh_sched_random_instance(const lh_sched_instance *instance, lh_links **links);

/* ---- names -------------------------------------------------------------------------------- */
/* "pipelined", "dtfm" and back. */
lh_status lh_sched_objective_name(lh_sched_objective objective, const char **name);
lh_status lh_sched_objective_parse(const char *name, lh_sched_objective *objective);

#ifdef __cplusplus
}
#endif
#endif

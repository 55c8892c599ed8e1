/* The pipeline runtime: a model cut into stages, one stage per rank, with data-parallel
 * replicas of each stage; activations go forward and gradients backward through AQ-SGD
 * contexts (aqsgd.h) at every stage boundary.
 *
 * The caller gives two callbacks (forward and backward of *its* stage) and the shapes at the
 * boundaries; Longhaul runs the schedule (GPipe or 1F1B) over the micro-batches of a step,
 * posts receives early and sends without blocking so that transfers overlap compute, and
 * reports what it moved.
 *
 *   lh_pipeline_config cfg = LH_PIPELINE_CONFIG_INIT;
 *   cfg.stages = 2; cfg.replicas = 2;               // 4 ranks
 *   cfg.micro_batches = 8; cfg.micro_batch = 16;    // 128 examples per replica per step
 *   cfg.examples = 50000; cfg.tokens = 128;
 *   size_t widths[1] = {768}; cfg.boundary_channels = widths;
 *   cfg.aq.mode = LH_AQ_DELTA; cfg.aq.forward_bits = 2; cfg.aq.backward_bits = 4;
 *   cfg.forward = my_forward; cfg.backward = my_backward; cfg.user = &model;
 *   lh_pipeline p; lh_pipeline_create(comm, &cfg, &p);
 *   for (step...) {
 *     lh_pipeline_step(p, ids, &stats);             // ids: micro_batches x micro_batch
 *     lh_comm dp; lh_pipeline_stage_comm(p, &dp);   // replicas of my stage
 *     ... all-reduce my stage's gradients over dp (lh_reducer), optimizer step ...
 *   }
 *
 * Placement: world rank -> (stage, replica). Default: stage = rank % stages, replica =
 * rank / stages (each replica's stages on consecutive ranks). A scheduler's plan gives its own
 * through stage_of_rank / replica_of_rank. The runtime splits the communicator twice: one per
 * replica (its stages, in stage order) and one per stage (its replicas, in replica order).
 *
 * Each replica keeps its own AQ-SGD buffers: give every replica a fixed shard of the examples
 * (an example that moves to another replica is a first visit there, sent at full precision).
 *
 * Contract of a step: every rank of a replica passes the same ids (the first stage reads its
 * inputs by id, the last its targets; AQ-SGD keys its buffers by id; the frames carry a hash
 * and a difference is LH_ERR_MISMATCH). Callbacks are called on the calling thread, in the
 * schedule's order; forward for micro-batch i always precedes its backward. The callback's
 * buffers belong to the runtime and are valid only during the call.
 *
 * Errors: a callback's non-success status stops the step and is returned; the other stages
 * then fail at their next receive (LH_ERR_TIMEOUT after LH_TIMEOUT_S) — a pipeline cannot
 * finish a step without every stage. After a failed step or eval the stages are out of step:
 * the pipeline refuses later calls with the first error; free it and create a new one.
 * lh_pipeline_free destroys the split communicators, so every rank calls it.
 *
 * Stability: experimental. */
#ifndef LONGHAUL_PIPELINE_H
#define LONGHAUL_PIPELINE_H

#include <stddef.h>
#include <stdint.h>
#include <longhaul/status.h>
#include <longhaul/transport.h>
#include <longhaul/aqsgd.h>
#include <longhaul/sched.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lh_pipeline_s *lh_pipeline;

typedef enum lh_pipeline_schedule {
  LH_SCHEDULE_1F1B = 0, /* warm-up forwards, then one forward one backward: at most `stages`
                           micro-batches in flight per stage (less activation memory) */
  LH_SCHEDULE_GPIPE = 1 /* every forward, then every backward */
} lh_pipeline_schedule;

/* What a callback gets. Activations are float32, count x tokens x channels, row-major. */
typedef struct lh_stage_call {
  size_t size;               /* sizeof(lh_stage_call) */
  int stage, replica;
  int micro;                 /* micro-batch index within the step, 0 .. micro_batches - 1
                                (eval: 0 .. ceil(count / micro_batch) - 1) */
  int training;              /* 1 in lh_pipeline_step, 0 in lh_pipeline_eval (forward only) */
  const int64_t *ids;        /* its example ids */
  size_t count;              /* how many */
  const float *input;        /* forward: m(x) from the previous stage; NULL on stage 0 */
  float *output;             /* forward: write this stage's activation; NULL on the last stage */
  const float *grad_output;  /* backward: gradient of the output; NULL on the last stage */
  float *grad_input;         /* backward: write the gradient of the input; NULL on stage 0 */
  double loss;               /* forward, last stage: set it to the micro-batch's summed loss */
} lh_stage_call;

typedef lh_status (*lh_stage_fn)(void *user, lh_stage_call *call);

typedef struct lh_pipeline_config {
  size_t size;                     /* sizeof(lh_pipeline_config) */
  int version;                     /* LH_VERSION_CODE */
  int stages;                      /* P >= 1 */
  int replicas;                    /* D >= 1; the communicator has P x D ranks */
  const int *stage_of_rank;        /* optional (both or neither): placement per world rank */
  const int *replica_of_rank;
  int micro_batches;               /* per step, >= 1 */
  size_t micro_batch;              /* examples per micro-batch, >= 1 */
  size_t examples;                 /* example ids run 0 .. examples - 1 */
  size_t tokens;                   /* rows per example at every boundary; 0: 1 */
  const size_t *boundary_channels; /* P - 1 widths: boundary s sits between stages s and s + 1 */
  lh_pipeline_schedule schedule;   /* default 1F1B */
  lh_aq_config aq;                 /* every boundary's compression (mode, bits, quantizer,
                                      rounding, warm-up, storage, seed); the runtime sets
                                      examples, tokens, channels, boundary, dtype (FP32) and
                                      store (one per boundary and side, of store_kind) */
  lh_aq_store_kind store_kind;     /* where each boundary's buffers live; default HOST */
  const char *store_dir;           /* MMAP: directory of the buffer files */
  lh_stage_fn forward, backward;   /* required */
  void *user;                      /* passed to both */
} lh_pipeline_config;
#define LH_PIPELINE_CONFIG_INIT                                                                       \
  {sizeof(lh_pipeline_config), LH_VERSION_CODE, 1, 1, NULL, NULL, 1, 1, 0, 0, NULL, LH_SCHEDULE_1F1B, \
   LH_AQ_CONFIG_INIT, LH_AQ_STORE_HOST, NULL, NULL, NULL, NULL}

/* Collective over comm. Checks that every rank gives the same shape and settings. */
lh_status lh_pipeline_create(lh_comm comm, const lh_pipeline_config *config, lh_pipeline *pipeline);
lh_status lh_pipeline_free(lh_pipeline pipeline); /* NULL is fine */

lh_status lh_pipeline_position(lh_pipeline pipeline, int *stage, int *replica);
/* The ranks holding this rank's stage, one per replica (owned by the pipeline). */
lh_status lh_pipeline_stage_comm(lh_pipeline pipeline, lh_comm *comm);
/* The ranks of this rank's replica, one per stage, in stage order (owned by the pipeline). */
lh_status lh_pipeline_replica_comm(lh_pipeline pipeline, lh_comm *comm);

/* A scheduler's plan (sched.h) as communicators, for programs that run their own stages:
 * collective over comm, whose size must equal the plan's devices (rank d runs device d). Every
 * rank gets the ranks of its stage (one per replica, in replica order: its data-parallel
 * group) and of its replica (one per stage, in stage order: its pipeline); free both with
 * lh_comm_destroy. For lh_pipeline, pass the plan through lh_plan_placement instead: the
 * pipeline makes the same two splits itself. */
lh_status lh_plan_split(lh_comm comm, const lh_plan *plan, lh_comm *stage_comm, lh_comm *replica_comm);

typedef struct lh_pipeline_stats {
  size_t size;                    /* sizeof(lh_pipeline_stats) */
  double step_seconds;            /* wall time of the call */
  double compute_seconds;         /* inside the callbacks */
  double wait_seconds;            /* blocked on transfers (step - compute - codec) */
  double codec_seconds;           /* AQ-SGD encode and decode */
  double loss;                    /* last stage: sum of the micro-batches' losses; else 0 */
  int has_loss;                   /* 1 on last-stage ranks */
  size_t examples;                /* examples this replica processed */
  unsigned long long bytes_to_next, bytes_to_prev;     /* sent on the forward / backward link */
  unsigned long long bytes_from_prev, bytes_from_next; /* received */
  unsigned long long raw_bytes_sent; /* the same messages as uncompressed float32 */
  double compression;             /* raw / wire of what this rank sent (1 when it sent nothing) */
} lh_pipeline_stats;
#define LH_PIPELINE_STATS_INIT {sizeof(lh_pipeline_stats), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

/* One training step: micro_batches x micro_batch ids (micro-batch i is ids[i * micro_batch ..]),
 * forward and backward through every stage. stats may be NULL. */
lh_status lh_pipeline_step(lh_pipeline pipeline, const int64_t *ids, lh_pipeline_stats *stats);
/* Forward only and uncompressed (float32 on the wire, no buffer touched): evaluation under the
 * exact model. count examples in micro-batches of micro_batch (the last may be short). */
lh_status lh_pipeline_eval(lh_pipeline pipeline, const int64_t *ids, size_t count, lh_pipeline_stats *stats);

/* The AQ-SGD contexts of this rank's boundaries (NULL where there is none: stage 0 has no
 * receiver, the last stage no sender), e.g. for their stats or to compare buffers. */
lh_status lh_pipeline_aq(lh_pipeline pipeline, lh_aq_receiver *from_prev, lh_aq_sender *to_next);

#ifdef __cplusplus
}
#endif
#endif

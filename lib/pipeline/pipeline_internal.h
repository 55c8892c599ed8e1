/* Pipeline internals: the schedule of one stage as a list of actions. Never installed. */
#ifndef LH_PIPELINE_INTERNAL_H
#define LH_PIPELINE_INTERNAL_H

#include <longhaul/pipeline.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lh_pipe_op { LH_PIPE_FORWARD = 0, LH_PIPE_BACKWARD = 1 } lh_pipe_op;

typedef struct lh_pipe_action {
  lh_pipe_op op;
  int micro; /* micro-batch index, 0 .. micro_batches - 1 */
} lh_pipe_action;

/* The ordered actions of `stage` (0 .. stages - 1) for one step of `micro_batches`: writes
 * exactly 2 x micro_batches actions, each micro-batch once forward and once backward.
 * Every stage runs its forwards in micro-batch order and its backwards in micro-batch order:
 * messages between two stages pair by posting order, so both ends must agree on it, and the
 * same order under both schedules makes GPipe and 1F1B call the backward callbacks in the same
 * order (a model that accumulates gradients in call order gets the same bits under either). */
lh_status lh_pipe_schedule(lh_pipeline_schedule schedule, int stages, int stage, int micro_batches,
                           lh_pipe_action *actions);

/* The most micro-batches that are forwarded and not yet backwarded at any point of the list. */
int lh_pipe_max_in_flight(const lh_pipe_action *actions, int count);

#ifdef __cplusplus
}
#endif
#endif

/* The schedules: which forward or backward a stage runs next.
 *
 * GPipe: every forward, then every backward. The backwards run in micro-batch order, not in
 * the reverse order of the GPipe paper: the idle time (bubble) is the same either way, and
 * one order for both schedules means a switch between them changes no bit of the gradients.
 *
 * 1F1B (PipeDream-flush): stage s first runs w = min(stages - s - 1, micro_batches) forwards
 * (warm-up), then alternates one forward and one backward until the forwards are done, then
 * runs the remaining backwards (cool-down). The last stage has no warm-up: it runs the
 * backward of a micro-batch right after its forward. At most w + 1 = stages - s micro-batches
 * are in flight on stage s, against micro_batches under GPipe: that bounds the activations a
 * stage must keep for its backwards.
 *
 * Neither deadlocks with sends that never block: stage s runs F(i) after stage s - 1 ran
 * F(i), and B(i) after stage s + 1 ran B(i), and the warm-up lengths, one shorter per stage
 * downstream, make every such wait end (tests/unit/test_pipeline_schedule.cc simulates it). */
#include "pipeline/pipeline_internal.h"

#include "common/internal.h"

lh_status lh_pipe_schedule(lh_pipeline_schedule schedule, int stages, int stage, int micro_batches,
                           lh_pipe_action *actions) {
  if (stages < 1 || stage < 0 || stage >= stages)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "pipeline schedule: stage %d is out of range for %d stages", stage,
                    stages);
  if (micro_batches < 1)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "pipeline schedule: micro_batches is %d, must be >= 1", micro_batches);
  if (!actions)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "pipeline schedule: actions must not be NULL");
  int n = 0, forwards = 0, backwards = 0;
  switch (schedule) {
  case LH_SCHEDULE_GPIPE:
    while (forwards < micro_batches)
      actions[n++] = (lh_pipe_action){LH_PIPE_FORWARD, forwards++};
    break;
  case LH_SCHEDULE_1F1B: {
    int warmup = stages - stage - 1 < micro_batches ? stages - stage - 1 : micro_batches;
    while (forwards < warmup)
      actions[n++] = (lh_pipe_action){LH_PIPE_FORWARD, forwards++};
    while (forwards < micro_batches) {
      actions[n++] = (lh_pipe_action){LH_PIPE_FORWARD, forwards++};
      actions[n++] = (lh_pipe_action){LH_PIPE_BACKWARD, backwards++};
    }
    break;
  }
  default:
    return lh_error(LH_ERR_INVALID_ARGUMENT, "pipeline schedule: unknown schedule %d (allowed: %d = 1F1B, %d = GPipe)",
                    (int)schedule, (int)LH_SCHEDULE_1F1B, (int)LH_SCHEDULE_GPIPE);
  }
  while (backwards < micro_batches) /* GPipe's backwards; 1F1B's cool-down */
    actions[n++] = (lh_pipe_action){LH_PIPE_BACKWARD, backwards++};
  return LH_SUCCESS;
}

int lh_pipe_max_in_flight(const lh_pipe_action *actions, int count) {
  int now = 0, most = 0;
  for (int i = 0; i < count; i++) {
    now += actions[i].op == LH_PIPE_FORWARD ? 1 : -1;
    if (now > most)
      most = now;
  }
  return most;
}

// The pipeline schedules (lib/pipeline/schedule.c): every micro-batch once forward and once
// backward, forward first, the in-flight bound of 1F1B, and a simulation of all stages
// together (blocking receives, sends that never block) that must run to the end.
#include <gtest/gtest.h>

#include <deque>
#include <string>
#include <vector>

#include "pipeline/pipeline_internal.h"

namespace {

const lh_pipeline_schedule kSchedules[] = {LH_SCHEDULE_1F1B, LH_SCHEDULE_GPIPE};

std::vector<lh_pipe_action> actions_of(lh_pipeline_schedule s, int stages, int stage, int micro) {
  std::vector<lh_pipe_action> a((size_t)(2 * micro), lh_pipe_action{LH_PIPE_BACKWARD, -1});
  EXPECT_EQ(lh_pipe_schedule(s, stages, stage, micro, a.data()), LH_SUCCESS) << lh_last_error();
  return a;
}

std::string text(const std::vector<lh_pipe_action> &a) {
  std::string t;
  for (const lh_pipe_action &x : a)
    t += (x.op == LH_PIPE_FORWARD ? "F" : "B") + std::to_string(x.micro) + " ";
  return t;
}

TEST(PipelineSchedule, EveryMicroBatchOnceForwardThenOnceBackward) {
  for (lh_pipeline_schedule s : kSchedules)
    for (int stages = 1; stages <= 8; stages++)
      for (int stage = 0; stage < stages; stage++)
        for (int micro = 1; micro <= 12; micro++) {
          std::vector<lh_pipe_action> a = actions_of(s, stages, stage, micro);
          std::vector<int> fwd_at((size_t)micro, -1), bwd_at((size_t)micro, -1);
          int next_fwd = 0, next_bwd = 0;
          for (int k = 0; k < 2 * micro; k++) {
            const lh_pipe_action &x = a[(size_t)k];
            ASSERT_GE(x.micro, 0) << text(a);
            ASSERT_LT(x.micro, micro) << text(a);
            std::vector<int> &at = x.op == LH_PIPE_FORWARD ? fwd_at : bwd_at;
            ASSERT_EQ(at[(size_t)x.micro], -1) << "micro-batch " << x.micro << " twice: " << text(a);
            at[(size_t)x.micro] = k;
            // Both ends of a link must see the same order: forwards and backwards in index order.
            EXPECT_EQ(x.micro, x.op == LH_PIPE_FORWARD ? next_fwd++ : next_bwd++) << text(a);
          }
          for (int i = 0; i < micro; i++)
            EXPECT_LT(fwd_at[(size_t)i], bwd_at[(size_t)i]) << "backward before forward: " << text(a);
        }
}

TEST(PipelineSchedule, InFlightBound) {
  for (int stages = 1; stages <= 8; stages++)
    for (int stage = 0; stage < stages; stage++)
      for (int micro = 1; micro <= 12; micro++) {
        std::vector<lh_pipe_action> a = actions_of(LH_SCHEDULE_1F1B, stages, stage, micro);
        int most = lh_pipe_max_in_flight(a.data(), 2 * micro);
        EXPECT_LE(most, stages - stage) << text(a);
        EXPECT_EQ(most, std::min(stages - stage, micro)) << text(a);
        std::vector<lh_pipe_action> g = actions_of(LH_SCHEDULE_GPIPE, stages, stage, micro);
        EXPECT_EQ(lh_pipe_max_in_flight(g.data(), 2 * micro), micro) << text(g);
      }
}

TEST(PipelineSchedule, KnownLists) {
  EXPECT_EQ(text(actions_of(LH_SCHEDULE_1F1B, 4, 0, 6)), "F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5 ");
  EXPECT_EQ(text(actions_of(LH_SCHEDULE_1F1B, 4, 2, 6)), "F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 B5 ");
  EXPECT_EQ(text(actions_of(LH_SCHEDULE_1F1B, 4, 3, 3)), "F0 B0 F1 B1 F2 B2 ");
  EXPECT_EQ(text(actions_of(LH_SCHEDULE_1F1B, 4, 0, 2)), "F0 F1 B0 B1 "); // warm-up capped by micro-batches
  EXPECT_EQ(text(actions_of(LH_SCHEDULE_GPIPE, 3, 1, 3)), "F0 F1 F2 B0 B1 B2 ");
}

// All stages at once: a stage may run FORWARD(i) when the frame from stage - 1 is queued on its
// link and BACKWARD(i) when the gradient from stage + 1 is; sends never block (unbounded
// buffering) and links deliver in order, so the frame taken must be micro-batch i's.
TEST(PipelineSchedule, AllStagesTogetherRunToTheEnd) {
  for (lh_pipeline_schedule s : kSchedules)
    for (int stages = 1; stages <= 6; stages++)
      for (int micro = 1; micro <= 9; micro++) {
        std::vector<std::vector<lh_pipe_action>> plan;
        for (int st = 0; st < stages; st++)
          plan.push_back(actions_of(s, stages, st, micro));
        // fwd[b], bwd[b]: in-order links of boundary b (between stages b and b + 1)
        std::vector<std::deque<int>> fwd((size_t)stages), bwd((size_t)stages);
        std::vector<size_t> pc((size_t)stages, 0);
        size_t done = 0, total = (size_t)(stages * 2 * micro);
        while (done < total) {
          bool moved = false;
          for (int st = 0; st < stages; st++)
            while (pc[(size_t)st] < plan[(size_t)st].size()) {
              const lh_pipe_action &x = plan[(size_t)st][pc[(size_t)st]];
              std::deque<int> *in = nullptr, *out = nullptr;
              if (x.op == LH_PIPE_FORWARD) {
                in = st > 0 ? &fwd[(size_t)st - 1] : nullptr;
                out = st < stages - 1 ? &fwd[(size_t)st] : nullptr;
              } else {
                in = st < stages - 1 ? &bwd[(size_t)st] : nullptr;
                out = st > 0 ? &bwd[(size_t)st - 1] : nullptr;
              }
              if (in && in->empty())
                break; // blocked on a receive
              if (in) {
                ASSERT_EQ(in->front(), x.micro) << "stage " << st << " got another micro-batch's frame";
                in->pop_front();
              }
              if (out)
                out->push_back(x.micro);
              pc[(size_t)st]++;
              done++;
              moved = true;
            }
          ASSERT_TRUE(moved) << "deadlock: schedule " << s << ", " << stages << " stages, " << micro
                             << " micro-batches, " << done << " of " << total << " actions run";
        }
        for (int b = 0; b < stages; b++)
          EXPECT_TRUE(fwd[(size_t)b].empty() && bwd[(size_t)b].empty()) << "frames left on boundary " << b;
      }
}

TEST(PipelineSchedule, RefusesBadArguments) {
  lh_pipe_action a[8];
  EXPECT_EQ(lh_pipe_schedule(LH_SCHEDULE_1F1B, 0, 0, 2, a), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_pipe_schedule(LH_SCHEDULE_1F1B, 2, 2, 2, a), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("stage 2 is out of range for 2 stages"), std::string::npos)
      << lh_last_error();
  EXPECT_EQ(lh_pipe_schedule(LH_SCHEDULE_1F1B, 2, -1, 2, a), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_pipe_schedule(LH_SCHEDULE_GPIPE, 2, 0, 0, a), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_pipe_schedule((lh_pipeline_schedule)7, 2, 0, 2, a), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("unknown schedule 7"), std::string::npos) << lh_last_error();
  EXPECT_EQ(lh_pipe_schedule(LH_SCHEDULE_GPIPE, 2, 0, 2, nullptr), LH_ERR_INVALID_ARGUMENT);
}

} // namespace

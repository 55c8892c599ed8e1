// A scheduler's plan deployed over the transport: lh_plan_split gives every rank the stage
// group and the pipeline the plan says, in replica and stage order, and refuses plans that
// do not fit the communicator or that the ranks disagree on.
#include "mpi_test.h"

#include <memory>
#include <vector>

namespace {

struct PlanDeleter {
  void operator()(lh_plan *p) const { lh_plan_free(p); }
};
using PlanPtr = std::unique_ptr<lh_plan, PlanDeleter>;

// The largest pipeline depth below the world size that divides it (1 when prime).
int Depth(int size) {
  for (int p = size / 2; p > 1; p--)
    if (size % p == 0)
      return p;
  return 1;
}

TEST(Plan, SplitFollowsThePlan) {
  lh_test_world world;
  int pp = Depth(world.size), dp = world.size / pp;
  for (uint64_t seed = 1; seed <= 3; seed++) {
    lh_plan *raw = nullptr;
    LH_ASSERT_OK(lh_plan_random(world.size, pp, dp, seed, &raw));
    PlanPtr plan(raw);
    int stage, replica;
    LH_ASSERT_OK(lh_plan_device(raw, world.rank, &stage, &replica));
    lh_comm stage_comm = nullptr, replica_comm = nullptr;
    LH_ASSERT_OK(lh_plan_split(world.c, raw, &stage_comm, &replica_comm));
    int r, n;
    LH_ASSERT_OK(lh_comm_size(stage_comm, &n));
    LH_ASSERT_OK(lh_comm_rank(stage_comm, &r));
    EXPECT_EQ(n, dp);
    EXPECT_EQ(r, replica) << "a stage's ranks are ordered by replica";
    LH_ASSERT_OK(lh_comm_size(replica_comm, &n));
    LH_ASSERT_OK(lh_comm_rank(replica_comm, &r));
    EXPECT_EQ(n, pp);
    EXPECT_EQ(r, stage) << "a replica's ranks are ordered by stage";
    // The members: every rank contributes its world rank; the sums must be the plan's.
    float mine = (float)world.rank, stage_sum = 0, replica_sum = 0;
    LH_ASSERT_OK(lh_allreduce(stage_comm, &mine, &stage_sum, 1, nullptr));
    LH_ASSERT_OK(lh_allreduce(replica_comm, &mine, &replica_sum, 1, nullptr));
    float want_stage = 0, want_replica = 0;
    for (int k = 0; k < pp; k++) {
      int d;
      LH_ASSERT_OK(lh_plan_device_at(raw, k, replica, &d));
      want_replica += (float)d;
    }
    for (int i = 0; i < dp; i++) {
      int d;
      LH_ASSERT_OK(lh_plan_device_at(raw, stage, i, &d));
      want_stage += (float)d;
    }
    EXPECT_EQ(stage_sum, want_stage);
    EXPECT_EQ(replica_sum, want_replica);
    // The placement arrays for lh_pipeline say the same.
    std::vector<int> stage_of(world.size), replica_of(world.size);
    LH_ASSERT_OK(lh_plan_placement(raw, stage_of.data(), replica_of.data(), world.size));
    EXPECT_EQ(stage_of[world.rank], stage);
    EXPECT_EQ(replica_of[world.rank], replica);
    lh_comm_destroy(stage_comm);
    lh_comm_destroy(replica_comm);
  }
}

TEST(Plan, RefusesAPlanForAnotherWorldOrOneTheRanksDisagreeOn) {
  lh_test_world world;
  lh_comm a = nullptr, b = nullptr;
  lh_plan *raw = nullptr;
  LH_ASSERT_OK(lh_plan_random(world.size + 1, 1, world.size + 1, 1, &raw));
  PlanPtr bigger(raw);
  EXPECT_EQ(lh_plan_split(world.c, raw, &a, &b), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("mpirun -np"), std::string::npos) << lh_last_error();
  EXPECT_EQ(a, nullptr);
  std::vector<int> s(world.size), r(world.size);
  EXPECT_EQ(lh_plan_placement(raw, s.data(), r.data(), world.size), LH_ERR_INVALID_ARGUMENT);
  if (world.size < 2)
    return;
  // Every rank its own seed: the assignments differ, and every rank must say so.
  LH_ASSERT_OK(lh_plan_random(world.size, 1, world.size, 100 + (uint64_t)world.rank, &raw));
  PlanPtr own(raw);
  lh_status st = lh_plan_split(world.c, raw, &a, &b);
  // Two ranks may draw the same shuffle; with 2 ranks that happens half the time.
  if (world.size > 2)
    EXPECT_EQ(st, LH_ERR_MISMATCH) << lh_last_error();
  if (st == LH_SUCCESS) {
    lh_comm_destroy(a);
    lh_comm_destroy(b);
  } else {
    EXPECT_NE(std::string(lh_last_error()).find("plan"), std::string::npos) << lh_last_error();
  }
}

} // namespace

// The scheduler: its exact inner solvers against brute force, the objectives against hand
// values, the solver against exhaustive search on small instances, the lower bound against
// every cost found, DT-FM's scenarios against the costs to beat, and the plan it emits
// against a from-scratch evaluation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <longhaul/sched.h>

extern "C" {
#include "sched/sched_internal.h"
}

namespace {

struct LinksDeleter {
  void operator()(lh_links *l) const { lh_links_free(l); }
};
using LinksPtr = std::unique_ptr<lh_links, LinksDeleter>;
struct PlanDeleter {
  void operator()(lh_plan *p) const { lh_plan_free(p); }
};
using PlanPtr = std::unique_ptr<lh_plan, PlanDeleter>;

LinksPtr Instance(int devices, int cities, uint64_t seed, double speed_spread = 0.0) {
  lh_sched_instance in = LH_SCHED_INSTANCE_INIT;
  in.devices = devices;
  in.cities = cities;
  in.seed = seed;
  in.speed_spread = speed_spread;
  lh_links *raw = nullptr;
  EXPECT_EQ(lh_sched_random_instance(&in, &raw), LH_SUCCESS) << lh_last_error();
  return LinksPtr(raw);
}

LinksPtr Scenario(const char *name) {
  // ctest sets LONGHAUL_SOURCE_DIR; run by hand, the tree this file lies in (tests/unit/..) is used.
  const char *dir = std::getenv("LONGHAUL_SOURCE_DIR");
  std::string file = __FILE__, root = dir ? dir : file.substr(0, file.rfind("/tests/unit/"));
  std::string path = root + "/examples/links/scenarios/" + name;
  lh_links *raw = nullptr;
  EXPECT_EQ(lh_links_read_file(path.c_str(), &raw), LH_SUCCESS) << lh_last_error();
  return LinksPtr(raw);
}

lh_sched_config Config(lh_sched_objective objective, int pp, int dp, uint64_t seed = 1) {
  lh_sched_config c = LH_SCHED_CONFIG_INIT;
  c.objective = objective;
  c.pp = pp;
  c.dp = dp;
  c.seed = seed;
  c.time_budget_s = 60; // generous: the searches below finish long before, so they are exact repeats
  return c;
}

PlanPtr Solve(const lh_links *links, const lh_sched_config &c) {
  lh_plan *raw = nullptr;
  EXPECT_EQ(lh_sched_solve(links, &c, &raw), LH_SUCCESS) << lh_last_error();
  return PlanPtr(raw);
}

lh_plan_info Info(const lh_plan *plan) {
  lh_plan_info info = LH_PLAN_INFO_INIT;
  EXPECT_EQ(lh_plan_get_info(plan, &info), LH_SUCCESS) << lh_last_error();
  return info;
}

// ---- exact inner solvers against brute force ----------------------------------------------

TEST(SchedInner, BottleneckAssignmentMatchesBruteForce) {
  std::mt19937_64 rng(7);
  lh_bottleneck_work *work = nullptr;
  ASSERT_EQ(lh_bottleneck_work_create(6, 7, &work), LH_SUCCESS);
  for (int trial = 0; trial < 300; trial++) {
    int rows = 1 + int(rng() % 5), cols = rows + int(rng() % 3);
    std::vector<double> cost(size_t(rows) * cols);
    for (double &c : cost)
      c = double(rng() % 9); // few distinct values: ties everywhere
    // Brute force over injections rows -> cols.
    std::vector<int> cols_perm(cols);
    std::iota(cols_perm.begin(), cols_perm.end(), 0);
    double best_max = INFINITY, best_sum_at_max = INFINITY;
    do {
      double mx = 0, sum = 0;
      for (int r = 0; r < rows; r++) {
        mx = std::max(mx, cost[size_t(r) * cols + cols_perm[r]]);
        sum += cost[size_t(r) * cols + cols_perm[r]];
      }
      if (mx < best_max) {
        best_max = mx;
        best_sum_at_max = INFINITY;
      }
      if (mx == best_max)
        best_sum_at_max = std::min(best_sum_at_max, sum);
    } while (std::next_permutation(cols_perm.begin(), cols_perm.end()));
    for (int min_sum = 0; min_sum < 2; min_sum++) {
      std::vector<int> match(rows, -1);
      double t = lh_bottleneck_assign(work, cost.data(), rows, cols, min_sum, match.data());
      ASSERT_EQ(t, best_max) << "trial " << trial;
      std::vector<int> used(cols, 0);
      double mx = 0, sum = 0;
      for (int r = 0; r < rows; r++) {
        ASSERT_GE(match[r], 0);
        ASSERT_LT(match[r], cols);
        ASSERT_EQ(used[match[r]]++, 0) << "column used twice";
        mx = std::max(mx, cost[size_t(r) * cols + match[r]]);
        sum += cost[size_t(r) * cols + match[r]];
      }
      EXPECT_EQ(mx, t) << "the matching handed out must reach the bottleneck it reports";
      if (min_sum)
        EXPECT_EQ(sum, best_sum_at_max) << "trial " << trial;
    }
  }
  lh_bottleneck_work_free(work);
}

TEST(SchedInner, OpenPathIsOptimalUpToSixteenAndLocallyGoodBeyond) {
  std::mt19937_64 rng(11);
  lh_path_work *work = nullptr;
  ASSERT_EQ(lh_path_work_create(8, &work), LH_SUCCESS);
  for (int trial = 0; trial < 50; trial++) {
    int n = 1 + int(rng() % 8);
    std::vector<double> w(size_t(n) * n, 0);
    for (int a = 0; a < n; a++)
      for (int b = a + 1; b < n; b++)
        w[size_t(a) * n + b] = w[size_t(b) * n + a] = double(rng() % 1000) / 7;
    std::vector<int> perm(n), order(n);
    std::iota(perm.begin(), perm.end(), 0);
    double best = INFINITY;
    do
      best = std::min(best, lh_path_weight(w.data(), n, perm.data()));
    while (std::next_permutation(perm.begin(), perm.end()));
    double got = lh_open_path(work, w.data(), n, order.data());
    EXPECT_NEAR(got, best, 1e-9 * best) << "n " << n;
    EXPECT_EQ(got, lh_path_weight(w.data(), n, order.data()));
    std::vector<int> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    for (int k = 0; k < n; k++)
      EXPECT_EQ(sorted[k], k) << "the path must visit every node once";
  }
  lh_path_work_free(work);
  // 24 nodes on a line (weight = distance): the heuristic must find the straight walk.
  int n = 24;
  ASSERT_EQ(lh_path_work_create(n, &work), LH_SUCCESS);
  std::vector<int> pos(n);
  std::iota(pos.begin(), pos.end(), 0);
  std::shuffle(pos.begin(), pos.end(), rng);
  std::vector<double> w(size_t(n) * n);
  for (int a = 0; a < n; a++)
    for (int b = 0; b < n; b++)
      w[size_t(a) * n + b] = std::abs(pos[a] - pos[b]);
  std::vector<int> order(n);
  EXPECT_EQ(lh_open_path(work, w.data(), n, order.data()), n - 1);
  lh_path_work_free(work);
}

TEST(SchedInner, SpanningForestStopsAtTheRequestedTrees) {
  // Points on a line at 0, 1, 3, 6, 10: gaps 1, 2, 3, 4.
  const double x[5] = {0, 1, 3, 6, 10};
  std::vector<double> w(25);
  for (int a = 0; a < 5; a++)
    for (int b = 0; b < 5; b++)
      w[a * 5 + b] = std::fabs(x[a] - x[b]);
  EXPECT_EQ(lh_min_spanning_forest(w.data(), 5, 1), 10);
  EXPECT_EQ(lh_min_spanning_forest(w.data(), 5, 2), 6);
  EXPECT_EQ(lh_min_spanning_forest(w.data(), 5, 4), 1);
  EXPECT_EQ(lh_min_spanning_forest(w.data(), 5, 5), 0);
}

// ---- objectives against hand values --------------------------------------------------------

TEST(SchedObjective, DtfmCostByHand) {
  // 4 devices, 2 stages x 2 replicas. Links: 0-1 fast (1 ms, 10 Gbit/s), everything else 10 ms,
  // 1 Gbit/s. Plan: stage 0 = {0, 2}, stage 1 = {1, 3}; replica 0 = 0 -> 1, replica 1 = 2 -> 3.
  lh_links *raw = nullptr;
  ASSERT_EQ(lh_links_create(4, 0.010, 1 * LH_GBIT_BYTES, &raw), LH_SUCCESS);
  LinksPtr links(raw);
  ASSERT_EQ(lh_links_set(raw, 0, 1, 0.001, 10 * LH_GBIT_BYTES), LH_SUCCESS);
  ASSERT_EQ(lh_links_set(raw, 1, 0, 0.001, 10 * LH_GBIT_BYTES), LH_SUCCESS);
  lh_sched_config c = Config(LH_SCHED_DTFM, 2, 2);
  c.model.layers = 2;
  c.model.params_per_layer = 1e9;
  c.model.gradient_element_bytes = 4;       // c_DP = 4e9 bytes per stage
  c.model.activation_elements = 1e8;
  c.model.micro_batches = 2;
  c.model.activation_element_bytes = 2;     // c_PP = 4e8 bytes per macro-batch
  const int stage[4] = {0, 1, 0, 1}, replica[4] = {0, 0, 1, 1};
  lh_plan *p = nullptr;
  ASSERT_EQ(lh_plan_create(4, 2, 2, stage, replica, &p), LH_SUCCESS) << lh_last_error();
  PlanPtr plan(p);
  double cost, dp, pp;
  ASSERT_EQ(lh_sched_evaluate(links.get(), &c, p, &cost, &dp, &pp), LH_SUCCESS) << lh_last_error();
  const double B = LH_GBIT_BYTES;
  // Groups {0,2} and {1,3} are both slow pairs: 2 (alpha + c_DP / (D beta)).
  double datap = 2 * (0.010 + 4e9 / (2 * B));
  // The one boundary: max(0 -> 1 fast, 2 -> 3 slow).
  double pipep = std::max(0.001 + 4e8 / (10 * B), 0.010 + 4e8 / B);
  EXPECT_NEAR(dp, datap, 1e-12 * datap);
  EXPECT_NEAR(pp, 2 * pipep, 1e-12 * pipep);
  EXPECT_EQ(cost, dp + pp);
}

TEST(SchedObjective, PipelinedCostByHand) {
  // 2 devices, 2 stages, 1 replica; device 1 half as fast. GPipe flow shop, m = 4.
  lh_links *raw = nullptr;
  ASSERT_EQ(lh_links_create(2, 0.020, 1e8, &raw), LH_SUCCESS);
  LinksPtr links(raw);
  ASSERT_EQ(lh_links_set(raw, 1, 0, 0.030, 5e7), LH_SUCCESS);
  ASSERT_EQ(lh_links_set_device(raw, 1, "b", 0.5), LH_SUCCESS);
  lh_sched_config c = Config(LH_SCHED_PIPELINED, 2, 1);
  c.model.layers = 3; // stage 0 gets 2 layers, stage 1 gets 1
  c.model.layer_seconds = 0.06;
  c.model.micro_batches = 4;
  c.model.activation_elements = 1e6;
  c.model.activation_element_bytes = 2; // 2e6 bytes forward
  c.model.activation_grad_element_bytes = 4; // 4e6 bytes backward
  const int stage[2] = {0, 1}, replica[2] = {0, 0};
  lh_plan *p = nullptr;
  ASSERT_EQ(lh_plan_create(2, 2, 1, stage, replica, &p), LH_SUCCESS);
  PlanPtr plan(p);
  double cost, dp, pp;
  ASSERT_EQ(lh_sched_evaluate(links.get(), &c, p, &cost, &dp, &pp), LH_SUCCESS) << lh_last_error();
  double c0 = 2 * 0.06 / 1.0, c1 = 1 * 0.06 / 0.5; // 0.12 s each per micro-batch
  double f0 = c0 / 3, f1 = c1 / 3, b0 = c0 - f0, b1 = c1 - f1;
  double fo = 2e6 / 1e8, fl = 0.020, bo = 4e6 / 5e7, bl = 0.030;
  double F = f0 + f1 + fo + fl + 3 * std::max({f0, f1, fo});
  double Bk = b0 + b1 + bo + bl + 3 * std::max({b0, b1, bo});
  EXPECT_NEAR(pp, F + Bk, 1e-12 * (F + Bk));
  EXPECT_EQ(dp, 0); // one replica: no all-reduce
  EXPECT_EQ(cost, pp);
}

// ---- the solver against exhaustive search ---------------------------------------------------

// Every assignment of n devices to P x D slots, evaluated from scratch.
double Exhaustive(const lh_links *links, const lh_sched_config &c) {
  lh_net net;
  EXPECT_EQ(lh_net_build(links, &net), LH_SUCCESS);
  lh_objective obj;
  EXPECT_EQ(lh_objective_build(&net, &c, c.pp, c.dp, &obj), LH_SUCCESS) << lh_last_error();
  std::vector<int> grid(net.n);
  std::iota(grid.begin(), grid.end(), 0);
  double best = INFINITY;
  do {
    double cost;
    lh_objective_eval(&net, &obj, grid.data(), &cost, nullptr, nullptr);
    best = std::min(best, cost);
  } while (std::next_permutation(grid.begin(), grid.end()));
  lh_objective_free(&obj);
  lh_net_free(&net);
  return best;
}

TEST(SchedSolve, AgreesWithExhaustiveSearchOnSmallInstances) {
  const int shapes[][2] = {{2, 3}, {3, 2}, {3, 3}};
  for (auto shape : shapes)
    for (uint64_t seed = 1; seed <= 4; seed++)
      for (lh_sched_objective objective : {LH_SCHED_DTFM, LH_SCHED_PIPELINED}) {
        int pp = shape[0], dp = shape[1], n = pp * dp;
        LinksPtr links = Instance(n, 2 + int(seed % 2), seed * 101, objective == LH_SCHED_PIPELINED ? 0.5 : 0);
        lh_sched_config c = Config(objective, pp, dp, seed);
        c.model.layers = 6;
        PlanPtr plan = Solve(links.get(), c);
        ASSERT_TRUE(plan);
        double exhaustive = Exhaustive(links.get(), c);
        lh_plan_info info = Info(plan.get());
        EXPECT_EQ(info.budget_hit, 0);
        EXPECT_NEAR(info.cost, exhaustive, 1e-12 * exhaustive)
            << pp << " x " << dp << " seed " << seed << " objective " << objective;
        EXPECT_LE(info.lower_bound, exhaustive);
      }
}

// ---- lower bound ------------------------------------------------------------------------------

TEST(SchedBound, NeverExceedsAnyCost) {
  for (lh_sched_objective objective : {LH_SCHED_DTFM, LH_SCHED_PIPELINED})
    for (uint64_t seed = 1; seed <= 3; seed++) {
      LinksPtr links = Instance(24, 4, seed, 0.3);
      for (int pp : {2, 3, 4, 6}) {
        lh_sched_config c = Config(objective, pp, 24 / pp, seed);
        double bound = -1;
        ASSERT_EQ(lh_sched_lower_bound(links.get(), &c, &bound), LH_SUCCESS) << lh_last_error();
        EXPECT_GT(bound, 0);
        PlanPtr plan = Solve(links.get(), c);
        EXPECT_LE(bound, Info(plan.get()).cost);
        EXPECT_EQ(bound, Info(plan.get()).lower_bound);
        for (uint64_t r = 0; r < 50; r++) {
          lh_plan *raw = nullptr;
          ASSERT_EQ(lh_plan_random(24, pp, 24 / pp, r, &raw), LH_SUCCESS);
          PlanPtr random(raw);
          double cost;
          ASSERT_EQ(lh_sched_evaluate(links.get(), &c, raw, &cost, nullptr, nullptr), LH_SUCCESS);
          EXPECT_LE(bound, cost);
          EXPECT_LE(Info(plan.get()).cost, cost) << "a random placement beat the solver";
        }
      }
    }
}

// ---- the emitted plan recomputes to the reported cost -------------------------------------

TEST(SchedSolve, EmittedPlanRecomputesToTheReportedCost) {
  for (lh_sched_objective objective : {LH_SCHED_DTFM, LH_SCHED_PIPELINED})
    for (uint64_t seed = 1; seed <= 3; seed++) {
      LinksPtr links = Instance(32, 5, seed, 0.2);
      lh_sched_config c = Config(objective, 4, 8, seed);
      PlanPtr plan = Solve(links.get(), c);
      lh_plan_info info = Info(plan.get());
      double cost, dp, pp;
      ASSERT_EQ(lh_sched_evaluate(links.get(), &c, plan.get(), &cost, &dp, &pp), LH_SUCCESS);
      EXPECT_EQ(cost, info.cost);
      EXPECT_EQ(dp, info.dp_cost);
      EXPECT_EQ(pp, info.pp_cost);
      // And after the file round trip the runtime does.
      char *text = nullptr;
      size_t length = 0;
      FILE *f = open_memstream(&text, &length);
      ASSERT_EQ(lh_plan_write_stream(plan.get(), f), LH_SUCCESS) << lh_last_error();
      fclose(f);
      lh_plan *raw = nullptr;
      ASSERT_EQ(lh_plan_parse(text, length, "memory", &raw), LH_SUCCESS) << lh_last_error();
      free(text);
      PlanPtr back(raw);
      ASSERT_EQ(lh_sched_evaluate(links.get(), &c, raw, &cost, nullptr, nullptr), LH_SUCCESS);
      EXPECT_EQ(cost, info.cost);
      EXPECT_EQ(Info(raw).cost, info.cost);
    }
}

TEST(SchedSolve, SameSeedSamePlan) {
  LinksPtr links = Instance(32, 6, 5, 0.2);
  for (lh_sched_objective objective : {LH_SCHED_DTFM, LH_SCHED_PIPELINED}) {
    lh_sched_config c = Config(objective, 4, 8, 42);
    PlanPtr a = Solve(links.get(), c), b = Solve(links.get(), c);
    ASSERT_EQ(Info(a.get()).budget_hit, 0);
    for (int d = 0; d < 32; d++) {
      int sa, ra, sb, rb;
      ASSERT_EQ(lh_plan_device(a.get(), d, &sa, &ra), LH_SUCCESS);
      ASSERT_EQ(lh_plan_device(b.get(), d, &sb, &rb), LH_SUCCESS);
      EXPECT_EQ(sa, sb);
      EXPECT_EQ(ra, rb);
    }
  }
}

TEST(SchedSolve, ChoosingTheDegreesKeepsTheCheapest) {
  LinksPtr links = Instance(12, 4, 9, 0.3);
  for (lh_sched_objective objective : {LH_SCHED_DTFM, LH_SCHED_PIPELINED}) {
    lh_sched_config c = Config(objective, 0, 0, 3);
    PlanPtr chosen = Solve(links.get(), c);
    lh_plan_info info = Info(chosen.get());
    EXPECT_EQ(info.pp * info.dp, 12);
    for (int pp : {1, 2, 3, 4, 6, 12}) {
      lh_sched_config fixed = Config(objective, pp, 12 / pp, 3);
      EXPECT_LE(info.cost, Info(Solve(links.get(), fixed).get()).cost) << "pp " << pp;
    }
  }
}

// ---- DT-FM's scenarios --------------------------------------------------------------------

TEST(SchedScenarios, DtfmObjectiveMeetsTheCostsToBeat) {
  // The costs DT-FM's genetic algorithm reaches (3 decimals); scenario 2's is the optimum.
  struct {
    const char *file;
    double target;
  } cases[] = {{"dtfm-1-datacenter-on-demand.links", 3.440}, {"dtfm-2-datacenter-spot.links", 31.634},
               {"dtfm-3-multi-datacenter.links", 16.087},   {"dtfm-4-regional.links", 34.802},
               {"dtfm-5-worldwide.links", 49.218}};
  for (auto &k : cases) {
    LinksPtr links = Scenario(k.file);
    lh_sched_config c = Config(LH_SCHED_DTFM, 8, 8, 1);
    PlanPtr plan = Solve(links.get(), c);
    lh_plan_info info = Info(plan.get());
    EXPECT_LE(info.cost, k.target + 0.0005) << k.file;
    EXPECT_LE(info.lower_bound, info.cost) << k.file;
  }
  LinksPtr spot = Scenario("dtfm-2-datacenter-spot.links");
  PlanPtr plan = Solve(spot.get(), Config(LH_SCHED_DTFM, 8, 8, 1));
  EXPECT_NEAR(Info(plan.get()).cost, 31.634, 0.0005);
  EXPECT_NEAR(Info(plan.get()).gap, 0, 1e-9) << "scenario 2's optimum equals its lower bound";
}

// ---- errors ---------------------------------------------------------------------------------

TEST(SchedErrors, NameWhatIsWrong) {
  LinksPtr links = Instance(12, 3, 1);
  lh_plan *plan = nullptr;
  lh_sched_config c = Config(LH_SCHED_DTFM, 5, 0);
  EXPECT_EQ(lh_sched_solve(links.get(), &c, &plan), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("pp is 5"), std::string::npos) << lh_last_error();
  EXPECT_EQ(plan, nullptr);
  c = Config(LH_SCHED_DTFM, 3, 3);
  EXPECT_EQ(lh_sched_solve(links.get(), &c, &plan), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("3 x 3"), std::string::npos) << lh_last_error();
  c = Config(LH_SCHED_DTFM, 12, 1);
  c.model.layers = 24; // 24 % 12 == 0: fine
  c.model.layers = 18; // 18 % 12 != 0: dtfm needs equal stages
  EXPECT_EQ(lh_sched_solve(links.get(), &c, &plan), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("do not split evenly"), std::string::npos) << lh_last_error();
  c = Config(LH_SCHED_PIPELINED, 3, 4);
  c.model.activation_elements = -1;
  EXPECT_EQ(lh_sched_solve(links.get(), &c, &plan), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("activation_elements"), std::string::npos) << lh_last_error();
  c = Config(LH_SCHED_PIPELINED, 3, 4);
  c.time_budget_s = 0;
  EXPECT_EQ(lh_sched_solve(links.get(), &c, &plan), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("time_budget_s"), std::string::npos) << lh_last_error();
  c = Config(LH_SCHED_PIPELINED, 3, 4);
  EXPECT_EQ(lh_sched_solve(nullptr, &c, &plan), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_sched_solve(links.get(), nullptr, &plan), LH_ERR_INVALID_ARGUMENT);
  // A plan for other links.
  lh_plan *raw = nullptr;
  ASSERT_EQ(lh_plan_random(8, 2, 4, 1, &raw), LH_SUCCESS);
  PlanPtr other(raw);
  double cost;
  EXPECT_EQ(lh_sched_evaluate(links.get(), &c, raw, &cost, nullptr, nullptr), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("8 devices"), std::string::npos) << lh_last_error();
  double bound;
  c = Config(LH_SCHED_PIPELINED, 0, 0);
  EXPECT_EQ(lh_sched_lower_bound(links.get(), &c, &bound), LH_ERR_INVALID_ARGUMENT);
}

} // namespace

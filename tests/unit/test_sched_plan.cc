// The scheduler's plan object, plan files and random instances: argument checks with their
// wording, seeded shuffles, an exact JSON round trip, the strict reader's refusals (status,
// line and field) and mutated input, and the shape of random networks.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <longhaul/links.h>
#include <longhaul/sched.h>

extern "C" {
#include "common/internal.h"
#include "sched/sched_internal.h"
}

namespace {

struct PlanDeleter {
  void operator()(lh_plan *p) const { lh_plan_free(p); }
};
using PlanPtr = std::unique_ptr<lh_plan, PlanDeleter>;
struct LinksDeleter {
  void operator()(lh_links *l) const { lh_links_free(l); }
};
using LinksPtr = std::unique_ptr<lh_links, LinksDeleter>;

const char *kSource = "t.json";

bool SameBits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

bool Contains(const std::string &text, const std::string &part) { return text.find(part) != std::string::npos; }

lh_status Parse(const std::string &text, PlanPtr *out) {
  lh_plan *raw = nullptr;
  lh_status st = lh_plan_parse(text.data(), text.size(), kSource, &raw);
  if (st != LH_SUCCESS)
    EXPECT_EQ(raw, nullptr);
  out->reset(raw);
  return st;
}

std::string WriteToString(const lh_plan *plan) {
  char *buffer = nullptr;
  size_t length = 0;
  FILE *memory = open_memstream(&buffer, &length);
  EXPECT_NE(memory, nullptr);
  EXPECT_EQ(lh_plan_write_stream(plan, memory), LH_SUCCESS) << lh_last_error();
  fclose(memory);
  std::string text(buffer, length);
  free(buffer);
  return text;
}

// Checks that the plan's two views agree and form a bijection; returns the grid.
std::vector<int> CheckBijection(const lh_plan *plan) {
  lh_plan_info info = LH_PLAN_INFO_INIT;
  EXPECT_EQ(lh_plan_get_info(plan, &info), LH_SUCCESS) << lh_last_error();
  std::vector<int> grid(static_cast<size_t>(info.devices), -1);
  std::set<int> seen;
  for (int s = 0; s < info.pp; s++)
    for (int r = 0; r < info.dp; r++) {
      int d = -1, s2 = -1, r2 = -1;
      EXPECT_EQ(lh_plan_device_at(plan, s, r, &d), LH_SUCCESS) << lh_last_error();
      EXPECT_GE(d, 0);
      EXPECT_LT(d, info.devices);
      EXPECT_TRUE(seen.insert(d).second) << "device " << d << " twice";
      EXPECT_EQ(lh_plan_device(plan, d, &s2, &r2), LH_SUCCESS) << lh_last_error();
      EXPECT_EQ(s2, s);
      EXPECT_EQ(r2, r);
      grid[static_cast<size_t>(s * info.dp + r)] = d;
    }
  EXPECT_EQ(static_cast<int>(seen.size()), info.devices);
  return grid;
}

// ---- the plan object ------------------------------------------------------------------------

TEST(PlanApi, CreateStoresTheAssignmentBothWays) {
  // 6 devices, 3 stages x 2 replicas.
  const int stage[6] = {2, 0, 1, 0, 2, 1}, replica[6] = {1, 0, 0, 1, 0, 1};
  lh_plan *raw = nullptr;
  ASSERT_EQ(lh_plan_create(6, 3, 2, stage, replica, &raw), LH_SUCCESS) << lh_last_error();
  PlanPtr plan(raw);
  for (int d = 0; d < 6; d++) {
    int s = -1, r = -1, back = -1;
    ASSERT_EQ(lh_plan_device(plan.get(), d, &s, &r), LH_SUCCESS);
    EXPECT_EQ(s, stage[d]);
    EXPECT_EQ(r, replica[d]);
    ASSERT_EQ(lh_plan_device_at(plan.get(), s, r, &back), LH_SUCCESS);
    EXPECT_EQ(back, d);
  }
  int s = -1;
  EXPECT_EQ(lh_plan_device(plan.get(), 4, &s, nullptr), LH_SUCCESS); // either output may be NULL
  EXPECT_EQ(s, 2);
  lh_plan_info info = LH_PLAN_INFO_INIT;
  ASSERT_EQ(lh_plan_get_info(plan.get(), &info), LH_SUCCESS);
  EXPECT_EQ(info.size, sizeof info);
  EXPECT_EQ(info.devices, 6);
  EXPECT_EQ(info.pp, 3);
  EXPECT_EQ(info.dp, 2);
  EXPECT_EQ(info.objective, LH_SCHED_PIPELINED);
  EXPECT_EQ(info.cost, 0.0);
  EXPECT_EQ(info.lower_bound, 0.0);
  EXPECT_EQ(info.budget_hit, 0);
  CheckBijection(plan.get());
}

TEST(PlanApi, CreateRefusesBadAssignmentsByName) {
  const int stage[4] = {0, 1, 1, 0}, replica[4] = {0, 0, 1, 1};
  lh_plan *raw = reinterpret_cast<lh_plan *>(&raw); // must be reset to NULL on failure
  EXPECT_EQ(lh_plan_create(4, 2, 2, nullptr, replica, &raw), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(raw, nullptr);
  EXPECT_TRUE(Contains(lh_last_error(), "stage must not be NULL")) << lh_last_error();
  EXPECT_EQ(lh_plan_create(4, 2, 2, stage, replica, nullptr), LH_ERR_INVALID_ARGUMENT);

  EXPECT_EQ(lh_plan_create(4, 3, 3, stage, replica, &raw), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "devices is 4 but pp x dp is 3 x 3 = 9")) << lh_last_error();
  EXPECT_EQ(lh_plan_create(4, 0, 4, stage, replica, &raw), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "pp is 0")) << lh_last_error();
  EXPECT_EQ(lh_plan_create(0, 1, 0, stage, replica, &raw), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "devices is 0")) << lh_last_error();
  // A product that would overflow int must still be refused, not wrap around.
  EXPECT_EQ(lh_plan_create(65536, 65536, 65536, stage, replica, &raw), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "= 4294967296")) << lh_last_error();

  const int bad_stage[4] = {0, 1, 2, 0};
  EXPECT_EQ(lh_plan_create(4, 2, 2, bad_stage, replica, &raw), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "device 2 has stage 2, out of range for pp 2 x dp 2")) << lh_last_error();
  const int bad_replica[4] = {0, 0, -1, 1};
  EXPECT_EQ(lh_plan_create(4, 2, 2, stage, bad_replica, &raw), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "device 2 has replica -1")) << lh_last_error();

  // 10 devices as 5 x 2: devices 5 and 9 both claim (2, 1).
  const int s10[10] = {0, 0, 1, 1, 2, 2, 3, 3, 4, 2}, r10[10] = {0, 1, 0, 1, 0, 1, 0, 1, 0, 1};
  EXPECT_EQ(lh_plan_create(10, 5, 2, s10, r10, &raw), LH_ERR_INVALID_ARGUMENT);
  EXPECT_STREQ(lh_last_error(), "lh_plan_create: device 5 and device 9 both hold stage 2, replica 1");
  EXPECT_EQ(raw, nullptr);
}

TEST(PlanApi, AccessorsRefuseOutOfRangeAndNull) {
  lh_plan *raw = nullptr;
  ASSERT_EQ(lh_plan_random(6, 2, 3, 1, &raw), LH_SUCCESS);
  PlanPtr plan(raw);
  int s, r, d;
  EXPECT_EQ(lh_plan_device(plan.get(), 6, &s, &r), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "device 6 is out of range for a plan of 6 devices")) << lh_last_error();
  EXPECT_EQ(lh_plan_device(plan.get(), -1, &s, &r), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_plan_device(plan.get(), 0, nullptr, nullptr), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_plan_device(nullptr, 0, &s, &r), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_plan_device_at(plan.get(), 2, 0, &d), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "stage 2, replica 0 is out of range for a plan of pp 2 x dp 3"))
      << lh_last_error();
  EXPECT_EQ(lh_plan_device_at(plan.get(), 0, 3, &d), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_plan_device_at(plan.get(), 0, 0, nullptr), LH_ERR_INVALID_ARGUMENT);
  lh_plan_info info = LH_PLAN_INFO_INIT;
  info.size = sizeof info - 8;
  EXPECT_EQ(lh_plan_get_info(plan.get(), &info), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "LH_PLAN_INFO_INIT")) << lh_last_error();
  EXPECT_EQ(lh_plan_get_info(nullptr, &info), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_plan_free(nullptr), LH_SUCCESS);
}

TEST(PlanApi, InternalGridChecksNameTheCaller) {
  lh_plan *raw = nullptr;
  ASSERT_EQ(lh_plan_alloc(4, 2, 2, &raw), LH_SUCCESS);
  PlanPtr plan(raw);
  for (int i = 0; i < 4; i++)
    EXPECT_EQ(plan->device_at[i], -1);
  const int grid[4] = {3, 1, 3, 0};
  std::memcpy(plan->device_at, grid, sizeof grid);
  EXPECT_EQ(lh_plan_index_from_grid(plan.get(), "solver"), LH_ERR_INVALID_ARGUMENT);
  EXPECT_STREQ(lh_last_error(), "solver: device 3 holds both stage 0, replica 0 and stage 1, replica 0");
  plan->device_at[2] = 4;
  EXPECT_EQ(lh_plan_index_from_grid(plan.get(), "solver"), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "stage 1, replica 0 holds device 4, out of range")) << lh_last_error();
  plan->device_at[2] = 2;
  EXPECT_EQ(lh_plan_index_from_grid(plan.get(), "solver"), LH_SUCCESS) << lh_last_error();
  EXPECT_EQ(plan->stage[2], 1);
  EXPECT_EQ(plan->replica[2], 0);
  EXPECT_EQ(plan->stage[0], 1);
  EXPECT_EQ(plan->replica[0], 1);
}

TEST(PlanApi, RandomPlansAreSeededBijections) {
  std::vector<std::vector<int>> grids;
  for (uint64_t seed = 0; seed < 20; seed++) {
    lh_plan *raw = nullptr;
    ASSERT_EQ(lh_plan_random(12, 4, 3, seed, &raw), LH_SUCCESS) << lh_last_error();
    PlanPtr plan(raw);
    grids.push_back(CheckBijection(plan.get()));
    lh_plan_info info = LH_PLAN_INFO_INIT;
    ASSERT_EQ(lh_plan_get_info(plan.get(), &info), LH_SUCCESS);
    EXPECT_EQ(info.seed, seed);
    lh_plan *again = nullptr;
    ASSERT_EQ(lh_plan_random(12, 4, 3, seed, &again), LH_SUCCESS);
    PlanPtr second(again);
    EXPECT_EQ(CheckBijection(second.get()), grids.back()) << "seed " << seed;
  }
  std::set<std::vector<int>> distinct(grids.begin(), grids.end());
  EXPECT_EQ(distinct.size(), grids.size()); // 12! placements: 20 seeds should not collide

  // Every device reaches every cell across seeds (a shuffle that skipped positions would not).
  std::set<std::pair<int, int>> reached;
  for (uint64_t seed = 100; seed < 600; seed++) {
    lh_plan *raw = nullptr;
    ASSERT_EQ(lh_plan_random(6, 3, 2, seed, &raw), LH_SUCCESS);
    PlanPtr plan(raw);
    for (int cell = 0; cell < 6; cell++)
      reached.insert({plan->device_at[cell], cell});
  }
  EXPECT_EQ(reached.size(), 36u);

  lh_plan *raw = nullptr;
  ASSERT_EQ(lh_plan_random(1, 1, 1, 5, &raw), LH_SUCCESS);
  PlanPtr one(raw);
  EXPECT_EQ(one->device_at[0], 0);
  EXPECT_EQ(lh_plan_random(6, 4, 2, 5, &raw), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "lh_plan_random: devices is 6 but pp x dp is 4 x 2 = 8")) << lh_last_error();
  EXPECT_EQ(lh_plan_random(6, 3, 2, 5, nullptr), LH_ERR_INVALID_ARGUMENT);
}

TEST(PlanApi, ObjectiveNamesRoundTrip) {
  for (lh_sched_objective k : {LH_SCHED_PIPELINED, LH_SCHED_DTFM}) {
    const char *name = nullptr;
    ASSERT_EQ(lh_sched_objective_name(k, &name), LH_SUCCESS);
    lh_sched_objective back;
    ASSERT_EQ(lh_sched_objective_parse(name, &back), LH_SUCCESS);
    EXPECT_EQ(back, k);
  }
  const char *name = nullptr;
  ASSERT_EQ(lh_sched_objective_name(LH_SCHED_DTFM, &name), LH_SUCCESS);
  EXPECT_STREQ(name, "dtfm");
  EXPECT_EQ(lh_sched_objective_name(LH_SCHED_DTFM, nullptr), LH_ERR_INVALID_ARGUMENT);
  lh_sched_objective k;
  EXPECT_EQ(lh_sched_objective_parse("DTFM", &k), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "unknown objective 'DTFM' (expected pipelined or dtfm)")) << lh_last_error();
  EXPECT_EQ(lh_sched_objective_parse(nullptr, &k), LH_ERR_INVALID_ARGUMENT);
}

// ---- plan files -----------------------------------------------------------------------------

PlanPtr ScoredPlan(uint64_t seed) {
  lh_plan *raw = nullptr;
  EXPECT_EQ(lh_plan_random(12, 3, 4, seed, &raw), LH_SUCCESS);
  PlanPtr plan(raw);
  // lh_plan_score belongs to the solver; here the fields are set directly.
  lh_plan_info &info = plan->info;
  info.objective = LH_SCHED_DTFM;
  info.cost = 0.1;
  info.dp_cost = 1.0 / 3.0;
  info.pp_cost = 1e-300;
  info.lower_bound = 4.9406564584124654e-324; // the smallest subnormal
  info.gap = -0.0;
  info.solve_seconds = 123456789.123456789;
  info.seed = UINT64_MAX;
  info.restarts = 32;
  info.budget_hit = 1;
  return plan;
}

void ExpectSamePlan(const lh_plan *a, const lh_plan *b) {
  lh_plan_info x = LH_PLAN_INFO_INIT, y = LH_PLAN_INFO_INIT;
  ASSERT_EQ(lh_plan_get_info(a, &x), LH_SUCCESS);
  ASSERT_EQ(lh_plan_get_info(b, &y), LH_SUCCESS);
  EXPECT_EQ(x.devices, y.devices);
  EXPECT_EQ(x.pp, y.pp);
  EXPECT_EQ(x.dp, y.dp);
  EXPECT_EQ(x.objective, y.objective);
  EXPECT_TRUE(SameBits(x.cost, y.cost)) << x.cost << " vs " << y.cost;
  EXPECT_TRUE(SameBits(x.dp_cost, y.dp_cost)) << x.dp_cost << " vs " << y.dp_cost;
  EXPECT_TRUE(SameBits(x.pp_cost, y.pp_cost)) << x.pp_cost << " vs " << y.pp_cost;
  EXPECT_TRUE(SameBits(x.lower_bound, y.lower_bound)) << x.lower_bound << " vs " << y.lower_bound;
  EXPECT_TRUE(SameBits(x.gap, y.gap)) << x.gap << " vs " << y.gap;
  EXPECT_TRUE(SameBits(x.solve_seconds, y.solve_seconds)) << x.solve_seconds << " vs " << y.solve_seconds;
  EXPECT_EQ(x.seed, y.seed);
  EXPECT_EQ(x.restarts, y.restarts);
  EXPECT_EQ(x.budget_hit, y.budget_hit);
  ASSERT_EQ(x.devices, y.devices);
  for (int d = 0; d < x.devices; d++) {
    int s1, r1, s2, r2;
    ASSERT_EQ(lh_plan_device(a, d, &s1, &r1), LH_SUCCESS);
    ASSERT_EQ(lh_plan_device(b, d, &s2, &r2), LH_SUCCESS);
    EXPECT_EQ(s1, s2) << "device " << d;
    EXPECT_EQ(r1, r2) << "device " << d;
  }
}

TEST(PlanJson, RoundTripIsExact) {
  PlanPtr plan = ScoredPlan(3);
  std::string text = WriteToString(plan.get());
  EXPECT_TRUE(Contains(text, "\"format\": \"longhaul-plan\"")) << text;
  EXPECT_TRUE(Contains(text, "\"objective\": \"dtfm\"")) << text;
  EXPECT_TRUE(Contains(text, "\"seed\": 18446744073709551615,")) << text;
  EXPECT_TRUE(Contains(text, "\"cost\": 0.1,")) << text; // shortest digits that round-trip
  EXPECT_TRUE(Contains(text, "\"gap\": -0,")) << text;
  EXPECT_TRUE(Contains(text, "\"budget_hit\": true")) << text;
  EXPECT_TRUE(Contains(text, "{\"device\": 11, \"stage\": ")) << text; // one entry per line
  PlanPtr back;
  ASSERT_EQ(Parse(text, &back), LH_SUCCESS) << lh_last_error() << "\n" << text;
  ExpectSamePlan(plan.get(), back.get());
  EXPECT_EQ(WriteToString(back.get()), text); // and the text is a fixed point

  // Many doubles, bit for bit, through the cost field (finite ones: JSON has no inf or nan).
  std::mt19937_64 rng(7);
  for (int i = 0; i < 2000; i++) {
    uint64_t bits = rng();
    double v;
    std::memcpy(&v, &bits, sizeof v);
    if (!std::isfinite(v))
      continue;
    plan->info.cost = v;
    plan->info.dp_cost = std::ldexp(static_cast<double>(rng() >> 11), -static_cast<int>(rng() % 80));
    std::string t = WriteToString(plan.get());
    PlanPtr b;
    ASSERT_EQ(Parse(t, &b), LH_SUCCESS) << lh_last_error() << "\n" << t;
    ASSERT_TRUE(SameBits(b->info.cost, v)) << v;
    ASSERT_TRUE(SameBits(b->info.dp_cost, plan->info.dp_cost)) << plan->info.dp_cost;
  }
}

TEST(PlanJson, NonFiniteNumbersAreWrittenAsNull) {
  PlanPtr plan = ScoredPlan(4);
  plan->info.cost = std::numeric_limits<double>::infinity();
  plan->info.gap = std::nan("");
  std::string text = WriteToString(plan.get());
  EXPECT_TRUE(Contains(text, "\"cost\": null,")) << text;
  EXPECT_TRUE(Contains(text, "\"gap\": null,")) << text;
  PlanPtr back;
  ASSERT_EQ(Parse(text, &back), LH_SUCCESS) << lh_last_error();
  EXPECT_EQ(back->info.cost, 0.0);
  EXPECT_EQ(back->info.gap, 0.0);
  EXPECT_TRUE(SameBits(back->info.dp_cost, 1.0 / 3.0));
}

TEST(PlanJson, FilesRoundTripAndMissingFilesSayWhy) {
  PlanPtr plan = ScoredPlan(5);
  char path[] = "/tmp/lh_plan_test_XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  ASSERT_EQ(lh_plan_write_file(plan.get(), path), LH_SUCCESS) << lh_last_error();
  lh_plan *raw = nullptr;
  ASSERT_EQ(lh_plan_read_file(path, &raw), LH_SUCCESS) << lh_last_error();
  PlanPtr back(raw);
  ExpectSamePlan(plan.get(), back.get());
  std::remove(path);

  EXPECT_EQ(lh_plan_read_file("/nonexistent/dir/plan.json", &raw), LH_ERR_IO);
  EXPECT_EQ(raw, nullptr);
  EXPECT_TRUE(Contains(lh_last_error(), "cannot open '/nonexistent/dir/plan.json': No such file or directory"))
      << lh_last_error();
  EXPECT_EQ(lh_plan_write_file(plan.get(), "/nonexistent/dir/plan.json"), LH_ERR_IO);
  EXPECT_TRUE(Contains(lh_last_error(), "'/nonexistent/dir/plan.json'")) << lh_last_error();
  EXPECT_EQ(lh_plan_write_stream(nullptr, stdout), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_plan_parse("{}", 2, "x", nullptr), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_plan_parse(nullptr, 3, "x", &raw), LH_ERR_INVALID_ARGUMENT);
}

// A minimal valid plan, one field per line (line numbers below refer to it):
//  1 {
//  2   "format": "longhaul-plan",
//  3   "version": 1,
//  4   "devices": 4, "pp": 2, "dp": 2,
//  5   "assignment": [
//  6     {"device": 0, "stage": 0, "replica": 0},
//  7     {"device": 1, "stage": 0, "replica": 1},
//  8     {"device": 2, "stage": 1, "replica": 0},
//  9     {"device": 3, "stage": 1, "replica": 1}
// 10   ]
// 11 }
struct Entry {
  std::string device, stage, replica;
};
std::string MinimalPlan(const std::vector<Entry> &entries, const std::string &format = "\"longhaul-plan\"",
                        const std::string &extra = "") {
  std::string text = "{\n  \"format\": " + format + ",\n  \"version\": 1,\n  \"devices\": 4, \"pp\": 2, \"dp\": 2," +
                     extra + "\n  \"assignment\": [\n";
  for (size_t i = 0; i < entries.size(); i++)
    text += "    {\"device\": " + entries[i].device + ", \"stage\": " + entries[i].stage +
            ", \"replica\": " + entries[i].replica + "}" + (i + 1 < entries.size() ? ",\n" : "\n");
  return text + "  ]\n}\n";
}
const std::vector<Entry> kFour = {{"0", "0", "0"}, {"1", "0", "1"}, {"2", "1", "0"}, {"3", "1", "1"}};

void ExpectRefused(const std::string &text, const std::string &where, const std::string &what) {
  PlanPtr plan;
  ASSERT_EQ(Parse(text, &plan), LH_ERR_PARSE) << text;
  std::string message = lh_last_error();
  EXPECT_EQ(message.rfind(where, 0), 0u) << message;
  EXPECT_TRUE(Contains(message, what)) << message;
}

TEST(PlanJson, MinimalPlanReadsWithDefaults) {
  PlanPtr plan;
  ASSERT_EQ(Parse(MinimalPlan(kFour), &plan), LH_SUCCESS) << lh_last_error();
  EXPECT_EQ(plan->device_at[3], 3);
  EXPECT_EQ(plan->info.objective, LH_SCHED_PIPELINED);
  EXPECT_EQ(plan->info.cost, 0.0);
  EXPECT_EQ(plan->info.seed, 0u);
  // Order of keys is free, unknown keys (of any shape) are skipped, numbers may be 1.0 or 1e0.
  std::string text =
      "{\"assignment\": [{\"stage\": 1.0, \"replica\": 1e0, \"device\": 0, \"note\": {\"a\": [1, {}, []]}},"
      " {\"device\": 1, \"stage\": 1, \"replica\": 0}, {\"device\": 2, \"stage\": 0, \"replica\": 1},"
      " {\"device\": 3, \"stage\": 0, \"replica\": 0}], \"future\": [true, false, null, -1.5e-3, \"\\u00e9\\ud83d\\ude00\"],"
      " \"dp\": 2, \"pp\": 2, \"devices\": 4, \"version\": 1, \"format\": \"longhaul-\\u0070lan\","
      " \"objective\": \"dtfm\", \"seed\": 12345678901234567890, \"budget_hit\": 1, \"cost\": 2.5E+1}";
  ASSERT_EQ(Parse(text, &plan), LH_SUCCESS) << lh_last_error();
  EXPECT_EQ(plan->stage[0], 1);
  EXPECT_EQ(plan->replica[0], 1);
  EXPECT_EQ(plan->device_at[0], 3);
  EXPECT_EQ(plan->info.objective, LH_SCHED_DTFM);
  EXPECT_EQ(plan->info.seed, 12345678901234567890ull);
  EXPECT_EQ(plan->info.budget_hit, 1);
  EXPECT_EQ(plan->info.cost, 25.0);
}

TEST(PlanJson, ReaderRefusesWithLineAndField) {
  ExpectRefused(MinimalPlan(kFour, "\"longhaul-links\""), "t.json:2: ", "expected \"format\": \"longhaul-plan\"");
  ExpectRefused(MinimalPlan(kFour, "7"), "t.json:2: ", "a string for \"format\"");
  {
    std::string text = MinimalPlan(kFour);
    text.replace(text.find("\"version\": 1"), 12, "\"version\": 2");
    ExpectRefused(text, "t.json:3: ", "knows version 1 only");
  }
  {
    std::string text = "{\n  \"format\": \"longhaul-plan\",\n  \"version\": 1,\n  \"devices\": 4, \"pp\": 2, \"dp\": 2\n}";
    ExpectRefused(text, "t.json:5: ", "expected a \"assignment\" key");
  }
  ExpectRefused(MinimalPlan({{"0", "0", "0"}, {"1", "0", "1"}, {"1", "1", "0"}, {"3", "1", "1"}}), "t.json:8: ",
                "expected device 1 once in \"assignment\", found it again (first on line 7)");
  ExpectRefused(MinimalPlan({{"0", "0", "0"}, {"1", "0", "1"}, {"2", "0", "1"}, {"3", "1", "1"}}), "t.json:8: ",
                "expected stage 0, replica 1 once in \"assignment\", found it held by device 1 (line 7) and device 2");
  ExpectRefused(MinimalPlan({{"0", "0", "0"}, {"1", "0", "1"}, {"2", "1.5", "0"}, {"3", "1", "1"}}), "t.json:8: ",
                "for \"stage\" of assignment entry 2, found '1.5' (not a whole number)");
  ExpectRefused(MinimalPlan({{"0", "0", "0"}, {"1", "0", "1"}, {"2", "\"1\"", "0"}, {"3", "1", "1"}}), "t.json:8: ",
                "\"stage\" of assignment entry 2, found '\"'");
  ExpectRefused(MinimalPlan({{"0", "0", "0"}, {"1", "0", "1"}, {"2", "-1", "0"}, {"3", "1", "1"}}), "t.json:8: ",
                "found '-1' (out of range)");
  ExpectRefused(MinimalPlan({{"0", "0", "0"}, {"1", "0", "1"}, {"2", "2", "0"}, {"3", "1", "1"}}), "t.json:8: ",
                "expected \"stage\" of assignment entry 2 to be below 2 (pp), found 2");
  ExpectRefused(MinimalPlan({{"0", "0", "0"}, {"1", "0", "1"}, {"4", "1", "0"}, {"3", "1", "1"}}), "t.json:8: ",
                "expected \"device\" of assignment entry 2 to be below 4 (devices), found 4");
  ExpectRefused(MinimalPlan({{"0", "0", "0"}, {"1", "0", "1"}, {"3", "1", "1"}}), "t.json:5: ",
                "expected 4 entries in \"assignment\" (one per device), found 3: device 2 has none");
  {
    std::string text = MinimalPlan(kFour);
    text.replace(text.find("\"devices\": 4"), 12, "\"devices\": 6");
    ExpectRefused(text, "t.json:4: ", "expected \"devices\" to equal pp x dp = 2 x 2 = 4, found 6");
  }
  ExpectRefused(MinimalPlan(kFour, "\"longhaul-plan\"", " \"pp\": 2,"), "t.json:4: ",
                "expected one \"pp\", found a second (the first is on line 4)");
  ExpectRefused(MinimalPlan(kFour, "\"longhaul-plan\"", "\n  \"stages\": [[0, 1], [3, 2]],"), "t.json:5: ",
                "stage 1, replica 0 is device 2 there, device 3 here");
  ExpectRefused(MinimalPlan(kFour, "\"longhaul-plan\"", "\n  \"stages\": [[0, 1]],"), "t.json:5: ",
                "expected 2 lists in \"stages\" (pp), found 1");
  ExpectRefused(MinimalPlan(kFour, "\"longhaul-plan\"", "\n  \"objective\": \"fastest\","), "t.json:5: ",
                "\"pipelined\" or \"dtfm\", found 'fastest'");
  ExpectRefused(MinimalPlan(kFour, "\"longhaul-plan\"", "\n  \"cost\": 1e999,"), "t.json:5: ",
                "beyond the range of a double");
  ExpectRefused(MinimalPlan(kFour, "\"longhaul-plan\"", "\n  \"cost\": 01,"), "t.json:5: ", "expected ',' or '}'");
  ExpectRefused(MinimalPlan(kFour, "\"longhaul-plan\"", "\n  \"x\": \"a\\qb\","), "t.json:5: ", "expected an escape");
  ExpectRefused(MinimalPlan(kFour, "\"longhaul-plan\"", "\n  \"x\": \"\\ud800\","), "t.json:5: ", "low surrogate");
  ExpectRefused(MinimalPlan(kFour, "\"longhaul-plan\"", "\n  \"x\": nulls,"), "t.json:5: ", "found 'nulls'");
  ExpectRefused(MinimalPlan(kFour) + "{}", "t.json:12: ", "expected the end of the text after the plan object");
  ExpectRefused("", "t.json:1: ", "expected '{' to start the plan object, found the end of the text");
  ExpectRefused("[1, 2]", "t.json:1: ", "expected '{' to start the plan object, found '['");
  std::string with_nul = MinimalPlan(kFour);
  with_nul[with_nul.find("\"devices\"")] = '\0';
  ExpectRefused(with_nul, "t.json:4: ", "'\\x00'");
}

TEST(PlanJson, TruncatedTextIsRefusedAtEveryLength) {
  PlanPtr plan = ScoredPlan(6);
  std::string text = WriteToString(plan.get());
  size_t end = text.rfind('}');
  for (size_t cut = 0; cut <= end; cut++) {
    PlanPtr back;
    ASSERT_EQ(Parse(text.substr(0, cut), &back), LH_ERR_PARSE) << "cut at " << cut;
  }
  PlanPtr back;
  ASSERT_EQ(Parse(text.substr(0, text.find("\"assignment\"") + 20), &back), LH_ERR_PARSE);
  EXPECT_TRUE(Contains(lh_last_error(), "found the end of the text")) << lh_last_error();
  ASSERT_EQ(Parse(text.substr(0, text.find("\"objective\": \"d") + 15), &back), LH_ERR_PARSE);
  EXPECT_TRUE(Contains(lh_last_error(), "closing '\"' of a string")) << lh_last_error();
}

TEST(PlanJson, DeepNestingIsRefusedWithoutDeepRecursion) {
  for (const char *open : {"[", "{\"a\":"}) {
    std::string deep;
    for (int i = 0; i < 100000; i++)
      deep += open;
    ExpectRefused(MinimalPlan(kFour, "\"longhaul-plan\"", "\n  \"x\": " + deep), "t.json:5: ",
                  "expected at most 32 levels of nested arrays and objects, found more");
  }
  // 31 levels inside the plan object are fine.
  std::string ok = std::string(31, '[') + std::string(31, ']') + ",";
  PlanPtr plan;
  EXPECT_EQ(Parse(MinimalPlan(kFour, "\"longhaul-plan\"", "\n  \"x\": " + ok), &plan), LH_SUCCESS) << lh_last_error();
  std::string too_deep = std::string(32, '[') + std::string(32, ']') + ",";
  EXPECT_EQ(Parse(MinimalPlan(kFour, "\"longhaul-plan\"", "\n  \"x\": " + too_deep), &plan), LH_ERR_PARSE);
}

TEST(PlanJson, LimitsHoldForHugeNumbersAndCounts) {
  ExpectRefused(MinimalPlan(kFour, "\"longhaul-plan\"", "\n  \"x\": " + std::string(200, '7') + ","), "t.json:5: ",
                "of at most 100 characters, found 200");
  ExpectRefused(MinimalPlan(kFour, "\"longhaul-plan\"", "\n  \"seed\": 18446744073709551616,"), "t.json:5: ",
                "(out of range)");
  ExpectRefused(MinimalPlan(kFour, "\"longhaul-plan\"", "\n  \"restarts\": 1e10,"), "t.json:5: ", "(out of range)");
  std::string text = MinimalPlan(kFour);
  text.replace(text.find("\"pp\": 2"), 7, "\"pp\": 70000");
  ExpectRefused(text, "t.json:4: ", "a whole number from 1 to 65536 for \"pp\"");
}

// Random byte edits of a valid file: the reader answers success or LH_ERR_PARSE, never crashes
// (the ASan build checks memory), and whatever it accepts is a bijection.
TEST(PlanJson, MutatedFilesNeverCrash) {
  PlanPtr plan = ScoredPlan(8);
  const std::string text = WriteToString(plan.get());
  const char alphabet[] = "{}[],:\"\\0123456789.eE+-tfnul \n";
  std::mt19937_64 rng(11);
  int accepted = 0;
  for (int trial = 0; trial < 3000; trial++) {
    std::string t = text;
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; e++) {
      size_t at = rng() % t.size();
      switch (rng() % 3) {
      case 0:
        t[at] = alphabet[rng() % (sizeof alphabet - 1)];
        break;
      case 1:
        t.erase(at, 1 + rng() % 3);
        break;
      default:
        t.insert(at, 1, alphabet[rng() % (sizeof alphabet - 1)]);
      }
      if (t.empty())
        t = "{";
    }
    PlanPtr back;
    lh_status st = Parse(t, &back);
    ASSERT_TRUE(st == LH_SUCCESS || st == LH_ERR_PARSE) << st << " " << lh_last_error();
    if (st == LH_SUCCESS) {
      accepted++;
      CheckBijection(back.get());
    } else {
      ASSERT_EQ(std::string(lh_last_error()).rfind("t.json:", 0), 0u) << lh_last_error();
    }
  }
  EXPECT_GT(accepted, 0); // some edits (white space, digits of numbers) keep the file valid
}

// ---- random instances -----------------------------------------------------------------------

LinksPtr Instance(const lh_sched_instance &in) {
  lh_links *raw = nullptr;
  EXPECT_EQ(lh_sched_random_instance(&in, &raw), LH_SUCCESS) << lh_last_error();
  return LinksPtr(raw);
}

bool SameLinks(const lh_links *a, const lh_links *b) {
  int n, m;
  lh_links_devices(a, &n);
  lh_links_devices(b, &m);
  if (n != m)
    return false;
  for (int i = 0; i < n; i++) {
    const char *sa, *sb;
    double va, vb;
    lh_links_get_device(a, i, &sa, &va);
    lh_links_get_device(b, i, &sb, &vb);
    if (std::strcmp(sa, sb) || !SameBits(va, vb))
      return false;
    for (int j = 0; j < n; j++) {
      double la, ba, lb, bb;
      lh_links_get(a, i, j, &la, &ba);
      lh_links_get(b, i, j, &lb, &bb);
      if (!SameBits(la, lb) || !SameBits(ba, bb))
        return false;
    }
  }
  return true;
}

TEST(SchedInstance, DeterministicPerSeed) {
  lh_sched_instance in = LH_SCHED_INSTANCE_INIT;
  in.devices = 40;
  in.cities = 6;
  in.speed_spread = 0.3;
  in.seed = 9;
  LinksPtr a = Instance(in), b = Instance(in);
  ASSERT_TRUE(a && b);
  EXPECT_TRUE(SameLinks(a.get(), b.get()));
  in.seed = 10;
  LinksPtr c = Instance(in);
  ASSERT_TRUE(c);
  EXPECT_FALSE(SameLinks(a.get(), c.get()));
}

TEST(SchedInstance, ValuesStayInTheirRanges) {
  for (uint64_t seed : {1u, 2u, 3u}) {
    lh_sched_instance in = LH_SCHED_INSTANCE_INIT;
    in.devices = 48;
    in.cities = 7;
    in.min_uplink_gbps = 0.2;
    in.max_uplink_gbps = 5.0;
    in.jitter = 0.25;
    in.speed_spread = 0.5;
    in.seed = seed;
    LinksPtr links = Instance(in);
    ASSERT_TRUE(links);
    int n = 0;
    ASSERT_EQ(lh_links_devices(links.get(), &n), LH_SUCCESS);
    ASSERT_EQ(n, 48);
    std::map<std::string, int> per_city;
    std::vector<std::string> site_of(48);
    for (int d = 0; d < n; d++) {
      const char *site;
      double speed, cap;
      ASSERT_EQ(lh_links_get_device(links.get(), d, &site, &speed), LH_SUCCESS);
      site_of[d] = site;
      per_city[site]++;
      EXPECT_GE(speed, 0.5);
      EXPECT_LE(speed, 1.5);
      ASSERT_EQ(lh_links_get_uplink(links.get(), d, &cap), LH_SUCCESS);
      EXPECT_EQ(cap, 0.0);
    }
    EXPECT_EQ(per_city.size(), 7u); // every city holds a device
    for (int c = 0; c < 7; c++)
      EXPECT_GE(per_city["city" + std::to_string(c)], 1) << "city" << c;
    int largest = 0;
    for (const auto &kv : per_city)
      largest = std::max(largest, kv.second);
    EXPECT_GT(largest, 48 / 7); // uneven: some city above the average
    const double slack = 1e-3; // values are rounded to 4 significant digits
    const double lo = 0.2 * LH_GBIT_BYTES * (1 - 0.25) * (1 - slack), hi = 5.0 * LH_GBIT_BYTES * (1 + 0.25) * (1 + slack);
    int asymmetric = 0;
    for (int i = 0; i < n; i++)
      for (int j = 0; j < n; j++) {
        if (i == j)
          continue;
        double lat, bw, lat_back, bw_back;
        ASSERT_EQ(lh_links_get(links.get(), i, j, &lat, &bw), LH_SUCCESS);
        ASSERT_EQ(lh_links_get(links.get(), j, i, &lat_back, &bw_back), LH_SUCCESS);
        EXPECT_GE(bw, lo) << i << "->" << j;
        EXPECT_LE(bw, hi) << i << "->" << j;
        asymmetric += lat != lat_back || bw != bw_back;
        if (site_of[i] == site_of[j]) {
          EXPECT_GE(lat, 0.5e-3 * 0.75 * (1 - slack)) << i << "->" << j;
          EXPECT_LE(lat, 5e-3 * 1.25 * (1 + slack)) << i << "->" << j;
        } else {
          EXPECT_GE(lat, 5e-3 * 0.75 * (1 - slack)) << i << "->" << j; // > 0 and at least the WAN floor
          EXPECT_LE(lat, (5 + 20100 / 100.0) * 1e-3 * 1.25) << i << "->" << j; // half the globe at most
        }
      }
    EXPECT_GT(asymmetric, 0); // jitter makes the two directions differ
  }
}

TEST(SchedInstance, EdgeShapesWork) {
  lh_sched_instance in = LH_SCHED_INSTANCE_INIT;
  in.devices = 1;
  in.cities = 1;
  LinksPtr one = Instance(in);
  ASSERT_TRUE(one);
  in.devices = 9;
  in.cities = 9; // one device per city
  in.jitter = 0;
  in.min_uplink_gbps = in.max_uplink_gbps = 1.0;
  LinksPtr spread = Instance(in);
  ASSERT_TRUE(spread);
  std::set<std::string> sites;
  for (int d = 0; d < 9; d++) {
    const char *site;
    double speed;
    ASSERT_EQ(lh_links_get_device(spread.get(), d, &site, &speed), LH_SUCCESS);
    sites.insert(site);
    EXPECT_EQ(speed, 1.0); // no spread: exactly the reference speed
    for (int e = 0; e < 9; e++) {
      double lat, bw, lat_back, bw_back;
      if (e == d)
        continue;
      ASSERT_EQ(lh_links_get(spread.get(), d, e, &lat, &bw), LH_SUCCESS);
      ASSERT_EQ(lh_links_get(spread.get(), e, d, &lat_back, &bw_back), LH_SUCCESS);
      EXPECT_EQ(bw, LH_GBIT_BYTES); // equal uplinks and no jitter: exactly 1 Gbit/s
      EXPECT_EQ(lat, lat_back);     // no jitter: symmetric
    }
  }
  EXPECT_EQ(sites.size(), 9u);
}

TEST(SchedInstance, RefusesBadFieldsByName) {
  lh_links *raw = reinterpret_cast<lh_links *>(&raw);
  lh_sched_instance in = LH_SCHED_INSTANCE_INIT;
  in.cities = 65;
  EXPECT_EQ(lh_sched_random_instance(&in, &raw), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(raw, nullptr);
  EXPECT_TRUE(Contains(lh_last_error(), "cities is 65; it must be from 1 to devices (64)")) << lh_last_error();
  in = LH_SCHED_INSTANCE_INIT;
  in.min_uplink_gbps = 3;
  EXPECT_EQ(lh_sched_random_instance(&in, &raw), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "max_uplink_gbps is 2; it must be at least min_uplink_gbps (3)"))
      << lh_last_error();
  in = LH_SCHED_INSTANCE_INIT;
  in.min_uplink_gbps = 0;
  EXPECT_EQ(lh_sched_random_instance(&in, &raw), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "min_uplink_gbps is 0")) << lh_last_error();
  in = LH_SCHED_INSTANCE_INIT;
  in.jitter = 1.0;
  EXPECT_EQ(lh_sched_random_instance(&in, &raw), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "jitter is 1")) << lh_last_error();
  in.jitter = std::nan("");
  EXPECT_EQ(lh_sched_random_instance(&in, &raw), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "jitter is nan")) << lh_last_error();
  in = LH_SCHED_INSTANCE_INIT;
  in.speed_spread = -0.1;
  EXPECT_EQ(lh_sched_random_instance(&in, &raw), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "speed_spread is -0.1")) << lh_last_error();
  in = LH_SCHED_INSTANCE_INIT;
  in.devices = 0;
  EXPECT_EQ(lh_sched_random_instance(&in, &raw), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "devices is 0")) << lh_last_error();
  in = LH_SCHED_INSTANCE_INIT;
  in.size = 8;
  EXPECT_EQ(lh_sched_random_instance(&in, &raw), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "LH_SCHED_INSTANCE_INIT")) << lh_last_error();
  EXPECT_EQ(lh_sched_random_instance(nullptr, &raw), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_sched_random_instance(&in, nullptr), LH_ERR_INVALID_ARGUMENT);
}

} // namespace

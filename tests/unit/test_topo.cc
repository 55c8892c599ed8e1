// Topology discovery and binding. The checks hold on any host: with or without GPUs and NICs,
// with or without permission to bind, and in a build without hwloc (where they are skipped
// after checking that the refusal says why).
#include <gtest/gtest.h>

#include <sched.h>

#include <cstring>
#include <string>

#include <longhaul/longhaul.h>

namespace {

bool BuiltWithHwloc() {
  lh_build_features info = LH_BUILD_FEATURES_INIT;
  EXPECT_EQ(lh_build_info(&info), LH_SUCCESS);
  return info.has_hwloc != 0;
}

std::string Describe(const lh_topology *topo) {
  size_t needed = 0;
  EXPECT_EQ(lh_topo_describe(topo, nullptr, 0, &needed), LH_SUCCESS);
  std::string text(needed, '\0');
  EXPECT_EQ(lh_topo_describe(topo, &text[0], text.size(), nullptr), LH_SUCCESS);
  text.resize(std::strlen(text.c_str()));
  return text;
}

// Binding changes the affinity of the whole test process: each test puts it back.
class Topo : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(sched_getaffinity(0, sizeof saved_, &saved_), 0);
    if (!BuiltWithHwloc()) {
      EXPECT_EQ(lh_topo_load(&topo_), LH_ERR_NOT_SUPPORTED);
      EXPECT_EQ(topo_, nullptr);
      EXPECT_NE(std::string(lh_last_error()).find("hwloc"), std::string::npos) << lh_last_error();
      GTEST_SKIP() << "built without hwloc";
    }
    ASSERT_EQ(lh_topo_load(&topo_), LH_SUCCESS) << lh_last_error();
    ASSERT_NE(topo_, nullptr);
    ASSERT_EQ(lh_topo_summarize(topo_, &summary_), LH_SUCCESS) << lh_last_error();
  }
  void TearDown() override {
    EXPECT_EQ(lh_topo_free(topo_), LH_SUCCESS);
    sched_setaffinity(0, sizeof saved_, &saved_);
  }
  // Binds and checks the contract: success with a description, or NOT_SUPPORTED with a reason
  // and "not bound". Returns the status.
  lh_status Bind(lh_bind_policy policy, int local_rank, int local_size, std::string *where_out) {
    char where[256];
    std::memset(where, 'x', sizeof where);
    lh_status st = lh_topo_bind(topo_, policy, local_rank, local_size, where, sizeof where);
    EXPECT_TRUE(st == LH_SUCCESS || st == LH_ERR_NOT_SUPPORTED) << lh_status_string(st) << ": " << lh_last_error();
    EXPECT_NE(std::memchr(where, '\0', sizeof where), nullptr);
    if (st == LH_SUCCESS) {
      EXPECT_GT(std::strlen(where), 0u);
    } else {
      EXPECT_STRNE(lh_last_error(), "");
      EXPECT_STREQ(where, "not bound");
    }
    if (where_out)
      *where_out = where;
    return st;
  }
  static cpu_set_t Affinity() {
    cpu_set_t set;
    CPU_ZERO(&set);
    EXPECT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
    return set;
  }

  lh_topology *topo_ = nullptr;
  lh_topo_summary summary_ = LH_TOPO_SUMMARY_INIT;
  cpu_set_t saved_;
};

TEST_F(Topo, SummaryIsPlausible) {
  EXPECT_GE(summary_.cores, 1);
  EXPECT_GE(summary_.pus, summary_.cores);
  EXPECT_GE(summary_.numa_nodes, 1);
  EXPECT_GE(summary_.packages, 0);
  EXPECT_GE(summary_.gpus, 0);
  EXPECT_GE(summary_.nics, 0);
}

TEST_F(Topo, SummaryChecksItsSize) {
  lh_topo_summary old = LH_TOPO_SUMMARY_INIT;
  old.size = sizeof old - 1;
  EXPECT_EQ(lh_topo_summarize(topo_, &old), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("LH_TOPO_SUMMARY_INIT"), std::string::npos) << lh_last_error();
}

TEST_F(Topo, DescribeListsCountsAndDevices) {
  std::string text = Describe(topo_);
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n');
  std::string first = text.substr(0, text.find('\n'));
  EXPECT_NE(first.find(std::to_string(summary_.cores) + " core"), std::string::npos) << first;
  EXPECT_NE(first.find(std::to_string(summary_.numa_nodes) + " NUMA node"), std::string::npos) << first;
  EXPECT_NE(first.find(std::to_string(summary_.gpus) + " GPU"), std::string::npos) << first;
  // One line of counts, then one per GPU and per NIC.
  long lines = 0;
  for (char c : text)
    lines += c == '\n';
  EXPECT_EQ(lines, 1 + summary_.gpus + summary_.nics) << text;
  for (int i = 0; i < summary_.gpus; i++)
    EXPECT_NE(text.find("GPU " + std::to_string(i) + " "), std::string::npos) << text;
  for (int i = 0; i < summary_.nics; i++)
    EXPECT_NE(text.find("NIC " + std::to_string(i) + " "), std::string::npos) << text;
}

TEST_F(Topo, DescribeTruncatesAndReportsWhatItNeeds) {
  std::string full = Describe(topo_);
  size_t needed = 0;
  ASSERT_EQ(lh_topo_describe(topo_, nullptr, 0, &needed), LH_SUCCESS);
  EXPECT_EQ(needed, full.size() + 1);  // the terminating NUL included

  for (size_t capacity : {size_t{1}, size_t{2}, size_t{10}, full.size(), full.size() + 1, full.size() + 50}) {
    std::string buf(capacity + 8, '#');  // guard bytes after the capacity
    size_t got = 0;
    ASSERT_EQ(lh_topo_describe(topo_, &buf[0], capacity, &got), LH_SUCCESS) << lh_last_error();
    EXPECT_EQ(got, needed);
    size_t kept = std::min(capacity - 1, full.size());
    EXPECT_EQ(std::strlen(buf.c_str()), kept) << "capacity " << capacity;
    EXPECT_EQ(buf.substr(0, kept), full.substr(0, kept));
    EXPECT_EQ(buf.substr(capacity), std::string(8, '#')) << "wrote past capacity " << capacity;
  }
}

TEST(TopoParse, AcceptsThePoliciesInAnyCase) {
  const struct {
    const char *name;
    lh_bind_policy policy;
  } cases[] = {{"none", LH_BIND_NONE}, {"core", LH_BIND_CORE}, {"gpu", LH_BIND_GPU}, {"nic", LH_BIND_NIC},
               {"NONE", LH_BIND_NONE}, {"Core", LH_BIND_CORE}, {"GPU", LH_BIND_GPU}, {"nIc", LH_BIND_NIC}};
  for (const auto &c : cases) {
    lh_bind_policy p = LH_BIND_NIC;
    if (c.policy == LH_BIND_NIC)
      p = LH_BIND_NONE;
    EXPECT_EQ(lh_bind_policy_parse(c.name, &p), LH_SUCCESS) << c.name << ": " << lh_last_error();
    EXPECT_EQ(p, c.policy) << c.name;
  }
}

TEST(TopoParse, RejectsOtherWordsNamingTheAllowedOnes) {
  for (const char *bad : {"", "cores", "gpu ", " nic", "numa", "socket", "0", "nonee"}) {
    lh_bind_policy p = LH_BIND_CORE;
    EXPECT_EQ(lh_bind_policy_parse(bad, &p), LH_ERR_INVALID_ARGUMENT) << "'" << bad << "'";
    EXPECT_EQ(p, LH_BIND_CORE) << "the output changed on failure";
    std::string msg = lh_last_error();
    EXPECT_NE(msg.find(std::string("'") + bad + "'"), std::string::npos) << msg;
    for (const char *word : {"none", "core", "gpu", "nic"})
      EXPECT_NE(msg.find(word), std::string::npos) << msg;
  }
  lh_bind_policy p;
  EXPECT_EQ(lh_bind_policy_parse(nullptr, &p), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_bind_policy_parse("core", nullptr), LH_ERR_INVALID_ARGUMENT);
}

TEST_F(Topo, BindNoneChangesNothing) {
  char where[32] = "garbage";
  EXPECT_EQ(lh_topo_bind(topo_, LH_BIND_NONE, 0, 1, where, sizeof where), LH_SUCCESS) << lh_last_error();
  EXPECT_STREQ(where, "not bound");
  cpu_set_t now = Affinity();
  EXPECT_TRUE(CPU_EQUAL(&now, &saved_));
  // A small `where` is truncated, not overrun.
  char tiny[5] = "xxxx";
  EXPECT_EQ(lh_topo_bind(topo_, LH_BIND_NONE, 0, 1, tiny, 4), LH_SUCCESS);
  EXPECT_STREQ(tiny, "not");
}

TEST_F(Topo, BindCoreGivesEachLocalRankItsOwnCore) {
  std::string where;
  if (Bind(LH_BIND_CORE, 0, 2, &where) != LH_SUCCESS)
    return;  // binding refused here (the reason was checked): nothing more to see
  EXPECT_EQ(where.rfind("cpu", 0), 0u) << where;
  EXPECT_NE(where.find("core 0 of " + std::to_string(summary_.cores)), std::string::npos) << where;
  cpu_set_t first = Affinity();
  EXPECT_GE(CPU_COUNT(&first), 1);
  if (summary_.cores >= 2)
    EXPECT_LT(CPU_COUNT(&first), summary_.pus) << "one core, yet every cpu: " << where;
  ASSERT_EQ(Bind(LH_BIND_CORE, 1, 2, &where), LH_SUCCESS);
  cpu_set_t second = Affinity();
  if (summary_.cores >= 2) {
    cpu_set_t both;
    CPU_AND(&both, &first, &second);
    EXPECT_EQ(CPU_COUNT(&both), 0) << "local ranks 0 and 1 share a core: " << where;
  }
  // Round robin: local rank `cores` wraps around to core 0.
  ASSERT_EQ(Bind(LH_BIND_CORE, summary_.cores, summary_.cores + 1, &where), LH_SUCCESS);
  cpu_set_t wrapped = Affinity();
  EXPECT_TRUE(CPU_EQUAL(&wrapped, &first)) << where;
}

TEST_F(Topo, BindGpuFailsCleanlyWithoutOne) {
  std::string where;
  lh_status st = Bind(LH_BIND_GPU, 0, 1, &where);
  if (summary_.gpus == 0) {
    EXPECT_EQ(st, LH_ERR_NOT_SUPPORTED);
    EXPECT_NE(std::string(lh_last_error()).find("GPU"), std::string::npos) << lh_last_error();
    cpu_set_t now = Affinity();
    EXPECT_TRUE(CPU_EQUAL(&now, &saved_)) << "a failed binding changed the affinity";
  } else if (st == LH_SUCCESS) {
    EXPECT_NE(where.find("near GPU"), std::string::npos) << where;
  }
}

TEST_F(Topo, BindNicFailsCleanlyWithoutOne) {
  std::string where;
  lh_status st = Bind(LH_BIND_NIC, 0, 1, &where);
  if (summary_.nics == 0) {
    EXPECT_EQ(st, LH_ERR_NOT_SUPPORTED);
    EXPECT_NE(std::string(lh_last_error()).find("NIC"), std::string::npos) << lh_last_error();
  } else if (st == LH_SUCCESS) {
    EXPECT_NE(where.find("near NIC"), std::string::npos) << where;
  }
}

TEST_F(Topo, BindRejectsBadArguments) {
  char where[64];
  struct {
    const lh_topology *topo;
    int policy, rank, size;
    char *where;
    size_t capacity;
  } cases[] = {
      {nullptr, LH_BIND_NONE, 0, 1, where, sizeof where},  // no topology
      {topo_, LH_BIND_NONE, 0, 1, nullptr, sizeof where},  // no where
      {topo_, LH_BIND_NONE, 0, 1, where, 0},               // no room
      {topo_, LH_BIND_CORE, -1, 2, where, sizeof where},   // rank below 0
      {topo_, LH_BIND_CORE, 2, 2, where, sizeof where},    // rank == size
      {topo_, LH_BIND_CORE, 0, 0, where, sizeof where},    // empty host
      {topo_, LH_BIND_CORE, 0, -3, where, sizeof where},
      {topo_, 4, 0, 1, where, sizeof where},               // not a policy
      {topo_, -1, 0, 1, where, sizeof where},
  };
  for (const auto &c : cases) {
    EXPECT_EQ(lh_topo_bind(c.topo, static_cast<lh_bind_policy>(c.policy), c.rank, c.size, c.where, c.capacity),
              LH_ERR_INVALID_ARGUMENT)
        << "policy " << c.policy << " rank " << c.rank << " size " << c.size;
    EXPECT_NE(std::string(lh_last_error()).find("lh_topo_bind"), std::string::npos) << lh_last_error();
  }
  cpu_set_t now = Affinity();
  EXPECT_TRUE(CPU_EQUAL(&now, &saved_));
}

TEST_F(Topo, OtherCallsRejectNull) {
  lh_topo_summary s = LH_TOPO_SUMMARY_INIT;
  char text[16];
  EXPECT_EQ(lh_topo_load(nullptr), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_topo_summarize(nullptr, &s), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_topo_summarize(topo_, nullptr), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_topo_describe(nullptr, text, sizeof text, nullptr), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_topo_describe(topo_, nullptr, sizeof text, nullptr), LH_ERR_INVALID_ARGUMENT);
  EXPECT_STRNE(lh_last_error(), "");
  EXPECT_EQ(lh_topo_free(nullptr), LH_SUCCESS);
}

}  // namespace

// The alpha-beta cost model against values computed by hand from the formulas in links.h.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>

#include <longhaul/links.h>

namespace {

struct LinksDeleter {
  void operator()(lh_links *l) const { lh_links_free(l); }
};
using LinksPtr = std::unique_ptr<lh_links, LinksDeleter>;

LinksPtr Uniform(int devices, double alpha, double beta) {
  lh_links *raw = nullptr;
  EXPECT_EQ(lh_links_create(devices, alpha, beta, &raw), LH_SUCCESS) << lh_last_error();
  return LinksPtr(raw);
}

// Relative tolerance: the hand values are exact decimals, the model adds a few roundings.
#define EXPECT_SECONDS(actual, expected) EXPECT_NEAR((actual), (expected), 1e-12 * (expected) + 1e-15)

double Ring(const lh_links *links, const int *order, int ranks, size_t bytes, size_t chunk) {
  double seconds = -1;
  EXPECT_EQ(lh_model_ring_allreduce(links, order, ranks, bytes, chunk, &seconds), LH_SUCCESS) << lh_last_error();
  return seconds;
}

double P2p(const lh_links *links, int from, int to, size_t bytes) {
  double seconds = -1;
  EXPECT_EQ(lh_model_p2p(links, from, to, bytes, &seconds), LH_SUCCESS) << lh_last_error();
  return seconds;
}

TEST(CostModel, P2pIsAlphaPlusBytesOverBeta) {
  LinksPtr links = Uniform(4, 0.01, 1e6);
  EXPECT_SECONDS(P2p(links.get(), 0, 1, 1000000), 1.01);
  EXPECT_SECONDS(P2p(links.get(), 3, 2, 0), 0.01);  // an empty message still pays the latency
  EXPECT_EQ(P2p(links.get(), 2, 2, 1000000), 0.0);  // to itself: no network
  ASSERT_EQ(lh_links_set(links.get(), 1, 0, 0.2, 5e5), LH_SUCCESS);
  EXPECT_SECONDS(P2p(links.get(), 1, 0, 1000000), 2.2);
  EXPECT_SECONDS(P2p(links.get(), 0, 1, 1000000), 1.01);  // the reverse direction is its own link
}

TEST(CostModel, UniformRing) {
  // 4 ranks, alpha 10 ms, beta 1 MB/s, 4 MB: segments of 1 MB, 2(4-1) = 6 steps.
  LinksPtr links = Uniform(4, 0.01, 1e6);
  // Whole segments: a step is max(1 s, 1 s + 10 ms) = 1.01 s; the last step is its segment's
  // wire time plus the latency, 1.01 s: total 5 * 1.01 + 1.01.
  EXPECT_SECONDS(Ring(links.get(), nullptr, 4, 4000000, 0), 6.06);
  // Chunks of 100 kB: max(1 s, 0.1 s + 10 ms) = 1 s per step; total 5 * 1 + 1.01.
  EXPECT_SECONDS(Ring(links.get(), nullptr, 4, 4000000, 100000), 6.01);
  // A chunk larger than the segment is the segment.
  EXPECT_SECONDS(Ring(links.get(), nullptr, 4, 4000000, 1 << 30), 6.06);
  // Latency-bound: 4 kB in 1 kB segments: max(1 ms, 1 ms + 10 ms) = 11 ms; 5 * 0.011 + 0.011.
  EXPECT_SECONDS(Ring(links.get(), nullptr, 4, 4000, 0), 0.066);
  // Segments round up: 10 bytes over 4 ranks is 3 bytes a step: 6 * (3e-6 + 0.01).
  EXPECT_SECONDS(Ring(links.get(), nullptr, 4, 10, 0), 6 * 0.010003);
  // Fewer ranks than devices: 2 ranks, 2 steps of 2 MB: 2.01 + 2.01.
  EXPECT_SECONDS(Ring(links.get(), nullptr, 2, 4000000, 0), 4.02);
}

TEST(CostModel, OneRankOrNoBytesCostsNothing) {
  LinksPtr links = Uniform(3, 0.05, 1e6);
  EXPECT_EQ(Ring(links.get(), nullptr, 1, 1 << 20, 0), 0.0);
  const int only_two[] = {2};
  EXPECT_EQ(Ring(links.get(), only_two, 1, 1 << 20, 0), 0.0);
  EXPECT_EQ(Ring(links.get(), nullptr, 3, 0, 0), 0.0);
}

// Three devices whose ring links all differ, and whose reverse links differ again.
LinksPtr Heterogeneous() {
  LinksPtr links = Uniform(3, 1.0, 1.0);  // the unused links are slow, so using one shows
  EXPECT_EQ(lh_links_set(links.get(), 0, 1, 0.001, 1e6), LH_SUCCESS);
  EXPECT_EQ(lh_links_set(links.get(), 1, 2, 0.005, 5e5), LH_SUCCESS);
  EXPECT_EQ(lh_links_set(links.get(), 2, 0, 0.002, 2e6), LH_SUCCESS);
  EXPECT_EQ(lh_links_set(links.get(), 0, 2, 0.003, 4e6), LH_SUCCESS);
  EXPECT_EQ(lh_links_set(links.get(), 2, 1, 0.004, 4e6), LH_SUCCESS);
  EXPECT_EQ(lh_links_set(links.get(), 1, 0, 0.006, 4e6), LH_SUCCESS);
  return links;
}

TEST(CostModel, HeterogeneousRingUsesTheSlowestLink) {
  LinksPtr links = Heterogeneous();
  // 3 MB in 1 MB segments, 4 steps. Links 0->1: max(1, 1.001); 1->2: max(2, 2.005);
  // 2->0: max(0.5, 0.502). Step 2.005 s; the last step's slowest link 1->2 takes 2 + 0.005.
  // 3 * 2.005 + 2.005.
  EXPECT_SECONDS(Ring(links.get(), nullptr, 3, 3000000, 0), 8.02);
  // Chunks of 250 kB: 1->2 is max(2, 0.5 + 0.005) = 2 s. 3 * 2 + 2.005.
  EXPECT_SECONDS(Ring(links.get(), nullptr, 3, 3000000, 250000), 8.005);
  // The other direction, 0 -> 2 -> 1 -> 0: links 0->2: max(0.25, 0.253); 2->1: max(0.25,
  // 0.254); 1->0: max(0.25, 0.256). Step 0.256 s, and so is the last. 4 * 0.256.
  const int reverse[] = {0, 2, 1};
  EXPECT_SECONDS(Ring(links.get(), reverse, 3, 3000000, 0), 1.024);
  // A rotation of the same ring costs the same.
  const int rotated[] = {2, 1, 0};
  EXPECT_SECONDS(Ring(links.get(), rotated, 3, 3000000, 0), 1.024);
}

TEST(CostModel, UplinkCapLimitsTheSendersLinks) {
  LinksPtr links = Heterogeneous();
  ASSERT_EQ(lh_links_set_uplink(links.get(), 1, 2.5e5), LH_SUCCESS);
  // 1 -> 2 now runs at min(5e5, 2.5e5): 1 MB takes 4 s.
  EXPECT_SECONDS(P2p(links.get(), 1, 2, 1000000), 4.005);
  EXPECT_SECONDS(P2p(links.get(), 2, 1, 1000000), 0.254);  // device 2's links are not capped
  EXPECT_SECONDS(Ring(links.get(), nullptr, 3, 3000000, 0), 4 * 4.005);
  // A cap above the link's bandwidth changes nothing.
  ASSERT_EQ(lh_links_set_uplink(links.get(), 1, 1e9), LH_SUCCESS);
  EXPECT_SECONDS(Ring(links.get(), nullptr, 3, 3000000, 0), 8.02);
}

void ExpectRefused(lh_status st, const char *words) {
  EXPECT_EQ(st, LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find(words), std::string::npos) << lh_last_error();
}

TEST(CostModel, RefusesBadArguments) {
  LinksPtr links = Uniform(4, 0.01, 1e6);
  double seconds;
  const int repeated[] = {0, 1, 1, 3};
  ExpectRefused(lh_model_ring_allreduce(links.get(), repeated, 4, 100, 0, &seconds), "ranks_in_order[2] is 1");
  const int outside[] = {0, 4};
  ExpectRefused(lh_model_ring_allreduce(links.get(), outside, 2, 100, 0, &seconds), "ranks_in_order[1] is 4");
  const int negative[] = {-1, 0};
  ExpectRefused(lh_model_ring_allreduce(links.get(), negative, 2, 100, 0, &seconds), "ranks_in_order[0] is -1");
  // A bad order is refused even when the answer would be 0.
  ExpectRefused(lh_model_ring_allreduce(links.get(), repeated, 4, 0, 0, &seconds), "ranks_in_order");
  ExpectRefused(lh_model_ring_allreduce(links.get(), nullptr, 0, 100, 0, &seconds), "ranks is 0");
  ExpectRefused(lh_model_ring_allreduce(links.get(), nullptr, 5, 100, 0, &seconds), "ranks is 5");
  ExpectRefused(lh_model_ring_allreduce(nullptr, nullptr, 2, 100, 0, &seconds), "links");
  ExpectRefused(lh_model_ring_allreduce(links.get(), nullptr, 2, 100, 0, nullptr), "seconds");
  ExpectRefused(lh_model_p2p(links.get(), 0, 4, 100, &seconds), "to is 4");
  ExpectRefused(lh_model_p2p(links.get(), -1, 0, 100, &seconds), "from is -1");
  ExpectRefused(lh_model_p2p(nullptr, 0, 1, 100, &seconds), "links");
  ExpectRefused(lh_model_p2p(links.get(), 0, 1, 100, nullptr), "seconds");
}

TEST(CostModel, ScenarioRingIsBandwidthBoundForLargeMessages) {
  // The worldwide scenario's ring in device order with 64 GiB in 1 MiB chunks: every step is
  // the slowest ring link's segment time; the last adds its link's latency.
  // ctest sets LONGHAUL_SOURCE_DIR; run by hand, the tree this file lies in (tests/unit/..) is used.
  const char *dir = std::getenv("LONGHAUL_SOURCE_DIR");
  std::string file = __FILE__, root = dir ? dir : file.substr(0, file.rfind("/tests/unit/"));
  std::string path = root + "/examples/links/scenarios/dtfm-5-worldwide.links";
  lh_links *raw = nullptr;
  ASSERT_EQ(lh_links_read_file(path.c_str(), &raw), LH_SUCCESS) << lh_last_error();
  LinksPtr links(raw);
  double slowest = 1e300, last = 0;
  const size_t bytes = size_t(64) << 30, segment = size_t(1) << 30;
  for (int k = 0; k < 64; k++) {
    double alpha, beta;
    ASSERT_EQ(lh_links_get(links.get(), k, (k + 1) % 64, &alpha, &beta), LH_SUCCESS);
    slowest = std::min(slowest, beta);
    last = std::max(last, segment / beta + alpha);
  }
  EXPECT_SECONDS(Ring(links.get(), nullptr, 64, bytes, 1 << 20), 125 * (segment / slowest) + last);
}

}  // namespace

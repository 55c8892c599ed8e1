// The probe recovers a heterogeneous link matrix from simulated links: every ordered pair of
// 4 ranks gets its own latency and bandwidth (three or more distinct values of each), and
// the probe must find each within 10%.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <set>
#include <string>

#include "mpi/mpi_test.h"

namespace {

// Configured link i -> j: latencies 5-40 ms and bandwidths 50-400 Mbit/s, not symmetric in
// bandwidth, symmetric in latency (a round trip cannot split latency between directions).
double configured_latency(int i, int j) {
  static const double ms[] = {5, 12, 25, 40, 18, 30};
  int a = i < j ? i : j, b = i < j ? j : i;
  return ms[(a * 3 + b) % 6] * 1e-3;
}
double configured_bandwidth(int i, int j) {
  static const double mbit[] = {50, 100, 200, 400, 150, 300, 75};
  return mbit[(i * 4 + j) % 7] * 1e6 / 8;
}

TEST(Probe, RecoversAHeterogeneousMatrix) {
  int me = lh_test_world_rank(), n = lh_test_world_size();
  char path[64] = "/tmp/lh_probe_test_XXXXXX";
  if (me == 0) {
    int fd = mkstemp(path);
    ASSERT_GE(fd, 0);
    close(fd);
    lh_links *links = nullptr;
    ASSERT_EQ(lh_links_create(n, 0.001, 1e6, &links), LH_SUCCESS);
    std::set<double> lat, bw;
    for (int i = 0; i < n; i++)
      for (int j = 0; j < n; j++)
        if (i != j) {
          lh_links_set(links, i, j, configured_latency(i, j), configured_bandwidth(i, j));
          lat.insert(configured_latency(i, j));
          bw.insert(configured_bandwidth(i, j));
        }
    EXPECT_GE(lat.size(), 3u);
    EXPECT_GE(bw.size(), 3u);
    ASSERT_EQ(lh_links_write_file(links, path), LH_SUCCESS) << lh_last_error();
    lh_links_free(links);
  }
  MPI_Bcast(path, sizeof path, MPI_CHAR, 0, MPI_COMM_WORLD);
  lh_comm_config cfg = LH_COMM_CONFIG_INIT;
  cfg.links_path = path;
  lh_comm c = nullptr;
  LH_ASSERT_OK(lh_comm_create(&cfg, &c));
  lh_probe_config pc = LH_PROBE_CONFIG_INIT;
  pc.small_reps = 4;
  pc.target_seconds = 0.12;
  pc.max_bytes = 16 << 20;
  lh_links *measured = nullptr;
  LH_ASSERT_OK(lh_probe_links(c, &pc, &measured));
  int devices = 0;
  lh_links_devices(measured, &devices);
  ASSERT_EQ(devices, n);
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) {
      if (i == j)
        continue;
      double lat, bw;
      LH_ASSERT_OK(lh_links_get(measured, i, j, &lat, &bw));
      EXPECT_NEAR(lat, configured_latency(i, j), 0.10 * configured_latency(i, j)) << i << "->" << j;
      EXPECT_NEAR(bw, configured_bandwidth(i, j), 0.10 * configured_bandwidth(i, j)) << i << "->" << j;
      if (me == 0)
        std::printf("  %d->%d latency %6.2f ms (configured %6.2f)  bandwidth %7.1f Mbit/s (configured %7.1f)\n", i,
                    j, lat * 1e3, configured_latency(i, j) * 1e3, bw * 8e-6, configured_bandwidth(i, j) * 8e-6);
    }
  // Every rank holds the same matrix, with host names as sites.
  const char *site = nullptr;
  double speed = 0;
  LH_ASSERT_OK(lh_links_get_device(measured, 0, &site, &speed));
  EXPECT_GT(std::string(site).size(), 0u);
  lh_links_free(measured);
  lh_comm_destroy(c);
  if (me == 0)
    std::remove(path);
}

TEST(Probe, RefusesBadConfigurations) {
  lh_comm_config cfg = LH_COMM_CONFIG_INIT;
  cfg.simulate = 0;
  lh_comm c = nullptr;
  LH_ASSERT_OK(lh_comm_create(&cfg, &c));
  lh_links *out = nullptr;
  lh_probe_config pc = LH_PROBE_CONFIG_INIT;
  pc.large_reps = 0;
  EXPECT_EQ(lh_probe_links(c, &pc, &out), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("large_reps"), std::string::npos);
  pc = LH_PROBE_CONFIG_INIT;
  pc.target_seconds = -1;
  EXPECT_EQ(lh_probe_links(c, &pc, &out), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_probe_links(c, nullptr, nullptr), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(out, nullptr);
  lh_comm_destroy(c);
}

}  // namespace

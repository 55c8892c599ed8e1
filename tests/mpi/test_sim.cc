// Simulated links: timings follow the alpha-beta link model of transport.md, link files give
// each pair its own link, an uplink cap is shared, and split communicators keep the links.
// All ranks share one monotonic clock, so a sender's time stamp is comparable on the receiver.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "mpi/mpi_test.h"

namespace {

// Lower bounds on arrival times are exact: nothing may arrive before its link allows. Upper
// bounds allow this much host scheduling on top of the model (a loaded or sanitized 2-core
// host runs four ranks): loose enough not to flake under load, tight enough that the ping-pong
// still catches its 20 ms latency charged twice.
constexpr double kSchedulingSlack = 0.010;

double now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

lh_comm make_comm(const char *bw, const char *lat, const char *links = nullptr) {
  lh_comm_config cfg = LH_COMM_CONFIG_INIT;
  cfg.sim_bandwidth = bw;
  cfg.sim_latency = lat;
  cfg.links_path = links;
  lh_comm c = nullptr;
  EXPECT_EQ(lh_comm_create(&cfg, &c), LH_SUCCESS) << lh_last_error();
  return c;
}

// Rank `from` sends `bytes` stamped with its post time; rank `to` returns the delay until its
// receive completed. Other ranks return -1.
double one_way(lh_comm c, int from, int to, size_t bytes) {
  int me;
  lh_comm_rank(c, &me);
  std::vector<double> buf(bytes / sizeof(double) + 1);
  size_t n = buf.size() * sizeof(double);
  double result = -1;
  if (me == from) {
    buf[0] = now();
    EXPECT_EQ(lh_send(c, buf.data(), n, to, 0), LH_SUCCESS) << lh_last_error();
  } else if (me == to) {
    EXPECT_EQ(lh_recv(c, buf.data(), n, from, 0), LH_SUCCESS) << lh_last_error();
    result = now() - buf[0];
  }
  EXPECT_EQ(lh_barrier(c), LH_SUCCESS);
  return result;
}

TEST(Sim, PingPongRecoversAlphaAndBeta) {
  lh_comm c = make_comm("100mbit", "20ms");
  int me;
  lh_comm_rank(c, &me);
  const double alpha = 0.020, beta = 100e6 / 8;
  for (size_t bytes : {(size_t)8, (size_t)100000, (size_t)1000000}) {
    double t = one_way(c, 0, 1, bytes);
    if (me == 1) {
      double model = alpha + (bytes / 8 + 1) * 8 / beta;
      EXPECT_GE(t, model * 0.999) << "arrived before the link allows, bytes=" << bytes;
      EXPECT_LE(t, model + kSchedulingSlack) << "bytes=" << bytes;
    }
  }
  lh_comm_destroy(c);
}

TEST(Sim, BackToBackMessagesQueueOnTheLink) {
  lh_comm c = make_comm("200mbit", "10ms");
  int me;
  lh_comm_rank(c, &me);
  const size_t bytes = 500000;
  std::vector<double> a(bytes / sizeof(double)), b(bytes / sizeof(double));
  ASSERT_EQ(lh_barrier(c), LH_SUCCESS);
  if (me == 0) {
    double start = now();
    a[0] = start;  // the receiver measures from the sender's clock: one clock for all ranks
    lh_request r[2];
    ASSERT_EQ(lh_isend(c, a.data(), bytes, 1, 1, &r[0]), LH_SUCCESS);
    ASSERT_EQ(lh_isend(c, b.data(), bytes, 1, 1, &r[1]), LH_SUCCESS);
    ASSERT_EQ(lh_waitall(2, r), LH_SUCCESS);
    // The send completes when its last byte leaves: two messages' worth of wire time.
    EXPECT_GE(now() - start, 2 * bytes / 25e6 * 0.999);
  } else if (me == 1) {
    ASSERT_EQ(lh_recv(c, a.data(), bytes, 0, 1), LH_SUCCESS);
    double first = now() - a[0];
    ASSERT_EQ(lh_recv(c, b.data(), bytes, 0, 1), LH_SUCCESS);
    double second = now() - a[0];
    EXPECT_GE(first, 0.010 + bytes / 25e6 * 0.999);
    EXPECT_GE(second, 0.010 + 2 * bytes / 25e6 * 0.999);
    // Upper bound generous for an oversubscribed machine; the lower bounds are the model.
    EXPECT_LE(second, (0.010 + 2 * bytes / 25e6) * 1.10 + kSchedulingSlack);
  }
  lh_comm_destroy(c);
}

std::string write_links(const char *text) {
  char path[] = "/tmp/lh_test_linksXXXXXX";
  int fd = mkstemp(path);
  EXPECT_GE(fd, 0);
  FILE *f = fdopen(fd, "w");
  fputs(text, f);
  fclose(f);
  return path;
}

// Distinct latency and bandwidth for every pair, from a link file; rank 0 writes it.
TEST(Sim, LinkFileGivesEachPairItsOwnLink) {
  int me = lh_test_world_rank(), n = lh_test_world_size();
  std::string path;
  char name[64] = {0};
  if (me == 0) {
    lh_links *links = nullptr;
    ASSERT_EQ(lh_links_create(n, 0.001, 1e6, &links), LH_SUCCESS);
    for (int i = 0; i < n; i++)
      for (int j = 0; j < n; j++)
        if (i != j)
          lh_links_set(links, i, j, 0.002 * (1 + i + 2 * j), 1e6 * (1 + j + 3 * i));
    path = write_links("");
    ASSERT_EQ(lh_links_write_file(links, path.c_str()), LH_SUCCESS) << lh_last_error();
    lh_links_free(links);
    std::snprintf(name, sizeof name, "%s", path.c_str());
  }
  MPI_Bcast(name, sizeof name, MPI_CHAR, 0, MPI_COMM_WORLD);
  lh_comm c = make_comm(nullptr, nullptr, name);
  const size_t bytes = 40000;
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) {
      if (i == j)
        continue;
      double t = one_way(c, i, j, bytes);
      if (me == j) {
        double model = 0.002 * (1 + i + 2 * j) + (bytes / 8 + 1) * 8 / (1e6 * (1 + j + 3 * i));
        EXPECT_GE(t, model * 0.999) << i << "->" << j;
        EXPECT_LE(t, model + kSchedulingSlack) << i << "->" << j;
      }
    }
  lh_link_stats s = LH_LINK_STATS_INIT;
  int peer = (me + 1) % n;
  ASSERT_EQ(lh_comm_link_stats(c, peer, &s), LH_SUCCESS);
  EXPECT_EQ(s.simulated, 1);
  EXPECT_DOUBLE_EQ(s.latency_s, 0.002 * (1 + me + 2 * peer));
  EXPECT_DOUBLE_EQ(s.bandwidth_Bps, 1e6 * (1 + peer + 3 * me));
  lh_comm_destroy(c);
  if (me == 0)
    std::remove(name);
}

TEST(Sim, UplinkCapIsShared) {
  int me = lh_test_world_rank(), n = lh_test_world_size();
  if (n < 3)
    GTEST_SKIP() << "needs three ranks: one sender, two receivers";
  char name[64] = {0};
  if (me == 0) {
    lh_links *links = nullptr;
    ASSERT_EQ(lh_links_create(n, 0.0, 100e6, &links), LH_SUCCESS);
    lh_links_set_uplink(links, 0, 10e6);  // rank 0's NIC: 10 MB/s shared by its links
    std::snprintf(name, sizeof name, "%s", write_links("").c_str());
    ASSERT_EQ(lh_links_write_file(links, name), LH_SUCCESS) << lh_last_error();
    lh_links_free(links);
  }
  MPI_Bcast(name, sizeof name, MPI_CHAR, 0, MPI_COMM_WORLD);
  lh_comm c = make_comm(nullptr, nullptr, name);
  const size_t bytes = 200000;
  std::vector<char> buf(bytes);
  double start = now();
  if (me == 0) {
    lh_request r[2];
    ASSERT_EQ(lh_isend(c, buf.data(), bytes, 1, 0, &r[0]), LH_SUCCESS);
    ASSERT_EQ(lh_isend(c, buf.data(), bytes, 2, 0, &r[1]), LH_SUCCESS);
    ASSERT_EQ(lh_waitall(2, r), LH_SUCCESS);
    EXPECT_GE(now() - start, 2 * bytes / 10e6 * 0.999) << "two sends through a 10 MB/s NIC";
  } else if (me <= 2) {
    ASSERT_EQ(lh_recv(c, buf.data(), bytes, 0, 0), LH_SUCCESS);
  }
  lh_barrier(c);
  lh_comm_destroy(c);
  if (me == 0)
    std::remove(name);
}

TEST(Sim, SplitCommunicatorsKeepTheParentsLinks) {
  int me = lh_test_world_rank(), n = lh_test_world_size();
  char name[64] = {0};
  if (me == 0) {
    lh_links *links = nullptr;
    ASSERT_EQ(lh_links_create(n, 0.001, 50e6, &links), LH_SUCCESS);
    lh_links_set(links, n - 1, 0, 0.030, 50e6);  // one slow pair
    std::snprintf(name, sizeof name, "%s", write_links("").c_str());
    ASSERT_EQ(lh_links_write_file(links, name), LH_SUCCESS);
    lh_links_free(links);
  }
  MPI_Bcast(name, sizeof name, MPI_CHAR, 0, MPI_COMM_WORLD);
  lh_comm c = make_comm(nullptr, nullptr, name);
  lh_comm ends = nullptr;
  bool member = me == 0 || me == n - 1;
  ASSERT_EQ(lh_comm_split(c, member ? 0 : -1, me == n - 1 ? 0 : 1, &ends), LH_SUCCESS);
  if (member) {
    // In the child, world rank n-1 is rank 0 and world rank 0 is rank 1.
    double t = one_way(ends, 0, 1, 8);
    if (me == 0) {
      EXPECT_GE(t, 0.030);
      EXPECT_LE(t, 0.030 + kSchedulingSlack);
    }
    lh_links *view = nullptr;
    ASSERT_EQ(lh_comm_links(ends, &view), LH_SUCCESS);
    double lat, bw;
    lh_links_get(view, 0, 1, &lat, &bw);
    EXPECT_DOUBLE_EQ(lat, 0.030);
    lh_links_free(view);
    lh_comm_destroy(ends);
  }
  lh_comm_destroy(c);
  if (me == 0)
    std::remove(name);
}

TEST(Sim, DescriptionAndRefusals) {
  lh_comm c = make_comm("100mbit", "20ms");
  int sim = 0;
  char text[128];
  ASSERT_EQ(lh_comm_simulation(c, &sim, text, sizeof text), LH_SUCCESS);
  EXPECT_EQ(sim, 1);
  EXPECT_NE(std::strstr(text, "100 Mbit/s"), nullptr) << text;
  EXPECT_NE(std::strstr(text, "20 ms"), nullptr) << text;
  lh_comm_destroy(c);
  // A link file together with a uniform setting is ambiguous.
  lh_comm_config cfg = LH_COMM_CONFIG_INIT;
  cfg.links_path = "/nonexistent.links";
  cfg.sim_bandwidth = "1gbit";
  lh_comm bad = nullptr;
  EXPECT_EQ(lh_comm_create(&cfg, &bad), LH_ERR_INVALID_ARGUMENT);
  cfg.sim_bandwidth = nullptr;
  EXPECT_EQ(lh_comm_create(&cfg, &bad), LH_ERR_IO);
  EXPECT_NE(std::strstr(lh_last_error(), "/nonexistent.links"), nullptr) << lh_last_error();
  cfg.links_path = nullptr;
  cfg.sim_bandwidth = "fast";
  EXPECT_EQ(lh_comm_create(&cfg, &bad), LH_ERR_ENV);
  EXPECT_EQ(bad, nullptr);
}

}  // namespace

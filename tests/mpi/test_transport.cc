// The transport over the mpi backend without simulation: messages of every size arrive
// intact and in order, collectives agree, splits work, and failures are reported, not hung.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "mpi/mpi_test.h"

namespace {

struct Comm {
  lh_comm c = nullptr;
  int rank = 0, size = 0;
  explicit Comm(size_t chunk = 0, int inflight = 0, double timeout = -1) {
    lh_comm_config cfg = LH_COMM_CONFIG_INIT;
    cfg.simulate = 0;
    cfg.chunk_bytes = chunk;
    cfg.max_inflight = inflight;
    cfg.timeout_s = timeout;
    EXPECT_EQ(lh_comm_create(&cfg, &c), LH_SUCCESS) << lh_last_error();
    lh_comm_rank(c, &rank);
    lh_comm_size(c, &size);
  }
  ~Comm() { lh_comm_destroy(c); }
};

std::vector<unsigned char> pattern(uint64_t seed, int from, int to, size_t bytes) {
  std::vector<unsigned char> v(bytes);
  for (size_t i = 0; i < bytes; i++)
    v[i] = (unsigned char)lh_test_hash(seed, (uint64_t)(from * 1000 + to), i);
  return v;
}

TEST(Transport, EveryPairEverySize) {
  Comm w(4096, 2);  // small chunks so that larger messages really are chunked
  const size_t sizes[] = {0, 1, 7, 4095, 4096, 4097, 3 * 4096 + 5, 100000};
  for (size_t bytes : sizes) {
    std::vector<lh_request> reqs;
    std::vector<std::vector<unsigned char>> in(w.size), out(w.size);
    for (int p = 0; p < w.size; p++) {
      out[p] = pattern(bytes, w.rank, p, bytes);
      in[p].assign(bytes, 0xEE);
      lh_request r;
      LH_ASSERT_OK(lh_irecv(w.c, in[p].data(), bytes, p, 5, &r));
      reqs.push_back(r);
      LH_ASSERT_OK(lh_isend(w.c, out[p].data(), bytes, p, 5, &r));
      reqs.push_back(r);
    }
    LH_ASSERT_OK(lh_waitall((int)reqs.size(), reqs.data()));
    for (lh_request r : reqs)
      EXPECT_EQ(r, nullptr);
    for (int p = 0; p < w.size; p++)
      EXPECT_EQ(in[p], pattern(bytes, p, w.rank, bytes)) << "bytes=" << bytes << " from " << p;
  }
}

TEST(Transport, ManyMessagesKeepTheirOrder) {
  Comm w(4096, 1);
  const int count = 40;
  int right = (w.rank + 1) % w.size, left = (w.rank - 1 + w.size) % w.size;
  std::vector<std::vector<unsigned char>> out(count), in(count);
  std::vector<lh_request> reqs;
  for (int m = 0; m < count; m++) {
    size_t bytes = (size_t)(m * 997) % 20000;
    out[m] = pattern(m, w.rank, right, bytes);
    in[m].assign(bytes, 0);
    lh_request r;
    LH_ASSERT_OK(lh_irecv(w.c, in[m].data(), bytes, left, m % 3, &r));
    reqs.push_back(r);
  }
  for (int m = 0; m < count; m++) {
    lh_request r;
    LH_ASSERT_OK(lh_isend(w.c, out[m].data(), out[m].size(), right, m % 3, &r));
    reqs.push_back(r);
  }
  LH_ASSERT_OK(lh_waitall((int)reqs.size(), reqs.data()));
  for (int m = 0; m < count; m++)
    EXPECT_EQ(in[m], pattern(m, left, w.rank, in[m].size())) << "message " << m;
}

TEST(Transport, TestPollsToCompletion) {
  Comm w;
  int right = (w.rank + 1) % w.size, left = (w.rank - 1 + w.size) % w.size;
  int out = w.rank * 11 + 3, in = -1;
  lh_request rr, rs;
  LH_ASSERT_OK(lh_irecv(w.c, &in, sizeof in, left, 1, &rr));
  LH_ASSERT_OK(lh_isend(w.c, &out, sizeof out, right, 1, &rs));
  int done_r = 0, done_s = 0;
  for (long spins = 0; (!done_r || !done_s) && spins < 100000000L; spins++) {
    if (!done_r) LH_ASSERT_OK(lh_test(&rr, &done_r));
    if (!done_s) LH_ASSERT_OK(lh_test(&rs, &done_s));
  }
  ASSERT_TRUE(done_r && done_s);
  EXPECT_EQ(rr, nullptr);
  EXPECT_EQ(in, left * 11 + 3);
}

TEST(Transport, BarrierAndBroadcastFromEveryRoot) {
  Comm w;
  LH_ASSERT_OK(lh_barrier(w.c));
  for (int root = 0; root < w.size; root++) {
    for (size_t bytes : {(size_t)0, (size_t)1, (size_t)3000, (size_t)(1 << 20) + 1}) {
      std::vector<unsigned char> buf = w.rank == root ? pattern(bytes, root, 0, bytes)
                                                      : std::vector<unsigned char>(bytes, 0);
      LH_ASSERT_OK(lh_bcast(w.c, buf.data(), bytes, root));
      EXPECT_EQ(buf, pattern(bytes, root, 0, bytes)) << "root " << root << " bytes " << bytes;
    }
  }
}

TEST(Transport, SplitByColorAndKey) {
  Comm w;
  lh_comm half = nullptr;
  // Two colors; key reverses the order inside each.
  LH_ASSERT_OK(lh_comm_split(w.c, w.rank % 2, -w.rank, &half));
  ASSERT_NE(half, nullptr);
  int r, n;
  lh_comm_rank(half, &r);
  lh_comm_size(half, &n);
  int expected_n = (w.size + 1 - w.rank % 2) / 2;
  EXPECT_EQ(n, expected_n);
  EXPECT_EQ(r, expected_n - 1 - w.rank / 2) << "ranks in a color are ordered by key (descending world rank)";
  // Exchange world ranks around the child ring.
  int right = (r + 1) % n, left = (r - 1 + n) % n, got = -1;
  lh_request reqs[2];
  LH_ASSERT_OK(lh_irecv(half, &got, sizeof got, left, 0, &reqs[0]));
  LH_ASSERT_OK(lh_isend(half, &w.rank, sizeof w.rank, right, 0, &reqs[1]));
  LH_ASSERT_OK(lh_waitall(2, reqs));
  EXPECT_EQ(got % 2, w.rank % 2);
  lh_comm none = reinterpret_cast<lh_comm>(1);
  LH_ASSERT_OK(lh_comm_split(w.c, w.rank == 0 ? -1 : 0, 0, &none));
  if (w.rank == 0)
    EXPECT_EQ(none, nullptr);
  else
    lh_comm_destroy(none);
  lh_comm_destroy(half);
}

TEST(Transport, SizeMismatchIsReportedNotCorrupted) {
  Comm w;
  if (w.rank < 2) {
    char buf[64] = {0};
    if (w.rank == 0) {
      LH_ASSERT_OK(lh_send(w.c, buf, 40, 1, 9));
    } else {
      lh_status st = lh_recv(w.c, buf, 48, 0, 9);
      EXPECT_EQ(st, LH_ERR_MISMATCH);
      EXPECT_NE(std::strstr(lh_last_error(), "rank 0 sent 40 bytes"), nullptr) << lh_last_error();
      // The communicator is now unusable, and says why.
      EXPECT_EQ(lh_send(w.c, buf, 1, 0, 0), LH_ERR_MISMATCH);
      EXPECT_NE(std::strstr(lh_last_error(), "earlier failure"), nullptr) << lh_last_error();
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(Transport, TimeoutNamesThePeer) {
  Comm w(0, 0, 0.3);
  if (w.rank == 0) {
    int x;
    double t0 = MPI_Wtime();
    lh_status st = lh_recv(w.c, &x, sizeof x, 1, 3);
    double waited = MPI_Wtime() - t0;
    EXPECT_EQ(st, LH_ERR_TIMEOUT);
    EXPECT_NE(std::strstr(lh_last_error(), "rank 1"), nullptr) << lh_last_error();
    EXPECT_GE(waited, 0.3);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(Transport, LinkStatsCountPayloadBytes) {
  Comm w;
  LH_ASSERT_OK(lh_comm_reset_stats(w.c));
  int right = (w.rank + 1) % w.size, left = (w.rank - 1 + w.size) % w.size;
  std::vector<char> out(12345, 1), in(12345);
  lh_request reqs[2];
  LH_ASSERT_OK(lh_irecv(w.c, in.data(), in.size(), left, 2, &reqs[0]));
  LH_ASSERT_OK(lh_isend(w.c, out.data(), out.size(), right, 2, &reqs[1]));
  LH_ASSERT_OK(lh_waitall(2, reqs));
  lh_link_stats s = LH_LINK_STATS_INIT;
  LH_ASSERT_OK(lh_comm_link_stats(w.c, right, &s));
  EXPECT_EQ(s.bytes_sent, right == left ? 12345u : 12345u);
  EXPECT_EQ(s.messages_sent, 1u);
  EXPECT_EQ(s.simulated, 0);
  LH_ASSERT_OK(lh_comm_link_stats(w.c, left, &s));
  EXPECT_EQ(s.bytes_received, 12345u);
}

TEST(Transport, HostNames) {
  Comm w;
  char name[64];
  LH_ASSERT_OK(lh_comm_host(w.c, w.size - 1, name, sizeof name));
  EXPECT_GT(std::strlen(name), 0u);
  int hosts = 0;
  LH_ASSERT_OK(lh_comm_host_count(w.c, &hosts));
  EXPECT_GE(hosts, 1);
  EXPECT_LE(hosts, w.size);
}

}  // namespace

namespace {
// LH_BIND is an optimisation: binding near a core works here, binding near a GPU cannot on a
// machine without one, and neither stops a communicator from being created.
TEST(Transport, BindingIsAWarningNotAFailure) {
  for (const char *policy : {"gpu", "nic", "core"}) {
    setenv("LH_BIND", policy, 1);
    lh_comm_config cfg = LH_COMM_CONFIG_INIT;
    cfg.simulate = 0;
    lh_comm c = nullptr;
    EXPECT_EQ(lh_comm_create(&cfg, &c), LH_SUCCESS) << policy << ": " << lh_last_error();
    EXPECT_EQ(lh_barrier(c), LH_SUCCESS);
    lh_comm_destroy(c);
  }
  unsetenv("LH_BIND");
}
}  // namespace

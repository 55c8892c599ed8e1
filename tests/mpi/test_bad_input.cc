// Every public entry point refuses bad input with a clear status and a detail naming what was
// wrong: NULL pointers, sizes and ranks out of range, unknown environment values, missing
// files, mismatched arguments across ranks. Nothing crashes or hangs.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "mpi/mpi_test.h"

namespace {

#define EXPECT_STATUS_MENTIONS(expr, status, word)                                   \
  do {                                                                               \
    lh_status s_ = (expr);                                                           \
    EXPECT_EQ(s_, status) << #expr << ": " << lh_status_string(s_);                  \
    EXPECT_NE(std::strstr(lh_last_error(), word), nullptr)                           \
        << #expr << " detail '" << lh_last_error() << "' does not mention " << word; \
  } while (0)

struct Comm {
  lh_comm c = nullptr;
  Comm() {
    lh_comm_config cfg = LH_COMM_CONFIG_INIT;
    cfg.simulate = 0;
    EXPECT_EQ(lh_comm_create(&cfg, &c), LH_SUCCESS) << lh_last_error();
  }
  ~Comm() { lh_comm_destroy(c); }
};

TEST(BadInput, CommunicatorCreation) {
  EXPECT_STATUS_MENTIONS(lh_comm_create(nullptr, nullptr), LH_ERR_INVALID_ARGUMENT, "comm");
  lh_comm c = nullptr;
  lh_comm_config cfg = LH_COMM_CONFIG_INIT;
  cfg.size = 16;
  EXPECT_STATUS_MENTIONS(lh_comm_create(&cfg, &c), LH_ERR_INVALID_ARGUMENT, "LH_COMM_CONFIG_INIT");
  cfg = LH_COMM_CONFIG_INIT;
  cfg.backend = (lh_backend)42;
  EXPECT_STATUS_MENTIONS(lh_comm_create(&cfg, &c), LH_ERR_INVALID_ARGUMENT, "backend");
  cfg = LH_COMM_CONFIG_INIT;
  cfg.timeout_s = 0;
  EXPECT_STATUS_MENTIONS(lh_comm_create(&cfg, &c), LH_ERR_INVALID_ARGUMENT, "timeout");
  cfg = LH_COMM_CONFIG_INIT;
  cfg.chunk_bytes = 100;
  EXPECT_STATUS_MENTIONS(lh_comm_create(&cfg, &c), LH_ERR_INVALID_ARGUMENT, "chunk_bytes");
  cfg = LH_COMM_CONFIG_INIT;
  cfg.max_inflight = -3;
  EXPECT_STATUS_MENTIONS(lh_comm_create(&cfg, &c), LH_ERR_INVALID_ARGUMENT, "max_inflight");
  EXPECT_EQ(c, nullptr);
}

TEST(BadInput, UnknownEnvironmentValues) {
  const char *cases[][2] = {{"LH_TIMEOUT_S", "forever"}, {"LH_SIM_BW", "100MB/s"}, {"LH_SIM_LAT", "soon"},
                            {"LH_BACKEND", "gloo"},      {"LH_CHUNK_BYTES", "lots"}};
  for (auto &kv : cases) {
    setenv(kv[0], kv[1], 1);
    lh_comm c = nullptr;
    EXPECT_STATUS_MENTIONS(lh_comm_create(nullptr, &c), LH_ERR_ENV, kv[0]);
    EXPECT_EQ(c, nullptr);
    unsetenv(kv[0]);
  }
  setenv("LH_LINKS", "/no/such/file.links", 1);
  lh_comm c = nullptr;
  EXPECT_STATUS_MENTIONS(lh_comm_create(nullptr, &c), LH_ERR_IO, "/no/such/file.links");
  unsetenv("LH_LINKS");
}

TEST(BadInput, PointToPoint) {
  Comm w;
  int rank = 0, size = 0;
  lh_comm_rank(w.c, &rank);
  lh_comm_size(w.c, &size);
  char buf[8];
  lh_request r = nullptr;
  EXPECT_STATUS_MENTIONS(lh_isend(nullptr, buf, 1, 0, 0, &r), LH_ERR_INVALID_ARGUMENT, "NULL");
  EXPECT_STATUS_MENTIONS(lh_isend(w.c, buf, 1, size, 0, &r), LH_ERR_INVALID_ARGUMENT, "peer");
  EXPECT_STATUS_MENTIONS(lh_irecv(w.c, buf, 1, -1, 0, &r), LH_ERR_INVALID_ARGUMENT, "peer");
  EXPECT_STATUS_MENTIONS(lh_isend(w.c, buf, 1, 0, -5, &r), LH_ERR_INVALID_ARGUMENT, "tag");
  EXPECT_STATUS_MENTIONS(lh_irecv(w.c, buf, 1, 0, LH_TAG_MAX + 1000, &r), LH_ERR_INVALID_ARGUMENT, "tag");
  EXPECT_STATUS_MENTIONS(lh_isend(w.c, nullptr, 8, 0, 0, &r), LH_ERR_INVALID_ARGUMENT, "NULL");
  EXPECT_STATUS_MENTIONS(lh_irecv(w.c, buf, 1, 0, 0, nullptr), LH_ERR_INVALID_ARGUMENT, "request");
  EXPECT_STATUS_MENTIONS(lh_isend(w.c, buf, (size_t)-1, 0, 0, &r), LH_ERR_INVALID_ARGUMENT, "plausible");
  EXPECT_EQ(r, nullptr);
  EXPECT_STATUS_MENTIONS(lh_wait(nullptr), LH_ERR_INVALID_ARGUMENT, "request");
  EXPECT_EQ(lh_wait(&r), LH_SUCCESS) << "a NULL request is complete";
  int done = 0;
  EXPECT_STATUS_MENTIONS(lh_test(&r, nullptr), LH_ERR_INVALID_ARGUMENT, "done");
  EXPECT_STATUS_MENTIONS(lh_waitall(-1, nullptr), LH_ERR_INVALID_ARGUMENT, "count");
  EXPECT_EQ(lh_test(&r, &done), LH_SUCCESS);
  EXPECT_EQ(done, 1);
}

TEST(BadInput, CollectivesAndQueries) {
  Comm w;
  int size = 0;
  lh_comm_size(w.c, &size);
  char buf[4];
  EXPECT_STATUS_MENTIONS(lh_bcast(w.c, buf, 4, size), LH_ERR_INVALID_ARGUMENT, "root");
  EXPECT_STATUS_MENTIONS(lh_bcast(w.c, nullptr, 4, 0), LH_ERR_INVALID_ARGUMENT, "NULL");
  EXPECT_STATUS_MENTIONS(lh_barrier(nullptr), LH_ERR_INVALID_ARGUMENT, "NULL");
  EXPECT_STATUS_MENTIONS(lh_comm_split(w.c, 0, 0, nullptr), LH_ERR_INVALID_ARGUMENT, "out");
  EXPECT_STATUS_MENTIONS(lh_comm_rank(w.c, nullptr), LH_ERR_INVALID_ARGUMENT, "NULL");
  char name[8];
  EXPECT_STATUS_MENTIONS(lh_comm_host(w.c, size, name, sizeof name), LH_ERR_INVALID_ARGUMENT, "rank");
  lh_link_stats s = LH_LINK_STATS_INIT;
  EXPECT_STATUS_MENTIONS(lh_comm_link_stats(w.c, -1, &s), LH_ERR_INVALID_ARGUMENT, "peer");
  s.size = 4;
  EXPECT_STATUS_MENTIONS(lh_comm_link_stats(w.c, 0, &s), LH_ERR_INVALID_ARGUMENT, "LH_LINK_STATS_INIT");
  lh_links *links = nullptr;
  EXPECT_STATUS_MENTIONS(lh_comm_links(w.c, &links), LH_ERR_NOT_SUPPORTED, "not simulated");
  EXPECT_EQ(lh_comm_destroy(nullptr), LH_SUCCESS) << "destroy accepts NULL";
}

TEST(BadInput, Allreduce) {
  Comm w;
  float x[4] = {1, 2, 3, 4};
  EXPECT_STATUS_MENTIONS(lh_allreduce(nullptr, x, x, 4, nullptr), LH_ERR_INVALID_ARGUMENT, "NULL");
  EXPECT_STATUS_MENTIONS(lh_allreduce(w.c, nullptr, x, 4, nullptr), LH_ERR_INVALID_ARGUMENT, "NULL");
  lh_allreduce_config cfg = LH_ALLREDUCE_CONFIG_INIT;
  cfg.algo = (lh_allreduce_algo)9;
  EXPECT_STATUS_MENTIONS(lh_allreduce(w.c, x, x, 4, &cfg), LH_ERR_INVALID_ARGUMENT, "algorithm");
  cfg = LH_ALLREDUCE_CONFIG_INIT;
  cfg.op = (lh_reduce_op)7;
  EXPECT_STATUS_MENTIONS(lh_allreduce(w.c, x, x, 4, &cfg), LH_ERR_INVALID_ARGUMENT, "op");
  cfg = LH_ALLREDUCE_CONFIG_INIT;
  cfg.size = 3;
  EXPECT_STATUS_MENTIONS(lh_allreduce(w.c, x, x, 4, &cfg), LH_ERR_INVALID_ARGUMENT, "LH_ALLREDUCE_CONFIG_INIT");
  cfg = LH_ALLREDUCE_CONFIG_INIT;
  cfg.chunk_bytes = 2;
  EXPECT_STATUS_MENTIONS(lh_allreduce(w.c, x, x, 4, &cfg), LH_ERR_INVALID_ARGUMENT, "chunk_bytes");
  // Ranks that disagree on the op are all told so, and the communicator stays usable.
  cfg = LH_ALLREDUCE_CONFIG_INIT;
  cfg.op = lh_test_world_rank() == 0 ? LH_OP_MEAN : LH_OP_SUM;
  EXPECT_STATUS_MENTIONS(lh_allreduce(w.c, x, x, 4, &cfg), LH_ERR_MISMATCH, "ops");
  EXPECT_EQ(lh_allreduce(w.c, x, x, 4, nullptr), LH_SUCCESS) << lh_last_error();
}

TEST(BadInput, ProbeAndLinks) {
  lh_links *links = nullptr;
  EXPECT_STATUS_MENTIONS(lh_probe_links(nullptr, nullptr, &links), LH_ERR_INVALID_ARGUMENT, "NULL");
  EXPECT_STATUS_MENTIONS(lh_links_read_file("/no/such.links", &links), LH_ERR_IO, "/no/such.links");
  EXPECT_STATUS_MENTIONS(lh_links_create(0, 0, 1, &links), LH_ERR_INVALID_ARGUMENT, "0");
  EXPECT_EQ(lh_links_free(nullptr), LH_SUCCESS);
}

}  // namespace

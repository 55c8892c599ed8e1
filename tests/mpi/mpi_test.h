// Helpers shared by the MPI tests.
#ifndef LH_TESTS_MPI_TEST_H
#define LH_TESTS_MPI_TEST_H

#include <cstdint>
#include <gtest/gtest.h>
#include <longhaul/longhaul.h>

int lh_test_world_rank();
int lh_test_world_size();

// Initialises MPI, calls setup(rank) when given (non-zero aborts), runs every test on every
// rank and returns the same verdict on all of them (tests/mpi/mpi_run.cc).
int lh_mpi_test_run(int argc, char **argv, int (*setup)(int rank));

// A value every rank can compute for any (seed, rank, index) without communicating:
// a splitmix64 hash mapped to a float in [-1, 1) with 20 significant bits, so that sums of a
// few of them are exact in float32 (order-independent) when a test wants exact answers.
inline uint64_t lh_test_hash(uint64_t seed, uint64_t rank, uint64_t index) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + rank * 0xBF58476D1CE4E5B9ull + index * 0x94D049BB133111EBull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
inline float lh_test_value(uint64_t seed, int rank, uint64_t index) {
  return (float)((int64_t)(lh_test_hash(seed, (uint64_t)rank, index) >> 44) - (1 << 19)) / (float)(1 << 19);
}

// A communicator over MPI_COMM_WORLD on real links (LH_SIM_* ignored), destroyed on scope
// exit. timeout_s < 0: LH_TIMEOUT_S or its default.
struct lh_test_world {
  lh_comm c = nullptr;
  int rank = 0, size = 0;
  explicit lh_test_world(double timeout_s = -1.0) {
    lh_comm_config cfg = LH_COMM_CONFIG_INIT;
    cfg.simulate = 0;
    cfg.timeout_s = timeout_s;
    EXPECT_EQ(lh_comm_create(&cfg, &c), LH_SUCCESS) << lh_last_error();
    lh_comm_rank(c, &rank);
    lh_comm_size(c, &size);
  }
  ~lh_test_world() { lh_comm_destroy(c); }
  lh_test_world(const lh_test_world &) = delete;
  lh_test_world &operator=(const lh_test_world &) = delete;
};

#define LH_ASSERT_OK(expr)                                                                  \
  do {                                                                                      \
    lh_status lh_s_ = (expr);                                                               \
    ASSERT_EQ(lh_s_, LH_SUCCESS) << #expr << ": " << lh_status_string(lh_s_) << ": "        \
                                 << lh_last_error();                                        \
  } while (0)

#endif

// The baseline ring all-reduce: exact sums for any count and rank count, bitwise identical
// results on every rank, repeatable bits, MPI_Allreduce agreement, and argument checks.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstring>
#include <vector>

#include <unistd.h>

#include "mpi/mpi_test.h"

namespace {

using World = lh_test_world;

// Inputs with 20 significant bits: sums over <= 8 ranks are exact in float32, so the
// expected result is known exactly whatever the order of summation.
std::vector<float> exact_input(uint64_t seed, int rank, size_t count) {
  std::vector<float> v(count);
  for (size_t i = 0; i < count; i++)
    v[i] = lh_test_value(seed, rank, i);
  return v;
}

float exact_sum(uint64_t seed, int ranks, size_t i) {
  float s = 0;
  for (int r = 0; r < ranks; r++)
    s += lh_test_value(seed, r, i);
  return s;
}

// Full-mantissa inputs, where the order of summation changes the last bits.
float rough_value(uint64_t seed, int rank, size_t i) {
  uint64_t h = lh_test_hash(seed, (uint64_t)rank, i);
  return (float)((double)(h >> 11) / 9007199254740992.0 * 2.0 - 1.0) * 1000.0f;
}
std::vector<float> rough_input(uint64_t seed, int rank, size_t count) {
  std::vector<float> v(count);
  for (size_t i = 0; i < count; i++)
    v[i] = rough_value(seed, rank, i);
  return v;
}

// Every rank's result hashed and compared across ranks: the outputs are bitwise identical.
void expect_identical_on_all_ranks(const std::vector<float> &out) {
  uint64_t h = 1469598103934665603ull;
  const unsigned char *p = reinterpret_cast<const unsigned char *>(out.data());
  for (size_t i = 0; i < out.size() * sizeof(float); i++)
    h = (h ^ p[i]) * 1099511628211ull;
  uint64_t lo = h, hi = h;
  MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  EXPECT_EQ(lo, hi) << "ranks ended with different bits";
}

const size_t kCounts[] = {0, 1, 2, 3, 4, 5, 6, 7, 97, 1000, 4099, 65537, (1u << 20) + 3};

TEST(Ring, ExactSumsForAnyCount) {
  World w;
  for (size_t count : kCounts) {
    for (size_t chunk : {(size_t)4, (size_t)64, (size_t)4096, (size_t)0}) {
      if ((chunk == 4 && count > 1000) || (chunk == 64 && count > 5000))
        continue;  // tiny chunks: too many messages for big counts
      lh_allreduce_config cfg = LH_ALLREDUCE_CONFIG_INIT;
      cfg.algo = LH_ALLREDUCE_RING;
      cfg.chunk_bytes = chunk;
      std::vector<float> in = exact_input(count, w.rank, count), out(count, NAN);
      LH_ASSERT_OK(lh_allreduce(w.c, in.data(), out.data(), count, &cfg));
      size_t wrong = 0;
      for (size_t i = 0; i < count; i++)
        wrong += out[i] != exact_sum(count, w.size, i);
      EXPECT_EQ(wrong, 0u) << "count " << count << " chunk " << chunk;
      EXPECT_EQ(in, exact_input(count, w.rank, count)) << "out-of-place must not touch sendbuf";
    }
  }
}

TEST(Ring, InPlaceAndMean) {
  World w;
  for (size_t count : {(size_t)1, (size_t)13, (size_t)100003}) {
    lh_allreduce_config cfg = LH_ALLREDUCE_CONFIG_INIT;
    cfg.op = LH_OP_MEAN;
    std::vector<float> buf = exact_input(7, w.rank, count);
    LH_ASSERT_OK(lh_allreduce(w.c, buf.data(), buf.data(), count, &cfg));
    size_t wrong = 0;
    for (size_t i = 0; i < count; i++)
      wrong += buf[i] != exact_sum(7, w.size, i) / (float)w.size;
    EXPECT_EQ(wrong, 0u) << "count " << count;
    expect_identical_on_all_ranks(buf);
  }
}

TEST(Ring, BitwiseIdenticalAcrossRanksAndRuns) {
  World w;
  const size_t count = 300007;
  std::vector<float> in = rough_input(11, w.rank, count), first(count), second(count);
  lh_allreduce_config cfg = LH_ALLREDUCE_CONFIG_INIT;
  cfg.chunk_bytes = 16384;
  LH_ASSERT_OK(lh_allreduce(w.c, in.data(), first.data(), count, &cfg));
  LH_ASSERT_OK(lh_allreduce(w.c, in.data(), second.data(), count, &cfg));
  expect_identical_on_all_ranks(first);
  EXPECT_EQ(0, std::memcmp(first.data(), second.data(), count * sizeof(float))) << "a second run gave other bits";
  // Close to the exact sum in double precision.
  double err = 0, norm = 0;
  for (size_t i = 0; i < count; i++) {
    double exact = 0;
    for (int r = 0; r < w.size; r++)
      exact += (double)rough_value(11, r, i);
    err += (first[i] - exact) * (first[i] - exact);
    norm += exact * exact;
  }
  EXPECT_LT(std::sqrt(err / norm), 1e-6);
}

TEST(Ring, AgreesWithMpiAllreduce) {
  World w;
  const size_t count = 77777;
  std::vector<float> in = exact_input(3, w.rank, count), ring(count), mpi(count);
  lh_allreduce_config cfg = LH_ALLREDUCE_CONFIG_INIT;
  cfg.algo = LH_ALLREDUCE_RING;
  LH_ASSERT_OK(lh_allreduce(w.c, in.data(), ring.data(), count, &cfg));
  cfg.algo = LH_ALLREDUCE_MPI;
  LH_ASSERT_OK(lh_allreduce(w.c, in.data(), mpi.data(), count, &cfg));
  EXPECT_EQ(ring, mpi);
}

TEST(Ring, MismatchedCountsFailOnEveryRank) {
  World w;
  if (w.size == 1)
    GTEST_SKIP() << "needs two ranks to disagree";
  std::vector<float> buf(100, 1.0f);
  size_t count = w.rank == 0 ? 50 : 100;
  lh_status st = lh_allreduce(w.c, buf.data(), buf.data(), count, nullptr);
  EXPECT_EQ(st, LH_ERR_MISMATCH);
  EXPECT_NE(std::strstr(lh_last_error(), "counts"), nullptr) << lh_last_error();
}

TEST(Ring, MpiAlgorithmRefusedOnSimulatedLinks) {
  lh_comm_config cc = LH_COMM_CONFIG_INIT;
  cc.sim_bandwidth = "1gbit";
  lh_comm c = nullptr;
  LH_ASSERT_OK(lh_comm_create(&cc, &c));
  float x = 1;
  lh_allreduce_config cfg = LH_ALLREDUCE_CONFIG_INIT;
  cfg.algo = LH_ALLREDUCE_MPI;
  EXPECT_EQ(lh_allreduce(c, &x, &x, 1, &cfg), LH_ERR_NOT_SUPPORTED);
  EXPECT_NE(std::strstr(lh_last_error(), "testbed"), nullptr) << lh_last_error();
  lh_comm_destroy(c);
}

TEST(Ring, AlgorithmNames) {
  lh_allreduce_algo a;
  LH_ASSERT_OK(lh_allreduce_algo_parse("RING", &a));
  EXPECT_EQ(a, LH_ALLREDUCE_RING);
  EXPECT_EQ(lh_allreduce_algo_parse("tree", &a), LH_ERR_INVALID_ARGUMENT);
  const char *name = nullptr;
  LH_ASSERT_OK(lh_allreduce_algo_name(LH_ALLREDUCE_MPI, &name));
  EXPECT_STREQ(name, "mpi");
}

}  // namespace

namespace {
TEST(Ring, ARankThatDoesNotJoinGivesATimeout) {
  lh_comm_config cc = LH_COMM_CONFIG_INIT;
  cc.simulate = 0;
  cc.timeout_s = 0.3;
  lh_comm c = nullptr;
  LH_ASSERT_OK(lh_comm_create(&cc, &c));
  int rank, size;
  lh_comm_rank(c, &rank);
  lh_comm_size(c, &size);
  float x = 1;
  if (size > 1 && rank != size - 1) {
    // The last rank stays away: the others give up after the timeout, naming the reason.
    EXPECT_EQ(lh_allreduce(c, &x, &x, 1, nullptr), LH_ERR_TIMEOUT);
    EXPECT_NE(std::strstr(lh_last_error(), "every rank"), nullptr) << lh_last_error();
  } else if (size > 1) {
    // It comes late, completes the argument check the others left behind (so MPI holds no
    // half-done collective at the end), and then times out in the ring: nobody answers.
    usleep(600000);
    EXPECT_EQ(lh_allreduce(c, &x, &x, 1, nullptr), LH_ERR_TIMEOUT) << lh_last_error();
  }
  MPI_Barrier(MPI_COMM_WORLD);
  lh_comm_destroy(c);
}

}  // namespace

// Checkpoints of a reducer's state: a run that saves, is rebuilt from the file, and goes on gives
// the very bits of the run that never stopped (error-feedback residuals and the step count
// carried); a damaged file is refused and leaves the reducer as it was.
#include "mpi_test.h"

#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr size_t kCount = 5000, kRows = 50;

// A directory every rank agrees on (made by rank 0), removed at the end.
struct SharedDir {
  std::string path;
  SharedDir() {
    char buf[256] = {0};
    if (lh_test_world_rank() == 0) {
      snprintf(buf, sizeof buf, "%s/lh_ckpt_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
      if (!mkdtemp(buf))
        buf[0] = 0;
    }
    MPI_Bcast(buf, sizeof buf, MPI_CHAR, 0, MPI_COMM_WORLD);
    path = buf;
  }
  ~SharedDir() {
    MPI_Barrier(MPI_COMM_WORLD);
    if (lh_test_world_rank() == 0 && !path.empty())
      (void)!system(("rm -rf '" + path + "'").c_str());
  }
  std::string File(const char *what) const {
    return path + "/" + what + "." + std::to_string(lh_test_world_rank());
  }
};

// Step s's two tensors (a matrix and a vector) from (seed, rank, index).
void Inputs(int step, std::vector<float> &a, std::vector<float> &b) {
  for (size_t i = 0; i < a.size(); i++)
    a[i] = lh_test_value(100 + (uint64_t)step, lh_test_world_rank(), i);
  for (size_t i = 0; i < b.size(); i++)
    b[i] = lh_test_value(200 + (uint64_t)step, lh_test_world_rank(), i);
}

void Step(lh_reducer r, int step, std::vector<float> &out) {
  std::vector<float> a(kCount), b(kCount / 10);
  Inputs(step, a, b);
  lh_tensor t[2] = {{sizeof(lh_tensor), 1, a.data(), a.size(), kRows}, {sizeof(lh_tensor), 2, b.data(), b.size(), 1}};
  ASSERT_EQ(lh_reducer_allreduce(r, t, 2), LH_SUCCESS) << lh_last_error();
  out.assign(a.begin(), a.end());
  out.insert(out.end(), b.begin(), b.end());
}

void CheckResumeIsExact(lh_allreduce_config cfg, const char *name) {
  lh_test_world world;
  SharedDir dir;
  ASSERT_FALSE(dir.path.empty());
  std::string file = dir.File(name);
  lh_reducer first = nullptr, second = nullptr;
  LH_ASSERT_OK(lh_reducer_create(world.c, &cfg, &first));
  std::vector<float> out;
  for (int s = 0; s < 3; s++)
    Step(first, s, out);
  LH_ASSERT_OK(lh_reducer_save(first, file.c_str()));
  std::vector<std::vector<float>> straight(3);
  for (int s = 3; s < 6; s++)
    Step(first, s, straight[s - 3]);
  LH_ASSERT_OK(lh_reducer_create(world.c, &cfg, &second));
  LH_ASSERT_OK(lh_reducer_load(second, file.c_str()));
  for (int s = 3; s < 6; s++) {
    Step(second, s, out);
    ASSERT_EQ(out.size(), straight[s - 3].size());
    EXPECT_EQ(0, memcmp(out.data(), straight[s - 3].data(), out.size() * sizeof(float)))
        << name << ": step " << s << " after the reload differs from the run that never stopped";
  }
  // Without the residuals the same steps differ (so the check above could fail).
  lh_reducer fresh = nullptr;
  LH_ASSERT_OK(lh_reducer_create(world.c, &cfg, &fresh));
  for (int s = 0; s < 3; s++) /* the step count alone */
    Step(fresh, 10 + s, out);
  LH_ASSERT_OK(lh_reducer_reset(fresh));
  Step(fresh, 3, out);
  EXPECT_NE(0, memcmp(out.data(), straight[0].data(), out.size() * sizeof(float))) << name;
  lh_reducer_free(fresh);
  lh_reducer_free(first);
  lh_reducer_free(second);
}

TEST(ReducerCheckpoint, Int4WithErrorFeedbackResumesBitForBit) {
  lh_allreduce_config cfg = LH_ALLREDUCE_CONFIG_INIT;
  cfg.codec = LH_CODEC_BLOCKQ;
  cfg.bits = 4;
  cfg.rounding = LH_ROUND_STOCHASTIC; // keyed by the step: the step count must come back too
  CheckResumeIsExact(cfg, "int4");
}

TEST(ReducerCheckpoint, PowerSgdResumesBitForBit) {
  lh_allreduce_config cfg = LH_ALLREDUCE_CONFIG_INIT;
  cfg.codec = LH_CODEC_POWERSGD;
  cfg.warmup_steps = 1;
  CheckResumeIsExact(cfg, "powersgd");
}

TEST(ReducerCheckpoint, ADamagedFileIsRefusedAndChangesNothing) {
  lh_test_world world;
  SharedDir dir;
  std::string file = dir.File("damaged");
  lh_allreduce_config cfg = LH_ALLREDUCE_CONFIG_INIT;
  cfg.codec = LH_CODEC_BLOCKQ;
  cfg.bits = 4;
  lh_reducer r = nullptr;
  LH_ASSERT_OK(lh_reducer_create(world.c, &cfg, &r));
  std::vector<float> out;
  Step(r, 0, out);
  LH_ASSERT_OK(lh_reducer_save(r, file.c_str()));
  const float *before = nullptr;
  size_t count = 0;
  LH_ASSERT_OK(lh_reducer_residual(r, 1, &before, &count));
  ASSERT_EQ(count, kCount);
  std::vector<float> kept(before, before + count);
  FILE *f = fopen(file.c_str(), "r+b");
  ASSERT_NE(f, nullptr);
  fseek(f, 200, SEEK_SET);
  int ch = fgetc(f);
  fseek(f, 200, SEEK_SET);
  fputc(ch ^ 1, f);
  fclose(f);
  EXPECT_EQ(lh_reducer_load(r, file.c_str()), LH_ERR_CORRUPT);
  EXPECT_NE(std::string(lh_last_error()).find("checksum"), std::string::npos) << lh_last_error();
  const float *after = nullptr;
  LH_ASSERT_OK(lh_reducer_residual(r, 1, &after, &count));
  ASSERT_EQ(count, kCount);
  EXPECT_EQ(0, memcmp(after, kept.data(), count * sizeof(float)));
  EXPECT_EQ(lh_reducer_load(r, dir.File("missing").c_str()), LH_ERR_IO);
  lh_reducer_free(r);
}

} // namespace

// Convergence of data-parallel training through the compressed all-reduce (issue 4).
//
// A softmax regression (weights 16 x 256, bias 16) is trained with mini-batch SGD on 4 ranks,
// each on its own shard of a deterministic data set, the gradients averaged by an lh_reducer
// (LH_OP_MEAN, both tensors in one bucket) with one codec per arm. The final loss over the whole
// training set (every rank's shard) is compared with the uncompressed arm's:
//   with error feedback: bf16 and int8 within 1%; int4, 1-bit sign, top-1% and PowerSGD rank 2
//   within 5%;
//   without error feedback (the negative controls): 1-bit sign at least 10% and top-1% at least
//   50% above their error-feedback arms, and both outside the 5% bound, so the comparison can
//   fail.
// Each arm also checks that every rank ends with the same parameter bits, one completed call per
// step, fewer bytes than the uncompressed ring for the lossy codecs, the algorithm AUTO picks,
// and (top-k) that a reduced bucket has no more nonzero entries than the density allows.
// Rank 0 prints a table of the arms: loss, ratio, algorithm, bytes per step.
//
// The data: x has 256 Gaussian features whose scales fall geometrically from 1 to 0.3; labels
// are drawn from the softmax of a teacher whose weights grow as the feature scale shrinks, so
// the faint features matter as much as the loud ones, while their gradients are small. Top-k
// without error feedback seldom sends them, and sign without it gets their steps wrong; error
// feedback carries what a step left out into the next ones.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "mpi/mpi_test.h"

namespace {

constexpr int kFeatures = 256;         // columns of the weight matrix
constexpr int kClasses = 16;           // rows of the weight matrix, length of the bias
constexpr int kShard = 2048;           // training samples per rank
constexpr int kBatch = 64;             // samples per rank per step
constexpr int kSteps = 400;            // SGD steps per arm
constexpr double kLearningRate = 1.0;  // fixed
constexpr double kMinScale = 0.3;      // the faintest feature's standard deviation
constexpr double kTeacherNorm = 7.0;   // teacher logits' spread: sets the loss floor
constexpr uint64_t kWeightKey = 1, kBiasKey = 2;
constexpr size_t kWeights = (size_t)kClasses * kFeatures;

using World = lh_test_world;

// A uniform double in (0, 1) and a standard normal, from (seed, rank, index).
double uniform(uint64_t seed, int rank, uint64_t index) {
  return ((double)(lh_test_hash(seed, (uint64_t)rank, index) >> 11) + 0.5) / 9007199254740992.0;
}
double normal(uint64_t seed, int rank, uint64_t index) {
  double u1 = uniform(seed, rank, 2 * index), u2 = uniform(seed, rank, 2 * index + 1);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

double feature_scale(int j) { return std::pow(kMinScale, (double)j / (kFeatures - 1)); }

// Logits of one sample (double), their max, and log-sum-exp.
double logits(const float *w, const float *b, const float *x, double *z) {
  double m = -INFINITY;
  for (int c = 0; c < kClasses; c++) {
    double a = b[c];
    const float *wc = w + (size_t)c * kFeatures;
    for (int j = 0; j < kFeatures; j++)
      a += (double)wc[j] * x[j];
    z[c] = a;
    m = std::max(m, a);
  }
  double s = 0;
  for (int c = 0; c < kClasses; c++)
    s += std::exp(z[c] - m);
  return m + std::log(s);
}

// This rank's shard: features and teacher-drawn labels. The teacher is the same on every rank.
struct Shard {
  std::vector<float> x;
  std::vector<int> y;
};

Shard make_shard(int rank) {
  std::vector<float> tw(kWeights), tb(kClasses);
  for (int c = 0; c < kClasses; c++) {
    tb[c] = (float)(0.5 * normal(3, 0, (uint64_t)c));
    for (int j = 0; j < kFeatures; j++)
      tw[(size_t)c * kFeatures + j] =
          (float)(kTeacherNorm / std::sqrt((double)kFeatures) * normal(4, c, (uint64_t)j) / feature_scale(j));
  }
  Shard s;
  s.x.resize((size_t)kShard * kFeatures);
  s.y.resize(kShard);
  double z[kClasses];
  for (int i = 0; i < kShard; i++) {
    float *x = &s.x[(size_t)i * kFeatures];
    for (int j = 0; j < kFeatures; j++)
      x[j] = (float)(feature_scale(j) * normal(1, rank, (uint64_t)i * kFeatures + j));
    double lse = logits(tw.data(), tb.data(), x, z);
    double u = uniform(2, rank, (uint64_t)i);  // label ~ softmax(teacher logits)
    int y = kClasses - 1;
    for (int c = 0; c < kClasses; c++) {
      u -= std::exp(z[c] - lse);
      if (u < 0) {
        y = c;
        break;
      }
    }
    s.y[i] = y;
  }
  return s;
}

// Mean cross-entropy over the samples idx[0..n) (all of the shard when idx is null) and, when
// gw is given, its gradient in gw (kWeights) and gb (kClasses).
double loss_and_grad(const Shard &s, const std::vector<float> &w, const std::vector<float> &b,
                     const int *idx, int n, float *gw, float *gb) {
  std::vector<double> aw(gw ? kWeights : 0, 0.0), ab(kClasses, 0.0);
  double z[kClasses], loss = 0;
  for (int k = 0; k < n; k++) {
    int i = idx ? idx[k] : k;
    const float *x = &s.x[(size_t)i * kFeatures];
    double lse = logits(w.data(), b.data(), x, z);
    loss += lse - z[s.y[i]];
    if (!gw)
      continue;
    for (int c = 0; c < kClasses; c++) {
      double p = std::exp(z[c] - lse) - (c == s.y[i] ? 1.0 : 0.0);
      ab[c] += p;
      double *row = &aw[(size_t)c * kFeatures];
      for (int j = 0; j < kFeatures; j++)
        row[j] += p * x[j];
    }
  }
  if (gw) {
    for (size_t i = 0; i < kWeights; i++)
      gw[i] = (float)(aw[i] / n);
    for (int c = 0; c < kClasses; c++)
      gb[c] = (float)(ab[c] / n);
  }
  return loss / n;
}

// The loss over every rank's shard, the same double on every rank (rank 0's sum, broadcast).
double global_loss(const Shard &s, const std::vector<float> &w, const std::vector<float> &b) {
  double local = loss_and_grad(s, w, b, nullptr, kShard, nullptr, nullptr) * kShard, sum = 0;
  int ranks = lh_test_world_size();
  MPI_Reduce(&local, &sum, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
  MPI_Bcast(&sum, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  return sum / ((double)kShard * ranks);
}

uint64_t fnv1a(const std::vector<float> &v, uint64_t h = 1469598103934665603ull) {
  const unsigned char *p = reinterpret_cast<const unsigned char *>(v.data());
  for (size_t i = 0; i < v.size() * sizeof(float); i++)
    h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

struct Arm {
  const char *name;
  lh_codec_id codec;
  int bits, block;
  double density;
  int error_feedback;  // the config field: 1 on, 0 off (NONE: left at the default)
  double bound;        // allowed |loss / uncompressed - 1| (0: not bounded, a control)
  bool overlap;        // lh_reducer_start, other work, lh_reducer_wait (else lh_reducer_allreduce)
};

const Arm kArms[] = {
    {"none", LH_CODEC_NONE, 0, 0, 0.0, -1, 0.0, false},
    {"bf16", LH_CODEC_BF16, 0, 0, 0.0, 1, 0.01, false},
    {"int8", LH_CODEC_BLOCKQ, 8, 0, 0.0, 1, 0.01, true},
    {"int4", LH_CODEC_BLOCKQ, 4, 0, 0.0, 1, 0.05, false},
    {"1-bit sign", LH_CODEC_SIGN, 0, 128, 0.0, 1, 0.05, true},
    {"top-1%", LH_CODEC_TOPK, 0, 0, 0.01, 1, 0.05, true},
    {"powersgd r2", LH_CODEC_POWERSGD, 0, 0, 0.0, 1, 0.05, false},
    {"1-bit sign", LH_CODEC_SIGN, 0, 128, 0.0, 0, 0.0, true},
    {"top-1%", LH_CODEC_TOPK, 0, 0, 0.01, 0, 0.0, false},
};
constexpr int kArmCount = (int)(sizeof kArms / sizeof kArms[0]);

struct Result {
  bool ran = false;                            // every call succeeded on every rank
  std::string error;                           // this rank's first failure
  double loss = NAN;                           // final loss over all ranks' data
  bool identical = false;                      // parameters bitwise identical on every rank
  unsigned long long calls = 0;                // completed reducer calls (fewest over ranks)
  double wire_per_step = 0, raw_per_step = 0;  // bytes sent per rank per step, mean over ranks
  lh_allreduce_algo algo = LH_ALLREDUCE_AUTO;  // rank 0's last algorithm
  size_t max_nonzero = 0;                      // most nonzero entries of a reduced bucket
  double seconds = 0;                          // wall time of the arm on rank 0
};

// Records the first failure of this rank and stops its training loop.
#define CONV_TRY(expr)                                                                          \
  do {                                                                                          \
    lh_status st_ = (expr);                                                                     \
    if (st_ != LH_SUCCESS) {                                                                    \
      if (r.error.empty())                                                                      \
        r.error = std::string(#expr) + ": " + lh_status_string(st_) + ": " + lh_last_error();  \
      ok = false;                                                                               \
    }                                                                                           \
  } while (0)

Result train(const World &world, const Shard &shard, const Arm &arm) {
  Result r;
  double t0 = MPI_Wtime();
  bool ok = true;
  lh_allreduce_config cfg = LH_ALLREDUCE_CONFIG_INIT;
  cfg.op = LH_OP_MEAN;
  cfg.codec = arm.codec;
  cfg.bits = arm.bits;
  cfg.block = arm.block;
  cfg.density = arm.density;
  cfg.powersgd_rank = arm.codec == LH_CODEC_POWERSGD ? 2 : 0;
  cfg.error_feedback = arm.error_feedback;
  cfg.seed = 42;
  lh_reducer red = nullptr;
  CONV_TRY(lh_reducer_create(world.c, &cfg, &red));

  std::vector<float> w(kWeights, 0.0f), b(kClasses, 0.0f), gw(kWeights), gb(kClasses);
  std::vector<int> idx(kBatch), next(kBatch);
  auto pick = [&](int step, std::vector<int> &out) {
    for (int k = 0; k < kBatch; k++)
      out[k] = (int)(lh_test_hash(5, (uint64_t)world.rank, (uint64_t)step * kBatch + k) % kShard);
  };
  pick(0, idx);
  const lh_tensor bucket[2] = {{sizeof(lh_tensor), kWeightKey, gw.data(), kWeights, (size_t)kClasses},
                               {sizeof(lh_tensor), kBiasKey, gb.data(), (size_t)kClasses, 0}};
  for (int step = 0; ok && step < kSteps; step++) {
    loss_and_grad(shard, w, b, idx.data(), kBatch, gw.data(), gb.data());
    if (arm.overlap) {
      CONV_TRY(lh_reducer_start(red, bucket, 2));
      pick(step + 1, next);  // work while the gradients are in flight (they are not touched)
      int done = -1;
      CONV_TRY(lh_reducer_test(red, &done));
      if (done != 0 && done != 1) {
        r.error = "lh_reducer_test gave done = " + std::to_string(done);
        ok = false;
      }
      CONV_TRY(lh_reducer_wait(red));
    } else {
      CONV_TRY(lh_reducer_allreduce(red, bucket, 2));
      pick(step + 1, next);
    }
    idx.swap(next);
    size_t nonzero = 0;
    for (float g : gw)
      nonzero += g != 0.0f;
    for (float g : gb)
      nonzero += g != 0.0f;
    r.max_nonzero = std::max(r.max_nonzero, nonzero);
    for (size_t i = 0; i < kWeights; i++)
      w[i] -= (float)kLearningRate * gw[i];
    for (int c = 0; c < kClasses; c++)
      b[c] -= (float)kLearningRate * gb[c];
  }
  lh_reducer_stats stats = LH_REDUCER_STATS_INIT;
  if (red)
    CONV_TRY(lh_reducer_get_stats(red, &stats));
  CONV_TRY(lh_reducer_free(red));

  int good = ok, all = 0;
  MPI_Allreduce(&good, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  r.ran = all != 0;
  r.loss = global_loss(shard, w, b);
  uint64_t h = fnv1a(b, fnv1a(w)), lo = h, hi = h;
  MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  r.identical = lo == hi;
  double bytes[2] = {(double)stats.wire_bytes, (double)stats.raw_bytes};
  MPI_Allreduce(MPI_IN_PLACE, bytes, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  r.wire_per_step = bytes[0] / world.size / kSteps;
  r.raw_per_step = bytes[1] / world.size / kSteps;
  unsigned long long calls = stats.calls;
  MPI_Allreduce(MPI_IN_PLACE, &calls, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, MPI_COMM_WORLD);
  r.calls = calls;
  unsigned long long nonzero = r.max_nonzero;
  MPI_Allreduce(MPI_IN_PLACE, &nonzero, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
  r.max_nonzero = (size_t)nonzero;
  int algo = (int)stats.last_algo;
  MPI_Bcast(&algo, 1, MPI_INT, 0, MPI_COMM_WORLD);
  r.algo = (lh_allreduce_algo)algo;
  r.seconds = MPI_Wtime() - t0;
  MPI_Bcast(&r.seconds, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  return r;
}
#undef CONV_TRY

std::string label(const Arm &a) {
  return std::string(a.name) + (a.codec == LH_CODEC_NONE ? "" : a.error_feedback ? " +EF" : " no EF");
}

// Top-k keeps a fraction `density` of what each rank sends: a reduced bucket has at most
// ranks x ceil(density x count) nonzero entries (the sum of every rank's picks; fewer when
// owners re-encode the sum), plus one per rank and segment for rounding.
size_t topk_nonzero_allowed(double density, int ranks) {
  size_t count = kWeights + kClasses;
  return (size_t)ranks * (size_t)std::ceil(density * (double)count) + (size_t)ranks * (size_t)ranks;
}

double initial_loss = NAN;

// Every arm, trained once per program (the first test that asks runs them all) and tabled on
// rank 0.
const std::vector<Result> &results() {
  static std::vector<Result> res;
  if (!res.empty())
    return res;
  World world;
  Shard shard = make_shard(world.rank);
  initial_loss = global_loss(shard, std::vector<float>(kWeights, 0.0f), std::vector<float>(kClasses, 0.0f));
  for (const Arm &arm : kArms) {
    res.push_back(train(world, shard, arm));
    if (!res.back().error.empty())
      std::fprintf(stderr, "[rank %d] %s: %s\n", world.rank, label(arm).c_str(), res.back().error.c_str());
  }
  if (world.rank == 0) {
    double base = res[0].loss;
    std::printf("\nsoftmax regression %dx%d + bias %d, %d ranks x %d samples, batch %d/rank, %d steps of SGD, lr %g\n",
                kClasses, kFeatures, kClasses, world.size, kShard, kBatch, kSteps, kLearningRate);
    std::printf("loss at the start %.4f (ln %d)\n", initial_loss, kClasses);
    std::printf("| %-20s | %-11s | %10s | %9s | %7s | %13s | %9s | %6s |\n", "codec", "algorithm", "final loss",
                "vs none", "bound", "wire B/step", "vs raw", "time s");
    std::printf("|%s|%s|%s|%s|%s|%s|%s|%s|\n", std::string(22, '-').c_str(), std::string(13, '-').c_str(),
                std::string(12, '-').c_str(), std::string(11, '-').c_str(), std::string(9, '-').c_str(),
                std::string(15, '-').c_str(), std::string(11, '-').c_str(), std::string(8, '-').c_str());
    for (int i = 0; i < kArmCount; i++) {
      const char *algo = "?";
      lh_allreduce_algo_name(res[i].algo, &algo);
      char bound[16] = "control";
      if (kArms[i].codec == LH_CODEC_NONE)
        std::snprintf(bound, sizeof bound, "-");
      else if (kArms[i].bound > 0)
        std::snprintf(bound, sizeof bound, "%.0f%%", kArms[i].bound * 100);
      std::printf("| %-20s | %-11s | %10.4f | %+8.2f%% | %7s | %13.0f | %8.2f%% | %6.2f |\n",
                  label(kArms[i]).c_str(), algo, res[i].loss, (res[i].loss / base - 1) * 100, bound,
                  res[i].wire_per_step, res[i].raw_per_step > 0 ? 100.0 * res[i].wire_per_step / res[i].raw_per_step : 0.0,
                  res[i].seconds);
    }
    std::printf("(wire B/step: bytes one rank sent per step, mean over ranks; vs raw: of what the uncompressed "
                "ring would send)\n");
    for (int i = 0; i < kArmCount; i++)
      if (kArms[i].codec == LH_CODEC_TOPK)
        std::printf("%s: at most %zu of %zu reduced gradient entries nonzero in a step (%.2f%%; %zu allowed)\n",
                    label(kArms[i]).c_str(), res[i].max_nonzero, kWeights + kClasses,
                    100.0 * (double)res[i].max_nonzero / (double)(kWeights + kClasses),
                    topk_nonzero_allowed(kArms[i].density, world.size));
    std::printf("\n");
    std::fflush(stdout);
  }
  return res;
}

int arm_index(lh_codec_id codec, int error_feedback) {
  for (int i = 0; i < kArmCount; i++)
    if (kArms[i].codec == codec && kArms[i].error_feedback == error_feedback)
      return i;
  return -1;
}

TEST(Convergence, EveryArmRunsAndKeepsRanksIdentical) {
  const std::vector<Result> &res = results();
  for (int i = 0; i < kArmCount; i++) {
    SCOPED_TRACE(label(kArms[i]));
    EXPECT_TRUE(res[i].ran) << "a reducer call failed (see the [rank N] lines)";
    EXPECT_TRUE(std::isfinite(res[i].loss)) << res[i].loss;
    EXPECT_TRUE(res[i].identical) << "ranks ended with different parameters";
    EXPECT_EQ(res[i].calls, (unsigned long long)kSteps) << "one completed call per step";
    if (kArms[i].codec == LH_CODEC_NONE)
      EXPECT_EQ(res[i].wire_per_step, res[i].raw_per_step) << "uncompressed sends what it counts as raw";
    else
      EXPECT_LT(res[i].wire_per_step, res[i].raw_per_step) << "a lossy codec must send fewer bytes than raw";
    // What AUTO picks, per allreduce.h.
    switch (kArms[i].codec) {
    case LH_CODEC_NONE: EXPECT_EQ(res[i].algo, LH_ALLREDUCE_RING); break;
    case LH_CODEC_BF16:
    case LH_CODEC_BLOCKQ: EXPECT_EQ(res[i].algo, LH_ALLREDUCE_QRING); break;
    case LH_CODEC_POWERSGD: EXPECT_EQ(res[i].algo, LH_ALLREDUCE_POWERSGD); break;
    default: EXPECT_TRUE(res[i].algo == LH_ALLREDUCE_OWNER || res[i].algo == LH_ALLREDUCE_ALLGATHER) << res[i].algo;
    }
  }
  // The uncompressed run learned something: otherwise "within x% of it" says little.
  EXPECT_LT(res[0].loss, 0.5 * initial_loss) << "the uncompressed baseline did not train";
}

TEST(Convergence, ErrorFeedbackMatchesUncompressedLoss) {
  const std::vector<Result> &res = results();
  const double base = res[0].loss;
  for (int i = 1; i < kArmCount; i++) {
    if (kArms[i].bound <= 0)
      continue;
    double ratio = res[i].loss / base;
    EXPECT_LE(std::fabs(ratio - 1.0), kArms[i].bound)
        << label(kArms[i]) << ": final loss " << res[i].loss << " vs uncompressed " << base << " ("
        << (ratio - 1) * 100 << "%, bound " << kArms[i].bound * 100 << "%)";
  }
}

// The negative controls: the same codecs without error feedback fall clearly behind, so the
// comparison above is able to fail.
TEST(Convergence, WithoutErrorFeedbackIsClearlyWorse) {
  const std::vector<Result> &res = results();
  const double base = res[0].loss;
  struct Control {
    lh_codec_id codec;
    double margin;  // the control's loss is at least (1 + margin) x the EF arm's
  } controls[] = {{LH_CODEC_SIGN, 0.10}, {LH_CODEC_TOPK, 0.50}};
  for (const Control &c : controls) {
    int with = arm_index(c.codec, 1), without = arm_index(c.codec, 0);
    ASSERT_GE(with, 0);
    ASSERT_GE(without, 0);
    SCOPED_TRACE(label(kArms[without]));
    EXPECT_GE(res[without].loss, (1.0 + c.margin) * res[with].loss)
        << "without error feedback " << res[without].loss << ", with " << res[with].loss;
    EXPECT_GT(res[without].loss / base - 1.0, kArms[with].bound)
        << "the control would pass the bound its error-feedback arm is held to";
  }
}

// The top-1% arms really send about 1%: what they are compared on is that codec, not a denser one.
TEST(Convergence, TopKArmsKeepTheirDensity) {
  const std::vector<Result> &res = results();
  for (int i = 0; i < kArmCount; i++) {
    if (kArms[i].codec != LH_CODEC_TOPK)
      continue;
    EXPECT_GT(res[i].max_nonzero, 0u) << label(kArms[i]);
    EXPECT_LE(res[i].max_nonzero, topk_nonzero_allowed(kArms[i].density, lh_test_world_size()))
        << label(kArms[i]) << ": a reduced bucket of " << kWeights + kClasses << " floats had "
        << res[i].max_nonzero << " nonzero entries with density " << kArms[i].density << " on "
        << lh_test_world_size() << " ranks";
  }
}

}  // namespace

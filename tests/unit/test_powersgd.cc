// PowerSGD (lib/compress/powersgd.c): the first Q, orthonormal P, exact recovery of low-rank
// matrices, degenerate inputs, warm start, payload layout and argument checks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include <longhaul/status.h>

#include "compress/payload.h"

#include "codec_inputs.h"

namespace {

using Matrix = std::vector<float>; // row-major

// a (rows x r) times b (cols x r) transposed, in double, rounded once.
Matrix Product(const Matrix &a, const Matrix &b, size_t rows, size_t cols, size_t r) {
  Matrix m(rows * cols);
  for (size_t i = 0; i < rows; i++)
    for (size_t j = 0; j < cols; j++) {
      double s = 0.0;
      for (size_t l = 0; l < r; l++)
        s += (double)a[i * r + l] * b[j * r + l];
      m[i * cols + j] = (float)s;
    }
  return m;
}

double FrobeniusDistance(const Matrix &a, const Matrix &b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); i++) {
    double d = (double)a[i] - b[i];
    s += d * d;
  }
  return std::sqrt(s);
}

double Frobenius(const Matrix &a) { return FrobeniusDistance(a, Matrix(a.size(), 0.0f)); }

bool AllFinite(const Matrix &m) {
  for (float v : m)
    if (!std::isfinite(v))
      return false;
  return true;
}

// One rank's codec state: the warm-started Q and the last payload.
struct Round {
  lh_powersgd_params p;
  Matrix q;
  std::vector<uint8_t> payload;

  Round(int rank, size_t rows, size_t cols, uint64_t seed) : p{rank, rows, cols} {
    q.resize(cols * rank);
    lh_rng_key key{seed, 0, 0};
    lh_powersgd_init_q(&p, &key, q.data());
    payload.resize(lh_powersgd_payload_bytes(&p));
  }
  // Encodes m and returns the decoded approximation.
  Matrix Step(const Matrix &m) {
    EXPECT_EQ(lh_powersgd_encode(&p, m.data(), q.data(), payload.data()), LH_SUCCESS)
        << lh_last_error();
    Matrix out(p.rows * p.cols, 99.0f);
    EXPECT_EQ(lh_powersgd_decode(&p, payload.data(), out.data(), 0), LH_SUCCESS);
    return out;
  }
  Matrix P() const {
    Matrix pm(p.rows * p.rank);
    std::memcpy(pm.data(), payload.data(), 4 * pm.size());
    return pm;
  }
  Matrix Q() const {
    Matrix qm(p.cols * p.rank);
    std::memcpy(qm.data(), payload.data() + 4 * p.rows * p.rank, 4 * qm.size());
    return qm;
  }
};

// max |P^T P - I| over the columns that are not zero (there are min(r, rows) of those).
double OrthonormalityError(const Matrix &pm, size_t rows, size_t r) {
  double worst = 0.0;
  for (size_t a = 0; a < r; a++)
    for (size_t b = 0; b < r; b++) {
      double s = 0.0;
      for (size_t k = 0; k < rows; k++)
        s += (double)pm[k * r + a] * pm[k * r + b];
      double expected = a == b && a < rows ? 1.0 : 0.0;
      worst = std::max(worst, std::fabs(s - expected));
    }
  return worst;
}

TEST(PowerSgd, PayloadBytes) {
  lh_powersgd_params p{3, 10, 7};
  EXPECT_EQ(lh_powersgd_payload_bytes(&p), (10u + 7u) * 3u * 4u);
  lh_powersgd_params bad[] = {{0, 10, 7}, {9, 10, 7}, {2, 0, 7}, {2, 10, 0}};
  for (const auto &b : bad)
    EXPECT_EQ(lh_powersgd_payload_bytes(&b), 0u);
  EXPECT_EQ(lh_powersgd_payload_bytes(nullptr), 0u);
}

TEST(PowerSgd, FirstQIsUniformFromTheSharedStream) {
  lh_powersgd_params p{4, 8, 300};
  lh_rng_key key{42, 7, 3}, other_rank{42, 7, 0}, other_step{42, 8, 3};
  Matrix q(300 * 4), q2(q.size()), q3(q.size());
  lh_powersgd_init_q(&p, &key, q.data());
  lh_powersgd_init_q(&p, &other_rank, q2.data());
  lh_powersgd_init_q(&p, &other_step, q3.data());
  EXPECT_EQ(q, q2); // every rank starts from the same Q
  EXPECT_NE(q, q3);
  lh_rng_key shared = key;
  shared.rank = LH_RNG_SHARED_RANK;
  double mean = 0.0;
  for (size_t i = 0; i < q.size(); i++) {
    ASSERT_GE(q[i], -1.0f);
    ASSERT_LT(q[i], 1.0f);
    ASSERT_EQ(q[i], 2.0f * lh_rng_unit(lh_rng_u32(&shared, i)) - 1.0f) << i;
    mean += q[i];
  }
  // Uniform on [-1, 1): sd 1/sqrt(3), so the mean of 1200 has sd 0.017.
  EXPECT_NEAR(mean / q.size(), 0.0, 0.1);
}

// M = A B^T of rank r. The first step's P = A (B^T Q) spans the range of M, but B^T Q is a
// random r x r matrix that can be ill-conditioned (condition 1e3 and more for r = 8), and the
// fp32 rounding of P is amplified by that much: a first step can be off by about 1e-3. The
// warm-started second step starts from Q = M^T P, well conditioned, and is exact to rounding.
TEST(PowerSgd, ExactLowRankMatrixIsRecovered) {
  const size_t rows = 64, cols = 48;
  for (uint32_t seed = 0; seed < 8; seed++)
    for (int r = 1; r <= 8; r++) {
      Matrix a = Gaussian(rows * r, 100 * seed + r), b = Gaussian(cols * r, 100 * seed + 50 + r);
      Matrix m = Product(a, b, rows, cols, r);
      Round round(r, rows, cols, seed);
      const double bound[] = {1e-2, 1e-4};
      for (int step = 0; step < 2; step++) {
        Matrix approx = round.Step(m);
        EXPECT_LT(FrobeniusDistance(approx, m), bound[step] * Frobenius(m))
            << "seed " << seed << " r " << r << " step " << step;
        EXPECT_LT(OrthonormalityError(round.P(), rows, r), 1e-5) << "r " << r;
        EXPECT_EQ(round.Q(), round.q); // the warm start is the Q that was sent
      }
    }
}

// Columns that are dependent, nearly dependent, zero, or unit vectors the replacement must
// avoid: the result is orthonormal all the same, without NaN.
TEST(PowerSgd, OrthonormalizeHandlesDependentColumns) {
  const size_t rows = 50;
  const int r = 7;
  lh_powersgd_params p{r, rows, 1};
  Matrix base = Gaussian(rows * 3, 70), pm(rows * r);
  for (size_t k = 0; k < rows; k++) {
    const float a = base[3 * k], b = base[3 * k + 1], c = base[3 * k + 2];
    float *row = &pm[k * r];
    row[0] = a;
    row[1] = 3.0f * a;          // dependent on column 0
    row[2] = a + 1e-4f * b;     // nearly dependent on column 0
    row[3] = 0.0f;              // vanished
    row[4] = b;
    row[5] = -2.0f * b + a;     // in the span of columns 0 and 4
    row[6] = a + b + 1e-4f * c; // nearly in the span of two columns: MGS in fp32 storage leaves
                                // rounding of column 0's projection that a second sweep removes
  }
  lh_powersgd_orthonormalize(&p, pm.data());
  EXPECT_TRUE(AllFinite(pm));
  EXPECT_LT(OrthonormalityError(pm, rows, r), 1e-5);

  // P = [e0, 0, e1] in 5 rows: the replacement of column 1 skips row 0 (e0 is taken) and uses
  // e1; column 2, then in the span, becomes e2.
  lh_powersgd_params small{3, 5, 1};
  Matrix units(5 * 3, 0.0f);
  units[0 * 3 + 0] = 1.0f;
  units[1 * 3 + 2] = 1.0f;
  lh_powersgd_orthonormalize(&small, units.data());
  Matrix expected(5 * 3, 0.0f);
  expected[0 * 3 + 0] = expected[1 * 3 + 1] = expected[2 * 3 + 2] = 1.0f;
  EXPECT_EQ(units, expected);
}

TEST(PowerSgd, ComputeStepsCompose) {
  const size_t rows = 20, cols = 30;
  const int r = 3;
  lh_powersgd_params p{r, rows, cols};
  Matrix m = Gaussian(rows * cols, 3), q(cols * r), pm(rows * r), q2(cols * r);
  lh_rng_key key{1, 2, 3};
  lh_powersgd_init_q(&p, &key, q.data());
  lh_powersgd_compute_p(&p, m.data(), q.data(), pm.data());
  // P = M Q, checked in double.
  for (size_t i = 0; i < rows; i++)
    for (int l = 0; l < r; l++) {
      double s = 0.0;
      for (size_t j = 0; j < cols; j++)
        s += (double)m[i * cols + j] * q[j * r + l];
      EXPECT_NEAR(pm[i * r + l], s, 1e-4 * (1.0 + std::fabs(s)));
    }
  lh_powersgd_orthonormalize(&p, pm.data());
  EXPECT_LT(OrthonormalityError(pm, rows, r), 1e-6);
  lh_powersgd_compute_q(&p, m.data(), pm.data(), q2.data());
  // Q = M^T P.
  for (size_t j = 0; j < cols; j++)
    for (int l = 0; l < r; l++) {
      double s = 0.0;
      for (size_t i = 0; i < rows; i++)
        s += (double)m[i * cols + j] * pm[i * r + l];
      EXPECT_NEAR(q2[j * r + l], s, 1e-4 * (1.0 + std::fabs(s)));
    }
  // The encoder is these three steps.
  Round round(r, rows, cols, 0);
  round.q = q;
  round.Step(m);
  EXPECT_EQ(round.P(), pm);
  EXPECT_EQ(round.q, q2);
}

TEST(PowerSgd, DegenerateInputsGiveNoNaN) {
  struct Shape {
    size_t rows, cols;
    int r;
  };
  // Square, wider than r, and r above rows, cols or both.
  const Shape shapes[] = {{16, 16, 4}, {3, 5, 8}, {10, 2, 4}, {1, 1, 8}, {2, 9, 3}, {1, 40, 2}};
  for (const Shape &s : shapes) {
    // The zero matrix: P gets unit columns, the decode is zero.
    Round zero(s.r, s.rows, s.cols, 1);
    Matrix approx = zero.Step(Matrix(s.rows * s.cols, 0.0f));
    EXPECT_TRUE(AllFinite(zero.P()));
    EXPECT_LT(OrthonormalityError(zero.P(), s.rows, s.r), 1e-6);
    EXPECT_EQ(approx, Matrix(s.rows * s.cols, 0.0f));
    // A rank-1 matrix with r > 1: the extra columns are dependent and get replaced.
    Matrix m1 = Product(Gaussian(s.rows, 2), Gaussian(s.cols, 3), s.rows, s.cols, 1);
    Round one(s.r, s.rows, s.cols, 1);
    approx = one.Step(m1);
    EXPECT_TRUE(AllFinite(approx));
    EXPECT_LT(OrthonormalityError(one.P(), s.rows, s.r), 1e-5);
    EXPECT_LT(FrobeniusDistance(approx, m1), 1e-5 * Frobenius(m1));
    // A full-rank matrix with r >= min(rows, cols) is captured whole.
    if ((size_t)s.r >= std::min(s.rows, s.cols)) {
      Matrix m = Gaussian(s.rows * s.cols, 4);
      Round all(s.r, s.rows, s.cols, 1);
      approx = all.Step(m);
      EXPECT_LT(OrthonormalityError(all.P(), s.rows, s.r), 1e-5);
      EXPECT_LT(FrobeniusDistance(approx, m), 1e-5 * Frobenius(m))
          << s.rows << " x " << s.cols << " r " << s.r;
    }
  }
}

// Low rank plus noise: one step from a random Q leaves the noise's pull in P; warm-started
// steps (subspace iteration) converge to the best rank-r approximation, whose error is at
// most the noise's norm (the signal itself is a rank-r candidate).
TEST(PowerSgd, WarmStartReducesTheError) {
  const size_t rows = 96, cols = 80;
  const int r = 2;
  Matrix u = Gaussian(rows * r, 30), v = Gaussian(cols * r, 31);
  for (size_t i = 0; i < cols; i++)
    v[i * r + 1] *= 0.6f; // distinct singular values
  Matrix signal = Product(u, v, rows, cols, r), noise = Gaussian(rows * cols, 32, 0.5f);
  Matrix m(rows * cols);
  for (size_t i = 0; i < m.size(); i++)
    m[i] = signal[i] + noise[i];
  Round round(r, rows, cols, 9);
  std::vector<double> errors;
  for (int step = 0; step < 6; step++)
    errors.push_back(FrobeniusDistance(round.Step(m), m));
  EXPECT_LT(errors.back(), errors.front());
  for (size_t s = 1; s < errors.size(); s++)
    EXPECT_LE(errors[s], errors[s - 1] * (1 + 1e-4)) << "step " << s;
  EXPECT_LE(errors.back(), Frobenius(noise));
}

TEST(PowerSgd, DecodeAccumulatesAndUnalignedPayloadsWork) {
  const size_t rows = 33, cols = 17;
  const int r = 3;
  Matrix m = Gaussian(rows * cols, 40);
  Round aligned(r, rows, cols, 2), shifted_round(r, rows, cols, 2);
  Matrix approx = aligned.Step(m);

  // The same round through a payload at an odd address.
  const lh_powersgd_params &p = aligned.p;
  std::vector<uint8_t> shifted(lh_powersgd_payload_bytes(&p) + 1);
  ASSERT_EQ(lh_powersgd_encode(&p, m.data(), shifted_round.q.data(), shifted.data() + 1),
            LH_SUCCESS);
  EXPECT_EQ(0, std::memcmp(shifted.data() + 1, aligned.payload.data(), aligned.payload.size()));
  Matrix from_shifted(rows * cols);
  ASSERT_EQ(lh_powersgd_decode(&p, shifted.data() + 1, from_shifted.data(), 0), LH_SUCCESS);
  EXPECT_EQ(from_shifted, approx);

  Matrix acc = Gaussian(rows * cols, 41), expected(acc.size());
  for (size_t i = 0; i < acc.size(); i++)
    expected[i] = acc[i] + approx[i];
  ASSERT_EQ(lh_powersgd_decode(&p, aligned.payload.data(), acc.data(), 1), LH_SUCCESS);
  for (size_t i = 0; i < acc.size(); i++)
    EXPECT_NEAR(acc[i], expected[i], 1e-5f * (1.0f + std::fabs(expected[i])));
}

TEST(PowerSgd, BadArgumentsAreRefused) {
  lh_powersgd_params p{2, 4, 4}, bad_rank{9, 4, 4}, zero_rank{0, 4, 4}, no_rows{2, 0, 4};
  Matrix m(16, 1.0f), q(8, 0.5f), out(16, 3.0f);
  std::vector<uint8_t> payload(lh_powersgd_payload_bytes(&p));
  for (const auto *b : {&bad_rank, &zero_rank, &no_rows}) {
    EXPECT_EQ(lh_powersgd_encode(b, m.data(), q.data(), payload.data()), LH_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(lh_powersgd_decode(b, payload.data(), out.data(), 0), LH_ERR_INVALID_ARGUMENT);
  }
  EXPECT_EQ(lh_powersgd_encode(nullptr, m.data(), q.data(), payload.data()),
            LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_powersgd_encode(&p, nullptr, q.data(), payload.data()), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_powersgd_encode(&p, m.data(), nullptr, payload.data()), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_powersgd_encode(&p, m.data(), q.data(), nullptr), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_powersgd_decode(&p, nullptr, out.data(), 0), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_powersgd_decode(&p, payload.data(), nullptr, 1), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(out, Matrix(16, 3.0f)); // refused: untouched
  EXPECT_EQ(q, Matrix(8, 0.5f));
}

} // namespace

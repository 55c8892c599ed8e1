// The public codec API (include/longhaul/compress.h): parameters and their bounds, frames end
// to end, refusals that leave the output alone, zstd, sums on the wire, and the quality
// checks every lossy codec must pass (error bounds, unbiased stochastic rounding, error
// feedback that keeps the running sum on track).
#include <gtest/gtest.h>

#include <longhaul/compress.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "codec_inputs.h"

namespace {

struct Codec {
  explicit Codec(lh_codec_id id) { EXPECT_EQ(lh_codec_create(id, &c), LH_SUCCESS); }
  ~Codec() { lh_codec_free(c); }
  Codec(const Codec &) = delete;
  Codec &operator=(const Codec &) = delete;
  void Set(lh_codec_param p, int v) { ASSERT_EQ(lh_codec_set_param(c, p, v), LH_SUCCESS) << lh_last_error(); }
  std::vector<uint8_t> Encode(const std::vector<float> &x) {
    std::vector<uint8_t> wire(lh_codec_max_wire_bytes(c, x.size()));
    size_t used = 0;
    lh_status st = lh_codec_encode(c, x.data(), x.size(), wire.data(), wire.size(), &used);
    EXPECT_EQ(st, LH_SUCCESS) << lh_last_error();
    wire.resize(st == LH_SUCCESS ? used : 0);
    return wire;
  }
  std::vector<float> Decode(const std::vector<uint8_t> &wire, size_t n) {
    std::vector<float> y(n, NAN);
    EXPECT_EQ(lh_codec_decode(c, wire.data(), wire.size(), y.data(), n), LH_SUCCESS) << lh_last_error();
    return y;
  }
  lh_codec *c = nullptr;
};

double Norm(const std::vector<float> &x) {
  double s = 0;
  for (float v : x)
    s += (double)v * v;
  return std::sqrt(s);
}

double RelErr(const std::vector<float> &x, const std::vector<float> &y) {
  double d = 0;
  for (size_t i = 0; i < x.size(); i++)
    d += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
  return std::sqrt(d) / Norm(x);
}

const lh_codec_id kAll[] = {LH_CODEC_NONE, LH_CODEC_FP16, LH_CODEC_BF16, LH_CODEC_BLOCKQ, LH_CODEC_SHAREDQ,
                            LH_CODEC_SIGN, LH_CODEC_TOPK, LH_CODEC_RANDK, LH_CODEC_POWERSGD};

// SHAREDQ needs agreed scales; with one rank they are its own.
void ShareScales(Codec &c, const std::vector<float> &x) {
  std::vector<float> s(lh_codec_scale_count(c.c, x.size()));
  ASSERT_EQ(lh_codec_local_scales(c.c, x.data(), x.size(), s.data()), LH_SUCCESS) << lh_last_error();
  ASSERT_EQ(lh_codec_set_scales(c.c, s.data(), s.size()), LH_SUCCESS) << lh_last_error();
}

TEST(Codec, NamesParseBack) {
  for (lh_codec_id id : kAll) {
    const char *name = nullptr;
    ASSERT_EQ(lh_codec_name(id, &name), LH_SUCCESS);
    lh_codec_id back;
    ASSERT_EQ(lh_codec_parse(name, &back), LH_SUCCESS);
    EXPECT_EQ(back, id);
  }
  lh_codec_id id;
  EXPECT_EQ(lh_codec_parse("int3", &id), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("unknown codec 'int3'"), std::string::npos);
  const char *name;
  EXPECT_EQ(lh_codec_name(LH_CODEC_COUNT, &name), LH_ERR_INVALID_ARGUMENT);
  for (int p = 0; p < LH_CP_COUNT; p++)
    EXPECT_EQ(lh_codec_param_name((lh_codec_param)p, &name), LH_SUCCESS);
}

TEST(Codec, BoundsAreEnforcedAndQueryable) {
  int lo, hi, def;
  ASSERT_EQ(lh_codec_param_bounds(LH_CODEC_BLOCKQ, LH_CP_BITS, &lo, &hi, &def), LH_SUCCESS);
  EXPECT_EQ(lo, 1);
  EXPECT_EQ(hi, 8);
  EXPECT_EQ(def, 8);
  ASSERT_EQ(lh_codec_param_bounds(LH_CODEC_SHAREDQ, LH_CP_BITS, &lo, nullptr, nullptr), LH_SUCCESS);
  EXPECT_EQ(lo, 2);
  ASSERT_EQ(lh_codec_param_bounds(LH_CODEC_BLOCKQ, LH_CP_BLOCK, nullptr, nullptr, &def), LH_SUCCESS);
  EXPECT_EQ(def, 128);
  EXPECT_EQ(lh_codec_param_bounds(LH_CODEC_FP16, LH_CP_BITS, &lo, &hi, &def), LH_ERR_NOT_SUPPORTED);
  EXPECT_EQ(lh_codec_param_bounds(LH_CODEC_NONE, LH_CP_ERROR_FEEDBACK, &lo, &hi, &def), LH_ERR_NOT_SUPPORTED);

  // Every codec: each parameter it takes accepts its bounds and refuses one past them.
  for (lh_codec_id id : kAll) {
    Codec c(id);
    for (int p = 0; p < LH_CP_COUNT; p++) {
      lh_status st = lh_codec_param_bounds(id, (lh_codec_param)p, &lo, &hi, &def);
      if (st == LH_ERR_NOT_SUPPORTED) {
        EXPECT_EQ(lh_codec_set_param(c.c, (lh_codec_param)p, 0), LH_ERR_NOT_SUPPORTED);
        continue;
      }
      ASSERT_EQ(st, LH_SUCCESS);
      int got;
      ASSERT_EQ(lh_codec_get_param(c.c, (lh_codec_param)p, &got), LH_SUCCESS);
      EXPECT_EQ(got, def) << "default of parameter " << p;
      EXPECT_EQ(lh_codec_set_param(c.c, (lh_codec_param)p, lo), LH_SUCCESS);
      EXPECT_EQ(lh_codec_set_param(c.c, (lh_codec_param)p, hi), LH_SUCCESS);
      EXPECT_EQ(lh_codec_set_param(c.c, (lh_codec_param)p, hi + 1), LH_ERR_INVALID_ARGUMENT);
      EXPECT_NE(std::string(lh_last_error()).find("out of range"), std::string::npos) << lh_last_error();
      EXPECT_EQ(lh_codec_set_param(c.c, (lh_codec_param)p, lo - 1), LH_ERR_INVALID_ARGUMENT);
    }
  }
}

TEST(Codec, FlagsSayWhatEachCodecPromises) {
  for (lh_codec_id id : kAll) {
    Codec c(id);
    unsigned f = lh_codec_flags(c.c);
    EXPECT_TRUE(f & LH_CODEC_F_DETERMINISTIC) << id;
    EXPECT_EQ((f & LH_CODEC_F_LOSSLESS) != 0, id == LH_CODEC_NONE) << id;
    EXPECT_EQ((f & LH_CODEC_F_SUMMABLE) != 0, id == LH_CODEC_FP16 || id == LH_CODEC_BF16 ||
                                                  id == LH_CODEC_SHAREDQ || id == LH_CODEC_RANDK) << id;
    EXPECT_EQ((f & LH_CODEC_F_SHARED_SCALE) != 0, id == LH_CODEC_SHAREDQ) << id;
    EXPECT_EQ((f & LH_CODEC_F_SHARED_SEED) != 0, id == LH_CODEC_RANDK || id == LH_CODEC_POWERSGD) << id;
    EXPECT_EQ(lh_codec_get_id(c.c), id);
  }
  Codec c(LH_CODEC_BLOCKQ);
  EXPECT_FALSE(lh_codec_flags(c.c) & LH_CODEC_F_STATEFUL);
  c.Set(LH_CP_ERROR_FEEDBACK, 1);
  EXPECT_TRUE(lh_codec_flags(c.c) & LH_CODEC_F_STATEFUL);
  lh_codec_free(nullptr);  // accepted
}

// Every codec round-trips every size, frames stay within max_wire_bytes, and the decode of a
// frame is the same whether into a fresh buffer or accumulated onto zeros.
TEST(Codec, EveryCodecEveryEdgeSize) {
  for (lh_codec_id id : kAll) {
    for (size_t n : {0, 1, 7, 8, 9, 127, 128, 129, 1000, 4097}) {
      Codec c(id);
      if (id == LH_CODEC_POWERSGD)
        c.Set(LH_CP_ROWS, n % 3 == 0 ? 3 : 1);
      auto x = Gaussian(n, 11 + (unsigned)n);
      if (id == LH_CODEC_SHAREDQ)
        ShareScales(c, x);
      auto wire = c.Encode(x);
      ASSERT_FALSE(wire.empty()) << "codec " << id << " n " << n;
      EXPECT_LE(wire.size(), lh_codec_max_wire_bytes(c.c, n));
      auto y = c.Decode(wire, n);
      std::vector<float> acc(n, 0.0f);
      ASSERT_EQ(lh_codec_decode_accumulate(c.c, wire.data(), wire.size(), acc.data(), n), LH_SUCCESS);
      for (size_t i = 0; i < n; i++) {
        ASSERT_TRUE(std::isfinite(y[i])) << "codec " << id << " n " << n << " element " << i;
        ASSERT_EQ(acc[i], y[i] + 0.0f) << "codec " << id << " n " << n << " element " << i;
      }
      if (id == LH_CODEC_NONE && n)
        EXPECT_EQ(std::memcmp(x.data(), y.data(), n * sizeof(float)), 0);
    }
  }
}

TEST(Codec, OneShotRoundTrip) {
  auto x = Gaussian(1000, 3);
  std::vector<float> y(1000);
  size_t wire = 0;
  ASSERT_EQ(lh_codec_roundtrip(LH_CODEC_BF16, x.data(), y.data(), 1000, &wire), LH_SUCCESS);
  EXPECT_EQ(wire, (size_t)LH_FRAME_HEADER_BYTES + 2000);
  EXPECT_LT(RelErr(x, y), 1.0 / 256);
}

TEST(Codec, RefusalsNameTheProblemAndLeaveOutputAlone) {
  Codec enc(LH_CODEC_BLOCKQ);
  enc.Set(LH_CP_BITS, 4);
  auto x = Gaussian(300, 5);
  auto wire = enc.Encode(x);
  const float poison = -12345.0f;
  auto refused = [&](lh_codec *dec, const std::vector<uint8_t> &w, size_t n, lh_status want,
                     const char *says) {
    std::vector<float> out(n, poison);
    EXPECT_EQ(lh_codec_decode(dec, w.data(), w.size(), out.data(), n), want) << says;
    EXPECT_NE(std::string(lh_last_error()).find(says), std::string::npos) << lh_last_error();
    EXPECT_EQ(lh_codec_decode_accumulate(dec, w.data(), w.size(), out.data(), n), want) << says;
    for (float v : out)
      ASSERT_EQ(v, poison) << "refused frame wrote output (" << says << ")";
  };
  // Other parameters, another codec, another element count.
  Codec other_bits(LH_CODEC_BLOCKQ);
  other_bits.Set(LH_CP_BITS, 8);
  refused(other_bits.c, wire, 300, LH_ERR_MISMATCH, "bits = 4");
  Codec other_codec(LH_CODEC_SIGN);
  refused(other_codec.c, wire, 300, LH_ERR_MISMATCH, "codec blockq");
  refused(enc.c, wire, 100, LH_ERR_MISMATCH, "300 elements, the caller's buffer has 100");
  refused(enc.c, wire, 301, LH_ERR_MISMATCH, "300 elements");
  // Damage.
  auto cut = wire;
  cut.resize(cut.size() - 1);
  refused(enc.c, cut, 300, LH_ERR_CORRUPT, "truncated");
  auto flipped = wire;
  flipped[100] ^= 0x10;
  refused(enc.c, flipped, 300, LH_ERR_CORRUPT, "checksum");
  std::vector<uint8_t> junk(200, 0x42);
  refused(enc.c, junk, 300, LH_ERR_CORRUPT, "magic");
}

TEST(Codec, EncodeRefusesBadInputWithoutWriting) {
  for (lh_codec_id id : {LH_CODEC_FP16, LH_CODEC_BLOCKQ, LH_CODEC_SIGN, LH_CODEC_TOPK, LH_CODEC_RANDK,
                         LH_CODEC_POWERSGD}) {
    Codec c(id);
    c.Set(LH_CP_ERROR_FEEDBACK, 1);
    auto x = Gaussian(256, 9);
    x[77] = NAN;
    std::vector<uint8_t> wire(lh_codec_max_wire_bytes(c.c, x.size()), 0xEE);
    size_t used = 7;
    EXPECT_EQ(lh_codec_encode(c.c, x.data(), x.size(), wire.data(), wire.size(), &used),
              LH_ERR_INVALID_ARGUMENT) << id;
    EXPECT_NE(std::string(lh_last_error()).find("77"), std::string::npos) << id << ": " << lh_last_error();
    EXPECT_EQ(used, 0u);
    for (uint8_t b : wire)
      ASSERT_EQ(b, 0xEE) << "codec " << id << " wrote a frame for refused input";
    const float *e;
    size_t en;
    ASSERT_EQ(lh_codec_residual(c.c, &e, &en), LH_SUCCESS);
    for (size_t i = 0; i < en; i++)
      ASSERT_EQ(e[i], 0.0f) << "codec " << id << " changed the residual on refusal";
  }
  Codec c(LH_CODEC_BLOCKQ);
  auto x = Gaussian(100, 1);
  std::vector<uint8_t> small(lh_codec_max_wire_bytes(c.c, 100) - 1);
  size_t used;
  EXPECT_EQ(lh_codec_encode(c.c, x.data(), 100, small.data(), small.size(), &used), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("lh_codec_max_wire_bytes"), std::string::npos);
  Codec psgd(LH_CODEC_POWERSGD);
  psgd.Set(LH_CP_ROWS, 7);
  EXPECT_EQ(lh_codec_max_wire_bytes(psgd.c, 100), 0u);
  EXPECT_EQ(lh_codec_encode(psgd.c, x.data(), 100, small.data(), small.size(), &used), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("not a matrix of 7 rows"), std::string::npos) << lh_last_error();
  Codec sq(LH_CODEC_SHAREDQ);
  std::vector<uint8_t> w(lh_codec_max_wire_bytes(sq.c, 100));
  EXPECT_EQ(lh_codec_encode(sq.c, x.data(), 100, w.data(), w.size(), &used), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("lh_codec_set_scales"), std::string::npos) << lh_last_error();
}

// zstd shrinks low-entropy payloads and gives back exactly the same decode; an incompressible
// payload goes uncompressed rather than growing.
TEST(Codec, ZstdStageIsLosslessOnThePayload) {
  std::vector<float> x(1 << 16);
  for (size_t i = 0; i < x.size(); i++)
    x[i] = (i % 512 < 480) ? 0.0f : std::sin((float)i);  // mostly zero blocks: low entropy codes
  for (lh_codec_id id : {LH_CODEC_NONE, LH_CODEC_BF16, LH_CODEC_BLOCKQ, LH_CODEC_SIGN}) {
    Codec plain(id), packed(id);
    packed.Set(LH_CP_ZSTD_LEVEL, 3);
    auto a = plain.Encode(x), b = packed.Encode(x);
    EXPECT_LT(b.size(), a.size() / 2) << "codec " << id;
    auto ya = plain.Decode(a, x.size()), yb = packed.Decode(b, x.size());
    EXPECT_EQ(std::memcmp(ya.data(), yb.data(), x.size() * 4), 0) << "codec " << id;
    // The plain context refuses nothing about zstd: the frame says it is compressed.
    auto yc = plain.Decode(b, x.size());
    EXPECT_EQ(std::memcmp(ya.data(), yc.data(), x.size() * 4), 0) << "codec " << id;
  }
  Codec packed(LH_CODEC_NONE);
  packed.Set(LH_CP_ZSTD_LEVEL, 19);
  auto noise = Gaussian(4096, 8);
  auto w = packed.Encode(noise);
  EXPECT_LE(w.size(), (size_t)LH_FRAME_HEADER_BYTES + 4096 * 4) << "incompressible payload grew";
}

TEST(Codec, SharedScaleCodesSumExactlyOnTheWire) {
  const int ranks = 4;
  const size_t n = 1000;
  std::vector<std::vector<float>> xs;
  std::vector<float> scales;
  for (int r = 0; r < ranks; r++) {
    xs.push_back(Gaussian(n, 100 + r));
    Codec c(LH_CODEC_SHAREDQ);
    std::vector<float> local(lh_codec_scale_count(c.c, n));
    ASSERT_EQ(lh_codec_local_scales(c.c, xs[r].data(), n, local.data()), LH_SUCCESS);
    if (scales.empty())
      scales = local;
    for (size_t b = 0; b < local.size(); b++)
      scales[b] = std::max(scales[b], local[b]);  // the max-all-reduce
  }
  std::vector<uint8_t> sum;
  std::vector<float> decoded_sum(n, 0.0f);
  Codec c(LH_CODEC_SHAREDQ);
  c.Set(LH_CP_BITS, 4);
  c.Set(LH_CP_RANKS, ranks);
  ASSERT_EQ(lh_codec_set_scales(c.c, scales.data(), scales.size()), LH_SUCCESS);
  for (int r = 0; r < ranks; r++) {
    auto w = c.Encode(xs[r]);
    ASSERT_EQ(lh_codec_decode_accumulate(c.c, w.data(), w.size(), decoded_sum.data(), n), LH_SUCCESS);
    if (sum.empty()) {
      sum = w;
      sum.resize(lh_codec_max_wire_bytes(c.c, n));
      continue;
    }
    size_t bytes = w.size();
    ASSERT_EQ(lh_codec_sum_wire(c.c, sum.data(), sum.size(), &bytes, w.data(), w.size()), LH_SUCCESS)
        << lh_last_error();
  }
  sum.resize(lh_codec_max_wire_bytes(c.c, n));
  auto y = c.Decode(sum, n);
  // Integer codes add exactly, so decoding the sum equals summing the decodes up to the float
  // rounding of the per-rank additions: (2c) * step is exact for each rank.
  std::vector<float> truth(n, 0.0f);
  for (int r = 0; r < ranks; r++)
    for (size_t i = 0; i < n; i++)
      truth[i] += xs[r][i];
  for (size_t i = 0; i < n; i++)
    EXPECT_NEAR(y[i], decoded_sum[i], 1e-5f * (1 + std::fabs(decoded_sum[i]))) << i;
  EXPECT_LT(RelErr(truth, y), 0.2) << "4-bit shared-scale sum of 4 ranks";

  Codec topk(LH_CODEC_TOPK);
  size_t bytes = sum.size();
  EXPECT_EQ(lh_codec_sum_wire(topk.c, sum.data(), sum.size(), &bytes, sum.data(), sum.size()),
            LH_ERR_NOT_SUPPORTED);
}

TEST(Codec, RandomKSumsOnTheWireWithASharedSeed) {
  const size_t n = 10000;
  Codec a(LH_CODEC_RANDK), b(LH_CODEC_RANDK);
  ASSERT_EQ(lh_codec_set_key(a.c, 77, 5, 0), LH_SUCCESS);
  ASSERT_EQ(lh_codec_set_key(b.c, 77, 5, 1), LH_SUCCESS);  // another rank, same seed and step
  auto xa = Gaussian(n, 1), xb = Gaussian(n, 2);
  auto wa = a.Encode(xa), wb = b.Encode(xb);
  wa.resize(lh_codec_max_wire_bytes(a.c, n));
  size_t bytes = wb.size();
  ASSERT_EQ(lh_codec_sum_wire(a.c, wa.data(), wa.size(), &bytes, wb.data(), wb.size()), LH_SUCCESS)
      << lh_last_error();
  auto y = a.Decode(wa, n);
  auto ya = a.Decode(a.Encode(xa), n), yb = b.Decode(wb, n);
  for (size_t i = 0; i < n; i++)
    ASSERT_EQ(y[i], ya[i] + yb[i]) << i;
  // Another seed makes other choices: the frames cannot be summed.
  Codec c(LH_CODEC_RANDK);
  ASSERT_EQ(lh_codec_set_key(c.c, 78, 5, 0), LH_SUCCESS);
  auto wc = c.Encode(xa);
  bytes = wc.size();
  EXPECT_EQ(lh_codec_sum_wire(a.c, wa.data(), wa.size(), &bytes, wc.data(), wc.size()), LH_ERR_MISMATCH);
}

// ---- quality ----------------------------------------------------------------------------

struct Quality {
  const char *what;
  lh_codec_id id;
  std::vector<std::pair<lh_codec_param, int>> params;
  double max_relerr;  // on N(0, 1) input, 2^16 elements
};

// The bounds, and where they come from (block 128, Gaussian input, max |x| of a block about
// 2.6-3.2 sigma): round to nearest on a grid of step D = 2s/M errs uniformly by up to D/2, so
// relerr ~ (2 * 3 / M) / sqrt(12) = 1.73 / M; the bounds add about 15% margin. fp16 and bf16
// round with relative error at most 2^-11 and 2^-8. Sign with a mean-|x| scale errs by
// sqrt(1 - 2/pi) = 0.603 of the norm. Two bits leave the levels -s, 0, s, where the grid
// argument no longer holds (measured 0.77); one bit turns every element into +-s, an error of
// about s - |x| (measured 2.16). Top-k keeping 1% of a Gaussian keeps about 8% of its energy
// (sqrt(0.92) = 0.96), 10% keeps 44% (0.75); random-k keeps 1% (sqrt(0.99)).
const Quality kQuality[] = {
    {"fp16", LH_CODEC_FP16, {}, 0.00049},
    {"bf16", LH_CODEC_BF16, {}, 0.0039},
    {"blockq b8", LH_CODEC_BLOCKQ, {{LH_CP_BITS, 8}}, 2.0 / 254},
    {"blockq b8 fp16 scale", LH_CODEC_BLOCKQ, {{LH_CP_BITS, 8}, {LH_CP_SCALE_TYPE, LH_SCALE_FP16}}, 2.0 / 254},
    {"blockq b4", LH_CODEC_BLOCKQ, {{LH_CP_BITS, 4}}, 2.0 / 14},
    {"blockq b4 stochastic", LH_CODEC_BLOCKQ, {{LH_CP_BITS, 4}, {LH_CP_ROUNDING, LH_ROUND_STOCHASTIC}}, 3.5 / 14},
    {"blockq b3", LH_CODEC_BLOCKQ, {{LH_CP_BITS, 3}}, 2.0 / 6},
    {"blockq b2", LH_CODEC_BLOCKQ, {{LH_CP_BITS, 2}}, 0.85},
    {"blockq b1", LH_CODEC_BLOCKQ, {{LH_CP_BITS, 1}}, 2.4},
    {"sharedq b8", LH_CODEC_SHAREDQ, {{LH_CP_BITS, 8}}, 2.0 / 254},
    {"sharedq b4", LH_CODEC_SHAREDQ, {{LH_CP_BITS, 4}}, 2.0 / 14},
    {"sign", LH_CODEC_SIGN, {}, 0.62},
    {"topk 1%", LH_CODEC_TOPK, {}, 0.965},
    {"topk 1% sampled", LH_CODEC_TOPK, {{LH_CP_TOPK_METHOD, LH_TOPK_SAMPLED}}, 0.97},
    {"topk 10%", LH_CODEC_TOPK, {{LH_CP_K, 410}}, 0.8},
    {"randk 1%", LH_CODEC_RANDK, {}, 0.9951},
};

TEST(Quality, RelativeErrorOnGaussianInputWithinBounds) {
  auto x = Gaussian(1 << 16, 2024);
  for (const Quality &q : kQuality) {
    Codec c(q.id);
    for (auto [p, v] : q.params)
      c.Set(p, v);
    if (q.id == LH_CODEC_SHAREDQ)
      ShareScales(c, x);
    auto y = c.Decode(c.Encode(x), x.size());
    double e = RelErr(x, y);
    EXPECT_LE(e, q.max_relerr) << q.what;
    // A bound far above what the codec does would prove nothing: keep them within 3x.
    EXPECT_GE(e, q.max_relerr / 3) << q.what << ": bound too loose, tighten it";
    printf("  %-24s relerr %.4f (bound %.4f)\n", q.what, e, q.max_relerr);
    RecordProperty(q.what, std::to_string(e));
  }
}

// PowerSGD on a matrix of rank 4 plus a little noise: rank 4 recovers it up to the noise once
// the warm-started Q has converged.
TEST(Quality, PowerSgdRecoversLowRankPlusNoise) {
  const size_t rows = 64, cols = 96;
  auto u = Gaussian(rows * 4, 1), v = Gaussian(cols * 4, 2), noise = Gaussian(rows * cols, 3, 0.01f);
  std::vector<float> m(rows * cols);
  for (size_t i = 0; i < rows; i++)
    for (size_t j = 0; j < cols; j++) {
      float s = 0;
      for (int r = 0; r < 4; r++)
        s += u[i * 4 + r] * v[j * 4 + r];
      m[i * cols + j] = s + noise[i * cols + j];
    }
  Codec c(LH_CODEC_POWERSGD);
  c.Set(LH_CP_ROWS, (int)rows);
  c.Set(LH_CP_RANK, 4);
  double first = 0, last = 0;
  for (int step = 0; step < 4; step++) {
    auto w = c.Encode(m);
    EXPECT_EQ(w.size(), (size_t)LH_FRAME_HEADER_BYTES + (rows + cols) * 4 * 4);
    double e = RelErr(m, c.Decode(w, m.size()));
    (step == 0 ? first : last) = e;
  }
  EXPECT_LT(last, 0.02) << "rank-4 PowerSGD did not converge on a rank-4 matrix";
  EXPECT_LE(last, first + 1e-6) << "warm start made it worse";
}

// Stochastic rounding is unbiased: over many seeds the mean decode of a fixed x converges to x,
// within 5 standard errors per element; round to nearest, on the same values, stays biased.
TEST(Quality, StochasticRoundingIsUnbiased) {
  const size_t n = 1024;
  const int seeds = 400;
  std::vector<float> x(n);
  for (size_t i = 0; i < n; i++)  // the block max is 1: levels of b=2 are -1, 0, 1
    x[i] = (i % 128 == 0) ? 1.0f : 0.3f + 0.4f * (float)(i % 7) / 7.0f;
  for (lh_rounding rounding : {LH_ROUND_STOCHASTIC, LH_ROUND_NEAREST}) {
    std::vector<double> mean(n, 0.0);
    for (int s = 0; s < seeds; s++) {
      Codec c(LH_CODEC_BLOCKQ);
      c.Set(LH_CP_BITS, 2);
      c.Set(LH_CP_ROUNDING, rounding);
      ASSERT_EQ(lh_codec_set_key(c.c, 1000 + s, 3, 0), LH_SUCCESS);
      auto y = c.Decode(c.Encode(x), n);
      for (size_t i = 0; i < n; i++)
        mean[i] += y[i] / seeds;
    }
    // Level spacing 1: the per-seed error has standard deviation at most 1/2.
    const double bound = 5 * 0.5 / std::sqrt((double)seeds);
    double worst = 0;
    for (size_t i = 0; i < n; i++)
      worst = std::max(worst, std::fabs(mean[i] - x[i]));
    if (rounding == LH_ROUND_STOCHASTIC)
      EXPECT_LE(worst, bound) << "stochastic rounding is biased";
    else
      EXPECT_GT(worst, 2 * bound) << "negative control: nearest rounding should be visibly biased";
  }
}

// Stochastic rounding's random bits depend on (seed, step, rank, element): the same key gives
// the same bytes, another rank or step other bytes.
TEST(Quality, StochasticRoundingIsKeyedNotRandom) {
  auto x = Gaussian(5000, 4);
  auto encode = [&](uint64_t seed, uint64_t step, uint32_t rank) {
    Codec c(LH_CODEC_BLOCKQ);
    c.Set(LH_CP_BITS, 3);
    c.Set(LH_CP_ROUNDING, LH_ROUND_STOCHASTIC);
    EXPECT_EQ(lh_codec_set_key(c.c, seed, step, rank), LH_SUCCESS);
    return c.Encode(x);
  };
  auto a = encode(1, 2, 3);
  EXPECT_EQ(a, encode(1, 2, 3));
  auto payload_differs = [&](const std::vector<uint8_t> &b) {
    return !std::equal(a.begin() + LH_FRAME_HEADER_BYTES, a.end(), b.begin() + LH_FRAME_HEADER_BYTES);
  };
  EXPECT_TRUE(payload_differs(encode(1, 2, 4)));
  EXPECT_TRUE(payload_differs(encode(1, 3, 3)));
  EXPECT_TRUE(payload_differs(encode(2, 2, 3)));
}

// Error feedback: after T steps the running sum of what was sent differs from the running sum
// of the inputs by exactly the residual, and the residual stays bounded while the sums grow
// linearly, so the relative drift shrinks like 1/T. Without feedback the biased codecs drift.
TEST(Quality, ErrorFeedbackTracksTheRunningSum) {
  const size_t n = 4096;
  const int steps = 1000;
  auto signal = Gaussian(n, 42, 0.1f);  // the part of the "gradient" that persists
  struct Case {
    const char *what;
    lh_codec_id id;
    std::vector<std::pair<lh_codec_param, int>> params;
    double max_drift_ef;     // ||sum x - sum D|| / ||sum x|| with feedback, after 1000 steps
    double min_drift_no_ef;  // the same without: must be clearly worse (0: not checked)
  } cases[] = {
      {"sign", LH_CODEC_SIGN, {}, 0.01, 0.3},
      {"topk 1%", LH_CODEC_TOPK, {}, 0.05, 0.5},
      {"blockq b2", LH_CODEC_BLOCKQ, {{LH_CP_BITS, 2}}, 0.02, 0.0},
      // Each element is sent once in about chunk/k = 100 steps, so up to ~100 steps of it wait
      // in the residual: drift ~ 100/1000.
      {"randk 1%", LH_CODEC_RANDK, {}, 0.25, 0.5},
      {"bf16", LH_CODEC_BF16, {}, 0.001, 0.0},
      {"powersgd r1", LH_CODEC_POWERSGD, {{LH_CP_ROWS, 64}, {LH_CP_RANK, 1}}, 0.1, 0.3},
  };
  for (const Case &k : cases) {
    for (int ef : {1, 0}) {
      if (!ef && k.min_drift_no_ef == 0.0)
        continue;
      Codec c(k.id);
      for (auto [p, v] : k.params)
        c.Set(p, v);
      c.Set(LH_CP_ERROR_FEEDBACK, ef);
      std::vector<double> sum_x(n, 0.0), sum_d(n, 0.0);
      std::mt19937 rng(7);
      std::normal_distribution<float> noise(0.0f, 1.0f);
      std::vector<float> x(n), y(n);
      for (int t = 0; t < steps; t++) {
        ASSERT_EQ(lh_codec_set_key(c.c, 9, (uint64_t)t, 0), LH_SUCCESS);
        for (size_t i = 0; i < n; i++)
          x[i] = signal[i] + noise(rng);
        auto w = c.Encode(x);
        ASSERT_EQ(lh_codec_decode(c.c, w.data(), w.size(), y.data(), n), LH_SUCCESS) << lh_last_error();
        for (size_t i = 0; i < n; i++) {
          sum_x[i] += x[i];
          sum_d[i] += y[i];
        }
      }
      double diff = 0, norm = 0;
      for (size_t i = 0; i < n; i++) {
        diff += (sum_x[i] - sum_d[i]) * (sum_x[i] - sum_d[i]);
        norm += sum_x[i] * sum_x[i];
      }
      double drift = std::sqrt(diff / norm);
      if (ef) {
        EXPECT_LE(drift, k.max_drift_ef) << k.what << " with error feedback";
        // The books balance: sum x - sum D(C(.)) is the residual, up to float rounding.
        const float *e;
        size_t en;
        ASSERT_EQ(lh_codec_residual(c.c, &e, &en), LH_SUCCESS);
        ASSERT_EQ(en, n);
        double off = 0;
        for (size_t i = 0; i < n; i++)
          off += (sum_x[i] - sum_d[i] - e[i]) * (sum_x[i] - sum_d[i] - e[i]);
        EXPECT_LE(std::sqrt(off / norm), 1e-3) << k.what << ": residual does not account for the drift";
      } else {
        EXPECT_GE(drift, k.min_drift_no_ef) << k.what << ": negative control drifted too little";
      }
    }
  }
}

}  // namespace

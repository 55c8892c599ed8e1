// The CPU quantizers of payload.h: casts, BLOCKQ, SIGN and SHAREDQ. Layouts are checked
// against hand-computed bytes and against plain reference encoders written here from the
// payload.h text (element by element with codec_math.h, no tiles, no SIMD), which is what the
// GPU kernels must match too.
#if defined(__GNUC__) && !defined(__clang__)
// The references must round like the library (built with -ffp-contract=off): no FMA.
#pragma GCC optimize("fp-contract=off")
#endif
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "compress/payload.h"
// lh_qz_rng_words: the SIMD Philox paths are tested directly, because a counter wrap needs an
// element index near 2^34.
#include "compress/quant_internal.h"

#include "codec_inputs.h"

namespace {

const uint8_t kPoisonByte = 0xA5;
const size_t kGuard = 16;
const size_t kSizes[] = {0, 1, 7, 127, 128, 129, 1000};

float poison_float() { return lh_bits_f32(0x7FA5A5A5u); } // a NaN no decoder produces

bool same_bits(float a, float b) { return lh_f32_bits(a) == lh_f32_bits(b); }

// Byte buffer of `bytes` followed by kGuard poison bytes.
struct Guarded {
  std::vector<uint8_t> buf;
  size_t bytes;
  explicit Guarded(size_t b) : buf(b + kGuard, kPoisonByte), bytes(b) {}
  uint8_t *data() { return buf.data(); }
  bool guard_intact() const {
    for (size_t i = bytes; i < buf.size(); i++)
      if (buf[i] != kPoisonByte)
        return false;
    return true;
  }
  std::vector<uint8_t> payload() const { return {buf.begin(), buf.begin() + bytes}; }
};

// Float buffer of n poisoned elements followed by kGuard poisoned elements.
std::vector<float> poisoned_floats(size_t n) {
  return std::vector<float>(n + kGuard, poison_float());
}

bool float_guard_intact(const std::vector<float> &v, size_t n) {
  for (size_t i = n; i < v.size(); i++)
    if (!same_bits(v[i], poison_float()))
      return false;
  return true;
}

void put_bits(std::vector<uint8_t> &bytes, size_t offset, size_t i, int b, uint32_t code) {
  for (int k = 0; k < b; k++)
    if ((code >> k) & 1u)
      bytes[offset + (i * b + k) / 8] |= (uint8_t)(1u << ((i * b + k) % 8));
}

uint32_t get_bits(const uint8_t *bytes, size_t i, int b) {
  uint32_t code = 0;
  for (int k = 0; k < b; k++)
    code |= (uint32_t)((bytes[(i * b + k) / 8] >> ((i * b + k) % 8)) & 1u) << k;
  return code;
}

size_t blocks(size_t n, int block) { return (n + (size_t)block - 1) / (size_t)block; }

float scale_at(const uint8_t *payload, size_t k, int fp16) {
  if (fp16) {
    uint16_t h;
    memcpy(&h, payload + 2 * k, 2);
    return lh_f16_to_f32(h);
  }
  float s;
  memcpy(&s, payload + 4 * k, 4);
  return s;
}

// ---- reference encoders, straight from payload.h ----

std::vector<uint8_t> ref_blockq(const lh_blockq_params &p, const lh_rng_key &key,
                                const std::vector<float> &x) {
  size_t n = x.size(), nb = blocks(n, p.block), sb = nb * (p.scale_fp16 ? 2 : 4);
  std::vector<uint8_t> out(sb + (n * p.bits + 7) / 8, 0);
  int m = lh_quant_max_code(p.bits);
  for (size_t k = 0; k < nb; k++) {
    size_t lo = k * p.block, hi = std::min(n, lo + p.block);
    float s = 0.0f;
    for (size_t i = lo; i < hi; i++)
      s = std::max(s, std::fabs(x[i]));
    if (p.scale_fp16) {
      uint16_t h = lh_f32_to_f16_up(s);
      memcpy(&out[2 * k], &h, 2);
      s = lh_f16_to_f32(h);
    } else {
      memcpy(&out[4 * k], &s, 4);
    }
    float inv = lh_quant_inv_scale(s, m);
    for (size_t i = lo; i < hi; i++)
      put_bits(out, sb, i, p.bits, lh_quant_code(x[i], inv, m, p.stochastic, lh_rng_u32(&key, i)));
  }
  return out;
}

// Lane j sums |x| of elements j, j + 32, ... in order; then the warp-style fold.
float ref_lane_mean(const float *x, size_t len) {
  float lane[32] = {0};
  for (size_t i = 0; i < len; i++)
    lane[i % 32] = lane[i % 32] + std::fabs(x[i]);
  for (int off = 16; off >= 1; off >>= 1)
    for (int i = 0; i < off; i++)
      lane[i] = lane[i] + lane[i + off];
  return lane[0] / (float)len;
}

std::vector<uint8_t> ref_sign(const lh_sign_params &p, const std::vector<float> &x) {
  size_t n = x.size(), nb = blocks(n, p.block), sb = nb * (p.scale_fp16 ? 2 : 4);
  std::vector<uint8_t> out(sb + (n + 7) / 8, 0);
  for (size_t k = 0; k < nb; k++) {
    size_t lo = k * p.block, hi = std::min(n, lo + p.block);
    float s = ref_lane_mean(&x[lo], hi - lo);
    if (p.scale_fp16) {
      uint16_t h = lh_f32_to_f16(s);
      memcpy(&out[2 * k], &h, 2);
    } else {
      memcpy(&out[4 * k], &s, 4);
    }
    for (size_t i = lo; i < hi; i++)
      put_bits(out, sb, i, 1, x[i] >= 0.0f);
  }
  return out;
}

int32_t load_code(const uint8_t *payload, size_t i, int width) {
  if (width == 1)
    return (int8_t)payload[i];
  if (width == 2) {
    int16_t c;
    memcpy(&c, payload + 2 * i, 2);
    return c;
  }
  int32_t c;
  memcpy(&c, payload + 4 * i, 4);
  return c;
}

void store_code(uint8_t *payload, size_t i, int width, int32_t c) {
  if (width == 1) {
    payload[i] = (uint8_t)(int8_t)c;
  } else if (width == 2) {
    int16_t v = (int16_t)c;
    memcpy(payload + 2 * i, &v, 2);
  } else {
    memcpy(payload + 4 * i, &c, 4);
  }
}

std::vector<uint8_t> ref_sharedq(const lh_sharedq_params &p, const lh_rng_key &key,
                                 const std::vector<float> &scales, const std::vector<float> &x) {
  int width = lh_sharedq_code_bytes(&p), m = lh_quant_max_code(p.bits);
  std::vector<uint8_t> out(x.size() * width);
  for (size_t i = 0; i < x.size(); i++) {
    float s = scales[i / p.block];
    uint32_t u =
        lh_quant_code(x[i], lh_quant_inv_scale(s, m), m, p.stochastic, lh_rng_u32(&key, i));
    store_code(out.data(), i, width, (int32_t)u - m / 2);
  }
  return out;
}

std::vector<float> local_scales(const lh_sharedq_params &p, const std::vector<float> &x) {
  std::vector<float> s(lh_sharedq_scale_count(&p, x.size()));
  EXPECT_EQ(lh_sharedq_local_scales(&p, x.data(), x.size(), s.data()), LH_SUCCESS);
  return s;
}

// Element values that make every size test exercise signs, zeros and a block maximum.
std::vector<float> test_input(size_t n, uint32_t seed) {
  std::vector<float> x = Gaussian(n, seed);
  for (size_t i = 0; i < n; i += 37)
    x[i] = 0.0f;
  return x;
}

const lh_rng_key kKey = {0x0123456789ABCDEFull, 42, 3};

} // namespace

// ---------------------------------------------------------------------------------------------
// Casts

TEST(Cast, F16KnownBitPatterns) {
  struct Case {
    float x;
    uint16_t h;
  } cases[] = {
      {0.0f, 0x0000},
      {-0.0f, 0x8000},
      {1.0f, 0x3C00},
      {-2.0f, 0xC000},
      {65504.0f, 0x7BFF},
      {65519.99f, 0x7BFF}, // below the midpoint to 65536
      {65520.0f, 0x7C00},  // the midpoint: rounds to even, which overflows
      {-1e6f, 0xFC00},
      {INFINITY, 0x7C00},
      {-INFINITY, 0xFC00},
      {NAN, 0x7FFF},
      {-NAN, 0x7FFF},
      {ldexpf(1.0f, -14), 0x0400}, // smallest normal
      {ldexpf(1.0f, -24), 0x0001}, // smallest subnormal
      {ldexpf(1.0f, -25), 0x0000}, // tie between 0 and 2^-24: even is 0
      {nextafterf(ldexpf(1.0f, -25), 1.0f), 0x0001},
      {ldexpf(3.0f, -25), 0x0002},        // tie between 1 and 2 ulps: even 2
      {ldexpf(2047.0f, -25), 0x0400},     // tie between 1023 and 1024 ulps: carries to normal
      {-ldexpf(5.0f, -25), 0x8002},       // -2.5 ulps: tie to even 2
      {1.0f + ldexpf(1.0f, -11), 0x3C00}, // normal tie to even
      {1.0f + ldexpf(3.0f, -11), 0x3C02},
      {1e-45f, 0x0000}, // fp32 subnormal
      {-1e-45f, 0x8000},
  };
  for (const Case &c : cases) {
    uint16_t h = 0x1234;
    lh_cast_f32_to_f16(&c.x, &h, 1);
    EXPECT_EQ(h, c.h) << "x = " << c.x << " bits " << std::hex << lh_f32_bits(c.x);
  }
}

TEST(Cast, F16MatchesCodecMathOnDenseSample) {
  // The cast vectorises its own branch-free form of lh_f32_to_f16: hold it to the original on
  // a stride through all 2^32 patterns and on every pattern near each rounding boundary.
  std::vector<float> x;
  for (uint64_t u = 0; u < (1ull << 32); u += 4099)
    x.push_back(lh_bits_f32((uint32_t)u));
  const uint32_t edges[] = {0x33000000u, 0x38800000u, 0x477FF000u, 0x7F800000u, 0x38000000u};
  for (uint32_t edge : edges)
    for (uint32_t d = 0; d < 4096; d++)
      for (uint32_t sign : {0u, 0x80000000u}) {
        x.push_back(lh_bits_f32((edge - 2048 + d) | sign));
      }
  std::vector<uint16_t> h(x.size());
  lh_cast_f32_to_f16(x.data(), h.data(), x.size());
  size_t bad = 0;
  for (size_t i = 0; i < x.size(); i++)
    if (h[i] != lh_f32_to_f16(x[i]) && bad++ < 5)
      ADD_FAILURE() << std::hex << "bits " << lh_f32_bits(x[i]) << ": " << h[i] << " vs "
                    << lh_f32_to_f16(x[i]);
  EXPECT_EQ(bad, 0u);
}

TEST(Cast, Bf16KnownBitPatterns) {
  struct Case {
    float x;
    uint16_t h;
  } cases[] = {
      {1.0f, 0x3F80},
      {-0.0f, 0x8000},
      {1.0f + ldexpf(1.0f, -8), 0x3F80}, // tie to even
      {1.0f + ldexpf(3.0f, -8), 0x3F82}, // tie to even, upwards
      {1.0f + ldexpf(1.0f, -9), 0x3F80},
      {FLT_MAX, 0x7F80}, // overflows to infinity
      {-INFINITY, 0xFF80},
      {NAN, 0x7FFF},
      {lh_bits_f32(0xFFC00001u), 0x7FFF}, // negative NaN with payload
      {lh_bits_f32(0x00018000u), 0x0002}, // subnormal tie to even
  };
  for (const Case &c : cases) {
    uint16_t h = 0x1234;
    lh_cast_f32_to_bf16(&c.x, &h, 1);
    EXPECT_EQ(h, c.h) << "x = " << c.x;
  }
}

TEST(Cast, BackToF32ExhaustiveAndAccumulate) {
  std::vector<uint16_t> h(65536);
  for (uint32_t i = 0; i < 65536; i++)
    h[i] = (uint16_t)i;
  std::vector<float> y(65536), acc(65536, 1.5f);
  lh_cast_f16_to_f32(h.data(), y.data(), h.size(), 0);
  lh_cast_f16_to_f32(h.data(), acc.data(), h.size(), 1);
  for (uint32_t i = 0; i < 65536; i++) {
    ASSERT_TRUE(same_bits(y[i], lh_f16_to_f32(h[i]))) << i;
    ASSERT_TRUE(same_bits(acc[i], 1.5f + y[i])) << i;
  }
  EXPECT_EQ(lh_f32_bits(y[0x0001]), lh_f32_bits(ldexpf(1.0f, -24)));
  EXPECT_EQ(lh_f32_bits(y[0x8000]), 0x80000000u); // -0
  EXPECT_EQ(y[0x7BFF], 65504.0f);
  EXPECT_EQ(lh_f32_bits(y[0x7E00]), 0x7FC00000u); // NaN keeps its payload

  lh_cast_bf16_to_f32(h.data(), y.data(), h.size(), 0);
  std::fill(acc.begin(), acc.end(), -3.0f);
  lh_cast_bf16_to_f32(h.data(), acc.data(), h.size(), 1);
  for (uint32_t i = 0; i < 65536; i++) {
    ASSERT_EQ(lh_f32_bits(y[i]), i << 16) << i;
    ASSERT_TRUE(same_bits(acc[i], -3.0f + y[i])) << i;
  }
}

TEST(Cast, SizesWriteExactlyTheirElements) {
  for (size_t n : kSizes) {
    std::vector<float> x = Gaussian(n, 7);
    std::vector<uint16_t> h(n + kGuard, 0xA5A5), b(n + kGuard, 0xA5A5);
    lh_cast_f32_to_f16(x.data(), h.data(), n);
    lh_cast_f32_to_bf16(x.data(), b.data(), n);
    std::vector<float> yh = poisoned_floats(n), yb = poisoned_floats(n);
    lh_cast_f16_to_f32(h.data(), yh.data(), n, 0);
    lh_cast_bf16_to_f32(b.data(), yb.data(), n, 0);
    for (size_t i = 0; i < n; i++) {
      EXPECT_EQ(h[i], lh_f32_to_f16(x[i]));
      EXPECT_EQ(b[i], lh_f32_to_bf16(x[i]));
      EXPECT_LE(std::fabs(yh[i] - x[i]), std::fabs(x[i]) * 0x1p-11f + 0x1p-25f) << i;
      EXPECT_LE(std::fabs(yb[i] - x[i]), std::fabs(x[i]) * 0x1p-8f) << i;
    }
    for (size_t i = n; i < n + kGuard; i++) {
      EXPECT_EQ(h[i], 0xA5A5);
      EXPECT_EQ(b[i], 0xA5A5);
    }
    EXPECT_TRUE(float_guard_intact(yh, n));
    EXPECT_TRUE(float_guard_intact(yb, n));
  }
}

// ---------------------------------------------------------------------------------------------
// BLOCKQ

TEST(Blockq, ThreeBitLayoutByHand) {
  // One block of 8, scale 3: M = 6, inv = 3 / 3 = 1, t = x + 3, 3.5 rounds to even 4.
  lh_blockq_params p = {3, 8, 0, 0};
  const float x[8] = {-3, -2, -1, 0, 1, 2, 3, 0.5f};
  ASSERT_EQ(lh_blockq_payload_bytes(&p, 8), 4u + 3u);
  Guarded out(7);
  ASSERT_EQ(lh_blockq_encode(&p, nullptr, x, 8, out.data()), LH_SUCCESS);
  // Codes 0,1,2,3,4,5,6,4 at bits 0,3,6,...: 0x9AC688, least significant byte first.
  const uint8_t expect[7] = {0x00, 0x00, 0x40, 0x40, 0x88, 0xC6, 0x9A};
  EXPECT_EQ(out.payload(), std::vector<uint8_t>(expect, expect + 7));
  EXPECT_TRUE(out.guard_intact());
  float y[8];
  ASSERT_EQ(lh_blockq_decode(&p, out.data(), 8, y, 0), LH_SUCCESS);
  const float expect_y[8] = {-3, -2, -1, 0, 1, 2, 3, 1}; // (2u - 6) * 0.5
  for (int i = 0; i < 8; i++)
    EXPECT_EQ(y[i], expect_y[i]) << i;
}

TEST(Blockq, PartialLastByteAndOneBitCodes) {
  // 1 bit: M = 1, t = x / (2s) + 0.5; three elements leave 5 high bits of the byte at 0.
  lh_blockq_params p = {1, 4, 0, 0};
  const float x[3] = {-0.5f, 0.5f, 0.25f}; // t = 0, 1, 0.75 -> codes 0, 1, 1
  Guarded out(lh_blockq_payload_bytes(&p, 3));
  ASSERT_EQ(out.bytes, 5u);
  ASSERT_EQ(lh_blockq_encode(&p, nullptr, x, 3, out.data()), LH_SUCCESS);
  EXPECT_EQ(out.buf[4], 0x06);
  EXPECT_TRUE(out.guard_intact());
  float y[3];
  ASSERT_EQ(lh_blockq_decode(&p, out.data(), 3, y, 0), LH_SUCCESS);
  EXPECT_EQ(y[0], -0.5f);
  EXPECT_EQ(y[1], 0.5f);
  EXPECT_EQ(y[2], 0.5f);
}

TEST(Blockq, Fp16ScaleRoundsUp) {
  lh_blockq_params p = {8, 4, 1, 0};
  const float x[4] = {1.0001f, -0.5f, 0.0f, 0.25f}; // fp16 near 1.0001 is 1.0; up is 0x3C01
  uint8_t out[2 + 4];
  ASSERT_EQ(lh_blockq_encode(&p, nullptr, x, 4, out), LH_SUCCESS);
  EXPECT_EQ(out[0], 0x01);
  EXPECT_EQ(out[1], 0x3C);
  EXPECT_LE(out[2], 254);                           // not clipped
  const float exact[4] = {0.5f, 0.0f, 0.0f, 0.25f}; // a representable max stays put
  ASSERT_EQ(lh_blockq_encode(&p, nullptr, exact, 4, out), LH_SUCCESS);
  EXPECT_EQ(out[0], 0x00);
  EXPECT_EQ(out[1], 0x38);
  EXPECT_EQ(out[2], 254); // x = s is the top code
  EXPECT_EQ(out[3], 127); // zero is exact
}

TEST(Blockq, MatchesReferenceAndBoundsAtEverySize) {
  for (int bits = 1; bits <= 8; bits++)
    for (int block : {128, 7, 1})
      for (int fp16 = 0; fp16 <= 1; fp16++)
        for (int sr = 0; sr <= 1; sr++)
          for (size_t n : kSizes) {
            SCOPED_TRACE(testing::Message() << "bits " << bits << " block " << block << " fp16 "
                                            << fp16 << " sr " << sr << " n " << n);
            lh_blockq_params p = {bits, block, fp16, sr};
            std::vector<float> x = test_input(n, 100 + bits);
            Guarded out(lh_blockq_payload_bytes(&p, n));
            ASSERT_EQ(lh_blockq_encode(&p, &kKey, x.data(), n, out.data()), LH_SUCCESS);
            ASSERT_EQ(out.payload(), ref_blockq(p, kKey, x));
            ASSERT_TRUE(out.guard_intact());
            std::vector<float> y = poisoned_floats(n);
            ASSERT_EQ(lh_blockq_decode(&p, out.data(), n, y.data(), 0), LH_SUCCESS);
            ASSERT_TRUE(float_guard_intact(y, n));
            int m = lh_quant_max_code(bits);
            for (size_t i = 0; i < n; i++) {
              float s = scale_at(out.data(), i / block, fp16);
              EXPECT_GE(s, std::fabs(x[i])); // scales never clip
              // Levels are 2s/M apart: nearest is within half of that, stochastic within one;
              // the slack covers the float rounding of t and of the decoded value.
              float spacing = 2.0f * s / (float)m;
              float bound = (sr ? spacing : spacing / 2) * (1.0f + 1e-5f) + 1e-30f;
              ASSERT_LE(std::fabs(y[i] - x[i]), bound) << i;
            }
          }
}

TEST(Blockq, BlocksSpanningTilesMatchReference) {
  // Longer than the encoder's tiles (2048 elements), with blocks that straddle them.
  size_t n = 5003;
  std::vector<float> x = test_input(n, 77);
  for (int bits : {1, 3, 8})
    for (int block : {1000, 3, 4101})
      for (int sr = 0; sr <= 1; sr++) {
        SCOPED_TRACE(testing::Message() << "bits " << bits << " block " << block << " sr " << sr);
        lh_blockq_params p = {bits, block, 1, sr};
        std::vector<uint8_t> out(lh_blockq_payload_bytes(&p, n));
        ASSERT_EQ(lh_blockq_encode(&p, &kKey, x.data(), n, out.data()), LH_SUCCESS);
        ASSERT_EQ(out, ref_blockq(p, kKey, x));
        std::vector<float> y(n), e = Gaussian(n, 78, 0.01f), e0 = e, sum(n);
        ASSERT_EQ(lh_blockq_decode(&p, out.data(), n, y.data(), 0), LH_SUCCESS);
        for (size_t i = 0; i < n; i++) {
          int m = lh_quant_max_code(bits);
          uint32_t u = get_bits(out.data() + blocks(n, block) * 2, i, bits);
          float step = lh_quant_step(scale_at(out.data(), i / block, 1), m);
          ASSERT_TRUE(same_bits(y[i], lh_dequant_code(u, m, step))) << i;
          sum[i] = x[i] + e0[i];
        }
        ASSERT_EQ(lh_blockq_encode_ef(&p, &kKey, x.data(), e.data(), n, out.data()), LH_SUCCESS);
        ASSERT_EQ(out, ref_blockq(p, kKey, sum));
      }
}

TEST(Blockq, StochasticRoundingIsKeyedAndUnbiased) {
  lh_blockq_params p = {4, 128, 0, 1};
  size_t n = 4096;
  std::vector<float> x(n, 0.3f);
  for (size_t i = 0; i < n; i += 128)
    x[i] = 1.0f; // scale 1: M = 14, levels 1/7 apart, 0.3 lies between 2/7 and 3/7
  size_t bytes = lh_blockq_payload_bytes(&p, n);
  std::vector<uint8_t> a(bytes), b(bytes), c(bytes);
  ASSERT_EQ(lh_blockq_encode(&p, &kKey, x.data(), n, a.data()), LH_SUCCESS);
  ASSERT_EQ(lh_blockq_encode(&p, &kKey, x.data(), n, b.data()), LH_SUCCESS);
  EXPECT_EQ(a, b);
  for (int field = 0; field < 3; field++) {
    lh_rng_key other = kKey;
    if (field == 0)
      other.seed++;
    else if (field == 1)
      other.step++;
    else
      other.rank++;
    ASSERT_EQ(lh_blockq_encode(&p, &other, x.data(), n, c.data()), LH_SUCCESS);
    EXPECT_NE(a, c) << "key field " << field;
  }
  std::vector<float> y(n);
  ASSERT_EQ(lh_blockq_decode(&p, a.data(), n, y.data(), 0), LH_SUCCESS);
  float step = lh_quant_step(1.0f, 14), below = lh_dequant_code(9, 14, step),
        above = lh_dequant_code(10, 14, step); // t = 0.3 * 7 + 7 = 9.1
  double sum = 0;
  size_t count = 0;
  for (size_t i = 0; i < n; i++) {
    if (i % 128 == 0)
      continue;
    EXPECT_TRUE(y[i] == below || y[i] == above) << i << " " << y[i];
    sum += y[i];
    count++;
  }
  // P(3/7) = 0.1; the mean of ~4000 draws is within 4 sigma (sigma = 0.3/7/sqrt(n)).
  EXPECT_NEAR(sum / (double)count, 0.3, 4 * 0.3 / 7 / std::sqrt((double)count));
}

TEST(Blockq, SimdPhiloxMatchesCodecMath) {
  // Element index 2^34 - 256 puts a counter-block wrap of the low word inside the call.
  const uint64_t firsts[] = {0, 64, (1ull << 34) - 256, 4 * 0xFFFFFFF9ull};
  for (uint64_t first : firsts) {
    std::vector<uint32_t> words(2048 + 64, 0);
    lh_qz_rng_words(&kKey, first, 2043, words.data());
    for (size_t i = 0; i < 2043; i++)
      ASSERT_EQ(words[i], lh_rng_u32(&kKey, first + i)) << first << " + " << i;
  }
}

TEST(Blockq, ErrorFeedbackInvariant) {
  for (int sr = 0; sr <= 1; sr++)
    for (int fp16 = 0; fp16 <= 1; fp16++) {
      lh_blockq_params p = {3, 100, fp16, sr};
      size_t n = 1000;
      std::vector<float> x = Gaussian(n, 5), e = Gaussian(n, 6, 0.1f), e0 = e;
      std::vector<uint8_t> out(lh_blockq_payload_bytes(&p, n));
      ASSERT_EQ(lh_blockq_encode_ef(&p, &kKey, x.data(), e.data(), n, out.data()), LH_SUCCESS);
      std::vector<float> sum(n), y(n);
      for (size_t i = 0; i < n; i++)
        sum[i] = x[i] + e0[i];
      EXPECT_EQ(out, ref_blockq(p, kKey, sum)); // what is coded is x + e
      ASSERT_EQ(lh_blockq_decode(&p, out.data(), n, y.data(), 0), LH_SUCCESS);
      for (size_t i = 0; i < n; i++)
        ASSERT_TRUE(same_bits(e[i], sum[i] - y[i])) << i;
      // x may be e itself: then 2e is coded.
      std::vector<float> alias = e0;
      ASSERT_EQ(lh_blockq_encode_ef(&p, &kKey, alias.data(), alias.data(), n, out.data()),
                LH_SUCCESS);
      ASSERT_EQ(lh_blockq_decode(&p, out.data(), n, y.data(), 0), LH_SUCCESS);
      for (size_t i = 0; i < n; i++)
        ASSERT_TRUE(same_bits(alias[i], (e0[i] + e0[i]) - y[i])) << i;
    }
}

TEST(Blockq, AccumulateAddsTheDecodedValues) {
  lh_blockq_params p = {5, 64, 1, 0};
  size_t n = 1000;
  std::vector<float> x = Gaussian(n, 9), acc = Gaussian(n, 10), y(n);
  std::vector<uint8_t> out(lh_blockq_payload_bytes(&p, n));
  ASSERT_EQ(lh_blockq_encode(&p, nullptr, x.data(), n, out.data()), LH_SUCCESS);
  ASSERT_EQ(lh_blockq_decode(&p, out.data(), n, y.data(), 0), LH_SUCCESS);
  std::vector<float> expect(n);
  for (size_t i = 0; i < n; i++)
    expect[i] = acc[i] + y[i];
  ASSERT_EQ(lh_blockq_decode(&p, out.data(), n, acc.data(), 1), LH_SUCCESS);
  for (size_t i = 0; i < n; i++)
    ASSERT_TRUE(same_bits(acc[i], expect[i])) << i;
}

TEST(Blockq, UnusedTopCodeDecodesByTheFormula) {
  lh_blockq_params p = {3, 8, 0, 0};
  uint8_t in[4 + 3] = {0, 0, 0x40, 0x40, 0xFF, 0xFF, 0xFF}; // scale 3, every code 7
  float y[8];
  ASSERT_EQ(lh_blockq_decode(&p, in, 8, y, 0), LH_SUCCESS);
  for (float v : y)
    EXPECT_EQ(v, 4.0f); // (2 * 7 - 6) * 0.5
}

TEST(Blockq, TinyScaleStaysBounded) {
  // A subnormal scale makes M / (2s) overflow to infinity; zeros must still code sanely.
  lh_blockq_params p = {8, 4, 0, 0};
  const float x[4] = {0.0f, 1e-40f, -1e-40f, -0.0f};
  uint8_t out[4 + 4];
  ASSERT_EQ(lh_blockq_encode(&p, nullptr, x, 4, out), LH_SUCCESS);
  float y[4];
  ASSERT_EQ(lh_blockq_decode(&p, out, 4, y, 0), LH_SUCCESS);
  for (int i = 0; i < 4; i++) // within one level spacing (2s / M) of the values
    EXPECT_LE(std::fabs(y[i] - x[i]), 2e-40f) << i;
}

TEST(Blockq, NonFiniteInputIsRefusedBeforeWriting) {
  lh_blockq_params p = {4, 128, 0, 0};
  size_t n = 300;
  for (float bad : {NAN, INFINITY, -INFINITY}) {
    std::vector<float> x = Gaussian(n, 11);
    x[130] = bad;
    Guarded out(lh_blockq_payload_bytes(&p, n));
    EXPECT_EQ(lh_blockq_encode(&p, nullptr, x.data(), n, out.data()), LH_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(lh_last_error()).find("element 130"), std::string::npos)
        << lh_last_error();
    EXPECT_EQ(out.buf, std::vector<uint8_t>(out.buf.size(), kPoisonByte));
    std::vector<float> e(n, 0.0f), e0 = e;
    EXPECT_EQ(lh_blockq_encode_ef(&p, nullptr, x.data(), e.data(), n, out.data()),
              LH_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(e, e0);
    EXPECT_EQ(out.buf, std::vector<uint8_t>(out.buf.size(), kPoisonByte));
  }
  // Finite x and e whose sum overflows.
  std::vector<float> x(n, 1.0f), e(n, 0.0f);
  x[299] = 3e38f;
  e[299] = 3e38f;
  std::vector<float> e0 = e;
  Guarded out(lh_blockq_payload_bytes(&p, n));
  EXPECT_EQ(lh_blockq_encode_ef(&p, nullptr, x.data(), e.data(), n, out.data()),
            LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("element 299"), std::string::npos);
  EXPECT_EQ(e, e0);
  EXPECT_EQ(out.buf, std::vector<uint8_t>(out.buf.size(), kPoisonByte));
}

TEST(Blockq, Fp16ScaleOverflowIsRefused) {
  lh_blockq_params p = {8, 4, 1, 0};
  std::vector<float> x = {1, 2, 3, 4, 65504.0f, 0, 0, 0};
  std::vector<uint8_t> out(lh_blockq_payload_bytes(&p, 8));
  EXPECT_EQ(lh_blockq_encode(&p, nullptr, x.data(), 8, out.data()), LH_SUCCESS);
  x[6] = -65505.0f;
  std::vector<uint8_t> before = out;
  EXPECT_EQ(lh_blockq_encode(&p, nullptr, x.data(), 8, out.data()), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("element 6"), std::string::npos);
  EXPECT_EQ(out, before);
  p.scale_fp16 = 0; // fine as fp32
  out.resize(lh_blockq_payload_bytes(&p, 8));
  EXPECT_EQ(lh_blockq_encode(&p, nullptr, x.data(), 8, out.data()), LH_SUCCESS);
}

TEST(Blockq, CorruptScalesAreRefusedBeforeWriting) {
  size_t n = 300;
  std::vector<float> x = Gaussian(n, 12);
  for (int fp16 = 0; fp16 <= 1; fp16++) {
    lh_blockq_params p = {4, 128, fp16, 0};
    std::vector<uint8_t> good(lh_blockq_payload_bytes(&p, n));
    ASSERT_EQ(lh_blockq_encode(&p, nullptr, x.data(), n, good.data()), LH_SUCCESS);
    const uint32_t bad32[] = {0x7FC00000u, 0x7F800000u, 0xBF800000u}; // NaN, inf, -1
    const uint16_t bad16[] = {0x7E00, 0x7C00, 0xBC00};
    for (int b = 0; b < 3; b++) {
      std::vector<uint8_t> in = good;
      if (fp16)
        memcpy(&in[2 * 1], &bad16[b], 2);
      else
        memcpy(&in[4 * 1], &bad32[b], 4);
      std::vector<float> y = poisoned_floats(n);
      EXPECT_EQ(lh_blockq_decode(&p, in.data(), n, y.data(), 1), LH_ERR_CORRUPT);
      EXPECT_NE(std::string(lh_last_error()).find("block 1"), std::string::npos);
      for (float v : y)
        ASSERT_TRUE(same_bits(v, poison_float()));
    }
  }
}

TEST(Blockq, ArgumentChecks) {
  float x[4] = {1, 2, 3, 4};
  uint8_t out[64];
  lh_blockq_params good = {4, 128, 0, 0};
  for (lh_blockq_params p : {lh_blockq_params{0, 128, 0, 0}, lh_blockq_params{9, 128, 0, 0},
                             lh_blockq_params{4, 0, 0, 0}, lh_blockq_params{4, 128, 2, 0},
                             lh_blockq_params{4, 128, 0, -1}}) {
    EXPECT_EQ(lh_blockq_encode(&p, &kKey, x, 4, out), LH_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(lh_blockq_decode(&p, out, 4, x, 0), LH_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(lh_blockq_payload_bytes(&p, 4), 0u);
  }
  lh_blockq_params bad_bits = {9, 128, 0, 0}, bad_block = {4, 0, 0, 0};
  EXPECT_EQ(lh_blockq_encode(&bad_bits, nullptr, x, 4, out), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("bits is 9"), std::string::npos) << lh_last_error();
  EXPECT_EQ(lh_blockq_encode(&bad_block, nullptr, x, 4, out), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("block is 0"), std::string::npos);
  EXPECT_EQ(lh_blockq_encode(nullptr, &kKey, x, 4, out), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_blockq_encode(&good, &kKey, nullptr, 4, out), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_blockq_encode(&good, &kKey, x, 4, nullptr), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_blockq_encode_ef(&good, &kKey, x, nullptr, 4, out), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_blockq_decode(&good, nullptr, 4, x, 0), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_blockq_decode(&good, out, 4, nullptr, 0), LH_ERR_INVALID_ARGUMENT);
  lh_blockq_params sr = {4, 128, 0, 1};
  EXPECT_EQ(lh_blockq_encode(&sr, nullptr, x, 4, out), LH_ERR_INVALID_ARGUMENT);
  // n = 0 needs no buffers.
  EXPECT_EQ(lh_blockq_payload_bytes(&good, 0), 0u);
  EXPECT_EQ(lh_blockq_encode(&good, nullptr, nullptr, 0, nullptr), LH_SUCCESS);
  EXPECT_EQ(lh_blockq_encode_ef(&good, nullptr, nullptr, nullptr, 0, nullptr), LH_SUCCESS);
  EXPECT_EQ(lh_blockq_decode(&good, nullptr, 0, nullptr, 1), LH_SUCCESS);
}

// ---------------------------------------------------------------------------------------------
// SIGN

TEST(Sign, LayoutByHand) {
  lh_sign_params p = {4, 0};
  const float x[8] = {1, -2, 0, -0.0f, 3, -1, 2, -4};
  ASSERT_EQ(lh_sign_payload_bytes(&p, 8), 8u + 1u);
  Guarded out(9);
  ASSERT_EQ(lh_sign_encode(&p, x, 8, out.data()), LH_SUCCESS);
  float s0, s1;
  memcpy(&s0, out.data(), 4);
  memcpy(&s1, out.data() + 4, 4);
  EXPECT_EQ(s0, 0.75f);
  EXPECT_EQ(s1, 2.5f);
  EXPECT_EQ(out.buf[8], 0x5D); // 1,0,1,1 | 1,0,1,0 from bit 0: -0 counts as >= 0
  EXPECT_TRUE(out.guard_intact());
  float y[8];
  ASSERT_EQ(lh_sign_decode(&p, out.data(), 8, y, 0), LH_SUCCESS);
  const float expect[8] = {0.75f, -0.75f, 0.75f, 0.75f, 2.5f, -2.5f, 2.5f, -2.5f};
  for (int i = 0; i < 8; i++)
    EXPECT_EQ(y[i], expect[i]) << i;
}

TEST(Sign, ScaleIsSummedInLaneOrder) {
  // Large and small magnitudes make every summation order give different bits.
  size_t n = 100;
  std::vector<float> x(n);
  for (size_t i = 0; i < n; i++)
    x[i] = (i % 3 == 0 ? 1e7f : 1.0f) * (1.0f + (float)i / 7.0f) * (i % 2 ? -1.0f : 1.0f);
  float sequential = 0;
  for (float v : x)
    sequential += std::fabs(v);
  sequential /= (float)n;
  lh_sign_params p = {100, 0};
  std::vector<uint8_t> out(lh_sign_payload_bytes(&p, n));
  ASSERT_EQ(lh_sign_encode(&p, x.data(), n, out.data()), LH_SUCCESS);
  float s;
  memcpy(&s, out.data(), 4);
  EXPECT_EQ(lh_f32_bits(s), lh_f32_bits(ref_lane_mean(x.data(), n)));
  EXPECT_NE(lh_f32_bits(s), lh_f32_bits(sequential)) << "the test input does not tell orders apart";
}

TEST(Sign, Fp16ScaleRoundsToNearest) {
  lh_sign_params p = {1, 1};
  const float x[1] = {1.0001f};
  uint8_t out[3];
  ASSERT_EQ(lh_sign_encode(&p, x, 1, out), LH_SUCCESS);
  EXPECT_EQ(out[0], 0x00);
  EXPECT_EQ(out[1], 0x3C);
  EXPECT_EQ(out[2], 0x01);
}

TEST(Sign, MatchesReferenceAtEverySize) {
  for (int block : {128, 33, 1})
    for (int fp16 = 0; fp16 <= 1; fp16++)
      for (size_t n : kSizes) {
        SCOPED_TRACE(testing::Message() << "block " << block << " fp16 " << fp16 << " n " << n);
        lh_sign_params p = {block, fp16};
        std::vector<float> x = test_input(n, 200 + block);
        Guarded out(lh_sign_payload_bytes(&p, n));
        ASSERT_EQ(lh_sign_encode(&p, x.data(), n, out.data()), LH_SUCCESS);
        ASSERT_EQ(out.payload(), ref_sign(p, x));
        ASSERT_TRUE(out.guard_intact());
        std::vector<float> y = poisoned_floats(n);
        ASSERT_EQ(lh_sign_decode(&p, out.data(), n, y.data(), 0), LH_SUCCESS);
        ASSERT_TRUE(float_guard_intact(y, n));
        for (size_t i = 0; i < n; i++) {
          float s = scale_at(out.data(), i / block, fp16);
          ASSERT_TRUE(same_bits(y[i], x[i] >= 0.0f ? s : -s)) << i;
        }
      }
}

TEST(Sign, BlocksSpanningTilesMatchReference) {
  size_t n = 5003;
  std::vector<float> x = test_input(n, 79);
  for (int block : {1000, 3, 4101}) {
    lh_sign_params p = {block, 0};
    std::vector<uint8_t> out(lh_sign_payload_bytes(&p, n));
    ASSERT_EQ(lh_sign_encode(&p, x.data(), n, out.data()), LH_SUCCESS);
    ASSERT_EQ(out, ref_sign(p, x)) << block;
  }
}

TEST(Sign, ErrorFeedbackAndAccumulate) {
  for (int fp16 = 0; fp16 <= 1; fp16++) {
    lh_sign_params p = {64, fp16};
    size_t n = 1000;
    std::vector<float> x = Gaussian(n, 21), e = Gaussian(n, 22, 0.1f), e0 = e;
    std::vector<uint8_t> out(lh_sign_payload_bytes(&p, n));
    ASSERT_EQ(lh_sign_encode_ef(&p, x.data(), e.data(), n, out.data()), LH_SUCCESS);
    std::vector<float> sum(n), y(n);
    for (size_t i = 0; i < n; i++)
      sum[i] = x[i] + e0[i];
    EXPECT_EQ(out, ref_sign(p, sum));
    ASSERT_EQ(lh_sign_decode(&p, out.data(), n, y.data(), 0), LH_SUCCESS);
    for (size_t i = 0; i < n; i++)
      ASSERT_TRUE(same_bits(e[i], sum[i] - y[i])) << i;
    std::vector<float> acc = Gaussian(n, 23), expect(n);
    for (size_t i = 0; i < n; i++)
      expect[i] = acc[i] + y[i];
    ASSERT_EQ(lh_sign_decode(&p, out.data(), n, acc.data(), 1), LH_SUCCESS);
    for (size_t i = 0; i < n; i++)
      ASSERT_TRUE(same_bits(acc[i], expect[i])) << i;
  }
}

TEST(Sign, ScaleOverflowAndNonFiniteAreRefused) {
  // fp16: a large element is fine while the block's mean fits, refused when it does not.
  lh_sign_params p16 = {4, 1};
  std::vector<float> x = {70000.0f, 0, 0, 0, 1, 1, 1, 1};
  Guarded out(lh_sign_payload_bytes(&p16, 8));
  EXPECT_EQ(lh_sign_encode(&p16, x.data(), 8, out.data()), LH_SUCCESS);
  x[5] = x[6] = x[7] = x[4] = 70000.0f;
  Guarded out2(lh_sign_payload_bytes(&p16, 8));
  EXPECT_EQ(lh_sign_encode(&p16, x.data(), 8, out2.data()), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("block 1"), std::string::npos) << lh_last_error();
  EXPECT_EQ(out2.buf, std::vector<uint8_t>(out2.buf.size(), kPoisonByte));
  // fp32: the sum of a block overflows.
  lh_sign_params p32 = {4, 0};
  std::vector<float> big = {3e38f, 3e38f, 1, 1}, e(4, 0.0f);
  EXPECT_EQ(lh_sign_encode(&p32, big.data(), 4, out2.data()), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_sign_encode_ef(&p32, big.data(), e.data(), 4, out2.data()), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(e, std::vector<float>(4, 0.0f));
  EXPECT_EQ(out2.buf, std::vector<uint8_t>(out2.buf.size(), kPoisonByte));
  // NaN.
  std::vector<float> nan = {1, 2, NAN, 4};
  EXPECT_EQ(lh_sign_encode(&p32, nan.data(), 4, out2.data()), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("element 2"), std::string::npos);
  EXPECT_EQ(out2.buf, std::vector<uint8_t>(out2.buf.size(), kPoisonByte));
}

TEST(Sign, CorruptScalesAndArguments) {
  lh_sign_params p = {4, 0};
  const float x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  uint8_t out[9];
  ASSERT_EQ(lh_sign_encode(&p, x, 8, out), LH_SUCCESS);
  uint32_t minus_one = 0xBF800000u;
  memcpy(out + 4, &minus_one, 4);
  std::vector<float> y = poisoned_floats(8);
  EXPECT_EQ(lh_sign_decode(&p, out, 8, y.data(), 0), LH_ERR_CORRUPT);
  for (float v : y)
    ASSERT_TRUE(same_bits(v, poison_float()));
  lh_sign_params bad_block = {0, 0}, bad_fp16 = {4, 3};
  EXPECT_EQ(lh_sign_encode(&bad_block, x, 8, out), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_sign_encode(&bad_fp16, x, 8, out), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_sign_encode(&p, nullptr, 8, out), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_sign_decode(&p, out, 8, nullptr, 0), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_sign_encode_ef(&p, x, nullptr, 8, out), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_sign_encode(&p, nullptr, 0, nullptr), LH_SUCCESS);
  EXPECT_EQ(lh_sign_decode(&p, nullptr, 0, nullptr, 0), LH_SUCCESS);
  EXPECT_EQ(lh_sign_payload_bytes(&p, 0), 0u);
  EXPECT_EQ(lh_sign_payload_bytes(&bad_block, 8), 0u);
}

// ---------------------------------------------------------------------------------------------
// SHAREDQ

TEST(Sharedq, ContainerHasHeadroomForTheSum) {
  struct Case {
    int bits, ranks, bytes;
  } cases[] = {{8, 1, 1},   {7, 2, 1},   {8, 2, 2},     {2, 64, 1},    {2, 65, 2},
               {8, 256, 2}, {8, 257, 4}, {4, 65536, 4}, {8, 65536, 4}, {3, 3, 1}};
  for (const Case &c : cases) {
    lh_sharedq_params p = {c.bits, 128, c.ranks, 0};
    EXPECT_EQ(lh_sharedq_code_bytes(&p), c.bytes) << c.bits << " bits, " << c.ranks << " ranks";
    EXPECT_EQ(lh_sharedq_payload_bytes(&p, 10), 10u * c.bytes);
  }
  for (lh_sharedq_params p : {lh_sharedq_params{1, 128, 1, 0}, lh_sharedq_params{9, 128, 1, 0},
                              lh_sharedq_params{8, 0, 1, 0}, lh_sharedq_params{8, 128, 0, 0},
                              lh_sharedq_params{8, 128, 65537, 0}}) {
    EXPECT_EQ(lh_sharedq_code_bytes(&p), 0);
    float s = 1, x = 0;
    uint8_t out[4];
    EXPECT_EQ(lh_sharedq_encode(&p, nullptr, &s, &x, 1, out), LH_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(lh_sharedq_decode(&p, &s, out, 1, &x, 0), LH_ERR_INVALID_ARGUMENT);
  }
  lh_sharedq_params no_ranks = {8, 128, 0, 0};
  EXPECT_EQ(lh_sharedq_sum(&no_ranks, nullptr, nullptr, 0), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("ranks is 0"), std::string::npos);
  lh_sharedq_params p = {8, 128, 1, 0};
  EXPECT_EQ(lh_sharedq_scale_count(&p, 0), 0u);
  EXPECT_EQ(lh_sharedq_scale_count(&p, 128), 1u);
  EXPECT_EQ(lh_sharedq_scale_count(&p, 129), 2u);
}

TEST(Sharedq, CodesByHand) {
  lh_sharedq_params p = {3, 4, 1, 0};            // M = 6, codes -3..3
  const float scales[1] = {3.0f};                // inv = 1: t = x + 3
  const float x[4] = {-3.0f, -1.5f, 0.0f, 5.0f}; // t = 0, 1.5 -> 2, 3, 8 -> clipped to 6
  Guarded out(4);
  ASSERT_EQ(lh_sharedq_encode(&p, nullptr, scales, x, 4, out.data()), LH_SUCCESS);
  const uint8_t expect[4] = {0xFD, 0xFF, 0x00, 0x03};
  EXPECT_EQ(out.payload(), std::vector<uint8_t>(expect, expect + 4));
  EXPECT_TRUE(out.guard_intact());
  float y[4];
  ASSERT_EQ(lh_sharedq_decode(&p, scales, out.data(), 4, y, 0), LH_SUCCESS);
  const float expect_y[4] = {-3, -1, 0, 3}; // (2c) * 0.5
  for (int i = 0; i < 4; i++)
    EXPECT_EQ(y[i], expect_y[i]) << i;
}

TEST(Sharedq, LocalScalesAreTheBlockMaxima) {
  lh_sharedq_params p = {8, 3, 1, 0};
  std::vector<float> x = {1, -5, 2, 0, -0.0f, 0, 7, 1e-40f, -8};
  std::vector<float> s(4, poison_float());
  ASSERT_EQ(lh_sharedq_local_scales(&p, x.data(), 8, s.data()), LH_SUCCESS);
  EXPECT_EQ(s[0], 5.0f);
  EXPECT_EQ(lh_f32_bits(s[1]), 0u);
  EXPECT_EQ(s[2], 7.0f);
  EXPECT_TRUE(same_bits(s[3], poison_float()));
  x[4] = NAN;
  std::vector<float> s2(3, poison_float());
  EXPECT_EQ(lh_sharedq_local_scales(&p, x.data(), 9, s2.data()), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("element 4"), std::string::npos);
  for (float v : s2)
    EXPECT_TRUE(same_bits(v, poison_float()));
}

TEST(Sharedq, MatchesReferenceAtEverySize) {
  for (int bits = 2; bits <= 8; bits++)
    for (int ranks : {1, 5, 300})
      for (int sr = 0; sr <= 1; sr++)
        for (size_t n : kSizes) {
          SCOPED_TRACE(testing::Message()
                       << "bits " << bits << " ranks " << ranks << " sr " << sr << " n " << n);
          lh_sharedq_params p = {bits, 50, ranks, sr};
          std::vector<float> x = test_input(n, 300 + bits);
          std::vector<float> scales = local_scales(p, x);
          for (float &s : scales)
            s *= 1.25f; // another rank had larger values
          Guarded out(lh_sharedq_payload_bytes(&p, n));
          ASSERT_EQ(lh_sharedq_encode(&p, &kKey, scales.data(), x.data(), n, out.data()),
                    LH_SUCCESS);
          ASSERT_EQ(out.payload(), ref_sharedq(p, kKey, scales, x));
          ASSERT_TRUE(out.guard_intact());
          std::vector<float> y = poisoned_floats(n);
          ASSERT_EQ(lh_sharedq_decode(&p, scales.data(), out.data(), n, y.data(), 0), LH_SUCCESS);
          ASSERT_TRUE(float_guard_intact(y, n));
          float m = (float)lh_quant_max_code(bits);
          for (size_t i = 0; i < n; i++) {
            float spacing = 2.0f * scales[i / 50] / m;
            float bound = (sr ? spacing : spacing / 2) * (1.0f + 1e-5f) + 1e-30f;
            ASSERT_LE(std::fabs(y[i] - x[i]), bound) << i;
          }
        }
}

TEST(Sharedq, BlocksSpanningTilesMatchReference) {
  size_t n = 5003;
  std::vector<float> x = test_input(n, 80);
  for (int block : {1000, 3, 4101})
    for (int sr = 0; sr <= 1; sr++) {
      lh_sharedq_params p = {6, block, 3, sr};
      std::vector<float> scales = local_scales(p, x);
      std::vector<uint8_t> out(lh_sharedq_payload_bytes(&p, n));
      ASSERT_EQ(lh_sharedq_encode(&p, &kKey, scales.data(), x.data(), n, out.data()), LH_SUCCESS);
      ASSERT_EQ(out, ref_sharedq(p, kKey, scales, x)) << block << " " << sr;
    }
}

TEST(Sharedq, SummedCodesDecodeToTheSumOfValues) {
  const int ranks = 5;
  size_t n = 1000;
  for (int exact_steps = 0; exact_steps <= 1; exact_steps++) {
    lh_sharedq_params p = {4, 128, ranks, 1};
    std::vector<std::vector<float>> xs;
    std::vector<float> scales(lh_sharedq_scale_count(&p, n), 0.0f);
    for (int r = 0; r < ranks; r++) {
      xs.push_back(Gaussian(n, 400 + r));
      std::vector<float> s = local_scales(p, xs.back());
      for (size_t k = 0; k < s.size(); k++)
        scales[k] = std::max(scales[k], s[k]);
    }
    if (exact_steps) // S = M * 2^k: every step and product is exact
      for (float &s : scales)
        s = 14.0f * exp2f(std::ceil(std::log2(s / 14.0f)));
    int width = lh_sharedq_code_bytes(&p);
    std::vector<uint8_t> acc(n * width, 0), one(n * width);
    std::vector<double> exact(n, 0.0); // sum of the codes times 2
    std::vector<float> value_sum(n, 0.0f), y(n);
    for (int r = 0; r < ranks; r++) {
      lh_rng_key key = kKey;
      key.rank = (uint32_t)r;
      ASSERT_EQ(lh_sharedq_encode(&p, &key, scales.data(), xs[r].data(), n, one.data()),
                LH_SUCCESS);
      ASSERT_EQ(lh_sharedq_decode(&p, scales.data(), one.data(), n, y.data(), 0), LH_SUCCESS);
      for (size_t i = 0; i < n; i++) {
        value_sum[i] += y[i];
        exact[i] += 2.0 * load_code(one.data(), i, width);
      }
      ASSERT_EQ(lh_sharedq_sum(&p, acc.data(), one.data(), n), LH_SUCCESS);
    }
    ASSERT_EQ(lh_sharedq_decode(&p, scales.data(), acc.data(), n, y.data(), 0), LH_SUCCESS);
    for (size_t i = 0; i < n; i++) {
      float step = lh_quant_step(scales[i / 128], 14);
      // One rounding of the exact product (2 sum c) * step: exact in double first.
      ASSERT_TRUE(same_bits(y[i], (float)(exact[i] * (double)step))) << i;
      if (exact_steps)
        ASSERT_TRUE(same_bits(y[i], value_sum[i])) << i;
      else
        ASSERT_NEAR(y[i], value_sum[i], 4 * ranks * FLT_EPSILON * scales[i / 128]) << i;
    }
  }
}

TEST(Sharedq, OutOfRangeCodesAreCorrupt) {
  // 4 bits, 3 ranks: 2 bits of headroom in an int8, codes up to 3 * 7 = 21.
  lh_sharedq_params p = {4, 8, 3, 0};
  const float scales[1] = {7.0f}; // step 0.5
  std::vector<float> x(8, 7.0f);
  std::vector<uint8_t> one(8), acc(8, 0);
  ASSERT_EQ(lh_sharedq_encode(&p, nullptr, scales, x.data(), 8, one.data()), LH_SUCCESS);
  EXPECT_EQ(one[0], 7);
  std::vector<float> y = poisoned_floats(8);
  for (int r = 0; r < 3; r++)
    ASSERT_EQ(lh_sharedq_sum(&p, acc.data(), one.data(), 8), LH_SUCCESS);
  EXPECT_EQ(lh_sharedq_decode(&p, scales, acc.data(), 8, y.data(), 0), LH_SUCCESS);
  EXPECT_EQ(y[0], 21.0f);
  ASSERT_EQ(lh_sharedq_sum(&p, acc.data(), one.data(), 8), LH_SUCCESS); // a fourth rank
  y = poisoned_floats(8);
  EXPECT_EQ(lh_sharedq_decode(&p, scales, acc.data(), 8, y.data(), 1), LH_ERR_CORRUPT);
  EXPECT_NE(std::string(lh_last_error()).find("element 0"), std::string::npos);
  for (float v : y)
    ASSERT_TRUE(same_bits(v, poison_float()));
  // -128 in an int8 with no headroom is out of range too.
  lh_sharedq_params p8 = {8, 8, 1, 0};
  std::vector<uint8_t> in(8, 0);
  in[5] = 0x80;
  EXPECT_EQ(lh_sharedq_decode(&p8, scales, in.data(), 8, y.data(), 0), LH_ERR_CORRUPT);
  EXPECT_NE(std::string(lh_last_error()).find("element 5"), std::string::npos);
}

TEST(Sharedq, SumWrapsWithoutUndefinedBehaviour) {
  lh_sharedq_params p = {8, 8, 2, 0}; // int16 containers
  ASSERT_EQ(lh_sharedq_code_bytes(&p), 2);
  std::vector<uint8_t> acc(4), in(4);
  store_code(acc.data(), 0, 2, 32767);
  store_code(acc.data(), 1, 2, -200);
  store_code(in.data(), 0, 2, 1);
  store_code(in.data(), 1, 2, 54);
  ASSERT_EQ(lh_sharedq_sum(&p, acc.data(), in.data(), 2), LH_SUCCESS);
  EXPECT_EQ(load_code(acc.data(), 0, 2), -32768);
  EXPECT_EQ(load_code(acc.data(), 1, 2), -146);
  lh_sharedq_params p32 = {8, 8, 1000, 0}; // int32 containers
  std::vector<uint8_t> a32(4), b32(4);
  store_code(a32.data(), 0, 4, -7000);
  store_code(b32.data(), 0, 4, 2500);
  ASSERT_EQ(lh_sharedq_sum(&p32, a32.data(), b32.data(), 1), LH_SUCCESS);
  EXPECT_EQ(load_code(a32.data(), 0, 4), -4500);
}

TEST(Sharedq, ErrorFeedbackInvariant) {
  lh_sharedq_params p = {5, 64, 4, 1};
  size_t n = 700;
  std::vector<float> x = Gaussian(n, 31), e = Gaussian(n, 32, 0.1f), e0 = e;
  std::vector<float> sum(n);
  for (size_t i = 0; i < n; i++)
    sum[i] = x[i] + e0[i];
  std::vector<float> scales = local_scales(p, sum);
  std::vector<uint8_t> out(lh_sharedq_payload_bytes(&p, n));
  ASSERT_EQ(lh_sharedq_encode_ef(&p, &kKey, scales.data(), x.data(), e.data(), n, out.data()),
            LH_SUCCESS);
  EXPECT_EQ(out, ref_sharedq(p, kKey, scales, sum));
  std::vector<float> y(n);
  ASSERT_EQ(lh_sharedq_decode(&p, scales.data(), out.data(), n, y.data(), 0), LH_SUCCESS);
  for (size_t i = 0; i < n; i++)
    ASSERT_TRUE(same_bits(e[i], sum[i] - y[i])) << i;
  // Accumulate adds the same values.
  std::vector<float> acc = Gaussian(n, 33), expect(n);
  for (size_t i = 0; i < n; i++)
    expect[i] = acc[i] + y[i];
  ASSERT_EQ(lh_sharedq_decode(&p, scales.data(), out.data(), n, acc.data(), 1), LH_SUCCESS);
  for (size_t i = 0; i < n; i++)
    ASSERT_TRUE(same_bits(acc[i], expect[i])) << i;
}

TEST(Sharedq, BadScalesAndInputAreRefusedBeforeWriting) {
  lh_sharedq_params p = {8, 4, 2, 0};
  std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8};
  for (float bad : {NAN, INFINITY, -1.0f}) {
    std::vector<float> scales = {4, bad};
    Guarded out(lh_sharedq_payload_bytes(&p, 8));
    EXPECT_EQ(lh_sharedq_encode(&p, nullptr, scales.data(), x.data(), 8, out.data()),
              LH_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(lh_last_error()).find("block 1"), std::string::npos);
    EXPECT_EQ(out.buf, std::vector<uint8_t>(out.buf.size(), kPoisonByte));
    std::vector<float> y = poisoned_floats(8);
    EXPECT_EQ(lh_sharedq_decode(&p, scales.data(), out.data(), 8, y.data(), 0),
              LH_ERR_INVALID_ARGUMENT);
    for (float v : y)
      ASSERT_TRUE(same_bits(v, poison_float()));
  }
  std::vector<float> scales = {4, 8}, e(8, 0.0f);
  x[7] = INFINITY;
  Guarded out(lh_sharedq_payload_bytes(&p, 8));
  EXPECT_EQ(lh_sharedq_encode_ef(&p, nullptr, scales.data(), x.data(), e.data(), 8, out.data()),
            LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("element 7"), std::string::npos);
  EXPECT_EQ(e, std::vector<float>(8, 0.0f));
  EXPECT_EQ(out.buf, std::vector<uint8_t>(out.buf.size(), kPoisonByte));
  // NULL buffers, and n = 0 without any.
  EXPECT_EQ(lh_sharedq_encode(&p, nullptr, nullptr, x.data(), 8, out.data()),
            LH_ERR_INVALID_ARGUMENT);
  lh_sharedq_params sr = {8, 4, 2, 1};
  EXPECT_EQ(lh_sharedq_encode(&sr, nullptr, scales.data(), x.data(), 8, out.data()),
            LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_sharedq_sum(&p, nullptr, out.data(), 8), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_sharedq_encode(&p, nullptr, nullptr, nullptr, 0, nullptr), LH_SUCCESS);
  EXPECT_EQ(lh_sharedq_decode(&p, nullptr, nullptr, 0, nullptr, 0), LH_SUCCESS);
  EXPECT_EQ(lh_sharedq_sum(&p, nullptr, nullptr, 0), LH_SUCCESS);
  EXPECT_EQ(lh_sharedq_local_scales(&p, nullptr, 0, nullptr), LH_SUCCESS);
}

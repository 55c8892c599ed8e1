// Top-k and random-k sparsification (lib/compress/topk.c, randk.c): payload bytes against
// brute-force references, decoding, refusal of corrupt payloads, error feedback, summing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <longhaul/status.h>

#include "compress/payload.h"

#include "codec_inputs.h"

namespace {

using Bytes = std::vector<uint8_t>;

uint32_t Key(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u & 0x7FFFFFFFu;
}

uint32_t Bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

// Three magnitudes with both signs and both zeros: most selections are decided by the tie rule.
std::vector<float> ManyTies(size_t n, uint32_t seed) {
  static const float kValues[] = {0.5f, -0.5f, 1.0f, -1.0f, 2.0f, -2.0f, 0.0f, -0.0f};
  std::mt19937 gen(seed);
  std::vector<float> x(n);
  for (auto &v : x)
    v = kValues[gen() % 8];
  return x;
}

struct Chunking {
  size_t chunk, k;
  size_t Len(size_t n, size_t c) const { return std::min(chunk, n - c * chunk); }
  size_t Kc(size_t n, size_t c) const { return std::min(k, Len(n, c)); }
  size_t Chunks(size_t n) const { return (n + chunk - 1) / chunk; }
  size_t FirstEntry(size_t c) const { return c * std::min(k, chunk); }
};

// A TOPK payload built from its description in payload.h, one chosen index list per chunk.
Bytes BuildTopkPayload(const Chunking &ch, const std::vector<float> &x,
                       const std::vector<std::vector<uint16_t>> &chosen) {
  size_t entries = 0;
  for (const auto &c : chosen)
    entries += c.size();
  size_t values_at = (2 * entries + 3) / 4 * 4;
  Bytes out(values_at + 4 * entries, 0);
  size_t e = 0;
  for (size_t c = 0; c < chosen.size(); c++)
    for (uint16_t index : chosen[c]) {
      out[2 * e] = (uint8_t)index;
      out[2 * e + 1] = (uint8_t)(index >> 8);
      uint32_t bits = Bits(x[c * ch.chunk + index]);
      for (int b = 0; b < 4; b++)
        out[values_at + 4 * e + b] = (uint8_t)(bits >> (8 * b));
      e++;
    }
  return out;
}

// Brute force: sort the chunk by (key descending, index ascending), keep k_c, sort by index.
Bytes ReferenceTopk(const Chunking &ch, const std::vector<float> &x) {
  size_t n = x.size();
  std::vector<std::vector<uint16_t>> chosen;
  for (size_t c = 0; c < ch.Chunks(n); c++) {
    std::vector<uint16_t> order(ch.Len(n, c));
    for (size_t i = 0; i < order.size(); i++)
      order[i] = (uint16_t)i;
    const float *xc = x.data() + c * ch.chunk;
    std::sort(order.begin(), order.end(), [&](uint16_t a, uint16_t b) {
      return Key(xc[a]) != Key(xc[b]) ? Key(xc[a]) > Key(xc[b]) : a < b;
    });
    order.resize(ch.Kc(n, c));
    std::sort(order.begin(), order.end());
    chosen.push_back(order);
  }
  return BuildTopkPayload(ch, x, chosen);
}

lh_topk_params TopkParams(const Chunking &ch, int sampled) {
  return lh_topk_params{(int)ch.chunk, (int)ch.k, sampled};
}

Bytes EncodeTopk(const lh_topk_params &p, const std::vector<float> &x) {
  Bytes out(lh_topk_payload_bytes(&p, x.size()), 0xEE);
  EXPECT_EQ(lh_topk_encode(&p, x.data(), x.size(), out.data()), LH_SUCCESS) << lh_last_error();
  return out;
}

// The indices of one chunk of a TOPK payload.
std::vector<uint16_t> ChunkIndices(const Chunking &ch, size_t n, const Bytes &payload, size_t c) {
  std::vector<uint16_t> idx(ch.Kc(n, c));
  for (size_t j = 0; j < idx.size(); j++)
    std::memcpy(&idx[j], payload.data() + 2 * (ch.FirstEntry(c) + j), 2);
  return idx;
}

// ---- Top-k ----------------------------------------------------------------------------------

TEST(Topk, EntriesAndPayloadBytes) {
  lh_topk_params p{4, 2, 0};
  EXPECT_EQ(lh_topk_entries(&p, 0), 0u);
  EXPECT_EQ(lh_topk_payload_bytes(&p, 0), 0u);
  EXPECT_EQ(lh_topk_entries(&p, 10), 6u);        // 4 4 2 -> 2 2 2
  EXPECT_EQ(lh_topk_payload_bytes(&p, 10), 36u); // 12 index bytes + 24 value bytes
  EXPECT_EQ(lh_topk_entries(&p, 9), 5u);         // 4 4 1 -> 2 2 1
  EXPECT_EQ(lh_topk_payload_bytes(&p, 9), 12u + 20u); // 10 index bytes padded to 12
  lh_topk_params wide{4, 10, 0};                 // k > chunk: every element
  EXPECT_EQ(lh_topk_entries(&wide, 9), 9u);
  lh_topk_params bad{0, 1, 0};
  EXPECT_EQ(lh_topk_entries(&bad, 10), 0u);
  bad = {65537, 1, 0};
  EXPECT_EQ(lh_topk_entries(&bad, 10), 0u);
  EXPECT_EQ(lh_topk_entries(nullptr, 10), 0u);
}

TEST(Topk, HandCheckedBytes) {
  // Chunk 0: |x| = 1 3 2 3 -> the two 3s (indices 1, 3); chunk 1 is short: both elements.
  const std::vector<float> x = {1.0f, -3.0f, 2.0f, -3.0f, 0.5f, 0.25f};
  const Bytes expected = {1, 0, 3, 0, 0, 0, 1, 0,                 // indices
                          0, 0, 0x40, 0xC0, 0, 0, 0x40, 0xC0,     // -3, -3
                          0, 0, 0, 0x3F, 0, 0, 0x80, 0x3E};       // 0.5, 0.25
  for (int sampled = 0; sampled <= 1; sampled++)
    EXPECT_EQ(EncodeTopk({4, 2, sampled}, x), expected) << "sampled " << sampled;

  // Ties go to the lower index, whatever the sign; an odd entry count pads with zero bytes.
  EXPECT_EQ(EncodeTopk({4, 2, 0}, {2.0f, -2.0f, 2.0f, 1.0f}),
            (Bytes{0, 0, 1, 0, 0, 0, 0, 0x40, 0, 0, 0, 0xC0}));
  EXPECT_EQ(EncodeTopk({4, 1, 0}, {0.0f, -0.0f, -1.0f, 1.0f}),
            (Bytes{2, 0, 0, 0, 0, 0, 0x80, 0xBF}));
}

TEST(Topk, ExactAndSampledMatchBruteForce) {
  const size_t chunks[] = {1, 7, 64, 700, 4096};
  int cases = 0;
  for (size_t chunk : chunks) {
    const size_t sizes[] = {0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk + chunk / 3 + 1};
    const size_t ks[] = {1, 3, chunk / 10 + 1, chunk / 2 + 1, chunk, chunk + 5};
    for (size_t n : sizes)
      for (size_t k : ks)
        for (int dist = 0; dist < 2; dist++) {
          uint32_t seed = (uint32_t)(n * 131 + k * 7 + dist);
          std::vector<float> x = dist ? ManyTies(n, seed) : Gaussian(n, seed);
          Chunking ch{chunk, k};
          Bytes expected = ReferenceTopk(ch, x);
          for (int sampled = 0; sampled <= 1; sampled++)
            ASSERT_EQ(EncodeTopk(TopkParams(ch, sampled), x), expected)
                << "chunk " << chunk << " n " << n << " k " << k << " ties " << dist
                << " sampled " << sampled;
          cases++;
        }
  }
  EXPECT_EQ(cases, 5 * 6 * 6 * 2);
}

// Inputs built to defeat the sample: the sampled elements (stride 16 for a chunk of 4096) are
// the largest, so too few candidates pass and the chunk falls back; ascending and descending
// magnitudes; a chunk of zeros (everything passes); spikes between the sampled positions.
TEST(Topk, SampledFallbacksStillGiveTheExactTopK) {
  const size_t chunk = 4096, n = 3 * chunk + 1000;
  std::vector<std::vector<float>> inputs;
  std::vector<float> x(n);
  for (size_t i = 0; i < n; i++)
    x[i] = i % 16 == 0 ? 100.0f + (float)i : 1e-3f * (float)(i % 97);
  inputs.push_back(x);
  for (size_t i = 0; i < n; i++)
    x[i] = (float)i;
  inputs.push_back(x);
  for (size_t i = 0; i < n; i++)
    x[i] = -(float)(n - i);
  inputs.push_back(x);
  inputs.push_back(std::vector<float>(n, 0.0f));
  x = Gaussian(n, 5);
  for (size_t i = 8; i < n; i += 160)
    x[i] = 50.0f;
  inputs.push_back(x);
  for (size_t k : {1, 41, 200, 1000, 2100, 4096})
    for (size_t which = 0; which < inputs.size(); which++) {
      Chunking ch{chunk, k};
      EXPECT_EQ(EncodeTopk(TopkParams(ch, 1), inputs[which]), ReferenceTopk(ch, inputs[which]))
          << "input " << which << " k " << k;
    }
}

// What the sampled method promises on its own, checked without the exact reference: k_c
// distinct ascending indices per chunk, the same bytes every time, and most of the mass of the
// true top-k. (It is in fact the exact top-k, as the test above shows, so the captured sum of
// squares is the exact one; the 0.8 bound is what a merely approximate threshold would have
// to meet: a sample of 256 per chunk places the threshold within a few ranks of the truth.)
TEST(Topk, SampledKeepsKDistinctAscendingAndTheMass) {
  const Chunking ch{4096, 41};
  const size_t n = 16 * 4096 + 1234;
  std::vector<float> x = Gaussian(n, 11);
  lh_topk_params p = TopkParams(ch, 1);
  Bytes payload = EncodeTopk(p, x);
  EXPECT_EQ(EncodeTopk(p, x), payload);
  double captured = 0.0, exact = 0.0;
  Bytes reference = ReferenceTopk(ch, x);
  for (size_t c = 0; c < ch.Chunks(n); c++) {
    std::vector<uint16_t> idx = ChunkIndices(ch, n, payload, c);
    ASSERT_EQ(idx.size(), ch.Kc(n, c));
    for (size_t j = 0; j < idx.size(); j++) {
      ASSERT_LT(idx[j], ch.Len(n, c));
      if (j > 0)
        ASSERT_LT(idx[j - 1], idx[j]) << "chunk " << c;
      double v = x[c * ch.chunk + idx[j]];
      captured += v * v;
    }
    for (uint16_t i : ChunkIndices(ch, n, reference, c)) {
      double v = x[c * ch.chunk + i];
      exact += v * v;
    }
  }
  EXPECT_GE(captured, 0.8 * exact);
}

TEST(Topk, NonFiniteInputIsRankedByItsBitsAndNeverCrashes) {
  // 1024 elements: long enough for the sampled path (elements 0, 4, 8, ... are sampled).
  std::vector<float> x(1024, 1.0f);
  x[5] = std::numeric_limits<float>::infinity();
  x[9] = std::numeric_limits<float>::quiet_NaN();
  x[40] = -std::numeric_limits<float>::infinity();
  x[50] = 1e30f;
  for (int sampled = 0; sampled <= 1; sampled++) {
    Bytes payload = EncodeTopk({1024, 3, sampled}, x);
    // NaN sorts above both infinities; 1e30 is next, but only three are kept.
    EXPECT_EQ(ChunkIndices({1024, 3}, 1024, payload, 0), (std::vector<uint16_t>{5, 9, 40}));
  }
}

TEST(Topk, DecodeZeroesAndScattersOrAccumulates) {
  const Chunking ch{100, 7};
  const size_t n = 1050;
  std::vector<float> x = Gaussian(n, 3);
  lh_topk_params p = TopkParams(ch, 0);
  Bytes payload = EncodeTopk(p, x);
  std::vector<float> dense(n, 0.0f);
  for (size_t c = 0; c < ch.Chunks(n); c++)
    for (uint16_t i : ChunkIndices(ch, n, payload, c))
      dense[c * ch.chunk + i] = x[c * ch.chunk + i];

  std::vector<float> out(n, 7.0f);
  ASSERT_EQ(lh_topk_decode(&p, payload.data(), n, out.data(), 0), LH_SUCCESS);
  EXPECT_EQ(out, dense);

  std::vector<float> acc = Gaussian(n, 4), expected(n);
  for (size_t i = 0; i < n; i++)
    expected[i] = acc[i] + dense[i];
  ASSERT_EQ(lh_topk_decode(&p, payload.data(), n, acc.data(), 1), LH_SUCCESS);
  EXPECT_EQ(acc, expected);
}

TEST(Topk, UnalignedPayloadBuffers) {
  const Chunking ch{64, 5};
  const size_t n = 300;
  std::vector<float> x = Gaussian(n, 8);
  lh_topk_params p = TopkParams(ch, 0);
  Bytes aligned = EncodeTopk(p, x);
  Bytes shifted(aligned.size() + 3);
  ASSERT_EQ(lh_topk_encode(&p, x.data(), n, shifted.data() + 3), LH_SUCCESS);
  EXPECT_TRUE(std::equal(aligned.begin(), aligned.end(), shifted.begin() + 3));
  std::vector<float> a(n), b(n);
  ASSERT_EQ(lh_topk_decode(&p, aligned.data(), n, a.data(), 0), LH_SUCCESS);
  ASSERT_EQ(lh_topk_decode(&p, shifted.data() + 3, n, b.data(), 0), LH_SUCCESS);
  EXPECT_EQ(a, b);
}

TEST(Topk, CorruptPayloadsAreRefusedBeforeWriting) {
  const Chunking ch{16, 4};
  const size_t n = 40; // chunks of 16, 16, 8
  std::vector<float> x = Gaussian(n, 9);
  lh_topk_params p = TopkParams(ch, 0);
  const Bytes good = EncodeTopk(p, x);
  struct Damage {
    size_t entry;
    uint16_t index;
    const char *what;
  };
  // Entry 4..7 is chunk 1, 8..11 chunk 2 (8 elements).
  const Damage damages[] = {
      {5, 16, "chunk 1 entry 1"},  // outside a full chunk
      {9, 8, "chunk 2 entry 1"},   // outside the short last chunk
      {0, 65535, "chunk 0 entry 0"},
  };
  auto index_at = [&](size_t entry) {
    uint16_t v;
    std::memcpy(&v, good.data() + 2 * entry, 2);
    return v;
  };
  std::vector<Bytes> bad;
  std::vector<std::string> where;
  for (const Damage &d : damages) {
    Bytes b = good;
    std::memcpy(b.data() + 2 * d.entry, &d.index, 2);
    bad.push_back(b);
    where.push_back(d.what);
  }
  Bytes dup = good; // entry 6 repeats entry 5
  uint16_t v5 = index_at(5);
  std::memcpy(dup.data() + 2 * 6, &v5, 2);
  bad.push_back(dup);
  where.push_back("chunk 1 entry 2");
  Bytes swapped = good; // entries 8 and 9 descending
  uint16_t v8 = index_at(8), v9 = index_at(9);
  std::memcpy(swapped.data() + 2 * 8, &v9, 2);
  std::memcpy(swapped.data() + 2 * 9, &v8, 2);
  bad.push_back(swapped);
  where.push_back("chunk 2 entry 1");

  for (size_t b = 0; b < bad.size(); b++)
    for (int accumulate = 0; accumulate <= 1; accumulate++) {
      std::vector<float> out(n, -123.5f);
      EXPECT_EQ(lh_topk_decode(&p, bad[b].data(), n, out.data(), accumulate), LH_ERR_CORRUPT)
          << where[b];
      EXPECT_NE(std::string(lh_last_error()).find(where[b]), std::string::npos)
          << lh_last_error();
      EXPECT_EQ(out, std::vector<float>(n, -123.5f)) << where[b];
    }
}

TEST(Topk, ErrorFeedbackKeepsExactlyWhatWasNotSent) {
  const Chunking ch{256, 9};
  const size_t n = 1000;
  for (int sampled = 0; sampled <= 1; sampled++) {
    lh_topk_params p = TopkParams(ch, sampled);
    std::vector<float> e = Gaussian(n, 20);
    for (int step = 0; step < 3; step++) {
      std::vector<float> x = Gaussian(n, 21 + step), sum(n);
      for (size_t i = 0; i < n; i++)
        sum[i] = x[i] + e[i];
      Bytes payload(lh_topk_payload_bytes(&p, n));
      ASSERT_EQ(lh_topk_encode_ef(&p, x.data(), e.data(), n, payload.data()), LH_SUCCESS);
      // What was sent is top-k of x + e, and the residual is (x + e) - decode, bit for bit.
      EXPECT_EQ(payload, ReferenceTopk(ch, sum));
      std::vector<float> decoded(n);
      ASSERT_EQ(lh_topk_decode(&p, payload.data(), n, decoded.data(), 0), LH_SUCCESS);
      for (size_t i = 0; i < n; i++)
        ASSERT_EQ(Bits(e[i]), Bits(sum[i] - decoded[i])) << i;
    }
    // x may be the residual itself: e = 2e, then the sent entries are cleared.
    std::vector<float> e2 = Gaussian(n, 30), doubled(n);
    for (size_t i = 0; i < n; i++)
      doubled[i] = e2[i] + e2[i];
    Bytes payload(lh_topk_payload_bytes(&p, n));
    ASSERT_EQ(lh_topk_encode_ef(&p, e2.data(), e2.data(), n, payload.data()), LH_SUCCESS);
    EXPECT_EQ(payload, ReferenceTopk(ch, doubled));
  }
}

TEST(Topk, BadArgumentsAreRefused) {
  std::vector<float> x(10, 1.0f), e(10, 0.0f);
  Bytes out(1024);
  lh_topk_params p{4, 2, 0}, bad{4, 0, 0};
  EXPECT_EQ(lh_topk_encode(&bad, x.data(), 10, out.data()), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_topk_encode(nullptr, x.data(), 10, out.data()), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_topk_encode(&p, nullptr, 10, out.data()), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_topk_encode(&p, x.data(), 10, nullptr), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_topk_encode_ef(&p, x.data(), nullptr, 10, out.data()), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_topk_decode(&p, nullptr, 10, x.data(), 0), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_topk_decode(&bad, out.data(), 10, x.data(), 0), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_topk_encode(&p, nullptr, 0, nullptr), LH_SUCCESS); // nothing to do
}

// ---- Random-k -------------------------------------------------------------------------------

lh_rng_key RngKey(uint64_t seed, uint64_t step, uint32_t rank) {
  return lh_rng_key{seed, step, rank};
}

Bytes EncodeRandk(const lh_randk_params &p, const lh_rng_key &key, const std::vector<float> &x) {
  Bytes out(lh_randk_payload_bytes(&p, x.size()), 0xEE);
  EXPECT_EQ(lh_randk_encode(&p, &key, x.data(), x.size(), out.data()), LH_SUCCESS)
      << lh_last_error();
  return out;
}

std::vector<float> Floats(const Bytes &b) {
  std::vector<float> v(b.size() / 4);
  std::memcpy(v.data(), b.data(), 4 * v.size());
  return v;
}

// The chosen element of every entry, from payload.h's formula with 64-bit arithmetic.
std::vector<size_t> RandkPositions(const Chunking &ch, const lh_rng_key &key, size_t n) {
  lh_rng_key shared = key;
  shared.rank = LH_RNG_SHARED_RANK;
  std::vector<size_t> pos;
  for (size_t c = 0; c < ch.Chunks(n); c++) {
    uint64_t len = ch.Len(n, c), kc = ch.Kc(n, c);
    uint64_t off = lh_rng_u32(&shared, c) % len;
    for (uint64_t j = 0; j < kc; j++)
      pos.push_back(c * ch.chunk + (off + j * len / kc) % len);
  }
  return pos;
}

// x[i] = i is exact in fp32 below 2^24, so the payload spells out the chosen elements.
std::vector<float> Iota(size_t n) {
  std::vector<float> x(n);
  for (size_t i = 0; i < n; i++)
    x[i] = (float)i;
  return x;
}

TEST(Randk, PositionsFollowTheFormula) {
  const Chunking shapes[] = {{100, 7}, {4096, 41}, {1, 1}, {5, 9}, {65536, 65536}, {777, 776}};
  for (const Chunking &ch : shapes)
    for (size_t n : {ch.chunk * 3 + ch.chunk / 2 + 1, ch.chunk, (size_t)1}) {
      lh_randk_params p{(int)ch.chunk, (int)ch.k};
      lh_rng_key key = RngKey(0x1234567890ABCDEFull, 77, 3);
      std::vector<float> got = Floats(EncodeRandk(p, key, Iota(n)));
      std::vector<size_t> want = RandkPositions(ch, key, n);
      ASSERT_EQ(got.size(), want.size());
      ASSERT_EQ(lh_randk_entries(&p, n), want.size());
      for (size_t e = 0; e < want.size(); e++)
        ASSERT_EQ(got[e], (float)want[e]) << "chunk " << ch.chunk << " k " << ch.k << " n " << n
                                          << " entry " << e;
    }
}

TEST(Randk, ChoiceIsSharedByRanksAndChangesWithStepAndSeed) {
  lh_randk_params p{256, 10};
  std::vector<float> x = Iota(4096);
  Bytes rank0 = EncodeRandk(p, RngKey(5, 1, 0), x);
  EXPECT_EQ(EncodeRandk(p, RngKey(5, 1, 7), x), rank0);
  EXPECT_EQ(EncodeRandk(p, RngKey(5, 1, LH_RNG_SHARED_RANK), x), rank0);
  EXPECT_NE(EncodeRandk(p, RngKey(5, 2, 0), x), rank0);
  EXPECT_NE(EncodeRandk(p, RngKey(6, 1, 0), x), rank0);
  EXPECT_NE(EncodeRandk(p, RngKey(5, 1ull << 40, 0), x), rank0); // high step bits count too
}

// Each element is chosen with probability k/chunk per step (the offset is uniform over the
// chunk). Over S steps the count is binomial(S, k/chunk): mean 350, sd 18 for S = 5000, k = 7,
// chunk = 100; 6 sd either side fails with probability < 1e-8 per element.
TEST(Randk, EveryElementIsChosenAboutKOverChunkOfTheTime) {
  const Chunking ch{100, 7};
  const size_t n = 250, steps = 5000; // the last chunk has 50 elements, k 7 as well
  lh_randk_params p{(int)ch.chunk, (int)ch.k};
  std::vector<int> hits(n, 0);
  for (size_t s = 0; s < steps; s++)
    for (size_t pos : RandkPositions(ch, RngKey(99, s, 0), n))
      hits[pos]++;
  for (size_t c = 0; c < ch.Chunks(n); c++) {
    double prob = (double)ch.Kc(n, c) / (double)ch.Len(n, c);
    double mean = prob * steps, sd = std::sqrt(steps * prob * (1 - prob));
    for (size_t i = c * ch.chunk; i < c * ch.chunk + ch.Len(n, c); i++)
      EXPECT_NEAR(hits[i], mean, 6 * sd) << "element " << i;
  }
  // And the library agrees with the formula used above on a few of those steps.
  for (size_t s = 0; s < steps; s += 997) {
    std::vector<float> got = Floats(EncodeRandk(p, RngKey(99, s, 0), Iota(n)));
    std::vector<size_t> want = RandkPositions(ch, RngKey(99, s, 0), n);
    for (size_t e = 0; e < want.size(); e++)
      ASSERT_EQ(got[e], (float)want[e]);
  }
}

TEST(Randk, DecodeZeroesAndScattersOrAccumulates) {
  const Chunking ch{64, 5};
  const size_t n = 300;
  lh_randk_params p{64, 5};
  lh_rng_key key = RngKey(1, 2, 0);
  std::vector<float> x = Gaussian(n, 40), dense(n, 0.0f);
  for (size_t pos : RandkPositions(ch, key, n))
    dense[pos] = x[pos];
  Bytes payload = EncodeRandk(p, key, x);
  std::vector<float> out(n, 5.0f);
  ASSERT_EQ(lh_randk_decode(&p, &key, payload.data(), n, out.data(), 0), LH_SUCCESS);
  EXPECT_EQ(out, dense);
  std::vector<float> acc = Gaussian(n, 41), expected(n);
  for (size_t i = 0; i < n; i++)
    expected[i] = acc[i] + dense[i];
  ASSERT_EQ(lh_randk_decode(&p, &key, payload.data(), n, acc.data(), 1), LH_SUCCESS);
  EXPECT_EQ(acc, expected);
  // k >= chunk sends every element: the round trip is lossless.
  lh_randk_params all{64, 64};
  Bytes full = EncodeRandk(all, key, x);
  ASSERT_EQ(lh_randk_decode(&all, &key, full.data(), n, out.data(), 0), LH_SUCCESS);
  EXPECT_EQ(out, x);
}

TEST(Randk, SumOfPayloadsDecodesToTheSumOfDecodes) {
  lh_randk_params p{128, 12};
  const size_t n = 1000;
  lh_rng_key key_rank0 = RngKey(8, 3, 0), key_rank1 = RngKey(8, 3, 1);
  std::vector<float> a = Gaussian(n, 50), b = Gaussian(n, 51), ab(n);
  for (size_t i = 0; i < n; i++)
    ab[i] = a[i] + b[i];
  Bytes pa = EncodeRandk(p, key_rank0, a), pb = EncodeRandk(p, key_rank1, b);
  // Summed on the wire, through an unaligned buffer: the same as encoding a + b.
  Bytes sum(pa.size() + 1);
  std::memcpy(sum.data() + 1, pa.data(), pa.size());
  ASSERT_EQ(lh_randk_sum(&p, sum.data() + 1, pb.data(), n), LH_SUCCESS);
  Bytes summed(sum.begin() + 1, sum.end());
  EXPECT_EQ(summed, EncodeRandk(p, key_rank0, ab));
  std::vector<float> from_sum(n), from_each(n);
  ASSERT_EQ(lh_randk_decode(&p, &key_rank0, summed.data(), n, from_sum.data(), 0), LH_SUCCESS);
  ASSERT_EQ(lh_randk_decode(&p, &key_rank0, pa.data(), n, from_each.data(), 0), LH_SUCCESS);
  ASSERT_EQ(lh_randk_decode(&p, &key_rank1, pb.data(), n, from_each.data(), 1), LH_SUCCESS);
  EXPECT_EQ(from_sum, from_each);
}

TEST(Randk, ErrorFeedbackKeepsExactlyWhatWasNotSent) {
  lh_randk_params p{50, 4};
  const size_t n = 333;
  std::vector<float> e = Gaussian(n, 60);
  for (int step = 0; step < 3; step++) {
    lh_rng_key key = RngKey(4, step, 2);
    std::vector<float> x = Gaussian(n, 61 + step), sum(n);
    for (size_t i = 0; i < n; i++)
      sum[i] = x[i] + e[i];
    Bytes payload(lh_randk_payload_bytes(&p, n));
    ASSERT_EQ(lh_randk_encode_ef(&p, &key, x.data(), e.data(), n, payload.data()), LH_SUCCESS);
    EXPECT_EQ(payload, EncodeRandk(p, key, sum));
    std::vector<float> decoded(n);
    ASSERT_EQ(lh_randk_decode(&p, &key, payload.data(), n, decoded.data(), 0), LH_SUCCESS);
    for (size_t i = 0; i < n; i++)
      ASSERT_EQ(Bits(e[i]), Bits(sum[i] - decoded[i])) << i;
  }
}

TEST(Randk, BadArgumentsAreRefused) {
  lh_randk_params p{8, 2}, bad{8, 65537};
  lh_rng_key key = RngKey(1, 1, 1);
  std::vector<float> x(16, 1.0f);
  Bytes out(64);
  EXPECT_EQ(lh_randk_payload_bytes(&p, 16), 16u);
  EXPECT_EQ(lh_randk_payload_bytes(&bad, 16), 0u);
  EXPECT_EQ(lh_randk_encode(&bad, &key, x.data(), 16, out.data()), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_randk_encode(&p, nullptr, x.data(), 16, out.data()), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_randk_encode(&p, &key, nullptr, 16, out.data()), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_randk_encode_ef(&p, &key, x.data(), nullptr, 16, out.data()),
            LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_randk_decode(&p, &key, nullptr, 16, x.data(), 0), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_randk_sum(&p, out.data(), nullptr, 16), LH_ERR_INVALID_ARGUMENT);
}

} // namespace

// AQ-SGD's quantizer twins (lib/aqsgd/quant.c), the reference the CUDA kernels must match.
// Their bytes are held to a plain reference written here from aqsgd_internal.h's text (element
// by element with codec_math.h: no tiles, no SIMD, bit-by-bit packing), and to the properties
// AQ-SGD relies on: codes in range, errors within a step, fp16 scales that never clip,
// sender and receiver buffers that stay bitwise equal, unbiased and reproducible stochastic
// rounding, per-token-group codes that do not depend on the batch.
#if defined(__GNUC__) && !defined(__clang__)
// The reference must round like the library (built with -ffp-contract=off): no FMA.
#pragma GCC optimize("fp-contract=off")
#endif
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "aqsgd/aqsgd_internal.h"

namespace {

const int kTypes[] = {LH_AQ_T_FP32, LH_AQ_T_FP16, LH_AQ_T_BF16};
const char *TypeName(int t) { return t == LH_AQ_T_FP32 ? "fp32" : t == LH_AQ_T_FP16 ? "fp16" : "bf16"; }

lh_aq_qparams Params(size_t tokens, size_t channels, int bits, int quantizer, int group, int stochastic, int dtype,
                     int storage) {
  lh_aq_qparams p;
  std::memset(&p, 0, sizeof p);
  p.tokens = tokens;
  p.channels = channels;
  p.bits = bits;
  p.quantizer = quantizer;
  p.group = group;
  p.stochastic = stochastic;
  p.dtype = dtype;
  p.storage = storage;
  p.seed = 0x0123456789ABCDEFull;
  p.stream = 5;
  return p;
}

std::string Describe(const lh_aq_qparams &p) {
  return std::string(p.quantizer == LH_AQ_Q_PER_CHANNEL ? "per-channel" : "group" + std::to_string(p.group)) +
         " b" + std::to_string(p.bits) + (p.stochastic ? " sr" : " rtn") + " " + TypeName(p.dtype) + "/" +
         TypeName(p.storage) + " T" + std::to_string(p.tokens) + " C" + std::to_string(p.channels);
}

// Elements of one type as raw bytes, read and written as fp32 through the library's helpers.
struct Typed {
  int type = LH_AQ_T_FP32;
  std::vector<uint8_t> bytes;
  Typed() = default;
  Typed(int t, size_t n) : type(t), bytes(n * lh_aq_dtype_bytes(t)) {}
  size_t size() const { return bytes.size() / lh_aq_dtype_bytes(type); }
  float get(size_t i) const { return lh_aq_load(bytes.data(), type, i); }
  void set(size_t i, float v) { lh_aq_put(bytes.data(), type, i, v); }
  void *data() { return bytes.data(); }
  const void *data() const { return bytes.data(); }
  static Typed From(int t, const std::vector<float> &v) {
    Typed x(t, v.size());
    for (size_t i = 0; i < v.size(); i++)
      x.set(i, v[i]);
    return x;
  }
};

// Activation-like values: N(0, 1) with every 7th channel 30 times larger (the large-gain channels
// of a transformer's residual stream), from mt19937(seed).
std::vector<float> Activations(size_t n, size_t channels, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; i++)
    v[i] = dist(gen) * ((i % channels) % 7 == 3 ? 30.0f : 1.0f);
  return v;
}

// a + noise: the next visit's activation.
std::vector<float> Drift(const std::vector<float> &a, float sigma, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(a);
  for (auto &x : v)
    x += dist(gen);
  return v;
}

// ---- the reference, from aqsgd_internal.h's text ----------------------------------------------

uint32_t GetBits(const std::vector<uint8_t> &bytes, uint64_t g, int b) {
  uint32_t code = 0;
  for (int k = 0; k < b; k++) {
    uint64_t bit = g * (uint64_t)b + (uint64_t)k;
    code |= (uint32_t)((bytes[bit / 8] >> (bit % 8)) & 1u) << k;
  }
  return code;
}

void PutBits(std::vector<uint8_t> &bytes, uint64_t g, int b, uint32_t code) {
  for (int k = 0; k < b; k++) {
    uint64_t bit = g * (uint64_t)b + (uint64_t)k;
    if ((code >> k) & 1u)
      bytes[bit / 8] |= (uint8_t)(1u << (bit % 8));
  }
}

struct Call {  // one call's inputs
  size_t rows = 0;
  std::vector<uint32_t> batch_rows;  // empty: NULL
  std::vector<int64_t> slots, ids;
  std::vector<uint32_t> visits;
  const uint32_t *BatchRows() const { return batch_rows.empty() ? nullptr : batch_rows.data(); }
  size_t BatchRow(size_t r) const { return batch_rows.empty() ? r : batch_rows[r]; }
};

float RefDelta(const lh_aq_qparams &p, const Typed &a, const Typed *m, const Call &c, size_t r, size_t j) {
  const size_t E = p.tokens * p.channels;
  float x = a.get(c.BatchRow(r) * E + j);
  return m ? LH_FSUB(x, m->get((size_t)c.slots[r] * E + j)) : x;
}

std::vector<uint16_t> RefScales(const lh_aq_qparams &p, const Typed &a, const Typed *m, const Call &c) {
  const size_t E = p.tokens * p.channels;
  std::vector<uint32_t> mx(lh_aq_scale_count(&p, c.rows), 0);
  for (size_t r = 0; r < c.rows; r++)
    for (size_t j = 0; j < E; j++) {
      uint32_t bits = lh_f32_bits(RefDelta(p, a, m, c, r, j)) & 0x7FFFFFFFu;
      size_t k = p.quantizer == LH_AQ_Q_PER_CHANNEL ? j % p.channels : (r * E + j) / (size_t)p.group;
      mx[k] = std::max(mx[k], bits);
    }
  std::vector<uint16_t> s(mx.size());
  for (size_t k = 0; k < mx.size(); k++)
    s[k] = lh_aq_scale_from_max_bits(mx[k]);
  return s;
}

// Codes (and m updated in place) from the given scales.
std::vector<uint8_t> RefEncode(const lh_aq_qparams &p, const Typed &a, Typed *m, const Call &c,
                               const std::vector<uint16_t> &scales) {
  const size_t E = p.tokens * p.channels;
  const int M = lh_quant_max_code(p.bits);
  std::vector<uint8_t> codes(lh_aq_code_bytes(&p, c.rows), 0);
  for (size_t r = 0; r < c.rows; r++) {
    const lh_rng_key key = {p.seed, p.stochastic ? c.visits[r] : 0u, p.stream};
    for (size_t j = 0; j < E; j++) {
      float d = RefDelta(p, a, m, c, r, j);
      size_t k = p.quantizer == LH_AQ_Q_PER_CHANNEL ? j % p.channels : (r * E + j) / (size_t)p.group;
      float s = lh_f16_to_f32(scales[k]);
      uint32_t word = p.stochastic ? lh_rng_u32(&key, (uint64_t)c.ids[r] * E + j) : 0u;
      uint32_t u = lh_quant_code(d, lh_quant_inv_scale(s, M), M, p.stochastic, word);
      PutBits(codes, (uint64_t)r * E + j, p.bits, u);
      if (m) {
        size_t i = (size_t)c.slots[r] * E + j;
        m->set(i, LH_FADD(m->get(i), lh_dequant_code(u, M, lh_quant_step(s, M))));
      }
    }
  }
  return codes;
}

// The output rows (and m) of a decode.
void RefDecode(const lh_aq_qparams &p, const std::vector<uint8_t> &codes, const std::vector<uint16_t> &scales,
               Typed *m, const Call &c, Typed *out) {
  const size_t E = p.tokens * p.channels;
  const int M = lh_quant_max_code(p.bits);
  for (size_t r = 0; r < c.rows; r++)
    for (size_t j = 0; j < E; j++) {
      size_t k = p.quantizer == LH_AQ_Q_PER_CHANNEL ? j % p.channels : (r * E + j) / (size_t)p.group;
      float q = lh_dequant_code(GetBits(codes, (uint64_t)r * E + j, p.bits), M,
                                lh_quant_step(lh_f16_to_f32(scales[k]), M));
      size_t o = c.BatchRow(r) * E + j;
      if (m) {
        size_t i = (size_t)c.slots[r] * E + j;
        m->set(i, LH_FADD(m->get(i), q));
        out->set(o, m->get(i));
      } else {
        out->set(o, q);
      }
    }
}

// ---- running the twins ------------------------------------------------------------------------

struct Encoded {
  std::vector<uint16_t> scales;
  std::vector<uint8_t> codes;
};

// lh_aq_channel_scales (PER_CHANNEL) then lh_aq_encode; outputs poisoned first (0xA5), so a byte
// left unwritten shows.
Encoded TwinEncode(const lh_aq_qparams &p, const Typed &a, Typed *m, const Call &c) {
  Encoded e;
  e.scales.assign(lh_aq_scale_count(&p, c.rows), 0xA5A5);
  e.codes.assign(lh_aq_code_bytes(&p, c.rows), 0xA5);
  if (p.quantizer == LH_AQ_Q_PER_CHANNEL)
    lh_aq_channel_scales(&p, a.data(), c.BatchRows(), m ? m->data() : nullptr, c.slots.data(), c.rows,
                         e.scales.data());
  lh_aq_encode(&p, a.data(), c.BatchRows(), m ? m->data() : nullptr, c.slots.data(),
               c.ids.empty() ? nullptr : c.ids.data(), c.visits.empty() ? nullptr : c.visits.data(), c.rows,
               e.scales.data(), e.codes.data());
  return e;
}

// A call of `rows` rows: batch rows reversed (when permute), slots and ids spread out.
Call MakeCall(size_t rows, bool permute, uint32_t visits_base) {
  Call c;
  c.rows = rows;
  for (size_t r = 0; r < rows; r++) {
    if (permute)
      c.batch_rows.push_back((uint32_t)(rows - 1 - r));
    c.slots.push_back((int64_t)(rows - r));  // distinct, in [1, rows] of rows + 2 slots
    c.ids.push_back((int64_t)(1000 + 17 * r));
    c.visits.push_back(visits_base + (uint32_t)r);
  }
  return c;
}

bool SameBits(const Typed &x, const Typed &y) { return x.type == y.type && x.bytes == y.bytes; }

// ---- tests ---------------------------------------------------------------------------------------

struct Shape {
  size_t tokens, channels;
  int quantizer, group;
  size_t rows;
};
// Odd sizes: E = 15 (rows start inside bytes at every width but 8), E over one tile (1024), channels
// over one tile (the channel-scales chunks), groups of 32, 64 and 128.
const Shape kShapes[] = {
    {3, 5, LH_AQ_Q_PER_CHANNEL, 0, 7},    {1, 1, LH_AQ_Q_PER_CHANNEL, 0, 3},
    {5, 320, LH_AQ_Q_PER_CHANNEL, 0, 3},  {2, 2500, LH_AQ_Q_PER_CHANNEL, 0, 2},
    {3, 96, LH_AQ_Q_PER_TOKEN_GROUP, 32, 5}, {5, 320, LH_AQ_Q_PER_TOKEN_GROUP, 64, 3},
    {2, 384, LH_AQ_Q_PER_TOKEN_GROUP, 128, 4}, {1, 32, LH_AQ_Q_PER_TOKEN_GROUP, 32, 1},
};

// Every width, rounding, dtype and storage, with and without m: the twins' codes, scales and m'
// equal the reference's bit for bit, and so do decode's outputs and m'.
TEST(AqsgdQuant, TwinsMatchReference) {
  size_t configs = 0;
  for (const Shape &sh : kShapes)
    for (int bits = 2; bits <= 8; bits++)
      for (int stochastic = 0; stochastic < 2; stochastic++)
        for (int dtype : kTypes)
          for (int storage : kTypes)
            for (int with_m = 0; with_m < 2; with_m++) {
              const bool big = sh.tokens * sh.channels * sh.rows > 2000;
              if (big && (dtype != storage || (bits != 3 && bits != 8)))  // keep the run short
                continue;
              lh_aq_qparams p = Params(sh.tokens, sh.channels, bits, sh.quantizer, sh.group, stochastic, dtype, storage);
              SCOPED_TRACE(Describe(p) + (with_m ? " delta" : " direct"));
              const size_t E = sh.tokens * sh.channels, slots = sh.rows + 2;
              const Call c = MakeCall(sh.rows, (bits + stochastic) % 2 == 0, 3);
              const std::vector<float> base = Activations(slots * E, sh.channels, 11 + bits);
              const Typed a = Typed::From(dtype, Drift(std::vector<float>(base.begin(), base.begin() + sh.rows * E),
                                                       0.5f, 7));
              Typed m0 = Typed::From(storage, base), m_twin = m0, m_ref = m0;
              Encoded e = TwinEncode(p, a, with_m ? &m_twin : nullptr, c);
              std::vector<uint16_t> ref_scales = RefScales(p, a, with_m ? &m0 : nullptr, c);
              ASSERT_EQ(e.scales, ref_scales);
              std::vector<uint8_t> ref_codes = RefEncode(p, a, with_m ? &m_ref : nullptr, c, ref_scales);
              ASSERT_EQ(e.codes, ref_codes);  // includes the last byte's unused bits, which must be 0
              ASSERT_TRUE(SameBits(m_twin, m_ref));

              // Decode on a receiver that had the sender's m before the step.
              Typed rx_twin = m0, rx_ref = m0;
              Typed out_twin(dtype, sh.rows * E), out_ref(dtype, sh.rows * E);
              std::fill(out_twin.bytes.begin(), out_twin.bytes.end(), 0x5A);
              out_ref.bytes = out_twin.bytes;
              lh_aq_decode(&p, e.codes.data(), e.scales.data(), with_m ? rx_twin.data() : nullptr, c.slots.data(),
                           c.rows, out_twin.data(), c.BatchRows());
              RefDecode(p, ref_codes, ref_scales, with_m ? &rx_ref : nullptr, c, &out_ref);
              ASSERT_TRUE(SameBits(out_twin, out_ref));
              ASSERT_TRUE(SameBits(rx_twin, rx_ref));
              if (with_m)
                ASSERT_TRUE(SameBits(rx_twin, m_twin));  // the receiver's m is the sender's
              configs++;
            }
  EXPECT_GT(configs, 500u);
}

// Codes are in [0, M] (never 2^b - 1), the dequantized value is within half a level spacing
// (2 s / M, s the fp16 scale) of d rounding to nearest and within one level stochastically, and
// the scale is max |d| rounded up to fp16: it never clips, and the next fp16 value down would.
TEST(AqsgdQuant, CodesErrorsAndScales) {
  for (int quantizer : {LH_AQ_Q_PER_CHANNEL, LH_AQ_Q_PER_TOKEN_GROUP})
    for (int bits = 2; bits <= 8; bits++)
      for (int stochastic = 0; stochastic < 2; stochastic++) {
        lh_aq_qparams p = Params(4, 256, bits, quantizer, 64, stochastic, LH_AQ_T_FP32, LH_AQ_T_FP32);
        SCOPED_TRACE(Describe(p));
        const size_t E = 4 * 256, rows = 3;
        const Call c = MakeCall(rows, false, 9);
        const Typed a = Typed::From(LH_AQ_T_FP32, Activations(rows * E, 256, 100 + bits));
        Encoded e = TwinEncode(p, a, nullptr, c);
        const int M = lh_quant_max_code(bits);
        // The scales: max |d| per group, rounded up.
        std::vector<float> mx(e.scales.size(), 0.0f);
        for (size_t r = 0; r < rows; r++)
          for (size_t j = 0; j < E; j++) {
            size_t k = quantizer == LH_AQ_Q_PER_CHANNEL ? j % 256 : (r * E + j) / 64;
            mx[k] = std::max(mx[k], std::fabs(a.get(r * E + j)));
          }
        for (size_t k = 0; k < mx.size(); k++) {
          float s = lh_f16_to_f32(e.scales[k]);
          ASSERT_GE(s, mx[k]) << "scale " << k;
          ASSERT_LT(e.scales[k], 0x7C00);
          if (e.scales[k] > 0)
            ASSERT_LT(lh_f16_to_f32((uint16_t)(e.scales[k] - 1)), mx[k]) << "scale " << k << " not the smallest";
        }
        double worst = 0;
        for (size_t r = 0; r < rows; r++)
          for (size_t j = 0; j < E; j++) {
            uint64_t g = r * E + j;
            uint32_t u = GetBits(e.codes, g, bits);
            ASSERT_LE(u, (uint32_t)M) << "code " << g;
            ASSERT_NE(u, (1u << bits) - 1) << "code " << g;
            size_t k = quantizer == LH_AQ_Q_PER_CHANNEL ? j % 256 : g / 64;
            float s = lh_f16_to_f32(e.scales[k]);
            double spacing = 2.0 * s / M;
            double err = std::fabs((double)lh_dequant_code(u, M, lh_quant_step(s, M)) - a.get(g));
            double bound = stochastic ? spacing : spacing / 2;
            ASSERT_LE(err, bound * (1 + 1e-6)) << "element " << g << " of scale " << s;
            worst = std::max(worst, err / spacing);
          }
        EXPECT_GT(worst, stochastic ? 0.5 : 0.4);  // the bound is not slack everywhere
      }
}

// The scale function is monotone in the max's bits: the GPU's per-channel scales take the max of
// per-block scales (an atomic max on fp16 bit patterns), which equals the scale of the max only so.
TEST(AqsgdQuant, ScaleFromMaxBitsIsMonotone) {
  uint16_t last = 0;
  for (uint64_t bits = 0; bits <= 0x7FFFFFFFull; bits += 4093) {
    uint16_t h = lh_aq_scale_from_max_bits((uint32_t)bits);
    ASSERT_GE(h, last) << "bits 0x" << std::hex << bits;
    last = h;
  }
  EXPECT_EQ(lh_aq_scale_from_max_bits(0), 0);
  EXPECT_EQ(lh_aq_scale_from_max_bits(lh_f32_bits(65504.0f)), 0x7BFF);
  EXPECT_EQ(lh_aq_scale_from_max_bits(lh_f32_bits(65505.0f)), 0x7C00);
  EXPECT_EQ(lh_aq_scale_from_max_bits(0x7F800000u), 0x7FFF);
  EXPECT_EQ(lh_aq_scale_from_max_bits(0x7FC00000u), 0x7FFF);
}

// Sender and receiver, many steps: after a full-precision first visit, each step's frame is
// encoded against the sender's m and decoded against the receiver's; the two stay bitwise equal,
// the receiver's output is its m, and m follows a (the error shrinks as a settles).
TEST(AqsgdQuant, SenderAndReceiverStayEqual) {
  for (int quantizer : {LH_AQ_Q_PER_CHANNEL, LH_AQ_Q_PER_TOKEN_GROUP})
    for (int stochastic = 0; stochastic < 2; stochastic++)
      for (int storage : kTypes) {
        const int dtype = storage == LH_AQ_T_FP32 ? LH_AQ_T_FP16 : LH_AQ_T_FP32;
        lh_aq_qparams p = Params(6, 64, 2, quantizer, 32, stochastic, dtype, storage);
        SCOPED_TRACE(Describe(p));
        const size_t E = 6 * 64, examples = 5, slots = 8;
        Typed m_tx(storage, slots * E), m_rx(storage, slots * E);
        std::vector<float> target = Activations(examples * E, 64, 3);
        std::vector<float> act = Drift(target, 2.0f, 4);
        Call c = MakeCall(examples, true, 0);
        const Typed a0 = Typed::From(dtype, act);
        // First visit: full precision on both ends.
        Typed wire(storage, examples * E), out(dtype, examples * E);
        lh_aq_full_encode(&p, a0.data(), c.BatchRows(), m_tx.data(), c.slots.data(), examples, wire.data());
        lh_aq_full_decode(&p, wire.data(), m_rx.data(), c.slots.data(), examples, out.data(), c.BatchRows());
        ASSERT_TRUE(SameBits(m_tx, m_rx));
        double first_err = -1, last_err = 0;
        for (int step = 1; step <= 40; step++) {
          SCOPED_TRACE("step " + std::to_string(step));
          // a moves toward a fixed target, as activations do when training settles.
          for (size_t i = 0; i < act.size(); i++)
            act[i] += 0.2f * (target[i] - act[i]);
          const Typed a = Typed::From(dtype, act);
          for (size_t r = 0; r < examples; r++)
            c.visits[r] = (uint32_t)step;
          Encoded e = TwinEncode(p, a, &m_tx, c);
          lh_aq_decode(&p, e.codes.data(), e.scales.data(), m_rx.data(), c.slots.data(), examples, out.data(),
                       c.BatchRows());
          ASSERT_TRUE(SameBits(m_tx, m_rx));
          double err = 0;
          for (size_t r = 0; r < examples; r++)
            for (size_t j = 0; j < E; j++) {
              float mr = m_rx.get((size_t)c.slots[r] * E + j);
              float o = out.get(c.BatchRow(r) * E + j);
              Typed one(dtype, 1);
              one.set(0, mr);
              ASSERT_EQ(lh_f32_bits(o), lh_f32_bits(one.get(0))) << "out is not m";
              err = std::max(err, std::fabs((double)mr - a.get(c.BatchRow(r) * E + j)));
            }
          if (first_err < 0)
            first_err = err;
          last_err = err;
        }
        // bf16 buffers stop at their own rounding (8 bits: about 0.3 on these values of up to 100).
        EXPECT_LT(last_err, (storage == LH_AQ_T_BF16 ? 0.5 : 0.1) * first_err);
      }
}

// Stochastic rounding: over many keys (visits) the mean error of each element is near 0 (the
// quantizer is unbiased), while rounding to nearest keeps a bias; the same key gives the same
// codes, another key other codes.
TEST(AqsgdQuant, StochasticRoundingUnbiasedAndReproducible) {
  for (int quantizer : {LH_AQ_Q_PER_CHANNEL, LH_AQ_Q_PER_TOKEN_GROUP}) {
    lh_aq_qparams p = Params(2, 64, 2, quantizer, 32, 1, LH_AQ_T_FP32, LH_AQ_T_FP32);
    SCOPED_TRACE(Describe(p));
    const size_t E = 128, rows = 2;
    const Typed a = Typed::From(LH_AQ_T_FP32, Activations(rows * E, 64, 21));
    const int M = lh_quant_max_code(2);
    const int kKeys = 4000;
    std::vector<double> sum(rows * E, 0.0);
    Call c = MakeCall(rows, false, 0);
    Encoded first;
    double spacing_max = 0;
    for (int k = 0; k < kKeys; k++) {
      for (size_t r = 0; r < rows; r++)
        c.visits[r] = (uint32_t)k;
      Encoded e = TwinEncode(p, a, nullptr, c);
      if (k == 0)
        first = e;
      for (size_t g = 0; g < rows * E; g++) {
        size_t s = quantizer == LH_AQ_Q_PER_CHANNEL ? g % 64 : g / 32;
        float step = lh_quant_step(lh_f16_to_f32(e.scales[s]), M);
        spacing_max = std::max(spacing_max, 2.0 * step);
        sum[g] += (double)lh_dequant_code(GetBits(e.codes, g, 2), M, step) - a.get(g);
      }
    }
    // Each error is within one spacing, so its mean over kKeys has a standard deviation below
    // spacing / sqrt(kKeys) / 2; allow 5 of those for every element.
    double worst = 0, total = 0;
    for (size_t g = 0; g < rows * E; g++) {
      worst = std::max(worst, std::fabs(sum[g] / kKeys));
      total += sum[g] / kKeys;
    }
    EXPECT_LT(worst, 5 * spacing_max / std::sqrt((double)kKeys) / 2);
    EXPECT_LT(std::fabs(total / (double)(rows * E)), 0.01 * spacing_max);
    // Reproducible, and keyed by the visit count.
    for (size_t r = 0; r < rows; r++)
      c.visits[r] = 0;
    EXPECT_EQ(TwinEncode(p, a, nullptr, c).codes, first.codes);
    c.visits[1] = 1;
    EXPECT_NE(TwinEncode(p, a, nullptr, c).codes, first.codes);
    // Rounding to nearest is biased on these values: the mean error of some element stays large.
    p.stochastic = 0;
    Encoded rtn = TwinEncode(p, a, nullptr, c);
    double biased = 0;
    for (size_t g = 0; g < rows * E; g++) {
      size_t s = quantizer == LH_AQ_Q_PER_CHANNEL ? g % 64 : g / 32;
      float step = lh_quant_step(lh_f16_to_f32(rtn.scales[s]), M);
      biased = std::max(biased, std::fabs((double)lh_dequant_code(GetBits(rtn.codes, g, 2), M, step) - a.get(g)));
    }
    EXPECT_GT(biased, 10 * worst);
  }
}

// PER_TOKEN_GROUP: an example's codes and scales depend on the example alone (its row, m, id and
// visit count), not on which other examples share the call or where it sits in the batch.
TEST(AqsgdQuant, PerTokenGroupIsBatchIndependent) {
  for (int stochastic = 0; stochastic < 2; stochastic++)
    for (int bits : {2, 3, 5}) {
      lh_aq_qparams p = Params(3, 128, bits, LH_AQ_Q_PER_TOKEN_GROUP, 32, stochastic, LH_AQ_T_BF16, LH_AQ_T_FP16);
      SCOPED_TRACE(Describe(p));
      const size_t E = 3 * 128, examples = 4;
      const std::vector<float> acts = Activations(examples * E, 128, 5);  // example x's row x
      const Typed a = Typed::From(LH_AQ_T_BF16, acts);
      const Typed m0 = Typed::From(LH_AQ_T_FP16, Drift(acts, 0.3f, 6));  // example x's buffer in slot x
      // Call 1: examples 0, 1, 2, 3 in order. Call 2: examples 3, 1 (batch rows 3 and 1 of a).
      Call c1 = MakeCall(examples, false, 0), c2;
      for (size_t x = 0; x < examples; x++) {
        c1.slots[x] = (int64_t)x;
        c1.ids[x] = (int64_t)(50 + x);
        c1.visits[x] = (uint32_t)(7 + x);
      }
      c2.rows = 2;
      for (size_t x : {3, 1}) {
        c2.batch_rows.push_back((uint32_t)x);
        c2.slots.push_back((int64_t)x);
        c2.ids.push_back(c1.ids[x]);
        c2.visits.push_back(c1.visits[x]);
      }
      Typed m1 = m0, m2 = m0;
      Encoded e1 = TwinEncode(p, a, &m1, c1), e2 = TwinEncode(p, a, &m2, c2);
      const size_t row_bytes = E * (size_t)bits / 8, row_scales = E / 32;  // E b is a multiple of 8
      for (size_t r2 = 0; r2 < 2; r2++) {
        size_t x = c2.batch_rows[r2];
        EXPECT_TRUE(std::equal(e2.codes.begin() + r2 * row_bytes, e2.codes.begin() + (r2 + 1) * row_bytes,
                               e1.codes.begin() + x * row_bytes))
            << "example " << x;
        EXPECT_TRUE(std::equal(e2.scales.begin() + r2 * row_scales, e2.scales.begin() + (r2 + 1) * row_scales,
                               e1.scales.begin() + x * row_scales))
            << "example " << x;
        const size_t sb = E * 2;
        EXPECT_TRUE(std::equal(m2.bytes.begin() + x * sb, m2.bytes.begin() + (x + 1) * sb, m1.bytes.begin() + x * sb));
      }
      // The slots the second call did not use are untouched.
      for (size_t x : {0, 2})
        EXPECT_TRUE(std::equal(m2.bytes.begin() + x * E * 2, m2.bytes.begin() + (x + 1) * E * 2,
                               m0.bytes.begin() + x * E * 2));
    }
}

// Non-finite deltas and deltas above 65504 give scales >= 0x7C00 (NaN and infinity 0x7FFF, too
// large 0x7C00) in the group or channel they fall in, the other scales stay finite, and nothing
// crashes, decode included.
TEST(AqsgdQuant, NonFiniteInputGivesRefusableScale) {
  for (int quantizer : {LH_AQ_Q_PER_CHANNEL, LH_AQ_Q_PER_TOKEN_GROUP})
    for (int storage : kTypes)
      for (int stochastic = 0; stochastic < 2; stochastic++) {
        lh_aq_qparams p = Params(2, 96, 3, quantizer, 32, stochastic, LH_AQ_T_FP32, storage);
        SCOPED_TRACE(Describe(p));
        const size_t E = 192, rows = 2;
        std::vector<float> v = Activations(rows * E, 96, 8);
        v[5] = NAN;                  // row 0, token 0, channel 5: group 0
        v[96 + 40] = INFINITY;       // row 0, token 1, channel 40: group 4
        v[E + 70] = -1.0e6f;         // row 1, token 0, channel 70: group 8
        v[E + 96 + 33] = 65520.0f;   // rounds to fp16 infinity: row 1, token 1, channel 33: group 10
        const Typed a = Typed::From(LH_AQ_T_FP32, v);
        Typed m = Typed::From(storage, std::vector<float>(rows * E, 0.0f));
        const Call c = MakeCall(rows, false, 1);
        Call cm = c;
        cm.slots = {0, 1};
        Encoded e = TwinEncode(p, a, &m, cm);
        std::vector<int> expect(e.scales.size(), 0);  // 0: finite, 1: 0x7FFF, 2: 0x7C00
        if (quantizer == LH_AQ_Q_PER_CHANNEL) {
          expect[5] = expect[40] = 1;
          expect[70] = expect[33] = 2;
        } else {
          expect[0] = expect[4] = 1;
          expect[8] = expect[10] = 2;
        }
        for (size_t k = 0; k < e.scales.size(); k++) {
          SCOPED_TRACE("scale " + std::to_string(k));
          if (expect[k] == 0)
            EXPECT_LT(e.scales[k], 0x7C00);
          else
            EXPECT_EQ(e.scales[k], expect[k] == 1 ? 0x7FFF : 0x7C00);
        }
        Typed out(LH_AQ_T_FP32, rows * E), rx = Typed::From(storage, std::vector<float>(rows * E, 0.0f));
        lh_aq_decode(&p, e.codes.data(), e.scales.data(), rx.data(), cm.slots.data(), rows, out.data(), nullptr);
        lh_aq_decode(&p, e.codes.data(), e.scales.data(), nullptr, nullptr, rows, out.data(), nullptr);
        // Scale 0x7FFF or 0x7C00 everywhere, as a corrupt frame might carry (the context refuses those).
        std::fill(e.scales.begin(), e.scales.end(), 0x7FFF);
        lh_aq_decode(&p, e.codes.data(), e.scales.data(), rx.data(), cm.slots.data(), rows, out.data(), nullptr);
        std::fill(e.scales.begin(), e.scales.end(), 0x7C00);
        lh_aq_decode(&p, e.codes.data(), e.scales.data(), rx.data(), cm.slots.data(), rows, out.data(), nullptr);
        if (quantizer == LH_AQ_Q_PER_CHANNEL)
          lh_aq_encode(&p, a.data(), nullptr, m.data(), cm.slots.data(), cm.ids.data(), cm.visits.data(), rows,
                       e.scales.data(), e.codes.data());
      }
}

// Full-precision rows: the wire row is a's row (batch_rows[r]) rounded to the storage type, the
// sender's m row the same bytes; decoding puts them in the receiver's m row and, converted to
// dtype, in out's row batch_rows[r] (other out rows untouched). Every dtype x storage pair.
TEST(AqsgdQuant, FullRowsAllTypes) {
  for (int dtype : kTypes)
    for (int storage : kTypes) {
      lh_aq_qparams p = Params(3, 7, 4, LH_AQ_Q_PER_CHANNEL, 0, 0, dtype, storage);
      SCOPED_TRACE(Describe(p));
      const size_t E = 21, batch = 5, rows = 3, slots = 6;
      std::vector<float> v = Activations(batch * E, 7, 31);
      v[4] = 1.0e5f;    // above fp16's range: infinity in fp16
      v[9] = 3.0e-8f;   // an fp16 subnormal
      const Typed a = Typed::From(dtype, v);
      Call c;
      c.rows = rows;
      c.batch_rows = {4, 0, 2};
      c.slots = {5, 1, 3};
      Typed m_tx(storage, slots * E), m_rx(storage, slots * E), wire(storage, rows * E), out(dtype, batch * E);
      std::fill(m_tx.bytes.begin(), m_tx.bytes.end(), 0x11);
      m_rx.bytes = m_tx.bytes;
      std::fill(out.bytes.begin(), out.bytes.end(), 0x22);
      const Typed m_before = m_tx, out_before = out;
      lh_aq_full_encode(&p, a.data(), c.BatchRows(), m_tx.data(), c.slots.data(), rows, wire.data());
      lh_aq_full_decode(&p, wire.data(), m_rx.data(), c.slots.data(), rows, out.data(), c.BatchRows());
      ASSERT_TRUE(SameBits(m_tx, m_rx));
      for (size_t r = 0; r < rows; r++)
        for (size_t j = 0; j < E; j++) {
          Typed w(storage, 1), o(dtype, 1);
          w.set(0, a.get(c.batch_rows[r] * E + j));
          ASSERT_EQ(std::memcmp(w.bytes.data(), wire.bytes.data() + (r * E + j) * w.bytes.size(), w.bytes.size()), 0);
          ASSERT_EQ(std::memcmp(w.bytes.data(), m_rx.bytes.data() + ((size_t)c.slots[r] * E + j) * w.bytes.size(),
                                w.bytes.size()),
                    0);
          o.set(0, w.get(0));
          ASSERT_EQ(std::memcmp(o.bytes.data(), out.bytes.data() + (c.batch_rows[r] * E + j) * o.bytes.size(),
                                o.bytes.size()),
                    0);
        }
      const size_t osz = lh_aq_dtype_bytes(dtype), msz = lh_aq_dtype_bytes(storage);
      for (size_t x : {1, 3})  // batch rows no call row maps to
        EXPECT_TRUE(std::equal(out.bytes.begin() + x * E * osz, out.bytes.begin() + (x + 1) * E * osz,
                               out_before.bytes.begin() + x * E * osz));
      for (size_t s : {0, 2, 4})  // slots not used
        EXPECT_TRUE(std::equal(m_tx.bytes.begin() + s * E * msz, m_tx.bytes.begin() + (s + 1) * E * msz,
                               m_before.bytes.begin() + s * E * msz));
      // m may be NULL on both sides.
      Typed wire2(storage, rows * E), out2 = out_before;
      lh_aq_full_encode(&p, a.data(), c.BatchRows(), nullptr, nullptr, rows, wire2.data());
      lh_aq_full_decode(&p, wire2.data(), nullptr, nullptr, rows, out2.data(), c.BatchRows());
      EXPECT_TRUE(SameBits(wire2, wire));
      EXPECT_TRUE(SameBits(out2, out));
    }
}

// Decode writes out row batch_rows[r] for call row r and leaves the other batch rows alone; the
// direct path (m NULL) codes a as a delta from a zero buffer would, and decodes to q itself.
TEST(AqsgdQuant, BatchRowsAndDirectPath) {
  for (int quantizer : {LH_AQ_Q_PER_CHANNEL, LH_AQ_Q_PER_TOKEN_GROUP}) {
    lh_aq_qparams p = Params(2, 64, 4, quantizer, 32, 1, LH_AQ_T_FP16, LH_AQ_T_FP32);
    SCOPED_TRACE(Describe(p));
    const size_t E = 128, batch = 6, rows = 3;
    const Typed a = Typed::From(LH_AQ_T_FP16, Activations(batch * E, 64, 77));
    Call c = MakeCall(rows, false, 4);
    c.batch_rows = {5, 1, 2};
    c.slots = {0, 1, 2};
    Encoded direct = TwinEncode(p, a, nullptr, c);
    Typed zero = Typed::From(LH_AQ_T_FP32, std::vector<float>(rows * E, 0.0f));
    Encoded delta = TwinEncode(p, a, &zero, c);
    EXPECT_EQ(direct.codes, delta.codes);
    EXPECT_EQ(direct.scales, delta.scales);
    // Direct decode: out rows 5, 1, 2 get q; rows 0, 3, 4 keep their poison.
    Typed out(LH_AQ_T_FP16, batch * E);
    std::fill(out.bytes.begin(), out.bytes.end(), 0x33);
    lh_aq_decode(&p, direct.codes.data(), direct.scales.data(), nullptr, nullptr, rows, out.data(), c.BatchRows());
    const int M = lh_quant_max_code(4);
    for (size_t r = 0; r < rows; r++)
      for (size_t j = 0; j < E; j++) {
        size_t g = r * E + j, s = quantizer == LH_AQ_Q_PER_CHANNEL ? j % 64 : g / 32;
        const float qf =
            lh_dequant_code(GetBits(direct.codes, g, 4), M, lh_quant_step(lh_f16_to_f32(direct.scales[s]), M));
        Typed q(LH_AQ_T_FP16, 1);
        q.set(0, qf);
        ASSERT_EQ(std::memcmp(q.bytes.data(), out.bytes.data() + (c.batch_rows[r] * E + j) * 2, 2), 0);
        // The delta path's m (0 before) became 0 + q, in fp32.
        ASSERT_EQ(lh_f32_bits(zero.get(r * E + j)), lh_f32_bits(LH_FADD(0.0f, qf)));
      }
    for (size_t x : {0, 3, 4})
      for (size_t i = 0; i < E * 2; i++)
        ASSERT_EQ(out.bytes[x * E * 2 + i], 0x33) << "batch row " << x;
  }
}

}  // namespace

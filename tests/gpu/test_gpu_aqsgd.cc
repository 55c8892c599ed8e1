// AQ-SGD's kernels (kernels/aqsgd.cu) against their CPU twins (lib/aqsgd/quant.c), bit for bit:
// scales, codes, the sender's m', the receiver's m' and output, the full-precision rows; over
// dtype x storage x quantizer x rounding x widths, odd sizes, permuted batch rows, m NULL, and
// several steps in a row (each step's m is the last step's, on both sides, so a single
// differing bit would carry on and show).
//
// As in test_gpu_codecs.cc: every device output is poisoned before the launch (kPoisonByte) and
// surrounded by guard bytes that must come back untouched; some variants put the arrays off
// 16-byte alignment (the kernels' vector paths switch off) and the codes at odd addresses.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "aqsgd/aqsgd_internal.h"

#include "gpu/gpu_test.h"

namespace {

// A plain device copy of a host vector.
template <typename T>
struct DeviceArray {
  explicit DeviceArray(const std::vector<T> &host) : buffer(host.size() * sizeof(T)) {
    error = buffer.error();
    if (error == cudaSuccess)
      error = buffer.Upload(host.data());
  }
  T *get() const { return static_cast<T *>(buffer.get()); }
  DeviceBuffer buffer;
  cudaError_t error;
};

const char *TypeName(int t) { return t == LH_AQ_T_FP32 ? "fp32" : t == LH_AQ_T_FP16 ? "fp16" : "bf16"; }

// Activation-like values: N(0, 1) with every 7th channel 30 times larger, in type t.
std::vector<uint8_t> Activations(int t, size_t n, size_t channels, std::mt19937 &rng, float sigma = 1.0f) {
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<uint8_t> v(n * lh_aq_dtype_bytes(t));
  for (size_t i = 0; i < n; i++)
    lh_aq_put(v.data(), t, i, dist(rng) * ((i % channels) % 7 == 3 ? 30.0f : 1.0f));
  return v;
}

// One configuration: shape, parameters and layout variant.
struct Config {
  lh_aq_qparams p;
  size_t rows;
  bool has_m;
  bool permute;   // batch rows: NULL (batch = rows) or a reversed subset of a batch of rows + 2
  int variant;    // 1: arrays one element off 16-byte alignment, codes at an odd address
  int steps;
};

std::string Describe(const Config &c) {
  const lh_aq_qparams &p = c.p;
  return std::string(p.quantizer == LH_AQ_Q_PER_CHANNEL ? "per-channel" : "group" + std::to_string(p.group)) + " b" +
         std::to_string(p.bits) + (p.stochastic ? " sr " : " rtn ") + TypeName(p.dtype) + "/" + TypeName(p.storage) +
         " T" + std::to_string(p.tokens) + " C" + std::to_string(p.channels) + " rows " + std::to_string(c.rows) +
         (c.has_m ? " delta" : " direct") + (c.permute ? " permuted" : "") + " variant " + std::to_string(c.variant);
}

// Runs `steps` steps of one configuration on both sides and compares everything after each.
void CheckConfig(const Config &c, std::mt19937 &rng) {
  SCOPED_TRACE(Describe(c));
  const lh_aq_qparams &p = c.p;
  const size_t E = p.tokens * p.channels, rows = c.rows;
  const size_t batch = c.permute ? rows + 2 : rows, nslots = rows + 3;
  const size_t asz = lh_aq_dtype_bytes(p.dtype), msz = lh_aq_dtype_bytes(p.storage);
  const size_t off = c.variant ? 1 : 0;  // elements (and code bytes) off alignment

  std::vector<uint32_t> batch_rows;
  std::vector<int64_t> slots, ids;
  std::vector<uint32_t> visits;
  for (size_t r = 0; r < rows; r++) {
    if (c.permute)
      batch_rows.push_back((uint32_t)(batch - 1 - r));
    slots.push_back((int64_t)((r + 2) % nslots));  // distinct, not in call order from slot 0
    ids.push_back((int64_t)(123456789 + 1009 * r));
    visits.push_back((uint32_t)(1 + r));
  }
  const uint32_t *h_batch_rows = c.permute ? batch_rows.data() : nullptr;

  DeviceArray<int64_t> d_slots(slots), d_ids(ids);
  DeviceArray<uint32_t> d_visits(visits), d_batch_rows(c.permute ? batch_rows : std::vector<uint32_t>{0});
  ASSERT_CUDA(d_slots.error);
  ASSERT_CUDA(d_ids.error);
  ASSERT_CUDA(d_visits.error);
  ASSERT_CUDA(d_batch_rows.error);
  const uint32_t *g_batch_rows = c.permute ? d_batch_rows.get() : nullptr;

  Region d_a(batch * E * asz, off * asz), d_m(nslots * E * msz, off * msz), d_rx(nslots * E * msz, off * msz);
  Region d_out(batch * E * asz, off * asz), d_wire(rows * E * msz, off * msz);
  const size_t nscales = lh_aq_scale_count(&p, rows), ncode = lh_aq_code_bytes(&p, rows);
  Region d_scales(nscales * 2, 2 * off), d_codes(ncode, off);
  for (const Region *r : {&d_a, &d_m, &d_rx, &d_out, &d_wire, &d_scales, &d_codes})
    ASSERT_CUDA(r->error());

  // Start: both buffers hold an earlier visit's values (an m near a), sent at full precision.
  std::vector<uint8_t> a = Activations(p.dtype, batch * E, p.channels, rng);
  std::vector<uint8_t> m_tx(nslots * E * msz), m_rx, wire(rows * E * msz, kPoisonByte);
  std::vector<uint8_t> out(batch * E * asz, kPoisonByte);
  std::vector<uint8_t> got;
  {
    std::vector<uint8_t> m0 = Activations(p.storage, nslots * E, p.channels, rng);
    m_tx = m0;
    ASSERT_CUDA(d_m.Fill(m0.data()));
    ASSERT_CUDA(d_rx.Fill(m0.data()));
    ASSERT_CUDA(d_a.Fill(a.data()));
    ASSERT_CUDA(d_wire.Fill(nullptr));
    ASSERT_CUDA(d_out.Fill(nullptr));
    m_rx = m_tx;
    void *cm = c.has_m ? m_tx.data() : nullptr, *cr = c.has_m ? m_rx.data() : nullptr;
    lh_aq_full_encode(&p, a.data(), h_batch_rows, cm, slots.data(), rows, wire.data());
    lh_aq_full_decode(&p, wire.data(), cr, slots.data(), rows, out.data(), h_batch_rows);
    ASSERT_LAUNCH(lh_cuda_aq_full_encode(&p, d_a.data(), g_batch_rows, c.has_m ? d_m.data() : nullptr, d_slots.get(),
                                         rows, d_wire.data(), nullptr));
    ASSERT_LAUNCH(lh_cuda_aq_full_decode(&p, d_wire.data(), c.has_m ? d_rx.data() : nullptr, d_slots.get(), rows,
                                         d_out.data(), g_batch_rows, nullptr));
    ASSERT_TRUE(d_wire.Read(&got));
    ASSERT_TRUE(SameBytes(wire, got, "full_encode wire"));
    ASSERT_TRUE(d_m.Read(&got));
    ASSERT_TRUE(SameBytes(m_tx, got, "full_encode m"));
    ASSERT_TRUE(d_rx.Read(&got));
    ASSERT_TRUE(SameBytes(m_rx, got, "full_decode m"));
    ASSERT_TRUE(d_out.Read(&got));
    ASSERT_TRUE(SameBytes(out, got, "full_decode out"));
  }

  for (int step = 0; step < c.steps; step++) {
    SCOPED_TRACE("step " + std::to_string(step));
    // The next visit: a moves a little; the visit counts grow.
    std::vector<uint8_t> delta = Activations(p.dtype, batch * E, p.channels, rng, 0.1f);
    for (size_t i = 0; i < batch * E; i++)
      lh_aq_put(a.data(), p.dtype, i, lh_aq_load(a.data(), p.dtype, i) + lh_aq_load(delta.data(), p.dtype, i));
    for (auto &v : visits)
      v++;
    ASSERT_CUDA(d_visits.buffer.Upload(visits.data()));
    ASSERT_CUDA(d_a.Fill(a.data()));

    // Sender.
    std::vector<uint16_t> scales(nscales, 0xABAB);
    std::vector<uint8_t> codes(ncode, kPoisonByte);
    void *cm = c.has_m ? m_tx.data() : nullptr;
    if (p.quantizer == LH_AQ_Q_PER_CHANNEL)
      lh_aq_channel_scales(&p, a.data(), h_batch_rows, cm, slots.data(), rows, scales.data());
    lh_aq_encode(&p, a.data(), h_batch_rows, cm, slots.data(), ids.data(), visits.data(), rows, scales.data(),
                 codes.data());
    ASSERT_CUDA(d_scales.Fill(nullptr));
    ASSERT_CUDA(d_codes.Fill(nullptr));
    uint16_t *g_scales = reinterpret_cast<uint16_t *>(d_scales.data());
    void *gm = c.has_m ? d_m.data() : nullptr;
    if (p.quantizer == LH_AQ_Q_PER_CHANNEL) {
      ASSERT_LAUNCH(lh_cuda_aq_channel_scales(&p, d_a.data(), g_batch_rows, gm, d_slots.get(), rows, g_scales, nullptr));
      ASSERT_TRUE(d_scales.Read(&got));
      ASSERT_TRUE(SameBytes(Bytes(scales), got, "channel scales"));
    }
    ASSERT_LAUNCH(lh_cuda_aq_encode(&p, d_a.data(), g_batch_rows, gm, d_slots.get(), d_ids.get(), d_visits.get(), rows,
                                    g_scales, d_codes.data(), nullptr));
    ASSERT_TRUE(d_scales.Read(&got));
    ASSERT_TRUE(SameBytes(Bytes(scales), got, "scales"));
    ASSERT_TRUE(d_codes.Read(&got));
    ASSERT_TRUE(SameBytes(codes, got, "codes"));
    ASSERT_TRUE(d_m.Read(&got));
    ASSERT_TRUE(SameBytes(m_tx, got, "sender m'"));
    ASSERT_TRUE(d_a.Read(&got));
    ASSERT_TRUE(SameBytes(a, got, "a after encode"));

    // Receiver: decodes the GPU's frame (equal to the CPU's, as just checked) into its own m.
    std::fill(out.begin(), out.end(), kPoisonByte);
    lh_aq_decode(&p, codes.data(), scales.data(), c.has_m ? m_rx.data() : nullptr, slots.data(), rows, out.data(),
                 h_batch_rows);
    ASSERT_CUDA(d_out.Fill(nullptr));
    ASSERT_LAUNCH(lh_cuda_aq_decode(&p, d_codes.data(), g_scales, c.has_m ? d_rx.data() : nullptr, d_slots.get(), rows,
                                    d_out.data(), g_batch_rows, nullptr));
    ASSERT_TRUE(d_out.Read(&got));
    ASSERT_TRUE(SameBytes(out, got, "decode out"));
    ASSERT_TRUE(d_rx.Read(&got));
    ASSERT_TRUE(SameBytes(m_rx, got, "receiver m'"));
    if (c.has_m) {
      ASSERT_TRUE(SameBytes(m_tx, m_rx, "sender and receiver m"));
    }
  }
}

struct Shape {
  size_t tokens, channels;
  int quantizer, group;
  size_t rows;
};

// PER_CHANNEL: E = 15 and 36 (not a multiple of 8: rows start inside bytes, the per-element
// path), E = 24 with 6 channels (aligned, channels wrap inside an octet), 320 and 24 channels
// (aligned, vector paths), 4500 channels (more than the kernels' shared-memory cache), one
// element. PER_TOKEN_GROUP: groups of 32, 64 and 128 (4, 8 and 16 lanes a group).
const Shape kShapes[] = {
    {3, 5, LH_AQ_Q_PER_CHANNEL, 0, 7},      {3, 12, LH_AQ_Q_PER_CHANNEL, 0, 5},
    {4, 6, LH_AQ_Q_PER_CHANNEL, 0, 3},      {5, 320, LH_AQ_Q_PER_CHANNEL, 0, 3},
    {17, 24, LH_AQ_Q_PER_CHANNEL, 0, 9},    {2, 4500, LH_AQ_Q_PER_CHANNEL, 0, 2},
    {1, 1, LH_AQ_Q_PER_CHANNEL, 0, 3},      {3, 96, LH_AQ_Q_PER_TOKEN_GROUP, 32, 5},
    {5, 320, LH_AQ_Q_PER_TOKEN_GROUP, 64, 3}, {2, 384, LH_AQ_Q_PER_TOKEN_GROUP, 128, 4},
    {1, 32, LH_AQ_Q_PER_TOKEN_GROUP, 32, 1},
};
const int kTypes[] = {LH_AQ_T_FP32, LH_AQ_T_FP16, LH_AQ_T_BF16};

lh_aq_qparams Params(const Shape &s, int bits, int stochastic, int dtype, int storage, uint32_t salt) {
  lh_aq_qparams p;
  std::memset(&p, 0, sizeof p);
  p.tokens = s.tokens;
  p.channels = s.channels;
  p.bits = bits;
  p.quantizer = s.quantizer;
  p.group = s.group;
  p.stochastic = stochastic;
  p.dtype = dtype;
  p.storage = storage;
  p.seed = 0xA5A5000000000000ull + salt;
  p.stream = 2 * salt + 1;
  return p;
}

TEST(GpuAqsgd, LaunchersMatchTwinsBitwise) {
  std::mt19937 rng(2024);
  size_t n = 0;
  for (const Shape &s : kShapes)
    for (int bits : {2, 3, 4, 8})
      for (int stochastic = 0; stochastic < 2; stochastic++)
        for (int dtype : kTypes)
          for (int storage : kTypes)
            for (int has_m = 0; has_m < 2; has_m++, n++) {
              Config c;
              c.p = Params(s, bits, stochastic, dtype, storage, (uint32_t)n);
              c.rows = s.rows;
              c.has_m = has_m;
              c.permute = n % 2 == 1;
              c.variant = (int)(n / 2 % 2);
              c.steps = 3;
              ASSERT_NO_FATAL_FAILURE(CheckConfig(c, rng));
            }
}

// Calls large enough that the grid-stride loops go round more than once (the grid is capped at
// 16 blocks of 256 threads per SM, 8 elements a thread): 5.2 M elements, the default settings
// of aqsgd_perf, both roundings and both quantizers.
TEST(GpuAqsgd, LargeCallsMatchTwinsBitwise) {
  std::mt19937 rng(77);
  for (int quantizer : {LH_AQ_Q_PER_TOKEN_GROUP, LH_AQ_Q_PER_CHANNEL})
    for (int stochastic = 0; stochastic < 2; stochastic++) {
      Config c;
      c.p = Params({64, 1024, quantizer, 128, 80}, 2, stochastic, LH_AQ_T_FP16, LH_AQ_T_FP16, 9);
      c.rows = 80;
      c.has_m = true;
      c.permute = stochastic == 1;
      c.variant = 0;
      c.steps = 2;
      ASSERT_NO_FATAL_FAILURE(CheckConfig(c, rng));
    }
}

// Non-finite deltas and deltas too large for an fp16 scale: the scales (0x7FFF, 0x7C00) and codes
// still equal the twins' (what the m' becomes there is not promised: NaN payloads differ).
TEST(GpuAqsgd, NonFiniteInputGivesTheTwinsScalesAndCodes) {
  for (int quantizer : {LH_AQ_Q_PER_CHANNEL, LH_AQ_Q_PER_TOKEN_GROUP})
    for (int stochastic = 0; stochastic < 2; stochastic++) {
      const Shape s = {2, 96, quantizer, 32, 2};
      lh_aq_qparams p = Params(s, 3, stochastic, LH_AQ_T_FP32, LH_AQ_T_FP16, 5);
      SCOPED_TRACE(std::string(quantizer == LH_AQ_Q_PER_CHANNEL ? "per-channel" : "group32") +
                   (stochastic ? " sr" : " rtn"));
      const size_t E = 192, rows = 2;
      std::mt19937 rng(3);
      std::vector<uint8_t> a = Activations(LH_AQ_T_FP32, rows * E, 96, rng);
      lh_aq_put(a.data(), LH_AQ_T_FP32, 5, NAN);
      lh_aq_put(a.data(), LH_AQ_T_FP32, 96 + 40, INFINITY);
      lh_aq_put(a.data(), LH_AQ_T_FP32, E + 70, -1.0e6f);
      std::vector<uint8_t> m(rows * E * 2, 0);
      std::vector<int64_t> slots = {0, 1}, ids = {4, 9};
      std::vector<uint32_t> visits = {3, 3};
      std::vector<uint16_t> scales(lh_aq_scale_count(&p, rows));
      std::vector<uint8_t> codes(lh_aq_code_bytes(&p, rows));
      Region d_a(a.size(), 0), d_m(m.size(), 0), d_scales(scales.size() * 2, 0), d_codes(codes.size(), 0);
      DeviceArray<int64_t> d_slots(slots), d_ids(ids);
      DeviceArray<uint32_t> d_visits(visits);
      ASSERT_CUDA(d_a.Fill(a.data()));
      ASSERT_CUDA(d_m.Fill(m.data()));
      ASSERT_CUDA(d_scales.Fill(nullptr));
      ASSERT_CUDA(d_codes.Fill(nullptr));
      if (quantizer == LH_AQ_Q_PER_CHANNEL)
        lh_aq_channel_scales(&p, a.data(), nullptr, m.data(), slots.data(), rows, scales.data());
      lh_aq_encode(&p, a.data(), nullptr, m.data(), slots.data(), ids.data(), visits.data(), rows, scales.data(),
                   codes.data());
      uint16_t *g_scales = reinterpret_cast<uint16_t *>(d_scales.data());
      if (quantizer == LH_AQ_Q_PER_CHANNEL)
        ASSERT_LAUNCH(lh_cuda_aq_channel_scales(&p, d_a.data(), nullptr, d_m.data(), d_slots.get(), rows, g_scales,
                                                nullptr));
      ASSERT_LAUNCH(lh_cuda_aq_encode(&p, d_a.data(), nullptr, d_m.data(), d_slots.get(), d_ids.get(), d_visits.get(),
                                      rows, g_scales, d_codes.data(), nullptr));
      std::vector<uint8_t> got;
      ASSERT_TRUE(d_scales.Read(&got));
      ASSERT_TRUE(SameBytes(Bytes(scales), got, "scales"));
      ASSERT_TRUE(d_codes.Read(&got));
      ASSERT_TRUE(SameBytes(codes, got, "codes"));
      int refusable = 0;
      for (uint16_t h : scales)
        refusable += h >= 0x7C00;
      EXPECT_EQ(refusable, 3);
      // Decoding such scales does not fault either.
      ASSERT_LAUNCH(lh_cuda_aq_decode(&p, d_codes.data(), g_scales, d_m.data(), d_slots.get(), rows, d_a.data(),
                                      nullptr, nullptr));
    }
}

// Bad parameters are refused without a launch; an empty call launches nothing and succeeds.
TEST(GpuAqsgd, LaunchersRefuseBadArgumentsAndSkipEmptyCalls) {
  lh_aq_qparams p = Params({2, 64, LH_AQ_Q_PER_TOKEN_GROUP, 32, 1}, 4, 0, LH_AQ_T_FP32, LH_AQ_T_FP16, 1);
  DeviceBuffer buf(1 << 16);
  ASSERT_CUDA(buf.error());
  void *d = buf.get();
  auto *u8 = static_cast<uint8_t *>(d);
  auto *u16 = static_cast<uint16_t *>(d);
  const int invalid = (int)cudaErrorInvalidValue;
  EXPECT_EQ(lh_cuda_aq_encode(nullptr, d, nullptr, nullptr, nullptr, nullptr, nullptr, 1, u16, u8, nullptr), invalid);
  lh_aq_qparams bad = p;
  bad.bits = 1;
  EXPECT_EQ(lh_cuda_aq_encode(&bad, d, nullptr, nullptr, nullptr, nullptr, nullptr, 1, u16, u8, nullptr), invalid);
  bad = p;
  bad.group = 48;
  EXPECT_EQ(lh_cuda_aq_decode(&bad, u8, u16, nullptr, nullptr, 1, d, nullptr, nullptr), invalid);
  bad = p;
  bad.storage = 7;
  EXPECT_EQ(lh_cuda_aq_full_encode(&bad, d, nullptr, nullptr, nullptr, 1, d, nullptr), invalid);
  bad = p;
  bad.stochastic = 1;  // needs ids and visits
  EXPECT_EQ(lh_cuda_aq_encode(&bad, d, nullptr, nullptr, nullptr, nullptr, nullptr, 1, u16, u8, nullptr), invalid);
  // m without slots.
  EXPECT_EQ(lh_cuda_aq_full_decode(&p, d, d, nullptr, 1, d, nullptr, nullptr), invalid);
  // Empty calls.
  EXPECT_EQ(lh_cuda_aq_encode(&p, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, nullptr, nullptr, nullptr), 0);
  EXPECT_EQ(lh_cuda_aq_decode(&p, nullptr, nullptr, nullptr, nullptr, 0, nullptr, nullptr, nullptr), 0);
  EXPECT_EQ(lh_cuda_aq_channel_scales(&p, nullptr, nullptr, nullptr, nullptr, 0, nullptr, nullptr), 0);
  EXPECT_EQ(lh_cuda_aq_full_encode(&p, nullptr, nullptr, nullptr, nullptr, 0, nullptr, nullptr), 0);
  EXPECT_EQ(lh_cuda_aq_full_decode(&p, nullptr, nullptr, nullptr, 0, nullptr, nullptr, nullptr), 0);
  ASSERT_CUDA(cudaDeviceSynchronize());
}

}  // namespace

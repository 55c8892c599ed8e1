// The AQ-SGD contexts (include/longhaul/aqsgd.h) in one process: a sender and a receiver
// exchange frames for many epochs, and their buffers must stay bitwise identical; the wire
// size is exactly header + scales + packed codes; first visits go at full precision; the
// error of what the receiver yields is within one quantization step; bad frames, ids and
// configs are refused by name and leave the receiver's buffers untouched.
#include <gtest/gtest.h>

#include <longhaul/aqsgd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "aqsgd/aqsgd_internal.h"

namespace {

#define ASSERT_OK(expr) ASSERT_EQ((expr), LH_SUCCESS) << #expr << ": " << lh_last_error()

uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
// A value in [-1, 1) from (seed, a, b).
float Value(uint64_t seed, uint64_t a, uint64_t b) {
  return (float)((double)(Mix(seed * 0x9E3779B97F4A7C15ull + a * 0xD1B54A32D192ED03ull + b) >> 11) * 0x1p-52 - 1.0);
}

// Example id's activation at `epoch`: a fixed pattern with large-gain channels, drifting
// steadily (0.1 x gain per epoch at most), as a model's activations do while it trains.
std::vector<float> Activation(const lh_aq_config &c, int64_t id, int epoch) {
  size_t e = c.tokens * c.channels;
  std::vector<float> a(e);
  for (size_t j = 0; j < e; j++) {
    float gain = (j % c.channels) % 17 == 3 ? 20.0f : 1.0f;
    a[j] = gain * (Value(1, (uint64_t)id, j) + 0.1f * (float)epoch * Value(2, (uint64_t)id, j));
  }
  return a;
}

lh_aq_config Config(lh_aq_mode mode, lh_aq_quantizer q, lh_aq_dtype storage, int fw = 2, int bw = 4) {
  lh_aq_config c = LH_AQ_CONFIG_INIT;
  c.examples = 40;
  c.tokens = 3;
  c.channels = 64;
  c.mode = mode;
  c.quantizer = q;
  c.group = q == LH_AQ_PER_TOKEN_GROUP ? 32 : 0;
  c.storage = storage;
  c.forward_bits = fw;
  c.backward_bits = bw;
  c.seed = 7;
  return c;
}

struct Pair {
  explicit Pair(const lh_aq_config &cfg) : c(cfg) {
    EXPECT_EQ(lh_aq_sender_create(&c, &tx), LH_SUCCESS) << lh_last_error();
    EXPECT_EQ(lh_aq_receiver_create(&c, &rx), LH_SUCCESS) << lh_last_error();
  }
  ~Pair() {
    lh_aq_sender_free(tx);
    lh_aq_receiver_free(rx);
  }
  Pair(const Pair &) = delete;
  Pair &operator=(const Pair &) = delete;
  size_t Elems() const { return c.tokens * c.channels; }
  // Sends a batch forward; returns the frame (empty on failure, with the status in *st).
  std::vector<uint8_t> Send(const std::vector<int64_t> &ids, int epoch, std::vector<float> *act_out = nullptr,
                            lh_status *st = nullptr) {
    std::vector<float> act;
    for (int64_t id : ids) {
      std::vector<float> a = Activation(c, id, epoch);
      act.insert(act.end(), a.begin(), a.end());
    }
    if (act_out)
      *act_out = act;
    size_t cap = 0;
    EXPECT_EQ(lh_aq_max_frame_bytes(&c, ids.size(), 0, &cap), LH_SUCCESS);
    std::vector<uint8_t> frame(cap);
    size_t used = 0;
    lh_status s = lh_aq_send(tx, act.data(), ids.data(), ids.size(), frame.data(), frame.size(), &used);
    if (st)
      *st = s;
    else
      EXPECT_EQ(s, LH_SUCCESS) << lh_last_error();
    frame.resize(s == LH_SUCCESS ? used : 0);
    return frame;
  }
  lh_status Receive(const std::vector<uint8_t> &frame, const std::vector<int64_t> &ids, std::vector<float> *out) {
    out->assign(ids.size() * Elems(), NAN);
    return lh_aq_receive(rx, frame.data(), frame.size(), ids.data(), ids.size(), out->data());
  }
  std::vector<uint8_t> Row(lh_aq_store s, int64_t id) {
    std::vector<uint8_t> row(Elems() * lh_aq_dtype_bytes((int)c.storage));
    EXPECT_EQ(lh_aq_store_read_row(s, id, row.data(), row.size()), LH_SUCCESS) << lh_last_error();
    return row;
  }
  // Every example seen so far has the same buffer bits at both ends.
  void ExpectSameBuffers() {
    lh_aq_store a, b;
    ASSERT_OK(lh_aq_sender_store(tx, &a));
    ASSERT_OK(lh_aq_receiver_store(rx, &b));
    for (size_t id = 0; id < c.examples; id++) {
      uint32_t va = 0, vb = 0;
      ASSERT_OK(lh_aq_store_visits(a, (int64_t)id, &va));
      ASSERT_OK(lh_aq_store_visits(b, (int64_t)id, &vb));
      ASSERT_EQ(va, vb) << "example " << id;
      if (va && c.mode == LH_AQ_DELTA)
        ASSERT_EQ(Row(a, (int64_t)id), Row(b, (int64_t)id)) << "example " << id;
    }
  }
  lh_aq_config c;
  lh_aq_sender tx = nullptr;
  lh_aq_receiver rx = nullptr;
};

// The epoch's batches: a shuffled subset of the examples (some skip the epoch), in batches.
std::vector<std::vector<int64_t>> Epoch(const lh_aq_config &c, int epoch, size_t batch, double keep = 0.8) {
  std::vector<int64_t> ids;
  for (size_t i = 0; i < c.examples; i++)
    if (epoch == 0 || Value(99, (uint64_t)epoch, i) < 2 * keep - 1)
      ids.push_back((int64_t)i);
  std::mt19937_64 rng((uint64_t)epoch + 5);
  std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<std::vector<int64_t>> out;
  for (size_t i = 0; i < ids.size(); i += batch)
    out.emplace_back(ids.begin() + (long)i, ids.begin() + (long)std::min(ids.size(), i + batch));
  return out;
}

float ToStorage(float v, lh_aq_dtype t) {
  if (t == LH_AQ_FP16)
    return lh_f16_to_f32(lh_f32_to_f16(v));
  if (t == LH_AQ_BF16)
    return lh_bf16_to_f32(lh_f32_to_bf16(v));
  return v;
}

struct Case {
  lh_aq_quantizer q;
  lh_aq_dtype storage;
  lh_rounding rounding;
  int bits;
};
std::string Name(const testing::TestParamInfo<Case> &info) {
  const char *st = nullptr;
  lh_aq_dtype_name(info.param.storage, &st);
  return std::string(info.param.q == LH_AQ_PER_CHANNEL ? "channel" : "group") + "_" + st + "_" +
         (info.param.rounding == LH_ROUND_NEAREST ? "nearest" : "stochastic") + "_b" +
         std::to_string(info.param.bits);
}

class Delta : public testing::TestWithParam<Case> {};

// Many epochs with skipped examples and shuffled batches: the ends never drift apart, the first
// visit is exact (in the storage type), later visits are within the quantizer's step, and the
// frames have exactly the size the format says.
TEST_P(Delta, BuffersStayBitwiseEqualAndWireSizeIsExact) {
  Case k = GetParam();
  lh_aq_config c = Config(LH_AQ_DELTA, k.q, k.storage, k.bits, 8);
  c.rounding = k.rounding;
  Pair p(c);
  std::vector<int> seen(c.examples, 0);
  double worst_late = 0;
  for (int epoch = 0; epoch < 8; epoch++) {
    for (const std::vector<int64_t> &ids : Epoch(c, epoch, 7)) {
      std::vector<float> act, out;
      std::vector<uint8_t> frame = p.Send(ids, epoch, &act);
      ASSERT_FALSE(frame.empty());
      ASSERT_OK(p.Receive(frame, ids, &out));
      size_t first = 0;
      for (size_t r = 0; r < ids.size(); r++)
        first += seen[(size_t)ids[r]] == 0;
      size_t n = (ids.size() - first) * p.Elems();
      size_t scales = n == 0 ? 0 : k.q == LH_AQ_PER_CHANNEL ? c.channels : n / 32;
      size_t expect = LH_AQ_FRAME_HEADER_BYTES + first * p.Elems() * (k.storage == LH_AQ_FP32 ? 4 : 2) + 2 * scales +
                      (n * (size_t)k.bits + 7) / 8;
      ASSERT_EQ(frame.size(), expect) << "epoch " << epoch;
      for (size_t r = 0; r < ids.size(); r++) {
        bool is_first = seen[(size_t)ids[r]]++ == 0;
        for (size_t j = 0; j < p.Elems(); j++) {
          float a = act[r * p.Elems() + j], m = out[r * p.Elems() + j];
          ASSERT_TRUE(std::isfinite(m));
          if (is_first)
            ASSERT_EQ(m, ToStorage(a, k.storage)) << "first visit of example " << ids[r] << " element " << j;
          else
            worst_late = std::max(worst_late, (double)std::fabs(a - m));
        }
      }
    }
    p.ExpectSameBuffers();
  }
  // A change since the last visit is at most D = 20 x 0.1 x 8 = 16; the error after an update
  // is at most one step s / M of a group whose scale s is the change plus the last error, so
  // s <= 2D and the error <= 2D / M: far below the signal (20) from 3 bits on.
  EXPECT_LT(worst_late, 2 * 16.0 / ((1 << k.bits) - 2) + 0.05);
  lh_aq_stats st = LH_AQ_STATS_INIT;
  ASSERT_OK(lh_aq_sender_get_stats(p.tx, &st));
  EXPECT_EQ(st.full_rows, (unsigned long long)c.examples);
  EXPECT_GT(st.delta_rows, 0u);
  EXPECT_LT(st.wire_bytes, st.raw_bytes);
}

INSTANTIATE_TEST_SUITE_P(
    All, Delta,
    testing::Values(Case{LH_AQ_PER_CHANNEL, LH_AQ_FP16, LH_ROUND_NEAREST, 2},
                    Case{LH_AQ_PER_CHANNEL, LH_AQ_BF16, LH_ROUND_STOCHASTIC, 3},
                    Case{LH_AQ_PER_CHANNEL, LH_AQ_FP32, LH_ROUND_NEAREST, 4},
                    Case{LH_AQ_PER_TOKEN_GROUP, LH_AQ_FP16, LH_ROUND_STOCHASTIC, 2},
                    Case{LH_AQ_PER_TOKEN_GROUP, LH_AQ_BF16, LH_ROUND_NEAREST, 5},
                    Case{LH_AQ_PER_TOKEN_GROUP, LH_AQ_FP32, LH_ROUND_STOCHASTIC, 8}),
    Name);

// Quantizing the change beats quantizing the activation: after a few epochs the AQ-SGD
// receiver is much closer to a than a DirectQ receiver at the same bits.
TEST(AqSgd, DeltaIsMoreAccurateThanDirect) {
  double err[2] = {0, 0};
  lh_aq_mode modes[2] = {LH_AQ_DELTA, LH_AQ_DIRECT};
  for (int i = 0; i < 2; i++) {
    Pair p(Config(modes[i], LH_AQ_PER_CHANNEL, LH_AQ_FP16));
    for (int epoch = 0; epoch < 6; epoch++)
      for (const std::vector<int64_t> &ids : Epoch(p.c, epoch, 8, 1.0)) {
        std::vector<float> act, out;
        std::vector<uint8_t> frame = p.Send(ids, epoch, &act);
        ASSERT_OK(p.Receive(frame, ids, &out));
        if (epoch == 5)
          for (size_t j = 0; j < act.size(); j++)
            err[i] += std::fabs((double)act[j] - out[j]);
      }
  }
  EXPECT_LT(err[0] * 4, err[1]) << "AQ-SGD error " << err[0] << ", DirectQ error " << err[1];
}

// DirectQ and OFF keep no rows; OFF with fp32 storage is lossless; DirectQ sends first visits
// whole (warm-up) and later ones within half a level spacing (2s/M) of the activation.
TEST(AqSgd, DirectAndOff) {
  Pair off(Config(LH_AQ_OFF, LH_AQ_PER_CHANNEL, LH_AQ_FP32));
  Pair direct(Config(LH_AQ_DIRECT, LH_AQ_PER_TOKEN_GROUP, LH_AQ_FP16, 4));
  for (int epoch = 0; epoch < 3; epoch++)
    for (const std::vector<int64_t> &ids : Epoch(off.c, epoch, 5)) {
      std::vector<float> act, out;
      ASSERT_OK(off.Receive(off.Send(ids, epoch, &act), ids, &out));
      ASSERT_EQ(act, out);
      std::vector<uint8_t> frame = direct.Send(ids, epoch, &act);
      ASSERT_OK(direct.Receive(frame, ids, &out));
      for (size_t j = 0; j < act.size(); j++)
        ASSERT_NEAR(act[j], out[j], epoch == 0 ? 0.01 * (1 + std::fabs(act[j])) : 24.0 * 1.01 / 14); // levels 2s/M apart, |a| <= 24
    }
  direct.ExpectSameBuffers();
  lh_aq_store none;
  ASSERT_OK(lh_aq_sender_store(off.tx, &none));
  EXPECT_EQ(none, nullptr);
}

// warmup_epochs = 2: the first two visits of every example go whole.
TEST(AqSgd, WarmupEpochs) {
  lh_aq_config c = Config(LH_AQ_DELTA, LH_AQ_PER_CHANNEL, LH_AQ_FP16);
  c.warmup_epochs = 2;
  Pair p(c);
  for (int epoch = 0; epoch < 3; epoch++) {
    lh_aq_stats before = LH_AQ_STATS_INIT, after = LH_AQ_STATS_INIT;
    ASSERT_OK(lh_aq_sender_get_stats(p.tx, &before));
    for (const std::vector<int64_t> &ids : Epoch(c, epoch, 8, 1.0)) {
      std::vector<float> out;
      ASSERT_OK(p.Receive(p.Send(ids, epoch), ids, &out));
    }
    ASSERT_OK(lh_aq_sender_get_stats(p.tx, &after));
    EXPECT_EQ(after.full_rows - before.full_rows, epoch < 2 ? c.examples : 0u) << "epoch " << epoch;
  }
}

// Gradients: quantized directly at the backward bits (or whole under OFF), decoded on the
// sending stage within one step.
TEST(AqSgd, Backward) {
  for (lh_aq_mode mode : {LH_AQ_DELTA, LH_AQ_OFF}) {
    Pair p(Config(mode, LH_AQ_PER_TOKEN_GROUP, LH_AQ_FP32, 2, 6));
    std::vector<int64_t> ids = {4, 9, 1};
    std::vector<float> out;
    ASSERT_OK(p.Receive(p.Send(ids, 0), ids, &out));
    std::vector<float> grad(ids.size() * p.Elems()), back(grad.size(), NAN);
    for (size_t j = 0; j < grad.size(); j++)
      grad[j] = 1e-3f * Value(3, 0, j);
    size_t cap = 0, used = 0;
    ASSERT_OK(lh_aq_max_frame_bytes(&p.c, ids.size(), 1, &cap));
    std::vector<uint8_t> frame(cap);
    ASSERT_OK(lh_aq_send_grad(p.rx, grad.data(), ids.data(), ids.size(), frame.data(), cap, &used));
    size_t n = grad.size();
    EXPECT_EQ(used, mode == LH_AQ_OFF ? 48 + 4 * n : 48 + 2 * (n / 32) + (n * 6 + 7) / 8);
    ASSERT_OK(lh_aq_receive_grad(p.tx, frame.data(), used, ids.data(), ids.size(), back.data()));
    for (size_t j = 0; j < n; j++)
      if (mode == LH_AQ_OFF)
        ASSERT_EQ(back[j], grad[j]);
      else
        ASSERT_NEAR(back[j], grad[j], 1e-3 / 62 * 1.01);
    // A forward frame is not a gradient frame.
    std::vector<uint8_t> fwd = p.Send(ids, 1);
    EXPECT_EQ(lh_aq_receive_grad(p.tx, fwd.data(), fwd.size(), ids.data(), ids.size(), back.data()),
              LH_ERR_MISMATCH);
  }
}

// A frame that fails any check changes nothing at the receiver.
TEST(AqSgd, BadFramesLeaveTheReceiverUntouched) {
  Pair p(Config(LH_AQ_DELTA, LH_AQ_PER_CHANNEL, LH_AQ_FP16));
  std::vector<int64_t> ids = {3, 8, 5, 0};
  std::vector<float> out;
  ASSERT_OK(p.Receive(p.Send(ids, 0), ids, &out));
  std::vector<uint8_t> good = p.Send(ids, 1);
  lh_aq_store rs;
  ASSERT_OK(lh_aq_receiver_store(p.rx, &rs));
  std::vector<uint8_t> before = p.Row(rs, 8);

  std::vector<uint8_t> bad = good;
  bad[bad.size() - 3] ^= 0x10; // payload
  EXPECT_EQ(p.Receive(bad, ids, &out), LH_ERR_CORRUPT);
  EXPECT_NE(std::string(lh_last_error()).find("CRC"), std::string::npos) << lh_last_error();
  bad = good;
  bad[17] ^= 1; // the header's count
  EXPECT_EQ(p.Receive(bad, ids, &out), LH_ERR_CORRUPT);
  bad = good;
  bad.pop_back();
  EXPECT_EQ(p.Receive(bad, ids, &out), LH_ERR_CORRUPT);
  EXPECT_EQ(p.Receive(std::vector<uint8_t>(good.begin(), good.begin() + 20), ids, &out), LH_ERR_CORRUPT);
  std::vector<int64_t> other = {3, 5, 8, 0};
  EXPECT_EQ(p.Receive(good, other, &out), LH_ERR_MISMATCH);
  EXPECT_NE(std::string(lh_last_error()).find("ids differ"), std::string::npos) << lh_last_error();
  std::vector<int64_t> fewer = {3, 8, 5};
  EXPECT_EQ(p.Receive(good, fewer, &out), LH_ERR_MISMATCH);
  EXPECT_NE(std::string(lh_last_error()).find("count"), std::string::npos) << lh_last_error();

  // A receiver configured with other bits names the field.
  lh_aq_config c4 = p.c;
  c4.forward_bits = 4;
  lh_aq_receiver rx4;
  ASSERT_OK(lh_aq_receiver_create(&c4, &rx4));
  out.assign(ids.size() * p.Elems(), 0);
  EXPECT_EQ(lh_aq_receive(rx4, good.data(), good.size(), ids.data(), ids.size(), out.data()), LH_ERR_MISMATCH);
  EXPECT_NE(std::string(lh_last_error()).find("bits is 2, this receiver's is 4"), std::string::npos)
      << lh_last_error();
  lh_aq_receiver_free(rx4);

  // A receiver that never saw these examples expects first visits: the visit counts disagree.
  lh_aq_receiver fresh;
  ASSERT_OK(lh_aq_receiver_create(&p.c, &fresh));
  EXPECT_EQ(lh_aq_receive(fresh, good.data(), good.size(), ids.data(), ids.size(), out.data()), LH_ERR_MISMATCH);
  EXPECT_NE(std::string(lh_last_error()).find("visit counts differ"), std::string::npos) << lh_last_error();
  lh_aq_receiver_free(fresh);

  EXPECT_EQ(p.Row(rs, 8), before);
  uint32_t visits = 0;
  ASSERT_OK(lh_aq_store_visits(rs, 8, &visits));
  EXPECT_EQ(visits, 1u);
  ASSERT_OK(p.Receive(good, ids, &out)); // the good frame still applies
  p.ExpectSameBuffers();
}

// Ids out of range, repeated ids, a full store and a short buffer are refused before any
// buffer changes.
TEST(AqSgd, BadCallsChangeNothing) {
  lh_aq_config c = Config(LH_AQ_DELTA, LH_AQ_PER_CHANNEL, LH_AQ_FP16);
  Pair p(c);
  lh_aq_store_config sc = LH_AQ_STORE_CONFIG_INIT;
  sc.examples = c.examples;
  sc.capacity = 5;
  sc.row_bytes = c.tokens * c.channels * 2;
  lh_aq_store small;
  ASSERT_OK(lh_aq_store_create(&sc, &small));
  c.store = small; // the sender's buffers in a store of 5 rows
  lh_aq_sender_free(p.tx);
  ASSERT_OK(lh_aq_sender_create(&c, &p.tx));
  lh_status st;
  EXPECT_TRUE(p.Send({1, 40}, 0, nullptr, &st).empty());
  EXPECT_EQ(st, LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("40"), std::string::npos) << lh_last_error();
  EXPECT_TRUE(p.Send({1, -1}, 0, nullptr, &st).empty());
  EXPECT_EQ(st, LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(p.Send({1, 2, 1}, 0, nullptr, &st).empty());
  EXPECT_EQ(st, LH_ERR_INVALID_ARGUMENT);
  ASSERT_FALSE(p.Send({1, 2, 3}, 0).empty());
  EXPECT_TRUE(p.Send({4, 5, 6}, 0, nullptr, &st).empty()); // 6 rows needed, 5 exist
  EXPECT_EQ(st, LH_ERR_OUT_OF_MEMORY);
  EXPECT_NE(std::string(lh_last_error()).find("full"), std::string::npos) << lh_last_error();
  lh_aq_store_info info = LH_AQ_STORE_INFO_INIT;
  ASSERT_OK(lh_aq_store_get_info(small, &info));
  EXPECT_EQ(info.rows_used, 3u);
  uint32_t v = 9;
  ASSERT_OK(lh_aq_store_visits(small, 4, &v));
  EXPECT_EQ(v, 0u);
  // A buffer one byte short.
  std::vector<float> act(2 * p.Elems(), 0.5f);
  std::vector<int64_t> ids = {1, 2};
  size_t cap = 0, used = 0;
  ASSERT_OK(lh_aq_max_frame_bytes(&c, 2, 0, &cap));
  std::vector<uint8_t> frame(cap);
  size_t need = LH_AQ_FRAME_HEADER_BYTES + 2 * c.channels + (2 * p.Elems() * 2 + 7) / 8;
  EXPECT_EQ(lh_aq_send(p.tx, act.data(), ids.data(), 2, frame.data(), need - 1, &used), LH_ERR_INVALID_ARGUMENT);
  ASSERT_OK(lh_aq_send(p.tx, act.data(), ids.data(), 2, frame.data(), need, &used));
  EXPECT_EQ(used, need);
  // The store belongs to one context at a time.
  lh_aq_sender second;
  EXPECT_EQ(lh_aq_sender_create(&c, &second), LH_ERR_INVALID_ARGUMENT);
  lh_aq_sender_free(p.tx);
  p.tx = nullptr;
  lh_aq_store_free(small);
}

// Non-finite activations are refused. Per-channel scales are checked before any buffer is
// touched, so the sender stays usable; the group quantizer updates as it goes, so the sender
// refuses every later call.
TEST(AqSgd, NonFiniteActivations) {
  for (lh_aq_quantizer q : {LH_AQ_PER_CHANNEL, LH_AQ_PER_TOKEN_GROUP}) {
    Pair p(Config(LH_AQ_DELTA, q, LH_AQ_FP16));
    std::vector<int64_t> ids = {2, 6};
    std::vector<float> out;
    ASSERT_OK(p.Receive(p.Send(ids, 0), ids, &out));
    std::vector<float> act(2 * p.Elems(), 1.0f);
    act[p.Elems() + 70] = NAN;
    std::vector<uint8_t> frame(1 << 16);
    size_t used;
    EXPECT_EQ(lh_aq_send(p.tx, act.data(), ids.data(), 2, frame.data(), frame.size(), &used), LH_ERR_INVALID_ARGUMENT);
    std::string why = lh_last_error();
    EXPECT_NE(why.find(q == LH_AQ_PER_CHANNEL ? "channel 6" : "example 6"), std::string::npos) << why;
    act[p.Elems() + 70] = 1.0f;
    lh_status again = lh_aq_send(p.tx, act.data(), ids.data(), 2, frame.data(), frame.size(), &used);
    EXPECT_EQ(again, q == LH_AQ_PER_CHANNEL ? LH_SUCCESS : LH_ERR_INVALID_ARGUMENT) << lh_last_error();
  }
}

// Stochastic rounding is keyed by (seed, example, visit, element): two runs give the same
// frames, and with per-token groups an example's buffer does not depend on its batch-mates.
TEST(AqSgd, ReproducibleAndBatchIndependent) {
  lh_aq_config c = Config(LH_AQ_DELTA, LH_AQ_PER_TOKEN_GROUP, LH_AQ_BF16);
  c.rounding = LH_ROUND_STOCHASTIC;
  Pair a(c), b(c), d(c);
  for (int epoch = 0; epoch < 4; epoch++) {
    std::vector<float> out;
    for (const std::vector<int64_t> &ids : Epoch(c, epoch, 6, 1.0)) {
      std::vector<uint8_t> fa = a.Send(ids, epoch), fb = b.Send(ids, epoch);
      ASSERT_EQ(fa, fb);
      ASSERT_OK(a.Receive(fa, ids, &out));
      ASSERT_OK(b.Receive(fb, ids, &out));
    }
    for (const std::vector<int64_t> &ids : Epoch(c, epoch, 1, 1.0)) // one example per batch
      ASSERT_OK(d.Receive(d.Send(ids, epoch), ids, &out));
  }
  lh_aq_store sa, sd;
  ASSERT_OK(lh_aq_sender_store(a.tx, &sa));
  ASSERT_OK(lh_aq_sender_store(d.tx, &sd));
  for (int64_t id = 0; id < (int64_t)c.examples; id++)
    ASSERT_EQ(a.Row(sa, id), d.Row(sd, id)) << "example " << id;
}

// Frames may sit at any address (e.g. inside a larger receive buffer).
TEST(AqSgd, UnalignedFrames) {
  Pair p(Config(LH_AQ_DELTA, LH_AQ_PER_CHANNEL, LH_AQ_FP32));
  std::vector<int64_t> ids = {0, 1};
  std::vector<float> act(2 * p.Elems());
  for (size_t j = 0; j < act.size(); j++)
    act[j] = Value(4, 0, j);
  size_t cap = 0, used = 0;
  ASSERT_OK(lh_aq_max_frame_bytes(&p.c, 2, 0, &cap));
  std::vector<uint8_t> buf(cap + 1);
  ASSERT_OK(lh_aq_send(p.tx, act.data(), ids.data(), 2, buf.data() + 1, cap, &used));
  std::vector<float> out(act.size());
  ASSERT_OK(lh_aq_receive(p.rx, buf.data() + 1, used, ids.data(), 2, out.data()));
  EXPECT_EQ(out, act);
}

TEST(AqSgd, ConfigRefusals) {
  struct Bad {
    void (*edit)(lh_aq_config *);
    const char *says;
  };
  const Bad bad[] = {
      {[](lh_aq_config *c) { c->size = 8; }, "LH_AQ_CONFIG_INIT"},
      {[](lh_aq_config *c) { c->examples = 0; }, "examples is 0"},
      {[](lh_aq_config *c) { c->channels = 0; }, "channels is 0"},
      {[](lh_aq_config *c) { c->forward_bits = 1; }, "forward_bits = 1: expected 2 to 8"},
      {[](lh_aq_config *c) { c->backward_bits = 9; }, "backward_bits = 9"},
      {[](lh_aq_config *c) { c->quantizer = LH_AQ_PER_TOKEN_GROUP; c->group = 48; }, "group = 48"},
      {[](lh_aq_config *c) { c->quantizer = LH_AQ_PER_TOKEN_GROUP; c->channels = 96; c->group = 64; },
       "group 64 does not divide channels 96"},
      {[](lh_aq_config *c) { c->warmup_epochs = -1; }, "warmup_epochs = -1"},
      {[](lh_aq_config *c) { c->storage = (lh_aq_dtype)5; }, "storage 5"},
      {[](lh_aq_config *c) { c->mode = (lh_aq_mode)3; }, "mode = 3"},
      {[](lh_aq_config *c) { c->rounding = (lh_rounding)2; }, "rounding = 2"},
  };
  for (const Bad &b : bad) {
    lh_aq_config c = Config(LH_AQ_DELTA, LH_AQ_PER_CHANNEL, LH_AQ_FP16);
    b.edit(&c);
    lh_aq_sender s = nullptr;
    EXPECT_EQ(lh_aq_sender_create(&c, &s), LH_ERR_INVALID_ARGUMENT) << b.says;
    EXPECT_NE(std::string(lh_last_error()).find(b.says), std::string::npos) << lh_last_error();
    EXPECT_EQ(s, nullptr);
    size_t bytes;
    EXPECT_EQ(lh_aq_max_frame_bytes(&c, 4, 0, &bytes), LH_ERR_INVALID_ARGUMENT);
  }
  const char *name = nullptr;
  lh_aq_mode m;
  ASSERT_OK(lh_aq_mode_name(LH_AQ_DIRECT, &name));
  EXPECT_STREQ(name, "direct");
  ASSERT_OK(lh_aq_mode_parse("off", &m));
  EXPECT_EQ(m, LH_AQ_OFF);
  EXPECT_EQ(lh_aq_mode_parse("fast", &m), LH_ERR_INVALID_ARGUMENT);
  lh_aq_dtype t;
  ASSERT_OK(lh_aq_dtype_parse("bf16", &t));
  EXPECT_EQ(t, LH_AQ_BF16);
  EXPECT_EQ(lh_aq_dtype_parse("fp8", &t), LH_ERR_INVALID_ARGUMENT);
}

// lh_aq_max_frame_bytes bounds every frame any mix of first and later visits produces.
TEST(AqSgd, MaxFrameBytesBoundsEveryFrame) {
  for (lh_aq_quantizer q : {LH_AQ_PER_CHANNEL, LH_AQ_PER_TOKEN_GROUP}) {
    lh_aq_config c = Config(LH_AQ_DELTA, q, LH_AQ_FP16, 8, 8);
    c.examples = 100;
    Pair p(c);
    size_t most = 0;
    ASSERT_OK(lh_aq_max_frame_bytes(&c, 6, 0, &most));
    std::vector<float> out;
    for (int64_t fresh = 0; fresh <= 6; fresh++) {
      std::vector<int64_t> ids;
      for (int64_t i = 0; i < 6; i++) // `fresh` new examples, the rest seen before
        ids.push_back(i < fresh ? 10 + fresh * 6 + i : i);
      std::vector<uint8_t> f = p.Send(ids, 1);
      ASSERT_LE(f.size(), most);
      ASSERT_OK(p.Receive(f, ids, &out));
    }
  }
}

} // namespace

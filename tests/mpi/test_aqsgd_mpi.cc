// AQ-SGD across processes: rank r sends activations to rank r + 1 through an lh_aq_sender,
// for many epochs in which examples arrive shuffled and some skip epochs, and gradients come
// back. Afterwards each boundary's two buffers are compared bit for bit over the wire. Inputs
// are functions of (seed, example, epoch, element), so every rank knows what the other sent.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "mpi_test.h"

namespace {

constexpr int kExamples = 48, kTokens = 4, kChannels = 64, kBatch = 6, kEpochs = 10;

float Act(int64_t id, int epoch, size_t j) {
  float gain = (j % kChannels) % 13 == 5 ? 25.0f : 1.0f;
  return gain * (lh_test_value(11, (int)id, j) + 0.08f * (float)epoch * lh_test_value(12, (int)id, j));
}

// Epoch e's batches, the same on every rank: shuffled, about a quarter skipping the epoch.
std::vector<std::vector<int64_t>> Batches(int epoch) {
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < kExamples; i++)
    if (epoch == 0 || lh_test_value(13, epoch, (uint64_t)i) > -0.5f)
      ids.push_back(i);
  std::mt19937_64 rng(1000 + (uint64_t)epoch);
  std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<std::vector<int64_t>> out;
  for (size_t i = 0; i < ids.size(); i += kBatch)
    out.emplace_back(ids.begin() + (long)i, ids.begin() + (long)std::min(ids.size(), i + kBatch));
  return out;
}

struct Case {
  lh_aq_quantizer q;
  lh_aq_dtype storage;
  lh_rounding rounding;
  int fw, bw;
};

class AqSgdMpi : public testing::TestWithParam<Case> {};

TEST_P(AqSgdMpi, BuffersStayBitwiseEqualAcrossRanks) {
  Case k = GetParam();
  lh_test_world w;
  lh_aq_config c = LH_AQ_CONFIG_INIT;
  c.examples = kExamples;
  c.tokens = kTokens;
  c.channels = kChannels;
  c.storage = k.storage;
  c.quantizer = k.q;
  c.group = k.q == LH_AQ_PER_TOKEN_GROUP ? 64 : 0;
  c.rounding = k.rounding;
  c.forward_bits = k.fw;
  c.backward_bits = k.bw;
  c.seed = 2024;
  lh_aq_sender tx = nullptr;  // to rank + 1
  lh_aq_receiver rx = nullptr; // from rank - 1
  bool sends = w.rank + 1 < w.size, receives = w.rank > 0;
  if (sends) {
    c.boundary = w.rank;
    LH_ASSERT_OK(lh_aq_sender_create(&c, &tx));
  }
  if (receives) {
    c.boundary = w.rank - 1;
    LH_ASSERT_OK(lh_aq_receiver_create(&c, &rx));
  }
  const size_t e = kTokens * kChannels;
  size_t fcap = 0, bcap = 0;
  LH_ASSERT_OK(lh_aq_max_frame_bytes(&c, kBatch, 0, &fcap));
  LH_ASSERT_OK(lh_aq_max_frame_bytes(&c, kBatch, 1, &bcap));
  std::vector<uint8_t> frame(fcap > bcap ? fcap : bcap);
  double worst = 0;
  for (int epoch = 0; epoch < kEpochs; epoch++)
    for (const std::vector<int64_t> &ids : Batches(epoch)) {
      size_t n = ids.size();
      if (receives) { // forward in, then our gradient back
        uint64_t bytes = 0;
        LH_ASSERT_OK(lh_recv(w.c, &bytes, sizeof bytes, w.rank - 1, 1));
        ASSERT_LE(bytes, frame.size());
        LH_ASSERT_OK(lh_recv(w.c, frame.data(), bytes, w.rank - 1, 2));
        std::vector<float> m(n * e);
        LH_ASSERT_OK(lh_aq_receive(rx, frame.data(), bytes, ids.data(), n, m.data()));
        for (size_t r = 0; r < n; r++)
          for (size_t j = 0; j < e; j++)
            worst = std::max(worst, (double)std::fabs(m[r * e + j] - Act(ids[r], epoch, j)));
        std::vector<float> grad(n * e);
        for (size_t r = 0; r < n; r++)
          for (size_t j = 0; j < e; j++)
            grad[r * e + j] = 0.01f * lh_test_value(14 + (uint64_t)epoch, (int)ids[r], j);
        size_t used = 0;
        LH_ASSERT_OK(lh_aq_send_grad(rx, grad.data(), ids.data(), n, frame.data(), frame.size(), &used));
        bytes = used;
        LH_ASSERT_OK(lh_send(w.c, &bytes, sizeof bytes, w.rank - 1, 3));
        LH_ASSERT_OK(lh_send(w.c, frame.data(), used, w.rank - 1, 4));
      }
      if (sends) { // forward out, then the gradient in
        std::vector<float> act(n * e);
        for (size_t r = 0; r < n; r++)
          for (size_t j = 0; j < e; j++)
            act[r * e + j] = Act(ids[r], epoch, j);
        size_t used = 0;
        LH_ASSERT_OK(lh_aq_send(tx, act.data(), ids.data(), n, frame.data(), frame.size(), &used));
        uint64_t bytes = used;
        LH_ASSERT_OK(lh_send(w.c, &bytes, sizeof bytes, w.rank + 1, 1));
        LH_ASSERT_OK(lh_send(w.c, frame.data(), used, w.rank + 1, 2));
        LH_ASSERT_OK(lh_recv(w.c, &bytes, sizeof bytes, w.rank + 1, 3));
        ASSERT_LE(bytes, frame.size());
        LH_ASSERT_OK(lh_recv(w.c, frame.data(), bytes, w.rank + 1, 4));
        std::vector<float> grad(n * e);
        LH_ASSERT_OK(lh_aq_receive_grad(tx, frame.data(), bytes, ids.data(), n, grad.data()));
        for (size_t r = 0; r < n; r++)
          for (size_t j = 0; j < e; j++) // levels 2s/M apart, s <= 0.01: one spacing at most
            ASSERT_NEAR(grad[r * e + j], 0.01f * lh_test_value(14 + (uint64_t)epoch, (int)ids[r], j),
                        2 * 0.01 * 1.01 / ((1 << k.bw) - 2));
      }
    }
  // The receiver tracks the activation: every later visit is within the gain-25 channel's
  // change since the example's last visit (at most 25 x 0.08 x 10 = 20, twice that bounds the
  // error after an update at 2 bits).
  EXPECT_LT(worst, 40.0);
  // Compare both ends of each boundary: the sender ships its rows to the receiver.
  lh_aq_store st = nullptr;
  const size_t row = e * (k.storage == LH_AQ_FP32 ? 4 : 2);
  std::vector<uint8_t> mine(row), theirs(row);
  if (sends) {
    LH_ASSERT_OK(lh_aq_sender_store(tx, &st));
    for (int64_t id = 0; id < kExamples; id++) {
      LH_ASSERT_OK(lh_aq_store_read_row(st, id, mine.data(), row));
      LH_ASSERT_OK(lh_send(w.c, mine.data(), row, w.rank + 1, 5));
    }
  }
  if (receives) {
    LH_ASSERT_OK(lh_aq_receiver_store(rx, &st));
    int differ = 0;
    for (int64_t id = 0; id < kExamples; id++) {
      LH_ASSERT_OK(lh_recv(w.c, theirs.data(), row, w.rank - 1, 5));
      LH_ASSERT_OK(lh_aq_store_read_row(st, id, mine.data(), row));
      differ += mine != theirs;
    }
    EXPECT_EQ(differ, 0) << "examples whose buffers differ between ranks " << w.rank - 1 << " and " << w.rank;
  }
  lh_aq_sender_free(tx);
  lh_aq_receiver_free(rx);
}

INSTANTIATE_TEST_SUITE_P(All, AqSgdMpi,
                         testing::Values(Case{LH_AQ_PER_CHANNEL, LH_AQ_FP16, LH_ROUND_NEAREST, 2, 4},
                                         Case{LH_AQ_PER_TOKEN_GROUP, LH_AQ_BF16, LH_ROUND_STOCHASTIC, 3, 6},
                                         Case{LH_AQ_PER_TOKEN_GROUP, LH_AQ_FP16, LH_ROUND_NEAREST, 4, 8},
                                         Case{LH_AQ_PER_CHANNEL, LH_AQ_FP32, LH_ROUND_STOCHASTIC, 2, 4}));

} // namespace

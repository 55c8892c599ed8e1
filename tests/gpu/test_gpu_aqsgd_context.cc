// The AQ-SGD contexts (include/longhaul/aqsgd.h) on the device: a pair of contexts whose
// buffers live in DEVICE stores and whose activations, outputs and gradients are device memory
// must produce, epoch after epoch, the same frame bytes, outputs and buffer rows as a pair
// running everything on the host (the CPU twins). The mixed placements (device tensors with host
// buffers, host tensors with device buffers) are checked the same way.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <longhaul/aqsgd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gpu/gpu_test.h"

namespace {

uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
float Value(uint64_t a, uint64_t b, uint64_t c) {
  return (float)((double)(Mix(a * 0x9E3779B97F4A7C15ull + b * 0xD1B54A32D192ED03ull + c) >> 11) * 0x1p-52 - 1.0);
}

struct Placement {
  bool device_tensors, device_store;
};

// One end pair (sender and receiver) with tensors and buffers where `where` says.
struct Ends {
  Ends(lh_aq_config c, Placement where) : cfg(c), at(where) {
    if (at.device_store && c.mode != LH_AQ_OFF) {
      for (lh_aq_store *s : {&tx_store, &rx_store}) {
        lh_aq_store_config sc = LH_AQ_STORE_CONFIG_INIT;
        sc.kind = LH_AQ_STORE_DEVICE;
        sc.examples = c.examples;
        sc.row_bytes = c.mode == LH_AQ_DELTA ? c.tokens * c.channels * (c.storage == LH_AQ_FP32 ? 4 : 2) : 0;
        EXPECT_EQ(lh_aq_store_create(&sc, s), LH_SUCCESS) << lh_last_error();
      }
    }
    lh_aq_config t = c, r = c;
    t.store = tx_store;
    r.store = rx_store;
    EXPECT_EQ(lh_aq_sender_create(&t, &tx), LH_SUCCESS) << lh_last_error();
    EXPECT_EQ(lh_aq_receiver_create(&r, &rx), LH_SUCCESS) << lh_last_error();
  }
  ~Ends() {
    lh_aq_sender_free(tx);
    lh_aq_receiver_free(rx);
    lh_aq_store_free(tx_store);
    lh_aq_store_free(rx_store);
  }
  Ends(const Ends &) = delete;
  Ends &operator=(const Ends &) = delete;
  lh_aq_config cfg;
  Placement at;
  lh_aq_store tx_store = nullptr, rx_store = nullptr;
  lh_aq_sender tx = nullptr;
  lh_aq_receiver rx = nullptr;
};

// A tensor given to a context: host memory, or a device copy of it.
struct Tensor {
  Tensor(const std::vector<float> &host, bool on_device) : data(host) {
    if (on_device) {
      dev = std::make_unique<DeviceBuffer>(host.size() * 4);
      EXPECT_EQ(dev->Upload(data.data()), cudaSuccess);
    }
  }
  void *ptr() { return dev ? dev->get() : (void *)data.data(); }
  std::vector<float> Read() {
    if (dev) {
      EXPECT_EQ(dev->Download(data.data()), cudaSuccess);
    }
    return data;
  }
  std::vector<float> data;
  std::unique_ptr<DeviceBuffer> dev;
};

// Runs the forward and backward of one batch on an end pair; returns the two frames and what
// the receiver and the sender got.
struct Step {
  std::vector<uint8_t> fwd, bwd;
  std::vector<float> act_in, grad_out;
};
Step RunBatch(Ends &e, const std::vector<int64_t> &ids, int epoch) {
  Step out;
  size_t elems = e.cfg.tokens * e.cfg.channels, n = ids.size() * elems;
  std::vector<float> act(n), grad(n);
  for (size_t r = 0; r < ids.size(); r++)
    for (size_t j = 0; j < elems; j++) {
      float gain = j % 29 == 3 ? 20.0f : 1.0f;
      act[r * elems + j] = gain * (Value(1, (uint64_t)ids[r], j) + 0.1f * epoch * Value(2, (uint64_t)ids[r], j));
      grad[r * elems + j] = 1e-3f * Value(3 + (uint64_t)epoch, (uint64_t)ids[r], j);
    }
  Tensor a(act, e.at.device_tensors), in(std::vector<float>(n, NAN), e.at.device_tensors);
  Tensor g(grad, e.at.device_tensors), back(std::vector<float>(n, NAN), e.at.device_tensors);
  size_t cap = 0, used = 0;
  EXPECT_EQ(lh_aq_max_frame_bytes(&e.cfg, ids.size(), 0, &cap), LH_SUCCESS);
  out.fwd.resize(cap);
  EXPECT_EQ(lh_aq_send(e.tx, a.ptr(), ids.data(), ids.size(), out.fwd.data(), cap, &used), LH_SUCCESS)
      << lh_last_error();
  out.fwd.resize(used);
  EXPECT_EQ(lh_aq_receive(e.rx, out.fwd.data(), used, ids.data(), ids.size(), in.ptr()), LH_SUCCESS)
      << lh_last_error();
  EXPECT_EQ(lh_aq_max_frame_bytes(&e.cfg, ids.size(), 1, &cap), LH_SUCCESS);
  out.bwd.resize(cap);
  EXPECT_EQ(lh_aq_send_grad(e.rx, g.ptr(), ids.data(), ids.size(), out.bwd.data(), cap, &used), LH_SUCCESS)
      << lh_last_error();
  out.bwd.resize(used);
  EXPECT_EQ(lh_aq_receive_grad(e.tx, out.bwd.data(), used, ids.data(), ids.size(), back.ptr()), LH_SUCCESS)
      << lh_last_error();
  out.act_in = in.Read();
  out.grad_out = back.Read();
  return out;
}

std::vector<uint8_t> Row(lh_aq_store s, int64_t id, size_t bytes) {
  std::vector<uint8_t> row(bytes);
  EXPECT_EQ(lh_aq_store_read_row(s, id, row.data(), bytes), LH_SUCCESS) << lh_last_error();
  return row;
}

struct Case {
  lh_aq_mode mode;
  lh_aq_quantizer q;
  lh_aq_dtype storage;
  lh_rounding rounding;
};

class DeviceContexts : public testing::TestWithParam<Case> {};

TEST_P(DeviceContexts, SameBytesAsTheHostPath) {
  Case k = GetParam();
  lh_aq_config c = LH_AQ_CONFIG_INIT;
  c.examples = 30;
  c.tokens = 4;
  c.channels = 128;
  c.mode = k.mode;
  c.quantizer = k.q;
  c.group = k.q == LH_AQ_PER_TOKEN_GROUP ? 64 : 0;
  c.storage = k.storage;
  c.rounding = k.rounding;
  c.forward_bits = 3;
  c.backward_bits = 5;
  c.seed = 99;
  Ends host(c, {false, false});
  const Placement others[] = {{true, true}, {true, false}, {false, true}};
  for (const Placement &where : others) {
    SCOPED_TRACE(std::string("tensors on ") + (where.device_tensors ? "device" : "host") + ", buffers on " +
                 (where.device_store ? "device" : "host"));
    Ends ref(c, {false, false}), dev(c, where);
    for (int epoch = 0; epoch < 4; epoch++)
      for (size_t first = 0; first < c.examples; first += 7) {
        std::vector<int64_t> ids;
        for (size_t i = first; i < std::min(c.examples, first + 7); i++)
          ids.push_back((int64_t)((i * 11 + (size_t)epoch * 5) % c.examples)); // a new order each epoch
        Step want = RunBatch(ref, ids, epoch), got = RunBatch(dev, ids, epoch);
        ASSERT_EQ(want.fwd, got.fwd) << "forward frame, epoch " << epoch;
        ASSERT_EQ(want.bwd, got.bwd) << "backward frame, epoch " << epoch;
        ASSERT_EQ(0, std::memcmp(want.act_in.data(), got.act_in.data(), want.act_in.size() * 4)) << "epoch " << epoch;
        ASSERT_EQ(0, std::memcmp(want.grad_out.data(), got.grad_out.data(), want.grad_out.size() * 4))
            << "epoch " << epoch;
      }
    if (c.mode == LH_AQ_DELTA) {
      size_t bytes = c.tokens * c.channels * (c.storage == LH_AQ_FP32 ? 4 : 2);
      lh_aq_store a, b;
      ASSERT_EQ(lh_aq_receiver_store(ref.rx, &a), LH_SUCCESS);
      ASSERT_EQ(lh_aq_receiver_store(dev.rx, &b), LH_SUCCESS);
      for (int64_t id = 0; id < (int64_t)c.examples; id++)
        ASSERT_EQ(Row(a, id, bytes), Row(b, id, bytes)) << "example " << id;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, DeviceContexts,
                         testing::Values(Case{LH_AQ_DELTA, LH_AQ_PER_TOKEN_GROUP, LH_AQ_FP16, LH_ROUND_NEAREST},
                                         Case{LH_AQ_DELTA, LH_AQ_PER_CHANNEL, LH_AQ_BF16, LH_ROUND_STOCHASTIC},
                                         Case{LH_AQ_DELTA, LH_AQ_PER_TOKEN_GROUP, LH_AQ_FP32, LH_ROUND_STOCHASTIC},
                                         Case{LH_AQ_DIRECT, LH_AQ_PER_CHANNEL, LH_AQ_FP16, LH_ROUND_NEAREST},
                                         Case{LH_AQ_OFF, LH_AQ_PER_CHANNEL, LH_AQ_FP32, LH_ROUND_NEAREST}));

// A non-finite activation on the device is refused like one on the host.
TEST(DeviceContexts, NonFiniteIsRefused) {
  lh_aq_config c = LH_AQ_CONFIG_INIT;
  c.examples = 4;
  c.tokens = 2;
  c.channels = 64;
  Ends e(c, {true, true});
  std::vector<int64_t> ids = {0, 1};
  RunBatch(e, ids, 0);
  std::vector<float> act(2 * 128, 1.0f);
  act[200] = INFINITY;
  Tensor a(act, true);
  std::vector<uint8_t> frame(1 << 16);
  size_t used = 0;
  EXPECT_EQ(lh_aq_send(e.tx, a.ptr(), ids.data(), 2, frame.data(), frame.size(), &used), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(lh_last_error()).find("channel 8"), std::string::npos) << lh_last_error();
}

}  // namespace

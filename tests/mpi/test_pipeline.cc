// The pipeline runtime on every stages x replicas split of the ranks, both schedules:
//  - uncompressed (AQ mode OFF, fp32 storage) it computes exactly what one process computes
//    (the last stage's outputs, the gradients reaching stage 0, the loss), bit for bit, and
//    its byte counts are the frame sizes and what the transport moved;
//  - with AQ-SGD (DELTA) over several epochs, with learning, both ends of every boundary end
//    with bitwise identical buffers and the loss stays finite;
//  - evaluation is exact and touches no buffer; a custom placement works; bad configs fail
//    on every rank without hanging; a callback's error is returned.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <dirent.h>
#include <unistd.h>

#include <longhaul/pipeline.h>

#include "mpi/mpi_test.h"

namespace {

using World = lh_test_world;

// A chain of linear maps: stage s multiplies every token's row by w[s] (width[s] x width[s+1]).
// The last stage's loss is 0.5 |y - target|^2 per example. Every float op happens in one fixed
// order in forward() and backward(), which the pipeline's callbacks and the single-process
// reference share: equal inputs give equal bits.
struct Toy {
  int stages;
  size_t tokens = 2;
  uint64_t seed;
  std::vector<size_t> width;         // stages + 1
  std::vector<std::vector<float>> w; // per stage

  Toy(int p, uint64_t s) : stages(p), seed(s) {
    for (int i = 0; i <= p; i++)
      width.push_back(i == 0 ? 3 : i == p ? 2 : 14 + 2 * (size_t)i);
    // gain about 0.9 per stage (uniform weights of variance 0.75 / fan-in): six stages neither
    // vanish nor blow up
    for (int i = 0; i < p; i++) {
      w.emplace_back(width[(size_t)i] * width[(size_t)i + 1]);
      float scale = 1.5f / std::sqrt((float)width[(size_t)i]);
      for (size_t k = 0; k < w.back().size(); k++)
        w.back()[k] = scale * lh_test_value(seed, 1000 + i, k);
    }
  }
  std::vector<size_t> boundaries() const { return std::vector<size_t>(width.begin() + 1, width.end() - 1); }
  size_t in(int s) const { return tokens * width[(size_t)s]; } // floats per example entering stage s
  void input(int64_t id, float *x) const {
    for (size_t j = 0; j < in(0); j++)
      x[j] = lh_test_value(seed, 7, (uint64_t)id * 1000 + j);
  }
  float target(int64_t id, size_t j) const { return lh_test_value(seed, 9, (uint64_t)id * 1000 + j); }
  void forward(int s, const float *x, float *y, size_t count) const {
    size_t a = width[(size_t)s], b = width[(size_t)s + 1];
    for (size_t r = 0; r < count * tokens; r++)
      for (size_t j = 0; j < b; j++) {
        float acc = 0;
        for (size_t i = 0; i < a; i++)
          acc += x[r * a + i] * w[(size_t)s][i * b + j];
        y[r * b + j] = acc;
      }
  }
  void backward(int s, const float *gy, float *gx, size_t count) const {
    size_t a = width[(size_t)s], b = width[(size_t)s + 1];
    for (size_t r = 0; r < count * tokens; r++)
      for (size_t i = 0; i < a; i++) {
        float acc = 0;
        for (size_t j = 0; j < b; j++)
          acc += gy[r * b + j] * w[(size_t)s][i * b + j];
        gx[r * a + i] = acc;
      }
  }
  // The loss of one example from its output row, and the gradient of that row.
  double loss(int64_t id, const float *y, float *gy) const {
    double l = 0;
    for (size_t j = 0; j < in(stages); j++) {
      float d = y[j] - target(id, j);
      gy[j] = d;
      l += 0.5 * (double)d * (double)d;
    }
    return l;
  }
};

// One process's answer for one example: the last stage's output, the gradient of stage 0's
// output (what reaches stage 0), the loss.
struct Reference {
  std::vector<float> y, grad0;
  double loss = 0;
};
Reference reference(const Toy &t, int64_t id) {
  std::vector<std::vector<float>> h((size_t)t.stages + 1);
  h[0].resize(t.in(0));
  t.input(id, h[0].data());
  for (int s = 0; s < t.stages; s++) {
    h[(size_t)s + 1].resize(t.in(s + 1));
    t.forward(s, h[(size_t)s].data(), h[(size_t)s + 1].data(), 1);
  }
  Reference r;
  r.y = h[(size_t)t.stages];
  std::vector<float> g(r.y.size());
  r.loss = t.loss(id, r.y.data(), g.data());
  for (int s = t.stages - 1; s >= 1; s--) {
    std::vector<float> gx(t.in(s));
    t.backward(s, g.data(), gx.data(), 1);
    g.swap(gx);
  }
  r.grad0 = g;
  return r;
}
// The loss the runtime reports: per micro-batch sums, added in micro-batch order.
double reference_loss(const Toy &t, const int64_t *ids, size_t count, size_t micro_batch) {
  double total = 0;
  for (size_t first = 0; first < count; first += micro_batch) {
    double part = 0;
    for (size_t k = first; k < count && k < first + micro_batch; k++)
      part += reference(t, ids[k]).loss;
    total += part;
  }
  return total;
}

// This rank's stage of the toy, as the pipeline's callbacks see it.
struct Stage {
  Toy *toy = nullptr;
  int stage = 0;
  float lr = 0;                                  // > 0: SGD on w[stage] after each step
  std::map<int, std::vector<float>> x, y;        // per micro-batch in flight: input, last stage's output
  std::map<int64_t, std::vector<float>> outputs; // last stage: the latest output of each example
  std::map<int64_t, std::vector<float>> grads;   // stage 0: the gradient that reached it
  std::vector<float> gw;                         // the step's weight gradient
  int forwards = 0, backwards = 0, evals = 0;
  int fail_forward = -1, fail_backward = -1; // micro-batch whose callback fails
  std::string bad;                           // what a call got wrong
  bool last() const { return stage == toy->stages - 1; }
};

lh_status stage_forward(void *user, lh_stage_call *c) {
  Stage &st = *static_cast<Stage *>(user);
  const Toy &t = *st.toy;
  int s = st.stage;
  if (c->size != sizeof *c || c->stage != s || (s == 0) != (c->input == nullptr) ||
      st.last() != (c->output == nullptr) || c->grad_output || c->grad_input || c->count == 0)
    st.bad = "forward call fields";
  if (c->micro == st.fail_forward)
    return LH_ERR_IO;
  std::vector<float> x(c->count * t.in(s)), y(c->count * t.in(s + 1));
  if (s == 0)
    for (size_t k = 0; k < c->count; k++)
      t.input(c->ids[k], &x[k * t.in(0)]);
  else
    std::memcpy(x.data(), c->input, x.size() * sizeof(float));
  t.forward(s, x.data(), y.data(), c->count);
  if (!st.last()) {
    std::memcpy(c->output, y.data(), y.size() * sizeof(float));
  } else {
    std::vector<float> g(t.in(s + 1));
    c->loss = 0;
    for (size_t k = 0; k < c->count; k++) {
      const float *yk = &y[k * t.in(s + 1)];
      c->loss += t.loss(c->ids[k], yk, g.data());
      st.outputs[c->ids[k]].assign(yk, yk + t.in(s + 1));
    }
  }
  if (c->training) {
    st.x[c->micro] = x;
    st.y[c->micro] = y;
    st.forwards++;
  } else {
    st.evals++;
  }
  return LH_SUCCESS;
}

lh_status stage_backward(void *user, lh_stage_call *c) {
  Stage &st = *static_cast<Stage *>(user);
  const Toy &t = *st.toy;
  int s = st.stage;
  if (c->size != sizeof *c || !c->training || c->input || c->output || st.last() != (c->grad_output == nullptr) ||
      (s == 0) != (c->grad_input == nullptr))
    st.bad = "backward call fields";
  if (!st.x.count(c->micro))
    st.bad = "backward of micro-batch " + std::to_string(c->micro) + " before its forward";
  if (c->micro == st.fail_backward)
    return LH_ERR_IO;
  size_t a = t.width[(size_t)s], b = t.width[(size_t)s + 1];
  std::vector<float> gy(c->count * t.in(s + 1));
  if (st.last()) {
    for (size_t k = 0; k < c->count; k++)
      t.loss(c->ids[k], &st.y[c->micro][k * t.in(s + 1)], &gy[k * t.in(s + 1)]);
  } else {
    std::memcpy(gy.data(), c->grad_output, gy.size() * sizeof(float));
  }
  if (s == 0 && !st.last())
    for (size_t k = 0; k < c->count; k++)
      st.grads[c->ids[k]].assign(&gy[k * t.in(1)], &gy[(k + 1) * t.in(1)]);
  if (s > 0)
    t.backward(s, gy.data(), c->grad_input, c->count);
  if (st.lr > 0) {
    const std::vector<float> &x = st.x[c->micro];
    st.gw.resize(a * b, 0.0f);
    for (size_t r = 0; r < c->count * t.tokens; r++)
      for (size_t i = 0; i < a; i++)
        for (size_t j = 0; j < b; j++)
          st.gw[i * b + j] += x[r * a + i] * gy[r * b + j];
  }
  st.x.erase(c->micro);
  st.y.erase(c->micro);
  st.backwards++;
  return LH_SUCCESS;
}

lh_pipeline_config make_config(const Toy &t, const std::vector<size_t> &widths, int replicas, Stage *st) {
  lh_pipeline_config cfg = LH_PIPELINE_CONFIG_INIT;
  cfg.stages = t.stages;
  cfg.replicas = replicas;
  cfg.micro_batches = 3;
  cfg.micro_batch = 2;
  cfg.examples = 1000;
  cfg.tokens = t.tokens;
  cfg.boundary_channels = widths.empty() ? nullptr : widths.data();
  cfg.aq.mode = LH_AQ_OFF;
  cfg.aq.storage = LH_AQ_FP32;
  cfg.forward = stage_forward;
  cfg.backward = stage_backward;
  cfg.user = st;
  return cfg;
}

// The ids of one step of replica d: consecutive blocks, distinct across replicas and steps.
std::vector<int64_t> step_ids(const lh_pipeline_config &cfg, int step, int d) {
  size_t n = (size_t)cfg.micro_batches * cfg.micro_batch;
  std::vector<int64_t> ids(n);
  for (size_t k = 0; k < n; k++)
    ids[k] = (int64_t)(((size_t)step * (size_t)cfg.replicas + (size_t)d) * n + k);
  return ids;
}

std::vector<int> divisors(int n) {
  std::vector<int> v;
  for (int p = 1; p <= n; p++)
    if (n % p == 0)
      v.push_back(p);
  return v;
}

const lh_pipeline_schedule kSchedules[] = {LH_SCHEDULE_1F1B, LH_SCHEDULE_GPIPE};
const char *name_of(lh_pipeline_schedule s) { return s == LH_SCHEDULE_GPIPE ? "GPipe" : "1F1B"; }

// An OFF frame is the header and every row in fp32.
unsigned long long off_frame(size_t count, size_t floats_per_example) {
  return LH_AQ_FRAME_HEADER_BYTES + count * floats_per_example * sizeof(float);
}

// Runs `steps` steps and checks outputs, gradients, loss and byte counts against one process.
void expect_exact(World &w, lh_pipeline p, const lh_pipeline_config &cfg, Stage &st, int steps) {
  const Toy &t = *st.toy;
  int s = -1, d = -1;
  ASSERT_EQ(lh_pipeline_position(p, &s, &d), LH_SUCCESS);
  lh_comm rc = nullptr;
  ASSERT_EQ(lh_pipeline_replica_comm(p, &rc), LH_SUCCESS);
  int m = cfg.micro_batches;
  size_t mb = cfg.micro_batch;
  for (int step = 0; step < steps; step++) {
    std::vector<int64_t> ids = step_ids(cfg, step, d);
    lh_comm_reset_stats(rc);
    lh_pipeline_stats stats = LH_PIPELINE_STATS_INIT;
    st.forwards = st.backwards = 0;
    LH_ASSERT_OK(lh_pipeline_step(p, ids.data(), &stats));
    EXPECT_EQ(st.bad, "");
    EXPECT_EQ(st.forwards, m);
    EXPECT_EQ(st.backwards, m);
    EXPECT_TRUE(st.x.empty()) << "forwards without a backward";
    EXPECT_EQ(stats.examples, (size_t)m * mb);
    EXPECT_EQ(stats.has_loss, st.last() ? 1 : 0);
    for (int64_t id : ids) {
      Reference r = reference(t, id);
      if (st.last()) {
        ASSERT_TRUE(st.outputs.count(id)) << "no output for example " << id;
        EXPECT_EQ(0, std::memcmp(st.outputs[id].data(), r.y.data(), r.y.size() * sizeof(float)))
            << "output of example " << id << " differs from one process's";
      }
      if (s == 0 && t.stages > 1) {
        ASSERT_TRUE(st.grads.count(id)) << "no gradient for example " << id;
        EXPECT_EQ(0, std::memcmp(st.grads[id].data(), r.grad0.data(), r.grad0.size() * sizeof(float)))
            << "gradient reaching stage 0 for example " << id << " differs from one process's";
      }
    }
    if (st.last())
      EXPECT_EQ(stats.loss, reference_loss(t, ids.data(), ids.size(), mb));
    // bytes: OFF frames in fp32, in both directions, and what the transport moved
    unsigned long long out_frame = st.last() ? 0 : off_frame(mb, t.in(s + 1));
    unsigned long long in_frame = s == 0 ? 0 : off_frame(mb, t.in(s));
    EXPECT_EQ(stats.bytes_to_next, (unsigned long long)m * out_frame);
    EXPECT_EQ(stats.bytes_from_next, (unsigned long long)m * out_frame);
    EXPECT_EQ(stats.bytes_from_prev, (unsigned long long)m * in_frame);
    EXPECT_EQ(stats.bytes_to_prev, (unsigned long long)m * in_frame);
    unsigned long long raw =
        (unsigned long long)m * mb * ((st.last() ? 0 : t.in(s + 1)) + (s == 0 ? 0 : t.in(s))) * sizeof(float);
    EXPECT_EQ(stats.raw_bytes_sent, raw);
    unsigned long long wire = stats.bytes_to_next + stats.bytes_to_prev;
    EXPECT_DOUBLE_EQ(stats.compression, wire ? (double)raw / (double)wire : 1.0);
    EXPECT_GE(stats.step_seconds, stats.compute_seconds);
    EXPECT_GE(stats.wait_seconds, 0.0);
    for (int peer : {s - 1, s + 1}) {
      if (peer < 0 || peer >= t.stages)
        continue;
      lh_link_stats ls = LH_LINK_STATS_INIT;
      ASSERT_EQ(lh_comm_link_stats(rc, peer, &ls), LH_SUCCESS);
      EXPECT_EQ(ls.bytes_sent, peer > s ? stats.bytes_to_next : stats.bytes_to_prev);
      EXPECT_EQ(ls.bytes_received, peer > s ? stats.bytes_from_next : stats.bytes_from_prev);
    }
  }
  (void)w;
}

TEST(Pipeline, ExactWithoutCompressionOnEverySplit) {
  World w;
  for (int stages : divisors(w.size))
    for (lh_pipeline_schedule sched : kSchedules) {
      SCOPED_TRACE(std::to_string(stages) + " stages x " + std::to_string(w.size / stages) + " replicas, " +
                   name_of(sched));
      Toy toy(stages, 11);
      std::vector<size_t> widths = toy.boundaries();
      Stage st;
      st.toy = &toy;
      lh_pipeline_config cfg = make_config(toy, widths, w.size / stages, &st);
      cfg.schedule = sched;
      lh_pipeline p = nullptr;
      LH_ASSERT_OK(lh_pipeline_create(w.c, &cfg, &p));
      int s = -1, d = -1;
      lh_pipeline_position(p, &s, &d);
      EXPECT_EQ(s, w.rank % stages); // the default placement
      EXPECT_EQ(d, w.rank / stages);
      st.stage = s;
      lh_aq_receiver rx = nullptr;
      lh_aq_sender tx = nullptr;
      EXPECT_EQ(lh_pipeline_aq(p, &rx, &tx), LH_SUCCESS);
      EXPECT_EQ(rx != nullptr, s > 0);
      EXPECT_EQ(tx != nullptr, s < stages - 1);
      expect_exact(w, p, cfg, st, 2);
      EXPECT_EQ(lh_pipeline_free(p), LH_SUCCESS);
    }
}

TEST(Pipeline, CustomPlacement) {
  World w;
  int stages = w.size % 2 == 0 ? 2 : w.size, replicas = w.size / stages;
  // Reversed: rank r holds what rank n - 1 - r holds by default.
  std::vector<int> stage_of(w.size), replica_of(w.size);
  for (int r = 0; r < w.size; r++) {
    stage_of[(size_t)r] = (w.size - 1 - r) % stages;
    replica_of[(size_t)r] = (w.size - 1 - r) / stages;
  }
  Toy toy(stages, 12);
  std::vector<size_t> widths = toy.boundaries();
  Stage st;
  st.toy = &toy;
  st.stage = stage_of[(size_t)w.rank];
  lh_pipeline_config cfg = make_config(toy, widths, replicas, &st);
  cfg.stage_of_rank = stage_of.data();
  cfg.replica_of_rank = replica_of.data();
  lh_pipeline p = nullptr;
  LH_ASSERT_OK(lh_pipeline_create(w.c, &cfg, &p));
  int s = -1, d = -1, rank = -1, size = -1;
  lh_pipeline_position(p, &s, &d);
  EXPECT_EQ(s, stage_of[(size_t)w.rank]);
  EXPECT_EQ(d, replica_of[(size_t)w.rank]);
  lh_comm sc = nullptr, rc = nullptr;
  ASSERT_EQ(lh_pipeline_stage_comm(p, &sc), LH_SUCCESS);
  ASSERT_EQ(lh_pipeline_replica_comm(p, &rc), LH_SUCCESS);
  lh_comm_rank(sc, &rank);
  lh_comm_size(sc, &size);
  EXPECT_EQ(rank, d);
  EXPECT_EQ(size, replicas);
  lh_comm_rank(rc, &rank);
  lh_comm_size(rc, &size);
  EXPECT_EQ(rank, s);
  EXPECT_EQ(size, stages);
  expect_exact(w, p, cfg, st, 1);
  lh_pipeline_free(p);
}

// This rank's side of every boundary: the rows of the examples it has seen, sent to (or compared
// with) the other side, which must hold the same bits and visit counts.
void expect_buffers_identical(lh_pipeline p, const lh_pipeline_config &cfg, const Toy &toy) {
  int s = -1, d = -1;
  lh_pipeline_position(p, &s, &d);
  lh_comm rc = nullptr;
  lh_pipeline_replica_comm(p, &rc);
  lh_aq_receiver rx = nullptr;
  lh_aq_sender tx = nullptr;
  lh_pipeline_aq(p, &rx, &tx);
  size_t row_bytes = 0;
  auto side = [&](lh_aq_store store, int boundary, std::vector<uint32_t> &visits, std::vector<uint8_t> &rows) {
    row_bytes = toy.in(boundary + 1) * (cfg.aq.storage == LH_AQ_FP32 ? 4 : 2);
    visits.assign(cfg.examples, 0);
    rows.assign(cfg.examples * row_bytes, 0);
    for (size_t id = 0; id < cfg.examples; id++) {
      ASSERT_EQ(lh_aq_store_visits(store, (int64_t)id, &visits[id]), LH_SUCCESS) << lh_last_error();
      if (visits[id] > 0)
        ASSERT_EQ(lh_aq_store_read_row(store, (int64_t)id, &rows[id * row_bytes], row_bytes), LH_SUCCESS)
            << lh_last_error();
    }
  };
  std::vector<uint32_t> my_visits, their_visits;
  std::vector<uint8_t> my_rows, their_rows;
  lh_request reqs[2] = {nullptr, nullptr};
  if (tx) { // sender side of boundary s: ship it to stage s + 1
    lh_aq_store store = nullptr;
    ASSERT_EQ(lh_aq_sender_store(tx, &store), LH_SUCCESS);
    side(store, s, my_visits, my_rows);
    size_t seen = 0;
    for (uint32_t v : my_visits)
      seen += v > 0;
    EXPECT_GT(seen, 0u) << "the sender of boundary " << s << " has no rows";
    ASSERT_EQ(lh_isend(rc, my_visits.data(), my_visits.size() * 4, s + 1, 7, &reqs[0]), LH_SUCCESS);
    ASSERT_EQ(lh_isend(rc, my_rows.data(), my_rows.size(), s + 1, 8, &reqs[1]), LH_SUCCESS);
  }
  if (rx) { // receiver side of boundary s - 1
    lh_aq_store store = nullptr;
    ASSERT_EQ(lh_aq_receiver_store(rx, &store), LH_SUCCESS);
    std::vector<uint32_t> visits;
    std::vector<uint8_t> rows;
    side(store, s - 1, visits, rows);
    their_visits.resize(visits.size());
    their_rows.resize(rows.size());
    ASSERT_EQ(lh_recv(rc, their_visits.data(), their_visits.size() * 4, s - 1, 7), LH_SUCCESS) << lh_last_error();
    ASSERT_EQ(lh_recv(rc, their_rows.data(), their_rows.size(), s - 1, 8), LH_SUCCESS) << lh_last_error();
    EXPECT_EQ(visits, their_visits) << "visit counts differ across boundary " << s - 1;
    size_t differ = 0;
    for (size_t id = 0; id < cfg.examples; id++)
      differ += std::memcmp(&rows[id * row_bytes], &their_rows[id * row_bytes], row_bytes) != 0;
    EXPECT_EQ(differ, 0u) << "examples whose buffers differ across boundary " << s - 1 << " (replica " << d << ")";
  }
  EXPECT_EQ(lh_waitall(2, reqs), LH_SUCCESS) << lh_last_error();
}

TEST(Pipeline, AqsgdBuffersStayIdenticalWhileLearning) {
  World w;
  for (int stages : divisors(w.size)) {
    if (stages == 1)
      continue; // no boundary
    for (lh_pipeline_schedule sched : kSchedules) {
      int replicas = w.size / stages;
      SCOPED_TRACE(std::to_string(stages) + " stages x " + std::to_string(replicas) + " replicas, " + name_of(sched));
      Toy toy(stages, 13);
      toy.tokens = 3;
      std::vector<size_t> widths = toy.boundaries();
      Stage st;
      st.toy = &toy;
      st.lr = 0.005f;
      lh_pipeline_config cfg = make_config(toy, widths, replicas, &st);
      cfg.schedule = sched;
      cfg.examples = (size_t)replicas * 3 * 2 * 2; // two steps per epoch
      cfg.aq.mode = LH_AQ_DELTA;
      cfg.aq.storage = LH_AQ_FP16;
      cfg.aq.forward_bits = 3;
      cfg.aq.backward_bits = 6;
      cfg.aq.rounding = LH_ROUND_STOCHASTIC;
      cfg.aq.seed = 5;
      lh_pipeline p = nullptr;
      LH_ASSERT_OK(lh_pipeline_create(w.c, &cfg, &p));
      int s = -1, d = -1;
      lh_pipeline_position(p, &s, &d);
      st.stage = s;
      lh_comm sc = nullptr;
      lh_pipeline_stage_comm(p, &sc);
      lh_aq_receiver rx = nullptr;
      lh_aq_sender tx = nullptr;
      lh_pipeline_aq(p, &rx, &tx);
      size_t n = (size_t)cfg.micro_batches * cfg.micro_batch, total = cfg.examples;
      const int epochs = 4;
      for (int e = 0; e < epochs; e++)
        for (int step = 0; step < 2; step++) {
          // every epoch visits every example once, in another order
          std::vector<int64_t> order(total), ids(n);
          for (size_t j = 0; j < total; j++)
            order[j] = (int64_t)j;
          std::sort(order.begin(), order.end(), [e](int64_t x, int64_t y) {
            return lh_test_hash(99, (uint64_t)e, (uint64_t)x) < lh_test_hash(99, (uint64_t)e, (uint64_t)y);
          });
          for (size_t k = 0; k < n; k++)
            ids[k] = order[((size_t)step * replicas + d) * n + k];
          if (tx)
            lh_aq_sender_reset_stats(tx);
          if (rx)
            lh_aq_receiver_reset_stats(rx);
          lh_pipeline_stats stats = LH_PIPELINE_STATS_INIT;
          st.gw.clear();
          LH_ASSERT_OK(lh_pipeline_step(p, ids.data(), &stats));
          EXPECT_EQ(st.bad, "");
          if (st.last())
            EXPECT_TRUE(std::isfinite(stats.loss) && stats.loss > 0) << "loss " << stats.loss;
          // the runtime's byte counts are the contexts' frames
          lh_aq_stats as = LH_AQ_STATS_INIT;
          if (tx && lh_aq_sender_get_stats(tx, &as) == LH_SUCCESS)
            EXPECT_EQ(as.wire_bytes, stats.bytes_to_next + stats.bytes_from_next);
          if (rx && lh_aq_receiver_get_stats(rx, &as) == LH_SUCCESS)
            EXPECT_EQ(as.wire_bytes, stats.bytes_from_prev + stats.bytes_to_prev);
          if (e > 0) // every example was seen: quantized deltas, fewer bytes than fp32
            EXPECT_GT(stats.compression, 1.0) << "epoch " << e << ", stage " << s;
          // data parallel: the replicas of a stage average its gradient and take the same step
          size_t a = toy.width[(size_t)s], b = toy.width[(size_t)s + 1];
          st.gw.resize(a * b, 0.0f);
          LH_ASSERT_OK(lh_allreduce(sc, st.gw.data(), st.gw.data(), st.gw.size(), nullptr));
          for (size_t k = 0; k < st.gw.size(); k++)
            toy.w[(size_t)s][k] -= st.lr * st.gw[k] / (float)replicas;
        }
      expect_buffers_identical(p, cfg, toy);
      lh_pipeline_free(p);
    }
  }
}

TEST(Pipeline, EvaluationIsExactAndTouchesNoBuffer) {
  World w;
  int stages = w.size % 2 == 0 ? 2 : w.size, replicas = w.size / stages;
  Toy toy(stages, 14);
  std::vector<size_t> widths = toy.boundaries();
  Stage st;
  st.toy = &toy;
  lh_pipeline_config cfg = make_config(toy, widths, replicas, &st);
  cfg.aq.mode = LH_AQ_DELTA;
  cfg.aq.storage = LH_AQ_FP16;
  cfg.examples = 64;
  lh_pipeline p = nullptr;
  LH_ASSERT_OK(lh_pipeline_create(w.c, &cfg, &p));
  int s = -1, d = -1;
  lh_pipeline_position(p, &s, &d);
  st.stage = s;
  std::vector<int64_t> train = step_ids(cfg, 0, d);
  LH_ASSERT_OK(lh_pipeline_step(p, train.data(), nullptr));
  lh_aq_receiver rx = nullptr;
  lh_aq_sender tx = nullptr;
  lh_pipeline_aq(p, &rx, &tx);
  lh_aq_stats before = LH_AQ_STATS_INIT, after = LH_AQ_STATS_INIT;
  if (tx)
    lh_aq_sender_get_stats(tx, &before);
  if (rx)
    lh_aq_receiver_get_stats(rx, &before);
  // 2 full micro-batches and a short one; held-out ids beyond config.examples are fine
  size_t count = 2 * cfg.micro_batch + 1;
  std::vector<int64_t> ids(count);
  for (size_t k = 0; k < count; k++)
    ids[k] = (int64_t)(k % 2 ? train[k % train.size()] : 100 + k);
  lh_pipeline_stats stats = LH_PIPELINE_STATS_INIT;
  st.outputs.clear();
  LH_ASSERT_OK(lh_pipeline_eval(p, ids.data(), count, &stats));
  EXPECT_EQ(st.bad, "");
  EXPECT_EQ(st.evals, 3);
  EXPECT_EQ(stats.examples, count);
  if (st.last()) {
    for (int64_t id : ids) {
      Reference r = reference(toy, id);
      ASSERT_TRUE(st.outputs.count(id));
      EXPECT_EQ(0, std::memcmp(st.outputs[id].data(), r.y.data(), r.y.size() * sizeof(float)))
          << "evaluated output of example " << id;
    }
    EXPECT_EQ(stats.loss, reference_loss(toy, ids.data(), count, cfg.micro_batch));
  }
  EXPECT_EQ(stats.bytes_to_next, s < stages - 1 ? count * toy.in(s + 1) * sizeof(float) : 0u);
  EXPECT_EQ(stats.bytes_from_prev, s > 0 ? count * toy.in(s) * sizeof(float) : 0u);
  EXPECT_EQ(stats.bytes_to_prev + stats.bytes_from_next, 0u);
  if (tx) {
    lh_aq_sender_get_stats(tx, &after);
    EXPECT_EQ(after.frames, before.frames);
  }
  if (rx) {
    lh_aq_receiver_get_stats(rx, &after);
    EXPECT_EQ(after.frames, before.frames);
  }
  if (stages > 1)
    expect_buffers_identical(p, cfg, toy);
  // and training goes on after an evaluation
  std::vector<int64_t> again = step_ids(cfg, 1, d);
  EXPECT_EQ(lh_pipeline_step(p, again.data(), nullptr), LH_SUCCESS) << lh_last_error();
  lh_pipeline_free(p);
}

// A create that must fail on every rank, with `status` here and a detail containing `text`.
void expect_refused(World &w, const lh_pipeline_config &cfg, lh_status status, const std::string &text) {
  lh_pipeline p = nullptr;
  lh_status st = lh_pipeline_create(w.c, &cfg, &p);
  EXPECT_EQ(st, status) << lh_last_error();
  EXPECT_NE(std::string(lh_last_error()).find(text), std::string::npos) << lh_last_error();
  EXPECT_EQ(p, nullptr);
  lh_pipeline_free(p);
}

// Buffers in memory-mapped files under store_dir, one file per boundary side, gone after free;
// DEVICE stores need a GPU build (refused on every rank otherwise).
TEST(Pipeline, StoreKinds) {
  World w;
  if (w.size == 1)
    GTEST_SKIP() << "needs a boundary";
  int stages = w.size % 2 == 0 ? 2 : w.size, replicas = w.size / stages;
  Toy toy(stages, 18);
  std::vector<size_t> widths = toy.boundaries();
  Stage st;
  st.toy = &toy;
  lh_pipeline_config cfg = make_config(toy, widths, replicas, &st);
  cfg.aq.mode = LH_AQ_DELTA;
  cfg.aq.storage = LH_AQ_BF16;
  cfg.examples = 48;
  cfg.store_kind = LH_AQ_STORE_MMAP;
  expect_refused(w, cfg, LH_ERR_INVALID_ARGUMENT, "needs store_dir");
  char dir[] = "/tmp/lh-pipeline-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  cfg.store_dir = dir;
  lh_pipeline p = nullptr;
  LH_ASSERT_OK(lh_pipeline_create(w.c, &cfg, &p));
  int s = -1, d = -1;
  lh_pipeline_position(p, &s, &d);
  st.stage = s;
  size_t files = 0;
  for (const char *side : {"send", "recv"})
    for (int b = 0; b < stages - 1; b++) {
      std::string prefix =
          std::string("lh-aq-boundary") + std::to_string(b) + "-" + side + "-rank" + std::to_string(w.rank) + "-";
      DIR *dp = opendir(dir);
      ASSERT_NE(dp, nullptr);
      while (dirent *e = readdir(dp))
        files += std::string(e->d_name).rfind(prefix, 0) == 0;
      closedir(dp);
    }
  EXPECT_EQ(files, (size_t)(s > 0) + (size_t)(s < stages - 1)) << "buffer files in " << dir;
  for (int step = 0; step < 3; step++) {
    std::vector<int64_t> ids = step_ids(cfg, step % 2, d); // the second pass revisits
    LH_ASSERT_OK(lh_pipeline_step(p, ids.data(), nullptr));
  }
  expect_buffers_identical(p, cfg, toy);
  lh_pipeline_free(p);
  EXPECT_EQ(rmdir(dir), 0) << dir << " still holds files after lh_pipeline_free";

  cfg.store_kind = LH_AQ_STORE_DEVICE;
  lh_build_features f = LH_BUILD_FEATURES_INIT;
  lh_build_info(&f);
  if (!f.has_cuda)
    expect_refused(w, cfg, LH_ERR_NOT_SUPPORTED, "");
}

TEST(Pipeline, BadConfigsFailOnEveryRank) {
  World w;
  int stages = w.size, replicas = 1;
  Toy toy(stages, 15);
  std::vector<size_t> widths = toy.boundaries();
  Stage st;
  st.toy = &toy;
  lh_pipeline_config good = make_config(toy, widths, replicas, &st);

  lh_pipeline_config c = good;
  c.replicas = 2;
  expect_refused(w, c, LH_ERR_INVALID_ARGUMENT, "stages x replicas");
  c = good;
  c.backward = nullptr;
  expect_refused(w, c, LH_ERR_INVALID_ARGUMENT, "backward callback is NULL");
  c = good;
  c.size = 8;
  expect_refused(w, c, LH_ERR_INVALID_ARGUMENT, "LH_PIPELINE_CONFIG_INIT");
  c = good;
  c.micro_batches = 0;
  expect_refused(w, c, LH_ERR_INVALID_ARGUMENT, "micro_batches is 0");
  std::vector<int> same(w.size, 0); // every rank at (0, 0)
  c = good;
  c.stage_of_rank = same.data();
  expect_refused(w, c, LH_ERR_INVALID_ARGUMENT, "both or neither");
  c.replica_of_rank = same.data();
  if (w.size > 1) {
    expect_refused(w, c, LH_ERR_INVALID_ARGUMENT, "are both placed at stage 0, replica 0");
    c = good;
    c.boundary_channels = nullptr;
    expect_refused(w, c, LH_ERR_INVALID_ARGUMENT, "boundary_channels is NULL");
    c = good;
    c.aq.forward_bits = 1; // refused by the AQ-SGD contexts
    expect_refused(w, c, LH_ERR_INVALID_ARGUMENT, "(cfg.aq)");
    // ranks that disagree
    c = good;
    c.micro_batches = w.rank == 0 ? 3 : 2;
    expect_refused(w, c, LH_ERR_MISMATCH, "micro_batches");
    c = good;
    if (w.rank == w.size - 1)
      c.forward = nullptr; // one rank refuses its own: it says why, the others that it refused
    expect_refused(w, c, w.rank == w.size - 1 ? LH_ERR_INVALID_ARGUMENT : LH_ERR_MISMATCH,
                   w.rank == w.size - 1 ? "forward callback is NULL" : "refused its own");
  }
  // after all that the communicator still works
  lh_pipeline p = nullptr;
  LH_ASSERT_OK(lh_pipeline_create(w.c, &good, &p));
  st.stage = w.rank;
  std::vector<int64_t> ids = step_ids(good, 0, 0);
  EXPECT_EQ(lh_pipeline_step(p, nullptr, nullptr), LH_ERR_INVALID_ARGUMENT);
  std::vector<int64_t> out_of_range = ids;
  out_of_range[1] = (int64_t)good.examples;
  EXPECT_EQ(lh_pipeline_step(p, out_of_range.data(), nullptr), LH_ERR_INVALID_ARGUMENT);
  lh_pipeline_stats old = LH_PIPELINE_STATS_INIT;
  old.size = 16;
  EXPECT_EQ(lh_pipeline_step(p, ids.data(), &old), LH_ERR_INVALID_ARGUMENT);
  LH_ASSERT_OK(lh_pipeline_step(p, ids.data(), nullptr));
  lh_pipeline_free(p);
}

TEST(Pipeline, CallbackErrorIsReturned) {
  World w;
  int stages = w.size, replicas = 1;
  Toy toy(stages, 16);
  std::vector<size_t> widths = toy.boundaries();
  for (lh_pipeline_schedule sched : kSchedules) {
    Stage st;
    st.toy = &toy;
    st.stage = w.rank;
    lh_pipeline_config cfg = make_config(toy, widths, replicas, &st);
    cfg.schedule = sched;
    // Stage 0's backward of the last micro-batch is the step's last action: no stage waits on
    // it, so the others finish and only stage 0 fails.
    if (w.rank == 0)
      st.fail_backward = cfg.micro_batches - 1;
    lh_pipeline p = nullptr;
    LH_ASSERT_OK(lh_pipeline_create(w.c, &cfg, &p));
    std::vector<int64_t> ids = step_ids(cfg, 0, 0);
    lh_status got = lh_pipeline_step(p, ids.data(), nullptr);
    if (w.rank == 0) {
      EXPECT_EQ(got, LH_ERR_IO);
      EXPECT_NE(std::string(lh_last_error()).find("backward callback of stage 0"), std::string::npos)
          << lh_last_error();
      // the stages are out of step now: later calls are refused with the first failure
      EXPECT_EQ(lh_pipeline_step(p, ids.data(), nullptr), LH_ERR_IO);
      EXPECT_NE(std::string(lh_last_error()).find("earlier step failed"), std::string::npos) << lh_last_error();
    } else {
      EXPECT_EQ(got, LH_SUCCESS) << lh_last_error();
    }
    lh_pipeline_free(p);
  }
  if (w.size == 1) { // a forward failure on the only stage
    Stage st;
    st.toy = &toy;
    st.fail_forward = 1;
    lh_pipeline_config cfg = make_config(toy, widths, 1, &st);
    lh_pipeline p = nullptr;
    LH_ASSERT_OK(lh_pipeline_create(w.c, &cfg, &p));
    std::vector<int64_t> ids = step_ids(cfg, 0, 0);
    EXPECT_EQ(lh_pipeline_step(p, ids.data(), nullptr), LH_ERR_IO);
    EXPECT_NE(std::string(lh_last_error()).find("forward callback of stage 0 (replica 0) returned"), std::string::npos)
        << lh_last_error();
    lh_pipeline_free(p);
  }
}

// The last stage fails its first forward: the stages before it wait for a gradient that never
// comes and give LH_ERR_TIMEOUT after the communicator's timeout instead of hanging.
TEST(Pipeline, OtherStagesTimeOutWhenOneFails) {
  if (lh_test_world_size() == 1)
    GTEST_SKIP() << "needs two stages";
  World w(3.0);
  MPI_Barrier(MPI_COMM_WORLD); // the agreement in create runs under that timeout too
  Toy toy(w.size, 17);
  std::vector<size_t> widths = toy.boundaries();
  Stage st;
  st.toy = &toy;
  st.stage = w.rank;
  if (w.rank == w.size - 1)
    st.fail_forward = 0;
  lh_pipeline_config cfg = make_config(toy, widths, 1, &st);
  lh_pipeline p = nullptr;
  LH_ASSERT_OK(lh_pipeline_create(w.c, &cfg, &p));
  std::vector<int64_t> ids = step_ids(cfg, 0, 0);
  lh_status got = lh_pipeline_step(p, ids.data(), nullptr);
  EXPECT_EQ(got, w.rank == w.size - 1 ? LH_ERR_IO : LH_ERR_TIMEOUT) << lh_last_error();
  lh_pipeline_free(p);
}

} // namespace

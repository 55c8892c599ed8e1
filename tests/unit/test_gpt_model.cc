// The model half of examples/train_gpt: gradients against finite differences, the same model
// cut into stages, causality, a short training run, AdamW by hand, argument refusals, and the
// memory layout the CPU and CUDA stages share (gpt_common.h), at both of their alignments.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gpt.h"
#include "gpt_common.h"
#include "optim.h"

namespace {

struct StageDeleter {
  void operator()(gpt_stage *s) const { gpt_stage_free(s); }
};
using Stage = std::unique_ptr<gpt_stage, StageDeleter>;

Stage make_stage(const gpt_config &cfg, int first, int last, bool emb, bool head, int max_batch, int slots,
                 uint64_t seed) {
  gpt_stage *s = nullptr;
  EXPECT_EQ(gpt_stage_create(&cfg, first, last, emb, head, max_batch, slots, seed, &s), 0) << gpt_error();
  return Stage(s);
}

std::vector<int> random_tokens(size_t n, int vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<int> t(n);
  for (auto &x : t)
    x = (int)(rng() % (unsigned)vocab);
  return t;
}

// Moves every parameter away from its initial value: with std 0.02 weights the attention is
// nearly uniform and the blocks nearly linear, so a wrong term in a backward could hide below
// the finite differences' noise. Gains stay near 1.
void spread_params(gpt_stage *s, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-0.4f, 0.4f);
  float *p = gpt_stage_params(s);
  for (size_t i = 0; i < gpt_stage_param_count(s); i++)
    p[i] += u(rng);
}

double full_loss(gpt_stage *s, int B, const std::vector<int> &tok, const std::vector<int> &tgt) {
  double loss = 0;
  EXPECT_EQ(gpt_stage_forward(s, 0, B, tok.data(), nullptr, nullptr, tgt.data(), &loss), 0) << gpt_error();
  return loss;
}

// The derivative of f at *x: central differences at steps h and h/2 (each divided by the step
// actually taken in float), combined by Richardson extrapolation, (4 D(h/2) - D(h)) / 3, which
// cancels their h^2 error. The forward runs in float, so the loss carries rounding noise of
// ~1e-7 relative: h cannot be small, and without the extrapolation a few parameters with a large
// third derivative are off by more than the tolerance at any h that is above the noise.
template <class F> double derivative(float *x, float h, F f) {
  float saved = *x;
  auto central = [&](float step) {
    float up = saved + step, down = saved - step;
    *x = up;
    double fu = f();
    *x = down;
    double fd = f();
    return (fu - fd) / ((double)up - (double)down);
  };
  double d1 = central(h), d2 = central(h / 2);
  *x = saved;
  return (4 * d2 - d1) / 3;
}

struct Mismatch {
  size_t worst = 0, bad = 0;
  double worst_excess = 0;
};

// |a - n| <= rtol * max(|a|, |n|) + atol for every pair; the worst offender is reported.
Mismatch compare(const std::vector<double> &analytic, const std::vector<double> &numeric, double rtol,
                 double atol) {
  Mismatch m;
  for (size_t i = 0; i < analytic.size(); i++) {
    double a = analytic[i], n = numeric[i];
    double allowed = rtol * std::max(std::fabs(a), std::fabs(n)) + atol;
    double excess = std::fabs(a - n) / allowed;
    if (excess > 1)
      m.bad++;
    if (excess > m.worst_excess) {
      m.worst_excess = excess;
      m.worst = i;
    }
  }
  // the margin, for whoever tunes the tolerances
  std::vector<double> mag(analytic.size());
  for (size_t i = 0; i < mag.size(); i++)
    mag[i] = std::fabs(analytic[i]);
  std::nth_element(mag.begin(), mag.begin() + mag.size() / 2, mag.end());
  std::printf("  %zu derivatives (median size %.2g), the worst at %.2g of its tolerance\n", analytic.size(),
              mag[mag.size() / 2], m.worst_excess);
  return m;
}

std::string tensor_of(const gpt_stage *s, size_t index) {
  for (size_t k = 0; k < gpt_stage_tensor_count(s); k++) {
    gpt_tensor_info t;
    gpt_stage_tensor(s, k, &t);
    if (index >= t.offset && index < t.offset + t.count)
      return std::string(t.name) + "[" + std::to_string(index - t.offset) + "]";
  }
  return "?";
}

// Tolerances of the finite-difference checks: |analytic - numeric| <= 1e-2 relative + a floor.
// The loss's rounding noise (~5e-8 absolute) over the steps below gives ~5e-6 of noise in a
// numeric derivative, hence the floor of 2e-5 (median derivative ~1e-2). The middle stage's
// objective sums 80 outputs times weights of order 1, so its noise and its floor are larger
// (and its derivatives too, median ~0.7). Measured: the worst pair sits at 0.2-0.4 of its
// tolerance over several seeds, while each of these breaks fails a check by far: the GELU
// derivative's second term dropped or its 3 lost, dk or dv without their transpose, the
// softmax backward without its row sum or its 1/sqrt(hs), layer norm's backward without its
// variance term, a bias gradient halved, wpe's gradient missing, the cross-entropy gradient
// off by 10%, the residual gradient not added back through ln1.
constexpr float kEps = 2e-2f, kEpsMiddle = 5e-2f;
constexpr double kRtol = 1e-2, kAtol = 2e-5;

const gpt_config kTiny = {11, 5, 8, 2, 2};

TEST(GptModel, ParameterGradientsMatchFiniteDifferences) {
  const int B = 2;
  Stage s = make_stage(kTiny, 0, kTiny.layers, true, true, B, 1, 1234);
  ASSERT_TRUE(s);
  spread_params(s.get(), 7);
  auto tok = random_tokens((size_t)B * kTiny.context, kTiny.vocab, 1);
  auto tgt = random_tokens((size_t)B * kTiny.context, kTiny.vocab, 2);

  gpt_stage_zero_grad(s.get());
  double loss = full_loss(s.get(), B, tok, tgt);
  ASSERT_TRUE(std::isfinite(loss));
  ASSERT_EQ(gpt_stage_backward(s.get(), 0, B, nullptr, nullptr, 1.0f), 0) << gpt_error();

  // Every parameter of the tiny model (under 2000): no sample can miss a broken tensor.
  size_t n = gpt_stage_param_count(s.get());
  float *p = gpt_stage_params(s.get());
  const float *g = gpt_stage_grads(s.get());
  std::vector<double> analytic(n), numeric(n);
  for (size_t i = 0; i < n; i++) {
    analytic[i] = g[i];
    numeric[i] = derivative(&p[i], kEps, [&] { return full_loss(s.get(), B, tok, tgt); });
  }
  Mismatch m = compare(analytic, numeric, kRtol, kAtol);
  EXPECT_EQ(m.bad, 0u) << "worst: " << tensor_of(s.get(), m.worst) << " analytic " << analytic[m.worst]
                       << " numeric " << numeric[m.worst] << " (" << m.worst_excess << " x the tolerance)";

  // Each tensor's gradient must be alive: a tensor whose gradient were all zero (a term never
  // reached) would pass the element test above only if its numeric gradient were zero too.
  for (size_t k = 0; k < gpt_stage_tensor_count(s.get()); k++) {
    gpt_tensor_info t;
    ASSERT_EQ(gpt_stage_tensor(s.get(), k, &t), 0);
    double norm = 0;
    for (size_t i = t.offset; i < t.offset + t.count; i++)
      norm += analytic[i] * analytic[i];
    EXPECT_GT(norm, 1e-12) << t.name;
  }
}

TEST(GptModel, MiddleStageInputGradientMatchesFiniteDifferences) {
  const gpt_config cfg = {11, 5, 8, 2, 3};
  const int B = 2, N = B * cfg.context, C = cfg.channels;
  Stage s = make_stage(cfg, 1, 2, false, false, B, 1, 99);
  ASSERT_TRUE(s);
  spread_params(s.get(), 3);
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> input((size_t)N * C), weights((size_t)N * C), output((size_t)N * C),
      grad_input((size_t)N * C);
  for (auto &x : input)
    x = normal(rng);
  for (auto &x : weights)
    x = normal(rng);
  // A scalar of the output whose gradient is `weights`: sum(output * weights), in double.
  auto objective = [&] {
    EXPECT_EQ(gpt_stage_forward(s.get(), 0, B, nullptr, input.data(), output.data(), nullptr, nullptr), 0)
        << gpt_error();
    double f = 0;
    for (size_t i = 0; i < output.size(); i++)
      f += (double)output[i] * weights[i];
    return f;
  };
  objective();
  gpt_stage_zero_grad(s.get());
  ASSERT_EQ(gpt_stage_backward(s.get(), 0, B, weights.data(), grad_input.data(), 1.0f), 0) << gpt_error();

  std::vector<double> analytic(input.size()), numeric(input.size());
  for (size_t i = 0; i < input.size(); i++) {
    analytic[i] = grad_input[i];
    numeric[i] = derivative(&input[i], kEpsMiddle, objective);
  }
  // The objective is a sum of N*C terms of order 1: its float noise is larger than the
  // loss's, hence the larger absolute floor.
  Mismatch m = compare(analytic, numeric, kRtol, 2e-4);
  EXPECT_EQ(m.bad, 0u) << "worst: input[" << m.worst << "] analytic " << analytic[m.worst] << " numeric "
                       << numeric[m.worst];

  // and the stage's own parameters under the same objective
  size_t n = gpt_stage_param_count(s.get());
  float *p = gpt_stage_params(s.get());
  std::vector<double> pa(n), pn(n);
  for (size_t i = 0; i < n; i++) {
    pa[i] = gpt_stage_grads(s.get())[i];
    pn[i] = derivative(&p[i], kEpsMiddle, objective);
  }
  m = compare(pa, pn, kRtol, 2e-4);
  EXPECT_EQ(m.bad, 0u) << "worst: " << tensor_of(s.get(), m.worst) << " analytic " << pa[m.worst] << " numeric "
                       << pn[m.worst];
}

// The model cut at `cuts` (layer boundaries, first 0, last L): one stage per range; the first
// stage holds the embedding, the last the head. Two micro-batches in two slots, their
// backwards in reverse order (as a pipeline schedule would), loss scale 1/2. The stages are
// made for max_batch sequences, B of which are used.
struct SplitRun {
  std::vector<float> params, grads;
  double loss[2];
};

SplitRun run_split(const gpt_config &cfg, const std::vector<int> &cuts, int B, int max_batch,
                   const std::vector<int> &tok, const std::vector<int> &tgt) {
  SplitRun r{};
  std::vector<Stage> stages;
  for (size_t k = 0; k + 1 < cuts.size(); k++)
    stages.push_back(make_stage(cfg, cuts[k], cuts[k + 1], k == 0, k + 2 == cuts.size(), max_batch, 2, 42));
  size_t act = (size_t)B * cfg.context * cfg.channels, per_micro = (size_t)B * cfg.context;
  std::vector<float> a(act), b(act);
  for (int micro = 0; micro < 2; micro++) {
    const int *t = tok.data() + micro * per_micro, *y = tgt.data() + micro * per_micro;
    for (size_t k = 0; k < stages.size(); k++) {
      bool head = k + 1 == stages.size();
      EXPECT_EQ(gpt_stage_forward(stages[k].get(), micro, B, t, a.data(), head ? nullptr : b.data(), y,
                                  &r.loss[micro]),
                0)
          << gpt_error();
      std::swap(a, b);
    }
  }
  for (int micro = 1; micro >= 0; micro--)
    for (size_t k = stages.size(); k-- > 0;) {
      EXPECT_EQ(gpt_stage_backward(stages[k].get(), micro, B, a.data(), b.data(), 0.5f), 0) << gpt_error();
      std::swap(a, b);
    }
  for (auto &s : stages) {
    size_t n = gpt_stage_param_count(s.get());
    r.params.insert(r.params.end(), gpt_stage_params(s.get()), gpt_stage_params(s.get()) + n);
    r.grads.insert(r.grads.end(), gpt_stage_grads(s.get()), gpt_stage_grads(s.get()) + n);
  }
  return r;
}

TEST(GptModel, SplitIntoStagesGivesTheSameLossAndGradients) {
  const gpt_config cfg = {19, 7, 12, 3, 3};
  const int B = 3;
  auto tok = random_tokens((size_t)2 * B * cfg.context, cfg.vocab, 11);
  auto tgt = random_tokens((size_t)2 * B * cfg.context, cfg.vocab, 12);
  SplitRun whole = run_split(cfg, {0, 3}, B, B, tok, tgt);
  ASSERT_TRUE(std::isfinite(whole.loss[0]) && std::isfinite(whole.loss[1]));
  EXPECT_NE(whole.loss[0], whole.loss[1]);

  // The slots keep the micro-batches apart: one slot used twice, each forward followed by its
  // backward (second micro-batch first, so the gradients add in the same order), agrees.
  {
    Stage one = make_stage(cfg, 0, 3, true, true, B, 1, 42);
    size_t per_micro = (size_t)B * cfg.context;
    for (int micro = 1; micro >= 0; micro--) {
      double loss = 0;
      ASSERT_EQ(gpt_stage_forward(one.get(), 0, B, tok.data() + micro * per_micro, nullptr, nullptr,
                                  tgt.data() + micro * per_micro, &loss),
                0);
      EXPECT_EQ(loss, whole.loss[micro]);
      ASSERT_EQ(gpt_stage_backward(one.get(), 0, B, nullptr, nullptr, 0.5f), 0);
    }
    EXPECT_EQ(std::memcmp(gpt_stage_grads(one.get()), whole.grads.data(), whole.grads.size() * sizeof(float)), 0);
  }

  // {0, 0, ...}: a stage with the embedding only; {..., 3, 3}: one with the head only.
  for (const auto &cuts : std::vector<std::vector<int>>{{0, 2, 3}, {0, 1, 2, 3}, {0, 0, 1, 3, 3}}) {
    SCOPED_TRACE("cuts of " + std::to_string(cuts.size() - 1) + " stages");
    SplitRun split = run_split(cfg, cuts, B, B + 2, tok, tgt);
    ASSERT_EQ(split.params.size(), whole.params.size());
    EXPECT_EQ(std::memcmp(split.params.data(), whole.params.data(), whole.params.size() * sizeof(float)), 0)
        << "the same seed must give the same start however the model is cut";
    EXPECT_EQ(split.loss[0], whole.loss[0]);
    EXPECT_EQ(split.loss[1], whole.loss[1]);
    size_t differ = 0;
    for (size_t i = 0; i < whole.grads.size(); i++)
      differ += std::memcmp(&split.grads[i], &whole.grads[i], sizeof(float)) != 0;
    EXPECT_EQ(differ, 0u) << "of " << whole.grads.size() << " gradients";
  }
  // Another seed is another model: the comparison above can fail.
  Stage other = make_stage(cfg, 0, 3, true, true, B, 1, 43);
  EXPECT_NE(std::memcmp(gpt_stage_params(other.get()), whole.params.data(), whole.params.size() * sizeof(float)),
            0);
}

TEST(GptModel, AttentionIsCausal) {
  const gpt_config cfg = {13, 9, 16, 4, 2};
  const int B = 2, T = cfg.context, V = cfg.vocab, C = cfg.channels;
  Stage full = make_stage(cfg, 0, 2, true, true, B, 1, 5);
  Stage body = make_stage(cfg, 0, 2, true, false, B, 1, 5); // the hidden states, no head
  ASSERT_TRUE(full && body);
  spread_params(full.get(), 1);
  spread_params(body.get(), 1);
  auto tok = random_tokens((size_t)B * T, V, 21);
  ASSERT_EQ(gpt_stage_forward(full.get(), 0, B, tok.data(), nullptr, nullptr, nullptr, nullptr), 0);
  std::vector<float> p0(gpt_stage_probs(full.get(), 0), gpt_stage_probs(full.get(), 0) + (size_t)B * T * V);
  std::vector<float> h0((size_t)B * T * C), h1((size_t)B * T * C);
  ASSERT_EQ(gpt_stage_forward(body.get(), 0, B, tok.data(), nullptr, h0.data(), nullptr, nullptr), 0);
  for (int t : {0, 3, T - 2}) {
    SCOPED_TRACE("changed after position " + std::to_string(t));
    auto changed = tok;
    for (int b = 0; b < B; b++)
      for (int j = t + 1; j < T; j++)
        changed[(size_t)b * T + j] = (tok[(size_t)b * T + j] + 1 + j) % V;
    ASSERT_EQ(gpt_stage_forward(full.get(), 0, B, changed.data(), nullptr, nullptr, nullptr, nullptr), 0);
    const float *p1 = gpt_stage_probs(full.get(), 0);
    ASSERT_EQ(gpt_stage_forward(body.get(), 0, B, changed.data(), nullptr, h1.data(), nullptr, nullptr), 0);
    for (int b = 0; b < B; b++) {
      size_t row = (size_t)b * T;
      // positions <= t: bit for bit the same
      EXPECT_EQ(std::memcmp(p1 + row * V, p0.data() + row * V, (size_t)(t + 1) * V * sizeof(float)), 0);
      EXPECT_EQ(std::memcmp(h1.data() + row * C, h0.data() + row * C, (size_t)(t + 1) * C * sizeof(float)), 0);
      // and the change did reach the later positions (so the check above could fail)
      EXPECT_NE(std::memcmp(p1 + (row + t + 1) * V, p0.data() + (row + t + 1) * V, (size_t)V * sizeof(float)),
                0);
    }
  }
}

// 200 AdamW steps with clipping on one fixed batch of a repeating text; returns the losses.
std::vector<double> train_tiny(std::vector<float> *final_params) {
  const gpt_config cfg = {256, 16, 32, 4, 2};
  const int B = 4, T = cfg.context, steps = 200;
  const char *text = "the quick brown fox jumps over the lazy dog. ";
  size_t len = std::strlen(text);
  std::vector<int> tok((size_t)B * T), tgt((size_t)B * T);
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) {
      size_t at = (size_t)b * 11 + (size_t)t;
      tok[(size_t)b * T + t] = (unsigned char)text[at % len];
      tgt[(size_t)b * T + t] = (unsigned char)text[(at + 1) % len];
    }
  Stage s = make_stage(cfg, 0, cfg.layers, true, true, B, 1, 2024);
  size_t n = gpt_stage_param_count(s.get());
  std::vector<unsigned char> decay(n);
  gpt_stage_decay_mask(s.get(), decay.data());
  gpt_adamw opt;
  EXPECT_EQ(gpt_adamw_init(&opt, n), 0);
  gpt_adamw_hparams hp = {3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f};
  std::vector<double> losses;
  for (int step = 0; step < steps; step++) {
    double loss = 0;
    gpt_stage_zero_grad(s.get());
    EXPECT_EQ(gpt_stage_forward(s.get(), 0, B, tok.data(), nullptr, nullptr, tgt.data(), &loss), 0);
    EXPECT_EQ(gpt_stage_backward(s.get(), 0, B, nullptr, nullptr, 1.0f), 0);
    float *g = gpt_stage_grads(s.get());
    gpt_grad_scale(g, n, gpt_clip_factor(gpt_grad_sumsq(g, n), 1.0));
    gpt_adamw_step(&opt, gpt_stage_params(s.get()), g, decay.data(), &hp);
    losses.push_back(loss);
  }
  final_params->assign(gpt_stage_params(s.get()), gpt_stage_params(s.get()) + n);
  gpt_adamw_destroy(&opt);
  return losses;
}

TEST(GptModel, TrainsOnARepeatingTextDeterministically) {
  std::vector<float> p1, p2;
  std::vector<double> l1 = train_tiny(&p1), l2 = train_tiny(&p2);
  ASSERT_EQ(l1.size(), 200u);
  std::printf("  loss %.3f at the first step, %.3f at the last\n", l1.front(), l1.back());
  EXPECT_NEAR(l1.front(), std::log(256.0), 0.1); // a fresh model guesses uniformly
  EXPECT_LT(l1.back(), 1.0) << "first loss " << l1.front();
  EXPECT_EQ(l1, l2);
  ASSERT_EQ(p1.size(), p2.size());
  EXPECT_EQ(std::memcmp(p1.data(), p2.data(), p1.size() * sizeof(float)), 0);
}

TEST(GptOptim, AdamWMatchesAHandComputation) {
  // Two steps on three parameters; the middle one takes no weight decay. Expected values from
  // the formulas in double: step 1 with bias correction is p - lr * (sign(g) + wd * p).
  float p[3] = {0.5f, -1.0f, 2.0f};
  const float g1[3] = {0.1f, -0.2f, 0.3f}, g2[3] = {-0.05f, 0.4f, 0.0f};
  const unsigned char decay[3] = {1, 0, 1};
  gpt_adamw_hparams hp = {0.1f, 0.9f, 0.99f, 1e-8f, 0.1f};
  gpt_adamw opt;
  ASSERT_EQ(gpt_adamw_init(&opt, 3), 0);
  gpt_adamw_step(&opt, p, g1, decay, &hp);
  EXPECT_EQ(opt.step, 1);
  EXPECT_NEAR(p[0], 0.395, 1e-6);
  EXPECT_NEAR(p[1], -0.9, 1e-6);
  EXPECT_NEAR(p[2], 1.88, 1e-6);
  gpt_adamw_step(&opt, p, g2, decay, &hp);
  EXPECT_EQ(opt.step, 2);
  EXPECT_NEAR(p[0], 0.3643800704, 1e-6);
  EXPECT_NEAR(p[1], -0.9365607752, 1e-6);
  EXPECT_NEAR(p[2], 1.7940419917, 1e-6);
  EXPECT_NEAR(opt.m[1], 0.022, 1e-7);
  EXPECT_NEAR(opt.v[1], 0.001996, 1e-8);
  gpt_adamw_destroy(&opt);
  EXPECT_EQ(opt.m, nullptr);
}

TEST(GptOptim, ClipHelpers) {
  std::vector<float> g = {3.0f, -4.0f, 0.0f};
  EXPECT_DOUBLE_EQ(gpt_grad_sumsq(g.data(), g.size()), 25.0);
  EXPECT_FLOAT_EQ(gpt_clip_factor(25.0, 1.0), 0.2f);
  EXPECT_FLOAT_EQ(gpt_clip_factor(25.0, 10.0), 1.0f); // under the limit: untouched
  EXPECT_FLOAT_EQ(gpt_clip_factor(25.0, 0.0), 1.0f);  // no limit
  // two stages' halves: the total decides the factor for both
  float a[2] = {3.0f, 0.0f}, b[2] = {0.0f, 4.0f};
  float f = gpt_clip_factor(gpt_grad_sumsq(a, 2) + gpt_grad_sumsq(b, 2), 2.5);
  gpt_grad_scale(a, 2, f);
  gpt_grad_scale(b, 2, f);
  EXPECT_FLOAT_EQ(a[0], 1.5f);
  EXPECT_FLOAT_EQ(b[1], 2.0f);
  EXPECT_NEAR(std::sqrt(gpt_grad_sumsq(a, 2) + gpt_grad_sumsq(b, 2)), 2.5, 1e-6);
}

TEST(GptModel, InitialisationFollowsGpt2) {
  const gpt_config cfg = {256, 16, 64, 4, 4};
  Stage s = make_stage(cfg, 0, 4, true, true, 1, 1, 77);
  ASSERT_TRUE(s);
  const float *p = gpt_stage_params(s.get());
  std::vector<std::vector<float>> seen;
  for (size_t k = 0; k < gpt_stage_tensor_count(s.get()); k++) {
    gpt_tensor_info t;
    ASSERT_EQ(gpt_stage_tensor(s.get(), k, &t), 0);
    std::string name = t.name;
    double sum = 0, sq = 0;
    for (size_t i = t.offset; i < t.offset + t.count; i++) {
      sum += p[i];
      sq += (double)p[i] * p[i];
    }
    double mean = sum / t.count, sd = std::sqrt(sq / t.count - mean * mean);
    bool gain = name.find("_g") == name.size() - 2, bias = name.find("_b") == name.size() - 2;
    if (gain || bias) {
      EXPECT_EQ(mean, gain ? 1.0 : 0.0) << name;
      EXPECT_EQ(sd, 0.0) << name;
      continue;
    }
    // the two projections into the residual stream: 0.02 / sqrt(2 L)
    bool residual = name.find("proj_w") != std::string::npos;
    double want = residual ? 0.02 / std::sqrt(2.0 * cfg.layers) : 0.02;
    EXPECT_NEAR(sd, want, 0.05 * want) << name;
    EXPECT_NEAR(mean, 0.0, 0.05 * want) << name;
    // no two matrices share their values (the RNG is keyed by layer and tensor)
    std::vector<float> head(p + t.offset, p + t.offset + 16);
    for (const auto &other : seen)
      EXPECT_NE(other, head) << name;
    seen.push_back(head);
  }
}

TEST(GptModel, RefusesBadArgumentsWithASentence) {
  gpt_stage *s = nullptr;
  gpt_config bad = {11, 5, 8, 3, 2};
  EXPECT_EQ(gpt_stage_create(&bad, 0, 2, 1, 1, 2, 1, 1, &s), -1);
  EXPECT_EQ(s, nullptr);
  EXPECT_NE(std::string(gpt_error()).find("heads = 3"), std::string::npos) << gpt_error();
  EXPECT_EQ(gpt_stage_create(&kTiny, 1, 2, 1, 0, 2, 1, 1, &s), -1);
  EXPECT_NE(std::string(gpt_error()).find("embedding stage must start at layer 0"), std::string::npos);
  EXPECT_EQ(gpt_stage_create(&kTiny, 0, 1, 0, 1, 2, 1, 1, &s), -1);
  EXPECT_NE(std::string(gpt_error()).find("head stage must end at layer 2"), std::string::npos);

  Stage ok = make_stage(kTiny, 0, 2, true, true, 2, 2, 1);
  ASSERT_TRUE(ok);
  auto tok = random_tokens(10, kTiny.vocab, 1);
  double loss = 0;
  EXPECT_EQ(gpt_stage_forward(ok.get(), 0, 3, tok.data(), nullptr, nullptr, tok.data(), &loss), -1);
  EXPECT_NE(std::string(gpt_error()).find("B = 3"), std::string::npos) << gpt_error();
  EXPECT_EQ(gpt_stage_forward(ok.get(), 2, 2, tok.data(), nullptr, nullptr, tok.data(), &loss), -1);
  EXPECT_NE(std::string(gpt_error()).find("slot 2"), std::string::npos) << gpt_error();
  tok[7] = kTiny.vocab;
  EXPECT_EQ(gpt_stage_forward(ok.get(), 0, 2, tok.data(), nullptr, nullptr, nullptr, nullptr), -1);
  EXPECT_NE(std::string(gpt_error()).find("tokens[7] = 11"), std::string::npos) << gpt_error();
  tok[7] = 0;
  EXPECT_EQ(gpt_stage_backward(ok.get(), 1, 2, nullptr, nullptr, 1.0f), -1);
  EXPECT_NE(std::string(gpt_error()).find("slot 1 holds no forward"), std::string::npos) << gpt_error();
  // a forward without targets (inference) has no backward
  EXPECT_EQ(gpt_stage_forward(ok.get(), 0, 2, tok.data(), nullptr, nullptr, nullptr, nullptr), 0);
  EXPECT_NE(gpt_stage_probs(ok.get(), 0), nullptr);
  EXPECT_EQ(gpt_stage_backward(ok.get(), 0, 2, nullptr, nullptr, 1.0f), -1);
  EXPECT_NE(std::string(gpt_error()).find("no targets"), std::string::npos) << gpt_error();
  EXPECT_EQ(gpt_stage_forward(ok.get(), 0, 2, tok.data(), nullptr, nullptr, tok.data(), &loss), 0);
  EXPECT_EQ(gpt_stage_backward(ok.get(), 0, 1, nullptr, nullptr, 1.0f), -1);
  EXPECT_NE(std::string(gpt_error()).find("had B = 2"), std::string::npos) << gpt_error();
}

TEST(GptModel, ParameterTableAndDecayMask) {
  Stage s = make_stage(kTiny, 0, 2, true, true, 2, 3, 1);
  ASSERT_TRUE(s);
  const int V = kTiny.vocab, T = kTiny.context, C = kTiny.channels;
  size_t per_block = 4 * C /*ln*/ + 3 * C * C + 3 * C + C * C + C + 4 * C * C + 4 * C + 4 * C * C + C;
  EXPECT_EQ(gpt_stage_param_count(s.get()), (size_t)V * C + (size_t)T * C + 2 * per_block + 2 * C + (size_t)C * V);
  EXPECT_EQ(gpt_stage_tensor_count(s.get()), 2u + 2 * 12 + 3);
  gpt_tensor_info t;
  ASSERT_EQ(gpt_stage_tensor(s.get(), 2, &t), 0);
  EXPECT_STREQ(t.name, "h0.ln1_g");
  EXPECT_EQ(t.offset, (size_t)(V + T) * C);
  const float *p = gpt_stage_params(s.get());
  for (size_t i = 0; i < t.count; i++)
    EXPECT_EQ(p[t.offset + i], 1.0f);
  std::vector<unsigned char> mask(gpt_stage_param_count(s.get()), 7);
  gpt_stage_decay_mask(s.get(), mask.data());
  EXPECT_EQ(mask[0], 1);            // wte
  EXPECT_EQ(mask[t.offset], 0);     // a layer-norm gain
  EXPECT_EQ(mask.back(), 1);        // head_w
  EXPECT_GT(gpt_stage_slot_bytes(s.get()), 0u);
  EXPECT_EQ(gpt_stage_tensor(s.get(), 99, &t), -1);
}

// One array of a layout: where it starts (in floats from the base) and how many floats it needs.
struct Span {
  size_t start, count;
};

// Checks a carved layout: every array starts at a multiple of `align`, they do not overlap and
// lie within the counted total, and the total is the sum of the rounded sizes (nothing wasted).
void ExpectPacked(std::vector<Span> spans, size_t align, size_t total) {
  std::sort(spans.begin(), spans.end(), [](const Span &a, const Span &b) { return a.start < b.start; });
  size_t end = 0, rounded = 0;
  for (const Span &s : spans) {
    EXPECT_EQ(s.start % align, 0u) << "an array at " << s.start << " is not aligned to " << align;
    EXPECT_GE(s.start, end) << "an array at " << s.start << " overlaps the previous one";
    end = s.start + s.count;
    rounded += (s.count + align - 1) / align * align;
  }
  EXPECT_LE(end, total);
  EXPECT_EQ(rounded, total);
}

TEST(GptLayout, SlotAndScratchArePackedAndAlignedForBothStages) {
  const gpt_config cfg = {11, 5, 8, 2, 3};
  for (size_t align : {size_t(16), size_t(64)}) // the CPU stage's and the CUDA stage's
    for (int has_head = 0; has_head <= 1; has_head++) {
      const int max_batch = 3, nl = 2;
      const gpt_shape sh = {cfg, nl, 1, has_head, max_batch, 1};
      const size_t N = (size_t)max_batch * cfg.context, C = cfg.channels, T = cfg.context, V = cfg.vocab;
      const size_t total = gpt_layout_slot(&sh, align, nullptr, nullptr);
      std::vector<float> mem(total);
      std::vector<gpt_block_acts> blocks(nl);
      gpt_slot_arrays a = {};
      a.blocks = blocks.data();
      ASSERT_EQ(gpt_layout_slot(&sh, align, &a, mem.data()), total);
      auto at = [&](const float *p) { return (size_t)(p - mem.data()); };
      std::vector<Span> spans = {{at(a.res), (nl + 1) * N * C}};
      for (const gpt_block_acts &b : blocks) {
        const size_t heads = (size_t)max_batch * cfg.heads * T * T;
        for (auto s : std::vector<Span>{{at(b.ln1), N * C}, {at(b.ln1_mean), N}, {at(b.ln1_rstd), N},
                                        {at(b.qkv), 3 * N * C}, {at(b.att), heads}, {at(b.atty), N * C},
                                        {at(b.mid), N * C}, {at(b.ln2), N * C}, {at(b.ln2_mean), N},
                                        {at(b.ln2_rstd), N}, {at(b.fc), 4 * N * C}, {at(b.gelu), 4 * N * C}})
          spans.push_back(s);
      }
      if (has_head)
        for (auto s : std::vector<Span>{{at(a.lnf), N * C}, {at(a.lnf_mean), N}, {at(a.lnf_rstd), N},
                                        {at(a.probs), N * V}})
          spans.push_back(s);
      ExpectPacked(spans, align, total);

      // the scratch: one head's scores (CPU) or every head of every sequence (GPU)
      for (size_t score_blocks : {size_t(1), (size_t)max_batch * cfg.heads}) {
        const size_t stotal = gpt_layout_scratch(&sh, align, score_blocks, nullptr, nullptr);
        std::vector<float> smem(stotal);
        gpt_scratch d = {};
        ASSERT_EQ(gpt_layout_scratch(&sh, align, score_blocks, &d, smem.data()), stotal);
        auto sat = [&](const float *p) { return (size_t)(p - smem.data()); };
        std::vector<Span> ss = {{sat(d.dres), N * C}, {sat(d.dsmall), N * C}, {sat(d.dbig), 4 * N * C},
                                {sat(d.dqkv), 3 * N * C}, {sat(d.dscore), score_blocks * T * T}};
        if (has_head)
          ss.push_back({sat(d.dlogits), N * V});
        ExpectPacked(ss, align, stotal);
      }
    }
}

TEST(GptLayout, ShapeChecksNameTheValue) {
  gpt_config cfg = {11, 5, 8, 2, 3};
  EXPECT_EQ(gpt_check_shape(&cfg, 0, 3, 1, 1, 4, 2), 0) << gpt_error();
  EXPECT_EQ(gpt_check_shape(&cfg, 0, 3, 1, 1, 0, 2), -1);
  EXPECT_NE(std::string(gpt_error()).find("max_batch = 0"), std::string::npos) << gpt_error();
  EXPECT_EQ(gpt_check_shape(&cfg, 0, 3, 1, 1, 4, 0), -1);
  EXPECT_NE(std::string(gpt_error()).find("slots = 0"), std::string::npos) << gpt_error();
  EXPECT_EQ(gpt_check_shape(nullptr, 0, 3, 1, 1, 4, 2), -1);
  cfg.layers = 0;
  EXPECT_EQ(gpt_check_shape(&cfg, 0, 0, 1, 1, 4, 2), -1);
  EXPECT_NE(std::string(gpt_error()).find("layers = 0"), std::string::npos) << gpt_error();
}

} // namespace

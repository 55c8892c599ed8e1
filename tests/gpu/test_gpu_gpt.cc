// train_gpt's CUDA path (examples/train_gpt/gpt_cuda.cu) against its CPU path (gpt.c, optim.c):
// the same starting bits, the first step's loss, probabilities, boundary activations and
// gradients (relative L2 error under 1e-4, tensor by tensor), and 20 AdamW steps with clipping
// whose losses stay within 1e-3 relative of the CPU's (the acceptance), for the model in
// one stage and cut into two stages chained through host buffers with two micro-batches in
// flight. Bitwise where the float operations are the same on both sides: AdamW's step, the
// gradient scaling, and a repeated step on the device (no atomics: the same bits every run).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gpt.h"
#include "gpt_cuda.h"
#include "optim.h"

#include "gpu/gpu_test.h"

namespace {

// The small model: bytes, 32 tokens, 64 channels, 4 heads, 2 blocks; 4 sequences a step.
const gpt_config kCfg = {256, 32, 64, 4, 2};
constexpr int kBatch = 4;
constexpr int kSteps = 20;
constexpr uint64_t kSeed = 4242;
constexpr double kLossRtol = 1e-3; // the acceptance, per step
constexpr double kGradRtol = 1e-4; // relative L2 error of each tensor's first-step gradient
const gpt_adamw_hparams kHp = {3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f};
constexpr double kMaxNorm = 1.0;

struct CpuDeleter {
  void operator()(gpt_stage *s) const { gpt_stage_free(s); }
};
struct GpuDeleter {
  void operator()(gpt_cuda_stage *s) const { gpt_cuda_stage_free(s); }
};
using CpuStage = std::unique_ptr<gpt_stage, CpuDeleter>;
using GpuStage = std::unique_ptr<gpt_cuda_stage, GpuDeleter>;

CpuStage MakeCpu(int first, int last, int max_batch, int slots) {
  gpt_stage *s = nullptr;
  EXPECT_EQ(gpt_stage_create(&kCfg, first, last, first == 0, last == kCfg.layers, max_batch, slots, kSeed, &s), 0)
      << gpt_error();
  return CpuStage(s);
}

GpuStage MakeGpu(int first, int last, int max_batch, int slots) {
  gpt_cuda_stage *s = nullptr;
  EXPECT_EQ(gpt_cuda_stage_create(&kCfg, first, last, first == 0, last == kCfg.layers, max_batch, slots, kSeed, &s), 0)
      << gpt_cuda_error();
  return GpuStage(s);
}

// ||a - b|| / ||b||, in double (0 when both are zero).
double RelL2(const float *a, const float *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)a[i] - b[i];
    num += d * d;
    den += (double)b[i] * b[i];
  }
  if (den == 0)
    return num == 0 ? 0 : INFINITY;
  return std::sqrt(num / den);
}

// A text with structure to learn (several sentences, picked by a fixed generator), as bytes.
std::vector<int> Text(size_t n) {
  static const char *const kSentences[] = {
      "the quick brown fox jumps over the lazy dog. ", "pack my box with five dozen liquor jugs! ",
      "how vexingly quick daft zebras jump; ", "sphinx of black quartz, judge my vow. "};
  std::mt19937 rng(7);
  std::vector<int> t;
  while (t.size() < n) {
    const char *s = kSentences[rng() % 4];
    for (; *s && t.size() < n; s++)
      t.push_back((unsigned char)*s);
  }
  return t;
}

// Micro-batch m of step k: B sequences of T tokens from the text, the targets one token on.
void Batch(const std::vector<int> &text, int step, int m, int B, std::vector<int> *tok, std::vector<int> *tgt) {
  const int T = kCfg.context;
  tok->resize((size_t)B * T);
  tgt->resize((size_t)B * T);
  for (int b = 0; b < B; b++) {
    size_t at = ((size_t)(step * 8 + m * B + b) * 37) % (text.size() - T - 1);
    for (int t = 0; t < T; t++) {
      (*tok)[(size_t)b * T + t] = text[at + t];
      (*tgt)[(size_t)b * T + t] = text[at + t + 1];
    }
  }
}

// One path (CPU or CUDA), cut into stages, driven the same way: what a training step needs.
class Path {
public:
  virtual ~Path() = default;
  virtual int Stages() const = 0;
  virtual int Forward(int st, int slot, int B, const int *tok, const float *in, float *out, const int *tgt,
                      double *loss) = 0;
  virtual int Backward(int st, int slot, int B, const float *gout, float *gin, float scale) = 0;
  virtual void ZeroGrad() = 0;
  virtual double Sumsq(int st) = 0;
  virtual void Scale(int st, float f) = 0;
  virtual void AdamW(int st) = 0;
  virtual std::vector<float> Grads(int st) = 0;
  virtual std::vector<float> Probs(int st, int slot, int B) = 0;
  virtual const char *Error() const = 0;
};

class CpuPath : public Path {
public:
  CpuPath(const std::vector<std::pair<int, int>> &cuts, int max_batch, int slots) {
    for (auto c : cuts) {
      stages_.push_back(MakeCpu(c.first, c.second, max_batch, slots));
      size_t n = gpt_stage_param_count(stages_.back().get());
      opts_.emplace_back();
      EXPECT_EQ(gpt_adamw_init(&opts_.back(), n), 0);
      decay_.emplace_back(n);
      gpt_stage_decay_mask(stages_.back().get(), decay_.back().data());
    }
  }
  ~CpuPath() override {
    for (auto &o : opts_)
      gpt_adamw_destroy(&o);
  }
  int Stages() const override { return (int)stages_.size(); }
  int Forward(int st, int slot, int B, const int *tok, const float *in, float *out, const int *tgt,
              double *loss) override {
    return gpt_stage_forward(stages_[st].get(), slot, B, tok, in, out, tgt, loss);
  }
  int Backward(int st, int slot, int B, const float *gout, float *gin, float scale) override {
    return gpt_stage_backward(stages_[st].get(), slot, B, gout, gin, scale);
  }
  void ZeroGrad() override {
    for (auto &s : stages_)
      gpt_stage_zero_grad(s.get());
  }
  double Sumsq(int st) override {
    return gpt_grad_sumsq(gpt_stage_grads(stages_[st].get()), gpt_stage_param_count(stages_[st].get()));
  }
  void Scale(int st, float f) override {
    gpt_grad_scale(gpt_stage_grads(stages_[st].get()), gpt_stage_param_count(stages_[st].get()), f);
  }
  void AdamW(int st) override {
    gpt_adamw_step(&opts_[st], gpt_stage_params(stages_[st].get()), gpt_stage_grads(stages_[st].get()),
                   decay_[st].data(), &kHp);
  }
  std::vector<float> Grads(int st) override {
    const float *g = gpt_stage_grads(stages_[st].get());
    return std::vector<float>(g, g + gpt_stage_param_count(stages_[st].get()));
  }
  std::vector<float> Probs(int st, int slot, int B) override {
    const float *p = gpt_stage_probs(stages_[st].get(), slot);
    return p ? std::vector<float>(p, p + (size_t)B * kCfg.context * kCfg.vocab) : std::vector<float>();
  }
  const char *Error() const override { return gpt_error(); }
  gpt_stage *stage(int st) { return stages_[st].get(); }

private:
  std::vector<CpuStage> stages_;
  std::vector<gpt_adamw> opts_;
  std::vector<std::vector<unsigned char>> decay_;
};

class GpuPath : public Path {
public:
  GpuPath(const std::vector<std::pair<int, int>> &cuts, int max_batch, int slots) {
    for (auto c : cuts) {
      stages_.push_back(MakeGpu(c.first, c.second, max_batch, slots));
      opts_.emplace_back();
      if (stages_.back()) {
        EXPECT_EQ(gpt_cuda_adamw_init(&opts_.back(), gpt_cuda_stage_param_count(stages_.back().get())), 0)
            << gpt_cuda_error();
      }
    }
  }
  ~GpuPath() override {
    for (auto &o : opts_)
      gpt_cuda_adamw_destroy(&o);
  }
  bool ok() const {
    for (auto &s : stages_)
      if (!s)
        return false;
    return true;
  }
  int Stages() const override { return (int)stages_.size(); }
  int Forward(int st, int slot, int B, const int *tok, const float *in, float *out, const int *tgt,
              double *loss) override {
    return gpt_cuda_stage_forward(stages_[st].get(), slot, B, tok, in, out, tgt, loss);
  }
  int Backward(int st, int slot, int B, const float *gout, float *gin, float scale) override {
    return gpt_cuda_stage_backward(stages_[st].get(), slot, B, gout, gin, scale);
  }
  void ZeroGrad() override {
    for (auto &s : stages_)
      EXPECT_EQ(gpt_cuda_stage_zero_grad(s.get()), 0) << gpt_cuda_error();
  }
  double Sumsq(int st) override {
    double v = NAN;
    EXPECT_EQ(gpt_cuda_stage_grad_sumsq(stages_[st].get(), &v), 0) << gpt_cuda_error();
    return v;
  }
  void Scale(int st, float f) override {
    EXPECT_EQ(gpt_cuda_stage_grad_scale(stages_[st].get(), f), 0) << gpt_cuda_error();
  }
  void AdamW(int st) override {
    EXPECT_EQ(gpt_cuda_stage_adamw_step(stages_[st].get(), &opts_[st], &kHp), 0) << gpt_cuda_error();
  }
  std::vector<float> Grads(int st) override {
    std::vector<float> g(gpt_cuda_stage_param_count(stages_[st].get()));
    EXPECT_EQ(gpt_cuda_stage_grads_to_host(stages_[st].get(), g.data()), 0) << gpt_cuda_error();
    return g;
  }
  std::vector<float> Probs(int st, int slot, int B) override {
    std::vector<float> p((size_t)B * kCfg.context * kCfg.vocab);
    EXPECT_EQ(gpt_cuda_stage_probs_to_host(stages_[st].get(), slot, p.data()), 0) << gpt_cuda_error();
    return p;
  }
  const char *Error() const override { return gpt_cuda_error(); }
  gpt_cuda_stage *stage(int st) { return stages_[st].get(); }

private:
  std::vector<GpuStage> stages_;
  std::vector<gpt_cuda_adamw> opts_;
};

// What a run records: each step's loss, and the first step's gradients (per stage), boundary
// activations and boundary gradients (per stage boundary, micro-batch 0), probabilities.
struct Record {
  std::vector<double> losses;
  std::vector<std::vector<float>> grads, acts, grad_inputs;
  std::vector<float> probs;
};

// `steps` steps of `micro` micro-batches of B sequences, GPipe order (every forward, then the
// backwards in reverse), each micro-batch in its own slot; the loss of a step is the mean over its
// micro-batches. Then clipping to kMaxNorm over all stages and AdamW on each stage.
Record Train(Path &p, int steps, int micro, int B) {
  const int S = p.Stages();
  const size_t NC = (size_t)B * kCfg.context * kCfg.channels;
  const std::vector<int> text = Text(4096);
  // boundary buffers on the host: act[m][i] is stage i's output, grad[m][i] its input's gradient
  std::vector<std::vector<std::vector<float>>> act(micro, std::vector<std::vector<float>>(S, std::vector<float>(NC)));
  std::vector<std::vector<std::vector<float>>> grad = act;
  std::vector<std::vector<int>> tok(micro), tgt(micro);
  Record run;
  for (int step = 0; step < steps; step++) {
    p.ZeroGrad();
    double loss_sum = 0;
    for (int m = 0; m < micro; m++) {
      Batch(text, step, m, B, &tok[m], &tgt[m]);
      for (int st = 0; st < S; st++) {
        double loss = NAN;
        const bool last = st == S - 1;
        int rc = p.Forward(st, m, B, tok[m].data(), st ? act[m][st - 1].data() : nullptr,
                           last ? nullptr : act[m][st].data(), last ? tgt[m].data() : nullptr, &loss);
        EXPECT_EQ(rc, 0) << "forward of stage " << st << ": " << p.Error();
        if (rc)
          return run;
        if (last)
          loss_sum += loss;
      }
    }
    run.losses.push_back(loss_sum / micro);
    for (int m = micro - 1; m >= 0; m--)
      for (int st = S - 1; st >= 0; st--) {
        const bool last = st == S - 1;
        int rc = p.Backward(st, m, B, last ? nullptr : grad[m][st].data(), st ? grad[m][st - 1].data() : nullptr,
                            1.0f / (float)micro);
        EXPECT_EQ(rc, 0) << "backward of stage " << st << ": " << p.Error();
        if (rc)
          return run;
      }
    if (step == 0) {
      for (int st = 0; st < S; st++)
        run.grads.push_back(p.Grads(st));
      for (int st = 0; st + 1 < S; st++) {
        run.acts.push_back(act[0][st]);
        run.grad_inputs.push_back(grad[0][st]);
      }
      run.probs = p.Probs(S - 1, 0, B);
    }
    double total = 0;
    for (int st = 0; st < S; st++)
      total += p.Sumsq(st);
    float factor = gpt_clip_factor(total, kMaxNorm);
    for (int st = 0; st < S; st++) {
      p.Scale(st, factor);
      p.AdamW(st);
    }
  }
  return run;
}

// The stage `st` of `cuts` holds which tensors of the table: names for the messages.
void ExpectGradsClose(gpt_stage *table, const std::vector<float> &gpu, const std::vector<float> &cpu, int st) {
  ASSERT_EQ(gpu.size(), cpu.size());
  for (size_t k = 0; k < gpt_stage_tensor_count(table); k++) {
    gpt_tensor_info t;
    ASSERT_EQ(gpt_stage_tensor(table, k, &t), 0);
    double e = RelL2(gpu.data() + t.offset, cpu.data() + t.offset, t.count);
    EXPECT_LT(e, kGradRtol) << "stage " << st << ", tensor " << t.name << ": relative L2 error of the gradient";
  }
  double e = RelL2(gpu.data(), cpu.data(), gpu.size());
  std::printf("  stage %d: gradient relative L2 error %.2e over %zu parameters\n", st, e, gpu.size());
  EXPECT_LT(e, kGradRtol);
}

void CompareRuns(CpuPath &cpu_path, const Record &cpu, const Record &gpu) {
  ASSERT_EQ(gpu.losses.size(), (size_t)kSteps);
  ASSERT_EQ(cpu.losses.size(), (size_t)kSteps);
  double worst = 0;
  for (int k = 0; k < kSteps; k++) {
    double rel = std::fabs(gpu.losses[k] - cpu.losses[k]) / std::fabs(cpu.losses[k]);
    worst = std::max(worst, rel);
    EXPECT_LE(rel, kLossRtol) << "step " << k << ": GPU loss " << gpu.losses[k] << ", CPU " << cpu.losses[k];
  }
  std::printf("  loss %.4f -> %.4f (CPU %.4f -> %.4f); worst relative difference %.2e\n", gpu.losses.front(),
              gpu.losses.back(), cpu.losses.front(), cpu.losses.back(), worst);
  // the model learns: the comparison is not between two runs that stand still
  EXPECT_LT(cpu.losses.back(), cpu.losses.front() - 0.5);
  ASSERT_EQ(gpu.grads.size(), cpu.grads.size());
  for (size_t st = 0; st < cpu.grads.size(); st++)
    ExpectGradsClose(cpu_path.stage((int)st), gpu.grads[st], cpu.grads[st], (int)st);
  ASSERT_EQ(gpu.acts.size(), cpu.acts.size());
  for (size_t i = 0; i < cpu.acts.size(); i++) {
    EXPECT_LT(RelL2(gpu.acts[i].data(), cpu.acts[i].data(), cpu.acts[i].size()), 1e-5) << "boundary " << i;
    EXPECT_LT(RelL2(gpu.grad_inputs[i].data(), cpu.grad_inputs[i].data(), cpu.grad_inputs[i].size()), kGradRtol)
        << "boundary gradient " << i;
  }
  ASSERT_EQ(gpu.probs.size(), cpu.probs.size());
  EXPECT_LT(RelL2(gpu.probs.data(), cpu.probs.data(), cpu.probs.size()), 1e-5);
}

TEST(GptCuda, StartsFromTheCpuParameters) {
  for (auto cut : {std::make_pair(0, 2), std::make_pair(0, 1), std::make_pair(1, 2)}) {
    SCOPED_TRACE("layers " + std::to_string(cut.first) + ".." + std::to_string(cut.second));
    CpuStage c = MakeCpu(cut.first, cut.second, 1, 1);
    GpuStage g = MakeGpu(cut.first, cut.second, 2, 2);
    ASSERT_TRUE(c && g);
    size_t n = gpt_stage_param_count(c.get());
    ASSERT_EQ(gpt_cuda_stage_param_count(g.get()), n);
    std::vector<float> p(n, NAN), gr(n, NAN);
    ASSERT_EQ(gpt_cuda_stage_params_to_host(g.get(), p.data()), 0) << gpt_cuda_error();
    EXPECT_EQ(std::memcmp(p.data(), gpt_stage_params(c.get()), n * sizeof(float)), 0);
    ASSERT_EQ(gpt_cuda_stage_grads_to_host(g.get(), gr.data()), 0) << gpt_cuda_error();
    EXPECT_EQ(gr, std::vector<float>(n, 0.0f));
    ASSERT_EQ(gpt_cuda_stage_tensor_count(g.get()), gpt_stage_tensor_count(c.get()));
    for (size_t k = 0; k < gpt_stage_tensor_count(c.get()); k++) {
      gpt_tensor_info a, b;
      ASSERT_EQ(gpt_cuda_stage_tensor(g.get(), k, &a), 0);
      ASSERT_EQ(gpt_stage_tensor(c.get(), k, &b), 0);
      EXPECT_STREQ(a.name, b.name);
      EXPECT_EQ(a.offset, b.offset);
      EXPECT_EQ(a.count, b.count);
      EXPECT_EQ(a.decay, b.decay);
    }
    std::vector<unsigned char> ma(n, 7), mb(n, 9);
    gpt_cuda_stage_decay_mask(g.get(), ma.data());
    gpt_stage_decay_mask(c.get(), mb.data());
    EXPECT_EQ(ma, mb);
    EXPECT_GT(gpt_cuda_stage_slot_bytes(g.get()), 0u);
    EXPECT_GT(gpt_cuda_stage_scratch_bytes(g.get()), 0u);
  }
}

// The acceptance: the model in one stage, one micro-batch of 4 sequences a step.
TEST(GptCuda, OneStageTracksTheCpuOver20AdamWSteps) {
  const std::vector<std::pair<int, int>> cuts = {{0, kCfg.layers}};
  CpuPath cpu(cuts, kBatch, 1);
  GpuPath gpu(cuts, kBatch, 1);
  ASSERT_TRUE(gpu.ok());
  Record rc = Train(cpu, kSteps, 1, kBatch);
  Record rg = Train(gpu, kSteps, 1, kBatch);
  CompareRuns(cpu, rc, rg);
}

// Two stages ([embedding, block 0], [block 1, head]) chained through host buffers, two
// micro-batches of 2 sequences in flight (slots 0 and 1), against the CPU cut the same way.
TEST(GptCuda, TwoStagesThroughHostBuffersTrackTheCpu) {
  const std::vector<std::pair<int, int>> cuts = {{0, 1}, {1, kCfg.layers}};
  CpuPath cpu(cuts, kBatch / 2, 2);
  GpuPath gpu(cuts, kBatch / 2, 2);
  ASSERT_TRUE(gpu.ok());
  Record rc = Train(cpu, kSteps, 2, kBatch / 2);
  Record rg = Train(gpu, kSteps, 2, kBatch / 2);
  CompareRuns(cpu, rc, rg);
}

// Fixed-order reductions and no atomics: a step repeated from the same state gives the same bits
// (a race or an unwritten buffer would show as a difference).
TEST(GptCuda, RepeatsBitForBit) {
  const std::vector<std::pair<int, int>> cuts = {{0, 1}, {1, kCfg.layers}};
  Record runs[2];
  for (Record &r : runs) {
    GpuPath gpu(cuts, kBatch, 1);
    ASSERT_TRUE(gpu.ok());
    r = Train(gpu, 3, 1, kBatch);
  }
  EXPECT_EQ(runs[0].losses, runs[1].losses);
  EXPECT_EQ(runs[0].grads, runs[1].grads);
  EXPECT_EQ(runs[0].acts, runs[1].acts);
  EXPECT_EQ(runs[0].grad_inputs, runs[1].grad_inputs);
  EXPECT_EQ(runs[0].probs, runs[1].probs);
}

// A backward adds onto the gradients (micro-batches accumulate) and leaves the slot as it was
// (a second backward of the same slot adds the same gradient again); zero_grad clears them.
TEST(GptCuda, BackwardAccumulates) {
  GpuStage g = MakeGpu(0, kCfg.layers, kBatch, 1);
  ASSERT_TRUE(g);
  std::vector<int> tok, tgt;
  Batch(Text(4096), 0, 0, kBatch, &tok, &tgt);
  double loss = 0;
  ASSERT_EQ(gpt_cuda_stage_forward(g.get(), 0, kBatch, tok.data(), nullptr, nullptr, tgt.data(), &loss), 0)
      << gpt_cuda_error();
  EXPECT_NEAR(loss, std::log(256.0), 0.1); // a fresh model guesses uniformly
  size_t n = gpt_cuda_stage_param_count(g.get());
  std::vector<float> once(n), twice(n);
  ASSERT_EQ(gpt_cuda_stage_backward(g.get(), 0, kBatch, nullptr, nullptr, 1.0f), 0) << gpt_cuda_error();
  ASSERT_EQ(gpt_cuda_stage_grads_to_host(g.get(), once.data()), 0);
  ASSERT_EQ(gpt_cuda_stage_backward(g.get(), 0, kBatch, nullptr, nullptr, 1.0f), 0) << gpt_cuda_error();
  ASSERT_EQ(gpt_cuda_stage_grads_to_host(g.get(), twice.data()), 0);
  // not bitwise: the second pass adds each term onto the first pass's sum, not onto zero
  std::vector<float> doubled(n);
  for (size_t i = 0; i < n; i++)
    doubled[i] = 2.0f * once[i];
  EXPECT_LT(RelL2(twice.data(), doubled.data(), n), 1e-6);
  ASSERT_EQ(gpt_cuda_stage_zero_grad(g.get()), 0);
  ASSERT_EQ(gpt_cuda_stage_grads_to_host(g.get(), twice.data()), 0);
  EXPECT_EQ(twice, std::vector<float>(n, 0.0f));
}

// The device AdamW step, the norm and the scaling against optim.c from the same state: the
// step and the scaling bitwise (the same float operations), the norm to double rounding.
TEST(GptCuda, AdamWAndClippingMatchOptimC) {
  GpuStage g = MakeGpu(1, kCfg.layers, 1, 1); // a stage with decayed and undecayed tensors
  ASSERT_TRUE(g);
  size_t n = gpt_cuda_stage_param_count(g.get());
  std::mt19937 rng(11);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> p(n), gr(n), m(n), v(n);
  for (size_t i = 0; i < n; i++) {
    p[i] = dist(rng);
    gr[i] = dist(rng) * 0.1f;
    m[i] = dist(rng) * 0.01f;
    v[i] = std::fabs(dist(rng)) * 1e-4f;
  }
  std::vector<unsigned char> decay(n);
  gpt_cuda_stage_decay_mask(g.get(), decay.data());
  ASSERT_EQ(gpt_cuda_stage_params_from_host(g.get(), p.data()), 0) << gpt_cuda_error();
  ASSERT_EQ(gpt_cuda_stage_grads_from_host(g.get(), gr.data()), 0) << gpt_cuda_error();

  double dev_sumsq = 0;
  ASSERT_EQ(gpt_cuda_stage_grad_sumsq(g.get(), &dev_sumsq), 0) << gpt_cuda_error();
  double host_sumsq = gpt_grad_sumsq(gr.data(), n);
  EXPECT_NEAR(dev_sumsq, host_sumsq, 1e-12 * host_sumsq);
  float factor = gpt_clip_factor(host_sumsq, 1.0);
  ASSERT_LT(factor, 1.0f); // the clipping does something
  ASSERT_EQ(gpt_cuda_stage_grad_scale(g.get(), factor), 0) << gpt_cuda_error();
  gpt_grad_scale(gr.data(), n, factor);
  std::vector<float> back(n);
  ASSERT_EQ(gpt_cuda_stage_grads_to_host(g.get(), back.data()), 0);
  EXPECT_EQ(std::memcmp(back.data(), gr.data(), n * sizeof(float)), 0) << "the scaled gradients differ";

  gpt_adamw host;
  ASSERT_EQ(gpt_adamw_init(&host, n), 0);
  gpt_cuda_adamw dev;
  ASSERT_EQ(gpt_cuda_adamw_init(&dev, n), 0) << gpt_cuda_error();
  std::memcpy(host.m, m.data(), n * sizeof(float));
  std::memcpy(host.v, v.data(), n * sizeof(float));
  ASSERT_EQ(gpt_cuda_adamw_from_host(&dev, m.data(), v.data()), 0) << gpt_cuda_error();
  host.step = dev.step = 4; // mid-run bias corrections
  for (int k = 0; k < 2; k++) {
    gpt_adamw_step(&host, p.data(), gr.data(), decay.data(), &kHp);
    ASSERT_EQ(gpt_cuda_stage_adamw_step(g.get(), &dev, &kHp), 0) << gpt_cuda_error();
  }
  EXPECT_EQ(dev.step, host.step);
  std::vector<float> dp(n), dm(n), dv(n);
  ASSERT_EQ(gpt_cuda_stage_params_to_host(g.get(), dp.data()), 0);
  ASSERT_EQ(gpt_cuda_adamw_to_host(&dev, dm.data(), dv.data()), 0) << gpt_cuda_error();
  EXPECT_EQ(std::memcmp(dp.data(), p.data(), n * sizeof(float)), 0) << "the parameters differ";
  EXPECT_EQ(std::memcmp(dm.data(), host.m, n * sizeof(float)), 0) << "the first moments differ";
  EXPECT_EQ(std::memcmp(dv.data(), host.v, n * sizeof(float)), 0) << "the second moments differ";
  // a mismatched optimiser is refused
  gpt_cuda_adamw small;
  ASSERT_EQ(gpt_cuda_adamw_init(&small, 3), 0);
  EXPECT_EQ(gpt_cuda_stage_adamw_step(g.get(), &small, &kHp), -1);
  EXPECT_NE(std::string(gpt_cuda_error()).find("3 parameters"), std::string::npos) << gpt_cuda_error();
  gpt_cuda_adamw_destroy(&small);
  gpt_cuda_adamw_destroy(&dev);
  gpt_adamw_destroy(&host);
}

// Refusals name what is wrong, as the CPU path's do.
TEST(GptCuda, RefusesBadArguments) {
  gpt_cuda_stage *s = nullptr;
  EXPECT_EQ(gpt_cuda_stage_create(&kCfg, 1, 2, 1, 1, 2, 1, kSeed, &s), -1); // embedding not at layer 0
  EXPECT_EQ(s, nullptr);
  EXPECT_NE(std::string(gpt_cuda_error()).find("embedding"), std::string::npos) << gpt_cuda_error();
  EXPECT_EQ(gpt_cuda_stage_create(&kCfg, 0, 2, 1, 1, 0, 1, kSeed, &s), -1);
  EXPECT_NE(std::string(gpt_cuda_error()).find("max_batch"), std::string::npos) << gpt_cuda_error();
  EXPECT_EQ(gpt_cuda_stage_create(&kCfg, 0, 2, 1, 1, 1, 0, kSeed, &s), -1);
  EXPECT_NE(std::string(gpt_cuda_error()).find("slots"), std::string::npos) << gpt_cuda_error();

  GpuStage g = MakeGpu(0, kCfg.layers, 2, 1);
  ASSERT_TRUE(g);
  std::vector<int> tok((size_t)2 * kCfg.context, 1), tgt = tok;
  double loss = 0;
  EXPECT_EQ(gpt_cuda_stage_backward(g.get(), 0, 2, nullptr, nullptr, 1.0f), -1);
  EXPECT_NE(std::string(gpt_cuda_error()).find("holds no forward"), std::string::npos) << gpt_cuda_error();
  EXPECT_EQ(gpt_cuda_stage_forward(g.get(), 1, 2, tok.data(), nullptr, nullptr, tgt.data(), &loss), -1);
  EXPECT_NE(std::string(gpt_cuda_error()).find("slot 1"), std::string::npos) << gpt_cuda_error();
  EXPECT_EQ(gpt_cuda_stage_forward(g.get(), 0, 3, tok.data(), nullptr, nullptr, tgt.data(), &loss), -1);
  EXPECT_NE(std::string(gpt_cuda_error()).find("B = 3"), std::string::npos) << gpt_cuda_error();
  tok[5] = 256;
  EXPECT_EQ(gpt_cuda_stage_forward(g.get(), 0, 2, tok.data(), nullptr, nullptr, tgt.data(), &loss), -1);
  EXPECT_NE(std::string(gpt_cuda_error()).find("tokens[5] = 256"), std::string::npos) << gpt_cuda_error();
  tok[5] = 1;
  ASSERT_EQ(gpt_cuda_stage_forward(g.get(), 0, 2, tok.data(), nullptr, nullptr, nullptr, nullptr), 0)
      << gpt_cuda_error(); // inference: no targets, no loss
  std::vector<float> probs((size_t)2 * kCfg.context * kCfg.vocab);
  ASSERT_EQ(gpt_cuda_stage_probs_to_host(g.get(), 0, probs.data()), 0) << gpt_cuda_error();
  double row = 0;
  for (int v = 0; v < kCfg.vocab; v++)
    row += probs[v];
  EXPECT_NEAR(row, 1.0, 1e-5);
  EXPECT_EQ(gpt_cuda_stage_backward(g.get(), 0, 2, nullptr, nullptr, 1.0f), -1);
  EXPECT_NE(std::string(gpt_cuda_error()).find("no targets"), std::string::npos) << gpt_cuda_error();
  EXPECT_EQ(gpt_cuda_stage_backward(g.get(), 0, 1, nullptr, nullptr, 1.0f), -1);
  EXPECT_NE(std::string(gpt_cuda_error()).find("B = 1"), std::string::npos) << gpt_cuda_error();

  GpuStage mid = MakeGpu(1, kCfg.layers, 1, 1);
  ASSERT_TRUE(mid);
  EXPECT_EQ(gpt_cuda_stage_probs_to_host(g.get(), 0, nullptr), -1);
  EXPECT_EQ(gpt_cuda_stage_forward(mid.get(), 0, 1, nullptr, nullptr, nullptr, tgt.data(), &loss), -1);
  EXPECT_NE(std::string(gpt_cuda_error()).find("input"), std::string::npos) << gpt_cuda_error();
}

} // namespace

// The CUDA reduction kernels (kernels/reduce_add.cu) against their CPU twins
// (lib/collective/reduce.c). The ring all-reduce promises bitwise-identical results on every
// rank and run, whichever side reduced, so the kernels must give the CPU's bits exactly, for
// every float: normals, denormals, signed zeros, infinities. The one exception is NaN, whose
// sign and payload IEEE leaves open (x86 gives 0xffc00000 for inf - inf and keeps an input's
// payload; CUDA gives 0x7fffffff): there both sides must give some NaN.
//
// Every device buffer is surrounded by a poison pattern that is checked afterwards, so a
// write outside [0, n) (a launch rounded up to whole blocks without a bound check, an
// off-by-one) fails the test even where it would not change the result.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels.h"
#include "collective/collective_internal.h"

#include "gpu/gpu_test.h"

namespace {

constexpr size_t kFront = 256;             // poisoned floats before element 0
constexpr size_t kBack = 4096;             // and after element n-1 (more than one block of 256)
constexpr uint32_t kPoison = 0x7fc0deadu;  // a quiet NaN with a payload no arithmetic produces

// Sizes around the block (256) and warp (32) edges, odd sizes, and the last one larger than
// the 65535 blocks x 256 threads the launcher caps the grid at, so the grid-stride loop runs.
const size_t kSizes[] = {0,    1,     2,     31,    32, 33, 255, 256, 257, 1000, 65535, 65536 * 3 + 7,
                         (size_t{1} << 22) + 5, size_t{65535} * 256 + 1000};

enum class Inputs { kFullRange, kSameScale, kTiny };
const Inputs kAllInputs[] = {Inputs::kFullRange, Inputs::kSameScale, Inputs::kTiny};

const char *InputsName(Inputs kind) {
  switch (kind) {
    case Inputs::kFullRange: return "full range";
    case Inputs::kSameScale: return "same scale";
    case Inputs::kTiny: return "denormal and near FLT_MIN";
  }
  return "?";
}

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Values that stress the rounding and special cases; placed pairwise at the start of the
// full-range inputs so that every pair (a, b) is added once.
std::vector<float> Specials() {
  const float inf = std::numeric_limits<float>::infinity();
  return {0.0f,
          -0.0f,
          std::numeric_limits<float>::denorm_min(),
          -std::numeric_limits<float>::denorm_min(),
          FromBits(0x007fffffu),  // the largest denormal
          std::numeric_limits<float>::min(),
          -std::numeric_limits<float>::min(),
          1.0f,
          -1.0f,
          FromBits(0x3f800001u),  // 1 + ulp: sums that round to even
          std::numeric_limits<float>::max(),
          -std::numeric_limits<float>::max(),
          inf,
          -inf,
          std::numeric_limits<float>::quiet_NaN()};
}

// n floats of the given kind. Full range: every 32-bit pattern is equally likely, which
// covers all exponents (denormals, infinities and some NaNs included). Same scale: random
// signs and mantissas within a few binades, where sums round and cancel. Tiny: exponents 0
// to 2, where results cross between denormal and normal.
std::vector<float> MakeInputs(Inputs kind, size_t n, std::mt19937 &rng, int which) {
  std::vector<float> v(n);
  std::uniform_int_distribution<uint32_t> any;
  for (size_t i = 0; i < n; i++) {
    uint32_t r = any(rng);
    switch (kind) {
      case Inputs::kFullRange: v[i] = FromBits(r); break;
      case Inputs::kSameScale: v[i] = FromBits((r & 0x807fffffu) | ((124u + (r >> 23) % 6u) << 23)); break;
      case Inputs::kTiny: v[i] = FromBits((r & 0x807fffffu) | (((r >> 23) % 3u) << 23)); break;
    }
  }
  if (kind == Inputs::kFullRange) {
    const std::vector<float> s = Specials();
    for (size_t a = 0, i = 0; a < s.size(); a++)
      for (size_t b = 0; b < s.size() && i < n; b++, i++)
        v[i] = which == 0 ? s[a] : s[b];
  }
  return v;
}

bool SameResult(uint32_t cpu, uint32_t gpu) {
  if (std::isnan(FromBits(cpu)))
    return std::isnan(FromBits(gpu));
  return cpu == gpu;
}

std::string Hex(uint32_t u) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%08x", static_cast<unsigned>(u));
  return text;
}

// A device copy of n floats with poisoned margins, freed on scope exit.
class PaddedDeviceFloats {
 public:
  explicit PaddedDeviceFloats(size_t n) : n_(n), buffer_((kFront + n + kBack) * sizeof(float)) {}

  cudaError_t error() const { return buffer_.error(); }
  float *data() const { return buffer_.floats() + kFront; }

  // Writes values into [0, n) and the poison everywhere else.
  cudaError_t Upload(const std::vector<float> &values) const {
    std::vector<uint32_t> image(kFront + n_ + kBack, kPoison);
    if (n_)
      std::memcpy(image.data() + kFront, values.data(), n_ * sizeof(float));
    return buffer_.Upload(image.data());
  }

  // Reads back everything, margins included.
  cudaError_t Download(std::vector<uint32_t> *image) const {
    image->assign(kFront + n_ + kBack, 0);
    return buffer_.Download(image->data());
  }

 private:
  size_t n_;
  DeviceBuffer buffer_;
};

// Compares a downloaded image with the CPU's result: margins untouched, [0, n) equal.
testing::AssertionResult MatchesCpu(const std::vector<uint32_t> &image, const std::vector<float> &cpu,
                                    const std::vector<float> &in_a, const std::vector<float> &in_b) {
  const size_t n = cpu.size();
  for (size_t i = 0; i < image.size(); i++) {
    if (i >= kFront && i < kFront + n)
      continue;
    if (image[i] != kPoison) {
      long long at = static_cast<long long>(i) - static_cast<long long>(kFront);
      return testing::AssertionFailure() << "the kernel wrote outside [0, " << n << "): element " << at
                                         << " is " << Hex(image[i]) << ", the poison was " << Hex(kPoison);
    }
  }
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < n; i++)
    if (!SameResult(Bits(cpu[i]), image[kFront + i]) && bad++ == 0)
      first = i;
  if (bad == 0)
    return testing::AssertionSuccess();
  auto failure = testing::AssertionFailure();
  failure << bad << " of " << n << " elements differ from the CPU twin; first at " << first << ": inputs "
          << Hex(Bits(in_a[first]));
  if (!in_b.empty())
    failure << ", " << Hex(Bits(in_b[first]));
  failure << " gave " << Hex(Bits(cpu[first])) << " on the CPU and " << Hex(image[kFront + first]) << " on the GPU";
  return failure;
}

TEST(GpuReduce, AddMatchesCpuTwinBitwise) {
  std::mt19937 rng(20240611u);
  for (size_t n : kSizes) {
    for (Inputs kind : kAllInputs) {
      SCOPED_TRACE("n = " + std::to_string(n) + ", inputs: " + InputsName(kind));
      const std::vector<float> acc = MakeInputs(kind, n, rng, 0);
      const std::vector<float> x = MakeInputs(kind, n, rng, 1);
      std::vector<float> cpu = acc;
      lh_reduce_add_f32(cpu.data(), x.data(), n);

      PaddedDeviceFloats dev_acc(n), dev_x(n);
      ASSERT_CUDA(dev_acc.error());
      ASSERT_CUDA(dev_x.error());
      ASSERT_CUDA(dev_acc.Upload(acc));
      ASSERT_CUDA(dev_x.Upload(x));
      int rc = lh_cuda_reduce_add_f32(dev_acc.data(), dev_x.data(), n, nullptr);
      ASSERT_EQ(rc, 0) << "lh_cuda_reduce_add_f32: " << cudaGetErrorString(static_cast<cudaError_t>(rc));
      ASSERT_CUDA(cudaDeviceSynchronize());

      std::vector<uint32_t> image;
      ASSERT_CUDA(dev_acc.Download(&image));
      ASSERT_TRUE(MatchesCpu(image, cpu, acc, x));
      // x is read only: it must come back as it went (margins included).
      ASSERT_CUDA(dev_x.Download(&image));
      ASSERT_TRUE(MatchesCpu(image, x, x, {}));
    }
  }
}

TEST(GpuReduce, DivMatchesCpuTwinBitwise) {
  const float inf = std::numeric_limits<float>::infinity();
  // Rank counts as the ring divides by them, then divisors that round, overflow, underflow
  // or are special themselves.
  const float divisors[] = {1.0f, 2.0f, 3.0f, 5.0f, 7.0f, 0.1f, -2.5f, 1e-40f /* denormal */, 3e38f, inf, 0.0f,
                            -0.0f};
  std::mt19937 rng(20240612u);
  for (size_t n : kSizes) {
    for (Inputs kind : kAllInputs) {
      const std::vector<float> x = MakeInputs(kind, n, rng, 0);
      PaddedDeviceFloats dev_x(n);
      ASSERT_CUDA(dev_x.error());
      for (float divisor : divisors) {
        SCOPED_TRACE("n = " + std::to_string(n) + ", inputs: " + InputsName(kind) + ", divisor " +
                     Hex(Bits(divisor)));
        std::vector<float> cpu = x;
        lh_reduce_div_f32(cpu.data(), divisor, n);

        ASSERT_CUDA(dev_x.Upload(x));
        int rc = lh_cuda_reduce_div_f32(dev_x.data(), divisor, n, nullptr);
        ASSERT_EQ(rc, 0) << "lh_cuda_reduce_div_f32: " << cudaGetErrorString(static_cast<cudaError_t>(rc));
        ASSERT_CUDA(cudaDeviceSynchronize());

        std::vector<uint32_t> image;
        ASSERT_CUDA(dev_x.Download(&image));
        ASSERT_TRUE(MatchesCpu(image, cpu, x, {}));
      }
    }
  }
}

// lh_reduce_add / lh_reduce_div dispatch device pointers to the kernels (and synchronize):
// the path the ring takes on a backend that moves device memory.
TEST(GpuReduce, DispatchOnDeviceMatchesHost) {
  const size_t n = 100003;
  std::mt19937 rng(20240613u);
  const std::vector<float> acc = MakeInputs(Inputs::kSameScale, n, rng, 0);
  const std::vector<float> x = MakeInputs(Inputs::kSameScale, n, rng, 1);
  std::vector<float> cpu = acc;
  ASSERT_EQ(lh_reduce_add(0, cpu.data(), x.data(), n), LH_SUCCESS);
  ASSERT_EQ(lh_reduce_div(0, cpu.data(), 3.0f, n), LH_SUCCESS);

  PaddedDeviceFloats dev_acc(n), dev_x(n);
  ASSERT_CUDA(dev_acc.error());
  ASSERT_CUDA(dev_x.error());
  ASSERT_CUDA(dev_acc.Upload(acc));
  ASSERT_CUDA(dev_x.Upload(x));
  ASSERT_EQ(lh_reduce_add(1, dev_acc.data(), dev_x.data(), n), LH_SUCCESS);
  ASSERT_EQ(lh_reduce_div(1, dev_acc.data(), 3.0f, n), LH_SUCCESS);
  std::vector<uint32_t> image;
  ASSERT_CUDA(dev_acc.Download(&image));
  ASSERT_TRUE(MatchesCpu(image, cpu, acc, x));
}

}  // namespace

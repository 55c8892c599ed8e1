// The public codec API (include/longhaul/compress.h) on device memory, against the same calls on
// host memory. The contract: a frame encoded from device data is byte for byte the frame the
// same data in host memory gives; decoding (or accumulating) into device memory gives the bits
// decoding into host memory gives; refusals (non-finite input, corrupt payloads) are the same
// status and message, and write nothing. Every codec, with and without zstd and error feedback,
// at sizes around the kernels' edges, from aligned and unaligned device pointers.
//
// Also the input-check kernel (lh_cuda_qz_max_abs_bits) against its CPU twin.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <longhaul/compress.h>
#include <longhaul/status.h>

#include "compress/compress_internal.h"
#include "compress/quant_internal.h"
#include "kernels.h"

#include "gpu/gpu_test.h"

namespace {

// A codec context, freed on scope exit.
struct Codec {
  lh_codec *c = nullptr;
  explicit Codec(lh_codec_id id) { EXPECT_EQ(lh_codec_create(id, &c), LH_SUCCESS); }
  ~Codec() { lh_codec_free(c); }
  Codec(const Codec &) = delete;
  Codec &operator=(const Codec &) = delete;
};

struct Case {
  std::string name;
  lh_codec_id id;
  std::vector<std::pair<lh_codec_param, int>> params;
};

// Every codec, with the parameters that change the kernels' paths (power-of-two and odd
// blocks, fp16 scales, stochastic rounding, sampled top-k, small and large chunks) and zstd.
std::vector<Case> AllCases() {
  return {
      {"none", LH_CODEC_NONE, {}},
      {"none zstd 3", LH_CODEC_NONE, {{LH_CP_ZSTD_LEVEL, 3}}},
      {"fp16", LH_CODEC_FP16, {}},
      {"bf16", LH_CODEC_BF16, {}},
      {"bf16 zstd 1", LH_CODEC_BF16, {{LH_CP_ZSTD_LEVEL, 1}}},
      {"blockq 8", LH_CODEC_BLOCKQ, {{LH_CP_BITS, 8}}},
      {"blockq 4", LH_CODEC_BLOCKQ, {{LH_CP_BITS, 4}}},
      {"blockq 1 block 100", LH_CODEC_BLOCKQ, {{LH_CP_BITS, 1}, {LH_CP_BLOCK, 100}}},
      {"blockq 3 fp16 stochastic", LH_CODEC_BLOCKQ,
       {{LH_CP_BITS, 3}, {LH_CP_SCALE_TYPE, LH_SCALE_FP16}, {LH_CP_ROUNDING, LH_ROUND_STOCHASTIC}}},
      {"blockq 4 block 8192 zstd 2", LH_CODEC_BLOCKQ, {{LH_CP_BITS, 4}, {LH_CP_BLOCK, 8192}, {LH_CP_ZSTD_LEVEL, 2}}},
      {"sharedq 8", LH_CODEC_SHAREDQ, {{LH_CP_BITS, 8}}},
      {"sharedq 4 ranks 5 stochastic", LH_CODEC_SHAREDQ,
       {{LH_CP_BITS, 4}, {LH_CP_RANKS, 5}, {LH_CP_ROUNDING, LH_ROUND_STOCHASTIC}}},
      {"sign", LH_CODEC_SIGN, {}},
      {"sign fp16 block 100", LH_CODEC_SIGN, {{LH_CP_SCALE_TYPE, LH_SCALE_FP16}, {LH_CP_BLOCK, 100}}},
      {"topk", LH_CODEC_TOPK, {}},
      {"topk chunk 100 k 7 sampled", LH_CODEC_TOPK,
       {{LH_CP_CHUNK, 100}, {LH_CP_K, 7}, {LH_CP_TOPK_METHOD, LH_TOPK_SAMPLED}}},
      {"topk chunk 65536 k 655 zstd 3", LH_CODEC_TOPK, {{LH_CP_CHUNK, 65536}, {LH_CP_K, 655}, {LH_CP_ZSTD_LEVEL, 3}}},
      {"randk", LH_CODEC_RANDK, {}},
      {"randk chunk 1000 k 10", LH_CODEC_RANDK, {{LH_CP_CHUNK, 1000}, {LH_CP_K, 10}}},
      {"powersgd rank 2", LH_CODEC_POWERSGD, {{LH_CP_RANK, 2}}},
  };
}

const size_t kSizes[] = {0, 1, 7, 129, 4097, 100003, size_t{1} << 20};

// PowerSGD needs rows | n: 64 rows when they divide n, else one row.
int RowsFor(size_t n) { return n % 64 == 0 && n > 0 ? 64 : 1; }

void Configure(lh_codec *c, const Case &k, size_t n) {
  for (const auto &p : k.params) {
    ASSERT_LH(lh_codec_set_param(c, p.first, p.second));
  }
  if (k.id == LH_CODEC_POWERSGD) {
    ASSERT_LH(lh_codec_set_param(c, LH_CP_ROWS, RowsFor(n)));
  }
  ASSERT_LH(lh_codec_set_key(c, 77, 3, 1));
}

// Gaussian with every 97th element x20 and some exact ties and zeros: finite, |x| < 32768.
std::vector<float> Inputs(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; i++) {
    v[i] = gauss(rng);
    if (i % 97 == 0)
      v[i] *= 20.0f;
    if (i % 211 == 5)
      v[i] = 0.5f;
    if (i % 307 == 9)
      v[i] = -0.0f;
  }
  return v;
}

// A device copy of host floats, `offset` floats past a cudaMalloc'd (256-aligned) start, so that
// offset 1 makes the kernels take their unaligned paths.
class DeviceFloats {
 public:
  DeviceFloats(const std::vector<float> &host, size_t offset) : n_(host.size()), offset_(offset),
      buffer_((host.size() + offset) * sizeof(float)) {
    if (buffer_.error() == cudaSuccess && n_)
      error_ = cudaMemcpy(get(), host.data(), n_ * sizeof(float), cudaMemcpyHostToDevice);
    else
      error_ = buffer_.error();
  }
  cudaError_t error() const { return error_; }
  float *get() const { return buffer_.floats() + offset_; }
  cudaError_t Read(std::vector<float> *out) const {
    out->resize(n_);
    return n_ ? cudaMemcpy(out->data(), get(), n_ * sizeof(float), cudaMemcpyDeviceToHost) : cudaSuccess;
  }

 private:
  size_t n_, offset_;
  DeviceBuffer buffer_;
  cudaError_t error_ = cudaSuccess;
};

testing::AssertionResult SameBits(const std::vector<float> &want, const std::vector<float> &got, const char *what) {
  if (want.size() != got.size())
    return testing::AssertionFailure() << what << ": " << want.size() << " and " << got.size() << " elements";
  for (size_t i = 0; i < want.size(); i++)
    if (std::memcmp(&want[i], &got[i], sizeof(float)) != 0)
      return testing::AssertionFailure() << what << ": element " << i << " is " << got[i] << " from device memory, "
                                         << want[i] << " from host memory (first of the differences)";
  return testing::AssertionSuccess();
}

// Unlike gpu_test.h's SameBytes (CPU twin against kernel), the sides here are host and device data.
testing::AssertionResult SameBytesAsHost(const std::vector<uint8_t> &want, const std::vector<uint8_t> &got,
                                         const char *what) {
  if (want.size() != got.size())
    return testing::AssertionFailure() << what << ": " << want.size() << " bytes from host data, " << got.size()
                                       << " from device data";
  for (size_t i = 0; i < want.size(); i++)
    if (want[i] != got[i])
      return testing::AssertionFailure() << what << ": byte " << i << " is 0x" << std::hex << (int)got[i]
                                         << " from device data, 0x" << (int)want[i] << " from host data";
  return testing::AssertionSuccess();
}

// SHAREDQ: scales from host and from device data must agree; both contexts get them.
void ShareScales(lh_codec *host, lh_codec *dev, const std::vector<float> &x, const float *dx) {
  size_t count = lh_codec_scale_count(host, x.size());
  std::vector<float> sh(count), sd(count, -1.0f);
  ASSERT_LH(lh_codec_local_scales(host, x.data(), x.size(), sh.data()));
  ASSERT_LH(lh_codec_local_scales(dev, dx, x.size(), sd.data()));
  ASSERT_TRUE(SameBits(sh, sd, "local scales"));
  ASSERT_LH(lh_codec_set_scales(host, sh.data(), count));
  ASSERT_LH(lh_codec_set_scales(dev, sh.data(), count));
}

std::vector<uint8_t> Encode(lh_codec *c, const float *x, size_t n, lh_status *st) {
  std::vector<uint8_t> frame(lh_codec_max_wire_bytes(c, n), kPoisonByte);
  size_t used = 0;
  *st = lh_codec_encode(c, x, n, frame.data(), frame.size(), &used);
  frame.resize(*st == LH_SUCCESS ? used : frame.size());
  return frame;
}

// ---- the input check ------------------------------------------------------------------------

TEST(CodecDevice, MaxAbsKernelMatchesTwin) {
  DeviceBuffer word(sizeof(uint32_t));
  ASSERT_CUDA(word.error());
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (size_t n : {size_t{0}, size_t{1}, size_t{31}, size_t{257}, size_t{100003}, size_t{3} << 20}) {
    for (int special = 0; special < 5; special++) {
      SCOPED_TRACE("n " + std::to_string(n) + ", special " + std::to_string(special));
      std::vector<float> x = Inputs(n, 11);
      if (n) {
        size_t at = n - 1 - n / 3;
        if (special == 1) x[at] = -inf;
        if (special == 2) x[at] = nan;
        if (special == 3) x[at] = -std::numeric_limits<float>::max();
        if (special == 4) for (auto &v : x) v = -0.0f;
      }
      DeviceFloats dx(x, 0);
      ASSERT_CUDA(dx.error());
      ASSERT_CUDA(cudaMemset(word.get(), 0xAB, sizeof(uint32_t)));
      ASSERT_EQ(lh_cuda_qz_max_abs_bits(dx.get(), n, static_cast<uint32_t *>(word.get()), nullptr), 0);
      uint32_t got = 0;
      ASSERT_CUDA(cudaMemcpy(&got, word.get(), sizeof got, cudaMemcpyDeviceToHost));
      EXPECT_EQ(got, lh_qz_max_abs_bits(x.data(), n));
    }
  }
}

// ---- frames and decodes -----------------------------------------------------------------------

// Host data and device data (aligned and not) through separate contexts of the same codec:
// the same frame; that frame decoded and accumulated into host and device memory: the same
// bits; the device input untouched.
TEST(CodecDevice, FramesAndDecodesMatchHost) {
  for (const Case &k : AllCases())
    for (size_t n : kSizes)
      for (size_t offset : {size_t{0}, size_t{1}}) {
        if (offset && n > 100003)
          continue;
        SCOPED_TRACE(k.name + ", n " + std::to_string(n) + ", offset " + std::to_string(offset));
        Codec host(k.id), dev(k.id);
        ASSERT_NO_FATAL_FAILURE(Configure(host.c, k, n));
        ASSERT_NO_FATAL_FAILURE(Configure(dev.c, k, n));
        std::vector<float> x = Inputs(n, static_cast<uint32_t>(n + 3 * k.id));
        DeviceFloats dx(x, offset);
        ASSERT_CUDA(dx.error());
        if (k.id == LH_CODEC_SHAREDQ) {
          ASSERT_NO_FATAL_FAILURE(ShareScales(host.c, dev.c, x, dx.get()));
        }

        lh_status st;
        std::vector<uint8_t> fh = Encode(host.c, x.data(), n, &st);
        ASSERT_EQ(st, LH_SUCCESS) << lh_last_error();
        std::vector<uint8_t> fd = Encode(dev.c, dx.get(), n, &st);
        ASSERT_EQ(st, LH_SUCCESS) << lh_last_error();
        ASSERT_TRUE(SameBytesAsHost(fh, fd, "frame"));
        std::vector<float> after;
        ASSERT_CUDA(dx.Read(&after));
        ASSERT_TRUE(SameBits(x, after, "device input after encode"));

        // Decode into host and device memory (poisoned: every element must be written).
        std::vector<float> yh(n), poison(n);
        std::memset(poison.data(), 0xFF, n * sizeof(float));
        ASSERT_LH(lh_codec_decode(host.c, fh.data(), fh.size(), yh.data(), n));
        DeviceFloats dy(poison, offset);
        ASSERT_CUDA(dy.error());
        ASSERT_LH(lh_codec_decode(dev.c, fh.data(), fh.size(), dy.get(), n));
        std::vector<float> yd;
        ASSERT_CUDA(dy.Read(&yd));
        ASSERT_TRUE(SameBits(yh, yd, "decode"));

        // Accumulate onto the same base values in both memories.
        std::vector<float> acch = Inputs(n, 999);
        DeviceFloats dacc(acch, offset);
        ASSERT_CUDA(dacc.error());
        ASSERT_LH(lh_codec_decode_accumulate(host.c, fh.data(), fh.size(), acch.data(), n));
        ASSERT_LH(lh_codec_decode_accumulate(dev.c, fh.data(), fh.size(), dacc.get(), n));
        std::vector<float> accd;
        ASSERT_CUDA(dacc.Read(&accd));
        ASSERT_TRUE(SameBits(acch, accd, "decode_accumulate"));

        // The one-shot round trip takes device memory too.
        if (n > 0 && n % 64 != 0 && k.params.empty() && k.id != LH_CODEC_SHAREDQ) {
          std::vector<float> rh(n);
          size_t wh = 0, wd = 0;
          ASSERT_LH(lh_codec_roundtrip(k.id, x.data(), rh.data(), n, &wh));
          DeviceFloats dr(poison, 0);
          ASSERT_CUDA(dr.error());
          ASSERT_LH(lh_codec_roundtrip(k.id, dx.get(), dr.get(), n, &wd));
          std::vector<float> rd;
          ASSERT_CUDA(dr.Read(&rd));
          EXPECT_EQ(wh, wd);
          ASSERT_TRUE(SameBits(rh, rd, "lh_codec_roundtrip"));
        }
      }
}

// Error feedback runs on a host copy of device data; over several steps the frames and the
// residuals (host memory, lh_codec_residual) stay those of the host path.
TEST(CodecDevice, ErrorFeedbackMatchesHost) {
  for (const Case &k : AllCases()) {
    if (k.id == LH_CODEC_NONE)
      continue;  // lossless: no error feedback parameter
    const size_t n = 4096 * 3 + 17;
    SCOPED_TRACE(k.name);
    Codec host(k.id), dev(k.id);
    ASSERT_NO_FATAL_FAILURE(Configure(host.c, k, n));
    ASSERT_NO_FATAL_FAILURE(Configure(dev.c, k, n));
    ASSERT_LH(lh_codec_set_param(host.c, LH_CP_ERROR_FEEDBACK, 1));
    ASSERT_LH(lh_codec_set_param(dev.c, LH_CP_ERROR_FEEDBACK, 1));
    for (uint64_t step = 0; step < 3; step++) {
      SCOPED_TRACE("step " + std::to_string(step));
      ASSERT_LH(lh_codec_set_key(host.c, 5, step, 0));
      ASSERT_LH(lh_codec_set_key(dev.c, 5, step, 0));
      std::vector<float> x = Inputs(n, static_cast<uint32_t>(100 + step));
      DeviceFloats dx(x, 0);
      ASSERT_CUDA(dx.error());
      if (k.id == LH_CODEC_SHAREDQ) {
        // Scales with headroom for x + e: twice the local max of x.
        size_t count = lh_codec_scale_count(host.c, n);
        std::vector<float> s(count);
        ASSERT_LH(lh_codec_local_scales(host.c, x.data(), n, s.data()));
        for (auto &v : s)
          v *= 2.0f;
        ASSERT_LH(lh_codec_set_scales(host.c, s.data(), count));
        ASSERT_LH(lh_codec_set_scales(dev.c, s.data(), count));
      }
      lh_status st;
      std::vector<uint8_t> fh = Encode(host.c, x.data(), n, &st);
      ASSERT_EQ(st, LH_SUCCESS) << lh_last_error();
      std::vector<uint8_t> fd = Encode(dev.c, dx.get(), n, &st);
      ASSERT_EQ(st, LH_SUCCESS) << lh_last_error();
      ASSERT_TRUE(SameBytesAsHost(fh, fd, "frame"));
      const float *eh = nullptr, *ed = nullptr;
      size_t nh = 0, nd = 0;
      ASSERT_LH(lh_codec_residual(host.c, &eh, &nh));
      ASSERT_LH(lh_codec_residual(dev.c, &ed, &nd));
      ASSERT_EQ(nh, nd);
      ASSERT_TRUE(SameBits(std::vector<float>(eh, eh + nh), std::vector<float>(ed, ed + nd), "residual"));
    }
  }
}

// ---- refusals ------------------------------------------------------------------------------------

// What the host path refuses, device data is refused for alike: same status, same message,
// nothing written to the frame, and the residual (error feedback) unchanged.
TEST(CodecDevice, RefusesBadInputLikeHost) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  struct Bad {
    const char *name;
    float value;
    std::vector<std::pair<lh_codec_param, int>> params;
  };
  const Bad bads[] = {
      {"NaN", nan, {}},
      {"-inf", -inf, {}},
      {"70000 under fp16 scales", 70000.0f, {{LH_CP_SCALE_TYPE, LH_SCALE_FP16}}},
      {"3e38 (sign's scale bound)", 3e38f, {}},
  };
  const lh_codec_id ids[] = {LH_CODEC_FP16, LH_CODEC_BF16, LH_CODEC_BLOCKQ, LH_CODEC_SIGN, LH_CODEC_TOPK,
                             LH_CODEC_RANDK, LH_CODEC_POWERSGD, LH_CODEC_NONE};
  const size_t n = 1000;
  for (const Bad &bad : bads)
    for (lh_codec_id id : ids)
      for (int ef = 0; ef < 2; ef++) {
        if (!bad.params.empty() && id != LH_CODEC_BLOCKQ && id != LH_CODEC_SIGN)
          continue;
        if (ef && id == LH_CODEC_NONE)
          continue;
        SCOPED_TRACE(std::string(bad.name) + ", codec " + std::to_string(id) + (ef ? ", error feedback" : ""));
        Codec host(id), dev(id);
        for (lh_codec *c : {host.c, dev.c}) {
          for (const auto &p : bad.params) {
            ASSERT_LH(lh_codec_set_param(c, p.first, p.second));
          }
          if (ef) {
            ASSERT_LH(lh_codec_set_param(c, LH_CP_ERROR_FEEDBACK, 1));
          }
        }
        std::vector<float> x = Inputs(n, 7);
        x[777] = bad.value;
        if (bad.value == 3e38f)
          for (size_t i = 768; i < 896; i++)
            x[i] = 3e38f;  // one whole block of huge values: its mean may overflow
        DeviceFloats dx(x, 0);
        ASSERT_CUDA(dx.error());
        size_t cap = lh_codec_max_wire_bytes(host.c, n);
        std::vector<uint8_t> wh(cap, 0xEE), wd(cap, 0xEE);
        size_t uh = 7, ud = 7;
        lh_status sh = lh_codec_encode(host.c, x.data(), n, wh.data(), cap, &uh);
        std::string mh = lh_last_error();
        lh_status sd = lh_codec_encode(dev.c, dx.get(), n, wd.data(), cap, &ud);
        std::string md = lh_last_error();
        EXPECT_EQ(sh, sd) << "host: " << mh << "; device: " << md;
        if (sh != LH_SUCCESS) {
          EXPECT_EQ(mh, md);
          EXPECT_EQ(ud, 0u);
        } else {
          EXPECT_EQ(uh, ud);
        }
        EXPECT_TRUE(SameBytesAsHost(wh, wd, "frame (or untouched buffer)"));
        if (ef) {
          const float *eh = nullptr, *ed = nullptr;
          size_t nh = 0, nd = 0;
          ASSERT_LH(lh_codec_residual(host.c, &eh, &nh));
          ASSERT_LH(lh_codec_residual(dev.c, &ed, &nd));
          ASSERT_EQ(nh, nd);
          EXPECT_TRUE(SameBits(std::vector<float>(eh, eh + nh), std::vector<float>(ed, ed + nd), "residual"));
        }
      }
}

// Rewrites the frame's CRC after an edit of its payload, so the payload checks are reached.
void Reseal(std::vector<uint8_t> &frame) {
  uint32_t wire = 0;
  std::memcpy(&wire, frame.data() + 52, sizeof wire);
  lh_frame_seal(frame.data(), wire);
}

// A corrupt payload (or frame) is refused before the device memory is touched: the same status
// as the host path, and the poisoned device output unchanged.
TEST(CodecDevice, RefusesCorruptFramesWithoutWriting) {
  struct Corruption {
    std::string name;
    lh_codec_id id;
    std::vector<std::pair<lh_codec_param, int>> params;
    void (*edit)(std::vector<uint8_t> &frame);
    lh_status want;
  };
  const Corruption cases[] = {
      {"flipped payload bit", LH_CODEC_BLOCKQ, {}, [](std::vector<uint8_t> &f) { f[100] ^= 0x10; }, LH_ERR_CORRUPT},
      {"blockq NaN scale", LH_CODEC_BLOCKQ, {},
       [](std::vector<uint8_t> &f) { const uint32_t nan = 0x7FC00000u; std::memcpy(f.data() + 64 + 4 * 3, &nan, 4); Reseal(f); },
       LH_ERR_CORRUPT},
      {"blockq negative fp16 scale", LH_CODEC_BLOCKQ, {{LH_CP_SCALE_TYPE, LH_SCALE_FP16}},
       [](std::vector<uint8_t> &f) { f[64 + 2 * 5 + 1] |= 0x80; f[64 + 2 * 5] |= 1; Reseal(f); }, LH_ERR_CORRUPT},
      {"sign infinite scale", LH_CODEC_SIGN, {},
       [](std::vector<uint8_t> &f) { const uint32_t inf = 0x7F800000u; std::memcpy(f.data() + 64 + 4, &inf, 4); Reseal(f); },
       LH_ERR_CORRUPT},
      {"topk index out of order", LH_CODEC_TOPK, {},
       [](std::vector<uint8_t> &f) { std::swap(f[64 + 2], f[64 + 4]); std::swap(f[64 + 3], f[64 + 5]); Reseal(f); },
       LH_ERR_CORRUPT},
      {"topk index outside its chunk", LH_CODEC_TOPK, {},
       [](std::vector<uint8_t> &f) { f[64 + 2 * 40] = 0xFF; f[64 + 2 * 40 + 1] = 0xFF; Reseal(f); }, LH_ERR_CORRUPT},
      {"truncated frame", LH_CODEC_FP16, {}, [](std::vector<uint8_t> &f) { f.resize(f.size() - 2); }, LH_ERR_CORRUPT},
  };
  const size_t n = 10000;
  for (const Corruption &k : cases)
    for (int acc = 0; acc < 2; acc++) {
      SCOPED_TRACE(k.name + (acc ? ", accumulate" : ""));
      Codec c(k.id);
      for (const auto &p : k.params) {
        ASSERT_LH(lh_codec_set_param(c.c, p.first, p.second));
      }
      std::vector<float> x = Inputs(n, 5);
      lh_status st;
      std::vector<uint8_t> frame = Encode(c.c, x.data(), n, &st);
      ASSERT_EQ(st, LH_SUCCESS) << lh_last_error();
      k.edit(frame);
      std::vector<float> yh(n, 1.5f), poison(n);
      std::memset(poison.data(), 0xAB, n * sizeof(float));
      lh_status sh = acc ? lh_codec_decode_accumulate(c.c, frame.data(), frame.size(), yh.data(), n)
                         : lh_codec_decode(c.c, frame.data(), frame.size(), yh.data(), n);
      std::string mh = lh_last_error();
      EXPECT_EQ(sh, k.want) << mh;
      DeviceFloats dy(poison, 0);
      ASSERT_CUDA(dy.error());
      lh_status sd = acc ? lh_codec_decode_accumulate(c.c, frame.data(), frame.size(), dy.get(), n)
                         : lh_codec_decode(c.c, frame.data(), frame.size(), dy.get(), n);
      EXPECT_EQ(sd, sh) << lh_last_error();
      EXPECT_EQ(std::string(lh_last_error()), mh);
      std::vector<float> after;
      ASSERT_CUDA(dy.Read(&after));
      EXPECT_TRUE(SameBits(poison, after, "device output of a refused frame"));
    }
}

// Managed memory counts as device memory and gives the same frames.
TEST(CodecDevice, ManagedMemory) {
  const size_t n = 5000;
  std::vector<float> x = Inputs(n, 3);
  float *m = nullptr;
  ASSERT_CUDA(cudaMallocManaged(&m, n * sizeof(float)));
  std::memcpy(m, x.data(), n * sizeof(float));
  for (lh_codec_id id : {LH_CODEC_BLOCKQ, LH_CODEC_TOPK, LH_CODEC_RANDK}) {
    SCOPED_TRACE("codec " + std::to_string(id));
    Codec host(id), dev(id);
    lh_status st;
    std::vector<uint8_t> fh = Encode(host.c, x.data(), n, &st);
    EXPECT_EQ(st, LH_SUCCESS) << lh_last_error();
    std::vector<uint8_t> fd = Encode(dev.c, m, n, &st);
    EXPECT_EQ(st, LH_SUCCESS) << lh_last_error();
    EXPECT_TRUE(SameBytesAsHost(fh, fd, "frame from managed memory"));
  }
  cudaFree(m);
}

}  // namespace

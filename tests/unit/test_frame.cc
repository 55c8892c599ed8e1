// The wire frame and its checksum: every way a frame can be broken is refused with
// LH_ERR_CORRUPT and a message naming what was wrong.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "compress/compress_internal.h"

namespace {

TEST(Crc32c, KnownVectors) {
  // The check value of CRC-32C (RFC 3720, appendix B.4): "123456789" -> 0xE3069283.
  EXPECT_EQ(lh_crc32c(0, "123456789", 9), 0xE3069283u);
  EXPECT_EQ(lh_crc32c_portable(0, "123456789", 9), 0xE3069283u);
  // 32 bytes of zeros and of 0xFF (RFC 3720 B.4).
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xFF);
  EXPECT_EQ(lh_crc32c(0, zeros.data(), 32), 0x8A9136AAu);
  EXPECT_EQ(lh_crc32c(0, ones.data(), 32), 0x62A8AB43u);
  EXPECT_EQ(lh_crc32c(0, nullptr, 0), 0u);
}

TEST(Crc32c, HardwareAndTableAgreeAndChain) {
  std::mt19937 rng(7);
  std::vector<uint8_t> data(5008);  // room for the largest length at the largest offset
  for (auto &b : data)
    b = (uint8_t)rng();
  for (size_t len : {0, 1, 7, 8, 9, 63, 64, 65, 1000, 4999}) {
    for (size_t off : {0, 1, 3}) {
      uint32_t a = lh_crc32c(0, data.data() + off, len), b = lh_crc32c_portable(0, data.data() + off, len);
      EXPECT_EQ(a, b) << "len " << len << " offset " << off;
      // Continuing a CRC over a split gives the CRC of the whole.
      size_t cut = len / 3;
      EXPECT_EQ(lh_crc32c(lh_crc32c(0, data.data() + off, cut), data.data() + off + cut, len - cut), a);
    }
  }
}

// A sealed frame of a NONE payload of `n` floats.
std::vector<uint8_t> MakeFrame(size_t n) {
  std::vector<uint8_t> f(LH_FRAME_HEADER_BYTES + 4 * n);
  lh_frame_header h{};
  h.codec = LH_CODEC_NONE;
  h.count = n;
  h.raw_bytes = h.wire_bytes = (uint32_t)(4 * n);
  h.step = 0x0102030405060708ull;
  h.seed_lo = 99;
  for (size_t i = 0; i < 4 * n; i++)
    f[LH_FRAME_HEADER_BYTES + i] = (uint8_t)(i * 31 + 5);
  lh_frame_write_header(&h, f.data());
  lh_frame_seal(f.data(), 4 * n);
  return f;
}

lh_status Parse(const std::vector<uint8_t> &f, size_t bytes, lh_frame_header *h) {
  return lh_frame_parse(f.data(), bytes, h);
}

TEST(Frame, RoundTripsEveryField) {
  std::vector<uint8_t> f(LH_FRAME_HEADER_BYTES + 10);
  lh_frame_header h{};
  h.codec = LH_CODEC_BLOCKQ;
  h.bits = 3;
  h.scale_type = 1;
  h.rounding = 1;
  h.topk_method = 1;
  h.error_feedback = 1;
  h.zstd_level = 19;
  h.rank = 0xBEEF;
  h.block = 0x11223344;
  h.chunk = 0x55667788;
  h.k = 0x99AABBCC;
  h.rows = 0xDDEEFF00;
  h.count = 0x0123456789ABCDEFull;
  h.step = 0xFEDCBA9876543210ull;
  h.raw_bytes = h.wire_bytes = 10;
  h.seed_lo = 0xCAFEF00D;
  lh_frame_write_header(&h, f.data());
  lh_frame_seal(f.data(), 10);
  EXPECT_EQ(std::memcmp(f.data(), "LHCF", 4), 0) << "the magic reads LHCF in a hex dump";
  lh_frame_header g{};
  ASSERT_EQ(lh_frame_parse(f.data(), f.size(), &g), LH_SUCCESS) << lh_last_error();
  EXPECT_EQ(g.version, LH_FRAME_VERSION);
  EXPECT_EQ(g.header_bytes, LH_FRAME_HEADER_BYTES);
  EXPECT_EQ(g.codec, h.codec);
  EXPECT_EQ(g.bits, 3);
  EXPECT_EQ(g.scale_type, 1);
  EXPECT_EQ(g.rounding, 1);
  EXPECT_EQ(g.topk_method, 1);
  EXPECT_EQ(g.error_feedback, 1);
  EXPECT_EQ(g.zstd_level, 19);
  EXPECT_EQ(g.rank, 0xBEEF);
  EXPECT_EQ(g.block, h.block);
  EXPECT_EQ(g.chunk, h.chunk);
  EXPECT_EQ(g.k, h.k);
  EXPECT_EQ(g.rows, h.rows);
  EXPECT_EQ(g.count, h.count);
  EXPECT_EQ(g.step, h.step);
  EXPECT_EQ(g.seed_lo, h.seed_lo);
  EXPECT_EQ(g.raw_bytes, 10u);
  EXPECT_EQ(g.wire_bytes, 10u);
}

TEST(Frame, EveryTruncationIsRefused) {
  auto f = MakeFrame(5);
  lh_frame_header h;
  ASSERT_EQ(Parse(f, f.size(), &h), LH_SUCCESS);
  for (size_t len = 0; len < f.size(); len++) {
    EXPECT_EQ(Parse(f, len, &h), LH_ERR_CORRUPT) << "length " << len;
    EXPECT_NE(std::string(lh_last_error()).find(len < LH_FRAME_HEADER_BYTES ? "shorter" : "truncated"),
              std::string::npos) << lh_last_error();
  }
  std::vector<uint8_t> longer = f;
  longer.push_back(0);
  EXPECT_EQ(Parse(longer, longer.size(), &h), LH_ERR_CORRUPT);
  EXPECT_NE(std::string(lh_last_error()).find("trailing"), std::string::npos);
}

TEST(Frame, EverySingleBitFlipIsRefused) {
  auto f = MakeFrame(6);
  lh_frame_header h;
  for (size_t byte = 0; byte < f.size(); byte++) {
    for (int bit = 0; bit < 8; bit++) {
      auto g = f;
      g[byte] ^= (uint8_t)(1u << bit);
      EXPECT_EQ(Parse(g, g.size(), &h), LH_ERR_CORRUPT) << "byte " << byte << " bit " << bit;
    }
  }
}

// Fields that are wrong even though the checksum is right (a sender that is not us).
TEST(Frame, ResealedBadFieldsAreNamed) {
  struct Case {
    size_t offset;
    uint8_t value;
    const char *says;
  } cases[] = {{4, 2, "version 2"}, {5, LH_CODEC_COUNT, "unknown codec"}, {6, 0x80, "unknown flag"},
               {7, 32, "header size"}, {0, 'X', "magic"}};
  for (const Case &c : cases) {
    auto f = MakeFrame(3);
    f[c.offset] = c.value;
    lh_frame_seal(f.data(), 12);
    lh_frame_header h;
    EXPECT_EQ(Parse(f, f.size(), &h), LH_ERR_CORRUPT) << c.says;
    EXPECT_NE(std::string(lh_last_error()).find(c.says), std::string::npos) << lh_last_error();
  }
  // Raw and wire lengths must agree for an uncompressed payload.
  auto f = MakeFrame(3);
  f[48] = 13;
  lh_frame_seal(f.data(), 12);
  lh_frame_header h;
  EXPECT_EQ(Parse(f, f.size(), &h), LH_ERR_CORRUPT);
  EXPECT_NE(std::string(lh_last_error()).find("not compressed"), std::string::npos) << lh_last_error();
}

TEST(Frame, InspectReadsWithoutDecoding) {
  auto f = MakeFrame(4);
  lh_codec_id id = LH_CODEC_COUNT;
  uint64_t count = 0;
  size_t payload = 0;
  ASSERT_EQ(lh_frame_inspect(f.data(), f.size(), &id, &count, &payload), LH_SUCCESS);
  EXPECT_EQ(id, LH_CODEC_NONE);
  EXPECT_EQ(count, 4u);
  EXPECT_EQ(payload, 16u);
  EXPECT_EQ(lh_frame_inspect(f.data(), f.size(), nullptr, nullptr, nullptr), LH_SUCCESS);
  EXPECT_EQ(lh_frame_inspect(nullptr, 10, &id, &count, &payload), LH_ERR_INVALID_ARGUMENT);
  f[70] ^= 1;
  EXPECT_EQ(lh_frame_inspect(f.data(), f.size(), &id, &count, &payload), LH_ERR_CORRUPT);
}

}  // namespace

// The AQ-SGD buffer stores (include/longhaul/aqsgd.h "buffer stores", lib/aqsgd/store*.c):
// config refusals with their messages, the id -> row map and visit counts, refusals of bad and
// repeated ids, "store full" that changes nothing, visit-only stores, reading rows back, the
// MMAP kind's file (contents, removal, bad paths, a large sparse or reserved file), claims by
// contexts, and DEVICE refused where there is no CUDA device.
#include <gtest/gtest.h>

#include <longhaul/aqsgd.h>

#include "aqsgd/store_internal.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it at the end.
struct TempDir {
  TempDir() {
    const char *base = getenv("TMPDIR");
    std::string templ = std::string(base && *base ? base : "/tmp") + "/lh_aq_store_XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    if (mkdtemp(buf.data()))
      path = buf.data();
  }
  ~TempDir() {
    std::error_code ec;
    if (!path.empty())
      fs::remove_all(path, ec);
  }
  std::string File(const char *name) const { return path + "/" + name; }
  std::string path;
};

bool Contains(const std::string &text, const std::string &part) { return text.find(part) != std::string::npos; }

// A deterministic byte of row `id`'s buffer.
uint8_t Pattern(int64_t id, size_t j) { return (uint8_t)(id * 131 + j * 7 + 1); }

lh_aq_store_config HostConfig(size_t examples, size_t capacity, size_t row_bytes) {
  lh_aq_store_config c = LH_AQ_STORE_CONFIG_INIT;
  c.examples = examples;
  c.capacity = capacity;
  c.row_bytes = row_bytes;
  return c;
}

// Creation expected to fail: the status, a NULL store, and each `parts` in the message.
void ExpectRefused(const lh_aq_store_config *c, lh_status want, std::vector<std::string> parts) {
  lh_aq_store s = reinterpret_cast<lh_aq_store>(0x1);  // must be reset to NULL
  EXPECT_EQ(lh_aq_store_create(c, &s), want);
  EXPECT_EQ(s, nullptr);
  std::string msg = lh_last_error();
  for (const auto &p : parts)
    EXPECT_TRUE(Contains(msg, p)) << "message \"" << msg << "\" lacks \"" << p << "\"";
  if (s && s != reinterpret_cast<lh_aq_store>(0x1))
    lh_aq_store_free(s);
}

struct Store {
  explicit Store(const lh_aq_store_config &c) {
    EXPECT_EQ(lh_aq_store_create(&c, &s), LH_SUCCESS) << lh_last_error();
  }
  ~Store() { EXPECT_EQ(lh_aq_store_free(s), LH_SUCCESS) << lh_last_error(); }
  Store(const Store &) = delete;
  Store &operator=(const Store &) = delete;
  lh_aq_store_info Info() const {
    lh_aq_store_info i = LH_AQ_STORE_INFO_INIT;
    EXPECT_EQ(lh_aq_store_get_info(s, &i), LH_SUCCESS) << lh_last_error();
    return i;
  }
  std::vector<int64_t> Assign(std::vector<int64_t> ids) {
    std::vector<int64_t> slots(ids.size(), -7);
    EXPECT_EQ(lh_aq_store_assign(s, ids.data(), ids.size(), slots.data()), LH_SUCCESS) << lh_last_error();
    return slots;
  }
  std::vector<int64_t> Slots(std::vector<int64_t> ids) {
    std::vector<int64_t> slots(ids.size(), -7);
    EXPECT_EQ(lh_aq_store_lookup(s, ids.data(), ids.size(), slots.data(), nullptr), LH_SUCCESS) << lh_last_error();
    return slots;
  }
  uint32_t Visits(int64_t id) {
    uint32_t v = 12345;
    EXPECT_EQ(lh_aq_store_visits(s, id, &v), LH_SUCCESS) << lh_last_error();
    return v;
  }
  uint8_t *Row(int64_t slot) { return static_cast<uint8_t *>(s->base) + (size_t)slot * s->config.row_bytes; }
  lh_aq_store s = nullptr;
};

// ---- config ------------------------------------------------------------------------------

TEST(AqStoreConfig, RefusalsNameTheBadValue) {
  lh_aq_store s = nullptr;
  EXPECT_EQ(lh_aq_store_create(nullptr, &s), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "LH_AQ_STORE_CONFIG_INIT"));
  lh_aq_store_config ok = HostConfig(10, 0, 8);
  EXPECT_EQ(lh_aq_store_create(&ok, nullptr), LH_ERR_INVALID_ARGUMENT);

  lh_aq_store_config c = ok;
  c.size = sizeof c - 8;
  ExpectRefused(&c, LH_ERR_INVALID_ARGUMENT, {"config->size is " + std::to_string(sizeof c - 8), "expected"});

  c = ok;
  c.examples = 0;
  ExpectRefused(&c, LH_ERR_INVALID_ARGUMENT, {"examples is 0"});

  c = ok;
  c.capacity = 11;
  ExpectRefused(&c, LH_ERR_INVALID_ARGUMENT, {"capacity 11", "examples 10"});

  c = ok;
  c.kind = static_cast<lh_aq_store_kind>(7);
  ExpectRefused(&c, LH_ERR_INVALID_ARGUMENT, {"unknown kind 7", "LH_AQ_STORE_MMAP"});

  c = ok;
  c.kind = LH_AQ_STORE_MMAP;
  ExpectRefused(&c, LH_ERR_INVALID_ARGUMENT, {"MMAP", "path"});
  c.path = "";
  ExpectRefused(&c, LH_ERR_INVALID_ARGUMENT, {"MMAP", "path"});

  // capacity x row_bytes beyond size_t is refused before anything is allocated.
  c = ok;
  c.examples = c.capacity = size_t(1) << 40;
  c.row_bytes = size_t(1) << 30;
  ExpectRefused(&c, LH_ERR_INVALID_ARGUMENT, {"capacity 1099511627776", "row_bytes 1073741824", "overflows"});
}

TEST(AqStoreConfig, CapacityDefaultsToExamplesAndInfoReportsSizes) {
  Store st(HostConfig(100, 0, 48));
  ASSERT_NE(st.s, nullptr);
  lh_aq_store_info i = st.Info();
  EXPECT_EQ(i.kind, LH_AQ_STORE_HOST);
  EXPECT_EQ(i.examples, 100u);
  EXPECT_EQ(i.capacity, 100u);
  EXPECT_EQ(i.row_bytes, 48u);
  EXPECT_EQ(i.rows_used, 0u);
  EXPECT_EQ(i.buffer_bytes, 4800u);
  EXPECT_GE(i.metadata_bytes, 100u * (sizeof(int64_t) + sizeof(uint32_t)));

  lh_aq_store_info bad = LH_AQ_STORE_INFO_INIT;
  bad.size = 3;
  EXPECT_EQ(lh_aq_store_get_info(st.s, &bad), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "info->size is 3"));
  EXPECT_EQ(lh_aq_store_get_info(st.s, nullptr), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_aq_store_free(nullptr), LH_SUCCESS);
}

TEST(AqStoreConfig, DeviceNeedsCudaAndADevice) {
  lh_build_features f = LH_BUILD_FEATURES_INIT;
  ASSERT_EQ(lh_build_info(&f), LH_SUCCESS);
  lh_aq_store_config c = HostConfig(8, 0, 64);
  c.kind = LH_AQ_STORE_DEVICE;
  lh_aq_store s = nullptr;
  lh_status st = lh_aq_store_create(&c, &s);
  if (!f.has_cuda) {
    EXPECT_EQ(st, LH_ERR_NOT_SUPPORTED);
    EXPECT_EQ(s, nullptr);
    EXPECT_TRUE(Contains(lh_last_error(), "built without")) << lh_last_error();
    return;
  }
  if (st == LH_ERR_NOT_SUPPORTED) {  // a CUDA build on a machine without a device
    EXPECT_EQ(s, nullptr);
    EXPECT_TRUE(Contains(lh_last_error(), "device")) << lh_last_error();
    return;
  }
  ASSERT_EQ(st, LH_SUCCESS) << lh_last_error();
  int64_t id = 5, slot = -1;
  ASSERT_EQ(lh_aq_store_assign(s, &id, 1, &slot), LH_SUCCESS) << lh_last_error();
  std::vector<uint8_t> row(64, 0xAB);
  ASSERT_EQ(lh_aq_store_read_row(s, id, row.data(), row.size()), LH_SUCCESS) << lh_last_error();
  EXPECT_EQ(row, std::vector<uint8_t>(64, 0));  // device rows start zeroed too
  EXPECT_EQ(lh_aq_store_free(s), LH_SUCCESS);
}

// ---- ids, rows, visits ----------------------------------------------------------------------

TEST(AqStore, LookupAssignAndVisits) {
  Store st(HostConfig(10, 0, 16));
  ASSERT_NE(st.s, nullptr);
  std::vector<int64_t> ids{3, 7, 1};
  std::vector<uint32_t> visits(3, 99);
  std::vector<int64_t> slots(3, 99);
  ASSERT_EQ(lh_aq_store_lookup(st.s, ids.data(), 3, slots.data(), visits.data()), LH_SUCCESS);
  EXPECT_EQ(slots, (std::vector<int64_t>{-1, -1, -1}));
  EXPECT_EQ(visits, (std::vector<uint32_t>{0, 0, 0}));
  EXPECT_EQ(st.Info().rows_used, 0u);  // lookup gives no rows

  // Rows are given in order of first use and kept.
  EXPECT_EQ(st.Assign({3, 7, 1}), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(st.Assign({7, 5}), (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(st.Slots({1, 5, 0, 3}), (std::vector<int64_t>{2, 3, -1, 0}));
  EXPECT_EQ(st.Info().rows_used, 4u);
  // Outputs may be NULL, and an empty call is fine.
  EXPECT_EQ(lh_aq_store_lookup(st.s, ids.data(), 3, nullptr, nullptr), LH_SUCCESS);
  EXPECT_EQ(lh_aq_store_assign(st.s, ids.data(), 3, nullptr), LH_SUCCESS);
  EXPECT_EQ(lh_aq_store_assign(st.s, nullptr, 0, nullptr), LH_SUCCESS);

  // Visits: counted per id, read back per id and through lookup; the same ids may come again
  // in the next call (distinct only within a call).
  std::vector<int64_t> a{3, 7}, b{7};
  lh_aq_store_count_visits(st.s, a.data(), a.size());
  lh_aq_store_count_visits(st.s, b.data(), b.size());
  lh_aq_store_count_visits(st.s, b.data(), b.size());
  EXPECT_EQ(st.Visits(3), 1u);
  EXPECT_EQ(st.Visits(7), 3u);
  EXPECT_EQ(st.Visits(1), 0u);
  EXPECT_EQ(st.Visits(9), 0u);
  ASSERT_EQ(lh_aq_store_lookup(st.s, ids.data(), 3, nullptr, visits.data()), LH_SUCCESS);
  EXPECT_EQ(visits, (std::vector<uint32_t>{1, 3, 0}));

  // Saturates instead of wrapping to 0 (which would mean "send at full precision").
  st.s->visits[9] = UINT32_MAX - 1;
  int64_t nine = 9;
  lh_aq_store_count_visits(st.s, &nine, 1);
  lh_aq_store_count_visits(st.s, &nine, 1);
  EXPECT_EQ(st.Visits(9), UINT32_MAX);
}

TEST(AqStore, OutOfRangeIdsAreRefusedWithIdAndPosition) {
  Store st(HostConfig(10, 0, 4));
  ASSERT_NE(st.s, nullptr);
  for (int64_t bad : {int64_t(-1), int64_t(10), INT64_MAX, INT64_MIN}) {
    std::vector<int64_t> ids{2, 4, bad};
    std::vector<int64_t> slots(3, -7);
    EXPECT_EQ(lh_aq_store_assign(st.s, ids.data(), 3, slots.data()), LH_ERR_INVALID_ARGUMENT);
    std::string msg = lh_last_error();
    EXPECT_TRUE(Contains(msg, "id " + std::to_string(bad) + " (position 2)")) << msg;
    EXPECT_TRUE(Contains(msg, "0 .. 9")) << msg;
    EXPECT_EQ(lh_aq_store_lookup(st.s, ids.data(), 3, nullptr, nullptr), LH_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(lh_aq_store_prefetch(st.s, ids.data(), 3), LH_ERR_INVALID_ARGUMENT);
    EXPECT_TRUE(Contains(lh_last_error(), "lh_aq_store_prefetch")) << lh_last_error();
    uint32_t v = 0;
    EXPECT_EQ(lh_aq_store_visits(st.s, bad, &v), LH_ERR_INVALID_ARGUMENT);
    std::vector<uint8_t> row(4);
    EXPECT_EQ(lh_aq_store_read_row(st.s, bad, row.data(), row.size()), LH_ERR_INVALID_ARGUMENT);
  }
  EXPECT_EQ(st.Info().rows_used, 0u);  // nothing given to the good ids of a refused call
  EXPECT_EQ(st.Slots({2, 4}), (std::vector<int64_t>{-1, -1}));
  std::vector<int64_t> one{1};
  EXPECT_EQ(lh_aq_store_lookup(st.s, nullptr, 1, nullptr, nullptr), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_aq_store_lookup(nullptr, one.data(), 1, nullptr, nullptr), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_aq_store_visits(st.s, 1, nullptr), LH_ERR_INVALID_ARGUMENT);
}

TEST(AqStore, DuplicateIdsNameTheIdAndBothPositions) {
  Store st(HostConfig(1000, 0, 8));
  ASSERT_NE(st.s, nullptr);
  std::vector<int64_t> ids{4, 2, 9, 4};
  EXPECT_EQ(lh_aq_store_assign(st.s, ids.data(), ids.size(), nullptr), LH_ERR_INVALID_ARGUMENT);
  std::string msg = lh_last_error();
  EXPECT_TRUE(Contains(msg, "id 4")) << msg;
  EXPECT_TRUE(Contains(msg, "positions 0 and 3")) << msg;
  EXPECT_EQ(st.Info().rows_used, 0u);
  EXPECT_EQ(lh_aq_store_lookup(st.s, ids.data(), ids.size(), nullptr, nullptr), LH_ERR_INVALID_ARGUMENT);

  // A long call with the repeat far apart, then many calls reusing the same ids: every call
  // starts a fresh check, so only a repeat within one call counts.
  std::vector<int64_t> many(1000);
  for (size_t i = 0; i < many.size(); i++)
    many[i] = (int64_t)((i * 7919) % 1000);  // a permutation of 0..999
  for (int round = 0; round < 50; round++)
    ASSERT_EQ(lh_aq_store_assign(st.s, many.data(), many.size(), nullptr), LH_SUCCESS) << lh_last_error();
  EXPECT_EQ(st.Info().rows_used, 1000u);
  many[998] = many[1];
  EXPECT_EQ(lh_aq_store_lookup(st.s, many.data(), many.size(), nullptr, nullptr), LH_ERR_INVALID_ARGUMENT);
  msg = lh_last_error();
  EXPECT_TRUE(Contains(msg, "id " + std::to_string(many[1]))) << msg;
  EXPECT_TRUE(Contains(msg, "positions 1 and 998")) << msg;
}

TEST(AqStore, StoreFullIsAllOrNothing) {
  Store st(HostConfig(10, 4, 8));
  ASSERT_NE(st.s, nullptr);
  EXPECT_EQ(st.Info().buffer_bytes, 32u);
  EXPECT_EQ(st.Assign({0, 1, 2}), (std::vector<int64_t>{0, 1, 2}));
  // {2, 3, 4} needs two rows and one is free: no row given, not even to 3.
  std::vector<int64_t> ids{2, 3, 4};
  std::vector<int64_t> slots(3, -7);
  EXPECT_EQ(lh_aq_store_assign(st.s, ids.data(), 3, slots.data()), LH_ERR_OUT_OF_MEMORY);
  std::string msg = lh_last_error();
  EXPECT_TRUE(Contains(msg, "store full")) << msg;
  EXPECT_TRUE(Contains(msg, "capacity 4")) << msg;
  EXPECT_TRUE(Contains(msg, "3 used")) << msg;
  EXPECT_TRUE(Contains(msg, "needs 2")) << msg;
  EXPECT_EQ(st.Info().rows_used, 3u);
  EXPECT_EQ(st.Slots({3, 4}), (std::vector<int64_t>{-1, -1}));

  // What fits still goes; afterwards the same ids come back again and again, new ones do not.
  EXPECT_EQ(st.Assign({2, 3}), (std::vector<int64_t>{2, 3}));
  for (int round = 0; round < 3; round++)
    EXPECT_EQ(st.Assign({3, 1, 0, 2}), (std::vector<int64_t>{3, 1, 0, 2}));
  int64_t five = 5;
  EXPECT_EQ(lh_aq_store_assign(st.s, &five, 1, nullptr), LH_ERR_OUT_OF_MEMORY);
  EXPECT_TRUE(Contains(lh_last_error(), "4 used")) << lh_last_error();
  EXPECT_EQ(st.Info().rows_used, 4u);
}

TEST(AqStore, RowBytesZeroKeepsVisitsOnly) {
  Store st(HostConfig(6, 2, 0));
  ASSERT_NE(st.s, nullptr);
  EXPECT_EQ(st.s->base, nullptr);
  EXPECT_EQ(st.Info().buffer_bytes, 0u);
  // Capacity does not limit a store without rows: more ids than capacity are fine.
  EXPECT_EQ(st.Assign({0, 1, 2, 5}), (std::vector<int64_t>{-1, -1, -1, -1}));
  EXPECT_EQ(st.Info().rows_used, 0u);
  std::vector<int64_t> ids{5, 2};
  lh_aq_store_count_visits(st.s, ids.data(), 2);
  EXPECT_EQ(st.Visits(5), 1u);
  EXPECT_EQ(lh_aq_store_prefetch(st.s, ids.data(), 2), LH_SUCCESS) << lh_last_error();
  uint8_t byte = 0;
  EXPECT_EQ(lh_aq_store_read_row(st.s, 5, &byte, 1), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "row_bytes = 0")) << lh_last_error();
  // A context for DIRECT mode claims it with row_bytes 0.
  EXPECT_EQ(lh_aq_store_claim(st.s, 0), LH_SUCCESS) << lh_last_error();
  lh_aq_store_release(st.s);
}

TEST(AqStore, ReadRowBeforeAndAfterWrites) {
  const size_t row = 40;
  Store st(HostConfig(20, 5, row));
  ASSERT_NE(st.s, nullptr);
  std::vector<uint8_t> out(row, 0xEE);
  EXPECT_EQ(lh_aq_store_read_row(st.s, 11, out.data(), out.size()), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "example 11 has no row")) << lh_last_error();

  std::vector<int64_t> ids{11, 3, 19};
  std::vector<int64_t> slots = st.Assign(ids);
  for (int64_t id : ids) {  // fresh rows are zero
    ASSERT_EQ(lh_aq_store_read_row(st.s, id, out.data(), out.size()), LH_SUCCESS) << lh_last_error();
    EXPECT_EQ(out, std::vector<uint8_t>(row, 0)) << "example " << id;
  }
  for (size_t k = 0; k < ids.size(); k++)
    for (size_t j = 0; j < row; j++)
      st.Row(slots[k])[j] = Pattern(ids[k], j);
  for (int64_t id : ids) {
    std::vector<uint8_t> big(row + 8, 0xEE);  // a larger buffer gets the row, the rest untouched
    ASSERT_EQ(lh_aq_store_read_row(st.s, id, big.data(), big.size()), LH_SUCCESS) << lh_last_error();
    for (size_t j = 0; j < row; j++)
      ASSERT_EQ(big[j], Pattern(id, j)) << "example " << id << " byte " << j;
    EXPECT_EQ(big[row], 0xEE);
  }
  EXPECT_EQ(lh_aq_store_read_row(st.s, 3, out.data(), row - 1), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "capacity 39")) << lh_last_error();
  EXPECT_EQ(lh_aq_store_read_row(st.s, 3, nullptr, row), LH_ERR_INVALID_ARGUMENT);
  // HOST prefetch does nothing and succeeds, also for ids without a row.
  std::vector<int64_t> pf{3, 0, 19};
  EXPECT_EQ(lh_aq_store_prefetch(st.s, pf.data(), pf.size()), LH_SUCCESS) << lh_last_error();
}

TEST(AqStore, ClaimAndRelease) {
  Store st(HostConfig(4, 0, 32));
  ASSERT_NE(st.s, nullptr);
  EXPECT_EQ(lh_aq_store_claim(st.s, 16), LH_ERR_INVALID_ARGUMENT);
  std::string msg = lh_last_error();
  EXPECT_TRUE(Contains(msg, "32") && Contains(msg, "16")) << msg;
  EXPECT_EQ(lh_aq_store_claim(st.s, 32), LH_SUCCESS) << lh_last_error();  // the refusal did not claim
  EXPECT_EQ(lh_aq_store_claim(st.s, 32), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "already used")) << lh_last_error();
  // Freeing a claimed store is refused and keeps it usable.
  EXPECT_EQ(lh_aq_store_free(st.s), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(lh_last_error(), "free the context first")) << lh_last_error();
  EXPECT_EQ(st.Assign({2}), (std::vector<int64_t>{0}));
  lh_aq_store_release(st.s);
  EXPECT_EQ(lh_aq_store_claim(st.s, 32), LH_SUCCESS) << lh_last_error();
  lh_aq_store_release(st.s);
  lh_aq_store_release(nullptr);
  EXPECT_EQ(lh_aq_store_claim(nullptr, 32), LH_ERR_INVALID_ARGUMENT);
}

// ---- MMAP ------------------------------------------------------------------------------------

std::vector<uint8_t> ReadFile(const std::string &path) {
  std::vector<uint8_t> data;
  FILE *f = fopen(path.c_str(), "rb");
  if (!f)
    return data;
  uint8_t buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0)
    data.insert(data.end(), buf, buf + n);
  fclose(f);
  return data;
}

TEST(AqStoreMmap, RowsSurvivePrefetchAndReachTheFile) {
  TempDir dir;
  ASSERT_FALSE(dir.path.empty());
  std::string path = dir.File("rows.bin");
  // 1000-byte rows: rows straddle pages, so prefetch merges overlapping page ranges.
  const size_t examples = 200, capacity = 64, row = 1000;
  lh_aq_store_config c = HostConfig(examples, capacity, row);
  c.kind = LH_AQ_STORE_MMAP;
  c.path = path.c_str();
  c.keep_file = 1;
  std::vector<int64_t> ids, slots;
  {
    Store st(c);
    ASSERT_NE(st.s, nullptr);
    lh_aq_store_info i = st.Info();
    EXPECT_EQ(i.kind, LH_AQ_STORE_MMAP);
    EXPECT_EQ(i.buffer_bytes, capacity * row);
    struct stat sb;
    ASSERT_EQ(stat(path.c_str(), &sb), 0);
    EXPECT_EQ((size_t)sb.st_size, capacity * row);

    for (int64_t k = 0; k < (int64_t)capacity; k++)
      ids.push_back((k * 37 + 11) % (int64_t)examples);  // 64 distinct ids out of order
    slots = st.Assign(ids);
    std::vector<uint8_t> out(row, 0xEE);
    ASSERT_EQ(lh_aq_store_read_row(st.s, ids[5], out.data(), row), LH_SUCCESS) << lh_last_error();
    EXPECT_EQ(out, std::vector<uint8_t>(row, 0));  // a fresh file reads as zeros
    for (size_t k = 0; k < ids.size(); k++)
      for (size_t j = 0; j < row; j++)
        st.Row(slots[k])[j] = Pattern(ids[k], j);
    // Prefetch in any order, with repeats of neighbouring rows, ids without rows, everything.
    std::vector<int64_t> pf{ids[3], ids[2], ids[40], 0, ids[41], ids[63]};
    EXPECT_EQ(lh_aq_store_prefetch(st.s, pf.data(), pf.size()), LH_SUCCESS) << lh_last_error();
    EXPECT_EQ(lh_aq_store_prefetch(st.s, ids.data(), ids.size()), LH_SUCCESS) << lh_last_error();
    for (size_t k = 0; k < ids.size(); k++) {
      ASSERT_EQ(lh_aq_store_read_row(st.s, ids[k], out.data(), row), LH_SUCCESS) << lh_last_error();
      for (size_t j = 0; j < row; j++)
        ASSERT_EQ(out[j], Pattern(ids[k], j)) << "example " << ids[k] << " byte " << j;
    }
  }
  // keep_file = 1: after free the file holds every row at its slot.
  std::vector<uint8_t> file = ReadFile(path);
  ASSERT_EQ(file.size(), capacity * row);
  for (size_t k = 0; k < ids.size(); k++)
    for (size_t j = 0; j < row; j++)
      ASSERT_EQ(file[(size_t)slots[k] * row + j], Pattern(ids[k], j)) << "example " << ids[k] << " byte " << j;

  // Creating again over the kept file truncates it: rows start zeroed.
  c.keep_file = 0;
  {
    Store st(c);
    ASSERT_NE(st.s, nullptr);
    std::vector<uint8_t> out(row, 0xEE);
    st.Assign({ids[0]});
    ASSERT_EQ(lh_aq_store_read_row(st.s, ids[0], out.data(), row), LH_SUCCESS) << lh_last_error();
    EXPECT_EQ(out, std::vector<uint8_t>(row, 0));
  }
  EXPECT_FALSE(fs::exists(path));
}

TEST(AqStoreMmap, FileRemovedAtFreeUnlessKept) {
  TempDir dir;
  ASSERT_FALSE(dir.path.empty());
  std::string path = dir.File("scratch.bin");
  lh_aq_store_config c = HostConfig(16, 0, 256);
  c.kind = LH_AQ_STORE_MMAP;
  c.path = path.c_str();
  lh_aq_store s = nullptr;
  ASSERT_EQ(lh_aq_store_create(&c, &s), LH_SUCCESS) << lh_last_error();
  EXPECT_TRUE(fs::exists(path));
  EXPECT_EQ(fs::file_size(path), 16u * 256u);
  ASSERT_EQ(lh_aq_store_free(s), LH_SUCCESS);
  EXPECT_FALSE(fs::exists(path));

  // row_bytes = 0: an empty file, nothing mapped, removed the same way.
  c.row_bytes = 0;
  ASSERT_EQ(lh_aq_store_create(&c, &s), LH_SUCCESS) << lh_last_error();
  EXPECT_EQ(s->base, nullptr);
  EXPECT_TRUE(fs::exists(path));
  EXPECT_EQ(fs::file_size(path), 0u);
  ASSERT_EQ(lh_aq_store_free(s), LH_SUCCESS);
  EXPECT_FALSE(fs::exists(path));
}

TEST(AqStoreMmap, BadPathsAreIoErrorsNamingThePath) {
  TempDir dir;
  ASSERT_FALSE(dir.path.empty());
  lh_aq_store_config c = HostConfig(16, 0, 64);
  c.kind = LH_AQ_STORE_MMAP;
  std::string missing = dir.File("no/such/dir/rows.bin");
  c.path = missing.c_str();
  ExpectRefused(&c, LH_ERR_IO, {missing, strerror(ENOENT)});
  // A directory cannot be the file (and is left alone).
  c.path = dir.path.c_str();
  c.keep_file = 0;
  ExpectRefused(&c, LH_ERR_IO, {dir.path, strerror(EISDIR)});
  EXPECT_TRUE(fs::is_directory(dir.path));
}

TEST(AqStoreMmap, LargeStoreCreatesWithoutWritingIt) {
  TempDir dir;
  ASSERT_FALSE(dir.path.empty());
  std::string path = dir.File("large.bin");
  // 4 GiB of rows (65536 examples x 64 KiB). Creation reserves the blocks (or, where the
  // filesystem cannot, makes a sparse file); it never writes the 4 GiB.
  const size_t examples = 65536, row = 65536;
  lh_aq_store_config c = HostConfig(examples, 0, row);
  c.kind = LH_AQ_STORE_MMAP;
  c.path = path.c_str();
  lh_aq_store s = nullptr;
  lh_status st = lh_aq_store_create(&c, &s);
  if (st == LH_ERR_IO && Contains(lh_last_error(), "not enough disk space")) {
    EXPECT_TRUE(Contains(lh_last_error(), path)) << lh_last_error();
    EXPECT_FALSE(fs::exists(path));  // a failed create leaves no file behind
    GTEST_SKIP() << "less than 4 GiB free in " << dir.path << ": " << lh_last_error();
  }
  ASSERT_EQ(st, LH_SUCCESS) << lh_last_error();
  lh_aq_store_info i = LH_AQ_STORE_INFO_INIT;
  ASSERT_EQ(lh_aq_store_get_info(s, &i), LH_SUCCESS);
  EXPECT_EQ(i.buffer_bytes, size_t(4) << 30);
  EXPECT_EQ(fs::file_size(path), size_t(4) << 30);
  // Fill the rows so the last slot is used, then touch only the first and the last.
  std::vector<int64_t> ids(examples);
  for (size_t k = 0; k < examples; k++)
    ids[k] = (int64_t)(examples - 1 - k);
  ASSERT_EQ(lh_aq_store_assign(s, ids.data(), ids.size(), nullptr), LH_SUCCESS) << lh_last_error();
  EXPECT_EQ(s->slot_of[0], (int64_t)examples - 1);
  uint8_t *last = static_cast<uint8_t *>(s->base) + (examples - 1) * row;
  for (size_t j = 0; j < row; j += 4093)
    last[j] = Pattern(0, j);
  std::vector<int64_t> pf{0, (int64_t)examples - 1};
  EXPECT_EQ(lh_aq_store_prefetch(s, pf.data(), pf.size()), LH_SUCCESS) << lh_last_error();
  std::vector<uint8_t> out(row);
  ASSERT_EQ(lh_aq_store_read_row(s, 0, out.data(), row), LH_SUCCESS) << lh_last_error();
  for (size_t j = 0; j < row; j++)
    ASSERT_EQ(out[j], j % 4093 == 0 ? Pattern(0, j) : 0) << "byte " << j;
  ASSERT_EQ(lh_aq_store_read_row(s, (int64_t)examples - 1, out.data(), row), LH_SUCCESS);
  EXPECT_EQ(out, std::vector<uint8_t>(row, 0));
  ASSERT_EQ(lh_aq_store_free(s), LH_SUCCESS);
  EXPECT_FALSE(fs::exists(path));
}

}  // namespace

namespace {

// ---- checkpoints ------------------------------------------------------------------------------

// A store with some rows written through the internal map (as a context would) and visits.
lh_aq_store Filled(size_t examples, size_t capacity, size_t row_bytes, const std::vector<int64_t> &ids) {
  lh_aq_store_config c = HostConfig(examples, capacity, row_bytes);
  lh_aq_store s = nullptr;
  EXPECT_EQ(lh_aq_store_create(&c, &s), LH_SUCCESS) << lh_last_error();
  std::vector<int64_t> slots(ids.size());
  EXPECT_EQ(lh_aq_store_assign(s, ids.data(), ids.size(), slots.data()), LH_SUCCESS) << lh_last_error();
  lh_aq_store_count_visits(s, ids.data(), ids.size());
  lh_aq_store_count_visits(s, ids.data(), 1); // the first id twice
  for (size_t k = 0; k < ids.size(); k++)
    for (size_t j = 0; j < row_bytes; j++)
      static_cast<uint8_t *>(s->base)[slots[k] * row_bytes + j] = Pattern(ids[k], j);
  return s;
}

TEST(AqStoreCheckpoint, SaveAndLoadRoundTripExactly) {
  TempDir dir;
  const std::vector<int64_t> ids = {7, 2, 19, 4};
  lh_aq_store a = Filled(20, 10, 24, ids);
  std::string path = dir.File("a.aqstore");
  ASSERT_EQ(lh_aq_store_save(a, path.c_str()), LH_SUCCESS) << lh_last_error();
  EXPECT_FALSE(fs::exists(path + ".tmp")) << "the temporary file is renamed into place";
  lh_aq_store_config c = HostConfig(20, 10, 24);
  lh_aq_store b = nullptr;
  ASSERT_EQ(lh_aq_store_create(&c, &b), LH_SUCCESS);
  ASSERT_EQ(lh_aq_store_load(b, path.c_str()), LH_SUCCESS) << lh_last_error();
  for (int64_t id = 0; id < 20; id++) {
    uint32_t va, vb;
    ASSERT_EQ(lh_aq_store_visits(a, id, &va), LH_SUCCESS);
    ASSERT_EQ(lh_aq_store_visits(b, id, &vb), LH_SUCCESS);
    EXPECT_EQ(va, vb) << "id " << id;
    EXPECT_EQ(a->slot_of[id], b->slot_of[id]) << "id " << id;
  }
  std::vector<uint8_t> ra(24), rb(24);
  for (int64_t id : ids) {
    ASSERT_EQ(lh_aq_store_read_row(a, id, ra.data(), ra.size()), LH_SUCCESS);
    ASSERT_EQ(lh_aq_store_read_row(b, id, rb.data(), rb.size()), LH_SUCCESS);
    EXPECT_EQ(ra, rb) << "id " << id;
  }
  // New examples keep getting fresh rows after a load.
  int64_t next = 11, slot = -1;
  ASSERT_EQ(lh_aq_store_assign(b, &next, 1, &slot), LH_SUCCESS);
  EXPECT_EQ(slot, 4);
  lh_aq_store_free(a);
  lh_aq_store_free(b);
}

TEST(AqStoreCheckpoint, RefusesAnotherShapeADamagedFileAndATruncatedOne) {
  TempDir dir;
  lh_aq_store a = Filled(20, 10, 24, {1, 2, 3});
  std::string path = dir.File("a.aqstore");
  ASSERT_EQ(lh_aq_store_save(a, path.c_str()), LH_SUCCESS) << lh_last_error();
  // Another shape: nothing is read into it.
  lh_aq_store_config other = HostConfig(20, 10, 32);
  lh_aq_store b = nullptr;
  ASSERT_EQ(lh_aq_store_create(&other, &b), LH_SUCCESS);
  EXPECT_EQ(lh_aq_store_load(b, path.c_str()), LH_ERR_MISMATCH);
  EXPECT_TRUE(Contains(lh_last_error(), "rows of 24 bytes")) << lh_last_error();
  lh_aq_store_free(b);
  // One flipped byte in the rows: refused by the checksum, and the store is left empty.
  std::string damaged = dir.File("damaged.aqstore");
  fs::copy_file(path, damaged);
  {
    FILE *f = fopen(damaged.c_str(), "r+b");
    ASSERT_NE(f, nullptr);
    fseek(f, -12, SEEK_END); // inside the last row
    int ch = fgetc(f);
    fseek(f, -12, SEEK_END);
    fputc(ch ^ 0x40, f);
    fclose(f);
  }
  lh_aq_store_config same = HostConfig(20, 10, 24);
  ASSERT_EQ(lh_aq_store_create(&same, &b), LH_SUCCESS);
  int64_t id = 5, slot;
  ASSERT_EQ(lh_aq_store_assign(b, &id, 1, &slot), LH_SUCCESS);
  EXPECT_EQ(lh_aq_store_load(b, damaged.c_str()), LH_ERR_CORRUPT);
  EXPECT_TRUE(Contains(lh_last_error(), "checksum")) << lh_last_error();
  lh_aq_store_info info = LH_AQ_STORE_INFO_INIT;
  ASSERT_EQ(lh_aq_store_get_info(b, &info), LH_SUCCESS);
  EXPECT_EQ(info.rows_used, 0u) << "a failed load leaves the store empty, never half-loaded";
  // Truncated.
  std::string cut = dir.File("cut.aqstore");
  fs::copy_file(path, cut);
  fs::resize_file(cut, fs::file_size(cut) - 30);
  EXPECT_EQ(lh_aq_store_load(b, cut.c_str()), LH_ERR_CORRUPT);
  EXPECT_TRUE(Contains(lh_last_error(), "truncated")) << lh_last_error();
  // Not a store file, and a missing one.
  EXPECT_EQ(lh_aq_store_load(b, "/proc/self/status"), LH_ERR_CORRUPT);
  EXPECT_EQ(lh_aq_store_load(b, dir.File("missing").c_str()), LH_ERR_IO);
  EXPECT_TRUE(Contains(lh_last_error(), "missing")) << lh_last_error();
  lh_aq_store_free(a);
  lh_aq_store_free(b);
}

} // namespace

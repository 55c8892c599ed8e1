// Link matrices and the link-file format: API argument checks, the strict reader's
// refusals (status, line number and wording), exact write/read round trips, the scenario
// files shipped in examples/links.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <longhaul/links.h>

extern "C" {
#include "common/internal.h"
}

namespace {

struct LinksDeleter {
  void operator()(lh_links *l) const { lh_links_free(l); }
};
using LinksPtr = std::unique_ptr<lh_links, LinksDeleter>;

const char *kSource = "t.links";

lh_status Parse(const std::string &text, LinksPtr *out) {
  lh_links *raw = nullptr;
  lh_status st = lh_links_parse(text.data(), text.size(), kSource, &raw);
  out->reset(raw);
  return st;
}

std::string Matrix(const std::vector<std::vector<std::string>> &rows) {
  std::string text;
  for (const auto &row : rows) {
    for (size_t i = 0; i < row.size(); i++)
      text += (i ? " " : "") + row[i];
    text += "\n";
  }
  return text;
}

// A valid 2-device file, the base most broken files below are cut from.
const std::string kMagic = "# longhaul links v1\n";
const std::string kTwoDevices = kMagic +
                                "devices 2\n"
                                "latency_ms\n"
                                "0 5\n"
                                "7 0\n"
                                "bandwidth_gbps\n"
                                "0 1\n"
                                "0.5 0\n";

std::string WriteToString(const lh_links *links) {
  char *buffer = nullptr;
  size_t length = 0;
  FILE *memory = open_memstream(&buffer, &length);
  EXPECT_NE(memory, nullptr);
  EXPECT_EQ(lh_links_write_stream(links, memory), LH_SUCCESS) << lh_last_error();
  fclose(memory);
  std::string text(buffer, length);
  free(buffer);
  return text;
}

bool SameBits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

void ExpectSameMatrix(const lh_links *a, const lh_links *b) {
  int n = 0, m = 0;
  ASSERT_EQ(lh_links_devices(a, &n), LH_SUCCESS);
  ASSERT_EQ(lh_links_devices(b, &m), LH_SUCCESS);
  ASSERT_EQ(n, m);
  for (int i = 0; i < n; i++) {
    const char *site_a, *site_b;
    double speed_a, speed_b, cap_a, cap_b;
    ASSERT_EQ(lh_links_get_device(a, i, &site_a, &speed_a), LH_SUCCESS);
    ASSERT_EQ(lh_links_get_device(b, i, &site_b, &speed_b), LH_SUCCESS);
    EXPECT_STREQ(site_a, site_b) << "device " << i;
    EXPECT_TRUE(SameBits(speed_a, speed_b)) << "device " << i << ": " << speed_a << " vs " << speed_b;
    ASSERT_EQ(lh_links_get_uplink(a, i, &cap_a), LH_SUCCESS);
    ASSERT_EQ(lh_links_get_uplink(b, i, &cap_b), LH_SUCCESS);
    EXPECT_TRUE(SameBits(cap_a, cap_b)) << "uplink " << i << ": " << cap_a << " vs " << cap_b;
    for (int j = 0; j < n; j++) {
      double lat_a, bw_a, lat_b, bw_b;
      ASSERT_EQ(lh_links_get(a, i, j, &lat_a, &bw_a), LH_SUCCESS);
      ASSERT_EQ(lh_links_get(b, i, j, &lat_b, &bw_b), LH_SUCCESS);
      EXPECT_TRUE(SameBits(lat_a, lat_b)) << i << "->" << j << ": " << lat_a << " vs " << lat_b;
      EXPECT_TRUE(SameBits(bw_a, bw_b)) << i << "->" << j << ": " << bw_a << " vs " << bw_b;
    }
  }
}

void ExpectRoundTrip(const lh_links *links) {
  std::string text = WriteToString(links);
  LinksPtr back;
  ASSERT_EQ(Parse(text, &back), LH_SUCCESS) << lh_last_error() << "\n" << text;
  ExpectSameMatrix(links, back.get());
}

// ctest sets LONGHAUL_SOURCE_DIR; run by hand, the tree this file lies in (tests/unit/..) is used.
std::string SourceDir() {
  const char *dir = std::getenv("LONGHAUL_SOURCE_DIR");
  if (dir)
    return dir;
  std::string file = __FILE__;
  return file.substr(0, file.rfind("/tests/unit/"));
}

// ---- the API ------------------------------------------------------------------------------

TEST(LinksApi, CreateSetsEveryOffDiagonalLinkAndDefaults) {
  lh_links *raw = nullptr;
  ASSERT_EQ(lh_links_create(3, 0.02, 1e8, &raw), LH_SUCCESS);
  LinksPtr links(raw);
  int n = 0;
  ASSERT_EQ(lh_links_devices(links.get(), &n), LH_SUCCESS);
  EXPECT_EQ(n, 3);
  double lat, bw;
  ASSERT_EQ(lh_links_get(links.get(), 2, 0, &lat, &bw), LH_SUCCESS);
  EXPECT_EQ(lat, 0.02);
  EXPECT_EQ(bw, 1e8);
  // The diagonal is no link: 0 and 0.
  ASSERT_EQ(lh_links_get(links.get(), 1, 1, &lat, &bw), LH_SUCCESS);
  EXPECT_EQ(lat, 0.0);
  EXPECT_EQ(bw, 0.0);
  const char *site;
  double speed, cap;
  ASSERT_EQ(lh_links_get_device(links.get(), 2, &site, &speed), LH_SUCCESS);
  EXPECT_STREQ(site, "-");
  EXPECT_EQ(speed, 1.0);
  ASSERT_EQ(lh_links_get_uplink(links.get(), 2, &cap), LH_SUCCESS);
  EXPECT_EQ(cap, 0.0);
}

TEST(LinksApi, SetGetAndCopyIsIndependent) {
  lh_links *raw = nullptr;
  ASSERT_EQ(lh_links_create(4, 0.0, 1.0, &raw), LH_SUCCESS);
  LinksPtr links(raw);
  ASSERT_EQ(lh_links_set(links.get(), 1, 3, 0.125, 5e6), LH_SUCCESS);
  ASSERT_EQ(lh_links_set_device(links.get(), 3, "tokyo", 0.5), LH_SUCCESS);
  ASSERT_EQ(lh_links_set_uplink(links.get(), 1, 2e6), LH_SUCCESS);
  ASSERT_EQ(lh_links_copy(links.get(), &raw), LH_SUCCESS);
  LinksPtr copy(raw);
  ASSERT_EQ(lh_links_set(links.get(), 1, 3, 9.0, 9.0), LH_SUCCESS);
  ASSERT_EQ(lh_links_set_device(links.get(), 3, "x", 9.0), LH_SUCCESS);
  double lat, bw, speed, cap;
  const char *site;
  ASSERT_EQ(lh_links_get(copy.get(), 1, 3, &lat, &bw), LH_SUCCESS);
  EXPECT_EQ(lat, 0.125);
  EXPECT_EQ(bw, 5e6);
  ASSERT_EQ(lh_links_get(copy.get(), 3, 1, &lat, &bw), LH_SUCCESS);  // the reverse link is its own
  EXPECT_EQ(lat, 0.0);
  EXPECT_EQ(bw, 1.0);
  ASSERT_EQ(lh_links_get_device(copy.get(), 3, &site, &speed), LH_SUCCESS);
  EXPECT_STREQ(site, "tokyo");
  EXPECT_EQ(speed, 0.5);
  ASSERT_EQ(lh_links_get_uplink(copy.get(), 1, &cap), LH_SUCCESS);
  EXPECT_EQ(cap, 2e6);
  ASSERT_EQ(lh_links_set_uplink(links.get(), 1, 0.0), LH_SUCCESS);  // 0 removes the cap
}

// Each refused call: INVALID_ARGUMENT and a message naming the function and the bad value.
void ExpectRefused(lh_status st, const char *function, const char *value) {
  EXPECT_EQ(st, LH_ERR_INVALID_ARGUMENT);
  std::string message = lh_last_error();
  EXPECT_NE(message.find(function), std::string::npos) << message;
  EXPECT_NE(message.find(value), std::string::npos) << message;
}

TEST(LinksApi, RefusesBadArguments) {
  const double nan = std::nan(""), inf = INFINITY;
  lh_links *raw = reinterpret_cast<lh_links *>(&raw);  // must be reset to NULL on failure
  ExpectRefused(lh_links_create(0, 0.0, 1.0, &raw), "lh_links_create", "0");
  EXPECT_EQ(raw, nullptr);
  ExpectRefused(lh_links_create(70000, 0.0, 1.0, &raw), "lh_links_create", "70000");
  ExpectRefused(lh_links_create(2, -1.0, 1.0, &raw), "lh_links_create", "-1");
  ExpectRefused(lh_links_create(2, nan, 1.0, &raw), "lh_links_create", "nan");
  ExpectRefused(lh_links_create(2, 0.0, 0.0, &raw), "lh_links_create", "bandwidth_Bps is 0");
  ExpectRefused(lh_links_create(2, 0.0, inf, &raw), "lh_links_create", "inf");
  ExpectRefused(lh_links_create(2, 0.0, 1.0, nullptr), "lh_links_create", "out");
  ExpectRefused(lh_links_copy(nullptr, &raw), "lh_links_copy", "links");

  ASSERT_EQ(lh_links_create(3, 0.0, 1.0, &raw), LH_SUCCESS);
  LinksPtr links(raw);
  double lat, bw, speed;
  const char *site;
  int n;
  ExpectRefused(lh_links_devices(nullptr, &n), "lh_links_devices", "links");
  ExpectRefused(lh_links_devices(links.get(), nullptr), "lh_links_devices", "devices");
  ExpectRefused(lh_links_get(nullptr, 0, 1, &lat, &bw), "lh_links_get", "links");
  ExpectRefused(lh_links_get(links.get(), 3, 1, &lat, &bw), "lh_links_get", "from is 3");
  ExpectRefused(lh_links_get(links.get(), 0, -1, &lat, &bw), "lh_links_get", "to is -1");
  ExpectRefused(lh_links_get(links.get(), 0, 1, nullptr, &bw), "lh_links_get", "latency_s");
  ExpectRefused(lh_links_get(links.get(), 0, 1, &lat, nullptr), "lh_links_get", "bandwidth_Bps");
  ExpectRefused(lh_links_set(links.get(), 2, 2, 0.0, 1.0), "lh_links_set", "both 2");
  ExpectRefused(lh_links_set(links.get(), 0, 5, 0.0, 1.0), "lh_links_set", "to is 5");
  ExpectRefused(lh_links_set(links.get(), 0, 1, -0.5, 1.0), "lh_links_set", "-0.5");
  ExpectRefused(lh_links_set(links.get(), 0, 1, inf, 1.0), "lh_links_set", "inf");
  ExpectRefused(lh_links_set(links.get(), 0, 1, 0.0, -2.0), "lh_links_set", "-2");
  ExpectRefused(lh_links_set(links.get(), 0, 1, 0.0, nan), "lh_links_set", "nan");
  ExpectRefused(lh_links_set(links.get(), 0, 1, 0.0, DBL_MAX), "lh_links_set", "bandwidth_Bps");
  ExpectRefused(lh_links_get_device(links.get(), 3, &site, &speed), "lh_links_get_device", "3");
  ExpectRefused(lh_links_get_device(links.get(), 0, nullptr, &speed), "lh_links_get_device", "site");
  ExpectRefused(lh_links_get_device(links.get(), 0, &site, nullptr), "lh_links_get_device", "speed");
  ExpectRefused(lh_links_set_device(links.get(), 0, nullptr, 1.0), "lh_links_set_device", "site");
  ExpectRefused(lh_links_set_device(links.get(), 0, "", 1.0), "lh_links_set_device", "empty");
  ExpectRefused(lh_links_set_device(links.get(), 0, "new york", 1.0), "lh_links_set_device", "new york");
  ExpectRefused(lh_links_set_device(links.get(), 0, "a#b", 1.0), "lh_links_set_device", "'#'");
  ExpectRefused(lh_links_set_device(links.get(), 0, std::string(64, 'x').c_str(), 1.0), "lh_links_set_device",
                "63");
  ExpectRefused(lh_links_set_device(links.get(), 0, "ok", 0.0), "lh_links_set_device", "speed");
  ExpectRefused(lh_links_set_device(links.get(), -1, "ok", 1.0), "lh_links_set_device", "-1");
  ExpectRefused(lh_links_get_uplink(links.get(), 0, nullptr), "lh_links_get_uplink", "bandwidth_Bps");
  ExpectRefused(lh_links_set_uplink(links.get(), 0, -1.0), "lh_links_set_uplink", "-1");
  ExpectRefused(lh_links_set_uplink(links.get(), 0, nan), "lh_links_set_uplink", "nan");
  ExpectRefused(lh_links_set_uplink(links.get(), 9, 1.0), "lh_links_set_uplink", "9");
  // A 63-character site is the longest allowed.
  EXPECT_EQ(lh_links_set_device(links.get(), 0, std::string(63, 'x').c_str(), 1.0), LH_SUCCESS);
  // Refused calls change nothing.
  ASSERT_EQ(lh_links_get(links.get(), 0, 1, &lat, &bw), LH_SUCCESS);
  EXPECT_EQ(lat, 0.0);
  EXPECT_EQ(bw, 1.0);
  EXPECT_EQ(lh_links_free(nullptr), LH_SUCCESS);
}

TEST(LinksApi, WritersAndReadersRefuseNullArguments) {
  lh_links *raw = nullptr;
  ExpectRefused(lh_links_parse("x", 1, "s", nullptr), "lh_links_parse", "out");
  ExpectRefused(lh_links_parse(nullptr, 4, "s", &raw), "lh_links_parse", "NULL");
  // No text at all is an empty file; without a source name, messages say "<text>".
  EXPECT_EQ(lh_links_parse(nullptr, 0, nullptr, &raw), LH_ERR_PARSE);
  EXPECT_STREQ(lh_last_error(), "<text>:1: expected '# longhaul links v1' as the first line, found an empty file");
  ExpectRefused(lh_links_read_file(nullptr, &raw), "lh_links_read_file", "path");
  ExpectRefused(lh_links_write_stream(nullptr, stdout), "lh_links_write_stream", "links");
  ASSERT_EQ(lh_links_create(2, 0.0, 1.0, &raw), LH_SUCCESS);
  LinksPtr links(raw);
  ExpectRefused(lh_links_write_stream(links.get(), nullptr), "lh_links_write_stream", "stream");
  ExpectRefused(lh_links_write_file(links.get(), nullptr), "lh_links_write_file", "path");
}

// ---- the reader ---------------------------------------------------------------------------

TEST(LinkFile, ReadsUnitsAndDeviceLines) {
  LinksPtr links;
  std::string text = kMagic +
                     "# a comment line\n"
                     "devices 3   # trailing comment\n"
                     "device 2 site tokyo speed 0.5\n"
                     "device 0 site oregon speed 1e0\n"
                     "latency_ms\n"
                     "0 5 96\n"
                     "\n"
                     "5 0 1.5e2 # comment after a row\n"
                     "96 150 -7   # the diagonal may hold any number\n"
                     "bandwidth_gbps\n"
                     "0 2 0.523\n"
                     "2 0 +.25\n"
                     "4. 0.42 0\n";
  ASSERT_EQ(Parse(text, &links), LH_SUCCESS) << lh_last_error();
  double lat, bw;
  ASSERT_EQ(lh_links_get(links.get(), 0, 1, &lat, &bw), LH_SUCCESS);
  EXPECT_EQ(lat, 0.005);
  EXPECT_EQ(bw, 2 * LH_GBIT_BYTES);
  ASSERT_EQ(lh_links_get(links.get(), 0, 2, &lat, &bw), LH_SUCCESS);
  EXPECT_EQ(lat, 0.096);
  EXPECT_EQ(bw, 65375000.0);  // 0.523 Gbit/s
  ASSERT_EQ(lh_links_get(links.get(), 1, 2, &lat, &bw), LH_SUCCESS);
  EXPECT_EQ(lat, 0.15);
  EXPECT_EQ(bw, 0.25 * LH_GBIT_BYTES);
  ASSERT_EQ(lh_links_get(links.get(), 2, 2, &lat, &bw), LH_SUCCESS);
  EXPECT_EQ(lat, 0.0);
  ASSERT_EQ(lh_links_get(links.get(), 2, 0, &lat, &bw), LH_SUCCESS);
  EXPECT_EQ(bw, 4 * LH_GBIT_BYTES);
  const char *site;
  double speed;
  ASSERT_EQ(lh_links_get_device(links.get(), 2, &site, &speed), LH_SUCCESS);
  EXPECT_STREQ(site, "tokyo");
  EXPECT_EQ(speed, 0.5);
  ASSERT_EQ(lh_links_get_device(links.get(), 1, &site, &speed), LH_SUCCESS);  // no device line
  EXPECT_STREQ(site, "-");
  EXPECT_EQ(speed, 1.0);
}

TEST(LinkFile, AcceptsCrlfTrailingBlanksAndNoFinalNewline) {
  std::string text = "# longhaul links v1  \t\r\ndevices 2\r\nlatency_ms\r\n0 1\r\n1 0\r\n"
                     "bandwidth_gbps\r\n0 1\r\n1 0";
  LinksPtr links;
  EXPECT_EQ(Parse(text, &links), LH_SUCCESS) << lh_last_error();
}

struct BrokenFile {
  const char *name;
  std::string text;
  int line;             // the line the message must name
  const char *keyword;  // a word the message must contain
};

std::string Replace(std::string text, const std::string &from, const std::string &to) {
  size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return text.replace(at, from.size(), to);
}

std::vector<BrokenFile> BrokenFiles() {
  const std::string head = kMagic + "devices 2\n";  // lines 1-2
  const std::string bandwidth = "bandwidth_gbps\n0 1\n1 0\n";
  return {
      {"empty file", "", 1, "empty file"},
      {"only blank", "\n\n", 1, "empty line"},
      {"newer version", Replace(kTwoDevices, "v1", "v2"), 1, "version 1"},
      {"no magic", "devices 2\nlatency_ms\n", 1, "first line"},
      {"magic with text after", Replace(kTwoDevices, "v1", "v1 extra"), 1, "first line"},
      {"missing devices", kMagic + "latency_ms\n0\n", 2, "devices N"},
      {"missing devices at end", kMagic + "# nothing\n", 2, "'devices N' line"},
      {"devices zero", kMagic + "devices 0\n", 2, "from 1 to 65536"},
      {"devices absurd", kMagic + "devices 65537\n", 2, "from 1 to 65536"},
      {"devices not integer", kMagic + "devices 2.0\n", 2, "whole number"},
      {"devices negative", kMagic + "devices -2\n", 2, "whole number"},
      {"devices missing number", kMagic + "devices\n", 2, "devices N"},
      {"devices twice", Replace(kTwoDevices, "devices 2\n", "devices 2\ndevices 2\n"), 3, "first is on line 2"},
      {"device out of range", head + "device 2 site a speed 1\n", 3, "from 0 to 1"},
      {"device twice", head + "device 1 site a speed 1\ndevice 1 site b speed 1\n", 4, "first is on line 3"},
      {"device bad speed", head + "device 1 site a speed 0\n", 3, "speed"},
      {"device word speed", head + "device 1 site a speed fast\n", 3, "speed"},
      {"device missing fields", head + "device 1 site a\n", 3, "fields"},
      {"device misspelled key", head + "device 1 city a speed 1\n", 3, "'site'"},
      {"device long site", head + "device 1 site " + std::string(64, 's') + " speed 1\n", 3, "63"},
      {"missing latency", head + bandwidth, 5, "latency_ms section"},
      {"missing bandwidth", head + "latency_ms\n0 1\n1 0\n", 5, "bandwidth_gbps section"},
      {"too few rows", head + "latency_ms\n0 1\n" + bandwidth, 5, "expected 2 rows in latency_ms"},
      {"too few rows at end", head + "latency_ms\n0 1\n1 0\nbandwidth_gbps\n0 1\n", 7, "end of the file"},
      {"too many columns", head + "latency_ms\n0 1\n1 0 3\n", 5, "expected 2 numbers in row 1 of latency_ms, found 3"},
      {"too few columns", head + "latency_ms\n0\n", 4, "expected 2 numbers in row 0"},
      {"unit after number", Replace(kTwoDevices, "0 5", "0 5ms"), 4, "'5ms'"},
      {"word in row", Replace(kTwoDevices, "7 0", "seven 0"), 5, "expected a number"},
      {"hex float", Replace(kTwoDevices, "0 5", "0 0x1p3"), 4, "expected a number"},
      {"nan", Replace(kTwoDevices, "0 5", "0 nan"), 4, "'nan'"},
      {"inf", Replace(kTwoDevices, "0.5 0", "inf 0"), 8, "'inf'"},
      {"overflow", Replace(kTwoDevices, "0.5 0", "1e400 0"), 8, "finite"},
      {"word on diagonal", Replace(kTwoDevices, "0 5", "x 5"), 4, "expected a number"},
      {"negative latency", Replace(kTwoDevices, "7 0", "-7 0"), 5, "latency from device 1 to device 0"},
      {"zero bandwidth", Replace(kTwoDevices, "0 1\n", "0 0\n"), 7, "> 0"},
      {"negative bandwidth", Replace(kTwoDevices, "0.5 0", "-0.5 0"), 8, "bandwidth"},
      {"duplicate section", kTwoDevices + "latency_ms\n", 9, "first starts on line 3"},
      {"text after keyword", Replace(kTwoDevices, "latency_ms\n", "latency_ms 0 5\n"), 3, "nothing after"},
      {"rows before any section", head + "0 1\n", 3, "outside any section"},
      {"rows after complete matrix", Replace(kTwoDevices, "7 0\n", "7 0\n1 1\n"), 6, "complete latency_ms"},
      {"keyword inside matrix", Replace(kTwoDevices, "7 0\n", "device 0 site a speed 1\n"), 5, "found 1"},
      {"negative uplink", kTwoDevices + "uplink_gbps\n1 -1\n", 10, "uplink cap of device 1"},
      {"uplink two rows", kTwoDevices + "uplink_gbps\n1 1\n1 1\n", 11, "complete uplink_gbps"},
      {"uplink short row", kTwoDevices + "uplink_gbps\n1\n", 10, "expected 2 numbers"},
      {"control byte", Replace(kTwoDevices, "0 5", std::string("0 5\x01", 4)), 4, "\\x01"},
  };
}

TEST(LinkFile, RefusesBrokenFilesWithLineAndReason) {
  for (const BrokenFile &broken : BrokenFiles()) {
    SCOPED_TRACE(broken.name);
    LinksPtr links;
    EXPECT_EQ(Parse(broken.text, &links), LH_ERR_PARSE);
    EXPECT_EQ(links, nullptr);
    std::string message = lh_last_error();
    std::string where = std::string(kSource) + ":" + std::to_string(broken.line) + ": ";
    EXPECT_EQ(message.rfind(where, 0), 0u) << message;
    EXPECT_NE(message.find(broken.keyword), std::string::npos) << message;
  }
}

TEST(LinkFile, SkipsUnknownSectionsWithAWarning) {
  std::string text = kMagic +
                     "devices 2\n"
                     "jitter_ms   # from a newer writer\n"
                     "0 1\n"
                     "1 0\n"
                     "note: anything 5ms nan\n"
                     "latency_ms\n"
                     "0 5\n"
                     "7 0\n"
                     "inf 3 4\n"  // a word after a complete section starts another unknown one
                     "bandwidth_gbps\n"
                     "0 1\n"
                     "0.5 0\n";
  LinksPtr links;
  testing::internal::CaptureStderr();
  lh_status st = Parse(text, &links);
  std::string warnings = testing::internal::GetCapturedStderr();
  ASSERT_EQ(st, LH_SUCCESS) << lh_last_error();
  double lat, bw;
  ASSERT_EQ(lh_links_get(links.get(), 1, 0, &lat, &bw), LH_SUCCESS);
  EXPECT_EQ(lat, 0.007);
  EXPECT_EQ(bw, 0.5 * LH_GBIT_BYTES);
  if (lh_log_enabled(LH_LOG_WARN)) {  // LH_LOG=NONE in the environment silences it
    EXPECT_NE(warnings.find("t.links:3: skipping unknown section 'jitter_ms'"), std::string::npos) << warnings;
    EXPECT_NE(warnings.find("t.links:10: skipping unknown section 'inf'"), std::string::npos) << warnings;
  }
}

TEST(LinkFile, MissingFileIsAnIoErrorNamingThePath) {
  lh_links *raw = nullptr;
  std::string path = "/nonexistent-dir/none.links";
  EXPECT_EQ(lh_links_read_file(path.c_str(), &raw), LH_ERR_IO);
  EXPECT_EQ(raw, nullptr);
  std::string message = lh_last_error();
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find(strerror(ENOENT)), std::string::npos) << message;
  // A directory opens but cannot be read.
  EXPECT_EQ(lh_links_read_file("/", &raw), LH_ERR_IO);
}

TEST(LinkFile, ErrorsFromAFileNameThePath) {
  std::string path = testing::TempDir() + "lh_broken.links";
  FILE *f = fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fputs("# longhaul links v1\ndevices 2\nlatency_ms\n0 1 2\n", f);
  fclose(f);
  lh_links *raw = nullptr;
  EXPECT_EQ(lh_links_read_file(path.c_str(), &raw), LH_ERR_PARSE);
  EXPECT_EQ(std::string(lh_last_error()).rfind(path + ":4: ", 0), 0u) << lh_last_error();
  std::remove(path.c_str());
}

TEST(LinkFile, HandlesLongLinesAndLargeMatrices) {
  // 300 devices: rows of about 1500 characters, and a 1 MB comment line.
  const int n = 300;
  std::string text = kMagic + "#" + std::string(1 << 20, 'c') + "\ndevices 300\n";
  for (const char *section : {"latency_ms", "bandwidth_gbps"}) {
    text += std::string(section) + "\n";
    for (int i = 0; i < n; i++) {
      for (int j = 0; j < n; j++)
        text += std::to_string(i == j ? 0 : (i + j) % 97 + 1) + (j + 1 < n ? " " : "\n");
    }
  }
  LinksPtr links;
  ASSERT_EQ(Parse(text, &links), LH_SUCCESS) << lh_last_error();
  double lat, bw;
  ASSERT_EQ(lh_links_get(links.get(), 299, 3, &lat, &bw), LH_SUCCESS);
  EXPECT_EQ(lat, 0.012);  // (299 + 3) % 97 + 1 ms
  EXPECT_EQ(bw, 12 * LH_GBIT_BYTES);
  ExpectRoundTrip(links.get());
  // A 1 MB token is refused with a shortened quote, not a 1 MB message.
  std::string huge = Replace(kTwoDevices, "0 5", "0 " + std::string(1 << 20, '9'));
  ASSERT_EQ(Parse(huge, &links), LH_ERR_PARSE);
  EXPECT_LT(std::strlen(lh_last_error()), 400u) << lh_last_error();
}

// ---- the writer ---------------------------------------------------------------------------

TEST(LinkFile, WriterOutputIsReadableAndAligned) {
  lh_links *raw = nullptr;
  ASSERT_EQ(lh_links_create(3, 0.005, 65375000.0 /* 0.523 Gbit/s */, &raw), LH_SUCCESS);
  LinksPtr links(raw);
  ASSERT_EQ(lh_links_set(links.get(), 0, 2, 0.136, 10 * LH_GBIT_BYTES), LH_SUCCESS);
  ASSERT_EQ(lh_links_set_device(links.get(), 1, "oregon", 0.5), LH_SUCCESS);
  std::string text = WriteToString(links.get());
  EXPECT_EQ(text.rfind("# longhaul links v1\n#", 0), 0u) << text;
  EXPECT_NE(text.find("\ndevices 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\ndevice 1 site oregon speed 0.5\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nlatency_ms\n0 5 136\n5 0 5\n5 5 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nbandwidth_gbps\n0     0.523 10\n0.523 0     0.523\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("uplink_gbps"), std::string::npos) << text;
}

TEST(LinkFile, RandomValuesRoundTripExactly) {
  std::mt19937_64 random(20240611);
  std::uniform_real_distribution<double> log_latency(-9, 3), log_bandwidth(0, 13), unit(0, 1);
  for (int trial = 0; trial < 20; trial++) {
    int n = 2 + trial % 6;
    lh_links *raw = nullptr;
    ASSERT_EQ(lh_links_create(n, 0.0, 1.0, &raw), LH_SUCCESS);
    LinksPtr links(raw);
    for (int i = 0; i < n; i++) {
      for (int j = 0; j < n; j++) {
        if (i == j)
          continue;
        double latency = std::pow(10.0, log_latency(random)), bandwidth = std::pow(10.0, log_bandwidth(random));
        if (trial % 4 == 3) {  // any finite double the API accepts, from raw bits
          do {
            uint64_t bits = random() >> 1;  // sign bit clear
            std::memcpy(&latency, &bits, sizeof latency);
          } while (!std::isfinite(latency));
          do {
            uint64_t bits = random() >> 1;
            std::memcpy(&bandwidth, &bits, sizeof bandwidth);
          } while (!std::isfinite(bandwidth) || bandwidth == 0 || bandwidth > DBL_MAX / 8);
        }
        ASSERT_EQ(lh_links_set(links.get(), i, j, latency, bandwidth), LH_SUCCESS) << lh_last_error();
      }
      std::string site = "site" + std::to_string(random() % 1000);
      ASSERT_EQ(lh_links_set_device(links.get(), i, site.c_str(), 0.01 + unit(random)), LH_SUCCESS);
    }
    SCOPED_TRACE(trial);
    ExpectRoundTrip(links.get());
  }
}

TEST(LinkFile, ExtremeValuesRoundTripExactly) {
  const double values[][2] = {
      {0.0, DBL_MAX / 8},         {-0.0, 4.9406564584124654e-324}, {DBL_MAX, DBL_MIN},
      {1e-320, 0.1},              {0.1 + 0.2, 1.0 / 3},            {123456789.123456789, 1e-9},
      {5e-324, 125000000.0 / 3},
  };
  lh_links *raw = nullptr;
  ASSERT_EQ(lh_links_create(2, 0.0, 1.0, &raw), LH_SUCCESS);
  LinksPtr links(raw);
  for (const auto &v : values) {
    SCOPED_TRACE(v[0]);
    ASSERT_EQ(lh_links_set(links.get(), 0, 1, v[0], v[1]), LH_SUCCESS) << lh_last_error();
    ASSERT_EQ(lh_links_set(links.get(), 1, 0, v[1], v[1]), LH_SUCCESS);
    ASSERT_EQ(lh_links_set_device(links.get(), 1, "x", v[1]), LH_SUCCESS);
    ExpectRoundTrip(links.get());
  }
}

TEST(LinkFile, UplinkSectionRoundTrips) {
  lh_links *raw = nullptr;
  ASSERT_EQ(lh_links_create(3, 0.04, 0.1 * LH_GBIT_BYTES, &raw), LH_SUCCESS);
  LinksPtr links(raw);
  ASSERT_EQ(lh_links_set_uplink(links.get(), 0, 0.2 * LH_GBIT_BYTES), LH_SUCCESS);
  ASSERT_EQ(lh_links_set_uplink(links.get(), 2, 1234.5678), LH_SUCCESS);
  std::string text = WriteToString(links.get());
  EXPECT_NE(text.find("\nuplink_gbps\n0.2 0 "), std::string::npos) << text;
  ExpectRoundTrip(links.get());
  // Read by hand: Gbit/s, 0 = none.
  LinksPtr parsed;
  ASSERT_EQ(Parse(kTwoDevices + "uplink_gbps\n0 2.5\n", &parsed), LH_SUCCESS) << lh_last_error();
  double cap;
  ASSERT_EQ(lh_links_get_uplink(parsed.get(), 0, &cap), LH_SUCCESS);
  EXPECT_EQ(cap, 0.0);
  ASSERT_EQ(lh_links_get_uplink(parsed.get(), 1, &cap), LH_SUCCESS);
  EXPECT_EQ(cap, 2.5 * LH_GBIT_BYTES);
}

TEST(LinkFile, NegativeZeroIsStoredAsZero) {
  // Found by the fuzzer: "-0" as an uplink read back as +0 once the writer had left out the
  // all-zero uplink section. One zero keeps the round trip exact.
  LinksPtr parsed;
  ASSERT_EQ(Parse(Replace(kTwoDevices, "7 0", "-0 0") + "uplink_gbps\n-0 -00\n", &parsed), LH_SUCCESS)
      << lh_last_error();
  double cap, lat, bw;
  ASSERT_EQ(lh_links_get_uplink(parsed.get(), 1, &cap), LH_SUCCESS);
  EXPECT_FALSE(std::signbit(cap));
  ASSERT_EQ(lh_links_get(parsed.get(), 1, 0, &lat, &bw), LH_SUCCESS);
  EXPECT_FALSE(std::signbit(lat));
  ExpectRoundTrip(parsed.get());
  ASSERT_EQ(lh_links_set_uplink(parsed.get(), 0, -0.0), LH_SUCCESS);
  ASSERT_EQ(lh_links_get_uplink(parsed.get(), 0, &cap), LH_SUCCESS);
  EXPECT_FALSE(std::signbit(cap));
}

TEST(LinkFile, WriteFileThenReadFile) {
  lh_links *raw = nullptr;
  ASSERT_EQ(lh_links_create(4, 0.001, 3e7, &raw), LH_SUCCESS);
  LinksPtr links(raw);
  ASSERT_EQ(lh_links_set(links.get(), 3, 1, 0.25, 1e5), LH_SUCCESS);
  std::string path = testing::TempDir() + "lh_written.links";
  ASSERT_EQ(lh_links_write_file(links.get(), path.c_str()), LH_SUCCESS) << lh_last_error();
  ASSERT_EQ(lh_links_read_file(path.c_str(), &raw), LH_SUCCESS) << lh_last_error();
  LinksPtr back(raw);
  ExpectSameMatrix(links.get(), back.get());
  std::remove(path.c_str());
  EXPECT_EQ(lh_links_write_file(links.get(), "/nonexistent-dir/x.links"), LH_ERR_IO);
  EXPECT_NE(std::string(lh_last_error()).find("/nonexistent-dir/x.links"), std::string::npos);
}

// ---- the files in examples/links --------------------------------------------------------

struct ScenarioCheck {
  int from, to;
  double latency_ms, bandwidth_mbps;  // whole numbers, so the expected values are exact
};

LinksPtr ReadExample(const std::string &name) {
  lh_links *raw = nullptr;
  std::string path = SourceDir() + "/examples/links/" + name;
  EXPECT_EQ(lh_links_read_file(path.c_str(), &raw), LH_SUCCESS) << lh_last_error();
  return LinksPtr(raw);
}

void ExpectLink(const lh_links *links, const ScenarioCheck &c) {
  double lat, bw;
  ASSERT_EQ(lh_links_get(links, c.from, c.to, &lat, &bw), LH_SUCCESS);
  // The reader shifts the decimal point rather than multiplying, hence exact equality.
  EXPECT_EQ(lat, c.latency_ms / 1000) << c.from << "->" << c.to;
  EXPECT_EQ(bw, c.bandwidth_mbps * 1e6 / 8) << c.from << "->" << c.to;
}

TEST(LinkFile, ScenarioFilesLoad) {
  const struct {
    const char *file;
    std::vector<ScenarioCheck> checks;
  } scenarios[] = {
      {"dtfm-1-datacenter-on-demand.links", {{0, 1, 0, 100000}, {0, 8, 0, 3125}, {40, 41, 0, 100000}}},
      {"dtfm-2-datacenter-spot.links", {{0, 1, 0, 100000}, {0, 8, 0, 1250}, {40, 41, 0, 1250}, {0, 40, 0, 1250}}},
      {"dtfm-3-multi-datacenter.links", {{0, 1, 1, 5000}, {0, 32, 11, 1120}, {40, 8, 11, 1120}, {40, 41, 1, 5000}}},
      {"dtfm-4-regional.links", {{0, 1, 5, 2000}, {0, 16, 67, 1150}, {0, 32, 59, 1050}, {0, 63, 11, 1120}}},
      {"dtfm-5-worldwide.links",
       {{0, 8, 67, 790}, {0, 16, 49, 1100}, {0, 32, 124, 460}, {8, 16, 11, 1120}, {40, 56, 12, 1090},
        {63, 0, 124, 482}}},
  };
  for (const auto &scenario : scenarios) {
    SCOPED_TRACE(scenario.file);
    LinksPtr links = ReadExample(std::string("scenarios/") + scenario.file);
    ASSERT_NE(links, nullptr);
    int n = 0;
    ASSERT_EQ(lh_links_devices(links.get(), &n), LH_SUCCESS);
    EXPECT_EQ(n, 64);
    for (const ScenarioCheck &c : scenario.checks)
      ExpectLink(links.get(), c);
    ExpectRoundTrip(links.get());
  }
}

TEST(LinkFile, Wan4Example) {
  LinksPtr links = ReadExample("wan4.links");
  ASSERT_NE(links, nullptr);
  const ScenarioCheck checks[] = {{0, 1, 5, 1000},   {2, 3, 5, 1000},     {0, 2, 40, 100}, {2, 0, 40, 100},
                                  {0, 3, 35, 200}, {1, 2, 45, 150}, {3, 1, 40, 100}};
  for (const ScenarioCheck &c : checks)
    ExpectLink(links.get(), c);
  const char *site;
  double speed;
  ASSERT_EQ(lh_links_get_device(links.get(), 3, &site, &speed), LH_SUCCESS);
  EXPECT_STREQ(site, "virginia");
}

}  // namespace

// The LH_* table, environment validation, and the unit parsers.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include <longhaul/longhaul.h>

TEST(Env, TableIsCompleteAndDocumented) {
  int n = 0;
  ASSERT_EQ(lh_env_count(&n), LH_SUCCESS);
  EXPECT_GE(n, 9);
  bool timeout = false;
  for (int i = 0; i < n; i++) {
    lh_env_var v;
    ASSERT_EQ(lh_env_describe(i, &v), LH_SUCCESS);
    EXPECT_EQ(std::strncmp(v.name, "LH_", 3), 0) << v.name;
    EXPECT_GT(std::strlen(v.help), 10u) << v.name;
    EXPECT_GT(std::strlen(v.allowed), 3u) << v.name;
    timeout |= !std::strcmp(v.name, "LH_TIMEOUT_S");
  }
  EXPECT_TRUE(timeout);
  lh_env_var v;
  EXPECT_EQ(lh_env_describe(n, &v), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_env_describe(-1, &v), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_env_describe(0, nullptr), LH_ERR_INVALID_ARGUMENT);
}

TEST(Env, ValidateNamesTheBadVariable) {
  const char *bad[][2] = {{"LH_SIM_BW", "fast"},      {"LH_SIM_BW", "100"},      {"LH_SIM_LAT", "20parsecs"},
                          {"LH_TIMEOUT_S", "-1"},     {"LH_TIMEOUT_S", "soon"},  {"LH_BACKEND", "gloo"},
                          {"LH_LOG", "LOUD"},         {"LH_CHUNK_BYTES", "12"},  {"LH_MAX_INFLIGHT", "0"},
                          {"LH_BIND", "socket"}};
  for (auto &kv : bad) {
    setenv(kv[0], kv[1], 1);
    EXPECT_EQ(lh_env_validate(), LH_ERR_ENV) << kv[0] << "=" << kv[1];
    EXPECT_NE(std::strstr(lh_last_error(), kv[0]), nullptr) << lh_last_error();
    unsetenv(kv[0]);
  }
  setenv("LH_SIM_BW", "100mbit", 1);
  setenv("LH_BACKEND", "NCCL", 1);  // words are case-insensitive
  EXPECT_EQ(lh_env_validate(), LH_SUCCESS) << lh_last_error();
  unsetenv("LH_SIM_BW");
  unsetenv("LH_BACKEND");
}

TEST(Units, Bandwidth) {
  double v = 0;
  ASSERT_EQ(lh_parse_bandwidth("100mbit", &v), LH_SUCCESS);
  EXPECT_DOUBLE_EQ(v, 12.5e6);
  ASSERT_EQ(lh_parse_bandwidth("2.5Gbit", &v), LH_SUCCESS);
  EXPECT_DOUBLE_EQ(v, 312.5e6);
  ASSERT_EQ(lh_parse_bandwidth("800kbit", &v), LH_SUCCESS);
  EXPECT_DOUBLE_EQ(v, 1e5);
  ASSERT_EQ(lh_parse_bandwidth("1e9bit", &v), LH_SUCCESS);
  EXPECT_DOUBLE_EQ(v, 125e6);
  for (const char *bad : {"", "mbit", "100", "100 MB/s", "-5mbit", "nan mbit", "inf gbit", "100mbit x"})
    EXPECT_EQ(lh_parse_bandwidth(bad, &v), LH_ERR_PARSE) << bad;
}

TEST(Units, Duration) {
  double v = 0;
  ASSERT_EQ(lh_parse_duration("20ms", &v), LH_SUCCESS);
  EXPECT_DOUBLE_EQ(v, 0.020);
  ASSERT_EQ(lh_parse_duration("150us", &v), LH_SUCCESS);
  EXPECT_DOUBLE_EQ(v, 150e-6);
  ASSERT_EQ(lh_parse_duration("1.5s", &v), LH_SUCCESS);
  EXPECT_DOUBLE_EQ(v, 1.5);
  ASSERT_EQ(lh_parse_duration("0", &v), LH_SUCCESS);
  EXPECT_EQ(v, 0.0);
  for (const char *bad : {"20", "20 minutes", "ms", "-1ms", "1e999s"})
    EXPECT_EQ(lh_parse_duration(bad, &v), LH_ERR_PARSE) << bad;
}

TEST(Units, Size) {
  size_t v = 0;
  ASSERT_EQ(lh_parse_size("4096", &v), LH_SUCCESS);
  EXPECT_EQ(v, 4096u);
  ASSERT_EQ(lh_parse_size("64K", &v), LH_SUCCESS);
  EXPECT_EQ(v, 65536u);
  ASSERT_EQ(lh_parse_size("16MiB", &v), LH_SUCCESS);
  EXPECT_EQ(v, 16u << 20);
  ASSERT_EQ(lh_parse_size("1G", &v), LH_SUCCESS);
  EXPECT_EQ(v, 1u << 30);
  for (const char *bad : {"1.5", "12Q", "", "K", "-4"})
    EXPECT_EQ(lh_parse_size(bad, &v), LH_ERR_PARSE) << bad;
  EXPECT_EQ(lh_parse_size("1", nullptr), LH_ERR_INVALID_ARGUMENT);
}

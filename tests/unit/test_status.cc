// Result names, error detail, version and build information.
#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <string>

#include <longhaul/longhaul.h>

TEST(Status, EveryCodeHasItsOwnName) {
  std::set<std::string> names;
  for (int s = 0; s < LH_STATUS_COUNT; s++) {
    const char *name = lh_status_string((lh_status)s);
    ASSERT_NE(name, nullptr);
    EXPECT_STRNE(name, "unknown status") << s;
    names.insert(name);
  }
  EXPECT_EQ(names.size(), (size_t)LH_STATUS_COUNT);
  EXPECT_STREQ(lh_status_string((lh_status)999), "unknown status");
}

TEST(Status, FrozenValues) {
  // Result values are part of the ABI: they may only be appended to.
  EXPECT_EQ(LH_SUCCESS, 0);
  EXPECT_EQ(LH_ERR_INVALID_ARGUMENT, 1);
  EXPECT_EQ(LH_ERR_TIMEOUT, 4);
  EXPECT_EQ(LH_ERR_MISMATCH, 8);
  EXPECT_EQ(LH_ERR_INTERNAL, 12);
}

TEST(Status, LastErrorCarriesTheDetail) {
  EXPECT_EQ(lh_version(nullptr, nullptr, nullptr), LH_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::strstr(lh_last_error(), "lh_version"), nullptr) << lh_last_error();
  double bw;
  EXPECT_EQ(lh_parse_bandwidth("12 furlongs", &bw), LH_ERR_PARSE);
  EXPECT_NE(std::strstr(lh_last_error(), "furlongs"), nullptr) << lh_last_error();
}

TEST(Status, VersionMatchesTheHeader) {
  int major = -1, minor = -1, patch = -1;
  ASSERT_EQ(lh_version(&major, &minor, &patch), LH_SUCCESS);
  EXPECT_EQ(major, LH_VERSION_MAJOR);
  EXPECT_EQ(minor, LH_VERSION_MINOR);
  EXPECT_EQ(patch, LH_VERSION_PATCH);
  EXPECT_EQ(LH_VERSION_CODE, major * 10000 + minor * 100 + patch);
  EXPECT_EQ(std::string(LH_VERSION_STRING),
            std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch));
}

TEST(Status, BuildInfoNamesTheBackends) {
  lh_build_features info = LH_BUILD_FEATURES_INIT;
  ASSERT_EQ(lh_build_info(&info), LH_SUCCESS);
  EXPECT_EQ(info.version_code, LH_VERSION_CODE);
  EXPECT_EQ(info.has_mpi, 1);
  ASSERT_NE(info.backends, nullptr);
  EXPECT_NE(std::strstr(info.backends, "mpi"), nullptr);
  EXPECT_EQ(info.has_nccl != 0, std::strstr(info.backends, "nccl") != nullptr);
  EXPECT_EQ(info.has_cuda != 0, std::strlen(info.kernels) > 0);
  lh_build_features old = LH_BUILD_FEATURES_INIT;
  old.size = 8;  // a caller compiled against a smaller struct than the library knows
  EXPECT_EQ(lh_build_info(&old), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_build_info(nullptr), LH_ERR_INVALID_ARGUMENT);
}

// The CPU twins of the reduction kernels (the GPU test compares the kernels against them).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "collective/collective_internal.h"

TEST(Reduce, AddAndDivideElementwise) {
  for (size_t n : {(size_t)0, (size_t)1, (size_t)7, (size_t)1000}) {
    std::vector<float> acc(n + 1, -7.0f), x(n + 1, 100.0f);
    for (size_t i = 0; i < n; i++) {
      acc[i] = 0.5f * (float)i;
      x[i] = 1.0f / (float)(i + 1);
    }
    lh_reduce_add_f32(acc.data(), x.data(), n);
    for (size_t i = 0; i < n; i++)
      EXPECT_EQ(acc[i], 0.5f * (float)i + 1.0f / (float)(i + 1)) << i;
    EXPECT_EQ(acc[n], -7.0f) << "wrote past the end";
    lh_reduce_div_f32(acc.data(), 3.0f, n);
    for (size_t i = 0; i < n; i++)
      EXPECT_EQ(acc[i], (0.5f * (float)i + 1.0f / (float)(i + 1)) / 3.0f) << i;
    EXPECT_EQ(acc[n], -7.0f);
  }
}

TEST(Reduce, HostDispatch) {
  float a[3] = {1, 2, 3}, b[3] = {10, 20, 30};
  ASSERT_EQ(lh_reduce_add(0, a, b, 3), LH_SUCCESS);
  EXPECT_EQ(a[2], 33.0f);
  ASSERT_EQ(lh_reduce_div(0, a, 11.0f, 3), LH_SUCCESS);
  EXPECT_EQ(a[0], 1.0f);
}

// Inputs shared by the codec tests: the same seed gives the same vector on every run.
#ifndef LH_TESTS_UNIT_CODEC_INPUTS_H
#define LH_TESTS_UNIT_CODEC_INPUTS_H

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

// n draws of N(0, sigma^2) from mt19937(seed).
inline std::vector<float> Gaussian(size_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> x(n);
  for (auto &v : x)
    v = dist(gen);
  return x;
}

#endif

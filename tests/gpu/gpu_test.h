// Helpers shared by the GPU tests.
#ifndef LH_TESTS_GPU_TEST_H
#define LH_TESTS_GPU_TEST_H

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <longhaul/status.h>
#include <longhaul/transport.h>

// Fails the test (returning from it) when a CUDA call does not succeed, naming the call.
#define ASSERT_CUDA(expr)                                                              \
  do {                                                                                 \
    cudaError_t cuda_e_ = (expr);                                                      \
    ASSERT_EQ(cuda_e_, cudaSuccess) << #expr << ": " << cudaGetErrorString(cuda_e_);   \
  } while (0)

// A kernel launcher returns 0 or a cudaError_t; fails the test when the launch or the kernel's run
// (the synchronize reports faults inside the kernel) does not succeed.
#define ASSERT_LAUNCH(expr)                                                                  \
  do {                                                                                       \
    int launch_rc_ = (expr);                                                                 \
    ASSERT_EQ(launch_rc_, 0) << #expr << ": " << cudaGetErrorString((cudaError_t)launch_rc_); \
    ASSERT_CUDA(cudaDeviceSynchronize());                                                    \
  } while (0)

#define ASSERT_LH(expr) ASSERT_EQ((expr), LH_SUCCESS) << #expr << ": " << lh_last_error()

// Destroys the communicator on scope exit, also when an ASSERT returned early.
struct CommGuard {
  lh_comm comm = nullptr;
  ~CommGuard() { lh_comm_destroy(comm); }
};

// ctest's SKIP_RETURN_CODE for the gpu label: a machine without a usable device reports the
// test as skipped, not passed (nothing was checked) and not failed (nothing is wrong).
constexpr int kLhGpuSkipCode = 77;

// Returns the number of CUDA devices, or exits with kLhGpuSkipCode when there is none or the
// runtime cannot reach a driver (a build machine without a GPU gets "no CUDA-capable device"
// or "driver version is insufficient"). Call first in main, before MPI or gtest start.
inline int lh_gpu_device_count_or_skip() {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count <= 0) {
    std::printf("no GPU: skipped (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device");
    std::fflush(stdout);
    std::exit(kLhGpuSkipCode);
  }
  return count;
}

// A device allocation, freed on scope exit.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    error_ = cudaMalloc(&ptr_, bytes ? bytes : 1);
    if (error_ != cudaSuccess)
      ptr_ = nullptr;
  }
  ~DeviceBuffer() {
    if (ptr_)
      cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer &) = delete;
  DeviceBuffer &operator=(const DeviceBuffer &) = delete;

  cudaError_t error() const { return error_; }
  void *get() const { return ptr_; }
  float *floats() const { return static_cast<float *>(ptr_); }
  cudaError_t Upload(const void *host) const {
    return bytes_ ? cudaMemcpy(ptr_, host, bytes_, cudaMemcpyHostToDevice) : cudaSuccess;
  }
  cudaError_t Download(void *host) const {
    return bytes_ ? cudaMemcpy(host, ptr_, bytes_, cudaMemcpyDeviceToHost) : cudaSuccess;
  }

 private:
  size_t bytes_;
  void *ptr_ = nullptr;
  cudaError_t error_;
};

// Guard bytes on each side of every Region.
constexpr size_t kGuard = 256;
// What a Region holds before a kernel runs: a byte the kernel should have written and did not
// differs from the CPU twin's, and a guard byte that is no longer this was written out of bounds.
constexpr uint8_t kPoisonByte = 0xAB;

// `bytes` bytes at `offset` past a cudaMalloc'd guard, with kGuard poisoned bytes after them.
class Region {
 public:
  Region(size_t bytes, size_t offset) : bytes_(bytes), offset_(offset), buffer_(kGuard + offset + bytes + kGuard) {}
  cudaError_t error() const { return buffer_.error(); }
  uint8_t *data() const { return static_cast<uint8_t *>(buffer_.get()) + kGuard + offset_; }
  float *floats() const { return reinterpret_cast<float *>(data()); }
  size_t total() const { return kGuard + offset_ + bytes_ + kGuard; }

  // Poison everywhere, then `host` (may be NULL: all poison) in the region.
  cudaError_t Fill(const void *host) const {
    std::vector<uint8_t> image(total(), kPoisonByte);
    if (host && bytes_)
      std::memcpy(image.data() + kGuard + offset_, host, bytes_);
    return buffer_.Upload(image.data());
  }
  // The region's bytes; a failure (with a message) when a guard byte changed.
  testing::AssertionResult Read(std::vector<uint8_t> *out) const {
    std::vector<uint8_t> image(total());
    cudaError_t e = buffer_.Download(image.data());
    if (e != cudaSuccess)
      return testing::AssertionFailure() << "download: " << cudaGetErrorString(e);
    for (size_t i = 0; i < image.size(); i++) {
      if (i >= kGuard + offset_ && i < kGuard + offset_ + bytes_)
        continue;
      if (image[i] != kPoisonByte)
        return testing::AssertionFailure()
               << "the kernel wrote outside its region: byte " << (long long)i - (long long)(kGuard + offset_)
               << " (region of " << bytes_ << " bytes) is 0x" << std::hex << (int)image[i];
    }
    out->assign(image.begin() + kGuard + offset_, image.begin() + kGuard + offset_ + bytes_);
    return testing::AssertionSuccess();
  }

 private:
  size_t bytes_, offset_;
  DeviceBuffer buffer_;
};

// The CPU twin's bytes against the kernel's: how many differ, and the first that does.
inline testing::AssertionResult SameBytes(const std::vector<uint8_t> &cpu, const std::vector<uint8_t> &gpu,
                                          const char *what) {
  if (cpu.size() != gpu.size())
    return testing::AssertionFailure() << what << ": sizes " << cpu.size() << " and " << gpu.size();
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < cpu.size(); i++)
    if (cpu[i] != gpu[i] && bad++ == 0)
      first = i;
  if (!bad)
    return testing::AssertionSuccess();
  char text[160];
  std::snprintf(text, sizeof text, "%s: %zu of %zu bytes differ; first at byte %zu: CPU 0x%02x, GPU 0x%02x", what, bad,
                cpu.size(), first, cpu[first], gpu[first]);
  return testing::AssertionFailure() << text;
}

// A host vector's bytes, to compare with SameBytes.
template <typename T>
std::vector<uint8_t> Bytes(const std::vector<T> &v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  if (!b.empty())
    std::memcpy(b.data(), v.data(), b.size());
  return b;
}

#endif

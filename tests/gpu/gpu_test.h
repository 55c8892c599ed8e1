// Helpers shared by the GPU tests.
#ifndef LH_TESTS_GPU_TEST_H
#define LH_TESTS_GPU_TEST_H

#include <cstddef>
#include <cstdio>
#include <cstdlib>

#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <longhaul/transport.h>

// Fails the test (returning from it) when a CUDA call does not succeed, naming the call.
#define ASSERT_CUDA(expr)                                                              \
  do {                                                                                 \
    cudaError_t cuda_e_ = (expr);                                                      \
    ASSERT_EQ(cuda_e_, cudaSuccess) << #expr << ": " << cudaGetErrorString(cuda_e_);   \
  } while (0)

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

#endif

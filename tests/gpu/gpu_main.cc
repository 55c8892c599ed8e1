// main() for the GPU tests: skip (exit 77) without a device, then run gtest. Built with
// LH_GPU_TEST_MPI=1 for programs run under mpirun, where the MPI tests' runner takes over
// (tests/mpi/mpi_run.cc) after each rank picks a device.
#include <gtest/gtest.h>

#include "gpu/gpu_test.h"

#ifdef LH_GPU_TEST_MPI
#include "mpi/mpi_test.h"

namespace {
int device_count = 0;

// Ranks share the GPUs there are (the mpi backend allows two ranks on one device).
int use_a_device(int rank) {
  if (cudaSetDevice(rank % device_count) == cudaSuccess)
    return 0;
  std::fprintf(stderr, "[rank %d] cudaSetDevice(%d) failed\n", rank, rank % device_count);
  return 1;
}
}  // namespace
#endif

int main(int argc, char **argv) {
  // Before MPI_Init: every rank of a one-host job sees the same devices, so all skip alike.
  int devices = lh_gpu_device_count_or_skip();
#ifdef LH_GPU_TEST_MPI
  device_count = devices;
  return lh_mpi_test_run(argc, argv, use_a_device);
#else
  (void)devices;
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
#endif
}

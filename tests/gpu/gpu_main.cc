// main() for the GPU tests: skip (exit 77) without a device, then run gtest. Built with
// LH_GPU_TEST_MPI=1 for programs run under mpirun, where it also does what tests/mpi's main
// does: every rank runs every test, rank 0 prints gtest's output, other ranks print only their
// failures, and every rank exits with the same verdict.
#include <gtest/gtest.h>

#include "gpu/gpu_test.h"

#ifdef LH_GPU_TEST_MPI
#include <mpi.h>
#include <longhaul/longhaul.h>
#include "mpi/mpi_test.h"

namespace {
class FailurePrinter : public testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const testing::TestPartResult &r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                   r.line_number(), r.summary());
  }

 private:
  int rank_;
};
}  // namespace

int lh_test_world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

int lh_test_world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}
#endif

int main(int argc, char **argv) {
  // Before MPI_Init: every rank of a one-host job sees the same devices, so all skip alike.
  int devices = lh_gpu_device_count_or_skip();
#ifdef LH_GPU_TEST_MPI
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);
  testing::InitGoogleTest(&argc, argv);
  int rank = lh_test_world_rank();
  // Ranks share the GPUs there are (the mpi backend allows two ranks on one device).
  if (cudaSetDevice(rank % devices) != cudaSuccess) {
    std::fprintf(stderr, "[rank %d] cudaSetDevice(%d) failed\n", rank, rank % devices);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  if (rank != 0) {
    auto &listeners = testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(rank));
  }
  int failed = RUN_ALL_TESTS() != 0;
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  lh_finalize();
  MPI_Finalize();
  return any;
#else
  (void)devices;
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
#endif
}

// The runner of MPI gtest programs: every rank runs every test; rank 0 prints the usual gtest
// output, other ranks print only their failures, and the exit code is the same on every rank
// (non-zero if any rank failed) so mpirun reports one verdict. mpi_main.cc and the GPU tests'
// main call it.
#include <mpi.h>
#include <gtest/gtest.h>
#include <cstdio>

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

int lh_mpi_test_run(int argc, char **argv, int (*setup)(int rank)) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided); // as lh_comm_create asks: reducers overlap on a thread
  testing::InitGoogleTest(&argc, argv);
  int rank = lh_test_world_rank();
  if (setup && setup(rank) != 0)
    MPI_Abort(MPI_COMM_WORLD, 1);
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
}

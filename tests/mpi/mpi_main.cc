// main() of the MPI test programs: the shared runner, with no per-rank setup.
#include "mpi/mpi_test.h"

int main(int argc, char **argv) { return lh_mpi_test_run(argc, argv, nullptr); }

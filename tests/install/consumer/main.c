/* A program outside the Longhaul tree, built only from the installed headers and library:
 * prints what it linked against, then runs a one-rank all-reduce as an MPI singleton (no
 * mpirun). Exits non-zero on any failure. */
#include <stdio.h>
#include <stdlib.h>

#include <longhaul/longhaul.h>

#define CHECK(expr)                                                                        \
  do {                                                                                     \
    lh_status check_s_ = (expr);                                                           \
    if (check_s_ != LH_SUCCESS) {                                                          \
      fprintf(stderr, "consumer: %s failed: %s: %s\n", #expr, lh_status_string(check_s_), \
              lh_last_error());                                                            \
      exit(1);                                                                             \
    }                                                                                      \
  } while (0)

static const char *or_empty(const char *s) { return s ? s : "(null)"; }

int main(void) {
  int major = -1, minor = -1, patch = -1;
  CHECK(lh_version(&major, &minor, &patch));
  printf("consumer: library %d.%d.%d, headers %s\n", major, minor, patch, LH_VERSION_STRING);
  /* A header/library mix-up is exactly what an install test exists to catch. */
  if (major != LH_VERSION_MAJOR || minor != LH_VERSION_MINOR || patch != LH_VERSION_PATCH) {
    fprintf(stderr, "consumer: the library's version differs from the headers'\n");
    return 1;
  }

  lh_build_features info = LH_BUILD_FEATURES_INIT;
  CHECK(lh_build_info(&info));
  printf("consumer: backends '%s', kernels '%s', cuda archs '%s', compiler '%s'\n", or_empty(info.backends),
         or_empty(info.kernels), or_empty(info.cuda_archs), or_empty(info.compiler));
  printf("consumer: mpi %d nccl %d cuda %d hwloc %d zstd %d\n", info.has_mpi, info.has_nccl, info.has_cuda,
         info.has_hwloc, info.has_zstd);
  if (info.version_code != LH_VERSION_CODE || !info.has_mpi) {
    fprintf(stderr, "consumer: build info is inconsistent (version_code %d, has_mpi %d)\n", info.version_code,
            info.has_mpi);
    return 1;
  }

  /* mpi backend whatever LH_BACKEND says (nccl would need a GPU), and no simulated links. */
  lh_comm_config config = LH_COMM_CONFIG_INIT;
  config.backend = LH_BACKEND_MPI;
  config.simulate = 0;
  lh_comm comm = NULL;
  CHECK(lh_comm_create(&config, &comm));
  int size = 0;
  CHECK(lh_comm_size(comm, &size));
  if (size != 1) {
    fprintf(stderr, "consumer: expected a singleton (1 rank), got %d ranks\n", size);
    return 1;
  }

  const float send[3] = {1.5f, -2.25f, 1e30f};
  float recv[3] = {0.0f, 0.0f, 0.0f};
  CHECK(lh_allreduce(comm, send, recv, 3, NULL));
  for (int i = 0; i < 3; i++)
    if (recv[i] != send[i]) { /* one rank: the sum is the input, exactly */
      fprintf(stderr, "consumer: element %d is %g, expected %g\n", i, (double)recv[i], (double)send[i]);
      return 1;
    }

  CHECK(lh_comm_destroy(comm));
  CHECK(lh_finalize());
  printf("consumer: ok\n");
  return 0;
}

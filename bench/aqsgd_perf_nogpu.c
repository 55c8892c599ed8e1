/* aqsgd_perf's GPU part in a build without CUDA: says so, measures nothing. */
#include <stdio.h>

#include "aqsgd_perf.h"

long lh_aqsgd_perf_gpu(const aqsgd_perf_config *c) {
  (void)c;
  printf("# no GPU: this build has no CUDA (configure with LH_WITH_CUDA=ON on a machine with nvcc); "
         "the CPU twins' rows follow\n");
  return -1;
}

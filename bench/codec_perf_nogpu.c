/* codec_perf's GPU part in a build without CUDA: says so, measures nothing. */
#include <stdio.h>

#include "codec_perf.h"

long lh_codec_perf_gpu(const size_t *sizes, int nsizes, int iters, const char *only_codec) {
  (void)sizes, (void)nsizes, (void)iters, (void)only_codec;
  printf("# GPU rows: this build has no CUDA (configure with LH_WITH_CUDA=ON on a machine with nvcc)\n");
  return -1;
}

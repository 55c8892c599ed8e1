#include "common/internal.h"

#ifndef LH_CUDA_ARCHS
#define LH_CUDA_ARCHS ""
#endif

lh_status lh_build_info(lh_build_features *info) {
  if (!info)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_build_info: info must not be NULL");
  if (info->size < sizeof(lh_build_features))
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_build_info: info->size is %zu, expected at least %zu (use LH_BUILD_FEATURES_INIT)",
                    info->size, sizeof(lh_build_features));
  info->version_code = LH_VERSION_CODE;
  info->has_mpi = 1;
#ifdef LH_HAVE_NCCL
  info->has_nccl = 1;
  info->backends = "mpi nccl";
#else
  info->has_nccl = 0;
  info->backends = "mpi";
#endif
#ifdef LH_HAVE_CUDA
  info->has_cuda = 1;
  /* One name per launcher family in kernels/kernels.h. */
  info->kernels = "reduce_add_f32 reduce_div_f32 residual_add_f32 qz_max_abs_bits cast blockq sign topk powersgd aqsgd";
  info->cuda_archs = LH_CUDA_ARCHS;
#else
  info->has_cuda = 0;
  info->kernels = "";
  info->cuda_archs = "";
#endif
#ifdef LH_HAVE_HWLOC
  info->has_hwloc = 1;
#else
  info->has_hwloc = 0;
#endif
  info->has_zstd = 1;
#if defined(__clang__)
  info->compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
  info->compiler = "gcc " __VERSION__;
#else
  info->compiler = "unknown";
#endif
  return LH_SUCCESS;
}

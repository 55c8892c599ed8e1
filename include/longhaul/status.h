/* Longhaul result codes, error detail, version and build information.
 *
 * Stability: everything in this header is stable. Result values are frozen: new codes are
 * only ever appended, existing ones never renumbered. */
#ifndef LONGHAUL_STATUS_H
#define LONGHAUL_STATUS_H

#include <stddef.h>
#include <longhaul/version.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Every public function returns one of these. */
typedef enum lh_status {
  LH_SUCCESS = 0,
  LH_ERR_INVALID_ARGUMENT = 1, /* a NULL pointer, a size or rank out of range, a bad option */
  LH_ERR_OUT_OF_MEMORY = 2,    /* host or device allocation failed */
  LH_ERR_NOT_SUPPORTED = 3,    /* not compiled in, or not possible in this configuration */
  LH_ERR_TIMEOUT = 4,          /* a wait exceeded LH_TIMEOUT_S; the detail names the peer */
  LH_ERR_TRANSPORT = 5,        /* the MPI or NCCL layer reported a failure */
  LH_ERR_IO = 6,               /* a file could not be opened, read or written */
  LH_ERR_PARSE = 7,            /* a file or string is malformed; the detail says where */
  LH_ERR_MISMATCH = 8,         /* ranks disagree: sizes, counts or collective arguments */
  LH_ERR_ENV = 9,              /* an LH_* environment variable has a value that is not allowed */
  LH_ERR_CUDA = 10,            /* a CUDA runtime call failed */
  LH_ERR_CORRUPT = 11,         /* received data failed a consistency check */
  LH_ERR_INTERNAL = 12,        /* a bug in Longhaul: please report it with the detail */
  LH_STATUS_COUNT              /* not a status: the number of codes */
} lh_status;

/* A short, static, human-readable name for a code ("invalid argument"). Never NULL. */
const char *lh_status_string(lh_status status);

/* The detail of the last error raised on the calling thread, e.g.
 * "lh_irecv: peer 7 is out of range for a communicator of 4 ranks". Never NULL; "" when no
 * error was raised. The text stays valid until the next Longhaul call on the same thread. */
const char *lh_last_error(void);

/* Run-time version, to compare with the LH_VERSION_* macros the caller compiled against. */
lh_status lh_version(int *major, int *minor, int *patch);

/* What this build of the library contains. Set .size before the call (LH_BUILD_FEATURES_INIT)
 * so that a newer library can tell which fields an older caller knows about. */
typedef struct lh_build_features {
  size_t size;
  int version_code;       /* LH_VERSION_CODE of the library */
  int has_mpi;            /* always 1: the mpi backend is always built */
  int has_nccl;           /* the nccl backend */
  int has_cuda;           /* CUDA kernels and device-buffer staging */
  int has_hwloc;          /* topology discovery and binding */
  int has_zstd;           /* the lossless stage */
  const char *backends;   /* e.g. "mpi nccl" */
  const char *kernels;    /* CUDA kernels compiled in, e.g. "reduce_add_f32 reduce_div_f32"; "" without CUDA */
  const char *cuda_archs; /* e.g. "80,90"; "" without CUDA */
  const char *compiler;   /* C compiler and version */
} lh_build_features;
#define LH_BUILD_FEATURES_INIT {sizeof(lh_build_features), 0, 0, 0, 0, 0, 0, NULL, NULL, NULL, NULL}

lh_status lh_build_info(lh_build_features *info);

#ifdef __cplusplus
}
#endif
#endif

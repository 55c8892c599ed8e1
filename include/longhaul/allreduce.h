/* All-reduce of float32 over a Longhaul communicator.
 *
 * Algorithms:
 *   LH_ALLREDUCE_RING  the baseline: reduce-scatter then all-gather around the ring of ranks,
 *                      each step cut into chunks that are pipelined through the ring so that
 *                      latency is paid once per step, not once per chunk. Sums each element
 *                      in a fixed order and forwards the owner's bytes verbatim, so every rank
 *                      ends bitwise identical, and a second run gives the same bits.
 *   LH_ALLREDUCE_MPI   MPI_Allreduce, the reference. Its bytes move inside MPI where the
 *                      simulated-link layer cannot see them, so it is refused on simulated
 *                      links (use the namespace testbed, examples/wan/testbed.sh).
 *   LH_ALLREDUCE_AUTO  the ring.
 *
 * Any count (0 and counts below the rank count included) and any number of ranks from 1.
 * In place when sendbuf == recvbuf. All ranks must pass the same count, algorithm and op:
 * this is checked, and a difference gives LH_ERR_MISMATCH on every rank.
 * Stability: stable. */
#ifndef LONGHAUL_ALLREDUCE_H
#define LONGHAUL_ALLREDUCE_H

#include <stddef.h>
#include <longhaul/status.h>
#include <longhaul/transport.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lh_allreduce_algo {
  LH_ALLREDUCE_AUTO = 0,
  LH_ALLREDUCE_RING = 1,
  LH_ALLREDUCE_MPI = 2
} lh_allreduce_algo;

typedef enum lh_reduce_op {
  LH_OP_SUM = 0,
  LH_OP_MEAN = 1 /* the sum divided by the number of ranks, on every rank alike */
} lh_reduce_op;

typedef struct lh_allreduce_config {
  size_t size;            /* sizeof(lh_allreduce_config) */
  int version;            /* LH_VERSION_CODE */
  lh_allreduce_algo algo; /* default LH_ALLREDUCE_AUTO */
  lh_reduce_op op;        /* default LH_OP_SUM */
  size_t chunk_bytes;     /* ring pipeline chunk; 0: LH_RING_CHUNK_BYTES, else 1 MiB */
} lh_allreduce_config;
#define LH_ALLREDUCE_CONFIG_INIT \
  {sizeof(lh_allreduce_config), LH_VERSION_CODE, LH_ALLREDUCE_AUTO, LH_OP_SUM, 0}

/* config may be NULL for the defaults. Buffers are host memory, or device memory (staged
 * through the host for the mpi backend). */
lh_status lh_allreduce(lh_comm comm, const float *sendbuf, float *recvbuf, size_t count,
                       const lh_allreduce_config *config);

/* Name of an algorithm ("ring", "mpi", "auto") and the reverse. */
lh_status lh_allreduce_algo_name(lh_allreduce_algo algo, const char **name);
lh_status lh_allreduce_algo_parse(const char *name, lh_allreduce_algo *algo);

#ifdef __cplusplus
}
#endif
#endif

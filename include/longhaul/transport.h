/* The transport: communicators, non-blocking point-to-point messages, and the few
 * collectives the library builds on, over one of several backends.
 *
 *   backend mpi  (always built, the default) Open MPI; host buffers, and device buffers
 *                staged through pinned host memory when built with CUDA.
 *   backend nccl (built when NCCL is found) device buffers only; tags are ignored, so
 *                messages between a pair of ranks match in posting order.
 *
 * Simulated links. When LH_LINKS names a link file, or LH_SIM_BW / LH_SIM_LAT are set (or the
 * config's fields are), every directed pair i -> j behaves like a link of latency alpha_ij and
 * bandwidth beta_ij: a message of B bytes posted at time t leaves at
 * start = max(t, link free), its last byte arrives at start + B/beta + alpha, the receive
 * completes no earlier than that, and the link is busy until start + B/beta (the send
 * completes then). An uplink cap in the link file makes a rank's links share its NIC.
 * Device indices in the link file are ranks of the communicator the simulation was created
 * on (usually MPI_COMM_WORLD); split communicators share their parent's links.
 *
 * Every blocking wait honours LH_TIMEOUT_S (or config.timeout_s) and returns LH_ERR_TIMEOUT
 * naming the peer instead of hanging.
 *
 * Threads: a communicator and its requests belong to one thread at a time.
 * Stability: stable. */
#ifndef LONGHAUL_TRANSPORT_H
#define LONGHAUL_TRANSPORT_H

#include <stddef.h>
#include <longhaul/status.h>
#include <longhaul/links.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lh_comm_s *lh_comm;       /* opaque communicator */
typedef struct lh_request_s *lh_request; /* opaque handle of one non-blocking operation */

typedef enum lh_backend {
  LH_BACKEND_DEFAULT = 0, /* LH_BACKEND, else mpi */
  LH_BACKEND_MPI = 1,
  LH_BACKEND_NCCL = 2
} lh_backend;

/* User tags are 0..LH_TAG_MAX; tags above are reserved for Longhaul's own collectives. */
#define LH_TAG_MAX 29999

/* Fields left at their "unset" value fall back to the LH_* environment, then to the defaults
 * listed in env.h. Always start from LH_COMM_CONFIG_INIT. */
typedef struct lh_comm_config {
  size_t size;               /* sizeof(lh_comm_config): lets the struct grow */
  int version;               /* LH_VERSION_CODE the caller compiled against */
  lh_backend backend;        /* unset: LH_BACKEND_DEFAULT */
  const void *mpi_comm;      /* pointer to an MPI_Comm to build on; NULL: MPI_COMM_WORLD */
  double timeout_s;          /* unset: < 0 */
  size_t chunk_bytes;        /* unset: 0 */
  int max_inflight;          /* unset: 0 */
  const char *links_path;    /* unset: NULL */
  const char *sim_bandwidth; /* e.g. "100mbit"; unset: NULL */
  const char *sim_latency;   /* e.g. "20ms"; unset: NULL */
  int simulate;              /* 1: as configured above; 0: never simulate, even if LH_* say so */
} lh_comm_config;
#define LH_COMM_CONFIG_INIT \
  {sizeof(lh_comm_config), LH_VERSION_CODE, LH_BACKEND_DEFAULT, NULL, -1.0, 0, 0, NULL, NULL, NULL, 1}

/* Collective over the MPI communicator. Initialises MPI when nobody has yet (then
 * lh_finalize() finalises it). */
lh_status lh_comm_create(const lh_comm_config *config, lh_comm *comm);
/* Collective. Accepts NULL. Outstanding requests of the communicator are cancelled. */
lh_status lh_comm_destroy(lh_comm comm);
/* Collective: ranks with the same color form a new communicator, ordered by key then rank.
 * color < 0 gives *out = NULL (the rank joins none). The child shares the parent's links. */
lh_status lh_comm_split(lh_comm comm, int color, int key, lh_comm *out);
/* Finalises MPI if lh_comm_create initialised it. Call once, after the last destroy. */
lh_status lh_finalize(void);

lh_status lh_comm_rank(lh_comm comm, int *rank);
lh_status lh_comm_size(lh_comm comm, int *size);
lh_status lh_comm_backend(lh_comm comm, lh_backend *backend);
/* The host name of a rank, gathered at creation. */
lh_status lh_comm_host(lh_comm comm, int rank, char *name, size_t capacity);
/* Number of distinct hosts among the ranks. */
lh_status lh_comm_host_count(lh_comm comm, int *hosts);
/* Whether links are simulated, and a one-line description ("uniform 100 Mbit/s, 20 ms",
 * "links from net.links"). */
lh_status lh_comm_simulation(lh_comm comm, int *simulated, char *description, size_t capacity);
/* The link model in use, as a matrix over this communicator's ranks: the configured links when
 * simulated; otherwise LH_ERR_NOT_SUPPORTED. The caller frees it with lh_links_free. */
lh_status lh_comm_links(lh_comm comm, lh_links **links);

/* Non-blocking point to point. `bytes` may be 0. Receives must be posted with exactly the
 * size sent: a difference gives LH_ERR_MISMATCH naming both sizes. Messages between a pair of
 * ranks with the same tag match in posting order. buf may be host or (with CUDA) device memory. */
lh_status lh_isend(lh_comm comm, const void *buf, size_t bytes, int peer, int tag, lh_request *request);
lh_status lh_irecv(lh_comm comm, void *buf, size_t bytes, int peer, int tag, lh_request *request);
/* *done = 1 when the operation completed; the request is then released and set to NULL.
 * A request that failed is released too, and its status returned. */
lh_status lh_test(lh_request *request, int *done);
/* Waits for completion (or LH_TIMEOUT_S) and releases the request. NULL requests are done. */
lh_status lh_wait(lh_request *request);
/* Waits for all; returns the first failure, after trying to complete the rest. */
lh_status lh_waitall(int count, lh_request *requests);
/* Blocking forms. */
lh_status lh_send(lh_comm comm, const void *buf, size_t bytes, int peer, int tag);
lh_status lh_recv(lh_comm comm, void *buf, size_t bytes, int peer, int tag);

/* Collectives built on the point-to-point layer, so simulated links shape them too. */
lh_status lh_barrier(lh_comm comm);
lh_status lh_bcast(lh_comm comm, void *buf, size_t bytes, int root);

/* Bytes and messages this rank put on the link to `peer` (payload bytes; the 24-byte
 * message headers are not counted), and the link's configured alpha/beta when simulated. */
typedef struct lh_link_stats {
  size_t size;
  unsigned long long bytes_sent;
  unsigned long long messages_sent;
  unsigned long long bytes_received;
  int simulated;
  double latency_s;     /* configured, when simulated */
  double bandwidth_Bps; /* configured, when simulated; 0 = unlimited */
} lh_link_stats;
#define LH_LINK_STATS_INIT {sizeof(lh_link_stats), 0, 0, 0, 0, 0.0, 0.0}

lh_status lh_comm_link_stats(lh_comm comm, int peer, lh_link_stats *stats);
lh_status lh_comm_reset_stats(lh_comm comm);

#ifdef __cplusplus
}
#endif
#endif

/* Transport internals: the communicator, requests, the backend function table and the
 * simulated-link state. Never installed.
 *
 * Wire protocol. Every message is a 32-byte header on the communicator's control channel
 * (always MPI, host memory) followed by its payload on the data channel (the backend), cut
 * into chunks of at most chunk_bytes. Headers carry the size, so a receive of the wrong size
 * fails with LH_ERR_MISMATCH instead of corrupting later messages, and, on simulated links,
 * the time the last byte arrives. Payload chunks of a peer are posted strictly in the order
 * the messages were posted, with at most max_inflight send chunks in flight per peer: the
 * channels match messages by order, so order is what keeps them paired. */
#ifndef LH_TRANSPORT_INTERNAL_H
#define LH_TRANSPORT_INTERNAL_H

#include <mpi.h>
#include <pthread.h>
#include <stdint.h>
#include <longhaul/transport.h>

#include "common/internal.h"

/* Reserved tags (above LH_TAG_MAX) used by Longhaul's own collectives. */
enum {
  LH_TAG_BARRIER = LH_TAG_MAX + 1,
  LH_TAG_BCAST,
  LH_TAG_RING,
  LH_TAG_PROBE,
  LH_TAG_COMPRESSED,        /* frames of the compressed all-reduce algorithms */
  LH_TAG_COMPRESSED_GATHER, /* the owners' frames of the owner reduce (its phase 2) */
  LH_TAG_PIPELINE_FORWARD,  /* a pipeline's activation frames, stage s -> s + 1 */
  LH_TAG_PIPELINE_BACKWARD, /* its gradient frames, stage s + 1 -> s */
  LH_TAG_LIMIT /* first tag never used */
};

/* A backend's handle for one posted chunk; big enough for an MPI_Request or a pointer. */
typedef union lh_be_handle {
  void *ptr;
  MPI_Request mpi;
  uint64_t u64[2];
} lh_be_handle;

/* One table per backend. Adding a backend is one file plus one line in lh_backend_lookup. */
typedef struct lh_backend_ops {
  const char *name;
  int host_memory;   /* payload buffers may be host memory */
  int device_memory; /* payload buffers may be device memory */
  /* Creates the backend state for comm (comm->ctrl, rank and size are set). */
  lh_status (*create)(struct lh_comm_s *comm, void **state);
  void (*destroy)(void *state);
  lh_status (*post_send)(void *state, const void *buf, size_t bytes, int peer, int tag, lh_be_handle *h);
  lh_status (*post_recv)(void *state, void *buf, size_t bytes, int peer, int tag, lh_be_handle *h);
  /* Issues what was posted since the last flush (NCCL groups them); may be NULL. */
  lh_status (*flush)(void *state);
  lh_status (*test)(void *state, lh_be_handle *h, int *done);
  /* Abandons a posted operation (after a timeout or error); best effort. */
  void (*abandon)(void *state, lh_be_handle *h, int is_recv);
} lh_backend_ops;

extern const lh_backend_ops lh_backend_mpi_ops;
#ifdef LH_HAVE_NCCL
extern const lh_backend_ops lh_backend_nccl_ops;
#endif

/* ---- simulated links ---------------------------------------------------------------------- */

/* Shared by a communicator and everything split from it: indices are ranks of the
 * communicator the simulation was created on ("sim ranks"). Only this process's own outgoing
 * links are tracked; the receiver learns arrival times from the message header. */
typedef struct lh_sim {
  int refs;
  int n;              /* devices simulated = ranks of the creating communicator */
  int me;             /* this process's sim rank */
  double *latency;    /* n*n seconds, row = from */
  double *bandwidth;  /* n*n bytes/s, 0 = unlimited */
  double *uplink;     /* n bytes/s, 0 = no NIC cap */
  double *link_free;  /* n: when my link to each peer is next free */
  double uplink_free; /* when my NIC is next free (with a cap) */
  pthread_mutex_t lock; /* booking: a reducer's worker thread books on a child communicator */
  lh_links *links;    /* the configured model, as a link matrix */
  char description[160];
} lh_sim;

/* Builds the simulation from the config and LH_* environment; *sim = NULL when not simulated. */
lh_status lh_sim_create(const lh_comm_config *config, int n, int me, lh_sim **sim);
void lh_sim_release(lh_sim *sim);
/* Books a message of `bytes` on my link to sim rank `to` posted now: returns when its last
 * byte leaves (the send completes) and when it arrives (the receive completes). */
void lh_sim_book(lh_sim *sim, int to, size_t bytes, double *depart, double *arrive);
/* The same, starting no earlier than `earliest` (lh_now() seconds). */
void lh_sim_book_after(lh_sim *sim, int to, size_t bytes, double earliest, double *depart, double *arrive);

/* ---- communicator and requests -------------------------------------------------------- */

typedef struct lh_msg_header {
  uint32_t magic;  /* LH_MSG_MAGIC */
  uint32_t tag;
  uint64_t bytes;
  double arrive;   /* simulated arrival time of the last byte; 0 when not simulated */
  uint64_t seq;    /* per-peer message number, for diagnostics */
} lh_msg_header;
#define LH_MSG_MAGIC 0x4C484D31u /* "LHM1" */

typedef enum { LH_REQ_SEND, LH_REQ_RECV } lh_req_kind;
typedef enum { LH_STAGE_NONE, LH_STAGE_HOST, LH_STAGE_DEVICE } lh_stage_kind;

struct lh_request_s {
  struct lh_comm_s *comm;
  lh_req_kind kind;
  int peer, tag;
  size_t bytes;       /* receives posted with lh_irecv_upto: the capacity, then the size sent */
  size_t *received;   /* lh_irecv_upto: where the size sent is stored; NULL otherwise */
  void *user_buf;     /* the caller's buffer */
  char *wire_buf;     /* what the backend reads/writes: user_buf or the staging buffer */
  lh_stage_kind stage;
  size_t chunk_bytes;
  int nchunks, posted, completed;
  lh_be_handle *chunks;
  unsigned char *chunk_done;
  MPI_Request header_req;
  int header_done;
  lh_msg_header header;
  uint64_t peer_seq;  /* receives: order among receives from the same peer */
  int chunks_allowed; /* receives: header checked and it is this receive's turn */
  double not_before;  /* simulated links: completion time */
  double posted_at;
  lh_status status;   /* first failure */
  char error_text[256]; /* its detail */
  int finished;
  struct lh_request_s *prev, *next;
};

struct lh_comm_s {
  int rank, size;
  MPI_Comm ctrl;       /* headers, argument checks, splits */
  const lh_backend_ops *ops;
  void *be;            /* backend state */
  lh_backend backend;
  double timeout_s;
  size_t chunk_bytes;
  int max_inflight;
  int *send_inflight;       /* per peer: send chunks posted, not completed */
  uint64_t *send_seq;       /* per peer: messages sent */
  uint64_t *recv_posted;    /* per peer: receives posted */
  uint64_t *recv_turn;      /* per peer: the receive whose chunks may be posted next */
  unsigned long long *bytes_sent, *messages_sent, *bytes_received;
  lh_sim *sim;              /* NULL when links are not simulated */
  int *sim_rank;            /* comm rank -> sim rank */
  char (*hosts)[64];        /* host name of each rank */
  int host_count;
  struct lh_agreement *stale_agreements; /* argument checks that timed out, still in MPI */
  void *scratch;            /* grow-only host scratch for collectives (first touch is costly) */
  size_t scratch_bytes;
  lh_status broken;         /* set after a failure that desynchronises the channels */
  char broken_reason[256];
  int exclusive;            /* progressed only by the thread that owns it (a reducer's worker),
                               never by lh_progress_all from other threads */
  struct lh_request_s *head, *tail; /* active requests in posting order */
  struct lh_comm_s *next_live;      /* process-wide list, for progress across communicators */
};

/* Advances one communicator: tests posted work, posts queued chunks, and with flush set has a
 * grouping backend issue what was posted. */
lh_status lh_comm_progress(struct lh_comm_s *comm, int flush);
/* Unlinks and frees a request, abandoning whatever it still has posted. */
void lh_request_abandon(struct lh_request_s *req);
/* The same for every non-NULL request of an array (NULL array: nothing); after a failure. */
void lh_requests_abandon(lh_request *requests, size_t count);
/* Host scratch of at least `bytes`, kept by the communicator between calls: allocating and
 * first-touching megabytes on every collective costs more than a fast link's transfer. */
lh_status lh_comm_scratch(struct lh_comm_s *comm, size_t bytes, void **scratch);
/* The pause between polls of something MPI must progress, by how many polls came before:
 * none at first, then a yield, then 50 us sleeps. */
void lh_poll_pause(int polls);
/* Advances every live communicator: tests posted work, posts queued chunks. On a thread that
 * set a progress scope, only that communicator. */
lh_status lh_progress_all(void);
/* Makes this thread's lh_progress_all advance only comm (NULL: every non-exclusive one). */
void lh_progress_scope(struct lh_comm_s *comm);
/* lh_isend for a sender that models one NIC across its peers: on simulated links the message
 * leaves no earlier than *nic_free, and *nic_free becomes its departure, so messages posted
 * together to different peers go one after another, as from one real uplink, without the
 * sender having to wake up between them. On real links it is lh_isend (the NIC does it). */
lh_status lh_isend_nic(lh_comm comm, const void *buf, size_t bytes, int peer, int tag, double *nic_free,
                       lh_request *request);
/* A receive of at most `capacity` bytes: any size up to it is accepted, and the size sent is
 * stored in *received when the request completes (frames whose length depends on the data). */
lh_status lh_irecv_upto(lh_comm comm, void *buf, size_t capacity, size_t *received, int peer, int tag,
                        lh_request *request);
/* Validates a communicator handle and that it is usable. */
lh_status lh_comm_check(lh_comm comm, const char *fn);
/* Records that comm can no longer be used, with the reason. */
void lh_comm_break(lh_comm comm, lh_status status, const char *reason);
/* All ranks must pass equal values; LH_ERR_MISMATCH on every rank otherwise. The check runs
 * on the control channel (one small MPI_Allreduce), not on the simulated links. */
lh_status lh_comm_agree(lh_comm comm, const long long *values, int count, const char *const *names,
                        const char *fn);

lh_status lh_mpi_error(int code, const char *what);
/* Applies LH_BIND once per process (binding.c); warns, never fails. */
void lh_apply_binding(MPI_Comm ctrl);

#endif

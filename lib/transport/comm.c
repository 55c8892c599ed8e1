/* Communicators: creation over MPI, splitting, queries and statistics. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "transport/transport_internal.h"

static struct lh_comm_s *lh_live_comms; /* every communicator of this process */
static void lh_release_agreements(struct lh_comm_s *c);
static int lh_we_initialized_mpi;

static const lh_backend_ops *lh_backend_lookup(lh_backend b) {
  switch (b) {
  case LH_BACKEND_MPI: return &lh_backend_mpi_ops;
#ifdef LH_HAVE_NCCL
  case LH_BACKEND_NCCL: return &lh_backend_nccl_ops;
#endif
  default: return NULL;
  }
}

static const char *lh_backend_name(lh_backend b) {
  return b == LH_BACKEND_NCCL ? "nccl" : b == LH_BACKEND_MPI ? "mpi" : "default";
}

lh_status lh_comm_check(lh_comm comm, const char *fn) {
  if (!comm)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: the communicator is NULL", fn);
  if (comm->broken != LH_SUCCESS)
    return lh_error(comm->broken, "%s: the communicator is unusable after an earlier failure: %s", fn,
                    comm->broken_reason);
  return LH_SUCCESS;
}

void lh_comm_break(lh_comm comm, lh_status status, const char *reason) {
  if (comm->broken != LH_SUCCESS)
    return;
  comm->broken = status;
  snprintf(comm->broken_reason, sizeof comm->broken_reason, "%s", reason);
  lh_log(LH_LOG_WARN, "transport", "communicator disabled: %s", reason);
}

/* Fills the config's unset fields from the environment, then the defaults. */
static lh_status lh_resolve_config(const lh_comm_config *in, lh_comm_config *out) {
  lh_comm_config defaults = LH_COMM_CONFIG_INIT;
  if (in) {
    if (in->size < sizeof(lh_comm_config))
      return lh_error(LH_ERR_INVALID_ARGUMENT,
                      "lh_comm_create: config->size is %zu, expected %zu (start from LH_COMM_CONFIG_INIT)", in->size,
                      sizeof(lh_comm_config));
    *out = *in;
  } else {
    *out = defaults;
  }
  LH_CHECK(lh_env_validate());
  if (out->backend == LH_BACKEND_DEFAULT) {
    const char *b = lh_env_raw("LH_BACKEND");
    out->backend = (b && !strcasecmp(b, "nccl")) ? LH_BACKEND_NCCL : LH_BACKEND_MPI;
  }
  if (out->backend != LH_BACKEND_MPI && out->backend != LH_BACKEND_NCCL)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_comm_create: unknown backend %d", (int)out->backend);
  if (!lh_backend_lookup(out->backend))
    return lh_error(LH_ERR_NOT_SUPPORTED, "lh_comm_create: backend '%s' was not compiled in (lh-info lists the backends)",
                    lh_backend_name(out->backend));
  if (out->timeout_s < 0)
    LH_CHECK(lh_env_double("LH_TIMEOUT_S", &out->timeout_s));
  else if (out->timeout_s == 0)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_comm_create: timeout_s must be positive (or < 0 for LH_TIMEOUT_S)");
  if (out->chunk_bytes == 0)
    LH_CHECK(lh_env_size("LH_CHUNK_BYTES", &out->chunk_bytes));
  else if (out->chunk_bytes < 4096)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_comm_create: chunk_bytes %zu is below the minimum of 4096",
                    out->chunk_bytes);
  if (out->chunk_bytes > ((size_t)1 << 30))
    out->chunk_bytes = (size_t)1 << 30; /* MPI counts are int */
  if (out->max_inflight == 0)
    LH_CHECK(lh_env_int("LH_MAX_INFLIGHT", &out->max_inflight));
  else if (out->max_inflight < 0 || out->max_inflight > 1024)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_comm_create: max_inflight %d is outside 1..1024", out->max_inflight);
  return LH_SUCCESS;
}

lh_status lh_comm_scratch(struct lh_comm_s *c, size_t bytes, void **scratch) {
  if (bytes > c->scratch_bytes) {
    void *grown = lh_malloc(bytes, "collective scratch");
    if (!grown)
      return LH_ERR_OUT_OF_MEMORY;
    free(c->scratch);
    c->scratch = grown;
    c->scratch_bytes = bytes;
  }
  *scratch = c->scratch;
  return LH_SUCCESS;
}

static void lh_comm_free_memory(struct lh_comm_s *c) {
  free(c->scratch);
  free(c->send_inflight);
  free(c->send_seq);
  free(c->recv_posted);
  free(c->recv_turn);
  free(c->bytes_sent);
  free(c->messages_sent);
  free(c->bytes_received);
  free(c->sim_rank);
  free(c->hosts);
  free(c);
}

/* Builds a communicator on an MPI communicator that this function takes ownership of. */
static lh_status lh_comm_build(MPI_Comm ctrl, const lh_comm_config *cfg, lh_sim *parent_sim,
                               const int *parent_sim_rank_of_mine, lh_comm *out) {
  lh_status st = LH_SUCCESS;
  struct lh_comm_s *c = lh_calloc(1, sizeof *c, "a communicator");
  if (!c) {
    MPI_Comm_free(&ctrl);
    return LH_ERR_OUT_OF_MEMORY;
  }
  c->ctrl = ctrl;
  MPI_Comm_set_errhandler(ctrl, MPI_ERRORS_RETURN);
  MPI_Comm_rank(ctrl, &c->rank);
  MPI_Comm_size(ctrl, &c->size);
  c->backend = cfg->backend;
  c->ops = lh_backend_lookup(cfg->backend);
  c->timeout_s = cfg->timeout_s;
  c->chunk_bytes = cfg->chunk_bytes;
  c->max_inflight = cfg->max_inflight;
  size_t n = (size_t)c->size;
  c->send_inflight = lh_calloc(n, sizeof(int), "per-peer counters");
  c->send_seq = lh_calloc(n, sizeof(uint64_t), "per-peer counters");
  c->recv_posted = lh_calloc(n, sizeof(uint64_t), "per-peer counters");
  c->recv_turn = lh_calloc(n, sizeof(uint64_t), "per-peer counters");
  c->bytes_sent = lh_calloc(n, sizeof(unsigned long long), "link statistics");
  c->messages_sent = lh_calloc(n, sizeof(unsigned long long), "link statistics");
  c->bytes_received = lh_calloc(n, sizeof(unsigned long long), "link statistics");
  c->sim_rank = lh_calloc(n, sizeof(int), "the rank map");
  c->hosts = lh_calloc(n, sizeof *c->hosts, "host names");
  if (!c->send_inflight || !c->send_seq || !c->recv_posted || !c->recv_turn || !c->bytes_sent ||
      !c->messages_sent || !c->bytes_received || !c->sim_rank || !c->hosts) {
    st = LH_ERR_OUT_OF_MEMORY;
    goto fail;
  }

  /* Host names, for log lines, benchmark headers and the probe's sites. */
  char me[64] = {0};
  gethostname(me, sizeof me - 1);
  int rc = MPI_Allgather(me, 64, MPI_CHAR, c->hosts, 64, MPI_CHAR, ctrl);
  if (rc != MPI_SUCCESS) {
    st = lh_mpi_error(rc, "MPI_Allgather of host names");
    goto fail;
  }
  c->host_count = 0;
  for (int i = 0; i < c->size; i++) {
    int seen = 0;
    for (int j = 0; j < i && !seen; j++)
      seen = !strcmp(c->hosts[i], c->hosts[j]);
    c->host_count += !seen;
  }

  /* Simulation: a child shares its parent's; a new communicator reads config and env. */
  if (parent_sim) {
    rc = MPI_Allgather(parent_sim_rank_of_mine, 1, MPI_INT, c->sim_rank, 1, MPI_INT, ctrl);
    if (rc != MPI_SUCCESS) {
      st = lh_mpi_error(rc, "MPI_Allgather of simulated ranks");
      goto fail;
    }
    c->sim = parent_sim;
    parent_sim->refs++;
  } else {
    LH_CHECK_GOTO(lh_sim_create(cfg, c->size, c->rank, &c->sim), st, fail);
    for (int i = 0; i < c->size; i++)
      c->sim_rank[i] = i;
  }

  LH_CHECK_GOTO(c->ops->create(c, &c->be), st, fail);
  c->next_live = lh_live_comms;
  lh_live_comms = c;
  *out = c;
  return LH_SUCCESS;
fail:
  lh_sim_release(c->sim);
  MPI_Comm_free(&c->ctrl);
  lh_comm_free_memory(c);
  return st;
}

lh_status lh_comm_create(const lh_comm_config *config, lh_comm *comm) {
  lh_error_clear();
  if (!comm)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_comm_create: comm must not be NULL");
  *comm = NULL;
  lh_comm_config cfg;
  LH_CHECK(lh_resolve_config(config, &cfg));
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided;
    /* MULTIPLE: a reducer's worker thread moves its own communicator's messages while the
     * caller's thread uses others (lh_reducer_start); with less, reducers run synchronously. */
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided);
    if (rc != MPI_SUCCESS)
      return lh_mpi_error(rc, "MPI_Init_thread");
    lh_we_initialized_mpi = 1;
  }
  MPI_Comm base = cfg.mpi_comm ? *(const MPI_Comm *)cfg.mpi_comm : MPI_COMM_WORLD;
  MPI_Comm ctrl;
  int rc = MPI_Comm_dup(base, &ctrl);
  if (rc != MPI_SUCCESS)
    return lh_mpi_error(rc, "MPI_Comm_dup");
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  lh_log_set_rank(world_rank);
  lh_apply_binding(ctrl);
  LH_CHECK(lh_comm_build(ctrl, &cfg, NULL, NULL, comm));
  if ((*comm)->sim && (*comm)->rank == 0)
    lh_log(LH_LOG_INFO, "transport", "simulated links: %s", (*comm)->sim->description);
  return LH_SUCCESS;
}

lh_status lh_comm_split(lh_comm comm, int color, int key, lh_comm *out) {
  lh_error_clear();
  LH_CHECK(lh_comm_check(comm, "lh_comm_split"));
  if (!out)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_comm_split: out must not be NULL");
  *out = NULL;
  MPI_Comm child;
  int rc = MPI_Comm_split(comm->ctrl, color < 0 ? MPI_UNDEFINED : color, key, &child);
  if (rc != MPI_SUCCESS)
    return lh_mpi_error(rc, "MPI_Comm_split");
  if (child == MPI_COMM_NULL)
    return LH_SUCCESS;
  lh_comm_config cfg = LH_COMM_CONFIG_INIT;
  cfg.backend = comm->backend;
  cfg.timeout_s = comm->timeout_s;
  cfg.chunk_bytes = comm->chunk_bytes;
  cfg.max_inflight = comm->max_inflight;
  int my_sim_rank = comm->sim_rank[comm->rank];
  return lh_comm_build(child, &cfg, comm->sim, &my_sim_rank, out);
}

lh_status lh_comm_destroy(lh_comm comm) {
  lh_error_clear();
  if (!comm)
    return LH_SUCCESS;
  /* Abandon what is still outstanding; a clean program has nothing here. */
  while (comm->head) {
    lh_request r = comm->head;
    lh_log(LH_LOG_WARN, "transport", "lh_comm_destroy: abandoning a %s of %zu bytes with peer %d",
           r->kind == LH_REQ_SEND ? "send" : "receive", r->bytes, r->peer);
    lh_request_abandon(r);
  }
  lh_release_agreements(comm);
  for (struct lh_comm_s **p = &lh_live_comms; *p; p = &(*p)->next_live)
    if (*p == comm) {
      *p = comm->next_live;
      break;
    }
  comm->ops->destroy(comm->be);
  lh_sim_release(comm->sim);
  MPI_Comm_free(&comm->ctrl);
  lh_comm_free_memory(comm);
  return LH_SUCCESS;
}

lh_status lh_finalize(void) {
  lh_error_clear();
  if (lh_live_comms)
    lh_log(LH_LOG_WARN, "transport", "lh_finalize: communicators are still alive; destroy them first");
  if (lh_we_initialized_mpi) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized)
      MPI_Finalize();
    lh_we_initialized_mpi = 0;
  }
  return LH_SUCCESS;
}

static _Thread_local struct lh_comm_s *lh_scope;

void lh_progress_scope(struct lh_comm_s *comm) { lh_scope = comm; }

lh_status lh_progress_all(void) {
  if (lh_scope)
    return lh_scope->broken == LH_SUCCESS ? lh_comm_progress(lh_scope, 1) : LH_SUCCESS;
  for (struct lh_comm_s *c = lh_live_comms; c; c = c->next_live)
    if (c->broken == LH_SUCCESS && !c->exclusive)
      LH_CHECK(lh_comm_progress(c, 1));
  return LH_SUCCESS;
}

/* ---- queries ------------------------------------------------------------------------------ */

lh_status lh_comm_rank(lh_comm comm, int *rank) {
  if (!comm || !rank)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_comm_rank: comm and rank must not be NULL");
  *rank = comm->rank;
  return LH_SUCCESS;
}

lh_status lh_comm_size(lh_comm comm, int *size) {
  if (!comm || !size)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_comm_size: comm and size must not be NULL");
  *size = comm->size;
  return LH_SUCCESS;
}

lh_status lh_comm_backend(lh_comm comm, lh_backend *backend) {
  if (!comm || !backend)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_comm_backend: comm and backend must not be NULL");
  *backend = comm->backend;
  return LH_SUCCESS;
}

lh_status lh_comm_host(lh_comm comm, int rank, char *name, size_t capacity) {
  if (!comm || !name || capacity == 0)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_comm_host: comm and name must not be NULL, capacity > 0");
  if (rank < 0 || rank >= comm->size)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_comm_host: rank %d is outside 0..%d", rank, comm->size - 1);
  snprintf(name, capacity, "%s", comm->hosts[rank]);
  return LH_SUCCESS;
}

lh_status lh_comm_host_count(lh_comm comm, int *hosts) {
  if (!comm || !hosts)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_comm_host_count: comm and hosts must not be NULL");
  *hosts = comm->host_count;
  return LH_SUCCESS;
}

lh_status lh_comm_simulation(lh_comm comm, int *simulated, char *description, size_t capacity) {
  if (!comm || !simulated)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_comm_simulation: comm and simulated must not be NULL");
  *simulated = comm->sim != NULL;
  if (description && capacity)
    snprintf(description, capacity, "%s", comm->sim ? comm->sim->description : "real links");
  return LH_SUCCESS;
}

lh_status lh_comm_links(lh_comm comm, lh_links **links) {
  if (!comm || !links)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_comm_links: comm and links must not be NULL");
  *links = NULL;
  if (!comm->sim)
    return lh_error(LH_ERR_NOT_SUPPORTED, "lh_comm_links: links are not simulated; measure them with lh_probe_links");
  lh_links *out = NULL;
  LH_CHECK(lh_links_create(comm->size, 0.0, 1e15, &out));
  for (int i = 0; i < comm->size; i++) {
    int si = comm->sim_rank[i];
    double up = 0;
    lh_links_get_uplink(comm->sim->links, si, &up);
    lh_links_set_uplink(out, i, up);
    for (int j = 0; j < comm->size; j++) {
      if (i == j)
        continue;
      double lat, bw;
      lh_links_get(comm->sim->links, si, comm->sim_rank[j], &lat, &bw);
      lh_links_set(out, i, j, lat, bw);
    }
  }
  *links = out;
  return LH_SUCCESS;
}

lh_status lh_comm_link_stats(lh_comm comm, int peer, lh_link_stats *stats) {
  if (!comm || !stats)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_comm_link_stats: comm and stats must not be NULL");
  if (stats->size < sizeof(lh_link_stats))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_comm_link_stats: stats->size is %zu, expected %zu (LH_LINK_STATS_INIT)",
                    stats->size, sizeof(lh_link_stats));
  if (peer < 0 || peer >= comm->size)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_comm_link_stats: peer %d is outside 0..%d", peer, comm->size - 1);
  stats->bytes_sent = comm->bytes_sent[peer];
  stats->messages_sent = comm->messages_sent[peer];
  stats->bytes_received = comm->bytes_received[peer];
  stats->simulated = comm->sim != NULL;
  stats->latency_s = 0;
  stats->bandwidth_Bps = 0;
  if (comm->sim && peer != comm->rank) {
    size_t k = (size_t)comm->sim_rank[comm->rank] * comm->sim->n + comm->sim_rank[peer];
    stats->latency_s = comm->sim->latency[k];
    stats->bandwidth_Bps = comm->sim->bandwidth[k];
  }
  return LH_SUCCESS;
}

lh_status lh_comm_reset_stats(lh_comm comm) {
  if (!comm)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_comm_reset_stats: comm must not be NULL");
  size_t n = (size_t)comm->size;
  memset(comm->bytes_sent, 0, n * sizeof *comm->bytes_sent);
  memset(comm->messages_sent, 0, n * sizeof *comm->messages_sent);
  memset(comm->bytes_received, 0, n * sizeof *comm->bytes_received);
  return LH_SUCCESS;
}

/* The argument check's buffers and request. After a timeout MPI still owns the pending
 * collective and may complete it later (when the missing rank arrives), writing into these
 * buffers: they must outlive the call, so they live on the heap and a timed-out one is parked
 * on the communicator. */
typedef struct lh_agreement {
  MPI_Request req;
  long long local[64], reduced[64];
  struct lh_agreement *next;
} lh_agreement;

lh_status lh_comm_agree(lh_comm comm, const long long *values, int count, const char *const *names, const char *fn) {
  if (count > 32)
    return lh_error(LH_ERR_INTERNAL, "lh_comm_agree: at most 32 values");
  lh_agreement *a = lh_calloc(1, sizeof *a, "an argument check");
  if (!a)
    return LH_ERR_OUT_OF_MEMORY;
  /* One MAX reduction gives both extremes: the max of v and the max of ~v, which is ~min(v)
   * (~ is defined for every value; -LLONG_MIN is not). */
  for (int i = 0; i < count; i++) {
    a->local[i] = values[i];
    a->local[count + i] = ~values[i];
  }
  /* Non-blocking, so that a rank that never joins gives LH_ERR_TIMEOUT, not a hang. */
  int rc = MPI_Iallreduce(a->local, a->reduced, 2 * count, MPI_LONG_LONG, MPI_MAX, comm->ctrl, &a->req);
  if (rc != MPI_SUCCESS) {
    free(a);
    return lh_mpi_error(rc, "MPI_Iallreduce (argument check)");
  }
  double deadline = lh_now() + comm->timeout_s;
  for (int polls = 0;; lh_poll_pause(polls++)) {
    int done = 0;
    rc = MPI_Test(&a->req, &done, MPI_STATUS_IGNORE);
    if (rc == MPI_SUCCESS && done)
      break;
    if (rc == MPI_SUCCESS && lh_now() <= deadline)
      continue;
    lh_status st = rc != MPI_SUCCESS
                       ? lh_mpi_error(rc, "MPI_Test (argument check)")
                       : lh_error(LH_ERR_TIMEOUT, "%s: timed out after %g s (LH_TIMEOUT_S) waiting for every rank to join",
                                  fn, comm->timeout_s);
    /* Either way the collective is still pending in MPI, which may write into the buffers
     * later and leaves the communicator out of step: park the buffers and disable it. */
    char reason[200];
    snprintf(reason, sizeof reason, "%s", lh_last_error());
    a->next = comm->stale_agreements;
    comm->stale_agreements = a;
    lh_comm_break(comm, st, reason);
    return lh_error(st, "%s", reason);
  }
  lh_status st = LH_SUCCESS;
  for (int i = 0; i < count && st == LH_SUCCESS; i++) {
    long long hi = a->reduced[i], lo = ~a->reduced[count + i];
    if (lo != hi)
      st = lh_error(LH_ERR_MISMATCH, "%s: ranks passed different %s (from %lld to %lld; this rank %lld)", fn, names[i],
                    lo, hi, values[i]);
  }
  free(a);
  return st;
}

/* Frees the parked checks MPI has finished with; the others stay allocated (a few hundred
 * bytes each) because MPI may still write into them. */
static void lh_release_agreements(struct lh_comm_s *c) {
  while (c->stale_agreements) {
    lh_agreement *a = c->stale_agreements;
    c->stale_agreements = a->next;
    int done = 0;
    MPI_Test(&a->req, &done, MPI_STATUS_IGNORE);
    if (done)
      free(a);
    else
      lh_log(LH_LOG_DEBUG, "transport", "an argument check that timed out is still pending in MPI; left allocated");
  }
}

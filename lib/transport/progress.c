/* Point-to-point messages and the progress engine that moves them.
 *
 * A send is a header (control channel, posted at once) plus payload chunks (data channel)
 * that wait in the communicator's request list until their peer has a free in-flight slot.
 * A receive posts its header receive at once and its chunk receives when the header has
 * arrived, has the expected size, and all earlier receives from that peer have posted theirs.
 * A request finishes when all of that is done and, on simulated links, the clock has reached
 * the booked departure (send) or arrival (receive) time. */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "transport/transport_internal.h"

static void lh_request_link(struct lh_comm_s *c, struct lh_request_s *r) {
  r->prev = c->tail;
  r->next = NULL;
  if (c->tail)
    c->tail->next = r;
  else
    c->head = r;
  c->tail = r;
}

static void lh_request_unlink(struct lh_request_s *r) {
  struct lh_comm_s *c = r->comm;
  if (r->prev)
    r->prev->next = r->next;
  else
    c->head = r->next;
  if (r->next)
    r->next->prev = r->prev;
  else
    c->tail = r->prev;
  r->prev = r->next = NULL;
}

static void lh_request_free(struct lh_request_s *r) {
  if (r->stage == LH_STAGE_HOST)
    lh_host_pinned_free(r->wire_buf);
  free(r->chunks);
  free(r->chunk_done);
  free(r);
}

void lh_request_abandon(struct lh_request_s *r) {
  struct lh_comm_s *c = r->comm;
  if (!r->header_done && r->header_req != MPI_REQUEST_NULL) {
    if (r->kind == LH_REQ_RECV)
      MPI_Cancel(&r->header_req);
    MPI_Request_free(&r->header_req);
  }
  for (int i = 0; i < r->posted; i++)
    if (!r->chunk_done[i]) {
      c->ops->abandon(c->be, &r->chunks[i], r->kind == LH_REQ_RECV);
      if (r->kind == LH_REQ_SEND)
        c->send_inflight[r->peer]--;
    }
  lh_request_unlink(r);
  lh_request_free(r);
}

void lh_requests_abandon(lh_request *requests, size_t count) {
  for (size_t i = 0; requests && i < count; i++)
    if (requests[i]) {
      lh_request_abandon(requests[i]);
      requests[i] = NULL;
    }
}

static size_t lh_chunk_length(const struct lh_request_s *r, int i) {
  size_t off = (size_t)i * r->chunk_bytes;
  size_t left = r->bytes - off;
  return left < r->chunk_bytes ? left : r->chunk_bytes;
}

static lh_status lh_validate_p2p(lh_comm comm, const void *buf, size_t bytes, int peer, int tag,
                                 lh_request *request, const char *fn) {
  LH_CHECK(lh_comm_check(comm, fn));
  if (!request)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: request must not be NULL", fn);
  *request = NULL;
  if (peer < 0 || peer >= comm->size)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: peer %d is out of range for a communicator of %d ranks", fn,
                    peer, comm->size);
  if (tag < 0 || tag >= LH_TAG_LIMIT)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: tag %d is outside 0..%d", fn, tag, LH_TAG_MAX);
  if (!buf && bytes > 0)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: buffer is NULL but %zu bytes were asked for", fn, bytes);
  if (bytes > ((size_t)1 << 46))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: %zu bytes is not a plausible message size", fn, bytes);
  return LH_SUCCESS;
}

/* A request with its chunk bookkeeping and, when the backend cannot use the caller's memory
 * kind, a staging buffer of the kind it can. */
static lh_status lh_request_new(lh_comm comm, lh_req_kind kind, void *buf, size_t bytes, int peer, int tag,
                                struct lh_request_s **out) {
  struct lh_request_s *r = lh_calloc(1, sizeof *r, "a request");
  if (!r)
    return LH_ERR_OUT_OF_MEMORY;
  r->comm = comm;
  r->kind = kind;
  r->peer = peer;
  r->tag = tag;
  r->bytes = bytes;
  r->user_buf = buf;
  r->wire_buf = buf;
  r->header_req = MPI_REQUEST_NULL;
  r->posted_at = lh_now();
  r->chunk_bytes = comm->chunk_bytes;
  r->nchunks = bytes ? (int)((bytes + comm->chunk_bytes - 1) / comm->chunk_bytes) : 0;
  r->chunks = lh_calloc((size_t)r->nchunks, sizeof *r->chunks, "chunk handles");
  r->chunk_done = lh_calloc((size_t)r->nchunks, 1, "chunk flags");
  if (!r->chunks || !r->chunk_done) {
    lh_request_free(r);
    return LH_ERR_OUT_OF_MEMORY;
  }
  int on_device = bytes > 0 && lh_is_device_pointer(buf);
  if (on_device && !comm->ops->device_memory) {
    /* Not CUDA-aware: move the bytes through pinned host memory. */
    void *stage = NULL;
    lh_status st = lh_host_pinned_alloc(&stage, bytes);
    if (st == LH_SUCCESS && kind == LH_REQ_SEND)
      st = lh_copy_to_host(stage, buf, bytes);
    if (st != LH_SUCCESS) {
      lh_host_pinned_free(stage);
      lh_request_free(r);
      return st;
    }
    r->stage = LH_STAGE_HOST;
    r->wire_buf = stage;
  } else if (bytes > 0 && !on_device && !comm->ops->host_memory) {
    lh_request_free(r);
    return lh_error(LH_ERR_NOT_SUPPORTED,
                    "the %s backend moves device buffers only; this buffer is host memory", comm->ops->name);
  }
  *out = r;
  return LH_SUCCESS;
}

/* Hands a posted request to the caller and starts moving it at once. A failure found here
 * belongs to some request and is reported by its test or wait, with its own detail. Grouping
 * backends are flushed only by test and wait, so that a send and a receive posted one after
 * the other travel in one group (NCCL needs that for messages to self, and a ring step needs
 * it to avoid deadlock). */
static lh_status lh_request_start(lh_comm comm, struct lh_request_s *r, lh_request *request) {
  lh_request_link(comm, r);
  *request = r;
  lh_comm_progress(comm, 0);
  lh_error_clear();
  return LH_SUCCESS;
}

static lh_status lh_isend_common(lh_comm comm, const void *buf, size_t bytes, int peer, int tag, double *nic_free,
                                 lh_request *request, const char *fn) {
  lh_error_clear();
  LH_CHECK(lh_validate_p2p(comm, buf, bytes, peer, tag, request, fn));
  struct lh_request_s *r;
  LH_CHECK(lh_request_new(comm, LH_REQ_SEND, (void *)buf, bytes, peer, tag, &r));
  r->header.magic = LH_MSG_MAGIC;
  r->header.tag = (uint32_t)tag;
  r->header.bytes = bytes;
  r->header.seq = comm->send_seq[peer]++;
  if (comm->sim && peer != comm->rank) {
    double depart, arrive;
    lh_sim_book_after(comm->sim, comm->sim_rank[peer], bytes, nic_free ? *nic_free : 0.0, &depart, &arrive);
    if (nic_free)
      *nic_free = depart;
    r->not_before = depart;
    r->header.arrive = arrive;
  }
  int rc = MPI_Isend(&r->header, (int)sizeof r->header, MPI_BYTE, peer, tag, comm->ctrl, &r->header_req);
  if (rc != MPI_SUCCESS) {
    lh_request_free(r);
    return lh_mpi_error(rc, "MPI_Isend (message header)");
  }
  comm->bytes_sent[peer] += bytes;
  comm->messages_sent[peer]++;
  return lh_request_start(comm, r, request);
}

lh_status lh_isend(lh_comm comm, const void *buf, size_t bytes, int peer, int tag, lh_request *request) {
  return lh_isend_common(comm, buf, bytes, peer, tag, NULL, request, "lh_isend");
}

lh_status lh_isend_nic(lh_comm comm, const void *buf, size_t bytes, int peer, int tag, double *nic_free,
                       lh_request *request) {
  if (!nic_free)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_isend_nic: nic_free must not be NULL");
  return lh_isend_common(comm, buf, bytes, peer, tag, nic_free, request, "lh_isend_nic");
}

static lh_status lh_irecv_common(lh_comm comm, void *buf, size_t bytes, size_t *received, int peer, int tag,
                                 lh_request *request, const char *fn) {
  lh_error_clear();
  LH_CHECK(lh_validate_p2p(comm, buf, bytes, peer, tag, request, fn));
  struct lh_request_s *r;
  LH_CHECK(lh_request_new(comm, LH_REQ_RECV, buf, bytes, peer, tag, &r));
  r->received = received;
  r->peer_seq = comm->recv_posted[peer]++;
  int rc = MPI_Irecv(&r->header, (int)sizeof r->header, MPI_BYTE, peer, tag, comm->ctrl, &r->header_req);
  if (rc != MPI_SUCCESS) {
    lh_request_free(r);
    return lh_mpi_error(rc, "MPI_Irecv (message header)");
  }
  return lh_request_start(comm, r, request);
}

lh_status lh_irecv(lh_comm comm, void *buf, size_t bytes, int peer, int tag, lh_request *request) {
  return lh_irecv_common(comm, buf, bytes, NULL, peer, tag, request, "lh_irecv");
}

lh_status lh_irecv_upto(lh_comm comm, void *buf, size_t capacity, size_t *received, int peer, int tag,
                        lh_request *request) {
  if (!received)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_irecv_upto: received must not be NULL");
  *received = 0;
  return lh_irecv_common(comm, buf, capacity, received, peer, tag, request, "lh_irecv_upto");
}

/* Marks a request failed; failures that leave the channels out of step disable the comm. */
static lh_status lh_request_fail(struct lh_request_s *r, lh_status st) {
  r->status = st;
  snprintf(r->error_text, sizeof r->error_text, "%s", lh_last_error());
  r->finished = 1;
  lh_comm_break(r->comm, st, lh_last_error());
  return st;
}

static lh_status lh_check_header(struct lh_request_s *r) {
  const lh_msg_header *h = &r->header;
  if (h->magic != LH_MSG_MAGIC)
    return lh_error(LH_ERR_CORRUPT, "message header from rank %d has a bad magic number 0x%08x", r->peer,
                    (unsigned)h->magic);
  if (r->received) { /* any size up to the capacity */
    if (h->bytes > r->bytes)
      return lh_error(LH_ERR_MISMATCH,
                      "rank %d sent %llu bytes on tag %d, more than the %zu this rank can receive "
                      "(mismatched configs across ranks?)",
                      r->peer, (unsigned long long)h->bytes, r->tag, r->bytes);
    r->bytes = (size_t)h->bytes;
    r->nchunks = r->bytes ? (int)((r->bytes + r->chunk_bytes - 1) / r->chunk_bytes) : 0;
    return LH_SUCCESS;
  }
  if (h->bytes != r->bytes)
    return lh_error(LH_ERR_MISMATCH,
                    "rank %d sent %llu bytes on tag %d but this rank posted a receive of %zu bytes "
                    "(mismatched sizes or counts across ranks?)",
                    r->peer, (unsigned long long)h->bytes, r->tag, r->bytes);
  return LH_SUCCESS;
}

/* Receives whose header is still missing in this progress pass, by (peer, tag). MPI matches
 * messages of one (peer, tag) in posting order, so a later receive of the same pair cannot
 * have its header before an earlier one: it need not be tested. Remembering a few pairs
 * keeps a pass linear in the number of requests for the common patterns. */
typedef struct {
  int peer[8], tag[8], count;
} lh_blocked_pairs;

static int lh_blocked_has(const lh_blocked_pairs *b, int peer, int tag) {
  for (int i = 0; i < b->count; i++)
    if (b->peer[i] == peer && b->tag[i] == tag)
      return 1;
  return 0;
}

static void lh_blocked_add(lh_blocked_pairs *b, int peer, int tag) {
  if (b->count < 8 && !lh_blocked_has(b, peer, tag)) {
    b->peer[b->count] = peer;
    b->tag[b->count++] = tag;
  }
}

/* One pass over a request; returns a failure only for errors of the request itself. */
static lh_status lh_request_advance(struct lh_request_s *r, lh_blocked_pairs *blocked) {
  struct lh_comm_s *c = r->comm;
  if (r->finished)
    return LH_SUCCESS;
  if (!r->header_done) {
    int is_recv = r->kind == LH_REQ_RECV;
    if (is_recv && lh_blocked_has(blocked, r->peer, r->tag))
      return LH_SUCCESS;
    int done = 0;
    int rc = MPI_Test(&r->header_req, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS)
      return lh_request_fail(r, lh_mpi_error(rc, "MPI_Test (message header)"));
    if (!done && is_recv)
      lh_blocked_add(blocked, r->peer, r->tag);
    if (done) {
      r->header_done = 1;
      if (is_recv) {
        lh_status st = lh_check_header(r);
        if (st != LH_SUCCESS)
          return lh_request_fail(r, st);
        r->not_before = r->header.arrive;
      }
    }
  }
  if (r->kind == LH_REQ_RECV && r->header_done && !r->chunks_allowed && c->recv_turn[r->peer] == r->peer_seq) {
    r->chunks_allowed = 1;
    c->recv_turn[r->peer]++;
    for (; r->posted < r->nchunks; r->posted++) {
      size_t off = (size_t)r->posted * r->chunk_bytes;
      lh_status st = c->ops->post_recv(c->be, r->wire_buf + off, lh_chunk_length(r, r->posted), r->peer, r->tag,
                                       &r->chunks[r->posted]);
      if (st != LH_SUCCESS)
        return lh_request_fail(r, st);
    }
  }
  /* Chunks of a message complete in order in practice: test from the first one not done and
   * stop at the first still pending. */
  while (r->completed < r->posted) {
    int i = r->completed, done = 0;
    lh_status st = c->ops->test(c->be, &r->chunks[i], &done);
    if (st != LH_SUCCESS)
      return lh_request_fail(r, st);
    if (!done)
      break;
    r->chunk_done[i] = 1;
    r->completed++;
    if (r->kind == LH_REQ_SEND)
      c->send_inflight[r->peer]--;
  }
  return LH_SUCCESS;
}

/* Posts queued send chunks in request order while their peer has free slots. Scanning in
 * posting order keeps each peer's chunks in message order: a later send to a peer can only
 * post once every earlier one has posted all of its chunks. */
static lh_status lh_post_send_chunks(struct lh_comm_s *c) {
  for (struct lh_request_s *r = c->head; r; r = r->next) {
    if (r->kind != LH_REQ_SEND || r->finished)
      continue;
    /* A backend that issues posts in groups (NCCL) gets every chunk at once: a window would
     * split one message over several groups, and a group whose receives wait for sends the
     * peer issues in a later group never completes. */
    int grouped = c->ops->flush != NULL;
    while (r->posted < r->nchunks && (grouped || c->send_inflight[r->peer] < c->max_inflight)) {
      size_t off = (size_t)r->posted * r->chunk_bytes;
      lh_status st = c->ops->post_send(c->be, r->wire_buf + off, lh_chunk_length(r, r->posted), r->peer, r->tag,
                                       &r->chunks[r->posted]);
      if (st != LH_SUCCESS)
        return lh_request_fail(r, st);
      r->posted++;
      c->send_inflight[r->peer]++;
    }
  }
  return LH_SUCCESS;
}

lh_status lh_comm_progress(struct lh_comm_s *c, int flush) {
  lh_status first = LH_SUCCESS;
  lh_blocked_pairs blocked = {.count = 0};
  for (struct lh_request_s *r = c->head; r; r = r->next) {
    lh_status st = lh_request_advance(r, &blocked);
    if (st != LH_SUCCESS && first == LH_SUCCESS)
      first = st;
  }
  lh_status st = lh_post_send_chunks(c);
  if (first == LH_SUCCESS)
    first = st;
  if (flush && c->ops->flush) {
    /* A failed group leaves its requests without completion events: nothing on this
     * communicator can finish, so say so to every waiter instead of letting them time out. */
    st = c->ops->flush(c->be);
    if (st != LH_SUCCESS) {
      lh_comm_break(c, st, lh_last_error());
      if (first == LH_SUCCESS)
        first = st;
    }
  }
  return first;
}

/* Whether everything but the simulated clock is done. */
static int lh_request_data_done(const struct lh_request_s *r) {
  return r->header_done && r->posted == r->nchunks && r->completed == r->nchunks &&
         (r->kind == LH_REQ_SEND || r->chunks_allowed);
}

/* A request on a communicator that failed meanwhile can never complete: fail it too. */
static void lh_fail_if_comm_broken(struct lh_request_s *r) {
  if (r->status == LH_SUCCESS && r->comm->broken != LH_SUCCESS)
    lh_request_fail(r, lh_error(r->comm->broken, "the communicator failed earlier: %s", r->comm->broken_reason));
}

/* Releases a finished request; returns its status. */
static lh_status lh_request_finish(lh_request *request) {
  struct lh_request_s *r = *request;
  lh_status st = r->status;
  if (st == LH_SUCCESS && r->kind == LH_REQ_RECV) {
    r->comm->bytes_received[r->peer] += r->bytes;
    if (r->received)
      *r->received = r->bytes;
    if (r->stage == LH_STAGE_HOST)
      st = lh_copy_to_device(r->user_buf, r->wire_buf, r->bytes);
  }
  if (r->status != LH_SUCCESS) /* the detail was recorded when it failed: restate it */
    lh_error(st, "%s", r->error_text);
  if (r->status != LH_SUCCESS)
    lh_request_abandon(r);
  else {
    lh_request_unlink(r);
    lh_request_free(r);
  }
  *request = NULL;
  return st;
}

lh_status lh_test(lh_request *request, int *done) {
  lh_error_clear();
  if (!request || !done)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_test: request and done must not be NULL");
  *done = 0;
  if (!*request) {
    *done = 1;
    return LH_SUCCESS;
  }
  struct lh_request_s *r = *request;
  lh_progress_all();
  lh_fail_if_comm_broken(r);
  if (r->status != LH_SUCCESS || (lh_request_data_done(r) && lh_now() >= r->not_before)) {
    *done = 1;
    return lh_request_finish(request);
  }
  return LH_SUCCESS;
}

static void lh_describe_request(const struct lh_request_s *r, char *out, size_t cap) {
  const char *phase = !r->header_done ? "waiting for the message header"
                      : r->completed < r->nchunks ? "waiting for payload chunks"
                                                  : "waiting for the simulated link";
  snprintf(out, cap, "%s of %zu bytes %s rank %d (tag %d, %d of %d chunks done; %s)",
           r->kind == LH_REQ_SEND ? "send" : "receive", r->bytes, r->kind == LH_REQ_SEND ? "to" : "from", r->peer,
           r->tag, r->completed, r->nchunks, phase);
}

void lh_poll_pause(int polls) {
  /* MPI moves shared-memory data only inside its calls, so poll eagerly for a moment, then
   * yield the core (ranks often outnumber cores), then sleep briefly. */
  if (polls < 64)
    return;
  if (polls < 2048)
    sched_yield();
  else
    lh_sleep_until(lh_now() + 50e-6);
}

lh_status lh_wait(lh_request *request) {
  lh_error_clear();
  if (!request)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_wait: request must not be NULL");
  if (!*request)
    return LH_SUCCESS;
  struct lh_request_s *r = *request;
  double start = lh_now();
  double deadline = start + r->comm->timeout_s;
  int idle = 0;
  for (;;) {
    lh_progress_all();
    lh_fail_if_comm_broken(r);
    if (r->status != LH_SUCCESS)
      return lh_request_finish(request);
    double now = lh_now();
    if (lh_request_data_done(r)) {
      if (now >= r->not_before)
        return lh_request_finish(request);
      /* Only the simulated clock is left: sleep until it, but keep other requests moving
       * (sends queued behind this one need their chunks posted). */
      double until = r->not_before < now + 0.002 ? r->not_before : now + 0.002;
      lh_sleep_until(until);
      continue;
    }
    if (now > deadline) {
      char what[256];
      lh_describe_request(r, what, sizeof what);
      char reason[320];
      snprintf(reason, sizeof reason, "timed out after %g s (LH_TIMEOUT_S) on a %s", r->comm->timeout_s, what);
      lh_comm_break(r->comm, LH_ERR_TIMEOUT, reason);
      lh_request_abandon(r);
      *request = NULL;
      return lh_error(LH_ERR_TIMEOUT, "lh_wait: %s", reason);
    }
    lh_poll_pause(idle++);
  }
}

lh_status lh_waitall(int count, lh_request *requests) {
  lh_error_clear();
  if (count < 0 || (count > 0 && !requests))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_waitall: count %d with %s requests", count,
                    requests ? "non-NULL" : "NULL");
  lh_status first = LH_SUCCESS;
  char detail[1024] = "";
  for (int i = 0; i < count; i++) {
    lh_status st = lh_wait(&requests[i]);
    if (st != LH_SUCCESS && first == LH_SUCCESS) {
      first = st;
      snprintf(detail, sizeof detail, "%s", lh_last_error());
    }
  }
  if (first != LH_SUCCESS)
    lh_error(first, "%s", detail);
  return first;
}

lh_status lh_send(lh_comm comm, const void *buf, size_t bytes, int peer, int tag) {
  lh_request r;
  LH_CHECK(lh_isend(comm, buf, bytes, peer, tag, &r));
  return lh_wait(&r);
}

lh_status lh_recv(lh_comm comm, void *buf, size_t bytes, int peer, int tag) {
  lh_request r;
  LH_CHECK(lh_irecv(comm, buf, bytes, peer, tag, &r));
  return lh_wait(&r);
}

/* All-reduce for codecs whose frames cannot be summed on the wire (1-bit sign, top-k,
 * random-k, block scales): two-phase owner reduce, and all-gather reduce.
 *
 * The tensor is cut like the ring's (n segments, rank o owns segment o, each segment in
 * pieces). OWNER: every rank encodes its pieces of segment o and sends them to o (phase 1);
 * the owner sums the ranks' values in rank order (its own in fp32, the others decoded),
 * encodes the sum once, decodes it into its own buffer, and sends that frame to every
 * rank (phase 2), which decodes it: all ranks hold the owner's bytes. ALLGATHER: every rank
 * encodes all of its pieces and sends them to everyone; each piece's result is the sum of the
 * n decoded frames in rank order, the same bytes in the same order on every rank.
 *
 * The transport pairs the messages between two ranks by order, whatever their tags, so every
 * receive is posted in exactly the order its sender produces the message.
 *
 * Sends go through one queue with one message on the wire at a time, in the order they were
 * produced: a rank has one uplink, and posting to n-1 peers at once would let simulated links
 * without a NIC cap carry n-1 times what a real host can. Pieces are pipelined: phase 1 of
 * piece j+1 travels while the owner reduces piece j and phase 2 of piece j travels. */
#include <stdlib.h>
#include <string.h>

#include "collective/collective_internal.h"
#include "transport/transport_internal.h"

typedef struct {
  const unsigned char *frame;
  size_t bytes;
  int peer, tag;
} outmsg;

/* The uplink: messages leave in order, one at a time. */
typedef struct {
  outmsg *q;
  size_t head, tail, cap;
  lh_request active;
} sendq;

static lh_status sendq_push(sendq *s, const unsigned char *frame, size_t bytes, int peer, int tag) {
  if (s->tail == s->cap)
    return lh_error(LH_ERR_INTERNAL, "all-reduce send queue overflow (%zu messages)", s->cap);
  s->q[s->tail++] = (outmsg){frame, bytes, peer, tag};
  return LH_SUCCESS;
}

/* Completes the message on the wire if it is done and posts the next one; *moved = 1 when
 * anything changed. */
static lh_status sendq_pump(lh_engine *e, sendq *s, int *moved) {
  if (s->active) {
    int done = 0;
    LH_CHECK(lh_test(&s->active, &done));
    if (!done)
      return LH_SUCCESS;
    *moved = 1;
  }
  if (s->head < s->tail) {
    outmsg *m = &s->q[s->head++];
    e->wire_bytes += m->bytes;
    LH_CHECK(lh_isend(e->comm, m->frame, m->bytes, m->peer, m->tag, &s->active));
    *moved = 1;
  }
  return LH_SUCCESS;
}

/* Sends what is left, in order. */
static lh_status sendq_drain(lh_engine *e, sendq *s) {
  while (s->active || s->head < s->tail) {
    int moved = 0;
    LH_CHECK(sendq_pump(e, s, &moved));
    if (s->active)
      LH_CHECK(lh_wait(&s->active));
  }
  return LH_SUCCESS;
}

typedef struct {
  lh_engine *e;
  float *data, *err;
  int n, rank, gather; /* gather: ALLGATHER, else OWNER */
  lh_layout lay;
  size_t cap;
  /* frames, each of cap bytes:
   *   mine[seg][piece]  this rank's encoding of its own values (OWNER: segments of others)
   *   in[src][piece]    OWNER phase 1: pieces of my segment from src; ALLGATHER: every
   *                     rank's pieces, indexed [src][seg][piece]
   *   owned[piece]      OWNER: my frame of the summed segment
   *   out[seg][piece]   OWNER phase 2: the owners' frames */
  unsigned char *mine, *in, *owned, *out;
  size_t *mine_bytes, *in_bytes, *owned_bytes, *out_bytes;
  lh_request *in_req, *out_req;
  float *tmp;
  sendq sq;
} owner;

static size_t at_piece(const owner *g, int seg, int j) { return (size_t)seg * g->lay.pieces + j; }

static lh_status encode_mine(owner *g, int seg, int j, size_t at, size_t len) {
  size_t k = at_piece(g, seg, j);
  unsigned char *frame = g->mine + k * g->cap;
  LH_CHECK(lh_engine_encode(g->e, g->data + at, len, at, frame, g->cap, &g->mine_bytes[k]));
  if (!g->err)
    return LH_SUCCESS;
  LH_CHECK(lh_engine_decode(g->e, frame, g->mine_bytes[k], g->tmp, len, at, 0));
  return lh_residual_add(g->e->on_device, g->err + at, g->data + at, g->tmp, len);
}

/* Waits for one request while keeping the uplink busy; honours the communicator's timeout. */
static lh_status wait_pumping(owner *g, lh_request *req, const char *what, int src, int seg, int j) {
  double deadline = lh_now() + g->e->comm->timeout_s;
  for (int polls = 0;; polls++) {
    int moved = 0, done = 0;
    LH_CHECK(sendq_pump(g->e, &g->sq, &moved));
    LH_CHECK(lh_test(req, &done));
    if (done)
      return LH_SUCCESS;
    if (lh_now() > deadline) {
      char reason[200];
      snprintf(reason, sizeof reason, "timed out after %g s (LH_TIMEOUT_S) waiting for %s of segment %d piece %d from rank %d",
               g->e->comm->timeout_s, what, seg, j, src);
      lh_comm_break(g->e->comm, LH_ERR_TIMEOUT, reason);
      return lh_error(LH_ERR_TIMEOUT, "%s", reason);
    }
    if (!moved)
      lh_poll_pause(polls);
  }
}

/* OWNER, piece j of my segment: the ranks' values summed in rank order 0..n-1 (mine in fp32 as
 * they are, the others' decoded), encoded once, decoded into my buffer, sent to everyone. */
static lh_status owner_reduce(owner *g, int j) {
  int me = g->rank, n = g->n, dev = g->e->on_device;
  size_t at, len = lh_piece_span(&g->lay, me, j, &at);
  if (len == 0)
    return LH_SUCCESS;
  float *sum = g->data + at; /* rank 0 first: in place when that is me, else in tmp */
  if (me > 0)
    sum = g->tmp;
  for (int src = 0; src < n; src++) {
    if (src == me) {
      if (me > 0)
        LH_CHECK(lh_reduce_add(dev, sum, g->data + at, len));
      continue;
    }
    size_t k = at_piece(g, src, j);
    LH_CHECK(wait_pumping(g, &g->in_req[k], "its phase-1 frame", src, me, j));
    LH_CHECK(lh_engine_decode(g->e, g->in + k * g->cap, g->in_bytes[k], sum, len, at, src > 0));
  }
  unsigned char *frame = g->owned + (size_t)j * g->cap;
  LH_CHECK(lh_engine_encode(g->e, sum, len, at, frame, g->cap, &g->owned_bytes[j]));
  if (g->err) { /* the owner's own re-encoding error joins its residual */
    if (sum != g->tmp)
      LH_CHECK(lh_copy_f32(dev, g->tmp, sum, len));
    LH_CHECK(lh_engine_decode(g->e, frame, g->owned_bytes[j], g->data + at, len, at, 0));
    LH_CHECK(lh_residual_add(dev, g->err + at, g->tmp, g->data + at, len));
  } else {
    LH_CHECK(lh_engine_decode(g->e, frame, g->owned_bytes[j], g->data + at, len, at, 0));
  }
  for (int d = 1; d < n; d++)
    LH_CHECK(sendq_push(&g->sq, frame, g->owned_bytes[j], (me + d) % n, LH_TAG_COMPRESSED_GATHER));
  return LH_SUCCESS;
}

static lh_status run_owner(owner *g) {
  int n = g->n, me = g->rank, P = g->lay.pieces;
  lh_comm comm = g->e->comm;
  /* Receives are posted in exactly the order each peer sends (the transport pairs a peer's
   * messages by order, whatever their tags): phase 1 of piece j, then phase 2 of piece j-1. */
  for (int j = 0; j <= P; j++)
    for (int d = 1; d < n; d++) {
      int src = (me - d + n) % n;
      size_t at, len = j < P ? lh_piece_span(&g->lay, me, j, &at) : 0;
      if (len > 0) {
        size_t k = at_piece(g, src, j);
        LH_CHECK(lh_irecv_upto(comm, g->in + k * g->cap, g->cap, &g->in_bytes[k], src, LH_TAG_COMPRESSED,
                               &g->in_req[k]));
      }
      len = j > 0 ? lh_piece_span(&g->lay, src, j - 1, &at) : 0; /* phase 2: owner src's piece j-1 */
      if (len > 0) {
        size_t k = at_piece(g, src, j - 1);
        LH_CHECK(lh_irecv_upto(comm, g->out + k * g->cap, g->cap, &g->out_bytes[k], src, LH_TAG_COMPRESSED_GATHER,
                               &g->out_req[k]));
      }
    }
  /* Phase 1 of piece j, then the owner reduce of piece j: by then the pieces of j from the
   * ranks before me have had a piece's time to arrive. */
  for (int j = 0; j < P; j++) {
    for (int d = 1; d < n; d++) {
      int to = (me + d) % n;
      size_t at, len = lh_piece_span(&g->lay, to, j, &at);
      if (len == 0)
        continue;
      LH_CHECK(encode_mine(g, to, j, at, len));
      size_t k = at_piece(g, to, j);
      LH_CHECK(sendq_push(&g->sq, g->mine + k * g->cap, g->mine_bytes[k], to, LH_TAG_COMPRESSED));
      int moved = 0;
      LH_CHECK(sendq_pump(g->e, &g->sq, &moved));
    }
    if (j > 0)
      LH_CHECK(owner_reduce(g, j - 1));
  }
  if (P > 0)
    LH_CHECK(owner_reduce(g, P - 1));
  /* Phase 2: the other owners' frames, decoded in a fixed order. */
  for (int j = 0; j < P; j++)
    for (int d = 1; d < n; d++) {
      int src = (me - d + n) % n;
      size_t at, len = lh_piece_span(&g->lay, src, j, &at);
      if (len == 0)
        continue;
      size_t k = at_piece(g, src, j);
      LH_CHECK(wait_pumping(g, &g->out_req[k], "its owner's frame", src, src, j));
      LH_CHECK(lh_engine_decode(g->e, g->out + k * g->cap, g->out_bytes[k], g->data + at, len, at, 0));
    }
  return sendq_drain(g->e, &g->sq);
}

/* ALLGATHER: in[src][seg][piece] holds rank src's frame of (seg, piece); mine is in[me]. */
static unsigned char *gathered(const owner *g, int src, int seg, int j, size_t **bytes) {
  size_t k = ((size_t)src * g->n + seg) * g->lay.pieces + j;
  *bytes = &g->in_bytes[k];
  return g->in + k * g->cap;
}

static lh_status run_gather(owner *g) {
  int n = g->n, me = g->rank, P = g->lay.pieces;
  lh_comm comm = g->e->comm;
  size_t *bytes;
  for (int j = 0; j < P; j++)
    for (int seg = 0; seg < n; seg++)
      for (int d = 1; d < n; d++) {
        int src = (me - d + n) % n;
        size_t at, len = lh_piece_span(&g->lay, seg, j, &at);
        if (len == 0)
          continue;
        unsigned char *frame = gathered(g, src, seg, j, &bytes);
        size_t k = ((size_t)src * n + seg) * P + j;
        LH_CHECK(lh_irecv_upto(comm, frame, g->cap, bytes, src, LH_TAG_COMPRESSED, &g->in_req[k]));
      }
  /* Encode everything first: every piece's result overwrites values this rank still has to
   * encode otherwise. Encoding is several times faster than any WAN link, and the queue
   * starts sending the first frame at once. */
  for (int j = 0; j < P; j++)
    for (int seg = 0; seg < n; seg++) {
      size_t at, len = lh_piece_span(&g->lay, seg, j, &at);
      if (len == 0)
        continue;
      unsigned char *frame = gathered(g, me, seg, j, &bytes);
      LH_CHECK(lh_engine_encode(g->e, g->data + at, len, at, frame, g->cap, bytes));
      if (g->err) {
        LH_CHECK(lh_engine_decode(g->e, frame, *bytes, g->tmp, len, at, 0));
        LH_CHECK(lh_residual_add(g->e->on_device, g->err + at, g->data + at, g->tmp, len));
      }
      for (int d = 1; d < n; d++)
        LH_CHECK(sendq_push(&g->sq, frame, *bytes, (me + d) % n, LH_TAG_COMPRESSED));
      int moved = 0;
      LH_CHECK(sendq_pump(g->e, &g->sq, &moved));
    }
  /* Each piece is the sum of the n decoded frames in rank order 0..n-1. */
  for (int j = 0; j < P; j++)
    for (int seg = 0; seg < n; seg++) {
      size_t at, len = lh_piece_span(&g->lay, seg, j, &at);
      if (len == 0)
        continue;
      for (int src = 0; src < n; src++) {
        unsigned char *frame = gathered(g, src, seg, j, &bytes);
        if (src != me)
          LH_CHECK(wait_pumping(g, &g->in_req[((size_t)src * n + seg) * P + j], "its frame", src, seg, j));
        LH_CHECK(lh_engine_decode(g->e, frame, *bytes, g->data + at, len, at, src > 0));
      }
    }
  return sendq_drain(g->e, &g->sq);
}

static lh_status owner_allreduce(lh_engine *e, float *data, size_t count, float *err, int gather) {
  owner g = {0};
  g.e = e;
  g.data = data;
  g.err = err;
  g.n = e->comm->size;
  g.rank = e->comm->rank;
  g.gather = gather;
  if (count == 0)
    return LH_SUCCESS;
  g.lay = lh_layout_make(count, g.n, e->piece_elems);
  int n = g.n, P = g.lay.pieces;
  g.cap = lh_engine_max_frame(e, g.lay.piece);
  if (g.cap == 0)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "all-reduce: pieces of %zu elements cannot be encoded", g.lay.piece);
  g.cap = (g.cap + 63) & ~(size_t)63;
  size_t per = (size_t)n * P; /* one frame per (rank or segment, piece) */
  size_t in_slots = gather ? (size_t)n * per : per;
  size_t mine_slots = gather ? 0 : per, owned_slots = gather ? 0 : (size_t)P, out_slots = gather ? 0 : per;
  size_t slots = in_slots + mine_slots + owned_slots + out_slots;
  lh_status st = LH_SUCCESS;
  void *frames;
  LH_CHECK(lh_engine_frames(e, slots * g.cap, &frames));
  g.in = frames;
  g.mine = g.in + in_slots * g.cap;
  g.owned = g.mine + mine_slots * g.cap;
  g.out = g.owned + owned_slots * g.cap;
  LH_CHECK(lh_engine_scratch(e, g.lay.piece, &g.tmp));
  size_t *lengths = lh_calloc(slots ? slots : 1, sizeof(size_t), "frame lengths");
  g.in_req = lh_calloc(in_slots, sizeof(lh_request), "all-reduce requests");
  g.out_req = lh_calloc(out_slots ? out_slots : 1, sizeof(lh_request), "all-reduce requests");
  g.sq.cap = gather ? per * (size_t)(n - 1) + 1 : 2 * per * (size_t)(n - 1) + 1;
  g.sq.q = lh_calloc(g.sq.cap, sizeof(outmsg), "the send queue");
  if (!lengths || !g.in_req || !g.out_req || !g.sq.q) {
    st = LH_ERR_OUT_OF_MEMORY;
    goto done;
  }
  g.in_bytes = lengths;
  g.mine_bytes = g.in_bytes + in_slots;
  g.owned_bytes = g.mine_bytes + mine_slots;
  g.out_bytes = g.owned_bytes + owned_slots;
  if (n == 1) { /* one rank: the result is still what the codec carries */
    for (int j = 0; j < P; j++) {
      size_t at, len = lh_piece_span(&g.lay, 0, j, &at);
      size_t bytes;
      LH_CHECK_GOTO(lh_engine_encode(e, data + at, len, at, g.in, g.cap, &bytes), st, done);
      LH_CHECK_GOTO(lh_copy_f32(e->on_device, g.tmp, data + at, len), st, done);
      LH_CHECK_GOTO(lh_engine_decode(e, g.in, bytes, data + at, len, at, 0), st, done);
      if (err)
        LH_CHECK_GOTO(lh_residual_add(e->on_device, err + at, g.tmp, data + at, len), st, done);
    }
    goto done;
  }
  st = gather ? run_gather(&g) : run_owner(&g);
  if (st != LH_SUCCESS)
    lh_error_context(st, "%s all-reduce of %zu floats on %d ranks", gather ? "allgather" : "owner", count, n);
done:
  for (size_t i = 0; g.in_req && i < in_slots; i++)
    if (g.in_req[i])
      lh_request_abandon(g.in_req[i]);
  for (size_t i = 0; g.out_req && i < out_slots; i++)
    if (g.out_req[i])
      lh_request_abandon(g.out_req[i]);
  if (g.sq.active)
    lh_request_abandon(g.sq.active);
  free(lengths);
  free(g.in_req);
  free(g.out_req);
  free(g.sq.q);
  return st;
}

lh_status lh_owner_allreduce(lh_engine *e, float *data, size_t count, float *err) {
  return owner_allreduce(e, data, count, err, 0);
}

lh_status lh_allgather_allreduce(lh_engine *e, float *data, size_t count, float *err) {
  return owner_allreduce(e, data, count, err, 1);
}

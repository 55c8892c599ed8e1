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
 * Every frame is posted as soon as it exists, through lh_isend_nic: a rank has one uplink, so
 * on simulated links (where each pair of ranks is a link of its own, with no NIC cap unless a
 * link file sets one) each frame departs after the previous one instead of n-1 of them
 * sharing nothing; real links get that from the NIC. Pieces are pipelined: phase 1 of piece
 * j+1 travels while the owner reduces piece j and phase 2 of piece j travels. */
#include <stdlib.h>
#include <string.h>

#include "collective/collective_internal.h"
#include "transport/transport_internal.h"

typedef struct {
  lh_engine *e;
  float *data, *err;
  int n, rank;
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
  lh_request *send_req; /* every send, in posting order */
  size_t sends, send_cap;
  double nic_free;      /* when this rank's simulated uplink is next free */
  float *tmp;
} owner;

/* Posts a frame at once; on simulated links it leaves after the previous one (one uplink). */
static lh_status post(owner *g, const unsigned char *frame, size_t bytes, int peer, int tag) {
  if (g->sends == g->send_cap)
    return lh_error(LH_ERR_INTERNAL, "all-reduce: more than %zu sends", g->send_cap);
  g->e->wire_bytes += bytes;
  return lh_isend_nic(g->e->comm, frame, bytes, peer, tag, &g->nic_free, &g->send_req[g->sends++]);
}

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
    LH_CHECK(lh_wait(&g->in_req[k]));
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
    LH_CHECK(post(g, frame, g->owned_bytes[j], (me + d) % n, LH_TAG_COMPRESSED_GATHER));
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
      LH_CHECK(post(g, g->mine + k * g->cap, g->mine_bytes[k], to, LH_TAG_COMPRESSED));
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
      LH_CHECK(lh_wait(&g->out_req[k]));
      LH_CHECK(lh_engine_decode(g->e, g->out + k * g->cap, g->out_bytes[k], g->data + at, len, at, 0));
    }
  return lh_waitall((int)g->sends, g->send_req);
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
        LH_CHECK(post(g, frame, *bytes, (me + d) % n, LH_TAG_COMPRESSED));
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
          LH_CHECK(lh_wait(&g->in_req[((size_t)src * n + seg) * P + j]));
        LH_CHECK(lh_engine_decode(g->e, frame, *bytes, g->data + at, len, at, src > 0));
      }
    }
  return lh_waitall((int)g->sends, g->send_req);
}

static lh_status owner_allreduce(lh_engine *e, float *data, size_t count, float *err, int gather) {
  owner g = {0};
  g.e = e;
  g.data = data;
  g.err = err;
  g.n = e->comm->size;
  g.rank = e->comm->rank;
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
  g.send_cap = gather ? per * (size_t)(n - 1) + 1 : 2 * per * (size_t)(n - 1) + 1;
  g.send_req = lh_calloc(g.send_cap, sizeof(lh_request), "all-reduce requests");
  if (!lengths || !g.in_req || !g.out_req || !g.send_req) {
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
  lh_requests_abandon(g.in_req, in_slots);
  lh_requests_abandon(g.out_req, out_slots);
  lh_requests_abandon(g.send_req, g.sends);
  free(lengths);
  free(g.in_req);
  free(g.out_req);
  free(g.send_req);
  return st;
}

lh_status lh_owner_allreduce(lh_engine *e, float *data, size_t count, float *err) {
  return owner_allreduce(e, data, count, err, 0);
}

lh_status lh_allgather_allreduce(lh_engine *e, float *data, size_t count, float *err) {
  return owner_allreduce(e, data, count, err, 1);
}

/* The compressed rings: QRING (re-quantize the running partial at each hop) and SHARED_RING
 * (integer codes under agreed scales, summed exactly on the wire).
 *
 * Both follow the plain ring's schedule (ring.c): in step s rank r sends segment (r - s) mod n
 * to r+1 and receives segment (r - s - 1) mod n from r-1; after n-1 reduce-scatter steps rank r
 * owns segment r+1, and n-1 all-gather steps forward the owner's frame. What travels is a
 * frame per piece (pipeline chunk), received with lh_irecv_upto because a frame's length can
 * depend on the data (zstd).
 *
 * QRING, at a reduce-scatter hop: decode the partial, add this rank's own fp32 values, encode
 * the new partial for the next rank. At the last hop the owner encodes the full sum once,
 * decodes its own frame into its buffer, and forwards that frame; every other rank decodes
 * the same bytes, so every rank ends bitwise identical. Each rank encodes every segment
 * exactly once (its own data at step 0, partials at steps 1..n-2, the sum as owner), so its
 * error-feedback residual covers the whole tensor without overlap.
 *
 * SHARED_RING: first every rank's per-block max-abs is exchanged and the maximum agreed, then
 * each rank encodes its own data once with those scales and each hop adds its codes into the
 * received frame (lh_codec_sum_wire): the owner's frame is the exact sum of every rank's
 * quantized values. Only the workers' quantization is lossy. */
#include <stdlib.h>
#include <string.h>

#include "collective/collective_internal.h"
#include "transport/transport_internal.h"

typedef struct {
  lh_engine *e;
  float *data, *err;
  int n, rank, steps;
  lh_layout lay;
  size_t cap;              /* bytes of one frame slot */
  unsigned char *rframe;   /* [step][piece] received frames */
  unsigned char *sframe;   /* [slot][piece] frames this rank encoded (see send_slot) */
  size_t *rbytes, *sbytes; /* their lengths */
  lh_request *rreq, *sreq; /* [step][piece] */
  float *tmp, *dec;        /* one piece each, host or device */
  float *scales;           /* SHARED_RING: agreed scales of every piece, in piece order */
  size_t *scale_at;        /* SHARED_RING: [seg][piece] first scale of that piece */
  int shared;
} qring;

static int send_seg(const qring *g, int s) { return ((g->rank - s) % g->n + g->n) % g->n; }
static int recv_seg(const qring *g, int s) { return ((g->rank - s - 1) % g->n + g->n) % g->n; }
static size_t slot(const qring *g, int s, int j) { return (size_t)s * g->lay.pieces + j; }

/* SHARED_RING encodes and decodes piece (seg, j) under its slice of the agreed scales. */
static lh_status use_scales(qring *g, lh_codec *c, int seg, int j, size_t len) {
  if (!g->shared)
    return LH_SUCCESS;
  size_t first = g->scale_at[slot(g, seg, j)];
  return lh_codec_set_scales(c, g->scales + first, lh_codec_scale_count(c, len));
}

static lh_status encode_piece(qring *g, const float *x, int seg, int j, size_t at, size_t len, unsigned char *frame,
                              size_t *bytes) {
  LH_CHECK(use_scales(g, g->e->enc, seg, j, len));
  return lh_engine_encode(g->e, x, len, at, frame, g->cap, bytes);
}

static lh_status decode_piece(qring *g, const unsigned char *frame, size_t bytes, float *out, int seg, int j,
                              size_t at, size_t len) {
  LH_CHECK(use_scales(g, g->e->dec, seg, j, len));
  return lh_engine_decode(g->e, frame, bytes, out, len, at, 0);
}

/* err += x - decode(frame): what this encode failed to carry. */
static lh_status add_residual(qring *g, const float *x, const unsigned char *frame, size_t bytes, int seg, int j,
                              size_t at, size_t len) {
  if (!g->err)
    return LH_SUCCESS;
  LH_CHECK(decode_piece(g, frame, bytes, g->dec, seg, j, at, len));
  return lh_residual_add(g->e->on_device, g->err + at, x, g->dec, len);
}

/* The frame sent at step s: step 0 and the reduce-scatter partials and the owner's frame come
 * from sframe[s]; QRING all-gather steps forward the frame received one step earlier. In
 * SHARED_RING every reduce-scatter send after step 0 is the received frame with this rank's
 * codes added, so it too comes from rframe. */
static lh_status post_send(qring *g, int s, int j) {
  size_t at, len = lh_piece_span(&g->lay, send_seg(g, s), j, &at);
  if (len == 0)
    return LH_SUCCESS;
  int from_recv = g->shared ? s > 0 : s >= g->n;
  const unsigned char *frame = from_recv ? g->rframe + slot(g, s - 1, j) * g->cap : g->sframe + slot(g, s, j) * g->cap;
  size_t bytes = from_recv ? g->rbytes[slot(g, s - 1, j)] : g->sbytes[slot(g, s, j)];
  g->e->wire_bytes += bytes;
  return lh_isend(g->e->comm, frame, bytes, (g->rank + 1) % g->n, LH_TAG_COMPRESSED, &g->sreq[slot(g, s, j)]);
}

static lh_status post_recv(qring *g, int s, int j) {
  size_t at, len = lh_piece_span(&g->lay, recv_seg(g, s), j, &at);
  if (len == 0)
    return LH_SUCCESS;
  return lh_irecv_upto(g->e->comm, g->rframe + slot(g, s, j) * g->cap, g->cap, &g->rbytes[slot(g, s, j)],
                       (g->rank - 1 + g->n) % g->n, LH_TAG_COMPRESSED, &g->rreq[slot(g, s, j)]);
}

/* QRING: a reduce-scatter frame arrived; produce the frame of step s+1 (or the owner's). */
static lh_status qring_hop(qring *g, int s, int j, int seg, size_t at, size_t len) {
  size_t k = slot(g, s, j);
  LH_CHECK(decode_piece(g, g->rframe + k * g->cap, g->rbytes[k], g->tmp, seg, j, at, len));
  LH_CHECK(lh_reduce_add(g->e->on_device, g->tmp, g->data + at, len)); /* partial + mine */
  size_t out = slot(g, s + 1, j);
  unsigned char *frame = g->sframe + out * g->cap;
  LH_CHECK(encode_piece(g, g->tmp, seg, j, at, len, frame, &g->sbytes[out]));
  if (s < g->n - 2)
    return add_residual(g, g->tmp, frame, g->sbytes[out], seg, j, at, len);
  /* owner: keep exactly what everyone else will decode */
  LH_CHECK(decode_piece(g, frame, g->sbytes[out], g->data + at, seg, j, at, len));
  return g->err ? lh_residual_add(g->e->on_device, g->err + at, g->tmp, g->data + at, len) : LH_SUCCESS;
}

/* SHARED_RING: add this rank's codes of the piece into the received frame, in place. */
static lh_status shared_hop(qring *g, int s, int j, int seg, size_t at, size_t len) {
  size_t k = slot(g, s, j), mine = slot(g, seg, j);
  double t0 = lh_now();
  lh_status st = lh_codec_sum_wire(g->e->enc, g->rframe + k * g->cap, g->cap, &g->rbytes[k],
                                   g->sframe + mine * g->cap, g->sbytes[mine]);
  g->e->codec_seconds += lh_now() - t0;
  if (st != LH_SUCCESS)
    return lh_error_context(st, "adding codes of elements %zu..%zu", at, at + len);
  if (s == g->n - 2) /* owner: the frame now holds the exact sum */
    return decode_piece(g, g->rframe + k * g->cap, g->rbytes[k], g->data + at, seg, j, at, len);
  return LH_SUCCESS;
}

static lh_status run(qring *g) {
  int P = g->lay.pieces;
  for (int s = 0; s < 2 && s < g->steps; s++)
    for (int j = 0; j < P; j++)
      LH_CHECK(post_recv(g, s, j));
  if (g->shared) { /* every rank's own codes of every segment, encoded once */
    for (int seg = 0; seg < g->n; seg++)
      for (int j = 0; j < P; j++) {
        size_t at, len = lh_piece_span(&g->lay, seg, j, &at);
        if (len == 0)
          continue;
        unsigned char *frame = g->sframe + slot(g, seg, j) * g->cap;
        LH_CHECK(encode_piece(g, g->data + at, seg, j, at, len, frame, &g->sbytes[slot(g, seg, j)]));
        LH_CHECK(add_residual(g, g->data + at, frame, g->sbytes[slot(g, seg, j)], seg, j, at, len));
      }
    /* step 0 sends this rank's own segment: sframe[send_seg(0)] is sframe[rank] */
  }
  for (int j = 0; j < P; j++) {
    int seg = send_seg(g, 0);
    size_t at, len = lh_piece_span(&g->lay, seg, j, &at);
    if (len == 0)
      continue;
    if (!g->shared) {
      unsigned char *frame = g->sframe + slot(g, 0, j) * g->cap;
      LH_CHECK(encode_piece(g, g->data + at, seg, j, at, len, frame, &g->sbytes[slot(g, 0, j)]));
      LH_CHECK(add_residual(g, g->data + at, frame, g->sbytes[slot(g, 0, j)], seg, j, at, len));
      LH_CHECK(post_send(g, 0, j));
    } else {
      size_t k = slot(g, seg, j);
      g->e->wire_bytes += g->sbytes[k];
      LH_CHECK(lh_isend(g->e->comm, g->sframe + k * g->cap, g->sbytes[k], (g->rank + 1) % g->n, LH_TAG_COMPRESSED,
                        &g->sreq[slot(g, 0, j)]));
    }
  }
  for (int s = 0; s < g->steps; s++) {
    int seg = recv_seg(g, s);
    for (int j = 0; j < P; j++) {
      size_t at, len = lh_piece_span(&g->lay, seg, j, &at);
      if (len > 0) {
        LH_CHECK(lh_wait(&g->rreq[slot(g, s, j)]));
        size_t k = slot(g, s, j);
        if (s < g->n - 1)
          LH_CHECK(g->shared ? shared_hop(g, s, j, seg, at, len) : qring_hop(g, s, j, seg, at, len));
        else
          LH_CHECK(decode_piece(g, g->rframe + k * g->cap, g->rbytes[k], g->data + at, seg, j, at, len));
      }
      if (s + 2 < g->steps)
        LH_CHECK(post_recv(g, s + 2, j));
      if (s + 1 < g->steps)
        LH_CHECK(post_send(g, s + 1, j));
    }
  }
  return lh_waitall(g->steps * P, g->sreq);
}

/* SHARED_RING's scale agreement: every rank's per-block max-abs of every piece goes to every
 * other rank (a few percent of the codes' bytes), and each takes the element-wise maximum in
 * rank order, so all agree bit for bit. */
static lh_status agree_scales(qring *g) {
  int P = g->lay.pieces, n = g->n;
  size_t total = 0;
  for (int seg = 0; seg < n; seg++)
    for (int j = 0; j < P; j++) {
      size_t at, len = lh_piece_span(&g->lay, seg, j, &at);
      g->scale_at[slot(g, seg, j)] = total;
      total += len ? lh_codec_scale_count(g->e->enc, len) : 0;
    }
  float *all = lh_calloc((size_t)n * (total ? total : 1), sizeof(float), "shared scales");
  lh_request *req = lh_calloc((size_t)2 * n, sizeof(lh_request), "scale requests");
  g->scales = lh_calloc(total ? total : 1, sizeof(float), "agreed scales");
  lh_status st = LH_SUCCESS;
  if (!all || !req || !g->scales) {
    st = LH_ERR_OUT_OF_MEMORY;
    goto done;
  }
  float *mine = all + (size_t)g->rank * total;
  float *host = NULL;
  if (g->e->on_device) { /* the scales are computed on the host from a copy: tiny next to the codes */
    LH_CHECK_GOTO(lh_host_pinned_alloc((void **)&host, (lh_seg_length(&g->lay, 0) + 1) * sizeof(float)), st, done);
  }
  for (int seg = 0; seg < n && st == LH_SUCCESS; seg++)
    for (int j = 0; j < P; j++) {
      size_t at, len = lh_piece_span(&g->lay, seg, j, &at);
      if (len == 0)
        continue;
      const float *x = g->data + at;
      if (host) {
        LH_CHECK_GOTO(lh_copy_to_host(host, x, len * sizeof(float)), st, freehost);
        x = host;
      }
      LH_CHECK_GOTO(lh_codec_local_scales(g->e->enc, x, len, mine + g->scale_at[slot(g, seg, j)]), st, freehost);
    }
  for (int d = 1; d < n; d++) {
    int to = (g->rank + d) % n, from = (g->rank - d + n) % n;
    LH_CHECK_GOTO(lh_irecv(g->e->comm, all + (size_t)from * total, total * sizeof(float), from, LH_TAG_COMPRESSED,
                           &req[2 * d]), st, freehost);
    LH_CHECK_GOTO(lh_isend(g->e->comm, mine, total * sizeof(float), to, LH_TAG_COMPRESSED, &req[2 * d + 1]), st,
                  freehost);
    g->e->wire_bytes += total * sizeof(float);
  }
  LH_CHECK_GOTO(lh_waitall(2 * n, req), st, freehost);
  for (size_t i = 0; i < total; i++) {
    float m = all[i];
    for (int r = 1; r < n; r++)
      if (all[(size_t)r * total + i] > m)
        m = all[(size_t)r * total + i];
    g->scales[i] = m;
  }
freehost:
  lh_host_pinned_free(host);
done:
  lh_requests_abandon(req, (size_t)2 * n);
  free(req);
  free(all);
  return st;
}

static lh_status qring_allreduce(lh_engine *e, float *data, size_t count, float *err, int shared) {
  qring g = {0};
  g.e = e;
  g.data = data;
  g.err = err;
  g.n = e->comm->size;
  g.rank = e->comm->rank;
  g.shared = shared;
  if (count == 0)
    return LH_SUCCESS;
  g.steps = 2 * (g.n - 1);
  g.lay = lh_layout_make(count, g.n, e->piece_elems);
  if (g.n == 1) { /* nothing to sum, but the result is what the codec carries, as with n > 1 */
    g.lay = lh_layout_make(count, 1, e->piece_elems);
    g.steps = 0;
  }
  int P = g.lay.pieces;
  g.cap = lh_engine_max_frame(e, g.lay.piece);
  if (g.cap == 0)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "all-reduce: pieces of %zu elements cannot be encoded", g.lay.piece);
  g.cap = (g.cap + 63) & ~(size_t)63;
  size_t rslots = (size_t)(g.steps > 0 ? g.steps : 1) * P, sslots = (size_t)g.n * P;
  size_t nreq = (size_t)g.steps * P;
  lh_status st = LH_SUCCESS;
  void *frames;
  LH_CHECK(lh_engine_frames(e, (rslots + sslots) * g.cap, &frames));
  g.rframe = frames;
  g.sframe = g.rframe + rslots * g.cap;
  float *scratch;
  LH_CHECK(lh_engine_scratch(e, 2 * g.lay.piece, &scratch));
  g.tmp = scratch;
  g.dec = scratch + g.lay.piece;
  g.rbytes = lh_calloc(rslots, sizeof(size_t), "frame lengths");
  g.sbytes = lh_calloc(sslots, sizeof(size_t), "frame lengths");
  g.rreq = lh_calloc(nreq ? nreq : 1, sizeof(lh_request), "all-reduce requests");
  g.sreq = lh_calloc(nreq ? nreq : 1, sizeof(lh_request), "all-reduce requests");
  g.scale_at = lh_calloc(sslots, sizeof(size_t), "scale offsets");
  if (!g.rbytes || !g.sbytes || !g.rreq || !g.sreq || !g.scale_at) {
    st = LH_ERR_OUT_OF_MEMORY;
    goto done;
  }
  if (shared)
    LH_CHECK_GOTO(agree_scales(&g), st, done);
  if (g.n == 1) { /* encode and decode in place: one rank still gets what the codec carries */
    for (int j = 0; j < P; j++) {
      size_t at, len = lh_piece_span(&g.lay, 0, j, &at);
      unsigned char *frame = g.sframe + (size_t)j * g.cap;
      size_t bytes;
      LH_CHECK_GOTO(encode_piece(&g, data + at, 0, j, at, len, frame, &bytes), st, done);
      LH_CHECK_GOTO(lh_copy_f32(e->on_device, g.tmp, data + at, len), st, done);
      LH_CHECK_GOTO(decode_piece(&g, frame, bytes, data + at, 0, j, at, len), st, done);
      if (err)
        LH_CHECK_GOTO(lh_residual_add(e->on_device, err + at, g.tmp, data + at, len), st, done);
    }
    goto done;
  }
  st = run(&g);
  if (st != LH_SUCCESS)
    lh_error_context(st, "%s all-reduce of %zu floats on %d ranks", shared ? "shared_ring" : "qring", count, g.n);
done:
  lh_requests_abandon(g.rreq, nreq);
  lh_requests_abandon(g.sreq, nreq);
  free(g.rbytes);
  free(g.sbytes);
  free(g.rreq);
  free(g.sreq);
  free(g.scale_at);
  free(g.scales);
  return st;
}

lh_status lh_qring_allreduce(lh_engine *e, float *data, size_t count, float *err) {
  return qring_allreduce(e, data, count, err, 0);
}

lh_status lh_shared_ring_allreduce(lh_engine *e, float *data, size_t count, float *err) {
  return qring_allreduce(e, data, count, err, 1);
}

/* The chunked, pipelined ring all-reduce (reduce-scatter, then all-gather).
 *
 * The buffer is cut into one segment per rank. In step s (0 <= s < 2(n-1)) rank r sends
 * segment (r - s) mod n to r+1 and receives segment (r - s - 1) mod n from r-1: during the
 * first n-1 steps it adds what it receives (reduce-scatter; rank r ends owning segment r+1),
 * during the last n-1 it stores it verbatim (all-gather). Each segment is summed in one fixed
 * order along the ring and every rank ends with the owner's bytes, so all ranks are bitwise
 * identical and runs are repeatable.
 *
 * Pipelining: every segment is cut into chunks; chunk j of step s+1 is sent as soon as chunk
 * j of step s has arrived, so a step's latency overlaps the previous step's transfer and the
 * link stays busy. Receives are posted two steps ahead into two scratch slots. */
#include <stdlib.h>
#include <string.h>

#include "collective/collective_internal.h"
#include "transport/transport_internal.h"

typedef struct {
  lh_comm comm;
  float *data;
  float *scratch[2]; /* reduce-scatter receive slots, one per step parity */
  int n, rank, steps, chunks;
  lh_layout lay;
  lh_request *recv_req; /* [step][chunk] */
  lh_request *send_req; /* [step][chunk] */
} lh_ring;

static int lh_send_seg(const lh_ring *g, int s) { return ((g->rank - s) % g->n + g->n) % g->n; }
static int lh_recv_seg(const lh_ring *g, int s) { return ((g->rank - s - 1) % g->n + g->n) % g->n; }

static lh_status lh_ring_post_recv(lh_ring *g, int s, int j) {
  int seg = lh_recv_seg(g, s);
  size_t at, len = lh_piece_span(&g->lay, seg, j, &at);
  if (len == 0)
    return LH_SUCCESS;
  float *dst = s < g->n - 1 ? g->scratch[s % 2] + (at - lh_seg_offset(&g->lay, seg)) : g->data + at;
  int left = (g->rank - 1 + g->n) % g->n;
  return lh_irecv(g->comm, dst, len * sizeof(float), left, LH_TAG_RING, &g->recv_req[(size_t)s * g->chunks + j]);
}

static lh_status lh_ring_post_send(lh_ring *g, int s, int j) {
  int seg = lh_send_seg(g, s);
  size_t at, len = lh_piece_span(&g->lay, seg, j, &at);
  if (len == 0)
    return LH_SUCCESS;
  int right = (g->rank + 1) % g->n;
  return lh_isend(g->comm, g->data + at, len * sizeof(float), right, LH_TAG_RING,
                  &g->send_req[(size_t)s * g->chunks + j]);
}

static lh_status lh_ring_run(lh_ring *g, lh_reduce_op op, int on_device) {
  for (int s = 0; s < 2 && s < g->steps; s++)
    for (int j = 0; j < g->chunks; j++)
      LH_CHECK(lh_ring_post_recv(g, s, j));
  for (int j = 0; j < g->chunks; j++)
    LH_CHECK(lh_ring_post_send(g, 0, j));
  for (int s = 0; s < g->steps; s++) {
    int seg = lh_recv_seg(g, s);
    for (int j = 0; j < g->chunks; j++) {
      size_t at, len = lh_piece_span(&g->lay, seg, j, &at);
      if (len > 0) { /* chunks past a short segment's end carry nothing, on both sides */
        LH_CHECK(lh_wait(&g->recv_req[(size_t)s * g->chunks + j]));
        float *mine = g->data + at;
        if (s < g->n - 1)
          LH_CHECK(lh_reduce_add(on_device, mine, g->scratch[s % 2] + (at - lh_seg_offset(&g->lay, seg)), len));
        if (s == g->n - 2 && op == LH_OP_MEAN) /* the owner scales once; everyone gets its bytes */
          LH_CHECK(lh_reduce_div(on_device, mine, (float)g->n, len));
      }
      if (s + 2 < g->steps)
        LH_CHECK(lh_ring_post_recv(g, s + 2, j));
      if (s + 1 < g->steps)
        LH_CHECK(lh_ring_post_send(g, s + 1, j));
    }
  }
  return lh_waitall(g->steps * g->chunks, g->send_req);
}

lh_status lh_ring_allreduce(lh_comm comm, float *data, size_t count, lh_reduce_op op, size_t chunk_bytes,
                            int on_device) {
  lh_ring g = {0};
  g.comm = comm;
  g.data = data;
  g.n = comm->size;
  g.rank = comm->rank;
  if (g.n == 1 || count == 0)
    return LH_SUCCESS; /* one rank: the sum and the mean are the data itself */
  g.steps = 2 * (g.n - 1);
  g.lay = lh_layout_make(count, g.n, chunk_bytes / sizeof(float));
  size_t longest = lh_seg_length(&g.lay, 0);
  g.chunks = g.lay.pieces;

  lh_status st = LH_SUCCESS;
  size_t nreq = (size_t)g.steps * g.chunks;
  g.recv_req = lh_calloc(nreq, sizeof(lh_request), "ring requests");
  g.send_req = lh_calloc(nreq, sizeof(lh_request), "ring requests");
  if (!g.recv_req || !g.send_req) {
    st = LH_ERR_OUT_OF_MEMORY;
    goto done;
  }
  if (on_device) {
    LH_CHECK_GOTO(lh_device_alloc((void **)&g.scratch[0], longest * sizeof(float)), st, done);
    LH_CHECK_GOTO(lh_device_alloc((void **)&g.scratch[1], longest * sizeof(float)), st, done);
  } else {
    void *both = NULL;
    LH_CHECK_GOTO(lh_comm_scratch(comm, 2 * longest * sizeof(float), &both), st, done);
    g.scratch[0] = both;
    g.scratch[1] = g.scratch[0] + longest;
  }
  st = lh_ring_run(&g, op, on_device);
  if (st != LH_SUCCESS)
    lh_error_context(st, "ring all-reduce of %zu floats on %d ranks", count, g.n);
done:
  /* After a failure some requests are still outstanding: drop them, the comm is broken. */
  lh_requests_abandon(g.recv_req, nreq);
  lh_requests_abandon(g.send_req, nreq);
  free(g.recv_req);
  free(g.send_req);
  if (on_device) /* host scratch belongs to the communicator */
    for (int k = 0; k < 2; k++)
      lh_device_free(g.scratch[k]);
  return st;
}

size_t lh_ring_bytes_sent(size_t count, int n, int rank) {
  if (n < 2)
    return 0;
  lh_layout l = lh_layout_make(count, n, 1);
  size_t elems = 0;
  for (int s = 0; s < 2 * (n - 1); s++)
    elems += lh_seg_length(&l, ((rank - s) % n + n) % n);
  return elems * sizeof(float);
}

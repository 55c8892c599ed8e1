/* The alpha-beta cost model over a link matrix: predictions the benches print beside their
 * measurements and the scheduler ranks orderings by. Formulas are in links.h. */
#include <math.h>
#include <stdlib.h>

#include "common/internal.h"
#include <longhaul/links.h>
#include "netmodel/ring_model.h"

/* Latency and bandwidth of from -> to as a transfer sees them: a sender's uplink cap, when
 * set, limits every one of its links. */
static void lh_effective_link(const lh_links *links, int from, int to, double *alpha, double *beta) {
  double uplink;
  lh_links_get(links, from, to, alpha, beta);
  lh_links_get_uplink(links, from, &uplink);
  if (uplink > 0 && uplink < *beta)
    *beta = uplink;
}

lh_status lh_model_p2p(const lh_links *links, int from, int to, size_t bytes, double *seconds) {
  lh_error_clear();
  if (!seconds)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_model_p2p: seconds must not be NULL");
  double alpha, beta;
  /* lh_links_get validates links, from and to with messages naming them. */
  LH_CHECK(lh_links_get(links, from, to, &alpha, &beta));
  if (from == to) {
    *seconds = 0; /* a device's message to itself never touches the network */
    return LH_SUCCESS;
  }
  lh_effective_link(links, from, to, &alpha, &beta);
  *seconds = alpha + (double)bytes / beta;
  return LH_SUCCESS;
}

/* The ring's link k (rank k -> rank k + 1, the last to the first) on a link matrix. */
typedef struct lh_ring_on_links {
  const lh_links *links;
  const int *order; /* NULL: 0 .. ranks - 1 */
  int ranks;
} lh_ring_on_links;
static void lh_ring_link_of_matrix(const void *user, int k, double *alpha, double *beta) {
  const lh_ring_on_links *ring = user;
  int next = (k + 1) % ring->ranks;
  int from = ring->order ? ring->order[k] : k, to = ring->order ? ring->order[next] : next;
  lh_effective_link(ring->links, from, to, alpha, beta);
}

/* Checks that order[0..ranks) holds distinct devices of the matrix. */
static lh_status lh_check_ring(int devices, const int *order, int ranks) {
  unsigned char *seen = lh_calloc((size_t)devices, 1, "ring order check");
  if (!seen)
    return LH_ERR_OUT_OF_MEMORY;
  lh_status st = LH_SUCCESS;
  for (int k = 0; k < ranks && st == LH_SUCCESS; k++) {
    int d = order[k];
    if (d < 0 || d >= devices)
      st = lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_model_ring_allreduce: ranks_in_order[%d] is %d, outside 0..%d (the matrix has %d devices)", k,
                    d, devices - 1, devices);
    else if (seen[d])
      st = lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_model_ring_allreduce: ranks_in_order[%d] is %d, which appears earlier in the ring too", k, d);
    else
      seen[d] = 1;
  }
  free(seen);
  return st;
}

lh_status lh_model_ring_allreduce(const lh_links *links, const int *ranks_in_order, int ranks, size_t bytes,
                                  size_t chunk_bytes, double *seconds) {
  lh_error_clear();
  if (!links || !seconds)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_model_ring_allreduce: %s must not be NULL",
                    !links ? "links" : "seconds");
  int devices;
  LH_CHECK(lh_links_devices(links, &devices));
  if (ranks < 1 || ranks > devices)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_model_ring_allreduce: ranks is %d; it must be from 1 to %d (the matrix's devices)", ranks,
                    devices);
  if (ranks_in_order)
    LH_CHECK(lh_check_ring(devices, ranks_in_order, ranks));
  lh_ring_on_links ring = {links, ranks_in_order, ranks};
  *seconds = lh_ring_allreduce_seconds(ranks, bytes, chunk_bytes, lh_ring_link_of_matrix, &ring);
  return LH_SUCCESS;
}

double lh_ring_allreduce_seconds(int ranks, size_t bytes, size_t chunk_bytes, lh_ring_link_fn link,
                                 const void *user) {
  if (ranks <= 1 || bytes == 0)
    return 0;
  /* Every rank sends one segment per step (rounded up: a step waits for the longest). */
  size_t segment_bytes = bytes / (size_t)ranks + (bytes % (size_t)ranks != 0);
  size_t chunk_bytes_used = (chunk_bytes == 0 || chunk_bytes > segment_bytes) ? segment_bytes : chunk_bytes;
  double segment = (double)segment_bytes, chunk = (double)chunk_bytes_used;
  double step = 0, last = 0;
  for (int k = 0; k < ranks; k++) {
    double alpha, beta;
    link(user, k, &alpha, &beta);
    /* A step is bandwidth-bound (all chunks on the wire back to back) or latency-bound (the
     * first chunk must arrive before the receiver can forward it), whichever is slower. */
    double link_step = fmax(segment / beta, chunk / beta + alpha);
    step = fmax(step, link_step);
    /* The last step ends when its last chunk arrives: the step's chunks follow the previous
     * step's arrivals back to back, so it is one segment's wire time plus the latency. */
    last = fmax(last, segment / beta + alpha);
  }
  return (2.0 * (ranks - 1) - 1) * step + last;
}

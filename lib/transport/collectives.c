/* Barrier and broadcast over the point-to-point layer, so that simulated links shape them
 * and device buffers work on every backend. */
#include "transport/transport_internal.h"

/* Dissemination barrier: ceil(log2 n) rounds; in round k rank r signals r + 2^k and hears
 * from r - 2^k, so after the last round every rank has transitively heard from all. */
lh_status lh_barrier(lh_comm comm) {
  lh_error_clear();
  LH_CHECK(lh_comm_check(comm, "lh_barrier"));
  int n = comm->size, me = comm->rank;
  for (int dist = 1; dist < n; dist *= 2) {
    lh_request reqs[2];
    LH_CHECK(lh_irecv(comm, NULL, 0, (me - dist + n) % n, LH_TAG_BARRIER, &reqs[0]));
    LH_CHECK(lh_isend(comm, NULL, 0, (me + dist) % n, LH_TAG_BARRIER, &reqs[1]));
    LH_CHECK(lh_waitall(2, reqs));
  }
  return LH_SUCCESS;
}

/* Binomial tree rooted at `root`: ceil(log2 n) rounds, each rank receives once. */
lh_status lh_bcast(lh_comm comm, void *buf, size_t bytes, int root) {
  lh_error_clear();
  LH_CHECK(lh_comm_check(comm, "lh_bcast"));
  int n = comm->size;
  if (root < 0 || root >= n)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_bcast: root %d is outside 0..%d", root, n - 1);
  if (!buf && bytes > 0)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_bcast: buffer is NULL but bytes is %zu", bytes);
  int rel = (comm->rank - root + n) % n; /* rank relative to the root */
  int mask = 1;
  while (mask < n) {
    if (rel & mask) {
      LH_CHECK(lh_recv(comm, buf, bytes, ((rel - mask) + root) % n, LH_TAG_BCAST));
      break;
    }
    mask <<= 1;
  }
  for (mask >>= 1; mask > 0; mask >>= 1)
    if (rel + mask < n)
      LH_CHECK(lh_send(comm, buf, bytes, (rel + mask + root) % n, LH_TAG_BCAST));
  return LH_SUCCESS;
}

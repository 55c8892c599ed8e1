/* The link probe (see probe.h for the method). Runs on the transport, so on simulated links
 * it measures the simulation, and on real links the network. */
#include <stdlib.h>
#include <string.h>

#include <longhaul/probe.h>

#include "transport/transport_internal.h"

typedef struct {
  lh_comm comm;
  lh_probe_config cfg;
  char *buf; /* large-message buffer, max_bytes */
} lh_probe;

static int lh_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* One round trip: `bytes` from sender to receiver, `reply` bytes back. Returns the time seen
 * by the sender (the receiver gets 0). */
static lh_status lh_probe_trip(lh_probe *p, int sender, int receiver, size_t bytes, size_t reply, double *seconds) {
  int me = p->comm->rank;
  *seconds = 0;
  if (me == sender) {
    double t0 = lh_now();
    LH_CHECK(lh_send(p->comm, p->buf, bytes, receiver, LH_TAG_PROBE));
    LH_CHECK(lh_recv(p->comm, p->buf, reply, receiver, LH_TAG_PROBE));
    *seconds = lh_now() - t0;
  } else {
    LH_CHECK(lh_recv(p->comm, p->buf, bytes, sender, LH_TAG_PROBE));
    LH_CHECK(lh_send(p->comm, p->buf, reply, sender, LH_TAG_PROBE));
  }
  return LH_SUCCESS;
}

/* Measures sender -> receiver; both call it. The sender chooses the large size and announces
 * each size before the transfer so the receiver can post a receive of exactly that size. */
static lh_status lh_probe_direction(lh_probe *p, int sender, int receiver, double *alpha, double *beta) {
  const lh_probe_config *c = &p->cfg;
  int me = p->comm->rank;
  double rtt = 1e30, t;
  for (int i = 0; i < c->small_reps; i++) {
    LH_CHECK(lh_probe_trip(p, sender, receiver, c->small_bytes, c->small_bytes, &t));
    if (t < rtt)
      rtt = t;
  }
  double times[64];
  int reps = c->large_reps < 64 ? c->large_reps : 64;
  uint64_t size = c->max_bytes < ((size_t)256 << 10) ? c->max_bytes : ((size_t)256 << 10);
  int sized = 0, taken = 0;
  for (;;) {
    uint64_t announce = (sized && taken == reps) ? 0 : size; /* 0: done */
    if (me == sender)
      LH_CHECK(lh_send(p->comm, &announce, sizeof announce, receiver, LH_TAG_PROBE));
    else
      LH_CHECK(lh_recv(p->comm, &announce, sizeof announce, sender, LH_TAG_PROBE));
    if (announce == 0)
      break;
    size = announce;
    LH_CHECK(lh_probe_trip(p, sender, receiver, (size_t)size, c->small_bytes, &t));
    if (me != sender)
      continue;
    double wire = t - rtt;
    if (!sized) {
      /* Grow until one transfer takes about target_seconds, so that latency and timer noise
       * are a small part of what is measured. */
      if (wire >= 0.5 * c->target_seconds || size >= c->max_bytes) {
        sized = 1;
      } else {
        double factor = wire > 0 ? c->target_seconds / wire : 16;
        factor = factor < 2 ? 2 : factor > 16 ? 16 : factor;
        double next = (double)size * factor;
        size = next > (double)c->max_bytes ? c->max_bytes : (uint64_t)next;
      }
      continue;
    }
    times[taken++] = t;
  }
  if (me == sender) {
    qsort(times, (size_t)reps, sizeof times[0], lh_cmp_double);
    double median = times[reps / 2];
    double wire = median - rtt;
    *alpha = rtt / 2;
    /* A transfer faster than the timer can resolve: report what the size allows. */
    *beta = (double)size / (wire > 1e-7 ? wire : 1e-7);
  }
  return LH_SUCCESS;
}

static lh_status lh_probe_validate(const lh_probe_config *in, lh_probe_config *out) {
  lh_probe_config d = LH_PROBE_CONFIG_INIT;
  if (!in) {
    *out = d;
    return LH_SUCCESS;
  }
  if (in->size < sizeof d)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_probe_links: config->size is %zu, expected %zu (LH_PROBE_CONFIG_INIT)",
                    in->size, sizeof d);
  *out = *in;
  if (out->small_reps < 1 || out->small_reps > 1000)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_probe_links: small_reps %d is outside 1..1000", out->small_reps);
  if (out->large_reps < 1 || out->large_reps > 64)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_probe_links: large_reps %d is outside 1..64", out->large_reps);
  if (out->small_bytes < 1 || out->small_bytes > 4096)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_probe_links: small_bytes %zu is outside 1..4096", out->small_bytes);
  if (out->max_bytes < 4096 || out->max_bytes > ((size_t)1 << 32))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_probe_links: max_bytes %zu is outside 4 KiB..4 GiB", out->max_bytes);
  if (!(out->target_seconds > 0) || out->target_seconds > 60)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_probe_links: target_seconds %g is outside (0, 60]",
                    out->target_seconds);
  return LH_SUCCESS;
}

/* Round-robin tournament: with m = n rounded up to even, players 0..m-2 meet when their sum
 * is 2*round modulo m-1, and the one left over meets player m-1; every pair meets exactly
 * once in m-1 rounds. Returns -1 when `me` sits the round out (odd n). */
static int lh_probe_partner(int n, int round, int me) {
  int m = n + (n & 1), k = m - 1;
  int partner;
  if (me == m - 1)
    partner = round;
  else if ((2 * round - me + 2 * k) % k == me)
    partner = m - 1;
  else
    partner = (2 * round - me + 2 * k) % k;
  return partner >= n ? -1 : partner;
}

lh_status lh_probe_links(lh_comm comm, const lh_probe_config *config, lh_links **links) {
  lh_error_clear();
  LH_CHECK(lh_comm_check(comm, "lh_probe_links"));
  if (!links)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_probe_links: links must not be NULL");
  *links = NULL;
  lh_probe p = {0};
  p.comm = comm;
  LH_CHECK(lh_probe_validate(config, &p.cfg));
  int n = comm->size, me = comm->rank;
  const long long args[3] = {(long long)p.cfg.max_bytes, p.cfg.small_reps, p.cfg.large_reps};
  static const char *const names[3] = {"max_bytes", "small_reps", "large_reps"};
  LH_CHECK(lh_comm_agree(comm, args, 3, names, "lh_probe_links"));

  lh_status st = LH_SUCCESS;
  double *row = lh_calloc((size_t)2 * n, sizeof(double), "probe results");   /* my alpha, beta per peer */
  double *all = lh_calloc((size_t)2 * n * n, sizeof(double), "probe results");
  p.buf = lh_malloc(p.cfg.max_bytes, "the probe buffer");
  if (!row || !all || !p.buf) {
    st = LH_ERR_OUT_OF_MEMORY;
    goto done;
  }
  int m = n + (n & 1);
  for (int round = 0; round < m - 1 && n > 1; round++) {
    int partner = lh_probe_partner(n, round, me);
    double mine[3] = {-1, 0, 0};
    if (partner >= 0) {
      int first = me < partner ? me : partner, second = me < partner ? partner : me;
      double a = 0, b = 0;
      LH_CHECK_GOTO(lh_probe_direction(&p, first, second, &a, &b), st, done);
      if (me == first) {
        row[2 * partner] = a;
        row[2 * partner + 1] = b;
        mine[0] = partner, mine[1] = a, mine[2] = b;
      }
      LH_CHECK_GOTO(lh_probe_direction(&p, second, first, &a, &b), st, done);
      if (me == second) {
        row[2 * partner] = a;
        row[2 * partner + 1] = b;
        mine[0] = partner, mine[1] = a, mine[2] = b;
      }
    }
    if (p.cfg.progress && mine[0] >= 0)
      p.cfg.progress(p.cfg.progress_user, me, (int)mine[0], mine[1], mine[2]);
  }
  int rc = MPI_Allgather(row, 2 * n, MPI_DOUBLE, all, 2 * n, MPI_DOUBLE, comm->ctrl);
  if (rc != MPI_SUCCESS) {
    st = lh_mpi_error(rc, "MPI_Allgather of probe results");
    goto done;
  }
  lh_links *out = NULL;
  LH_CHECK_GOTO(lh_links_create(n, 0.0, 1.0, &out), st, done);
  for (int i = 0; i < n && st == LH_SUCCESS; i++) {
    st = lh_links_set_device(out, i, comm->hosts[i], 1.0);
    for (int j = 0; j < n && st == LH_SUCCESS; j++)
      if (i != j)
        st = lh_links_set(out, i, j, all[(size_t)2 * (i * n + j)], all[(size_t)2 * (i * n + j) + 1]);
  }
  if (st != LH_SUCCESS)
    lh_links_free(out);
  else
    *links = out;
done:
  free(row);
  free(all);
  free(p.buf);
  return st;
}

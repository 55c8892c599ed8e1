/* The link probe: measures latency alpha and bandwidth beta of every ordered pair of ranks
 * with ping-pong messages at a small and a large size, and returns a link matrix that
 * lh_links_write_file saves for the scheduler and the simulated-link layer.
 *
 * Method: pairs are measured in rounds of disjoint pairs (a round-robin tournament), so a
 * 4-rank probe takes 3 rounds. For i -> j, a small message and a one-byte reply give the round
 * trip time r; a large message of L bytes and the same reply give T. Then
 * alpha_ij = min(r) / 2 and beta_ij = L / (median(T) - min(r)). L grows until one transfer
 * takes target_seconds or reaches max_bytes.
 * Stability: stable. */
#ifndef LONGHAUL_PROBE_H
#define LONGHAUL_PROBE_H

#include <stddef.h>
#include <longhaul/status.h>
#include <longhaul/transport.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Called on each rank after it measured one of its outgoing links (from = this rank), e.g. to
 * print progress. It runs between measurements, so it should be quick. */
typedef void (*lh_probe_progress_fn)(void *user, int from, int to, double latency_s, double bandwidth_Bps);

typedef struct lh_probe_config {
  size_t size;                   /* sizeof(lh_probe_config) */
  int version;                   /* LH_VERSION_CODE */
  int small_reps;                /* round trips with a small message, default 8 */
  int large_reps;                /* transfers at the large size, default 3 */
  size_t small_bytes;            /* default 8 */
  size_t max_bytes;              /* cap on the large size, default 64 MiB */
  double target_seconds;         /* large transfers should take about this long, default 0.25 */
  lh_probe_progress_fn progress; /* optional */
  void *progress_user;
} lh_probe_config;
#define LH_PROBE_CONFIG_INIT \
  {sizeof(lh_probe_config), LH_VERSION_CODE, 8, 3, 8, (size_t)64 << 20, 0.25, NULL, NULL}

/* Collective. Every rank receives the same matrix (devices = ranks, sites = host names). */
lh_status lh_probe_links(lh_comm comm, const lh_probe_config *config, lh_links **links);

#ifdef __cplusplus
}
#endif
#endif

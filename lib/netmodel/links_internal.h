/* Rules a link matrix's values must satisfy, shared by the API setters (links.c) and the
 * link-file reader (linkfile.c) so that a file can never hold what the API refuses, and the
 * API can never hold what the writer cannot write back. Never installed. */
#ifndef LH_NETMODEL_LINKS_INTERNAL_H
#define LH_NETMODEL_LINKS_INTERNAL_H

#include <float.h>
#include <math.h>
#include <stddef.h>

/* Above this a matrix (two N x N doubles) is no longer a plausible network: 65536 devices
 * already need 64 GiB. The reader refuses a larger `devices` line before allocating. */
#define LH_LINKS_MAX_DEVICES 65536
/* Longest site name, without the terminating NUL. */
#define LH_LINKS_SITE_MAX 63
#define LH_LINKS_DEFAULT_SITE "-"

/* The file stores bandwidth in bits per second scaled to Gbit/s, so a bandwidth must stay
 * finite when multiplied by 8 for the writer to reproduce it exactly. */
#define LH_LINKS_MAX_BANDWIDTH (DBL_MAX / 8)

static inline int lh_links_latency_ok(double seconds) { return isfinite(seconds) && seconds >= 0; }
static inline int lh_links_bandwidth_ok(double bytes_per_second) {
  return isfinite(bytes_per_second) && bytes_per_second > 0 && bytes_per_second <= LH_LINKS_MAX_BANDWIDTH;
}
/* An uplink cap may also be 0, meaning "no cap". */
static inline int lh_links_uplink_ok(double bytes_per_second) {
  return bytes_per_second == 0 || lh_links_bandwidth_ok(bytes_per_second);
}
static inline int lh_links_speed_ok(double speed) { return isfinite(speed) && speed > 0; }

/* NULL when `site` (length bytes, not necessarily NUL-terminated) can be a site name, else a
 * static phrase saying why not ("is longer than 63 characters"). A site is one token of a
 * link file: not empty, no white space or control characters, no '#' (a comment there). */
const char *lh_links_site_problem(const char *site, size_t length);

#endif

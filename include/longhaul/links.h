/* Link matrices: latency alpha and bandwidth beta for every directed pair of devices, the
 * link-file format that stores them, and the alpha-beta cost model built on them.
 *
 * Units inside the API are SI: seconds and bytes per second. The link file uses milliseconds
 * and Gbit/s (1 Gbit/s = 125,000,000 bytes/s); the reader and writer convert.
 *
 * File format (exact rules in examples/links/README.md):
 *   # longhaul links v1
 *   devices N
 *   device I site NAME speed X        (optional, one per device)
 *   latency_ms                        then N rows of N numbers
 *   bandwidth_gbps                    then N rows of N numbers
 *   uplink_gbps                       optional: one row of N numbers, a per-device NIC cap
 *                                     shared by all its outgoing links (0 = no cap)
 * Unknown keyword sections are skipped with a warning so that newer files load in older
 * readers. Stability: stable. */
#ifndef LONGHAUL_LINKS_H
#define LONGHAUL_LINKS_H

#include <stddef.h>
#include <stdio.h>
#include <longhaul/status.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LH_GBIT_BYTES 125000000.0 /* bytes per second in 1 Gbit/s */

typedef struct lh_links lh_links; /* opaque */

/* Value rules, checked by every setter and by the reader: devices from 1 to 65536; latency
 * finite and >= 0; bandwidth finite, > 0 and at most DBL_MAX / 8 (the file stores bits).
 * A negative zero is stored as zero. A device has no link to itself: the diagonal reads as
 * latency 0 and bandwidth 0 and cannot be set. On failure *out is set to NULL. */

/* N devices, every off-diagonal link set to (latency_s, bandwidth_Bps); bandwidth > 0. */
lh_status lh_links_create(int devices, double latency_s, double bandwidth_Bps, lh_links **out);
/* Accepts NULL. */
lh_status lh_links_free(lh_links *links);
lh_status lh_links_copy(const lh_links *links, lh_links **out);

/* Strict readers: on bad input LH_ERR_PARSE, and lh_last_error() names the source, the line
 * number and what was expected ("net.links:7: expected 4 numbers in row 2 of latency_ms, found 3";
 * rows and columns count from 0, like devices). Unknown sections are skipped with an LH_LOG
 * warning. A file that cannot be opened gives LH_ERR_IO naming the path and the reason.
 * lh_links_parse reads `length` bytes of `text` (no NUL needed); source_name (NULL: "<text>")
 * is what messages call it. */
lh_status lh_links_read_file(const char *path, lh_links **out);
lh_status lh_links_parse(const char *text, size_t length, const char *source_name, lh_links **out);
/* Writers produce a file that reads back to exactly the same values, with aligned columns,
 * a line per device, and uplink_gbps only when some device has a cap. */
lh_status lh_links_write_file(const lh_links *links, const char *path);
lh_status lh_links_write_stream(const lh_links *links, FILE *stream);

lh_status lh_links_devices(const lh_links *links, int *devices);
lh_status lh_links_get(const lh_links *links, int from, int to, double *latency_s, double *bandwidth_Bps);
lh_status lh_links_set(lh_links *links, int from, int to, double latency_s, double bandwidth_Bps);
/* site: at most 63 characters, no white space; speed > 0 (1.0 = the reference device). */
lh_status lh_links_get_device(const lh_links *links, int device, const char **site, double *speed);
lh_status lh_links_set_device(lh_links *links, int device, const char *site, double speed);
/* Per-device NIC cap in bytes/s shared by all outgoing links; 0 = none. */
lh_status lh_links_get_uplink(const lh_links *links, int device, double *bandwidth_Bps);
lh_status lh_links_set_uplink(lh_links *links, int device, double bandwidth_Bps);

/* ---- alpha-beta cost model -------------------------------------------------------------- */

/* The cost model reads beta of a link from i as min(beta, uplink cap of i) when i has a cap. */

/* One message of `bytes` from `from` to `to`: alpha + bytes / beta (0 when from == to). */
lh_status lh_model_p2p(const lh_links *links, int from, int to, size_t bytes, double *seconds);

/* The chunked, pipelined ring all-reduce of `bytes` over `ranks` devices taken in the order
 * given (NULL: 0..ranks-1), each ring step cut into chunks of `chunk_bytes` (0: whole
 * segments), as lh_allreduce's ring runs it: 2(ranks-1) steps that each move bytes/ranks over
 * every ring link; a step costs max(its chunks' wire time, one chunk's wire time plus the
 * link latency) on the slowest link, and the last step ends when its last chunk arrives, one
 * segment's wire time plus the latency after it starts:
 *   segment = ceil(bytes / ranks), chunk = min(chunk_bytes, segment),
 *   seconds = (2(ranks-1) - 1) * max_k max(segment/beta_k, chunk/beta_k + alpha_k)
 *             + max_k (segment/beta_k + alpha_k)
 * over the ring links k -> k+1 (the last rank sends to the first). ranks_in_order must hold
 * `ranks` distinct devices of the matrix. ranks == 1 or bytes == 0 gives 0. */
lh_status lh_model_ring_allreduce(const lh_links *links, const int *ranks_in_order, int ranks,
                                  size_t bytes, size_t chunk_bytes, double *seconds);

#ifdef __cplusplus
}
#endif
#endif

/* LH_* environment variables: one table declares every variable Longhaul reads, with its
 * default, the values allowed and a line of help. `lh-info` prints it.
 *
 *   LH_LOG           WARN      NONE|WARN|INFO|DEBUG: what the library writes to stderr
 *   LH_BACKEND       mpi       mpi|nccl: the transport backend of new communicators
 *   LH_TIMEOUT_S     300       seconds a blocking wait may take before LH_ERR_TIMEOUT
 *   LH_CHUNK_BYTES   1MiB      transport chunk: larger messages go as several chunks
 *   LH_MAX_INFLIGHT  4         chunks in flight per peer
 *   LH_LINKS         (unset)   link file for simulated links
 *   LH_SIM_BW        (unset)   uniform simulated bandwidth, e.g. 100mbit
 *   LH_SIM_LAT       (unset)   uniform simulated one-way latency, e.g. 20ms
 *   LH_RING_CHUNK_BYTES 1MiB   pipeline chunk of the ring all-reduce
 *   LH_BIND          none      none|core|gpu|nic: bind each rank near a core, its GPU or a NIC
 *                              when its first communicator is created (a warning if impossible)
 *
 * Stability: stable. */
#ifndef LONGHAUL_ENV_H
#define LONGHAUL_ENV_H

#include <stddef.h>
#include <longhaul/status.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lh_env_var {
  const char *name;          /* "LH_TIMEOUT_S" */
  const char *default_value; /* "300"; "" when unset means "off" */
  const char *allowed;       /* "a positive number of seconds" */
  const char *help;          /* one line */
  const char *value;         /* the value in this process's environment, NULL when unset */
} lh_env_var;

/* Number of variables in the table. */
lh_status lh_env_count(int *count);
/* Entry i of the table, 0 <= i < count. */
lh_status lh_env_describe(int index, lh_env_var *out);
/* Checks every LH_* variable of the environment: unknown names (typos) and values that are
 * not allowed. Returns LH_ERR_ENV naming the first bad one. */
lh_status lh_env_validate(void);

/* Unit parsers shared by the environment, link settings and the programs' flags.
 *   bandwidth: "100mbit", "2.5gbit", "800kbit", "1e9bit" -> bytes per second
 *   duration:  "20ms", "150us", "1.5s", "0"             -> seconds
 *   size:      "4096", "64K", "64KiB", "16M", "1G"       -> bytes (binary multiples)
 * A missing or unknown unit, a negative or non-finite number, or trailing text gives
 * LH_ERR_PARSE with the reason in lh_last_error(). */
lh_status lh_parse_bandwidth(const char *text, double *bytes_per_second);
lh_status lh_parse_duration(const char *text, double *seconds);
lh_status lh_parse_size(const char *text, size_t *bytes);

#ifdef __cplusplus
}
#endif
#endif

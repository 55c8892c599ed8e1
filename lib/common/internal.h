/* Internal helpers shared by every module: error raising, logging, environment, clock.
 * Never installed. */
#ifndef LH_COMMON_INTERNAL_H
#define LH_COMMON_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <longhaul/status.h>
#include <longhaul/env.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define LH_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define LH_PRINTF(f, a)
#endif

/* Records the detail for lh_last_error() on this thread, logs it at DEBUG, returns status.
 * Use as: return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_irecv: peer %d out of range", peer); */
lh_status lh_error(lh_status status, const char *fmt, ...) LH_PRINTF(2, 3);
/* Prefixes the current detail with more context ("allreduce step 3: <old detail>"). */
lh_status lh_error_context(lh_status status, const char *fmt, ...) LH_PRINTF(2, 3);
/* Clears the detail at the start of a public call. */
void lh_error_clear(void);

/* Propagates a failure; the callee already set the detail. */
#define LH_CHECK(expr)                  \
  do {                                  \
    lh_status lh_check_s_ = (expr);     \
    if (lh_check_s_ != LH_SUCCESS)      \
      return lh_check_s_;               \
  } while (0)
#define LH_CHECK_GOTO(expr, st, label)  \
  do {                                  \
    (st) = (expr);                      \
    if ((st) != LH_SUCCESS)             \
      goto label;                       \
  } while (0)

/* Logging to stderr, filtered by LH_LOG. Each line names host, pid and rank:
 *   [host:pid:rank] LH WARN transport: ... */
typedef enum { LH_LOG_NONE = 0, LH_LOG_WARN = 1, LH_LOG_INFO = 2, LH_LOG_DEBUG = 3 } lh_log_level;
void lh_log(lh_log_level level, const char *module, const char *fmt, ...) LH_PRINTF(3, 4);
int lh_log_enabled(lh_log_level level);
/* The rank shown in log lines (world rank, set by the first communicator). */
void lh_log_set_rank(int rank);

/* Environment: values of the table in env.c. Unset or empty gives NULL. */
const char *lh_env_raw(const char *name);
/* Parsed accessors; a bad value gives LH_ERR_ENV naming the variable and the allowed values.
 * An unset variable gives the table's default. */
lh_status lh_env_double(const char *name, double *value);
lh_status lh_env_size(const char *name, size_t *value);
lh_status lh_env_int(const char *name, int *value);

/* Monotonic clock shared by all processes of a host (CLOCK_MONOTONIC). */
double lh_now(void);
/* Sleeps until the monotonic time `until` (returns at once when it has passed). */
void lh_sleep_until(double until);

/* Checked allocation helpers: NULL on failure with the detail set. */
void *lh_malloc(size_t bytes, const char *what);
/* The whole of a file, for a parser: LH_ERR_IO naming `who`, the path and the reason when it
 * cannot be opened or read. Stops after limit + 1 bytes (the parser refuses what is too long).
 * *text is malloc'd; free it. */
lh_status lh_read_text_file(const char *path, const char *who, size_t limit, char **text, size_t *length);
/* Creates or truncates path and writes it with write(object, stream); errors name `who`, the
 * path and the reason (a failed write keeps the writer's detail). */
/* Text from a file as a message quotes it: in single quotes, the first 40 bytes, unprintable
 * bytes as \xNN, "..." when cut; text must hold LH_QUOTE_CAPACITY bytes. Returns text. */
#define LH_QUOTE_CAPACITY 200
const char *lh_quote_text(const char *begin, size_t length, char *text, size_t capacity);
typedef lh_status (*lh_stream_writer)(const void *object, FILE *stream);
lh_status lh_write_text_file(const char *path, const char *who, lh_stream_writer write, const void *object);
void *lh_calloc(size_t count, size_t size, const char *what);

/* Device memory (CUDA builds; otherwise these say "host" and fail cleanly). */
int lh_is_device_pointer(const void *ptr);
lh_status lh_host_pinned_alloc(void **ptr, size_t bytes);
void lh_host_pinned_free(void *ptr);
lh_status lh_copy_to_host(void *dst, const void *src_device, size_t bytes);
lh_status lh_copy_to_device(void *dst_device, const void *src, size_t bytes);
lh_status lh_device_alloc(void **ptr, size_t bytes);
void lh_device_free(void *ptr);

#ifdef __cplusplus
}
#endif
#endif

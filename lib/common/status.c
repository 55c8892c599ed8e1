/* Result names and the per-thread error detail behind lh_last_error(). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/internal.h"

#define LH_ERROR_CAPACITY 1024
static _Thread_local char lh_error_text[LH_ERROR_CAPACITY];

const char *lh_status_string(lh_status status) {
  switch (status) {
  case LH_SUCCESS: return "success";
  case LH_ERR_INVALID_ARGUMENT: return "invalid argument";
  case LH_ERR_OUT_OF_MEMORY: return "out of memory";
  case LH_ERR_NOT_SUPPORTED: return "not supported";
  case LH_ERR_TIMEOUT: return "timed out";
  case LH_ERR_TRANSPORT: return "transport failure";
  case LH_ERR_IO: return "I/O error";
  case LH_ERR_PARSE: return "parse error";
  case LH_ERR_MISMATCH: return "ranks disagree";
  case LH_ERR_ENV: return "bad environment variable";
  case LH_ERR_CUDA: return "CUDA error";
  case LH_ERR_CORRUPT: return "corrupt data";
  case LH_ERR_INTERNAL: return "internal error";
  case LH_STATUS_COUNT: break;
  }
  return "unknown status";
}

const char *lh_last_error(void) { return lh_error_text; }

void lh_error_clear(void) { lh_error_text[0] = '\0'; }

lh_status lh_error(lh_status status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(lh_error_text, sizeof lh_error_text, fmt, ap);
  va_end(ap);
  lh_log(LH_LOG_DEBUG, "error", "%s: %s", lh_status_string(status), lh_error_text);
  return status;
}

lh_status lh_error_context(lh_status status, const char *fmt, ...) {
  char old[LH_ERROR_CAPACITY];
  char prefix[LH_ERROR_CAPACITY];
  va_list ap;
  memcpy(old, lh_error_text, sizeof old);
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  snprintf(lh_error_text, sizeof lh_error_text, "%.400s: %.600s", prefix, old);
  return status;
}

lh_status lh_version(int *major, int *minor, int *patch) {
  if (!major || !minor || !patch)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_version: major, minor and patch must not be NULL");
  *major = LH_VERSION_MAJOR;
  *minor = LH_VERSION_MINOR;
  *patch = LH_VERSION_PATCH;
  return LH_SUCCESS;
}

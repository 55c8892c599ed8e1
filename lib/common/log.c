/* LH_LOG-filtered logging to stderr. Lines name host, pid and rank so that the interleaved
 * output of many ranks can be sorted out:  [host:pid:rank] LH WARN module: text */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/internal.h"

static int lh_log_level_cached = -1;
static int lh_log_rank = -1;

static int lh_log_level_now(void) {
  if (lh_log_level_cached < 0) {
    const char *v = lh_env_raw("LH_LOG");
    int level = LH_LOG_WARN;
    if (v) {
      if (!strcasecmp(v, "NONE")) level = LH_LOG_NONE;
      else if (!strcasecmp(v, "WARN")) level = LH_LOG_WARN;
      else if (!strcasecmp(v, "INFO")) level = LH_LOG_INFO;
      else if (!strcasecmp(v, "DEBUG")) level = LH_LOG_DEBUG;
      /* lh_env_validate() reports a bad value; logging itself keeps the default. */
    }
    lh_log_level_cached = level;
  }
  return lh_log_level_cached;
}

int lh_log_enabled(lh_log_level level) { return level != LH_LOG_NONE && (int)level <= lh_log_level_now(); }

void lh_log_set_rank(int rank) { lh_log_rank = rank; }

void lh_log(lh_log_level level, const char *module, const char *fmt, ...) {
  static const char *names[] = {"NONE", "WARN", "INFO", "DEBUG"};
  if (!lh_log_enabled(level))
    return;
  char host[64] = "?";
  gethostname(host, sizeof host - 1);
  char body[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(body, sizeof body, fmt, ap);
  va_end(ap);
  char rank[16] = "-";
  if (lh_log_rank >= 0)
    snprintf(rank, sizeof rank, "%d", lh_log_rank);
  /* One fprintf per line keeps lines from different ranks whole on a shared stderr. */
  fprintf(stderr, "[%s:%d:%s] LH %s %s: %s\n", host, (int)getpid(), rank, names[level], module, body);
}

/* The one table of LH_* environment variables. Every variable the library reads is declared
 * here with its default, the values allowed and a line of help; lh-info prints the table. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/internal.h"

typedef enum { LH_ENV_WORD, LH_ENV_SECONDS, LH_ENV_BYTES, LH_ENV_COUNT, LH_ENV_BANDWIDTH,
               LH_ENV_DURATION, LH_ENV_PATH } lh_env_kind;

typedef struct {
  const char *name;
  lh_env_kind kind;
  const char *default_value;
  const char *allowed; /* for LH_ENV_WORD: '|'-separated words; else prose */
  const char *help;
} lh_env_entry;

static const lh_env_entry lh_env_table[] = {
  {"LH_LOG", LH_ENV_WORD, "WARN", "NONE|WARN|INFO|DEBUG",
   "what the library writes to stderr; lines name host, pid and rank"},
  {"LH_BACKEND", LH_ENV_WORD, "mpi", "mpi|nccl", "transport backend of new communicators"},
  {"LH_TIMEOUT_S", LH_ENV_SECONDS, "300", "a positive number of seconds",
   "a blocking wait that takes longer returns LH_ERR_TIMEOUT naming the peer"},
  {"LH_CHUNK_BYTES", LH_ENV_BYTES, "1MiB", "a size >= 4KiB, e.g. 262144, 256K, 4MiB",
   "messages larger than this travel as several chunks"},
  {"LH_MAX_INFLIGHT", LH_ENV_COUNT, "4", "an integer from 1 to 1024", "chunks in flight per peer"},
  {"LH_LINKS", LH_ENV_PATH, "", "a link file path", "simulate the links described in this file"},
  {"LH_SIM_BW", LH_ENV_BANDWIDTH, "", "a bandwidth, e.g. 100mbit, 1gbit, 500kbit",
   "simulate every link at this bandwidth (unset: unlimited)"},
  {"LH_SIM_LAT", LH_ENV_DURATION, "", "a duration, e.g. 20ms, 150us, 0.1s",
   "simulate every link with this one-way latency (unset: 0)"},
  {"LH_RING_CHUNK_BYTES", LH_ENV_BYTES, "1MiB", "a size >= 4KiB", "pipeline chunk of the ring all-reduce"},
  {"LH_BIND", LH_ENV_WORD, "none", "none|core|gpu|nic",
   "bind each rank near a core, its GPU or a NIC when its first communicator is created"},
};
#define LH_ENV_ENTRIES ((int)(sizeof lh_env_table / sizeof lh_env_table[0]))

static const lh_env_entry *lh_env_find(const char *name) {
  for (int i = 0; i < LH_ENV_ENTRIES; i++)
    if (!strcmp(lh_env_table[i].name, name))
      return &lh_env_table[i];
  return NULL;
}

const char *lh_env_raw(const char *name) {
  const char *v = getenv(name);
  return (v && *v) ? v : NULL;
}

lh_status lh_env_count(int *count) {
  if (!count)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_env_count: count must not be NULL");
  *count = LH_ENV_ENTRIES;
  return LH_SUCCESS;
}

lh_status lh_env_describe(int index, lh_env_var *out) {
  if (!out)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_env_describe: out must not be NULL");
  if (index < 0 || index >= LH_ENV_ENTRIES)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_env_describe: index %d is outside 0..%d", index,
                    LH_ENV_ENTRIES - 1);
  const lh_env_entry *e = &lh_env_table[index];
  out->name = e->name;
  out->default_value = e->default_value;
  out->allowed = e->allowed;
  out->help = e->help;
  out->value = lh_env_raw(e->name);
  return LH_SUCCESS;
}

static int lh_word_allowed(const char *allowed, const char *value) {
  size_t n = strlen(value);
  for (const char *p = allowed; *p;) {
    const char *bar = strchr(p, '|');
    size_t len = bar ? (size_t)(bar - p) : strlen(p);
    if (len == n && !strncasecmp(p, value, n))
      return 1;
    p += len + (bar ? 1 : 0);
  }
  return 0;
}

/* Checks one entry's current value; on failure the detail names the variable. */
static lh_status lh_env_check(const lh_env_entry *e, const char *value) {
  lh_status st = LH_SUCCESS;
  double d;
  size_t z;
  char *end;
  switch (e->kind) {
  case LH_ENV_WORD:
    if (!lh_word_allowed(e->allowed, value))
      return lh_error(LH_ERR_ENV, "%s='%s' is not allowed: expected one of %s", e->name, value, e->allowed);
    return LH_SUCCESS;
  case LH_ENV_SECONDS:
    d = strtod(value, &end);
    if (end == value || *end || !(d > 0) || d > 1e9)
      return lh_error(LH_ERR_ENV, "%s='%s' is not allowed: expected %s", e->name, value, e->allowed);
    return LH_SUCCESS;
  case LH_ENV_COUNT: {
    long v = strtol(value, &end, 10);
    if (end == value || *end || v < 1 || v > 1024)
      return lh_error(LH_ERR_ENV, "%s='%s' is not allowed: expected %s", e->name, value, e->allowed);
    return LH_SUCCESS;
  }
  case LH_ENV_BYTES:
    st = lh_parse_size(value, &z);
    if (st == LH_SUCCESS && z < 4096)
      st = LH_ERR_PARSE;
    break;
  case LH_ENV_BANDWIDTH:
    st = lh_parse_bandwidth(value, &d);
    if (st == LH_SUCCESS && !(d > 0))
      st = LH_ERR_PARSE;
    break;
  case LH_ENV_DURATION:
    st = lh_parse_duration(value, &d);
    break;
  case LH_ENV_PATH:
    return LH_SUCCESS;
  }
  if (st != LH_SUCCESS)
    return lh_error(LH_ERR_ENV, "%s='%s' is not allowed: expected %s", e->name, value, e->allowed);
  return LH_SUCCESS;
}

extern char **environ;

lh_status lh_env_validate(void) {
  for (char **ep = environ; ep && *ep; ep++) {
    if (strncmp(*ep, "LH_", 3) != 0)
      continue;
    const char *eq = strchr(*ep, '=');
    if (!eq)
      continue;
    char name[128];
    size_t len = (size_t)(eq - *ep);
    if (len >= sizeof name)
      len = sizeof name - 1;
    memcpy(name, *ep, len);
    name[len] = '\0';
    const lh_env_entry *e = lh_env_find(name);
    /* The namespace testbed's own settings (examples/wan/testbed.sh) reach its ranks too:
     * `ip netns exec` passes the whole environment. */
    if (!e && strncmp(name, "LH_TESTBED_", 11) == 0)
      continue;
    if (!e) {
      /* Programs and scripts may use LH_ names of their own; a typo is the likelier reason. */
      lh_log(LH_LOG_WARN, "env", "%s is not a Longhaul variable (lh-info lists them); ignored", name);
      continue;
    }
    if (eq[1])
      LH_CHECK(lh_env_check(e, eq + 1));
  }
  return LH_SUCCESS;
}

static lh_status lh_env_value(const char *name, const lh_env_entry **entry, const char **value) {
  const lh_env_entry *e = lh_env_find(name);
  if (!e)
    return lh_error(LH_ERR_INTERNAL, "%s is not declared in the environment table", name);
  const char *v = lh_env_raw(name);
  if (v)
    LH_CHECK(lh_env_check(e, v));
  else
    v = e->default_value;
  *entry = e;
  *value = v;
  return LH_SUCCESS;
}

lh_status lh_env_double(const char *name, double *value) {
  const lh_env_entry *e = NULL; /* set by lh_env_value on success; initialised for gcc's -O3 flow analysis */
  const char *v = "";
  LH_CHECK(lh_env_value(name, &e, &v));
  if (!*v) {
    *value = 0;
    return LH_SUCCESS;
  }
  switch (e->kind) {
  case LH_ENV_BANDWIDTH: return lh_parse_bandwidth(v, value);
  case LH_ENV_DURATION: return lh_parse_duration(v, value);
  default: *value = strtod(v, NULL); return LH_SUCCESS;
  }
}

lh_status lh_env_size(const char *name, size_t *value) {
  const lh_env_entry *e = NULL; /* set by lh_env_value on success; initialised for gcc's -O3 flow analysis */
  const char *v = "";
  LH_CHECK(lh_env_value(name, &e, &v));
  return lh_parse_size(v, value);
}

lh_status lh_env_int(const char *name, int *value) {
  const lh_env_entry *e = NULL; /* set by lh_env_value on success; initialised for gcc's -O3 flow analysis */
  const char *v = "";
  LH_CHECK(lh_env_value(name, &e, &v));
  *value = (int)strtol(v, NULL, 10);
  return LH_SUCCESS;
}

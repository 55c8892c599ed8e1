/* lh-info: what this Longhaul is and what it sees here. Prints the version, the build (backends,
 * kernels, hwloc), the host's topology and the LH_* environment, and checks that environment.
 * It never starts MPI, so it runs on a login node as well as inside a job.
 *
 * Exit status: 0 fine, 1 an LH_* variable has a bad value, 2 a bad command line. A binding that
 * cannot be made (--bind gpu on a host without GPU) is a warning, not a failure. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <longhaul/longhaul.h>

static const char lh_usage[] =
    "usage: lh-info [--env | --topo] [--bind POLICY [--local-rank N] [--local-size N]] [--help]\n"
    "\n"
    "Prints the Longhaul version and build, the topology of this host and the LH_* environment\n"
    "variables (value in effect, default, allowed values), then checks the environment.\n"
    "\n"
    "  --help          print this help and exit\n"
    "  --env           print only the environment table (and check it)\n"
    "  --topo          print only the topology\n"
    "  --bind POLICY   also try binding this process: none, core, gpu or nic, as LH_BIND would;\n"
    "                  reports where, or warns why not (still exit status 0)\n"
    "  --local-rank N  the local rank to bind for, 0 <= N < local size (default 0)\n"
    "  --local-size N  the number of ranks on this host (default 1)\n"
    "\n"
    "Exit status: 0 fine, 1 an LH_* variable has a value that is not allowed, 2 bad usage.\n";

typedef struct {
  int only_env, only_topo;
  const char *bind;         /* the --bind word, NULL without --bind */
  lh_bind_policy policy;
  int local_rank, local_size;
  int rank_given;           /* --local-rank or --local-size given */
} lh_options;

/* One sentence on stderr and the usage exit status. */
static int lh_usage_error(const char *fmt, ...) {
  va_list ap;
  fputs("lh-info: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputs("; see lh-info --help.\n", stderr);
  return 2;
}

static int lh_parse_count(const char *flag, const char *text, int min, int *out) {
  char *end;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (end == text || *end || errno || v < min || v > INT_MAX)
    return lh_usage_error("%s expects an integer >= %d, not '%s'", flag, min, text);
  *out = (int)v;
  return 0;
}

/* Returns 0, or the exit status for a bad command line (after saying what is wrong). */
static int lh_parse_args(int argc, char **argv, lh_options *o) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int takes_value = !strcmp(a, "--bind") || !strcmp(a, "--local-rank") || !strcmp(a, "--local-size");
    if (takes_value && i + 1 >= argc)
      return lh_usage_error("%s needs a value", a);
    int st = 0;
    if (!strcmp(a, "--help")) {
      fputs(lh_usage, stdout);
      exit(0);
    } else if (!strcmp(a, "--env")) {
      o->only_env = 1;
    } else if (!strcmp(a, "--topo")) {
      o->only_topo = 1;
    } else if (!strcmp(a, "--bind")) {
      o->bind = argv[++i];
      if (lh_bind_policy_parse(o->bind, &o->policy) != LH_SUCCESS)
        return lh_usage_error("--bind '%s' is not a policy: use none, core, gpu or nic", argv[i]);
    } else if (!strcmp(a, "--local-rank")) {
      o->rank_given = 1;
      st = lh_parse_count(a, argv[++i], 0, &o->local_rank);
    } else if (!strcmp(a, "--local-size")) {
      o->rank_given = 1;
      st = lh_parse_count(a, argv[++i], 1, &o->local_size);
    } else {
      return lh_usage_error("unknown %s '%s'", a[0] == '-' ? "flag" : "argument", a);
    }
    if (st)
      return st;
  }
  if (o->only_env && o->only_topo)
    return lh_usage_error("--env and --topo each select one part: give at most one of them");
  if (o->only_env && o->bind)
    return lh_usage_error("--bind goes with the topology, not with --env");
  if (o->rank_given && !o->bind)
    return lh_usage_error("--local-rank and --local-size only matter with --bind");
  if (o->local_rank >= o->local_size)
    return lh_usage_error("--local-rank %d must be less than --local-size %d", o->local_rank, o->local_size);
  return 0;
}

static const char *lh_or(const char *s, const char *fallback) { return s && *s ? s : fallback; }

static void lh_print_build(void) {
  int major = 0, minor = 0, patch = 0;
  lh_version(&major, &minor, &patch);
  printf("Longhaul %d.%d.%d", major, minor, patch);
  /* A shared library swapped under the program shows here. */
  if (LH_VERSION_CODE != major * 10000 + minor * 100 + patch)
    printf(" (lh-info was built against %s)", LH_VERSION_STRING);
  printf("\n");
  lh_build_features b = LH_BUILD_FEATURES_INIT;
  if (lh_build_info(&b) != LH_SUCCESS) {
    printf("build: unknown (%s)\n", lh_last_error());
    return;
  }
  printf("build:\n");
  printf("  backends    %s\n", lh_or(b.backends, "none"));
  printf("  CUDA        %s\n", b.has_cuda ? "yes" : "no");
  printf("  kernels     %s\n", lh_or(b.kernels, "none"));
  printf("  CUDA archs  %s\n", lh_or(b.cuda_archs, "none"));
  printf("  hwloc       %s\n", b.has_hwloc ? "yes" : "no");
  printf("  zstd        %s\n", b.has_zstd ? "yes" : "no");
  printf("  compiler    %s\n", lh_or(b.compiler, "unknown"));
}

/* Prints text with every line indented. */
static void lh_print_indented(const char *text) {
  for (const char *p = text; *p;) {
    const char *nl = strchr(p, '\n');
    int len = nl ? (int)(nl - p) : (int)strlen(p);
    printf("  %.*s\n", len, p);
    p += len + (nl ? 1 : 0);
  }
}

/* why_not: the reason the topology is not available, or NULL when topo is. */
static void lh_print_topology(const lh_topology *topo, const char *why_not) {
  /* Ask for the size first: a large host (many GPUs and NICs) has a long description. */
  size_t needed = 0;
  char *text = NULL;
  if (topo) {
    if (lh_topo_describe(topo, NULL, 0, &needed) != LH_SUCCESS)
      why_not = lh_last_error();
    else if (!(text = malloc(needed)))
      why_not = "out of memory";
    else if (lh_topo_describe(topo, text, needed, NULL) != LH_SUCCESS)
      why_not = lh_last_error();
    else
      why_not = NULL;
  }
  if (why_not) {
    printf("topology: not available (%s)\n", why_not);
  } else {
    printf("topology:\n");
    lh_print_indented(text);
  }
  free(text);
}

/* why_not: the reason the topology is not available, or NULL when topo is. */
static void lh_print_binding(const lh_topology *topo, const lh_options *o, const char *why_not) {
  char where[256] = "not bound";
  if (topo && lh_topo_bind(topo, o->policy, o->local_rank, o->local_size, where, sizeof where) != LH_SUCCESS)
    why_not = lh_last_error();
  printf("binding (%s, local rank %d of %d): %s\n", o->bind, o->local_rank, o->local_size, where);
  if (why_not)
    fprintf(stderr, "lh-info: warning: cannot bind: %s\n", why_not);
}

enum { LH_COLUMNS = 5 };

static void lh_print_row(const char *const cells[LH_COLUMNS], const int width[LH_COLUMNS]) {
  printf(" ");
  for (int c = 0; c + 1 < LH_COLUMNS; c++)
    printf(" %-*s ", width[c], cells[c]);
  printf(" %s\n", cells[LH_COLUMNS - 1]); /* the help comes last, unpadded */
}

static void lh_env_cells(const lh_env_var *v, const char *cells[LH_COLUMNS]) {
  cells[0] = v->name;
  cells[1] = lh_or(v->value, "(default)");
  cells[2] = lh_or(v->default_value, "(unset)");
  cells[3] = lh_or(v->allowed, "");
  cells[4] = lh_or(v->help, "");
}

/* The LH_* table in aligned columns: widths first, then the rows. */
static void lh_print_env(void) {
  static const char *const heads[LH_COLUMNS] = {"NAME", "VALUE", "DEFAULT", "ALLOWED", "HELP"};
  int count = 0;
  if (lh_env_count(&count) != LH_SUCCESS) {
    printf("environment: not available (%s)\n", lh_last_error());
    return;
  }
  int width[LH_COLUMNS];
  for (int c = 0; c < LH_COLUMNS; c++)
    width[c] = (int)strlen(heads[c]);
  for (int i = 0; i < count; i++) {
    lh_env_var v;
    const char *cells[LH_COLUMNS];
    if (lh_env_describe(i, &v) != LH_SUCCESS)
      continue;
    lh_env_cells(&v, cells);
    for (int c = 0; c < LH_COLUMNS; c++)
      if ((int)strlen(cells[c]) > width[c])
        width[c] = (int)strlen(cells[c]);
  }
  printf("environment:\n");
  lh_print_row(heads, width);
  for (int i = 0; i < count; i++) {
    lh_env_var v;
    const char *cells[LH_COLUMNS];
    if (lh_env_describe(i, &v) != LH_SUCCESS)
      continue;
    lh_env_cells(&v, cells);
    lh_print_row(cells, width);
  }
}

int main(int argc, char **argv) {
  lh_options o = {0};
  o.local_size = 1;
  int st = lh_parse_args(argc, argv, &o);
  if (st)
    return st;

  if (!o.only_env && !o.only_topo)
    lh_print_build();
  if (!o.only_env) {
    lh_topology *topo = NULL;
    char why_not[1024] = ""; /* lh_last_error() would not survive the calls in between */
    if (lh_topo_load(&topo) != LH_SUCCESS)
      snprintf(why_not, sizeof why_not, "%s", lh_last_error());
    lh_print_topology(topo, topo ? NULL : why_not);
    if (o.bind)
      lh_print_binding(topo, &o, topo ? NULL : why_not);
    lh_topo_free(topo);
  }
  if (o.only_topo)
    return 0;
  lh_print_env();
  if (lh_env_validate() != LH_SUCCESS) {
    fprintf(stderr, "lh-info: warning: %s\n", lh_last_error());
    return 1;
  }
  return 0;
}

/* allreduce_perf: Longhaul's all_reduce_perf, in the nccl-tests layout plus our wire columns.
 *
 *   mpirun -np 4 ./bench/allreduce_perf -b 1K -e 1M -f 4 -n 3 -w 1
 *   mpirun -np 4 -x LH_SIM_BW=100mbit -x LH_SIM_LAT=20ms ./bench/allreduce_perf -b 16M -e 64M -f 2
 *
 * The table follows transport.md ("Benchmark table format") so that nccl-tests parsers read it;
 * after the standard columns come wireB, ratio, relerr and model(us). Only the public API is
 * used, plus MPI for the wall clock and for reducing timings and counts over ranks: those
 * reductions must not travel over the (possibly simulated) links being measured. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>
#include <longhaul/longhaul.h>

enum { EXIT_USAGE = 2 }; /* bad flags, or a setting the library refuses (mpi on simulated links) */

#define PROGRESS_AFTER_S 2.0                 /* slower iterations are reported on stderr */
#define DEFAULT_RING_CHUNK ((size_t)1 << 20) /* lh_allreduce's chunk when nothing sets one */
#define MIN_RING_CHUNK ((size_t)4096)        /* the rule LH_RING_CHUNK_BYTES follows */
#define FILL_SEED 0x4c6f6e676861756cULL      /* "Longhaul" */

/* ---- options ------------------------------------------------------------------------------ */

typedef struct {
  size_t min_bytes, max_bytes; /* multiples of 4 */
  int step_factor;             /* multiplicative step; 0 when -i is used */
  size_t step_bytes;           /* additive step; 0 when -f is used */
  int iters, warmup, check;
  lh_reduce_op op;
  lh_allreduce_algo algo;
  size_t chunk_bytes; /* ring pipeline chunk; 0: not given, the library decides */
} bench_options;

typedef enum {
  OPT_MIN_BYTES, OPT_MAX_BYTES, OPT_STEP_FACTOR, OPT_STEP_BYTES, OPT_ITERS, OPT_WARMUP,
  OPT_CHECK, OPT_OP, OPT_TYPE, OPT_ALGO, OPT_CHUNK, OPT_HELP
} opt_id;

typedef struct {
  opt_id id;
  char short_name; /* 0: long form only */
  const char *long_name;
  int takes_value;
} opt_spec;

/* nccl-tests' short and long names, so that its command lines work unchanged. */
static const opt_spec opt_specs[] = {
  {OPT_MIN_BYTES, 'b', "minbytes", 1},     {OPT_MAX_BYTES, 'e', "maxbytes", 1},
  {OPT_STEP_FACTOR, 'f', "stepfactor", 1}, {OPT_STEP_BYTES, 'i', "stepbytes", 1},
  {OPT_ITERS, 'n', "iters", 1},            {OPT_WARMUP, 'w', "warmup_iters", 1},
  {OPT_CHECK, 'c', "check", 1},            {OPT_OP, 'o', "op", 1},
  {OPT_TYPE, 'd', "datatype", 1},          {OPT_ALGO, 0, "algo", 1},
  {OPT_CHUNK, 0, "chunk", 1},              {OPT_HELP, 'h', "help", 0},
};
enum { OPT_COUNT = sizeof opt_specs / sizeof opt_specs[0] };

static const char usage_text[] =
  "Usage: mpirun -np N allreduce_perf [flags]\n"
  "  -b, --minbytes SIZE      smallest message (default 1M); sizes take K, M, G (binary)\n"
  "  -e, --maxbytes SIZE      largest message (default 16M); rounded down to whole floats\n"
  "  -f, --stepfactor N       multiply the size by N (integer >= 2) each step (default 2)\n"
  "  -i, --stepbytes SIZE     add SIZE each step instead of multiplying\n"
  "  -n, --iters N            timed iterations per size (default 5)\n"
  "  -w, --warmup_iters N     untimed iterations per size first (default 1)\n"
  "  -c, --check 0|1          check every iteration's result exactly (default 1)\n"
  "  -o, --op sum|mean        reduction (avg is accepted for mean; default sum)\n"
  "  -d, --datatype float     element type; only float is supported\n"
  "      --algo ring|mpi|auto the all-reduce algorithm (default auto = ring)\n"
  "      --chunk SIZE         ring pipeline chunk, >= 4K (default LH_RING_CHUNK_BYTES, else 1M)\n"
  "  -h, --help               this text\n"
  "Simulated links come from the environment: LH_SIM_BW=100mbit LH_SIM_LAT=20ms, or LH_LINKS=FILE\n"
  "(pass them with mpirun -x). Exit status: 0 ok, 1 wrong results or a library error, 2 bad usage.\n";

typedef enum { PARSE_RUN, PARSE_HELP, PARSE_ERROR } parse_result;

/* Writes one sentence into err; returns -1 for the caller to pass on. */
static int fail(char *err, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, cap, fmt, ap);
  va_end(ap);
  return -1;
}

/* Messages are whole floats: round down to a multiple of 4 bytes, then insist on a minimum. */
static int parse_bytes(const char *flag, const char *value, size_t minimum, size_t *out, char *err, size_t cap) {
  size_t bytes = 0;
  if (lh_parse_size(value, &bytes) != LH_SUCCESS)
    return fail(err, cap, "%s: %s", flag, lh_last_error());
  bytes -= bytes % sizeof(float);
  if (bytes < minimum)
    return fail(err, cap, "%s %s: must be at least %zu bytes", flag, value, minimum);
  *out = bytes;
  return 0;
}

static int parse_int(const char *flag, const char *value, int lo, int hi, int *out, char *err, size_t cap) {
  char *end;
  errno = 0;
  long v = strtol(value, &end, 10);
  if (end == value || *end || errno || v < lo || v > hi)
    return fail(err, cap, "%s '%s': expected a whole number from %d to %d", flag, value, lo, hi);
  *out = (int)v;
  return 0;
}

static int parse_op(const char *flag, const char *value, lh_reduce_op *op, char *err, size_t cap) {
  if (!strcmp(value, "sum"))
    *op = LH_OP_SUM;
  else if (!strcmp(value, "mean") || !strcmp(value, "avg")) /* avg: nccl-tests' name */
    *op = LH_OP_MEAN;
  else
    return fail(err, cap, "%s '%s': the reduction must be sum or mean", flag, value);
  return 0;
}

static int apply_option(bench_options *o, opt_id id, const char *flag, const char *value, char *err, size_t cap) {
  switch (id) {
  case OPT_MIN_BYTES: return parse_bytes(flag, value, sizeof(float), &o->min_bytes, err, cap);
  case OPT_MAX_BYTES: return parse_bytes(flag, value, sizeof(float), &o->max_bytes, err, cap);
  case OPT_STEP_FACTOR: return parse_int(flag, value, 2, 1 << 20, &o->step_factor, err, cap);
  case OPT_STEP_BYTES: return parse_bytes(flag, value, sizeof(float), &o->step_bytes, err, cap);
  case OPT_ITERS: return parse_int(flag, value, 1, 1 << 30, &o->iters, err, cap);
  case OPT_WARMUP: return parse_int(flag, value, 0, 1 << 30, &o->warmup, err, cap);
  case OPT_CHECK: return parse_int(flag, value, 0, 1, &o->check, err, cap);
  case OPT_OP: return parse_op(flag, value, &o->op, err, cap);
  case OPT_TYPE:
    if (strcmp(value, "float"))
      return fail(err, cap, "%s '%s': only float is supported (lh_allreduce reduces float32)", flag, value);
    return 0;
  case OPT_ALGO:
    if (lh_allreduce_algo_parse(value, &o->algo) != LH_SUCCESS)
      return fail(err, cap, "%s: %s", flag, lh_last_error());
    return 0;
  case OPT_CHUNK: return parse_bytes(flag, value, MIN_RING_CHUNK, &o->chunk_bytes, err, cap);
  case OPT_HELP: return 0;
  }
  return fail(err, cap, "internal error: option %d has no handler", (int)id);
}

/* Finds the spec of argv[*i] and its value ("-b 1K", "-b1K", "--minbytes 1K", "--minbytes=1K"),
 * advancing *i past a separate value. */
static const opt_spec *find_option(int argc, char **argv, int *i, const char **value, char *err, size_t cap) {
  const char *arg = argv[*i];
  const char *inline_value = NULL;
  const opt_spec *spec = NULL;
  if (arg[0] == '-' && arg[1] == '-' && arg[2]) {
    const char *name = arg + 2;
    const char *eq = strchr(name, '=');
    size_t len = eq ? (size_t)(eq - name) : strlen(name);
    for (int k = 0; k < OPT_COUNT && !spec; k++)
      if (strlen(opt_specs[k].long_name) == len && !strncmp(opt_specs[k].long_name, name, len))
        spec = &opt_specs[k];
    inline_value = eq ? eq + 1 : NULL;
  } else if (arg[0] == '-' && arg[1]) {
    for (int k = 0; k < OPT_COUNT && !spec; k++)
      if (opt_specs[k].short_name == arg[1])
        spec = &opt_specs[k];
    inline_value = arg[2] ? arg + 2 : NULL;
  } else {
    fail(err, cap, "unexpected argument '%s' (flags start with - or --)", arg);
    return NULL;
  }
  if (!spec) {
    fail(err, cap, "unknown flag '%s'", arg);
    return NULL;
  }
  if (!spec->takes_value) {
    if (inline_value) {
      fail(err, cap, "flag '%s' takes no value", arg);
      return NULL;
    }
    return spec;
  }
  if (!inline_value) {
    if (*i + 1 >= argc) {
      fail(err, cap, "flag '%s' needs a value", arg);
      return NULL;
    }
    inline_value = argv[++*i];
  }
  *value = inline_value;
  return spec;
}

/* Every rank parses the same argv, so every rank reaches the same verdict without talking. */
static parse_result parse_args(int argc, char **argv, bench_options *o, char *err, size_t cap) {
  *o = (bench_options){.min_bytes = (size_t)1 << 20, .max_bytes = (size_t)16 << 20, .iters = 5, .warmup = 1,
                       .check = 1, .op = LH_OP_SUM, .algo = LH_ALLREDUCE_AUTO};
  int saw_factor = 0, saw_step = 0, help = 0;
  for (int i = 1; i < argc; i++) {
    const char *flag = argv[i], *value = NULL;
    const opt_spec *spec = find_option(argc, argv, &i, &value, err, cap);
    if (!spec || apply_option(o, spec->id, flag, value, err, cap) != 0)
      return PARSE_ERROR;
    saw_factor |= spec->id == OPT_STEP_FACTOR;
    saw_step |= spec->id == OPT_STEP_BYTES;
    help |= spec->id == OPT_HELP;
  }
  if (help)
    return PARSE_HELP;
  if (saw_factor && saw_step) {
    fail(err, cap, "give -f (multiplicative step) or -i (additive step), not both");
    return PARSE_ERROR;
  }
  if (!saw_step && !saw_factor)
    o->step_factor = 2;
  if (o->max_bytes < o->min_bytes) {
    fail(err, cap, "-e %zu is smaller than -b %zu", o->max_bytes, o->min_bytes);
    return PARSE_ERROR;
  }
  return PARSE_RUN;
}

/* The size after `bytes`, or 0 past the end (also when the step would overflow). */
static size_t next_size(const bench_options *o, size_t bytes) {
  size_t next;
  if (o->step_factor > 0)
    next = bytes > SIZE_MAX / (size_t)o->step_factor ? 0 : bytes * (size_t)o->step_factor;
  else
    next = bytes > SIZE_MAX - o->step_bytes ? 0 : bytes + o->step_bytes;
  return next > o->max_bytes ? 0 : next;
}

/* ---- errors ------------------------------------------------------------------------------- */

static void print_lib_error(const char *prefix, const char *what, lh_status st) {
  const char *detail = lh_last_error();
  fprintf(stderr, "allreduce_perf: %s%s: %s%s%s\n", prefix, what, lh_status_string(st), *detail ? ": " : "",
          detail);
}

/* Setup steps usually fail alike on every rank (a bad LH_* setting, a refused algorithm), but
 * need not: every rank learns whether any failed, the lowest failing rank says why (once, not
 * once per rank), and all leave together with the highest exit code, so none is left hanging. */
static int setup_verdict(int rank, const char *what, lh_status st, int code_on_failure) {
  int mine = st == LH_SUCCESS ? INT_MAX : rank, first = INT_MAX;
  MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (first == INT_MAX)
    return 0;
  if (first == rank)
    print_lib_error("", what, st);
  int code = st == LH_SUCCESS ? 0 : code_on_failure, worst = 0;
  MPI_Allreduce(&code, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return worst;
}

/* During the measurement a failed rank may leave the others blocked in a collective it has
 * abandoned: report and abort the job rather than let them wait out LH_TIMEOUT_S. */
static void check_lib(int rank, const char *what, lh_status st) {
  if (st == LH_SUCCESS)
    return;
  char prefix[32];
  snprintf(prefix, sizeof prefix, "rank %d: ", rank);
  print_lib_error(prefix, what, st);
  MPI_Abort(MPI_COMM_WORLD, 1);
  exit(1);
}

/* ---- the benchmark state ------------------------------------------------------------------ */

typedef struct {
  const bench_options *opt;
  lh_comm comm;
  int rank, nranks;
  lh_allreduce_config config; /* what every lh_allreduce gets */
  int simulated;
  char links_text[160];
  lh_links *links;          /* the simulated link model; NULL on real links */
  size_t ring_chunk;        /* the chunk the ring will use, for the cost model and the header */
  const char *chunk_source; /* where ring_chunk comes from */
  int value_bits;           /* significant bits of every input value */
  uint64_t *keys;           /* fill key of every rank, so that each can compute all inputs */
  float *send, *recv;       /* out of place: the input survives every iteration unchanged */
} bench;

typedef struct {
  unsigned long long wrong; /* this rank, over checked iterations */
  double relerr;            /* this rank, worst checked iteration */
} check_totals;

typedef struct {
  double time_s;            /* mean over timed iterations of the slowest rank */
  unsigned long long wrong; /* over ranks and checked iterations */
  unsigned long long wire;  /* most bytes one rank sent in one all-reduce */
  double relerr;            /* rank 0's */
} size_result;

/* ---- inputs and the exact answer ---------------------------------------------------------- */

static uint64_t mix64(uint64_t x) { /* the splitmix64 finalizer */
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/* A value in [-1, 1) with `bits` significant bits. Sums of up to 2^(24 - bits) of them are
 * exact in float in any order, so the ring's result can be compared bit for bit. */
static float input_value(uint64_t key, size_t i, int bits) {
  int64_t k = (int64_t)(mix64(key + i * 0x9e3779b97f4a7c15ULL) >> (64 - bits)) - ((int64_t)1 << (bits - 1));
  return (float)k / (float)((int64_t)1 << (bits - 1));
}

/* 20 bits up to 16 ranks, one fewer per doubling beyond, to keep the float sums exact. */
static int value_bits_for(int nranks) {
  int log2n = 0;
  while ((1 << log2n) < nranks)
    log2n++;
  int bits = log2n > 4 ? 24 - log2n : 20;
  return bits < 2 ? 2 : bits;
}

static void fill_input(const bench *b, size_t count) {
  uint64_t key = b->keys[b->rank];
  for (size_t i = 0; i < count; i++)
    b->send[i] = input_value(key, i, b->value_bits);
}

/* The exact result of element i: the sum is exact in double (and float), the mean is rounded
 * once, as a correctly rounded float division of the exact sum gives. */
static double exact_value(const bench *b, size_t i) {
  double sum = 0;
  for (int r = 0; r < b->nranks; r++)
    sum += input_value(b->keys[r], i, b->value_bits);
  return b->opt->op == LH_OP_MEAN ? sum / b->nranks : sum;
}

/* NaN in every byte pattern 0xff: an all-reduce that skipped an element cannot pass the check
 * by leaving the previous iteration's correct value in place. */
static void poison_output(const bench *b, size_t count) { memset(b->recv, 0xff, count * sizeof(float)); }

static void check_output(const bench *b, size_t count, check_totals *t) {
  unsigned long long wrong = 0;
  double err2 = 0, ref2 = 0;
  for (size_t i = 0; i < count; i++) {
    double exact = exact_value(b, i);
    float out = b->recv[i];
    wrong += !(out == (float)exact); /* NaN counts as wrong */
    double d = (double)out - exact;
    err2 += d * d;
    ref2 += exact * exact;
  }
  double rel = ref2 > 0 ? sqrt(err2 / ref2) : (err2 > 0 ? INFINITY : 0);
  t->wrong += wrong;
  if (!(rel <= t->relerr)) /* keeps a NaN */
    t->relerr = rel;
}

/* ---- one iteration ------------------------------------------------------------------------ */

/* Seconds the slowest rank spent in one lh_allreduce. lh_barrier orders the iteration on the
 * links being measured, but on simulated links its ranks leave up to log2(n) latencies apart
 * (a rank still checking the previous result enters late and leaves first), and that gap would
 * count in the early ranks' time: an MPI barrier on the control channel then aligns the start
 * to microseconds. */
static double timed_allreduce(const bench *b, size_t count) {
  check_lib(b->rank, "lh_barrier", lh_barrier(b->comm));
  MPI_Barrier(MPI_COMM_WORLD);
  double start = MPI_Wtime();
  lh_status st = lh_allreduce(b->comm, b->send, b->recv, count, &b->config);
  double mine = MPI_Wtime() - start, slowest = 0;
  check_lib(b->rank, "lh_allreduce", st);
  MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return slowest;
}

static void human_size(size_t bytes, char *out, size_t cap) {
  static const char *const units[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (u < 3 && bytes >= 1024 && bytes % 1024 == 0) {
    bytes /= 1024;
    u++;
  }
  snprintf(out, cap, "%zu %s", bytes, units[u]);
}

static double run_iteration(const bench *b, size_t count, const char *phase, int index, int total,
                            check_totals *t) {
  if (b->opt->check)
    poison_output(b, count);
  double seconds = timed_allreduce(b, count);
  if (b->opt->check)
    check_output(b, count, t);
  if (b->rank == 0 && seconds > PROGRESS_AFTER_S) { /* stdout stays a clean table */
    char size[32];
    human_size(count * sizeof(float), size, sizeof size);
    fprintf(stderr, "# size %s: %s %d/%d took %.1f s\n", size, phase, index + 1, total, seconds);
  }
  return seconds;
}

/* Most payload bytes one rank put on its links since the last lh_comm_reset_stats. */
static unsigned long long wire_bytes(const bench *b) {
  unsigned long long mine = 0, most = 0;
  for (int peer = 0; peer < b->nranks; peer++) {
    lh_link_stats s = LH_LINK_STATS_INIT;
    check_lib(b->rank, "lh_comm_link_stats", lh_comm_link_stats(b->comm, peer, &s));
    mine += s.bytes_sent;
  }
  MPI_Allreduce(&mine, &most, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
  return most;
}

static void measure_size(const bench *b, size_t bytes, size_result *r) {
  const bench_options *o = b->opt;
  size_t count = bytes / sizeof(float);
  check_totals t = {0, 0.0};
  fill_input(b, count);
  for (int it = 0; it < o->warmup; it++)
    run_iteration(b, count, "warmup", it, o->warmup, &t);
  double total = 0;
  for (int it = 0; it < o->iters; it++) {
    if (it == 0)
      check_lib(b->rank, "lh_comm_reset_stats", lh_comm_reset_stats(b->comm));
    total += run_iteration(b, count, "iteration", it, o->iters, &t);
    if (it == 0) /* the barrier's messages carry no payload, so this is the all-reduce alone */
      r->wire = wire_bytes(b);
  }
  r->time_s = total / o->iters;
  MPI_Allreduce(&t.wrong, &r->wrong, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
  r->relerr = t.relerr;
}

/* ---- the table ---------------------------------------------------------------------------- */

typedef struct {
  const char *name, *unit;
  int width;
} column;

/* nccl-tests' columns (time wider: seconds-long iterations on slow links), then ours. */
static const column columns[] = {
  {"size", "(B)", 12},     {"count", "(elements)", 12}, {"type", "", 8},          {"redop", "", 6},
  {"root", "", 6},         {"time", "(us)", 10},        {"algbw", "(GB/s)", 8},   {"busbw", "(GB/s)", 8},
  {"#wrong", "", 6},       {"wireB", "(B)", 12},        {"ratio", "", 6},         {"relerr", "", 9},
  {"model(us)", "", 10},
};
enum { NCOLUMNS = sizeof columns / sizeof columns[0], CELL = 32 };

/* Header rows start with '#' in the first column's space, as nccl-tests does; empty cells at
 * the end of a header row leave no trailing blanks. */
static void print_cells(char cells[][CELL], int header) {
  char line[NCOLUMNS * (CELL + 2) + 2];
  size_t used = 0;
  for (int c = 0; c < NCOLUMNS; c++) {
    int width = columns[c].width - (c == 0 && header);
    used += (size_t)snprintf(line + used, sizeof line - used, "%s%*s", c ? "  " : header ? "#" : "", width, cells[c]);
  }
  while (used > 0 && line[used - 1] == ' ')
    line[--used] = '\0';
  puts(line);
}

static void print_column_titles(void) {
  char names[NCOLUMNS][CELL], units[NCOLUMNS][CELL];
  for (int c = 0; c < NCOLUMNS; c++) {
    snprintf(names[c], CELL, "%s", columns[c].name);
    snprintf(units[c], CELL, "%s", columns[c].unit);
  }
  print_cells(names, 1);
  print_cells(units, 1);
}

/* nccl-tests' time format: fewer decimals as the number grows. */
static void format_time_us(double us, char *out, size_t cap) {
  snprintf(out, cap, us >= 10000.0 ? "%.0f" : us >= 100.0 ? "%.1f" : "%.2f", us);
}

/* Bandwidths get 4 decimals: a 100 Mbit/s link is 0.0125 GB/s. Returns busbw. */
static double print_row(const bench *b, size_t bytes, const size_result *r) {
  double algbw = (double)bytes / r->time_s / 1e9;
  double busbw = algbw * 2.0 * (b->nranks - 1) / b->nranks;
  double ring_bytes = 2.0 * (b->nranks - 1) / b->nranks * (double)bytes;
  int wire_known = b->config.algo != LH_ALLREDUCE_MPI; /* MPI's bytes are invisible to the layer */
  char cells[NCOLUMNS][CELL];
  snprintf(cells[0], CELL, "%zu", bytes);
  snprintf(cells[1], CELL, "%zu", bytes / sizeof(float));
  snprintf(cells[2], CELL, "float");
  snprintf(cells[3], CELL, "%s", b->opt->op == LH_OP_MEAN ? "mean" : "sum");
  snprintf(cells[4], CELL, "%d", -1);
  format_time_us(r->time_s * 1e6, cells[5], CELL);
  snprintf(cells[6], CELL, "%.4f", algbw);
  snprintf(cells[7], CELL, "%.4f", busbw);
  if (b->opt->check)
    snprintf(cells[8], CELL, "%llu", r->wrong);
  else
    snprintf(cells[8], CELL, "N/A");
  if (wire_known)
    snprintf(cells[9], CELL, "%llu", r->wire);
  else
    snprintf(cells[9], CELL, "-");
  if (wire_known && r->wire > 0)
    snprintf(cells[10], CELL, "%.2f", ring_bytes / (double)r->wire);
  else
    snprintf(cells[10], CELL, "-");
  if (b->opt->check)
    snprintf(cells[11], CELL, "%.2e", r->relerr);
  else
    snprintf(cells[11], CELL, "-");
  if (b->links && wire_known) {
    double seconds = 0;
    check_lib(b->rank, "lh_model_ring_allreduce",
              lh_model_ring_allreduce(b->links, NULL, b->nranks, bytes, b->ring_chunk, &seconds));
    format_time_us(seconds * 1e6, cells[12], CELL);
  } else {
    snprintf(cells[12], CELL, "-");
  }
  print_cells(cells, 0);
  fflush(stdout); /* rows of a long run appear as they are measured */
  return busbw;
}

static void print_arguments(const bench *b) {
  const bench_options *o = b->opt;
  const char *algo = "?";
  lh_allreduce_algo_name(o->algo, &algo);
  printf("# arguments: -b %zu -e %zu ", o->min_bytes, o->max_bytes);
  if (o->step_factor > 0)
    printf("-f %d", o->step_factor);
  else
    printf("-i %zu", o->step_bytes);
  printf(" -n %d -w %d -c %d -o %s -d float --algo %s --chunk %zu (%s)\n", o->iters, o->warmup, o->check,
         o->op == LH_OP_MEAN ? "mean" : "sum", algo, b->ring_chunk, b->chunk_source);
}

static void print_header(const bench *b) {
  int major = 0, minor = 0, patch = 0, hosts = 0;
  check_lib(b->rank, "lh_version", lh_version(&major, &minor, &patch));
  check_lib(b->rank, "lh_comm_host_count", lh_comm_host_count(b->comm, &hosts));
  printf("# Longhaul allreduce_perf, version %d.%d.%d\n", major, minor, patch);
  print_arguments(b);
  printf("# ranks %d on %d host(s)\n", b->nranks, hosts);
  for (int r = 0; r < b->nranks; r++) {
    char host[256];
    check_lib(b->rank, "lh_comm_host", lh_comm_host(b->comm, r, host, sizeof host));
    printf("#  rank %d host %s device cpu\n", r, host);
  }
  printf("# links: %s\n", b->links_text);
  printf("# time: mean over -n iterations of the slowest rank; algbw = S/time, busbw = algbw*2(n-1)/n,\n"
         "#   both from the uncompressed size S (GB/s = 1e9 B/s)\n"
         "# #wrong: elements not equal to the exact result, over ranks and checked iterations (warmup too)\n"
         "# wireB: most payload bytes one rank sent in one all-reduce; ratio = 2(n-1)/n*S / wireB\n"
         "#   (1.00 = an uncompressed ring); relerr = ||out - exact|| / ||exact|| on rank 0;\n"
         "#   model(us) = lh_model_ring_allreduce on the simulated links\n");
  printf("#\n");
  print_column_titles();
  fflush(stdout);
}

/* ---- setup and teardown ------------------------------------------------------------------- */

/* The ring chunk lh_allreduce will use: --chunk, else LH_RING_CHUNK_BYTES (which
 * lh_comm_create has validated), else the library default. */
static lh_status resolve_ring_chunk(bench *b) {
  const char *env = getenv("LH_RING_CHUNK_BYTES");
  if (b->opt->chunk_bytes > 0) {
    b->ring_chunk = b->opt->chunk_bytes;
    b->chunk_source = "--chunk";
  } else if (env) {
    b->chunk_source = "LH_RING_CHUNK_BYTES";
    return lh_parse_size(env, &b->ring_chunk);
  } else {
    b->ring_chunk = DEFAULT_RING_CHUNK;
    b->chunk_source = "library default";
  }
  return LH_SUCCESS;
}

/* Everything after the communicator exists; the link model only when links are simulated. */
static lh_status describe_comm(bench *b) {
  lh_status st = lh_comm_size(b->comm, &b->nranks);
  if (st == LH_SUCCESS)
    st = lh_comm_simulation(b->comm, &b->simulated, b->links_text, sizeof b->links_text);
  if (st == LH_SUCCESS && b->simulated)
    st = lh_comm_links(b->comm, &b->links);
  if (st == LH_SUCCESS)
    st = resolve_ring_chunk(b);
  return st;
}

/* Key per rank for the inputs, and both message buffers at the largest size. Every page is
 * touched now, so no timed iteration pays for first-touch faults. */
static lh_status allocate_buffers(bench *b) {
  size_t bytes = b->opt->max_bytes;
  b->keys = malloc((size_t)b->nranks * sizeof *b->keys);
  b->send = malloc(bytes);
  b->recv = malloc(bytes);
  if (!b->keys || !b->send || !b->recv)
    return LH_ERR_OUT_OF_MEMORY;
  for (int r = 0; r < b->nranks; r++)
    b->keys[r] = mix64(FILL_SEED + (uint64_t)r * 0x632be59bd9b4e019ULL);
  b->value_bits = value_bits_for(b->nranks);
  memset(b->send, 0, bytes);
  memset(b->recv, 0, bytes);
  return LH_SUCCESS;
}

/* Returns 0, or the exit code when a setup step failed on some rank. */
static int bench_setup(bench *b) {
  lh_comm_config cfg = LH_COMM_CONFIG_INIT; /* unset fields: the LH_* environment applies */
  int code = setup_verdict(b->rank, "lh_comm_create", lh_comm_create(&cfg, &b->comm), 1);
  if (!code)
    code = setup_verdict(b->rank, "reading the communicator", describe_comm(b), 1);
  lh_allreduce_config config = LH_ALLREDUCE_CONFIG_INIT;
  b->config = config;
  b->config.algo = b->opt->algo;
  b->config.op = b->opt->op;
  b->config.chunk_bytes = b->opt->chunk_bytes; /* 0: LH_RING_CHUNK_BYTES, else the default */
  /* A zero-element all-reduce lets the library judge the settings on every rank before any
   * output: it refuses mpi on simulated links with a sentence pointing to the testbed. */
  if (!code) {
    lh_status st = lh_allreduce(b->comm, NULL, NULL, 0, &b->config);
    code = setup_verdict(b->rank, b->opt->algo == LH_ALLREDUCE_MPI ? "--algo mpi" : "lh_allreduce", st,
                         st == LH_ERR_NOT_SUPPORTED ? EXIT_USAGE : 1);
  }
  if (!code) {
    char what[96];
    snprintf(what, sizeof what, "allocating 2 buffers of %zu bytes", b->opt->max_bytes);
    code = setup_verdict(b->rank, what, allocate_buffers(b), 1);
  }
  return code;
}

static void bench_teardown(bench *b) {
  free(b->keys);
  free(b->send);
  free(b->recv);
  lh_links_free(b->links);
  lh_comm_destroy(b->comm);
}

/* Runs every size; returns the exit status. */
static int bench_run(bench *b) {
  if (b->rank == 0)
    print_header(b);
  double busbw_sum = 0;
  int sizes = 0;
  unsigned long long wrong = 0;
  for (size_t bytes = b->opt->min_bytes; bytes > 0; bytes = next_size(b->opt, bytes)) {
    size_result r = {0};
    measure_size(b, bytes, &r);
    wrong += r.wrong;
    sizes++;
    if (b->rank == 0)
      busbw_sum += print_row(b, bytes, &r);
  }
  if (b->rank == 0) {
    printf("# Out of bounds values : %llu %s\n", wrong, wrong ? "FAILED" : "OK");
    printf("# Avg bus bandwidth    : %.4f\n", sizes ? busbw_sum / sizes : 0.0);
    printf("#\n");
    fflush(stdout);
  }
  return wrong ? 1 : 0;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  bench_options opt;
  char err[512] = "";
  parse_result parsed = parse_args(argc, argv, &opt, err, sizeof err);
  int code = parsed == PARSE_ERROR ? EXIT_USAGE : 0;
  if (parsed == PARSE_HELP && rank == 0)
    fputs(usage_text, stdout);
  if (parsed == PARSE_ERROR && rank == 0)
    fprintf(stderr, "allreduce_perf: %s (see --help).\n", err);
  if (parsed == PARSE_RUN) {
    bench b = {.opt = &opt, .rank = rank};
    code = bench_setup(&b);
    if (!code)
      code = bench_run(&b);
    bench_teardown(&b);
  }
  MPI_Finalize();
  return code;
}

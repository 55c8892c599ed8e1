/* allreduce_perf: Longhaul's all_reduce_perf, in the nccl-tests layout plus our wire columns.
 *
 *   mpirun -np 4 ./bench/allreduce_perf -b 1K -e 1M -f 4 -n 3 -w 1
 *   mpirun -np 4 -x LH_SIM_BW=100mbit -x LH_SIM_LAT=20ms ./bench/allreduce_perf -b 16M -e 64M -f 2
 *   mpirun -np 4 -x LH_SIM_BW=100mbit -x LH_SIM_LAT=20ms ./bench/allreduce_perf -b 64M -e 64M \
 *       --codec int8 --baseline
 *
 * The table follows transport.md ("Benchmark table format") so that nccl-tests parsers read it;
 * after the standard columns come wireB, ratio, relerr, model(us), speedup, codec% and algo.
 * Only the public API is used, plus MPI for the wall clock, for reducing timings and counts
 * over ranks, and for comparing results across ranks: those must not travel over the
 * (possibly simulated) links being measured.
 *
 * Compressed runs go through an lh_reducer by default, as training does: error feedback on for
 * lossy codecs, one tensor per size (key = its element count) refilled from the deterministic
 * input before every call (the refill is not timed), so each call is one training step that
 * reduces the same gradient again with the residual of the steps before. --api oneshot times
 * lh_allreduce instead (stateless: no error feedback). */
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

typedef enum { API_DEFAULT, API_REDUCER, API_ONESHOT } api_kind;

typedef enum {
  OPT_MIN_BYTES, OPT_MAX_BYTES, OPT_STEP_FACTOR, OPT_STEP_BYTES, OPT_ITERS, OPT_WARMUP,
  OPT_CHECK, OPT_OP, OPT_TYPE, OPT_ALGO, OPT_CHUNK, OPT_HELP,
  OPT_CODEC, OPT_BITS, OPT_BLOCK, OPT_DENSITY, OPT_TOPK_CHUNK, OPT_RANK, OPT_ROWS, OPT_ROUNDING,
  OPT_ZSTD, OPT_EF, OPT_SEED, OPT_CODEC_WARMUP, OPT_API, OPT_BASELINE,
  OPT_ID_COUNT
} opt_id;

typedef struct {
  size_t min_bytes, max_bytes; /* multiples of 4 */
  int step_factor;             /* multiplicative step; 0 when -i is used */
  size_t step_bytes;           /* additive step; 0 when -f is used */
  int iters, warmup, check;
  lh_reduce_op op;
  lh_allreduce_algo algo;
  size_t chunk_bytes; /* ring pipeline chunk; 0: not given, the library decides */
  /* compression; 0 means "the library's default" as in lh_allreduce_config */
  lh_codec_id codec;
  char codec_text[32]; /* --codec as given (a preset name stays visible in the header) */
  int bits, block, topk_chunk, rank, zstd, ef, codec_warmup;
  double density;
  size_t rows; /* PowerSGD rows; 0: a near-square factor of each size's count */
  lh_rounding rounding;
  uint64_t seed;
  api_kind api;
  int baseline;
  int preset_bits;       /* from --codec intN; 0: none */
  double preset_density; /* from --codec topP% / randP%; 0: none */
  unsigned long given;   /* bit per opt_id seen on the command line */
} bench_options;

typedef struct {
  opt_id id;
  char short_name; /* 0: long form only */
  const char *long_name;
  int takes_value;
} opt_spec;

/* nccl-tests' short and long names, so that its command lines work unchanged; ours are long
 * only. Long names match with '-' or '_' alike (--topk-chunk = --topk_chunk). */
static const opt_spec opt_specs[] = {
  {OPT_MIN_BYTES, 'b', "minbytes", 1},     {OPT_MAX_BYTES, 'e', "maxbytes", 1},
  {OPT_STEP_FACTOR, 'f', "stepfactor", 1}, {OPT_STEP_BYTES, 'i', "stepbytes", 1},
  {OPT_ITERS, 'n', "iters", 1},            {OPT_WARMUP, 'w', "warmup_iters", 1},
  {OPT_CHECK, 'c', "check", 1},            {OPT_OP, 'o', "op", 1},
  {OPT_TYPE, 'd', "datatype", 1},          {OPT_ALGO, 0, "algo", 1},
  {OPT_CHUNK, 0, "chunk", 1},              {OPT_HELP, 'h', "help", 0},
  {OPT_CODEC, 0, "codec", 1},              {OPT_BITS, 0, "bits", 1},
  {OPT_BLOCK, 0, "block", 1},              {OPT_DENSITY, 0, "density", 1},
  {OPT_TOPK_CHUNK, 0, "topk_chunk", 1},    {OPT_RANK, 0, "rank", 1},
  {OPT_ROWS, 0, "rows", 1},                {OPT_ROUNDING, 0, "rounding", 1},
  {OPT_ZSTD, 0, "zstd", 1},                {OPT_EF, 0, "ef", 1},
  {OPT_SEED, 0, "seed", 1},                {OPT_CODEC_WARMUP, 0, "codec_warmup", 1},
  {OPT_API, 0, "api", 1},                  {OPT_BASELINE, 0, "baseline", 0},
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
  "  -c, --check 0|1          check every iteration's result (default 1); see #wrong below\n"
  "  -o, --op sum|mean        reduction (avg is accepted for mean; default sum)\n"
  "  -d, --datatype float     element type; only float is supported\n"
  "      --algo NAME          ring, mpi, qring, shared_ring, owner, allgather, powersgd or auto\n"
  "                           (default auto: ring without a codec, else what the codec suits)\n"
  "      --chunk SIZE         pipeline chunk of fp32 data, >= 4K (default LH_RING_CHUNK_BYTES,\n"
  "                           else 1M)\n"
  "Compression (lh_allreduce_config's fields; unset ones take the library's defaults):\n"
  "      --codec NAME         none fp16 bf16 blockq sharedq sign topk randk powersgd, or a preset:\n"
  "                           int8, int4 (intB for B = 1..8: blockq --bits B), 1bit (sign),\n"
  "                           top1% (topP%: topk --density P/100), rand1% (randP%: randk)\n"
  "      --bits B             blockq 1-8, sharedq 2-8 (default 8)\n"
  "      --block N            elements per scale: blockq, sharedq, sign (default 128)\n"
  "      --density D          topk, randk: fraction kept, 0 < D <= 1 (default 0.01)\n"
  "      --topk_chunk N       topk, randk: elements per chunk (default 4096)\n"
  "      --rank R             powersgd rank 1-8 (default 2)\n"
  "      --rows N             powersgd matrix rows; must divide every size's element count\n"
  "                           (default: the largest divisor <= sqrt(count), near-square)\n"
  "      --rounding nearest|stochastic   blockq, sharedq (default nearest)\n"
  "      --zstd LEVEL         0 off (default), 1-19: zstd on every frame\n"
  "      --ef 0|1             error feedback (reducer only; default on for lossy codecs)\n"
  "      --seed N             key of stochastic rounding, random-k and PowerSGD's first Q\n"
  "      --codec_warmup N     reducer steps sent uncompressed first (default 0 here, so every\n"
  "                           timed step is compressed; the library's own default is 10 for\n"
  "                           powersgd)\n"
  "      --api reducer|oneshot  time lh_reducer_allreduce (default with a codec: error feedback,\n"
  "                           state kept as in training) or lh_allreduce (default without one)\n"
  "      --baseline           first time the uncompressed ring at each size (lh_allreduce, same\n"
  "                           process, same links): its row is printed as a '#' line and the\n"
  "                           speedup column is time(ring) / time(this run)\n"
  "  -h, --help               this text\n"
  "Simulated links come from the environment: LH_SIM_BW=100mbit LH_SIM_LAT=20ms, or LH_LINKS=FILE\n"
  "(pass them with mpirun -x). Exit status: 0 ok, 1 wrong results or a library error, 2 bad usage.\n"
  "#wrong counts, over ranks and checked calls (warmup too), the elements that are not finite,\n"
  "that differ in any bit from rank 0's result (compared by a hash sent over MPI, then element by\n"
  "element when the hashes differ), or that miss the exact fp32 sum: exactly for codec none, by\n"
  "more than the per-element error bound printed in the header for fp16, bf16, blockq (2-8 bits)\n"
  "and sharedq; sign, topk, randk, powersgd and 1-bit blockq have no per-element bound (their\n"
  "error is of the order of the values themselves): see relerr for them.\n";

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

static int parse_u64(const char *flag, const char *value, uint64_t *out, char *err, size_t cap) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(value, &end, 0);
  if (end == value || *end || errno || value[0] == '-')
    return fail(err, cap, "%s '%s': expected a whole number from 0 to 2^64-1", flag, value);
  *out = (uint64_t)v;
  return 0;
}

/* A fraction in (0, 1]; `what` names the flag or the preset in the message. */
static int parse_fraction(const char *what, const char *text, double scale, double *out, char *err, size_t cap) {
  char *end;
  errno = 0;
  double v = strtod(text, &end);
  if (end == text || *end || errno || !(v > 0) || !(v * scale <= 1.0))
    return fail(err, cap, "%s: the fraction kept must be above 0 and at most %s", what, scale == 1 ? "1" : "100%");
  *out = v * scale;
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

/* A codec name from lh_codec_parse, or a preset: intB, 1bit, topP%, randP%. */
static int parse_codec(bench_options *o, const char *flag, const char *value, char *err, size_t cap) {
  o->preset_bits = 0;
  o->preset_density = 0;
  snprintf(o->codec_text, sizeof o->codec_text, "%s", value);
  if (lh_codec_parse(value, &o->codec) == LH_SUCCESS)
    return 0;
  size_t len = strlen(value);
  if (!strncmp(value, "int", 3) && len == 4 && value[3] >= '1' && value[3] <= '8') {
    o->codec = LH_CODEC_BLOCKQ;
    o->preset_bits = value[3] - '0';
    return 0;
  }
  if (!strcmp(value, "1bit")) {
    o->codec = LH_CODEC_SIGN;
    return 0;
  }
  int top = !strncmp(value, "top", 3), rnd = !strncmp(value, "rand", 4);
  if ((top || rnd) && len > (top ? 4u : 5u) && value[len - 1] == '%') {
    char number[32];
    size_t skip = top ? 3 : 4;
    if (len - skip - 1 >= sizeof number)
      return fail(err, cap, "%s '%s': the percentage is too long", flag, value);
    memcpy(number, value + skip, len - skip - 1);
    number[len - skip - 1] = '\0';
    char what[64];
    snprintf(what, sizeof what, "%s '%s'", flag, value);
    if (parse_fraction(what, number, 0.01, &o->preset_density, err, cap) != 0)
      return -1;
    o->codec = top ? LH_CODEC_TOPK : LH_CODEC_RANDK;
    return 0;
  }
  return fail(err, cap,
              "%s '%s': unknown codec (expected none, fp16, bf16, blockq, sharedq, sign, topk, randk, "
              "powersgd, or a preset: int1..int8, 1bit, topP%%, randP%%)",
              flag, value);
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
  case OPT_CODEC: return parse_codec(o, flag, value, err, cap);
  /* Broad ranges here; the codec's own bounds are checked once the codec is known. */
  case OPT_BITS: return parse_int(flag, value, 1, 8, &o->bits, err, cap);
  case OPT_BLOCK: return parse_int(flag, value, 1, 1 << 30, &o->block, err, cap);
  case OPT_DENSITY: {
    char what[64];
    snprintf(what, sizeof what, "%s '%s'", flag, value);
    return parse_fraction(what, value, 1.0, &o->density, err, cap);
  }
  case OPT_TOPK_CHUNK: return parse_int(flag, value, 1, 1 << 30, &o->topk_chunk, err, cap);
  case OPT_RANK: return parse_int(flag, value, 1, 8, &o->rank, err, cap);
  case OPT_ROWS: {
    int rows = 0;
    if (parse_int(flag, value, 1, 1 << 30, &rows, err, cap) != 0)
      return -1;
    o->rows = (size_t)rows;
    return 0;
  }
  case OPT_ROUNDING:
    if (!strcmp(value, "nearest"))
      o->rounding = LH_ROUND_NEAREST;
    else if (!strcmp(value, "stochastic"))
      o->rounding = LH_ROUND_STOCHASTIC;
    else
      return fail(err, cap, "%s '%s': the rounding must be nearest or stochastic", flag, value);
    return 0;
  case OPT_ZSTD: return parse_int(flag, value, 0, 19, &o->zstd, err, cap);
  case OPT_EF: return parse_int(flag, value, 0, 1, &o->ef, err, cap);
  case OPT_SEED: return parse_u64(flag, value, &o->seed, err, cap);
  case OPT_CODEC_WARMUP: return parse_int(flag, value, 0, 1 << 30, &o->codec_warmup, err, cap);
  case OPT_API:
    if (!strcmp(value, "reducer"))
      o->api = API_REDUCER;
    else if (!strcmp(value, "oneshot"))
      o->api = API_ONESHOT;
    else
      return fail(err, cap, "%s '%s': the API must be reducer or oneshot", flag, value);
    return 0;
  case OPT_BASELINE: o->baseline = 1; return 0;
  case OPT_ID_COUNT: break;
  }
  return fail(err, cap, "internal error: option %d has no handler", (int)id);
}

/* Long names compare with '-' and '_' as the same character. */
static int long_name_is(const char *spec, const char *name, size_t len) {
  if (strlen(spec) != len)
    return 0;
  for (size_t i = 0; i < len; i++) {
    char a = spec[i] == '-' ? '_' : spec[i], b = name[i] == '-' ? '_' : name[i];
    if (a != b)
      return 0;
  }
  return 1;
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
      if (long_name_is(opt_specs[k].long_name, name, len))
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

#define GIVEN(o, id) (((o)->given >> (id)) & 1ul)

static const char *codec_label(lh_codec_id id) {
  const char *name = "?";
  lh_codec_name(id, &name);
  return name;
}

static const char *algo_label(lh_allreduce_algo algo) {
  const char *name = "?";
  lh_allreduce_algo_name(algo, &name);
  return name;
}

/* A codec parameter flag given on the command line must be one the codec has, within the
 * codec's own bounds (lh_codec_param_bounds). */
static int check_codec_param(const bench_options *o, opt_id id, const char *flag, lh_codec_param param, int value,
                             char *err, size_t cap) {
  if (!GIVEN(o, id))
    return 0;
  int lo = 0, hi = 0;
  lh_status st = lh_codec_param_bounds(o->codec, param, &lo, &hi, NULL);
  if (st == LH_ERR_NOT_SUPPORTED)
    return fail(err, cap, "%s does not apply to codec %s", flag, codec_label(o->codec));
  if (st != LH_SUCCESS)
    return fail(err, cap, "%s: %s", flag, lh_last_error());
  if (value < lo || value > hi)
    return fail(err, cap, "%s %d: codec %s takes %d to %d", flag, value, codec_label(o->codec), lo, hi);
  return 0;
}

/* What depends on several flags together: presets against explicit values, each codec flag
 * against the codec, and the API against what it can do. */
static int check_combination(bench_options *o, char *err, size_t cap) {
  if (o->preset_bits) {
    if (GIVEN(o, OPT_BITS) && o->bits != o->preset_bits)
      return fail(err, cap, "--codec %s means --bits %d, which --bits %d contradicts", o->codec_text, o->preset_bits,
                  o->bits);
    o->bits = o->preset_bits;
  }
  if (o->preset_density > 0) {
    if (GIVEN(o, OPT_DENSITY) && o->density != o->preset_density)
      return fail(err, cap, "--codec %s means --density %g, which --density %g contradicts", o->codec_text,
                  o->preset_density, o->density);
    o->density = o->preset_density;
  }
  if (check_codec_param(o, OPT_BITS, "--bits", LH_CP_BITS, o->bits, err, cap) ||
      check_codec_param(o, OPT_BLOCK, "--block", LH_CP_BLOCK, o->block, err, cap) ||
      check_codec_param(o, OPT_TOPK_CHUNK, "--topk_chunk", LH_CP_CHUNK, o->topk_chunk, err, cap) ||
      check_codec_param(o, OPT_RANK, "--rank", LH_CP_RANK, o->rank, err, cap) ||
      check_codec_param(o, OPT_ROWS, "--rows", LH_CP_ROWS, o->rows > INT_MAX ? INT_MAX : (int)o->rows, err, cap) ||
      check_codec_param(o, OPT_ROUNDING, "--rounding", LH_CP_ROUNDING, (int)o->rounding, err, cap) ||
      check_codec_param(o, OPT_ZSTD, "--zstd", LH_CP_ZSTD_LEVEL, o->zstd, err, cap))
    return -1;
  if (GIVEN(o, OPT_DENSITY) && o->codec != LH_CODEC_TOPK && o->codec != LH_CODEC_RANDK)
    return fail(err, cap, "--density does not apply to codec %s (only topk and randk keep a fraction)",
                codec_label(o->codec));
  if (GIVEN(o, OPT_EF) && o->ef && o->codec == LH_CODEC_NONE)
    return fail(err, cap, "--ef 1 needs a lossy codec (codec none loses nothing to feed back)");
  if (o->api == API_DEFAULT)
    o->api = o->codec == LH_CODEC_NONE ? API_ONESHOT : API_REDUCER;
  if (o->api == API_ONESHOT) {
    if (GIVEN(o, OPT_EF) && o->ef)
      return fail(err, cap, "--ef 1 needs --api reducer (lh_allreduce keeps no residual between calls)");
    if (GIVEN(o, OPT_CODEC_WARMUP))
      return fail(err, cap, "--codec_warmup needs --api reducer (lh_allreduce counts no steps)");
    if (o->codec == LH_CODEC_POWERSGD)
      return fail(err, cap, "--codec powersgd needs --api reducer (lh_allreduce has no matrix shape)");
  }
  return 0;
}

/* Every rank parses the same argv, so every rank reaches the same verdict without talking. */
static parse_result parse_args(int argc, char **argv, bench_options *o, char *err, size_t cap) {
  *o = (bench_options){.min_bytes = (size_t)1 << 20, .max_bytes = (size_t)16 << 20, .iters = 5, .warmup = 1,
                       .check = 1, .op = LH_OP_SUM, .algo = LH_ALLREDUCE_AUTO, .codec = LH_CODEC_NONE,
                       .ef = -1, .rounding = LH_ROUND_NEAREST, .api = API_DEFAULT};
  snprintf(o->codec_text, sizeof o->codec_text, "none");
  int help = 0;
  for (int i = 1; i < argc; i++) {
    const char *flag = argv[i], *value = NULL;
    const opt_spec *spec = find_option(argc, argv, &i, &value, err, cap);
    if (!spec || apply_option(o, spec->id, flag, value, err, cap) != 0)
      return PARSE_ERROR;
    o->given |= 1ul << spec->id;
    help |= spec->id == OPT_HELP;
  }
  if (help)
    return PARSE_HELP;
  if (GIVEN(o, OPT_STEP_FACTOR) && GIVEN(o, OPT_STEP_BYTES)) {
    fail(err, cap, "give -f (multiplicative step) or -i (additive step), not both");
    return PARSE_ERROR;
  }
  if (!GIVEN(o, OPT_STEP_BYTES) && !GIVEN(o, OPT_STEP_FACTOR))
    o->step_factor = 2;
  if (o->max_bytes < o->min_bytes) {
    fail(err, cap, "-e %zu is smaller than -b %zu", o->max_bytes, o->min_bytes);
    return PARSE_ERROR;
  }
  if (check_combination(o, err, cap) != 0)
    return PARSE_ERROR;
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

/* PowerSGD's rows for a count: --rows, else the largest divisor <= sqrt(count). */
static size_t rows_for(const bench_options *o, size_t count) {
  if (o->rows)
    return o->rows;
  size_t r = (size_t)sqrt((double)count);
  while (r > 1 && (r + 1) * (r + 1) <= count)
    r++;
  while (r > 1 && r * r > count)
    r--;
  while (r > 1 && count % r)
    r--;
  return r ? r : 1;
}

/* --rows must divide every size's element count; checked before anything runs. */
static int check_rows(const bench_options *o, char *err, size_t cap) {
  if (o->codec != LH_CODEC_POWERSGD || !o->rows)
    return 0;
  for (size_t bytes = o->min_bytes; bytes > 0; bytes = next_size(o, bytes)) {
    size_t count = bytes / sizeof(float);
    if (count % o->rows)
      return fail(err, cap, "--rows %zu does not divide the %zu elements of size %zu", o->rows, count, bytes);
  }
  return 0;
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

/* One way of all-reducing: the run under test, or the uncompressed ring of --baseline. */
typedef struct {
  const char *what;           /* for messages: "lh_allreduce", "lh_reducer_allreduce" */
  lh_allreduce_config config; /* what every call gets */
  lh_reducer reducer;         /* NULL: lh_allreduce, out of place */
  int exact;                  /* codec none: every element must equal the exact result */
  int ef;                     /* error feedback in effect (reducer, lossy codec, not --ef 0) */
  double bound;               /* per-element error bound for lossy codecs; < 0: none */
} variant;

typedef struct {
  const bench_options *opt;
  lh_comm comm;
  int rank, nranks;
  int mpi_thread; /* what MPI_Init_thread provided */
  variant run, base;
  int simulated;
  char links_text[160];
  lh_links *links;          /* the simulated link model; NULL on real links */
  size_t ring_chunk;        /* the chunk the ring will use, for the cost model and the header */
  const char *chunk_source; /* where ring_chunk comes from */
  int value_bits;           /* significant bits of every input value */
  uint64_t *keys;           /* fill key of every rank, so that each can compute all inputs */
  float *send, *recv;       /* send: this rank's input; recv: the result (the reducer works in it) */
  float *exact;             /* the exact sum of all ranks' inputs (exact in float) */
  float *reference;         /* rank 0's result, fetched over MPI when hashes disagree */
} bench;

typedef struct {
  unsigned long long wrong;    /* this rank, over checked iterations */
  unsigned long long disagree; /* of which: differed from rank 0 */
  double relerr;               /* this rank, see check_output */
  int checked;                 /* checked calls so far */
} check_totals;

typedef struct {
  double time_s;            /* mean over timed iterations of the slowest rank */
  unsigned long long wrong; /* over ranks and checked iterations */
  unsigned long long disagree;
  unsigned long long wire; /* most bytes one rank sent in one all-reduce */
  double relerr;           /* rank 0's */
  double codec_s;          /* most encode+decode seconds one rank spent per call; < 0: unknown */
  lh_allreduce_algo algo;  /* what ran */
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

/* This rank's input, and the exact sum of every rank's (exact in float: see input_value). */
static void fill_input(const bench *b, size_t count) {
  uint64_t key = b->keys[b->rank];
  for (size_t i = 0; i < count; i++)
    b->send[i] = input_value(key, i, b->value_bits);
  if (!b->opt->check)
    return;
  for (size_t i = 0; i < count; i++) {
    double sum = 0;
    for (int r = 0; r < b->nranks; r++)
      sum += input_value(b->keys[r], i, b->value_bits);
    b->exact[i] = (float)sum;
  }
}

/* The exact result of element i: the sum is exact in double (and float), the mean is rounded
 * once, as a correctly rounded float division of the exact sum gives. */
static double exact_value(const bench *b, size_t i) {
  double sum = b->exact[i];
  return b->opt->op == LH_OP_MEAN ? sum / b->nranks : sum;
}

/* A per-element bound on |result - exact| for the codecs whose error is a rounding of each
 * element, from the magnitudes (inputs lie in [-1, 1): M = 1) and the algorithms' structure:
 *   QRING re-encodes the running partial at hops h = 1..n (|partial| <= h M), the owner
 *   encoding the full sum last: sum_h e(h M) = e(M) n(n+1)/2; OWNER encodes every rank's shard
 *   (n e(M)) and the sum once more (e(n M)): 2 n e(M); SHARED_RING n e(M). The bound takes
 *   e(M) (n(n+1)/2 + n), which covers all three, where one encode of magnitude M errs by at
 *   most e(M) = M 2^-p (a cast to p significant bits: bf16 p = 8, fp16 p = 11) or
 *   M / (2 qmax) (round to nearest, qmax = 2^(bits-1) - 1; twice that stochastic).
 * Error feedback adds last step's residual and withholds this step's: twice the bound. Then
 * 25% for the residual's growth of the magnitudes, and one float ulp of the sum. -1: no
 * per-element bound (sign, top-k, random-k, PowerSGD and 1-bit blockq err by the order of the
 * values themselves). */
static double error_bound(const bench_options *o, int nranks, int ef) {
  double m = 1.0, per_encode;
  switch (o->codec) {
  case LH_CODEC_FP16: per_encode = m * ldexp(1.0, -11) + ldexp(1.0, -24); break;
  case LH_CODEC_BF16: per_encode = m * ldexp(1.0, -8); break;
  case LH_CODEC_BLOCKQ:
  case LH_CODEC_SHAREDQ: {
    int bits = o->bits ? o->bits : 8;
    if (bits < 2)
      return -1;
    double qmax = ldexp(1.0, bits - 1) - 1;
    per_encode = m / (2 * qmax) * (o->rounding == LH_ROUND_STOCHASTIC ? 2 : 1);
    break;
  }
  default: return -1;
  }
  double n = nranks;
  double bound = per_encode * (n * (n + 1) / 2 + n) * (ef ? 2 : 1) * 1.25 + n * ldexp(1.0, -23);
  return o->op == LH_OP_MEAN ? bound / n : bound;
}

/* NaN in every byte pattern 0xff: an all-reduce that skipped an element cannot pass the check
 * by leaving the previous iteration's correct value in place. */
static void poison_output(const bench *b, size_t count) { memset(b->recv, 0xff, count * sizeof(float)); }

/* 64-bit hash of the result's bits: a bijective step per 8 bytes, so any one changed word
 * changes the hash. */
static uint64_t hash_output(const float *x, size_t count) {
  uint64_t h = 0x9e3779b97f4a7c15ULL ^ count;
  const unsigned char *p = (const unsigned char *)x;
  size_t bytes = count * sizeof(float), i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    h = (h ^ w) * 0x100000001b3ULL;
    h ^= h >> 29;
  }
  for (; i < bytes; i++)
    h = (h ^ p[i]) * 0x100000001b3ULL;
  return mix64(h);
}

/* Whether every rank holds the same bits: hashes compared over MPI (not over the links being
 * measured); when they differ, rank 0's result comes over MPI into b->reference. Returns 1
 * when b->reference is to be compared with. */
static int fetch_reference(const bench *b, size_t count) {
  uint64_t h = hash_output(b->recv, count), lo = 0, hi = 0;
  MPI_Allreduce(&h, &lo, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(&h, &hi, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  if (lo == hi)
    return 0;
  if (b->rank == 0)
    memcpy(b->reference, b->recv, count * sizeof(float));
  for (size_t done = 0; done < count;) {
    size_t piece = count - done < (size_t)INT_MAX ? count - done : (size_t)INT_MAX;
    MPI_Bcast(b->reference + done, (int)piece, MPI_FLOAT, 0, MPI_COMM_WORLD);
    done += piece;
  }
  return 1;
}

/* #wrong and relerr of one call (see the usage text). relerr is ||out - exact|| / ||exact||,
 * the worst over checked calls; with error feedback only the first call's (from a zero
 * residual: one step's compression error), because later calls also deliver earlier steps'
 * residuals. */
static void check_output(const bench *b, const variant *v, size_t count, check_totals *t) {
  int compare = fetch_reference(b, count) && b->rank != 0;
  unsigned long long wrong = 0, disagree = 0;
  double err2 = 0, ref2 = 0, bound = v->bound;
  for (size_t i = 0; i < count; i++) {
    double exact = exact_value(b, i);
    float out = b->recv[i];
    double d = (double)out - exact;
    int bad;
    if (v->exact)
      bad = !(out == (float)exact); /* NaN counts as wrong */
    else
      bad = !isfinite(out) || (bound >= 0 && !(fabs(d) <= bound));
    if (compare) {
      uint32_t x, y;
      memcpy(&x, &b->recv[i], 4);
      memcpy(&y, &b->reference[i], 4);
      disagree += x != y;
      bad |= x != y;
    }
    wrong += (unsigned long long)bad;
    err2 += d * d;
    ref2 += exact * exact;
  }
  double rel = ref2 > 0 ? sqrt(err2 / ref2) : (err2 > 0 ? INFINITY : 0);
  t->wrong += wrong;
  t->disagree += disagree;
  if (!(v->ef && t->checked > 0) && !(rel <= t->relerr)) /* keeps a NaN */
    t->relerr = rel;
  t->checked++;
}

/* ---- one iteration ------------------------------------------------------------------------ */

/* Seconds the slowest rank spent in one all-reduce. lh_barrier orders the iteration on the
 * links being measured, but on simulated links its ranks leave up to log2(n) latencies apart
 * (a rank still checking the previous result enters late and leaves first), and that gap would
 * count in the early ranks' time: an MPI barrier on the control channel then aligns the start
 * to microseconds. The reducer works in place on recv, refilled from the input first (untimed). */
static double timed_allreduce(const bench *b, const variant *v, size_t count) {
  lh_tensor tensor = {sizeof(lh_tensor), (uint64_t)count, b->recv, count,
                      b->opt->codec == LH_CODEC_POWERSGD ? rows_for(b->opt, count) : 0};
  if (v->reducer)
    memcpy(b->recv, b->send, count * sizeof(float));
  check_lib(b->rank, "lh_barrier", lh_barrier(b->comm));
  MPI_Barrier(MPI_COMM_WORLD);
  double start = MPI_Wtime();
  lh_status st = v->reducer ? lh_reducer_allreduce(v->reducer, &tensor, 1)
                            : lh_allreduce(b->comm, b->send, b->recv, count, &v->config);
  double mine = MPI_Wtime() - start, slowest = 0;
  check_lib(b->rank, v->what, st);
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

static double run_iteration(const bench *b, const variant *v, size_t count, const char *phase, int index, int total,
                            check_totals *t) {
  if (b->opt->check && !v->reducer)
    poison_output(b, count);
  double seconds = timed_allreduce(b, v, count);
  if (b->opt->check)
    check_output(b, v, count, t);
  if (b->rank == 0 && seconds > PROGRESS_AFTER_S) { /* stdout stays a clean table */
    char size[32];
    human_size(count * sizeof(float), size, sizeof size);
    fprintf(stderr, "# size %s: %s%s %d/%d took %.1f s\n", size, v == &b->base ? "baseline " : "", phase, index + 1,
            total, seconds);
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

/* The reducer's counters over the timed calls: bytes and codec seconds per call, the most of
 * any rank, and the algorithm it ran. */
static void reducer_results(const bench *b, const variant *v, size_result *r) {
  lh_reducer_stats s = LH_REDUCER_STATS_INIT;
  check_lib(b->rank, "lh_reducer_get_stats", lh_reducer_get_stats(v->reducer, &s));
  unsigned long long calls = s.calls ? s.calls : 1, wire = s.wire_bytes / calls;
  double codec = s.codec_seconds / (double)calls;
  MPI_Allreduce(&wire, &r->wire, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
  MPI_Allreduce(&codec, &r->codec_s, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  r->algo = s.last_algo;
}

static void measure_size(const bench *b, const variant *v, size_t bytes, size_result *r) {
  const bench_options *o = b->opt;
  size_t count = bytes / sizeof(float);
  check_totals t = {0, 0, 0.0, 0};
  r->codec_s = -1;
  r->algo = v->config.algo;
  if (!v->reducer && v->config.algo == LH_ALLREDUCE_AUTO) /* what lh_allreduce runs */
    check_lib(b->rank, "lh_allreduce_choose", lh_allreduce_choose(b->comm, &v->config, count, &r->algo));
  for (int it = 0; it < o->warmup; it++)
    run_iteration(b, v, count, "warmup", it, o->warmup, &t);
  double total = 0;
  for (int it = 0; it < o->iters; it++) {
    if (it == 0) {
      check_lib(b->rank, "lh_comm_reset_stats", lh_comm_reset_stats(b->comm));
      if (v->reducer)
        check_lib(b->rank, "lh_reducer_reset_stats", lh_reducer_reset_stats(v->reducer));
    }
    total += run_iteration(b, v, count, "iteration", it, o->iters, &t);
    if (it == 0 && !v->reducer) /* the barrier's messages carry no payload: the all-reduce alone */
      r->wire = wire_bytes(b);
  }
  if (v->reducer) /* its private communicator's bytes are not in b->comm's link counters */
    reducer_results(b, v, r);
  r->time_s = total / o->iters;
  MPI_Allreduce(&t.wrong, &r->wrong, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(&t.disagree, &r->disagree, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
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
  {"model(us)", "", 10},   {"speedup", "", 7},          {"codec%", "", 6},        {"algo", "", 11},
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

/* The cost model of this row: the ring of the uncompressed size for an uncompressed run; for a
 * compressed one the ring at the wire volume (size and chunk divided by the ratio), i.e. the
 * time if encoding and decoding cost nothing and the frames pipelined like the ring's chunks. */
static void format_model(const bench *b, const variant *v, size_t bytes, double ratio, char *out, size_t cap) {
  if (!b->links || !(ratio > 0)) {
    snprintf(out, cap, "-");
    return;
  }
  if (v->config.codec == LH_CODEC_NONE) /* the ring itself, whatever rounding did to the ratio */
    ratio = 1.0;
  size_t volume = (size_t)((double)bytes / ratio), chunk = (size_t)((double)b->ring_chunk / ratio);
  double seconds = 0;
  check_lib(b->rank, "lh_model_ring_allreduce",
            lh_model_ring_allreduce(b->links, NULL, b->nranks, volume ? volume : 1, chunk ? chunk : 1, &seconds));
  format_time_us(seconds * 1e6, out, cap);
}

/* Bandwidths get 4 decimals: a 100 Mbit/s link is 0.0125 GB/s. A baseline row is printed as a
 * '#' line, so that parsers see only the run under test. Returns busbw. */
static double print_row(const bench *b, const variant *v, size_t bytes, const size_result *r, const size_result *base) {
  double algbw = (double)bytes / r->time_s / 1e9;
  double busbw = algbw * 2.0 * (b->nranks - 1) / b->nranks;
  double ring_bytes = 2.0 * (b->nranks - 1) / b->nranks * (double)bytes;
  int wire_known = r->algo != LH_ALLREDUCE_MPI; /* MPI's bytes are invisible to the layer */
  double ratio = wire_known && r->wire > 0 ? ring_bytes / (double)r->wire : 0;
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
  if (ratio > 0)
    snprintf(cells[10], CELL, "%.2f", ratio);
  else
    snprintf(cells[10], CELL, "-");
  if (b->opt->check)
    snprintf(cells[11], CELL, "%.2e", r->relerr);
  else
    snprintf(cells[11], CELL, "-");
  format_model(b, v, bytes, ratio, cells[12], CELL);
  if (base)
    snprintf(cells[13], CELL, "%.2f", base->time_s / r->time_s);
  else
    snprintf(cells[13], CELL, "-");
  if (r->codec_s >= 0)
    snprintf(cells[14], CELL, "%.1f", 100.0 * r->codec_s / r->time_s);
  else
    snprintf(cells[14], CELL, "-");
  snprintf(cells[15], CELL, "%s", algo_label(r->algo));
  print_cells(cells, v == &b->base);
  if (r->disagree)
    printf("# size %zu: %llu element(s) differ from rank 0's result (ranks must agree bit for bit)\n", bytes,
           r->disagree);
  fflush(stdout); /* rows of a long run appear as they are measured */
  return busbw;
}

static void print_arguments(const bench *b) {
  const bench_options *o = b->opt;
  printf("# arguments: -b %zu -e %zu ", o->min_bytes, o->max_bytes);
  if (o->step_factor > 0)
    printf("-f %d", o->step_factor);
  else
    printf("-i %zu", o->step_bytes);
  printf(" -n %d -w %d -c %d -o %s -d float --algo %s --chunk %zu (%s)", o->iters, o->warmup, o->check,
         o->op == LH_OP_MEAN ? "mean" : "sum", algo_label(o->algo), b->ring_chunk, b->chunk_source);
  printf(" --codec %s --api %s%s\n", o->codec_text, o->api == API_REDUCER ? "reducer" : "oneshot",
         o->baseline ? " --baseline" : "");
}

/* "name value" when given, "name default" when the library picks. */
static void print_param(const char *name, int given, int value) {
  if (given)
    printf(" %s %d", name, value);
  else
    printf(" %s default", name);
}

static void print_codec(const bench *b) {
  const bench_options *o = b->opt;
  const variant *v = &b->run;
  if (o->codec == LH_CODEC_NONE) {
    printf("# codec: none (uncompressed)\n");
    return;
  }
  printf("# codec: %s", codec_label(o->codec));
  switch (o->codec) {
  case LH_CODEC_BLOCKQ:
  case LH_CODEC_SHAREDQ:
    print_param("bits", o->bits != 0, o->bits);
    print_param("block", o->block != 0, o->block);
    printf(" rounding %s", o->rounding == LH_ROUND_STOCHASTIC ? "stochastic" : "nearest");
    break;
  case LH_CODEC_SIGN: print_param("block", o->block != 0, o->block); break;
  case LH_CODEC_TOPK:
  case LH_CODEC_RANDK:
    if (o->density > 0)
      printf(" density %g", o->density);
    else
      printf(" density default");
    print_param("chunk", o->topk_chunk != 0, o->topk_chunk);
    break;
  case LH_CODEC_POWERSGD:
    print_param("rank", o->rank != 0, o->rank);
    if (o->rows)
      printf(" rows %zu", o->rows);
    else
      printf(" rows near-square (%zu x %zu at the largest size)", rows_for(o, o->max_bytes / 4),
             o->max_bytes / 4 / rows_for(o, o->max_bytes / 4));
    printf(" uncompressed steps %d", o->codec_warmup);
    break;
  default: break;
  }
  printf(" zstd %d", o->zstd);
  if (o->seed)
    printf(" seed %llu", (unsigned long long)o->seed);
  printf("; error feedback %s\n", v->ef ? "on" : "off");
  if (v->bound >= 0)
    printf("# per-element error bound for #wrong: %.3g\n", v->bound);
  else
    printf("# per-element error bound for #wrong: none for this codec (finite and rank agreement only)\n");
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
  print_codec(b);
  if (b->run.reducer)
    printf("# api: lh_reducer_allreduce, one tensor per size refilled before every call (untimed)%s\n",
           b->mpi_thread >= MPI_THREAD_MULTIPLE ? "" : "; MPI is not thread-multiple: the reducer runs in the caller");
  else
    printf("# api: lh_allreduce, out of place\n");
  fputs("# time: mean over -n iterations of the slowest rank; algbw = S/time, busbw = algbw*2(n-1)/n,\n"
         "#   both from the uncompressed size S (GB/s = 1e9 B/s)\n"
         "# #wrong: elements not finite, not bit-equal to rank 0's, or off the exact result (exactly\n"
         "#   without a codec, else beyond the bound above), over ranks and checked iterations (warmup too)\n"
         "# wireB: most payload bytes one rank sent in one all-reduce; ratio = 2(n-1)/n*S / wireB\n"
         "#   (1.00 = an uncompressed ring); relerr = ||out - exact|| / ||exact|| on rank 0, the worst\n"
         "#   call (with error feedback: the first call, from a zero residual);\n"
         "#   model(us) = lh_model_ring_allreduce on the simulated links, at the wire volume S/ratio;\n"
         "#   speedup = time of the uncompressed ring (--baseline, the '#' rows) / time;\n"
         "#   codec% = most encode+decode time of one rank (reducer statistics) / time; algo = what ran\n",
        stdout);
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

/* Key per rank for the inputs, and the message buffers at the largest size. Every page is
 * touched now, so no timed iteration pays for first-touch faults. */
static lh_status allocate_buffers(bench *b) {
  size_t bytes = b->opt->max_bytes;
  b->keys = malloc((size_t)b->nranks * sizeof *b->keys);
  b->send = malloc(bytes);
  b->recv = malloc(bytes);
  if (b->opt->check) {
    b->exact = malloc(bytes);
    b->reference = malloc(bytes);
  }
  if (!b->keys || !b->send || !b->recv || (b->opt->check && (!b->exact || !b->reference)))
    return LH_ERR_OUT_OF_MEMORY;
  for (int r = 0; r < b->nranks; r++)
    b->keys[r] = mix64(FILL_SEED + (uint64_t)r * 0x632be59bd9b4e019ULL);
  b->value_bits = value_bits_for(b->nranks);
  memset(b->send, 0, bytes);
  memset(b->recv, 0, bytes);
  if (b->opt->check) {
    memset(b->exact, 0, bytes);
    memset(b->reference, 0, bytes);
  }
  return LH_SUCCESS;
}

/* The run under test: every compression field from the flags (0: the library's default). */
static void make_run_variant(bench *b) {
  const bench_options *o = b->opt;
  lh_allreduce_config config = LH_ALLREDUCE_CONFIG_INIT;
  config.algo = o->algo;
  config.op = o->op;
  config.chunk_bytes = o->chunk_bytes; /* 0: LH_RING_CHUNK_BYTES, else the default */
  config.codec = o->codec;
  config.bits = o->bits;
  config.block = o->block;
  config.density = o->density;
  config.topk_chunk = o->topk_chunk;
  config.rounding = o->rounding;
  config.powersgd_rank = o->rank;
  config.zstd_level = o->zstd;
  config.error_feedback = o->ef; /* -1: default */
  config.warmup_steps = o->codec_warmup;
  config.seed = o->seed;
  variant *v = &b->run;
  v->config = config;
  v->exact = o->codec == LH_CODEC_NONE;
  v->ef = o->api == API_REDUCER && o->codec != LH_CODEC_NONE && o->ef != 0;
  v->bound = v->exact ? -1 : error_bound(o, b->nranks, v->ef);
  v->what = o->api == API_REDUCER ? "lh_reducer_allreduce" : "lh_allreduce";
}

/* --baseline: the uncompressed ring through lh_allreduce, as the plain benchmark runs it. */
static void make_base_variant(bench *b) {
  lh_allreduce_config config = LH_ALLREDUCE_CONFIG_INIT;
  config.algo = LH_ALLREDUCE_RING;
  config.op = b->opt->op;
  config.chunk_bytes = b->opt->chunk_bytes;
  b->base = (variant){.what = "lh_allreduce (baseline ring)", .config = config, .exact = 1, .bound = -1};
}

/* The library judges a setting before any output: lh_allreduce with one zero-element call on
 * every rank, the reducer when it is created. A refusal there (mpi on simulated links, a codec
 * the algorithm cannot run, a parameter out of range) is a usage error. */
static int judge_config(bench *b, const variant *v) {
  lh_status st = lh_allreduce(b->comm, NULL, NULL, 0, &v->config);
  int usage = st == LH_ERR_NOT_SUPPORTED || st == LH_ERR_INVALID_ARGUMENT;
  return setup_verdict(b->rank, b->opt->algo == LH_ALLREDUCE_MPI ? "--algo mpi" : "lh_allreduce", st,
                       usage ? EXIT_USAGE : 1);
}

/* Returns 0, or the exit code when a setup step failed on some rank. */
static int bench_setup(bench *b) {
  lh_comm_config cfg = LH_COMM_CONFIG_INIT; /* unset fields: the LH_* environment applies */
  int code = setup_verdict(b->rank, "lh_comm_create", lh_comm_create(&cfg, &b->comm), 1);
  if (!code)
    code = setup_verdict(b->rank, "reading the communicator", describe_comm(b), 1);
  make_run_variant(b);
  make_base_variant(b);
  if (!code && b->opt->api == API_ONESHOT)
    code = judge_config(b, &b->run);
  if (!code && b->opt->baseline)
    code = judge_config(b, &b->base);
  if (!code && b->opt->api == API_REDUCER) {
    lh_status st = lh_reducer_create(b->comm, &b->run.config, &b->run.reducer);
    int usage = st == LH_ERR_NOT_SUPPORTED || st == LH_ERR_INVALID_ARGUMENT;
    code = setup_verdict(b->rank, "lh_reducer_create", st, usage ? EXIT_USAGE : 1);
  }
  if (!code) {
    char what[96];
    snprintf(what, sizeof what, "allocating %d buffers of %zu bytes", b->opt->check ? 4 : 2, b->opt->max_bytes);
    code = setup_verdict(b->rank, what, allocate_buffers(b), 1);
  }
  return code;
}

static void bench_teardown(bench *b) {
  if (b->run.reducer)
    lh_reducer_free(b->run.reducer);
  free(b->keys);
  free(b->send);
  free(b->recv);
  free(b->exact);
  free(b->reference);
  lh_links_free(b->links);
  lh_comm_destroy(b->comm);
}

/* Runs every size (the baseline first at each size); returns the exit status. */
static int bench_run(bench *b) {
  if (b->rank == 0)
    print_header(b);
  double busbw_sum = 0;
  int sizes = 0;
  unsigned long long wrong = 0;
  for (size_t bytes = b->opt->min_bytes; bytes > 0; bytes = next_size(b->opt, bytes)) {
    size_result base = {0}, r = {0};
    fill_input(b, bytes / sizeof(float));
    if (b->opt->baseline) {
      measure_size(b, &b->base, bytes, &base);
      wrong += base.wrong;
      if (b->rank == 0)
        print_row(b, &b->base, bytes, &base, &base);
    }
    measure_size(b, &b->run, bytes, &r);
    wrong += r.wrong;
    sizes++;
    if (b->rank == 0)
      busbw_sum += print_row(b, &b->run, bytes, &r, b->opt->baseline ? &base : NULL);
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
  /* Thread-multiple, as the library asks when it initialises MPI itself: a reducer then moves
   * its messages on its own thread, as in training. */
  int provided = MPI_THREAD_SINGLE;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  bench_options opt;
  char err[512] = "";
  parse_result parsed = parse_args(argc, argv, &opt, err, sizeof err);
  if (parsed == PARSE_RUN && check_rows(&opt, err, sizeof err) != 0)
    parsed = PARSE_ERROR;
  int code = parsed == PARSE_ERROR ? EXIT_USAGE : 0;
  if (parsed == PARSE_HELP && rank == 0)
    fputs(usage_text, stdout);
  if (parsed == PARSE_ERROR && rank == 0)
    fprintf(stderr, "allreduce_perf: %s (see --help).\n", err);
  if (parsed == PARSE_RUN) {
    bench b = {.opt = &opt, .rank = rank, .mpi_thread = provided};
    code = bench_setup(&b);
    if (!code)
      code = bench_run(&b);
    bench_teardown(&b);
  }
  MPI_Finalize();
  return code;
}

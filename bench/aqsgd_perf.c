/* aqsgd_perf: the speed of AQ-SGD's quantizer kernels (kernels/aqsgd.cu) against the memory
 * bandwidth they must move, with their CPU twins (lib/aqsgd/quant.c) as the check; without a GPU,
 * the twins' own speed on one CPU thread. See aqsgd_perf.h for the operations and columns, and
 * --help for the flags. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aqsgd_perf.h"

static const char *const kTypeNames[] = {"fp32", "fp16", "bf16"};

/* ---- shared with the GPU part ------------------------------------------------------------------ */

void aqsgd_perf_shape(const aqsgd_perf_config *c, size_t elements, size_t *rows, size_t *tokens) {
  const size_t E = c->tokens * c->channels;
  if (elements >= E) {
    *rows = (elements + E / 2) / E;
    *tokens = c->tokens;
  } else {
    *rows = 1;
    *tokens = elements / c->channels ? elements / c->channels : 1;
  }
}

int aqsgd_perf_has_op(const aqsgd_perf_config *c, int op) {
  return op != AQSGD_OP_PER_CHANNEL || c->quantizer == LH_AQ_Q_PER_TOKEN_GROUP;
}

lh_aq_qparams aqsgd_perf_params(const aqsgd_perf_config *c, int op, size_t tokens) {
  lh_aq_qparams p;
  memset(&p, 0, sizeof p);
  p.tokens = tokens;
  p.channels = c->channels;
  p.bits = op == AQSGD_OP_BWD_ENCODE || op == AQSGD_OP_BWD_DECODE ? c->bwd_bits : c->bits;
  p.quantizer = op == AQSGD_OP_PER_CHANNEL ? LH_AQ_Q_PER_CHANNEL : c->quantizer;
  p.group = c->group;
  p.stochastic = c->stochastic;
  p.dtype = c->dtype;
  p.storage = c->storage;
  p.seed = 0x5EED5EED12345678ull;
  p.stream = op == AQSGD_OP_BWD_ENCODE || op == AQSGD_OP_BWD_DECODE ? 1u : 0u;
  return p;
}

double aqsgd_perf_bytes_per_elem(const lh_aq_qparams *p, int op, size_t rows) {
  const double n = (double)rows * (double)p->tokens * (double)p->channels;
  const double a = (double)lh_aq_dtype_bytes(p->dtype), m = (double)lh_aq_dtype_bytes(p->storage);
  const double packed = p->bits / 8.0 + 2.0 * (double)lh_aq_scale_count(p, rows) / n;
  switch (op) {
  case AQSGD_OP_SENDER:
  case AQSGD_OP_PER_CHANNEL: {
    double one_pass = a + 2 * m + packed;
    return p->quantizer == LH_AQ_Q_PER_CHANNEL ? one_pass + a + m : one_pass; /* + the scales pass */
  }
  case AQSGD_OP_RECEIVER: return packed + 2 * m + a;
  case AQSGD_OP_BWD_ENCODE: return p->quantizer == LH_AQ_Q_PER_CHANNEL ? 2 * a + packed : a + packed;
  default: return packed + a; /* AQSGD_OP_BWD_DECODE */
  }
}

void aqsgd_perf_title(const aqsgd_perf_config *c, int op, char *text, size_t size) {
  static const char *const what[] = {"sender: fused encode d = a - m, m' = m + q",
                                     "receiver: decode, m' = m + q in place, out = m'",
                                     "backward: direct encode (no m)", "backward: direct decode",
                                     "sender with PER_CHANNEL scales (scales pass + quantize pass)"};
  lh_aq_qparams p = aqsgd_perf_params(c, op, c->tokens);
  char quant[32];
  if (p.quantizer == LH_AQ_Q_PER_CHANNEL)
    snprintf(quant, sizeof quant, "per-channel");
  else
    snprintf(quant, sizeof quant, "group%d", p.group);
  snprintf(text, size, "%s (%s b%d %s, %s a, %s m, %zu x %zu per row)", what[op], quant, p.bits,
           p.stochastic ? "sr" : "rtn", kTypeNames[p.dtype], kTypeNames[p.storage], c->tokens, c->channels);
}

/* A fast fixed generator: xorshift64*, then the sum of 4 uniforms (about N(0, 1/3)), times 30
 * on every 7th channel (the large-gain channels of a residual stream). */
static uint64_t next_u64(uint64_t *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 2685821657736338717ull;
}
static float next_value(uint64_t *s) {
  uint64_t u = next_u64(s);
  float sum = 0.0f;
  for (int k = 0; k < 4; k++)
    sum += (float)((u >> (16 * k)) & 0xFFFFu) * (1.0f / 65536.0f);
  return 1.7f * (sum - 2.0f);
}

void aqsgd_perf_fill(const aqsgd_perf_config *c, size_t rows, size_t E, void *a, void *m, int64_t *ids,
                     uint32_t *visits, int64_t *slots) {
  uint64_t s = 0x9E3779B97F4A7C15ull;
  for (size_t r = 0; r < rows; r++) {
    ids[r] = (int64_t)(r * 7919 + 13);
    visits[r] = 3 + (uint32_t)(r % 5);
    slots[r] = (int64_t)(rows - 1 - r);
    for (size_t j = 0; j < E; j++) {
      float gain = (j % c->channels) % 7 == 3 ? 30.0f : 1.0f;
      float v = gain * next_value(&s);
      lh_aq_put(a, c->dtype, r * E + j, v);
      /* m(x): the last visit's value, close to a (the delta is what gets quantized). */
      lh_aq_put(m, c->storage, (size_t)slots[r] * E + j, v + 0.05f * gain * next_value(&s));
    }
  }
}

long aqsgd_perf_count_different(const void *x, const void *y, size_t count, size_t size) {
  long bad = 0;
  const unsigned char *p = x, *q = y;
  for (size_t i = 0; i < count; i++)
    bad += memcmp(p + i * size, q + i * size, size) != 0;
  return bad;
}

void aqsgd_perf_table_header(const char *title, const char *device) {
  printf("\n# %s on %s\n", title, device);
  printf("#%11s %10s %9s %10s %9s %6s %7s\n", "elements", "time(us)", "Gelem/s", "bytes/elem", "GB/s", "%copy",
         "#wrong");
}

void aqsgd_perf_row(size_t elements, double seconds, double bytes_per_elem, double copy_frac, long wrong) {
  char frac[16] = "-";
  double gbps = 1e-9 * bytes_per_elem * (double)elements / seconds;
  if (copy_frac >= 0)
    snprintf(frac, sizeof frac, "%.1f", 100.0 * copy_frac);
  printf(" %11zu %10.2f %9.2f %10.2f %9.1f %6s %7ld\n", elements, 1e6 * seconds, 1e-9 * (double)elements / seconds,
         bytes_per_elem, gbps, frac, wrong);
  fflush(stdout);
}

/* ---- the CPU rows ------------------------------------------------------------------------------- */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct cpu_bufs {
  void *a, *m, *m_rx, *m_save, *out;
  uint16_t *scales;
  uint8_t *codes, *codes2;
  int64_t *ids, *slots;
  uint32_t *visits;
} cpu_bufs;

/* One operation's twin call (the sender includes its scales pass when per-channel). */
static void cpu_run(const lh_aq_qparams *p, int op, size_t rows, cpu_bufs *b, void *m, uint8_t *codes) {
  switch (op) {
  case AQSGD_OP_SENDER:
  case AQSGD_OP_PER_CHANNEL:
  case AQSGD_OP_BWD_ENCODE: {
    void *mm = op == AQSGD_OP_BWD_ENCODE ? NULL : m;
    if (p->quantizer == LH_AQ_Q_PER_CHANNEL)
      lh_aq_channel_scales(p, b->a, NULL, mm, b->slots, rows, b->scales);
    lh_aq_encode(p, b->a, NULL, mm, b->slots, b->ids, b->visits, rows, b->scales, codes);
    break;
  }
  case AQSGD_OP_RECEIVER:
    lh_aq_decode(p, codes, b->scales, m, b->slots, rows, b->out, NULL);
    break;
  default:
    lh_aq_decode(p, codes, b->scales, NULL, NULL, rows, b->out, NULL);
  }
}

/* Times one operation at one size on the CPU and checks it: an encoder run twice from the same m
 * gives the same bytes; a receiver that starts from the sender's old m ends with the sender's m'
 * and outputs it; a decode run twice gives the same values. */
static long cpu_case(const aqsgd_perf_config *c, int op, size_t rows, size_t tokens, cpu_bufs *b) {
  const lh_aq_qparams p = aqsgd_perf_params(c, op, tokens);
  const size_t E = tokens * c->channels, n = rows * E;
  const size_t asz = lh_aq_dtype_bytes(c->dtype), msz = lh_aq_dtype_bytes(c->storage);
  const size_t ncode = lh_aq_code_bytes(&p, rows);
  const int modifies_m = op == AQSGD_OP_SENDER || op == AQSGD_OP_PER_CHANNEL || op == AQSGD_OP_RECEIVER;
  aqsgd_perf_fill(c, rows, E, b->a, b->m, b->ids, b->visits, b->slots);
  memcpy(b->m_save, b->m, n * msz);
  long wrong = 0;
  switch (op) {
  case AQSGD_OP_SENDER:
  case AQSGD_OP_PER_CHANNEL:
  case AQSGD_OP_BWD_ENCODE:
    cpu_run(&p, op, rows, b, b->m, b->codes);
    memcpy(b->m_rx, b->m_save, n * msz);
    cpu_run(&p, op, rows, b, b->m_rx, b->codes2);
    wrong += aqsgd_perf_count_different(b->codes, b->codes2, ncode, 1);
    wrong += aqsgd_perf_count_different(b->m, b->m_rx, n, msz);
    if (op != AQSGD_OP_BWD_ENCODE) {
      memcpy(b->m_rx, b->m_save, n * msz);
      lh_aq_decode(&p, b->codes, b->scales, b->m_rx, b->slots, rows, b->out, NULL);
      wrong += aqsgd_perf_count_different(b->m, b->m_rx, n, msz);
    }
    break;
  case AQSGD_OP_RECEIVER: {
    const lh_aq_qparams sender = aqsgd_perf_params(c, AQSGD_OP_SENDER, tokens);
    cpu_run(&sender, AQSGD_OP_SENDER, rows, b, b->m, b->codes);
    memcpy(b->m_rx, b->m_save, n * msz);
    cpu_run(&p, op, rows, b, b->m_rx, b->codes);
    wrong += aqsgd_perf_count_different(b->m, b->m_rx, n, msz);
    for (size_t r = 0; r < rows; r++) /* out row r is m' of its slot, in the dtype */
      for (size_t j = 0; j < E; j++) {
        unsigned char want[4];
        lh_aq_put(want, c->dtype, 0, lh_aq_load(b->m_rx, c->storage, (size_t)b->slots[r] * E + j));
        wrong += memcmp(want, (unsigned char *)b->out + (r * E + j) * asz, asz) != 0;
      }
    break;
  }
  default: { /* backward decode */
    const lh_aq_qparams encoder = aqsgd_perf_params(c, AQSGD_OP_BWD_ENCODE, tokens);
    cpu_run(&encoder, AQSGD_OP_BWD_ENCODE, rows, b, NULL, b->codes);
    cpu_run(&p, op, rows, b, NULL, b->codes);
    memcpy(b->m_rx, b->out, n * asz);
    cpu_run(&p, op, rows, b, NULL, b->codes);
    wrong += aqsgd_perf_count_different(b->m_rx, b->out, n, asz);
  }
  }
  /* Timing: calls that update m start from the same m each time (restored, untimed). */
  double total = 0;
  for (int it = 0; it < c->iters; it++) {
    if (modifies_m)
      memcpy(b->m_rx, b->m_save, n * msz);
    const int encoder = op == AQSGD_OP_SENDER || op == AQSGD_OP_PER_CHANNEL || op == AQSGD_OP_BWD_ENCODE;
    double t0 = now_s();
    cpu_run(&p, op, rows, b, b->m_rx, encoder ? b->codes2 : b->codes);
    total += now_s() - t0;
  }
  aqsgd_perf_row(n, total / c->iters, aqsgd_perf_bytes_per_elem(&p, op, rows), -1, wrong);
  return wrong;
}

void aqsgd_perf_largest(const aqsgd_perf_config *c, size_t *max_n, size_t *max_rows) {
  *max_n = *max_rows = 0;
  for (int s = 0; s < c->nsizes; s++) {
    size_t rows, tokens;
    aqsgd_perf_shape(c, c->sizes[s], &rows, &tokens);
    *max_n = rows * tokens * c->channels > *max_n ? rows * tokens * c->channels : *max_n;
    *max_rows = rows > *max_rows ? rows : *max_rows;
  }
}

static long cpu_tables(const aqsgd_perf_config *c) {
  size_t max_n, max_rows;
  aqsgd_perf_largest(c, &max_n, &max_rows);
  cpu_bufs b;
  b.a = malloc(max_n * 4);
  b.m = malloc(max_n * 4);
  b.m_rx = malloc(max_n * 4);
  b.m_save = malloc(max_n * 4);
  b.out = malloc(max_n * 4);
  b.scales = malloc((max_n / 32 + c->channels + 1) * 2);
  b.codes = malloc(max_n + 8);
  b.codes2 = malloc(max_n + 8);
  b.ids = malloc(max_rows * sizeof *b.ids);
  b.slots = malloc(max_rows * sizeof *b.slots);
  b.visits = malloc(max_rows * sizeof *b.visits);
  long wrong = 0;
  if (!b.a || !b.m || !b.m_rx || !b.m_save || !b.out || !b.scales || !b.codes || !b.codes2 || !b.ids || !b.slots ||
      !b.visits) {
    fprintf(stderr, "aqsgd_perf: cannot allocate host buffers for %zu elements\n", max_n);
    wrong = 1;
  }
  for (int op = 0; op < AQSGD_OP_COUNT && !wrong; op++) {
    if (!aqsgd_perf_has_op(c, op))
      continue;
    char title[256];
    aqsgd_perf_title(c, op, title, sizeof title);
    aqsgd_perf_table_header(title, "cpu (1 thread, the twins)");
    for (int s = 0; s < c->nsizes; s++) {
      size_t rows, tokens;
      aqsgd_perf_shape(c, c->sizes[s], &rows, &tokens);
      wrong += cpu_case(c, op, rows, tokens, &b);
    }
  }
  free(b.a);
  free(b.m);
  free(b.m_rx);
  free(b.m_save);
  free(b.out);
  free(b.scales);
  free(b.codes);
  free(b.codes2);
  free(b.ids);
  free(b.slots);
  free(b.visits);
  return wrong;
}

/* ---- the command line --------------------------------------------------------------------------- */

static void usage(FILE *f) {
  fprintf(f,
          "Usage: aqsgd_perf [--sizes N[,N...]] [--iters N] [--dtype T] [--storage T] [--bits B]\n"
          "                  [--bwd-bits B] [--quantizer Q] [--group G] [--rounding R] [--tokens T]\n"
          "                  [--channels C] [--cpu] [--no-gpu]\n"
          "  Times AQ-SGD's quantizer kernels (sender fused encode, receiver decode, backward direct\n"
          "  encode and decode, the per-channel sender) against the device's copy bandwidth, and checks\n"
          "  every GPU byte against the CPU twin (#wrong). Without a GPU: the CPU twins' rows.\n"
          "  --sizes N,...   elements per call, whole rows of tokens x channels (suffixes K M G, powers\n"
          "                  of 2; default 1536K,8M,32M,128M: 12 to 1024 rows of 128 x 1024)\n"
          "  --iters N       timed repetitions per row (default 20)\n"
          "  --dtype T       activations and gradients: fp32 fp16 bf16 (default fp16)\n"
          "  --storage T     the buffers m(x): fp32 fp16 bf16 (default fp16)\n"
          "  --bits B        forward code width, 2-8 (default 2)\n"
          "  --bwd-bits B    backward code width, 2-8 (default twice --bits, at most 8)\n"
          "  --quantizer Q   group (PER_TOKEN_GROUP, default) or channel (PER_CHANNEL)\n"
          "  --group G       channels per scale for group: 32 64 128 (default 128)\n"
          "  --rounding R    nearest (default) or stochastic\n"
          "  --tokens T      tokens per example (default 128)\n"
          "  --channels C    channels per token (default 1024)\n"
          "  --cpu           the CPU twins' rows as well\n"
          "  --no-gpu        the CPU twins' rows only\n"
          "Columns: elements, time(us) per call, Gelem/s, bytes/elem the kernels must move (a, m read\n"
          "and written, codes, scales; 6.27 for the fp16 sender at 2 bits), GB/s of those bytes, %%copy\n"
          "of the measured device-to-device copy bandwidth, #wrong. Exits 1 when any row has #wrong > 0.\n");
}

static int refuse(const char *fmt, const char *arg) {
  fprintf(stderr, "aqsgd_perf: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, " (see --help).\n");
  return 2;
}

static int parse_type(const char *s, int *t) {
  for (int k = 0; k < 3; k++)
    if (!strcmp(s, kTypeNames[k])) {
      *t = k;
      return 0;
    }
  return -1;
}

static int parse_int(const char *s, int lo, int hi, int *v) {
  char *end;
  long x = strtol(s, &end, 10);
  if (*s == '\0' || *end || x < lo || x > hi)
    return -1;
  *v = (int)x;
  return 0;
}

static int parse_count(const char *s, size_t *out) {
  char *end;
  double v = strtod(s, &end);
  double mult = 1;
  if (*end == 'K' || *end == 'k')
    mult = 1024, end++;
  else if (*end == 'M' || *end == 'm')
    mult = 1024.0 * 1024, end++;
  else if (*end == 'G' || *end == 'g')
    mult = 1024.0 * 1024 * 1024, end++;
  if (*end || !(v >= 1) || v * mult > 1e12)
    return -1;
  *out = (size_t)(v * mult);
  return 0;
}

int main(int argc, char **argv) {
  aqsgd_perf_config c;
  memset(&c, 0, sizeof c);
  c.tokens = 128;
  c.channels = 1024;
  c.dtype = LH_AQ_T_FP16;
  c.storage = LH_AQ_T_FP16;
  c.bits = 2;
  c.bwd_bits = 0;
  c.quantizer = LH_AQ_Q_PER_TOKEN_GROUP;
  c.group = 128;
  c.iters = 20;
  int gpu = 1, cpu = 0, v;
  for (int i = 1; i < argc; i++) {
    const char *flag = argv[i], *arg = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(flag, "--help") || !strcmp(flag, "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(flag, "--cpu")) {
      cpu = 1;
      continue;
    } else if (!strcmp(flag, "--no-gpu")) {
      gpu = 0;
      continue;
    }
    if (!arg)
      return refuse("'%s' needs a value", flag);
    i++;
    if (!strcmp(flag, "--sizes")) {
      char *list = strdup(arg), *save = NULL;
      for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (c.nsizes == AQSGD_PERF_MAX_SIZES || parse_count(tok, &c.sizes[c.nsizes])) {
          free(list);
          return refuse("--sizes '%s': expected up to 16 element counts such as 1536K,8M", arg);
        }
        c.nsizes++;
      }
      free(list);
      if (!c.nsizes)
        return refuse("--sizes '%s': expected up to 16 element counts such as 1536K,8M", arg);
    } else if (!strcmp(flag, "--iters")) {
      if (parse_int(arg, 1, 1000000, &c.iters))
        return refuse("--iters '%s': expected a whole number >= 1", arg);
    } else if (!strcmp(flag, "--dtype")) {
      if (parse_type(arg, &c.dtype))
        return refuse("--dtype '%s': expected fp32, fp16 or bf16", arg);
    } else if (!strcmp(flag, "--storage")) {
      if (parse_type(arg, &c.storage))
        return refuse("--storage '%s': expected fp32, fp16 or bf16", arg);
    } else if (!strcmp(flag, "--bits")) {
      if (parse_int(arg, 2, 8, &c.bits))
        return refuse("--bits '%s': expected 2 to 8", arg);
    } else if (!strcmp(flag, "--bwd-bits")) {
      if (parse_int(arg, 2, 8, &c.bwd_bits))
        return refuse("--bwd-bits '%s': expected 2 to 8", arg);
    } else if (!strcmp(flag, "--quantizer")) {
      if (!strcmp(arg, "group"))
        c.quantizer = LH_AQ_Q_PER_TOKEN_GROUP;
      else if (!strcmp(arg, "channel"))
        c.quantizer = LH_AQ_Q_PER_CHANNEL;
      else
        return refuse("--quantizer '%s': expected group or channel", arg);
    } else if (!strcmp(flag, "--group")) {
      if (parse_int(arg, 32, 128, &c.group) || (c.group != 32 && c.group != 64 && c.group != 128))
        return refuse("--group '%s': expected 32, 64 or 128", arg);
    } else if (!strcmp(flag, "--rounding")) {
      if (!strcmp(arg, "nearest"))
        c.stochastic = 0;
      else if (!strcmp(arg, "stochastic"))
        c.stochastic = 1;
      else
        return refuse("--rounding '%s': expected nearest or stochastic", arg);
    } else if (!strcmp(flag, "--tokens")) {
      if (parse_int(arg, 1, 1 << 24, &v))
        return refuse("--tokens '%s': expected a whole number >= 1", arg);
      c.tokens = (size_t)v;
    } else if (!strcmp(flag, "--channels")) {
      if (parse_int(arg, 1, 1 << 24, &v))
        return refuse("--channels '%s': expected a whole number >= 1", arg);
      c.channels = (size_t)v;
    } else {
      return refuse("unknown flag '%s'", flag);
    }
  }
  if (!c.bwd_bits)
    c.bwd_bits = 2 * c.bits > 8 ? 8 : 2 * c.bits;
  if (c.quantizer == LH_AQ_Q_PER_TOKEN_GROUP && c.channels % (size_t)c.group != 0) {
    char text[64];
    snprintf(text, sizeof text, "%zu", c.channels);
    return refuse("--channels %s: the group must divide the channels (or use --quantizer channel)", text);
  }
  if (!c.nsizes) {
    const size_t defaults[] = {1536u << 10, 8u << 20, 32u << 20, 128u << 20};
    for (int s = 0; s < 4; s++)
      c.sizes[c.nsizes++] = defaults[s];
  }

  printf("# aqsgd_perf: %d timed calls per row; one call = all rows (examples) of a micro-batch\n", c.iters);
  long wrong = 0;
  long g = gpu ? lh_aqsgd_perf_gpu(&c) : -1;
  if (g > 0)
    wrong += g;
  if (!gpu || g < 0 || cpu) {
    if (!gpu)
      printf("# GPU rows: not asked for (--no-gpu)\n");
    wrong += cpu_tables(&c);
  }
  printf("\n# %s: %ld wrong\n", wrong ? "FAILED" : "OK", wrong);
  return wrong ? 1 : 0;
}

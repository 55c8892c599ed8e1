/* codec_perf: encode and decode throughput of every codec, with its compression ratio and
 * error, on one CPU core and (built with CUDA, when a GPU is present) on the GPU.
 *
 *   codec_perf [--size BYTES]... [--iters N] [--codec NAME] [--no-gpu] [--csv]
 *
 * CPU rows time the public API (lh_codec_encode / lh_codec_decode: the frame and its CRC
 * included) on one thread. The target is >= 2 GB/s per core for encode and decode on 16 MiB
 * inputs for every codec except exact top-k and PowerSGD; the last lines say which rows meet
 * it. #wrong on CPU rows counts elements where a second encode or decode gave other bits
 * (the codecs are deterministic); GPU rows compare against the CPU twins. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <longhaul/compress.h>
#include <longhaul/status.h>

#include "codec_perf.h"

void openblas_set_num_threads(int num_threads); /* OpenBLAS: PowerSGD rows use one core */

static int csv_output = 0;

void lh_codec_perf_header(void) {
  if (csv_output) {
    printf("codec,params,device,size_B,count,enc_GBps,dec_GBps,ratio,relerr,moved_B_per_elem,copy_frac,wrong\n");
    return;
  }
  printf("#%11s %-22s %-12s %12s %10s %9s %9s %8s %9s %7s %6s %7s\n", "codec", "params", "device",
         "size(B)", "count", "enc(GB/s)", "dec(GB/s)", "ratio", "relerr", "moved", "copy%", "#wrong");
}

void lh_codec_perf_print(const lh_codec_perf_row *r) {
  char moved[16] = "-", frac[16] = "-", dec[16] = "-";
  if (r->moved_per_elem >= 0)
    snprintf(moved, sizeof moved, "%.2f", r->moved_per_elem);
  if (r->copy_frac >= 0)
    snprintf(frac, sizeof frac, "%.0f", 100.0 * r->copy_frac);
  if (r->dec_gbps >= 0)
    snprintf(dec, sizeof dec, "%.2f", r->dec_gbps);
  if (csv_output)
    printf("%s,%s,%s,%zu,%zu,%.3f,%s,%.3f,%.3e,%s,%s,%ld\n", r->codec, r->params, r->device, r->bytes,
           r->bytes / 4, r->enc_gbps, dec, r->ratio, r->relerr, moved, frac, r->wrong);
  else
    printf(" %11s %-22s %-12.12s %12zu %10zu %9.2f %9s %8.2f %9.2e %7s %6s %7ld\n", r->codec, r->params,
           r->device, r->bytes, r->bytes / 4, r->enc_gbps, dec, r->ratio, r->relerr, moved, frac, r->wrong);
  fflush(stdout);
}

typedef struct codec_case {
  const char *codec;
  lh_codec_id id;
  const char *params;
  int np;
  struct { lh_codec_param p; int v; } set[4];
  int exempt; /* not held to the 2 GB/s target (exact top-k, PowerSGD) */
} codec_case;

static const codec_case cases[] = {
    {"none", LH_CODEC_NONE, "fp32 verbatim", 0, {{0, 0}}, 0},
    {"fp16", LH_CODEC_FP16, "rne", 0, {{0, 0}}, 0},
    {"bf16", LH_CODEC_BF16, "rne", 0, {{0, 0}}, 0},
    {"blockq", LH_CODEC_BLOCKQ, "b8 B128 rtn", 1, {{LH_CP_BITS, 8}}, 0},
    {"blockq", LH_CODEC_BLOCKQ, "b8 B128 rtn fp16s", 2, {{LH_CP_BITS, 8}, {LH_CP_SCALE_TYPE, LH_SCALE_FP16}}, 0},
    {"blockq", LH_CODEC_BLOCKQ, "b4 B128 rtn", 1, {{LH_CP_BITS, 4}}, 0},
    {"blockq", LH_CODEC_BLOCKQ, "b4 B128 sr", 2, {{LH_CP_BITS, 4}, {LH_CP_ROUNDING, LH_ROUND_STOCHASTIC}}, 0},
    {"blockq", LH_CODEC_BLOCKQ, "b3 B128 rtn", 1, {{LH_CP_BITS, 3}}, 0},
    {"blockq", LH_CODEC_BLOCKQ, "b2 B128 rtn", 1, {{LH_CP_BITS, 2}}, 0},
    {"blockq", LH_CODEC_BLOCKQ, "b2 B128 sr", 2, {{LH_CP_BITS, 2}, {LH_CP_ROUNDING, LH_ROUND_STOCHASTIC}}, 0},
    {"blockq", LH_CODEC_BLOCKQ, "b1 B128 rtn", 1, {{LH_CP_BITS, 1}}, 0},
    {"blockq", LH_CODEC_BLOCKQ, "b8 B128 rtn +EF", 2, {{LH_CP_BITS, 8}, {LH_CP_ERROR_FEEDBACK, 1}}, 0},
    {"blockq", LH_CODEC_BLOCKQ, "b4 B128 rtn +zstd1", 2, {{LH_CP_BITS, 4}, {LH_CP_ZSTD_LEVEL, 1}}, 0},
    {"sharedq", LH_CODEC_SHAREDQ, "b8 ranks4 (int16)", 2, {{LH_CP_BITS, 8}, {LH_CP_RANKS, 4}}, 0},
    {"sharedq", LH_CODEC_SHAREDQ, "b4 ranks16 (int8)", 2, {{LH_CP_BITS, 4}, {LH_CP_RANKS, 16}}, 0},
    {"sign", LH_CODEC_SIGN, "B128", 0, {{0, 0}}, 0},
    {"sign", LH_CODEC_SIGN, "B128 +EF", 1, {{LH_CP_ERROR_FEEDBACK, 1}}, 0},
    {"topk", LH_CODEC_TOPK, "1% exact C4096", 0, {{0, 0}}, 1},
    {"topk", LH_CODEC_TOPK, "1% sampled C4096", 1, {{LH_CP_TOPK_METHOD, LH_TOPK_SAMPLED}}, 0},
    {"topk", LH_CODEC_TOPK, "1% sampled +EF", 2, {{LH_CP_TOPK_METHOD, LH_TOPK_SAMPLED}, {LH_CP_ERROR_FEEDBACK, 1}}, 0},
    {"randk", LH_CODEC_RANDK, "1% C4096", 0, {{0, 0}}, 0},
    {"powersgd", LH_CODEC_POWERSGD, "r2 rows4096", 2, {{LH_CP_RANK, 2}, {LH_CP_ROWS, 4096}}, 1},
    {"powersgd", LH_CODEC_POWERSGD, "r4 rows4096", 2, {{LH_CP_RANK, 4}, {LH_CP_ROWS, 4096}}, 1},
};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void lh_codec_perf_fill_input(float *x, size_t n) {
  uint64_t s = 0x9E3779B97F4A7C15ull;
  for (size_t i = 0; i < n; i += 2) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    double u1 = ((double)(s >> 11) + 1.0) * 0x1p-53;
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    double u2 = (double)(s >> 11) * 0x1p-53;
    double r = sqrt(-2.0 * log(u1));
    x[i] = (float)(r * cos(6.283185307179586 * u2));
    if (i + 1 < n)
      x[i + 1] = (float)(r * sin(6.283185307179586 * u2));
  }
  for (size_t i = 0; i < n; i += 9973)
    x[i] *= 20.0f;
}

static int die(const char *what) {
  fprintf(stderr, "codec_perf: %s: %s (%s)\n", what, lh_status_string(LH_ERR_INTERNAL), lh_last_error());
  return 1;
}

typedef struct target_tally {
  int met, checked;
  char missed[2048];
} target_tally;

/* Times one case at one size; returns the number of wrong elements, or -1 on failure. */
static long run_cpu_case(const codec_case *k, const float *x, size_t n, int iters, target_tally *t) {
  lh_codec *c;
  if (lh_codec_create(k->id, &c) != LH_SUCCESS)
    return die("lh_codec_create"), -1;
  for (int i = 0; i < k->np; i++)
    if (lh_codec_set_param(c, k->set[i].p, k->set[i].v) != LH_SUCCESS)
      return die("lh_codec_set_param"), lh_codec_free(c), -1;
  if (lh_codec_max_wire_bytes(c, n) == 0) { /* PowerSGD: n is not a whole matrix of these rows */
    printf("# %s %s: skipped, %zu elements are not a matrix of these rows\n", k->codec, k->params, n);
    lh_codec_free(c);
    return 0;
  }
  if (k->id == LH_CODEC_SHAREDQ) { /* one rank's own scales stand in for the agreed ones */
    size_t ns = lh_codec_scale_count(c, n);
    float *s = malloc((ns + 1) * sizeof *s);
    if (!s || lh_codec_local_scales(c, x, n, s) || lh_codec_set_scales(c, s, ns))
      return die("shared scales"), free(s), lh_codec_free(c), -1;
    free(s);
  }
  size_t cap = lh_codec_max_wire_bytes(c, n), used = 0, used2 = 0;
  unsigned char *wire = malloc(cap), *wire2 = malloc(cap);
  float *y = malloc(n * sizeof *y), *y2 = malloc(n * sizeof *y2);
  long wrong = -1;
  if (!wire || !wire2 || !y || !y2) {
    fprintf(stderr, "codec_perf: out of memory for %zu elements\n", n);
    goto done;
  }
  /* Warm-up (page faults, PowerSGD's first Q), then the timed loops. With error feedback on,
   * each encode sees the residual of the last, as in training. */
  if (lh_codec_encode(c, x, n, wire, cap, &used) || lh_codec_decode(c, wire, used, y, n)) {
    die("warm-up");
    goto done;
  }
  /* The error of one step from a zero residual: later steps of the timed loop re-encode the
   * same x with the residual grown, which measures speed, not the codec's error. */
  double err = 0, norm = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)x[i] - y[i];
    err += d * d;
    norm += (double)x[i] * x[i];
  }
  double t0 = now_s();
  for (int it = 0; it < iters; it++)
    if (lh_codec_encode(c, x, n, wire, cap, &used)) {
      die("encode");
      goto done;
    }
  double t_enc = (now_s() - t0) / iters;
  t0 = now_s();
  for (int it = 0; it < iters; it++)
    if (lh_codec_decode(c, wire, used, y, n)) {
      die("decode");
      goto done;
    }
  double t_dec = (now_s() - t0) / iters;

  /* Determinism: a fresh context gives the same frame (without feedback, whose residual makes
   * each encode differ by design) and decoding twice the same floats. */
  wrong = 0;
  if (lh_codec_decode(c, wire, used, y2, n)) {
    die("decode");
    wrong = -1;
    goto done;
  }
  for (size_t i = 0; i < n; i++)
    wrong += memcmp(&y[i], &y2[i], sizeof *y) != 0;
  int ef = 0;
  lh_codec_get_param(c, LH_CP_ERROR_FEEDBACK, &ef); /* NOT_SUPPORTED for none: stays 0 */
  if (!ef && k->id != LH_CODEC_POWERSGD) {
    lh_codec *fresh;
    if (lh_codec_create(k->id, &fresh) == LH_SUCCESS) {
      for (int i = 0; i < k->np; i++)
        lh_codec_set_param(fresh, k->set[i].p, k->set[i].v);
      if (k->id == LH_CODEC_SHAREDQ) {
        size_t ns = lh_codec_scale_count(fresh, n);
        float *s = malloc((ns + 1) * sizeof *s);
        if (s && !lh_codec_local_scales(fresh, x, n, s))
          lh_codec_set_scales(fresh, s, ns);
        free(s);
      }
      if (lh_codec_encode(fresh, x, n, wire2, cap, &used2) || used2 != used || memcmp(wire, wire2, used))
        wrong += (long)n; /* count the whole tensor: the frame is not reproducible */
      lh_codec_free(fresh);
    }
  }

  lh_codec_perf_row row = {k->codec, k->params, "cpu", n * 4, 1e-9 * n * 4 / t_enc, 1e-9 * n * 4 / t_dec,
                           (double)(n * 4) / (double)used, norm > 0 ? sqrt(err / norm) : 0.0, -1, -1, wrong};
  lh_codec_perf_print(&row);
  if (!k->exempt && n * 4 >= (16u << 20)) {
    t->checked++;
    if (row.enc_gbps >= 2.0 && row.dec_gbps >= 2.0) {
      t->met++;
    } else {
      size_t len = strlen(t->missed);
      snprintf(t->missed + len, sizeof t->missed - len, "%s%s %s (%.2f/%.2f)", len ? "; " : "", k->codec,
               k->params, row.enc_gbps, row.dec_gbps);
    }
  }
done:
  free(wire);
  free(wire2);
  free(y);
  free(y2);
  lh_codec_free(c);
  return wrong;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: codec_perf [--size BYTES]... [--iters N] [--codec NAME] [--no-gpu] [--csv]\n"
          "  Encode/decode throughput, compression ratio and relative error of every codec.\n"
          "  --size BYTES   fp32 input size (repeatable; suffixes K M G; default 16M)\n"
          "  --iters N      timed repetitions per row (default 5)\n"
          "  --codec NAME   only this codec (none fp16 bf16 blockq sharedq sign topk randk powersgd)\n"
          "  --no-gpu       CPU rows only (GPU rows need a CUDA build and a device)\n"
          "  --csv          comma-separated output\n"
          "Exits 1 when any row has #wrong > 0.\n");
}

static int parse_size(const char *s, size_t *out) {
  char *end;
  double v = strtod(s, &end);
  double mult = 1;
  if (*end == 'K' || *end == 'k') mult = 1024, end++;
  else if (*end == 'M' || *end == 'm') mult = 1024.0 * 1024, end++;
  else if (*end == 'G' || *end == 'g') mult = 1024.0 * 1024 * 1024, end++;
  if (*end || v <= 0 || v * mult < 4)
    return -1;
  *out = (size_t)(v * mult) / 4 * 4;
  return 0;
}

int main(int argc, char **argv) {
  size_t sizes[16];
  int nsizes = 0, iters = 5, gpu = 1;
  const char *only = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--size") && i + 1 < argc) {
      if (nsizes == 16 || parse_size(argv[++i], &sizes[nsizes]))
        return fprintf(stderr, "codec_perf: bad --size '%s' (at most 16; e.g. 16M)\n", argv[i]), 2;
      nsizes++;
    } else if (!strcmp(a, "--iters") && i + 1 < argc) {
      iters = atoi(argv[++i]);
      if (iters < 1)
        return fprintf(stderr, "codec_perf: --iters must be >= 1\n"), 2;
    } else if (!strcmp(a, "--codec") && i + 1 < argc) {
      only = argv[++i];
      lh_codec_id id;
      if (lh_codec_parse(only, &id))
        return fprintf(stderr, "codec_perf: %s\n", lh_last_error()), 2;
    } else if (!strcmp(a, "--no-gpu")) {
      gpu = 0;
    } else if (!strcmp(a, "--csv")) {
      csv_output = 1;
    } else {
      fprintf(stderr, "codec_perf: unknown option '%s'\n", a);
      usage(stderr);
      return 2;
    }
  }
  if (!nsizes)
    sizes[nsizes++] = 16u << 20;
  openblas_set_num_threads(1);

  size_t max_bytes = 0;
  for (int s = 0; s < nsizes; s++)
    max_bytes = sizes[s] > max_bytes ? sizes[s] : max_bytes;
  float *x = malloc(max_bytes);
  if (!x)
    return fprintf(stderr, "codec_perf: cannot allocate %zu bytes\n", max_bytes), 1;
  lh_codec_perf_fill_input(x, max_bytes / 4);

  printf("# codec_perf: one CPU thread, public API (frame + CRC-32C included), %d iterations per row\n", iters);
  printf("# input: N(0,1) with every 9973rd element x20; ratio = fp32 bytes / frame bytes\n");
  lh_codec_perf_header();
  long wrong = 0;
  target_tally tally = {0, 0, ""};
  for (int s = 0; s < nsizes; s++) {
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
      if (only && strcmp(only, cases[k].codec))
        continue;
      long w = run_cpu_case(&cases[k], x, sizes[s] / 4, iters, &tally);
      wrong += w < 0 ? 1 : w;
    }
  }
  if (tally.checked)
    printf("# CPU target >= 2 GB/s per core (encode and decode, 16 MiB, exact top-k and PowerSGD exempt): "
           "%d of %d rows met%s%s\n", tally.met, tally.checked, tally.missed[0] ? "; below: " : "", tally.missed);
  if (gpu) {
    long g = lh_codec_perf_gpu(sizes, nsizes, iters, only);
    if (g > 0)
      wrong += g;
  }
  free(x);
  printf("# %s: %ld wrong\n", wrong ? "FAILED" : "OK", wrong);
  return wrong ? 1 : 0;
}

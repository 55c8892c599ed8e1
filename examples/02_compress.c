/* 02_compress: compress a gradient for the wire with a codec, and keep error feedback so that
 * what the codec drops is sent later rather than lost.
 *
 *   02_compress [codec] [bits]      e.g. 02_compress blockq 4  (defaults: blockq 4)
 *
 * Each step encodes one "gradient" into a frame, decodes it as the receiver would, and keeps
 * a running sum of both. With error feedback the two sums stay close however lossy the codec
 * (the gap is the residual, which stays bounded while the sums grow); the last line prints
 * how close, and how far apart they drift without feedback. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <longhaul/longhaul.h>

#define N 100000
#define STEPS 50

static int fail(const char *what) {
  fprintf(stderr, "02_compress: %s: %s\n", what, lh_last_error());
  return 1;
}

/* Runs STEPS steps of one codec, with or without error feedback; returns 0 and the wire ratio
 * and the relative gap between the running sums, or 1 after printing why it failed. */
static int run(lh_codec_id id, int bits, int feedback, double *ratio, double *drift) {
  lh_codec *codec;
  if (lh_codec_create(id, &codec) != LH_SUCCESS)
    return fail("lh_codec_create");
  if (id == LH_CODEC_BLOCKQ && lh_codec_set_param(codec, LH_CP_BITS, bits))
    return fail("bits");
  if (id == LH_CODEC_POWERSGD && lh_codec_set_param(codec, LH_CP_ROWS, 250)) /* 250 x 400 */
    return fail("rows");
  if (id != LH_CODEC_NONE && lh_codec_set_param(codec, LH_CP_ERROR_FEEDBACK, feedback))
    return fail("error feedback");

  size_t cap = lh_codec_max_wire_bytes(codec, N), used = 0;
  unsigned char *wire = malloc(cap);
  float *grad = malloc(N * sizeof *grad), *received = malloc(N * sizeof *received);
  double *sum_sent = calloc(N, sizeof *sum_sent), *sum_received = calloc(N, sizeof *sum_received);
  if (!wire || !grad || !received || !sum_sent || !sum_received)
    return fprintf(stderr, "02_compress: out of memory\n"), 1;

  for (int step = 0; step < STEPS; step++) {
    for (size_t i = 0; i < N; i++) /* a persistent direction plus step-to-step wobble */
      grad[i] = 0.01f * sinf(0.001f * (float)i) + 0.1f * sinf((float)(i * 7919 + step * 104729));
    lh_codec_set_key(codec, 42, (uint64_t)step, 0); /* same seed everywhere, one step each */
    if (id == LH_CODEC_SHAREDQ) { /* one rank: its own scales are the agreed ones */
      size_t ns = lh_codec_scale_count(codec, N);
      float *scales = malloc(ns * sizeof *scales);
      if (!scales || lh_codec_local_scales(codec, grad, N, scales) || lh_codec_set_scales(codec, scales, ns))
        return fail("shared scales");
      free(scales);
    }
    if (lh_codec_encode(codec, grad, N, wire, cap, &used) != LH_SUCCESS)
      return fail("encode");
    /* ... wire[0..used) would travel to the peer here ... */
    if (lh_codec_decode(codec, wire, used, received, N) != LH_SUCCESS)
      return fail("decode");
    for (size_t i = 0; i < N; i++) {
      sum_sent[i] += grad[i];
      sum_received[i] += received[i];
    }
  }
  double diff = 0, norm = 0;
  for (size_t i = 0; i < N; i++) {
    diff += (sum_sent[i] - sum_received[i]) * (sum_sent[i] - sum_received[i]);
    norm += sum_sent[i] * sum_sent[i];
  }
  *ratio = (double)(N * 4) / (double)used;
  *drift = sqrt(diff / norm);
  free(wire);
  free(grad);
  free(received);
  free(sum_sent);
  free(sum_received);
  lh_codec_free(codec);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
    printf("usage: 02_compress [codec] [bits]   (codecs: none fp16 bf16 blockq sharedq sign topk randk powersgd)\n");
    return 0;
  }
  lh_codec_id id = LH_CODEC_BLOCKQ;
  if (argc > 1 && lh_codec_parse(argv[1], &id) != LH_SUCCESS)
    return fail("codec");
  int bits = argc > 2 ? atoi(argv[2]) : 4;
  double ratio, drift, drift_without = 0;
  if (run(id, bits, 1, &ratio, &drift) || (id != LH_CODEC_NONE && run(id, bits, 0, &ratio, &drift_without)))
    return 1;
  const char *name;
  lh_codec_name(id, &name);
  printf("%s: %d steps of %d floats, %.1fx smaller on the wire, running sums differ by %.4f%%", name, STEPS, N,
         ratio, 100.0 * drift);
  if (id != LH_CODEC_NONE)
    printf(" (%.4f%% without error feedback)", 100.0 * drift_without);
  printf("\n");
  return 0;
}

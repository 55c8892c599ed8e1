/* Writes the seed corpus of the codec fuzz targets: valid frames of every codec for a spread
 * of parameter variants and element counts, in the fuzz input layout of fuzz_codec_config.h.
 *   make_codec_seeds DIR      writes DIR/<codec>/v<variant>-n<count>[-raw]
 * The seeds are checked in (tests/fuzz/corpus/); rerun this after a frame format change. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_codec_config.h"

static int write_seed(const char *dir, const char *codec, unsigned variant, size_t n, uint8_t mode,
                      const uint8_t *frame, size_t bytes) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s/v%u-n%zu%s", dir, codec, variant, n,
           (mode & LH_FUZZ_FIX_CRC) ? "" : "-nofix");
  FILE *f = fopen(path, "wb");
  if (!f) {
    perror(path);
    return 1;
  }
  uint8_t head[2] = {(uint8_t)variant, mode};
  int bad = fwrite(head, 1, 2, f) != 2 || fwrite(frame, 1, bytes, f) != bytes;
  return fclose(f) != 0 || bad;
}

int main(int argc, char **argv) {
  if (argc != 2 || strcmp(argv[1], "--help") == 0) {
    fprintf(stderr, "usage: make_codec_seeds DIR\n");
    return 2;
  }
  static const unsigned variants[] = {0x00, 0x13, 0x2A, 0x47, 0x85, 0xF1};
  static const size_t counts[] = {0, 1, 9, 300};
  int failures = 0;
  for (int id = 0; id < LH_CODEC_COUNT; id++) {
    const char *name;
    lh_codec_name((lh_codec_id)id, &name);
    char sub[512];
    snprintf(sub, sizeof sub, "%s/%s", argv[1], name);
    mkdir(sub, 0755);
    for (size_t v = 0; v < sizeof variants / sizeof *variants; v++) {
      for (size_t ci = 0; ci < sizeof counts / sizeof *counts; ci++) {
        lh_codec *c;
        lh_codec_create((lh_codec_id)id, &c);
        lh_fuzz_configure(c, (lh_codec_id)id, (uint8_t)variants[v]);
        size_t n = counts[ci];
        int rows = 0;
        if (id == LH_CODEC_POWERSGD) { /* a whole matrix: n rounded to the rows */
          lh_codec_get_param(c, LH_CP_ROWS, &rows);
          n = n / (size_t)rows * (size_t)rows;
        }
        float *x = malloc((n + 1) * sizeof(float));
        for (size_t i = 0; i < n; i++)
          x[i] = sinf((float)i * 0.7f) * (float)(1 + i % 5);
        if (id == LH_CODEC_SHAREDQ) { /* the scales the fuzz target sets: block b gets b % 7 */
          size_t ns = lh_codec_scale_count(c, n);
          float *s = malloc((ns + 1) * sizeof(float));
          for (size_t i = 0; i < ns; i++)
            s[i] = (float)(i % 7);
          lh_codec_set_scales(c, s, ns);
          free(s);
        }
        size_t cap = lh_codec_max_wire_bytes(c, n), used = 0;
        uint8_t *frame = malloc(cap + 1);
        if (lh_codec_encode(c, x, n, frame, cap, &used) != LH_SUCCESS) {
          fprintf(stderr, "%s v%u n%zu: %s\n", name, variants[v], n, lh_last_error());
          failures++;
        } else {
          const uint8_t fix = LH_FUZZ_FIX_LENGTH | LH_FUZZ_FIX_CRC | LH_FUZZ_N_FROM_FRAME;
          failures += write_seed(argv[1], name, variants[v], n, fix, frame, used);
          if (ci == 2)
            failures += write_seed(argv[1], name, variants[v], n, LH_FUZZ_N_FROM_FRAME, frame, used);
        }
        free(frame);
        free(x);
        lh_codec_free(c);
      }
    }
  }
  return failures != 0;
}

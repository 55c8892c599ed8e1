/* codec_perf: the pieces shared by the CPU part (codec_perf.c) and the GPU part
 * (codec_perf_gpu.cu, built with CUDA). One table for both, one row per (codec, size, device):
 *
 *   codec params device size(B) count enc(GB/s) dec(GB/s) ratio relerr moved(B/elem) copy_frac #wrong
 *
 * size is the fp32 input in bytes; GB/s counts fp32 input bytes (encode) or output bytes
 * (decode) per second; ratio = fp32 bytes / payload bytes; relerr = ||x - D(C(x))|| / ||x||;
 * moved = bytes the encode kernel must read and write per element (GPU rows; "-" on the CPU);
 * copy_frac = the kernel's moved bytes per second over the device's measured copy bandwidth
 * (GPU rows); #wrong = elements where the GPU's bytes or decoded values differ from the CPU
 * twin's (GPU rows) or where decode differs from a second decode (CPU rows). */
#ifndef LH_BENCH_CODEC_PERF_H
#define LH_BENCH_CODEC_PERF_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lh_codec_perf_row {
  const char *codec;   /* "blockq" */
  const char *params;  /* "b4 B128 rtn" */
  const char *device;  /* "cpu" or the GPU's name */
  size_t bytes;        /* fp32 input bytes */
  double enc_gbps;
  double dec_gbps;     /* < 0: not measured */
  double ratio;
  double relerr;
  double moved_per_elem; /* < 0: "-" */
  double copy_frac;      /* < 0: "-" */
  long wrong;
} lh_codec_perf_row;

void lh_codec_perf_header(void);
/* The input of every row: gradient-like, Gaussian (Box-Muller over a fixed LCG) with every
 * 9973rd element times 20, the same on every run and device. */
void lh_codec_perf_fill_input(float *x, size_t n);
void lh_codec_perf_print(const lh_codec_perf_row *row);

/* The GPU part: runs every kernel at each size in sizes[0..nsizes) (fp32 bytes), `iters`
 * timed repetitions after a warm-up, compares with the CPU twins and prints rows. Returns the
 * number of wrong elements summed over all rows, or -1 when no GPU is usable (prints why). */
long lh_codec_perf_gpu(const size_t *sizes, int nsizes, int iters, const char *only_codec);

#ifdef __cplusplus
}
#endif
#endif

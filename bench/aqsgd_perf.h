/* aqsgd_perf: the pieces shared by the CPU part (aqsgd_perf.c) and the GPU part
 * (aqsgd_perf_gpu.cu, built with CUDA). One table per operation of AQ-SGD's quantizer:
 *
 *   sender      the fused forward encode: d = a - m, codes, scales, m' = m + q (one pass for
 *               PER_TOKEN_GROUP; PER_CHANNEL adds the scales pass over a and m)
 *   receiver    the forward decode: m' = m + q in place, out = m'
 *   bwd-encode  backward: the gradient quantized directly (no m) at the backward width
 *   bwd-decode  backward: out = q
 *   per-channel the sender with PER_CHANNEL scales (the reference quantizer: scales pass +
 *               quantize pass), when the chosen quantizer is PER_TOKEN_GROUP
 *
 * with the columns
 *
 *   elements time(us) Gelem/s bytes/elem GB/s %copy #wrong
 *
 * bytes/elem counts what the kernels must read and write per element (a and out in the dtype,
 * m in the storage type, b / 8 of codes, the scales: 6.27 for the fp16 sender at 2 bits with a
 * scale per 128); GB/s is those bytes per second; %copy compares it with the device's measured
 * device-to-device copy bandwidth (bytes read + written per second), measured in the same run;
 * #wrong counts elements (codes bytes, scales, m and out elements) where the GPU differs from the
 * CPU twin (GPU rows), or where the CPU's sender and receiver disagree or a second run gives
 * other bytes (CPU rows). */
#ifndef LH_BENCH_AQSGD_PERF_H
#define LH_BENCH_AQSGD_PERF_H

#include <stddef.h>
#include <stdint.h>

#include "aqsgd/aqsgd_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

#define AQSGD_PERF_MAX_SIZES 16

typedef struct aqsgd_perf_config {
  size_t tokens, channels;       /* of one example (a row); a call is `rows` such rows */
  int dtype, storage;            /* LH_AQ_T_* */
  int bits, bwd_bits;            /* forward and backward code widths */
  int quantizer, group;          /* LH_AQ_Q_*; PER_TOKEN_GROUP's group */
  int stochastic;
  size_t sizes[AQSGD_PERF_MAX_SIZES]; /* requested elements per call */
  int nsizes;
  int iters;
} aqsgd_perf_config;

enum { AQSGD_OP_SENDER, AQSGD_OP_RECEIVER, AQSGD_OP_BWD_ENCODE, AQSGD_OP_BWD_DECODE, AQSGD_OP_PER_CHANNEL,
       AQSGD_OP_COUNT };

/* The call shape for about `elements` elements: whole rows of tokens x channels, at least one;
 * below one row, one row of fewer tokens. */
void aqsgd_perf_shape(const aqsgd_perf_config *c, size_t elements, size_t *rows, size_t *tokens);
/* The most elements and rows any size of the run needs (buffers are sized once for all). */
void aqsgd_perf_largest(const aqsgd_perf_config *c, size_t *max_n, size_t *max_rows);
/* Whether the run has operation op (per-channel only beside PER_TOKEN_GROUP). */
int aqsgd_perf_has_op(const aqsgd_perf_config *c, int op);
/* The quantizer parameters of op for a call of rows of `tokens` tokens. */
lh_aq_qparams aqsgd_perf_params(const aqsgd_perf_config *c, int op, size_t tokens);
/* Bytes the op's kernels must move per element. */
double aqsgd_perf_bytes_per_elem(const lh_aq_qparams *p, int op, size_t rows);
/* "sender: fused encode (group128 b2 rtn, fp16 a, fp16 m)" */
void aqsgd_perf_title(const aqsgd_perf_config *c, int op, char *text, size_t size);

/* The inputs of a call of `rows` rows of E elements: a (dtype, rows x E), m (storage, the slots'
 * rows: slot of row r = rows - 1 - r), ids, visits and slots; the same on every run. */
void aqsgd_perf_fill(const aqsgd_perf_config *c, size_t rows, size_t E, void *a, void *m, int64_t *ids,
                     uint32_t *visits, int64_t *slots);

/* Counts elements of `count` elements of `size` bytes that differ. */
long aqsgd_perf_count_different(const void *x, const void *y, size_t count, size_t size);

void aqsgd_perf_table_header(const char *title, const char *device);
/* copy_frac < 0 prints "-". */
void aqsgd_perf_row(size_t elements, double seconds, double bytes_per_elem, double copy_frac, long wrong);

/* The GPU tables for every size; returns the wrong count summed over all rows, or -1 when no GPU
 * is usable (after saying why). */
long lh_aqsgd_perf_gpu(const aqsgd_perf_config *c);

#ifdef __cplusplus
}
#endif
#endif

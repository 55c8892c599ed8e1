/* Collective internals: the element-wise reductions (CPU twins of kernels/reduce_add.cu),
 * the plain ring, and the compressed algorithms' shared engine. Never installed. */
#ifndef LH_COLLECTIVE_INTERNAL_H
#define LH_COLLECTIVE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <longhaul/allreduce.h>
#include <longhaul/compress.h>

#ifdef __cplusplus
extern "C" {
#endif

/* acc[i] += x[i]. CPU twin of lh_cuda_reduce_add_f32. */
void lh_reduce_add_f32(float *acc, const float *x, size_t n);
/* x[i] /= divisor. CPU twin of lh_cuda_reduce_div_f32. */
void lh_reduce_div_f32(float *x, float divisor, size_t n);

/* The same on host or device memory (device: the CUDA launchers, then a sync). */
lh_status lh_reduce_add(int on_device, float *acc, const float *x, size_t n);
lh_status lh_reduce_div(int on_device, float *x, float divisor, size_t n);

/* How the ring algorithms cut count elements: n segments, the first count % n of them one
 * element longer, and each segment into pieces (pipeline chunks) of at most `piece` elements.
 * Every segment has the same number of pieces; pieces past a short segment's end are empty. */
typedef struct lh_layout {
  size_t base, extra, piece;
  int n, pieces;
} lh_layout;

static inline lh_layout lh_layout_make(size_t count, int n, size_t piece) {
  lh_layout l;
  l.n = n;
  l.base = count / (size_t)n;
  l.extra = count % (size_t)n;
  size_t longest = l.base + (l.extra ? 1 : 0);
  l.piece = piece == 0 ? 1 : piece > longest && longest > 0 ? longest : piece;
  l.pieces = longest ? (int)((longest + l.piece - 1) / l.piece) : 0;
  return l;
}
static inline size_t lh_seg_offset(const lh_layout *l, int seg) {
  return (size_t)seg * l->base + ((size_t)seg < l->extra ? (size_t)seg : l->extra);
}
static inline size_t lh_seg_length(const lh_layout *l, int seg) {
  return l->base + ((size_t)seg < l->extra ? 1 : 0);
}
/* Offset of piece j of segment seg in the whole buffer, and its length (0 past the end). */
static inline size_t lh_piece_span(const lh_layout *l, int seg, int j, size_t *offset) {
  size_t len = lh_seg_length(l, seg), off = (size_t)j * l->piece;
  *offset = lh_seg_offset(l, seg) + off;
  if (off >= len)
    return 0;
  return len - off < l->piece ? len - off : l->piece;
}
/* Bytes an uncompressed ring of count floats sends from `rank`: 2(n-1) segments. */
size_t lh_ring_bytes_sent(size_t count, int n, int rank);

/* In-place chunked, pipelined ring all-reduce of `data` (host memory, or device memory for a
 * backend that moves device buffers). */
lh_status lh_ring_allreduce(lh_comm comm, float *data, size_t count, lh_reduce_op op, size_t chunk_bytes,
                            int on_device);

/* err[i] += in[i] - decoded[i]: what an encode failed to carry. CPU twin of
 * lh_cuda_residual_add_f32. */
void lh_residual_add_f32(float *err, const float *in, const float *decoded, size_t n);
lh_status lh_residual_add(int on_device, float *err, const float *in, const float *decoded, size_t n);
/* LH_ERR_INVALID_ARGUMENT naming the first element of x[0..n) that is infinite or NaN. The
 * compressed algorithms check their input before the argument agreement: a codec refusing it
 * half-way would leave the other ranks waiting. */
lh_status lh_check_finite(int on_device, const float *x, size_t n, const char *what);
/* p[0..n) = 0 on host or device. */
lh_status lh_zero_f32(int on_device, float *p, size_t n);
/* dst[0..n) = src[0..n), host to host or device to device. */
lh_status lh_copy_f32(int on_device, float *dst, const float *src, size_t n);

/* ---- the compressed engine ---------------------------------------------------------------- */

/* What every compressed algorithm works with: the agreed config, one codec context that
 * encodes (error feedback off: the engine keeps residuals itself, because a rank encodes
 * running partials as well as its own data) and one that decodes, grow-only scratch, and the
 * counters behind lh_reducer_stats. Owned by a reducer, or built for one lh_allreduce call. */
typedef struct lh_engine {
  lh_comm comm;
  lh_allreduce_config cfg; /* resolved: no zero "defaults" left except where 0 means off */
  lh_allreduce_algo algo;  /* resolved, never AUTO */
  lh_codec *enc, *dec;
  size_t granule;          /* elements: pipeline pieces are multiples of this (block, chunk) */
  size_t piece_elems;      /* pipeline piece: elements per frame */
  uint64_t step;           /* key step of this call */
  int on_device;           /* data and err are device memory */
  /* grow-only host memory for frames and host scratch, device scratch when on_device */
  void *frames;
  size_t frames_bytes;
  float *scratch;
  size_t scratch_bytes;
  float *dscratch;
  size_t dscratch_bytes;
  unsigned long long wire_bytes; /* sent by this rank, summed */
  double codec_seconds;
} lh_engine;

/* Fills cfg's defaults, validates it (naming the bad field), resolves AUTO for `count`
 * elements, and creates the codec contexts. */
lh_status lh_engine_init(lh_engine *e, lh_comm comm, const lh_allreduce_config *cfg, size_t count);
void lh_engine_release(lh_engine *e);
/* The algorithm the config's algo (AUTO included) means for `count` elements. */
lh_allreduce_algo lh_engine_choose(lh_engine *e, size_t count);
/* The most bytes a frame of n elements can take (0: not encodable). */
size_t lh_engine_max_frame(lh_engine *e, size_t n);
/* The parameters that must agree across ranks (algo, op, codec and all its parameters). */
int lh_engine_agreement(const lh_engine *e, long long *values, const char **names, int capacity);
/* Sets the codec key for the frame that carries elements [offset, offset+n) of this call. */
lh_status lh_engine_key(lh_engine *e, lh_codec *c, size_t offset);
/* Grow-only buffers of the engine. */
lh_status lh_engine_frames(lh_engine *e, size_t bytes, void **frames);
lh_status lh_engine_scratch(lh_engine *e, size_t floats, float **scratch); /* host or device */
/* Encode/decode with timing and device/host dispatch. */
lh_status lh_engine_encode(lh_engine *e, const float *x, size_t n, size_t offset, void *frame, size_t cap,
                           size_t *bytes);
lh_status lh_engine_decode(lh_engine *e, const void *frame, size_t bytes, float *out, size_t n, size_t offset,
                           int accumulate);

/* The algorithms. Each reduces data[0..count) in place (the sum; the caller divides for the
 * mean) and, when err is not NULL, adds to err[i] what this rank's encodes of element i failed
 * to carry (its error feedback for the next step). data and err are host memory, or device
 * memory when e->on_device. Every rank ends with the same bits. */
lh_status lh_qring_allreduce(lh_engine *e, float *data, size_t count, float *err);
lh_status lh_shared_ring_allreduce(lh_engine *e, float *data, size_t count, float *err);
lh_status lh_owner_allreduce(lh_engine *e, float *data, size_t count, float *err);
lh_status lh_allgather_allreduce(lh_engine *e, float *data, size_t count, float *err);

/* QRING, SHARED_RING, OWNER or ALLGATHER (e->algo) on data[0..count), then the division of
 * the mean: the result every rank gets. */
lh_status lh_engine_run(lh_engine *e, float *data, size_t count, float *err);

/* PowerSGD state of one matrix, kept by the reducer between steps. */
typedef struct lh_psgd_state {
  size_t rows, cols;
  int rank;
  float *q; /* cols x rank, warm-started; NULL before the first step */
} lh_psgd_state;
/* One PowerSGD step over a bucket: m[t] (rows x cols, x + residual already added) are
 * replaced by the reduced approximation (sum), err[t] (may be NULL) gets m - local
 * approximation. Matrices are batched: all P in one uncompressed ring, all Q in another. */
lh_status lh_powersgd_allreduce(lh_engine *e, int ntensors, float *const *m, lh_psgd_state *const *state,
                                float *const *err);

#ifdef __cplusplus
}
#endif
#endif

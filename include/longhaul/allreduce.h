/* All-reduce of float32 over a Longhaul communicator, plain or compressed.
 *
 * Two layers, like zstd's:
 *   lh_allreduce()    one call, one tensor, no state kept. A lossy codec runs without error
 *                     feedback here (there is nowhere to keep the residual).
 *   lh_reducer        a reusable context: error-feedback residuals per tensor (by a key the
 *                     caller chooses), PowerSGD's warm-started Q, scratch, statistics; takes a
 *                     list of tensors (a bucket) per call; start/wait so the reduction runs
 *                     while the caller computes (the backward pass of the next layers).
 *
 *   lh_reducer r;
 *   lh_allreduce_config cfg = LH_ALLREDUCE_CONFIG_INIT;
 *   cfg.codec = LH_CODEC_BLOCKQ; cfg.bits = 4; cfg.op = LH_OP_MEAN;
 *   lh_reducer_create(comm, &cfg, &r);
 *   lh_tensor t[2] = {{sizeof(lh_tensor), 1, w1_grad, n1, 0}, {sizeof(lh_tensor), 2, w2_grad, n2, 0}};
 *   lh_reducer_start(r, t, 2);     // returns at once
 *   ...compute...
 *   lh_reducer_wait(r);            // t[i].data now holds the reduced gradients, on every rank
 *   lh_reducer_free(r);
 *
 * Algorithms (config.algo):
 *   RING       the uncompressed chunked, pipelined ring (reduce-scatter, then all-gather).
 *   MPI        MPI_Allreduce, the reference; refused on simulated links (its bytes move
 *              inside MPI, where the link layer cannot see them: use examples/wan/testbed.sh).
 *   QRING      quantized ring for FP16, BF16 and BLOCKQ: each hop decodes the running partial,
 *              adds its own fp32 contribution and re-encodes it; the owner of a segment encodes
 *              the full sum once and every rank forwards and decodes exactly those bytes.
 *   SHARED_RING exact ring for SHAREDQ: one small max-reduction of block scales, then the
 *              integer codes are summed exactly along the ring. No zstd: the codes are added
 *              on the wire at every hop.
 *   OWNER      two-phase owner reduce for codecs that cannot be summed (SIGN, TOPK, BLOCKQ,
 *              RANDK): shards go to their owners, which sum in fp32 in rank order (their own
 *              values as they are, the others' decoded), re-encode once, and send that frame
 *              to every rank.
 *   ALLGATHER  every rank gathers every rank's compressed tensor and sums them in rank order;
 *              cheaper than OWNER only when frames are tiny (latency-bound) and ranks few.
 *   POWERSGD   rank-r PowerSGD: P = M Q and Q = M^T P are all-reduced uncompressed, with a
 *              shared seed for the first Q, warm start, and error feedback. Reducer only (it
 *              needs lh_tensor.rows and state); tensors with rows <= 1 or not worth factoring,
 *              (rows + cols) r >= rows cols, go uncompressed in one batch.
 *   AUTO       from the codec: NONE -> RING; casts and BLOCKQ -> QRING; SHAREDQ -> SHARED_RING;
 *              POWERSGD -> POWERSGD; SIGN, TOPK, RANDK -> OWNER or ALLGATHER, whichever the
 *              alpha-beta model of the links predicts faster.
 *
 * Guarantees on every algorithm: every rank ends with the same bits (each sum is taken in one
 * fixed order, and each segment is encoded once by its owner, whose bytes everyone decodes,
 * the owner included); the same inputs, key and step give the same bits on a second run.
 * TOPK and RANDK keep `density` of every frame: a frame is cut into equal chunks of about
 * topk_chunk elements. The compressed algorithms take finite input only (checked before
 * anything is sent, so a rank's NaN gives an error on every rank, not a hang).
 * Error feedback (reducer only, on by default for lossy codecs): what a rank fails to deliver
 * this step (its quantization error, and as owner the error of re-encoding the sum) is added
 * to its contribution of the same tensor next step. Mean divides the sum by the rank count on
 * every rank alike. All ranks must pass the same counts, algorithm, op and codec parameters:
 * this is checked with one small exchange, and a difference gives LH_ERR_MISMATCH on every rank.
 *
 * Buffers are host or device memory. Device memory is encoded and decoded by the CUDA codec
 * kernels; only the compressed bytes are staged through the host for the mpi backend.
 * Stability: lh_allreduce and the config fields up to chunk_bytes are stable; the compression
 * fields and lh_reducer are experimental. */
#ifndef LONGHAUL_ALLREDUCE_H
#define LONGHAUL_ALLREDUCE_H

#include <stddef.h>
#include <stdint.h>
#include <longhaul/compress.h>
#include <longhaul/status.h>
#include <longhaul/transport.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lh_allreduce_algo {
  LH_ALLREDUCE_AUTO = 0,
  LH_ALLREDUCE_RING = 1,
  LH_ALLREDUCE_MPI = 2,
  LH_ALLREDUCE_QRING = 3,
  LH_ALLREDUCE_SHARED_RING = 4,
  LH_ALLREDUCE_OWNER = 5,
  LH_ALLREDUCE_ALLGATHER = 6,
  LH_ALLREDUCE_POWERSGD = 7,
  LH_ALLREDUCE_ALGO_COUNT /* not an algorithm */
} lh_allreduce_algo;

typedef enum lh_reduce_op {
  LH_OP_SUM = 0,
  LH_OP_MEAN = 1 /* the sum divided by the number of ranks, on every rank alike */
} lh_reduce_op;

/* 0 (or a negative value where noted) means "the default" for every field below chunk_bytes. */
typedef struct lh_allreduce_config {
  size_t size;            /* sizeof(lh_allreduce_config) */
  int version;            /* LH_VERSION_CODE */
  lh_allreduce_algo algo; /* default LH_ALLREDUCE_AUTO */
  lh_reduce_op op;        /* default LH_OP_SUM */
  size_t chunk_bytes;     /* pipeline chunk of the ring (of fp32 data); 0: LH_RING_CHUNK_BYTES.
                             Compressed algorithms grow a chunk until its frame carries at
                             least chunk_bytes / 4 bytes */
  /* ---- compression (experimental) ---- */
  lh_codec_id codec;      /* default LH_CODEC_NONE */
  int bits;               /* BLOCKQ 1-8, SHAREDQ 2-8; 0: 8 */
  int block;              /* elements per scale (BLOCKQ, SHAREDQ, SIGN); 0: the codec's 128 */
  double density;         /* TOPK, RANDK: fraction kept, (0, 1]; 0: 0.01 */
  int topk_chunk;         /* TOPK, RANDK: elements per chunk; 0: 4096 */
  lh_rounding rounding;   /* BLOCKQ, SHAREDQ; default LH_ROUND_NEAREST */
  int powersgd_rank;      /* POWERSGD rank 1-8; 0: 2 */
  int zstd_level;         /* 0 off, 1-19 on every frame */
  int error_feedback;     /* reducer only: -1 default (on for lossy codecs), 0 off, 1 on */
  int warmup_steps;       /* reducer only: steps sent uncompressed first; -1 default
                             (10 for POWERSGD, 0 otherwise) */
  uint64_t seed;          /* key of stochastic rounding, random-k and PowerSGD's first Q */
} lh_allreduce_config;
#define LH_ALLREDUCE_CONFIG_INIT                                                                  \
  {sizeof(lh_allreduce_config), LH_VERSION_CODE, LH_ALLREDUCE_AUTO, LH_OP_SUM, 0, LH_CODEC_NONE, 0, \
   0, 0.0, 0, LH_ROUND_NEAREST, 0, 0, -1, -1, 0}

/* Collective. config may be NULL for the defaults. In place when sendbuf == recvbuf. Any count,
 * 0 and counts below the rank count included. */
lh_status lh_allreduce(lh_comm comm, const float *sendbuf, float *recvbuf, size_t count,
                       const lh_allreduce_config *config);

/* Name of an algorithm ("ring", "qring", ...) and the reverse. */
lh_status lh_allreduce_algo_name(lh_allreduce_algo algo, const char **name);
lh_status lh_allreduce_algo_parse(const char *name, lh_allreduce_algo *algo);

/* The algorithm AUTO picks for this config and count on this communicator (collective-free:
 * every rank computes the same answer from the same inputs). */
lh_status lh_allreduce_choose(lh_comm comm, const lh_allreduce_config *config, size_t count,
                              lh_allreduce_algo *algo);

/* ---- the reusable context (experimental) ------------------------------------------------ */

typedef struct lh_reducer_s *lh_reducer; /* opaque */

/* One tensor of a bucket, reduced in place. key names it across steps (its error-feedback
 * residual and PowerSGD state); keys must be unique within a call. rows: PowerSGD's matrix
 * rows (count = rows x cols); 0 or 1 means a vector. */
typedef struct lh_tensor {
  size_t size; /* sizeof(lh_tensor) */
  uint64_t key;
  float *data;
  size_t count;
  size_t rows;
} lh_tensor;

/* What a reducer did, summed over its calls (since creation or lh_reducer_reset_stats). */
typedef struct lh_reducer_stats {
  size_t size;                  /* sizeof(lh_reducer_stats) */
  unsigned long long calls;     /* completed start/wait pairs */
  unsigned long long elements;  /* fp32 elements reduced */
  unsigned long long raw_bytes; /* what an uncompressed ring would have sent from this rank */
  unsigned long long wire_bytes;/* what this rank did send */
  double seconds;               /* wall time from start to the end of the work */
  double codec_seconds;         /* of which encoding and decoding */
  lh_allreduce_algo last_algo;  /* the algorithm of the last call */
} lh_reducer_stats;
#define LH_REDUCER_STATS_INIT {sizeof(lh_reducer_stats), 0, 0, 0, 0, 0.0, 0.0, LH_ALLREDUCE_AUTO}

/* Collective over comm: the reducer works on a private communicator split from it, so its
 * messages never mix with the caller's. config may be NULL. */
lh_status lh_reducer_create(lh_comm comm, const lh_allreduce_config *config, lh_reducer *reducer);
/* Collective. Accepts NULL. Waits for an operation still in flight. */
lh_status lh_reducer_free(lh_reducer reducer);

/* Starts reducing the tensors (collective: every rank passes the same keys and counts in the
 * same order). Returns at once; the buffers belong to the reducer until lh_reducer_wait returns.
 * One operation at a time per reducer. When MPI gives less than MPI_THREAD_MULTIPLE, the work
 * runs inside this call instead (no overlap, same result). */
lh_status lh_reducer_start(lh_reducer reducer, const lh_tensor *tensors, int count);
/* *done = 1 when the operation has finished (then call lh_reducer_wait for its status). */
lh_status lh_reducer_test(lh_reducer reducer, int *done);
/* Waits for the operation started last and returns its status (LH_SUCCESS when none). */
lh_status lh_reducer_wait(lh_reducer reducer);
/* start + wait. */
lh_status lh_reducer_allreduce(lh_reducer reducer, const lh_tensor *tensors, int count);

/* Drops the error-feedback residuals and PowerSGD state of every tensor (step count included). */
lh_status lh_reducer_reset(lh_reducer reducer);
lh_status lh_reducer_get_stats(lh_reducer reducer, lh_reducer_stats *stats);
lh_status lh_reducer_reset_stats(lh_reducer reducer);
/* The error-feedback residual held for a key (NULL, 0 when none). Valid until the next call. */
lh_status lh_reducer_residual(lh_reducer reducer, uint64_t key, const float **residual, size_t *count);
/* Checkpoints of what a reducer carries from call to call: the step count, every tensor's
 * error-feedback residual and PowerSGD factor, in one checksummed file per rank (written through
 * `path.tmp`, renamed when complete). load replaces the reducer's state only when the whole file
 * reads back intact (LH_ERR_IO, LH_ERR_CORRUPT or LH_ERR_MISMATCH otherwise, the reducer
 * untouched). Residuals load into host memory: keep host tensors across a checkpoint. Not
 * collective; every rank saves and loads its own file between calls. */
lh_status lh_reducer_save(lh_reducer reducer, const char *path);
lh_status lh_reducer_load(lh_reducer reducer, const char *path);

#ifdef __cplusplus
}
#endif
#endif

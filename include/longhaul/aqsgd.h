/* AQ-SGD: compressed activations between pipeline stages (Wang et al., NeurIPS 2022).
 *
 * At a stage boundary the sending stage does not quantize its activation a(x); it quantizes
 * how a(x) changed since training example x last passed, Q(a - m(x)), and both sides update
 * the same buffer m(x) += deQ(Q(a - m(x))). The next stage computes on m(x). Because both
 * sides apply the same bytes with the same arithmetic (fp32, then one rounding to the
 * buffer's storage type), their buffers stay bitwise identical without ever being compared.
 * Backward, the activation gradient is quantized directly (no buffer) at its own bit width.
 *
 * Per boundary there is one lh_aq_sender (on the stage that computes a) and one lh_aq_receiver
 * (on the stage that consumes it). Each keeps its buffers in an lh_aq_store:
 *
 *   lh_aq_config cfg = LH_AQ_CONFIG_INIT;
 *   cfg.examples = 50000; cfg.tokens = 128; cfg.channels = 768;
 *   cfg.forward_bits = 2; cfg.backward_bits = 4;
 *   lh_aq_sender tx;  lh_aq_sender_create(&cfg, &tx);        // stage s
 *   lh_aq_receiver rx; lh_aq_receiver_create(&cfg, &rx);     // stage s + 1
 *   // forward: stage s
 *   lh_aq_send(tx, act, ids, batch, frame, capacity, &frame_bytes);   ... frame goes over the wire
 *   // forward: stage s + 1 (act_in = m(x), what stage s + 1 computes on)
 *   lh_aq_receive(rx, frame, frame_bytes, ids, batch, act_in);
 *   // backward: stage s + 1 sends the gradient of its input, stage s decodes it
 *   lh_aq_send_grad(rx, grad_in, ids, batch, frame, capacity, &frame_bytes);
 *   lh_aq_receive_grad(tx, frame, frame_bytes, ids, batch, grad_out);
 *
 * Rules:
 *  - An example's first visit (and every visit while it has been seen fewer than
 *    warmup_epochs times) goes at full precision in the storage type: both sides set
 *    m(x) = a(x). A per-example visit count ("seen") decides this, never the epoch number, so
 *    examples that skip an epoch or arrive in any order are handled. The warm-up is the
 *    forward direction's: gradients are always quantized at backward_bits (DELTA, DIRECT).
 *  - Example ids must be stable across epochs (no per-epoch augmentation or re-packing), in
 *    [0, examples), and distinct within one call. Both sides must pass the same ids in the same
 *    order; the frame carries a hash of them and a mismatch is LH_ERR_MISMATCH.
 *  - Frames are checked (magic, version, settings, sizes, CRC-32C) before anything is
 *    applied: a corrupt or foreign frame gives LH_ERR_CORRUPT / LH_ERR_MISMATCH and leaves
 *    the receiver's buffers untouched.
 *  - A sender given a non-finite activation, or a change too large for an fp16 scale (above
 *    65504), returns LH_ERR_INVALID_ARGUMENT naming the example; its buffers may then be
 *    half updated, so the context refuses every later call (recreate it, and the receiver).
 *
 * Wire format (little-endian), see lib/aqsgd/frame.c:
 *   header (LH_AQ_FRAME_HEADER_BYTES = 48 bytes)
 *   full rows: m(x) in the storage type, for the examples sent at full precision
 *   scales:    fp16, rounded up (a stored scale never clips its group)
 *   codes:     b-bit codes of every other element, packed LSB first: ceil(n * b / 8) bytes
 * so a forward frame with no first visits is exactly 48 + scale bytes + ceil(n * b / 8).
 *
 * The quantizer. Codes u in [0, 2^b - 2] (an exact zero at 2^(b-1) - 1; the code 2^b - 1 is
 * never produced); a group with max-abs scale s maps d -> round(d (2^b - 2) / (2 s) +
 * (2^b - 2) / 2), clamped, and back u -> (2u - (2^b - 2)) s / (2^b - 2). Groups:
 *  - LH_AQ_PER_CHANNEL (the reference code's): one scale per channel over every token of
 *    every example in the call (channels scales per frame);
 *  - LH_AQ_PER_TOKEN_GROUP: one scale per `group` contiguous channels of each token (32, 64 or
 *    128): batch-independent, and a single pass on the GPU.
 * Rounding to nearest is the reference's; stochastic rounding (Philox keyed by seed, boundary,
 * the example's visit count and the element's index within the data set, so independent of
 * batch composition and launch shape) makes Q unbiased, which is what the paper's convergence
 * theorem assumes (with relative error below 1/sqrt(2)): use it for the guarantee.
 *
 * Memory: host or device buffers for act/grad; the store decides where m lives. When the
 * activations and the store are both on the device the fused CUDA kernels run (the sender
 * reads a and m and writes codes, m' and scales in one pass); when both are on the host the
 * CPU twins run (the same bits); mixed placements stage through the host.
 *
 * Stability: experimental. */
#ifndef LONGHAUL_AQSGD_H
#define LONGHAUL_AQSGD_H

#include <stddef.h>
#include <stdint.h>
#include <longhaul/status.h>
#include <longhaul/compress.h> /* lh_rounding */

#ifdef __cplusplus
extern "C" {
#endif

#define LH_AQ_FRAME_HEADER_BYTES 48

typedef enum lh_aq_dtype { LH_AQ_FP32 = 0, LH_AQ_FP16 = 1, LH_AQ_BF16 = 2 } lh_aq_dtype;

typedef enum lh_aq_mode {
  LH_AQ_DELTA = 0,  /* AQ-SGD: quantize a - m(x), keep m(x) on both sides */
  LH_AQ_DIRECT = 1, /* DirectQ: quantize a itself (the baseline AQ-SGD beats); no buffers */
  LH_AQ_OFF = 2     /* no compression: every row in the storage type, both directions */
} lh_aq_mode;

typedef enum lh_aq_quantizer {
  LH_AQ_PER_CHANNEL = 0,    /* one scale per channel over the call's examples and tokens */
  LH_AQ_PER_TOKEN_GROUP = 1 /* one scale per `group` channels of each token */
} lh_aq_quantizer;

/* ---- buffer stores ----------------------------------------------------------------------
 * A store holds one buffer row (tokens x channels in the storage type) per example it has
 * seen, and each example's visit count. Rows are given out on first use, up to `capacity`;
 * beyond that lh_aq_send / receive fail with LH_ERR_OUT_OF_MEMORY ("store full") and change
 * nothing. Kinds:
 *   HOST    malloc'd host memory;
 *   DEVICE  CUDA device memory (LH_ERR_NOT_SUPPORTED in a build without CUDA or with no GPU);
 *   MMAP    a file mapped into memory, for buffers larger than RAM: the kernel pages rows in
 *           and out; lh_aq_store_prefetch asks for the next micro-batch's rows ahead of use. */
typedef struct lh_aq_store_s *lh_aq_store;

typedef enum lh_aq_store_kind { LH_AQ_STORE_HOST = 0, LH_AQ_STORE_DEVICE = 1, LH_AQ_STORE_MMAP = 2 } lh_aq_store_kind;

typedef struct lh_aq_store_config {
  size_t size;            /* sizeof(lh_aq_store_config) */
  int version;            /* LH_VERSION_CODE */
  lh_aq_store_kind kind;  /* default HOST */
  size_t examples;        /* example ids run 0 .. examples - 1 (required) */
  size_t capacity;        /* rows it can hold; 0: examples */
  size_t row_bytes;       /* bytes of one example's buffer; 0: visit counts only (DIRECT) */
  const char *path;       /* MMAP: the file, created or truncated to capacity x row_bytes */
  int keep_file;          /* MMAP: 0 (default) removes the file at lh_aq_store_free */
} lh_aq_store_config;
#define LH_AQ_STORE_CONFIG_INIT {sizeof(lh_aq_store_config), LH_VERSION_CODE, LH_AQ_STORE_HOST, 0, 0, 0, NULL, 0}

lh_status lh_aq_store_create(const lh_aq_store_config *config, lh_aq_store *store);
lh_status lh_aq_store_free(lh_aq_store store); /* NULL is fine */

typedef struct lh_aq_store_info {
  size_t size;            /* sizeof(lh_aq_store_info) */
  lh_aq_store_kind kind;
  size_t examples, capacity, row_bytes;
  size_t rows_used;       /* examples that have a row */
  size_t buffer_bytes;    /* bytes of row storage it holds (capacity x row_bytes) */
  size_t metadata_bytes;  /* host bytes of the id -> row map and visit counts */
} lh_aq_store_info;
#define LH_AQ_STORE_INFO_INIT {sizeof(lh_aq_store_info), LH_AQ_STORE_HOST, 0, 0, 0, 0, 0, 0}

lh_status lh_aq_store_get_info(lh_aq_store store, lh_aq_store_info *info);
/* Start bringing these examples' rows into memory (MMAP); a no-op for the other kinds.
 * Ids out of range are an error; ids without a row yet are skipped. */
lh_status lh_aq_store_prefetch(lh_aq_store store, const int64_t *ids, size_t count);
/* How many times this example has been sent (0: never, the next visit goes full precision). */
lh_status lh_aq_store_visits(lh_aq_store store, int64_t id, uint32_t *visits);
/* Checkpoints. save writes the store's map, visit counts and rows in use to one checksummed
 * file (through `path.tmp`, renamed when complete). load reads such a file into a store made
 * with the same examples, capacity and row_bytes (any kind: a HOST checkpoint loads into a
 * DEVICE store): LH_ERR_MISMATCH naming both shapes otherwise, LH_ERR_CORRUPT for a damaged
 * file. A load that fails after it began writing rows leaves the store empty (every example
 * unseen: its next visit goes at full precision), never half-loaded. Save and load between
 * calls of the context that uses the store; both ends of a boundary must load the files they
 * saved at the same step. */
lh_status lh_aq_store_save(lh_aq_store store, const char *path);
lh_status lh_aq_store_load(lh_aq_store store, const char *path);

/* ---- contexts ------------------------------------------------------------------------------ */
typedef struct lh_aq_sender_s *lh_aq_sender;
typedef struct lh_aq_receiver_s *lh_aq_receiver;

typedef struct lh_aq_config {
  size_t size;                 /* sizeof(lh_aq_config) */
  int version;                 /* LH_VERSION_CODE */
  size_t examples;             /* example ids run 0 .. examples - 1 (required) */
  size_t tokens;               /* rows of one example's activation (sequence length); 0: 1 */
  size_t channels;             /* columns (hidden size; required) */
  lh_aq_dtype dtype;           /* of the activations and gradients passed in and out; default FP32 */
  lh_aq_dtype storage;         /* of the buffers m(x) and of full-precision rows; default FP16 */
  lh_aq_mode mode;             /* default DELTA */
  int forward_bits;            /* 2-8; 0: 4 */
  int backward_bits;           /* 2-8; 0: 8 */
  lh_aq_quantizer quantizer;   /* default PER_CHANNEL (the reference) */
  int group;                   /* PER_TOKEN_GROUP: 32, 64 or 128 dividing channels; 0: 128 */
  lh_rounding rounding;        /* default LH_ROUND_NEAREST */
  int warmup_epochs;           /* visits sent at full precision, >= 1; 0: 1 */
  uint64_t seed;               /* key of stochastic rounding */
  int boundary;                /* which stage boundary (keys the RNG streams); default 0 */
  lh_aq_store store;           /* NULL: a HOST store of `examples` rows, owned by the context.
                                  Otherwise the caller's, not freed by the context, used by one
                                  context only, with row_bytes = tokens x channels x storage size */
  int track_drift;             /* 1: the sender accumulates |a - m|^2 and |a|^2 for its stats
                                  (one more pass over host data; not computed on the device) */
} lh_aq_config;
#define LH_AQ_CONFIG_INIT                                                                      \
  {sizeof(lh_aq_config), LH_VERSION_CODE, 0, 0, 0, LH_AQ_FP32, LH_AQ_FP16, LH_AQ_DELTA, 0, 0, \
   LH_AQ_PER_CHANNEL, 0, LH_ROUND_NEAREST, 0, 0, 0, NULL, 0}

/* The largest frame a call with `count` examples can produce: forward (backward = 0) or
 * backward (1). Size the wire buffers with it. */
lh_status lh_aq_max_frame_bytes(const lh_aq_config *config, size_t count, int backward, size_t *bytes);

lh_status lh_aq_sender_create(const lh_aq_config *config, lh_aq_sender *sender);
lh_status lh_aq_sender_free(lh_aq_sender sender); /* NULL is fine */
lh_status lh_aq_receiver_create(const lh_aq_config *config, lh_aq_receiver *receiver);
lh_status lh_aq_receiver_free(lh_aq_receiver receiver);

/* Forward, sending stage: act is count x tokens x channels in config.dtype (host or device).
 * Writes the frame (host memory, `capacity` bytes) and its length. */
lh_status lh_aq_send(lh_aq_sender sender, const void *act, const int64_t *ids, size_t count, void *frame,
                     size_t capacity, size_t *frame_bytes);
/* Forward, receiving stage: applies the frame and writes m(x) for each example to act_out
 * (count x tokens x channels in config.dtype, host or device). */
lh_status lh_aq_receive(lh_aq_receiver receiver, const void *frame, size_t frame_bytes, const int64_t *ids,
                        size_t count, void *act_out);
/* Backward, on the receiving stage: the gradient of its input (same shape and dtype),
 * quantized directly at backward_bits. */
lh_status lh_aq_send_grad(lh_aq_receiver receiver, const void *grad, const int64_t *ids, size_t count,
                          void *frame, size_t capacity, size_t *frame_bytes);
/* Backward, on the sending stage: decodes the gradient of its output into grad_out. */
lh_status lh_aq_receive_grad(lh_aq_sender sender, const void *frame, size_t frame_bytes, const int64_t *ids,
                             size_t count, void *grad_out);

/* The context's store (its own or the caller's), e.g. for lh_aq_store_prefetch or to compare
 * buffers. */
lh_status lh_aq_sender_store(lh_aq_sender sender, lh_aq_store *store);
lh_status lh_aq_receiver_store(lh_aq_receiver receiver, lh_aq_store *store);
/* Copy one example's buffer row (tokens x channels in the storage type) to host memory
 * (`capacity` >= row bytes). LH_ERR_INVALID_ARGUMENT if the example has no row yet. */
lh_status lh_aq_store_read_row(lh_aq_store store, int64_t id, void *row, size_t capacity);

typedef struct lh_aq_stats {
  size_t size;                     /* sizeof(lh_aq_stats) */
  unsigned long long frames;       /* frames produced or applied, both directions */
  unsigned long long wire_bytes;   /* their bytes, headers included */
  unsigned long long raw_bytes;    /* the same tensors in config.dtype */
  unsigned long long full_rows;    /* forward rows sent at full precision */
  unsigned long long delta_rows;   /* forward rows sent quantized */
  double drift_num, drift_den;     /* track_drift: sum |a - m|^2 and sum |a|^2 over quantized
                                      forward rows (m before the update); 0 otherwise */
} lh_aq_stats;
#define LH_AQ_STATS_INIT {sizeof(lh_aq_stats), 0, 0, 0, 0, 0, 0.0, 0.0}
lh_status lh_aq_sender_get_stats(lh_aq_sender sender, lh_aq_stats *stats);
lh_status lh_aq_receiver_get_stats(lh_aq_receiver receiver, lh_aq_stats *stats);
lh_status lh_aq_sender_reset_stats(lh_aq_sender sender);
lh_status lh_aq_receiver_reset_stats(lh_aq_receiver receiver);

/* Names for messages and flags ("fp32" "fp16" "bf16"; "delta" "direct" "off"), and the
 * reverse parses. */
lh_status lh_aq_dtype_name(lh_aq_dtype dtype, const char **name);
lh_status lh_aq_mode_name(lh_aq_mode mode, const char **name);
lh_status lh_aq_dtype_parse(const char *name, lh_aq_dtype *dtype);
lh_status lh_aq_mode_parse(const char *name, lh_aq_mode *mode);

#ifdef __cplusplus
}
#endif
#endif

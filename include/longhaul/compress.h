/* Codecs: what turns a float32 tensor into the bytes that leave a rank, and back.
 *
 * Layered like zstd: a one-shot call (lh_codec_roundtrip, for trying a codec out), then a
 * reusable context that keeps parameters, scratch and state (error-feedback residual,
 * PowerSGD's warm-started Q, shared scales) from one call to the next.
 *
 *   lh_codec *c;
 *   lh_codec_create(LH_CODEC_BLOCKQ, &c);
 *   lh_codec_set_param(c, LH_CP_BITS, 4);
 *   lh_codec_set_param(c, LH_CP_ERROR_FEEDBACK, 1);
 *   size_t cap = lh_codec_max_wire_bytes(c, n), used;     // encode into a buffer this big
 *   lh_codec_encode(c, x, n, wire, cap, &used);            // wire[0..used) is one frame
 *   lh_codec_decode(c, wire, used, y, n);                  // on the receiving side
 *   lh_codec_free(c);
 *
 * Every encoded buffer is a frame (see "Wire frame" below): magic, version, codec and
 * parameters, element count, payload length and a CRC-32C over header and payload. Decoding
 * checks all of it before touching the output: a truncated, corrupt or foreign frame gives
 * LH_ERR_CORRUPT (or LH_ERR_MISMATCH when it is well formed but made with other parameters or
 * for another element count) and never reads or writes out of bounds.
 *
 * Memory. Frames (encode's out, decode's in, lh_codec_sum_wire's buffers), scales and the
 * residual are host memory. The float32 data (encode's in, decode's out, decode_accumulate's
 * acc, lh_codec_local_scales' in) is host memory or, in a build with CUDA, device memory
 * (cudaMalloc'd or managed), told apart on each call. Device data gives byte for byte the frame
 * the same data in host memory gives, decodes to the same bits, and is refused alike
 * (non-finite input, corrupt frames: nothing written). NONE, FP16, BF16, BLOCKQ, SIGN and TOPK
 * with error feedback off run CUDA kernels (bitwise twins of the CPU code) and move only the
 * payload bytes between device and host; SHAREDQ, RANDK, POWERSGD, and every codec with error
 * feedback on, run the CPU code on a host copy of the data (correct, but a float32 round trip
 * over PCIe). Device work runs on the device that holds the data, on the legacy default
 * stream, and is finished when the call returns; input written on another stream must be
 * complete before the call. Without CUDA every pointer is taken as host memory.
 *
 * Threads: a context belongs to one thread at a time; different contexts are independent.
 *
 * Stability: the codec ids, parameter ids, flags and the functions marked stable are frozen
 * (values are only appended). The frame layout is versioned (LH_FRAME_VERSION); a decoder
 * refuses versions it does not know. Functions under "Experimental" may still change. */
#ifndef LONGHAUL_COMPRESS_H
#define LONGHAUL_COMPRESS_H

#include <stddef.h>
#include <stdint.h>
#include <longhaul/status.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------
 * Stable
 * ------------------------------------------------------------------------------------- */

typedef enum lh_codec_id {
  LH_CODEC_NONE = 0,     /* float32 verbatim (still framed and checksummed) */
  LH_CODEC_FP16 = 1,     /* IEEE half, round to nearest even */
  LH_CODEC_BF16 = 2,     /* bfloat16, round to nearest even */
  LH_CODEC_BLOCKQ = 3,   /* 1-8 bit codes, one max-abs scale per block */
  LH_CODEC_SHAREDQ = 4,  /* integer codes under scales agreed beforehand: sums exactly */
  LH_CODEC_SIGN = 5,     /* 1-bit sign, one mean-abs scale per block */
  LH_CODEC_TOPK = 6,     /* k largest magnitudes per chunk, 16-bit chunk-local indices */
  LH_CODEC_RANDK = 7,    /* k elements per chunk chosen by a shared seed: no indices sent */
  LH_CODEC_POWERSGD = 8, /* rank-r factorisation P Q^T of a rows x cols matrix */
  LH_CODEC_COUNT         /* not a codec: the number of ids */
} lh_codec_id;

/* Parameters, all integers. lh_codec_param_bounds() gives each one's range for a codec and
 * says LH_ERR_NOT_SUPPORTED when the codec has no such parameter. */
typedef enum lh_codec_param {
  LH_CP_BITS = 0,           /* BLOCKQ 1-8 (default 8); SHAREDQ 2-8 (default 8) */
  LH_CP_BLOCK = 1,          /* elements per scale: BLOCKQ, SHAREDQ, SIGN; 8-65536, default 128 */
  LH_CP_SCALE_TYPE = 2,     /* lh_scale_type for BLOCKQ and SIGN scales; default FP32 */
  LH_CP_ROUNDING = 3,       /* lh_rounding for BLOCKQ, SHAREDQ; default NEAREST */
  LH_CP_CHUNK = 4,          /* TOPK, RANDK: elements per chunk, 1-65536, default 4096 */
  LH_CP_K = 5,              /* TOPK, RANDK: elements kept per chunk, 1-65536, default 41 */
  LH_CP_TOPK_METHOD = 6,    /* lh_topk_method; default EXACT */
  LH_CP_RANK = 7,           /* POWERSGD rank r, 1-8, default 2 */
  LH_CP_ROWS = 8,           /* POWERSGD rows; cols = n / rows; 1-2^30, default 1 */
  LH_CP_RANKS = 9,          /* SHAREDQ: how many ranks' codes will be summed, 1-65536,
                               default 1; buys ceil(log2 ranks) bits of headroom */
  LH_CP_ZSTD_LEVEL = 10,    /* every codec: 0 = off (default), 1-19 = zstd on the payload */
  LH_CP_ERROR_FEEDBACK = 11,/* every lossy codec: 0 off (default), 1 on */
  LH_CP_COUNT               /* not a parameter */
} lh_codec_param;

typedef enum lh_scale_type { LH_SCALE_FP32 = 0, LH_SCALE_FP16 = 1 } lh_scale_type;
typedef enum lh_rounding { LH_ROUND_NEAREST = 0, LH_ROUND_STOCHASTIC = 1 } lh_rounding;
typedef enum lh_topk_method {
  LH_TOPK_EXACT = 0,  /* the k largest |x| of each chunk, ties to the lower index */
  LH_TOPK_SAMPLED = 1 /* a threshold estimated from a sample narrows the search, then the
                         same selection: the same bytes as EXACT, faster on most inputs (a
                         chunk whose sample misleads falls back to the exact pass) */
} lh_topk_method;

/* What a codec promises; lh_codec_flags() returns an OR of these. */
#define LH_CODEC_F_LOSSLESS 0x1u     /* decode(encode(x)) == x bit for bit (NONE only) */
#define LH_CODEC_F_SUMMABLE 0x2u     /* payloads of several ranks add on the wire
                                        (lh_codec_sum_wire) without decoding: FP16, BF16
                                        (re-rounded per add), SHAREDQ (exact), RANDK */
#define LH_CODEC_F_SHARED_SEED 0x4u  /* every rank must use the same seed and step (RANDK,
                                        POWERSGD's initial Q) */
#define LH_CODEC_F_SHARED_SCALE 0x8u /* scales must be agreed before encoding (SHAREDQ):
                                        lh_codec_local_scales, max-reduce, set_scales */
#define LH_CODEC_F_DETERMINISTIC 0x10u /* same input, parameters and key: same bytes. Every
                                          codec is, stochastic rounding included, because
                                          the random bits are keyed by element, not thread */
#define LH_CODEC_F_STATEFUL 0x20u    /* the context keeps state between calls (POWERSGD's Q;
                                        any codec with error feedback on) */

typedef struct lh_codec_s lh_codec; /* opaque context */

/* The name of a codec ("blockq") and the reverse; the name of a parameter ("bits"). */
lh_status lh_codec_name(lh_codec_id id, const char **name);
lh_status lh_codec_parse(const char *name, lh_codec_id *id);
lh_status lh_codec_param_name(lh_codec_param param, const char **name);

/* The range [*lo, *hi] and default of a parameter for a codec (any pointer may be NULL).
 * LH_ERR_NOT_SUPPORTED when the codec does not use the parameter. */
lh_status lh_codec_param_bounds(lh_codec_id id, lh_codec_param param, int *lo, int *hi,
                                int *default_value);

lh_status lh_codec_create(lh_codec_id id, lh_codec **codec);
void lh_codec_free(lh_codec *codec); /* accepts NULL */

/* Parameters are checked against their bounds here (LH_ERR_INVALID_ARGUMENT naming the
 * parameter, the value and the range). Changing one drops the state (residual, Q, scales). */
lh_status lh_codec_set_param(lh_codec *codec, lh_codec_param param, int value);
lh_status lh_codec_get_param(const lh_codec *codec, lh_codec_param param, int *value);
unsigned lh_codec_flags(const lh_codec *codec);
lh_codec_id lh_codec_get_id(const lh_codec *codec);

/* The random stream for stochastic rounding, random-k and PowerSGD's first Q: Philox4x32-10
 * keyed by (seed, step, rank, element). Use the same seed on every rank; advance step once per
 * training step; rank makes stochastic rounding independent across ranks (random-k and
 * PowerSGD ignore it, their choices must be shared). Default (0, 0, 0). The step is carried in
 * the frame, and a decoder takes it from there. */
lh_status lh_codec_set_key(lh_codec *codec, uint64_t seed, uint64_t step, uint32_t rank);

/* The most bytes one frame of n elements can take (header + payload; zstd's worst case when
 * on). 0 when n is not encodable with these parameters (POWERSGD: rows must divide n). */
size_t lh_codec_max_wire_bytes(const lh_codec *codec, size_t n);

/* Encodes n floats into one frame in out[0..*out_bytes). With error feedback on, what is
 * encoded is x + e, and e keeps what the frame failed to carry (n must stay the same between
 * calls, or LH_ERR_MISMATCH; lh_codec_reset clears e). Non-finite input gives
 * LH_ERR_INVALID_ARGUMENT naming the first bad element; nothing is written then. */
lh_status lh_codec_encode(lh_codec *codec, const float *in, size_t n, void *out,
                          size_t out_capacity, size_t *out_bytes);
/* Decodes one frame of exactly n elements into out. */
lh_status lh_codec_decode(lh_codec *codec, const void *in, size_t in_bytes, float *out, size_t n);
/* acc[i] += decoded[i]; acc is untouched when the frame is refused. */
lh_status lh_codec_decode_accumulate(lh_codec *codec, const void *in, size_t in_bytes,
                                     float *acc, size_t n);

/* Drops the state: residual, PowerSGD's Q, shared scales. Parameters and key stay. */
lh_status lh_codec_reset(lh_codec *codec);

/* One-shot: encode x with a fresh context of `id` and default parameters, decode into y. Returns
 * the frame size in *wire_bytes (may be NULL). For trying codecs out; hot loops keep a context. */
lh_status lh_codec_roundtrip(lh_codec_id id, const float *x, float *y, size_t n, size_t *wire_bytes);

/* ---------------------------------------------------------------------------------------
 * Wire frame (format version 1). All integers little-endian; 64 bytes of header.
 *   0  u32 magic "LHCF"          4  u8 format version (1)   5  u8 codec id
 *   6  u8 flags (bit 0: zstd)    7  u8 header bytes (64)
 *   8  u8 bits   9 u8 scale type  10 u8 rounding  11 u8 topk method  12 u8 error feedback
 *  13  u8 zstd level (informational)  14 u16 PowerSGD rank
 *  16  u32 block  20 u32 chunk  24 u32 k  28 u32 rows (PowerSGD) or ranks (SHAREDQ)
 *  32  u64 element count         40 u64 step of the key
 *  48  u32 payload bytes before zstd  52 u32 payload bytes on the wire
 *  56  u32 seed (low 32 bits, checked)  60 u32 CRC-32C of bytes 0..59 and the payload
 * ------------------------------------------------------------------------------------- */
#define LH_FRAME_MAGIC 0x4643484Cu /* "LHCF" read as little-endian u32 */
#define LH_FRAME_VERSION 1
#define LH_FRAME_HEADER_BYTES 64

/* Reads a frame's header without decoding: codec, element count, payload bytes. Checks magic,
 * version, lengths and the checksum. Any pointer may be NULL. */
lh_status lh_frame_inspect(const void *frame, size_t frame_bytes, lh_codec_id *id,
                           uint64_t *count, size_t *payload_bytes);

/* ---------------------------------------------------------------------------------------
 * Experimental: the pieces a compressed all-reduce is built from. May change.
 * ------------------------------------------------------------------------------------- */

/* SHAREDQ: number of per-block scales for n elements; this rank's max-abs per block (to be
 * max-reduced across ranks); and the agreed scales to encode and decode with. */
size_t lh_codec_scale_count(const lh_codec *codec, size_t n);
lh_status lh_codec_local_scales(const lh_codec *codec, const float *in, size_t n, float *scales);
lh_status lh_codec_set_scales(lh_codec *codec, const float *scales, size_t count);

/* SUMMABLE codecs: adds frame `in` into frame `acc` in place, as if the two ranks' inputs had
 * been summed and encoded (exactly so for SHAREDQ and RANDK). Both frames must have the same
 * codec, parameters, step and count; acc must have room for max_wire_bytes. zstd must be off. */
lh_status lh_codec_sum_wire(lh_codec *codec, void *acc, size_t acc_capacity, size_t *acc_bytes,
                            const void *in, size_t in_bytes);

/* The error-feedback residual (NULL, 0 before the first encode). */
lh_status lh_codec_residual(const lh_codec *codec, const float **residual, size_t *n);

#ifdef __cplusplus
}
#endif
#endif

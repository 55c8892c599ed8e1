/* Helpers shared by the three quantizers (blockq.c, which defines them, sign.c and sharedq.c):
 * input checks, the residual update, the random words of a tile, quantizing, bit packing,
 * scale storage, and the tile loops of the bit-packed payloads. Internal to those three;
 * never installed. */
#ifndef LH_COMPRESS_QUANT_INTERNAL_H
#define LH_COMPRESS_QUANT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <longhaul/status.h>

#include "compress/codec_math.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Hot loops are compiled twice, for AVX2 and for baseline x86-64, and picked at load time.
 * Both give the same bits: lib/compress is built without FMA contraction. gcc only: clang 14
 * leaves extern clones unresolved across files. */
#if defined(__x86_64__) && defined(__gnu_linux__) && defined(__GNUC__) && !defined(__clang__)
#define LH_QZ_HOT __attribute__((target_clones("avx2", "default")))
#else
#define LH_QZ_HOT
#endif

#define LH_QZ_TILE 2048 /* a multiple of 8, so a tile is whole bytes of codes of any width */
lh_status lh_qz_check_input(const char *fn, const float *x, const float *e, size_t n, size_t block,
                            float limit, uint32_t *max_abs_bits);
uint32_t lh_qz_max_abs_bits(const float *x, size_t n);
float lh_qz_add_residual(const float *x, float *e, size_t n);
void lh_qz_rng_words(const lh_rng_key *key, uint64_t first, size_t n, uint32_t *words);
void lh_qz_quantize(const float *src, float *e, const uint32_t *words, size_t n, float inv,
                    float step, int max_code, uint8_t *codes);
void lh_qz_pack(const uint8_t *codes, size_t n, int bits, uint8_t *out);
void lh_qz_unpack(const uint8_t *in, size_t n, int bits, uint8_t *codes);
float lh_qz_store_scale(uint8_t *scales, size_t k, int fp16, int round_up, float s);
float lh_qz_load_scale(const uint8_t *scales, size_t k, int fp16);
lh_status lh_qz_check_scales(const char *fn, const void *scales, size_t nb, int fp16,
                             lh_status status);
/* The tile loops of the bit-packed payloads (BLOCKQ, SIGN). Blocks and tiles need not line
 * up: a block may span tiles and a tile hold many blocks. */
typedef struct lh_qz_packed_encoder {
  size_t n, block;
  int bits;
  const lh_rng_key *key; /* the random words to hand to code_run; NULL for none */
  uint8_t *codes_out;
  /* Called once per block, before code_run for any of its elements. */
  void (*begin_block)(void *ctx, size_t first, size_t len);
  /* codes[0..len) of elements first.. of the current block; words: theirs or NULL. */
  void (*code_run)(void *ctx, size_t first, size_t len, const uint32_t *words, uint8_t *codes);
  void *ctx;
} lh_qz_packed_encoder;
void lh_qz_encode_packed(const lh_qz_packed_encoder *enc);
/* Calls value_run(ctx, block index, first element, len, codes) over every run of elements
 * that share a block and a tile. */
void lh_qz_decode_packed(const uint8_t *codes_in, size_t n, size_t block, int bits,
                         void (*value_run)(void *ctx, size_t k, size_t first, size_t len,
                                           const uint8_t *codes),
                         void *ctx);

#ifdef __cplusplus
}
#endif
#endif

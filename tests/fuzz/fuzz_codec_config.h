/* How a codec fuzz input is laid out, shared by the fuzz target (fuzz_codec.c) and the seed
 * writer (make_codec_seeds.c):
 *   byte 0  parameter variant: picks the codec's parameters (lh_fuzz_configure)
 *   byte 1  mode bits (LH_FUZZ_*)
 *   byte 2- the frame
 * The mode bits let the fuzzer reach past the checksum: a frame whose CRC it fixes up before
 * decoding exercises the field and payload checks, which a random byte flip would otherwise
 * never pass the CRC to reach. */
#ifndef LH_FUZZ_CODEC_CONFIG_H
#define LH_FUZZ_CODEC_CONFIG_H

#include <stdint.h>
#include <longhaul/compress.h>

#define LH_FUZZ_FIX_LENGTH 0x1u /* set the header's payload length to what follows it */
#define LH_FUZZ_FIX_CRC 0x2u    /* recompute the CRC */
#define LH_FUZZ_N_FROM_FRAME 0x4u /* decode into exactly the element count the frame claims */
#define LH_FUZZ_MAX_ELEMENTS (1u << 16)

/* One of 256 parameter sets for the codec; every field that the frame checks is varied so that
 * mismatches are reachable too. Returns 0 on success. */
static inline int lh_fuzz_configure(lh_codec *c, lh_codec_id id, uint8_t v) {
  static const int blocks[4] = {8, 32, 128, 1000};
  static const int chunks[4] = {1, 100, 4096, 65536};
  static const int ks[4] = {1, 3, 41, 65536};
  int st = 0;
  switch (id) {
  case LH_CODEC_BLOCKQ:
    st |= lh_codec_set_param(c, LH_CP_BITS, 1 + (v & 7));
    st |= lh_codec_set_param(c, LH_CP_SCALE_TYPE, (v >> 3) & 1);
    st |= lh_codec_set_param(c, LH_CP_ROUNDING, (v >> 4) & 1);
    st |= lh_codec_set_param(c, LH_CP_BLOCK, blocks[(v >> 5) & 3]);
    break;
  case LH_CODEC_SHAREDQ:
    st |= lh_codec_set_param(c, LH_CP_BITS, 2 + (v & 7) % 7);
    st |= lh_codec_set_param(c, LH_CP_RANKS, 1 << (2 * ((v >> 3) & 7)));
    st |= lh_codec_set_param(c, LH_CP_BLOCK, blocks[(v >> 6) & 3]);
    break;
  case LH_CODEC_SIGN:
    st |= lh_codec_set_param(c, LH_CP_SCALE_TYPE, v & 1);
    st |= lh_codec_set_param(c, LH_CP_BLOCK, blocks[(v >> 1) & 3]);
    break;
  case LH_CODEC_TOPK:
  case LH_CODEC_RANDK:
    st |= lh_codec_set_param(c, LH_CP_CHUNK, chunks[v & 3]);
    st |= lh_codec_set_param(c, LH_CP_K, ks[(v >> 2) & 3]);
    if (id == LH_CODEC_TOPK)
      st |= lh_codec_set_param(c, LH_CP_TOPK_METHOD, (v >> 4) & 1);
    break;
  case LH_CODEC_POWERSGD:
    st |= lh_codec_set_param(c, LH_CP_RANK, 1 + (v & 7));
    st |= lh_codec_set_param(c, LH_CP_ROWS, 1 + ((v >> 3) & 31));
    break;
  default:
    break;
  }
  if (id != LH_CODEC_NONE)
    st |= lh_codec_set_param(c, LH_CP_ZSTD_LEVEL, (v & 0x80) ? 3 : 0);
  st |= lh_codec_set_key(c, 1234, v, 0);
  return st;
}

#endif

/* The wire frame (frame.c) and its checksum (crc32c.c), shared by codec.c and the tests.
 * The layout is documented in include/longhaul/compress.h. Never installed. */
#ifndef LH_COMPRESS_INTERNAL_H
#define LH_COMPRESS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <longhaul/compress.h>

#ifdef __cplusplus
extern "C" {
#endif

/* CRC-32C of data continuing from crc (start with 0). The hardware and table paths agree;
 * lh_crc32c_portable always takes the table path (tests compare the two). */
uint32_t lh_crc32c(uint32_t crc, const void *data, size_t n);
uint32_t lh_crc32c_portable(uint32_t crc, const void *data, size_t n);

#define LH_FRAME_FLAG_ZSTD 0x1u
#define LH_FRAME_KNOWN_FLAGS LH_FRAME_FLAG_ZSTD

/* A frame header, field by field (the byte offsets are in compress.h). */
typedef struct lh_frame_header {
  uint8_t version, codec, flags, header_bytes;
  uint8_t bits, scale_type, rounding, topk_method, error_feedback, zstd_level;
  uint16_t rank;
  uint32_t block, chunk, k, rows;
  uint64_t count, step;
  uint32_t raw_bytes, wire_bytes, seed_lo, crc;
} lh_frame_header;

/* Writes h's fields to out[0..60) (magic, version and header size filled in here). */
void lh_frame_write_header(const lh_frame_header *h, uint8_t *out);
/* Computes the CRC over header bytes 0..59 and the wire payload that follows the header, and
 * stores it at byte 60. */
void lh_frame_seal(uint8_t *frame, size_t wire_payload_bytes);
/* Checks magic, version, header size, known codec and flags, that frame_bytes is exactly the
 * header plus the wire payload it announces, and the CRC; fills h. LH_ERR_CORRUPT with what
 * was wrong otherwise. Reads nothing beyond frame_bytes. */
lh_status lh_frame_parse(const void *frame, size_t frame_bytes, lh_frame_header *h);

#ifdef __cplusplus
}
#endif
#endif

/* The wire frame: a 64-byte header that says what the payload is and how long, and a CRC-32C
 * over header and payload. Everything that leaves a rank encoded travels in one.
 *
 * Why so strict: a frame arrives from another process, possibly another host, over links that
 * may truncate or reorder under failure. Every field is checked before any byte of payload is
 * interpreted, and lengths are checked against what the caller actually holds, so a broken
 * frame is an error message rather than a read past a buffer. */
#include <string.h>

#include "common/bytes.h"
#include "common/internal.h"
#include "compress/compress_internal.h"

void lh_frame_write_header(const lh_frame_header *h, uint8_t *out) {
  memset(out, 0, LH_FRAME_HEADER_BYTES);
  lh_put_le32(out + 0, LH_FRAME_MAGIC);
  out[4] = LH_FRAME_VERSION;
  out[5] = h->codec;
  out[6] = h->flags;
  out[7] = LH_FRAME_HEADER_BYTES;
  out[8] = h->bits;
  out[9] = h->scale_type;
  out[10] = h->rounding;
  out[11] = h->topk_method;
  out[12] = h->error_feedback;
  out[13] = h->zstd_level;
  lh_put_le16(out + 14, h->rank);
  lh_put_le32(out + 16, h->block);
  lh_put_le32(out + 20, h->chunk);
  lh_put_le32(out + 24, h->k);
  lh_put_le32(out + 28, h->rows);
  lh_put_le64(out + 32, h->count);
  lh_put_le64(out + 40, h->step);
  lh_put_le32(out + 48, h->raw_bytes);
  lh_put_le32(out + 52, h->wire_bytes);
  lh_put_le32(out + 56, h->seed_lo);
}

/* The CRC covers bytes 0..59 of the header, then the payload; bytes 60..63 hold it. */
static uint32_t frame_crc(const uint8_t *frame, size_t wire_payload_bytes) {
  uint32_t crc = lh_crc32c(0, frame, 60);
  return lh_crc32c(crc, frame + LH_FRAME_HEADER_BYTES, wire_payload_bytes);
}

void lh_frame_seal(uint8_t *frame, size_t wire_payload_bytes) {
  lh_put_le32(frame + 60, frame_crc(frame, wire_payload_bytes));
}

lh_status lh_frame_parse(const void *frame, size_t frame_bytes, lh_frame_header *h) {
  const uint8_t *p = frame;
  if (!frame || !h)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "frame: NULL %s", frame ? "header" : "frame");
  if (frame_bytes < LH_FRAME_HEADER_BYTES)
    return lh_error(LH_ERR_CORRUPT, "frame: %zu bytes is shorter than the %d-byte header (truncated)",
                    frame_bytes, LH_FRAME_HEADER_BYTES);
  uint32_t magic = lh_get_le32(p);
  if (magic != LH_FRAME_MAGIC)
    return lh_error(LH_ERR_CORRUPT, "frame: bad magic 0x%08x (expected 0x%08x, \"LHCF\"): not a Longhaul frame",
                    magic, LH_FRAME_MAGIC);
  if (p[4] != LH_FRAME_VERSION)
    return lh_error(LH_ERR_CORRUPT, "frame: format version %u is not known to this library (it reads version %d)",
                    p[4], LH_FRAME_VERSION);
  if (p[7] != LH_FRAME_HEADER_BYTES)
    return lh_error(LH_ERR_CORRUPT, "frame: header size %u, expected %d", p[7], LH_FRAME_HEADER_BYTES);
  memset(h, 0, sizeof *h);
  h->version = p[4];
  h->codec = p[5];
  h->flags = p[6];
  h->header_bytes = p[7];
  h->bits = p[8];
  h->scale_type = p[9];
  h->rounding = p[10];
  h->topk_method = p[11];
  h->error_feedback = p[12];
  h->zstd_level = p[13];
  h->rank = lh_get_le16(p + 14);
  h->block = lh_get_le32(p + 16);
  h->chunk = lh_get_le32(p + 20);
  h->k = lh_get_le32(p + 24);
  h->rows = lh_get_le32(p + 28);
  h->count = lh_get_le64(p + 32);
  h->step = lh_get_le64(p + 40);
  h->raw_bytes = lh_get_le32(p + 48);
  h->wire_bytes = lh_get_le32(p + 52);
  h->seed_lo = lh_get_le32(p + 56);
  h->crc = lh_get_le32(p + 60);
  if (frame_bytes - LH_FRAME_HEADER_BYTES != h->wire_bytes)
    return lh_error(LH_ERR_CORRUPT, "frame: header announces %u payload bytes but %zu follow it (%s)",
                    h->wire_bytes, frame_bytes - LH_FRAME_HEADER_BYTES,
                    frame_bytes - LH_FRAME_HEADER_BYTES < h->wire_bytes ? "truncated" : "trailing bytes");
  uint32_t crc = frame_crc(p, h->wire_bytes);
  if (crc != h->crc)
    return lh_error(LH_ERR_CORRUPT, "frame: checksum mismatch (CRC-32C 0x%08x, header says 0x%08x): "
                    "the frame was damaged", crc, h->crc);
  /* Fields below are covered by the checksum, so a failure here means a sender that is not
   * this library (or a newer one), not line noise. */
  if (h->codec >= LH_CODEC_COUNT)
    return lh_error(LH_ERR_CORRUPT, "frame: unknown codec id %u", h->codec);
  if (h->flags & ~LH_FRAME_KNOWN_FLAGS)
    return lh_error(LH_ERR_CORRUPT, "frame: unknown flag bits 0x%02x", h->flags & ~LH_FRAME_KNOWN_FLAGS);
  if (!(h->flags & LH_FRAME_FLAG_ZSTD) && h->raw_bytes != h->wire_bytes)
    return lh_error(LH_ERR_CORRUPT, "frame: payload of %u bytes on the wire, %u before compression, "
                    "but the frame is not compressed", h->wire_bytes, h->raw_bytes);
  return LH_SUCCESS;
}

/* The AQ-SGD wire frame: a 48-byte little-endian header, then the payload.
 *
 *   offset  size  field
 *    0      4     magic "LHAQ"
 *    4      1     format version (1)
 *    5      1     kind: 1 forward (activations), 2 backward (gradients)
 *    6      1     mode (lh_aq_mode)
 *    7      1     bits of the codes (0 when every row is sent in the storage type)
 *    8      1     quantizer (lh_aq_quantizer)
 *    9      1     storage type of full-precision rows (lh_aq_dtype)
 *   10      1     rounding (lh_rounding)
 *   11      1     0
 *   12      2     group (PER_TOKEN_GROUP), else 0
 *   14      2     boundary
 *   16      4     examples in the frame
 *   20      4     of which sent at full precision (first in the payload)
 *   24      4     tokens per example
 *   28      4     channels per token
 *   32      8     hash of the example ids, in order
 *   40      4     CRC-32C of the payload
 *   44      4     CRC-32C of bytes 0-43
 *   48            payload: full rows | fp16 scales | packed codes
 *
 * The header names every setting the receiver's arithmetic depends on, so a frame from a
 * differently configured sender is refused by name rather than decoded into garbage. */
#include "aqsgd/frame.h"

#include <string.h>

#include "common/bytes.h"
#include "common/internal.h"
#include "compress/compress_internal.h"

#define LH_AQ_MAGIC 0x5141484Cu /* "LHAQ" read as a little-endian u32 */
#define LH_AQ_FORMAT 1

uint64_t lh_aq_ids_hash(const int64_t *ids, size_t count) {
  uint64_t h = lh_mix64(0x6C68617173676431ull ^ count);
  for (size_t i = 0; i < count; i++)
    h = lh_mix64(h ^ (uint64_t)ids[i]) + i; /* + i: the order matters, not only the set */
  return h;
}

void lh_aq_frame_write(const lh_aq_frame_header *h, uint8_t *frame, size_t payload_bytes) {
  memset(frame, 0, LH_AQ_FRAME_HEADER_BYTES);
  lh_put_le32(frame, LH_AQ_MAGIC);
  frame[4] = LH_AQ_FORMAT;
  frame[5] = (uint8_t)h->kind;
  frame[6] = (uint8_t)h->mode;
  frame[7] = (uint8_t)h->bits;
  frame[8] = (uint8_t)h->quantizer;
  frame[9] = (uint8_t)h->storage;
  frame[10] = (uint8_t)h->rounding;
  lh_put_le16(frame + 12, (uint32_t)h->group);
  lh_put_le16(frame + 14, (uint32_t)h->boundary);
  lh_put_le32(frame + 16, h->count);
  lh_put_le32(frame + 20, h->full);
  lh_put_le32(frame + 24, h->tokens);
  lh_put_le32(frame + 28, h->channels);
  lh_put_le64(frame + 32, h->ids_hash);
  lh_put_le32(frame + 40, lh_crc32c(0, frame + LH_AQ_FRAME_HEADER_BYTES, payload_bytes));
  lh_put_le32(frame + 44, lh_crc32c(0, frame, 44));
}

lh_status lh_aq_frame_read(const uint8_t *frame, size_t frame_bytes, lh_aq_frame_header *h) {
  if (frame_bytes < LH_AQ_FRAME_HEADER_BYTES)
    return lh_error(LH_ERR_CORRUPT, "AQ-SGD frame of %zu bytes is shorter than its %d-byte header", frame_bytes,
                    LH_AQ_FRAME_HEADER_BYTES);
  if (lh_get_le32(frame) != LH_AQ_MAGIC)
    return lh_error(LH_ERR_CORRUPT, "not an AQ-SGD frame (magic 0x%08x, expected 0x%08x)", lh_get_le32(frame),
                    LH_AQ_MAGIC);
  if (lh_get_le32(frame + 44) != lh_crc32c(0, frame, 44))
    return lh_error(LH_ERR_CORRUPT, "AQ-SGD frame header fails its CRC-32C check");
  if (frame[4] != LH_AQ_FORMAT)
    return lh_error(LH_ERR_MISMATCH, "AQ-SGD frame format %u, this library reads format %d", frame[4],
                    LH_AQ_FORMAT);
  h->kind = frame[5];
  h->mode = frame[6];
  h->bits = frame[7];
  h->quantizer = frame[8];
  h->storage = frame[9];
  h->rounding = frame[10];
  h->group = (int)lh_get_le16(frame + 12);
  h->boundary = (int)lh_get_le16(frame + 14);
  h->count = lh_get_le32(frame + 16);
  h->full = lh_get_le32(frame + 20);
  h->tokens = lh_get_le32(frame + 24);
  h->channels = lh_get_le32(frame + 28);
  h->ids_hash = lh_get_le64(frame + 32);
  h->payload_crc = lh_get_le32(frame + 40);
  return LH_SUCCESS;
}

lh_status lh_aq_frame_check_payload(const uint8_t *frame, size_t frame_bytes, const lh_aq_frame_header *h) {
  uint32_t crc = lh_crc32c(0, frame + LH_AQ_FRAME_HEADER_BYTES, frame_bytes - LH_AQ_FRAME_HEADER_BYTES);
  if (crc != h->payload_crc)
    return lh_error(LH_ERR_CORRUPT, "AQ-SGD frame payload (%zu bytes) fails its CRC-32C check",
                    frame_bytes - LH_AQ_FRAME_HEADER_BYTES);
  return LH_SUCCESS;
}

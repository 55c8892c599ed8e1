/* The AQ-SGD wire frame's header (layout in frame.c). Never installed. */
#ifndef LH_AQSGD_FRAME_H
#define LH_AQSGD_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include <longhaul/aqsgd.h>

enum { LH_AQ_KIND_FORWARD = 1, LH_AQ_KIND_BACKWARD = 2 };

typedef struct lh_aq_frame_header {
  int kind, mode, bits, quantizer, storage, rounding, group, boundary;
  uint32_t count, full, tokens, channels;
  uint64_t ids_hash;
  uint32_t payload_crc; /* filled by lh_aq_frame_read */
} lh_aq_frame_header;

/* The hash of a call's example ids, order included. */
uint64_t lh_aq_ids_hash(const int64_t *ids, size_t count);
/* Writes the header in front of a payload already at frame + LH_AQ_FRAME_HEADER_BYTES. */
void lh_aq_frame_write(const lh_aq_frame_header *h, uint8_t *frame, size_t payload_bytes);
/* Checks the magic, the header's CRC and the format, and fills *h; the payload is not read. */
lh_status lh_aq_frame_read(const uint8_t *frame, size_t frame_bytes, lh_aq_frame_header *h);
/* Checks the payload's CRC (after the caller checked frame_bytes against the header). */
lh_status lh_aq_frame_check_payload(const uint8_t *frame, size_t frame_bytes, const lh_aq_frame_header *h);

#endif

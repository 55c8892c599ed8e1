/* What the AQ-SGD context files share: one end's state (lh_aq_end, the same for a sender
 * and a receiver), the split of a call, and the functions of config.c, aqsgd.c and device.c.
 * Never installed. */
#ifndef LH_AQSGD_CONTEXT_H
#define LH_AQSGD_CONTEXT_H

#include <longhaul/aqsgd.h>

#include "aqsgd/aqsgd_internal.h"
#include "aqsgd/store_internal.h"

/* The rows of one call, reordered: first-visit rows first, then the quantized ones. Position
 * k of every array describes the same row; rows[k] is its position in the caller's batch. */
typedef struct lh_aq_split {
  size_t full, delta;
  uint32_t *rows;
  int64_t *ids, *slots;
  uint32_t *visits;
} lh_aq_split;

typedef struct lh_aq_end {
  const char *role; /* "sender" or "receiver", for messages */
  lh_aq_config cfg; /* resolved */
  lh_aq_qparams fwd, bwd;
  size_t elems;     /* per example: tokens x channels */
  lh_aq_store store;
  int own_store;
  lh_aq_stats stats;
  int broken;       /* an encode failed half way: the buffers may differ from the peer's */
  /* host scratch, grown to the largest call */
  size_t cap;
  int64_t *slots, *split_ids, *split_slots;
  uint32_t *visits, *split_visits, *split_rows;
  void *host_buf;   /* staging of activations, or an aligned payload */
  size_t host_buf_bytes;
  void *device_buf; /* row metadata, payload and staged activations on the device */
  size_t device_buf_bytes;
} lh_aq_end;

/* Does the mode keep buffer rows / visit counts? */
static inline int lh_aq_keeps_rows(const lh_aq_config *c) { return c->mode == LH_AQ_DELTA; }
static inline int lh_aq_keeps_visits(const lh_aq_config *c) { return c->mode != LH_AQ_OFF; }
/* The store's rows (host or device), NULL when the mode keeps none. */
static inline void *lh_aq_end_rows(const lh_aq_end *e) { return lh_aq_keeps_rows(&e->cfg) ? e->store->base : NULL; }

/* config.c: checks a caller's config and fills in the defaults; the quantizer's parameters of
 * one direction; payload bytes of a forward call (full rows + quantized rows) and a backward. */
lh_status lh_aq_resolve(const lh_aq_config *in, lh_aq_config *out);
lh_aq_qparams lh_aq_qparams_of(const lh_aq_config *c, int backward);
size_t lh_aq_forward_payload(const lh_aq_config *c, const lh_aq_qparams *p, size_t full, size_t delta);
size_t lh_aq_backward_payload(const lh_aq_config *c, const lh_aq_qparams *p, size_t count);

/* aqsgd.c: refuses scales >= 0x7C00 (non-finite or beyond fp16), naming the example or channel;
 * `first` is the split position of the scales' first row. */
lh_status lh_aq_check_scales(lh_aq_end *e, const uint16_t *scales, size_t n, const lh_aq_split *s, size_t first,
                             const lh_aq_qparams *p);

#ifdef LH_HAVE_CUDA
/* device.c: the same payloads as the host paths, made by the CUDA kernels. Tensors may be on
 * the host (staged to the device); payloads are host memory. A failure part way through an
 * update of the buffers marks the end broken. */
lh_status lh_aq_device_encode_forward(lh_aq_end *e, const void *act, const lh_aq_split *s, size_t count,
                                      uint8_t *payload, size_t payload_bytes);
lh_status lh_aq_device_decode_forward(lh_aq_end *e, const uint8_t *payload, size_t payload_bytes,
                                      const lh_aq_split *s, size_t count, void *out);
lh_status lh_aq_device_encode_backward(lh_aq_end *e, const void *grad, const lh_aq_split *s, size_t count,
                                       uint8_t *payload, size_t payload_bytes);
lh_status lh_aq_device_decode_backward(lh_aq_end *e, const uint8_t *payload, size_t payload_bytes,
                                       const lh_aq_split *s, size_t count, void *out);
#endif

#endif

/* The AQ-SGD sender and receiver contexts: the split of a call into first-visit (full
 * precision) and later (quantized delta) rows, the frame around the payload, the checks of a
 * received frame, and the host paths (the CPU twins); where the arithmetic runs is decided
 * here, the device paths are in device.c and the configuration in config.c (see aqsgd.h for
 * the rules and the format; aqsgd_internal.h for the arithmetic).
 *
 * Both ends share one structure (lh_aq_end): they hold the same kind of state and must make
 * the same decisions (which rows are first visits, which rows they use) from the same inputs,
 * which is easiest to guarantee with one piece of code. */
#include <stdlib.h>
#include <string.h>

#include "aqsgd/context.h"
#include "aqsgd/frame.h"
#include "aqsgd/store_internal.h"
#include "common/internal.h"

struct lh_aq_sender_s {
  lh_aq_end end;
};
struct lh_aq_receiver_s {
  lh_aq_end end;
};

/* ---- create / free ------------------------------------------------------------------------ */
static void end_release(lh_aq_end *e) {
  if (e->store) {
    lh_aq_store_release(e->store);
    if (e->own_store)
      lh_aq_store_free(e->store);
  }
  free(e->slots);
  free(e->split_ids);
  free(e->split_slots);
  free(e->visits);
  free(e->split_visits);
  free(e->split_rows);
  free(e->host_buf);
  lh_device_free(e->device_buf);
}

static lh_status end_init(lh_aq_end *e, const lh_aq_config *config, const char *role) {
  memset(e, 0, sizeof *e);
  e->role = role;
  LH_CHECK(lh_aq_resolve(config, &e->cfg));
  e->fwd = lh_aq_qparams_of(&e->cfg, 0);
  e->bwd = lh_aq_qparams_of(&e->cfg, 1);
  e->elems = e->cfg.tokens * e->cfg.channels;
  e->stats.size = sizeof e->stats;
  if (!lh_aq_keeps_visits(&e->cfg))
    return LH_SUCCESS; /* OFF: stateless (a store given is not used) */
  size_t row_bytes = lh_aq_keeps_rows(&e->cfg) ? e->elems * lh_aq_dtype_bytes((int)e->cfg.storage) : 0;
  if (e->cfg.store) {
    LH_CHECK(lh_aq_store_claim(e->cfg.store, row_bytes));
    if (e->cfg.store->config.examples < e->cfg.examples) {
      lh_aq_store_release(e->cfg.store);
      return lh_error(LH_ERR_INVALID_ARGUMENT, "the store holds example ids below %zu, the config has %zu examples",
                      e->cfg.store->config.examples, e->cfg.examples);
    }
    e->store = e->cfg.store;
    return LH_SUCCESS;
  }
  lh_aq_store_config sc = LH_AQ_STORE_CONFIG_INIT;
  sc.examples = e->cfg.examples;
  sc.row_bytes = row_bytes;
  LH_CHECK(lh_aq_store_create(&sc, &e->store));
  e->own_store = 1;
  lh_status st = lh_aq_store_claim(e->store, row_bytes);
  if (st != LH_SUCCESS)
    return st;
  return LH_SUCCESS;
}

lh_status lh_aq_sender_create(const lh_aq_config *config, lh_aq_sender *sender) {
  if (!sender)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_sender_create: sender is NULL");
  *sender = NULL;
  lh_aq_sender s = lh_calloc(1, sizeof *s, "an AQ-SGD sender");
  if (!s)
    return LH_ERR_OUT_OF_MEMORY;
  lh_status st = end_init(&s->end, config, "sender");
  if (st != LH_SUCCESS) {
    end_release(&s->end);
    free(s);
    return st;
  }
  *sender = s;
  return LH_SUCCESS;
}

lh_status lh_aq_receiver_create(const lh_aq_config *config, lh_aq_receiver *receiver) {
  if (!receiver)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_receiver_create: receiver is NULL");
  *receiver = NULL;
  lh_aq_receiver r = lh_calloc(1, sizeof *r, "an AQ-SGD receiver");
  if (!r)
    return LH_ERR_OUT_OF_MEMORY;
  lh_status st = end_init(&r->end, config, "receiver");
  if (st != LH_SUCCESS) {
    end_release(&r->end);
    free(r);
    return st;
  }
  *receiver = r;
  return LH_SUCCESS;
}

lh_status lh_aq_sender_free(lh_aq_sender sender) {
  if (sender) {
    end_release(&sender->end);
    free(sender);
  }
  return LH_SUCCESS;
}
lh_status lh_aq_receiver_free(lh_aq_receiver receiver) {
  if (receiver) {
    end_release(&receiver->end);
    free(receiver);
  }
  return LH_SUCCESS;
}

lh_status lh_aq_sender_store(lh_aq_sender sender, lh_aq_store *store) {
  if (!sender || !store)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_sender_store: NULL argument");
  *store = sender->end.store;
  return LH_SUCCESS;
}
lh_status lh_aq_receiver_store(lh_aq_receiver receiver, lh_aq_store *store) {
  if (!receiver || !store)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_receiver_store: NULL argument");
  *store = receiver->end.store;
  return LH_SUCCESS;
}

lh_status lh_aq_sender_get_stats(lh_aq_sender sender, lh_aq_stats *stats) {
  if (!sender || !stats || stats->size != sizeof(lh_aq_stats))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_sender_get_stats: NULL argument or stats.size not set "
                                             "(use LH_AQ_STATS_INIT)");
  *stats = sender->end.stats;
  return LH_SUCCESS;
}
lh_status lh_aq_receiver_get_stats(lh_aq_receiver receiver, lh_aq_stats *stats) {
  if (!receiver || !stats || stats->size != sizeof(lh_aq_stats))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_receiver_get_stats: NULL argument or stats.size not set "
                                             "(use LH_AQ_STATS_INIT)");
  *stats = receiver->end.stats;
  return LH_SUCCESS;
}
static void stats_clear(lh_aq_stats *s) {
  memset(s, 0, sizeof *s);
  s->size = sizeof *s;
}
lh_status lh_aq_sender_reset_stats(lh_aq_sender sender) {
  if (!sender)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_sender_reset_stats: sender is NULL");
  stats_clear(&sender->end.stats);
  return LH_SUCCESS;
}
lh_status lh_aq_receiver_reset_stats(lh_aq_receiver receiver) {
  if (!receiver)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_receiver_reset_stats: receiver is NULL");
  stats_clear(&receiver->end.stats);
  return LH_SUCCESS;
}

/* ---- the split of a call ------------------------------------------------------------------ */
static lh_status grow_scratch(lh_aq_end *e, size_t count) {
  if (count <= e->cap)
    return LH_SUCCESS;
  size_t cap = count > 2 * e->cap ? count : 2 * e->cap;
  int64_t *a = realloc(e->slots, cap * sizeof *a), *b = NULL, *c = NULL;
  if (a) e->slots = a;
  if (a && (b = realloc(e->split_ids, cap * sizeof *b))) e->split_ids = b;
  if (b && (c = realloc(e->split_slots, cap * sizeof *c))) e->split_slots = c;
  uint32_t *d = NULL, *f = NULL, *g = NULL;
  if (c && (d = realloc(e->visits, cap * sizeof *d))) e->visits = d;
  if (d && (f = realloc(e->split_visits, cap * sizeof *f))) e->split_visits = f;
  if (f && (g = realloc(e->split_rows, cap * sizeof *g))) e->split_rows = g;
  if (!g)
    return lh_error(LH_ERR_OUT_OF_MEMORY, "AQ-SGD %s: no memory for the row lists of %zu examples", e->role, count);
  e->cap = cap;
  return LH_SUCCESS;
}

static lh_status check_ids_in_range(const lh_aq_end *e, const int64_t *ids, size_t count) {
  for (size_t i = 0; i < count; i++)
    if (ids[i] < 0 || (uint64_t)ids[i] >= e->cfg.examples)
      return lh_error(LH_ERR_INVALID_ARGUMENT, "AQ-SGD %s: example id %lld (position %zu) is outside 0..%zu", e->role,
                      (long long)ids[i], i, e->cfg.examples - 1);
  return LH_SUCCESS;
}

/* Looks the ids up (checking them) and orders the rows: first visits, then the rest. Rows are
 * not yet assigned to new examples (lh_aq_store_assign does that once nothing can fail). */
static lh_status split_call(lh_aq_end *e, const int64_t *ids, size_t count, int forward, lh_aq_split *s) {
  LH_CHECK(grow_scratch(e, count));
  memset(s, 0, sizeof *s);
  s->rows = e->split_rows;
  s->ids = e->split_ids;
  s->slots = e->split_slots;
  s->visits = e->split_visits;
  if (!lh_aq_keeps_visits(&e->cfg)) {
    LH_CHECK(check_ids_in_range(e, ids, count));
    for (size_t i = 0; i < count; i++) {
      s->rows[i] = (uint32_t)i;
      s->ids[i] = ids[i];
      s->slots[i] = -1;
      s->visits[i] = 0;
    }
    s->full = forward ? count : 0;
    s->delta = forward ? 0 : count;
    return LH_SUCCESS;
  }
  LH_CHECK(lh_aq_store_lookup(e->store, ids, count, e->slots, e->visits));
  size_t k = 0;
  for (int pass = 0; pass < 2; pass++) /* full rows, then quantized rows, each in batch order */
    for (size_t i = 0; i < count; i++) {
      int full = forward && e->visits[i] < (uint32_t)e->cfg.warmup_epochs;
      if (full != (pass == 0))
        continue;
      s->rows[k] = (uint32_t)i;
      s->ids[k] = ids[i];
      s->slots[k] = e->slots[i];
      s->visits[k] = e->visits[i];
      k++;
      if (pass == 0)
        s->full++;
    }
  s->delta = count - s->full;
  return LH_SUCCESS;
}

/* Gives rows to first-visit examples (all or nothing) and copies their slots into the split. */
static lh_status assign_rows(lh_aq_end *e, const int64_t *ids, size_t count, lh_aq_split *s) {
  if (!lh_aq_keeps_rows(&e->cfg))
    return LH_SUCCESS;
  LH_CHECK(lh_aq_store_assign(e->store, ids, count, e->slots));
  for (size_t k = 0; k < count; k++)
    s->slots[k] = e->slots[s->rows[k]];
  return LH_SUCCESS;
}

/* ---- where the arithmetic runs ------------------------------------------------------------- */

/* On the device when the buffers are, or (without buffers) when the caller's tensor is. */
static int runs_on_device(const lh_aq_end *e, const void *tensor) {
  if (lh_aq_keeps_rows(&e->cfg))
    return e->store->on_device;
  return lh_is_device_pointer(tensor);
}

static lh_status host_scratch(lh_aq_end *e, size_t bytes, void **out) {
  if (bytes > e->host_buf_bytes) {
    void *p = realloc(e->host_buf, bytes);
    if (!p)
      return lh_error(LH_ERR_OUT_OF_MEMORY, "AQ-SGD %s: no memory for %zu bytes of staging", e->role, bytes);
    e->host_buf = p;
    e->host_buf_bytes = bytes;
  }
  *out = e->host_buf;
  return LH_SUCCESS;
}

/* The quantized part of a forward payload (the full rows come first): scales then codes. */
lh_status lh_aq_check_scales(lh_aq_end *e, const uint16_t *scales, size_t n, const lh_aq_split *s, size_t first,
                              const lh_aq_qparams *p) {
  for (size_t i = 0; i < n; i++)
    if (scales[i] >= 0x7C00u) {
      size_t row = p->quantizer == LH_AQ_Q_PER_TOKEN_GROUP ? i / (p->tokens * (p->channels / (size_t)p->group)) : 0;
      if (p->quantizer == LH_AQ_Q_PER_TOKEN_GROUP)
        return lh_error(LH_ERR_INVALID_ARGUMENT,
                        "AQ-SGD %s: example %lld has a non-finite value or a change above 65504 (the fp16 scale's "
                        "range) in token %zu",
                        e->role, (long long)s->ids[first + row], (i / (p->channels / (size_t)p->group)) % p->tokens);
      return lh_error(LH_ERR_INVALID_ARGUMENT,
                      "AQ-SGD %s: channel %zu has a non-finite value or a change above 65504 (the fp16 scale's "
                      "range) in this batch",
                      e->role, i);
    }
  return LH_SUCCESS;
}

/* Sum |a - m|^2 and |a|^2 over the quantized rows, before the update (host data only). */
static void track_drift(lh_aq_end *e, const void *act, const lh_aq_split *s) {
  const lh_aq_qparams *p = &e->fwd;
  const void *m = lh_aq_end_rows(e);
  double num = 0, den = 0;
  for (size_t k = s->full; k < s->full + s->delta; k++) {
    size_t a0 = (size_t)s->rows[k] * e->elems, m0 = (size_t)s->slots[k] * e->elems;
    for (size_t j = 0; j < e->elems; j++) {
      double a = lh_aq_load(act, p->dtype, a0 + j);
      double d = m ? a - lh_aq_load(m, p->storage, m0 + j) : 0.0;
      num += d * d;
      den += a * a;
    }
  }
  e->stats.drift_num += num;
  e->stats.drift_den += den;
}

/* Forward payload on the host: full rows, then (per-channel: checked scales first) the codes. */
static lh_status encode_forward_host(lh_aq_end *e, const void *act, const lh_aq_split *s, uint8_t *payload) {
  const lh_aq_qparams *p = &e->fwd;
  void *m = lh_aq_end_rows(e);
  size_t row = e->elems * lh_aq_dtype_bytes(p->storage);
  uint16_t *scales = (uint16_t *)(void *)(payload + s->full * row);
  size_t nscales = lh_aq_scale_count(p, s->delta);
  uint8_t *codes = (uint8_t *)(scales + nscales);
  const uint32_t *drows = s->rows + s->full;
  if (s->delta && p->quantizer == LH_AQ_Q_PER_CHANNEL) {
    lh_aq_channel_scales(p, act, drows, m, s->slots + s->full, s->delta, scales);
    LH_CHECK(lh_aq_check_scales(e, scales, nscales, s, s->full, p));
  }
  if (e->cfg.track_drift && e->cfg.mode == LH_AQ_DELTA)
    track_drift(e, act, s);
  lh_aq_full_encode(p, act, s->rows, m, s->slots, s->full, payload);
  if (s->delta) {
    lh_aq_encode(p, act, drows, m, s->slots + s->full, s->ids + s->full, s->visits + s->full, s->delta, scales, codes);
    lh_status st = lh_aq_check_scales(e, scales, nscales, s, s->full, p);
    if (st != LH_SUCCESS) {
      e->broken = lh_aq_keeps_rows(&e->cfg); /* the group quantizer updated the buffers as it went */
      return st;
    }
  }
  return LH_SUCCESS;
}

/* ---- forward ------------------------------------------------------------------------------- */
static lh_status check_call(const lh_aq_end *e, const char *fn, const void *tensor, const int64_t *ids, size_t count,
                            const void *frame) {
  if (!tensor && count)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: the tensor is NULL", fn);
  if (!ids && count)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: ids is NULL", fn);
  if (!frame)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: the frame is NULL", fn);
  if (count > UINT32_MAX)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: %zu examples in one call is too many", fn, count);
  if (e->broken)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "%s: an earlier call failed half way through updating this %s's buffers, which may now "
                    "differ from its peer's: recreate both ends",
                    fn, e->role);
  return LH_SUCCESS;
}

static lh_aq_frame_header header_of(const lh_aq_end *e, int kind, const lh_aq_qparams *p, size_t count, size_t full,
                                    const int64_t *ids) {
  lh_aq_frame_header h;
  memset(&h, 0, sizeof h);
  h.kind = kind;
  h.mode = (int)e->cfg.mode;
  h.bits = e->cfg.mode == LH_AQ_OFF ? 0 : p->bits;
  h.quantizer = p->quantizer;
  h.storage = p->storage;
  h.rounding = (int)e->cfg.rounding;
  h.group = p->group;
  h.boundary = e->cfg.boundary;
  h.count = (uint32_t)count;
  h.full = (uint32_t)full;
  h.tokens = (uint32_t)p->tokens;
  h.channels = (uint32_t)p->channels;
  h.ids_hash = lh_aq_ids_hash(ids, count);
  return h;
}

/* The payload is written where it will be sent, unless the frame is not aligned for fp32 rows:
 * then in scratch, copied after. */
static int payload_aligned(const void *frame) { return ((uintptr_t)frame & 3u) == 0; }

lh_status lh_aq_send(lh_aq_sender sender, const void *act, const int64_t *ids, size_t count, void *frame,
                     size_t capacity, size_t *frame_bytes) {
  if (!sender || !frame_bytes)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_send: NULL sender or frame_bytes");
  lh_aq_end *e = &sender->end;
  LH_CHECK(check_call(e, "lh_aq_send", act, ids, count, frame));
  lh_aq_split s;
  LH_CHECK(split_call(e, ids, count, 1, &s));
  size_t payload_bytes = lh_aq_forward_payload(&e->cfg, &e->fwd, s.full, s.delta);
  if (capacity < LH_AQ_FRAME_HEADER_BYTES + payload_bytes)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_send: the frame needs %zu bytes, the buffer has %zu",
                    LH_AQ_FRAME_HEADER_BYTES + payload_bytes, capacity);
  LH_CHECK(assign_rows(e, ids, count, &s));
  uint8_t *payload = (uint8_t *)frame + LH_AQ_FRAME_HEADER_BYTES;
  if (!payload_aligned(frame))
    LH_CHECK(host_scratch(e, payload_bytes, (void **)&payload));
  lh_status st;
#ifdef LH_HAVE_CUDA
  if (runs_on_device(e, act)) {
    st = lh_aq_device_encode_forward(e, act, &s, count, payload, payload_bytes);
  } else if (lh_is_device_pointer(act)) {
    size_t act_bytes = count * e->elems * lh_aq_dtype_bytes(e->fwd.dtype);
    void *host = malloc(act_bytes ? act_bytes : 1);
    if (!host)
      return lh_error(LH_ERR_OUT_OF_MEMORY, "lh_aq_send: no memory to stage %zu bytes of activations", act_bytes);
    st = lh_copy_to_host(host, act, act_bytes);
    if (st == LH_SUCCESS)
      st = encode_forward_host(e, host, &s, payload);
    free(host);
  } else
#endif
  {
    (void)runs_on_device;
    st = encode_forward_host(e, act, &s, payload);
  }
  if (st != LH_SUCCESS)
    return st;
  if (payload != (uint8_t *)frame + LH_AQ_FRAME_HEADER_BYTES)
    memcpy((uint8_t *)frame + LH_AQ_FRAME_HEADER_BYTES, payload, payload_bytes);
  lh_aq_frame_header h = header_of(e, LH_AQ_KIND_FORWARD, &e->fwd, count, s.full, ids);
  lh_aq_frame_write(&h, frame, payload_bytes);
  if (lh_aq_keeps_visits(&e->cfg))
    lh_aq_store_count_visits(e->store, ids, count);
  *frame_bytes = LH_AQ_FRAME_HEADER_BYTES + payload_bytes;
  e->stats.frames++;
  e->stats.wire_bytes += *frame_bytes;
  e->stats.raw_bytes += count * e->elems * lh_aq_dtype_bytes(e->fwd.dtype);
  e->stats.full_rows += s.full;
  e->stats.delta_rows += s.delta;
  return LH_SUCCESS;
}

/* Checks a frame against this end's settings and the call, before anything is applied. */
static lh_status check_frame(lh_aq_end *e, const char *fn, const uint8_t *frame, size_t frame_bytes, int kind,
                             const lh_aq_qparams *p, const int64_t *ids, size_t count, lh_aq_frame_header *h) {
  LH_CHECK(lh_aq_frame_read(frame, frame_bytes, h));
  if (h->kind != kind)
    return lh_error(LH_ERR_MISMATCH, "%s: got a %s frame where a %s frame was expected", fn,
                    h->kind == LH_AQ_KIND_FORWARD ? "forward" : "backward",
                    kind == LH_AQ_KIND_FORWARD ? "forward" : "backward");
  lh_aq_frame_header want = header_of(e, kind, p, count, 0, ids);
  const char *field = NULL;
  long got = 0, expected = 0;
#define LH_AQ_FIELD(name)                                                                                    \
  if (!field && h->name != want.name) {                                                                      \
    field = #name;                                                                                           \
    got = (long)h->name;                                                                                     \
    expected = (long)want.name;                                                                              \
  }
  LH_AQ_FIELD(mode)
  LH_AQ_FIELD(bits)
  LH_AQ_FIELD(quantizer)
  LH_AQ_FIELD(storage)
  LH_AQ_FIELD(rounding)
  LH_AQ_FIELD(group)
  LH_AQ_FIELD(boundary)
  LH_AQ_FIELD(tokens)
  LH_AQ_FIELD(channels)
  LH_AQ_FIELD(count)
#undef LH_AQ_FIELD
  if (field)
    return lh_error(LH_ERR_MISMATCH, "%s: the sender's %s is %ld, this %s's is %ld", fn, field, got, e->role,
                    expected);
  if (h->ids_hash != want.ids_hash)
    return lh_error(LH_ERR_MISMATCH,
                    "%s: the example ids differ from the sender's (same count %zu, different ids or order)", fn,
                    count);
  return LH_SUCCESS;
}

static lh_status decode_forward_host(lh_aq_end *e, const uint8_t *payload, const lh_aq_split *s, void *out) {
  const lh_aq_qparams *p = &e->fwd;
  void *m = lh_aq_end_rows(e);
  size_t row = e->elems * lh_aq_dtype_bytes(p->storage);
  const uint16_t *scales = (const uint16_t *)(const void *)(payload + s->full * row);
  const uint8_t *codes = (const uint8_t *)(scales + lh_aq_scale_count(p, s->delta));
  lh_aq_full_decode(p, payload, m, s->slots, s->full, out, s->rows);
  if (s->delta)
    lh_aq_decode(p, codes, scales, m, s->slots + s->full, s->delta, out, s->rows + s->full);
  return LH_SUCCESS;
}

/* A frame's payload at an address the twins may read as fp32 rows (a copy when unaligned). */
static lh_status readable_payload(lh_aq_end *e, const void *frame, size_t payload_bytes, const uint8_t **payload) {
  *payload = (const uint8_t *)frame + LH_AQ_FRAME_HEADER_BYTES;
  if (payload_aligned(frame))
    return LH_SUCCESS;
  void *copy = NULL;
  LH_CHECK(host_scratch(e, payload_bytes, &copy));
  memcpy(copy, *payload, payload_bytes);
  *payload = copy;
  return LH_SUCCESS;
}

/* Decodes into out (host or device) from a payload on the host, on whichever side runs it. */
typedef lh_status (*host_decoder)(lh_aq_end *e, const uint8_t *payload, const lh_aq_split *s, void *out);

static lh_status decode_anywhere(lh_aq_end *e, host_decoder on_host, const uint8_t *payload, size_t payload_bytes,
                                 const lh_aq_split *s, size_t count, int backward, void *out) {
#ifdef LH_HAVE_CUDA
  size_t out_bytes = count * e->elems * lh_aq_dtype_bytes(e->fwd.dtype);
  /* Gradients have no buffers: they are decoded where the caller wants them. */
  if (backward ? lh_is_device_pointer(out) : runs_on_device(e, out)) {
    if (!backward)
      return lh_aq_device_decode_forward(e, payload, payload_bytes, s, count, out);
    return lh_aq_device_decode_backward(e, payload, payload_bytes, s, count, out);
  }
  if (lh_is_device_pointer(out)) {
    void *host = malloc(out_bytes ? out_bytes : 1);
    if (!host)
      return lh_error(LH_ERR_OUT_OF_MEMORY, "AQ-SGD %s: no memory to stage %zu bytes", e->role, out_bytes);
    lh_status st = on_host(e, payload, s, host);
    if (st == LH_SUCCESS)
      st = lh_copy_to_device(out, host, out_bytes);
    free(host);
    return st;
  }
#else
  (void)payload_bytes;
  (void)count;
  (void)backward;
#endif
  return on_host(e, payload, s, out);
}

lh_status lh_aq_receive(lh_aq_receiver receiver, const void *frame, size_t frame_bytes, const int64_t *ids,
                        size_t count, void *act_out) {
  if (!receiver)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_receive: receiver is NULL");
  lh_aq_end *e = &receiver->end;
  LH_CHECK(check_call(e, "lh_aq_receive", act_out, ids, count, frame));
  lh_aq_frame_header h;
  LH_CHECK(check_frame(e, "lh_aq_receive", frame, frame_bytes, LH_AQ_KIND_FORWARD, &e->fwd, ids, count, &h));
  lh_aq_split s;
  LH_CHECK(split_call(e, ids, count, 1, &s));
  if (h.full != s.full)
    return lh_error(LH_ERR_MISMATCH,
                    "lh_aq_receive: the sender sent %u of %zu examples at full precision, this receiver expected %zu "
                    "(the two ends' visit counts differ: was one of them restarted or given other ids?)",
                    h.full, count, s.full);
  size_t payload_bytes = lh_aq_forward_payload(&e->cfg, &e->fwd, s.full, s.delta);
  if (frame_bytes != LH_AQ_FRAME_HEADER_BYTES + payload_bytes)
    return lh_error(LH_ERR_CORRUPT, "lh_aq_receive: the frame has %zu bytes, its header implies %zu", frame_bytes,
                    LH_AQ_FRAME_HEADER_BYTES + payload_bytes);
  LH_CHECK(lh_aq_frame_check_payload(frame, frame_bytes, &h));
  const uint8_t *payload;
  LH_CHECK(readable_payload(e, frame, payload_bytes, &payload));
  size_t row = e->elems * lh_aq_dtype_bytes(e->fwd.storage);
  if (s.delta) {
    const uint8_t *sp = payload + s.full * row;
    size_t n = lh_aq_scale_count(&e->fwd, s.delta);
    for (size_t i = 0; i < n; i++) { /* the sender never sends these: the frame was made wrongly */
      uint16_t v = (uint16_t)(sp[2 * i] | sp[2 * i + 1] << 8);
      if (v >= 0x7C00u)
        return lh_error(LH_ERR_CORRUPT, "lh_aq_receive: scale %zu of the frame is not finite (0x%04x)", i, v);
    }
  }
  LH_CHECK(assign_rows(e, ids, count, &s));
  LH_CHECK(decode_anywhere(e, decode_forward_host, payload, payload_bytes, &s, count, 0, act_out));
  if (lh_aq_keeps_visits(&e->cfg))
    lh_aq_store_count_visits(e->store, ids, count);
  e->stats.frames++;
  e->stats.wire_bytes += frame_bytes;
  e->stats.raw_bytes += count * e->elems * lh_aq_dtype_bytes(e->fwd.dtype);
  e->stats.full_rows += s.full;
  e->stats.delta_rows += s.delta;
  return LH_SUCCESS;
}

/* ---- backward ------------------------------------------------------------------------------ */
static lh_status encode_backward_host(lh_aq_end *e, const void *grad, const lh_aq_split *s, uint8_t *payload) {
  const lh_aq_qparams *p = &e->bwd;
  size_t count = s->full + s->delta;
  if (e->cfg.mode == LH_AQ_OFF) {
    lh_aq_full_encode(p, grad, s->rows, NULL, s->slots, count, payload);
    return LH_SUCCESS;
  }
  uint16_t *scales = (uint16_t *)(void *)payload;
  size_t nscales = lh_aq_scale_count(p, count);
  if (p->quantizer == LH_AQ_Q_PER_CHANNEL)
    lh_aq_channel_scales(p, grad, s->rows, NULL, s->slots, count, scales);
  lh_aq_encode(p, grad, s->rows, NULL, s->slots, s->ids, s->visits, count, scales, (uint8_t *)(scales + nscales));
  return lh_aq_check_scales(e, scales, nscales, s, 0, p);
}

lh_status lh_aq_send_grad(lh_aq_receiver receiver, const void *grad, const int64_t *ids, size_t count, void *frame,
                          size_t capacity, size_t *frame_bytes) {
  if (!receiver || !frame_bytes)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_send_grad: NULL receiver or frame_bytes");
  lh_aq_end *e = &receiver->end;
  LH_CHECK(check_call(e, "lh_aq_send_grad", grad, ids, count, frame));
  lh_aq_split s;
  LH_CHECK(split_call(e, ids, count, 0, &s));
  size_t payload_bytes = lh_aq_backward_payload(&e->cfg, &e->bwd, count);
  if (capacity < LH_AQ_FRAME_HEADER_BYTES + payload_bytes)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_send_grad: the frame needs %zu bytes, the buffer has %zu",
                    LH_AQ_FRAME_HEADER_BYTES + payload_bytes, capacity);
  uint8_t *payload = (uint8_t *)frame + LH_AQ_FRAME_HEADER_BYTES;
  if (!payload_aligned(frame))
    LH_CHECK(host_scratch(e, payload_bytes, (void **)&payload));
  lh_status st;
#ifdef LH_HAVE_CUDA
  if (lh_is_device_pointer(grad)) {
    st = lh_aq_device_encode_backward(e, grad, &s, count, payload, payload_bytes);
  } else
#endif
  {
    st = encode_backward_host(e, grad, &s, payload);
  }
  if (st != LH_SUCCESS)
    return st;
  if (payload != (uint8_t *)frame + LH_AQ_FRAME_HEADER_BYTES)
    memcpy((uint8_t *)frame + LH_AQ_FRAME_HEADER_BYTES, payload, payload_bytes);
  lh_aq_frame_header h = header_of(e, LH_AQ_KIND_BACKWARD, &e->bwd, count, e->cfg.mode == LH_AQ_OFF ? count : 0, ids);
  lh_aq_frame_write(&h, frame, payload_bytes);
  *frame_bytes = LH_AQ_FRAME_HEADER_BYTES + payload_bytes;
  e->stats.frames++;
  e->stats.wire_bytes += *frame_bytes;
  e->stats.raw_bytes += count * e->elems * lh_aq_dtype_bytes(e->bwd.dtype);
  return LH_SUCCESS;
}

static lh_status decode_backward_host(lh_aq_end *e, const uint8_t *payload, const lh_aq_split *s, void *out) {
  const lh_aq_qparams *p = &e->bwd;
  size_t count = s->full + s->delta;
  if (e->cfg.mode == LH_AQ_OFF) {
    lh_aq_full_decode(p, payload, NULL, s->slots, count, out, s->rows);
    return LH_SUCCESS;
  }
  const uint16_t *scales = (const uint16_t *)(const void *)payload;
  lh_aq_decode(p, (const uint8_t *)(scales + lh_aq_scale_count(p, count)), scales, NULL, s->slots, count, out, s->rows);
  return LH_SUCCESS;
}

lh_status lh_aq_receive_grad(lh_aq_sender sender, const void *frame, size_t frame_bytes, const int64_t *ids,
                             size_t count, void *grad_out) {
  if (!sender)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_receive_grad: sender is NULL");
  lh_aq_end *e = &sender->end;
  LH_CHECK(check_call(e, "lh_aq_receive_grad", grad_out, ids, count, frame));
  lh_aq_frame_header h;
  LH_CHECK(check_frame(e, "lh_aq_receive_grad", frame, frame_bytes, LH_AQ_KIND_BACKWARD, &e->bwd, ids, count, &h));
  lh_aq_split s;
  LH_CHECK(split_call(e, ids, count, 0, &s));
  size_t payload_bytes = lh_aq_backward_payload(&e->cfg, &e->bwd, count);
  if (frame_bytes != LH_AQ_FRAME_HEADER_BYTES + payload_bytes)
    return lh_error(LH_ERR_CORRUPT, "lh_aq_receive_grad: the frame has %zu bytes, its header implies %zu",
                    frame_bytes, LH_AQ_FRAME_HEADER_BYTES + payload_bytes);
  LH_CHECK(lh_aq_frame_check_payload(frame, frame_bytes, &h));
  const uint8_t *payload;
  LH_CHECK(readable_payload(e, frame, payload_bytes, &payload));
  if (e->cfg.mode != LH_AQ_OFF)
    for (size_t i = 0, n = lh_aq_scale_count(&e->bwd, count); i < n; i++) {
      uint16_t v = (uint16_t)(payload[2 * i] | payload[2 * i + 1] << 8);
      if (v >= 0x7C00u)
        return lh_error(LH_ERR_CORRUPT, "lh_aq_receive_grad: scale %zu of the frame is not finite (0x%04x)", i, v);
    }
  LH_CHECK(decode_anywhere(e, decode_backward_host, payload, payload_bytes, &s, count, 1, grad_out));
  e->stats.frames++;
  e->stats.wire_bytes += frame_bytes;
  e->stats.raw_bytes += count * e->elems * lh_aq_dtype_bytes(e->bwd.dtype);
  return LH_SUCCESS;
}

/* The AQ-SGD contexts' device paths: the row lists go to the device, the kernels
 * (kernels/aqsgd.cu) make the payload there, and only the payload crosses to the host (or back,
 * to decode). Built with CUDA only; the context (aqsgd.c) decides when it runs. */
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "aqsgd/context.h"
#include "common/internal.h"

static lh_status cuda_failed(lh_aq_end *e, int rc, const char *what) {
  e->broken = lh_aq_keeps_rows(&e->cfg);
  return lh_error(LH_ERR_CUDA, "AQ-SGD %s: %s: %s", e->role, what, cudaGetErrorString((cudaError_t)rc));
}

/* Device scratch: the split's arrays, then `payload` bytes, then `staging` bytes. */
typedef struct device_call {
  uint32_t *rows;
  int64_t *ids, *slots;
  uint32_t *visits;
  uint8_t *payload;
  void *staging;
} device_call;

static size_t round_up8(size_t n) { return (n + 7) & ~(size_t)7; }

static lh_status device_prepare(lh_aq_end *e, const lh_aq_split *s, size_t count, size_t payload, size_t staging,
                                device_call *d) {
  size_t meta = round_up8(count * 4) * 2 + count * 16;
  size_t need = meta + round_up8(payload) + staging;
  if (need > e->device_buf_bytes) {
    lh_device_free(e->device_buf);
    e->device_buf = NULL;
    e->device_buf_bytes = 0;
    LH_CHECK(lh_device_alloc(&e->device_buf, need));
    e->device_buf_bytes = need;
  }
  uint8_t *base = e->device_buf;
  d->ids = (int64_t *)(void *)base;
  d->slots = d->ids + count;
  d->rows = (uint32_t *)(void *)(base + count * 16);
  d->visits = (uint32_t *)(void *)(base + count * 16 + round_up8(count * 4));
  d->payload = base + meta;
  d->staging = staging ? base + meta + round_up8(payload) : NULL;
  if (count) {
    LH_CHECK(lh_copy_to_device(d->ids, s->ids, count * 8));
    LH_CHECK(lh_copy_to_device(d->slots, s->slots, count * 8));
    LH_CHECK(lh_copy_to_device(d->rows, s->rows, count * 4));
    LH_CHECK(lh_copy_to_device(d->visits, s->visits, count * 4));
  }
  return LH_SUCCESS;
}

/* The same payload as encode_forward_host, made by the kernels on the device. */
lh_status lh_aq_device_encode_forward(lh_aq_end *e, const void *act, const lh_aq_split *s, size_t count,
                                       uint8_t *payload, size_t payload_bytes) {
  const lh_aq_qparams *p = &e->fwd;
  void *m = lh_aq_end_rows(e);
  size_t act_bytes = count * e->elems * lh_aq_dtype_bytes(p->dtype);
  int staged = !lh_is_device_pointer(act);
  device_call d;
  LH_CHECK(device_prepare(e, s, count, payload_bytes, staged ? act_bytes : 0, &d));
  if (staged) {
    LH_CHECK(lh_copy_to_device(d.staging, act, act_bytes));
    act = d.staging;
  }
  size_t row = e->elems * lh_aq_dtype_bytes(p->storage);
  uint16_t *scales = (uint16_t *)(void *)(d.payload + s->full * row);
  size_t nscales = lh_aq_scale_count(p, s->delta);
  uint8_t *codes = (uint8_t *)(scales + nscales);
  if (s->delta && p->quantizer == LH_AQ_Q_PER_CHANNEL) {
    int rc = lh_cuda_aq_channel_scales(p, act, d.rows + s->full, m, d.slots + s->full, s->delta, scales, NULL);
    if (rc)
      return cuda_failed(e, rc, "the per-channel scale kernel");
    uint16_t *host_scales = (uint16_t *)(void *)(payload + s->full * row);
    LH_CHECK(lh_copy_to_host(host_scales, scales, nscales * 2));
    LH_CHECK(lh_aq_check_scales(e, host_scales, nscales, s, s->full, p));
  }
  int rc = lh_cuda_aq_full_encode(p, act, d.rows, m, d.slots, s->full, d.payload, NULL);
  if (!rc && s->delta)
    rc = lh_cuda_aq_encode(p, act, d.rows + s->full, m, d.slots + s->full, d.ids + s->full, d.visits + s->full,
                           s->delta, scales, codes, NULL);
  if (rc)
    return cuda_failed(e, rc, "the AQ-SGD encode kernels");
  lh_status st = lh_copy_to_host(payload, d.payload, payload_bytes);
  if (st != LH_SUCCESS) {
    e->broken = lh_aq_keeps_rows(&e->cfg);
    return st;
  }
  if (s->delta) {
    st = lh_aq_check_scales(e, (const uint16_t *)(const void *)(payload + s->full * row), nscales, s, s->full, p);
    if (st != LH_SUCCESS)
      e->broken = lh_aq_keeps_rows(&e->cfg);
  }
  return st;
}


lh_status lh_aq_device_decode_forward(lh_aq_end *e, const uint8_t *payload, size_t payload_bytes, const lh_aq_split *s,
                                       size_t count, void *out) {
  const lh_aq_qparams *p = &e->fwd;
  void *m = lh_aq_end_rows(e);
  size_t out_bytes = count * e->elems * lh_aq_dtype_bytes(p->dtype);
  int staged = !lh_is_device_pointer(out);
  device_call d;
  LH_CHECK(device_prepare(e, s, count, payload_bytes, staged ? out_bytes : 0, &d));
  LH_CHECK(lh_copy_to_device(d.payload, payload, payload_bytes));
  void *dout = staged ? d.staging : out;
  size_t row = e->elems * lh_aq_dtype_bytes(p->storage);
  const uint16_t *scales = (const uint16_t *)(const void *)(d.payload + s->full * row);
  const uint8_t *codes = (const uint8_t *)(scales + lh_aq_scale_count(p, s->delta));
  int rc = lh_cuda_aq_full_decode(p, d.payload, m, d.slots, s->full, dout, d.rows, NULL);
  if (!rc && s->delta)
    rc = lh_cuda_aq_decode(p, codes, scales, m, d.slots + s->full, s->delta, dout, d.rows + s->full, NULL);
  if (rc)
    return cuda_failed(e, rc, "the AQ-SGD decode kernels");
  if (staged)
    return lh_copy_to_host(out, dout, out_bytes);
  return cudaDeviceSynchronize() == cudaSuccess ? LH_SUCCESS : cuda_failed(e, (int)cudaGetLastError(), "decode");
}

/* Gradients have no buffers: they are decoded where the caller wants them (out on the device). */
lh_status lh_aq_device_decode_backward(lh_aq_end *e, const uint8_t *payload, size_t payload_bytes,
                                       const lh_aq_split *s, size_t count, void *out) {
  const lh_aq_qparams *p = &e->bwd;
  device_call d;
  LH_CHECK(device_prepare(e, s, count, payload_bytes, 0, &d));
  LH_CHECK(lh_copy_to_device(d.payload, payload, payload_bytes));
  int rc;
  if (e->cfg.mode == LH_AQ_OFF) {
    rc = lh_cuda_aq_full_decode(p, d.payload, NULL, d.slots, count, out, d.rows, NULL);
  } else {
    const uint16_t *scales = (const uint16_t *)(const void *)d.payload;
    rc = lh_cuda_aq_decode(p, (const uint8_t *)(scales + lh_aq_scale_count(p, count)), scales, NULL, d.slots, count,
                           out, d.rows, NULL);
  }
  if (rc)
    return cuda_failed(e, rc, "the AQ-SGD gradient decode kernel");
  return cudaDeviceSynchronize() == cudaSuccess ? LH_SUCCESS : cuda_failed(e, (int)cudaGetLastError(), "decode");
}

/* Gradients have no buffers: quantized where they are, then the payload is copied over. */
lh_status lh_aq_device_encode_backward(lh_aq_end *e, const void *grad, const lh_aq_split *s, size_t count,
                                       uint8_t *payload, size_t payload_bytes) {
  const lh_aq_qparams *p = &e->bwd;
  device_call d;
  LH_CHECK(device_prepare(e, s, count, payload_bytes, 0, &d));
  int rc = 0;
  if (e->cfg.mode == LH_AQ_OFF) {
    rc = lh_cuda_aq_full_encode(p, grad, d.rows, NULL, d.slots, count, d.payload, NULL);
  } else {
    uint16_t *scales = (uint16_t *)(void *)d.payload;
    if (p->quantizer == LH_AQ_Q_PER_CHANNEL)
      rc = lh_cuda_aq_channel_scales(p, grad, d.rows, NULL, d.slots, count, scales, NULL);
    if (!rc)
      rc = lh_cuda_aq_encode(p, grad, d.rows, NULL, d.slots, d.ids, d.visits, count, scales,
                             (uint8_t *)(scales + lh_aq_scale_count(p, count)), NULL);
  }
  if (rc)
    return lh_error(LH_ERR_CUDA, "lh_aq_send_grad: the encode kernel: %s", cudaGetErrorString((cudaError_t)rc));
  LH_CHECK(lh_copy_to_host(payload, d.payload, payload_bytes));
  if (e->cfg.mode == LH_AQ_OFF)
    return LH_SUCCESS;
  return lh_aq_check_scales(e, (const uint16_t *)(const void *)payload, lh_aq_scale_count(p, count), s, 0, p);
}

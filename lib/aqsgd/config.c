/* AQ-SGD configuration: names of the enums, the checks and defaults of lh_aq_config, the
 * quantizer's parameters per direction, and the frame sizes they imply. */
#include <string.h>

#include "aqsgd/context.h"
#include "common/internal.h"

/* ---- names -------------------------------------------------------------------------------- */
static const char *const dtype_names[] = {"fp32", "fp16", "bf16"};
static const char *const mode_names[] = {"delta", "direct", "off"};

lh_status lh_aq_dtype_name(lh_aq_dtype dtype, const char **name) {
  if (!name)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_dtype_name: name is NULL");
  if ((unsigned)dtype > LH_AQ_BF16)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_dtype_name: %d is not an lh_aq_dtype (0-2)", (int)dtype);
  *name = dtype_names[dtype];
  return LH_SUCCESS;
}
lh_status lh_aq_mode_name(lh_aq_mode mode, const char **name) {
  if (!name)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_mode_name: name is NULL");
  if ((unsigned)mode > LH_AQ_OFF)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_mode_name: %d is not an lh_aq_mode (0-2)", (int)mode);
  *name = mode_names[mode];
  return LH_SUCCESS;
}
lh_status lh_aq_dtype_parse(const char *name, lh_aq_dtype *dtype) {
  if (!name || !dtype)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_dtype_parse: NULL argument");
  for (int i = 0; i <= LH_AQ_BF16; i++)
    if (strcmp(name, dtype_names[i]) == 0) {
      *dtype = (lh_aq_dtype)i;
      return LH_SUCCESS;
    }
  return lh_error(LH_ERR_INVALID_ARGUMENT, "'%s' is not a data type: expected fp32, fp16 or bf16", name);
}
lh_status lh_aq_mode_parse(const char *name, lh_aq_mode *mode) {
  if (!name || !mode)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_mode_parse: NULL argument");
  for (int i = 0; i <= LH_AQ_OFF; i++)
    if (strcmp(name, mode_names[i]) == 0) {
      *mode = (lh_aq_mode)i;
      return LH_SUCCESS;
    }
  return lh_error(LH_ERR_INVALID_ARGUMENT, "'%s' is not an AQ-SGD mode: expected delta, direct or off", name);
}

/* ---- configuration ------------------------------------------------------------------------ */
static lh_status bits_in_range(const char *what, int *bits, int fallback) {
  if (*bits == 0)
    *bits = fallback;
  if (*bits < 2 || *bits > 8)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_config.%s = %d: expected 2 to 8 (0 for %d)", what, *bits,
                    fallback);
  return LH_SUCCESS;
}

/* Checks a caller's config and fills in the defaults. */
lh_status lh_aq_resolve(const lh_aq_config *in, lh_aq_config *out) {
  if (!in)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_config is NULL");
  if (in->size != sizeof(lh_aq_config))
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_aq_config.size is %zu, expected %zu: initialise it with LH_AQ_CONFIG_INIT", in->size,
                    sizeof(lh_aq_config));
  lh_aq_config c = *in;
  if (c.examples == 0)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_config.examples is 0: set the number of training examples");
  if (c.examples > (size_t)INT64_MAX / 2)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_config.examples = %zu is too large", c.examples);
  if (c.tokens == 0)
    c.tokens = 1;
  if (c.channels == 0)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_config.channels is 0: set the activation's width");
  if (c.tokens > UINT32_MAX || c.channels > UINT32_MAX || c.tokens > SIZE_MAX / 4 / c.channels)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_config: tokens %zu x channels %zu is too large", c.tokens,
                    c.channels);
  if ((unsigned)c.dtype > LH_AQ_BF16 || (unsigned)c.storage > LH_AQ_BF16)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_config: dtype %d / storage %d: expected LH_AQ_FP32, FP16 or BF16",
                    (int)c.dtype, (int)c.storage);
  if ((unsigned)c.mode > LH_AQ_OFF)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_config.mode = %d: expected LH_AQ_DELTA, DIRECT or OFF",
                    (int)c.mode);
  LH_CHECK(bits_in_range("forward_bits", &c.forward_bits, 4));
  LH_CHECK(bits_in_range("backward_bits", &c.backward_bits, 8));
  if ((unsigned)c.quantizer > LH_AQ_PER_TOKEN_GROUP)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_aq_config.quantizer = %d: expected LH_AQ_PER_CHANNEL or LH_AQ_PER_TOKEN_GROUP",
                    (int)c.quantizer);
  if (c.quantizer == LH_AQ_PER_TOKEN_GROUP) {
    if (c.group == 0)
      c.group = 128;
    if (c.group != 32 && c.group != 64 && c.group != 128)
      return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_config.group = %d: expected 32, 64 or 128 channels", c.group);
    if (c.channels % (size_t)c.group != 0)
      return lh_error(LH_ERR_INVALID_ARGUMENT,
                      "lh_aq_config: group %d does not divide channels %zu (per-token groups must tile a token)",
                      c.group, c.channels);
  } else {
    c.group = 0;
  }
  if (c.rounding != LH_ROUND_NEAREST && c.rounding != LH_ROUND_STOCHASTIC)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_config.rounding = %d: expected nearest or stochastic",
                    (int)c.rounding);
  if (c.warmup_epochs == 0)
    c.warmup_epochs = 1;
  if (c.warmup_epochs < 1)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_aq_config.warmup_epochs = %d: the first visit is always sent at full precision, so "
                    "it must be >= 1 (0 for the default 1)",
                    c.warmup_epochs);
  if (c.boundary < 0 || c.boundary > 0x7FFF)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_config.boundary = %d: expected 0 to 32767", c.boundary);
  *out = c;
  return LH_SUCCESS;
}

lh_aq_qparams lh_aq_qparams_of(const lh_aq_config *c, int backward) {
  lh_aq_qparams p;
  memset(&p, 0, sizeof p);
  p.tokens = c->tokens;
  p.channels = c->channels;
  p.bits = backward ? c->backward_bits : c->forward_bits;
  p.quantizer = (int)c->quantizer;
  p.group = c->group;
  p.stochastic = c->rounding == LH_ROUND_STOCHASTIC;
  p.dtype = (int)c->dtype;
  p.storage = (int)c->storage;
  p.seed = c->seed;
  p.stream = 2u * (uint32_t)c->boundary + (backward ? 1u : 0u);
  return p;
}


/* Payload bytes of a forward call with `full` rows at full precision and `delta` quantized. */
size_t lh_aq_forward_payload(const lh_aq_config *c, const lh_aq_qparams *p, size_t full, size_t delta) {
  size_t row = c->tokens * c->channels * lh_aq_dtype_bytes((int)c->storage);
  return full * row + lh_aq_scale_count(p, delta) * 2 + lh_aq_code_bytes(p, delta);
}
size_t lh_aq_backward_payload(const lh_aq_config *c, const lh_aq_qparams *p, size_t count) {
  if (c->mode == LH_AQ_OFF)
    return count * c->tokens * c->channels * lh_aq_dtype_bytes((int)c->storage);
  return lh_aq_scale_count(p, count) * 2 + lh_aq_code_bytes(p, count);
}

lh_status lh_aq_max_frame_bytes(const lh_aq_config *config, size_t count, int backward, size_t *bytes) {
  if (!bytes)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_max_frame_bytes: bytes is NULL");
  lh_aq_config c;
  LH_CHECK(lh_aq_resolve(config, &c));
  if (count > UINT32_MAX || count > SIZE_MAX / 8 / (c.tokens * c.channels))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_max_frame_bytes: %zu examples is too many for one frame", count);
  lh_aq_qparams p = lh_aq_qparams_of(&c, backward);
  size_t most;
  if (backward) {
    most = lh_aq_backward_payload(&c, &p, count);
  } else if (c.mode == LH_AQ_OFF || count == 0) {
    most = lh_aq_forward_payload(&c, &p, count, 0);
  } else {
    /* A full row costs more than a quantized one (>= 16 bits against <= 8 per element), so the
     * largest frame is all full rows or, with per-channel scales, one quantized row. */
    size_t all_full = lh_aq_forward_payload(&c, &p, count, 0);
    size_t one_delta = lh_aq_forward_payload(&c, &p, count - 1, 1);
    most = all_full > one_delta ? all_full : one_delta;
  }
  *bytes = LH_AQ_FRAME_HEADER_BYTES + most;
  return LH_SUCCESS;
}

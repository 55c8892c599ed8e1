/* The FP16 and BF16 casts (n x u16 payloads), element by element with codec_math.h's
 * conversions so that the GPU kernels give the same bits. */
#include "compress/payload.h"
#include "compress/quant_internal.h"

LH_QZ_HOT void lh_cast_f32_to_f16(const float *x, uint16_t *out, size_t n) {
  for (size_t i = 0; i < n; i++)
    out[i] = lh_f32_to_f16(x[i]);
}

LH_QZ_HOT void lh_cast_f32_to_bf16(const float *x, uint16_t *out, size_t n) {
  for (size_t i = 0; i < n; i++)
    out[i] = lh_f32_to_bf16(x[i]);
}

LH_QZ_HOT void lh_cast_f16_to_f32(const uint16_t *in, float *out, size_t n, int accumulate) {
  if (accumulate) {
    for (size_t i = 0; i < n; i++)
      out[i] = LH_FADD(out[i], lh_f16_to_f32(in[i]));
  } else {
    for (size_t i = 0; i < n; i++)
      out[i] = lh_f16_to_f32(in[i]);
  }
}

LH_QZ_HOT void lh_cast_bf16_to_f32(const uint16_t *in, float *out, size_t n, int accumulate) {
  if (accumulate) {
    for (size_t i = 0; i < n; i++)
      out[i] = LH_FADD(out[i], lh_bf16_to_f32(in[i]));
  } else {
    for (size_t i = 0; i < n; i++)
      out[i] = lh_bf16_to_f32(in[i]);
  }
}

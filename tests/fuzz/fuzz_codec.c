/* libFuzzer target for one codec's decoder, built once per codec with LH_FUZZ_CODEC set to its
 * id (fuzz_decode_blockq, ...). Any input must be decoded or refused with a status: never a
 * read or write out of bounds (AddressSanitizer), undefined behaviour (UBSan), a hang, or an
 * output written on refusal. abort() is how a fuzzer reports a finding; the library never
 * aborts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_codec_config.h"
#include "compress/compress_internal.h"

#ifndef LH_FUZZ_CODEC
#error "LH_FUZZ_CODEC must name the codec id this target fuzzes"
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) { return 0; }

static void fuzz_fail(const char *what) {
  fprintf(stderr, "fuzz_codec: %s (last error: %s)\n", what, lh_last_error());
  abort();
}

static void put_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

/* A refused decode must leave the output exactly as it was. */
static void expect_untouched(const float *out, size_t n, uint8_t poison) {
  const uint8_t *b = (const uint8_t *)out;
  for (size_t i = 0; i < n * sizeof(float); i++)
    if (b[i] != poison)
      fuzz_fail("a refused frame wrote to the output");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2)
    return 0;
  const lh_codec_id id = (lh_codec_id)LH_FUZZ_CODEC;
  uint8_t variant = data[0], mode = data[1];
  size_t frame_bytes = size - 2;
  /* An exact-size copy, so that AddressSanitizer sees a read one byte past the frame. */
  uint8_t *frame = malloc(frame_bytes ? frame_bytes : 1);
  if (!frame)
    return 0;
  memcpy(frame, data + 2, frame_bytes);
  if (frame_bytes >= LH_FRAME_HEADER_BYTES) {
    if (mode & LH_FUZZ_FIX_LENGTH)
      put_u32(frame + 52, (uint32_t)(frame_bytes - LH_FRAME_HEADER_BYTES));
    if (mode & LH_FUZZ_FIX_CRC)
      lh_frame_seal(frame, frame_bytes - LH_FRAME_HEADER_BYTES);
  }

  lh_codec *c = NULL;
  if (lh_codec_create(id, &c) != LH_SUCCESS || lh_fuzz_configure(c, id, variant) != 0)
    fuzz_fail("could not configure the codec");

  /* The element count: the frame's own claim when asked and small, else one from the input. */
  size_t n = (size_t)(variant ^ mode) * 37u % 5000u;
  uint64_t claimed = 0;
  if ((mode & LH_FUZZ_N_FROM_FRAME) && frame_bytes >= LH_FRAME_HEADER_BYTES) {
    for (int i = 7; i >= 0; i--)
      claimed = (claimed << 8) | frame[32 + i];
    if (claimed <= LH_FUZZ_MAX_ELEMENTS)
      n = (size_t)claimed;
  }
  if (id == LH_CODEC_SHAREDQ) {
    size_t ns = lh_codec_scale_count(c, n);
    float *scales = malloc((ns ? ns : 1) * sizeof(float));
    for (size_t i = 0; scales && i < ns; i++)
      scales[i] = (float)(i % 7);
    if (!scales || lh_codec_set_scales(c, scales, ns) != LH_SUCCESS)
      fuzz_fail("could not set shared scales");
    free(scales);
  }

  const uint8_t poison = 0xA5;
  float *out = malloc((n ? n : 1) * sizeof(float));
  if (!out)
    fuzz_fail("out of memory");
  memset(out, poison, n * sizeof(float));
  lh_status st = lh_codec_decode(c, frame, frame_bytes, out, n);
  if (st != LH_SUCCESS) {
    if (st != LH_ERR_CORRUPT && st != LH_ERR_MISMATCH && st != LH_ERR_INVALID_ARGUMENT)
      fuzz_fail("decode refused a frame with an unexpected status");
    if (lh_last_error()[0] == '\0')
      fuzz_fail("decode refused a frame without saying why");
    expect_untouched(out, n, poison);
  }
  /* Accumulating decode must agree with decode on success and on refusal. */
  memset(out, poison, n * sizeof(float));
  lh_status st_acc = lh_codec_decode_accumulate(c, frame, frame_bytes, out, n);
  if ((st_acc == LH_SUCCESS) != (st == LH_SUCCESS))
    fuzz_fail("decode and decode_accumulate disagree on whether the frame is valid");
  if (st_acc != LH_SUCCESS)
    expect_untouched(out, n, poison);

  lh_codec_id seen;
  uint64_t count;
  size_t payload;
  lh_status st_inspect = lh_frame_inspect(frame, frame_bytes, &seen, &count, &payload);
  if (st == LH_SUCCESS && (st_inspect != LH_SUCCESS || seen != id || count != n))
    fuzz_fail("inspect disagrees with a successful decode");

  /* Summable codecs: adding the frame to itself must keep a valid frame. */
  if (st == LH_SUCCESS && (lh_codec_flags(c) & LH_CODEC_F_SUMMABLE)) {
    uint8_t *acc = malloc(frame_bytes);
    if (!acc)
      fuzz_fail("out of memory");
    memcpy(acc, frame, frame_bytes);
    size_t acc_bytes = frame_bytes;
    lh_status st_sum = lh_codec_sum_wire(c, acc, frame_bytes, &acc_bytes, frame, frame_bytes);
    if (st_sum == LH_SUCCESS && lh_frame_inspect(acc, acc_bytes, NULL, NULL, NULL) != LH_SUCCESS)
      fuzz_fail("a summed frame does not parse");
    free(acc);
  }
  free(out);
  lh_codec_free(c);
  free(frame);
  return 0;
}

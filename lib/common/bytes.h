/* Little-endian byte access for wire formats, and a 64-bit mixer. Header-only; never installed.
 * Wire headers are written byte by byte so that their layout never depends on the host's
 * endianness or on struct padding. */
#ifndef LH_COMMON_BYTES_H
#define LH_COMMON_BYTES_H

#include <stdint.h>

static inline void lh_put_le16(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}
static inline void lh_put_le32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}
static inline void lh_put_le64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint16_t lh_get_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t lh_get_le32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t lh_get_le64(const uint8_t *p) {
  return lh_get_le32(p) | ((uint64_t)lh_get_le32(p + 4) << 32);
}

/* splitmix64's step: every input bit reaches every output bit, and 0 does not map to 0. Used
 * to derive independent keys (frame offsets, id lists) from one seed. */
static inline uint64_t lh_mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

#endif

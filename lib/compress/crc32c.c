/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of every frame.
 *
 * Why CRC-32C: it catches every burst error up to 32 bits and all odd bit counts, and x86-64
 * computes it in hardware (SSE4.2 crc32), so checking a frame costs far less than coding it.
 * Two paths give the same value: the crc32 instruction when the CPU has it, else a
 * slicing-by-8 table walk (8 table lookups per 8 bytes). */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "compress/compress_internal.h"

#define LH_CRC32C_POLY 0x82F63B78u

static uint32_t crc_table[8][256];
static pthread_once_t crc_table_once = PTHREAD_ONCE_INIT;

/* crc_table[0] is the bytewise table; crc_table[k][b] advances crc_table[k-1][b] by one more
 * zero byte, so eight lookups fold in eight bytes at once. */
static void crc_table_build(void) {
  for (uint32_t b = 0; b < 256; b++) {
    uint32_t c = b;
    for (int bit = 0; bit < 8; bit++)
      c = (c & 1u) ? (c >> 1) ^ LH_CRC32C_POLY : c >> 1;
    crc_table[0][b] = c;
  }
  for (uint32_t b = 0; b < 256; b++)
    for (int k = 1; k < 8; k++)
      crc_table[k][b] = (crc_table[k - 1][b] >> 8) ^ crc_table[0][crc_table[k - 1][b] & 0xFFu];
}

static uint32_t crc32c_table(uint32_t crc, const uint8_t *p, size_t n) {
  pthread_once(&crc_table_once, crc_table_build);
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    w ^= crc; /* little-endian: the running crc covers the first four bytes */
    crc = crc_table[7][w & 0xFF] ^ crc_table[6][(w >> 8) & 0xFF] ^ crc_table[5][(w >> 16) & 0xFF] ^
          crc_table[4][(w >> 24) & 0xFF] ^ crc_table[3][(w >> 32) & 0xFF] ^
          crc_table[2][(w >> 40) & 0xFF] ^ crc_table[1][(w >> 48) & 0xFF] ^ crc_table[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n--)
    crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xFFu];
  return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define LH_CRC32C_HW 1
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const uint8_t *p, size_t n) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    c = _mm_crc32_u64(c, w);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = (uint32_t)c;
  while (n--)
    c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}
#endif

uint32_t lh_crc32c(uint32_t crc, const void *data, size_t n) {
  const uint8_t *p = data;
  crc = ~crc;
#ifdef LH_CRC32C_HW
  if (__builtin_cpu_supports("sse4.2"))
    return ~crc32c_hw(crc, p, n);
#endif
  return ~crc32c_table(crc, p, n);
}

uint32_t lh_crc32c_portable(uint32_t crc, const void *data, size_t n) {
  return ~crc32c_table(~crc, data, n);
}

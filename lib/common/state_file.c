/* Checkpoint files of library state (AQ-SGD buffer stores, reducer residuals): an 8-byte
 * magic, a version, then fields and blobs in little-endian order, and a 64-bit FNV-1a of
 * everything before it. Written to `path.tmp` and renamed over `path` only when complete, so a
 * crash mid-write never leaves a truncated checkpoint where a good one was. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/bytes.h"
#include "common/internal.h"
#include "common/state_file.h"

#define LH_FNV_OFFSET 1469598103934665603ULL
#define LH_FNV_PRIME 1099511628211ULL

static uint64_t lh_fnv(uint64_t h, const void *data, size_t n) {
  const unsigned char *p = data;
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * LH_FNV_PRIME;
  return h;
}

static void lh_state_put(lh_state_writer *w, const void *data, size_t n) {
  if (w->status != LH_SUCCESS || n == 0)
    return;
  w->hash = lh_fnv(w->hash, data, n);
  if (fwrite(data, 1, n, w->file) != n)
    w->status = lh_error(LH_ERR_IO, "%s: cannot write '%s': %s", w->who, w->tmp, strerror(errno));
}

lh_status lh_state_write_open(lh_state_writer *w, const char *path, const char *who, const char magic[8],
                              uint32_t version) {
  memset(w, 0, sizeof *w);
  w->who = who;
  w->path = path;
  w->hash = LH_FNV_OFFSET;
  if (snprintf(w->tmp, sizeof w->tmp, "%s.tmp", path) >= (int)sizeof w->tmp)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: the path '%s' is too long", who, path);
  w->file = fopen(w->tmp, "wb");
  if (!w->file)
    return lh_error(LH_ERR_IO, "%s: cannot create '%s': %s", who, w->tmp, strerror(errno));
  lh_state_put(w, magic, 8);
  lh_state_write_u64(w, version);
  return w->status;
}

void lh_state_write_u64(lh_state_writer *w, uint64_t v) {
  uint8_t b[8];
  lh_put_le64(b, v);
  lh_state_put(w, b, 8);
}

void lh_state_write_bytes(lh_state_writer *w, const void *data, size_t n) { lh_state_put(w, data, n); }

lh_status lh_state_write_close(lh_state_writer *w) {
  uint8_t b[8];
  lh_put_le64(b, w->hash);
  if (w->status == LH_SUCCESS && fwrite(b, 1, 8, w->file) != 8)
    w->status = lh_error(LH_ERR_IO, "%s: cannot write '%s': %s", w->who, w->tmp, strerror(errno));
  if (fclose(w->file) != 0 && w->status == LH_SUCCESS)
    w->status = lh_error(LH_ERR_IO, "%s: cannot finish '%s': %s", w->who, w->tmp, strerror(errno));
  if (w->status == LH_SUCCESS && rename(w->tmp, w->path) != 0)
    w->status = lh_error(LH_ERR_IO, "%s: cannot rename '%s' to '%s': %s", w->who, w->tmp, w->path, strerror(errno));
  if (w->status != LH_SUCCESS)
    remove(w->tmp);
  return w->status;
}

/* ---- reading ------------------------------------------------------------------------------ */

static int lh_state_get(lh_state_reader *r, void *data, size_t n) {
  if (r->status != LH_SUCCESS)
    return 0;
  if (fread(data, 1, n, r->file) != n) {
    r->status = ferror(r->file) ? lh_error(LH_ERR_IO, "%s: cannot read '%s': %s", r->who, r->path, strerror(errno))
                                : lh_error(LH_ERR_CORRUPT, "%s: '%s' ends early: it is truncated", r->who, r->path);
    return 0;
  }
  r->hash = lh_fnv(r->hash, data, n);
  return 1;
}

lh_status lh_state_read_open(lh_state_reader *r, const char *path, const char *who, const char magic[8],
                             uint32_t version) {
  memset(r, 0, sizeof *r);
  r->who = who;
  r->path = path;
  r->hash = LH_FNV_OFFSET;
  r->file = fopen(path, "rb");
  if (!r->file)
    return r->status = lh_error(LH_ERR_IO, "%s: cannot open '%s': %s", who, path, strerror(errno));
  char seen[8];
  if (lh_state_get(r, seen, 8) && memcmp(seen, magic, 8) != 0)
    r->status = lh_error(LH_ERR_CORRUPT, "%s: '%s' is not a %.8s file", who, path, magic);
  uint64_t v = lh_state_read_u64(r);
  if (r->status == LH_SUCCESS && v != version)
    r->status = lh_error(LH_ERR_MISMATCH, "%s: '%s' has format version %llu; this library reads version %u", who, path,
                         (unsigned long long)v, version);
  return r->status;
}

uint64_t lh_state_read_u64(lh_state_reader *r) {
  uint8_t b[8];
  return lh_state_get(r, b, 8) ? lh_get_le64(b) : 0;
}

int lh_state_read_bytes(lh_state_reader *r, void *data, size_t n) { return lh_state_get(r, data, n); }

lh_status lh_state_read_close(lh_state_reader *r) {
  if (r->status == LH_SUCCESS) {
    uint64_t expected = r->hash;
    uint8_t b[8], extra;
    if (fread(b, 1, 8, r->file) != 8)
      r->status = lh_error(LH_ERR_CORRUPT, "%s: '%s' ends early: it is truncated", r->who, r->path);
    else if (lh_get_le64(b) != expected)
      r->status = lh_error(LH_ERR_CORRUPT, "%s: '%s' fails its checksum: the file is damaged", r->who, r->path);
    else if (fread(&extra, 1, 1, r->file) == 1)
      r->status = lh_error(LH_ERR_CORRUPT, "%s: '%s' has bytes after its checksum", r->who, r->path);
  }
  if (r->file)
    fclose(r->file);
  r->file = NULL;
  return r->status;
}

lh_status lh_state_fail(lh_state_reader *r, lh_status status, const char *detail) {
  if (r->status == LH_SUCCESS)
    r->status = lh_error(status, "%s: '%s': %s", r->who, r->path, detail);
  return r->status;
}

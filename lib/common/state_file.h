/* Checkpoint files of library state: magic, version, little-endian fields and blobs, a
 * checksum; written atomically (a temporary file renamed into place). See state_file.c.
 * Errors are sticky: after the first failure every call does nothing, and close returns it. */
#ifndef LH_COMMON_STATE_FILE_H
#define LH_COMMON_STATE_FILE_H

#include <stdint.h>
#include <stdio.h>
#include <longhaul/status.h>

typedef struct {
  FILE *file;
  const char *who, *path;
  char tmp[4096];
  uint64_t hash;
  lh_status status;
} lh_state_writer;

lh_status lh_state_write_open(lh_state_writer *w, const char *path, const char *who, const char magic[8],
                              uint32_t version);
void lh_state_write_u64(lh_state_writer *w, uint64_t v);
void lh_state_write_bytes(lh_state_writer *w, const void *data, size_t n);
/* Appends the checksum and renames the file into place (or removes it after a failure). */
lh_status lh_state_write_close(lh_state_writer *w);

typedef struct {
  FILE *file;
  const char *who, *path;
  uint64_t hash;
  lh_status status;
} lh_state_reader;

/* LH_ERR_IO (cannot open), LH_ERR_CORRUPT (another kind of file), LH_ERR_MISMATCH (version). */
lh_status lh_state_read_open(lh_state_reader *r, const char *path, const char *who, const char magic[8],
                             uint32_t version);
uint64_t lh_state_read_u64(lh_state_reader *r); /* 0 after a failure */
int lh_state_read_bytes(lh_state_reader *r, void *data, size_t n); /* 1 on success */
/* Records a problem the caller found in the contents (the first one wins). */
lh_status lh_state_fail(lh_state_reader *r, lh_status status, const char *detail);
/* Checks the checksum and that nothing follows it; closes. */
lh_status lh_state_read_close(lh_state_reader *r);

#endif

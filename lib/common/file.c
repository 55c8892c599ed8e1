/* Whole text files for the strict parsers and exact writers (link files, plan files). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/internal.h"

lh_status lh_read_text_file(const char *path, const char *who, size_t limit, char **text_out, size_t *length_out) {
  *text_out = NULL;
  *length_out = 0;
  FILE *f = fopen(path, "rb");
  if (!f)
    return lh_error(LH_ERR_IO, "%s: cannot open '%s': %s", who, path, strerror(errno));
  /* Growing blocks rather than the file's size: works for pipes too. Reading one byte past the
   * limit is enough for the caller to refuse an oversized file. */
  char *text = NULL;
  size_t length = 0, capacity = 0;
  lh_status st = LH_SUCCESS;
  while (length <= limit) {
    if (length == capacity) {
      size_t grown = capacity ? capacity * 2 : 65536;
      char *bigger = realloc(text, grown);
      if (!bigger) {
        st = lh_error(LH_ERR_OUT_OF_MEMORY, "%s: could not allocate %zu bytes to read '%s'", who, grown, path);
        break;
      }
      text = bigger;
      capacity = grown;
    }
    size_t got = fread(text + length, 1, capacity - length, f);
    length += got;
    if (got == 0) {
      if (ferror(f))
        st = lh_error(LH_ERR_IO, "%s: cannot read '%s': %s", who, path, strerror(errno));
      break;
    }
  }
  fclose(f);
  if (st != LH_SUCCESS) {
    free(text);
    return st;
  }
  *text_out = text;
  *length_out = length;
  return LH_SUCCESS;
}

lh_status lh_write_text_file(const char *path, const char *who, lh_stream_writer write, const void *object) {
  FILE *f = fopen(path, "w");
  if (!f)
    return lh_error(LH_ERR_IO, "%s: cannot open '%s' for writing: %s", who, path, strerror(errno));
  lh_status st = write(object, f);
  if (st != LH_SUCCESS) {
    fclose(f);
    return lh_error_context(st, "%s '%s'", who, path);
  }
  if (fclose(f) != 0)
    return lh_error(LH_ERR_IO, "%s: cannot finish writing '%s': %s", who, path, strerror(errno));
  return LH_SUCCESS;
}

const char *lh_quote_text(const char *begin, size_t length, char *text, size_t capacity) {
  enum { SHOWN = 40 };
  size_t n = 0;
  text[n++] = '\'';
  for (size_t i = 0; i < length && i < SHOWN && n + 8 < capacity; i++) {
    unsigned char c = (unsigned char)begin[i];
    if (c >= ' ' && c < 0x7f)
      text[n++] = (char)c;
    else
      n += (size_t)snprintf(text + n, capacity - n, "\\x%02x", c);
  }
  if (length > SHOWN)
    n += (size_t)snprintf(text + n, capacity - n, "...");
  snprintf(text + n, capacity - n, "'");
  return text;
}

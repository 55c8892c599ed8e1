#include <stdlib.h>

#include "common/internal.h"

void *lh_malloc(size_t bytes, const char *what) {
  void *p = malloc(bytes ? bytes : 1);
  if (!p)
    lh_error(LH_ERR_OUT_OF_MEMORY, "could not allocate %zu bytes for %s", bytes, what);
  return p;
}

void *lh_calloc(size_t count, size_t size, const char *what) {
  void *p = calloc(count ? count : 1, size ? size : 1);
  if (!p)
    lh_error(LH_ERR_OUT_OF_MEMORY, "could not allocate %zu x %zu bytes for %s", count, size, what);
  return p;
}

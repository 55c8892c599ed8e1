/* Checkpoints of AQ-SGD buffer stores: the id -> row map, the visit counts and the rows in use,
 * in one checksummed file (common/state_file.c). Both ends of a boundary save and load their
 * own store; since their buffers are bitwise equal, so are the files' rows.
 *
 * A load reads the small metadata first, checks it against the store, and only then the rows,
 * straight into the store; if the rows then fail the checksum, the store is emptied (every
 * example unseen), which is safe: the next visit of each example goes at full precision. */
#include <stdlib.h>
#include <string.h>

#include "aqsgd/store_internal.h"
#include "common/internal.h"
#include "common/state_file.h"

#define LH_AQ_STORE_MAGIC "LHAQSTOR"
#define LH_AQ_STORE_VERSION 1
/* Rows move through host memory in blocks this large (device stores). */
#define LH_AQ_STORE_BLOCK ((size_t)8 << 20)

static void lh_aq_store_empty(lh_aq_store store) {
  for (size_t i = 0; i < store->config.examples; i++) {
    store->slot_of[i] = -1;
    store->visits[i] = 0;
  }
  store->rows_used = 0;
}

lh_status lh_aq_store_save(lh_aq_store store, const char *path) {
  lh_error_clear();
  if (!store || !path)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_store_save: store and path must not be NULL");
  const lh_aq_store_config *c = &store->config;
  size_t rows_bytes = store->rows_used * c->row_bytes;
  char *block = NULL;
  if (store->on_device && rows_bytes) {
    block = lh_malloc(rows_bytes < LH_AQ_STORE_BLOCK ? rows_bytes : LH_AQ_STORE_BLOCK, "an AQ-SGD checkpoint block");
    if (!block)
      return LH_ERR_OUT_OF_MEMORY;
  }
  lh_state_writer w;
  lh_status st = lh_state_write_open(&w, path, "lh_aq_store_save", LH_AQ_STORE_MAGIC, LH_AQ_STORE_VERSION);
  lh_state_write_u64(&w, c->examples);
  lh_state_write_u64(&w, c->capacity);
  lh_state_write_u64(&w, c->row_bytes);
  lh_state_write_u64(&w, store->rows_used);
  /* The map and the counts in the host's (little-endian) order, then the rows in row order. */
  lh_state_write_bytes(&w, store->slot_of, c->examples * sizeof *store->slot_of);
  lh_state_write_bytes(&w, store->visits, c->examples * sizeof *store->visits);
  for (size_t off = 0; off < rows_bytes && w.status == LH_SUCCESS; off += LH_AQ_STORE_BLOCK) {
    size_t n = rows_bytes - off < LH_AQ_STORE_BLOCK ? rows_bytes - off : LH_AQ_STORE_BLOCK;
    const char *src = (const char *)store->base + off;
    if (store->on_device) {
      w.status = lh_copy_to_host(block, src, n);
      src = block;
    }
    lh_state_write_bytes(&w, src, n);
  }
  if (st == LH_SUCCESS)
    st = lh_state_write_close(&w);
  else if (w.file)
    lh_state_write_close(&w);
  free(block);
  return st;
}

lh_status lh_aq_store_load(lh_aq_store store, const char *path) {
  lh_error_clear();
  if (!store || !path)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_store_load: store and path must not be NULL");
  const lh_aq_store_config *c = &store->config;
  lh_state_reader r;
  if (lh_state_read_open(&r, path, "lh_aq_store_load", LH_AQ_STORE_MAGIC, LH_AQ_STORE_VERSION) != LH_SUCCESS)
    return lh_state_read_close(&r);
  uint64_t examples = lh_state_read_u64(&r), capacity = lh_state_read_u64(&r);
  uint64_t row_bytes = lh_state_read_u64(&r), rows_used = lh_state_read_u64(&r);
  char detail[256];
  if (r.status == LH_SUCCESS && (examples != c->examples || capacity != c->capacity || row_bytes != c->row_bytes)) {
    snprintf(detail, sizeof detail,
             "it holds a store of %llu examples, %llu rows of %llu bytes; this store has %zu, %zu of %zu",
             (unsigned long long)examples, (unsigned long long)capacity, (unsigned long long)row_bytes, c->examples,
             c->capacity, c->row_bytes);
    lh_state_fail(&r, LH_ERR_MISMATCH, detail);
  }
  if (r.status == LH_SUCCESS && rows_used > c->capacity)
    lh_state_fail(&r, LH_ERR_CORRUPT, "it uses more rows than it has");
  int64_t *slot_of = NULL;
  uint32_t *visits = NULL;
  if (r.status == LH_SUCCESS) {
    slot_of = lh_malloc(c->examples * sizeof *slot_of + 1, "an AQ-SGD checkpoint's map");
    visits = lh_malloc(c->examples * sizeof *visits + 1, "an AQ-SGD checkpoint's visit counts");
    if (!slot_of || !visits)
      lh_state_fail(&r, LH_ERR_OUT_OF_MEMORY, "no memory for its map");
  }
  lh_state_read_bytes(&r, slot_of, c->examples * sizeof *slot_of);
  lh_state_read_bytes(&r, visits, c->examples * sizeof *visits);
  /* Every row number in range, each used once: a damaged map must not reach the kernels. */
  unsigned char *seen = r.status == LH_SUCCESS ? lh_calloc(rows_used + 1, 1, "an AQ-SGD checkpoint check") : NULL;
  for (size_t i = 0; r.status == LH_SUCCESS && i < c->examples; i++) {
    int64_t s = slot_of[i];
    if (s < -1 || s >= (int64_t)rows_used || (s >= 0 && seen[s]++))
      lh_state_fail(&r, LH_ERR_CORRUPT, "its example -> row map is damaged");
  }
  free(seen);
  int touched = 0;
  size_t rows_bytes = (size_t)rows_used * c->row_bytes;
  char *block = NULL;
  if (r.status == LH_SUCCESS && store->on_device && rows_bytes) {
    block = lh_malloc(rows_bytes < LH_AQ_STORE_BLOCK ? rows_bytes : LH_AQ_STORE_BLOCK, "an AQ-SGD checkpoint block");
    if (!block)
      lh_state_fail(&r, LH_ERR_OUT_OF_MEMORY, "no memory for a block of rows");
  }
  for (size_t off = 0; off < rows_bytes && r.status == LH_SUCCESS; off += LH_AQ_STORE_BLOCK) {
    size_t n = rows_bytes - off < LH_AQ_STORE_BLOCK ? rows_bytes - off : LH_AQ_STORE_BLOCK;
    char *dst = (char *)store->base + off;
    touched = 1;
    if (lh_state_read_bytes(&r, store->on_device ? block : dst, n) && store->on_device)
      r.status = lh_copy_to_device(dst, block, n);
  }
  lh_status st = lh_state_read_close(&r);
  if (st == LH_SUCCESS) {
    memcpy(store->slot_of, slot_of, c->examples * sizeof *slot_of);
    memcpy(store->visits, visits, c->examples * sizeof *visits);
    store->rows_used = (size_t)rows_used;
  } else if (touched) {
    lh_aq_store_empty(store);
  }
  free(block);
  free(slot_of);
  free(visits);
  return st;
}

/* The generic part of the AQ-SGD buffer stores: the config checks, the id -> row map, the
 * visit counts and the checks on ids. Where the rows live is the kind's business (an ops
 * table: store_memory.c, store_mmap.c); this file only hands out row numbers.
 *
 * Rows are handed out in order (row r to the r-th example that needed one) and never taken
 * back: an example keeps its buffer for the life of the store, so capacity < examples only
 * suits runs that visit at most `capacity` distinct examples.
 *
 * Not thread-safe: one context uses a store at a time (lh_aq_store_claim). */
#include <stdlib.h>
#include <string.h>

#include "aqsgd/store_internal.h"
#include "common/internal.h"

/* The store and what only this file needs. lh_aq_store points at `s` (the first member), so
 * the ops tables see the struct of store_internal.h and nothing else. */
typedef struct store_full {
  struct lh_aq_store_s s;
  /* Duplicate check in O(count): a call stamps each id it names with its own generation, so a
   * second stamp of the same generation is a duplicate, without clearing anything per call. */
  uint32_t *mark;
  uint32_t generation;
} store_full;

static store_full *full_of(lh_aq_store store) { return (store_full *)store; }

static void store_destroy(store_full *f) {
  if (!f)
    return;
  if (f->s.ops)
    f->s.ops->close(&f->s);
  free((void *)f->s.config.path);
  free(f->s.slot_of);
  free(f->s.visits);
  free(f->mark);
  free(f);
}

/* ---- create, free, info --------------------------------------------------------------- */

static lh_status resolve_config(const lh_aq_store_config *config, lh_aq_store_config *cfg,
                                const lh_aq_store_ops **ops) {
  if (config->size != sizeof(lh_aq_store_config))
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_aq_store_create: config->size is %zu, expected %zu (start from LH_AQ_STORE_CONFIG_INIT)",
                    config->size, sizeof(lh_aq_store_config));
  *cfg = *config;
  if (cfg->examples == 0)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_aq_store_create: examples is 0; set it to the number of training examples (ids run 0 .. "
                    "examples - 1)");
  if (cfg->capacity == 0)
    cfg->capacity = cfg->examples;
  else if (cfg->capacity > cfg->examples)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_aq_store_create: capacity %zu is more than examples %zu (a store never holds more rows "
                    "than examples; 0 means examples)",
                    cfg->capacity, cfg->examples);
  switch (cfg->kind) {
  case LH_AQ_STORE_HOST:
    *ops = &lh_aq_store_host_ops;
    break;
  case LH_AQ_STORE_DEVICE:
#ifndef LH_HAVE_CUDA
    return lh_error(LH_ERR_NOT_SUPPORTED,
                    "lh_aq_store_create: a DEVICE store needs CUDA, but Longhaul was built without it "
                    "(LH_WITH_CUDA=OFF); use LH_AQ_STORE_HOST or LH_AQ_STORE_MMAP");
#else
    *ops = &lh_aq_store_device_ops; /* its open says so when no device is visible */
    break;
#endif
  case LH_AQ_STORE_MMAP:
    if (!cfg->path || !cfg->path[0])
      return lh_error(LH_ERR_INVALID_ARGUMENT,
                      "lh_aq_store_create: an MMAP store needs config->path, the file to map (it is created "
                      "or truncated)");
    *ops = &lh_aq_store_mmap_ops;
    break;
  default:
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_aq_store_create: unknown kind %d (LH_AQ_STORE_HOST = 0, LH_AQ_STORE_DEVICE = 1, "
                    "LH_AQ_STORE_MMAP = 2)",
                    (int)cfg->kind);
  }
  if (cfg->examples > SIZE_MAX / sizeof(int64_t))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_store_create: examples %zu is too many to keep a row map for",
                    cfg->examples);
  if (cfg->row_bytes && cfg->capacity > SIZE_MAX / cfg->row_bytes)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_aq_store_create: capacity %zu x row_bytes %zu overflows the address space", cfg->capacity,
                    cfg->row_bytes);
  if (cfg->kind != LH_AQ_STORE_MMAP)
    cfg->path = NULL; /* only MMAP reads it; do not keep a pointer the caller may free */
  return LH_SUCCESS;
}

lh_status lh_aq_store_create(const lh_aq_store_config *config, lh_aq_store *store) {
  lh_error_clear();
  if (!store)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_store_create: store must not be NULL");
  *store = NULL;
  if (!config)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_aq_store_create: config must not be NULL (start from LH_AQ_STORE_CONFIG_INIT)");
  lh_aq_store_config cfg;
  const lh_aq_store_ops *ops = NULL;
  LH_CHECK(resolve_config(config, &cfg, &ops));

  store_full *f = lh_calloc(1, sizeof *f, "an AQ-SGD store");
  if (!f)
    return LH_ERR_OUT_OF_MEMORY;
  f->s.fd = -1;
  f->s.config = cfg;
  f->s.config.path = NULL; /* set below to our own copy, so store_destroy may free it */
  f->s.slot_of = lh_malloc(cfg.examples * sizeof(int64_t), "the AQ-SGD store's id -> row map");
  f->s.visits = lh_calloc(cfg.examples, sizeof(uint32_t), "the AQ-SGD store's visit counts");
  f->mark = lh_calloc(cfg.examples, sizeof(uint32_t), "the AQ-SGD store's duplicate check");
  if (!f->s.slot_of || !f->s.visits || !f->mark) {
    store_destroy(f);
    return lh_error(LH_ERR_OUT_OF_MEMORY, "lh_aq_store_create: no host memory for the metadata of %zu examples",
                    cfg.examples);
  }
  for (size_t i = 0; i < cfg.examples; i++)
    f->s.slot_of[i] = -1;
  if (cfg.path) {
    size_t len = strlen(cfg.path);
    char *path = lh_malloc(len + 1, "the AQ-SGD store's path");
    if (!path) {
      store_destroy(f);
      return LH_ERR_OUT_OF_MEMORY;
    }
    memcpy(path, cfg.path, len + 1);
    f->s.config.path = path;
  }
  f->s.ops = ops;
  lh_status st = ops->open(&f->s);
  if (st != LH_SUCCESS) {
    store_destroy(f); /* close may see a half-open store */
    return st;
  }
  *store = &f->s;
  return LH_SUCCESS;
}

lh_status lh_aq_store_free(lh_aq_store store) {
  lh_error_clear();
  if (!store)
    return LH_SUCCESS;
  /* A context keeps a pointer to its store; freeing it under the context would leave that
   * pointer dangling, so refuse (and keep the store) rather than crash later. */
  if (store->claimed)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_aq_store_free: the store is still used by an AQ-SGD context; free the context first");
  store_destroy(full_of(store));
  return LH_SUCCESS;
}

lh_status lh_aq_store_get_info(lh_aq_store store, lh_aq_store_info *info) {
  lh_error_clear();
  if (!store || !info)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_store_get_info: store and info must not be NULL");
  if (info->size != sizeof(lh_aq_store_info))
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_aq_store_get_info: info->size is %zu, expected %zu (start from LH_AQ_STORE_INFO_INIT)",
                    info->size, sizeof(lh_aq_store_info));
  const lh_aq_store_config *c = &store->config;
  info->kind = c->kind;
  info->examples = c->examples;
  info->capacity = c->capacity;
  info->row_bytes = c->row_bytes;
  info->rows_used = store->rows_used;
  info->buffer_bytes = c->capacity * c->row_bytes;
  info->metadata_bytes = c->examples * (sizeof *store->slot_of + sizeof *store->visits + sizeof(uint32_t));
  return LH_SUCCESS;
}

/* ---- ids, rows and visits ------------------------------------------------------------- */

static lh_status check_id(lh_aq_store store, int64_t id, size_t position, const char *fn) {
  if (id < 0 || (uint64_t)id >= store->config.examples)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "%s: example id %lld (position %zu) is out of range: ids run 0 .. %zu", fn, (long long)id,
                    position, store->config.examples - 1);
  return LH_SUCCESS;
}

static lh_status check_ids(lh_aq_store store, const int64_t *ids, size_t count, const char *fn) {
  if (!store)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: store must not be NULL", fn);
  if (count && !ids)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: ids must not be NULL (count is %zu)", fn, count);
  return LH_SUCCESS;
}

lh_status lh_aq_store_lookup(lh_aq_store store, const int64_t *ids, size_t count, int64_t *slots,
                             uint32_t *visits) {
  LH_CHECK(check_ids(store, ids, count, "AQ-SGD store"));
  store_full *f = full_of(store);
  if (++f->generation == 0) { /* wrapped: old stamps could collide with the new numbers */
    memset(f->mark, 0, store->config.examples * sizeof *f->mark);
    f->generation = 1;
  }
  for (size_t i = 0; i < count; i++) {
    int64_t id = ids[i];
    LH_CHECK(check_id(store, id, i, "AQ-SGD store"));
    if (f->mark[id] == f->generation) {
      size_t first = 0;
      while (ids[first] != id) /* only on the error path: no need for a faster search */
        first++;
      return lh_error(LH_ERR_INVALID_ARGUMENT,
                      "AQ-SGD store: example id %lld appears twice in one call, at positions %zu and %zu (ids "
                      "must be distinct within a call)",
                      (long long)id, first, i);
    }
    f->mark[id] = f->generation;
  }
  for (size_t i = 0; i < count; i++) {
    if (slots)
      slots[i] = store->slot_of[ids[i]];
    if (visits)
      visits[i] = store->visits[ids[i]];
  }
  return LH_SUCCESS;
}

lh_status lh_aq_store_assign(lh_aq_store store, const int64_t *ids, size_t count, int64_t *slots) {
  LH_CHECK(lh_aq_store_lookup(store, ids, count, NULL, NULL));
  const lh_aq_store_config *c = &store->config;
  if (c->row_bytes == 0) { /* visit counts only: no rows to give */
    for (size_t i = 0; slots && i < count; i++)
      slots[i] = -1;
    return LH_SUCCESS;
  }
  size_t needed = 0;
  for (size_t i = 0; i < count; i++)
    needed += store->slot_of[ids[i]] < 0;
  if (needed > c->capacity - store->rows_used)
    return lh_error(LH_ERR_OUT_OF_MEMORY,
                    "store full: capacity %zu rows, %zu used, this call needs %zu more (%zu free); make the "
                    "store's capacity larger, up to examples = %zu",
                    c->capacity, store->rows_used, needed, c->capacity - store->rows_used, c->examples);
  for (size_t i = 0; i < count; i++) {
    int64_t *slot = &store->slot_of[ids[i]];
    if (*slot < 0)
      *slot = (int64_t)store->rows_used++;
    if (slots)
      slots[i] = *slot;
  }
  return LH_SUCCESS;
}

void lh_aq_store_count_visits(lh_aq_store store, const int64_t *ids, size_t count) {
  for (size_t i = 0; i < count; i++) {
    uint32_t *v = &store->visits[ids[i]];
    if (*v != UINT32_MAX)
      (*v)++;
  }
}

static int compare_slots(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

lh_status lh_aq_store_prefetch(lh_aq_store store, const int64_t *ids, size_t count) {
  lh_error_clear();
  LH_CHECK(check_ids(store, ids, count, "lh_aq_store_prefetch"));
  for (size_t i = 0; i < count; i++)
    LH_CHECK(check_id(store, ids[i], i, "lh_aq_store_prefetch"));
  if (!store->ops->prefetch || !store->base || count == 0)
    return LH_SUCCESS;
  int64_t *slots = lh_malloc(count * sizeof *slots, "lh_aq_store_prefetch's row list");
  if (!slots)
    return LH_ERR_OUT_OF_MEMORY;
  size_t n = 0;
  for (size_t i = 0; i < count; i++)
    if (store->slot_of[ids[i]] >= 0)
      slots[n++] = store->slot_of[ids[i]];
  /* In row order, so neighbouring rows become one request to the kernel. */
  qsort(slots, n, sizeof *slots, compare_slots);
  if (n)
    store->ops->prefetch(store, slots, n);
  free(slots);
  return LH_SUCCESS;
}

lh_status lh_aq_store_visits(lh_aq_store store, int64_t id, uint32_t *visits) {
  lh_error_clear();
  if (!store || !visits)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_store_visits: store and visits must not be NULL");
  LH_CHECK(check_id(store, id, 0, "lh_aq_store_visits"));
  *visits = store->visits[id];
  return LH_SUCCESS;
}

lh_status lh_aq_store_read_row(lh_aq_store store, int64_t id, void *row, size_t capacity) {
  lh_error_clear();
  if (!store || !row)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_store_read_row: store and row must not be NULL");
  LH_CHECK(check_id(store, id, 0, "lh_aq_store_read_row"));
  size_t row_bytes = store->config.row_bytes;
  if (row_bytes == 0)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_aq_store_read_row: the store keeps visit counts only (row_bytes = 0), no rows");
  int64_t slot = store->slot_of[id];
  if (slot < 0)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_store_read_row: example %lld has no row yet (never sent)",
                    (long long)id);
  if (capacity < row_bytes)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_aq_store_read_row: capacity %zu is less than the row's %zu bytes",
                    capacity, row_bytes);
  const char *src = (const char *)store->base + (size_t)slot * row_bytes;
  if (store->on_device)
    return lh_copy_to_host(row, src, row_bytes);
  memcpy(row, src, row_bytes);
  return LH_SUCCESS;
}

/* ---- claim for a context ---------------------------------------------------------------- */

lh_status lh_aq_store_claim(lh_aq_store store, size_t row_bytes) {
  if (!store)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "AQ-SGD store: store must not be NULL");
  if (store->claimed)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "AQ-SGD store: the store is already used by another context (one context per store)");
  if (row_bytes != store->config.row_bytes)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "AQ-SGD store: the store's rows are %zu bytes but the context needs %zu (tokens x channels x "
                    "the storage type's size, or 0 for DIRECT)",
                    store->config.row_bytes, row_bytes);
  store->claimed = 1;
  return LH_SUCCESS;
}

void lh_aq_store_release(lh_aq_store store) {
  if (store)
    store->claimed = 0;
}

/* The buffer stores behind lh_aq_store: one generic part (store.c: the id -> row map, visit
 * counts, the checks) and one small ops table per kind (store_memory.c: HOST and DEVICE;
 * store_mmap.c: MMAP). Adding a kind = one ops table + one case in lh_aq_store_create.
 * Never installed. */
#ifndef LH_AQSGD_STORE_INTERNAL_H
#define LH_AQSGD_STORE_INTERNAL_H

#include <longhaul/aqsgd.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lh_aq_store_ops {
  const char *name;                                      /* "host", "device", "mmap" */
  lh_status (*open)(lh_aq_store store);                  /* allocate or map store->base */
  void (*close)(lh_aq_store store);                      /* release it (may be half open) */
  void (*prefetch)(lh_aq_store store, const int64_t *slots, size_t count); /* NULL: nothing to do */
} lh_aq_store_ops;

struct lh_aq_store_s {
  lh_aq_store_config config; /* capacity resolved; path owned (a copy) */
  const lh_aq_store_ops *ops;
  void *base;                /* row s at (char *)base + s * row_bytes; NULL when row_bytes = 0 */
  int on_device;             /* base is CUDA device memory */
  int fd;                    /* MMAP: the file; -1 otherwise */
  int64_t *slot_of;          /* per example: its row, or -1 */
  uint32_t *visits;          /* per example: times sent (saturates at UINT32_MAX) */
  size_t rows_used;
  int claimed;               /* a context uses it (one context per store) */
};

/* Checks ids (each in [0, examples), distinct within the call: a clear LH_ERR_INVALID_ARGUMENT
 * naming the id and its position otherwise) and reports each one's row (-1: none yet) and
 * visit count. slots or visits may be NULL. */
lh_status lh_aq_store_lookup(lh_aq_store store, const int64_t *ids, size_t count, int64_t *slots,
                             uint32_t *visits);
/* Gives a row to every id that has none (after lh_aq_store_lookup's checks) and reports all
 * rows. All or nothing: when the free rows are fewer than needed it returns
 * LH_ERR_OUT_OF_MEMORY ("store full: ...", with the numbers) and assigns none. With
 * row_bytes = 0 no rows exist and slots are all -1. */
lh_status lh_aq_store_assign(lh_aq_store store, const int64_t *ids, size_t count, int64_t *slots);
/* visits[id]++ for each id (call only after the ids were checked). */
void lh_aq_store_count_visits(lh_aq_store store, const int64_t *ids, size_t count);
/* Claim for one context; LH_ERR_INVALID_ARGUMENT if already claimed or row_bytes differs from
 * `row_bytes` (names both numbers). release undoes claim. */
lh_status lh_aq_store_claim(lh_aq_store store, size_t row_bytes);
void lh_aq_store_release(lh_aq_store store);

extern const lh_aq_store_ops lh_aq_store_host_ops, lh_aq_store_device_ops, lh_aq_store_mmap_ops;

#ifdef __cplusplus
}
#endif
#endif

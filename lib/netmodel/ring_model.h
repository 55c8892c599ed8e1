/* The ring all-reduce's time (the formula in links.h) over links the caller describes, so the
 * public model (lh_model_ring_allreduce, on a link matrix) and the scheduler (on its own
 * symmetrised or capped matrices) share one formula. */
#ifndef LH_NETMODEL_RING_MODEL_H
#define LH_NETMODEL_RING_MODEL_H

#include <stddef.h>

/* Latency (s) and bandwidth (bytes/s) of ring link k: rank k -> rank (k + 1) % ranks. */
typedef void (*lh_ring_link_fn)(const void *user, int k, double *alpha, double *beta);
/* 0 when ranks <= 1 or bytes == 0; chunk_bytes 0 = whole segments. */
double lh_ring_allreduce_seconds(int ranks, size_t bytes, size_t chunk_bytes, lh_ring_link_fn link,
                                 const void *user);

#endif

/* The cheapest open path through all stages' groups (the order of the pipeline), and the
 * minimum spanning forest the lower bound needs. Exact by Held-Karp up to 16 nodes (16 x 2^16
 * states); beyond, nearest-neighbour paths from several starts improved by 2-opt and Or-opt. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/internal.h"
#include "sched/sched_internal.h"

#define LH_HELD_KARP_MAX 16
/* Starts of the heuristic: enough to escape a bad first node, few enough to stay fast. */
#define LH_PATH_STARTS 8

struct lh_path_work {
  int max_n;
  double *best;     /* Held-Karp: [mask * n + last] */
  signed char *via; /* the node before `last` on that best path */
  int *order, *trial;
  unsigned char *taken;
};

lh_status lh_path_work_create(int max_n, lh_path_work **work) {
  lh_path_work *w = lh_calloc(1, sizeof *w, "open path");
  if (!w)
    return LH_ERR_OUT_OF_MEMORY;
  w->max_n = max_n;
  if (max_n <= LH_HELD_KARP_MAX) {
    size_t states = ((size_t)1 << max_n) * (size_t)max_n;
    w->best = lh_malloc(states * sizeof(double), "open path (Held-Karp table)");
    w->via = lh_malloc(states, "open path (Held-Karp table)");
  }
  w->order = lh_malloc((size_t)max_n * sizeof(int), "open path");
  w->trial = lh_malloc((size_t)max_n * sizeof(int), "open path");
  w->taken = lh_malloc((size_t)max_n, "open path");
  if ((max_n <= LH_HELD_KARP_MAX && (!w->best || !w->via)) || !w->order || !w->trial || !w->taken) {
    lh_path_work_free(w);
    return LH_ERR_OUT_OF_MEMORY;
  }
  *work = w;
  return LH_SUCCESS;
}

void lh_path_work_free(lh_path_work *w) {
  if (!w)
    return;
  free(w->best);
  free(w->via);
  free(w->order);
  free(w->trial);
  free(w->taken);
  free(w);
}

double lh_path_weight(const double *w, int n, const int *order) {
  double sum = 0;
  for (int k = 0; k + 1 < n; k++)
    sum += w[(size_t)order[k] * n + order[k + 1]];
  return sum;
}

static void lh_held_karp(lh_path_work *work, const double *w, int n, int *order) {
  size_t full = ((size_t)1 << n) - 1;
  double *best = work->best;
  signed char *via = work->via;
  for (int last = 0; last < n; last++) {
    size_t s = ((size_t)1 << last) * n + last;
    best[s] = 0;
    via[s] = -1;
  }
  /* Masks in increasing order: every subset is finished before a superset reads it. Only
   * states whose `last` is in the mask are ever written or read. */
  for (size_t mask = 1; mask <= full; mask++) {
    if (!(mask & (mask - 1)))
      continue; /* one node: set above */
    for (size_t lastbits = mask; lastbits; lastbits &= lastbits - 1) {
      int last = __builtin_ctzll(lastbits);
      size_t rest = mask & ~((size_t)1 << last);
      const double *from = best + rest * n;
      double b = INFINITY;
      int v = -1;
      for (size_t bits = rest; bits; bits &= bits - 1) {
        int prev = __builtin_ctzll(bits);
        double c = from[prev] + w[(size_t)prev * n + last];
        if (c < b) {
          b = c;
          v = prev;
        }
      }
      best[mask * n + last] = b;
      via[mask * n + last] = (signed char)v;
    }
  }
  int last = 0;
  for (int k = 1; k < n; k++)
    if (best[full * n + k] < best[full * n + last])
      last = k;
  size_t mask = full;
  for (int k = n - 1; k >= 0; k--) {
    order[k] = last;
    int prev = via[mask * n + last];
    mask &= ~((size_t)1 << last);
    last = prev;
  }
}

/* 2-opt (reverse a stretch, including either end of the open path) and Or-opt (move a stretch
 * of 1-3 nodes elsewhere, either way round) until neither improves the path. */
void lh_path_local_search(const double *w, int n, int *order, int *scratch) {
  int improved = 1;
  while (improved) {
    improved = 0;
    double current = lh_path_weight(w, n, order);
    for (int i = 0; i < n && !improved; i++)
      for (int j = i + 1; j < n && !improved; j++) {
        /* reverse order[i..j] */
        memcpy(scratch, order, (size_t)n * sizeof(int));
        for (int a = i, b = j; a < b; a++, b--) {
          int t = scratch[a];
          scratch[a] = scratch[b];
          scratch[b] = t;
        }
        if (lh_path_weight(w, n, scratch) < current - 1e-12 * fabs(current)) {
          memcpy(order, scratch, (size_t)n * sizeof(int));
          improved = 1;
        }
      }
    for (int len = 1; len <= 3 && !improved; len++)
      for (int i = 0; i + len <= n && !improved; i++)
        for (int to = 0; to + len <= n && !improved; to++) {
          if (to == i)
            continue;
          for (int flip = 0; flip < 2 && !improved; flip++) {
            /* remove order[i .. i+len), insert at position `to` of what remains */
            int k = 0;
            for (int a = 0; a < n; a++)
              if (a < i || a >= i + len)
                scratch[k++] = order[a];
            memmove(scratch + to + len, scratch + to, (size_t)(n - len - to) * sizeof(int));
            for (int a = 0; a < len; a++)
              scratch[to + a] = order[flip ? i + len - 1 - a : i + a];
            if (lh_path_weight(w, n, scratch) < current - 1e-12 * fabs(current)) {
              memcpy(order, scratch, (size_t)n * sizeof(int));
              improved = 1;
            }
          }
        }
  }
}

double lh_open_path(lh_path_work *work, const double *w, int n, int *order) {
  if (n <= 2) {
    for (int k = 0; k < n; k++)
      order[k] = k;
    return lh_path_weight(w, n, order);
  }
  if (n <= LH_HELD_KARP_MAX && work->best) {
    lh_held_karp(work, w, n, order);
    return lh_path_weight(w, n, order);
  }
  double best = INFINITY;
  int starts = n < LH_PATH_STARTS ? n : LH_PATH_STARTS;
  for (int s = 0; s < starts; s++) {
    int *trial = work->trial;
    memset(work->taken, 0, (size_t)n);
    /* Starts spread over the nodes; each grows by its nearest free neighbour. */
    trial[0] = (int)((long long)s * n / starts);
    work->taken[trial[0]] = 1;
    for (int k = 1; k < n; k++) {
      int pick = -1;
      for (int c = 0; c < n; c++)
        if (!work->taken[c] && (pick < 0 || w[(size_t)trial[k - 1] * n + c] < w[(size_t)trial[k - 1] * n + pick]))
          pick = c;
      trial[k] = pick;
      work->taken[pick] = 1;
    }
    lh_path_local_search(w, n, trial, work->order);
    double weight = lh_path_weight(w, n, trial);
    if (weight < best) {
      best = weight;
      memcpy(order, trial, (size_t)n * sizeof(int));
    }
  }
  return lh_path_weight(w, n, order);
}

/* ---- spanning forest --------------------------------------------------------------------- */

typedef struct {
  double w;
  int a, b;
} lh_edge;

static int lh_cmp_edge(const void *x, const void *y) {
  const lh_edge *a = x, *b = y;
  if (a->w != b->w)
    return (a->w > b->w) - (a->w < b->w);
  if (a->a != b->a)
    return a->a - b->a;
  return a->b - b->b;
}

static int lh_find(int *parent, int x) {
  while (parent[x] != x) {
    parent[x] = parent[parent[x]];
    x = parent[x];
  }
  return x;
}

double lh_min_spanning_forest(const double *w, int n, int trees) {
  if (trees >= n)
    return 0;
  size_t m = (size_t)n * (n - 1) / 2;
  lh_edge *edges = lh_malloc(m * sizeof *edges, "spanning forest");
  int *parent = lh_malloc((size_t)n * sizeof(int), "spanning forest");
  if (!edges || !parent) {
    free(edges);
    free(parent);
    return 0; /* a bound of 0 stays valid */
  }
  size_t k = 0;
  for (int a = 0; a < n; a++)
    for (int b = a + 1; b < n; b++)
      edges[k++] = (lh_edge){w[(size_t)a * n + b], a, b};
  qsort(edges, m, sizeof *edges, lh_cmp_edge);
  for (int i = 0; i < n; i++)
    parent[i] = i;
  double sum = 0;
  int joined = 0;
  for (size_t e = 0; e < m && joined < n - trees; e++) {
    int ra = lh_find(parent, edges[e].a), rb = lh_find(parent, edges[e].b);
    if (ra == rb)
      continue;
    parent[ra] = rb;
    sum += edges[e].w;
    joined++;
  }
  free(edges);
  free(parent);
  return sum;
}

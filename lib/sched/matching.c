/* Bottleneck assignment: match every row to its own column so that the most expensive pair is
 * as cheap as possible. Threshold search over the sorted costs, each threshold tested by a
 * bipartite matching (augmenting paths found breadth-first, so no recursion however large);
 * optionally the matching of least total cost among those that reach the bottleneck
 * (the Hungarian method over the admissible pairs), which is what a plan deploys. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/internal.h"
#include "sched/sched_internal.h"

struct lh_bottleneck_work {
  int max_rows, max_cols;
  double *values;            /* the costs, sorted */
  int *row_of_col;           /* current matching, -1 = free */
  int *col_of_row;
  int *queue, *parent_col;   /* BFS over rows; the column through which each row was reached */
  int *from_row;             /* for each column: the row that reached it in the BFS */
  int *visited;              /* per column: the stamp of the BFS that saw it */
  int stamp;
  double *u, *v, *minv;      /* Hungarian potentials, 1-indexed */
  int *p, *way;
  unsigned char *used;
};

lh_status lh_bottleneck_work_create(int max_rows, int max_cols, lh_bottleneck_work **work) {
  lh_bottleneck_work *w = lh_calloc(1, sizeof *w, "bottleneck assignment");
  if (!w)
    return LH_ERR_OUT_OF_MEMORY;
  size_t r = (size_t)max_rows, c = (size_t)max_cols;
  w->max_rows = max_rows;
  w->max_cols = max_cols;
  w->values = lh_malloc(r * c * sizeof(double), "bottleneck assignment");
  w->row_of_col = lh_malloc(c * sizeof(int), "bottleneck assignment");
  w->col_of_row = lh_malloc(r * sizeof(int), "bottleneck assignment");
  w->queue = lh_malloc(r * sizeof(int), "bottleneck assignment");
  w->parent_col = lh_malloc(r * sizeof(int), "bottleneck assignment");
  w->from_row = lh_malloc(c * sizeof(int), "bottleneck assignment");
  w->visited = lh_calloc(c, sizeof(int), "bottleneck assignment");
  w->u = lh_malloc((r + 1) * sizeof(double), "bottleneck assignment");
  w->v = lh_malloc((c + 1) * sizeof(double), "bottleneck assignment");
  w->minv = lh_malloc((c + 1) * sizeof(double), "bottleneck assignment");
  w->p = lh_malloc((c + 1) * sizeof(int), "bottleneck assignment");
  w->way = lh_malloc((c + 1) * sizeof(int), "bottleneck assignment");
  w->used = lh_malloc(c + 1, "bottleneck assignment");
  if (!w->values || !w->row_of_col || !w->col_of_row || !w->queue || !w->parent_col || !w->from_row ||
      !w->visited || !w->u || !w->v || !w->minv || !w->p || !w->way || !w->used) {
    lh_bottleneck_work_free(w);
    return LH_ERR_OUT_OF_MEMORY;
  }
  *work = w;
  return LH_SUCCESS;
}

void lh_bottleneck_work_free(lh_bottleneck_work *w) {
  if (!w)
    return;
  free(w->values);
  free(w->row_of_col);
  free(w->col_of_row);
  free(w->queue);
  free(w->parent_col);
  free(w->from_row);
  free(w->visited);
  free(w->u);
  free(w->v);
  free(w->minv);
  free(w->p);
  free(w->way);
  free(w->used);
  free(w);
}

/* Augment the matching from free row `start` along admissible pairs (cost <= t), breadth
 * first. Returns 1 if the row could be matched. */
static int lh_augment(lh_bottleneck_work *w, const double *cost, int cols, double t, int start) {
  int head = 0, tail = 0;
  w->stamp++;
  if (w->stamp == 0) { /* wrapped: forget every old stamp */
    memset(w->visited, 0, (size_t)w->max_cols * sizeof(int));
    w->stamp = 1;
  }
  w->queue[tail++] = start;
  while (head < tail) {
    int r = w->queue[head++];
    for (int c = 0; c < cols; c++) {
      if (w->visited[c] == w->stamp || cost[(size_t)r * cols + c] > t)
        continue;
      w->visited[c] = w->stamp;
      w->from_row[c] = r;
      if (w->row_of_col[c] < 0) {
        /* Free column: flip the path back to `start`. */
        while (c >= 0) {
          int row = w->from_row[c];
          int previous = w->col_of_row[row];
          w->col_of_row[row] = c;
          w->row_of_col[c] = row;
          c = row == start ? -1 : previous;
        }
        return 1;
      }
      w->queue[tail++] = w->row_of_col[c];
    }
  }
  return 0;
}

/* Can every row be matched using pairs of cost <= t? Leaves the matching in the work. */
static int lh_perfect_at(lh_bottleneck_work *w, const double *cost, int rows, int cols, double t) {
  for (int c = 0; c < cols; c++)
    w->row_of_col[c] = -1;
  for (int r = 0; r < rows; r++)
    w->col_of_row[r] = -1;
  /* Greedy first pass: most rows find a free admissible column directly. */
  for (int r = 0; r < rows; r++)
    for (int c = 0; c < cols; c++)
      if (w->row_of_col[c] < 0 && cost[(size_t)r * cols + c] <= t) {
        w->row_of_col[c] = r;
        w->col_of_row[r] = c;
        break;
      }
  for (int r = 0; r < rows; r++)
    if (w->col_of_row[r] < 0 && !lh_augment(w, cost, cols, t, r))
      return 0;
  return 1;
}

/* Least total cost among matchings using only pairs <= t (one is known to exist). */
static void lh_min_sum_at(lh_bottleneck_work *w, const double *cost, int rows, int cols, double t, int *match) {
  /* A forbidden pair costs more than any admissible matching can. */
  double big = (fabs(t) + 1) * (rows + 1) * 4;
  double *u = w->u, *v = w->v, *minv = w->minv;
  int *p = w->p, *way = w->way;
  for (int j = 0; j <= cols; j++) {
    v[j] = 0;
    p[j] = 0;
  }
  for (int i = 0; i <= rows; i++)
    u[i] = 0;
  for (int i = 1; i <= rows; i++) {
    p[0] = i;
    int j0 = 0;
    for (int j = 0; j <= cols; j++) {
      minv[j] = INFINITY;
      w->used[j] = 0;
    }
    do {
      w->used[j0] = 1;
      int i0 = p[j0], j1 = 0;
      double delta = INFINITY;
      for (int j = 1; j <= cols; j++) {
        if (w->used[j])
          continue;
        double c = cost[(size_t)(i0 - 1) * cols + (j - 1)];
        double cur = (c <= t ? c : big) - u[i0] - v[j];
        if (cur < minv[j]) {
          minv[j] = cur;
          way[j] = j0;
        }
        if (minv[j] < delta) {
          delta = minv[j];
          j1 = j;
        }
      }
      for (int j = 0; j <= cols; j++) {
        if (w->used[j]) {
          u[p[j]] += delta;
          v[j] -= delta;
        } else {
          minv[j] -= delta;
        }
      }
      j0 = j1;
    } while (p[j0] != 0);
    do {
      int j1 = way[j0];
      p[j0] = p[j1];
      j0 = j1;
    } while (j0);
  }
  for (int j = 1; j <= cols; j++)
    if (p[j] != 0)
      match[p[j] - 1] = j - 1;
}

/* The matching the work holds reaches t: hand it out, or the least-total one at t. */
static double lh_finish(lh_bottleneck_work *w, const double *cost, int rows, int cols, double t, int min_sum,
                        int *match) {
  if (min_sum)
    lh_min_sum_at(w, cost, rows, cols, t, match);
  else
    memcpy(match, w->col_of_row, (size_t)rows * sizeof(int));
  return t;
}

double lh_bottleneck_assign(lh_bottleneck_work *w, const double *cost, int rows, int cols, int min_sum, int *match) {
  size_t count = (size_t)rows * cols;
  /* Every row needs one of its pairs, and (square) every column too: the largest of those
   * minima is a floor the search starts from. */
  double floor_t = -INFINITY;
  for (int r = 0; r < rows; r++) {
    double best = INFINITY;
    for (int c = 0; c < cols; c++)
      best = cost[(size_t)r * cols + c] < best ? cost[(size_t)r * cols + c] : best;
    floor_t = best > floor_t ? best : floor_t;
  }
  if (rows == cols)
    for (int c = 0; c < cols; c++) {
      double best = INFINITY;
      for (int r = 0; r < rows; r++)
        best = cost[(size_t)r * cols + c] < best ? cost[(size_t)r * cols + c] : best;
      floor_t = best > floor_t ? best : floor_t;
    }
  /* Most often the floor itself admits a perfect matching: then no sort and no search. */
  if (lh_perfect_at(w, cost, rows, cols, floor_t))
    return lh_finish(w, cost, rows, cols, floor_t, min_sum, match);
  /* A few next-larger values tested in turn (found by a scan, no sort): the bottleneck is
   * usually just above the floor. */
  double t = floor_t;
  for (int tries = 0; tries < 4; tries++) {
    double next = INFINITY;
    for (size_t i = 0; i < count; i++)
      if (cost[i] > t && cost[i] < next)
        next = cost[i];
    t = next;
    if (lh_perfect_at(w, cost, rows, cols, t))
      return lh_finish(w, cost, rows, cols, t, min_sum, match);
  }
  /* Then binary search over the sorted larger values; the largest always succeeds. */
  size_t k = 0;
  for (size_t i = 0; i < count; i++)
    if (cost[i] > t)
      w->values[k++] = cost[i];
  qsort(w->values, k, sizeof(double), lh_sched_cmp_double);
  size_t lo = 0, hi = k - 1;
  if (lh_perfect_at(w, cost, rows, cols, w->values[0]))
    hi = 0;
  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;
    if (lh_perfect_at(w, cost, rows, cols, w->values[mid]))
      hi = mid;
    else
      lo = mid;
  }
  t = w->values[hi];
  lh_perfect_at(w, cost, rows, cols, t); /* the last test may have been a failing one */
  return lh_finish(w, cost, rows, cols, t, min_sum, match);
}

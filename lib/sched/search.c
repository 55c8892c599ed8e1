/* The search for one P x D: constructive multi-start, then swap polishing.
 *
 * Constructive: choose stage 0 (one device per replica), then grow all D pipelines one stage at
 * a time, each step a bottleneck assignment from the current frontier to the unused devices
 * (least total among the bottleneck-optimal ones). Growing every pipeline together is what
 * lines their slow hops up on the same boundary, the alignment DT-FM's swaps cannot reach.
 * Stage 0 comes from: sites (clusters of cheap links at several thresholds, seats given to
 * clusters in proportion to their size), a farthest-point spread, a DP-cheap cluster, or chance.
 *
 * Polishing: first-improvement swaps of two devices, lexicographic on (cost, sum of the parts)
 * so that plateaus of the max-based cost still move, skipping swaps of interchangeable devices.
 *   dtfm:      the state is the partition into groups; a swap touches two groups, so only their
 *              DP costs and their bottleneck weights to every other group are recomputed, then
 *              the stage order (Held-Karp while cheap, else local search from the current one).
 *   pipelined: the state is the full grid; a swap touches two replicas and two stages' rings.
 * Starts are polished cheapest first until the deadline. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/internal.h"
#include "sched/sched_internal.h"

/* Above this many stages the polish orders stages by local search, Held-Karp only at the end. */
#define LH_EXACT_ORDER_IN_LOOP 10
/* Site thresholds tried as starts. */
#define LH_SITE_LEVELS 12

typedef struct {
  const lh_net *net;
  const lh_objective *obj;
  int n, P, D;
  uint64_t rng;
  double deadline;
  int budget_hit;
  double *hop;  /* n x n: cost of a pipeline hop between two devices (symmetric) */
  double *dpw;  /* n x n: cost of a DP pairing */
  double *cost; /* D x n: a matching's cost matrix */
  int *match, *unused, *taken;
  int *site, *site_size, *site_share; /* n each: clusters for the site seeds */
  lh_bottleneck_work *bw;
  lh_path_work *pw;
  /* dtfm partition state */
  int *groups;              /* P x D */
  double *gdp;              /* P */
  double *w;                /* P x P bottleneck weights */
  double *w_saved;          /* 2 rows of P */
  int *order, *order_saved, *scratch;
  double *tree_dist;        /* P: Prim's distances */
  unsigned char *tree_in;   /* P */
  /* pipelined grid state */
  double *rep_done, *stage_time; /* D x P: when each replica's stages end; P: each ring */
  double *saved;                 /* 2 P + 2: what a tried swap overwrote */
  int *path;                     /* P */
} lh_search;

static int lh_past_deadline(lh_search *s) {
  if (!s->budget_hit && lh_now() > s->deadline)
    s->budget_hit = 1;
  return s->budget_hit;
}

/* ---- dtfm: partition cost ---------------------------------------------------------------- */

static double lh_group_weight(lh_search *s, int a, int b) {
  int D = s->D, n = s->n;
  const int *ga = s->groups + (size_t)a * D, *gb = s->groups + (size_t)b * D;
  for (int i = 0; i < D; i++)
    for (int j = 0; j < D; j++)
      s->cost[(size_t)i * D + j] = s->obj->pp_edge[(size_t)ga[i] * n + gb[j]];
  return lh_bottleneck_assign(s->bw, s->cost, D, D, 0, s->match);
}

/* A lower bound on the bottleneck weight: every row and every column needs one of its pairs. */
static double lh_group_weight_floor(lh_search *s, int a, int b) {
  int D = s->D, n = s->n;
  const int *ga = s->groups + (size_t)a * D, *gb = s->groups + (size_t)b * D;
  double floor_t = 0;
  for (int i = 0; i < D; i++) {
    double row = INFINITY, col = INFINITY;
    for (int j = 0; j < D; j++) {
      double r = s->obj->pp_edge[(size_t)ga[i] * n + gb[j]], c = s->obj->pp_edge[(size_t)gb[i] * n + ga[j]];
      row = r < row ? r : row;
      col = c < col ? c : col;
    }
    floor_t = row > floor_t ? row : floor_t;
    floor_t = col > floor_t ? col : floor_t;
  }
  return floor_t;
}

/* The four largest drops of group a's and b's weights when they become new[] (two rows of P,
 * a's then b's), whose sum bounds how much any stage order can fall. */
static double lh_largest_drops(const lh_search *s, int a, int b, const double *fresh) {
  int P = s->P;
  double drop[4] = {0, 0, 0, 0};
  for (int side = 0; side < 2; side++) {
    int g = side ? b : a;
    for (int c = 0; c < P; c++) {
      if (c == g || (side && c == a))
        continue;
      double d = s->w[(size_t)g * P + c] - fresh[(size_t)side * P + c];
      for (int q = 0; q < 4 && d > 0; q++)
        if (d > drop[q]) {
          double t = drop[q];
          drop[q] = d;
          d = t;
        }
    }
  }
  return drop[0] + drop[1] + drop[2] + drop[3];
}

/* Weight of the minimum spanning tree over the groups with a's and b's rows replaced by fresh
 * (Prim, no allocation): every path through all groups is such a tree, so no order can weigh
 * less. */
static double lh_tree_floor(const lh_search *s, int a, int b, const double *fresh) {
  int P = s->P;
  double *dist = s->tree_dist;
  unsigned char *in = s->tree_in;
  for (int v = 0; v < P; v++) {
    dist[v] = INFINITY;
    in[v] = 0;
  }
  dist[0] = 0;
  double total = 0;
  for (int step = 0; step < P; step++) {
    int u = -1;
    for (int v = 0; v < P; v++)
      if (!in[v] && (u < 0 || dist[v] < dist[u]))
        u = v;
    in[u] = 1;
    total += dist[u];
    for (int v = 0; v < P; v++) {
      if (in[v])
        continue;
      double w = u == a ? fresh[v] : v == a ? fresh[u] : u == b ? fresh[P + v] : v == b ? fresh[P + u]
                                                                                 : s->w[(size_t)u * P + v];
      if (w < dist[v])
        dist[v] = w;
    }
  }
  return total;
}

/* No stage order with a's and b's new weights (fresh) can beat `cost`: a path meets groups a
 * and b on at most four edges, so it falls by at most the four largest drops of their weights;
 * and it weighs at least a spanning tree. */
static int lh_hopeless(const lh_search *s, int a, int b, const double *fresh, double worst_dp, double path,
                       double cost) {
  double limit = cost * (1 + 1e-12);
  if (worst_dp + 2 * (path - lh_largest_drops(s, a, b, fresh)) > limit)
    return 1;
  return worst_dp + 2 * lh_tree_floor(s, a, b, fresh) > limit;
}

static void lh_set_weight(lh_search *s, int a, int b) {
  double t = lh_group_weight(s, a, b);
  s->w[(size_t)a * s->P + b] = s->w[(size_t)b * s->P + a] = t;
}

/* Order the stages; `exact` forces Held-Karp (when it fits). */
static double lh_order_stages(lh_search *s, int exact) {
  if (s->P <= LH_EXACT_ORDER_IN_LOOP || exact)
    return lh_open_path(s->pw, s->w, s->P, s->order);
  lh_path_local_search(s->w, s->P, s->order, s->scratch);
  return lh_path_weight(s->w, s->P, s->order);
}

/* (cost, sum of parts) of the current partition with its current weights and order. */
static void lh_partition_cost(lh_search *s, double path, double *cost, double *soft) {
  double worst = 0, sum = 0;
  for (int g = 0; g < s->P; g++) {
    worst = fmax(worst, s->gdp[g]);
    sum += s->gdp[g];
  }
  *cost = worst + 2 * path;
  *soft = sum + 2 * path;
}

static double lh_partition_full(lh_search *s, double *cost, double *soft) {
  for (int g = 0; g < s->P; g++)
    s->gdp[g] = lh_dtfm_group_cost(s->obj, s->n, s->groups + (size_t)g * s->D, s->D);
  for (int a = 0; a < s->P; a++)
    for (int b = a + 1; b < s->P; b++)
      lh_set_weight(s, a, b);
  for (int k = 0; k < s->P; k++)
    s->order[k] = k;
  double path = lh_order_stages(s, 0);
  lh_partition_cost(s, path, cost, soft);
  return path;
}

static int lh_better(double cost, double soft, double best_cost, double best_soft) {
  double eps = 1e-12 * fmax(fabs(best_cost), 1e-300);
  if (cost < best_cost - eps)
    return 1;
  return cost <= best_cost + eps && soft < best_soft - 1e-12 * fmax(fabs(best_soft), 1e-300);
}

/* First-improvement swaps between groups until none helps or the deadline. */
static void lh_polish_partition(lh_search *s, double path, double *cost, double *soft) {
  int P = s->P, D = s->D, n = s->n;
  int improved = 1;
  while (improved && !lh_past_deadline(s)) {
    improved = 0;
    for (int a = 0; a < P; a++)
      for (int b = a + 1; b < P; b++)
        for (int i = 0; i < D; i++) {
          int x = s->groups[a * D + i];
          /* One device per class and group: the others are the same move. */
          int dup = 0;
          for (int q = 0; q < i && !dup; q++)
            dup = s->net->klass[s->groups[a * D + q]] == s->net->klass[x];
          if (dup)
            continue;
          for (int j = 0; j < D; j++) {
            int y = s->groups[b * D + j];
            if (s->net->klass[x] == s->net->klass[y])
              continue;
            dup = 0;
            for (int q = 0; q < j && !dup; q++)
              dup = s->net->klass[s->groups[b * D + q]] == s->net->klass[y];
            if (dup)
              continue;
            if (lh_past_deadline(s))
              return;
            /* Try the swap: two groups' DP costs and weights change. */
            double gdp_a = s->gdp[a], gdp_b = s->gdp[b];
            s->groups[a * D + i] = y;
            s->groups[b * D + j] = x;
            s->gdp[a] = lh_dtfm_group_cost(s->obj, n, s->groups + (size_t)a * D, D);
            s->gdp[b] = lh_dtfm_group_cost(s->obj, n, s->groups + (size_t)b * D, D);
            double worst_dp = 0;
            for (int g = 0; g < P; g++)
              worst_dp = s->gdp[g] > worst_dp ? s->gdp[g] : worst_dp;
            /* Bounds on the new order's weight, first from cheap floors of the new weights,
             * then from the exact ones: most swaps fail before any ordering. */
            double *fresh = s->w_saved;
            for (int c = 0; c < P; c++) {
              fresh[c] = c == a ? 0 : lh_group_weight_floor(s, a, c);
              fresh[P + c] = c == b ? 0 : lh_group_weight_floor(s, b, c);
            }
            int hopeless = lh_hopeless(s, a, b, fresh, worst_dp, path, *cost);
            if (!hopeless) {
              for (int c = 0; c < P; c++) {
                fresh[c] = c == a ? 0 : lh_group_weight(s, a, c);
                fresh[P + c] = c == b ? 0 : c == a ? fresh[b] : lh_group_weight(s, b, c);
              }
              hopeless = lh_hopeless(s, a, b, fresh, worst_dp, path, *cost);
            }
            if (hopeless) {
              s->groups[a * D + i] = x;
              s->groups[b * D + j] = y;
              s->gdp[a] = gdp_a;
              s->gdp[b] = gdp_b;
              continue;
            }
            /* Worth ordering: install the new weights (old rows kept for the way back). */
            memcpy(s->order_saved, s->order, (size_t)P * sizeof(int));
            for (int c = 0; c < P; c++) {
              double wa = fresh[c], wb = fresh[P + c];
              fresh[c] = s->w[(size_t)a * P + c];
              fresh[P + c] = s->w[(size_t)b * P + c];
              if (c != a) {
                s->w[(size_t)a * P + c] = s->w[(size_t)c * P + a] = wa;
              }
              if (c != b && c != a) {
                s->w[(size_t)b * P + c] = s->w[(size_t)c * P + b] = wb;
              }
            }
            double c2, s2, path2 = lh_order_stages(s, 0);
            lh_partition_cost(s, path2, &c2, &s2);
            if (lh_better(c2, s2, *cost, *soft)) {
              *cost = c2;
              *soft = s2;
              path = path2;
              improved = 1;
              x = y; /* the slot now holds y; keep scanning with it */
              continue;
            }
            s->groups[a * D + i] = x;
            s->groups[b * D + j] = y;
            s->gdp[a] = gdp_a;
            s->gdp[b] = gdp_b;
            memcpy(s->w + (size_t)a * P, s->w_saved, (size_t)P * sizeof(double));
            memcpy(s->w + (size_t)b * P, s->w_saved + P, (size_t)P * sizeof(double));
            for (int c = 0; c < P; c++) {
              s->w[(size_t)c * P + a] = s->w[(size_t)a * P + c];
              s->w[(size_t)c * P + b] = s->w[(size_t)b * P + c];
            }
            memcpy(s->order, s->order_saved, (size_t)P * sizeof(int));
          }
        }
  }
}

/* The partition's deployment: exact order, least-total bottleneck matchings chained from
 * stage 0. The cost it returns is the one lh_objective_eval recomputes from the grid. */
static double lh_partition_to_grid(lh_search *s, int *grid) {
  int P = s->P, D = s->D, n = s->n;
  for (int a = 0; a < P; a++)
    for (int b = a + 1; b < P; b++)
      lh_set_weight(s, a, b);
  for (int k = 0; k < P; k++)
    s->order[k] = k;
  double path = lh_order_stages(s, 1);
  memcpy(grid, s->groups + (size_t)s->order[0] * D, (size_t)D * sizeof(int));
  for (int k = 1; k < P; k++) {
    const int *prev = grid + (size_t)(k - 1) * D, *next = s->groups + (size_t)s->order[k] * D;
    for (int i = 0; i < D; i++)
      for (int j = 0; j < D; j++)
        s->cost[(size_t)i * D + j] = s->obj->pp_edge[(size_t)prev[i] * n + next[j]];
    lh_bottleneck_assign(s->bw, s->cost, D, D, 1, s->match);
    for (int i = 0; i < D; i++)
      grid[(size_t)k * D + i] = next[s->match[i]];
  }
  double cost;
  lh_objective_eval(s->net, s->obj, grid, &cost, NULL, NULL);
  (void)path;
  return cost;
}

/* ---- pipelined: grid cost -------------------------------------------------------------------- */

/* Replica i's stage end times into rep_done[i * P ..]. */
static void lh_replica_done(lh_search *s, const int *grid, int i) {
  for (int k = 0; k < s->P; k++)
    s->path[k] = grid[(size_t)k * s->D + i];
  lh_pipelined_replica(s->net, s->obj, s->path, s->rep_done + (size_t)i * s->P);
}

/* The iteration as lh_objective_eval computes it, from the cached parts. */
static void lh_grid_cost(lh_search *s, double *cost, double *soft) {
  int P = s->P, D = s->D;
  double pp = 0, sum = 0;
  for (int i = 0; i < D; i++) {
    pp = fmax(pp, s->rep_done[(size_t)i * P]);
    sum += s->rep_done[(size_t)i * P];
  }
  double end = pp;
  for (int k = 0; k < P; k++) {
    double start = 0;
    for (int i = 0; i < D; i++)
      start = fmax(start, s->rep_done[(size_t)i * P + k]);
    end = fmax(end, start + s->stage_time[k]);
    sum += start + s->stage_time[k];
  }
  *cost = end;
  *soft = sum;
}

static void lh_grid_full(lh_search *s, const int *grid, double *cost, double *soft) {
  for (int i = 0; i < s->D; i++)
    lh_replica_done(s, grid, i);
  for (int k = 0; k < s->P; k++)
    s->stage_time[k] = lh_pipelined_stage_allreduce(s->net, s->obj, k, grid + (size_t)k * s->D);
  lh_grid_cost(s, cost, soft);
}

/* Slots p and q (stage * D + replica) changed: two replicas and two stage rings to redo. The
 * old values go to saved (2 x P replica times, then 2 stage times). */
static void lh_grid_touch(lh_search *s, const int *grid, int p, int q, double *saved) {
  int D = s->D, P = s->P;
  int kp = p / D, ip = p % D, kq = q / D, iq = q % D;
  memcpy(saved, s->rep_done + (size_t)ip * P, (size_t)P * sizeof(double));
  memcpy(saved + P, s->rep_done + (size_t)iq * P, (size_t)P * sizeof(double));
  saved[2 * P] = s->stage_time[kp];
  saved[2 * P + 1] = s->stage_time[kq];
  lh_replica_done(s, grid, ip);
  if (iq != ip)
    lh_replica_done(s, grid, iq);
  s->stage_time[kp] = lh_pipelined_stage_allreduce(s->net, s->obj, kp, grid + (size_t)kp * D);
  if (kq != kp)
    s->stage_time[kq] = lh_pipelined_stage_allreduce(s->net, s->obj, kq, grid + (size_t)kq * D);
}

static void lh_grid_untouch(lh_search *s, int p, int q, const double *saved) {
  int D = s->D, P = s->P;
  /* In reverse order of saving, so that p == q's replica or stage ends with p's old value. */
  memcpy(s->rep_done + (size_t)(q % D) * P, saved + P, (size_t)P * sizeof(double));
  memcpy(s->rep_done + (size_t)(p % D) * P, saved, (size_t)P * sizeof(double));
  s->stage_time[q / D] = saved[2 * P + 1];
  s->stage_time[p / D] = saved[2 * P];
}

static void lh_polish_grid(lh_search *s, int *grid, double *cost, double *soft) {
  int n = s->n;
  int improved = 1;
  while (improved && !lh_past_deadline(s)) {
    improved = 0;
    for (int p = 0; p < n; p++)
      for (int q = p + 1; q < n; q++) {
        if (s->net->klass[grid[p]] == s->net->klass[grid[q]])
          continue;
        if ((q & 63) == 0 && lh_past_deadline(s))
          return;
        int t = grid[p];
        grid[p] = grid[q];
        grid[q] = t;
        lh_grid_touch(s, grid, p, q, s->saved);
        double c2, s2;
        lh_grid_cost(s, &c2, &s2);
        if (lh_better(c2, s2, *cost, *soft)) {
          *cost = c2;
          *soft = s2;
          improved = 1;
          continue;
        }
        grid[q] = grid[p];
        grid[p] = t;
        lh_grid_untouch(s, p, q, s->saved);
      }
  }
}

/* ---- constructive ---------------------------------------------------------------------------- */

/* Grow the D pipelines from stage 0 (grid's first D entries) to P stages. */
static void lh_grow(lh_search *s, int *grid) {
  int n = s->n, D = s->D;
  memset(s->taken, 0, (size_t)n * sizeof(int));
  for (int i = 0; i < D; i++)
    s->taken[grid[i]] = 1;
  for (int k = 1; k < s->P; k++) {
    int u = 0;
    for (int d = 0; d < n; d++)
      if (!s->taken[d])
        s->unused[u++] = d;
    const int *frontier = grid + (size_t)(k - 1) * D;
    for (int i = 0; i < D; i++)
      for (int j = 0; j < u; j++)
        s->cost[(size_t)i * u + j] = s->hop[(size_t)frontier[i] * n + s->unused[j]];
    lh_bottleneck_assign(s->bw, s->cost, D, u, 1, s->match);
    for (int i = 0; i < D; i++) {
      int d = s->unused[s->match[i]];
      grid[(size_t)k * D + i] = d;
      s->taken[d] = 1;
    }
  }
}

/* Union-find root. */
static int lh_root(int *parent, int x) {
  while (parent[x] != x)
    x = parent[x] = parent[parent[x]];
  return x;
}

/* Stage 0 from the clusters of links no dearer than `threshold`: seats in proportion to the
 * clusters' sizes (each next seat to the cluster furthest below its share; ties to the larger,
 * then the lower-numbered cluster), never more than a cluster holds; members by chance. */
static void lh_seed_sites(lh_search *s, double threshold, int *grid) {
  int n = s->n, D = s->D;
  int *parent = s->site, *size = s->site_size, *share = s->site_share, *members = s->unused;
  for (int d = 0; d < n; d++) {
    parent[d] = d;
    size[d] = share[d] = 0;
  }
  for (int a = 0; a < n; a++)
    for (int b = a + 1; b < n; b++)
      if (s->hop[(size_t)a * n + b] <= threshold) {
        int ra = lh_root(parent, a), rb = lh_root(parent, b);
        if (ra != rb)
          parent[ra] = rb;
      }
  for (int d = 0; d < n; d++)
    size[lh_root(parent, d)]++;
  for (int given = 0; given < D; given++) {
    int pick = -1;
    double pick_deficit = 0;
    for (int c = 0; c < n; c++) {
      if (share[c] >= size[c])
        continue;
      double deficit = (double)D * size[c] / n - share[c];
      if (pick < 0 || deficit > pick_deficit || (deficit == pick_deficit && size[c] > size[pick])) {
        pick = c;
        pick_deficit = deficit;
      }
    }
    share[pick]++;
  }
  /* Members: a seeded shuffle of each cluster, its first `share`. */
  int k = 0;
  for (int c = 0; c < n; c++) {
    if (share[c] == 0)
      continue;
    int m = 0;
    for (int e = 0; e < n; e++)
      if (lh_root(parent, e) == c)
        members[m++] = e;
    for (int a = m - 1; a > 0; a--) {
      int b = lh_sched_below(&s->rng, a + 1), t = members[a];
      members[a] = members[b];
      members[b] = t;
    }
    for (int a = 0; a < share[c]; a++)
      grid[k++] = members[a];
  }
}

/* Stage 0 as far apart as possible: every pipeline starts somewhere else. */
static void lh_seed_spread(lh_search *s, int *grid) {
  int n = s->n;
  memset(s->taken, 0, (size_t)n * sizeof(int));
  grid[0] = lh_sched_below(&s->rng, n);
  s->taken[grid[0]] = 1;
  for (int k = 1; k < s->D; k++) {
    int pick = -1;
    double far = -1;
    for (int d = 0; d < n; d++) {
      if (s->taken[d])
        continue;
      double near = INFINITY;
      for (int j = 0; j < k; j++)
        near = fmin(near, s->hop[(size_t)grid[j] * n + d]);
      if (near > far) {
        far = near;
        pick = d;
      }
    }
    grid[k] = pick;
    s->taken[pick] = 1;
  }
}

/* Stage 0 as one DP-cheap cluster around a random device. */
static void lh_seed_cluster(lh_search *s, int *grid) {
  int n = s->n;
  memset(s->taken, 0, (size_t)n * sizeof(int));
  grid[0] = lh_sched_below(&s->rng, n);
  s->taken[grid[0]] = 1;
  for (int k = 1; k < s->D; k++) {
    int pick = -1;
    for (int d = 0; d < n; d++)
      if (!s->taken[d] && (pick < 0 || s->dpw[(size_t)grid[0] * n + d] < s->dpw[(size_t)grid[0] * n + pick]))
        pick = d;
    grid[k] = pick;
    s->taken[pick] = 1;
  }
}

static void lh_seed_random(lh_search *s, int *grid) {
  int n = s->n;
  for (int d = 0; d < n; d++)
    s->unused[d] = d;
  for (int k = 0; k < s->D; k++) {
    int j = k + lh_sched_below(&s->rng, n - k);
    int t = s->unused[k];
    s->unused[k] = s->unused[j];
    s->unused[j] = t;
    grid[k] = s->unused[k];
  }
}

/* ---- driver ---------------------------------------------------------------------------------- */

static void lh_search_free(lh_search *s) {
  free(s->hop);
  free(s->dpw);
  free(s->cost);
  free(s->match);
  free(s->unused);
  free(s->taken);
  free(s->site);
  free(s->site_size);
  free(s->site_share);
  free(s->groups);
  free(s->gdp);
  free(s->w);
  free(s->w_saved);
  free(s->order);
  free(s->order_saved);
  free(s->tree_dist);
  free(s->tree_in);
  free(s->scratch);
  free(s->rep_done);
  free(s->saved);
  free(s->stage_time);
  free(s->path);
  lh_bottleneck_work_free(s->bw);
  lh_path_work_free(s->pw);
}

static lh_status lh_search_init(lh_search *s, const lh_net *net, const lh_objective *obj, uint64_t seed,
                                double deadline) {
  memset(s, 0, sizeof *s);
  int n = net->n, P = obj->pp, D = obj->dp;
  s->net = net;
  s->obj = obj;
  s->n = n;
  s->P = P;
  s->D = D;
  s->rng = seed;
  s->deadline = deadline;
  size_t nn = (size_t)n * n;
  s->hop = lh_malloc(nn * sizeof(double), "scheduler search");
  s->dpw = lh_malloc(nn * sizeof(double), "scheduler search");
  s->cost = lh_malloc((size_t)D * n * sizeof(double), "scheduler search");
  s->match = lh_malloc((size_t)n * sizeof(int), "scheduler search");
  s->unused = lh_malloc((size_t)n * sizeof(int), "scheduler search");
  s->taken = lh_malloc((size_t)n * sizeof(int), "scheduler search");
  s->groups = lh_malloc((size_t)n * sizeof(int), "scheduler search");
  s->site = lh_malloc((size_t)n * sizeof(int), "scheduler search");
  s->site_size = lh_malloc((size_t)n * sizeof(int), "scheduler search");
  s->site_share = lh_malloc((size_t)n * sizeof(int), "scheduler search");
  s->gdp = lh_malloc((size_t)P * sizeof(double), "scheduler search");
  s->w = lh_calloc((size_t)P * P, sizeof(double), "scheduler search");
  s->w_saved = lh_malloc(2 * (size_t)P * sizeof(double), "scheduler search");
  s->order = lh_malloc((size_t)P * sizeof(int), "scheduler search");
  s->order_saved = lh_malloc((size_t)P * sizeof(int), "scheduler search");
  s->scratch = lh_malloc((size_t)P * sizeof(int), "scheduler search");
  s->tree_dist = lh_malloc((size_t)P * sizeof(double), "scheduler search");
  s->tree_in = lh_malloc((size_t)P, "scheduler search");
  s->rep_done = lh_malloc((size_t)D * P * sizeof(double), "scheduler search");
  s->saved = lh_malloc((2 * (size_t)P + 2) * sizeof(double), "scheduler search");
  s->stage_time = lh_malloc((size_t)P * sizeof(double), "scheduler search");
  s->path = lh_malloc((size_t)P * sizeof(int), "scheduler search");
  if (!s->hop || !s->dpw || !s->cost || !s->match || !s->unused || !s->taken || !s->site || !s->site_size || !s->site_share || !s->groups || !s->gdp || !s->w ||
      !s->w_saved || !s->order || !s->order_saved || !s->scratch || !s->tree_dist || !s->tree_in || !s->rep_done || !s->saved || !s->stage_time || !s->path)
    return LH_ERR_OUT_OF_MEMORY;
  LH_CHECK(lh_bottleneck_work_create(D, n, &s->bw));
  LH_CHECK(lh_path_work_create(P, &s->pw));
  for (size_t ij = 0; ij < nn; ij++) {
    if (ij / n == ij % n) {
      s->hop[ij] = s->dpw[ij] = 0;
    } else if (obj->kind == LH_SCHED_DTFM) {
      s->hop[ij] = obj->pp_edge[ij];
      s->dpw[ij] = obj->dp_edge[ij];
    } else {
      /* A hop carries one activation forward and one gradient back per micro-batch. */
      s->hop[ij] = 2 * net->alpha[ij] + (obj->fwd_bytes + obj->bwd_bytes) / net->beta[ij];
      s->dpw[ij] = net->alpha[ij] + obj->stage_grad_bytes[0] / (D * net->beta[ij]);
    }
  }
  return LH_SUCCESS;
}

/* One start's stage 0: sites at LH_SITE_LEVELS thresholds first, then spread, cluster, chance. */
static void lh_seed(lh_search *s, int start, const double *levels, int nlevels, int *grid) {
  if (start < nlevels)
    lh_seed_sites(s, levels[start], grid);
  else if ((start - nlevels) % 3 == 0)
    lh_seed_spread(s, grid);
  else if ((start - nlevels) % 3 == 1)
    lh_seed_cluster(s, grid);
  else
    lh_seed_random(s, grid);
}

typedef struct {
  double cost, soft;
  int start;
} lh_start_rank;

static int lh_cmp_start(const void *a, const void *b) {
  const lh_start_rank *x = a, *y = b;
  if (x->cost != y->cost)
    return (x->cost > y->cost) - (x->cost < y->cost);
  if (x->soft != y->soft)
    return (x->soft > y->soft) - (x->soft < y->soft);
  return x->start - y->start;
}

lh_status lh_search_run(const lh_net *net, const lh_objective *obj, uint64_t seed, int restarts, double deadline,
                        int *best_grid, lh_search_result *result) {
  lh_search s;
  int n = net->n, D = obj->dp;
  lh_status st = lh_search_init(&s, net, obj, seed, deadline);
  int *grids = NULL;
  lh_start_rank *rank = NULL;
  double *levels = NULL;
  if (st == LH_SUCCESS) {
    grids = lh_malloc((size_t)restarts * n * sizeof(int), "scheduler starts");
    rank = lh_malloc((size_t)restarts * sizeof *rank, "scheduler starts");
    levels = lh_malloc(((size_t)n * n + 1) * sizeof(double), "scheduler starts");
    if (!grids || !rank || !levels)
      st = LH_ERR_OUT_OF_MEMORY;
  }
  if (st != LH_SUCCESS) {
    free(grids);
    free(rank);
    free(levels);
    lh_search_free(&s);
    return st;
  }

  /* Site thresholds: distinct hop costs, LH_SITE_LEVELS of them spread over the range. */
  int distinct = 0;
  for (int a = 0; a < n; a++)
    for (int b = a + 1; b < n; b++)
      levels[distinct++] = s.hop[(size_t)a * n + b];
  qsort(levels, (size_t)distinct, sizeof(double), lh_sched_cmp_double);
  int u = 0;
  for (int k = 0; k < distinct; k++)
    if (u == 0 || levels[k] != levels[u - 1])
      levels[u++] = levels[k];
  int nlevels = 0;
  if (u > 1) {
    /* Below the largest value: a threshold at the largest joins everything into one site. */
    int want = u - 1 < LH_SITE_LEVELS ? u - 1 : LH_SITE_LEVELS;
    for (int k = 0; k < want; k++)
      levels[nlevels++] = levels[(size_t)k * (u - 1) / want];
  }
  if (nlevels > restarts / 2 + 1)
    nlevels = restarts / 2 + 1;

  /* Build every start, rank them, polish the cheapest first. */
  double construct_start = lh_now();
  for (int r = 0; r < restarts; r++) {
    int *grid = grids + (size_t)r * n;
    lh_seed(&s, r, levels, nlevels, grid);
    lh_grow(&s, grid);
    rank[r].start = r;
    if (obj->kind == LH_SCHED_DTFM) {
      memcpy(s.groups, grid, (size_t)n * sizeof(int));
      lh_partition_full(&s, &rank[r].cost, &rank[r].soft);
    } else {
      lh_grid_full(&s, grid, &rank[r].cost, &rank[r].soft);
    }
  }
  qsort(rank, (size_t)restarts, sizeof *rank, lh_cmp_start);
  result->construct_seconds = lh_now() - construct_start;

  double best = INFINITY, best_soft = INFINITY;
  int polished = 0;
  for (int r = 0; r < restarts && (r == 0 || !lh_past_deadline(&s)); r++) {
    int *grid = grids + (size_t)rank[r].start * n;
    double cost, soft;
    if (obj->kind == LH_SCHED_DTFM) {
      memcpy(s.groups, grid, (size_t)n * sizeof(int));
      double path = lh_partition_full(&s, &cost, &soft);
      lh_polish_partition(&s, path, &cost, &soft);
      cost = lh_partition_to_grid(&s, grid);
    } else {
      lh_grid_full(&s, grid, &cost, &soft);
      lh_polish_grid(&s, grid, &cost, &soft);
      lh_objective_eval(net, obj, grid, &cost, NULL, NULL);
    }
    polished++;
    if (lh_better(cost, soft, best, best_soft) || r == 0) {
      best = cost;
      best_soft = soft;
      memcpy(best_grid, grid, (size_t)n * sizeof(int));
    }
  }
  (void)D;
  result->cost = best;
  result->starts = polished;
  result->budget_hit = s.budget_hit;
  free(grids);
  free(rank);
  free(levels);
  lh_search_free(&s);
  return LH_SUCCESS;
}

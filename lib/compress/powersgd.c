/* PowerSGD (Vogels et al., NeurIPS 2019): a rows x cols matrix M sent as P Q^T, P rows x r
 * with orthonormal columns and Q = M^T P, found by one step of power iteration per round
 * warm-started from the previous round's Q. The products run on OpenBLAS's sgemm; its thread
 * count is the user's business (OPENBLAS_NUM_THREADS), a library does not change global state.
 * Unlike the other codecs there is no bitwise CPU/GPU contract here (the BLAS sums in its own
 * order). */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/internal.h"
#include "compress/payload.h"

#define PSGD_MAX_RANK 8

/* P is stored in fp32 and M Q is rounded per element, so a column that keeps less than this
 * fraction of its norm once the earlier columns are projected out is rounding noise in the
 * span of those columns. Normalizing it would blow that noise up into a direction that depends
 * on the BLAS's summation order; it is replaced by a clean unit vector instead. */
#define PSGD_DEPENDENT_FRACTION 1e-6
/* A replacement e_t must keep at least this much of its norm after the projection, otherwise
 * the earlier columns already span everything (only when r > rows): the column is set to 0. */
#define PSGD_MIN_ROOM 1e-3

/* sgemm takes int dimensions; every size here also has to fit the byte counts. */
static int psgd_params_ok(const lh_powersgd_params *p) {
  return p && p->rank >= 1 && p->rank <= PSGD_MAX_RANK && p->rows >= 1 && p->cols >= 1 &&
         p->rows <= INT_MAX && p->cols <= INT_MAX &&
         p->rows <= SIZE_MAX / sizeof(float) / p->cols;
}

size_t lh_powersgd_payload_bytes(const lh_powersgd_params *p) {
  if (!psgd_params_ok(p))
    return 0;
  return (p->rows + p->cols) * (size_t)p->rank * sizeof(float);
}

void lh_powersgd_init_q(const lh_powersgd_params *p, const lh_rng_key *key, float *q) {
  if (!psgd_params_ok(p) || !key || !q)
    return;
  lh_rng_key shared = *key;
  shared.rank = LH_RNG_SHARED_RANK;
  size_t count = p->cols * (size_t)p->rank;
  for (size_t block = 0; block * 4 < count; block++) {
    uint32_t words[4];
    lh_rng_block(&shared, block, words);
    for (size_t w = 0; w < 4 && block * 4 + w < count; w++) /* 2u - 1 is exact: [-1, 1) */
      q[block * 4 + w] = LH_FSUB(LH_FMUL(2.0f, lh_rng_unit(words[w])), 1.0f);
  }
}

void lh_powersgd_compute_p(const lh_powersgd_params *p, const float *m, const float *q,
                           float *pm) {
  if (!psgd_params_ok(p) || !m || !q || !pm)
    return;
  int rows = (int)p->rows, cols = (int)p->cols, r = p->rank;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, r, cols, 1.0f, m, cols, q, r,
              0.0f, pm, r);
}

void lh_powersgd_compute_q(const lh_powersgd_params *p, const float *m, const float *pm,
                           float *q) {
  if (!psgd_params_ok(p) || !m || !pm || !q)
    return;
  int rows = (int)p->rows, cols = (int)p->cols, r = p->rank;
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, r, rows, 1.0f, m, cols, pm, r,
              0.0f, q, r);
}

/* ---- Orthonormalization --------------------------------------------------------------------
 * P is rows x r row-major, so a column is strided; every step below is one pass over the rows
 * touching all columns it needs, with double accumulators. */

/* dots[j] = P_first . P_j for first <= j < r. */
static void psgd_dots_from(const float *pm, size_t rows, int r, int first, double *dots) {
  for (int j = first; j < r; j++)
    dots[j] = 0.0;
  for (size_t k = 0; k < rows; k++) {
    const float *row = pm + k * (size_t)r;
    double pivot = row[first];
    for (int j = first; j < r; j++)
      dots[j] += pivot * row[j];
  }
}

/* P_j -= coef[j] * P_col for col < j < r, after P_col *= scale (the projection uses the
 * scaled column). */
static void psgd_scale_and_project(float *pm, size_t rows, int r, int col, double scale,
                                   const double *coef) {
  for (size_t k = 0; k < rows; k++) {
    float *row = pm + k * (size_t)r;
    double unit = row[col] * scale;
    row[col] = (float)unit;
    for (int j = col + 1; j < r; j++)
      row[j] = (float)(row[j] - coef[j] * unit);
  }
}

/* Column col minus its projection on the earlier columns (orthonormal), computed classically:
 * all dots in one pass, all subtractions in the next. */
static void psgd_project_out_earlier(float *pm, size_t rows, int r, int col) {
  double along[PSGD_MAX_RANK];
  for (int l = 0; l < col; l++)
    along[l] = 0.0;
  for (size_t k = 0; k < rows; k++) {
    const float *row = pm + k * (size_t)r;
    for (int l = 0; l < col; l++)
      along[l] += (double)row[l] * row[col];
  }
  for (size_t k = 0; k < rows; k++) {
    float *row = pm + k * (size_t)r;
    double v = row[col];
    for (int l = 0; l < col; l++)
      v -= along[l] * row[l];
    row[col] = (float)v;
  }
}

/* Column col becomes e_t orthogonalized against columns 0..col-1, for the first row t whose
 * e_t they cover at most half (the covers sum to at most col, so such a t is among the first
 * 2 col + 1 rows when there are that many; otherwise the least covered row). A zero column when
 * the earlier columns already span every row (r > rows). */
static void psgd_replace_column(float *pm, size_t rows, int r, int col) {
  size_t best_row = 0;
  double best_cover = 2.0;
  for (size_t t = 0; t < rows && best_cover > 0.5; t++) {
    const float *row = pm + t * (size_t)r;
    double cover = 0.0; /* the squared norm of e_t's projection on the earlier columns */
    for (int l = 0; l < col; l++)
      cover += (double)row[l] * row[l];
    if (cover < best_cover) {
      best_cover = cover;
      best_row = t;
    }
  }
  int has_room = 1.0 - best_cover >= PSGD_MIN_ROOM;
  for (size_t k = 0; k < rows; k++)
    pm[k * (size_t)r + (size_t)col] = has_room && k == best_row ? 1.0f : 0.0f;
  if (!has_room)
    return;
  /* Twice is enough: the second projection removes what rounding left of the first. */
  psgd_project_out_earlier(pm, rows, r, col);
  psgd_project_out_earlier(pm, rows, r, col);
}

/* One modified Gram-Schmidt sweep, right-looking: column i is normalized, then projected out
 * of every later column in the same pass. Dependent columns are replaced (see above). */
static void psgd_mgs_sweep(float *pm, size_t rows, int r) {
  double initial_norm2[PSGD_MAX_RANK], dots[PSGD_MAX_RANK], coef[PSGD_MAX_RANK];
  for (int j = 0; j < r; j++)
    initial_norm2[j] = 0.0;
  for (size_t k = 0; k < rows; k++)
    for (int j = 0; j < r; j++) {
      double v = pm[k * (size_t)r + (size_t)j];
      initial_norm2[j] += v * v;
    }
  for (int i = 0; i < r; i++) {
    psgd_dots_from(pm, rows, r, i, dots);
    double norm = sqrt(dots[i]);
    /* Also true for a zero or non-finite column. */
    if (!(norm > PSGD_DEPENDENT_FRACTION * sqrt(initial_norm2[i]))) {
      psgd_replace_column(pm, rows, r, i);
      psgd_dots_from(pm, rows, r, i, dots);
      norm = sqrt(dots[i]);
      if (!(norm > 0.0)) /* no room: a zero column projects nothing out of the others */
        continue;
    }
    for (int j = i + 1; j < r; j++)
      coef[j] = dots[j] / norm;
    psgd_scale_and_project(pm, rows, r, i, 1.0 / norm, coef);
  }
}

void lh_powersgd_orthonormalize(const lh_powersgd_params *p, float *pm) {
  if (!psgd_params_ok(p) || !pm)
    return;
  /* The arithmetic is double but P is stored in fp32 after each projection. A column nearly in
   * the span of two or more earlier ones keeps the rounding of its first projections (relative
   * to its norm then) while the later ones shrink it, so that rounding grows relative to what
   * is left; a second sweep over the nearly orthonormal result removes it (the test with a
   * column at 1e-4 from a plane sees 2e-4 after one sweep, 1e-7 after two). */
  psgd_mgs_sweep(pm, p->rows, p->rank);
  psgd_mgs_sweep(pm, p->rows, p->rank);
}

static lh_status psgd_check(const lh_powersgd_params *p, const void *a, const void *b,
                            const void *c, const char *fn) {
  if (!psgd_params_ok(p))
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "%s: rank %d must be in 1..%d and rows %zu x cols %zu in 1..%d each", fn,
                    p ? p->rank : 0, PSGD_MAX_RANK, p ? p->rows : 0, p ? p->cols : 0, INT_MAX);
  if (!a || !b || !c)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: NULL buffer", fn);
  return LH_SUCCESS;
}

/* The payload's P and Q are fp32 at offsets 0 and rows * r * 4 of a byte buffer that need not
 * be 4-byte aligned; BLAS wants float pointers, so an unaligned payload goes through a copy. */
static int psgd_aligned(const void *ptr) { return ((uintptr_t)ptr % _Alignof(float)) == 0; }

lh_status lh_powersgd_encode(const lh_powersgd_params *p, const float *m, float *q, uint8_t *out) {
  LH_CHECK(psgd_check(p, m, q, out, "lh_powersgd_encode"));
  size_t p_bytes = p->rows * (size_t)p->rank * sizeof(float);
  float *pm = psgd_aligned(out) ? (float *)(void *)out : lh_malloc(p_bytes, "PowerSGD P");
  if (!pm)
    return lh_error_context(LH_ERR_OUT_OF_MEMORY, "lh_powersgd_encode");
  lh_powersgd_compute_p(p, m, q, pm);
  lh_powersgd_orthonormalize(p, pm);
  lh_powersgd_compute_q(p, m, pm, q);
  if ((uint8_t *)pm != out) {
    memcpy(out, pm, p_bytes);
    free(pm);
  }
  memcpy(out + p_bytes, q, p->cols * (size_t)p->rank * sizeof(float));
  return LH_SUCCESS;
}

lh_status lh_powersgd_decode(const lh_powersgd_params *p, const uint8_t *in, float *out,
                             int accumulate) {
  LH_CHECK(psgd_check(p, in, out, out, "lh_powersgd_decode"));
  size_t bytes = lh_powersgd_payload_bytes(p);
  float *copy = NULL;
  const float *pm = (const float *)(const void *)in;
  if (!psgd_aligned(in)) {
    copy = lh_malloc(bytes, "PowerSGD payload copy");
    if (!copy)
      return lh_error_context(LH_ERR_OUT_OF_MEMORY, "lh_powersgd_decode");
    memcpy(copy, in, bytes);
    pm = copy;
  }
  const float *q = pm + p->rows * (size_t)p->rank;
  int rows = (int)p->rows, cols = (int)p->cols, r = p->rank;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, r, 1.0f, pm, r, q, r,
              accumulate ? 1.0f : 0.0f, out, cols);
  free(copy);
  return LH_SUCCESS;
}

/* PowerSGD all-reduce (Vogels et al., NeurIPS 2019): each matrix M_w (this rank's gradient plus
 * its error-feedback residual, rows x cols) contributes to the reduced gradient only through
 * one step of power iteration of rank r, so a rank sends (rows + cols) r floats per matrix
 * instead of rows x cols.
 *
 *   1. P_w = M_w Q                       Q is the same on every rank (see warm start below), so
 *                                        the ring's sum of the P_w is (sum M_w) Q: the power
 *                                        step of the summed matrix, without ever summing it.
 *   2. P = ring sum of P_w               uncompressed: a few floats, and any loss here would
 *                                        bend the subspace every rank projects on.
 *   3. P^ = orthonormalize(P)            on every rank; the ring hands every rank the same bits
 *                                        and Gram-Schmidt (powersgd.c, plain C, no FMA) is
 *                                        deterministic, so every rank gets the same P^.
 *   4. Q_w = M_w^T P^, Q = ring sum      again linear: Q = (sum M_w)^T P^.
 *   5. M = P^ Q^T                        = P^ P^T sum M_w, the sum's projection on span P^.
 *
 * Batching: the P of all matrices of a call travel in one ring call, and so do the Q, so a
 * bucket of many small matrices pays the ring's 2(n-1) latencies twice, not twice per matrix.
 *
 * Warm start: the summed Q of step 5 is kept as the next call's Q, as in the reference
 * implementation (epfml/powersgd, RankKReducer with reuse_query, which keeps the all-reduced Q
 * buffer). It must be a quantity every rank holds bit for bit, otherwise step 1 is no longer
 * linear in M; the local Q_w would break that, the summed Q does not. The reference keeps the
 * mean (Q / n); the sum only differs by a factor that step 3 normalizes away (its thresholds
 * are relative), so it is kept as is and spares a pass. Repeated steps make this a subspace
 * iteration that follows the slowly changing gradient; the very first Q comes from the shared
 * seed (step 0), the same on every rank.
 *
 * Error feedback: err gets M_w - P^ Q_w^T, what the rank's OWN rank-r approximation missed
 * (the paper's local error, and what the other algorithms of this library keep: what this
 * rank's encode failed to carry). Summed over the ranks these residuals equal sum M_w - P^ Q^T,
 * the error of the reduced result, so nothing is lost or counted twice. (The reference code
 * keeps M_w - P^ (Q / n)^T instead, which has the same sum over ranks.)
 *
 * Reproducibility: the products that feed the rings (M Q and M^T P^) run on OpenBLAS, whose
 * summation order and FMA use depend on the CPU; that is harmless, because only the ring's sum
 * of them is used, and the ring makes every rank hold its owner's bits. The products whose
 * result every rank keeps (P^ Q^T) are computed here in plain C with one fixed order and no
 * contraction (this file is built with -ffp-contract=off), so ranks on different CPUs still end
 * with identical bits. With r <= 8 those products are bound by writing the rows x cols result;
 * sgemm is no faster (4096 x 4096, r = 4: about 7 ms either way on one core).
 *
 * Failure: nothing the caller sees (m, err, the warm-start Q) changes until both rings have
 * succeeded, except that a missing first Q is created. Inputs are not checked for NaN/Inf:
 * refusing on one rank would leave the others waiting in the ring; a non-finite value turns
 * the result non-finite on every rank alike, which the caller can see. */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "collective/collective_internal.h"
#include "common/internal.h"
#include "compress/payload.h"
#include "transport/transport_internal.h"

#define PSGD_MAX_RANK 8 /* lh_powersgd_params.rank's bound (payload.h) */

/* total += a * b, refusing what does not fit a float count of size_t bytes. */
static int psgd_count_add(size_t *total, size_t a, size_t b) {
  size_t limit = SIZE_MAX / sizeof(float);
  if (b != 0 && a > limit / b)
    return 0;
  if (a * b > limit - *total)
    return 0;
  *total += a * b;
  return 1;
}

/* Bytes rank `rank` of `n` puts on the wire in lh_ring_allreduce of `count` floats: in step s
 * (0 <= s < 2(n-1)) it sends segment (rank - s) mod n of the ring's layout (ring.c). Computed
 * from that layout rather than read from the link counters, so it does not depend on what else
 * crosses the link or on the transport. */
static unsigned long long psgd_ring_bytes(int n, int rank, size_t count) {
  if (n <= 1 || count == 0)
    return 0;
  lh_layout lay = lh_layout_make(count, n, count); /* pieces do not change what is sent */
  unsigned long long floats = 0;
  for (int s = 0; s < 2 * (n - 1); s++)
    floats += lh_seg_length(&lay, ((rank - s) % n + n) % n);
  return floats * sizeof(float);
}

/* qt (r x cols) = q (cols x r) transposed, so that a row of P^ Q^T is r contiguous axpys. */
static void psgd_transpose(const float *q, size_t cols, int r, float *qt) {
  for (size_t j = 0; j < cols; j++)
    for (int k = 0; k < r; k++)
      qt[(size_t)k * cols + j] = q[j * (size_t)r + (size_t)k];
}

/* out[j] = sum over k = 0..r-1, in that order, of prow[k] * qt[k][j]: row i of P^ Q^T. Each
 * product and sum is rounded on its own (no contraction in this file), so every rank and every
 * CPU gets the same bits from the same P^ and Q. */
static void psgd_approx_row(const float *prow, const float *qt, size_t cols, int r, float *out) {
  float p0 = prow[0];
  for (size_t j = 0; j < cols; j++)
    out[j] = p0 * qt[j];
  for (int k = 1; k < r; k++) {
    float pk = prow[k];
    const float *qk = qt + (size_t)k * cols;
    for (size_t j = 0; j < cols; j++)
      out[j] = out[j] + pk * qk[j];
  }
}

/* The first Q of every matrix that has none: cols x r from the shared seed at step 0, so every
 * rank starts from the same Q. After a failure the ones already made stay: they hold exactly
 * what a later call would make, so no rank's state drifts. */
static lh_status psgd_first_q(const lh_engine *e, int ntensors, lh_psgd_state *const *state) {
  lh_rng_key key = {e->cfg.seed, 0, 0}; /* init_q takes the shared stream whatever the rank */
  for (int t = 0; t < ntensors; t++) {
    lh_psgd_state *s = state[t];
    if (s->q)
      continue;
    s->q = lh_malloc(s->cols * (size_t)s->rank * sizeof(float), "PowerSGD warm-start Q");
    if (!s->q)
      return lh_error_context(LH_ERR_OUT_OF_MEMORY, "PowerSGD all-reduce: first Q of matrix %d (%zu x %d)",
                              t, s->cols, s->rank);
    lh_powersgd_params p = {s->rank, s->rows, s->cols};
    lh_powersgd_init_q(&p, &key, s->q);
  }
  return LH_SUCCESS;
}

/* Sums `count` floats of `what` over the ranks and counts what this rank sent. */
static lh_status psgd_ring(lh_engine *e, float *data, size_t count, const char *what) {
  lh_status st = lh_ring_allreduce(e->comm, data, count, LH_OP_SUM, e->cfg.chunk_bytes, 0);
  if (st != LH_SUCCESS)
    return lh_error_context(st, "PowerSGD all-reduce: ring sum of %s (%zu floats)", what, count);
  e->wire_bytes += psgd_ring_bytes(e->comm->size, e->comm->rank, count);
  return LH_SUCCESS;
}

lh_status lh_powersgd_allreduce(lh_engine *e, int ntensors, float *const *m, lh_psgd_state *const *state,
                                float *const *err) {
  if (!e)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "PowerSGD all-reduce: engine must not be NULL");
  if (ntensors == 0)
    return LH_SUCCESS;
  if (ntensors < 0 || !m || !state)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "PowerSGD all-reduce: %d matrices with m %s and state %s (need >= 0 and both non-NULL)",
                    ntensors, m ? "set" : "NULL", state ? "set" : "NULL");
  if (!e->comm)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "PowerSGD all-reduce: the engine has no communicator");
  if (e->on_device)
    return lh_error(LH_ERR_NOT_SUPPORTED,
                    "PowerSGD all-reduce: device buffers are not supported; stage the matrices and "
                    "residuals through host memory");

  /* Everything is checked before the first message: a refusal after it would strand the
   * other ranks in the ring. (The powersgd.c steps silently do nothing on bad sizes.) */
  size_t p_total = 0, q_total = 0, max_cols = 0, max_qt = 0;
  int any_err = 0;
  for (int t = 0; t < ntensors; t++) {
    const lh_psgd_state *s = state[t];
    if (!s || !m[t])
      return lh_error(LH_ERR_INVALID_ARGUMENT, "PowerSGD all-reduce: matrix %d has a NULL %s", t,
                      s ? "buffer" : "state");
    lh_powersgd_params p = {s->rank, s->rows, s->cols};
    if (lh_powersgd_payload_bytes(&p) == 0)
      return lh_error(LH_ERR_INVALID_ARGUMENT,
                      "PowerSGD all-reduce: matrix %d is %zu x %zu with rank %d; rows and cols must be in "
                      "1..%d with rows x cols floats addressable, and the rank in 1..%d",
                      t, s->rows, s->cols, s->rank, INT_MAX, PSGD_MAX_RANK);
    if (!psgd_count_add(&p_total, s->rows, (size_t)s->rank) ||
        !psgd_count_add(&q_total, s->cols, (size_t)s->rank))
      return lh_error(LH_ERR_INVALID_ARGUMENT, "PowerSGD all-reduce: the P and Q of %d matrices overflow size_t",
                      ntensors);
    if (s->cols > max_cols)
      max_cols = s->cols;
    if (s->cols * (size_t)s->rank > max_qt) /* cannot overflow: q_total holds it */
      max_qt = s->cols * (size_t)s->rank;
    if (err && err[t])
      any_err = 1;
  }
  /* [all P | all Q, summed in place | all local Q_w (error feedback) | one Q^T | one row] */
  size_t work_floats = 0;
  if (!psgd_count_add(&work_floats, p_total, 1) || !psgd_count_add(&work_floats, q_total, any_err ? 2 : 1) ||
      !psgd_count_add(&work_floats, max_qt, 1) || !psgd_count_add(&work_floats, max_cols, 1))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "PowerSGD all-reduce: scratch for %d matrices overflows size_t",
                    ntensors);
  float *work = lh_malloc(work_floats * sizeof(float), "PowerSGD all-reduce scratch");
  if (!work)
    return lh_error_context(LH_ERR_OUT_OF_MEMORY, "PowerSGD all-reduce of %d matrices (%zu floats of scratch)",
                            ntensors, work_floats);
  float *p_all = work, *q_all = p_all + p_total;
  float *q_local = q_all + q_total, *qt = q_local + (any_err ? q_total : 0), *row = qt + max_qt;

  lh_status st;
  LH_CHECK_GOTO(psgd_first_q(e, ntensors, state), st, done);

  /* 1. P_w = M_w Q. */
  double t0 = lh_now();
  for (size_t t = 0, off = 0; t < (size_t)ntensors; t++) {
    const lh_psgd_state *s = state[t];
    lh_powersgd_params p = {s->rank, s->rows, s->cols};
    lh_powersgd_compute_p(&p, m[t], s->q, p_all + off);
    off += s->rows * (size_t)s->rank;
  }
  e->codec_seconds += lh_now() - t0;

  /* 2. P = sum of the P_w, the same bits on every rank. */
  LH_CHECK_GOTO(psgd_ring(e, p_all, p_total, "P"), st, done);

  /* 3. and 4. P^ from the summed P, then Q_w = M_w^T P^. */
  t0 = lh_now();
  for (size_t t = 0, poff = 0, qoff = 0; t < (size_t)ntensors; t++) {
    const lh_psgd_state *s = state[t];
    lh_powersgd_params p = {s->rank, s->rows, s->cols};
    lh_powersgd_orthonormalize(&p, p_all + poff);
    lh_powersgd_compute_q(&p, m[t], p_all + poff, q_all + qoff);
    poff += s->rows * (size_t)s->rank;
    qoff += s->cols * (size_t)s->rank;
  }
  if (any_err) /* the ring sums in place; the residual needs this rank's own Q_w */
    memcpy(q_local, q_all, q_total * sizeof(float));
  e->codec_seconds += lh_now() - t0;

  /* Q = sum of the Q_w. */
  LH_CHECK_GOTO(psgd_ring(e, q_all, q_total, "Q"), st, done);

  /* Residual (from the local Q_w, while M_w is still there), then 5., then the warm start. */
  t0 = lh_now();
  for (size_t t = 0, poff = 0, qoff = 0; t < (size_t)ntensors; t++) {
    lh_psgd_state *s = state[t];
    size_t rows = s->rows, cols = s->cols;
    int r = s->rank;
    const float *ph = p_all + poff;
    if (err && err[t]) {
      psgd_transpose(q_local + qoff, cols, r, qt);
      for (size_t i = 0; i < rows; i++) {
        psgd_approx_row(ph + i * (size_t)r, qt, cols, r, row);
        lh_residual_add_f32(err[t] + i * cols, m[t] + i * cols, row, cols);
      }
    }
    psgd_transpose(q_all + qoff, cols, r, qt);
    for (size_t i = 0; i < rows; i++)
      psgd_approx_row(ph + i * (size_t)r, qt, cols, r, m[t] + i * cols);
    memcpy(s->q, q_all + qoff, cols * (size_t)r * sizeof(float));
    poff += rows * (size_t)r;
    qoff += cols * (size_t)r;
  }
  e->codec_seconds += lh_now() - t0;
  st = LH_SUCCESS;

done:
  free(work);
  return st;
}

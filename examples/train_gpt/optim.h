/* AdamW and the gradient-norm helpers of train_gpt.
 *
 * Gradient clipping across pipeline stages: each stage computes gpt_grad_sumsq of its own
 * gradient, the stages add these (an all-reduce of one double), and every stage scales its
 * gradient by gpt_clip_factor(total, max_norm) with gpt_grad_scale. Nothing here depends on
 * the model: the optimiser works on any float array. */
#ifndef TRAIN_GPT_OPTIM_H
#define TRAIN_GPT_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  float lr;           /* this step's learning rate (a schedule is the caller's) */
  float beta1, beta2; /* e.g. 0.9, 0.95 */
  float eps;          /* e.g. 1e-8 */
  float weight_decay; /* decoupled: p -= lr * weight_decay * p, e.g. 0.1 */
} gpt_adamw_hparams;

/* The state, open so a checkpoint can save and restore it: the moments of each parameter and
 * the number of steps taken (the bias correction's t). */
typedef struct {
  size_t n;
  float *m, *v;
  int64_t step;
} gpt_adamw;

/* Zeroed state for n parameters: 0, or -1 when out of memory (opt is then empty). */
int gpt_adamw_init(gpt_adamw *opt, size_t n);
void gpt_adamw_destroy(gpt_adamw *opt);

/* One step, t = ++opt->step:
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
 *   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + lr * wd * p   (wd where decay)
 * decay: one byte per parameter, nonzero where weight decay applies (NULL: everywhere). */
void gpt_adamw_step(gpt_adamw *opt, float *params, const float *grads, const unsigned char *decay,
                    const gpt_adamw_hparams *hp);

/* The sum of squares of g, in double (its square root is the gradient's norm). */
double gpt_grad_sumsq(const float *g, size_t n);
/* g *= factor. */
void gpt_grad_scale(float *g, size_t n, float factor);
/* The factor that brings a gradient whose squared norm is total_sumsq down to max_norm:
 * max_norm / norm when the norm is larger, else 1 (and 1 for max_norm <= 0: no clipping). */
float gpt_clip_factor(double total_sumsq, double max_norm);

#ifdef __cplusplus
}
#endif

#endif

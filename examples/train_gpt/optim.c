/* AdamW (Loshchilov & Hutter): Adam's update plus a weight decay kept out of the moments, so
 * decay does not get rescaled by 1/sqrt(v) as an L2 term in the gradient would. */
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int gpt_adamw_init(gpt_adamw *opt, size_t n) {
  memset(opt, 0, sizeof *opt);
  if (n > SIZE_MAX / sizeof(float))
    return -1;
  size_t bytes = (n ? n : 1) * sizeof(float);
  opt->m = calloc(1, bytes);
  opt->v = calloc(1, bytes);
  if (!opt->m || !opt->v) {
    gpt_adamw_destroy(opt);
    return -1;
  }
  opt->n = n;
  return 0;
}

void gpt_adamw_destroy(gpt_adamw *opt) {
  free(opt->m);
  free(opt->v);
  memset(opt, 0, sizeof *opt);
}

void gpt_adamw_step(gpt_adamw *opt, float *params, const float *grads, const unsigned char *decay,
                    const gpt_adamw_hparams *hp) {
  opt->step++;
  /* The moments start at 0 and so are biased towards it for the first ~1/(1 - beta) steps;
   * dividing by 1 - beta^t undoes that. Computed once, in double. */
  float c1 = (float)(1.0 / (1.0 - pow(hp->beta1, (double)opt->step)));
  float c2 = (float)(1.0 / (1.0 - pow(hp->beta2, (double)opt->step)));
  float b1 = hp->beta1, b2 = hp->beta2, lr = hp->lr, wd = hp->weight_decay, eps = hp->eps;
  for (size_t i = 0; i < opt->n; i++) {
    float g = grads[i];
    float m = b1 * opt->m[i] + (1.0f - b1) * g;
    float v = b2 * opt->v[i] + (1.0f - b2) * g * g;
    opt->m[i] = m;
    opt->v[i] = v;
    float p = params[i];
    float update = (m * c1) / (sqrtf(v * c2) + eps);
    if (!decay || decay[i])
      update += wd * p; /* decoupled: on the weight itself, not through m and v */
    params[i] = p - lr * update;
  }
}

double gpt_grad_sumsq(const float *g, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++)
    s += (double)g[i] * g[i];
  return s;
}

void gpt_grad_scale(float *g, size_t n, float factor) {
  for (size_t i = 0; i < n; i++)
    g[i] *= factor;
}

float gpt_clip_factor(double total_sumsq, double max_norm) {
  double norm = sqrt(total_sumsq);
  if (max_norm <= 0 || !(norm > max_norm))
    return 1.0f;
  return (float)(max_norm / norm);
}

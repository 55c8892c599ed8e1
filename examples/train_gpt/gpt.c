/* A small GPT in plain C11: see gpt.h for the model and the stage API.
 *
 * Layout of this file: the layer kinds first, each as a forward and a backward side by side
 * (layer norm, matmul, attention, GELU, residual, embedding, softmax cross-entropy); then the
 * parameter table and its deterministic initialisation; then a stage's memory (what each slot
 * keeps for the backward) and the stage's forward and backward, which only chain the layers.
 *
 * Notation: B sequences of T tokens, N = B * T rows, C channels, H heads of hs = C / H
 * channels, V vocabulary entries. Every activation is a row-major N x width array. Backward
 * functions take the gradient of their output (dout) and write the gradient of their input;
 * parameter gradients always add (+=), so micro-batches accumulate. Gradients of the residual
 * stream add too, because the stream feeds both the skip connection and the branch. */
#include "gpt.h"
#include "gpt_common.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- layer norm ---------------------------------------------------------------------------- */
/* out = (x - mean) / sqrt(var + eps) * g + b over each row of C. The mean and 1/std of each row
 * are kept for the backward, which recomputes the normalised row from x exactly as here (the
 * same float operations), instead of storing it: x is kept anyway as the residual stream. */

#define LN_EPS 1e-5

static void layernorm_forward(float *out, float *mean, float *rstd, const float *x, const float *g,
                              const float *b, int N, int C) {
  for (int i = 0; i < N; i++) {
    const float *xi = x + (size_t)i * C;
    float *oi = out + (size_t)i * C;
    /* double sums: the variance of a row with a large mean loses digits in float */
    double s = 0;
    for (int c = 0; c < C; c++)
      s += xi[c];
    double m = s / C, v = 0;
    for (int c = 0; c < C; c++)
      v += (xi[c] - m) * (xi[c] - m);
    float mf = (float)m, rf = (float)(1.0 / sqrt(v / C + LN_EPS));
    for (int c = 0; c < C; c++) {
      float xhat = (xi[c] - mf) * rf;
      oi[c] = xhat * g[c] + b[c];
    }
    mean[i] = mf;
    rstd[i] = rf;
  }
}

/* With xhat the normalised row and dxhat = dout * g:
 *   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
 * (the two means are what the mean and the variance pass back to every element). */
static void layernorm_backward(float *dx, float *dg, float *db, const float *dout, const float *x,
                               const float *mean, const float *rstd, const float *g, int N, int C) {
  for (int i = 0; i < N; i++) {
    const float *xi = x + (size_t)i * C, *di = dout + (size_t)i * C;
    float *dxi = dx + (size_t)i * C;
    float mf = mean[i], rf = rstd[i];
    double sum_d = 0, sum_dx = 0;
    for (int c = 0; c < C; c++) {
      float xhat = (xi[c] - mf) * rf, dxhat = di[c] * g[c];
      sum_d += dxhat;
      sum_dx += (double)dxhat * xhat;
    }
    float mean_d = (float)(sum_d / C), mean_dx = (float)(sum_dx / C);
    for (int c = 0; c < C; c++) {
      float xhat = (xi[c] - mf) * rf, dxhat = di[c] * g[c];
      dg[c] += di[c] * xhat;
      db[c] += di[c];
      dxi[c] += rf * (dxhat - mean_d - xhat * mean_dx);
    }
  }
}

/* ---- matmul (a linear layer) --------------------------------------------------------------- */
/* out (N x Out) = x (N x In) W (In x Out) + bias. The bias is written first and the product added
 * onto it by sgemm (beta = 1), which saves a pass over out. bias may be NULL. */
static void matmul_forward(float *out, const float *x, const float *w, const float *bias, int N, int In,
                           int Out) {
  if (bias)
    for (int i = 0; i < N; i++)
      memcpy(out + (size_t)i * Out, bias, (size_t)Out * sizeof(float));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, Out, In, 1.0f, x, In, w, Out, bias ? 1.0f : 0.0f,
              out, Out);
}

/* dx = dout W^T (written; skipped if dx is NULL), dW += x^T dout, dbias += the column sums. */
static void matmul_backward(float *dx, float *dw, float *dbias, const float *dout, const float *x,
                            const float *w, int N, int In, int Out) {
  if (dx)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, In, Out, 1.0f, dout, Out, w, Out, 0.0f, dx, In);
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, In, Out, N, 1.0f, x, In, dout, Out, 1.0f, dw, Out);
  if (dbias)
    for (int i = 0; i < N; i++)
      for (int o = 0; o < Out; o++)
        dbias[o] += dout[(size_t)i * Out + o];
}

/* ---- causal multi-head self-attention ------------------------------------------------------ */
/* qkv is N x 3C: q, k, v side by side, each C wide and cut into H heads of hs channels. For
 * each sequence b and head h, with q, k, v the T x hs slices (row stride 3C):
 *   S = q k^T / sqrt(hs);  P = softmax of each row of S over the columns j <= t (causal);
 *   y = P v, written into the head's hs columns of out (N x C).
 * P (B x H x T x T) is kept for the backward. The full T x T product is computed (the masked
 * half is thrown away): one sgemm is faster than T short dot products, and the masked entries
 * of P are exact zeros, so they add nothing to y and the future cannot leak in. */
static void attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int H) {
  int hs = C / H, C3 = 3 * C;
  float scale = 1.0f / sqrtf((float)hs);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      const float *q = qkv + (size_t)b * T * C3 + (size_t)h * hs, *k = q + C, *v = q + 2 * C;
      float *p = att + ((size_t)b * H + h) * T * T;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, scale, q, C3, k, C3, 0.0f, p, T);
      for (int t = 0; t < T; t++) {
        float *row = p + (size_t)t * T, mx = row[0];
        for (int j = 1; j <= t; j++)
          mx = row[j] > mx ? row[j] : mx;
        float sum = 0;
        for (int j = 0; j <= t; j++) {
          row[j] = expf(row[j] - mx); /* minus the max: exp cannot overflow */
          sum += row[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j <= t; j++)
          row[j] *= inv;
        for (int j = t + 1; j < T; j++)
          row[j] = 0.0f;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, p, T, v, C3, 0.0f,
                  out + (size_t)b * T * C + (size_t)h * hs, C);
    }
}

/* From dy (the gradient of out), per sequence and head:
 *   dP = dy v^T, dv = P^T dy;
 *   dS = P * (dP - rowsum(P * dP)) / sqrt(hs)  (the softmax's backward, and the scale);
 *   dq = dS k, dk = dS^T q.
 * Masked entries have P = 0, so their dS is 0 without a test. dqkv (N x 3C) is written;
 * dscore is T x T scratch. */
static void attention_backward(float *dqkv, float *dscore, const float *dout, const float *qkv,
                               const float *att, int B, int T, int C, int H) {
  int hs = C / H, C3 = 3 * C;
  float scale = 1.0f / sqrtf((float)hs);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      size_t at = (size_t)b * T * C3 + (size_t)h * hs;
      const float *q = qkv + at, *k = q + C, *v = q + 2 * C;
      float *dq = dqkv + at, *dk = dq + C, *dv = dq + 2 * C;
      const float *p = att + ((size_t)b * H + h) * T * T;
      const float *dy = dout + (size_t)b * T * C + (size_t)h * hs;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, 1.0f, dy, C, v, C3, 0.0f, dscore, T);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, p, T, dy, C, 0.0f, dv, C3);
      for (int t = 0; t < T; t++) {
        const float *pr = p + (size_t)t * T;
        float *dr = dscore + (size_t)t * T;
        float dot = 0;
        for (int j = 0; j <= t; j++)
          dot += pr[j] * dr[j];
        for (int j = 0; j < T; j++)
          dr[j] = pr[j] * (dr[j] - dot) * scale;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, dscore, T, k, C3, 0.0f, dq, C3);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, dscore, T, q, C3, 0.0f, dk, C3);
    }
}

/* ---- GELU, tanh approximation ---------------------------------------------------------------- */
/* gelu(x) = x/2 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3). Computed as x * sigmoid(2u),
 * the same function since (1 + tanh(u)) / 2 = 1 / (1 + exp(-2u)): one expf is several times
 * cheaper than tanhf, which took a third of a training step. exp overflowing to inf for very
 * negative x gives x / inf = 0, the right limit. The backward recomputes the sigmoid from the
 * kept input rather than keeping a third N x 4C array per block. */

#define GELU_K 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_A 0.044715f

static void gelu_forward(float *out, const float *x, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float xi = x[i], u = GELU_K * (xi + GELU_A * xi * xi * xi);
    out[i] = xi / (1.0f + expf(-2.0f * u));
  }
}

/* With s = sigmoid(2u): d gelu / dx = s + x * 2 s (1 - s) * du/dx, du/dx = sqrt(2/pi) (1 + 3 a x^2)
 * (2 s (1 - s) is the derivative of sigmoid(2u) in u). dx may be dout (in place). */
static void gelu_backward(float *dx, const float *x, const float *dout, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float xi = x[i], u = GELU_K * (xi + GELU_A * xi * xi * xi);
    float sg = 1.0f / (1.0f + expf(-2.0f * u));
    float du = GELU_K * (1.0f + 3.0f * GELU_A * xi * xi);
    float d = sg + xi * 2.0f * sg * (1.0f - sg) * du;
    dx[i] = d * dout[i];
  }
}

/* ---- residual -------------------------------------------------------------------------------- */
/* out = a + b. Its backward is the identity on both sides: the callers add the incoming
 * gradient to the stream's gradient, so there is no residual_backward. */
static void residual_forward(float *out, const float *a, const float *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    out[i] = a[i] + b[i];
}

/* ---- embedding ------------------------------------------------------------------------------- */
/* out[b, t] = wte[token[b, t]] + wpe[t]. */
static void embedding_forward(float *out, const int *tokens, const float *wte, const float *wpe, int B,
                              int T, int C) {
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) {
      const float *e = wte + (size_t)tokens[b * T + t] * C, *p = wpe + (size_t)t * C;
      float *o = out + ((size_t)b * T + t) * C;
      for (int c = 0; c < C; c++)
        o[c] = e[c] + p[c];
    }
}

/* Scatter-add: each row's gradient goes to its token's row of wte and its position's of wpe.
 * A plain sequential loop, so repeated tokens add in a fixed order (deterministic). */
static void embedding_backward(float *dwte, float *dwpe, const float *dout, const int *tokens, int B,
                               int T, int C) {
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) {
      const float *d = dout + ((size_t)b * T + t) * C;
      float *e = dwte + (size_t)tokens[b * T + t] * C, *p = dwpe + (size_t)t * C;
      for (int c = 0; c < C; c++) {
        e[c] += d[c];
        p[c] += d[c];
      }
    }
}

/* ---- softmax + cross-entropy ----------------------------------------------------------------- */
/* Turns each row of logits (N x V) into probabilities in place and returns the summed loss
 * -log p[target] over the rows (0 when targets is NULL). The loss is log(sum exp(l - max)) -
 * (l_target - max) in double, not log of a float probability: it stays exact where p is tiny,
 * and finite differences of it (the gradient test) are not drowned in rounding. */
static double crossentropy_forward(float *probs, const int *targets, int N, int V) {
  double total = 0;
  for (int i = 0; i < N; i++) {
    float *row = probs + (size_t)i * V, mx = row[0];
    for (int v = 1; v < V; v++)
      mx = row[v] > mx ? row[v] : mx;
    float target_logit = targets ? row[targets[i]] : 0.0f;
    double sum = 0;
    for (int v = 0; v < V; v++) {
      row[v] = expf(row[v] - mx);
      sum += row[v];
    }
    float inv = (float)(1.0 / sum);
    for (int v = 0; v < V; v++)
      row[v] *= inv;
    if (targets)
      total += log(sum) - ((double)target_logit - mx);
  }
  return total;
}

/* d(scale * loss) / d logits = scale * (p - onehot(target)) for each row. */
static void crossentropy_backward(float *dlogits, const float *probs, const int *targets, float scale, int N,
                                  int V) {
  for (int i = 0; i < N; i++) {
    const float *p = probs + (size_t)i * V;
    float *d = dlogits + (size_t)i * V;
    for (int v = 0; v < V; v++)
      d[v] = scale * p[v];
    d[targets[i]] -= scale;
  }
}

/* ---- parameters: the table, and initialisation keyed by (seed, layer, tensor, element) ------- */

/* A block's 12 tensors, by name or by their index in the table (GPT_LN1_G .. in gpt_common.h). */
typedef union {
  struct {
    float *ln1_g, *ln1_b, *qkv_w, *qkv_b, *o_w, *o_b, *ln2_g, *ln2_b, *fc_w, *fc_b, *proj_w, *proj_b;
  };
  float *t[GPT_BLOCK_TENSORS];
} block_tensors;

/* The tensors of a stage, pointing into either its parameters or its gradients. */
typedef struct {
  float *wte, *wpe;      /* embedding stage */
  block_tensors *blocks; /* nl of them */
  float *lnf_g, *lnf_b, *head_w;
} stage_tensors;

enum { INIT_ZERO, INIT_ONE, INIT_NORMAL, INIT_NORMAL_RESIDUAL };

/* RNG groups: the embedding, layer l (1 + l), the head. Keying by the layer's index in the
 * whole model (not in the stage) is what makes every cut of the model start identical. */
#define GROUP_EMBEDDING 0u
#define GROUP_HEAD 0xffffffffu

typedef struct {
  gpt_tensor_info info;
  uint32_t group, index;
  int init;
} tensor_spec;

static const struct {
  const char *name;
  int rows, cols; /* in units of C (0 rows = a vector) */
  int init, decay;
} block_spec[GPT_BLOCK_TENSORS] = {
    [GPT_LN1_G] = {"ln1_g", 0, 1, INIT_ONE, 0},
    [GPT_LN1_B] = {"ln1_b", 0, 1, INIT_ZERO, 0},
    [GPT_QKV_W] = {"attn.qkv_w", 1, 3, INIT_NORMAL, 1},
    [GPT_QKV_B] = {"attn.qkv_b", 0, 3, INIT_ZERO, 0},
    [GPT_O_W] = {"attn.proj_w", 1, 1, INIT_NORMAL_RESIDUAL, 1},
    [GPT_O_B] = {"attn.proj_b", 0, 1, INIT_ZERO, 0},
    [GPT_LN2_G] = {"ln2_g", 0, 1, INIT_ONE, 0},
    [GPT_LN2_B] = {"ln2_b", 0, 1, INIT_ZERO, 0},
    [GPT_FC_W] = {"mlp.fc_w", 1, 4, INIT_NORMAL, 1},
    [GPT_FC_B] = {"mlp.fc_b", 0, 4, INIT_ZERO, 0},
    [GPT_PROJ_W] = {"mlp.proj_w", 4, 1, INIT_NORMAL_RESIDUAL, 1},
    [GPT_PROJ_B] = {"mlp.proj_b", 0, 1, INIT_ZERO, 0},
};

static uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* A (nearly) standard normal for element i of the tensor keyed `key`, from the element's own
 * hashes so any element can be drawn alone: the sum of 4 uniforms on [0, 1) (mean 2, variance
 * 1/3) centred and scaled to variance 1 (Irwin-Hall; tails end at 3.5 sigma, harmless for an
 * initialisation). Only additions and multiplications, no libm: hosts with different math
 * libraries still draw the same bits, so replicas made apart start identical. */
static double normal_at(uint64_t key, uint64_t i) {
  double s = 0;
  for (uint64_t k = 0; k < 4; k++)
    s += (double)(splitmix64(key ^ splitmix64(4 * i + k)) >> 11) * 0x1p-53;
  return (s - 2.0) * 1.7320508075688772; /* sqrt(3) */
}

static void init_tensor(float *p, const tensor_spec *t, uint64_t seed, int layers) {
  size_t n = t->info.count;
  if (t->init == INIT_ZERO || t->init == INIT_ONE) {
    for (size_t i = 0; i < n; i++)
      p[i] = t->init == INIT_ONE ? 1.0f : 0.0f;
    return;
  }
  /* GPT-2: the projections that write into the residual stream are scaled down by sqrt of
   * their number (2 per block), so the stream's variance does not grow with depth. (sqrt is
   * correctly rounded by IEEE 754: the same everywhere too.) */
  double std = t->init == INIT_NORMAL_RESIDUAL ? 0.02 / sqrt(2.0 * layers) : 0.02;
  uint64_t key = splitmix64(splitmix64(seed) ^ (((uint64_t)t->group << 8) | t->index));
  for (size_t i = 0; i < n; i++)
    p[i] = (float)(std * normal_at(key, i));
}

/* ---- a stage ------------------------------------------------------------------------------- */

/* A slot: its arrays (gpt_common.h) in one block of floats, and its tokens and targets. */
typedef struct {
  float *mem;
  int *imem;
  gpt_slot_arrays arr;
  int *tokens, *targets;
  gpt_slot_state state;
} slot_acts;

struct gpt_stage {
  gpt_shape sh;
  int first; /* the first block's layer in the whole model */
  size_t nparams, ntensors;
  tensor_spec *tensors;
  float *params, *grads;
  stage_tensors p, g;
  slot_acts *slots;
  size_t slot_floats, slot_ints, scratch_floats;
  /* the backward's scratch, shared by the slots; its scores hold one head's T x T at a time */
  float *scratch;
  gpt_scratch d;
};

/* Every array starts on a cache line: 16 floats. */
#define ALIGN_FLOATS 16

static void bind_tensors(const gpt_stage *s, float *base, stage_tensors *out) {
  size_t k = 0;
  if (s->sh.has_emb) {
    out->wte = base + s->tensors[k++].info.offset;
    out->wpe = base + s->tensors[k++].info.offset;
  }
  for (int i = 0; i < s->sh.nl; i++)
    for (int j = 0; j < GPT_BLOCK_TENSORS; j++)
      out->blocks[i].t[j] = base + s->tensors[k++].info.offset;
  if (s->sh.has_head) {
    out->lnf_g = base + s->tensors[k++].info.offset;
    out->lnf_b = base + s->tensors[k++].info.offset;
    out->head_w = base + s->tensors[k++].info.offset;
  }
}

static void add_tensor(gpt_stage *s, const char *name, size_t count, uint32_t group, uint32_t index,
                       int init, int decay) {
  tensor_spec *t = &s->tensors[s->ntensors++];
  snprintf(t->info.name, sizeof t->info.name, "%s", name);
  t->info.offset = s->nparams;
  t->info.count = count;
  t->info.decay = decay;
  t->group = group;
  t->index = index;
  t->init = init;
  /* counts stay small (checked limits below), so this cannot overflow */
  s->nparams += count;
}

static void *alloc_floats(size_t n) {
  /* aligned_alloc wants a size that is a multiple of the alignment (64 bytes) */
  if (n >= SIZE_MAX / sizeof(float) - ALIGN_FLOATS)
    return NULL;
  n = (n ? n : 1) + ALIGN_FLOATS - 1;
  return aligned_alloc(ALIGN_FLOATS * sizeof(float), n / ALIGN_FLOATS * ALIGN_FLOATS * sizeof(float));
}

int gpt_stage_create(const gpt_config *cfg, int first_layer, int last_layer, int has_embedding,
                     int has_head, int max_batch, int slots, uint64_t seed, gpt_stage **out) {
  if (!cfg || !out)
    return gpt_fail("gpt_stage_create: cfg and out must not be NULL");
  *out = NULL;
  if (gpt_check_shape(cfg, first_layer, last_layer, has_embedding, has_head, max_batch, slots))
    return -1;
  const gpt_config c = *cfg;

  gpt_stage *s = calloc(1, sizeof *s);
  if (!s)
    return gpt_fail("out of memory for a stage");
  s->sh = (gpt_shape){c, last_layer - first_layer, has_embedding != 0, has_head != 0, max_batch, slots};
  s->first = first_layer;
  size_t C = (size_t)c.channels, V = (size_t)c.vocab, T = (size_t)c.context;
  s->tensors = calloc(5 + (size_t)s->sh.nl * GPT_BLOCK_TENSORS, sizeof *s->tensors);
  s->p.blocks = calloc((size_t)s->sh.nl + 1, sizeof(block_tensors));
  s->g.blocks = calloc((size_t)s->sh.nl + 1, sizeof(block_tensors));
  s->slots = calloc((size_t)slots, sizeof *s->slots);
  if (!s->tensors || !s->p.blocks || !s->g.blocks || !s->slots)
    goto oom;

  /* the parameter table, in the order of the array */
  if (s->sh.has_emb) {
    add_tensor(s, "wte", V * C, GROUP_EMBEDDING, 0, INIT_NORMAL, 1);
    add_tensor(s, "wpe", T * C, GROUP_EMBEDDING, 1, INIT_NORMAL, 1);
  }
  for (int i = 0; i < s->sh.nl; i++) {
    int layer = first_layer + i;
    for (int j = 0; j < GPT_BLOCK_TENSORS; j++) {
      char name[32];
      snprintf(name, sizeof name, "h%d.%s", layer, block_spec[j].name);
      size_t rows = block_spec[j].rows ? (size_t)block_spec[j].rows * C : 1;
      add_tensor(s, name, rows * (size_t)block_spec[j].cols * C, 1u + (uint32_t)layer, (uint32_t)j,
                 block_spec[j].init, block_spec[j].decay);
    }
  }
  if (s->sh.has_head) {
    add_tensor(s, "lnf_g", C, GROUP_HEAD, 0, INIT_ONE, 0);
    add_tensor(s, "lnf_b", C, GROUP_HEAD, 1, INIT_ZERO, 0);
    add_tensor(s, "head_w", C * V, GROUP_HEAD, 2, INIT_NORMAL, 1);
  }
  s->params = alloc_floats(s->nparams);
  s->grads = alloc_floats(s->nparams);
  if (!s->params || !s->grads)
    goto oom;
  bind_tensors(s, s->params, &s->p);
  bind_tensors(s, s->grads, &s->g);
  for (size_t k = 0; k < s->ntensors; k++)
    init_tensor(s->params + s->tensors[k].info.offset, &s->tensors[k], seed, c.layers);
  memset(s->grads, 0, s->nparams * sizeof(float));

  /* the slots */
  s->slot_floats = gpt_layout_slot(&s->sh, ALIGN_FLOATS, NULL, NULL);
  s->slot_ints = (size_t)max_batch * T * 2;
  for (int k = 0; k < slots; k++) {
    slot_acts *a = &s->slots[k];
    a->arr.blocks = calloc((size_t)s->sh.nl + 1, sizeof *a->arr.blocks);
    a->mem = alloc_floats(s->slot_floats);
    a->imem = malloc(s->slot_ints * sizeof(int));
    if (!a->arr.blocks || !a->mem || !a->imem)
      goto oom;
    gpt_layout_slot(&s->sh, ALIGN_FLOATS, &a->arr, a->mem);
    a->tokens = a->imem;
    a->targets = a->imem + (size_t)max_batch * T;
  }

  /* the backward's scratch */
  s->scratch_floats = gpt_layout_scratch(&s->sh, ALIGN_FLOATS, 1, NULL, NULL);
  s->scratch = alloc_floats(s->scratch_floats);
  if (!s->scratch)
    goto oom;
  gpt_layout_scratch(&s->sh, ALIGN_FLOATS, 1, &s->d, s->scratch);
  *out = s;
  return 0;
oom:
  gpt_stage_free(s);
  return gpt_fail("out of memory for a stage of layers [%d, %d) with max_batch %d and %d slots", first_layer,
              last_layer, max_batch, slots);
}

void gpt_stage_free(gpt_stage *s) {
  if (!s)
    return;
  if (s->slots)
    for (int k = 0; k < s->sh.slots; k++) {
      free(s->slots[k].mem);
      free(s->slots[k].imem);
      free(s->slots[k].arr.blocks);
    }
  free(s->slots);
  free(s->scratch);
  free(s->params);
  free(s->grads);
  free(s->p.blocks);
  free(s->g.blocks);
  free(s->tensors);
  free(s);
}

size_t gpt_stage_param_count(const gpt_stage *s) { return s->nparams; }
float *gpt_stage_params(gpt_stage *s) { return s->params; }
float *gpt_stage_grads(gpt_stage *s) { return s->grads; }
void gpt_stage_zero_grad(gpt_stage *s) { memset(s->grads, 0, s->nparams * sizeof(float)); }
size_t gpt_stage_tensor_count(const gpt_stage *s) { return s->ntensors; }

int gpt_stage_tensor(const gpt_stage *s, size_t i, gpt_tensor_info *out) {
  if (i >= s->ntensors)
    return gpt_fail("tensor %zu does not exist (the stage has %zu)", i, s->ntensors);
  *out = s->tensors[i].info;
  return 0;
}

void gpt_stage_decay_mask(const gpt_stage *s, unsigned char *mask) {
  for (size_t k = 0; k < s->ntensors; k++)
    memset(mask + s->tensors[k].info.offset, s->tensors[k].info.decay, s->tensors[k].info.count);
}

size_t gpt_stage_slot_bytes(const gpt_stage *s) {
  return s->slot_floats * sizeof(float) + s->slot_ints * sizeof(int);
}
size_t gpt_stage_scratch_bytes(const gpt_stage *s) { return s->scratch_floats * sizeof(float); }

const float *gpt_stage_probs(const gpt_stage *s, int slot) {
  if (!s || !s->sh.has_head || slot < 0 || slot >= s->sh.slots || !s->slots[slot].state.filled)
    return NULL;
  return s->slots[slot].arr.probs;
}

/* ---- the block and the stage: forward and backward ------------------------------------------ */

/* y = x + attn(ln1(x)), then y = y + mlp(ln2(y)). y doubles as the temporary of each branch's
 * output before it is added to the stream. */
static void block_forward(const gpt_stage *s, const block_tensors *w, gpt_block_acts *a, const float *x, float *y,
                          int B) {
  int T = s->sh.cfg.context, C = s->sh.cfg.channels, H = s->sh.cfg.heads, N = B * T;
  size_t NC = (size_t)N * C;
  layernorm_forward(a->ln1, a->ln1_mean, a->ln1_rstd, x, w->ln1_g, w->ln1_b, N, C);
  matmul_forward(a->qkv, a->ln1, w->qkv_w, w->qkv_b, N, C, 3 * C);
  attention_forward(a->atty, a->att, a->qkv, B, T, C, H);
  matmul_forward(y, a->atty, w->o_w, w->o_b, N, C, C);
  residual_forward(a->mid, x, y, NC);
  layernorm_forward(a->ln2, a->ln2_mean, a->ln2_rstd, a->mid, w->ln2_g, w->ln2_b, N, C);
  matmul_forward(a->fc, a->ln2, w->fc_w, w->fc_b, N, C, 4 * C);
  gelu_forward(a->gelu, a->fc, (size_t)N * 4 * C);
  matmul_forward(y, a->gelu, w->proj_w, w->proj_b, N, 4 * C, C);
  residual_forward(y, a->mid, y, NC);
}

/* In: dres, the gradient of the block's output; out: dres, the gradient of its input x. The
 * skip connections pass dres through unchanged, so each branch adds its input's gradient on. */
static void block_backward(gpt_stage *s, const block_tensors *w, block_tensors *g, const gpt_block_acts *a,
                           const float *x, int B) {
  int T = s->sh.cfg.context, C = s->sh.cfg.channels, H = s->sh.cfg.heads, N = B * T;
  float *dres = s->d.dres, *dsmall = s->d.dsmall, *dbig = s->d.dbig;
  /* the MLP branch */
  matmul_backward(dbig, g->proj_w, g->proj_b, dres, a->gelu, w->proj_w, N, 4 * C, C);
  gelu_backward(dbig, a->fc, dbig, (size_t)N * 4 * C);
  matmul_backward(dsmall, g->fc_w, g->fc_b, dbig, a->ln2, w->fc_w, N, C, 4 * C);
  layernorm_backward(dres, g->ln2_g, g->ln2_b, dsmall, a->mid, a->ln2_mean, a->ln2_rstd, w->ln2_g, N, C);
  /* the attention branch */
  matmul_backward(dsmall, g->o_w, g->o_b, dres, a->atty, w->o_w, N, C, C);
  attention_backward(s->d.dqkv, s->d.dscore, dsmall, a->qkv, a->att, B, T, C, H);
  matmul_backward(dsmall, g->qkv_w, g->qkv_b, s->d.dqkv, a->ln1, w->qkv_w, N, C, 3 * C);
  layernorm_backward(dres, g->ln1_g, g->ln1_b, dsmall, x, a->ln1_mean, a->ln1_rstd, w->ln1_g, N, C);
}

int gpt_stage_forward(gpt_stage *s, int slot, int B, const int *tokens, const float *input, float *output,
                      const int *targets, double *loss) {
  if (gpt_check_forward(s ? &s->sh : NULL, slot, B, tokens, input, output, targets, loss, "gpt_stage_forward"))
    return -1;
  int T = s->sh.cfg.context, C = s->sh.cfg.channels, V = s->sh.cfg.vocab, N = B * T;
  size_t NC = (size_t)N * C, stride = (size_t)s->sh.max_batch * T * C;

  slot_acts *a = &s->slots[slot];
  a->state.filled = 0; /* until this forward is complete */
  if (s->sh.has_emb) {
    memcpy(a->tokens, tokens, (size_t)N * sizeof(int));
    embedding_forward(a->arr.res, tokens, s->p.wte, s->p.wpe, B, T, C);
  } else {
    memcpy(a->arr.res, input, NC * sizeof(float));
  }
  for (int i = 0; i < s->sh.nl; i++)
    block_forward(s, &s->p.blocks[i], &a->arr.blocks[i], a->arr.res + i * stride, a->arr.res + (i + 1) * stride, B);
  const float *last = a->arr.res + (size_t)s->sh.nl * stride;
  if (s->sh.has_head) {
    layernorm_forward(a->arr.lnf, a->arr.lnf_mean, a->arr.lnf_rstd, last, s->p.lnf_g, s->p.lnf_b, N, C);
    matmul_forward(a->arr.probs, a->arr.lnf, s->p.head_w, NULL, N, C, V);
    double total = crossentropy_forward(a->arr.probs, targets, N, V);
    if (targets) {
      memcpy(a->targets, targets, (size_t)N * sizeof(int));
      *loss = total / N;
    }
  } else {
    memcpy(output, last, NC * sizeof(float));
  }
  a->state.B = B;
  a->state.has_targets = targets != NULL;
  a->state.filled = 1;
  return 0;
}

int gpt_stage_backward(gpt_stage *s, int slot, int B, const float *grad_output, float *grad_input,
                       float loss_scale) {
  if (gpt_check_call(s ? &s->sh : NULL, slot, B, "gpt_stage_backward"))
    return -1;
  slot_acts *a = &s->slots[slot];
  if (gpt_check_backward(&s->sh, slot, B, &a->state, grad_output, grad_input, "gpt_stage_backward"))
    return -1;
  int T = s->sh.cfg.context, C = s->sh.cfg.channels, V = s->sh.cfg.vocab, N = B * T;
  size_t NC = (size_t)N * C, stride = (size_t)s->sh.max_batch * T * C;

  const float *last = a->arr.res + (size_t)s->sh.nl * stride;
  if (s->sh.has_head) {
    /* the mean over N tokens: each token's loss enters with weight 1/N */
    crossentropy_backward(s->d.dlogits, a->arr.probs, a->targets, loss_scale / (float)N, N, V);
    matmul_backward(s->d.dsmall, s->g.head_w, NULL, s->d.dlogits, a->arr.lnf, s->p.head_w, N, C, V);
    memset(s->d.dres, 0, NC * sizeof(float));
    layernorm_backward(s->d.dres, s->g.lnf_g, s->g.lnf_b, s->d.dsmall, last, a->arr.lnf_mean, a->arr.lnf_rstd,
                       s->p.lnf_g, N, C);
  } else {
    memcpy(s->d.dres, grad_output, NC * sizeof(float));
  }
  for (int i = s->sh.nl - 1; i >= 0; i--)
    block_backward(s, &s->p.blocks[i], &s->g.blocks[i], &a->arr.blocks[i], a->arr.res + i * stride, B);
  if (s->sh.has_emb)
    embedding_backward(s->g.wte, s->g.wpe, s->d.dres, a->tokens, B, T, C);
  else
    memcpy(grad_input, s->d.dres, NC * sizeof(float));
  return 0;
}

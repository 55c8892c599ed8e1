/* What gpt.c and gpt_cuda.cu share: see gpt_common.h. */
#include "gpt_common.h"

#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

/* ---- errors -------------------------------------------------------------------------------- */

static _Thread_local char last_error[256];

const char *gpt_error(void) { return last_error; }

int gpt_fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return -1;
}

/* ---- carving --------------------------------------------------------------------------------- */
/* Sizes are counted in floats, each array rounded up to `align` so every one starts aligned
 * (a cache line on the CPU, cuBLAS's preferred 256 bytes on the GPU). A count that would
 * overflow size_t becomes SIZE_MAX, which the callers refuse. */

static size_t round_up(size_t n, size_t align) {
  return n > SIZE_MAX - (align - 1) ? SIZE_MAX : (n + align - 1) / align * align;
}

static size_t mul3(size_t a, size_t b, size_t c) {
  if (b && a > SIZE_MAX / b)
    return SIZE_MAX;
  size_t ab = a * b;
  return c && ab > SIZE_MAX / c ? SIZE_MAX : ab * c;
}

/* One array of n floats: counted into *total and, when carving, handed out at *cursor. */
typedef struct {
  size_t align, total;
  float *cursor; /* NULL when only counting */
} carver;

static float *part(carver *k, size_t n) {
  n = round_up(n, k->align);
  k->total = k->total > SIZE_MAX - n ? SIZE_MAX : k->total + n;
  float *p = k->cursor;
  if (p)
    k->cursor = n == SIZE_MAX ? NULL : p + n;
  return p;
}

size_t gpt_layout_slot(const gpt_shape *sh, size_t align, gpt_slot_arrays *a, float *base) {
  size_t T = (size_t)sh->cfg.context, C = (size_t)sh->cfg.channels, V = (size_t)sh->cfg.vocab;
  size_t H = (size_t)sh->cfg.heads, N = (size_t)sh->max_batch * T;
  carver k = {align, 0, base};
  gpt_slot_arrays counting; /* a stand-in to aim the pointers at when only counting */
  gpt_block_acts dummy;
  if (!base)
    a = &counting;
  a->res = part(&k, mul3((size_t)sh->nl + 1, N, C));
  for (int i = 0; i < sh->nl; i++) {
    gpt_block_acts *b = base ? &a->blocks[i] : &dummy;
    b->ln1 = part(&k, mul3(N, C, 1));
    b->ln1_mean = part(&k, N);
    b->ln1_rstd = part(&k, N);
    b->qkv = part(&k, mul3(N, 3, C));
    b->att = part(&k, mul3((size_t)sh->max_batch * H, T, T));
    b->atty = part(&k, mul3(N, C, 1));
    b->mid = part(&k, mul3(N, C, 1));
    b->ln2 = part(&k, mul3(N, C, 1));
    b->ln2_mean = part(&k, N);
    b->ln2_rstd = part(&k, N);
    b->fc = part(&k, mul3(N, 4, C));
    b->gelu = part(&k, mul3(N, 4, C));
  }
  if (sh->has_head) {
    a->lnf = part(&k, mul3(N, C, 1));
    a->lnf_mean = part(&k, N);
    a->lnf_rstd = part(&k, N);
    a->probs = part(&k, mul3(N, V, 1));
  }
  return k.total;
}

size_t gpt_layout_scratch(const gpt_shape *sh, size_t align, size_t score_blocks, gpt_scratch *sc, float *base) {
  size_t T = (size_t)sh->cfg.context, C = (size_t)sh->cfg.channels, V = (size_t)sh->cfg.vocab;
  size_t N = (size_t)sh->max_batch * T;
  carver k = {align, 0, base};
  gpt_scratch counting;
  if (!base || !sc)
    sc = &counting;
  sc->dres = part(&k, mul3(N, C, 1));
  sc->dsmall = part(&k, mul3(N, C, 1));
  sc->dbig = part(&k, mul3(N, 4, C));
  sc->dqkv = part(&k, mul3(N, 3, C));
  sc->dscore = part(&k, mul3(score_blocks, T, T));
  sc->dlogits = part(&k, sh->has_head ? mul3(N, V, 1) : 0);
  return k.total;
}

/* ---- argument checks --------------------------------------------------------------------------- */

int gpt_check_shape(const gpt_config *cfg, int first_layer, int last_layer, int has_embedding, int has_head,
                    int max_batch, int slots) {
  if (!cfg)
    return gpt_fail("the model's configuration is NULL");
  const gpt_config c = *cfg;
  /* limits that keep every count in size_t and every sgemm dimension in int */
  if (c.vocab < 1 || c.vocab > (1 << 24))
    return gpt_fail("vocab = %d is out of range (1 .. %d)", c.vocab, 1 << 24);
  if (c.context < 1 || c.context > (1 << 16))
    return gpt_fail("context = %d is out of range (1 .. %d)", c.context, 1 << 16);
  if (c.channels < 1 || c.channels > (1 << 16))
    return gpt_fail("channels = %d is out of range (1 .. %d)", c.channels, 1 << 16);
  if (c.heads < 1 || c.channels % c.heads != 0)
    return gpt_fail("heads = %d must be at least 1 and divide channels = %d", c.heads, c.channels);
  if (c.layers < 1 || c.layers > (1 << 16))
    return gpt_fail("layers = %d is out of range (1 .. %d)", c.layers, 1 << 16);
  if (first_layer < 0 || last_layer < first_layer || last_layer > c.layers)
    return gpt_fail("the layers [%d, %d) are not a range within [0, %d)", first_layer, last_layer, c.layers);
  if (has_embedding && first_layer != 0)
    return gpt_fail("the embedding stage must start at layer 0, not %d", first_layer);
  if (has_head && last_layer != c.layers)
    return gpt_fail("the head stage must end at layer %d (the last), not %d", c.layers, last_layer);
  if (max_batch < 1 || (long long)max_batch * c.context > INT_MAX / 4)
    return gpt_fail("max_batch = %d is out of range (1 .. %d for context %d)", max_batch,
                    INT_MAX / 4 / c.context, c.context);
  if (slots < 1 || slots > (1 << 16))
    return gpt_fail("slots = %d is out of range (1 .. %d)", slots, 1 << 16);
  return 0;
}

int gpt_check_call(const gpt_shape *sh, int slot, int B, const char *what) {
  if (!sh)
    return gpt_fail("%s: the stage is NULL", what);
  if (slot < 0 || slot >= sh->slots)
    return gpt_fail("%s: slot %d is out of range (the stage has %d)", what, slot, sh->slots);
  if (B < 1 || B > sh->max_batch)
    return gpt_fail("%s: B = %d is out of range (1 .. max_batch %d)", what, B, sh->max_batch);
  return 0;
}

static int check_ids(const int *ids, size_t n, int V, const char *what) {
  for (size_t i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= V)
      return gpt_fail("%s[%zu] = %d is not a token in [0, %d)", what, i, ids[i], V);
  return 0;
}

int gpt_check_forward(const gpt_shape *sh, int slot, int B, const int *tokens, const float *input,
                      const float *output, const int *targets, const double *loss, const char *what) {
  if (gpt_check_call(sh, slot, B, what))
    return -1;
  size_t N = (size_t)B * (size_t)sh->cfg.context;
  if (sh->has_emb ? !tokens : !input)
    return gpt_fail("%s: %s must not be NULL", what, sh->has_emb ? "tokens" : "input");
  if (sh->has_head ? targets && !loss : !output)
    return gpt_fail("%s: %s must not be NULL", what, sh->has_head ? "loss (targets are given)" : "output");
  if (sh->has_emb && check_ids(tokens, N, sh->cfg.vocab, "tokens"))
    return -1;
  if (sh->has_head && targets && check_ids(targets, N, sh->cfg.vocab, "targets"))
    return -1;
  return 0;
}

int gpt_check_backward(const gpt_shape *sh, int slot, int B, const gpt_slot_state *st, const float *grad_output,
                       const float *grad_input, const char *what) {
  if (!st->filled)
    return gpt_fail("%s: slot %d holds no forward", what, slot);
  if (st->B != B)
    return gpt_fail("%s: B = %d but the forward in slot %d had B = %d", what, B, slot, st->B);
  if (sh->has_head && !st->has_targets)
    return gpt_fail("%s: the forward in slot %d had no targets, so it has no loss", what, slot);
  if (!sh->has_head && !grad_output)
    return gpt_fail("%s: grad_output must not be NULL", what);
  if (!sh->has_emb && !grad_input)
    return gpt_fail("%s: grad_input must not be NULL", what);
  return 0;
}

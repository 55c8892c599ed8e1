/* What the CPU stage (gpt.c) and the CUDA stage (gpt_cuda.cu) share, so the two cannot drift
 * apart: the error sentence, the order of a block's tensors, the checks of a stage's shape and
 * of a forward's and a backward's arguments, and how a slot's activations and the backward's
 * scratch are carved out of one block of floats. The carving is pointer arithmetic only (the
 * block may be device memory; nothing is read or written through it). Internal to train_gpt:
 * programs use gpt.h and gpt_cuda.h. */
#ifndef TRAIN_GPT_GPT_COMMON_H
#define TRAIN_GPT_GPT_COMMON_H

#include <stddef.h>

#include "gpt.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sets the sentence gpt_error() returns (printf-style) and returns -1. */
#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
int gpt_fail(const char *fmt, ...);

/* A block's 12 tensors, in their order in the parameter array (the table of gpt.c). */
enum {
  GPT_LN1_G, GPT_LN1_B, GPT_QKV_W, GPT_QKV_B, GPT_O_W, GPT_O_B, GPT_LN2_G, GPT_LN2_B,
  GPT_FC_W, GPT_FC_B, GPT_PROJ_W, GPT_PROJ_B, GPT_BLOCK_TENSORS
};

/* The shape of a stage: what it holds and how large its calls may be. */
typedef struct {
  gpt_config cfg;
  int nl;               /* blocks held */
  int has_emb, has_head;
  int max_batch, slots;
} gpt_shape;

/* What one block keeps for its backward (its input is the residual stream, kept by the slot).
 * N = B T rows of the forward. */
typedef struct {
  float *ln1, *ln1_mean, *ln1_rstd; /* ln1(x): N x C, and the row statistics: N */
  float *qkv;                       /* N x 3C */
  float *att;                       /* B x H x T x T softmax probabilities */
  float *atty;                      /* N x C: attention output before its projection */
  float *mid;                       /* N x C: x + attn(ln1(x)), the MLP's residual input */
  float *ln2, *ln2_mean, *ln2_rstd;
  float *fc;   /* N x 4C before GELU */
  float *gelu; /* N x 4C after */
} gpt_block_acts;

/* The float arrays of one slot. */
typedef struct {
  float *res;             /* (nl + 1) x N x C: res[i] is block i's input, res[nl] the stage's last */
  gpt_block_acts *blocks; /* nl, owned by the caller */
  float *lnf, *lnf_mean, *lnf_rstd, *probs; /* head stage: lnf(res[nl]), N x V probabilities */
} gpt_slot_arrays;

/* What a slot's forward left, for the checks of its backward. */
typedef struct {
  int B, filled, has_targets;
} gpt_slot_state;

/* The backward's scratch, shared by the slots. */
typedef struct {
  float *dres;    /* N x C: the stream's gradient */
  float *dsmall;  /* N x C */
  float *dbig;    /* N x 4C */
  float *dqkv;    /* N x 3C */
  float *dscore;  /* score_blocks x T x T: attention scores' gradient */
  float *dlogits; /* head stage: N x V */
} gpt_scratch;

/* Carve the arrays of one slot (a) or of the scratch (sc) out of base, each array starting at a
 * multiple of `align` floats, in a fixed order; they return the floats the whole takes (SIZE_MAX
 * when that overflows). With base NULL they only count (and a or sc may be NULL). The scratch
 * holds score_blocks T x T blocks of scores (1 to run head by head, max_batch x H at once). */
size_t gpt_layout_slot(const gpt_shape *sh, size_t align, gpt_slot_arrays *a, float *base);
size_t gpt_layout_scratch(const gpt_shape *sh, size_t align, size_t score_blocks, gpt_scratch *sc, float *base);

/* The limits of gpt_stage_create (see gpt.h), which keep every count in size_t and every
 * matrix dimension in int: 0, or -1 with gpt_error() naming the value out of range. */
int gpt_check_shape(const gpt_config *cfg, int first_layer, int last_layer, int has_embedding, int has_head,
                    int max_batch, int slots);

/* The checks of a call's arguments (see gpt.h); `what` names the call in the error, and each
 * returns 0, or -1 with gpt_error() set.
 *   gpt_check_call:     the stage is there, slot and B are in range.
 *   gpt_check_forward:  that, the arrays this kind of stage needs are there, and the tokens
 *                       and targets are in the vocabulary.
 *   gpt_check_backward: after gpt_check_call, with st the state of that slot: its forward is
 *                       done, with the same B (and targets, on the head stage), and the arrays
 *                       this kind of stage needs are there. */
int gpt_check_call(const gpt_shape *sh, int slot, int B, const char *what);
int gpt_check_forward(const gpt_shape *sh, int slot, int B, const int *tokens, const float *input,
                      const float *output, const int *targets, const double *loss, const char *what);
int gpt_check_backward(const gpt_shape *sh, int slot, int B, const gpt_slot_state *st, const float *grad_output,
                       const float *grad_input, const char *what);

#ifdef __cplusplus
}
#endif

#endif

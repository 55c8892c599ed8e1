/* A small decoder-only transformer (GPT-2 shaped) in plain C11, cut into pipeline stages.
 *
 * The model: tokens -> wte[token] + wpe[position] -> L blocks -> final layer norm -> an
 * output head (untied from wte) -> softmax cross-entropy against the next tokens. A block is
 *     x = x + attn(ln1(x));   x = x + mlp(ln2(x))
 * with causal multi-head self-attention and a GELU (tanh approximation) MLP 4C wide.
 *
 * A stage holds the blocks [first_layer, last_layer) and, when asked, the embedding (the first
 * stage) and/or the head (the last stage). Stages pass activations of B x T x C floats forward
 * and gradients of the same shape backward, so one stage's output is the next one's input.
 * A stage keeps what its backward needs in one of `slots` buffers, one per micro-batch in
 * flight, so a pipeline schedule (1F1B, GPipe) can run several forwards before their backwards.
 *
 * Parameters and gradients of a stage are each one contiguous float array laid out as
 *     [wte, wpe] (embedding stage)  block first .. block last-1  [lnf_g, lnf_b, head_w] (head)
 * so the stages' arrays, concatenated in stage order, equal the array of a one-stage model.
 * The initial values depend only on (seed, layer, tensor, element): the same seed gives the
 * same model however it is cut.
 *
 * All arrays are float32, row-major; a weight W maps a row vector x to x W (in x out).
 * Errors: the functions that can fail return 0 or -1; gpt_error() then says why in a sentence.
 * Nothing is printed and nothing aborts. One stage must not be used by two threads at once. */
#ifndef TRAIN_GPT_GPT_H
#define TRAIN_GPT_GPT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int vocab;    /* V: 256 for bytes */
  int context;  /* T: tokens per sequence */
  int channels; /* C: the width of the residual stream */
  int heads;    /* H: C % H == 0 */
  int layers;   /* L: blocks of the whole model */
} gpt_config;

typedef struct gpt_stage gpt_stage;

/* One named tensor of a stage's parameter array, e.g. "h3.attn.qkv_w" at `offset`. */
typedef struct {
  char name[32];
  size_t offset, count;
  int decay; /* 1 for the matrices (weight decay applies), 0 for biases and layer-norm gains */
} gpt_tensor_info;

/* The last error of this thread, as a sentence ("" if none). */
const char *gpt_error(void);

/* A stage holding blocks [first_layer, last_layer) of `cfg`, the embedding if has_embedding
 * (needs first_layer == 0), the final layer norm and head if has_head (needs last_layer ==
 * cfg->layers). Forwards take up to max_batch sequences; `slots` micro-batches can wait for
 * their backward at once. Parameters are initialised from `seed` (GPT-2 style: normal 0.02,
 * the two residual projections of each block 0.02 / sqrt(2 L), biases 0, gains 1), gradients
 * to zero. 0 and *out set, or -1. */
int gpt_stage_create(const gpt_config *cfg, int first_layer, int last_layer, int has_embedding,
                     int has_head, int max_batch, int slots, uint64_t seed, gpt_stage **out);
void gpt_stage_free(gpt_stage *s);

size_t gpt_stage_param_count(const gpt_stage *s);
float *gpt_stage_params(gpt_stage *s);
/* Gradients add up over backwards (micro-batches) until gpt_stage_zero_grad. */
float *gpt_stage_grads(gpt_stage *s);
void gpt_stage_zero_grad(gpt_stage *s);

/* The tensors of the parameter array, in order: i in [0, gpt_stage_tensor_count). */
size_t gpt_stage_tensor_count(const gpt_stage *s);
int gpt_stage_tensor(const gpt_stage *s, size_t i, gpt_tensor_info *out);
/* mask[i] = 1 where parameter i takes weight decay (matrices and embeddings), 0 elsewhere. */
void gpt_stage_decay_mask(const gpt_stage *s, unsigned char *mask);

/* Bytes of activations one slot keeps for the backward (at max_batch), and of the scratch
 * shared by all slots. */
size_t gpt_stage_slot_bytes(const gpt_stage *s);
size_t gpt_stage_scratch_bytes(const gpt_stage *s);

/* Forward of B <= max_batch sequences into `slot`, keeping there what the backward needs.
 *   embedding stage: `tokens` (B x T, each in [0, V)); `input` unused (may be NULL).
 *   other stages:    `input` (B x T x C, the previous stage's output); `tokens` unused.
 *   head stage:      `targets` (B x T, each in [0, V)) gives *loss = mean cross-entropy over
 *                    the B*T tokens; targets may be NULL for inference only (no loss, no
 *                    backward of this slot); `output` unused. The softmax probabilities stay
 *                    readable through gpt_stage_probs.
 *   other stages:    writes `output` (B x T x C); targets and loss unused.
 * Attention is causal: the outputs at position t depend on tokens 0..t only, so a shorter
 * prompt may be padded with anything up to T. */
int gpt_stage_forward(gpt_stage *s, int slot, int B, const int *tokens, const float *input,
                      float *output, const int *targets, double *loss);

/* Backward of the micro-batch in `slot` (B must be the B of its forward); adds to the
 * parameter gradients.
 *   head stage:      the gradient of loss_scale * (mean loss of the slot) -- e.g. loss_scale =
 *                    1 / micro_batches gives the mean over a step; grad_output unused.
 *   other stages:    `grad_output` (B x T x C), the gradient of the stage's output;
 *                    loss_scale unused.
 *   embedding stage: grad_input unused (may be NULL); others write grad_input (B x T x C).
 * The slot's activations stay as they were (a backward may be repeated). */
int gpt_stage_backward(gpt_stage *s, int slot, int B, const float *grad_output, float *grad_input,
                       float loss_scale);

/* Head stage only: the softmax probabilities of the last forward into `slot`, B x T x V for
 * the B of that forward (next-token distributions, e.g. for sampling), or NULL. */
const float *gpt_stage_probs(const gpt_stage *s, int slot);

#ifdef __cplusplus
}
#endif

#endif

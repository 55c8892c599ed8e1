/* The CUDA path of train_gpt's model: the same pipeline stage as gpt.h, with its parameters,
 * gradients, activations (the slots) and scratch in device memory.
 *
 * The model, the parameter array's layout, the slots and the meaning of every argument are
 * those of gpt.h; what differs is where memory lives:
 *   - parameters, gradients and the slots are device memory, reached through the functions
 *     below (gpt_cuda_stage_params / _grads give the device arrays themselves, and the _to_host
 *     / _from_host functions copy whole arrays);
 *   - every array a forward or a backward takes or gives (tokens, targets, input, output,
 *     grad_output, grad_input, the loss) is HOST memory, as the pipeline runtime hands around:
 *     the stage copies it on or off the device on its own stream.
 * A stage starts from exactly the parameters of the CPU stage made with the same arguments (it
 * makes one, uploads its array and frees it), so both paths start bit for bit alike.
 *
 * The matrix products run on cuBLAS in plain float32 (CUBLAS_DEFAULT_MATH: no TF32), the rest
 * in small kernels doing the same float operations as gpt.c (no FMA contraction), so results
 * track the CPU path to float rounding, not bit for bit: the sums run in other orders. Every
 * reduction has a fixed order (no atomics), so the same inputs give the same bits run after run.
 *
 * Every function works on the device that was current when the stage was created (the caller's
 * cudaSetDevice), on the stage's own stream, and returns when its work is done (a fault inside
 * a kernel is reported by the call that launched it). Errors: the functions that can fail return
 * 0 or -1; gpt_cuda_error() then says why in a sentence. Nothing is printed, nothing aborts. One
 * stage must not be used by two threads at once. */
#ifndef TRAIN_GPT_GPT_CUDA_H
#define TRAIN_GPT_GPT_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "gpt.h"
#include "optim.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gpt_cuda_stage gpt_cuda_stage;

/* The last error of this thread from the functions below, as a sentence ("" if none). */
const char *gpt_cuda_error(void);

/* The number of CUDA devices this process can use: 0 when there is none or no driver (then the
 * program takes the CPU path). Never fails. */
int gpt_cuda_device_count(void);

/* Makes device `index` modulo the device count current for this thread (cudaSetDevice), so
 * ranks sharing a host spread over its GPUs when each passes its rank among that host's ranks.
 * Writes the device's name into name[cap]. The device's number, or -1 (no device, or CUDA
 * refused it: gpt_cuda_error says why). Call it before gpt_cuda_stage_create. */
int gpt_cuda_use_device(int index, char *name, size_t cap);

/* As gpt_stage_create, on the current device. 0 and *out set, or -1. */
int gpt_cuda_stage_create(const gpt_config *cfg, int first_layer, int last_layer, int has_embedding,
                          int has_head, int max_batch, int slots, uint64_t seed, gpt_cuda_stage **out);
void gpt_cuda_stage_free(gpt_cuda_stage *s);

size_t gpt_cuda_stage_param_count(const gpt_cuda_stage *s);
/* The device arrays of parameters and gradients (gpt_cuda_stage_param_count floats each), for
 * a caller that reduces or updates them on the device itself. */
float *gpt_cuda_stage_params(gpt_cuda_stage *s);
float *gpt_cuda_stage_grads(gpt_cuda_stage *s);
/* Gradients add up over backwards (micro-batches) until gpt_cuda_stage_zero_grad. */
int gpt_cuda_stage_zero_grad(gpt_cuda_stage *s);

/* Whole-array copies between the device and host arrays of gpt_cuda_stage_param_count floats:
 * e.g. grads_to_host, an all-reduce on the host, then either gpt_adamw_step on host parameters
 * and params_from_host, or grads_from_host and gpt_cuda_stage_adamw_step. */
int gpt_cuda_stage_params_to_host(gpt_cuda_stage *s, float *host);
int gpt_cuda_stage_params_from_host(gpt_cuda_stage *s, const float *host);
int gpt_cuda_stage_grads_to_host(gpt_cuda_stage *s, float *host);
int gpt_cuda_stage_grads_from_host(gpt_cuda_stage *s, const float *host);

/* The parameter table and the weight-decay mask (host memory), as gpt_stage_tensor and
 * gpt_stage_decay_mask give them. */
size_t gpt_cuda_stage_tensor_count(const gpt_cuda_stage *s);
int gpt_cuda_stage_tensor(const gpt_cuda_stage *s, size_t i, gpt_tensor_info *out);
void gpt_cuda_stage_decay_mask(const gpt_cuda_stage *s, unsigned char *mask);

/* Device bytes one slot keeps (at max_batch), and of the scratch shared by all slots. */
size_t gpt_cuda_stage_slot_bytes(const gpt_cuda_stage *s);
size_t gpt_cuda_stage_scratch_bytes(const gpt_cuda_stage *s);

/* As gpt_stage_forward and gpt_stage_backward; every pointer argument is host memory. */
int gpt_cuda_stage_forward(gpt_cuda_stage *s, int slot, int B, const int *tokens, const float *input,
                           float *output, const int *targets, double *loss);
int gpt_cuda_stage_backward(gpt_cuda_stage *s, int slot, int B, const float *grad_output,
                            float *grad_input, float loss_scale);

/* Head stage only: copies the softmax probabilities of the last forward into `slot` (B x T x V
 * floats for the B of that forward) to host memory. 0, or -1 (not a head stage, no forward). */
int gpt_cuda_stage_probs_to_host(gpt_cuda_stage *s, int slot, float *host);

/* Gradient clipping, as in optim.h: the sum of squares of this stage's gradient (in double,
 * summed in a fixed order), and gradient *= factor. */
int gpt_cuda_stage_grad_sumsq(gpt_cuda_stage *s, double *sumsq);
int gpt_cuda_stage_grad_scale(gpt_cuda_stage *s, float factor);

/* AdamW with its moments in device memory: the same step as gpt_adamw_step (optim.h), the same
 * float operations in the same order, so from the same state it gives the same bits. */
typedef struct {
  size_t n;
  float *m, *v; /* device arrays of n floats */
  int64_t step;
} gpt_cuda_adamw;

/* Zeroed state for n parameters on the current device: 0, or -1 (opt is then empty). */
int gpt_cuda_adamw_init(gpt_cuda_adamw *opt, size_t n);
void gpt_cuda_adamw_destroy(gpt_cuda_adamw *opt);
/* The moments to or from host arrays of opt->n floats (checkpoints; step is opt->step). */
int gpt_cuda_adamw_to_host(const gpt_cuda_adamw *opt, float *m, float *v);
int gpt_cuda_adamw_from_host(gpt_cuda_adamw *opt, const float *m, const float *v);
/* One step of the stage's parameters from its gradients, weight decay where the stage's decay
 * mask says; opt->n must be the stage's parameter count. */
int gpt_cuda_stage_adamw_step(gpt_cuda_stage *s, gpt_cuda_adamw *opt, const gpt_adamw_hparams *hp);

#ifdef __cplusplus
}
#endif

#endif

/* train_gpt's checkpoints: one directory per checkpoint, one file set per rank.
 *
 *   DIR/step-000120/rank-3.model     this rank's parameters and AdamW state (checkpoint.c)
 *   DIR/step-000120/rank-3.aq-prev   the AQ-SGD store of the boundary before its stage
 *   DIR/step-000120/rank-3.aq-next   ... and after it (lh_aq_store_save)
 *   DIR/step-000120/rank-3.reducer   the all-reduce's error feedback (lh_reducer_save)
 *   DIR/latest                       "step-000120": written last, so it names a whole set
 *
 * Every file is written through a temporary name and renamed when complete. */
#ifndef TRAIN_GPT_CHECKPOINT_H
#define TRAIN_GPT_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

/* What the model file holds besides the arrays: enough to refuse a checkpoint of another run. */
typedef struct {
  uint64_t config_hash; /* of the flags that shape the run (model, data, degrees, codecs, seed) */
  int64_t step;         /* steps done */
  double seconds;       /* wall time of the run so far */
  int64_t adam_step;
} ckpt_header;

/* path of this rank's file `what` in step directory `dir`. */
void ckpt_path(char *out, size_t cap, const char *dir, int rank, const char *what);
/* mkdir -p of one level; 0 or -1 (errno set). */
int ckpt_mkdir(const char *dir);

/* The model file: header, params, AdamW m and v (n floats each). 0 or -1 with a sentence in err. */
int ckpt_write_model(const char *path, const ckpt_header *h, const float *params, const float *m, const float *v,
                     size_t n, char *err, size_t errcap);
int ckpt_read_model(const char *path, ckpt_header *h, float *params, float *m, float *v, size_t n, char *err,
                    size_t errcap);

/* DIR/latest: the name of the newest complete checkpoint ("" when none). */
int ckpt_write_latest(const char *dir, const char *name, char *err, size_t errcap);
int ckpt_read_latest(const char *dir, char *name, size_t cap, char *err, size_t errcap);

#endif

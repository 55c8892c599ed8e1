/* train_gpt's command line: every flag, its default and its check (options.c). */
#ifndef TRAIN_GPT_OPTIONS_H
#define TRAIN_GPT_OPTIONS_H

#include <stddef.h>
#include <stdint.h>

#include <longhaul/longhaul.h>

typedef struct {
  /* placement */
  const char *links;      /* link file for the scheduler; NULL: measure with the probe */
  const char *plan_file;  /* a plan from lh-plan instead of solving */
  int pp, dp;             /* 0: choose */
  /* model */
  int context, channels, heads, layers;
  /* data */
  const char *data;       /* NULL: the fortunes collection */
  int64_t examples;       /* use the first N training examples; 0: all */
  int val_examples;       /* examples of the validation loss */
  /* training */
  int steps, micro_batches, micro_batch;
  uint64_t seed;
  float lr, min_lr, weight_decay, clip;
  int warmup_steps;
  /* compression */
  lh_aq_mode aq_mode;
  int fw_bits, bw_bits;
  lh_allreduce_config grad;  /* the reducer's codec */
  const char *grad_name;     /* as given */
  lh_pipeline_schedule schedule;
  /* output */
  int log_every, eval_every, checkpoint_every;
  const char *checkpoint_dir;
  int resume;
  const char *plot;          /* PNG; NULL: none */
  const char *history;       /* CSV of step, seconds, loss, val_loss */
  const char *name;          /* a label for this run in the output */
  int quiet;
  int device;                /* 0 auto (a GPU when built with CUDA and one is present), 1 cuda, 2 cpu */
} options;

/* Parses argv into o; on a bad flag prints one sentence to stderr (when `speak`) and returns
 * 2; --help prints the usage (when `speak`) and returns 1; 0 on success. */
int options_parse(int argc, char **argv, options *o, int speak);

#endif

/* train_gpt's flags: defaults, strict parsing (a bad value is one sentence naming the flag and
 * what it takes), and the usage text. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "options.h"

static const char usage_text[] =
    "usage: mpirun -np N train_gpt [--links FILE] [--pp P --dp D] [options]\n"
    "Trains a small byte-level GPT with pipeline (P stages) and data (D replicas) parallelism,\n"
    "AQ-SGD on every stage boundary and a compressed all-reduce inside each stage's replicas.\n"
    "N = P x D ranks; the scheduler places them on the links (Longhaul's lh_sched_solve).\n"
    "\n"
    "Placement:\n"
    "  --links FILE            link file of the N devices (rank d = device d); without it the\n"
    "                          probe measures the links first (lh-probe's method)\n"
    "  --plan FILE             use this plan (lh-plan --out) instead of solving\n"
    "  --pp P, --dp D          pipeline stages and replicas (default: the scheduler chooses)\n"
    "Model:\n"
    "  --context T             tokens per example (default 64)\n"
    "  --channels C            width (default 128)\n"
    "  --heads H               attention heads, dividing C (default 4)\n"
    "  --layers L              transformer blocks, L >= P (default 4)\n"
    "Data:\n"
    "  --data FILE             any text file (default: the fortunes collection under\n"
    "                          /usr/share/games/fortunes, Debian package `fortunes`)\n"
    "  --examples N            train on the first N examples only (default: all)\n"
    "  --val-examples N        examples in each validation loss (default 256)\n"
    "Training:\n"
    "  --steps S               optimizer steps (default 200)\n"
    "  --micro-batches M       per step and replica (default 4)\n"
    "  --micro-batch B         examples per micro-batch (default 8)\n"
    "  --schedule gpipe|1f1b   pipeline schedule (default 1f1b)\n"
    "  --seed S                model, data order and rounding (default 1)\n"
    "  --lr X, --min-lr X      peak and final learning rate, cosine after warm-up (default 3e-3, 3e-4)\n"
    "  --warmup-steps N        linear warm-up (default 20)\n"
    "  --weight-decay X        AdamW's decoupled decay (default 0.1)\n"
    "  --clip X                gradient norm limit, per stage (default 1.0; 0: off)\n"
    "Compression:\n"
    "  --aqsgd FW/BW|off       AQ-SGD bits forward (activation changes) and backward (gradients),\n"
    "                          2-8 each (default 4/8); off: fp32 on the wire\n"
    "  --grad-codec NAME       the replicas' all-reduce: none (default), fp16, bf16, int8, int4,\n"
    "                          sign, topk[:DENSITY] (default 0.01), powersgd[:RANK] (default 2)\n"
    "Output:\n"
    "  --log-every N           a progress line every N steps (default 10)\n"
    "  --eval-every N          validation loss every N steps (default 50; 0: only at the end)\n"
    "  --checkpoint-every K    checkpoint every K steps (default 100; 0: only on Ctrl-C)\n"
    "  --checkpoint-dir DIR    where (default train_gpt.ckpt)\n"
    "  --resume                continue from DIR's latest checkpoint, with identical results\n"
    "  --plot FILE.png         loss against wall time (gnuplot; default train_gpt.png; none: off)\n"
    "  --history FILE.csv      step, seconds, loss, val_loss (default train_gpt.csv; none: off,\n"
    "                          and then no plot either: the plot is drawn from it)\n"
    "  --name TEXT             a label for this run in the output\n"
    "  --quiet                 only the banner's first line and the summary\n"
    "  --device auto|cuda|cpu  where the model computes (default auto: a GPU when this build has\n"
    "                          CUDA and the host has one; the all-reduce and AdamW stay on the host;\n"
    "                          the ranks of a host take its GPUs in turn)\n"
    "  --help                  this text\n"
    "\n"
    "Progress lines: step, epoch, loss=<train loss>, val=<validation loss> when measured,\n"
    "tokens/s, step time = compute + wait (+ codec), MB sent per link class, compression ratio.\n"
    "Environment: LH_LINKS=FILE simulates the links of FILE (see examples/links/README.md);\n"
    "OPENBLAS_NUM_THREADS=1 keeps results bitwise reproducible.\n"
    "Exit status: 0 done (or stopped by Ctrl-C after a checkpoint), 1 failure, 2 bad flags.\n";

static void defaults(options *o) {
  memset(o, 0, sizeof *o);
  o->context = 64;
  o->channels = 128;
  o->heads = 4;
  o->layers = 4;
  o->val_examples = 256;
  o->steps = 200;
  o->micro_batches = 4;
  o->micro_batch = 8;
  o->seed = 1;
  o->lr = 3e-3f;
  o->min_lr = 3e-4f;
  o->warmup_steps = 20;
  o->weight_decay = 0.1f;
  o->clip = 1.0f;
  o->aq_mode = LH_AQ_DELTA;
  o->fw_bits = 4;
  o->bw_bits = 8;
  o->grad = (lh_allreduce_config)LH_ALLREDUCE_CONFIG_INIT;
  o->grad.op = LH_OP_MEAN;
  o->grad_name = "none";
  o->schedule = LH_SCHEDULE_1F1B;
  o->log_every = 10;
  o->eval_every = 50;
  o->checkpoint_every = 100;
  o->checkpoint_dir = "train_gpt.ckpt";
  o->plot = "train_gpt.png";
  o->history = "train_gpt.csv";
  o->name = "train_gpt";
}

static int bad(int speak, const char *fmt, const char *flag, const char *value) {
  if (speak) {
    fprintf(stderr, "train_gpt: ");
    fprintf(stderr, fmt, flag, value);
    fprintf(stderr, "; see --help\n");
  }
  return 2;
}

static int parse_long(const char *text, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (errno || end == text || *end || v < lo || v > hi)
    return 0;
  *out = v;
  return 1;
}

static int parse_float(const char *text, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double v = strtod(text, &end);
  if (errno || end == text || *end || !(v >= lo && v <= hi))
    return 0;
  *out = v;
  return 1;
}

/* FW/BW or off. */
static int parse_aqsgd(const char *text, options *o) {
  if (!strcmp(text, "off")) {
    o->aq_mode = LH_AQ_OFF;
    return 1;
  }
  int fw, bw;
  char tail;
  if (sscanf(text, "%d/%d%c", &fw, &bw, &tail) != 2 || fw < 2 || fw > 8 || bw < 2 || bw > 8)
    return 0;
  o->aq_mode = LH_AQ_DELTA;
  o->fw_bits = fw;
  o->bw_bits = bw;
  return 1;
}

static int parse_grad_codec(const char *text, options *o) {
  lh_allreduce_config *g = &o->grad;
  char name[32];
  const char *colon = strchr(text, ':');
  size_t n = colon ? (size_t)(colon - text) : strlen(text);
  if (n == 0 || n >= sizeof name)
    return 0;
  memcpy(name, text, n);
  name[n] = 0;
  double arg = 0;
  if (colon && !parse_float(colon + 1, 1e-9, 1e9, &arg))
    return 0;
  g->codec = LH_CODEC_NONE;
  g->bits = 0;
  if (!strcmp(name, "none") && !colon)
    g->codec = LH_CODEC_NONE;
  else if (!strcmp(name, "fp16") && !colon)
    g->codec = LH_CODEC_FP16;
  else if (!strcmp(name, "bf16") && !colon)
    g->codec = LH_CODEC_BF16;
  else if ((!strcmp(name, "int8") || !strcmp(name, "int4")) && !colon) {
    g->codec = LH_CODEC_BLOCKQ;
    g->bits = name[3] == '8' ? 8 : 4;
  } else if (!strcmp(name, "sign") && !colon)
    g->codec = LH_CODEC_SIGN;
  else if (!strcmp(name, "topk")) {
    g->codec = LH_CODEC_TOPK;
    g->density = colon ? arg : 0.01;
    if (g->density > 1)
      return 0;
  } else if (!strcmp(name, "powersgd")) {
    g->codec = LH_CODEC_POWERSGD;
    g->powersgd_rank = colon ? (int)arg : 2;
    if (g->powersgd_rank < 1 || g->powersgd_rank > 8 || (double)g->powersgd_rank != (colon ? arg : 2))
      return 0;
  } else
    return 0;
  o->grad_name = text;
  return 1;
}

int options_parse(int argc, char **argv, options *o, int speak) {
  defaults(o);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      if (speak)
        fputs(usage_text, stdout);
      return 1;
    }
    if (!strcmp(a, "--resume")) {
      o->resume = 1;
      continue;
    }
    if (!strcmp(a, "--quiet")) {
      o->quiet = 1;
      continue;
    }
    /* Every other flag takes a value. */
    static const char *const valued[] = {"--links", "--plan", "--pp", "--dp", "--context", "--channels", "--heads",
                                         "--layers", "--data", "--examples", "--val-examples", "--steps",
                                         "--micro-batches", "--micro-batch", "--schedule", "--seed", "--lr",
                                         "--min-lr", "--warmup-steps", "--weight-decay", "--clip", "--aqsgd",
                                         "--grad-codec", "--log-every", "--eval-every", "--checkpoint-every",
                                         "--checkpoint-dir", "--plot", "--history", "--name", "--device"};
    int known = 0;
    for (size_t k = 0; k < sizeof valued / sizeof valued[0]; k++)
      known |= !strcmp(a, valued[k]);
    if (!known)
      return bad(speak, "unknown option '%s'%s", a, "");
    if (i + 1 >= argc)
      return bad(speak, "%s needs a value%s", a, "");
    const char *v = argv[++i];
    long n;
    double x;
#define INT_FLAG(flag, lo, hi, field, what)                                 \
  if (!strcmp(a, flag)) {                                                   \
    if (!parse_long(v, lo, hi, &n))                                         \
      return bad(speak, "%s takes " what ", not '%s'", a, v);               \
    field = n;                                                              \
    continue;                                                               \
  }
#define FLOAT_FLAG(flag, lo, hi, field, what)                               \
  if (!strcmp(a, flag)) {                                                   \
    if (!parse_float(v, lo, hi, &x))                                        \
      return bad(speak, "%s takes " what ", not '%s'", a, v);               \
    field = (float)x;                                                       \
    continue;                                                               \
  }
    if (!strcmp(a, "--links")) { o->links = v; continue; }
    if (!strcmp(a, "--plan")) { o->plan_file = v; continue; }
    if (!strcmp(a, "--data")) { o->data = v; continue; }
    if (!strcmp(a, "--checkpoint-dir")) { o->checkpoint_dir = v; continue; }
    if (!strcmp(a, "--history")) { o->history = strcmp(v, "none") ? v : NULL; continue; }
    if (!strcmp(a, "--name")) { o->name = v; continue; }
    if (!strcmp(a, "--plot")) { o->plot = strcmp(v, "none") ? v : NULL; continue; }
    if (!strcmp(a, "--pp") || !strcmp(a, "--dp")) {
      if (!strcmp(v, "choose"))
        n = 0;
      else if (!parse_long(v, 1, 65536, &n))
        return bad(speak, "%s takes a positive integer or 'choose', not '%s'", a, v);
      *(a[2] == 'p' ? &o->pp : &o->dp) = (int)n;
      continue;
    }
    INT_FLAG("--context", 1, 4096, o->context, "a context length from 1 to 4096")
    INT_FLAG("--channels", 1, 1 << 16, o->channels, "a positive width")
    INT_FLAG("--heads", 1, 1024, o->heads, "a positive number of heads")
    INT_FLAG("--layers", 1, 4096, o->layers, "a positive number of layers")
    INT_FLAG("--examples", 0, LONG_MAX, o->examples, "a count (0: all)")
    INT_FLAG("--val-examples", 1, 1 << 20, o->val_examples, "a positive count")
    INT_FLAG("--steps", 0, INT_MAX, o->steps, "a count of steps")
    INT_FLAG("--micro-batches", 1, 4096, o->micro_batches, "a positive count")
    INT_FLAG("--micro-batch", 1, 1 << 16, o->micro_batch, "a positive count")
    INT_FLAG("--warmup-steps", 0, INT_MAX, o->warmup_steps, "a count of steps")
    INT_FLAG("--log-every", 1, INT_MAX, o->log_every, "a positive count of steps")
    INT_FLAG("--eval-every", 0, INT_MAX, o->eval_every, "a count of steps (0: only at the end)")
    INT_FLAG("--checkpoint-every", 0, INT_MAX, o->checkpoint_every, "a count of steps (0: only on Ctrl-C)")
    FLOAT_FLAG("--lr", 0, 10, o->lr, "a learning rate from 0 to 10")
    FLOAT_FLAG("--min-lr", 0, 10, o->min_lr, "a learning rate from 0 to 10")
    FLOAT_FLAG("--weight-decay", 0, 10, o->weight_decay, "a decay from 0 to 10")
    FLOAT_FLAG("--clip", 0, 1e9, o->clip, "a norm >= 0")
    if (!strcmp(a, "--seed")) {
      char *end;
      errno = 0;
      unsigned long long s = strtoull(v, &end, 10);
      if (errno || end == v || *end || v[0] == '-')
        return bad(speak, "%s takes a non-negative integer, not '%s'", a, v);
      o->seed = s;
      continue;
    }
    if (!strcmp(a, "--device")) {
      if (!strcmp(v, "auto"))
        o->device = 0;
      else if (!strcmp(v, "cuda"))
        o->device = 1;
      else if (!strcmp(v, "cpu"))
        o->device = 2;
      else
        return bad(speak, "%s takes auto, cuda or cpu, not '%s'", a, v);
      continue;
    }
    if (!strcmp(a, "--schedule")) {
      if (!strcmp(v, "gpipe"))
        o->schedule = LH_SCHEDULE_GPIPE;
      else if (!strcmp(v, "1f1b"))
        o->schedule = LH_SCHEDULE_1F1B;
      else
        return bad(speak, "%s takes gpipe or 1f1b, not '%s'", a, v);
      continue;
    }
    if (!strcmp(a, "--aqsgd")) {
      if (!parse_aqsgd(v, o))
        return bad(speak, "%s takes FW/BW with 2-8 bits each (e.g. 2/4) or off, not '%s'", a, v);
      continue;
    }
    if (!strcmp(a, "--grad-codec")) {
      if (!parse_grad_codec(v, o))
        return bad(speak,
                   "%s takes none, fp16, bf16, int8, int4, sign, topk[:DENSITY in (0,1]] or powersgd[:RANK 1-8], "
                   "not '%s'",
                   a, v);
      continue;
    }
#undef INT_FLAG
#undef FLOAT_FLAG
  }
  if (o->channels % o->heads)
    return bad(speak, "%s: the width must be a multiple of the heads%s", "--channels/--heads", "");
  return 0;
}

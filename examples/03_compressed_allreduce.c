/* Example 3: average gradients with a compressed all-reduce while the "backward pass" goes on.
 *
 *   LH_SIM_BW=100mbit LH_SIM_LAT=20ms mpirun -np 4 -x LH_SIM_BW -x LH_SIM_LAT ./03_compressed_allreduce
 *   mpirun -np 4 ./03_compressed_allreduce --codec sign      # any codec: bf16, blockq, sign, topk, ...
 *
 * Each step the ranks hold two gradient tensors (a weight matrix and a bias) that differ by
 * rank. An lh_reducer averages them with 4-bit block quantization and error feedback:
 * lh_reducer_start returns at once, the program keeps computing, lh_reducer_wait collects the
 * result. Every rank ends with the same bits; error feedback makes the running average of
 * the results converge to the exact average, which the program prints next to the error of
 * one step. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <longhaul/longhaul.h>

static void check(lh_status st, const char *what) {
  if (st != LH_SUCCESS) {
    fprintf(stderr, "03_compressed_allreduce: %s: %s: %s\n", what, lh_status_string(st), lh_last_error());
    exit(1);
  }
}

/* This rank's gradient element i of a step: the same on every run. */
static float gradient(int rank, int step, size_t i) {
  unsigned h = (unsigned)(i * 2654435761u) ^ (unsigned)(rank * 40503u) ^ (unsigned)(step * 69069u);
  h ^= h >> 15;
  h *= 0x2c1b3c6du;
  h ^= h >> 12;
  return (float)(h % 20001u) / 10000.0f - 1.0f + 0.1f * (float)rank;
}

int main(int argc, char **argv) {
  lh_allreduce_config cfg = LH_ALLREDUCE_CONFIG_INIT;
  cfg.codec = LH_CODEC_BLOCKQ;
  cfg.bits = 4;
  cfg.op = LH_OP_MEAN;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--codec") && i + 1 < argc) {
      check(lh_codec_parse(argv[++i], &cfg.codec), "--codec");
    } else {
      int help = !strcmp(argv[i], "-h") || !strcmp(argv[i], "--help");
      fprintf(help ? stdout : stderr,
              "%susage: mpirun -np N %s [--codec NAME]\n"
              "Averages two gradient tensors per step with an lh_reducer (default: blockq, 4 bits, error\n"
              "feedback), overlapping the reduction with computation. NAME: none fp16 bf16 blockq sharedq\n"
              "sign topk randk powersgd. LH_SIM_BW / LH_SIM_LAT simulate slow links.\n",
              help ? "" : "03_compressed_allreduce: unknown argument\n", argv[0]);
      return help ? 0 : 2;
    }
  }
  lh_comm comm;
  check(lh_comm_create(NULL, &comm), "creating the communicator");
  int rank, size;
  lh_comm_rank(comm, &rank);
  lh_comm_size(comm, &size);
  lh_reducer reducer;
  check(lh_reducer_create(comm, &cfg, &reducer), "creating the reducer");

  enum { ROWS = 256, COLS = 512, BIAS = 512, STEPS = 20 };
  const size_t nw = (size_t)ROWS * COLS;
  float *w = malloc(nw * sizeof *w), *b = malloc(BIAS * sizeof *b);
  double *sum = calloc(nw + BIAS, sizeof *sum);
  if (!w || !b || !sum) {
    fprintf(stderr, "03_compressed_allreduce: out of memory\n");
    return 1;
  }
  double first_err = 0, busy = 0;
  for (int step = 0; step < STEPS; step++) {
    for (size_t i = 0; i < nw; i++)
      w[i] = gradient(rank, step % 2, i);
    for (size_t i = 0; i < BIAS; i++)
      b[i] = gradient(rank, step % 2, nw + i);
    /* keys name the tensors across steps: each keeps its own error-feedback residual */
    lh_tensor bucket[2] = {{sizeof(lh_tensor), 1, w, nw, ROWS}, {sizeof(lh_tensor), 2, b, BIAS, 0}};
    check(lh_reducer_start(reducer, bucket, 2), "starting the reduction");
    for (int done = 0; !done;) { /* stands in for the backward pass of earlier layers */
      for (int k = 0; k < 100000; k++)
        busy += sin((double)k);
      check(lh_reducer_test(reducer, &done), "testing the reduction");
    }
    check(lh_reducer_wait(reducer), "waiting for the reduction");
    double err = 0, ref = 0;
    for (size_t i = 0; i < nw + BIAS; i++) {
      double exact = 0;
      for (int r = 0; r < size; r++)
        exact += gradient(r, step % 2, i);
      exact /= size;
      double got = i < nw ? w[i] : b[i - nw];
      sum[i] += got - exact;
      err += (got - exact) * (got - exact);
      ref += exact * exact;
    }
    if (step == 0)
      first_err = sqrt(err / ref);
  }
  double drift = 0, ref = 0;
  for (size_t i = 0; i < nw + BIAS; i++) {
    double exact = 0;
    for (int r = 0; r < size; r++)
      exact += gradient(r, 0, i);
    drift += (sum[i] / STEPS) * (sum[i] / STEPS);
    ref += (exact / size) * (exact / size);
  }
  lh_reducer_stats stats = LH_REDUCER_STATS_INIT;
  check(lh_reducer_get_stats(reducer, &stats), "reading statistics");
  const char *algo = "?", *codec = "?";
  lh_allreduce_algo_name(stats.last_algo, &algo);
  lh_codec_name(cfg.codec, &codec);
  if (rank == 0)
    printf("%d ranks, codec %s over %s: %.1fx fewer bytes than the plain ring; one step's error %.2e, "
           "error of the %d-step average %.2e (%.0f ms per step)\n",
           size, codec, algo, (double)stats.raw_bytes / (double)(stats.wire_bytes ? stats.wire_bytes : 1), first_err,
           STEPS, sqrt(drift / ref), 1e3 * stats.seconds / (double)stats.calls);
  check(lh_reducer_free(reducer), "freeing the reducer");
  check(lh_comm_destroy(comm), "destroying the communicator");
  lh_finalize();
  free(w);
  free(b);
  free(sum);
  return busy < 0; /* keeps the busy loop from being optimised away */
}

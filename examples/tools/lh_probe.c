/* lh-probe: measures latency and bandwidth of every ordered pair of ranks and writes a link
 * file for the scheduler and the simulated-link layer.
 *
 *   mpirun -np 4 lh-probe --out cluster.links
 *
 * Run one rank per host (or per device). On simulated links (LH_SIM_*, LH_LINKS) it measures
 * the simulation, which is how its accuracy is tested. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <longhaul/longhaul.h>

typedef struct {
  const char *out;
  lh_probe_config probe;
  int quiet;
} options;

static void usage(FILE *f) {
  fprintf(f,
          "usage: mpirun -np N lh-probe [options]\n"
          "Measures latency (alpha) and bandwidth (beta) of every ordered pair of ranks with\n"
          "ping-pong messages and writes a Longhaul link file.\n\n"
          "  --out FILE            link file to write (default: print it to stdout)\n"
          "  --max-bytes SIZE      largest probe message, e.g. 16M (default 64M)\n"
          "  --target-seconds S    a large transfer should take about this long (default 0.25)\n"
          "  --small-reps N        round trips for latency (default 8)\n"
          "  --large-reps N        transfers for bandwidth; the median is used (default 3)\n"
          "  --quiet               no progress lines\n"
          "  --help                this text\n\n"
          "Environment: LH_* variables as listed by lh-info (LH_SIM_BW/LH_SIM_LAT/LH_LINKS make the\n"
          "links simulated; LH_TIMEOUT_S bounds every wait).\n");
}

/* Returns 0 on success, 2 with a message on bad flags. */
static int parse(int argc, char **argv, options *o, int rank) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    static const char *const with_value[] = {"--out", "--max-bytes", "--target-seconds", "--small-reps",
                                             "--large-reps"};
    int takes_value = 0;
    for (size_t k = 0; k < sizeof with_value / sizeof with_value[0]; k++)
      takes_value |= !strcmp(a, with_value[k]);
    if (takes_value && !v) {
      if (rank == 0)
        fprintf(stderr, "lh-probe: %s needs a value; see lh-probe --help.\n", a);
      return 2;
    }
    char *end = NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      if (rank == 0)
        usage(stdout);
      return 1;
    } else if (!strcmp(a, "--quiet")) {
      o->quiet = 1;
      continue;
    } else if (!strcmp(a, "--out")) {
      o->out = v;
    } else if (!strcmp(a, "--max-bytes")) {
      if (lh_parse_size(v, &o->probe.max_bytes) != LH_SUCCESS) {
        if (rank == 0)
          fprintf(stderr, "lh-probe: --max-bytes: %s\n", lh_last_error());
        return 2;
      }
    } else if (!strcmp(a, "--target-seconds")) {
      o->probe.target_seconds = strtod(v, &end);
      if (end == v || *end) {
        if (rank == 0)
          fprintf(stderr, "lh-probe: --target-seconds needs a number of seconds, not '%s'.\n", v);
        return 2;
      }
    } else if (!strcmp(a, "--small-reps") || !strcmp(a, "--large-reps")) {
      long n = strtol(v, &end, 10);
      if (end == v || *end) {
        if (rank == 0)
          fprintf(stderr, "lh-probe: %s needs a whole number, not '%s'.\n", a, v);
        return 2;
      }
      *(a[2] == 's' ? &o->probe.small_reps : &o->probe.large_reps) = (int)n;
    } else {
      if (rank == 0)
        fprintf(stderr, "lh-probe: unknown option '%s'; see lh-probe --help.\n", a);
      return 2;
    }
    i++;
  }
  return 0;
}

static void progress(void *user, int from, int to, double latency_s, double bandwidth_Bps) {
  (void)user;
  fprintf(stderr, "lh-probe: %d -> %d  latency %8.3f ms  bandwidth %10.3f Mbit/s\n", from, to, latency_s * 1e3,
          bandwidth_Bps * 8 / 1e6);
}

static int fail(int rank, const char *what, lh_status st) {
  fprintf(stderr, "lh-probe (rank %d): %s: %s: %s\n", rank, what, lh_status_string(st), lh_last_error());
  return 1;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  options o = {.out = NULL, .probe = LH_PROBE_CONFIG_INIT, .quiet = 0};
  int rc = parse(argc, argv, &o, rank);
  if (rc != 0) {
    MPI_Finalize();
    return rc == 1 ? 0 : 2;
  }
  if (!o.quiet)
    o.probe.progress = progress; /* every rank reports its own outgoing links */

  lh_comm comm = NULL;
  lh_status st = lh_comm_create(NULL, &comm);
  if (st != LH_SUCCESS) {
    rc = fail(rank, "creating the communicator", st);
    MPI_Abort(MPI_COMM_WORLD, rc);
  }
  int size = 0, simulated = 0;
  char desc[160];
  lh_comm_size(comm, &size);
  lh_comm_simulation(comm, &simulated, desc, sizeof desc);
  if (size < 2) {
    if (rank == 0)
      fprintf(stderr, "lh-probe: one rank has no links to measure; run it with mpirun -np N (N >= 2).\n");
    lh_comm_destroy(comm);
    MPI_Finalize();
    return 2;
  }
  if (rank == 0 && !o.quiet)
    fprintf(stderr, "lh-probe: measuring %d ordered pairs of %d ranks (%s)\n", size * (size - 1), size, desc);

  lh_links *links = NULL;
  st = lh_probe_links(comm, &o.probe, &links);
  if (st != LH_SUCCESS) {
    rc = fail(rank, "probing", st);
    MPI_Abort(MPI_COMM_WORLD, rc);
  }
  if (rank == 0) {
    st = o.out ? lh_links_write_file(links, o.out) : lh_links_write_stream(links, stdout);
    if (st != LH_SUCCESS)
      rc = fail(rank, "writing the link file", st);
    else if (o.out && !o.quiet)
      fprintf(stderr, "lh-probe: wrote %s\n", o.out);
  }
  MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
  lh_links_free(links);
  lh_comm_destroy(comm);
  MPI_Finalize();
  return rc;
}

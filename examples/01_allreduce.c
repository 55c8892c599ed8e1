/* Example 1: sum a gradient across ranks with the ring all-reduce, on simulated slow links.
 *
 *   mpirun -np 4 ./01_allreduce                      # real (shared-memory) links
 *   LH_SIM_BW=100mbit LH_SIM_LAT=20ms mpirun -np 4 -x LH_SIM_BW -x LH_SIM_LAT ./01_allreduce
 *
 * Every rank holds rank+1 in each element; after the sum every element is n(n+1)/2. */
#include <stdio.h>
#include <stdlib.h>

#include <longhaul/longhaul.h>

/* Programs exit; the library only returns. One place turns a status into a message. */
static void check(lh_status st, const char *what) {
  if (st != LH_SUCCESS) {
    fprintf(stderr, "01_allreduce: %s: %s: %s\n", what, lh_status_string(st), lh_last_error());
    exit(1);
  }
}

int main(int argc, char **argv) {
  if (argc > 1) {
    printf("usage: mpirun -np N %s\nSums a 1M-float buffer across N ranks with lh_allreduce and checks it.\n"
           "LH_SIM_BW / LH_SIM_LAT / LH_LINKS simulate slow links (see lh-info --env).\n", argv[0]);
    return argv[1][0] == '-' && argv[1][1] == 'h' ? 0 : 2;
  }
  lh_comm comm;
  lh_comm_config cfg = LH_COMM_CONFIG_INIT; /* unset fields: LH_* variables, then defaults */
  check(lh_comm_create(&cfg, &comm), "creating the communicator");
  int rank, size, simulated;
  char links[160];
  lh_comm_rank(comm, &rank);
  lh_comm_size(comm, &size);
  lh_comm_simulation(comm, &simulated, links, sizeof links);

  const size_t count = (size_t)1 << 20;
  float *grad = malloc(count * sizeof *grad);
  if (!grad) {
    fprintf(stderr, "01_allreduce: out of memory\n");
    return 1;
  }
  for (size_t i = 0; i < count; i++)
    grad[i] = (float)(rank + 1);

  check(lh_allreduce(comm, grad, grad, count, NULL), "lh_allreduce"); /* in place, sum */

  size_t wrong = 0;
  for (size_t i = 0; i < count; i++)
    wrong += grad[i] != (float)(size * (size + 1) / 2);
  lh_link_stats stats = LH_LINK_STATS_INIT;
  check(lh_comm_link_stats(comm, (rank + 1) % size, &stats), "reading link statistics");
  if (rank == 0)
    printf("%d ranks (%s): %zu floats summed, %zu wrong; %llu bytes sent to rank %d\n", size, links, count, wrong,
           stats.bytes_sent, (rank + 1) % size);
  free(grad);
  check(lh_comm_destroy(comm), "destroying the communicator");
  lh_finalize();
  return wrong != 0;
}

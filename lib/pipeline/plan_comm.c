/* A scheduler's plan turned into the two communicators a rank works in: its stage's
 * data-parallel group and its replica's pipeline. The plan was read from a file on every rank,
 * so the ranks first agree that they hold the same one. */
#include <stdlib.h>

#include "common/internal.h"
#include "transport/transport_internal.h"
#include <longhaul/pipeline.h>

lh_status lh_plan_split(lh_comm comm, const lh_plan *plan, lh_comm *stage_comm, lh_comm *replica_comm) {
  lh_error_clear();
  if (!comm || !plan || !stage_comm || !replica_comm)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_plan_split: comm, plan, stage_comm and replica_comm must not be NULL");
  *stage_comm = *replica_comm = NULL;
  int rank, size;
  LH_CHECK(lh_comm_rank(comm, &rank));
  LH_CHECK(lh_comm_size(comm, &size));
  lh_plan_info info = LH_PLAN_INFO_INIT;
  LH_CHECK(lh_plan_get_info(plan, &info));
  if (info.devices != size)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_plan_split: the plan places %d devices but the communicator has %d ranks; run it with "
                    "mpirun -np %d",
                    info.devices, size, info.devices);
  /* Every rank must split by the same plan, or the groups would not match up. */
  unsigned long long digest = 0xcbf29ce484222325ULL;
  for (int d = 0; d < size; d++) {
    int s, r;
    LH_CHECK(lh_plan_device(plan, d, &s, &r));
    digest = (digest ^ (unsigned long long)(s * info.dp + r)) * 0x100000001b3ULL;
  }
  const long long values[3] = {(long long)(digest >> 1), info.pp, info.dp};
  const char *const names[3] = {"plan (its assignment)", "plan pipeline stages (pp)", "plan replicas (dp)"};
  LH_CHECK(lh_comm_agree(comm, values, 3, names, "lh_plan_split"));
  int stage, replica;
  LH_CHECK(lh_plan_device(plan, rank, &stage, &replica));
  /* Ordered by replica inside a stage (the ring's order) and by stage inside a replica. */
  LH_CHECK(lh_comm_split(comm, stage, replica, stage_comm));
  lh_status st = lh_comm_split(comm, replica, stage, replica_comm);
  if (st != LH_SUCCESS) {
    lh_comm_destroy(*stage_comm);
    *stage_comm = NULL;
  }
  return st;
}

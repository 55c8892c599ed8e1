/* LH_BIND: binds each process near a core, its GPU or a NIC when its first communicator is
 * created. The local rank comes from the ranks sharing this host. Binding is an optimisation:
 * when it is impossible (no hwloc, no GPU, refused) the rank goes on unbound with a warning. */
#include <longhaul/topo.h>

#include "transport/transport_internal.h"

void lh_apply_binding(MPI_Comm ctrl) {
  static int done;
  const char *word = lh_env_raw("LH_BIND");
  lh_bind_policy policy = LH_BIND_NONE;
  if (done || !word || lh_bind_policy_parse(word, &policy) != LH_SUCCESS || policy == LH_BIND_NONE)
    return;
  MPI_Comm host;
  if (MPI_Comm_split_type(ctrl, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &host) != MPI_SUCCESS) {
    lh_log(LH_LOG_WARN, "bind", "LH_BIND=%s: cannot tell the ranks of this host apart; not bound", word);
    return;
  }
  int local_rank = 0, local_size = 1;
  MPI_Comm_rank(host, &local_rank);
  MPI_Comm_size(host, &local_size);
  MPI_Comm_free(&host);
  lh_topology *topo = NULL;
  char where[160] = "";
  lh_status st = lh_topo_load(&topo);
  if (st == LH_SUCCESS)
    st = lh_topo_bind(topo, policy, local_rank, local_size, where, sizeof where);
  done = st == LH_SUCCESS; /* bound once per process; a failed try may be repeated */
  if (st == LH_SUCCESS)
    lh_log(LH_LOG_INFO, "bind", "LH_BIND=%s: local rank %d of %d bound to %s", word, local_rank, local_size, where);
  else
    lh_log(LH_LOG_WARN, "bind", "LH_BIND=%s: not bound: %s", word, lh_last_error());
  lh_topo_free(topo);
  lh_error_clear();
}

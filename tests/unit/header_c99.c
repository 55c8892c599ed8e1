/* The public headers compile as strict C99 (-std=c99 -pedantic -Werror) and link. */
#include <longhaul/longhaul.h>
#include <stdio.h>

int main(void) {
  lh_comm_config comm = LH_COMM_CONFIG_INIT;
  lh_allreduce_config ar = LH_ALLREDUCE_CONFIG_INIT;
  lh_probe_config probe = LH_PROBE_CONFIG_INIT;
  lh_link_stats stats = LH_LINK_STATS_INIT;
  lh_build_features info = LH_BUILD_FEATURES_INIT;
  lh_topo_summary topo = LH_TOPO_SUMMARY_INIT;
  if (comm.size != sizeof comm || ar.size != sizeof ar || probe.size != sizeof probe || stats.size != sizeof stats ||
      topo.size != sizeof topo)
    return 1;
  if (lh_build_info(&info) != LH_SUCCESS)
    return 2;
  printf("%s %s\n", LH_VERSION_STRING, lh_status_string(LH_ERR_TIMEOUT));
  return 0;
}

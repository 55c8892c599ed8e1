// The public headers compile as C++17 (-pedantic -Werror), with C linkage, and link.
#include <longhaul/longhaul.h>

#include <cstdio>

int main() {
  lh_comm_config comm = LH_COMM_CONFIG_INIT;
  lh_allreduce_config ar = LH_ALLREDUCE_CONFIG_INIT;
  lh_probe_config probe = LH_PROBE_CONFIG_INIT;
  lh_build_features info = LH_BUILD_FEATURES_INIT;
  if (comm.size != sizeof comm || ar.size != sizeof ar || probe.size != sizeof probe)
    return 1;
  if (lh_build_info(&info) != LH_SUCCESS)
    return 2;
  std::printf("%s %s\n", LH_VERSION_STRING, lh_status_string(LH_ERR_TIMEOUT));
  return 0;
}

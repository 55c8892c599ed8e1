/* Topology: cores, NUMA nodes, GPUs and NICs of this host (with hwloc), and binding a rank to
 * the cores near its GPU or NIC. Without hwloc every call returns LH_ERR_NOT_SUPPORTED, except
 * lh_bind_policy_parse and lh_topo_free(NULL).
 * Stability: stable. */
#ifndef LONGHAUL_TOPO_H
#define LONGHAUL_TOPO_H

#include <stddef.h>
#include <longhaul/status.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lh_topology lh_topology; /* opaque */

typedef struct lh_topo_summary {
  size_t size;    /* sizeof(lh_topo_summary) */
  int packages;
  int numa_nodes;
  int cores;
  int pus;        /* hardware threads */
  int gpus;       /* CUDA/NVIDIA GPUs seen on the PCI bus, each counted once */
  int nics;       /* network devices (Ethernet, InfiniBand), one per PCI function; loopback
                   * excluded. In a container these may be the host's NICs or virtual ones. */
} lh_topo_summary;
#define LH_TOPO_SUMMARY_INIT {sizeof(lh_topo_summary), 0, 0, 0, 0, 0, 0}

typedef enum lh_bind_policy {
  LH_BIND_NONE = 0, /* leave the binding to the launcher */
  LH_BIND_CORE = 1, /* one core per local rank, round robin */
  LH_BIND_GPU = 2,  /* the cores local to GPU (local_rank mod gpus) */
  LH_BIND_NIC = 3   /* the cores local to NIC (local_rank mod nics) */
} lh_bind_policy;

/* Reads the host's topology, I/O devices included. Free it with lh_topo_free. */
lh_status lh_topo_load(lh_topology **topo);
lh_status lh_topo_free(lh_topology *topo); /* accepts NULL */
/* Set summary->size first (LH_TOPO_SUMMARY_INIT). */
lh_status lh_topo_summarize(const lh_topology *topo, lh_topo_summary *summary);
/* A multi-line human description: a line of counts, then one line per GPU and NIC with its PCI
 * bus id and the NUMA nodes and cpus nearest to it. The text is truncated to capacity (always
 * NUL-terminated when capacity > 0; text may be NULL when capacity is 0). *needed (may be NULL)
 * gets the bytes the whole text takes, terminating NUL included: truncation is not an error, so
 * compare *needed with capacity. */
lh_status lh_topo_describe(const lh_topology *topo, char *text, size_t capacity, size_t *needed);
/* Parses "none", "core", "gpu", "nic", in any case; works in every build. */
lh_status lh_bind_policy_parse(const char *name, lh_bind_policy *policy);
/* Binds the calling process (all its threads) for local rank local_rank of local_size on this
 * host. `where` receives a description ("cpus 0-7 near GPU 0000:3b:00.0", "not bound"); cpus
 * are OS numbers, as taskset prints them. Cores are counted over the whole host (or the
 * container's cpuset), not over the launcher's binding, which this one replaces.
 * LH_BIND_NONE changes nothing and succeeds.
 * When the policy cannot be honoured (no GPU, no NIC, binding refused) it returns
 * LH_ERR_NOT_SUPPORTED with the reason in lh_last_error() and where = "not bound": callers
 * warn and go on. */
lh_status lh_topo_bind(const lh_topology *topo, lh_bind_policy policy, int local_rank,
                       int local_size, char *where, size_t capacity);

#ifdef __cplusplus
}
#endif
#endif

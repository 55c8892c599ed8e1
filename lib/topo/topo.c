/* Topology discovery and binding. With hwloc (LH_HAVE_HWLOC) this finds the packages, NUMA
 * nodes, cores, NVIDIA GPUs and NICs of the host and binds a rank near one of them; without it
 * every call except the policy parser returns LH_ERR_NOT_SUPPORTED saying so. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <longhaul/topo.h>

#include "common/internal.h"

/* Indexed by lh_bind_policy: the parser and the messages share one spelling. */
static const char *const lh_bind_names[] = {"none", "core", "gpu", "nic"};
#define LH_BIND_POLICIES ((int)(sizeof lh_bind_names / sizeof lh_bind_names[0]))

/* Parsing needs no hwloc: programs validate LH_BIND the same way in every build, and "none"
 * stays usable where binding is not. */
lh_status lh_bind_policy_parse(const char *name, lh_bind_policy *policy) {
  if (!name || !policy)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_bind_policy_parse: name and policy must not be NULL");
  for (int i = 0; i < LH_BIND_POLICIES; i++) {
    if (!strcasecmp(name, lh_bind_names[i])) {
      *policy = (lh_bind_policy)i;
      return LH_SUCCESS;
    }
  }
  return lh_error(LH_ERR_INVALID_ARGUMENT,
                  "lh_bind_policy_parse: '%s' is not a binding policy: expected none, core, gpu or nic", name);
}

#ifdef LH_HAVE_HWLOC

#include <hwloc.h>

struct lh_topology {
  hwloc_topology_t hw;
};

/* ---- text that may not fit ------------------------------------------------------------ */

/* Appends to a caller's buffer, truncating safely, while counting the full length so that
 * the caller can learn how much room the whole text needs. */
typedef struct {
  char *buf;
  size_t capacity;
  size_t length; /* of the full text, whether it fitted or not */
} lh_text;

static void lh_text_add(lh_text *t, const char *fmt, ...) LH_PRINTF(2, 3);
static void lh_text_add(lh_text *t, const char *fmt, ...) {
  size_t room = t->length < t->capacity ? t->capacity - t->length : 0;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(room ? t->buf + t->length : NULL, room, fmt, ap);
  va_end(ap);
  if (n > 0)
    t->length += (size_t)n;
}

/* "cpu 3" or "cpus 0-7,16-23": OS numbering, as taskset and numactl print it. */
static void lh_text_cpus(lh_text *t, hwloc_const_cpuset_t cpus) {
  char list[256];
  hwloc_bitmap_list_snprintf(list, sizeof list, cpus);
  lh_text_add(t, "%s %s", hwloc_bitmap_weight(cpus) == 1 ? "cpu" : "cpus", list);
}

/* ---- devices ---------------------------------------------------------------------------- */

typedef enum { LH_DEV_GPU, LH_DEV_NIC } lh_dev_kind;
static const char *const lh_dev_names[] = {"GPU", "NIC"};

static int lh_starts_with(const char *s, const char *prefix) {
  return !strncasecmp(s, prefix, strlen(prefix));
}

/* Whether an OS device is a CUDA GPU (cuda0 from the CUDA plugin, nvml0 from NVML) or a
 * network interface (eth0, ib0, mlx5_0). */
static int lh_osdev_is(hwloc_obj_t osdev, lh_dev_kind kind) {
  const char *name = osdev->name ? osdev->name : "";
  hwloc_obj_osdev_type_t type = osdev->attr->osdev.type;
  if (kind == LH_DEV_GPU)
    return (type == HWLOC_OBJ_OSDEV_GPU || type == HWLOC_OBJ_OSDEV_COPROC) &&
           (lh_starts_with(name, "cuda") || lh_starts_with(name, "nvml") || lh_starts_with(name, "nvidia"));
  return (type == HWLOC_OBJ_OSDEV_NETWORK || type == HWLOC_OBJ_OSDEV_OPENFABRICS) && strcmp(name, "lo") != 0;
}

/* One GPU shows up as several OS devices (cuda0, nvml0, card1, renderD129) and one HCA as
 * two (mlx5_0, ib0), so devices are counted once per PCI function. The PCI class also catches
 * what has no OS device here: an NVIDIA GPU when hwloc lacks the CUDA/NVML plugins, a NIC
 * whose interface lives in another network namespace (containers). */
static int lh_pcidev_is(hwloc_obj_t pci, lh_dev_kind kind) {
  unsigned base_class = pci->attr->pcidev.class_id >> 8;
  if (kind == LH_DEV_GPU && pci->attr->pcidev.vendor_id == 0x10de && base_class == 0x03)
    return 1; /* NVIDIA display or 3D controller; NVSwitches are bridges (0x06) */
  if (kind == LH_DEV_NIC && base_class == 0x02)
    return 1; /* network controller: Ethernet, InfiniBand */
  for (hwloc_obj_t c = pci->io_first_child; c; c = c->next_sibling)
    if (c->type == HWLOC_OBJ_OS_DEVICE && lh_osdev_is(c, kind))
      return 1;
  return 0;
}

static int lh_on_pci(hwloc_obj_t obj) {
  return obj->parent && obj->parent->type == HWLOC_OBJ_PCI_DEVICE;
}

/* The device after `prev` (NULL: the first): PCI functions in bus order, then the OS devices
 * that hang from no PCI function. Both counting and binding walk this one order, so that
 * device i means the same thing to both. */
static hwloc_obj_t lh_next_device(hwloc_topology_t hw, lh_dev_kind kind, hwloc_obj_t prev) {
  hwloc_obj_t obj = prev;
  if (!obj || obj->type == HWLOC_OBJ_PCI_DEVICE) {
    while ((obj = hwloc_get_next_pcidev(hw, obj)))
      if (lh_pcidev_is(obj, kind))
        return obj;
  }
  while ((obj = hwloc_get_next_osdev(hw, obj)))
    if (!lh_on_pci(obj) && lh_osdev_is(obj, kind))
      return obj;
  return NULL;
}

static int lh_device_count(hwloc_topology_t hw, lh_dev_kind kind) {
  int n = 0;
  for (hwloc_obj_t d = lh_next_device(hw, kind, NULL); d; d = lh_next_device(hw, kind, d))
    n++;
  return n;
}

static hwloc_obj_t lh_device_at(hwloc_topology_t hw, lh_dev_kind kind, int index) {
  hwloc_obj_t d = lh_next_device(hw, kind, NULL);
  for (int i = 0; d && i < index; i++)
    d = lh_next_device(hw, kind, d);
  return d;
}

/* "0000:3b:00.0", or the OS device name for a device that is not on PCI. */
static void lh_text_device_id(lh_text *t, hwloc_obj_t dev) {
  if (dev->type == HWLOC_OBJ_PCI_DEVICE) {
    const struct hwloc_pcidev_attr_s *p = &dev->attr->pcidev;
    lh_text_add(t, "%04x:%02x:%02x.%01x", (unsigned)p->domain, (unsigned)p->bus, (unsigned)p->dev,
                (unsigned)p->func);
  } else {
    lh_text_add(t, "%s", dev->name ? dev->name : "?");
  }
}

/* ---- cores -------------------------------------------------------------------------------- */

/* hwloc finds no Core objects on some virtual machines and non-Linux systems; each PU then
 * stands for a core. */
static hwloc_obj_type_t lh_core_type(hwloc_topology_t hw) {
  return hwloc_get_nbobjs_by_type(hw, HWLOC_OBJ_CORE) > 0 ? HWLOC_OBJ_CORE : HWLOC_OBJ_PU;
}

static int lh_count(hwloc_topology_t hw, hwloc_obj_type_t type) {
  int n = hwloc_get_nbobjs_by_type(hw, type);
  return n > 0 ? n : 0;
}

/* ---- public --------------------------------------------------------------------------------- */

lh_status lh_topo_load(lh_topology **topo) {
  if (!topo)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_topo_load: topo must not be NULL");
  *topo = NULL;
  lh_topology *t = lh_calloc(1, sizeof *t, "topology");
  if (!t)
    return LH_ERR_OUT_OF_MEMORY;
  if (hwloc_topology_init(&t->hw) != 0) {
    free(t);
    return lh_error(LH_ERR_NOT_SUPPORTED, "lh_topo_load: hwloc_topology_init failed: %s", strerror(errno));
  }
  /* hwloc leaves I/O devices out by default; GPUs and NICs are what binding is about. Without
   * them core binding still works, so a refusal is a warning. */
  if (hwloc_topology_set_io_types_filter(t->hw, HWLOC_TYPE_FILTER_KEEP_IMPORTANT) != 0)
    lh_log(LH_LOG_WARN, "topo", "hwloc would not list I/O devices (%s): no GPU or NIC will be found",
           strerror(errno));
  if (hwloc_topology_load(t->hw) != 0) {
    int err = errno;
    hwloc_topology_destroy(t->hw);
    free(t);
    return lh_error(LH_ERR_NOT_SUPPORTED, "lh_topo_load: hwloc could not read the topology: %s", strerror(err));
  }
  *topo = t;
  return LH_SUCCESS;
}

lh_status lh_topo_free(lh_topology *topo) {
  if (topo) {
    hwloc_topology_destroy(topo->hw);
    free(topo);
  }
  return LH_SUCCESS;
}

lh_status lh_topo_summarize(const lh_topology *topo, lh_topo_summary *summary) {
  if (!topo || !summary)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_topo_summarize: topo and summary must not be NULL");
  if (summary->size < sizeof(lh_topo_summary))
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_topo_summarize: summary->size is %zu, expected at least %zu (use LH_TOPO_SUMMARY_INIT)",
                    summary->size, sizeof(lh_topo_summary));
  hwloc_topology_t hw = topo->hw;
  summary->packages = lh_count(hw, HWLOC_OBJ_PACKAGE);
  summary->numa_nodes = lh_count(hw, HWLOC_OBJ_NUMANODE);
  summary->cores = lh_count(hw, lh_core_type(hw));
  summary->pus = lh_count(hw, HWLOC_OBJ_PU);
  summary->gpus = lh_device_count(hw, LH_DEV_GPU);
  summary->nics = lh_device_count(hw, LH_DEV_NIC);
  return LH_SUCCESS;
}

/* "  GPU 0  0000:3b:00.0 (cuda0, nvml0)  near NUMA node 0, cpus 0-23" */
static void lh_text_device_line(lh_text *t, hwloc_topology_t hw, lh_dev_kind kind, int index, hwloc_obj_t dev) {
  lh_text_add(t, "  %s %d  ", lh_dev_names[kind], index);
  lh_text_device_id(t, dev);
  if (dev->type == HWLOC_OBJ_PCI_DEVICE) {
    int names = 0; /* the OS devices of this function, e.g. "(eth0)" or "(mlx5_0, ib0)" */
    for (hwloc_obj_t c = dev->io_first_child; c; c = c->next_sibling)
      if (c->type == HWLOC_OBJ_OS_DEVICE && c->name)
        lh_text_add(t, "%s%s", names++ ? ", " : " (", c->name);
    if (names)
      lh_text_add(t, ")");
  } else {
    lh_text_add(t, " (not on PCI)");
  }
  hwloc_obj_t home = hwloc_get_non_io_ancestor_obj(hw, dev); /* what lh_topo_bind binds to */
  char nodes[128];
  hwloc_bitmap_list_snprintf(nodes, sizeof nodes, home->nodeset);
  lh_text_add(t, "  near NUMA node%s %s, ", hwloc_bitmap_weight(home->nodeset) == 1 ? "" : "s", nodes);
  lh_text_cpus(t, home->cpuset);
  lh_text_add(t, "\n");
}

lh_status lh_topo_describe(const lh_topology *topo, char *text, size_t capacity, size_t *needed) {
  if (!topo || (!text && capacity > 0))
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_topo_describe: topo must not be NULL, nor text when capacity > 0");
  lh_topo_summary s = LH_TOPO_SUMMARY_INIT;
  LH_CHECK(lh_topo_summarize(topo, &s));
  lh_text t = {text, capacity, 0};
  if (capacity > 0)
    text[0] = '\0';
#define LH_PLURAL(n) ((n) == 1 ? "" : "s")
  lh_text_add(&t, "%d package%s, %d NUMA node%s, %d core%s, %d PU%s, %d GPU%s, %d NIC%s\n", s.packages,
              LH_PLURAL(s.packages), s.numa_nodes, LH_PLURAL(s.numa_nodes), s.cores, LH_PLURAL(s.cores), s.pus,
              LH_PLURAL(s.pus), s.gpus, LH_PLURAL(s.gpus), s.nics, LH_PLURAL(s.nics));
#undef LH_PLURAL
  for (int kind = LH_DEV_GPU; kind <= LH_DEV_NIC; kind++) {
    int i = 0;
    for (hwloc_obj_t d = lh_next_device(topo->hw, kind, NULL); d; d = lh_next_device(topo->hw, kind, d))
      lh_text_device_line(&t, topo->hw, kind, i++, d);
  }
  if (needed)
    *needed = t.length + 1;
  return LH_SUCCESS;
}

lh_status lh_topo_bind(const lh_topology *topo, lh_bind_policy policy, int local_rank, int local_size,
                       char *where, size_t capacity) {
  if (!topo || !where || capacity == 0)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_topo_bind: topo and where must not be NULL, capacity > 0");
  if ((int)policy < 0 || (int)policy >= LH_BIND_POLICIES)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_topo_bind: policy %d is not an lh_bind_policy", (int)policy);
  if (local_size < 1 || local_rank < 0 || local_rank >= local_size)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_topo_bind: local_rank %d must be in 0..local_size-1 (local_size %d)", local_rank, local_size);
  /* Whatever happens below, the caller can print `where`. */
  snprintf(where, capacity, "not bound");
  if (policy == LH_BIND_NONE)
    return LH_SUCCESS;

  hwloc_topology_t hw = topo->hw;
  hwloc_const_cpuset_t cpus;
  char target[256]; /* what we bind to; `where` gets it only once the binding holds */
  lh_text t = {target, sizeof target, 0};
  if (policy == LH_BIND_CORE) {
    hwloc_obj_type_t type = lh_core_type(hw);
    int cores = lh_count(hw, type);
    if (cores == 0)
      return lh_error(LH_ERR_NOT_SUPPORTED, "lh_topo_bind: hwloc found no core to bind to");
    int index = local_rank % cores;
    cpus = hwloc_get_obj_by_type(hw, type, (unsigned)index)->cpuset;
    lh_text_cpus(&t, cpus);
    lh_text_add(&t, " (core %d of %d)", index, cores);
  } else {
    lh_dev_kind kind = policy == LH_BIND_GPU ? LH_DEV_GPU : LH_DEV_NIC;
    int count = lh_device_count(hw, kind);
    if (count == 0)
      return lh_error(LH_ERR_NOT_SUPPORTED, "lh_topo_bind: policy '%s' needs a %s, but hwloc found none on this host",
                      lh_bind_names[policy], kind == LH_DEV_GPU ? "CUDA/NVIDIA GPU" : "network interface (NIC)");
    hwloc_obj_t dev = lh_device_at(hw, kind, local_rank % count);
    cpus = hwloc_get_non_io_ancestor_obj(hw, dev)->cpuset;
    lh_text_cpus(&t, cpus);
    lh_text_add(&t, " near %s ", lh_dev_names[kind]);
    lh_text_device_id(&t, dev);
  }
  if (hwloc_set_cpubind(hw, cpus, HWLOC_CPUBIND_PROCESS) != 0)
    return lh_error(LH_ERR_NOT_SUPPORTED, "lh_topo_bind: binding to %s was refused: %s", target, strerror(errno));
  snprintf(where, capacity, "%s", target);
  return LH_SUCCESS;
}

#else /* !LH_HAVE_HWLOC */

static lh_status lh_no_hwloc(const char *function) {
  return lh_error(LH_ERR_NOT_SUPPORTED,
                  "%s: Longhaul was built without hwloc, so there is no topology or binding; "
                  "rebuild with libhwloc-dev installed and LH_WITH_HWLOC=ON", function);
}

lh_status lh_topo_load(lh_topology **topo) {
  if (topo)
    *topo = NULL;
  return lh_no_hwloc("lh_topo_load");
}

/* No topology can exist in this build, so NULL is the only value a caller can hold. */
lh_status lh_topo_free(lh_topology *topo) {
  return topo ? lh_no_hwloc("lh_topo_free") : LH_SUCCESS;
}

lh_status lh_topo_summarize(const lh_topology *topo, lh_topo_summary *summary) {
  return lh_no_hwloc("lh_topo_summarize");
}

lh_status lh_topo_describe(const lh_topology *topo, char *text, size_t capacity, size_t *needed) {
  if (text && capacity > 0)
    text[0] = '\0';
  return lh_no_hwloc("lh_topo_describe");
}

lh_status lh_topo_bind(const lh_topology *topo, lh_bind_policy policy, int local_rank, int local_size,
                       char *where, size_t capacity) {
  if (where && capacity > 0)
    snprintf(where, capacity, "not bound");
  return lh_no_hwloc("lh_topo_bind");
}

#endif

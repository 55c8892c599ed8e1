/* The link matrix: latency and bandwidth of every directed pair of devices, plus per-device
 * site, relative speed and uplink cap. Values are checked on the way in, so everything that
 * reads a matrix (cost model, simulated links, writer) may trust it. */
#include <stdlib.h>
#include <string.h>

#include "common/internal.h"
#include "netmodel/links_internal.h"
#include <longhaul/links.h>

typedef struct {
  char site[LH_LINKS_SITE_MAX + 1];
  double speed;
  double uplink_Bps; /* 0 = no cap */
} lh_device_info;

struct lh_links {
  int devices;
  /* Row-major N x N: [from * N + to]. The diagonal holds 0 and is never set. */
  double *latency_s;
  double *bandwidth_Bps;
  lh_device_info *info;
};

const char *lh_links_site_problem(const char *site, size_t length) {
  if (length == 0)
    return "is empty";
  if (length > LH_LINKS_SITE_MAX)
    return "is longer than 63 characters";
  for (size_t i = 0; i < length; i++) {
    unsigned char c = (unsigned char)site[i];
    /* Bytes >= 0x80 pass so that UTF-8 names work; the file format splits on ASCII space. */
    if (c <= ' ' || c == 0x7f)
      return "contains white space or a control character";
    if (c == '#')
      return "contains '#', which starts a comment in a link file";
  }
  return NULL;
}

static size_t lh_links_cells(int devices) { return (size_t)devices * (size_t)devices; }

/* Allocates an N-device matrix with every field zero and default device info. */
static lh_status lh_links_alloc(int devices, const char *caller, lh_links **out) {
  if (devices < 1 || devices > LH_LINKS_MAX_DEVICES)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: devices is %d; it must be from 1 to %d", caller, devices,
                    LH_LINKS_MAX_DEVICES);
  lh_links *l = lh_calloc(1, sizeof *l, "a link matrix");
  if (!l)
    return LH_ERR_OUT_OF_MEMORY;
  l->devices = devices;
  l->latency_s = lh_calloc(lh_links_cells(devices), sizeof(double), "a latency matrix");
  l->bandwidth_Bps = l->latency_s ? lh_calloc(lh_links_cells(devices), sizeof(double), "a bandwidth matrix") : NULL;
  l->info = l->bandwidth_Bps ? lh_calloc((size_t)devices, sizeof(lh_device_info), "device information") : NULL;
  if (!l->info) {
    lh_links_free(l);
    return LH_ERR_OUT_OF_MEMORY;
  }
  for (int d = 0; d < devices; d++) {
    strcpy(l->info[d].site, LH_LINKS_DEFAULT_SITE);
    l->info[d].speed = 1.0;
  }
  *out = l;
  return LH_SUCCESS;
}

lh_status lh_links_create(int devices, double latency_s, double bandwidth_Bps, lh_links **out) {
  lh_error_clear();
  if (!out)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_links_create: out must not be NULL");
  *out = NULL;
  if (!lh_links_latency_ok(latency_s))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_links_create: latency_s is %g; it must be finite and >= 0",
                    latency_s);
  if (!lh_links_bandwidth_ok(bandwidth_Bps))
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_links_create: bandwidth_Bps is %g; it must be finite, > 0 and <= %g", bandwidth_Bps,
                    LH_LINKS_MAX_BANDWIDTH);
  lh_links *l = NULL;
  LH_CHECK(lh_links_alloc(devices, "lh_links_create", &l));
  for (int from = 0; from < devices; from++)
    for (int to = 0; to < devices; to++)
      if (from != to) {
        size_t cell = (size_t)from * (size_t)devices + (size_t)to;
        l->latency_s[cell] = latency_s + 0.0; /* -0.0 becomes 0.0, as in lh_links_set */
        l->bandwidth_Bps[cell] = bandwidth_Bps;
      }
  *out = l;
  return LH_SUCCESS;
}

lh_status lh_links_free(lh_links *links) {
  if (links) {
    free(links->latency_s);
    free(links->bandwidth_Bps);
    free(links->info);
    free(links);
  }
  return LH_SUCCESS;
}

lh_status lh_links_copy(const lh_links *links, lh_links **out) {
  lh_error_clear();
  if (!out)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_links_copy: out must not be NULL");
  *out = NULL;
  if (!links)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_links_copy: links must not be NULL");
  lh_links *l = NULL;
  LH_CHECK(lh_links_alloc(links->devices, "lh_links_copy", &l));
  size_t cells = lh_links_cells(links->devices);
  memcpy(l->latency_s, links->latency_s, cells * sizeof(double));
  memcpy(l->bandwidth_Bps, links->bandwidth_Bps, cells * sizeof(double));
  memcpy(l->info, links->info, (size_t)links->devices * sizeof(lh_device_info));
  *out = l;
  return LH_SUCCESS;
}

lh_status lh_links_devices(const lh_links *links, int *devices) {
  if (!links || !devices)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_links_devices: %s must not be NULL", !links ? "links" : "devices");
  *devices = links->devices;
  return LH_SUCCESS;
}

/* Checks the matrix and one device index; `role` names the argument in the message. */
static lh_status lh_check_device(const lh_links *links, int device, const char *caller, const char *role) {
  if (!links)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: links must not be NULL", caller);
  if (device < 0 || device >= links->devices)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: %s is %d, outside 0..%d (the matrix has %d devices)", caller,
                    role, device, links->devices - 1, links->devices);
  return LH_SUCCESS;
}

static lh_status lh_check_pair(const lh_links *links, int from, int to, const char *caller) {
  LH_CHECK(lh_check_device(links, from, caller, "from"));
  return lh_check_device(links, to, caller, "to");
}

lh_status lh_links_get(const lh_links *links, int from, int to, double *latency_s, double *bandwidth_Bps) {
  LH_CHECK(lh_check_pair(links, from, to, "lh_links_get"));
  if (!latency_s || !bandwidth_Bps)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_links_get: %s must not be NULL",
                    !latency_s ? "latency_s" : "bandwidth_Bps");
  size_t cell = (size_t)from * (size_t)links->devices + (size_t)to;
  *latency_s = links->latency_s[cell];
  *bandwidth_Bps = links->bandwidth_Bps[cell];
  return LH_SUCCESS;
}

lh_status lh_links_set(lh_links *links, int from, int to, double latency_s, double bandwidth_Bps) {
  LH_CHECK(lh_check_pair(links, from, to, "lh_links_set"));
  if (from == to)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_links_set: from and to are both %d; a device has no link to itself", from);
  if (!lh_links_latency_ok(latency_s))
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_links_set: latency_s of %d -> %d is %g; it must be finite and >= 0", from, to, latency_s);
  if (!lh_links_bandwidth_ok(bandwidth_Bps))
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_links_set: bandwidth_Bps of %d -> %d is %g; it must be finite, > 0 and <= %g", from, to,
                    bandwidth_Bps, LH_LINKS_MAX_BANDWIDTH);
  size_t cell = (size_t)from * (size_t)links->devices + (size_t)to;
  links->latency_s[cell] = latency_s + 0.0; /* -0.0 becomes 0.0: one zero, written as "0" */
  links->bandwidth_Bps[cell] = bandwidth_Bps;
  return LH_SUCCESS;
}

lh_status lh_links_get_device(const lh_links *links, int device, const char **site, double *speed) {
  LH_CHECK(lh_check_device(links, device, "lh_links_get_device", "device"));
  if (!site || !speed)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_links_get_device: %s must not be NULL", !site ? "site" : "speed");
  *site = links->info[device].site;
  *speed = links->info[device].speed;
  return LH_SUCCESS;
}

lh_status lh_links_set_device(lh_links *links, int device, const char *site, double speed) {
  LH_CHECK(lh_check_device(links, device, "lh_links_set_device", "device"));
  if (!site)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_links_set_device: site must not be NULL");
  /* Bounded scan: an overlong name is refused without reading past what we need. */
  size_t length = strnlen(site, LH_LINKS_SITE_MAX + 1);
  const char *problem = lh_links_site_problem(site, length);
  if (problem)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_links_set_device: site '%.*s%s' of device %d %s",
                    LH_LINKS_SITE_MAX, site, length > LH_LINKS_SITE_MAX ? "..." : "", device, problem);
  if (!lh_links_speed_ok(speed))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_links_set_device: speed of device %d is %g; it must be finite and > 0",
                    device, speed);
  memcpy(links->info[device].site, site, length);
  links->info[device].site[length] = '\0';
  links->info[device].speed = speed;
  return LH_SUCCESS;
}

lh_status lh_links_get_uplink(const lh_links *links, int device, double *bandwidth_Bps) {
  LH_CHECK(lh_check_device(links, device, "lh_links_get_uplink", "device"));
  if (!bandwidth_Bps)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_links_get_uplink: bandwidth_Bps must not be NULL");
  *bandwidth_Bps = links->info[device].uplink_Bps;
  return LH_SUCCESS;
}

lh_status lh_links_set_uplink(lh_links *links, int device, double bandwidth_Bps) {
  LH_CHECK(lh_check_device(links, device, "lh_links_set_uplink", "device"));
  if (!lh_links_uplink_ok(bandwidth_Bps))
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_links_set_uplink: bandwidth_Bps of device %d is %g; it must be 0 (no cap) or finite, "
                    "> 0 and <= %g", device, bandwidth_Bps, LH_LINKS_MAX_BANDWIDTH);
  /* + 0.0 turns -0.0 into 0.0: "no cap" has one representation, which the writer omits. */
  links->info[device].uplink_Bps = bandwidth_Bps + 0.0;
  return LH_SUCCESS;
}

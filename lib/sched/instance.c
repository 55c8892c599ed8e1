/* Random heterogeneous networks for the scheduler's tests and benchmarks.
 *
 * The model, chosen to have the structure that makes placement matter (cheap links inside a
 * city, expensive ones across, uneven devices) while staying deterministic for a seed:
 *   - cities at uniformly random points on the Earth's surface;
 *   - city sizes uneven: each city has one device, the rest go to cities with probability
 *     proportional to exponential weights; devices are then shuffled, so device numbers say
 *     nothing about cities (a solver cannot profit from the order);
 *   - each device's uplink log-uniform in [min, max] Gbit/s;
 *   - inside a city: latency uniform in [0.5, 5] ms, bandwidth the smaller uplink of the two;
 *   - across cities: latency 5 ms plus the great-circle distance at 100 km per ms (fibre
 *     paths are longer than the great circle and light in glass travels about 200 km/ms),
 *     bandwidth the smallest of both uplinks and the city pair's capacity, itself
 *     log-uniform in [min, max], so long-haul links are slower on average than local ones;
 *   - every directed value multiplied by 1 + jitter * U(-1, 1), so the two directions of a
 *     link differ;
 *   - device speeds uniform in [1 - spread, 1 + spread]; sites "city0", "city1", ...
 *   - every value rounded to 4 significant digits, so that written files stay readable.
 * Bandwidths stay within [min (1 - jitter), max (1 + jitter)] (clamped after rounding). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/internal.h"
#include "netmodel/links_internal.h"
#include "sched/sched_internal.h"

#define LH_EARTH_RADIUS_KM 6371.0
#define LH_FIBRE_KM_PER_MS 100.0
#define LH_WAN_BASE_MS 5.0
#define LH_LAN_MIN_MS 0.5
#define LH_LAN_MAX_MS 5.0
/* 1 Pbit/s: far beyond any NIC, and low enough that jitter cannot overflow anything. */
#define LH_INSTANCE_MAX_GBPS 1e6
#define LH_PI 3.14159265358979323846

/* Log-uniform in [lo, hi], clamped so that exp(log()) rounding cannot leave the range. */
static double lh_log_uniform(uint64_t *state, double lo, double hi) {
  double u = lh_sched_uniform(state);
  if (lo == hi)
    return lo;
  double v = exp(log(lo) + u * (log(hi) - log(lo)));
  return v < lo ? lo : v > hi ? hi : v;
}

/* 1 + jitter * U(-1, 1). */
static double lh_jitter(uint64_t *state, double jitter) {
  return 1.0 + jitter * (2.0 * lh_sched_uniform(state) - 1.0);
}

/* x to 4 significant digits, so that a written link file reads "114.1" rather than 17 digits
 * (the generator has no precision to lose). x > 0. Dividing an integer by an exact power of
 * ten gives the double nearest the 4-digit decimal, which the link writer prints as such. */
static double lh_round4(double x) {
  int e = (int)floor(log10(x)) - 3;
  double power = 1.0;
  for (int i = 0; i < (e < 0 ? -e : e) && i < 22; i++) /* exact up to 1e22 */
    power *= 10.0;
  return e < 0 ? round(x * power) / power : round(x / power) * power;
}

/* A city pair's capacity from its own stream, so that no C x C table is needed (C may be as
 * large as the device count) and the value does not depend on the order pairs are visited. */
static double lh_pair_capacity(uint64_t seed, int a, int b, double lo, double hi) {
  int x = a < b ? a : b, y = a < b ? b : a;
  uint64_t state = seed ^ (0xd1b54a32d192ed03ULL * ((uint64_t)x << 32 | (uint64_t)y) + 0x8cb92ba72f3d8dd7ULL);
  lh_sched_rand(&state); /* one step to spread nearby pairs apart */
  return lh_log_uniform(&state, lo, hi);
}

static double lh_clamp(double x, double lo, double hi) { return x < lo ? lo : x > hi ? hi : x; }

static lh_status lh_instance_check(const lh_sched_instance *in) {
  const char *fn = "lh_sched_random_instance";
  if (in->size < sizeof *in)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: instance->size is %zu, expected %zu (start from LH_SCHED_INSTANCE_INIT)",
                    fn, in->size, sizeof *in);
  if (in->devices < 1 || in->devices > LH_LINKS_MAX_DEVICES)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: devices is %d; it must be from 1 to %d", fn, in->devices,
                    LH_LINKS_MAX_DEVICES);
  if (in->cities < 1 || in->cities > in->devices)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: cities is %d; it must be from 1 to devices (%d)", fn, in->cities,
                    in->devices);
  /* Negated comparisons so that NaN fails them too. */
  if (!(in->min_uplink_gbps > 0 && in->min_uplink_gbps <= LH_INSTANCE_MAX_GBPS))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: min_uplink_gbps is %g; it must be > 0 and at most %g", fn,
                    in->min_uplink_gbps, LH_INSTANCE_MAX_GBPS);
  if (!(in->max_uplink_gbps >= in->min_uplink_gbps && in->max_uplink_gbps <= LH_INSTANCE_MAX_GBPS))
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "%s: max_uplink_gbps is %g; it must be at least min_uplink_gbps (%g) and at most %g", fn,
                    in->max_uplink_gbps, in->min_uplink_gbps, LH_INSTANCE_MAX_GBPS);
  if (!(in->jitter >= 0 && in->jitter < 1))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: jitter is %g; it must be >= 0 and < 1 (a fraction)", fn, in->jitter);
  if (!(in->speed_spread >= 0 && in->speed_spread < 1))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "%s: speed_spread is %g; it must be >= 0 and < 1 (a fraction)", fn,
                    in->speed_spread);
  return LH_SUCCESS;
}

/* city[d] for every device: one device per city, the rest by weight, then shuffled. */
static void lh_place_devices(uint64_t *state, int n, int cities, double *weight, int *city) {
  double total = 0;
  for (int c = 0; c < cities; c++) {
    weight[c] = -log(1.0 - lh_sched_uniform(state)); /* exponential(1): uneven sizes */
    total += weight[c];
  }
  for (int d = 0; d < n; d++) {
    if (d < cities) {
      city[d] = d;
      continue;
    }
    double u = lh_sched_uniform(state) * total, sum = 0;
    int c = 0;
    for (; c < cities - 1; c++) {
      sum += weight[c];
      if (u < sum)
        break;
    }
    city[d] = c;
  }
  for (int i = n - 1; i > 0; i--) {
    int j = lh_sched_below(state, i + 1);
    int t = city[i];
    city[i] = city[j];
    city[j] = t;
  }
}

lh_status lh_sched_random_instance(const lh_sched_instance *instance, lh_links **links) {
  lh_error_clear();
  if (!links)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_random_instance: links must not be NULL");
  *links = NULL;
  if (!instance)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_sched_random_instance: instance must not be NULL");
  LH_CHECK(lh_instance_check(instance));
  int n = instance->devices, cities = instance->cities;
  double lo = instance->min_uplink_gbps * LH_GBIT_BYTES, hi = instance->max_uplink_gbps * LH_GBIT_BYTES;
  double jitter = instance->jitter;
  /* Bandwidths are rounded in bits/s (the file's unit; /8 is exact), and rounding must not
   * take them outside the promised range. */
  double bw_min = lo * (1 - jitter), bw_max = hi * (1 + jitter);

  double *lat = lh_malloc((size_t)cities * sizeof *lat, "city latitudes");
  double *lon = lat ? lh_malloc((size_t)cities * sizeof *lon, "city longitudes") : NULL;
  double *weight = lon ? lh_malloc((size_t)cities * sizeof *weight, "city weights") : NULL;
  int *city = weight ? lh_malloc((size_t)n * sizeof *city, "device cities") : NULL;
  double *uplink = city ? lh_malloc((size_t)n * sizeof *uplink, "device uplinks") : NULL;
  lh_links *out = NULL;
  lh_status st = uplink ? LH_SUCCESS : LH_ERR_OUT_OF_MEMORY;
  if (st == LH_SUCCESS)
    st = lh_links_create(n, 0.0, 1.0, &out); /* placeholders: every link is set below */

  uint64_t state = instance->seed;
  if (st == LH_SUCCESS) {
    /* Uniform on the sphere: latitude = asin(U(-1, 1)). */
    for (int c = 0; c < cities; c++) {
      lat[c] = asin(2.0 * lh_sched_uniform(&state) - 1.0);
      lon[c] = 2.0 * LH_PI * lh_sched_uniform(&state);
    }
    lh_place_devices(&state, n, cities, weight, city);
    for (int d = 0; d < n; d++)
      uplink[d] = lh_log_uniform(&state, lo, hi);
  }
  for (int d = 0; d < n && st == LH_SUCCESS; d++) {
    char site[32];
    snprintf(site, sizeof site, "city%d", city[d]);
    double speed = instance->speed_spread > 0 ? lh_round4(lh_jitter(&state, instance->speed_spread)) : 1.0;
    st = lh_links_set_device(out, d, site, speed);
  }
  for (int i = 0; i < n && st == LH_SUCCESS; i++)
    for (int j = i + 1; j < n && st == LH_SUCCESS; j++) {
      int a = city[i], b = city[j];
      double latency_ms, bandwidth = uplink[i] < uplink[j] ? uplink[i] : uplink[j];
      if (a == b) {
        latency_ms = LH_LAN_MIN_MS + (LH_LAN_MAX_MS - LH_LAN_MIN_MS) * lh_sched_uniform(&state);
      } else {
        /* Haversine: accurate for small distances too, unlike acos of the dot product. */
        double dlat = lat[b] - lat[a], dlon = lon[b] - lon[a];
        double h = sin(dlat / 2) * sin(dlat / 2) + cos(lat[a]) * cos(lat[b]) * sin(dlon / 2) * sin(dlon / 2);
        double km = 2.0 * LH_EARTH_RADIUS_KM * asin(sqrt(h < 1 ? h : 1));
        latency_ms = LH_WAN_BASE_MS + km / LH_FIBRE_KM_PER_MS;
        double capacity = lh_pair_capacity(instance->seed, a, b, lo, hi);
        if (capacity < bandwidth)
          bandwidth = capacity;
      }
      /* Both directions share the base values and draw their own jitter. */
      double lat_ij = lh_round4(latency_ms * 1e-3 * lh_jitter(&state, jitter));
      double bw_ij = lh_clamp(lh_round4(8 * bandwidth * lh_jitter(&state, jitter)) / 8, bw_min, bw_max);
      double lat_ji = lh_round4(latency_ms * 1e-3 * lh_jitter(&state, jitter));
      double bw_ji = lh_clamp(lh_round4(8 * bandwidth * lh_jitter(&state, jitter)) / 8, bw_min, bw_max);
      st = lh_links_set(out, i, j, lat_ij, bw_ij);
      if (st == LH_SUCCESS)
        st = lh_links_set(out, j, i, lat_ji, bw_ji);
    }
  free(lat);
  free(lon);
  free(weight);
  free(city);
  free(uplink);
  if (st != LH_SUCCESS) {
    lh_links_free(out);
    return lh_error_context(st, "lh_sched_random_instance");
  }
  *links = out;
  return LH_SUCCESS;
}

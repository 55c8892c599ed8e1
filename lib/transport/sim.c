/* Simulated links: every directed pair behaves like a FIFO link of latency alpha and
 * bandwidth beta (transport.md). A message of B bytes posted at t leaves at
 * start = max(t, link free[, NIC free]), its last byte departs at start + B/beta and arrives
 * alpha later. Only the sender books its own links; the arrival time travels in the header. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "transport/transport_internal.h"

static void lh_format_bandwidth(double Bps, char *out, size_t cap) {
  double bits = Bps * 8;
  if (Bps <= 0)
    snprintf(out, cap, "unlimited");
  else if (bits >= 1e9)
    snprintf(out, cap, "%g Gbit/s", bits / 1e9);
  else if (bits >= 1e6)
    snprintf(out, cap, "%g Mbit/s", bits / 1e6);
  else
    snprintf(out, cap, "%g kbit/s", bits / 1e3);
}

static lh_status lh_sim_alloc(int n, int me, lh_sim **out) {
  lh_sim *s = lh_calloc(1, sizeof *s, "the link simulation");
  if (!s)
    return LH_ERR_OUT_OF_MEMORY;
  s->refs = 1;
  s->n = n;
  s->me = me;
  s->latency = lh_calloc((size_t)n * n, sizeof(double), "simulated latencies");
  s->bandwidth = lh_calloc((size_t)n * n, sizeof(double), "simulated bandwidths");
  s->uplink = lh_calloc((size_t)n, sizeof(double), "simulated uplinks");
  s->link_free = lh_calloc((size_t)n, sizeof(double), "simulated link clocks");
  pthread_mutex_init(&s->lock, NULL);
  if (!s->latency || !s->bandwidth || !s->uplink || !s->link_free) {
    lh_sim_release(s);
    return LH_ERR_OUT_OF_MEMORY;
  }
  *out = s;
  return LH_SUCCESS;
}

/* Copies the first n devices of a link matrix into the simulation. */
static lh_status lh_sim_load_links(lh_sim *s, const lh_links *links) {
  for (int i = 0; i < s->n; i++) {
    LH_CHECK(lh_links_get_uplink(links, i, &s->uplink[i]));
    for (int j = 0; j < s->n; j++)
      if (i != j)
        LH_CHECK(lh_links_get(links, i, j, &s->latency[(size_t)i * s->n + j], &s->bandwidth[(size_t)i * s->n + j]));
  }
  return LH_SUCCESS;
}

lh_status lh_sim_create(const lh_comm_config *config, int n, int me, lh_sim **sim) {
  *sim = NULL;
  if (!config->simulate)
    return LH_SUCCESS;
  const char *path = config->links_path ? config->links_path : lh_env_raw("LH_LINKS");
  const char *bw_text = config->sim_bandwidth ? config->sim_bandwidth : lh_env_raw("LH_SIM_BW");
  const char *lat_text = config->sim_latency ? config->sim_latency : lh_env_raw("LH_SIM_LAT");
  if (!path && !bw_text && !lat_text)
    return LH_SUCCESS;
  if (path && (bw_text || lat_text))
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "simulated links: both a link file (%s) and a uniform setting (LH_SIM_BW/LH_SIM_LAT) are "
                    "given; choose one",
                    path);

  lh_sim *s = NULL;
  LH_CHECK(lh_sim_alloc(n, me, &s));
  lh_status st = LH_SUCCESS;
  if (path) {
    lh_links *file = NULL;
    LH_CHECK_GOTO(lh_links_read_file(path, &file), st, fail);
    int devices = 0;
    lh_links_devices(file, &devices);
    if (devices < n) {
      lh_links_free(file);
      st = lh_error(LH_ERR_INVALID_ARGUMENT, "link file %s describes %d devices but there are %d ranks", path,
                    devices, n);
      goto fail;
    }
    st = lh_sim_load_links(s, file);
    lh_links_free(file);
    if (st != LH_SUCCESS)
      goto fail;
    snprintf(s->description, sizeof s->description, "links from %s", path);
  } else {
    double bw = 0, lat = 0;
    if (bw_text && lh_parse_bandwidth(bw_text, &bw) != LH_SUCCESS) {
      st = lh_error_context(LH_ERR_ENV, "LH_SIM_BW");
      goto fail;
    }
    if (lat_text && lh_parse_duration(lat_text, &lat) != LH_SUCCESS) {
      st = lh_error_context(LH_ERR_ENV, "LH_SIM_LAT");
      goto fail;
    }
    if (bw_text && !(bw > 0)) {
      st = lh_error(LH_ERR_ENV, "LH_SIM_BW='%s': the bandwidth must be positive", bw_text);
      goto fail;
    }
    for (size_t k = 0; k < (size_t)n * n; k++) {
      s->latency[k] = lat;
      s->bandwidth[k] = bw;
    }
    char bw_desc[32];
    lh_format_bandwidth(bw, bw_desc, sizeof bw_desc);
    snprintf(s->description, sizeof s->description, "uniform %s, %g ms", bw_desc, lat * 1e3);
  }
  /* The model as a link matrix, for lh_comm_links and the cost model. Unlimited bandwidth is
   * written as 1e15 bytes/s: the matrix format needs a finite number. */
  LH_CHECK_GOTO(lh_links_create(n, 0.0, 1e15, &s->links), st, fail);
  for (int i = 0; i < n; i++) {
    if (s->uplink[i] > 0)
      LH_CHECK_GOTO(lh_links_set_uplink(s->links, i, s->uplink[i]), st, fail);
    for (int j = 0; j < n; j++) {
      size_t k = (size_t)i * n + j;
      if (i != j)
        LH_CHECK_GOTO(lh_links_set(s->links, i, j, s->latency[k], s->bandwidth[k] > 0 ? s->bandwidth[k] : 1e15),
                      st, fail);
    }
  }
  *sim = s;
  return LH_SUCCESS;
fail:
  lh_sim_release(s);
  return st;
}

void lh_sim_release(lh_sim *sim) {
  if (!sim || --sim->refs > 0)
    return;
  free(sim->latency);
  free(sim->bandwidth);
  free(sim->uplink);
  free(sim->link_free);
  pthread_mutex_destroy(&sim->lock);
  lh_links_free(sim->links);
  free(sim);
}

void lh_sim_book(lh_sim *sim, int to, size_t bytes, double *depart, double *arrive) {
  lh_sim_book_after(sim, to, bytes, 0.0, depart, arrive);
}

void lh_sim_book_after(lh_sim *sim, int to, size_t bytes, double earliest, double *depart, double *arrive) {
  pthread_mutex_lock(&sim->lock);
  double now = lh_now();
  size_t k = (size_t)sim->me * sim->n + to;
  double bw = sim->bandwidth[k];
  double cap = sim->uplink[sim->me];
  double start = now > sim->link_free[to] ? now : sim->link_free[to];
  if (earliest > start)
    start = earliest;
  if (cap > 0) {
    /* A NIC cap: every outgoing link of this rank queues behind the same NIC. */
    if (sim->uplink_free > start)
      start = sim->uplink_free;
    if (bw <= 0 || cap < bw)
      bw = cap;
  }
  double wire = bw > 0 ? (double)bytes / bw : 0.0;
  *depart = start + wire;
  *arrive = *depart + sim->latency[k];
  sim->link_free[to] = *depart;
  if (cap > 0)
    sim->uplink_free = *depart;
  pthread_mutex_unlock(&sim->lock);
}

/* lh_allreduce: argument checks, algorithm choice, memory staging; the one-shot entry to the
 * compressed algorithms. */
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "collective/collective_internal.h"
#include "transport/transport_internal.h"

static const char *const lh_algo_names[] = {"auto",  "ring",      "mpi",       "qring",
                                            "shared_ring", "owner", "allgather", "powersgd"};

lh_status lh_allreduce_algo_name(lh_allreduce_algo algo, const char **name) {
  if (!name)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_allreduce_algo_name: name must not be NULL");
  if ((int)algo < 0 || algo >= LH_ALLREDUCE_ALGO_COUNT)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_allreduce_algo_name: unknown algorithm %d", (int)algo);
  *name = lh_algo_names[algo];
  return LH_SUCCESS;
}

lh_status lh_allreduce_algo_parse(const char *name, lh_allreduce_algo *algo) {
  if (!name || !algo)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_allreduce_algo_parse: name and algo must not be NULL");
  for (int i = 0; i < LH_ALLREDUCE_ALGO_COUNT; i++)
    if (!strcasecmp(name, lh_algo_names[i])) {
      *algo = (lh_allreduce_algo)i;
      return LH_SUCCESS;
    }
  return lh_error(LH_ERR_INVALID_ARGUMENT,
                  "unknown all-reduce algorithm '%s' (expected auto, ring, mpi, qring, shared_ring, owner, "
                  "allgather or powersgd)",
                  name);
}

/* MPI_Allreduce in pieces of at most INT_MAX elements. */
static lh_status lh_mpi_allreduce(lh_comm comm, float *data, size_t count, lh_reduce_op op) {
  for (size_t done = 0; done < count;) {
    size_t piece = count - done < (size_t)INT_MAX ? count - done : (size_t)INT_MAX;
    int rc = MPI_Allreduce(MPI_IN_PLACE, data + done, (int)piece, MPI_FLOAT, MPI_SUM, comm->ctrl);
    if (rc != MPI_SUCCESS)
      return lh_mpi_error(rc, "MPI_Allreduce");
    done += piece;
  }
  if (op == LH_OP_MEAN)
    lh_reduce_div_f32(data, (float)comm->size, count);
  return LH_SUCCESS;
}

/* A caller's config over the defaults. Configs from before the compression fields (whose
 * size ends at chunk_bytes) are accepted: the fields they lack keep their defaults. */
static lh_status lh_config_read(const lh_allreduce_config *config, lh_allreduce_config *cfg, const char *fn) {
  *cfg = (lh_allreduce_config)LH_ALLREDUCE_CONFIG_INIT;
  if (!config)
    return LH_SUCCESS;
  size_t oldest = offsetof(lh_allreduce_config, codec);
  if (config->size < oldest || config->size > sizeof *cfg)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "%s: config->size is %zu, expected %zu (start from LH_ALLREDUCE_CONFIG_INIT)", fn, config->size,
                    sizeof *cfg);
  memcpy(cfg, config, config->size);
  cfg->size = sizeof *cfg;
  return LH_SUCCESS;
}

lh_status lh_allreduce_choose(lh_comm comm, const lh_allreduce_config *config, size_t count,
                              lh_allreduce_algo *algo) {
  lh_error_clear();
  LH_CHECK(lh_comm_check(comm, "lh_allreduce_choose"));
  if (!algo)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_allreduce_choose: algo must not be NULL");
  lh_allreduce_config cfg;
  LH_CHECK(lh_config_read(config, &cfg, "lh_allreduce_choose"));
  lh_engine e;
  LH_CHECK(lh_engine_init(&e, comm, &cfg, count));
  *algo = e.algo;
  lh_engine_release(&e);
  return LH_SUCCESS;
}

/* Checks the arguments and builds the engine; every failure is recorded, not returned, so
 * that the rank still joins the agreement and no other rank is left waiting. */
static lh_status lh_prepare(lh_comm comm, const float *sendbuf, float *recvbuf, size_t count,
                            const lh_allreduce_config *config, lh_allreduce_config *cfg, lh_engine *e) {
  memset(e, 0, sizeof *e);
  LH_CHECK(lh_config_read(config, cfg, "lh_allreduce"));
  if (count > 0 && (!sendbuf || !recvbuf))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_allreduce: sendbuf and recvbuf must not be NULL for %zu elements",
                    count);
  if (cfg->op != LH_OP_SUM && cfg->op != LH_OP_MEAN)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_allreduce: unknown op %d", (int)cfg->op);
  if (count > ((size_t)1 << 44))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_allreduce: count %zu is not plausible", count);
  if (cfg->error_feedback == 1)
    return lh_error(LH_ERR_INVALID_ARGUMENT,
                    "lh_allreduce: error_feedback = 1 needs state kept between calls; use an lh_reducer");
  if (cfg->error_feedback != 0 && cfg->error_feedback != -1)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_allreduce: error_feedback is %d (expected -1, 0 or 1)",
                    cfg->error_feedback);
  cfg->error_feedback = 0;
  LH_CHECK(lh_engine_init(e, comm, cfg, count));
  if (e->algo == LH_ALLREDUCE_POWERSGD)
    return lh_error(LH_ERR_NOT_SUPPORTED,
                    "lh_allreduce: powersgd needs a matrix shape and state between steps; use an lh_reducer with "
                    "lh_tensor.rows");
  if (e->algo == LH_ALLREDUCE_MPI && comm->sim)
    return lh_error(LH_ERR_NOT_SUPPORTED,
                    "lh_allreduce: the mpi algorithm moves its bytes inside MPI, where simulated links "
                    "cannot see them; compare against it on the namespace testbed (examples/wan/testbed.sh) "
                    "with real shaped links, or unset LH_SIM_BW/LH_SIM_LAT/LH_LINKS");
  if (count > 0 && lh_is_device_pointer(recvbuf) != lh_is_device_pointer(sendbuf))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_allreduce: sendbuf and recvbuf must both be host or both device memory");
  if (e->algo != LH_ALLREDUCE_RING && e->algo != LH_ALLREDUCE_MPI) /* codecs refuse them mid-way */
    LH_CHECK(lh_check_finite(lh_is_device_pointer(sendbuf), sendbuf, count, "lh_allreduce: sendbuf"));
  return LH_SUCCESS;
}

/* The compressed algorithms, once, without error feedback (nowhere to keep a residual). */
static lh_status lh_compressed_once(lh_engine *e, const float *sendbuf, float *recvbuf, size_t count) {
  int on_device = lh_is_device_pointer(recvbuf);
  e->on_device = on_device;
  LH_CHECK(lh_copy_f32(on_device, recvbuf, sendbuf, count));
  return lh_engine_run(e, recvbuf, count, NULL);
}

static lh_status lh_plain_allreduce(lh_comm comm, const float *sendbuf, float *recvbuf, size_t count,
                                    const lh_allreduce_config *cfg, lh_allreduce_algo algo);

lh_status lh_allreduce(lh_comm comm, const float *sendbuf, float *recvbuf, size_t count,
                       const lh_allreduce_config *config) {
  lh_error_clear();
  LH_CHECK(lh_comm_check(comm, "lh_allreduce"));
  lh_allreduce_config cfg;
  lh_engine e;
  lh_status st = lh_prepare(comm, sendbuf, recvbuf, count, config, &cfg, &e);
  char detail[512];
  snprintf(detail, sizeof detail, "%s", st != LH_SUCCESS ? lh_last_error() : "");
  /* Every rank must agree, or the ring would pair messages of different collectives. */
  long long values[20];
  const char *names[20];
  int k = lh_engine_agreement(&e, values, names, 16);
  values[k] = st == LH_SUCCESS;
  names[k++] = "verdicts on their arguments (a rank refused its own)";
  values[k] = (long long)count;
  names[k++] = "counts";
  lh_status agreed = lh_comm_agree(comm, values, k, names, "lh_allreduce");
  if (st == LH_SUCCESS)
    st = agreed;
  else
    lh_error(st, "%s", detail);
  if (st == LH_SUCCESS && count > 0) {
    if (e.algo == LH_ALLREDUCE_RING || e.algo == LH_ALLREDUCE_MPI)
      st = lh_plain_allreduce(comm, sendbuf, recvbuf, count, &e.cfg, e.algo);
    else
      st = lh_compressed_once(&e, sendbuf, recvbuf, count);
  }
  lh_engine_release(&e);
  return st;
}

static lh_status lh_plain_allreduce(lh_comm comm, const float *sendbuf, float *recvbuf, size_t count,
                                    const lh_allreduce_config *cfgp, lh_allreduce_algo algo) {
  lh_allreduce_config cfg = *cfgp;
  size_t bytes = count * sizeof(float);
  int on_device = lh_is_device_pointer(recvbuf);
  if (on_device != lh_is_device_pointer(sendbuf))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_allreduce: sendbuf and recvbuf must both be host or both device memory");
  /* Work in place on recvbuf; device buffers on a host-only path go through a host copy. */
  int work_on_device = on_device && algo == LH_ALLREDUCE_RING && comm->ops->device_memory;
  float *work = recvbuf;
  if (on_device && !work_on_device) {
    LH_CHECK(lh_host_pinned_alloc((void **)&work, bytes));
  }
  lh_status st = LH_SUCCESS;
  if (work != recvbuf) {
    LH_CHECK_GOTO(lh_copy_to_host(work, sendbuf, bytes), st, done);
  } else if (sendbuf != recvbuf) {
    if (on_device) {
      /* both on the device and the backend moves device memory: device-to-device copy */
      float *host = NULL;
      LH_CHECK_GOTO(lh_host_pinned_alloc((void **)&host, bytes), st, done);
      st = lh_copy_to_host(host, sendbuf, bytes);
      if (st == LH_SUCCESS)
        st = lh_copy_to_device(recvbuf, host, bytes);
      lh_host_pinned_free(host);
      if (st != LH_SUCCESS)
        goto done;
    } else {
      memmove(recvbuf, sendbuf, bytes);
    }
  }
  if (algo == LH_ALLREDUCE_MPI)
    st = lh_mpi_allreduce(comm, work, count, cfg.op);
  else
    st = lh_ring_allreduce(comm, work, count, cfg.op, cfg.chunk_bytes, work_on_device);
  if (st == LH_SUCCESS && work != recvbuf)
    st = lh_copy_to_device(recvbuf, work, bytes);
done:
  if (work != recvbuf)
    lh_host_pinned_free(work);
  return st;
}

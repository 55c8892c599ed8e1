/* lh_allreduce: argument checks, algorithm choice, memory staging. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "collective/collective_internal.h"
#include "transport/transport_internal.h"

static const char *const lh_algo_names[] = {"auto", "ring", "mpi"};

lh_status lh_allreduce_algo_name(lh_allreduce_algo algo, const char **name) {
  if (!name)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_allreduce_algo_name: name must not be NULL");
  if ((int)algo < 0 || (int)algo > LH_ALLREDUCE_MPI)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_allreduce_algo_name: unknown algorithm %d", (int)algo);
  *name = lh_algo_names[algo];
  return LH_SUCCESS;
}

lh_status lh_allreduce_algo_parse(const char *name, lh_allreduce_algo *algo) {
  if (!name || !algo)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_allreduce_algo_parse: name and algo must not be NULL");
  for (int i = 0; i <= LH_ALLREDUCE_MPI; i++)
    if (!strcasecmp(name, lh_algo_names[i])) {
      *algo = (lh_allreduce_algo)i;
      return LH_SUCCESS;
    }
  return lh_error(LH_ERR_INVALID_ARGUMENT, "unknown all-reduce algorithm '%s' (expected auto, ring or mpi)", name);
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

lh_status lh_allreduce(lh_comm comm, const float *sendbuf, float *recvbuf, size_t count,
                       const lh_allreduce_config *config) {
  lh_error_clear();
  LH_CHECK(lh_comm_check(comm, "lh_allreduce"));
  lh_allreduce_config cfg = LH_ALLREDUCE_CONFIG_INIT;
  if (config) {
    if (config->size < sizeof cfg)
      return lh_error(LH_ERR_INVALID_ARGUMENT,
                      "lh_allreduce: config->size is %zu, expected %zu (start from LH_ALLREDUCE_CONFIG_INIT)",
                      config->size, sizeof cfg);
    cfg = *config;
  }
  if (count > 0 && (!sendbuf || !recvbuf))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_allreduce: sendbuf and recvbuf must not be NULL for %zu elements",
                    count);
  if ((int)cfg.algo < 0 || (int)cfg.algo > LH_ALLREDUCE_MPI)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_allreduce: unknown algorithm %d", (int)cfg.algo);
  if (cfg.op != LH_OP_SUM && cfg.op != LH_OP_MEAN)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_allreduce: unknown op %d", (int)cfg.op);
  if (cfg.chunk_bytes == 0)
    LH_CHECK(lh_env_size("LH_RING_CHUNK_BYTES", &cfg.chunk_bytes));
  if (cfg.chunk_bytes < sizeof(float))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_allreduce: chunk_bytes %zu is smaller than one float",
                    cfg.chunk_bytes);
  if (count > ((size_t)1 << 44))
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_allreduce: count %zu is not plausible", count);
  lh_allreduce_algo algo = cfg.algo == LH_ALLREDUCE_AUTO ? LH_ALLREDUCE_RING : cfg.algo;

  /* Every rank must agree, or the ring would pair messages of different collectives. */
  const long long args[3] = {(long long)count, (long long)algo, (long long)cfg.op};
  static const char *const names[3] = {"counts", "algorithms", "ops"};
  LH_CHECK(lh_comm_agree(comm, args, 3, names, "lh_allreduce"));

  if (algo == LH_ALLREDUCE_MPI && comm->sim)
    return lh_error(LH_ERR_NOT_SUPPORTED,
                    "lh_allreduce: the mpi algorithm moves its bytes inside MPI, where simulated links "
                    "cannot see them; compare against it on the namespace testbed (examples/wan/testbed.sh) "
                    "with real shaped links, or unset LH_SIM_BW/LH_SIM_LAT/LH_LINKS");
  if (count == 0)
    return LH_SUCCESS;

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

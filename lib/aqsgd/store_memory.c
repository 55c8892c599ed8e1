/* The in-memory store kinds: HOST (host memory) and DEVICE (CUDA device memory). Both hold
 * capacity x row_bytes bytes, zeroed, from creation to free; row_bytes = 0 holds nothing. */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "aqsgd/store_internal.h"
#include "common/internal.h"

#ifdef LH_HAVE_CUDA
#include <cuda_runtime.h>
#endif

static size_t buffer_bytes(lh_aq_store store) { return store->config.capacity * store->config.row_bytes; }

/* ---- HOST ------------------------------------------------------------------------------ */

/* An anonymous mapping rather than malloc: it is page aligned (rows of the usual sizes then
 * start on cache-line and vector boundaries) and zero-filled by the kernel on first touch, so
 * a store sized for the whole data set costs memory only for the rows actually used, and
 * creating it costs no pass over the buffer. */
static lh_status host_open(lh_aq_store store) {
  size_t bytes = buffer_bytes(store);
  if (bytes == 0)
    return LH_SUCCESS;
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    return lh_error(LH_ERR_OUT_OF_MEMORY,
                    "lh_aq_store_create: could not reserve %zu bytes of host memory for a HOST store (%zu rows x "
                    "%zu bytes): %s; use a smaller capacity or an MMAP store",
                    bytes, store->config.capacity, store->config.row_bytes, strerror(errno));
  store->base = p;
  return LH_SUCCESS;
}

static void host_close(lh_aq_store store) {
  if (store->base)
    munmap(store->base, buffer_bytes(store));
  store->base = NULL;
}

const lh_aq_store_ops lh_aq_store_host_ops = {"host", host_open, host_close, NULL};

/* ---- DEVICE ---------------------------------------------------------------------------- */

#ifdef LH_HAVE_CUDA
static lh_status device_open(lh_aq_store store) {
  int devices = 0;
  cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess || devices == 0) {
    cudaGetLastError(); /* do not leave the failure for the caller's next CUDA call */
    return lh_error(LH_ERR_NOT_SUPPORTED,
                    "lh_aq_store_create: a DEVICE store needs a CUDA device, and none is visible (%s); use "
                    "LH_AQ_STORE_HOST or LH_AQ_STORE_MMAP",
                    e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
  }
  store->on_device = 1;
  size_t bytes = buffer_bytes(store);
  if (bytes == 0)
    return LH_SUCCESS;
  lh_status st = lh_device_alloc(&store->base, bytes);
  if (st != LH_SUCCESS)
    return lh_error_context(st, "lh_aq_store_create: a DEVICE store of %zu rows x %zu bytes",
                            store->config.capacity, store->config.row_bytes);
  e = cudaMemset(store->base, 0, bytes);
  if (e != cudaSuccess)
    return lh_error(LH_ERR_CUDA, "lh_aq_store_create: zeroing the DEVICE store's %zu bytes: %s", bytes,
                    cudaGetErrorString(e));
  return LH_SUCCESS;
}

static void device_close(lh_aq_store store) {
  lh_device_free(store->base); /* NULL is fine */
  store->base = NULL;
}
#else
/* Not reached: lh_aq_store_create refuses DEVICE in a build without CUDA. */
static lh_status device_open(lh_aq_store store) {
  (void)store;
  return lh_error(LH_ERR_NOT_SUPPORTED, "lh_aq_store_create: a DEVICE store needs CUDA, but Longhaul was built "
                                        "without it (LH_WITH_CUDA=OFF)");
}

static void device_close(lh_aq_store store) { (void)store; }
#endif

const lh_aq_store_ops lh_aq_store_device_ops = {"device", device_open, device_close, NULL};

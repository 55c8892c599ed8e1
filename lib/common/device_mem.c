/* Host/device memory helpers. With CUDA: pointer classification, pinned staging buffers and
 * copies. Without: every pointer is host memory, and asking for device work is refused. */
#include <stdlib.h>

#include "common/internal.h"

#ifdef LH_HAVE_CUDA
#include <cuda_runtime.h>

int lh_is_device_pointer(const void *ptr) {
  if (!ptr)
    return 0;
  struct cudaPointerAttributes attr;
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    cudaGetLastError(); /* plain host memory may report an error on old drivers: clear it */
    return 0;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

lh_status lh_host_pinned_alloc(void **ptr, size_t bytes) {
  cudaError_t e = cudaMallocHost(ptr, bytes ? bytes : 1);
  if (e != cudaSuccess)
    return lh_error(LH_ERR_CUDA, "cudaMallocHost(%zu bytes) for a staging buffer: %s", bytes,
                    cudaGetErrorString(e));
  return LH_SUCCESS;
}

void lh_host_pinned_free(void *ptr) {
  if (ptr)
    cudaFreeHost(ptr);
}

lh_status lh_copy_to_host(void *dst, const void *src_device, size_t bytes) {
  cudaError_t e = cudaMemcpy(dst, src_device, bytes, cudaMemcpyDeviceToHost);
  if (e != cudaSuccess)
    return lh_error(LH_ERR_CUDA, "copying %zu bytes from the device: %s", bytes, cudaGetErrorString(e));
  return LH_SUCCESS;
}

lh_status lh_copy_to_device(void *dst_device, const void *src, size_t bytes) {
  cudaError_t e = cudaMemcpy(dst_device, src, bytes, cudaMemcpyHostToDevice);
  if (e != cudaSuccess)
    return lh_error(LH_ERR_CUDA, "copying %zu bytes to the device: %s", bytes, cudaGetErrorString(e));
  return LH_SUCCESS;
}

lh_status lh_device_alloc(void **ptr, size_t bytes) {
  cudaError_t e = cudaMalloc(ptr, bytes ? bytes : 1);
  if (e != cudaSuccess)
    return lh_error(LH_ERR_CUDA, "cudaMalloc(%zu bytes): %s", bytes, cudaGetErrorString(e));
  return LH_SUCCESS;
}

void lh_device_free(void *ptr) {
  if (ptr)
    cudaFree(ptr);
}

#else

lh_status lh_device_alloc(void **ptr, size_t bytes) {
  (void)bytes;
  *ptr = NULL;
  return lh_error(LH_ERR_NOT_SUPPORTED, "device memory asked for, but Longhaul was built without CUDA");
}

void lh_device_free(void *ptr) { (void)ptr; }

int lh_is_device_pointer(const void *ptr) {
  (void)ptr;
  return 0;
}

lh_status lh_host_pinned_alloc(void **ptr, size_t bytes) {
  *ptr = malloc(bytes ? bytes : 1);
  return *ptr ? LH_SUCCESS : lh_error(LH_ERR_OUT_OF_MEMORY, "could not allocate %zu bytes", bytes);
}

void lh_host_pinned_free(void *ptr) { free(ptr); }

lh_status lh_copy_to_host(void *dst, const void *src_device, size_t bytes) {
  (void)dst; (void)src_device; (void)bytes;
  return lh_error(LH_ERR_NOT_SUPPORTED, "device memory given, but Longhaul was built without CUDA");
}

lh_status lh_copy_to_device(void *dst_device, const void *src, size_t bytes) {
  (void)dst_device; (void)src; (void)bytes;
  return lh_error(LH_ERR_NOT_SUPPORTED, "device memory given, but Longhaul was built without CUDA");
}
#endif

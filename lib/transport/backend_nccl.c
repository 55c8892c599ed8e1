/* The nccl backend: payload chunks as ncclSend/ncclRecv on device buffers.
 *
 * NCCL point-to-point calls block on the GPU until the peer's matching call runs, and calls
 * on one communicator execute in issue order. A ring step that issued its send and its
 * receive separately would therefore deadlock (every rank's send waits on a receive queued
 * behind its neighbour's send). So posts are queued and issued together, inside one
 * ncclGroupStart/End, at the next flush (every progress pass). Tags do not exist in NCCL:
 * messages between two ranks match in posting order. The unique id travels over the control
 * communicator (MPI). */
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>
#include <nccl.h>

#include "transport/transport_internal.h"

typedef struct lh_nccl_event {
  cudaEvent_t event;
  int refs; /* operations of the group still holding it */
} lh_nccl_event;

typedef struct {
  int is_send;
  void *buf;
  size_t bytes;
  int peer;
  lh_nccl_event **slot; /* where the issued group's event goes (the handle) */
} lh_nccl_op;

typedef struct {
  ncclComm_t comm;
  cudaStream_t stream;
  lh_nccl_op *pending;
  int npending, cap;
} lh_nccl_state;

static lh_status lh_nccl_fail(ncclResult_t r, const char *what) {
  return lh_error(LH_ERR_TRANSPORT, "%s failed: %s (%s)", what, ncclGetErrorString(r), ncclGetLastError(NULL));
}

static lh_status lh_nccl_create(struct lh_comm_s *comm, void **state) {
  lh_nccl_state *s = lh_calloc(1, sizeof *s, "the nccl backend");
  if (!s)
    return LH_ERR_OUT_OF_MEMORY;
  ncclUniqueId id;
  if (comm->rank == 0) {
    ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) {
      free(s);
      return lh_nccl_fail(r, "ncclGetUniqueId");
    }
  }
  int rc = MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, comm->ctrl);
  if (rc != MPI_SUCCESS) {
    free(s);
    return lh_mpi_error(rc, "MPI_Bcast of the NCCL id");
  }
  cudaError_t ce = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking);
  if (ce != cudaSuccess) {
    free(s);
    return lh_error(LH_ERR_CUDA, "cudaStreamCreate for the nccl backend: %s", cudaGetErrorString(ce));
  }
  ncclResult_t r = ncclCommInitRank(&s->comm, comm->size, id, comm->rank);
  if (r != ncclSuccess) {
    cudaStreamDestroy(s->stream);
    free(s);
    return lh_nccl_fail(r, "ncclCommInitRank (NCCL refuses two ranks on one GPU)");
  }
  *state = s;
  return LH_SUCCESS;
}

static void lh_nccl_destroy(void *state) {
  lh_nccl_state *s = state;
  if (!s)
    return;
  ncclCommDestroy(s->comm);
  cudaStreamDestroy(s->stream);
  free(s->pending);
  free(s);
}

static lh_status lh_nccl_queue(lh_nccl_state *s, int is_send, void *buf, size_t bytes, int peer, lh_be_handle *h) {
  if (s->npending == s->cap) {
    int cap = s->cap ? 2 * s->cap : 16;
    lh_nccl_op *grown = realloc(s->pending, (size_t)cap * sizeof *grown);
    if (!grown)
      return lh_error(LH_ERR_OUT_OF_MEMORY, "growing the nccl post queue");
    s->pending = grown;
    s->cap = cap;
  }
  h->ptr = NULL; /* becomes the group's event at flush */
  s->pending[s->npending++] = (lh_nccl_op){is_send, buf, bytes, peer, (lh_nccl_event **)&h->ptr};
  return LH_SUCCESS;
}

static lh_status lh_nccl_post_send(void *state, const void *buf, size_t bytes, int peer, int tag, lh_be_handle *h) {
  (void)tag;
  return lh_nccl_queue(state, 1, (void *)buf, bytes, peer, h);
}

static lh_status lh_nccl_post_recv(void *state, void *buf, size_t bytes, int peer, int tag, lh_be_handle *h) {
  (void)tag;
  return lh_nccl_queue(state, 0, buf, bytes, peer, h);
}

static lh_status lh_nccl_flush(void *state) {
  lh_nccl_state *s = state;
  if (s->npending == 0)
    return LH_SUCCESS;
  lh_nccl_event *ev = lh_calloc(1, sizeof *ev, "an nccl event");
  if (!ev)
    return LH_ERR_OUT_OF_MEMORY;
  ncclResult_t r = ncclGroupStart();
  for (int i = 0; i < s->npending && r == ncclSuccess; i++) {
    lh_nccl_op *op = &s->pending[i];
    r = op->is_send ? ncclSend(op->buf, op->bytes, ncclChar, op->peer, s->comm, s->stream)
                    : ncclRecv(op->buf, op->bytes, ncclChar, op->peer, s->comm, s->stream);
  }
  ncclResult_t end = ncclGroupEnd();
  if (r == ncclSuccess)
    r = end;
  if (r != ncclSuccess) {
    free(ev);
    s->npending = 0;
    return lh_nccl_fail(r, "issuing queued ncclSend/ncclRecv");
  }
  cudaError_t ce = cudaEventCreateWithFlags(&ev->event, cudaEventDisableTiming);
  if (ce == cudaSuccess)
    ce = cudaEventRecord(ev->event, s->stream);
  if (ce != cudaSuccess) {
    free(ev);
    s->npending = 0;
    return lh_error(LH_ERR_CUDA, "recording an nccl completion event: %s", cudaGetErrorString(ce));
  }
  ev->refs = s->npending;
  for (int i = 0; i < s->npending; i++)
    *s->pending[i].slot = ev;
  s->npending = 0;
  return LH_SUCCESS;
}

static void lh_nccl_release(lh_be_handle *h) {
  lh_nccl_event *ev = h->ptr;
  if (ev && --ev->refs == 0) {
    cudaEventDestroy(ev->event);
    free(ev);
  }
  h->ptr = NULL;
}

static lh_status lh_nccl_test(void *state, lh_be_handle *h, int *done) {
  (void)state;
  *done = 0;
  lh_nccl_event *ev = h->ptr;
  if (!ev)
    return LH_SUCCESS; /* not issued yet: the next flush issues it */
  cudaError_t ce = cudaEventQuery(ev->event);
  if (ce == cudaErrorNotReady)
    return LH_SUCCESS;
  if (ce != cudaSuccess)
    return lh_error(LH_ERR_CUDA, "waiting for ncclSend/ncclRecv: %s", cudaGetErrorString(ce));
  *done = 1;
  lh_nccl_release(h);
  return LH_SUCCESS;
}

static void lh_nccl_abandon(void *state, lh_be_handle *h, int is_recv) {
  lh_nccl_state *s = state;
  (void)is_recv;
  /* A queued post is dropped; an issued one cannot be recalled, so the communicator is
   * aborted: NCCL would otherwise wait for the peer forever. */
  for (int i = 0; i < s->npending; i++)
    if (s->pending[i].slot == (lh_nccl_event **)&h->ptr) {
      /* keep the queue in posting order: that order is what matches messages */
      memmove(&s->pending[i], &s->pending[i + 1], (size_t)(s->npending - i - 1) * sizeof *s->pending);
      s->npending--;
      return;
    }
  if (h->ptr) {
    ncclCommAbort(s->comm);
    s->comm = NULL;
    lh_nccl_release(h);
  }
}

const lh_backend_ops lh_backend_nccl_ops = {
  .name = "nccl",
  .host_memory = 0,
  .device_memory = 1,
  .create = lh_nccl_create,
  .destroy = lh_nccl_destroy,
  .post_send = lh_nccl_post_send,
  .post_recv = lh_nccl_post_recv,
  .flush = lh_nccl_flush,
  .test = lh_nccl_test,
  .abandon = lh_nccl_abandon,
};

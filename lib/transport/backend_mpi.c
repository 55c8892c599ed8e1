/* The mpi backend: payload chunks as MPI_Isend/MPI_Irecv on a duplicate of the control
 * communicator, so payloads and headers are matched independently. Host memory only: Open
 * MPI here is not CUDA-aware, so the core stages device buffers through pinned host memory. */
#include <stdlib.h>

#include "transport/transport_internal.h"

typedef struct {
  MPI_Comm data;
} lh_mpi_state;

lh_status lh_mpi_error(int code, const char *what) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  return lh_error(LH_ERR_TRANSPORT, "%s failed: %s", what, text);
}

static lh_status lh_mpi_create(struct lh_comm_s *comm, void **state) {
  lh_mpi_state *s = lh_calloc(1, sizeof *s, "the mpi backend");
  if (!s)
    return LH_ERR_OUT_OF_MEMORY;
  int rc = MPI_Comm_dup(comm->ctrl, &s->data);
  if (rc != MPI_SUCCESS) {
    free(s);
    return lh_mpi_error(rc, "MPI_Comm_dup");
  }
  MPI_Comm_set_errhandler(s->data, MPI_ERRORS_RETURN);
  *state = s;
  return LH_SUCCESS;
}

static void lh_mpi_destroy(void *state) {
  lh_mpi_state *s = state;
  if (!s)
    return;
  MPI_Comm_free(&s->data);
  free(s);
}

static lh_status lh_mpi_post_send(void *state, const void *buf, size_t bytes, int peer, int tag, lh_be_handle *h) {
  lh_mpi_state *s = state;
  int rc = MPI_Isend(buf, (int)bytes, MPI_BYTE, peer, tag, s->data, &h->mpi);
  return rc == MPI_SUCCESS ? LH_SUCCESS : lh_mpi_error(rc, "MPI_Isend");
}

static lh_status lh_mpi_post_recv(void *state, void *buf, size_t bytes, int peer, int tag, lh_be_handle *h) {
  lh_mpi_state *s = state;
  int rc = MPI_Irecv(buf, (int)bytes, MPI_BYTE, peer, tag, s->data, &h->mpi);
  return rc == MPI_SUCCESS ? LH_SUCCESS : lh_mpi_error(rc, "MPI_Irecv");
}

static lh_status lh_mpi_test(void *state, lh_be_handle *h, int *done) {
  (void)state;
  MPI_Status st;
  int rc = MPI_Test(&h->mpi, done, &st);
  return rc == MPI_SUCCESS ? LH_SUCCESS : lh_mpi_error(rc, "MPI_Test");
}

static void lh_mpi_abandon(void *state, lh_be_handle *h, int is_recv) {
  (void)state;
  if (h->mpi == MPI_REQUEST_NULL)
    return;
  if (is_recv)
    MPI_Cancel(&h->mpi);
  MPI_Request_free(&h->mpi);
}

const lh_backend_ops lh_backend_mpi_ops = {
  .name = "mpi",
  .host_memory = 1,
  .device_memory = 0,
  .create = lh_mpi_create,
  .destroy = lh_mpi_destroy,
  .post_send = lh_mpi_post_send,
  .post_recv = lh_mpi_post_recv,
  .flush = NULL,
  .test = lh_mpi_test,
  .abandon = lh_mpi_abandon,
};

// The transport and the all-reduce on device buffers, under mpirun (any number of ranks; ranks
// may share one GPU):
//   - the mpi backend, which stages device buffers through pinned host memory: messages
//     around the ring of ranks between device and host buffers, and lh_allreduce on device
//     buffers, checked against values computed on the host;
//   - the nccl backend on a one-rank communicator per process (MPI_COMM_SELF: NCCL refuses
//     two ranks on one GPU): device messages to self, one- and many-chunk, the one-rank
//     all-reduce, and that host buffers are refused.
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <longhaul/longhaul.h>

#include "mpi/mpi_test.h"

#include "gpu/gpu_test.h"

namespace {

// Real transfers only: simulated links are not what these tests are about, and a timeout
// well inside ctest's turns a hang into a failure that names the peer.
lh_comm_config Config(lh_backend backend) {
  lh_comm_config config = LH_COMM_CONFIG_INIT;
  config.backend = backend;
  config.simulate = 0;
  config.timeout_s = 60.0;
  return config;
}

unsigned char TestByte(uint64_t seed, int rank, size_t i) {
  return static_cast<unsigned char>(lh_test_hash(seed, static_cast<uint64_t>(rank), i) >> 56);
}

// Index of the first byte that differs, or -1.
long long FirstDifference(const std::vector<unsigned char> &a, const std::vector<unsigned char> &b) {
  for (size_t i = 0; i < a.size() && i < b.size(); i++)
    if (a[i] != b[i])
      return static_cast<long long>(i);
  return a.size() == b.size() ? -1 : static_cast<long long>(a.size() < b.size() ? a.size() : b.size());
}

bool HaveNccl() {
  lh_build_features info = LH_BUILD_FEATURES_INIT;
  return lh_build_info(&info) == LH_SUCCESS && info.has_nccl;
}

// ---- mpi backend: device buffers staged through pinned host memory -------------------------

// Each rank sends to its right neighbour and receives from its left (to and from itself on
// one rank), in every pairing of device and host memory: the sender stages a device buffer
// before the send, the receiver copies into a device buffer when the receive completes.
TEST(GpuMpiBackend, MessagesBetweenDeviceAndHostBuffers) {
  lh_comm_config config = Config(LH_BACKEND_MPI);
  config.chunk_bytes = 4096;  // the minimum: larger messages go as several chunks
  CommGuard guard;
  LH_ASSERT_OK(lh_comm_create(&config, &guard.comm));
  lh_comm comm = guard.comm;
  int rank = 0, size = 0;
  LH_ASSERT_OK(lh_comm_rank(comm, &rank));
  LH_ASSERT_OK(lh_comm_size(comm, &size));
  const int right = (rank + 1) % size, left = (rank + size - 1) % size;

  const size_t sizes[] = {0, 1, 4096, 3 * 4096 + 5, (size_t{1} << 20) + 3};
  const char *const modes[] = {"device to device", "host to device", "device to host"};
  int tag = 0;
  for (int mode = 0; mode < 3; mode++) {
    const bool send_on_device = mode != 1, recv_on_device = mode != 2;
    for (size_t bytes : sizes) {
      SCOPED_TRACE(std::string(modes[mode]) + ", " + std::to_string(bytes) + " bytes");
      const uint64_t seed = 1000 + static_cast<uint64_t>(tag);
      std::vector<unsigned char> mine(bytes), expected(bytes), got(bytes, 0xA5);
      for (size_t i = 0; i < bytes; i++) {
        mine[i] = TestByte(seed, rank, i);
        expected[i] = TestByte(seed, left, i);
      }
      DeviceBuffer dev_send(bytes), dev_recv(bytes);
      ASSERT_CUDA(dev_send.error());
      ASSERT_CUDA(dev_recv.error());
      ASSERT_CUDA(dev_send.Upload(mine.data()));
      ASSERT_CUDA(dev_recv.Upload(got.data()));  // poison: a receive that writes nothing shows
      std::vector<unsigned char> host_send = mine, host_recv = got;
      void *send_buf = send_on_device ? dev_send.get() : host_send.data();
      void *recv_buf = recv_on_device ? dev_recv.get() : host_recv.data();

      lh_request requests[2] = {nullptr, nullptr};
      LH_ASSERT_OK(lh_irecv(comm, recv_buf, bytes, left, tag, &requests[0]));
      LH_ASSERT_OK(lh_isend(comm, send_buf, bytes, right, tag, &requests[1]));
      LH_ASSERT_OK(lh_waitall(2, requests));
      tag++;

      if (recv_on_device)
        ASSERT_CUDA(dev_recv.Download(got.data()));
      else
        got = host_recv;
      EXPECT_EQ(FirstDifference(got, expected), -1) << "received bytes differ from rank " << left << "'s";
      // Staging copies the caller's buffer; it must never write to it.
      std::vector<unsigned char> after(bytes);
      if (send_on_device)
        ASSERT_CUDA(dev_send.Download(after.data()));
      else
        after = host_send;
      EXPECT_EQ(FirstDifference(after, mine), -1) << "the send buffer changed";
    }
  }
}

// lh_allreduce on device buffers: the values have 20 significant bits, so the sum over a
// few ranks is exact in any order and the host can compute the expected bits.
TEST(GpuMpiBackend, AllreduceOnDeviceBuffers) {
  CommGuard guard;
  lh_comm_config config = Config(LH_BACKEND_MPI);
  LH_ASSERT_OK(lh_comm_create(&config, &guard.comm));
  lh_comm comm = guard.comm;
  int rank = 0, size = 0;
  LH_ASSERT_OK(lh_comm_rank(comm, &rank));
  LH_ASSERT_OK(lh_comm_size(comm, &size));

  const size_t counts[] = {1, 3, 1000, 262147};
  const lh_allreduce_algo algos[] = {LH_ALLREDUCE_RING, LH_ALLREDUCE_MPI};
  const lh_reduce_op ops[] = {LH_OP_SUM, LH_OP_MEAN};
  uint64_t seed = 5000;
  for (lh_allreduce_algo algo : algos)
    for (lh_reduce_op op : ops)
      for (size_t count : counts)
        for (int in_place = 0; in_place < 2; in_place++, seed++) {
          SCOPED_TRACE("algo " + std::to_string(algo) + ", op " + std::to_string(op) + ", count " +
                       std::to_string(count) + (in_place ? ", in place" : ""));
          std::vector<float> mine(count), expected(count), got(count);
          for (size_t i = 0; i < count; i++) {
            mine[i] = lh_test_value(seed, rank, i);
            float sum = 0.0f;
            for (int r = 0; r < size; r++)
              sum += lh_test_value(seed, r, i);
            expected[i] = op == LH_OP_MEAN ? sum / static_cast<float>(size) : sum;
          }
          const size_t bytes = count * sizeof(float);
          DeviceBuffer dev_send(bytes), dev_recv(bytes);
          ASSERT_CUDA(dev_send.error());
          ASSERT_CUDA(dev_recv.error());
          ASSERT_CUDA(dev_send.Upload(mine.data()));
          ASSERT_CUDA(cudaMemset(dev_recv.get(), 0xff, bytes));  // NaN until written

          lh_allreduce_config ar = LH_ALLREDUCE_CONFIG_INIT;
          ar.algo = algo;
          ar.op = op;
          ar.chunk_bytes = 4096;  // several pipeline chunks for the larger counts
          float *out = in_place ? dev_send.floats() : dev_recv.floats();
          LH_ASSERT_OK(lh_allreduce(comm, dev_send.floats(), out, count, &ar));

          ASSERT_CUDA(cudaMemcpy(got.data(), out, bytes, cudaMemcpyDeviceToHost));
          // Bitwise: the ring promises the same bits on every rank and run.
          for (size_t i = 0; i < count; i++)
            if (std::memcmp(&got[i], &expected[i], sizeof(float)) != 0) {
              ADD_FAILURE() << "element " << i << " is " << got[i] << ", expected " << expected[i];
              break;
            }
          if (!in_place) {
            std::vector<float> send_after(count);
            ASSERT_CUDA(dev_send.Download(send_after.data()));
            EXPECT_EQ(std::memcmp(send_after.data(), mine.data(), bytes), 0) << "sendbuf changed";
          }
        }
}

// ---- nccl backend: one rank per communicator -------------------------------------------------

// A one-rank nccl communicator over MPI_COMM_SELF, so that every rank of the job has its own.
lh_status CreateSelfNccl(lh_comm_config config, lh_comm *comm) {
  static MPI_Comm self = MPI_COMM_SELF;
  config.backend = LH_BACKEND_NCCL;
  config.mpi_comm = &self;
  return lh_comm_create(&config, comm);
}

// Messages to self of device buffers. NCCL runs a send to self only together with its
// receive, in one group; the backend issues one group per progress pass, with the receive's
// chunks once its header is there and at most max_inflight send chunks. So the receive is
// posted first, and max_inflight is raised above the largest message's chunk count.
TEST(GpuNcclBackend, DeviceMessagesToSelf) {
  if (!HaveNccl())
    GTEST_SKIP() << "built without the nccl backend";
  lh_comm_config config = Config(LH_BACKEND_NCCL);
  config.chunk_bytes = 4096;
  config.max_inflight = 64;
  CommGuard guard;
  LH_ASSERT_OK(CreateSelfNccl(config, &guard.comm));
  lh_comm comm = guard.comm;
  lh_backend backend = LH_BACKEND_DEFAULT;
  LH_ASSERT_OK(lh_comm_backend(comm, &backend));
  EXPECT_EQ(backend, LH_BACKEND_NCCL);
  int size = 0;
  LH_ASSERT_OK(lh_comm_size(comm, &size));
  ASSERT_EQ(size, 1);

  const size_t sizes[] = {0, 1, 4096, 4096 + 1, 5 * 4096 + 3, 40 * 4096 + 1};
  int tag = 0;
  for (size_t bytes : sizes) {
    SCOPED_TRACE(std::to_string(bytes) + " bytes");
    std::vector<unsigned char> mine(bytes), got(bytes, 0xA5);
    for (size_t i = 0; i < bytes; i++)
      mine[i] = TestByte(7000 + static_cast<uint64_t>(tag), lh_test_world_rank(), i);
    DeviceBuffer dev_send(bytes), dev_recv(bytes);
    ASSERT_CUDA(dev_send.error());
    ASSERT_CUDA(dev_recv.error());
    ASSERT_CUDA(dev_send.Upload(mine.data()));
    ASSERT_CUDA(dev_recv.Upload(got.data()));

    lh_request requests[2] = {nullptr, nullptr};
    LH_ASSERT_OK(lh_irecv(comm, dev_recv.get(), bytes, 0, tag, &requests[0]));
    LH_ASSERT_OK(lh_isend(comm, dev_send.get(), bytes, 0, tag, &requests[1]));
    LH_ASSERT_OK(lh_waitall(2, requests));
    tag++;

    ASSERT_CUDA(dev_recv.Download(got.data()));
    EXPECT_EQ(FirstDifference(got, mine), -1) << "the bytes received differ from those sent";
  }
}

// One rank: the sum and the mean are the input itself, bit for bit.
TEST(GpuNcclBackend, AllreduceOneRank) {
  if (!HaveNccl())
    GTEST_SKIP() << "built without the nccl backend";
  CommGuard guard;
  LH_ASSERT_OK(CreateSelfNccl(Config(LH_BACKEND_NCCL), &guard.comm));
  lh_comm comm = guard.comm;

  const size_t counts[] = {1, 1000, 262147};
  const lh_reduce_op ops[] = {LH_OP_SUM, LH_OP_MEAN};
  uint64_t seed = 9000;
  for (lh_reduce_op op : ops)
    for (size_t count : counts)
      for (int in_place = 0; in_place < 2; in_place++, seed++) {
        SCOPED_TRACE("op " + std::to_string(op) + ", count " + std::to_string(count) +
                     (in_place ? ", in place" : ""));
        std::vector<float> mine(count), got(count);
        for (size_t i = 0; i < count; i++)
          mine[i] = lh_test_value(seed, 0, i);
        const size_t bytes = count * sizeof(float);
        DeviceBuffer dev_send(bytes), dev_recv(bytes);
        ASSERT_CUDA(dev_send.error());
        ASSERT_CUDA(dev_recv.error());
        ASSERT_CUDA(dev_send.Upload(mine.data()));
        ASSERT_CUDA(cudaMemset(dev_recv.get(), 0xff, bytes));

        lh_allreduce_config ar = LH_ALLREDUCE_CONFIG_INIT;
        ar.op = op;
        float *out = in_place ? dev_send.floats() : dev_recv.floats();
        LH_ASSERT_OK(lh_allreduce(comm, dev_send.floats(), out, count, &ar));
        ASSERT_CUDA(cudaMemcpy(got.data(), out, bytes, cudaMemcpyDeviceToHost));
        EXPECT_EQ(std::memcmp(got.data(), mine.data(), bytes), 0);
      }
}

// The nccl backend moves device memory only: a host buffer is refused up front, with no
// request left behind.
TEST(GpuNcclBackend, HostBufferRefused) {
  if (!HaveNccl())
    GTEST_SKIP() << "built without the nccl backend";
  CommGuard guard;
  LH_ASSERT_OK(CreateSelfNccl(Config(LH_BACKEND_NCCL), &guard.comm));
  lh_comm comm = guard.comm;

  std::vector<unsigned char> host(64, 1);
  lh_request request = nullptr;
  EXPECT_EQ(lh_isend(comm, host.data(), host.size(), 0, 0, &request), LH_ERR_NOT_SUPPORTED) << lh_last_error();
  EXPECT_EQ(request, nullptr);
  EXPECT_EQ(lh_irecv(comm, host.data(), host.size(), 0, 0, &request), LH_ERR_NOT_SUPPORTED) << lh_last_error();
  EXPECT_EQ(request, nullptr);
}

}  // namespace

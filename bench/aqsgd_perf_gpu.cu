// aqsgd_perf's GPU tables: AQ-SGD's kernels (kernels/aqsgd.cu) timed with CUDA events on device
// buffers, each checked against its CPU twin (lib/aqsgd/quant.c). See aqsgd_perf.h for the
// operations and columns.
//
// First the device's copy bandwidth (cudaMemcpy device to device of the largest call's a, bytes
// read + written per second). Then per operation and size: the inputs are uploaded, the launch
// runs once and its outputs (codes, scales, m', out) are compared byte for byte with the twin's
// from the same inputs (#wrong counts differing code bytes, scales and elements), then `iters`
// back-to-back launches are timed. The sender's timed launches keep updating m (as in training);
// the receiver's too. A call is all rows of the micro-batch in one launch (two for PER_CHANNEL:
// scales, then codes).
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "aqsgd_perf.h"

namespace {

struct Device {
  std::string name;
  double copy_bw = 0;  // bytes per second
  cudaEvent_t t0 = nullptr, t1 = nullptr;
  void *a = nullptr, *m = nullptr, *out = nullptr;
  uint16_t *scales = nullptr;
  uint8_t *codes = nullptr;
  int64_t *ids = nullptr, *slots = nullptr;
  uint32_t *visits = nullptr;
};

const char *err_text(int rc) { return cudaGetErrorString((cudaError_t)rc); }

// Seconds per call of f over `iters` calls after one warm-up; < 0 when a call failed.
double time_it(const Device &d, int iters, const std::function<int()> &f) {
  if (f() != 0 || cudaDeviceSynchronize() != cudaSuccess)
    return -1;
  cudaEventRecord(d.t0);
  for (int i = 0; i < iters; i++)
    if (f() != 0)
      return -1;
  cudaEventRecord(d.t1);
  if (cudaEventSynchronize(d.t1) != cudaSuccess)
    return -1;
  float ms = 0;
  cudaEventElapsedTime(&ms, d.t0, d.t1);
  return 1e-3 * ms / iters;
}

template <typename T>
std::vector<T> download(const void *src, size_t count) {
  std::vector<T> v(count);
  cudaMemcpy(v.data(), src, count * sizeof(T), cudaMemcpyDeviceToHost);
  return v;
}

// The host side of one call: inputs, and the twin's outputs.
struct Host {
  std::vector<uint8_t> a, m, m_old, out;
  std::vector<uint16_t> scales;
  std::vector<uint8_t> codes;
  std::vector<int64_t> ids, slots;
  std::vector<uint32_t> visits;
};

int upload(const Device &d, const Host &h, size_t n, size_t asz, size_t msz, size_t rows) {
  cudaError_t e = cudaMemcpy(d.a, h.a.data(), n * asz, cudaMemcpyHostToDevice);
  if (e == cudaSuccess)
    e = cudaMemcpy(d.m, h.m_old.data(), n * msz, cudaMemcpyHostToDevice);
  if (e == cudaSuccess)
    e = cudaMemcpy(d.ids, h.ids.data(), rows * sizeof(int64_t), cudaMemcpyHostToDevice);
  if (e == cudaSuccess)
    e = cudaMemcpy(d.slots, h.slots.data(), rows * sizeof(int64_t), cudaMemcpyHostToDevice);
  if (e == cudaSuccess)
    e = cudaMemcpy(d.visits, h.visits.data(), rows * sizeof(uint32_t), cudaMemcpyHostToDevice);
  return (int)e;
}

// The GPU launch of one operation (PER_CHANNEL encoders: the scales pass, then the codes).
int launch(const lh_aq_qparams &p, int op, size_t rows, const Device &d) {
  switch (op) {
    case AQSGD_OP_SENDER:
    case AQSGD_OP_PER_CHANNEL:
    case AQSGD_OP_BWD_ENCODE: {
      void *m = op == AQSGD_OP_BWD_ENCODE ? nullptr : d.m;
      if (p.quantizer == LH_AQ_Q_PER_CHANNEL) {
        int rc = lh_cuda_aq_channel_scales(&p, d.a, nullptr, m, d.slots, rows, d.scales, nullptr);
        if (rc)
          return rc;
      }
      return lh_cuda_aq_encode(&p, d.a, nullptr, m, d.slots, d.ids, d.visits, rows, d.scales, d.codes, nullptr);
    }
    case AQSGD_OP_RECEIVER:
      return lh_cuda_aq_decode(&p, d.codes, d.scales, d.m, d.slots, rows, d.out, nullptr, nullptr);
    default:
      return lh_cuda_aq_decode(&p, d.codes, d.scales, nullptr, nullptr, rows, d.out, nullptr, nullptr);
  }
}

// The twin's encode from h.m_old into h.m, h.scales, h.codes.
void cpu_encode(const lh_aq_qparams &p, size_t rows, bool with_m, Host &h) {
  h.m = h.m_old;
  void *m = with_m ? h.m.data() : nullptr;
  if (p.quantizer == LH_AQ_Q_PER_CHANNEL)
    lh_aq_channel_scales(&p, h.a.data(), nullptr, m, h.slots.data(), rows, h.scales.data());
  lh_aq_encode(&p, h.a.data(), nullptr, m, h.slots.data(), h.ids.data(), h.visits.data(), rows, h.scales.data(),
               h.codes.data());
}

// One operation at one size: check, time, print. Returns #wrong (the call's elements when a
// launch failed).
long run_case(const aqsgd_perf_config *c, int op, size_t rows, size_t tokens, const Device &d, Host &h) {
  const lh_aq_qparams p = aqsgd_perf_params(c, op, tokens);
  const size_t E = tokens * c->channels, n = rows * E;
  const size_t asz = lh_aq_dtype_bytes(c->dtype), msz = lh_aq_dtype_bytes(c->storage);
  const size_t nscales = lh_aq_scale_count(&p, rows), ncode = lh_aq_code_bytes(&p, rows);
  h.a.resize(n * asz);
  h.m_old.resize(n * msz);
  h.out.assign(n * asz, 0);
  h.scales.assign(nscales, 0);
  h.codes.assign(ncode, 0);
  h.ids.resize(rows);
  h.slots.resize(rows);
  h.visits.resize(rows);
  aqsgd_perf_fill(c, rows, E, h.a.data(), h.m_old.data(), h.ids.data(), h.visits.data(), h.slots.data());
  int rc = upload(d, h, n, asz, msz, rows);
  const bool encoder = op == AQSGD_OP_SENDER || op == AQSGD_OP_PER_CHANNEL || op == AQSGD_OP_BWD_ENCODE;
  const bool with_m = op != AQSGD_OP_BWD_ENCODE && op != AQSGD_OP_BWD_DECODE;
  long wrong = 0;
  // The twin: the encoder's outputs, or the frame a decoder decodes (made by the CPU; uploaded).
  if (encoder) {
    cpu_encode(p, rows, with_m, h);
  } else {
    const lh_aq_qparams enc = aqsgd_perf_params(c, with_m ? AQSGD_OP_SENDER : AQSGD_OP_BWD_ENCODE, tokens);
    cpu_encode(enc, rows, with_m, h);
    if (rc == 0)
      rc = (int)cudaMemcpy(d.codes, h.codes.data(), ncode, cudaMemcpyHostToDevice);
    if (rc == 0)
      rc = (int)cudaMemcpy(d.scales, h.scales.data(), nscales * 2, cudaMemcpyHostToDevice);
    h.m = h.m_old;
    lh_aq_decode(&p, h.codes.data(), h.scales.data(), with_m ? h.m.data() : nullptr, h.slots.data(), rows,
                 h.out.data(), nullptr);
  }
  if (rc == 0)
    rc = launch(p, op, rows, d);
  if (rc == 0)
    rc = (int)cudaDeviceSynchronize();
  if (rc != 0) {
    std::printf("# %s at %zu elements: the launch failed: %s\n", encoder ? "encode" : "decode", n, err_text(rc));
    return (long)n;
  }
  if (encoder) {
    std::vector<uint8_t> codes = download<uint8_t>(d.codes, ncode);
    std::vector<uint16_t> scales = download<uint16_t>(d.scales, nscales);
    wrong += aqsgd_perf_count_different(codes.data(), h.codes.data(), ncode, 1);
    wrong += aqsgd_perf_count_different(scales.data(), h.scales.data(), nscales, 2);
  } else {
    std::vector<uint8_t> out = download<uint8_t>(d.out, n * asz);
    wrong += aqsgd_perf_count_different(out.data(), h.out.data(), n, asz);
  }
  if (with_m) {
    std::vector<uint8_t> m = download<uint8_t>(d.m, n * msz);
    wrong += aqsgd_perf_count_different(m.data(), h.m.data(), n, msz);
  }

  const double t = time_it(d, c->iters, [&] { return launch(p, op, rows, d); });
  if (t < 0) {
    std::printf("# a timed launch failed: %s\n", err_text((int)cudaGetLastError()));
    return wrong + (long)n;
  }
  const double bytes = aqsgd_perf_bytes_per_elem(&p, op, rows);
  aqsgd_perf_row(n, t, bytes, d.copy_bw > 0 ? bytes * (double)n / t / d.copy_bw : -1.0, wrong);
  return wrong;
}

}  // namespace

extern "C" long lh_aqsgd_perf_gpu(const aqsgd_perf_config *c) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count <= 0) {
    std::printf("# no GPU: %s; the CPU twins' rows follow\n",
                e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device");
    return -1;
  }
  cudaDeviceProp prop;
  if ((e = cudaGetDeviceProperties(&prop, 0)) != cudaSuccess) {
    std::printf("# no GPU: cudaGetDeviceProperties: %s\n", cudaGetErrorString(e));
    return -1;
  }
  size_t max_n, max_rows;
  aqsgd_perf_largest(c, &max_n, &max_rows);
  const size_t asz = lh_aq_dtype_bytes(c->dtype), msz = lh_aq_dtype_bytes(c->storage);
  Device d;
  d.name = prop.name;
  bool ok = cudaMalloc(&d.a, max_n * asz) == cudaSuccess && cudaMalloc(&d.m, max_n * msz) == cudaSuccess &&
            cudaMalloc(&d.out, max_n * asz) == cudaSuccess &&
            cudaMalloc(&d.scales, (max_n / 32 + c->channels + 8) * 2) == cudaSuccess &&
            cudaMalloc(&d.codes, max_n + 8) == cudaSuccess && cudaMalloc(&d.ids, max_rows * 8) == cudaSuccess &&
            cudaMalloc(&d.slots, max_rows * 8) == cudaSuccess && cudaMalloc(&d.visits, max_rows * 4) == cudaSuccess &&
            cudaEventCreate(&d.t0) == cudaSuccess && cudaEventCreate(&d.t1) == cudaSuccess;
  long wrong = 0;
  if (!ok) {
    std::printf("# GPU: setup for %zu elements failed (%s)\n", max_n, cudaGetErrorString(cudaGetLastError()));
    wrong = 1;
  } else {
    // Copy bandwidth: device-to-device copies of the largest a, bytes read + written.
    const size_t bytes = max_n * asz;
    const int reps = c->iters > 5 ? c->iters : 5;
    float ms = 0;
    cudaMemcpy(d.out, d.a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(d.t0);
    for (int i = 0; i < reps; i++)
      cudaMemcpyAsync(d.out, d.a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(d.t1);
    cudaEventSynchronize(d.t1);
    cudaEventElapsedTime(&ms, d.t0, d.t1);
    d.copy_bw = ms > 0 ? 2.0 * (double)bytes * reps / (1e-3 * ms) : 0.0;
    std::printf("# GPU: %s, %d SMs; copy bandwidth (cudaMemcpy D2D of %zu B, read + write) %.1f GB/s\n", prop.name,
                prop.multiProcessorCount, bytes, 1e-9 * d.copy_bw);
    Host h;
    for (int op = 0; op < AQSGD_OP_COUNT; op++) {
      if (!aqsgd_perf_has_op(c, op))
        continue;
      char title[256];
      aqsgd_perf_title(c, op, title, sizeof title);
      aqsgd_perf_table_header(title, d.name.c_str());
      for (int s = 0; s < c->nsizes; s++) {
        size_t rows, tokens;
        aqsgd_perf_shape(c, c->sizes[s], &rows, &tokens);
        wrong += run_case(c, op, rows, tokens, d, h);
      }
    }
  }
  if (d.t0)
    cudaEventDestroy(d.t0);
  if (d.t1)
    cudaEventDestroy(d.t1);
  cudaFree(d.a);
  cudaFree(d.m);
  cudaFree(d.out);
  cudaFree(d.scales);
  cudaFree(d.codes);
  cudaFree(d.ids);
  cudaFree(d.slots);
  cudaFree(d.visits);
  return wrong;
}

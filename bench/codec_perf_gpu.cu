// codec_perf's GPU rows: the codec kernels (kernels/) timed with CUDA events on device buffers,
// each checked against its CPU twin (lib/compress/). See codec_perf.h for the columns.
//
// For every size: the device's copy bandwidth first (cudaMemcpy device to device of the largest
// size; bytes read + written per second), then one row per kernel configuration:
//   enc / dec GB/s   fp32 bytes per second of the encode / decode launcher (payload on device)
//   moved            bytes the encode kernel must read + write per element (kernels' headers)
//   copy%            moved bytes per second over the copy bandwidth: how close to the memory
//                    roofline the encode kernel runs
//   #wrong           elements whose GPU result differs from the CPU twin's: the GPU payload
//                    decoded (by the CPU) against the CPU payload decoded, and the GPU decode
//                    of the CPU payload against the CPU decode (and, with error feedback, the
//                    residuals); bitwise, except PowerSGD (|difference| > 1e-3 rms)
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "codec_perf.h"
#include "compress/payload.h"
#include "kernels.h"

namespace {


bool same_bits(float a, float b) {
  uint32_t u, v;
  std::memcpy(&u, &a, 4);
  std::memcpy(&v, &b, 4);
  return u == v;
}

long count_different(const std::vector<float> &a, const std::vector<float> &b) {
  long bad = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); i++)
    bad += !same_bits(a[i], b[i]);
  return bad;
}

// One row: how to run it on each side. gpu_* launch on the shared device buffers; cpu_* run the
// twin on host copies. Decoders never accumulate here except in the "acc" rows.
struct Case {
  const char *codec;
  std::string params;
  size_t payload_bytes;
  double moved;    // encode bytes per element
  bool ef;         // encode updates the residual e
  bool tolerance;  // PowerSGD: compare within a tolerance
  std::function<int()> setup;  // optional, before everything else (not timed)
  std::function<int()> gpu_encode;
  std::function<int()> gpu_decode;
  std::function<bool(const float *x, float *e, uint8_t *payload)> cpu_encode;
  std::function<bool(const uint8_t *payload, float *y)> cpu_decode;
};

struct Bench {
  size_t n = 0;
  int iters = 1;
  double copy_bw = 0;  // bytes per second
  std::string device;
  float *d_x = nullptr, *d_e = nullptr, *d_y = nullptr, *d_q = nullptr, *d_p = nullptr;
  uint8_t *d_pay = nullptr;
  cudaEvent_t t0 = nullptr, t1 = nullptr;
  cublasHandle_t blas = nullptr;
  std::vector<float> x;
};

const char *err_text(int rc) { return cudaGetErrorString((cudaError_t)rc); }

// Seconds per call of f over `iters` calls after one warm-up; < 0 when a call failed.
double time_it(Bench &b, const std::function<int()> &f) {
  if (f() != 0 || cudaDeviceSynchronize() != cudaSuccess)
    return -1;
  cudaEventRecord(b.t0);
  for (int i = 0; i < b.iters; i++)
    if (f() != 0)
      return -1;
  cudaEventRecord(b.t1);
  if (cudaEventSynchronize(b.t1) != cudaSuccess)
    return -1;
  float ms = 0;
  cudaEventElapsedTime(&ms, b.t0, b.t1);
  return 1e-3 * ms / b.iters;
}

long run_case(Bench &b, const Case &c) {
  const size_t n = b.n;
  const size_t bytes = c.payload_bytes;
  long wrong = 0;
  // Correctness, from a zero residual on both sides.
  std::vector<float> e_cpu(n, 0.0f), e_gpu(n);
  std::vector<uint8_t> pay_cpu(bytes), pay_gpu(bytes);
  cudaMemset(b.d_e, 0, n * sizeof(float));
  int rc = c.setup ? c.setup() : 0;
  if (rc == 0)
    rc = c.gpu_encode();
  if (rc == 0)
    rc = (int)cudaDeviceSynchronize();
  if (rc != 0) {
    std::printf("# %s %s: GPU encode failed: %s\n", c.codec, c.params.c_str(), err_text(rc));
    return (long)n;
  }
  cudaMemcpy(pay_gpu.data(), b.d_pay, bytes, cudaMemcpyDeviceToHost);
  if (c.ef)
    cudaMemcpy(e_gpu.data(), b.d_e, n * sizeof(float), cudaMemcpyDeviceToHost);
  if (!c.cpu_encode(b.x.data(), e_cpu.data(), pay_cpu.data())) {
    std::printf("# %s %s: CPU encode failed: %s\n", c.codec, c.params.c_str(), lh_last_error());
    return (long)n;
  }
  std::vector<float> y_cpu(n), y_from_gpu(n), y_gpu(n);
  c.cpu_decode(pay_cpu.data(), y_cpu.data());
  if (!c.tolerance) {
    if (bytes && std::memcmp(pay_cpu.data(), pay_gpu.data(), bytes) != 0) {
      c.cpu_decode(pay_gpu.data(), y_from_gpu.data());
      long w = count_different(y_cpu, y_from_gpu);
      wrong += w ? w : 1;  // differing bytes that decode alike still count
    }
    if (c.ef)
      wrong += count_different(e_cpu, e_gpu);
  }
  // GPU decode of the CPU payload.
  cudaMemcpy(b.d_pay, pay_cpu.data(), bytes, cudaMemcpyHostToDevice);
  rc = c.gpu_decode();
  if (rc == 0)
    rc = (int)cudaDeviceSynchronize();
  if (rc != 0) {
    std::printf("# %s %s: GPU decode failed: %s\n", c.codec, c.params.c_str(), err_text(rc));
    return wrong + (long)n;
  }
  cudaMemcpy(y_gpu.data(), b.d_y, n * sizeof(float), cudaMemcpyDeviceToHost);
  double err = 0, norm = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)b.x[i] - y_gpu[i];
    err += d * d;
    norm += (double)b.x[i] * b.x[i];
  }
  if (c.tolerance) {
    double rms = 0;
    for (size_t i = 0; i < n; i++)
      rms += (double)y_cpu[i] * y_cpu[i];
    rms = std::sqrt(rms / (double)(n ? n : 1));
    for (size_t i = 0; i < n; i++)
      wrong += std::fabs((double)y_cpu[i] - y_gpu[i]) > 1e-3 * rms;
    // The GPU's own encode, decoded on the CPU, must reconstruct as well as the CPU's.
    c.cpu_decode(pay_gpu.data(), y_from_gpu.data());
    for (size_t i = 0; i < n; i++)
      wrong += std::fabs((double)y_cpu[i] - y_from_gpu[i]) > 1e-3 * rms;
  } else {
    wrong += count_different(y_cpu, y_gpu);
  }

  // Timing.
  const double t_enc = time_it(b, c.gpu_encode);
  const double t_dec = time_it(b, c.gpu_decode);
  if (t_enc < 0 || t_dec < 0) {
    std::printf("# %s %s: a timed launch failed: %s\n", c.codec, c.params.c_str(), err_text((int)cudaGetLastError()));
    return wrong + (long)n;
  }
  const double fp32 = 4.0 * (double)n;
  lh_codec_perf_row row;
  row.codec = c.codec;
  row.params = c.params.c_str();
  row.device = b.device.c_str();
  row.bytes = n * 4;
  row.enc_gbps = 1e-9 * fp32 / t_enc;
  row.dec_gbps = 1e-9 * fp32 / t_dec;
  row.ratio = bytes ? fp32 / (double)bytes : 0.0;
  row.relerr = norm > 0 ? std::sqrt(err / norm) : 0.0;
  row.moved_per_elem = c.moved;
  row.copy_frac = b.copy_bw > 0 ? c.moved * (double)n / t_enc / b.copy_bw : -1.0;
  row.wrong = wrong;
  lh_codec_perf_print(&row);
  return wrong;
}

// A row for a codec without a key (sign, top-k): encode or encode_ef, and plain decode, on
// both sides. `moved` is the encode's bytes per element without feedback; feedback adds reading
// and writing e (8 bytes).
template <typename P>
Case keyless_case(Bench &b, const char *codec, const char *params, P p, int ef, double moved,
                  size_t (*payload_bytes)(const P *, size_t),
                  lh_status (*encode)(const P *, const float *, size_t, uint8_t *),
                  lh_status (*encode_ef)(const P *, const float *, float *, size_t, uint8_t *),
                  lh_status (*decode)(const P *, const uint8_t *, size_t, float *, int),
                  int (*cuda_encode)(const P *, const float *, size_t, uint8_t *, void *),
                  int (*cuda_encode_ef)(const P *, const float *, float *, size_t, uint8_t *, void *),
                  int (*cuda_decode)(const P *, const uint8_t *, size_t, float *, int, void *)) {
  const size_t n = b.n;
  Case c;
  c.codec = codec;
  c.params = params;
  c.payload_bytes = payload_bytes(&p, n);
  c.moved = moved + (ef ? 8.0 : 0.0);
  c.ef = ef;
  c.tolerance = false;
  c.gpu_encode = [&b, n, p, ef, cuda_encode, cuda_encode_ef] {
    return ef ? cuda_encode_ef(&p, b.d_x, b.d_e, n, b.d_pay, nullptr) : cuda_encode(&p, b.d_x, n, b.d_pay, nullptr);
  };
  c.gpu_decode = [&b, n, p, cuda_decode] { return cuda_decode(&p, b.d_pay, n, b.d_y, 0, nullptr); };
  c.cpu_encode = [n, p, ef, encode, encode_ef](const float *x, float *e, uint8_t *pay) {
    return (ef ? encode_ef(&p, x, e, n, pay) : encode(&p, x, n, pay)) == LH_SUCCESS;
  };
  c.cpu_decode = [n, p, decode](const uint8_t *pay, float *y) { return decode(&p, pay, n, y, 0) == LH_SUCCESS; };
  return c;
}

bool want(const char *only, const char *codec) { return !only || std::strcmp(only, codec) == 0; }

// All rows at one size.
long run_size(Bench &b, const char *only) {
  const size_t n = b.n;
  long wrong = 0;
  const lh_rng_key key = {0x5EED5EED12345678ull, 7, 0};
  std::vector<Case> cases;

  // Casts.
  for (int bf16 = 0; bf16 < 2; bf16++) {
    const char *codec = bf16 ? "bf16" : "fp16";
    if (!want(only, codec))
      continue;
    Case c;
    c.codec = codec;
    c.params = "rne";
    c.payload_bytes = n * 2;
    c.moved = 6;
    c.ef = false;
    c.tolerance = false;
    c.gpu_encode = [&b, n, bf16] {
      auto *out = reinterpret_cast<uint16_t *>(b.d_pay);
      return bf16 ? lh_cuda_cast_f32_to_bf16(b.d_x, out, n, nullptr) : lh_cuda_cast_f32_to_f16(b.d_x, out, n, nullptr);
    };
    c.gpu_decode = [&b, n, bf16] {
      auto *in = reinterpret_cast<const uint16_t *>(b.d_pay);
      return bf16 ? lh_cuda_cast_bf16_to_f32(in, b.d_y, n, 0, nullptr) : lh_cuda_cast_f16_to_f32(in, b.d_y, n, 0, nullptr);
    };
    c.cpu_encode = [n, bf16](const float *x, float *, uint8_t *pay) {
      std::vector<uint16_t> h(n);
      if (bf16)
        lh_cast_f32_to_bf16(x, h.data(), n);
      else
        lh_cast_f32_to_f16(x, h.data(), n);
      std::memcpy(pay, h.data(), n * 2);
      return true;
    };
    c.cpu_decode = [n, bf16](const uint8_t *pay, float *y) {
      std::vector<uint16_t> h(n);
      std::memcpy(h.data(), pay, n * 2);
      if (bf16)
        lh_cast_bf16_to_f32(h.data(), y, n, 0);
      else
        lh_cast_f16_to_f32(h.data(), y, n, 0);
      return true;
    };
    cases.push_back(c);
  }

  // Block quantization: representative rows. acc: the decode row accumulates (dequantize-add).
  struct BqRow {
    int bits, fp16, sr, ef, acc;
  };
  const BqRow bq_rows[] = {{8, 0, 0, 0, 0}, {8, 1, 0, 0, 0}, {4, 0, 0, 0, 0}, {4, 0, 1, 0, 0}, {4, 1, 1, 0, 0},
                           {2, 0, 0, 0, 0}, {2, 0, 1, 0, 0}, {1, 0, 0, 0, 0}, {8, 0, 0, 1, 0}, {4, 0, 0, 1, 0},
                           {4, 0, 0, 0, 1}};
  if (want(only, "blockq"))
    for (const BqRow &r : bq_rows) {
      const lh_blockq_params p = {r.bits, 128, r.fp16, r.sr};
      Case c;
      c.codec = "blockq";
      c.params = "b" + std::to_string(r.bits) + " B128 " + (r.sr ? "sr" : "rtn") + (r.fp16 ? " fp16s" : "") +
                 (r.ef ? " +EF" : "") + (r.acc ? " dec+acc" : "");
      c.payload_bytes = lh_blockq_payload_bytes(&p, n);
      c.moved = 4.0 + r.bits / 8.0 + (r.fp16 ? 2.0 : 4.0) / 128 + (r.ef ? 8.0 : 0.0);
      c.ef = r.ef;
      c.tolerance = false;
      c.gpu_encode = [&b, n, p, key, r] {
        return r.ef ? lh_cuda_blockq_encode_ef(&p, &key, b.d_x, b.d_e, n, b.d_pay, nullptr)
                    : lh_cuda_blockq_encode(&p, &key, b.d_x, n, b.d_pay, nullptr);
      };
      c.gpu_decode = [&b, n, p, r] {
        if (r.acc)
          cudaMemsetAsync(b.d_y, 0, n * sizeof(float));  // so the checked result is D(payload) again
        return lh_cuda_blockq_decode(&p, b.d_pay, n, b.d_y, r.acc, nullptr);
      };
      c.cpu_encode = [n, p, key, r](const float *x, float *e, uint8_t *pay) {
        return (r.ef ? lh_blockq_encode_ef(&p, &key, x, e, n, pay) : lh_blockq_encode(&p, &key, x, n, pay)) ==
               LH_SUCCESS;
      };
      c.cpu_decode = [n, p, r](const uint8_t *pay, float *y) {
        if (r.acc)
          std::memset(y, 0, n * sizeof(float));
        return lh_blockq_decode(&p, pay, n, y, r.acc) == LH_SUCCESS;
      };
      cases.push_back(c);
    }

  // Sign (block 128) and exact top-k 1% (k 41 of 4096): the same shape, no key.
  if (want(only, "sign"))
    for (int ef = 0; ef < 2; ef++) {
      const lh_sign_params p = {128, 0};
      cases.push_back(keyless_case(b, "sign", ef ? "B128 +EF" : "B128", p, ef, 4.0 + 1.0 / 8 + 4.0 / 128,
                                   lh_sign_payload_bytes, lh_sign_encode, lh_sign_encode_ef, lh_sign_decode,
                                   lh_cuda_sign_encode, lh_cuda_sign_encode_ef, lh_cuda_sign_decode));
    }
  if (want(only, "topk"))
    for (int ef = 0; ef < 2; ef++) {
      const lh_topk_params p = {4096, 41, 0};
      const double entries = (double)lh_topk_entries(&p, n);
      cases.push_back(keyless_case(b, "topk", ef ? "1% exact C4096 +EF" : "1% exact C4096", p, ef,
                                   4.0 + 6.0 * entries / (double)(n ? n : 1), lh_topk_payload_bytes,
                                   lh_topk_encode, lh_topk_encode_ef, lh_topk_decode, lh_cuda_topk_encode,
                                   lh_cuda_topk_encode_ef, lh_cuda_topk_decode));
    }

  // PowerSGD: the input as a 4096-row matrix (fewer rows for small inputs). Encode = P = M Q,
  // orthonormalize, Q = M^T P from the same first Q on both sides; compared within a tolerance.
  if (want(only, "powersgd") && n > 0)
    for (int r : {2, 4}) {
      const size_t rows = n >= 4096 ? 4096 : n;
      const lh_powersgd_params p = {r, rows, n / rows};
      const size_t m = p.rows * p.cols;  // the elements that form the matrix (n rounded down)
      std::vector<float> q0(p.cols * r);
      lh_powersgd_init_q(&p, &key, q0.data());
      Case c;
      c.codec = "powersgd";
      c.params = "r" + std::to_string(r) + " rows" + std::to_string(rows);
      c.payload_bytes = lh_powersgd_payload_bytes(&p);
      c.moved = 8.0 + 4.0 * (double)((p.rows + p.cols) * r * 2) / (double)m;
      c.ef = false;
      c.tolerance = true;
      c.setup = [&b, q0] {  // the first Q; encode only reads it (the new Q goes to the payload)
        return (int)cudaMemcpy(b.d_q, q0.data(), q0.size() * sizeof(float), cudaMemcpyHostToDevice);
      };
      c.gpu_encode = [&b, p] {
        // The payload is [P | Q]: P computed in place from the first Q in d_q, then Q.
        float *pm = reinterpret_cast<float *>(b.d_pay);
        float *q = pm + p.rows * p.rank;
        int rc = lh_cuda_powersgd_compute_p(&p, b.d_x, b.d_q, pm, b.blas, nullptr);
        if (!rc)
          rc = lh_cuda_powersgd_orthonormalize(&p, pm, b.blas, nullptr);
        if (!rc)
          rc = lh_cuda_powersgd_compute_q(&p, b.d_x, pm, q, b.blas, nullptr);
        return rc;
      };
      c.gpu_decode = [&b, p] { return lh_cuda_powersgd_decode(&p, b.d_pay, b.d_y, 0, b.blas, nullptr); };
      c.cpu_encode = [p, q0](const float *x, float *, uint8_t *pay) {
        std::vector<float> q = q0;
        return lh_powersgd_encode(&p, x, q.data(), pay) == LH_SUCCESS;
      };
      c.cpu_decode = [n, m, p](const uint8_t *pay, float *y) {
        for (size_t i = m; i < n; i++)
          y[i] = 0.0f;  // not part of the matrix: the GPU output there is zeroed the same way
        return lh_powersgd_decode(&p, pay, y, 0) == LH_SUCCESS;
      };
      if (m < n)
        c.gpu_decode = [&b, p, n, m] {
          int rc = (int)cudaMemsetAsync(b.d_y + m, 0, (n - m) * sizeof(float));
          return rc ? rc : lh_cuda_powersgd_decode(&p, b.d_pay, b.d_y, 0, b.blas, nullptr);
        };
      cases.push_back(c);
    }

  for (const Case &c : cases)
    wrong += run_case(b, c);
  return wrong;
}

}  // namespace

extern "C" long lh_codec_perf_gpu(const size_t *sizes, int nsizes, int iters, const char *only_codec) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count <= 0) {
    std::printf("# GPU rows: no usable GPU (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device");
    return -1;
  }
  static const char *const kGpuCodecs[] = {"fp16", "bf16", "blockq", "sign", "topk", "powersgd"};
  if (only_codec) {
    bool any = false;
    for (const char *k : kGpuCodecs)
      any = any || std::strcmp(k, only_codec) == 0;
    if (!any) {
      std::printf("# GPU rows: no GPU kernel for codec %s\n", only_codec);
      return 0;
    }
  }
  cudaDeviceProp prop;
  if ((e = cudaGetDeviceProperties(&prop, 0)) != cudaSuccess) {
    std::printf("# GPU rows: cudaGetDeviceProperties: %s\n", cudaGetErrorString(e));
    return -1;
  }
  size_t max_bytes = 0;
  for (int s = 0; s < nsizes; s++)
    max_bytes = sizes[s] > max_bytes ? sizes[s] : max_bytes;
  const size_t max_n = max_bytes / 4;

  Bench b;
  b.iters = iters > 0 ? iters : 1;
  b.device = prop.name;
  b.x.resize(max_n);
  lh_codec_perf_fill_input(b.x.data(), max_n);
  // Device buffers: x, the residual, the decoded output, PowerSGD's Q, and the payload (at most
  // 4 bytes per element plus the scales; 4n + 64 covers every row).
  const size_t pay_cap = 4 * max_n + 4 * (max_n / 8 + 16) + 64;
  bool ok = cudaMalloc(&b.d_x, max_bytes + 16) == cudaSuccess && cudaMalloc(&b.d_e, max_bytes + 16) == cudaSuccess &&
            cudaMalloc(&b.d_y, max_bytes + 16) == cudaSuccess && cudaMalloc(&b.d_q, max_bytes + 16) == cudaSuccess &&
            cudaMalloc(&b.d_pay, pay_cap) == cudaSuccess && cudaEventCreate(&b.t0) == cudaSuccess &&
            cudaEventCreate(&b.t1) == cudaSuccess && cublasCreate(&b.blas) == CUBLAS_STATUS_SUCCESS;
  long wrong = 0;
  if (!ok) {
    std::printf("# GPU rows: setup failed (%s)\n", cudaGetErrorString(cudaGetLastError()));
    wrong = -1;
  } else {
    // Copy bandwidth: device-to-device copies of the largest size, bytes read + written.
    float ms = 0;
    cudaMemcpy(b.d_y, b.d_x, max_bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(b.t0);
    for (int i = 0; i < b.iters; i++)
      cudaMemcpyAsync(b.d_y, b.d_x, max_bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(b.t1);
    cudaEventSynchronize(b.t1);
    cudaEventElapsedTime(&ms, b.t0, b.t1);
    b.copy_bw = ms > 0 ? 2.0 * (double)max_bytes * b.iters / (1e-3 * ms) : 0.0;
    std::printf("# GPU: %s, %d SMs; copy bandwidth (cudaMemcpy D2D of %zu B, read + write) %.1f GB/s; "
                "%d iterations per row\n",
                prop.name, prop.multiProcessorCount, max_bytes, 1e-9 * b.copy_bw, b.iters);
    for (int s = 0; s < nsizes && wrong >= 0; s++) {
      b.n = sizes[s] / 4;
      cudaMemcpy(b.d_x, b.x.data(), b.n * sizeof(float), cudaMemcpyHostToDevice);
      wrong += run_size(b, only_codec);
    }
  }
  if (b.blas)
    cublasDestroy(b.blas);
  if (b.t0)
    cudaEventDestroy(b.t0);
  if (b.t1)
    cudaEventDestroy(b.t1);
  cudaFree(b.d_x);
  cudaFree(b.d_e);
  cudaFree(b.d_y);
  cudaFree(b.d_q);
  cudaFree(b.d_pay);
  return wrong;
}

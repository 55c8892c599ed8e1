// PowerSGD's steps on the GPU (the POWERSGD payload of lib/compress/payload.h): the products on
// cuBLAS, the orthonormalization in one small kernel. Twins: lib/compress/powersgd.c. Unlike
// the other codecs there is no bitwise contract (the BLASes sum in their own orders): the GPU
// tests compare with a tolerance.
//
// Row-major to cuBLAS: a row-major a x b matrix is the column-major b x a matrix (its
// transpose) with leading dimension b, so every product is computed transposed:
//   P = M Q      ->  P^T (r x rows)    = Q^T (r x cols)    * M^T (cols x rows)   [N, N]
//   Q = M^T P    ->  Q^T (r x cols)    = P^T (r x rows)    * M   (rows x cols)   [N, T]
//   out = P Q^T  ->  out^T (cols x rows) = Q (cols x r)    * P^T (r x rows)      [T, N]
// The handle's stream, pointer mode and math mode are set for the call (stream = the one
// given; host scalars; CUBLAS_DEFAULT_MATH, i.e. no TF32) and restored afterwards.
//
// Orthonormalization: one block of 512 threads runs lh_powersgd_orthonormalize's algorithm
// step for step (two right-looking modified Gram-Schmidt sweeps, double accumulators, the same
// rule for a dependent column: replaced by e_t orthogonalized twice against the earlier
// columns, or zeroed when they span everything). Thread t owns rows t, t + 512, ...; every
// dot product is a block reduction of r <= 8 doubles at once. One block because the steps are
// sequential and P is small next to M (rows x r); it reads P about 4 r + 2 times per sweep.
//
// Bytes per element of M (rows x cols floats) that must move:
//   compute_p, compute_q   4 (M) + small (Q or P: (rows + cols) r * 4 / (rows cols))
//   decode                 4 (out; 8 when accumulating) + small
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>

#include "codec_common.cuh"
#include "kernels.h"

namespace {

using namespace lh_codec;

constexpr int kMaxRank = 8;
constexpr int kOrthoThreads = 512;
constexpr double kDependentFraction = 1e-6;  // PSGD_DEPENDENT_FRACTION in powersgd.c
constexpr double kMinRoom = 1e-3;            // PSGD_MIN_ROOM

bool params_ok(const lh_powersgd_params *p) {
  return p && p->rank >= 1 && p->rank <= kMaxRank && p->rows >= 1 && p->cols >= 1 && p->rows <= INT_MAX &&
         p->cols <= INT_MAX && p->rows <= SIZE_MAX / sizeof(float) / p->cols;
}

// ---- the orthonormalization kernel ----------------------------------------------------------

struct OrthoShared {
  double part[kOrthoThreads / 32][kMaxRank];
  double total[kMaxRank];
  unsigned long long w_first[kOrthoThreads / 32], w_row[kOrthoThreads / 32];
  double w_cover[kOrthoThreads / 32];
  double cover;
  unsigned long long row;
};

// v[0..8) summed over the block; every thread gets the sums. Block-uniform call.
__device__ void block_sum(double v[kMaxRank], OrthoShared &sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int j = 0; j < kMaxRank; j++)
    for (int off = 16; off >= 1; off >>= 1)
      v[j] += __shfl_down_sync(kFullMask, v[j], off);
  if (lane == 0)
#pragma unroll
    for (int j = 0; j < kMaxRank; j++)
      sh.part[warp][j] = v[j];
  __syncthreads();
  if (warp == 0) {
    const int nwarps = blockDim.x >> 5;
#pragma unroll
    for (int j = 0; j < kMaxRank; j++) {
      double t = lane < nwarps ? sh.part[lane][j] : 0.0;
      for (int off = 16; off >= 1; off >>= 1)
        t += __shfl_down_sync(kFullMask, t, off);
      if (lane == 0)
        sh.total[j] = t;
    }
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kMaxRank; j++)
    v[j] = sh.total[j];
  __syncthreads();
}

// dots[j] = P_first . P_j for first <= j < r (others 0).
__device__ void dots_from(const float *pm, size_t rows, int r, int first, double dots[kMaxRank], OrthoShared &sh) {
#pragma unroll
  for (int j = 0; j < kMaxRank; j++)
    dots[j] = 0.0;
  for (size_t k = threadIdx.x; k < rows; k += blockDim.x) {
    const float *row = pm + k * (size_t)r;
    const double pivot = row[first];
#pragma unroll
    for (int j = 0; j < kMaxRank; j++)
      if (j >= first && j < r)
        dots[j] += pivot * row[j];
  }
  block_sum(dots, sh);
}

// Column col minus its projection on the earlier (orthonormal) columns, classically.
__device__ void project_out_earlier(float *pm, size_t rows, int r, int col, OrthoShared &sh) {
  double along[kMaxRank];
#pragma unroll
  for (int l = 0; l < kMaxRank; l++)
    along[l] = 0.0;
  for (size_t k = threadIdx.x; k < rows; k += blockDim.x) {
    const float *row = pm + k * (size_t)r;
#pragma unroll
    for (int l = 0; l < kMaxRank; l++)
      if (l < col)
        along[l] += (double)row[l] * row[col];
  }
  block_sum(along, sh);
  for (size_t k = threadIdx.x; k < rows; k += blockDim.x) {
    float *row = pm + k * (size_t)r;
    double v = row[col];
#pragma unroll
    for (int l = 0; l < kMaxRank; l++)
      if (l < col)
        v -= along[l] * row[l];
    row[col] = (float)v;
  }
  __syncthreads();
}

// Column col becomes e_t orthogonalized against columns 0..col-1, t the first row whose cover
// (squared norm of e_t's projection on the earlier columns) is <= 0.5, else the least covered
// row (lowest index among equals); a zero column when no row has room.
__device__ void replace_column(float *pm, size_t rows, int r, int col, OrthoShared &sh) {
  const int lane = threadIdx.x & 31;
  const unsigned long long kNone = ~0ull;
  unsigned long long first_ok = kNone, best_row = kNone;
  double best_cover = 2.0;
  for (size_t t = threadIdx.x; t < rows; t += blockDim.x) {
    const float *row = pm + t * (size_t)r;
    double cover = 0.0;
#pragma unroll
    for (int l = 0; l < kMaxRank; l++)
      if (l < col)
        cover += (double)row[l] * row[l];
    if (cover <= 0.5 && first_ok == kNone)
      first_ok = t;
    if (cover < best_cover) {  // rows ascend per thread: the lowest index wins ties
      best_cover = cover;
      best_row = t;
    }
  }
  // Block reductions: min first_ok; (min cover, then min row): warps by shuffles, then
  // thread 0 over the warps' results.
  for (int off = 16; off >= 1; off >>= 1) {
    const unsigned long long o_first = __shfl_down_sync(kFullMask, first_ok, off);
    const double o_cover = __shfl_down_sync(kFullMask, best_cover, off);
    const unsigned long long o_row = __shfl_down_sync(kFullMask, best_row, off);
    first_ok = o_first < first_ok ? o_first : first_ok;
    if (o_cover < best_cover || (o_cover == best_cover && o_row < best_row)) {
      best_cover = o_cover;
      best_row = o_row;
    }
  }
  const int warp = threadIdx.x >> 5;
  if (lane == 0) {
    sh.w_first[warp] = first_ok;
    sh.w_cover[warp] = best_cover;
    sh.w_row[warp] = best_row;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long f = kNone, row = kNone;
    double cover = 2.0;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) {
      f = sh.w_first[w] < f ? sh.w_first[w] : f;
      if (sh.w_cover[w] < cover || (sh.w_cover[w] == cover && sh.w_row[w] < row)) {
        cover = sh.w_cover[w];
        row = sh.w_row[w];
      }
    }
    if (f != kNone) {
      // The CPU's scan stops at the first row with cover <= 0.5: that row and its cover.
      const float *prow = pm + f * (size_t)r;
      double c = 0.0;
      for (int l = 0; l < col; l++)
        c += (double)prow[l] * prow[l];
      row = f;
      cover = c;
    }
    sh.row = row;  // kNone (no row below 2.0: impossible for orthonormal columns) gives no room
    sh.cover = cover;
  }
  __syncthreads();
  const unsigned long long chosen = sh.row;
  const double chosen_cover = sh.cover;
  __syncthreads();
  const bool has_room = 1.0 - chosen_cover >= kMinRoom;
  for (size_t k = threadIdx.x; k < rows; k += blockDim.x)
    pm[k * (size_t)r + (size_t)col] = has_room && k == chosen ? 1.0f : 0.0f;
  __syncthreads();
  if (!has_room)
    return;
  project_out_earlier(pm, rows, r, col, sh);
  project_out_earlier(pm, rows, r, col, sh);
}

// One right-looking modified Gram-Schmidt sweep (powersgd.c's psgd_mgs_sweep).
__device__ void mgs_sweep(float *pm, size_t rows, int r, OrthoShared &sh) {
  double initial_norm2[kMaxRank], dots[kMaxRank], coef[kMaxRank];
#pragma unroll
  for (int j = 0; j < kMaxRank; j++)
    initial_norm2[j] = 0.0;
  for (size_t k = threadIdx.x; k < rows; k += blockDim.x)
#pragma unroll
    for (int j = 0; j < kMaxRank; j++)
      if (j < r) {
        const double v = pm[k * (size_t)r + (size_t)j];
        initial_norm2[j] += v * v;
      }
  block_sum(initial_norm2, sh);
  for (int i = 0; i < r; i++) {
    dots_from(pm, rows, r, i, dots, sh);
    double norm = sqrt(dots[i]);
    if (!(norm > kDependentFraction * sqrt(initial_norm2[i]))) {  // also a zero or non-finite column
      replace_column(pm, rows, r, i, sh);
      dots_from(pm, rows, r, i, dots, sh);
      norm = sqrt(dots[i]);
      if (!(norm > 0.0))
        continue;  // block-uniform: norm comes from a block reduction
    }
#pragma unroll
    for (int j = 0; j < kMaxRank; j++)
      coef[j] = j > i && j < r ? dots[j] / norm : 0.0;
    const double scale = 1.0 / norm;
    for (size_t k = threadIdx.x; k < rows; k += blockDim.x) {
      float *row = pm + k * (size_t)r;
      const double unit = row[i] * scale;
      row[i] = (float)unit;
#pragma unroll
      for (int j = 0; j < kMaxRank; j++)
        if (j > i && j < r)
          row[j] = (float)(row[j] - coef[j] * unit);
    }
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kOrthoThreads) orthonormalize_kernel(float *pm, size_t rows, int r) {
  __shared__ OrthoShared sh;
  mgs_sweep(pm, rows, r, sh);
  mgs_sweep(pm, rows, r, sh);
}

// ---- cuBLAS -----------------------------------------------------------------------------------

// Sets the handle up for one call and puts it back as it was on scope exit.
class HandleScope {
 public:
  HandleScope(cublasHandle_t h, cudaStream_t stream) : h_(h) {
    ok_ = cublasGetStream(h_, &old_stream_) == CUBLAS_STATUS_SUCCESS &&
          cublasGetPointerMode(h_, &old_pointer_) == CUBLAS_STATUS_SUCCESS &&
          cublasGetMathMode(h_, &old_math_) == CUBLAS_STATUS_SUCCESS;
    if (!ok_)
      return;
    saved_ = true;
    ok_ = cublasSetStream(h_, stream) == CUBLAS_STATUS_SUCCESS &&
          cublasSetPointerMode(h_, CUBLAS_POINTER_MODE_HOST) == CUBLAS_STATUS_SUCCESS &&
          cublasSetMathMode(h_, CUBLAS_DEFAULT_MATH) == CUBLAS_STATUS_SUCCESS;
  }
  ~HandleScope() {
    if (saved_) {
      cublasSetStream(h_, old_stream_);
      cublasSetPointerMode(h_, old_pointer_);
      cublasSetMathMode(h_, old_math_);
    }
  }
  bool ok() const { return ok_; }

 private:
  cublasHandle_t h_;
  cudaStream_t old_stream_ = nullptr;
  cublasPointerMode_t old_pointer_ = CUBLAS_POINTER_MODE_HOST;
  cublasMath_t old_math_ = CUBLAS_DEFAULT_MATH;
  bool ok_ = false;
  bool saved_ = false;
};

// A cuBLAS failure as an int result: the CUDA error it left, else cudaErrorUnknown.
int blas_failure() {
  cudaError_t e = cudaGetLastError();
  return (int)(e != cudaSuccess ? e : cudaErrorUnknown);
}

}  // namespace

namespace {

// C = A * op(B) on cuBLAS's column-major view of our row-major arrays, on `stream`, with
// the handle's settings restored afterwards.
int sgemm_on_stream(void *cublas_handle, void *stream, cublasOperation_t op_b, int mm, int nn, int kk,
                    const float *a, int lda, const float *b, int ldb, float *c, int ldc) {
  HandleScope scope((cublasHandle_t)cublas_handle, (cudaStream_t)stream);
  if (!scope.ok())
    return blas_failure();
  const float one = 1.0f, zero = 0.0f;
  if (cublasSgemm((cublasHandle_t)cublas_handle, CUBLAS_OP_N, op_b, mm, nn, kk, &one, a, lda, b, ldb, &zero, c,
                  ldc) != CUBLAS_STATUS_SUCCESS)
    return blas_failure();
  return (int)cudaGetLastError();
}

}  // namespace

extern "C" int lh_cuda_powersgd_compute_p(const lh_powersgd_params *p, const float *m, const float *q, float *pm,
                                          void *cublas_handle, void *stream) {
  if (!params_ok(p) || !m || !q || !pm || !cublas_handle)
    return (int)cudaErrorInvalidValue;
  const int rows = (int)p->rows, cols = (int)p->cols, r = p->rank;
  // P^T (r x rows, ld r) = Q^T (r x cols, ld r) * M^T (cols x rows, ld cols)
  return sgemm_on_stream(cublas_handle, stream, CUBLAS_OP_N, r, rows, cols, q, r, m, cols, pm, r);
}

extern "C" int lh_cuda_powersgd_compute_q(const lh_powersgd_params *p, const float *m, const float *pm, float *q,
                                          void *cublas_handle, void *stream) {
  if (!params_ok(p) || !m || !q || !pm || !cublas_handle)
    return (int)cudaErrorInvalidValue;
  const int rows = (int)p->rows, cols = (int)p->cols, r = p->rank;
  // Q^T (r x cols, ld r) = P^T (r x rows, ld r) * M (rows x cols: the stored cols x rows, ld cols, transposed)
  return sgemm_on_stream(cublas_handle, stream, CUBLAS_OP_T, r, cols, rows, pm, r, m, cols, q, r);
}

extern "C" int lh_cuda_powersgd_orthonormalize(const lh_powersgd_params *p, float *pm, void *cublas_handle,
                                               void *stream) {
  (void)cublas_handle;  // not needed: the kernel is ours
  if (!params_ok(p) || !pm)
    return (int)cudaErrorInvalidValue;
  orthonormalize_kernel<<<1, kOrthoThreads, 0, (cudaStream_t)stream>>>(pm, p->rows, p->rank);
  return (int)cudaGetLastError();
}

extern "C" int lh_cuda_powersgd_decode(const lh_powersgd_params *p, const uint8_t *in, float *out, int accumulate,
                                       void *cublas_handle, void *stream) {
  if (!params_ok(p) || !in || !out || !cublas_handle)
    return (int)cudaErrorInvalidValue;
  cudaStream_t s = (cudaStream_t)stream;
  const size_t bytes = (p->rows + p->cols) * (size_t)p->rank * sizeof(float);
  // cuBLAS wants float-aligned matrices; a payload at an odd offset goes through a copy.
  const float *pf = reinterpret_cast<const float *>(in);
  void *copy = nullptr;
  if (((uintptr_t)in & 3u) != 0) {
    cudaError_t e = cudaMallocAsync(&copy, bytes, s);
    if (e != cudaSuccess)
      return (int)e;
    e = cudaMemcpyAsync(copy, in, bytes, cudaMemcpyDeviceToDevice, s);
    if (e != cudaSuccess) {
      cudaFreeAsync(copy, s);
      return (int)e;
    }
    pf = static_cast<const float *>(copy);
  }
  const float *pm = pf;
  const float *q = pf + p->rows * (size_t)p->rank;
  const int rows = (int)p->rows, cols = (int)p->cols, r = p->rank;
  const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  int rc = 0;
  {
    HandleScope scope((cublasHandle_t)cublas_handle, s);
    // out^T (cols x rows, ld cols) = Q (Q^T stored r x cols, ld r, transposed) * P^T (r x rows, ld r)
    if (!scope.ok() || cublasSgemm((cublasHandle_t)cublas_handle, CUBLAS_OP_T, CUBLAS_OP_N, cols, rows, r, &one, q, r,
                                   pm, r, &beta, out, cols) != CUBLAS_STATUS_SUCCESS)
      rc = blas_failure();
  }
  if (copy) {
    cudaError_t e = cudaFreeAsync(copy, s);
    if (!rc && e != cudaSuccess)
      rc = (int)e;
  }
  if (!rc)
    rc = (int)cudaGetLastError();
  return rc;
}

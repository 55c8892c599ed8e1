// The CUDA path of train_gpt's model: see gpt_cuda.h for the API, gpt.h and gpt.c for the model.
//
// Layout of this file, as gpt.c's: the layers' kernels first (layer norm, bias and matmul on
// cuBLAS, attention, GELU, residual, embedding, softmax cross-entropy, AdamW and the gradient
// norm), then a stage's memory, then the stage's forward and backward, which chain the layers in
// exactly gpt.c's order over the same buffers (the names match gpt.c's).
//
// Row-major arrays on column-major cuBLAS: a row-major r x c array with row stride ld is, read
// column-major, the c x r transpose with leading dimension ld. So each row-major product
// Z = X Y is computed as Z^T = Y^T X^T, which cuBLAS sees as "Y times X" with no copies; the
// comment at each call names the product it computes and the transposes it asks for.
//
// Float arithmetic: this file builds with --fmad=false, so a * b + c is rounded twice as in
// gpt.c (built with -ffp-contract=off); divisions and square roots are IEEE (nvcc's defaults
// -prec-div=true -prec-sqrt=true). expf and logs are CUDA's, within an ulp or two of glibc's.
//
// Determinism: every reduction is a fixed tree or a fixed sequential loop, never an atomic, so
// the same inputs give the same bits on every run (cuBLAS's sgemm is deterministic on a given
// GPU and stream without its atomics mode, which stays off). Two reductions reproduce gpt.c's
// order exactly: the wpe and wte gradients (sequential loops over the rows, see
// embedding_backward), so the embedding's gradient is the CPU's bits when its input is.
#include "gpt_cuda.h"
#include "gpt_common.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

// ---- errors --------------------------------------------------------------------------------

namespace {

int cuda_check(cudaError_t e, const char *what) {
  if (e == cudaSuccess)
    return 0;
  return gpt_fail("%s failed: %s", what, cudaGetErrorString(e));
}

int blas_check(cublasStatus_t st, const char *what) {
  if (st == CUBLAS_STATUS_SUCCESS)
    return 0;
  return gpt_fail("%s failed: %s", what, cublasGetStatusString(st));
}

// After a launch: a bad configuration shows at once; a fault inside the kernel shows at the
// stream synchronisation that ends every API call.
#define LAUNCHED(name)                                        \
  do {                                                        \
    if (cuda_check(cudaGetLastError(), "the " name " kernel")) \
      return -1;                                              \
  } while (0)

#define CHECK(expr)     \
  do {                  \
    if (expr)           \
      return -1;        \
  } while (0)

// ---- launch shapes and reductions -----------------------------------------------------------

constexpr int kThreads = 256;            // threads of every block
constexpr int kWarps = kThreads / 32;    // warps of a block, for the one-warp-per-row kernels
constexpr unsigned kMaxBlocks = 1u << 16; // grid-stride loops cover the rest
constexpr unsigned kFull = 0xffffffffu;

unsigned blocks_for(size_t work, size_t per_block) {
  size_t b = (work + per_block - 1) / per_block;
  return b < 1 ? 1u : b > kMaxBlocks ? kMaxBlocks : (unsigned)b;
}

// Butterfly sums and maxima over a warp: every lane gets the result, and the order of the adds
// is fixed (the same bits every run). All 32 lanes must call.
__device__ double warp_sum(double v) {
  for (int off = 16; off > 0; off >>= 1)
    v += __shfl_xor_sync(kFull, v, off);
  return v;
}
__device__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1)
    v += __shfl_xor_sync(kFull, v, off);
  return v;
}
__device__ float warp_max(float v) {
  for (int off = 16; off > 0; off >>= 1)
    v = fmaxf(v, __shfl_xor_sync(kFull, v, off));
  return v;
}

// The same over a block of kThreads: warp results meet in shared memory and warp 0 combines
// them in warp order (thread 0 adds them up); every thread gets the result. Block-uniform
// calls only.
template <typename T, typename Op>
__device__ T block_reduce(T v, T *shared, Op op) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int off = 16; off > 0; off >>= 1)
    v = op(v, __shfl_xor_sync(kFull, v, off));
  __syncthreads(); // shared may still be read by an earlier call
  if (lane == 0)
    shared[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) { // kWarps values, combined in warp order
    T w = shared[0];
    for (int k = 1; k < kWarps; k++)
      w = op(w, shared[k]);
    shared[kWarps] = w;
  }
  __syncthreads();
  return shared[kWarps];
}

struct AddOp {
  template <typename T> __device__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// ---- layer norm (gpt.c: layernorm_forward / layernorm_backward) ------------------------------

constexpr double kLnEps = 1e-5; // LN_EPS in gpt.c

// One warp per row of C: the double sums of gpt.c (in a tree order instead of a sequential one:
// the float results agree but for the rare double rounding that falls on a float boundary).
__global__ void layernorm_forward_kernel(float *out, float *mean, float *rstd, const float *x, const float *g,
                                         const float *b, int N, int C) {
  const int lane = threadIdx.x & 31;
  for (long long i = (long long)blockIdx.x * kWarps + (threadIdx.x >> 5); i < N; i += (long long)gridDim.x * kWarps) {
    const float *xi = x + (size_t)i * C;
    float *oi = out + (size_t)i * C;
    double s = 0;
    for (int c = lane; c < C; c += 32)
      s += xi[c];
    s = warp_sum(s);
    double m = s / C, v = 0;
    for (int c = lane; c < C; c += 32)
      v += (xi[c] - m) * (xi[c] - m);
    v = warp_sum(v);
    float mf = (float)m, rf = (float)(1.0 / sqrt(v / C + kLnEps));
    for (int c = lane; c < C; c += 32) {
      float xhat = (xi[c] - mf) * rf;
      oi[c] = xhat * g[c] + b[c];
    }
    if (lane == 0) {
      mean[i] = mf;
      rstd[i] = rf;
    }
  }
}

// dx += rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), one warp per row.
__global__ void layernorm_backward_dx_kernel(float *dx, const float *dout, const float *x, const float *mean,
                                             const float *rstd, const float *g, int N, int C) {
  const int lane = threadIdx.x & 31;
  for (long long i = (long long)blockIdx.x * kWarps + (threadIdx.x >> 5); i < N; i += (long long)gridDim.x * kWarps) {
    const float *xi = x + (size_t)i * C, *di = dout + (size_t)i * C;
    float *dxi = dx + (size_t)i * C;
    float mf = mean[i], rf = rstd[i];
    double sum_d = 0, sum_dx = 0;
    for (int c = lane; c < C; c += 32) {
      float xhat = (xi[c] - mf) * rf, dxhat = di[c] * g[c];
      sum_d += dxhat;
      sum_dx += (double)dxhat * xhat;
    }
    sum_d = warp_sum(sum_d);
    sum_dx = warp_sum(sum_dx);
    float mean_d = (float)(sum_d / C), mean_dx = (float)(sum_dx / C);
    for (int c = lane; c < C; c += 32) {
      float xhat = (xi[c] - mf) * rf, dxhat = di[c] * g[c];
      dxi[c] += rf * (dxhat - mean_d - xhat * mean_dx);
    }
  }
}

// Column sums over the N rows, for the parameter gradients (bias: dout; layer norm: dout * xhat
// and dout). A block owns 32 columns; its 8 rows of threads each sum every 8th row (coalesced:
// a warp reads 32 adjacent columns of one row), then row 0 of threads adds the 8 partial sums in
// order onto the gradient. Fixed order, no atomics.
constexpr int kColWidth = 32, kColRows = kThreads / kColWidth;

__global__ void bias_backward_kernel(float *dbias, const float *dout, int N, int Out) {
  __shared__ float part[kColRows][kColWidth + 1];
  const int tx = threadIdx.x % kColWidth, ty = threadIdx.x / kColWidth;
  for (long long c0 = (long long)blockIdx.x * kColWidth; c0 < Out; c0 += (long long)gridDim.x * kColWidth) {
    long long c = c0 + tx;
    float s = 0;
    if (c < Out)
      for (long long i = ty; i < N; i += kColRows)
        s += dout[i * Out + c];
    part[ty][tx] = s;
    __syncthreads();
    if (ty == 0 && c < Out) {
      float t = part[0][tx];
      for (int r = 1; r < kColRows; r++)
        t += part[r][tx];
      dbias[c] += t;
    }
    __syncthreads(); // part is rewritten by the next round
  }
}

__global__ void layernorm_backward_params_kernel(float *dg, float *db, const float *dout, const float *x,
                                                 const float *mean, const float *rstd, int N, int C) {
  __shared__ float pg[kColRows][kColWidth + 1], pb[kColRows][kColWidth + 1];
  const int tx = threadIdx.x % kColWidth, ty = threadIdx.x / kColWidth;
  for (long long c0 = (long long)blockIdx.x * kColWidth; c0 < C; c0 += (long long)gridDim.x * kColWidth) {
    long long c = c0 + tx;
    float sg = 0, sb = 0;
    if (c < C)
      for (long long i = ty; i < N; i += kColRows) {
        float d = dout[i * C + c], xhat = (x[i * C + c] - mean[i]) * rstd[i];
        sg += d * xhat;
        sb += d;
      }
    pg[ty][tx] = sg;
    pb[ty][tx] = sb;
    __syncthreads();
    if (ty == 0 && c < C) {
      float tg = pg[0][tx], tb = pb[0][tx];
      for (int r = 1; r < kColRows; r++) {
        tg += pg[r][tx];
        tb += pb[r][tx];
      }
      dg[c] += tg;
      db[c] += tb;
    }
    __syncthreads();
  }
}

// out[i, o] = bias[o]: the matmul's beta = 1 adds the product onto it (as gpt.c).
__global__ void fill_rows_kernel(float *out, const float *bias, size_t n, int Out) {
  for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x)
    out[k] = bias[k % (size_t)Out];
}

// ---- causal softmax of the attention scores, forward and backward ----------------------------
// att holds rows of T scores; the row with index r is query position t = r % T (rows run over
// b, h, t with t fastest). One warp per row.

__global__ void attention_softmax_kernel(float *att, long long rows, int T) {
  const int lane = threadIdx.x & 31;
  for (long long r = (long long)blockIdx.x * kWarps + (threadIdx.x >> 5); r < rows; r += (long long)gridDim.x * kWarps) {
    float *row = att + (size_t)r * T;
    const int t = (int)(r % T);
    float mx = -INFINITY;
    for (int j = lane; j <= t; j += 32)
      mx = fmaxf(mx, row[j]);
    mx = warp_max(mx);
    float sum = 0;
    for (int j = lane; j <= t; j += 32) {
      float e = expf(row[j] - mx); // minus the max: exp cannot overflow
      row[j] = e;
      sum += e;
    }
    sum = warp_sum(sum);
    float inv = 1.0f / sum;
    // each lane rescales the entries it wrote itself; the masked ones become exact zeros
    for (int j = lane; j < T; j += 32)
      row[j] = j <= t ? row[j] * inv : 0.0f;
  }
}

// dS = P * (dP - rowsum(P * dP)) * scale, in place over dP (gpt.c's expression, term by term).
__global__ void attention_softmax_backward_kernel(float *dscore, const float *att, long long rows, int T,
                                                  float scale) {
  const int lane = threadIdx.x & 31;
  for (long long r = (long long)blockIdx.x * kWarps + (threadIdx.x >> 5); r < rows; r += (long long)gridDim.x * kWarps) {
    const float *pr = att + (size_t)r * T;
    float *dr = dscore + (size_t)r * T;
    const int t = (int)(r % T);
    float dot = 0;
    for (int j = lane; j <= t; j += 32)
      dot += pr[j] * dr[j];
    dot = warp_sum(dot);
    for (int j = lane; j < T; j += 32)
      dr[j] = pr[j] * (dr[j] - dot) * scale;
  }
}

// ---- GELU, residual (gpt.c: gelu_forward / gelu_backward / residual_forward) ------------------

constexpr float kGeluK = 0.7978845608028654f; // sqrt(2 / pi)
constexpr float kGeluA = 0.044715f;

__global__ void gelu_forward_kernel(float *out, const float *x, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float xi = x[i], u = kGeluK * (xi + kGeluA * xi * xi * xi);
    out[i] = xi / (1.0f + expf(-2.0f * u));
  }
}

// dx may be dout (in place).
__global__ void gelu_backward_kernel(float *dx, const float *x, const float *dout, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float xi = x[i], u = kGeluK * (xi + kGeluA * xi * xi * xi);
    float sg = 1.0f / (1.0f + expf(-2.0f * u));
    float du = kGeluK * (1.0f + 3.0f * kGeluA * xi * xi);
    float d = sg + xi * 2.0f * sg * (1.0f - sg) * du;
    dx[i] = d * dout[i];
  }
}

// out = a + b; out may be a or b.
__global__ void residual_forward_kernel(float *out, const float *a, const float *b, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    out[i] = a[i] + b[i];
}

// ---- embedding (gpt.c: embedding_forward / embedding_backward) --------------------------------

// out[b, t] = wte[token[b, t]] + wpe[t], one thread per element.
__global__ void embedding_forward_kernel(float *out, const int *tokens, const float *wte, const float *wpe,
                                         int N, int T, int C) {
  const size_t n = (size_t)N * C;
  for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
    size_t row = k / C, c = k % C, t = row % T;
    out[k] = wte[(size_t)tokens[row] * C + c] + wpe[t * C + c];
  }
}

// dwpe[t, c] += dout[b, t, c] for b = 0, 1, ...: one thread per (t, c), adding in gpt.c's order.
__global__ void embedding_backward_wpe_kernel(float *dwpe, const float *dout, int B, int T, int C) {
  const size_t n = (size_t)T * C;
  for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
    float acc = dwpe[k];
    for (int b = 0; b < B; b++)
      acc += dout[(size_t)b * n + k];
    dwpe[k] = acc;
  }
}

// The scatter-add into wte without atomics: the host sorted the rows by token (stably, so each
// token's rows stay in increasing order, gpt.c's order); block u owns the distinct token
// utok[u], whose rows are order[ustart[u] .. ustart[u + 1]), and its threads own channels. Each
// wte row is written by one thread per channel, so nothing races and the sums come out as
// gpt.c's sequential loop's.
__global__ void embedding_backward_wte_kernel(float *dwte, const float *dout, const int *order, const int *utok,
                                              const int *ustart, int nuniq, int C) {
  for (long long u = blockIdx.x; u < nuniq; u += gridDim.x) {
    float *e = dwte + (size_t)utok[u] * C;
    const int first = ustart[u], last = ustart[u + 1];
    for (int c = blockIdx.y * blockDim.x + threadIdx.x; c < C; c += gridDim.y * blockDim.x) {
      float acc = e[c];
      for (int k = first; k < last; k++)
        acc += dout[(size_t)order[k] * C + c];
      e[c] = acc;
    }
  }
}

// ---- softmax + cross-entropy (gpt.c: crossentropy_forward / crossentropy_backward) -----------

// One block per row of V logits, turned into probabilities in place. The row's loss
// log(sum exp(l - max)) - (l_target - max) goes to rowloss[i] in double; the host adds the rows
// in order, as gpt.c. targets and rowloss may be NULL (inference).
__global__ void crossentropy_forward_kernel(float *probs, double *rowloss, const int *targets, int N, int V) {
  __shared__ float sf[kWarps + 1];
  __shared__ double sd[kWarps + 1];
  for (long long i = blockIdx.x; i < N; i += gridDim.x) {
    float *row = probs + (size_t)i * V;
    // read before any thread overwrites the row (block_reduce's barriers come first)
    float target_logit = targets && threadIdx.x == 0 ? row[targets[i]] : 0.0f;
    float mx = -INFINITY;
    for (int v = threadIdx.x; v < V; v += kThreads)
      mx = fmaxf(mx, row[v]);
    mx = block_reduce(mx, sf, MaxOp());
    double sum = 0;
    for (int v = threadIdx.x; v < V; v += kThreads) {
      float e = expf(row[v] - mx);
      row[v] = e;
      sum += e;
    }
    sum = block_reduce(sum, sd, AddOp());
    float inv = (float)(1.0 / sum);
    for (int v = threadIdx.x; v < V; v += kThreads)
      row[v] *= inv;
    if (targets && threadIdx.x == 0)
      rowloss[i] = log(sum) - ((double)target_logit - mx);
    __syncthreads(); // the next row's first reduction reuses sf and sd
  }
}

// dlogits = scale * (p - onehot(target)), as gpt.c: scale * p, then minus scale at the target.
__global__ void crossentropy_backward_kernel(float *dlogits, const float *probs, const int *targets, float scale,
                                             int N, int V) {
  const size_t n = (size_t)N * V;
  for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
    float d = scale * probs[k];
    if ((int)(k % V) == targets[k / V])
      d -= scale;
    dlogits[k] = d;
  }
}

// ---- AdamW and the gradient norm (optim.c) ----------------------------------------------------

// optim.c's loop body, operation for operation (c1, c2 are computed on the host as there).
__global__ void adamw_kernel(float *params, float *mom1, float *mom2, const float *grads, const unsigned char *decay,
                             size_t n, float b1, float b2, float c1, float c2, float lr, float wd, float eps) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float g = grads[i];
    float m = b1 * mom1[i] + (1.0f - b1) * g;
    float v = b2 * mom2[i] + (1.0f - b2) * g * g;
    mom1[i] = m;
    mom2[i] = v;
    float p = params[i];
    float update = (m * c1) / (sqrtf(v * c2) + eps);
    if (!decay || decay[i])
      update += wd * p;
    params[i] = p - lr * update;
  }
}

// Per-block sums of squares in double; the host adds the kSumsqBlocks partial sums in order.
// A fixed grid, so the order of every add is the same on every run.
constexpr unsigned kSumsqBlocks = 256;

__global__ void sumsq_kernel(double *partial, const float *g, size_t n) {
  __shared__ double sd[kWarps + 1];
  double s = 0;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    s += (double)g[i] * g[i];
  s = block_reduce(s, sd, AddOp());
  if (threadIdx.x == 0)
    partial[blockIdx.x] = s;
}

__global__ void scale_kernel(float *g, size_t n, float factor) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    g[i] *= factor;
}

// ---- a stage's memory -------------------------------------------------------------------------

struct block_tensors {
  float *t[GPT_BLOCK_TENSORS]; // the table's order (GPT_LN1_G .. in gpt_common.h)
};

struct stage_tensors {
  float *wte, *wpe;
  block_tensors *blocks;
  float *lnf_g, *lnf_b, *head_w;
};

// A slot: gpt.c's arrays (gpt_common.h) in device memory, and what the GPU needs besides.
struct slot_acts {
  float *mem;      // device: every float array of arr
  int *imem;       // device: tokens, targets, and the embedding backward's row order
  double *rowloss; // device: N per-row losses (head stage)
  gpt_slot_arrays arr;
  int *tokens, *targets, *order, *utok, *ustart;
  int nuniq; // distinct tokens of the forward (embedding stage)
  gpt_slot_state state;
};

} // namespace

struct gpt_cuda_stage {
  gpt_shape sh;
  int first;
  size_t nparams, ntensors;
  gpt_tensor_info *tensors; // host copy of the CPU stage's table
  float *params, *grads;    // device
  unsigned char *decay;     // device decay mask
  stage_tensors p, g;
  slot_acts *slots;
  size_t slot_floats, slot_ints;
  // device scratch shared by the slots (gpt.c's, but dscore holds every head of every sequence,
  // B x H x T x T, so the softmax backward runs as one launch)
  float *scratch;
  gpt_scratch d;
  size_t scratch_floats;
  double *partial; // device: kSumsqBlocks
  // host scratch: the row order by token (embedding stage), the per-row losses, the partials
  int *h_count, *h_order, *h_utok, *h_ustart;
  double *h_rowloss, *h_partial;
  cudaStream_t stream;
  cublasHandle_t blas;
};

namespace {

// Device arrays start at multiples of 64 floats (256 bytes), cuBLAS's preferred alignment.
constexpr size_t kAlignFloats = 64;

void bind_tensors(const gpt_cuda_stage *s, float *base, stage_tensors *out) {
  size_t k = 0;
  if (s->sh.has_emb) {
    out->wte = base + s->tensors[k++].offset;
    out->wpe = base + s->tensors[k++].offset;
  }
  for (int i = 0; i < s->sh.nl; i++)
    for (int j = 0; j < GPT_BLOCK_TENSORS; j++)
      out->blocks[i].t[j] = base + s->tensors[k++].offset;
  if (s->sh.has_head) {
    out->lnf_g = base + s->tensors[k++].offset;
    out->lnf_b = base + s->tensors[k++].offset;
    out->head_w = base + s->tensors[k++].offset;
  }
}

// ---- the layers, as gpt.c's functions of the same names ---------------------------------------

// out (N x Out) = x (N x In) W (In x Out) + bias (bias may be NULL), as out^T = W^T x^T:
// column-major, W's array is W^T (Out x In, ld Out) and x's is x^T (In x N, ld In).
int matmul_forward(gpt_cuda_stage *s, float *out, const float *x, const float *w, const float *bias, int N, int In,
                   int Out) {
  const float one = 1.0f, zero = 0.0f;
  if (bias) {
    size_t n = (size_t)N * Out;
    fill_rows_kernel<<<blocks_for(n, kThreads), kThreads, 0, s->stream>>>(out, bias, n, Out);
    LAUNCHED("fill_rows");
  }
  return blas_check(cublasSgemm(s->blas, CUBLAS_OP_N, CUBLAS_OP_N, Out, N, In, &one, w, Out, x, In,
                                bias ? &one : &zero, out, Out),
                    "cublasSgemm (matmul forward)");
}

// dx = dout W^T (written; skipped if dx is NULL), dW += x^T dout, dbias += the column sums.
//   dx^T (In x N)  = op_T(W^T array) (In x Out) * dout^T (Out x N)
//   dW^T (Out x In) = dout^T (Out x N) * op_T(x^T array) (N x In), beta = 1
int matmul_backward(gpt_cuda_stage *s, float *dx, float *dw, float *dbias, const float *dout, const float *x,
                    const float *w, int N, int In, int Out) {
  const float one = 1.0f, zero = 0.0f;
  if (dx)
    CHECK(blas_check(cublasSgemm(s->blas, CUBLAS_OP_T, CUBLAS_OP_N, In, N, Out, &one, w, Out, dout, Out, &zero, dx, In),
                     "cublasSgemm (matmul backward, dx)"));
  CHECK(blas_check(cublasSgemm(s->blas, CUBLAS_OP_N, CUBLAS_OP_T, Out, In, N, &one, dout, Out, x, In, &one, dw, Out),
                   "cublasSgemm (matmul backward, dW)"));
  if (dbias) {
    bias_backward_kernel<<<blocks_for((size_t)Out, kColWidth), kThreads, 0, s->stream>>>(dbias, dout, N, Out);
    LAUNCHED("bias_backward");
  }
  return 0;
}

int layernorm_forward(gpt_cuda_stage *s, float *out, float *mean, float *rstd, const float *x, const float *g,
                      const float *b, int N, int C) {
  layernorm_forward_kernel<<<blocks_for((size_t)N, kWarps), kThreads, 0, s->stream>>>(out, mean, rstd, x, g, b, N, C);
  LAUNCHED("layernorm_forward");
  return 0;
}

int layernorm_backward(gpt_cuda_stage *s, float *dx, float *dg, float *db, const float *dout, const float *x,
                       const float *mean, const float *rstd, const float *g, int N, int C) {
  layernorm_backward_dx_kernel<<<blocks_for((size_t)N, kWarps), kThreads, 0, s->stream>>>(dx, dout, x, mean, rstd, g,
                                                                                        N, C);
  LAUNCHED("layernorm_backward_dx");
  layernorm_backward_params_kernel<<<blocks_for((size_t)C, kColWidth), kThreads, 0, s->stream>>>(dg, db, dout, x, mean,
                                                                                               rstd, N, C);
  LAUNCHED("layernorm_backward_params");
  return 0;
}

// Strided-batched sgemm over the H heads of one sequence: head h's q, k, v start hs floats after
// head h-1's (row stride 3C), its T x T block of att or dscore T*T floats after, its slice of
// the N x C output (or gradient) hs floats after.
int heads_gemm(gpt_cuda_stage *s, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
               const float *A, int lda, long long sa, const float *Bm, int ldb, long long sb, float *Cm, int ldc,
               long long sc, const char *what) {
  const float zero = 0.0f;
  return blas_check(cublasSgemmStridedBatched(s->blas, ta, tb, m, n, k, &alpha, A, lda, sa, Bm, ldb, sb, &zero, Cm,
                                              ldc, sc, s->sh.cfg.heads),
                    what);
}

// gpt.c's attention_forward. For sequence b, head h (q, k, v: T x hs, row stride 3C):
//   S = scale q k^T  as  S^T (T x T) = op_T(k^T array) (T x hs) * q^T array (hs x T)
//   y = P v          as  y^T (hs x T) = v^T array (hs x T) * P^T array (T x T)
// then the causal softmax of every row of every head at once.
int attention_forward(gpt_cuda_stage *s, float *out, float *att, const float *qkv, int B) {
  const int T = s->sh.cfg.context, C = s->sh.cfg.channels, H = s->sh.cfg.heads, hs = C / H, C3 = 3 * C;
  const float scale = 1.0f / sqrtf((float)hs);
  const long long TT = (long long)T * T;
  for (int b = 0; b < B; b++) {
    const float *q = qkv + (size_t)b * T * C3, *k = q + C;
    float *p = att + (size_t)b * H * TT;
    CHECK(heads_gemm(s, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs, scale, k, C3, hs, q, C3, hs, p, T, TT,
                     "cublasSgemmStridedBatched (attention scores)"));
  }
  const long long rows = (long long)B * H * T;
  attention_softmax_kernel<<<blocks_for((size_t)rows, kWarps), kThreads, 0, s->stream>>>(att, rows, T);
  LAUNCHED("attention_softmax");
  for (int b = 0; b < B; b++) {
    const float *v = qkv + (size_t)b * T * C3 + 2 * C;
    const float *p = att + (size_t)b * H * TT;
    CHECK(heads_gemm(s, CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T, 1.0f, v, C3, hs, p, T, TT, out + (size_t)b * T * C, C, hs,
                     "cublasSgemmStridedBatched (attention output)"));
  }
  return 0;
}

// gpt.c's attention_backward, per sequence and head:
//   dP = dy v^T    as  dP^T (T x T)  = op_T(v^T array) (T x hs) * dy^T array (hs x T)
//   dv = P^T dy    as  dv^T (hs x T) = dy^T array (hs x T) * op_T(P^T array) (T x T)
//   dS = P * (dP - rowsum(P * dP)) * scale  (one launch over all rows)
//   dq = dS k      as  dq^T (hs x T) = k^T array (hs x T) * dS^T array (T x T)
//   dk = dS^T q    as  dk^T (hs x T) = q^T array (hs x T) * op_T(dS^T array) (T x T)
// dqkv (N x 3C) is written whole: q, k and v columns of every head.
int attention_backward(gpt_cuda_stage *s, float *dqkv, const float *dout, const float *qkv, const float *att, int B) {
  const int T = s->sh.cfg.context, C = s->sh.cfg.channels, H = s->sh.cfg.heads, hs = C / H, C3 = 3 * C;
  const float scale = 1.0f / sqrtf((float)hs);
  const long long TT = (long long)T * T;
  for (int b = 0; b < B; b++) {
    const float *v = qkv + (size_t)b * T * C3 + 2 * C;
    float *dv = dqkv + (size_t)b * T * C3 + 2 * C;
    const float *p = att + (size_t)b * H * TT;
    float *ds = s->d.dscore + (size_t)b * H * TT;
    const float *dy = dout + (size_t)b * T * C;
    CHECK(heads_gemm(s, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs, 1.0f, v, C3, hs, dy, C, hs, ds, T, TT,
                     "cublasSgemmStridedBatched (attention dP)"));
    CHECK(heads_gemm(s, CUBLAS_OP_N, CUBLAS_OP_T, hs, T, T, 1.0f, dy, C, hs, p, T, TT, dv, C3, hs,
                     "cublasSgemmStridedBatched (attention dv)"));
  }
  const long long rows = (long long)B * H * T;
  attention_softmax_backward_kernel<<<blocks_for((size_t)rows, kWarps), kThreads, 0, s->stream>>>(s->d.dscore, att, rows,
                                                                                                T, scale);
  LAUNCHED("attention_softmax_backward");
  for (int b = 0; b < B; b++) {
    const float *q = qkv + (size_t)b * T * C3, *k = q + C;
    float *dq = dqkv + (size_t)b * T * C3, *dk = dq + C;
    const float *ds = s->d.dscore + (size_t)b * H * TT;
    CHECK(heads_gemm(s, CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T, 1.0f, k, C3, hs, ds, T, TT, dq, C3, hs,
                     "cublasSgemmStridedBatched (attention dq)"));
    CHECK(heads_gemm(s, CUBLAS_OP_N, CUBLAS_OP_T, hs, T, T, 1.0f, q, C3, hs, ds, T, TT, dk, C3, hs,
                     "cublasSgemmStridedBatched (attention dk)"));
  }
  return 0;
}

int gelu_forward(gpt_cuda_stage *s, float *out, const float *x, size_t n) {
  gelu_forward_kernel<<<blocks_for(n, kThreads), kThreads, 0, s->stream>>>(out, x, n);
  LAUNCHED("gelu_forward");
  return 0;
}

int gelu_backward(gpt_cuda_stage *s, float *dx, const float *x, const float *dout, size_t n) {
  gelu_backward_kernel<<<blocks_for(n, kThreads), kThreads, 0, s->stream>>>(dx, x, dout, n);
  LAUNCHED("gelu_backward");
  return 0;
}

int residual_forward(gpt_cuda_stage *s, float *out, const float *a, const float *b, size_t n) {
  residual_forward_kernel<<<blocks_for(n, kThreads), kThreads, 0, s->stream>>>(out, a, b, n);
  LAUNCHED("residual_forward");
  return 0;
}

// gpt.c's block_forward: y = x + attn(ln1(x)), then y = y + mlp(ln2(y)).
int block_forward(gpt_cuda_stage *s, const block_tensors *w, gpt_block_acts *a, const float *x, float *y, int B) {
  const int T = s->sh.cfg.context, C = s->sh.cfg.channels, N = B * T;
  const size_t NC = (size_t)N * C;
  CHECK(layernorm_forward(s, a->ln1, a->ln1_mean, a->ln1_rstd, x, w->t[GPT_LN1_G], w->t[GPT_LN1_B], N, C));
  CHECK(matmul_forward(s, a->qkv, a->ln1, w->t[GPT_QKV_W], w->t[GPT_QKV_B], N, C, 3 * C));
  CHECK(attention_forward(s, a->atty, a->att, a->qkv, B));
  CHECK(matmul_forward(s, y, a->atty, w->t[GPT_O_W], w->t[GPT_O_B], N, C, C));
  CHECK(residual_forward(s, a->mid, x, y, NC));
  CHECK(layernorm_forward(s, a->ln2, a->ln2_mean, a->ln2_rstd, a->mid, w->t[GPT_LN2_G], w->t[GPT_LN2_B], N, C));
  CHECK(matmul_forward(s, a->fc, a->ln2, w->t[GPT_FC_W], w->t[GPT_FC_B], N, C, 4 * C));
  CHECK(gelu_forward(s, a->gelu, a->fc, (size_t)N * 4 * C));
  CHECK(matmul_forward(s, y, a->gelu, w->t[GPT_PROJ_W], w->t[GPT_PROJ_B], N, 4 * C, C));
  return residual_forward(s, y, a->mid, y, NC);
}

// gpt.c's block_backward: in dres the gradient of the block's output, out that of its input.
int block_backward(gpt_cuda_stage *s, const block_tensors *w, block_tensors *g, const gpt_block_acts *a, const float *x,
                   int B) {
  const int T = s->sh.cfg.context, C = s->sh.cfg.channels, N = B * T;
  float *dres = s->d.dres, *dsmall = s->d.dsmall, *dbig = s->d.dbig;
  CHECK(matmul_backward(s, dbig, g->t[GPT_PROJ_W], g->t[GPT_PROJ_B], dres, a->gelu, w->t[GPT_PROJ_W], N, 4 * C, C));
  CHECK(gelu_backward(s, dbig, a->fc, dbig, (size_t)N * 4 * C));
  CHECK(matmul_backward(s, dsmall, g->t[GPT_FC_W], g->t[GPT_FC_B], dbig, a->ln2, w->t[GPT_FC_W], N, C, 4 * C));
  CHECK(layernorm_backward(s, dres, g->t[GPT_LN2_G], g->t[GPT_LN2_B], dsmall, a->mid, a->ln2_mean, a->ln2_rstd,
                           w->t[GPT_LN2_G], N, C));
  CHECK(matmul_backward(s, dsmall, g->t[GPT_O_W], g->t[GPT_O_B], dres, a->atty, w->t[GPT_O_W], N, C, C));
  CHECK(attention_backward(s, s->d.dqkv, dsmall, a->qkv, a->att, B));
  CHECK(matmul_backward(s, dsmall, g->t[GPT_QKV_W], g->t[GPT_QKV_B], s->d.dqkv, a->ln1, w->t[GPT_QKV_W], N, C, 3 * C));
  return layernorm_backward(s, dres, g->t[GPT_LN1_G], g->t[GPT_LN1_B], dsmall, x, a->ln1_mean, a->ln1_rstd,
                            w->t[GPT_LN1_G], N, C);
}

int stream_sync(gpt_cuda_stage *s, const char *what) { return cuda_check(cudaStreamSynchronize(s->stream), what); }

int copy_async(gpt_cuda_stage *s, void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, const char *what) {
  if (bytes == 0)
    return 0;
  return cuda_check(cudaMemcpyAsync(dst, src, bytes, kind, s->stream), what);
}

// The rows of a forward's tokens, sorted by token (a stable counting sort, rows in increasing
// order within a token), for embedding_backward_wte_kernel; uploaded into the slot.
int upload_token_order(gpt_cuda_stage *s, slot_acts *a, const int *tokens, int N) {
  const int V = s->sh.cfg.vocab;
  int *pos = s->h_count; // V zeros on entry, zeros again on exit
  for (int i = 0; i < N; i++)
    pos[tokens[i]]++;
  int run = 0;
  for (int v = 0; v < V; v++) {
    int c = pos[v];
    pos[v] = run;
    run += c;
  }
  for (int i = 0; i < N; i++)
    s->h_order[pos[tokens[i]]++] = i;
  int nu = 0;
  for (int k = 0; k < N; k++) {
    int t = tokens[s->h_order[k]];
    if (k == 0 || t != tokens[s->h_order[k - 1]]) {
      s->h_utok[nu] = t;
      s->h_ustart[nu] = k;
      nu++;
    }
  }
  s->h_ustart[nu] = N;
  memset(pos, 0, (size_t)V * sizeof(int));
  a->nuniq = nu;
  // pageable sources: cudaMemcpyAsync returns once they are staged, so the host arrays may be
  // reused by the next forward
  CHECK(copy_async(s, a->order, s->h_order, (size_t)N * sizeof(int), cudaMemcpyHostToDevice, "uploading the token order"));
  CHECK(copy_async(s, a->utok, s->h_utok, (size_t)nu * sizeof(int), cudaMemcpyHostToDevice, "uploading the token order"));
  return copy_async(s, a->ustart, s->h_ustart, (size_t)(nu + 1) * sizeof(int), cudaMemcpyHostToDevice,
              "uploading the token order");
}

void *host_alloc(size_t n, size_t size) { return n > SIZE_MAX / size ? nullptr : calloc(n ? n : 1, size); }

} // namespace

// ---- the API ----------------------------------------------------------------------------------

extern "C" {

const char *gpt_cuda_error(void) { return gpt_error(); }

int gpt_cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError(); // no driver or no device: clear the error, report none
    return 0;
  }
  return n > 0 ? n : 0;
}

int gpt_cuda_use_device(int index, char *name, size_t cap) {
  const int n = gpt_cuda_device_count();
  if (n == 0)
    return gpt_fail("gpt_cuda_use_device: this host has no usable CUDA device");
  const int dev = (index < 0 ? -(index + 1) : index) % n;
  cudaDeviceProp prop;
  if (cuda_check(cudaSetDevice(dev), "cudaSetDevice") ||
      cuda_check(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties"))
    return -1;
  if (name && cap)
    snprintf(name, cap, "%s", prop.name);
  return dev;
}

int gpt_cuda_stage_create(const gpt_config *cfg, int first_layer, int last_layer, int has_embedding, int has_head,
                          int max_batch, int slots, uint64_t seed, gpt_cuda_stage **out) {
  if (!cfg || !out)
    return gpt_fail("gpt_cuda_stage_create: cfg and out must not be NULL");
  *out = nullptr;
  if (gpt_check_shape(cfg, first_layer, last_layer, has_embedding, has_head, max_batch, slots))
    return -1;
  // The CPU stage draws the initial parameters; one slot of one sequence keeps its host memory
  // small (neither changes the parameters).
  gpt_stage *cpu = nullptr;
  if (gpt_stage_create(cfg, first_layer, last_layer, has_embedding, has_head, 1, 1, seed, &cpu))
    return -1;
  const gpt_config c = *cfg;

  gpt_cuda_stage *s = (gpt_cuda_stage *)calloc(1, sizeof *s);
  if (!s) {
    gpt_stage_free(cpu);
    return gpt_fail("out of host memory for a stage");
  }
  s->sh = gpt_shape{c, last_layer - first_layer, has_embedding != 0, has_head != 0, max_batch, slots};
  s->first = first_layer;
  s->nparams = gpt_stage_param_count(cpu);
  s->ntensors = gpt_stage_tensor_count(cpu);
  const size_t V = (size_t)c.vocab, N = (size_t)max_batch * c.context;
  unsigned char *mask = nullptr;

  s->tensors = (gpt_tensor_info *)host_alloc(s->ntensors, sizeof *s->tensors);
  s->p.blocks = (block_tensors *)host_alloc((size_t)s->sh.nl + 1, sizeof(block_tensors));
  s->g.blocks = (block_tensors *)host_alloc((size_t)s->sh.nl + 1, sizeof(block_tensors));
  s->slots = (slot_acts *)host_alloc((size_t)slots, sizeof *s->slots);
  s->h_rowloss = (double *)host_alloc(N, sizeof(double));
  s->h_partial = (double *)host_alloc(kSumsqBlocks, sizeof(double));
  mask = (unsigned char *)host_alloc(s->nparams, 1);
  if (!s->tensors || !s->p.blocks || !s->g.blocks || !s->slots || !s->h_rowloss || !s->h_partial || !mask)
    goto oom;
  if (s->sh.has_emb) {
    s->h_count = (int *)host_alloc(V, sizeof(int));
    s->h_order = (int *)host_alloc(N, sizeof(int));
    s->h_utok = (int *)host_alloc(N, sizeof(int));
    s->h_ustart = (int *)host_alloc(N + 1, sizeof(int));
    if (!s->h_count || !s->h_order || !s->h_utok || !s->h_ustart)
      goto oom;
  }
  for (size_t k = 0; k < s->ntensors; k++)
    gpt_stage_tensor(cpu, k, &s->tensors[k]);
  gpt_stage_decay_mask(cpu, mask);

  if (cuda_check(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking), "cudaStreamCreate"))
    goto error;
  if (blas_check(cublasCreate(&s->blas), "cublasCreate") ||
      blas_check(cublasSetStream(s->blas, s->stream), "cublasSetStream") ||
      // plain float32 products: no TF32, so the results track gpt.c's to float rounding
      blas_check(cublasSetMathMode(s->blas, CUBLAS_DEFAULT_MATH), "cublasSetMathMode") ||
      blas_check(cublasSetPointerMode(s->blas, CUBLAS_POINTER_MODE_HOST), "cublasSetPointerMode"))
    goto error;

  // parameters (the CPU stage's bits), gradients (zero), the decay mask
  if (cuda_check(cudaMalloc(&s->params, (s->nparams ? s->nparams : 1) * sizeof(float)), "cudaMalloc (parameters)") ||
      cuda_check(cudaMalloc(&s->grads, (s->nparams ? s->nparams : 1) * sizeof(float)), "cudaMalloc (gradients)") ||
      cuda_check(cudaMalloc(&s->decay, s->nparams ? s->nparams : 1), "cudaMalloc (decay mask)") ||
      cuda_check(cudaMalloc(&s->partial, kSumsqBlocks * sizeof(double)), "cudaMalloc (norm partials)") ||
      copy_async(s, s->params, gpt_stage_params(cpu), s->nparams * sizeof(float), cudaMemcpyHostToDevice,
           "uploading the initial parameters") ||
      copy_async(s, s->decay, mask, s->nparams, cudaMemcpyHostToDevice, "uploading the decay mask") ||
      cuda_check(cudaMemsetAsync(s->grads, 0, s->nparams * sizeof(float), s->stream), "zeroing the gradients"))
    goto error;
  bind_tensors(s, s->params, &s->p);
  bind_tensors(s, s->grads, &s->g);

  // the slots
  s->slot_floats = gpt_layout_slot(&s->sh, kAlignFloats, nullptr, nullptr);
  s->slot_ints = 5 * N + 1;
  if (s->slot_floats == SIZE_MAX || s->slot_floats > SIZE_MAX / sizeof(float))
    goto oom;
  for (int k = 0; k < slots; k++) {
    slot_acts *a = &s->slots[k];
    a->arr.blocks = (gpt_block_acts *)host_alloc((size_t)s->sh.nl + 1, sizeof *a->arr.blocks);
    if (!a->arr.blocks)
      goto oom;
    if (cuda_check(cudaMalloc(&a->mem, s->slot_floats * sizeof(float)), "cudaMalloc (a slot's activations)") ||
        cuda_check(cudaMalloc(&a->imem, s->slot_ints * sizeof(int)), "cudaMalloc (a slot's tokens)"))
      goto error;
    if (s->sh.has_head && cuda_check(cudaMalloc(&a->rowloss, N * sizeof(double)), "cudaMalloc (a slot's row losses)"))
      goto error;
    gpt_layout_slot(&s->sh, kAlignFloats, &a->arr, a->mem);
    a->tokens = a->imem;
    a->targets = a->imem + N;
    a->order = a->imem + 2 * N;
    a->utok = a->imem + 3 * N;
    a->ustart = a->imem + 4 * N;
  }

  // the backward's scratch, with the scores of every head of every sequence
  s->scratch_floats = gpt_layout_scratch(&s->sh, kAlignFloats, (size_t)max_batch * c.heads, nullptr, nullptr);
  if (s->scratch_floats == SIZE_MAX || s->scratch_floats > SIZE_MAX / sizeof(float))
    goto oom;
  if (cuda_check(cudaMalloc(&s->scratch, s->scratch_floats * sizeof(float)), "cudaMalloc (the backward's scratch)"))
    goto error;
  gpt_layout_scratch(&s->sh, kAlignFloats, (size_t)max_batch * c.heads, &s->d, s->scratch);
  if (stream_sync(s, "creating a stage"))
    goto error;
  free(mask);
  gpt_stage_free(cpu);
  *out = s;
  return 0;
oom:
  gpt_fail("out of memory for a stage of layers [%d, %d) with max_batch %d and %d slots", first_layer, last_layer,
       max_batch, slots);
error: // last_error says why
  free(mask);
  gpt_stage_free(cpu);
  gpt_cuda_stage_free(s);
  return -1;
}

void gpt_cuda_stage_free(gpt_cuda_stage *s) {
  if (!s)
    return;
  if (s->stream)
    cudaStreamSynchronize(s->stream); // nothing of ours may still run on what is freed
  if (s->slots)
    for (int k = 0; k < s->sh.slots; k++) {
      cudaFree(s->slots[k].mem);
      cudaFree(s->slots[k].imem);
      cudaFree(s->slots[k].rowloss);
      free(s->slots[k].arr.blocks);
    }
  free(s->slots);
  cudaFree(s->scratch);
  cudaFree(s->params);
  cudaFree(s->grads);
  cudaFree(s->decay);
  cudaFree(s->partial);
  if (s->blas)
    cublasDestroy(s->blas);
  if (s->stream)
    cudaStreamDestroy(s->stream);
  free(s->h_count);
  free(s->h_order);
  free(s->h_utok);
  free(s->h_ustart);
  free(s->h_rowloss);
  free(s->h_partial);
  free(s->p.blocks);
  free(s->g.blocks);
  free(s->tensors);
  free(s);
}

size_t gpt_cuda_stage_param_count(const gpt_cuda_stage *s) { return s->nparams; }
float *gpt_cuda_stage_params(gpt_cuda_stage *s) { return s->params; }
float *gpt_cuda_stage_grads(gpt_cuda_stage *s) { return s->grads; }

int gpt_cuda_stage_zero_grad(gpt_cuda_stage *s) {
  CHECK(cuda_check(cudaMemsetAsync(s->grads, 0, s->nparams * sizeof(float), s->stream), "zeroing the gradients"));
  return stream_sync(s, "zeroing the gradients");
}

int gpt_cuda_stage_params_to_host(gpt_cuda_stage *s, float *host) {
  if (!host)
    return gpt_fail("gpt_cuda_stage_params_to_host: host must not be NULL");
  CHECK(copy_async(s, host, s->params, s->nparams * sizeof(float), cudaMemcpyDeviceToHost, "copying the parameters out"));
  return stream_sync(s, "copying the parameters out");
}

int gpt_cuda_stage_params_from_host(gpt_cuda_stage *s, const float *host) {
  if (!host)
    return gpt_fail("gpt_cuda_stage_params_from_host: host must not be NULL");
  CHECK(copy_async(s, s->params, host, s->nparams * sizeof(float), cudaMemcpyHostToDevice, "copying the parameters in"));
  return stream_sync(s, "copying the parameters in");
}

int gpt_cuda_stage_grads_to_host(gpt_cuda_stage *s, float *host) {
  if (!host)
    return gpt_fail("gpt_cuda_stage_grads_to_host: host must not be NULL");
  CHECK(copy_async(s, host, s->grads, s->nparams * sizeof(float), cudaMemcpyDeviceToHost, "copying the gradients out"));
  return stream_sync(s, "copying the gradients out");
}

int gpt_cuda_stage_grads_from_host(gpt_cuda_stage *s, const float *host) {
  if (!host)
    return gpt_fail("gpt_cuda_stage_grads_from_host: host must not be NULL");
  CHECK(copy_async(s, s->grads, host, s->nparams * sizeof(float), cudaMemcpyHostToDevice, "copying the gradients in"));
  return stream_sync(s, "copying the gradients in");
}

size_t gpt_cuda_stage_tensor_count(const gpt_cuda_stage *s) { return s->ntensors; }

int gpt_cuda_stage_tensor(const gpt_cuda_stage *s, size_t i, gpt_tensor_info *out) {
  if (i >= s->ntensors)
    return gpt_fail("tensor %zu does not exist (the stage has %zu)", i, s->ntensors);
  *out = s->tensors[i];
  return 0;
}

void gpt_cuda_stage_decay_mask(const gpt_cuda_stage *s, unsigned char *mask) {
  for (size_t k = 0; k < s->ntensors; k++)
    memset(mask + s->tensors[k].offset, s->tensors[k].decay, s->tensors[k].count);
}

size_t gpt_cuda_stage_slot_bytes(const gpt_cuda_stage *s) {
  return s->slot_floats * sizeof(float) + s->slot_ints * sizeof(int) +
         (s->sh.has_head ? (size_t)s->sh.max_batch * s->sh.cfg.context * sizeof(double) : 0);
}
size_t gpt_cuda_stage_scratch_bytes(const gpt_cuda_stage *s) { return s->scratch_floats * sizeof(float); }

int gpt_cuda_stage_forward(gpt_cuda_stage *s, int slot, int B, const int *tokens, const float *input, float *output,
                           const int *targets, double *loss) {
  if (gpt_check_forward(s ? &s->sh : nullptr, slot, B, tokens, input, output, targets, loss, "gpt_cuda_stage_forward"))
    return -1;
  const int T = s->sh.cfg.context, C = s->sh.cfg.channels, V = s->sh.cfg.vocab, N = B * T;
  const size_t NC = (size_t)N * C, stride = (size_t)s->sh.max_batch * T * C;

  slot_acts *a = &s->slots[slot];
  a->state.filled = 0; // until this forward is complete
  if (s->sh.has_emb) {
    CHECK(copy_async(s, a->tokens, tokens, (size_t)N * sizeof(int), cudaMemcpyHostToDevice, "uploading the tokens"));
    CHECK(upload_token_order(s, a, tokens, N));
    embedding_forward_kernel<<<blocks_for(NC, kThreads), kThreads, 0, s->stream>>>(a->arr.res, a->tokens, s->p.wte,
                                                                                   s->p.wpe, N, T, C);
    LAUNCHED("embedding_forward");
  } else {
    CHECK(copy_async(s, a->arr.res, input, NC * sizeof(float), cudaMemcpyHostToDevice, "uploading the input"));
  }
  for (int i = 0; i < s->sh.nl; i++)
    CHECK(block_forward(s, &s->p.blocks[i], &a->arr.blocks[i], a->arr.res + i * stride,
                        a->arr.res + (i + 1) * stride, B));
  const float *last = a->arr.res + (size_t)s->sh.nl * stride;
  if (s->sh.has_head) {
    CHECK(layernorm_forward(s, a->arr.lnf, a->arr.lnf_mean, a->arr.lnf_rstd, last, s->p.lnf_g, s->p.lnf_b, N, C));
    CHECK(matmul_forward(s, a->arr.probs, a->arr.lnf, s->p.head_w, nullptr, N, C, V));
    if (targets)
      CHECK(copy_async(s, a->targets, targets, (size_t)N * sizeof(int), cudaMemcpyHostToDevice, "uploading the targets"));
    crossentropy_forward_kernel<<<blocks_for((size_t)N, 1), kThreads, 0, s->stream>>>(
        a->arr.probs, targets ? a->rowloss : nullptr, targets ? a->targets : nullptr, N, V);
    LAUNCHED("crossentropy_forward");
    if (targets) {
      CHECK(copy_async(s, s->h_rowloss, a->rowloss, (size_t)N * sizeof(double), cudaMemcpyDeviceToHost,
                 "copying the losses out"));
      CHECK(stream_sync(s, "gpt_cuda_stage_forward"));
      double total = 0; // in row order, as gpt.c
      for (int i = 0; i < N; i++)
        total += s->h_rowloss[i];
      *loss = total / N;
    }
  } else {
    CHECK(copy_async(s, output, last, NC * sizeof(float), cudaMemcpyDeviceToHost, "copying the output out"));
  }
  CHECK(stream_sync(s, "gpt_cuda_stage_forward"));
  a->state.B = B;
  a->state.has_targets = targets != nullptr;
  a->state.filled = 1;
  return 0;
}

int gpt_cuda_stage_backward(gpt_cuda_stage *s, int slot, int B, const float *grad_output, float *grad_input,
                            float loss_scale) {
  if (gpt_check_call(s ? &s->sh : nullptr, slot, B, "gpt_cuda_stage_backward"))
    return -1;
  slot_acts *a = &s->slots[slot];
  if (gpt_check_backward(&s->sh, slot, B, &a->state, grad_output, grad_input, "gpt_cuda_stage_backward"))
    return -1;
  const int T = s->sh.cfg.context, C = s->sh.cfg.channels, V = s->sh.cfg.vocab, N = B * T;
  const size_t NC = (size_t)N * C, stride = (size_t)s->sh.max_batch * T * C;

  const float *last = a->arr.res + (size_t)s->sh.nl * stride;
  if (s->sh.has_head) {
    // the mean over N tokens: each token's loss enters with weight 1/N
    const size_t NV = (size_t)N * V;
    crossentropy_backward_kernel<<<blocks_for(NV, kThreads), kThreads, 0, s->stream>>>(
        s->d.dlogits, a->arr.probs, a->targets, loss_scale / (float)N, N, V);
    LAUNCHED("crossentropy_backward");
    CHECK(matmul_backward(s, s->d.dsmall, s->g.head_w, nullptr, s->d.dlogits, a->arr.lnf, s->p.head_w, N, C, V));
    CHECK(cuda_check(cudaMemsetAsync(s->d.dres, 0, NC * sizeof(float), s->stream), "zeroing the stream's gradient"));
    CHECK(layernorm_backward(s, s->d.dres, s->g.lnf_g, s->g.lnf_b, s->d.dsmall, last, a->arr.lnf_mean, a->arr.lnf_rstd,
                             s->p.lnf_g, N, C));
  } else {
    CHECK(copy_async(s, s->d.dres, grad_output, NC * sizeof(float), cudaMemcpyHostToDevice, "uploading grad_output"));
  }
  for (int i = s->sh.nl - 1; i >= 0; i--)
    CHECK(block_backward(s, &s->p.blocks[i], &s->g.blocks[i], &a->arr.blocks[i], a->arr.res + i * stride, B));
  if (s->sh.has_emb) {
    embedding_backward_wpe_kernel<<<blocks_for((size_t)T * C, kThreads), kThreads, 0, s->stream>>>(s->g.wpe, s->d.dres,
                                                                                                  B, T, C);
    LAUNCHED("embedding_backward_wpe");
    dim3 grid(blocks_for((size_t)a->nuniq, 1), (unsigned)((C + kThreads - 1) / kThreads));
    embedding_backward_wte_kernel<<<grid, kThreads, 0, s->stream>>>(s->g.wte, s->d.dres, a->order, a->utok, a->ustart,
                                                                   a->nuniq, C);
    LAUNCHED("embedding_backward_wte");
  } else {
    CHECK(copy_async(s, grad_input, s->d.dres, NC * sizeof(float), cudaMemcpyDeviceToHost, "copying grad_input out"));
  }
  return stream_sync(s, "gpt_cuda_stage_backward");
}

int gpt_cuda_stage_probs_to_host(gpt_cuda_stage *s, int slot, float *host) {
  if (!s || !s->sh.has_head)
    return gpt_fail("gpt_cuda_stage_probs_to_host: not a head stage");
  if (slot < 0 || slot >= s->sh.slots || !s->slots[slot].state.filled)
    return gpt_fail("gpt_cuda_stage_probs_to_host: slot %d holds no forward", slot);
  if (!host)
    return gpt_fail("gpt_cuda_stage_probs_to_host: host must not be NULL");
  const slot_acts *a = &s->slots[slot];
  size_t n = (size_t)a->state.B * s->sh.cfg.context * s->sh.cfg.vocab;
  CHECK(copy_async(s, host, a->arr.probs, n * sizeof(float), cudaMemcpyDeviceToHost, "copying the probabilities out"));
  return stream_sync(s, "copying the probabilities out");
}

int gpt_cuda_stage_grad_sumsq(gpt_cuda_stage *s, double *sumsq) {
  if (!sumsq)
    return gpt_fail("gpt_cuda_stage_grad_sumsq: sumsq must not be NULL");
  sumsq_kernel<<<kSumsqBlocks, kThreads, 0, s->stream>>>(s->partial, s->grads, s->nparams);
  LAUNCHED("sumsq");
  CHECK(copy_async(s, s->h_partial, s->partial, kSumsqBlocks * sizeof(double), cudaMemcpyDeviceToHost,
             "copying the norm's partial sums out"));
  CHECK(stream_sync(s, "gpt_cuda_stage_grad_sumsq"));
  double total = 0;
  for (unsigned k = 0; k < kSumsqBlocks; k++)
    total += s->h_partial[k];
  *sumsq = total;
  return 0;
}

int gpt_cuda_stage_grad_scale(gpt_cuda_stage *s, float factor) {
  scale_kernel<<<blocks_for(s->nparams, kThreads), kThreads, 0, s->stream>>>(s->grads, s->nparams, factor);
  LAUNCHED("scale");
  return stream_sync(s, "gpt_cuda_stage_grad_scale");
}

int gpt_cuda_adamw_init(gpt_cuda_adamw *opt, size_t n) {
  if (!opt)
    return gpt_fail("gpt_cuda_adamw_init: opt must not be NULL");
  memset(opt, 0, sizeof *opt);
  if (n > SIZE_MAX / sizeof(float))
    return gpt_fail("gpt_cuda_adamw_init: n = %zu is too large", n);
  size_t bytes = (n ? n : 1) * sizeof(float);
  if (cuda_check(cudaMalloc(&opt->m, bytes), "cudaMalloc (AdamW's first moments)") ||
      cuda_check(cudaMalloc(&opt->v, bytes), "cudaMalloc (AdamW's second moments)") ||
      cuda_check(cudaMemset(opt->m, 0, bytes), "zeroing AdamW's moments") ||
      cuda_check(cudaMemset(opt->v, 0, bytes), "zeroing AdamW's moments") ||
      cuda_check(cudaDeviceSynchronize(), "zeroing AdamW's moments")) {
    gpt_cuda_adamw_destroy(opt);
    return -1;
  }
  opt->n = n;
  return 0;
}

void gpt_cuda_adamw_destroy(gpt_cuda_adamw *opt) {
  if (!opt)
    return;
  cudaFree(opt->m);
  cudaFree(opt->v);
  memset(opt, 0, sizeof *opt);
}

int gpt_cuda_adamw_to_host(const gpt_cuda_adamw *opt, float *m, float *v) {
  if (!opt || !m || !v)
    return gpt_fail("gpt_cuda_adamw_to_host: opt, m and v must not be NULL");
  if (cuda_check(cudaMemcpy(m, opt->m, opt->n * sizeof(float), cudaMemcpyDeviceToHost), "copying AdamW's moments out") ||
      cuda_check(cudaMemcpy(v, opt->v, opt->n * sizeof(float), cudaMemcpyDeviceToHost), "copying AdamW's moments out"))
    return -1;
  return 0;
}

int gpt_cuda_adamw_from_host(gpt_cuda_adamw *opt, const float *m, const float *v) {
  if (!opt || !m || !v)
    return gpt_fail("gpt_cuda_adamw_from_host: opt, m and v must not be NULL");
  if (cuda_check(cudaMemcpy(opt->m, m, opt->n * sizeof(float), cudaMemcpyHostToDevice), "copying AdamW's moments in") ||
      cuda_check(cudaMemcpy(opt->v, v, opt->n * sizeof(float), cudaMemcpyHostToDevice), "copying AdamW's moments in"))
    return -1;
  return 0;
}

int gpt_cuda_stage_adamw_step(gpt_cuda_stage *s, gpt_cuda_adamw *opt, const gpt_adamw_hparams *hp) {
  if (!s || !opt || !hp)
    return gpt_fail("gpt_cuda_stage_adamw_step: s, opt and hp must not be NULL");
  if (opt->n != s->nparams)
    return gpt_fail("gpt_cuda_stage_adamw_step: the optimiser has %zu parameters, the stage %zu", opt->n, s->nparams);
  opt->step++;
  // optim.c's bias corrections, computed the same way (double, then float)
  float c1 = (float)(1.0 / (1.0 - pow(hp->beta1, (double)opt->step)));
  float c2 = (float)(1.0 / (1.0 - pow(hp->beta2, (double)opt->step)));
  adamw_kernel<<<blocks_for(s->nparams, kThreads), kThreads, 0, s->stream>>>(
      s->params, opt->m, opt->v, s->grads, s->decay, s->nparams, hp->beta1, hp->beta2, c1, c2, hp->lr,
      hp->weight_decay, hp->eps);
  LAUNCHED("adamw");
  return stream_sync(s, "gpt_cuda_stage_adamw_step");
}

} // extern "C"

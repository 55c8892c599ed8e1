// The compressed all-reduce (include/longhaul/allreduce.h) under MPI, for 2-5 ranks.
//
// Every rank computes every rank's input from (seed, rank, index) (mpi_test.h), so each rank
// knows the exact answer and, for the algorithms whose arithmetic the header pins down, the
// exact bits to expect, rebuilt here frame by frame with the public codec API (lh_codec_*):
//   ALLGATHER   each frame's result = sum_r D(E(x_r)) in rank order (no re-encode).
//   OWNER       each frame's owner sums the ranks' contributions in fp32 and re-encodes the sum
//               once; everyone decodes those bytes: D(E(sum)).
//   SHARED_RING the agreed scale of a block = the max over ranks of its max |x|; the result =
//               decode(sum of every rank's integer codes under the agreed scales).
//   QRING       bounds derived from the codec (see qring_bounds); on top, the exact bits of
//               the ring schedule of lib/collective/qring.c for round-to-nearest.
//   RING, codec NONE: the exact sum (inputs with 20 significant bits sum exactly in fp32).
// Where blocks and top-k chunks begin is the implementation's business (the header leaves
// it open), so the frames -- the ring's n segments, each cut in pipeline pieces of whole
// blocks/chunks -- are taken from the library's own layout (lh_engine_init, lh_layout_make);
// only the arithmetic inside a frame is checked against the header.
// Everywhere: the same bits on every rank, the same bits on a second run, mean == sum / n
// bit for bit, in place == out of place, and sendbuf untouched. Every error bound is checked
// to be smaller than the error of a deliberately wrong answer (rank 0's input alone).
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

#include "collective/collective_internal.h"
#include "mpi/mpi_test.h"

namespace {

// ---- ranks --------------------------------------------------------------------------------

// A timeout well under the ctest limit: a rank left waiting by a bug returns LH_ERR_TIMEOUT.
struct World : lh_test_world {
  explicit World(double timeout_s = 30.0) : lh_test_world(timeout_s) {}
};

// True on every rank when v is true on every rank (a collective: every rank must call it).
bool all_ranks(bool v) {
  int x = v ? 1 : 0, y = 0;
  MPI_Allreduce(&x, &y, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return y == 1;
}

// Every rank passed the same integer.
bool same_on_all_ranks(long long v) {
  long long lo = v, hi = v;
  MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_LONG_LONG, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
  return lo == hi;
}

uint64_t hash_bytes(const void *data, size_t bytes) {
  uint64_t h = 1469598103934665603ull;
  const unsigned char *p = static_cast<const unsigned char *>(data);
  for (size_t i = 0; i < bytes; i++)
    h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// Hash each rank's output, gather the hashes, compare.
void expect_identical_on_all_ranks(const std::vector<float> &out, const std::string &where) {
  uint64_t h = hash_bytes(out.data(), out.size() * sizeof(float)) ^ out.size();
  int n = lh_test_world_size();
  std::vector<uint64_t> all((size_t)n);
  MPI_Allgather(&h, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD);
  for (int r = 1; r < n; r++)
    EXPECT_EQ(all[(size_t)r], all[0]) << where << ": rank " << r << " ended with other bits than rank 0";
}

bool contains_ci(const std::string &hay, const std::string &needle) {
  std::string a = hay, b = needle;
  for (auto &ch : a)
    ch = (char)std::tolower((unsigned char)ch);
  for (auto &ch : b)
    ch = (char)std::tolower((unsigned char)ch);
  return a.find(b) != std::string::npos;
}

// ---- inputs -------------------------------------------------------------------------------

// 20 significant bits in [-1, 1): sums over <= 8 ranks are exact in fp32 in any order.
std::vector<float> exact_input(uint64_t seed, int rank, size_t count) {
  std::vector<float> v(count);
  for (size_t i = 0; i < count; i++)
    v[i] = lh_test_value(seed, rank, i);
  return v;
}

std::vector<std::vector<float>> all_inputs(uint64_t seed, int ranks, size_t count) {
  std::vector<std::vector<float>> xs;
  for (int r = 0; r < ranks; r++)
    xs.push_back(exact_input(seed, r, count));
  return xs;
}

// Sum over ranks in rank order, in fp32 (exact for exact_input).
std::vector<float> rank_order_sum(const std::vector<std::vector<float>> &xs) {
  std::vector<float> s(xs.empty() ? 0 : xs[0].size(), 0.0f);
  for (auto &x : xs)
    for (size_t i = 0; i < s.size(); i++)
      s[i] += x[i];
  return s;
}

// Integers c in [-h, h] times 2^-p: few significant bits, so casts and suitably scaled
// quantizers carry them (and their sums) without loss.
std::vector<float> grid_input(uint64_t seed, int rank, size_t count, int h, int p) {
  std::vector<float> v(count);
  for (size_t i = 0; i < count; i++) {
    int c = (int)(lh_test_hash(seed, (uint64_t)rank, i) % (uint64_t)(2 * h + 1)) - h;
    v[i] = std::ldexp((float)c, -p);
  }
  return v;
}

double norm2(const std::vector<float> &a, const std::vector<float> &b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); i++) {
    double d = (double)a[i] - (double)b[i];
    s += d * d;
  }
  return std::sqrt(s);
}
double norm2(const std::vector<float> &a) {
  double s = 0;
  for (float v : a)
    s += (double)v * v;
  return std::sqrt(s);
}

// Counts the elements where out != expected (as floats: +0 == -0), naming the first.
void expect_equal_values(const std::vector<float> &out, const std::vector<float> &expected,
                         const std::string &where) {
  ASSERT_EQ(out.size(), expected.size()) << where;
  size_t wrong = 0, first = 0;
  for (size_t i = 0; i < out.size(); i++)
    if (!(out[i] == expected[i])) {
      if (!wrong)
        first = i;
      wrong++;
    }
  EXPECT_EQ(wrong, 0u) << where << ": " << wrong << " of " << out.size() << " elements differ; first at " << first
                       << ": got " << (wrong ? out[first] : 0.0f) << ", expected "
                       << (wrong ? expected[first] : 0.0f);
}

// ---- the algorithm x codec cases ----------------------------------------------------------

struct Case {
  std::string name;
  lh_allreduce_algo algo;
  lh_codec_id codec;
  int bits = 0;         // 0: the default 8
  double density = 0;   // 0: the default 0.01
  lh_rounding rounding = LH_ROUND_NEAREST;
  int zstd = 0;
};

Case make_case(const char *name, lh_allreduce_algo algo, lh_codec_id codec, int bits = 0, double density = 0,
               lh_rounding rounding = LH_ROUND_NEAREST, int zstd = 0) {
  Case k;
  k.name = name;
  k.algo = algo;
  k.codec = codec;
  k.bits = bits;
  k.density = density;
  k.rounding = rounding;
  k.zstd = zstd;
  return k;
}

const uint64_t kConfigSeed = 0xC0FFEEull;

lh_allreduce_config make_config(const Case &k, size_t chunk_bytes = 0, lh_reduce_op op = LH_OP_SUM) {
  lh_allreduce_config cfg = LH_ALLREDUCE_CONFIG_INIT;
  cfg.algo = k.algo;
  cfg.codec = k.codec;
  cfg.bits = k.bits;
  cfg.density = k.density;
  cfg.rounding = k.rounding;
  cfg.zstd_level = k.zstd;
  cfg.chunk_bytes = chunk_bytes;
  cfg.op = op;
  cfg.seed = kConfigSeed;
  return cfg;
}

int eff_bits(const Case &k) { return k.bits ? k.bits : 8; }
double eff_density(const Case &k) { return k.density > 0 ? k.density : 0.01; }
const int kTopkChunk = 4096;  // the config's default topk_chunk
// Elements kept per chunk for a density. The header gives only the fraction; for the
// densities used here (0.01, 0.1, 1 of 4096) ceil and round-to-nearest agree (41, 410, 4096;
// 41 is also the codec's own default k).
int topk_k(const Case &k) {
  int kk = (int)std::lround(eff_density(k) * kTopkChunk);
  return std::min(std::max(kk, 1), kTopkChunk);
}

// A codec context with the parameters the all-reduce resolves from the case's config.
struct Codec {
  lh_codec *c = nullptr;
  lh_codec_id id;
  double density;
  Codec(const Case &k, int ranks) : id(k.codec), density(eff_density(k)) {
    EXPECT_EQ(lh_codec_create(k.codec, &c), LH_SUCCESS) << lh_last_error();
    switch (k.codec) {
    case LH_CODEC_BLOCKQ:
      EXPECT_EQ(lh_codec_set_param(c, LH_CP_BITS, eff_bits(k)), LH_SUCCESS) << lh_last_error();
      EXPECT_EQ(lh_codec_set_param(c, LH_CP_ROUNDING, k.rounding), LH_SUCCESS) << lh_last_error();
      break;
    case LH_CODEC_SHAREDQ:
      EXPECT_EQ(lh_codec_set_param(c, LH_CP_BITS, eff_bits(k)), LH_SUCCESS) << lh_last_error();
      EXPECT_EQ(lh_codec_set_param(c, LH_CP_RANKS, ranks), LH_SUCCESS) << lh_last_error();
      EXPECT_EQ(lh_codec_set_param(c, LH_CP_ROUNDING, k.rounding), LH_SUCCESS) << lh_last_error();
      break;
    case LH_CODEC_TOPK:
    case LH_CODEC_RANDK:
      EXPECT_EQ(lh_codec_set_param(c, LH_CP_CHUNK, kTopkChunk), LH_SUCCESS) << lh_last_error();
      EXPECT_EQ(lh_codec_set_param(c, LH_CP_K, topk_k(k)), LH_SUCCESS) << lh_last_error();
      break;
    default:
      break;  // SIGN: block 128, fp32 scales, the defaults
    }
  }
  ~Codec() { lh_codec_free(c); }
  Codec(const Codec &) = delete;
  Codec &operator=(const Codec &) = delete;

  // The header's rule for TOPK and RANDK: a frame of n elements is cut into equal chunks of
  // about topk_chunk elements, each keeping lround(density x chunk) (at least 1).
  void fit(size_t n) {
    if ((id != LH_CODEC_TOPK && id != LH_CODEC_RANDK) || n == 0)
      return;
    size_t chunks = (n + kTopkChunk - 1) / kTopkChunk, chunk = (n + chunks - 1) / chunks;
    long kk = std::max(1L, std::lround(density * (double)chunk));
    EXPECT_EQ(lh_codec_set_param(c, LH_CP_CHUNK, (int)chunk), LH_SUCCESS) << lh_last_error();
    EXPECT_EQ(lh_codec_set_param(c, LH_CP_K, (int)kk), LH_SUCCESS) << lh_last_error();
  }
  std::vector<unsigned char> encode(const std::vector<float> &x) {
    fit(x.size());
    size_t cap = lh_codec_max_wire_bytes(c, x.size()), used = 0;
    std::vector<unsigned char> frame(cap ? cap : 1);
    EXPECT_EQ(lh_codec_encode(c, x.data(), x.size(), frame.data(), frame.size(), &used), LH_SUCCESS)
        << lh_last_error();
    frame.resize(used);
    return frame;
  }
  std::vector<float> decode(const std::vector<unsigned char> &frame, size_t n) {
    fit(n);
    std::vector<float> y(n);
    EXPECT_EQ(lh_codec_decode(c, frame.data(), frame.size(), y.data(), n), LH_SUCCESS) << lh_last_error();
    return y;
  }
  std::vector<float> roundtrip(const std::vector<float> &x) { return x.empty() ? x : decode(encode(x), x.size()); }
};

// ---- the frames, and what each algorithm makes of them ------------------------------------

// The frames the algorithms cut a tensor into, from the library's own layout: the ring's n
// segments (rank o owns segment o in OWNER), each in pipeline pieces of whole blocks/chunks.
struct Frames {
  lh_engine e;
  lh_status st;
  struct Span {
    int seg;
    size_t at, len;
  };
  std::vector<Span> spans;
  Frames(lh_comm c, const lh_allreduce_config &cfg, size_t count, int n) {
    lh_allreduce_config rc = cfg;
    rc.error_feedback = 0;
    st = lh_engine_init(&e, c, &rc, count);
    EXPECT_EQ(st, LH_SUCCESS) << lh_last_error();
    if (st != LH_SUCCESS)
      return;
    lh_layout lay = lh_layout_make(count, n, e.piece_elems);
    for (int seg = 0; seg < n; seg++)
      for (int j = 0; j < lay.pieces; j++) {
        size_t at, len = lh_piece_span(&lay, seg, j, &at);
        if (len)
          spans.push_back({seg, at, len});
      }
  }
  ~Frames() {
    if (st == LH_SUCCESS)
      lh_engine_release(&e);
  }
  Frames(const Frames &) = delete;
  Frames &operator=(const Frames &) = delete;
  // The codec key of the frame at `at` (the random-k choice; rank-free for random-k).
  void key(lh_codec *c, size_t at) { EXPECT_EQ(lh_engine_key(&e, c, at), LH_SUCCESS) << lh_last_error(); }
};

std::vector<float> slice(const std::vector<float> &x, size_t at, size_t len) {
  return std::vector<float>(x.begin() + (ptrdiff_t)at, x.begin() + (ptrdiff_t)(at + len));
}

// D(E(v)) for the frame at `at`.
std::vector<float> frame_rt(Codec &c, Frames &f, const std::vector<float> &v, size_t at) {
  f.key(c.c, at);
  return c.roundtrip(v);
}

void add_into(std::vector<float> &acc, const std::vector<float> &v) {
  for (size_t i = 0; i < acc.size(); i++)
    acc[i] += v[i];
}

// ALLGATHER: the n decoded frames summed in rank order.
std::vector<float> allgather_expected(const Case &k, Frames &f, const std::vector<std::vector<float>> &xs) {
  Codec c(k, (int)xs.size());
  std::vector<float> out(xs[0].size());
  for (auto &sp : f.spans) {
    std::vector<float> acc = frame_rt(c, f, slice(xs[0], sp.at, sp.len), sp.at);
    for (size_t r = 1; r < xs.size(); r++)
      add_into(acc, frame_rt(c, f, slice(xs[r], sp.at, sp.len), sp.at));
    std::copy(acc.begin(), acc.end(), out.begin() + (ptrdiff_t)sp.at);
  }
  return out;
}

// OWNER, one frame of owner o: D(E(sum)). The header says the owner decodes and sums "in fp32
// in rank order"; it leaves open whether the owner's own share is its raw values or its own
// encode. `rank_order` false gives the order owner first, then o-1, o-2, ... instead.
std::vector<float> owner_frame(Codec &c, Frames &f, const std::vector<std::vector<float>> &xs, int o, size_t at,
                               size_t len, bool own_raw, bool rank_order) {
  int n = (int)xs.size();
  auto share = [&](int r) {
    std::vector<float> v = slice(xs[(size_t)r], at, len);
    return own_raw && r == o ? v : frame_rt(c, f, v, at);
  };
  std::vector<float> acc;
  if (rank_order) {
    acc = share(0);
    for (int r = 1; r < n; r++)
      add_into(acc, share(r));
  } else {
    acc = share(o);
    for (int d = 1; d < n; d++)
      add_into(acc, share((o - d + n) % n));
  }
  return frame_rt(c, f, acc, at);
}

// SHARED_RING, one frame: scales agreed per block, each rank's codes, their exact sum, decoded.
std::vector<float> shared_frame(Codec &c, const std::vector<std::vector<float>> &xs, size_t at, size_t len) {
  size_t ns = lh_codec_scale_count(c.c, len);
  std::vector<float> agreed(ns, 0.0f), local(ns);
  for (auto &x : xs) {
    EXPECT_EQ(lh_codec_local_scales(c.c, x.data() + at, len, local.data()), LH_SUCCESS) << lh_last_error();
    for (size_t b = 0; b < ns; b++)
      agreed[b] = std::max(agreed[b], local[b]);
  }
  EXPECT_EQ(lh_codec_set_scales(c.c, agreed.data(), ns), LH_SUCCESS) << lh_last_error();
  size_t cap = lh_codec_max_wire_bytes(c.c, len);
  std::vector<unsigned char> acc = c.encode(slice(xs[0], at, len));
  size_t acc_bytes = acc.size();
  acc.resize(cap);
  for (size_t r = 1; r < xs.size(); r++) {
    std::vector<unsigned char> fr = c.encode(slice(xs[r], at, len));
    EXPECT_EQ(lh_codec_sum_wire(c.c, acc.data(), cap, &acc_bytes, fr.data(), fr.size()), LH_SUCCESS)
        << lh_last_error();
  }
  acc.resize(acc_bytes);
  return c.decode(acc, len);
}

std::vector<float> shared_expected(const Case &k, Frames &f, const std::vector<std::vector<float>> &xs) {
  Codec c(k, (int)xs.size());
  std::vector<float> out(xs[0].size());
  for (auto &sp : f.spans) {
    std::vector<float> v = shared_frame(c, xs, sp.at, sp.len);
    std::copy(v.begin(), v.end(), out.begin() + (ptrdiff_t)sp.at);
  }
  return out;
}

// QRING with round to nearest, following qring.c's schedule (the plain ring's): segment s
// starts as rank s's own encode; rank s+t decodes, adds its fp32 values, re-encodes; the last
// (the owner) encodes the full sum once and everyone decodes it. Not promised by the header
// (which rank starts a segment is open), so a different schedule fails here and nowhere else.
std::vector<float> qring_schedule_expected(const Case &k, Frames &f, const std::vector<std::vector<float>> &xs) {
  Codec c(k, (int)xs.size());
  int n = (int)xs.size();
  std::vector<float> out(xs[0].size());
  for (auto &sp : f.spans) {
    std::vector<float> p = frame_rt(c, f, slice(xs[(size_t)sp.seg], sp.at, sp.len), sp.at);
    for (int t = 1; t < n; t++) {
      add_into(p, slice(xs[(size_t)((sp.seg + t) % n)], sp.at, sp.len));
      p = frame_rt(c, f, p, sp.at);
    }
    std::copy(p.begin(), p.end(), out.begin() + (ptrdiff_t)sp.at);
  }
  return out;
}
// ---- QRING error bounds -------------------------------------------------------------------
//
// QRING encodes each segment n times: the running partial after 1, 2, ..., n-1 ranks (each
// hop decodes, adds its own fp32 data, re-encodes) and the owner's full sum (everyone decodes
// those bytes). Inputs lie in [-1, 1), so the k-th partial is at most P_k = k + (error so far)
// in magnitude, and the k-th encode errs by at most
//   FP16 / BF16      u |v| <= u P_k, u = 2^-11 / 2^-8 (round to nearest even), plus half the
//                    fp16 subnormal spacing, 2^-25, near 0;
//   BLOCKQ, b bits   half a step, s / M with M = 2^b - 2 codes above the lowest and s the
//                    block's max |v| <= P_k (nearest); a whole step, 2 s / M (stochastic).
// Per element (hard bound): |out - exact| <= E_n, E_k = E_{k-1} + unit * P_k.
// Over many elements (count >= 1000), the RMS error, with errors of different encodes
// independent:
//   casts: mean square of the k-th encode's error <= u^2 * mean(p_k^2) = u^2 k / 3 (a partial
//          of k independent uniforms on [-1, 1)), so rel <= u sqrt(sum_k k / 3) / rms(exact);
//   BLOCKQ: a rounding error spread evenly over +-s/M has mean square (s/M)^2 / 3 (nearest),
//          stochastic rounding p(1-p) (2s/M)^2 averaged over p: (s/M)^2 * 2 / 3; with s <= P_k:
//          rel <= sqrt(f sum_k (P_k / M)^2) / rms(exact), f = 1/3 or 2/3.
// A slack of 1.25 (casts) / 1.5 (BLOCKQ) covers sampling noise. For 5 ranks that is ~0.009
// (fp16 ~0.001) for BF16, ~0.02 for int8, ~0.4 for int4, while rank 0's input alone is off by
// sqrt((n-1)/n) >= 0.7: the bounds can fail.
struct Bounds {
  double abs_per_element;
  double rel_rms;  // needs rms_exact
};

Bounds qring_bounds(const Case &k, int n, double rms_exact) {
  bool cast = k.codec == LH_CODEC_FP16 || k.codec == LH_CODEC_BF16;
  double unit, floor_abs = 0;
  if (k.codec == LH_CODEC_FP16) {
    unit = std::ldexp(1.0, -11);
    floor_abs = std::ldexp(1.0, -25);
  } else if (k.codec == LH_CODEC_BF16) {
    unit = std::ldexp(1.0, -8);
  } else {
    double m = (double)((1 << eff_bits(k)) - 2);
    if (eff_bits(k) == 1)
      m = 1;
    unit = (k.rounding == LH_ROUND_STOCHASTIC ? 2.0 : 1.0) / m;
  }
  double e = 0, sum_p2 = 0, sum_k = 0;
  for (int j = 1; j <= n; j++) {
    double p = j + e;
    e += unit * p + floor_abs;
    sum_p2 += p * p;
    sum_k += j;
  }
  Bounds b;
  b.abs_per_element = e * 1.0001 + n * 1e-6;  // plus fp32 rounding of the adds
  if (cast) {
    b.rel_rms = 1.25 * unit * std::sqrt(sum_k / 3.0) / rms_exact;
  } else {
    double m = (double)((1 << eff_bits(k)) - 2);
    double f = k.rounding == LH_ROUND_STOCHASTIC ? 2.0 / 3.0 : 1.0 / 3.0;
    b.rel_rms = 1.5 * std::sqrt(f * sum_p2) / m / rms_exact;
  }
  return b;
}

// ---- checking one result ------------------------------------------------------------------

// Values of `out` -- every rank's result of reducing exact_input(seed, r, count) with `cfg`
// (one lh_allreduce call, or a reducer's first step of a tensor alone) -- against what
// algo x codec promises.
void check_values(lh_comm comm, int nranks, const Case &k, const lh_allreduce_config &cfg, lh_allreduce_algo algo,
                  uint64_t seed, size_t count, const std::vector<float> &out, const std::string &where,
                  bool bounds_only = false) {
  auto xs = all_inputs(seed, nranks, count);
  std::vector<float> exact = rank_order_sum(xs);
  if (k.codec == LH_CODEC_NONE || k.codec == LH_CODEC_POWERSGD) {
    // Lossless, or POWERSGD on a vector: "tensors with rows <= 1 ... go uncompressed".
    expect_equal_values(out, exact, where + " (exact sum)");
    return;
  }
  bool sparse = k.codec == LH_CODEC_TOPK || k.codec == LH_CODEC_RANDK;
  // (A frame shorter than k keeps everything: top-k and random-k must lose something only once
  // a rank's segment holds a whole chunk of 4096.)
  if (count >= 1000 && (!sparse || (eff_density(k) < 1.0 && count / (size_t)nranks >= (size_t)kTopkChunk))) {
    size_t changed = 0;
    for (size_t i = 0; i < count; i++)
      changed += out[i] != exact[i];
    EXPECT_GT(changed, 0u) << where << ": a lossy codec gave the exact sum everywhere: was it applied?";
  }
  if (sparse && count >= 1000 && !bounds_only) {
    // density is "the fraction kept": with k per chunk rounded and chunks cut at frame ends,
    // allow one element per chunk and per frame on top of 1.5 x density; ALLGATHER's result is
    // the union of n ranks' selections.
    size_t nnz = 0;
    for (float v : out)
      nnz += v != 0.0f;
    double frames_bound = (double)nranks * (double)(count / (size_t)kTopkChunk + 2);
    double limit = 1.5 * eff_density(k) * (double)count + 2 * frames_bound;
    if (algo == LH_ALLREDUCE_ALLGATHER && k.codec == LH_CODEC_TOPK)
      limit *= nranks;
    EXPECT_LE((double)nnz, limit) << where << ": " << nnz << " of " << count
                                  << " elements kept (nonzero) at density " << eff_density(k);
  }
  if (k.codec == LH_CODEC_RANDK) {
    // Every rank keeps the same elements (shared seed), whose sums are exact here; everything
    // else is 0. (The exact bits, below, also pin how many survive the owner's re-encode.)
    size_t nnz = 0, bad = 0, first = 0;
    for (size_t i = 0; i < count; i++)
      if (out[i] != 0.0f) {
        nnz++;
        if (out[i] != exact[i] && !bad++)
          first = i;
      }
    EXPECT_EQ(bad, 0u) << where << ": random-k output not the exact sum where kept; first at " << first << ": "
                       << (bad ? out[first] : 0.0f) << " vs " << (bad ? exact[first] : 0.0f);
    if (count >= 1000)
      EXPECT_GE((double)nnz, 0.4 * eff_density(k) * (double)count) << where << ": most kept elements were lost";
  }
  if (bounds_only && algo != LH_ALLREDUCE_QRING)
    return;
  if (algo == LH_ALLREDUCE_QRING) {
    double rms_exact = count ? norm2(exact) / std::sqrt((double)count) : 1.0;
    Bounds b = qring_bounds(k, nranks, count >= 1000 ? rms_exact : 1.0);
    double max_err = 0;
    size_t worst = 0;
    for (size_t i = 0; i < count; i++) {
      double d = std::fabs((double)out[i] - (double)exact[i]);
      if (!(d <= max_err)) {
        max_err = d;
        worst = i;
      }
    }
    EXPECT_LE(max_err, b.abs_per_element) << where << ": element " << worst << " is " << (count ? out[worst] : 0)
                                          << ", exact " << (count ? exact[worst] : 0);
    if (count >= 1000) {
      double rel = norm2(out, exact) / norm2(exact);
      EXPECT_LE(rel, b.rel_rms) << where << ": relative error";
      if (nranks > 1) {
        double wrong = norm2(xs[0], exact) / norm2(exact);
        EXPECT_LT(b.rel_rms, wrong) << where << ": the bound would accept rank 0's input alone";
      }
    }
    if (bounds_only || k.rounding != LH_ROUND_NEAREST)
      return;
    Frames f(comm, cfg, count, nranks);
    expect_equal_values(out, qring_schedule_expected(k, f, xs), where + " (qring.c's ring schedule, exact bits)");
    return;
  }
  Frames f(comm, cfg, count, nranks);
  if (algo == LH_ALLREDUCE_SHARED_RING) {
    expect_equal_values(out, shared_expected(k, f, xs), where + " (sum of codes under agreed scales)");
    return;
  }
  if (algo == LH_ALLREDUCE_ALLGATHER) {
    expect_equal_values(out, allgather_expected(k, f, xs), where + " (allgather: sum_r D(E(x_r)) in rank order)");
    if (k.codec == LH_CODEC_TOPK && eff_density(k) >= 1.0)
      expect_equal_values(out, exact, where + " (top-k at density 1 keeps everything)");
    return;
  }
  if (algo == LH_ALLREDUCE_OWNER) {
    // Frame by frame: D(E(sum)) for some reading of the header (own share raw or encoded; rank
    // order, or owner first then descending -- OwnerSumsInRankOrder holds the order itself).
    Codec c(k, nranks);
    size_t bad_frames = 0;
    std::string first;
    for (auto &sp : f.spans) {
      std::vector<float> got = slice(out, sp.at, sp.len), header_reading;
      bool ok = false;
      for (int variant = 0; variant < 4 && !ok; variant++) {
        std::vector<float> v = owner_frame(c, f, xs, sp.seg, sp.at, sp.len, variant & 1, !(variant & 2));
        if (variant == 0)
          header_reading = v;
        ok = std::equal(got.begin(), got.end(), v.begin());
      }
      if (!ok && !bad_frames++) {
        size_t i = 0;
        while (i < sp.len && got[i] == header_reading[i])
          i++;
        first = "owner " + std::to_string(sp.seg) + " frame at " + std::to_string(sp.at) + " (+" +
                std::to_string(sp.len) + "): element " + std::to_string(sp.at + i) + " is " +
                std::to_string(i < sp.len ? got[i] : 0.0f) + ", D(E(rank-order sum of D(E(x_r)))) is " +
                std::to_string(i < sp.len ? header_reading[i] : 0.0f) + ", exact " +
                std::to_string(exact[sp.at + (i < sp.len ? i : 0)]);
      }
    }
    EXPECT_EQ(bad_frames, 0u) << where << ": frames not D(E(sum of the ranks' shares)); first: " << first;
    if (k.codec == LH_CODEC_TOPK && eff_density(k) >= 1.0)
      expect_equal_values(out, exact, where + " (top-k at density 1 keeps everything)");
    return;
  }
  ADD_FAILURE() << where << ": no check for this algorithm x codec";
}

// Counts to try on n ranks: 0, 1, fewer than ranks, odd primes, and (with small pipeline
// chunks) counts spanning many pieces.
struct CountChunk {
  size_t count, chunk_bytes;
};
std::vector<CountChunk> counts_for(int n) {
  std::vector<size_t> plain = {0, 1, 2, 3, (size_t)std::max(n - 1, 1), (size_t)n + 1, 1009, 100003};
  std::sort(plain.begin(), plain.end());
  plain.erase(std::unique(plain.begin(), plain.end()), plain.end());
  std::vector<CountChunk> out;
  for (size_t c : plain)
    out.push_back({c, 0});
  out.push_back({50021, 4096});  // ~50 pieces of 1024 floats (or of whole blocks/chunks)
  out.push_back({4099, 4096});
  return out;
}

// One algorithm x codec across every count: status, identical bits, values, a second run.
// At count 1009 (and 4099 in small chunks) also op MEAN (== sum / n bitwise) and in place.
void run_case(World &w, const Case &k) {
  for (const CountChunk &cc : counts_for(w.size)) {
    size_t count = cc.count;
    std::string where = k.name + " np" + std::to_string(w.size) + " count " + std::to_string(count) +
                        (cc.chunk_bytes ? " chunk_bytes " + std::to_string(cc.chunk_bytes) : "");
    uint64_t seed = 1000 + count;
    lh_allreduce_config cfg = make_config(k, cc.chunk_bytes);
    lh_allreduce_algo algo = k.algo;
    if (algo == LH_ALLREDUCE_AUTO) {
      EXPECT_EQ(lh_allreduce_choose(w.c, &cfg, count, &algo), LH_SUCCESS) << where << ": " << lh_last_error();
      EXPECT_NE(algo, LH_ALLREDUCE_AUTO) << where;
      EXPECT_TRUE(same_on_all_ranks(algo)) << where << ": ranks chose different algorithms";
    }
    std::vector<float> in = exact_input(seed, w.rank, count), out(count, NAN);
    lh_status st = lh_allreduce(w.c, in.data(), out.data(), count, &cfg);
    EXPECT_EQ(st, LH_SUCCESS) << where << ": " << lh_status_string(st) << ": " << lh_last_error();
    if (!all_ranks(st == LH_SUCCESS))
      continue;
    EXPECT_TRUE(in == exact_input(seed, w.rank, count)) << where << ": out of place must not touch sendbuf";
    expect_identical_on_all_ranks(out, where);
    check_values(w.c, w.size, k, cfg, algo, seed, count, out, where);

    std::vector<float> again(count, NAN);
    st = lh_allreduce(w.c, in.data(), again.data(), count, &cfg);
    EXPECT_EQ(st, LH_SUCCESS) << where << " (second run): " << lh_last_error();
    EXPECT_EQ(0, count ? std::memcmp(out.data(), again.data(), count * sizeof(float)) : 0)
        << where << ": a second run gave other bits";

    if (count == 1009 || (count == 4099 && cc.chunk_bytes)) {
      std::vector<float> inplace = in;
      st = lh_allreduce(w.c, inplace.data(), inplace.data(), count, &cfg);
      EXPECT_EQ(st, LH_SUCCESS) << where << " (in place): " << lh_last_error();
      EXPECT_EQ(0, std::memcmp(out.data(), inplace.data(), count * sizeof(float)))
          << where << ": in place gave other bits than out of place";

      lh_allreduce_config mean_cfg = make_config(k, cc.chunk_bytes, LH_OP_MEAN);
      std::vector<float> mean(count, NAN);
      st = lh_allreduce(w.c, in.data(), mean.data(), count, &mean_cfg);
      EXPECT_EQ(st, LH_SUCCESS) << where << " (mean): " << lh_last_error();
      size_t wrong = 0;
      for (size_t i = 0; i < count; i++)
        wrong += !(mean[i] == out[i] / (float)w.size);
      EXPECT_EQ(wrong, 0u) << where << ": mean != sum / " << w.size << " bit for bit";
      expect_identical_on_all_ranks(mean, where + " (mean)");
    }
  }
}

// Each case on a communicator of its own, so that a case that breaks one (a timeout) does not
// take the next cases down with it; 10 s is far above any case's run time here.
void run_case(const Case &k) {
  World w(10.0);
  run_case(w, k);
}

// ---- the cases ----------------------------------------------------------------------------

TEST(CompressedAllreduce, RingNoneIsExact) {
  run_case(make_case("ring/none", LH_ALLREDUCE_RING, LH_CODEC_NONE));
}

TEST(CompressedAllreduce, QringNoneIsExactOrRefused) {
  // The header lists QRING for FP16, BF16 and BLOCKQ; NONE is either run (then exactly: a
  // lossless codec re-encodes nothing away) or refused with a reason.
  World w;
  const size_t count = 100003;
  lh_allreduce_config cfg = make_config(make_case("qring/none", LH_ALLREDUCE_QRING, LH_CODEC_NONE));
  std::vector<float> in = exact_input(5, w.rank, count), out(count, NAN);
  lh_status st = lh_allreduce(w.c, in.data(), out.data(), count, &cfg);
  EXPECT_TRUE(same_on_all_ranks(st)) << "ranks disagree on qring/none";
  if (st == LH_SUCCESS) {
    run_case(make_case("qring/none", LH_ALLREDUCE_QRING, LH_CODEC_NONE));
  } else {
    EXPECT_TRUE(st == LH_ERR_INVALID_ARGUMENT || st == LH_ERR_NOT_SUPPORTED) << lh_status_string(st);
    EXPECT_STRNE(lh_last_error(), "");
  }
}

TEST(CompressedAllreduce, QringCasts) {
  run_case(make_case("qring/fp16", LH_ALLREDUCE_QRING, LH_CODEC_FP16));
  run_case(make_case("qring/bf16", LH_ALLREDUCE_QRING, LH_CODEC_BF16));
}

TEST(CompressedAllreduce, QringBlockq) {
  run_case(make_case("qring/blockq8", LH_ALLREDUCE_QRING, LH_CODEC_BLOCKQ, 8));
  run_case(make_case("qring/blockq4", LH_ALLREDUCE_QRING, LH_CODEC_BLOCKQ, 4));
  run_case(make_case("qring/blockq8-stochastic", LH_ALLREDUCE_QRING, LH_CODEC_BLOCKQ, 8, 0, LH_ROUND_STOCHASTIC));
  run_case(make_case("qring/blockq4-stochastic", LH_ALLREDUCE_QRING, LH_CODEC_BLOCKQ, 4, 0, LH_ROUND_STOCHASTIC));
}

TEST(CompressedAllreduce, QringCastsAreExactOnFewBits) {
  // Integers in [-31, 31] times 2^-5, and their sums over <= 5 ranks (|c| <= 155 < 2^8),
  // fit fp16's 11 and bf16's 8 significant bits: every re-rounding along the ring is exact.
  World w;
  for (lh_codec_id codec : {LH_CODEC_FP16, LH_CODEC_BF16}) {
    for (size_t count : {(size_t)1, (size_t)3, (size_t)1009, (size_t)100003}) {
      Case k = make_case(codec == LH_CODEC_FP16 ? "qring/fp16" : "qring/bf16", LH_ALLREDUCE_QRING, codec);
      lh_allreduce_config cfg = make_config(k);
      std::vector<float> in = grid_input(77, w.rank, count, 31, 5), out(count, NAN), exact(count, 0.0f);
      for (int r = 0; r < w.size; r++) {
        std::vector<float> x = grid_input(77, r, count, 31, 5);
        for (size_t i = 0; i < count; i++)
          exact[i] += x[i];
      }
      LH_ASSERT_OK(lh_allreduce(w.c, in.data(), out.data(), count, &cfg));
      expect_equal_values(out, exact, k.name + " on few-bit inputs, count " + std::to_string(count));
    }
  }
}

TEST(CompressedAllreduce, SharedRing) {
  run_case(make_case("shared_ring/sharedq8", LH_ALLREDUCE_SHARED_RING, LH_CODEC_SHAREDQ, 8));
  run_case(make_case("shared_ring/sharedq4", LH_ALLREDUCE_SHARED_RING, LH_CODEC_SHAREDQ, 4));
}

TEST(CompressedAllreduce, SharedRingIsExactOnRepresentableInputs) {
  // With b bits, M = 2^b - 2 and h = M / 2: inputs c * 2^-(b-1), |c| <= h, with every value of
  // rank 0 at +-h * 2^-(b-1), make the agreed scale S = h 2^-(b-1) in every block wherever blocks
  // begin, so x * (h / S) = c exactly and the step S / M = 2^-b: quantizing is lossless and the
  // integer sum decodes to the exact sum.
  World w;
  for (int bits : {8, 4}) {
    int h = (1 << (bits - 1)) - 1, p = bits - 1;
    for (size_t count : {(size_t)1, (size_t)5, (size_t)1009, (size_t)100003}) {
      for (size_t chunk : {(size_t)0, (size_t)4096}) {
        Case k = make_case("shared_ring", LH_ALLREDUCE_SHARED_RING, LH_CODEC_SHAREDQ, bits);
        lh_allreduce_config cfg = make_config(k, chunk);
        auto input = [&](int r) {
          std::vector<float> x = grid_input(91, r, count, h, p);
          if (r == 0)
            for (size_t i = 0; i < count; i++)
              x[i] = std::ldexp(x[i] < 0 ? -(float)h : (float)h, -p);
          return x;
        };
        std::vector<float> in = input(w.rank), out(count, NAN), exact(count, 0.0f);
        for (int r = 0; r < w.size; r++) {
          std::vector<float> x = input(r);
          for (size_t i = 0; i < count; i++)
            exact[i] += x[i];
        }
        LH_ASSERT_OK(lh_allreduce(w.c, in.data(), out.data(), count, &cfg));
        expect_equal_values(out, exact, "shared_ring bits " + std::to_string(bits) + " count " +
                                            std::to_string(count) + " chunk " + std::to_string(chunk));
      }
    }
  }
}

TEST(CompressedAllreduce, Owner) {
  run_case(make_case("owner/sign", LH_ALLREDUCE_OWNER, LH_CODEC_SIGN));
  run_case(make_case("owner/topk0.01", LH_ALLREDUCE_OWNER, LH_CODEC_TOPK, 0, 0.01));
  run_case(make_case("owner/topk0.1", LH_ALLREDUCE_OWNER, LH_CODEC_TOPK, 0, 0.1));
  run_case(make_case("owner/topk1", LH_ALLREDUCE_OWNER, LH_CODEC_TOPK, 0, 1.0));
  run_case(make_case("owner/blockq4", LH_ALLREDUCE_OWNER, LH_CODEC_BLOCKQ, 4));
  run_case(make_case("owner/randk0.01", LH_ALLREDUCE_OWNER, LH_CODEC_RANDK, 0, 0.01));
  run_case(make_case("owner/randk0.1", LH_ALLREDUCE_OWNER, LH_CODEC_RANDK, 0, 0.1));
}

TEST(CompressedAllreduce, OwnerSumsInRankOrder) {
  // Top-k at density 1 keeps every element as fp32: the owner's sum is then the fp32 sum in
  // rank order of full-mantissa inputs, whose last bits depend on the order.
  World w;
  const size_t count = 30011;
  auto rough = [](int r, size_t i) {
    uint64_t h = lh_test_hash(4242, (uint64_t)r, i);
    return (float)((double)(h >> 11) / 9007199254740992.0 * 2.0 - 1.0) * 1000.0f;
  };
  std::vector<float> in(count), out(count, NAN), expected(count, 0.0f);
  for (size_t i = 0; i < count; i++) {
    in[i] = rough(w.rank, i);
    for (int r = 0; r < w.size; r++)
      expected[i] += rough(r, i);
  }
  for (lh_allreduce_algo algo : {LH_ALLREDUCE_OWNER, LH_ALLREDUCE_ALLGATHER}) {
    lh_allreduce_config cfg = make_config(make_case("topk1", algo, LH_CODEC_TOPK, 0, 1.0));
    LH_ASSERT_OK(lh_allreduce(w.c, in.data(), out.data(), count, &cfg));
    expect_equal_values(out, expected, std::string(algo == LH_ALLREDUCE_OWNER ? "owner" : "allgather") +
                                           "/topk density 1: fp32 sum in rank order");
  }
}

TEST(CompressedAllreduce, Allgather) {
  run_case(make_case("allgather/sign", LH_ALLREDUCE_ALLGATHER, LH_CODEC_SIGN));
  run_case(make_case("allgather/topk0.01", LH_ALLREDUCE_ALLGATHER, LH_CODEC_TOPK, 0, 0.01));
  run_case(make_case("allgather/topk0.1", LH_ALLREDUCE_ALLGATHER, LH_CODEC_TOPK, 0, 0.1));
}

TEST(CompressedAllreduce, ZstdChangesNoBits) {
  // zstd is a lossless stage on every frame: the results are those without it.
  World w;
  run_case(make_case("qring/blockq8+zstd3", LH_ALLREDUCE_QRING, LH_CODEC_BLOCKQ, 8, 0, LH_ROUND_NEAREST, 3));
  run_case(make_case("owner/topk0.1+zstd3", LH_ALLREDUCE_OWNER, LH_CODEC_TOPK, 0, 0.1, LH_ROUND_NEAREST, 3));
  run_case(make_case("allgather/sign+zstd3", LH_ALLREDUCE_ALLGATHER, LH_CODEC_SIGN, 0, 0, LH_ROUND_NEAREST, 3));
  for (Case k : {make_case("qring/blockq8", LH_ALLREDUCE_QRING, LH_CODEC_BLOCKQ, 8),
                 make_case("qring/bf16", LH_ALLREDUCE_QRING, LH_CODEC_BF16),
                 make_case("owner/topk0.1", LH_ALLREDUCE_OWNER, LH_CODEC_TOPK, 0, 0.1),
                 make_case("allgather/sign", LH_ALLREDUCE_ALLGATHER, LH_CODEC_SIGN)}) {
    const size_t count = 50021;
    std::vector<float> in = exact_input(31, w.rank, count), plain(count, NAN), packed(count, NAN);
    lh_allreduce_config cfg = make_config(k, 4096);
    LH_ASSERT_OK(lh_allreduce(w.c, in.data(), plain.data(), count, &cfg));
    cfg.zstd_level = 3;
    LH_ASSERT_OK(lh_allreduce(w.c, in.data(), packed.data(), count, &cfg));
    EXPECT_EQ(0, std::memcmp(plain.data(), packed.data(), count * sizeof(float))) << k.name << ": zstd changed bits";
  }
  // SHARED_RING sums codes on the wire at every hop: zstd there either changes no bits either
  // or is refused as not supported, with the reason (the header lists no exception).
  {
    const size_t count = 50021;
    Case k = make_case("shared_ring/sharedq8", LH_ALLREDUCE_SHARED_RING, LH_CODEC_SHAREDQ, 8);
    std::vector<float> in = exact_input(31, w.rank, count), plain(count, NAN), packed(count, NAN);
    lh_allreduce_config cfg = make_config(k, 4096);
    LH_ASSERT_OK(lh_allreduce(w.c, in.data(), plain.data(), count, &cfg));
    cfg.zstd_level = 3;
    lh_status st = lh_allreduce(w.c, in.data(), packed.data(), count, &cfg);
    if (st == LH_SUCCESS) {
      EXPECT_EQ(0, std::memcmp(plain.data(), packed.data(), count * sizeof(float))) << "shared_ring: zstd changed bits";
    } else {
      EXPECT_EQ(st, LH_ERR_NOT_SUPPORTED) << lh_last_error();
      EXPECT_TRUE(contains_ci(lh_last_error(), "zstd")) << lh_last_error();
    }
  }
}

TEST(CompressedAllreduce, StochasticRoundingFollowsTheSeed) {
  // Same seed: same bits (above, in run_case); another seed: other bits.
  World w;
  const size_t count = 100003;
  Case k = make_case("qring/blockq4-stochastic", LH_ALLREDUCE_QRING, LH_CODEC_BLOCKQ, 4, 0, LH_ROUND_STOCHASTIC);
  std::vector<float> in = exact_input(8, w.rank, count), a(count), b(count);
  lh_allreduce_config cfg = make_config(k);
  cfg.seed = 1;
  LH_ASSERT_OK(lh_allreduce(w.c, in.data(), a.data(), count, &cfg));
  cfg.seed = 2;
  LH_ASSERT_OK(lh_allreduce(w.c, in.data(), b.data(), count, &cfg));
  EXPECT_NE(0, std::memcmp(a.data(), b.data(), count * sizeof(float))) << "the seed does not reach the rounding";
  expect_identical_on_all_ranks(b, "stochastic seed 2");
}

TEST(CompressedAllreduce, AutoForEveryCodec) {
  World w;
  struct Expect {
    Case k;
    std::vector<lh_allreduce_algo> allowed;
  };
  std::vector<Expect> cases = {
      {make_case("auto/none", LH_ALLREDUCE_AUTO, LH_CODEC_NONE), {LH_ALLREDUCE_RING}},
      {make_case("auto/fp16", LH_ALLREDUCE_AUTO, LH_CODEC_FP16), {LH_ALLREDUCE_QRING}},
      {make_case("auto/bf16", LH_ALLREDUCE_AUTO, LH_CODEC_BF16), {LH_ALLREDUCE_QRING}},
      {make_case("auto/blockq8", LH_ALLREDUCE_AUTO, LH_CODEC_BLOCKQ, 8), {LH_ALLREDUCE_QRING}},
      {make_case("auto/blockq4", LH_ALLREDUCE_AUTO, LH_CODEC_BLOCKQ, 4), {LH_ALLREDUCE_QRING}},
      {make_case("auto/sharedq8", LH_ALLREDUCE_AUTO, LH_CODEC_SHAREDQ, 8), {LH_ALLREDUCE_SHARED_RING}},
      {make_case("auto/sign", LH_ALLREDUCE_AUTO, LH_CODEC_SIGN), {LH_ALLREDUCE_OWNER, LH_ALLREDUCE_ALLGATHER}},
      {make_case("auto/topk", LH_ALLREDUCE_AUTO, LH_CODEC_TOPK, 0, 0.01),
       {LH_ALLREDUCE_OWNER, LH_ALLREDUCE_ALLGATHER}},
      {make_case("auto/randk", LH_ALLREDUCE_AUTO, LH_CODEC_RANDK, 0, 0.1),
       {LH_ALLREDUCE_OWNER, LH_ALLREDUCE_ALLGATHER}},
      {make_case("auto/powersgd", LH_ALLREDUCE_AUTO, LH_CODEC_POWERSGD), {LH_ALLREDUCE_POWERSGD}},
  };
  // (POWERSGD's one-shot run is OneShotOnAVector's.)
  for (auto &e : cases) {
    for (size_t count : {(size_t)0, (size_t)1, (size_t)1009, (size_t)100003, (size_t)1 << 24}) {
      lh_allreduce_config cfg = make_config(e.k);
      lh_allreduce_algo algo = LH_ALLREDUCE_AUTO;
      LH_ASSERT_OK(lh_allreduce_choose(w.c, &cfg, count, &algo));
      EXPECT_NE(std::find(e.allowed.begin(), e.allowed.end(), algo), e.allowed.end())
          << e.k.name << " count " << count << " chose algorithm " << algo;
      EXPECT_TRUE(same_on_all_ranks(algo)) << e.k.name << " count " << count;
    }
    if (e.k.codec != LH_CODEC_POWERSGD)
      run_case(e.k);
  }
  lh_allreduce_algo algo;
  EXPECT_EQ(lh_allreduce_choose(w.c, nullptr, 10, &algo), LH_SUCCESS) << "config NULL means the defaults";
  EXPECT_EQ(algo, LH_ALLREDUCE_RING);
}

TEST(CompressedAllreduce, AlgorithmNamesRoundTrip) {
  std::vector<std::string> seen;
  for (int a = 0; a < LH_ALLREDUCE_ALGO_COUNT; a++) {
    const char *name = nullptr;
    ASSERT_EQ(lh_allreduce_algo_name((lh_allreduce_algo)a, &name), LH_SUCCESS) << "algorithm " << a << ": "
                                                                               << lh_last_error();
    ASSERT_NE(name, nullptr);
    ASSERT_STRNE(name, "");
    EXPECT_EQ(std::find(seen.begin(), seen.end(), name), seen.end()) << "two algorithms named " << name;
    seen.push_back(name);
    lh_allreduce_algo back = LH_ALLREDUCE_ALGO_COUNT;
    EXPECT_EQ(lh_allreduce_algo_parse(name, &back), LH_SUCCESS) << name << ": " << lh_last_error();
    EXPECT_EQ(back, (lh_allreduce_algo)a) << name;
    std::string upper = name;
    for (auto &ch : upper)
      ch = (char)std::toupper((unsigned char)ch);
    back = LH_ALLREDUCE_ALGO_COUNT;
    EXPECT_EQ(lh_allreduce_algo_parse(upper.c_str(), &back), LH_SUCCESS) << upper;
    EXPECT_EQ(back, (lh_allreduce_algo)a) << upper;
  }
  const char *name = nullptr;
  LH_ASSERT_OK(lh_allreduce_algo_name(LH_ALLREDUCE_QRING, &name));
  EXPECT_STREQ(name, "qring");
  LH_ASSERT_OK(lh_allreduce_algo_name(LH_ALLREDUCE_RING, &name));
  EXPECT_STREQ(name, "ring");
  EXPECT_EQ(lh_allreduce_algo_name(LH_ALLREDUCE_ALGO_COUNT, &name), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_allreduce_algo_name((lh_allreduce_algo)-1, &name), LH_ERR_INVALID_ARGUMENT);
  lh_allreduce_algo a;
  EXPECT_EQ(lh_allreduce_algo_parse("butterfly", &a), LH_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains_ci(lh_last_error(), "butterfly")) << lh_last_error();
}

// ---- PowerSGD -----------------------------------------------------------------------------

struct Reducer {
  lh_reducer r = nullptr;
  lh_status st = LH_SUCCESS;
  Reducer(lh_comm c, const lh_allreduce_config &cfg) {
    st = lh_reducer_create(c, &cfg, &r);
    EXPECT_EQ(st, LH_SUCCESS) << lh_last_error();
  }
  ~Reducer() { EXPECT_EQ(lh_reducer_free(r), LH_SUCCESS) << lh_last_error(); }
  Reducer(const Reducer &) = delete;
  Reducer &operator=(const Reducer &) = delete;
};

lh_tensor tensor(uint64_t key, std::vector<float> &v, size_t rows = 0) {
  lh_tensor t;
  t.size = sizeof(lh_tensor);
  t.key = key;
  t.data = v.data();
  t.count = v.size();
  t.rows = rows;
  return t;
}

lh_allreduce_config powersgd_config(int warmup) {
  lh_allreduce_config cfg = LH_ALLREDUCE_CONFIG_INIT;
  cfg.algo = LH_ALLREDUCE_POWERSGD;
  cfg.codec = LH_CODEC_POWERSGD;
  cfg.powersgd_rank = 2;
  cfg.warmup_steps = warmup;
  cfg.seed = 99;
  return cfg;
}

const size_t kRows = 64, kCols = 96;

// Rank r's matrix u1 a_r^T + u2 b_r^T with u1, u2 shared by all ranks: the sum over ranks is
// (u1 sum a_r^T + u2 sum b_r^T), of rank 2.
std::vector<float> rank2_matrix(int r) {
  std::vector<float> m(kRows * kCols);
  for (size_t i = 0; i < kRows; i++)
    for (size_t j = 0; j < kCols; j++)
      m[i * kCols + j] =
          lh_test_value(1, 0, i) * lh_test_value(2, r, j) + lh_test_value(3, 0, i) * lh_test_value(4, r, j);
  return m;
}

TEST(CompressedPowerSgd, RankTwoSumIsRecovered) {
  // P = orthonormalized (sum M_r) Q0 spans the column space of a rank-2 sum, so
  // P (sum M_r^T P)^T = P P^T M = M up to fp32 rounding. Rank 0's matrix alone is far off.
  World w;
  lh_allreduce_config cfg = powersgd_config(0);
  Reducer red(w.c, cfg);
  std::vector<float> m = rank2_matrix(w.rank), v = exact_input(17, w.rank, 1009);
  std::vector<float> exact(m.size(), 0.0f);
  std::vector<double> exact_d(m.size(), 0.0);
  for (int r = 0; r < w.size; r++) {
    std::vector<float> x = rank2_matrix(r);
    for (size_t i = 0; i < x.size(); i++)
      exact_d[i] += x[i];
  }
  for (size_t i = 0; i < exact.size(); i++)
    exact[i] = (float)exact_d[i];
  lh_tensor t[2] = {tensor(1, m, kRows), tensor(2, v)};
  LH_ASSERT_OK(lh_reducer_allreduce(red.r, t, 2));
  double rel = norm2(m, exact) / norm2(exact);
  EXPECT_LT(rel, 1e-4) << "PowerSGD rank 2 on a rank-2 sum";
  if (w.size > 1) {
    std::vector<float> mine = rank2_matrix(0);
    EXPECT_GT(norm2(mine, exact) / norm2(exact), 1e-4 * 100);
  }
  expect_identical_on_all_ranks(m, "powersgd matrix");
  // The vector (rows 0) goes uncompressed: the exact sum.
  std::vector<float> vexact = rank_order_sum(all_inputs(17, w.size, 1009));
  expect_equal_values(v, vexact, "powersgd bucket's vector");
  expect_identical_on_all_ranks(v, "powersgd vector");
  lh_reducer_stats s = LH_REDUCER_STATS_INIT;
  LH_ASSERT_OK(lh_reducer_get_stats(red.r, &s));
  EXPECT_EQ(s.last_algo, LH_ALLREDUCE_POWERSGD);
  EXPECT_EQ(s.calls, 1u);
  EXPECT_EQ(s.elements, (unsigned long long)(kRows * kCols + 1009));
  if (w.size > 1)
    EXPECT_LT(s.wire_bytes, s.raw_bytes);
}

TEST(CompressedPowerSgd, FullRankIsAProjectionAndRepeatable) {
  // On a full-rank matrix the result P P^T M is a projection of the exact sum M: no longer
  // than it, and (rank 2 of 64) well away from it. Fresh reducers with one seed give one set
  // of bits, step after step (warm start included).
  World w;
  lh_allreduce_config cfg = powersgd_config(0);
  std::vector<float> exact = rank_order_sum(all_inputs(23, w.size, kRows * kCols));
  std::vector<std::vector<float>> first;
  for (int run = 0; run < 2; run++) {
    Reducer red(w.c, cfg);
    for (int step = 0; step < 3; step++) {
      std::vector<float> m = exact_input(23, w.rank, kRows * kCols);
      lh_tensor t = tensor(5, m, kRows);
      LH_ASSERT_OK(lh_reducer_allreduce(red.r, &t, 1));
      expect_identical_on_all_ranks(m, "powersgd full rank step " + std::to_string(step));
      if (step == 0) {
        EXPECT_LE(norm2(m), norm2(exact) * (1 + 1e-5)) << "a projection is no longer than what it projects";
        double rel = norm2(m, exact) / norm2(exact);
        EXPECT_LT(rel, 1.0 + 1e-5);
        EXPECT_GT(rel, 0.05) << "rank 2 of a random 64 x 96 sum cannot be this close: compressed at all?";
      }
      if (run == 0)
        first.push_back(m);
      else
        EXPECT_EQ(0, std::memcmp(first[(size_t)step].data(), m.data(), m.size() * sizeof(float)))
            << "a fresh reducer with the same seed gave other bits at step " << step;
    }
    const float *res = nullptr;
    size_t n = 0;
    LH_ASSERT_OK(lh_reducer_residual(red.r, 5, &res, &n));
    EXPECT_NE(res, nullptr) << "PowerSGD keeps an error-feedback residual by default";
    EXPECT_EQ(n, kRows * kCols);
  }
}

TEST(CompressedPowerSgd, WarmupStepsAreExact) {
  // warmup_steps -1: 10 uncompressed steps for POWERSGD first.
  World w;
  lh_allreduce_config cfg = powersgd_config(-1);
  Reducer red(w.c, cfg);
  std::vector<float> exact = rank_order_sum(all_inputs(29, w.size, kRows * kCols));
  for (int step = 0; step < 2; step++) {
    std::vector<float> m = exact_input(29, w.rank, kRows * kCols);
    lh_tensor t = tensor(9, m, kRows);
    LH_ASSERT_OK(lh_reducer_allreduce(red.r, &t, 1));
    expect_equal_values(m, exact, "powersgd warm-up step " + std::to_string(step));
  }
}

TEST(CompressedPowerSgd, OneShotOnAVector) {
  // lh_allreduce has no rows. The header says both that POWERSGD "needs lh_tensor.rows" and
  // that tensors with rows <= 1 go uncompressed: either reading is allowed -- the exact sum,
  // or a refusal on every rank that points to the reducer.
  World w;
  for (lh_allreduce_algo algo : {LH_ALLREDUCE_POWERSGD, LH_ALLREDUCE_AUTO}) {
    const size_t count = 1009;
    std::vector<float> in = exact_input(37, w.rank, count), out(count, NAN);
    lh_allreduce_config cfg = powersgd_config(0);
    cfg.algo = algo;
    lh_status st = lh_allreduce(w.c, in.data(), out.data(), count, &cfg);
    EXPECT_TRUE(same_on_all_ranks(st));
    if (st == LH_SUCCESS) {
      expect_equal_values(out, rank_order_sum(all_inputs(37, w.size, count)), "powersgd one-shot vector");
    } else {
      EXPECT_EQ(st, LH_ERR_NOT_SUPPORTED) << lh_last_error();
      EXPECT_TRUE(contains_ci(lh_last_error(), "reducer")) << lh_last_error();
    }
  }
}

// ---- the reducer --------------------------------------------------------------------------

TEST(CompressedReducer, BucketOfLosslessTensorsEqualsSingleCalls) {
  World w;
  lh_allreduce_config cfg = make_config(make_case("ring/none", LH_ALLREDUCE_AUTO, LH_CODEC_NONE));
  Reducer red(w.c, cfg);
  const size_t counts[3] = {1009, 17, 65537};
  const uint64_t keys[3] = {101, 202, 303};
  std::vector<std::vector<float>> data(3);
  lh_tensor t[3];
  for (int j = 0; j < 3; j++) {
    data[(size_t)j] = exact_input(keys[j], w.rank, counts[j]);
    t[j] = tensor(keys[j], data[(size_t)j]);
  }
  LH_ASSERT_OK(lh_reducer_allreduce(red.r, t, 3));
  for (int j = 0; j < 3; j++) {
    std::vector<float> in = exact_input(keys[j], w.rank, counts[j]), single(counts[j], NAN);
    LH_ASSERT_OK(lh_allreduce(w.c, in.data(), single.data(), counts[j], &cfg));
    EXPECT_EQ(0, std::memcmp(single.data(), data[(size_t)j].data(), counts[j] * sizeof(float))) << "tensor " << j;
    expect_equal_values(data[(size_t)j], rank_order_sum(all_inputs(keys[j], w.size, counts[j])),
                        "bucket tensor " + std::to_string(j));
  }
  const float *res = nullptr;
  size_t n = 1;
  LH_ASSERT_OK(lh_reducer_residual(red.r, 101, &res, &n));
  EXPECT_EQ(res, nullptr) << "a lossless codec keeps no residual";
  EXPECT_EQ(n, 0u);
}

TEST(CompressedReducer, LossyBucketsAreIdenticalAndWithinBounds) {
  // Buckets may be cut into other pipeline pieces than single tensors, so for lossy codecs
  // only the per-element bounds and the cross-rank identity are compared.
  World w;
  for (Case k : {make_case("qring/blockq8", LH_ALLREDUCE_QRING, LH_CODEC_BLOCKQ, 8),
                 make_case("qring/bf16", LH_ALLREDUCE_QRING, LH_CODEC_BF16)}) {
    lh_allreduce_config cfg = make_config(k, 4096);
    cfg.error_feedback = 0;
    Reducer red(w.c, cfg);
    const size_t counts[3] = {1009, 3, 50021};
    const uint64_t keys[3] = {7, 8, 9};
    std::vector<std::vector<float>> data(3);
    lh_tensor t[3];
    for (int j = 0; j < 3; j++) {
      data[(size_t)j] = exact_input(keys[j], w.rank, counts[j]);
      t[j] = tensor(keys[j], data[(size_t)j]);
    }
    LH_ASSERT_OK(lh_reducer_allreduce(red.r, t, 3));
    for (int j = 0; j < 3; j++) {
      std::string where = k.name + " bucket tensor " + std::to_string(j);
      expect_identical_on_all_ranks(data[(size_t)j], where);
      check_values(w.c, w.size, k, cfg, LH_ALLREDUCE_QRING, keys[j], counts[j], data[(size_t)j], where, true);
    }
  }
}

TEST(CompressedReducer, FirstStepMatchesOneShotAndEfOff) {
  // A reducer's first step has no residual yet: with error feedback on or off it sends what
  // lh_allreduce sends for the same tensor and config (nearest rounding, so no key involved).
  World w;
  const size_t count = 100003;
  for (Case k : {make_case("qring/blockq4", LH_ALLREDUCE_QRING, LH_CODEC_BLOCKQ, 4),
                 make_case("owner/sign", LH_ALLREDUCE_OWNER, LH_CODEC_SIGN),
                 make_case("shared_ring/sharedq8", LH_ALLREDUCE_SHARED_RING, LH_CODEC_SHAREDQ, 8)}) {
    std::vector<float> in = exact_input(41, w.rank, count), oneshot(count, NAN);
    lh_allreduce_config cfg = make_config(k);
    LH_ASSERT_OK(lh_allreduce(w.c, in.data(), oneshot.data(), count, &cfg));
    for (int ef : {0, 1}) {
      cfg.error_feedback = ef;
      Reducer red(w.c, cfg);
      std::vector<float> buf = in;
      lh_tensor t = tensor(1, buf);
      LH_ASSERT_OK(lh_reducer_allreduce(red.r, &t, 1));
      EXPECT_EQ(0, std::memcmp(buf.data(), oneshot.data(), count * sizeof(float)))
          << k.name << " error_feedback " << ef << ": first reducer step differs from lh_allreduce";
    }
    // The reducer's mean: the sum divided by the rank count, bit for bit.
    lh_allreduce_config mean_cfg = make_config(k, 0, LH_OP_MEAN);
    Reducer red(w.c, mean_cfg);
    std::vector<float> buf = in;
    lh_tensor t = tensor(1, buf);
    LH_ASSERT_OK(lh_reducer_allreduce(red.r, &t, 1));
    size_t wrong = 0;
    for (size_t i = 0; i < count; i++)
      wrong += !(buf[i] == oneshot[i] / (float)w.size);
    EXPECT_EQ(wrong, 0u) << k.name << ": the reducer's mean != sum / " << w.size << " bit for bit";
  }
}

double running_mean_error(World &w, const Case &k, int ef, int steps) {
  const size_t count = 4099;
  lh_allreduce_config cfg = make_config(k);
  cfg.error_feedback = ef;
  Reducer red(w.c, cfg);
  std::vector<float> exact = rank_order_sum(all_inputs(53, w.size, count));
  std::vector<double> sum(count, 0.0);
  for (int s = 0; s < steps; s++) {
    std::vector<float> buf = exact_input(53, w.rank, count);
    lh_tensor t = tensor(77, buf);
    lh_status st = lh_reducer_allreduce(red.r, &t, 1);
    EXPECT_EQ(st, LH_SUCCESS) << k.name << " step " << s << ": " << lh_last_error();
    for (size_t i = 0; i < count; i++)
      sum[i] += buf[i];
  }
  double err = 0, norm = 0;
  for (size_t i = 0; i < count; i++) {
    double d = sum[i] / steps - exact[i];
    err += d * d;
    norm += (double)exact[i] * exact[i];
  }
  return std::sqrt(err / norm);
}

TEST(CompressedReducer, ErrorFeedbackMakesTheRunningMeanConverge) {
  // The same input every step. Without error feedback the (deterministic) quantization error
  // repeats, so the running mean keeps it; with it, what was lost is sent later and the sum
  // of T outputs is T x exact minus the residuals left: the mean's error falls like 1/T.
  World w;
  // 40 steps: 2-bit QRING on 5 ranks re-quantizes 5-rank partials at 3 levels, and its
  // residuals (bounded: the EF error halves with each doubling of the steps, 0.35 at 20 steps,
  // 0.17 at 40, 0.09 at 80, against 1.39 without) need that long to fall under a quarter.
  // Top-k at density 0.1 sends an element about every 10th step, so its residuals are ~10
  // inputs deep: it gets 100 steps.
  for (Case k : {make_case("qring/blockq2", LH_ALLREDUCE_QRING, LH_CODEC_BLOCKQ, 2),
                 make_case("owner/sign", LH_ALLREDUCE_OWNER, LH_CODEC_SIGN),
                 make_case("shared_ring/sharedq2", LH_ALLREDUCE_SHARED_RING, LH_CODEC_SHAREDQ, 2),
                 make_case("owner/topk0.1", LH_ALLREDUCE_OWNER, LH_CODEC_TOPK, 0, 0.1)}) {
    int steps = k.codec == LH_CODEC_TOPK ? 100 : 40;
    double off = running_mean_error(w, k, 0, steps), on = running_mean_error(w, k, 1, steps);
    if (lh_test_world_rank() == 0)
      std::printf("[          ] %s: running-mean error after %d steps %.4f without, %.4f with error feedback\n",
                  k.name.c_str(), steps, off, on);
    EXPECT_GT(off, 0.01) << k.name << ": no loss to feed back?";
    EXPECT_LT(on, 0.25 * off) << k.name << ": error feedback does not pay back the loss";
  }
}

TEST(CompressedReducer, StartTestWaitGivesTheBlockingResult) {
  World w;
  Case k = make_case("qring/blockq4", LH_ALLREDUCE_QRING, LH_CODEC_BLOCKQ, 4);
  lh_allreduce_config cfg = make_config(k);
  Reducer a(w.c, cfg), b(w.c, cfg);
  std::vector<float> a1 = exact_input(61, w.rank, 100003), a2 = exact_input(62, w.rank, 5003);
  std::vector<float> b1 = a1, b2 = a2;
  lh_tensor ta[2] = {tensor(1, a1), tensor(2, a2)}, tb[2] = {tensor(1, b1), tensor(2, b2)};
  EXPECT_EQ(lh_reducer_wait(a.r), LH_SUCCESS) << "nothing in flight";
  LH_ASSERT_OK(lh_reducer_start(a.r, ta, 2));
  // The caller's own work while the reduction runs (inline under MPI_THREAD_SERIALIZED).
  volatile double busy = 0;
  int done = 0;
  long polls = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!done && std::chrono::steady_clock::now() < deadline) {
    for (int i = 0; i < 20000; i++)
      busy = busy + std::sqrt((double)i);
    EXPECT_EQ(lh_reducer_test(a.r, &done), LH_SUCCESS) << lh_last_error();
    polls++;
  }
  EXPECT_EQ(done, 1) << "lh_reducer_test never reported the operation done";
  LH_ASSERT_OK(lh_reducer_wait(a.r));
  EXPECT_EQ(lh_reducer_wait(a.r), LH_SUCCESS) << "a second wait has nothing to wait for";
  LH_ASSERT_OK(lh_reducer_allreduce(b.r, tb, 2));
  EXPECT_EQ(0, std::memcmp(a1.data(), b1.data(), a1.size() * sizeof(float))) << "start/wait != blocking";
  EXPECT_EQ(0, std::memcmp(a2.data(), b2.data(), a2.size() * sizeof(float))) << "start/wait != blocking";
  expect_identical_on_all_ranks(a1, "start/wait tensor 1");
  check_values(w.c, w.size, k, cfg, LH_ALLREDUCE_QRING, 61, a1.size(), a1, "start/wait tensor 1", true);

  lh_reducer_stats s = LH_REDUCER_STATS_INIT;
  LH_ASSERT_OK(lh_reducer_get_stats(a.r, &s));
  EXPECT_EQ(s.calls, 1u);
  EXPECT_EQ(s.elements, 100003u + 5003u);
  EXPECT_EQ(s.last_algo, LH_ALLREDUCE_QRING);
  if (w.size > 1) {
    EXPECT_GT(s.raw_bytes, 0u);
    EXPECT_LT(s.wire_bytes, s.raw_bytes) << "4-bit codes sent more than fp32 would";
    EXPECT_LT(s.wire_bytes * 4, s.raw_bytes) << "4-bit codes (plus a scale per 128) should be ~7x smaller";
  }
  EXPECT_GE(s.seconds, s.codec_seconds);
  LH_ASSERT_OK(lh_reducer_reset_stats(a.r));
  LH_ASSERT_OK(lh_reducer_get_stats(a.r, &s));
  EXPECT_EQ(s.calls, 0u);
  EXPECT_EQ(s.wire_bytes, 0u);
}

TEST(CompressedReducer, ResidualAndReset) {
  World w;
  const size_t count = 10007;
  for (Case k : {make_case("qring/blockq4", LH_ALLREDUCE_QRING, LH_CODEC_BLOCKQ, 4),
                 make_case("owner/sign", LH_ALLREDUCE_OWNER, LH_CODEC_SIGN),
                 make_case("allgather/topk", LH_ALLREDUCE_ALLGATHER, LH_CODEC_TOPK, 0, 0.01)}) {
    lh_allreduce_config cfg = make_config(k);  // error_feedback -1: on for lossy codecs
    Reducer red(w.c, cfg);
    std::vector<float> buf = exact_input(71, w.rank, count);
    lh_tensor t = tensor(42, buf);
    const float *res = nullptr;
    size_t n = 7;
    LH_ASSERT_OK(lh_reducer_residual(red.r, 42, &res, &n));
    EXPECT_EQ(res, nullptr) << k.name << ": a residual before any step";
    EXPECT_EQ(n, 0u);
    LH_ASSERT_OK(lh_reducer_allreduce(red.r, &t, 1));
    LH_ASSERT_OK(lh_reducer_residual(red.r, 42, &res, &n));
    ASSERT_NE(res, nullptr) << k.name << ": no residual after a lossy step with error feedback on";
    EXPECT_EQ(n, count) << k.name;
    double rn = 0;
    for (size_t i = 0; i < n; i++) {
      EXPECT_TRUE(std::isfinite(res[i])) << k.name << " residual " << i;
      rn += (double)res[i] * res[i];
    }
    EXPECT_GT(rn, 0.0) << k.name << ": a lossy step left no error to feed back";
    LH_ASSERT_OK(lh_reducer_residual(red.r, 4242, &res, &n));
    EXPECT_EQ(res, nullptr) << "no residual for a key never seen";
    EXPECT_EQ(n, 0u);
    LH_ASSERT_OK(lh_reducer_reset(red.r));
    LH_ASSERT_OK(lh_reducer_residual(red.r, 42, &res, &n));
    EXPECT_EQ(res, nullptr) << k.name << ": reset must drop the residual";
    EXPECT_EQ(n, 0u);
    // After a reset the next step is a first step again: the bits of a fresh reducer.
    std::vector<float> again = exact_input(71, w.rank, count), fresh_buf = again;
    lh_tensor ta = tensor(42, again);
    LH_ASSERT_OK(lh_reducer_allreduce(red.r, &ta, 1));
    {
      Reducer fresh(w.c, cfg);
      lh_tensor tf = tensor(42, fresh_buf);
      LH_ASSERT_OK(lh_reducer_allreduce(fresh.r, &tf, 1));
    }
    EXPECT_EQ(0, std::memcmp(again.data(), fresh_buf.data(), count * sizeof(float)))
        << k.name << ": a reset reducer differs from a fresh one";
  }
  // Error feedback off: nothing kept.
  lh_allreduce_config cfg = make_config(make_case("qring/blockq4", LH_ALLREDUCE_QRING, LH_CODEC_BLOCKQ, 4));
  cfg.error_feedback = 0;
  Reducer red(w.c, cfg);
  std::vector<float> buf = exact_input(71, w.rank, count);
  lh_tensor t = tensor(42, buf);
  LH_ASSERT_OK(lh_reducer_allreduce(red.r, &t, 1));
  const float *res = nullptr;
  size_t n = 7;
  LH_ASSERT_OK(lh_reducer_residual(red.r, 42, &res, &n));
  EXPECT_EQ(res, nullptr) << "error_feedback 0 keeps no residual";
  EXPECT_EQ(n, 0u);
}

TEST(CompressedReducer, FreshReducersRepeatBits) {
  // Same inputs, keys, steps and seed: the same bits, step after step, for stochastic rounding
  // and with error feedback carrying state between steps.
  World w;
  const size_t count = 20011;
  for (Case k : {make_case("qring/blockq4-stochastic", LH_ALLREDUCE_QRING, LH_CODEC_BLOCKQ, 4, 0, LH_ROUND_STOCHASTIC),
                 make_case("owner/randk", LH_ALLREDUCE_OWNER, LH_CODEC_RANDK, 0, 0.1),
                 make_case("owner/topk", LH_ALLREDUCE_OWNER, LH_CODEC_TOPK, 0, 0.01)}) {
    lh_allreduce_config cfg = make_config(k);
    std::vector<std::vector<float>> first;
    for (int run = 0; run < 2; run++) {
      Reducer red(w.c, cfg);
      for (int step = 0; step < 3; step++) {
        std::vector<float> buf = exact_input(83 + (uint64_t)step, w.rank, count);
        lh_tensor t = tensor(3, buf);
        LH_ASSERT_OK(lh_reducer_allreduce(red.r, &t, 1));
        expect_identical_on_all_ranks(buf, k.name + " reducer step " + std::to_string(step));
        if (run == 0)
          first.push_back(buf);
        else
          EXPECT_EQ(0, std::memcmp(first[(size_t)step].data(), buf.data(), count * sizeof(float)))
              << k.name << ": step " << step << " of a fresh reducer gave other bits";
      }
    }
  }
}

TEST(CompressedReducer, BadCalls) {
  World w(20.0);
  lh_allreduce_config cfg = make_config(make_case("qring/blockq8", LH_ALLREDUCE_QRING, LH_CODEC_BLOCKQ, 8));
  Reducer red(w.c, cfg);
  std::vector<float> x(100, 1.0f), y(100, 1.0f);
  lh_tensor t[2] = {tensor(1, x), tensor(1, y)};
  EXPECT_EQ(lh_reducer_allreduce(red.r, t, 2), LH_ERR_INVALID_ARGUMENT) << "keys must be unique within a call";
  EXPECT_TRUE(contains_ci(lh_last_error(), "key")) << lh_last_error();
  t[1].key = 2;
  t[1].size = 8;
  EXPECT_EQ(lh_reducer_allreduce(red.r, t, 2), LH_ERR_INVALID_ARGUMENT) << "lh_tensor.size too small";
  EXPECT_STRNE(lh_last_error(), "");
  t[1].size = sizeof(lh_tensor);
  t[1].data = nullptr;
  EXPECT_EQ(lh_reducer_allreduce(red.r, t, 2), LH_ERR_INVALID_ARGUMENT) << "NULL data";
  EXPECT_STRNE(lh_last_error(), "");
  t[1].data = y.data();
  EXPECT_EQ(lh_reducer_allreduce(red.r, t, -1), LH_ERR_INVALID_ARGUMENT) << "negative count";
  EXPECT_EQ(lh_reducer_allreduce(red.r, nullptr, 2), LH_ERR_INVALID_ARGUMENT) << "NULL tensors";
  EXPECT_EQ(lh_reducer_allreduce(nullptr, t, 2), LH_ERR_INVALID_ARGUMENT) << "NULL reducer";
  EXPECT_EQ(lh_reducer_allreduce(red.r, t, 0), LH_SUCCESS) << "an empty bucket: " << lh_last_error();
  // One operation at a time: a second start before the wait is refused, on every rank alike.
  LH_ASSERT_OK(lh_reducer_start(red.r, t, 2));
  lh_status st = lh_reducer_start(red.r, t, 2);
  EXPECT_NE(st, LH_SUCCESS) << "a second start while one is in flight";
  EXPECT_STRNE(lh_last_error(), "");
  EXPECT_EQ(lh_reducer_wait(red.r), LH_SUCCESS) << lh_last_error();
  lh_reducer_stats s = LH_REDUCER_STATS_INIT;
  s.size = 4;
  EXPECT_EQ(lh_reducer_get_stats(red.r, &s), LH_ERR_INVALID_ARGUMENT) << "stats.size too small";
  EXPECT_EQ(lh_reducer_free(nullptr), LH_SUCCESS);
  lh_reducer r = nullptr;
  EXPECT_EQ(lh_reducer_create(nullptr, &cfg, &r), LH_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(lh_reducer_create(w.c, &cfg, nullptr), LH_ERR_INVALID_ARGUMENT);
  // The reducer still works.
  std::vector<float> z = exact_input(3, w.rank, 1009);
  lh_tensor tz = tensor(9, z);
  LH_ASSERT_OK(lh_reducer_allreduce(red.r, &tz, 1));
  expect_identical_on_all_ranks(z, "reducer after bad calls");
}

// ---- bad input ----------------------------------------------------------------------------

// Every rank gets LH_ERR_MISMATCH with a detail; the communicator still works afterwards.
void expect_mismatch_everywhere(World &w, const lh_allreduce_config &mine, size_t count, const std::string &what,
                                const char *word = nullptr) {
  std::vector<float> buf(count + 16, 0.5f);
  lh_status st = lh_allreduce(w.c, buf.data(), buf.data(), count, &mine);
  std::string detail = lh_last_error();
  EXPECT_EQ(st, LH_ERR_MISMATCH) << what << ": " << lh_status_string(st) << ": " << detail;
  EXPECT_FALSE(detail.empty()) << what;
  if (word)
    EXPECT_TRUE(contains_ci(detail, word)) << what << ": detail '" << detail << "' does not mention " << word;
  std::vector<float> in = exact_input(5, w.rank, 1009), out(1009, NAN);
  EXPECT_EQ(lh_allreduce(w.c, in.data(), out.data(), 1009, nullptr), LH_SUCCESS)
      << what << ": communicator unusable after the mismatch: " << lh_last_error();
  expect_equal_values(out, rank_order_sum(all_inputs(5, w.size, 1009)), what + ": the next all-reduce");
}

TEST(CompressedBadInput, MismatchesAreReportedOnEveryRank) {
  World w(20.0);
  if (w.size == 1)
    GTEST_SKIP() << "needs two ranks to disagree";
  bool r0 = w.rank == 0;
  Case q8 = make_case("qring/blockq8", LH_ALLREDUCE_QRING, LH_CODEC_BLOCKQ, 8);
  Case topk = make_case("owner/topk", LH_ALLREDUCE_OWNER, LH_CODEC_TOPK, 0, 0.01);

  expect_mismatch_everywhere(w, make_config(q8), r0 ? 1000 : 1009, "qring/blockq8 counts", "count");
  expect_mismatch_everywhere(w, make_config(topk), r0 ? 4097 : 4096, "owner/topk counts", "count");
  expect_mismatch_everywhere(
      w, make_config(make_case("ss", LH_ALLREDUCE_SHARED_RING, LH_CODEC_SHAREDQ, 8)), r0 ? 0 : 5,
      "shared_ring counts (0 on rank 0)", "count");
  lh_allreduce_config c = make_config(make_case("qring", LH_ALLREDUCE_QRING, r0 ? LH_CODEC_FP16 : LH_CODEC_BF16));
  expect_mismatch_everywhere(w, c, 1009, "codec fp16 vs bf16", "codec");
  c = make_config(q8);
  c.bits = r0 ? 4 : 8;
  expect_mismatch_everywhere(w, c, 1009, "blockq bits", "bits");
  c = make_config(q8);
  c.block = r0 ? 256 : 0;
  expect_mismatch_everywhere(w, c, 1009, "blockq block", "block");
  c = make_config(q8);
  c.rounding = r0 ? LH_ROUND_STOCHASTIC : LH_ROUND_NEAREST;
  expect_mismatch_everywhere(w, c, 1009, "rounding", "rounding");
  c = make_config(topk);
  c.algo = r0 ? LH_ALLREDUCE_ALLGATHER : LH_ALLREDUCE_OWNER;
  expect_mismatch_everywhere(w, c, 1009, "owner vs allgather", "algorithm");
  c = make_config(topk);
  c.density = r0 ? 0.1 : 0.01;
  expect_mismatch_everywhere(w, c, 5000, "topk density", "densit");
  c = make_config(topk);
  c.topk_chunk = r0 ? 1024 : 0;
  expect_mismatch_everywhere(w, c, 5000, "topk chunk", "chunk");
  c = make_config(q8);
  c.op = r0 ? LH_OP_MEAN : LH_OP_SUM;
  expect_mismatch_everywhere(w, c, 1009, "op", "op");
  c = make_config(topk);
  c.zstd_level = r0 ? 3 : 0;
  expect_mismatch_everywhere(w, c, 5000, "zstd_level", "zstd");
  c = make_config(q8);
  c.chunk_bytes = r0 ? 8192 : 4096;
  expect_mismatch_everywhere(w, c, 50021, "chunk_bytes");
  c = make_config(make_case("owner/randk", LH_ALLREDUCE_OWNER, LH_CODEC_RANDK, 0, 0.1));
  c.seed = r0 ? 1 : 2;  // random-k's choice must be shared
  expect_mismatch_everywhere(w, c, 5000, "random-k seeds", "seed");
}

TEST(CompressedBadInput, ReducerMismatchesAreReportedOnEveryRank) {
  World w(20.0);
  if (w.size == 1)
    GTEST_SKIP() << "needs two ranks to disagree";
  bool r0 = w.rank == 0;
  lh_allreduce_config cfg = make_config(make_case("qring/blockq4", LH_ALLREDUCE_QRING, LH_CODEC_BLOCKQ, 4));
  Reducer red(w.c, cfg);
  std::vector<float> a(1000, 0.25f), b(2000, 0.25f);
  auto expect_mismatch = [&](std::vector<lh_tensor> ts, const char *what) {
    lh_status st = lh_reducer_allreduce(red.r, ts.data(), (int)ts.size());
    EXPECT_EQ(st, LH_ERR_MISMATCH) << what << ": " << lh_status_string(st) << ": " << lh_last_error();
    EXPECT_STRNE(lh_last_error(), "") << what;
  };
  lh_tensor ta = tensor(1, a), tb = tensor(2, b);
  lh_tensor ta_short = ta;
  ta_short.count = 999;
  expect_mismatch({r0 ? ta_short : ta, tb}, "a bucket's counts");
  expect_mismatch(r0 ? std::vector<lh_tensor>{ta} : std::vector<lh_tensor>{ta, tb}, "number of tensors");
  lh_tensor tb_key = tb;
  tb_key.key = 3;
  expect_mismatch({ta, r0 ? tb_key : tb}, "keys");
  expect_mismatch(r0 ? std::vector<lh_tensor>{tb, ta} : std::vector<lh_tensor>{ta, tb}, "tensor order");

  // Reducers created with different configs: refused at creation or at the first call.
  lh_allreduce_config other = cfg;
  other.bits = r0 ? 8 : 4;
  lh_reducer r = nullptr;
  lh_status st = lh_reducer_create(w.c, &other, &r);
  if (st == LH_SUCCESS) {
    lh_tensor t = tensor(1, a);
    st = lh_reducer_allreduce(r, &t, 1);
  }
  EXPECT_EQ(st, LH_ERR_MISMATCH) << "reducers of different bits: " << lh_last_error();
  lh_reducer_free(r);
  for (int field = 0; field < 3; field++) {
    lh_allreduce_config p = powersgd_config(0);
    const char *what = field == 0 ? "powersgd_rank" : field == 1 ? "warmup_steps" : "error_feedback";
    if (field == 0)
      p.powersgd_rank = r0 ? 4 : 2;
    else if (field == 1)
      p.warmup_steps = r0 ? 3 : 0;
    else
      p.error_feedback = r0 ? 0 : 1;
    r = nullptr;
    st = lh_reducer_create(w.c, &p, &r);
    if (st == LH_SUCCESS) {
      std::vector<float> m = exact_input(3, w.rank, kRows * kCols);
      lh_tensor t = tensor(1, m, kRows);
      st = lh_reducer_allreduce(r, &t, 1);
    }
    EXPECT_EQ(st, LH_ERR_MISMATCH) << "reducers of different " << what << ": " << lh_last_error();
    lh_reducer_free(r);
  }

  // A refused call leaves no trace: the same keys with agreed shapes work right after.
  lh_tensor again[2] = {ta, tb};
  EXPECT_EQ(lh_reducer_allreduce(red.r, again, 2), LH_SUCCESS)
      << "keys 1 and 2 with the agreed shapes after refused calls: " << lh_last_error();

  // The original reducer still works.
  std::vector<float> z = exact_input(3, w.rank, 1009);
  lh_tensor tz = tensor(9, z);
  LH_ASSERT_OK(lh_reducer_allreduce(red.r, &tz, 1));
  expect_identical_on_all_ranks(z, "reducer after mismatches");
}

// An invalid config (the same on every rank) is refused with a status in `allowed` and a
// detail mentioning `word`, by lh_allreduce and by lh_reducer_create.
void expect_refused(World &w, const lh_allreduce_config &cfg, std::initializer_list<lh_status> allowed,
                    const char *word, const std::string &what) {
  std::vector<float> x = exact_input(1, w.rank, 64), y(64, 0.0f);
  lh_status st = lh_allreduce(w.c, x.data(), y.data(), 64, &cfg);
  std::string detail = lh_last_error();
  EXPECT_NE(std::find(allowed.begin(), allowed.end(), st), allowed.end())
      << what << ": got " << lh_status_string(st) << ": " << detail;
  EXPECT_TRUE(contains_ci(detail, word)) << what << ": detail '" << detail << "' does not mention " << word;
  lh_reducer r = nullptr;
  st = lh_reducer_create(w.c, &cfg, &r);
  detail = lh_last_error();
  EXPECT_NE(std::find(allowed.begin(), allowed.end(), st), allowed.end())
      << what << " (lh_reducer_create): got " << lh_status_string(st) << ": " << detail;
  EXPECT_TRUE(contains_ci(detail, word)) << what << " (lh_reducer_create): detail '" << detail
                                         << "' does not mention " << word;
  EXPECT_EQ(r, nullptr) << what;
  if (r)
    lh_reducer_free(r);
  lh_allreduce_algo algo;
  st = lh_allreduce_choose(w.c, &cfg, 64, &algo);
  EXPECT_NE(st, LH_SUCCESS) << what << " (lh_allreduce_choose)";
}

TEST(CompressedBadInput, InvalidConfigsAreRefused) {
  World w(20.0);
  const auto IA = LH_ERR_INVALID_ARGUMENT, NS = LH_ERR_NOT_SUPPORTED;
  Case q = make_case("qring/blockq8", LH_ALLREDUCE_QRING, LH_CODEC_BLOCKQ, 8);
  Case topk = make_case("owner/topk", LH_ALLREDUCE_OWNER, LH_CODEC_TOPK, 0, 0.01);
  lh_allreduce_config c;

  c = make_config(q);
  c.bits = 9;
  expect_refused(w, c, {IA}, "bits", "blockq bits 9");
  c = make_config(q);
  c.bits = -1;
  expect_refused(w, c, {IA}, "bits", "blockq bits -1");
  c = make_config(make_case("s", LH_ALLREDUCE_SHARED_RING, LH_CODEC_SHAREDQ, 1));
  expect_refused(w, c, {IA}, "bits", "sharedq bits 1");
  c = make_config(q);
  c.block = 4;
  expect_refused(w, c, {IA}, "block", "block 4");
  c = make_config(topk);
  c.density = 1.5;
  expect_refused(w, c, {IA}, "density", "density 1.5");
  c = make_config(topk);
  c.density = -0.5;
  expect_refused(w, c, {IA}, "density", "density -0.5");
  c = make_config(topk);
  c.density = NAN;
  expect_refused(w, c, {IA}, "density", "density NaN");
  c = make_config(topk);
  c.topk_chunk = 70000;
  expect_refused(w, c, {IA}, "chunk", "topk_chunk 70000");
  c = powersgd_config(0);
  c.powersgd_rank = 9;
  expect_refused(w, c, {IA}, "rank", "powersgd_rank 9");
  c = make_config(q);
  c.zstd_level = 20;
  expect_refused(w, c, {IA}, "zstd", "zstd_level 20");
  c = make_config(q);
  c.rounding = (lh_rounding)7;
  expect_refused(w, c, {IA}, "rounding", "rounding 7");
  c = make_config(q);
  c.error_feedback = 2;
  expect_refused(w, c, {IA}, "error_feedback", "error_feedback 2");
  c = make_config(q);
  c.codec = (lh_codec_id)99;
  expect_refused(w, c, {IA}, "codec", "codec 99");
  c = make_config(q);
  c.algo = (lh_allreduce_algo)99;
  expect_refused(w, c, {IA}, "algorithm", "algo 99");
  c = make_config(q);
  c.size = sizeof(size_t);
  expect_refused(w, c, {IA}, "size", "config.size too small");
  // Pairs the header does not provide: QRING re-encodes partial sums, which SIGN, TOPK and
  // RANDK cannot carry; SHARED_RING needs shared scales (SHAREDQ).
  expect_refused(w, make_config(make_case("", LH_ALLREDUCE_QRING, LH_CODEC_SIGN)), {IA, NS}, "sign", "qring/sign");
  expect_refused(w, make_config(make_case("", LH_ALLREDUCE_QRING, LH_CODEC_TOPK)), {IA, NS}, "topk", "qring/topk");
  expect_refused(w, make_config(make_case("", LH_ALLREDUCE_SHARED_RING, LH_CODEC_BLOCKQ)), {IA, NS}, "blockq",
                 "shared_ring/blockq");
  expect_refused(w, make_config(make_case("", LH_ALLREDUCE_QRING, LH_CODEC_SHAREDQ)), {IA, NS}, "sharedq",
                 "qring/sharedq");

  // Still usable.
  std::vector<float> in = exact_input(5, w.rank, 1009), out(1009, NAN);
  LH_ASSERT_OK(lh_allreduce(w.c, in.data(), out.data(), 1009, nullptr));
  expect_equal_values(out, rank_order_sum(all_inputs(5, w.size, 1009)), "after refused configs");
}

TEST(CompressedAllreduce, SparseFramesFitTheirBuffers) {
  // A frame is cut into equal chunks, so it may keep more than a frame of full chunks with a
  // short last one: buffers must be sized for that (an owner top-k with zstd once failed here
  // with "out has 8064 bytes, a frame ... may need 8074"). Counts just past whole chunks.
  World w;
  for (lh_codec_id codec : {LH_CODEC_TOPK, LH_CODEC_RANDK})
    for (lh_allreduce_algo algo : {LH_ALLREDUCE_OWNER, LH_ALLREDUCE_ALLGATHER})
      for (int zstd : {0, 3})
        for (size_t count : {(size_t)4097, (size_t)8191, (size_t)12289, (size_t)262147}) {
          lh_allreduce_config cfg = LH_ALLREDUCE_CONFIG_INIT;
          cfg.codec = codec;
          cfg.algo = algo;
          cfg.zstd_level = zstd;
          std::vector<float> in = exact_input(31, w.rank, count), out(count, NAN);
          EXPECT_EQ(lh_allreduce(w.c, in.data(), out.data(), count, &cfg), LH_SUCCESS)
              << "codec " << codec << " algo " << algo << " zstd " << zstd << " count " << count << ": "
              << lh_last_error();
        }
}

TEST(CompressedBadInput, NonFiniteInputIsAnErrorOnEveryRank) {
  // A NaN on one rank only. The plain ring adds it like any float (every rank gets a NaN); the
  // compressed algorithms check their input before anything is sent, so the rank with the NaN
  // gets INVALID_ARGUMENT naming the element and every other rank an error too -- never a
  // timeout (the comm's timeout is 20 s, the ctest limit far above) and never garbage.
  for (Case k : {make_case("ring/none", LH_ALLREDUCE_RING, LH_CODEC_NONE),
                 make_case("qring/blockq8", LH_ALLREDUCE_QRING, LH_CODEC_BLOCKQ, 8),
                 make_case("shared_ring/sharedq8", LH_ALLREDUCE_SHARED_RING, LH_CODEC_SHAREDQ, 8),
                 make_case("owner/topk", LH_ALLREDUCE_OWNER, LH_CODEC_TOPK, 0, 0.01),
                 make_case("allgather/sign", LH_ALLREDUCE_ALLGATHER, LH_CODEC_SIGN)}) {
    World w(20.0);
    const size_t count = 1000;
    std::vector<float> in = exact_input(13, w.rank, count), out(count, 0.0f);
    if (w.rank == w.size - 1)
      in[17] = NAN;
    lh_allreduce_config cfg = make_config(k);
    lh_status st = lh_allreduce(w.c, in.data(), out.data(), count, &cfg);
    std::string detail = lh_last_error();
    if (k.codec == LH_CODEC_NONE) {
      EXPECT_EQ(st, LH_SUCCESS) << k.name << ": " << detail;
      EXPECT_TRUE(std::isnan(out[17])) << k.name << ": NaN input gave " << out[17];
    } else {
      EXPECT_NE(st, LH_SUCCESS) << k.name << ": NaN input was accepted";
      EXPECT_NE(st, LH_ERR_TIMEOUT) << k.name << ": a rank was left waiting: " << detail;
      if (w.rank == w.size - 1) {
        EXPECT_EQ(st, LH_ERR_INVALID_ARGUMENT) << k.name << ": " << detail;
        EXPECT_NE(detail.find("element 17"), std::string::npos) << k.name << ": " << detail;
      }
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
}

TEST(CompressedReducer, StartReturnsBeforeTheLinksCouldDeliver) {
  // Overlap, from the simulated links' semantics rather than a timing threshold: with a 1 s
  // latency no frame can arrive within a second of lh_reducer_start, so a start that returned
  // with the work done (or a test reporting done right after it) ran the reduction in the
  // caller's thread. The runner asks MPI for MPI_THREAD_MULTIPLE, as lh_comm_create does.
  int level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&level);
  ASSERT_EQ(level, MPI_THREAD_MULTIPLE);
  lh_comm c = nullptr;
  lh_comm_config cc = LH_COMM_CONFIG_INIT;
  cc.sim_latency = "1s";
  cc.sim_bandwidth = "1gbit";
  cc.timeout_s = 60;
  ASSERT_EQ(lh_comm_create(&cc, &c), LH_SUCCESS) << lh_last_error();
  int rank = 0, size = 1;
  lh_comm_rank(c, &rank);
  lh_comm_size(c, &size);
  lh_allreduce_config cfg = LH_ALLREDUCE_CONFIG_INIT;
  cfg.codec = LH_CODEC_SIGN;
  cfg.algo = LH_ALLREDUCE_ALLGATHER; /* one latency per call */
  lh_reducer r = nullptr;
  ASSERT_EQ(lh_reducer_create(c, &cfg, &r), LH_SUCCESS) << lh_last_error();
  const size_t count = 4099;
  std::vector<float> x = exact_input(21, rank, count), y = x;
  lh_tensor t = {sizeof(lh_tensor), 9, x.data(), count, 0};
  ASSERT_EQ(lh_reducer_start(r, &t, 1), LH_SUCCESS) << lh_last_error();
  int done = 1;
  EXPECT_EQ(lh_reducer_test(r, &done), LH_SUCCESS);
  if (size > 1)
    EXPECT_EQ(done, 0) << "lh_reducer_start did the work before returning";
  ASSERT_EQ(lh_reducer_wait(r), LH_SUCCESS) << lh_last_error();
  EXPECT_EQ(lh_reducer_test(r, &done), LH_SUCCESS);
  EXPECT_EQ(done, 1);
  // The same step on a fresh reducer in the blocking form gives the same bits.
  lh_reducer r2 = nullptr;
  ASSERT_EQ(lh_reducer_create(c, &cfg, &r2), LH_SUCCESS) << lh_last_error();
  lh_tensor t2 = {sizeof(lh_tensor), 9, y.data(), count, 0};
  ASSERT_EQ(lh_reducer_allreduce(r2, &t2, 1), LH_SUCCESS) << lh_last_error();
  EXPECT_EQ(0, std::memcmp(x.data(), y.data(), count * sizeof(float)));
  EXPECT_EQ(lh_reducer_free(r2), LH_SUCCESS);
  EXPECT_EQ(lh_reducer_free(r), LH_SUCCESS);
  EXPECT_EQ(lh_comm_destroy(c), LH_SUCCESS);
}

}  // namespace

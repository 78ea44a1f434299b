// Fused attention for XLA:CPU (see cpu_attention.py): forward and backward of
// softmax(scale * q k^T, masked) v for float32 [batch, length, heads, head_dim] tensors.
//
// One work unit is one (example, head) pair. Its score rows are computed a block of query
// rows at a time, so the scores, probabilities and their gradients stay in the core's cache;
// the products are register-tiled loops over GCC vector types (16 floats), which the compiler
// maps onto the machine's widest vector unit (-march=native). Units are shared between the
// calling thread and XLA's intra-op thread pool.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

constexpr int kLanes = 16;
constexpr int kBlockRows = 48;  // Query rows per block (a multiple of the tile's 6 rows).
// jax.nn.dot_product_attention's fill for masked scores: a fully masked row is uniform.
constexpr float kMasked = -0.7f * 3.40282347e+38f;

inline v16 load(const float* p) { v16 v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }
inline int64_t round_up(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

// exp on 16 lanes: 2^n * p(r), n = round(x / ln 2), |r| <= ln 2 / 2, degree-6 polynomial;
// inputs below -87.3 give 0. Largest relative error against double-precision exp, sampled
// over [-87, 0) (the softmax's range, scores minus their maximum): 8e-8.
inline v16 exp16(v16 x) {
  const v16 zero = v16{}, low = zero - 87.3f, high = zero + 88.7f;
  const auto underflow = x < low;
  x = underflow ? low : x;
  x = x > high ? high : x;
  v16 n = x * 1.44269504088896341f;
  n = n + (n < zero ? zero - 0.5f : zero + 0.5f);
  n = __builtin_convertvector(__builtin_convertvector(n, v16i), v16);  // Rounded to nearest.
  v16 r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  v16 p = zero + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const v16i bits = (__builtin_convertvector(n, v16i) + 127) << 23;
  v16 two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return underflow ? zero : p * two_n;
}

// C[m, 0:16*NV] (+)= sum_k A[m * sam + k * sak] * B[k * sb + 0:16*NV] for MR rows.
template <int MR, int NV>
inline void tile(int64_t K, const float* A, int64_t sam, int64_t sak, const float* B,
                 int64_t sb, float* C, int64_t sc, bool accumulate) {
  v16 acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = v16{};
  for (int64_t k = 0; k < K; ++k) {
    v16 b[NV];
    for (int v = 0; v < NV; ++v) b[v] = load(B + k * sb + kLanes * v);
    for (int r = 0; r < MR; ++r) {
      const float a = A[r * sam + k * sak];
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) {
      float* c = C + r * sc + kLanes * v;
      store(c, accumulate ? load(c) + acc[r][v] : acc[r][v]);
    }
}

template <int MR>
inline void tile_row(int64_t n16, int64_t K, const float* A, int64_t sam, int64_t sak,
                     const float* B, int64_t sb, float* C, int64_t sc, bool accumulate) {
  int64_t n = 0;
  for (; n + 4 <= n16; n += 4)
    tile<MR, 4>(K, A, sam, sak, B + kLanes * n, sb, C + kLanes * n, sc, accumulate);
  const float* b = B + kLanes * n;
  float* c = C + kLanes * n;
  switch (n16 - n) {
    case 3: tile<MR, 3>(K, A, sam, sak, b, sb, c, sc, accumulate); break;
    case 2: tile<MR, 2>(K, A, sam, sak, b, sb, c, sc, accumulate); break;
    case 1: tile<MR, 1>(K, A, sam, sak, b, sb, c, sc, accumulate); break;
    default: break;
  }
}

// C [M, 16 * n16] (+)= A [M, K] (strides sam, sak) @ B [K, 16 * n16] (row stride sb).
void gemm(int64_t M, int64_t n16, int64_t K, const float* A, int64_t sam, int64_t sak,
          const float* B, int64_t sb, float* C, int64_t sc, bool accumulate) {
  int64_t m = 0;
  for (; m + 6 <= M; m += 6)
    tile_row<6>(n16, K, A + m * sam, sam, sak, B, sb, C + m * sc, sc, accumulate);
  for (; m + 2 <= M; m += 2)
    tile_row<2>(n16, K, A + m * sam, sam, sak, B, sb, C + m * sc, sc, accumulate);
  for (; m < M; ++m)
    tile_row<1>(n16, K, A + m * sam, sam, sak, B, sb, C + m * sc, sc, accumulate);
}

// The [B, T, H, D] tensors and the [B, Hm, Tm, S] mask of one call.
struct Shapes {
  int64_t batch, q_len, k_len, heads, depth, mask_heads, mask_rows;
  int64_t k_pad() const { return round_up(k_len); }
  // Offset of (example b, row t, head h) in a [B, length, H, D] tensor.
  int64_t at(int64_t b, int64_t length, int64_t t, int64_t h) const {
    return ((b * length + t) * heads + h) * depth;
  }
  const bool* mask_row(const bool* mask, int64_t b, int64_t h, int64_t t) const {
    const int64_t mh = mask_heads == 1 ? 0 : h, mt = mask_rows == 1 ? 0 : t;
    return mask + ((b * mask_heads + mh) * mask_rows + mt) * k_len;
  }
};

// Runs fn(unit) for unit in [0, units) on the calling thread and XLA's pool. Tasks that start
// after every unit is taken return at once; their state outlives this call.
template <typename F>
void parallel_for(ffi::ThreadPool& pool, int64_t units, F fn) {
  struct State {
    std::atomic<int64_t> next{0};
    int64_t done = 0;
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  auto work = [state, units, fn]() {
    int64_t finished = 0;
    for (int64_t u; (u = state->next.fetch_add(1)) < units; ++finished) fn(u);
    if (finished) {
      std::lock_guard<std::mutex> lock(state->mu);
      state->done += finished;
      if (state->done == units) state->cv.notify_all();
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), units) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule(decltype(work)(work));
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done == units; });
}

// Scratch memory of the calling thread, one buffer per slot, kept between units and calls.
float* scratch(int slot, int64_t size) {
  thread_local std::vector<float> buffers[10];
  std::vector<float>& buffer = buffers[slot];
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
  return buffer.data();
}

// dst [D, pad] = factor * (src rows, stride H * D) transposed, 16 x 16 at a time; zero past
// `rows`.
void pack_transposed(const float* src, int64_t rows, int64_t stride, int64_t depth, int64_t pad,
                     float factor, float* dst) {
  for (int64_t s0 = 0; s0 < pad; s0 += kLanes) {
    const int64_t n = std::min<int64_t>(kLanes, rows - s0);
    for (int64_t d0 = 0; d0 < depth; d0 += kLanes) {
      float block[kLanes][kLanes];
      for (int64_t i = 0; i < kLanes; ++i)
        store(block[i], i < n ? load(src + (s0 + i) * stride + d0) * factor : v16{});
      for (int64_t j = 0; j < kLanes; ++j) {
        float* out = dst + (d0 + j) * pad + s0;
        for (int64_t i = 0; i < kLanes; ++i) out[i] = block[i][j];
      }
    }
  }
}

// dst [rows, D] = src rows (stride H * D), contiguous.
void pack_rows(const float* src, int64_t rows, int64_t stride, int64_t depth, float* dst) {
  for (int64_t s = 0; s < rows; ++s)
    std::memcpy(dst + s * depth, src + s * stride, depth * sizeof(float));
}

// bias [pad]: 0 for attended keys, kMasked for masked ones and past k_len. Adding it to a
// score gives kMasked exactly (the score is far below kMasked's precision), as a select would.
void mask_bias(const bool* mask, int64_t k_len, int64_t pad, float* bias) {
  for (int64_t j = 0; j < k_len; ++j) bias[j] = mask[j] ? 0.0f : kMasked;
  std::fill(bias + k_len, bias + pad, kMasked);
}

// The bias of query row t: the unit's own where the mask does not vary along the rows.
const float* row_bias(const Shapes& sh, const bool* mask, int64_t b, int64_t h, int64_t t,
                      const float* unit_bias, float* buffer) {
  if (sh.mask_rows == 1) return unit_bias;
  mask_bias(sh.mask_row(mask, b, h, t), sh.k_len, sh.k_pad(), buffer);
  return buffer;
}

// In place: s -> exp(s + bias - shift) (bias may be null), zero past k_len; returns the sum.
float exp_row(float* s, const float* bias, int64_t k_len, int64_t pad, float shift) {
  v16 total = v16{};
  for (int64_t j = 0; j < pad; j += kLanes) {
    v16 x = load(s + j) - shift;
    if (bias != nullptr) x += load(bias + j);
    v16 e = exp16(x);
    if (j + kLanes > k_len) {
      for (int64_t i = k_len - j; i < kLanes; ++i) e[i] = 0.0f;
    }
    store(s + j, e);
    total += e;
  }
  float sum = 0.0f;
  for (int i = 0; i < kLanes; ++i) sum += total[i];
  return sum;
}

// In place: s += bias over the row; returns the row's maximum.
float add_max(float* s, const float* bias, int64_t pad) {
  v16 top = v16{} + kMasked;
  for (int64_t j = 0; j < pad; j += kLanes) {
    const v16 x = load(s + j) + load(bias + j);
    store(s + j, x);
    top = x > top ? x : top;
  }
  float best = top[0];
  for (int i = 1; i < kLanes; ++i) best = std::max(best, top[i]);
  return best;
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::PRED> mask,
                   ffi::Buffer<ffi::PRED> keep, float scale, float keep_scale, int32_t dropout,
                   ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse) {
  const auto qd = q.dimensions(), kd = k.dimensions(), md = mask.dimensions();
  const Shapes sh{qd[0], qd[1], kd[1], qd[2], qd[3], md[1], md[2]};
  const int64_t pad = sh.k_pad(), stride = sh.heads * sh.depth;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const bool *mp = mask.typed_data(), *keepp = keep.typed_data();
  float *op = out->typed_data(), *lp = lse->typed_data();
  parallel_for(pool, sh.batch * sh.heads, [&](int64_t unit) {
    const int64_t b = unit / sh.heads, h = unit % sh.heads;
    float *kt = scratch(0, sh.depth * pad), *vr = scratch(1, sh.k_len * sh.depth),
          *S = scratch(2, kBlockRows * pad), *bias = scratch(3, pad),
          *own_bias = scratch(4, pad), *norm = scratch(5, kBlockRows);
    // The scale goes into k: the products then give the scaled scores.
    pack_transposed(kp + sh.at(b, sh.k_len, 0, h), sh.k_len, stride, sh.depth, pad, scale, kt);
    pack_rows(vp + sh.at(b, sh.k_len, 0, h), sh.k_len, stride, sh.depth, vr);
    mask_bias(sh.mask_row(mp, b, h, 0), sh.k_len, pad, bias);
    for (int64_t t0 = 0; t0 < sh.q_len; t0 += kBlockRows) {
      const int64_t rows = std::min<int64_t>(kBlockRows, sh.q_len - t0);
      gemm(rows, pad / kLanes, sh.depth, qp + sh.at(b, sh.q_len, t0, h), stride, 1, kt, pad, S,
           pad, false);
      for (int64_t r = 0; r < rows; ++r) {
        float* s = S + r * pad;
        const int64_t row = (b * sh.heads + h) * sh.q_len + t0 + r;
        const float top = add_max(s, row_bias(sh, mp, b, h, t0 + r, bias, own_bias), pad);
        const float total = exp_row(s, nullptr, sh.k_len, pad, top);
        lp[row] = top + std::log(total);
        // Normalised after the product, on D values per row instead of k_len.
        norm[r] = (dropout ? keep_scale : 1.0f) / total;
        if (dropout) {
          const bool* kept = keepp + row * sh.k_len;
          for (int64_t j = 0; j < sh.k_len; ++j) s[j] = kept[j] ? s[j] : 0.0f;
        }
      }
      float* o = op + sh.at(b, sh.q_len, t0, h);
      gemm(rows, sh.depth / kLanes, sh.k_len, S, pad, 1, vr, sh.depth, o, stride, false);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t d = 0; d < sh.depth; ++d) o[r * stride + d] *= norm[r];
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::PRED> mask,
                    ffi::Buffer<ffi::PRED> keep, ffi::Buffer<ffi::F32> out,
                    ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> d_out, float scale,
                    float keep_scale, int32_t dropout, ffi::ResultBuffer<ffi::F32> d_q,
                    ffi::ResultBuffer<ffi::F32> d_k, ffi::ResultBuffer<ffi::F32> d_v) {
  const auto qd = q.dimensions(), kd = k.dimensions(), md = mask.dimensions();
  const Shapes sh{qd[0], qd[1], kd[1], qd[2], qd[3], md[1], md[2]};
  const int64_t pad = sh.k_pad(), stride = sh.heads * sh.depth, n16 = sh.depth / kLanes;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const float *outp = out.typed_data(), *lp = lse.typed_data(), *dop = d_out.typed_data();
  const bool *mp = mask.typed_data(), *keepp = keep.typed_data();
  float *dqp = d_q->typed_data(), *dkp = d_k->typed_data(), *dvp = d_v->typed_data();
  parallel_for(pool, sh.batch * sh.heads, [&](int64_t unit) {
    const int64_t b = unit / sh.heads, h = unit % sh.heads, kd_size = sh.k_len * sh.depth;
    float *kt = scratch(0, sh.depth * pad), *vt = scratch(1, sh.depth * pad),
          *kr = scratch(2, kd_size), *P = scratch(3, kBlockRows * pad),
          *dP = scratch(4, kBlockRows * pad), *used = scratch(5, kBlockRows * pad),
          *dk = scratch(6, kd_size), *dv = scratch(7, kd_size), *bias = scratch(8, pad),
          *own_bias = scratch(9, pad);
    const float* k_bh = kp + sh.at(b, sh.k_len, 0, h);
    pack_transposed(k_bh, sh.k_len, stride, sh.depth, pad, scale, kt);
    pack_rows(k_bh, sh.k_len, stride, sh.depth, kr);
    pack_transposed(vp + sh.at(b, sh.k_len, 0, h), sh.k_len, stride, sh.depth, pad, 1.0f, vt);
    mask_bias(sh.mask_row(mp, b, h, 0), sh.k_len, pad, bias);
    std::fill(dk, dk + kd_size, 0.0f);
    std::fill(dv, dv + kd_size, 0.0f);
    for (int64_t t0 = 0; t0 < sh.q_len; t0 += kBlockRows) {
      const int64_t rows = std::min<int64_t>(kBlockRows, sh.q_len - t0);
      const float* q_blk = qp + sh.at(b, sh.q_len, t0, h);
      const float* do_blk = dop + sh.at(b, sh.q_len, t0, h);
      gemm(rows, pad / kLanes, sh.depth, q_blk, stride, 1, kt, pad, P, pad, false);
      gemm(rows, pad / kLanes, sh.depth, do_blk, stride, 1, vt, pad, dP, pad, false);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t row = (b * sh.heads + h) * sh.q_len + t0 + r;
        float *p = P + r * pad, *dp = dP + r * pad;
        exp_row(p, row_bias(sh, mp, b, h, t0 + r, bias, own_bias), sh.k_len, pad, lp[row]);
        float delta = 0.0f;
        const float* o = outp + sh.at(b, sh.q_len, t0 + r, h);
        for (int64_t d = 0; d < sh.depth; ++d) delta += do_blk[r * stride + d] * o[d];
        if (dropout) {
          const bool* kept = keepp + row * sh.k_len;
          float* u = used + r * pad;
          for (int64_t j = 0; j < sh.k_len; ++j) {
            u[j] = kept[j] ? p[j] * keep_scale : 0.0f;
            dp[j] = kept[j] ? dp[j] * keep_scale : 0.0f;
          }
        }
        for (int64_t j = 0; j < sh.k_len; ++j) dp[j] = p[j] * (dp[j] - delta) * scale;
      }
      // dV += used^T dO, dK += dS^T Q, dQ = dS K (dS is in dP).
      gemm(sh.k_len, n16, rows, dropout ? used : P, 1, pad, do_blk, stride, dv, sh.depth, true);
      gemm(sh.k_len, n16, rows, dP, 1, pad, q_blk, stride, dk, sh.depth, true);
      gemm(rows, n16, sh.k_len, dP, pad, 1, kr, sh.depth, dqp + sh.at(b, sh.q_len, t0, h),
           stride, false);
    }
    for (int64_t s = 0; s < sh.k_len; ++s) {
      std::memcpy(dkp + sh.at(b, sh.k_len, s, h), dk + s * sh.depth, sh.depth * sizeof(float));
      std::memcpy(dvp + sh.at(b, sh.k_len, s, h), dv + s * sh.depth, sh.depth * sizeof(float));
    }
  });
  return ffi::Error::Success();
}

// What both passes take first: the thread pool and q, k, v, mask, keep.
auto BindInputs() {
  using F32 = ffi::Buffer<ffi::F32>;
  using Pred = ffi::Buffer<ffi::PRED>;
  return ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<Pred>()
      .Arg<Pred>();
}

// Then the attributes: the score scale, 1 / keep probability, and whether dropout is on.
template <typename Binding>
auto BindAttributes(Binding binding) {
  return std::move(binding)
      .template Attr<float>("scale")
      .template Attr<float>("keep_scale")
      .template Attr<int32_t>("dropout");
}

}  // namespace

using F32Buffer = ffi::Buffer<ffi::F32>;

// Forward: (out, lse) from (q, k, v, mask, keep).
XLA_FFI_DEFINE_HANDLER_SYMBOL(FinedualAttentionForward, Forward,
                              BindAttributes(BindInputs())
                                  .Ret<F32Buffer>()
                                  .Ret<F32Buffer>());

// Backward: (d_q, d_k, d_v) from (q, k, v, mask, keep, out, lse, d_out).
XLA_FFI_DEFINE_HANDLER_SYMBOL(FinedualAttentionBackward, Backward,
                              BindAttributes(BindInputs()
                                                 .Arg<F32Buffer>()
                                                 .Arg<F32Buffer>()
                                                 .Arg<F32Buffer>())
                                  .Ret<F32Buffer>()
                                  .Ret<F32Buffer>()
                                  .Ret<F32Buffer>());

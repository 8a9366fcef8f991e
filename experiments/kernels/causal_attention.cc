// Causal self-attention for XLA:CPU as an XLA FFI custom call, float32.
//
// FlashAttention-2 (Dao 2023, Algorithms 1 and 2): queries and keys in tiles
// of 64, an online softmax in the forward pass that stores only the row
// log-sum-exp, and a backward pass that recomputes the probabilities tile by
// tile. Key tiles past the diagonal are skipped (causal). Work is split over
// (batch, head) pairs on XLA's intra-op thread pool. Layout is genjax's q_BTHK: inputs
// (..., T, H, K), all leading dimensions folded into the batch.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kTile = 64;      // query and key tile (rows)
constexpr float kMasked = -1e30f;  // finite: built with -ffast-math

// 16 floats: one AVX-512 register (two AVX2 ones); aligned(4) permits unaligned loads.
typedef float v16 __attribute__((vector_size(64), aligned(4)));

struct Shape {
  int64_t batch, T, H, K;
  int64_t padded_T() const { return (T + kTile - 1) / kTile * kTile; }
};

Shape ShapeOf(ffi::Span<const int64_t> dims) {
  Shape s{1, dims[dims.size() - 3], dims[dims.size() - 2], dims[dims.size() - 1]};
  for (size_t i = 0; i + 3 < dims.size(); ++i) s.batch *= dims[i];
  return s;
}

// Rows [r0, r0 + n) of one head into a contiguous (n, K) tile; rows past T are zeros.
// Token t of batch b starts at x + (b T + t) stride: stride is H K for a (B, T, H, K)
// array, 3 H K for one third of a packed (B, T, 3, H, K) qkv.
void LoadRows(const float* x, int64_t stride, const Shape& s, int64_t b, int64_t h, int64_t r0, int64_t n,
              float* tile) {
  for (int64_t r = 0; r < n; ++r) {
    if (r0 + r < s.T) {
      const float* src = x + (b * s.T + r0 + r) * stride + h * s.K;
      std::copy(src, src + s.K, tile + r * s.K);
    } else {
      std::fill(tile + r * s.K, tile + (r + 1) * s.K, 0.0f);
    }
  }
}

void StoreRows(float* x, int64_t stride, const Shape& s, int64_t b, int64_t h, int64_t r0, int64_t n,
               const float* tile) {
  for (int64_t r = 0; r < n && r0 + r < s.T; ++r)
    std::copy(tile + r * s.K, tile + (r + 1) * s.K, x + (b * s.T + r0 + r) * stride + h * s.K);
}

// C (64, 16 NV) (+)= A (64, inner) . B (inner, 16 NV), row-major with leading dimensions.
// R rows of C stay in R x NV vector registers across the inner loop.
template <int NV, int R>
void Gemm(const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc, int64_t inner,
          bool accumulate) {
  for (int64_t i = 0; i < kTile; i += R) {
    v16 c[R][NV];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v)
        c[r][v] = accumulate ? *reinterpret_cast<const v16*>(C + (i + r) * ldc + 16 * v) : v16{};
    for (int64_t k = 0; k < inner; ++k) {
      v16 b[NV];
      for (int v = 0; v < NV; ++v) b[v] = *reinterpret_cast<const v16*>(B + k * ldb + 16 * v);
      for (int r = 0; r < R; ++r) {
        const float a = A[(i + r) * lda + k];
        for (int v = 0; v < NV; ++v) c[r][v] += a * b[v];
      }
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) *reinterpret_cast<v16*>(C + (i + r) * ldc + 16 * v) = c[r][v];
  }
}

// Gemm with C's width = head size K (a multiple of 16, at most 128).
void GemmK(int64_t K, const float* A, int64_t lda, const float* B, float* C, int64_t inner, bool accumulate) {
  switch (K / 16) {
    case 1: return Gemm<1, 8>(A, lda, B, K, C, K, inner, accumulate);
    case 2: return Gemm<2, 8>(A, lda, B, K, C, K, inner, accumulate);
    case 3: return Gemm<3, 4>(A, lda, B, K, C, K, inner, accumulate);
    case 4: return Gemm<4, 4>(A, lda, B, K, C, K, inner, accumulate);
    case 5: return Gemm<5, 4>(A, lda, B, K, C, K, inner, accumulate);
    case 6: return Gemm<6, 4>(A, lda, B, K, C, K, inner, accumulate);
    case 7: return Gemm<7, 2>(A, lda, B, K, C, K, inner, accumulate);
    default: return Gemm<8, 2>(A, lda, B, K, C, K, inner, accumulate);
  }
}

// C (64, 64) = A (64, K) . B (K, 64): scores.
void GemmTile(const float* A, const float* B, float* C, int64_t K) { Gemm<4, 4>(A, K, B, kTile, C, kTile, K, false); }

void Transpose(const float* x, int64_t n, int64_t m, float* xt) {  // (n, m) -> (m, n)
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < m; ++c) xt[c * n + r] = x[r * m + c];
}

// Scaled scores of query tile i0 against key tile j0, keys after the query masked.
void MaskScale(int64_t i0, int64_t j0, float scale, float* s) {
  for (int64_t i = 0; i < kTile; ++i)
    for (int64_t j = 0; j < kTile; ++j) s[i * kTile + j] = (j0 + j <= i0 + i) ? s[i * kTile + j] * scale : kMasked;
}

void ForwardHead(const float* q, const float* k, const float* v, int64_t qkv_stride, const Shape& s, int64_t bh,
                 float scale, float* o, float* lse) {
  const int64_t b = bh / s.H, h = bh % s.H, K = s.K, HK = s.H * s.K;
  std::vector<float> qt(kTile * K), kr(kTile * K), kt(K * kTile), vr(kTile * K), acc(kTile * K), sc(kTile * kTile);
  std::vector<float> m(kTile), l(kTile);
  for (int64_t i0 = 0; i0 < s.T; i0 += kTile) {
    LoadRows(q, qkv_stride, s, b, h, i0, kTile, qt.data());
    std::fill(acc.begin(), acc.end(), 0.0f);
    std::fill(m.begin(), m.end(), kMasked);
    std::fill(l.begin(), l.end(), 0.0f);
    for (int64_t j0 = 0; j0 <= i0; j0 += kTile) {
      LoadRows(k, qkv_stride, s, b, h, j0, kTile, kr.data());
      Transpose(kr.data(), kTile, K, kt.data());
      LoadRows(v, qkv_stride, s, b, h, j0, kTile, vr.data());
      GemmTile(qt.data(), kt.data(), sc.data(), K);
      MaskScale(i0, j0, scale, sc.data());
      for (int64_t i = 0; i < kTile; ++i) {
        float* row = sc.data() + i * kTile;
        float mx = m[i];
        for (int64_t j = 0; j < kTile; ++j) mx = std::max(mx, row[j]);
        float sum = 0.0f;
        for (int64_t j = 0; j < kTile; ++j) {
          row[j] = std::exp(row[j] - mx);
          sum += row[j];
        }
        const float correction = std::exp(m[i] - mx);
        l[i] = l[i] * correction + sum;
        m[i] = mx;
        for (int64_t d = 0; d < K; ++d) acc[i * K + d] *= correction;
      }
      GemmK(K, sc.data(), kTile, vr.data(), acc.data(), kTile, true);  // O += P V
    }
    for (int64_t i = 0; i < kTile && i0 + i < s.T; ++i) {
      const float inv = 1.0f / l[i];
      for (int64_t d = 0; d < K; ++d) acc[i * K + d] *= inv;
      lse[bh * s.T + i0 + i] = m[i] + std::log(l[i]);
    }
    StoreRows(o, HK, s, b, h, i0, kTile, acc.data());
  }
}

void BackwardHead(const float* q, const float* k, const float* v, int64_t qkv_stride, const float* o,
                  const float* lse, const float* dout, const Shape& s, int64_t bh, float scale, float* dq, float* dk,
                  float* dv) {
  const int64_t b = bh / s.H, h = bh % s.H, K = s.K, T = s.T, Tp = s.padded_T(), HK = s.H * s.K;
  std::vector<float> qh(Tp * K), doh(Tp * K), dqh(Tp * K, 0.0f), delta(Tp, 0.0f), row_lse(Tp, 0.0f);
  std::vector<float> kr(kTile * K), kt(K * kTile), vr(kTile * K), vt(K * kTile), dka(kTile * K), dva(kTile * K);
  std::vector<float> p(kTile * kTile), pt(kTile * kTile), ds(kTile * kTile);
  LoadRows(q, qkv_stride, s, b, h, 0, Tp, qh.data());
  LoadRows(dout, HK, s, b, h, 0, Tp, doh.data());
  {
    std::vector<float> oh(Tp * K);
    LoadRows(o, HK, s, b, h, 0, Tp, oh.data());
    for (int64_t t = 0; t < T; ++t) {
      float sum = 0.0f;
      for (int64_t d = 0; d < K; ++d) sum += oh[t * K + d] * doh[t * K + d];
      delta[t] = sum;
      row_lse[t] = lse[bh * T + t];
    }
  }
  for (int64_t j0 = 0; j0 < T; j0 += kTile) {
    LoadRows(k, qkv_stride, s, b, h, j0, kTile, kr.data());
    Transpose(kr.data(), kTile, K, kt.data());
    LoadRows(v, qkv_stride, s, b, h, j0, kTile, vr.data());
    Transpose(vr.data(), kTile, K, vt.data());
    std::fill(dka.begin(), dka.end(), 0.0f);
    std::fill(dva.begin(), dva.end(), 0.0f);
    for (int64_t i0 = j0; i0 < T; i0 += kTile) {
      const float* qi = qh.data() + i0 * K;
      const float* doi = doh.data() + i0 * K;
      GemmTile(qi, kt.data(), p.data(), K);
      MaskScale(i0, j0, scale, p.data());
      for (int64_t i = 0; i < kTile; ++i)
        for (int64_t j = 0; j < kTile; ++j) p[i * kTile + j] = std::exp(p[i * kTile + j] - row_lse[i0 + i]);
      Transpose(p.data(), kTile, kTile, pt.data());
      GemmK(K, pt.data(), kTile, doi, dva.data(), kTile, true);  // dV += P^T dO
      GemmTile(doi, vt.data(), ds.data(), K);                    // dP = dO V^T
      for (int64_t i = 0; i < kTile; ++i)
        for (int64_t j = 0; j < kTile; ++j)
          ds[i * kTile + j] = p[i * kTile + j] * (ds[i * kTile + j] - delta[i0 + i]) * scale;  // dS
      GemmK(K, ds.data(), kTile, kr.data(), dqh.data() + i0 * K, kTile, true);  // dQ += dS K
      Transpose(ds.data(), kTile, kTile, pt.data());
      GemmK(K, pt.data(), kTile, qi, dka.data(), kTile, true);  // dK += dS^T Q
    }
    StoreRows(dk, qkv_stride, s, b, h, j0, kTile, dka.data());
    StoreRows(dv, qkv_stride, s, b, h, j0, kTile, dva.data());
  }
  StoreRows(dq, qkv_stride, s, b, h, 0, Tp, dqh.data());
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                   float scale, ffi::ResultBuffer<ffi::F32> o, ffi::ResultBuffer<ffi::F32> lse) {
  const Shape s = ShapeOf(q.dimensions());
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  float *op = o->typed_data(), *lp = lse->typed_data();
  genjax::ParallelFor(pool, s.batch * s.H, [&](int64_t bh) {
    ForwardHead(qp, kp, vp, s.H * s.K, s, bh, scale, op, lp);
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                    ffi::Buffer<ffi::F32> o, ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout, float scale,
                    ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv) {
  const Shape s = ShapeOf(q.dimensions());
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const float *opp = o.typed_data(), *lp = lse.typed_data(), *dop = dout.typed_data();
  float *dqp = dq->typed_data(), *dkp = dk->typed_data(), *dvp = dv->typed_data();
  genjax::ParallelFor(pool, s.batch * s.H, [&](int64_t bh) {
    BackwardHead(qp, kp, vp, s.H * s.K, opp, lp, dop, s, bh, scale, dqp, dkp, dvp);
  });
  return ffi::Error::Success();
}

// The packed variants read q, k and v from one (..., T, 3, H, K) projection and
// write one (..., T, 3, H, K) gradient, so no slices or concatenations are copied.
Shape PackedShapeOf(ffi::Span<const int64_t> dims) {
  Shape s{1, dims[dims.size() - 4], dims[dims.size() - 2], dims[dims.size() - 1]};
  for (size_t i = 0; i + 4 < dims.size(); ++i) s.batch *= dims[i];
  return s;
}

ffi::Error ForwardPacked(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv, float scale, ffi::ResultBuffer<ffi::F32> o,
                         ffi::ResultBuffer<ffi::F32> lse) {
  const Shape s = PackedShapeOf(qkv.dimensions());
  const int64_t HK = s.H * s.K;
  const float* p = qkv.typed_data();
  float *op = o->typed_data(), *lp = lse->typed_data();
  genjax::ParallelFor(pool, s.batch * s.H, [&](int64_t bh) {
    ForwardHead(p, p + HK, p + 2 * HK, 3 * HK, s, bh, scale, op, lp);
  });
  return ffi::Error::Success();
}

ffi::Error BackwardPacked(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv, ffi::Buffer<ffi::F32> o,
                          ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout, float scale,
                          ffi::ResultBuffer<ffi::F32> dqkv) {
  const Shape s = PackedShapeOf(qkv.dimensions());
  const int64_t HK = s.H * s.K;
  const float *p = qkv.typed_data(), *opp = o.typed_data(), *lp = lse.typed_data(), *dop = dout.typed_data();
  float* dp = dqkv->typed_data();
  genjax::ParallelFor(pool, s.batch * s.H, [&](int64_t bh) {
    BackwardHead(p, p + HK, p + 2 * HK, 3 * HK, opp, lp, dop, s, bh, scale, dp, dp + HK, dp + 2 * HK);
  });
  return ffi::Error::Success();
}

}  // namespace

using F32Buffer = ffi::Buffer<ffi::F32>;


XLA_FFI_DEFINE_HANDLER_SYMBOL(GenjaxCausalAttentionForward, Forward,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32Buffer>().Arg<F32Buffer>().Arg<F32Buffer>().Attr<float>("scale").Ret<F32Buffer>().Ret<F32Buffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(GenjaxCausalAttentionBackward, Backward,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32Buffer>().Arg<F32Buffer>().Arg<F32Buffer>().Arg<F32Buffer>().Arg<F32Buffer>().Arg<F32Buffer>().Attr<float>("scale").Ret<F32Buffer>().Ret<F32Buffer>().Ret<F32Buffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(GenjaxPackedCausalAttentionForward, ForwardPacked,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32Buffer>().Attr<float>("scale").Ret<F32Buffer>().Ret<F32Buffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(GenjaxPackedCausalAttentionBackward, BackwardPacked,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32Buffer>().Arg<F32Buffer>().Arg<F32Buffer>().Arg<F32Buffer>().Attr<float>("scale").Ret<F32Buffer>());

// LayerNorm for XLA:CPU as an XLA FFI custom call, float32 (Ba et al. 2016).
//
//   y = (x - mean) * rstd * scale + bias,   rstd = 1 / sqrt(var + eps),
// over the last axis. The forward pass also returns mean and rstd per row; the
// backward pass, with xhat = (x - mean) rstd and dxhat = dy * scale,
//   dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)),
//   dscale = sum over rows of dy xhat,   dbias = sum over rows of dy.
// One pass over each row (XLA:CPU makes several and materializes broadcasts),
// blocks of rows on XLA's intra-op thread pool.
// Leading axes of scale and bias (vmapped ensemble members) split the rows into
// equal groups, one per member.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using genjax::Size;

constexpr int64_t kRowsPerTask = 64;

int64_t Tasks(int64_t rows) { return (rows + kRowsPerTask - 1) / kRowsPerTask; }

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> bias, float eps,
                   ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> rstd) {
  const auto dims = x.dimensions();
  const int64_t D = dims[dims.size() - 1], rows = Size(dims) / D;
  const int64_t rows_per_member = rows / (Size(scale.dimensions()) / D);
  const float *xp = x.typed_data(), *sp = scale.typed_data(), *bp = bias.typed_data();
  float *yp = y->typed_data(), *mp = mean->typed_data(), *rp = rstd->typed_data();
  genjax::ParallelFor(pool, Tasks(rows), [&](int64_t task) {
    for (int64_t r = task * kRowsPerTask; r < std::min(rows, (task + 1) * kRowsPerTask); ++r) {
      const float* xr = xp + r * D;
      const float* s = sp + (r / rows_per_member) * D;
      const float* b = bp + (r / rows_per_member) * D;
      float sum = 0.0f;
      for (int64_t d = 0; d < D; ++d) sum += xr[d];
      const float mu = sum / D;
      float sq = 0.0f;
      for (int64_t d = 0; d < D; ++d) sq += (xr[d] - mu) * (xr[d] - mu);
      const float inv = 1.0f / std::sqrt(sq / D + eps);
      float* yr = yp + r * D;
      for (int64_t d = 0; d < D; ++d) yr[d] = (xr[d] - mu) * inv * s[d] + b[d];
      mp[r] = mu;
      rp[r] = inv;
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> mean,
                    ffi::Buffer<ffi::F32> rstd, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dx,
                    ffi::ResultBuffer<ffi::F32> dscale, ffi::ResultBuffer<ffi::F32> dbias) {
  const auto dims = x.dimensions();
  const int64_t D = dims[dims.size() - 1], rows = Size(dims) / D;
  const int64_t members = Size(scale.dimensions()) / D, rows_per_member = rows / members;
  const float *xp = x.typed_data(), *sp = scale.typed_data(), *mp = mean.typed_data(), *rp = rstd.typed_data();
  const float* gp = dy.typed_data();
  float *dxp = dx->typed_data(), *dsp = dscale->typed_data(), *dbp = dbias->typed_data();
  const int64_t tasks = Tasks(rows);
  // Per-task partial sums of dscale and dbias (a task's rows belong to one or two
  // members), added up in a fixed order after the loop: deterministic.
  std::vector<float> partial(static_cast<size_t>(tasks) * members * D * 2, 0.0f);
  genjax::ParallelFor(pool, tasks, [&](int64_t task) {
    std::vector<float> dxhat(D);
    float* part = partial.data() + static_cast<size_t>(task) * members * D * 2;
    for (int64_t r = task * kRowsPerTask; r < std::min(rows, (task + 1) * kRowsPerTask); ++r) {
      const int64_t member = r / rows_per_member;
      const float* xr = xp + r * D;
      const float* g = gp + r * D;
      const float* s = sp + member * D;
      float* ps = part + member * D * 2;
      float* pb = ps + D;
      const float mu = mp[r], inv = rp[r];
      float mean_dxhat = 0.0f, mean_dxhat_xhat = 0.0f;
      for (int64_t d = 0; d < D; ++d) {
        const float xhat = (xr[d] - mu) * inv;
        dxhat[d] = g[d] * s[d];
        mean_dxhat += dxhat[d];
        mean_dxhat_xhat += dxhat[d] * xhat;
        ps[d] += g[d] * xhat;
        pb[d] += g[d];
      }
      mean_dxhat /= D;
      mean_dxhat_xhat /= D;
      float* dxr = dxp + r * D;
      for (int64_t d = 0; d < D; ++d) dxr[d] = inv * (dxhat[d] - mean_dxhat - (xr[d] - mu) * inv * mean_dxhat_xhat);
    }
  });
  std::fill(dsp, dsp + members * D, 0.0f);
  std::fill(dbp, dbp + members * D, 0.0f);
  for (int64_t t = 0; t < tasks; ++t)
    for (int64_t m = 0; m < members; ++m)
      for (int64_t d = 0; d < D; ++d) {
        const float* ps = partial.data() + (static_cast<size_t>(t) * members + m) * D * 2;
        dsp[m * D + d] += ps[d];
        dbp[m * D + d] += ps[D + d];
      }
  return ffi::Error::Success();
}

}  // namespace

using F32Buffer = ffi::Buffer<ffi::F32>;


XLA_FFI_DEFINE_HANDLER_SYMBOL(GenjaxLayerNormForward, Forward,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32Buffer>().Arg<F32Buffer>().Arg<F32Buffer>().Attr<float>("eps").Ret<F32Buffer>().Ret<F32Buffer>().Ret<F32Buffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(GenjaxLayerNormBackward, Backward,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32Buffer>().Arg<F32Buffer>().Arg<F32Buffer>().Arg<F32Buffer>().Arg<F32Buffer>().Ret<F32Buffer>().Ret<F32Buffer>().Ret<F32Buffer>());

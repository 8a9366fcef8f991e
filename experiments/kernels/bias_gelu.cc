// Bias + tanh-approximate GELU for XLA:CPU as an XLA FFI custom call, float32.
//
//   h = gelu(y + b),  gelu(x) = x / 2 (1 + tanh(u)) = x sigmoid(2u),
//   u = sqrt(2 / pi) (x + 0.044715 x^3)            (Hendrycks & Gimpel 2016)
// and its gradient
//   dx = g (s + x s (1 - s) 2 u'),  s = sigmoid(2u),  u' = sqrt(2 / pi) (1 + 3 0.044715 x^2),
//   db = sum over rows of dx.
// The forward pass stores nothing: the backward pass recomputes s from y and b.
// Inside a training step XLA:CPU splits the forward pass into two passes (it keeps
// tanh(u) for the backward pass); here it is one, with exp as a polynomial that
// the compiler vectorizes. Leading axes of b (vmapped ensemble members) split the
// rows into equal groups, one per member.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using genjax::Size;

// exp(z) for z in [-87, 87], relative error ~2e-7: z = n ln2 + r with |r| <= ln2 / 2
// (Cody-Waite split of ln2), exp(r) by the Cephes degree-6 polynomial, 2^n by
// writing the exponent bits. Written as scalar code so that it vectorizes.
inline float Exp(float z) {
  z = std::min(std::max(z, -87.0f), 87.0f);
  const float n = std::floor(z * 1.44269504088896341f + 0.5f);
  float r = z - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(float));
  return p * two_n;
}

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;

// sigmoid(2u) = 1 / (1 + exp(-2u)).
inline float Gate(float x) { return 1.0f / (1.0f + Exp(-2.0f * kSqrt2OverPi * (x + kCubic * x * x * x))); }

constexpr int64_t kRowsPerTask = 16;

int64_t Tasks(int64_t rows) { return (rows + kRowsPerTask - 1) / kRowsPerTask; }

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::F32> bias,
                   ffi::ResultBuffer<ffi::F32> h) {
  const auto dims = y.dimensions();
  const int64_t F = dims[dims.size() - 1], rows = Size(dims) / F;
  const int64_t rows_per_member = rows / (Size(bias.dimensions()) / F);
  const float *yp = y.typed_data(), *bp = bias.typed_data();
  float* hp = h->typed_data();
  genjax::ParallelFor(pool, Tasks(rows), [&](int64_t task) {
    for (int64_t r = task * kRowsPerTask; r < std::min(rows, (task + 1) * kRowsPerTask); ++r) {
      const float* yr = yp + r * F;
      const float* b = bp + (r / rows_per_member) * F;
      float* hr = hp + r * F;
      for (int64_t f = 0; f < F; ++f) {
        const float x = yr[f] + b[f];
        hr[f] = x * Gate(x);
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::F32> bias,
                    ffi::Buffer<ffi::F32> dh, ffi::ResultBuffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dbias) {
  const auto dims = y.dimensions();
  const int64_t F = dims[dims.size() - 1], rows = Size(dims) / F;
  const int64_t members = Size(bias.dimensions()) / F, rows_per_member = rows / members;
  const float *yp = y.typed_data(), *bp = bias.typed_data(), *gp = dh.typed_data();
  float *dyp = dy->typed_data(), *dbp = dbias->typed_data();
  const int64_t tasks = Tasks(rows);
  // Per-task partial sums of dbias, added in a fixed order afterwards: deterministic.
  std::vector<float> partial(static_cast<size_t>(tasks) * members * F, 0.0f);
  genjax::ParallelFor(pool, tasks, [&](int64_t task) {
    for (int64_t r = task * kRowsPerTask; r < std::min(rows, (task + 1) * kRowsPerTask); ++r) {
      const int64_t member = r / rows_per_member;
      const float* yr = yp + r * F;
      const float* b = bp + member * F;
      const float* g = gp + r * F;
      float* dyr = dyp + r * F;
      float* db = partial.data() + (static_cast<size_t>(task) * members + member) * F;
      for (int64_t f = 0; f < F; ++f) {
        const float x = yr[f] + b[f];
        const float s = Gate(x);
        const float du = 2.0f * kSqrt2OverPi * (1.0f + 3.0f * kCubic * x * x);
        const float d = g[f] * (s + x * s * (1.0f - s) * du);
        dyr[f] = d;
        db[f] += d;
      }
    }
  });
  std::fill(dbp, dbp + members * F, 0.0f);
  for (int64_t t = 0; t < tasks; ++t)
    for (int64_t m = 0; m < members; ++m) {
      const float* part = partial.data() + (static_cast<size_t>(t) * members + m) * F;
      for (int64_t f = 0; f < F; ++f) dbp[m * F + f] += part[f];
    }
  return ffi::Error::Success();
}

}  // namespace

using F32Buffer = ffi::Buffer<ffi::F32>;

XLA_FFI_DEFINE_HANDLER_SYMBOL(GenjaxBiasGeluForward, Forward,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32Buffer>().Arg<F32Buffer>().Ret<F32Buffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(GenjaxBiasGeluBackward, Backward,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32Buffer>().Arg<F32Buffer>().Arg<F32Buffer>().Ret<F32Buffer>().Ret<F32Buffer>());

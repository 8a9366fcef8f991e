// Parallel loops on XLA:CPU's intra-op thread pool, shared by the FFI kernels.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace genjax {

// The number of elements of an array with these dimensions.
inline int64_t Size(xla::ffi::Span<const int64_t> dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

// Runs fn(i) for every i in [0, n) on the pool's threads and the calling one.
// Using XLA's own pool (not new threads) keeps the kernels from competing with
// XLA's matmuls for the same cores. The caller takes tasks too, so the loop
// finishes even when every pool thread is busy elsewhere; a pool task that starts
// after the work is gone touches only the shared counters.
template <typename Fn>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t n, const Fn& fn) {
  struct Counters {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> active{0};
  };
  auto counters = std::make_shared<Counters>();
  const Fn* body = &fn;
  auto work = [counters, body, n] {
    counters->active.fetch_add(1);
    for (int64_t i; (i = counters->next.fetch_add(1)) < n;) (*body)(i);
    counters->active.fetch_sub(1);
  };
  // The caller is one of the workers: num_threads workers in all, one per core.
  const int64_t helpers = std::min<int64_t>(pool.num_threads() - 1, n - 1);
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule(decltype(work)(work));  // a copy per task
  work();
  while (counters->active.load() != 0) std::this_thread::yield();
}

}  // namespace genjax

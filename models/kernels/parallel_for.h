// ParallelFor: a loop over tasks on XLA's intra-op thread pool, shared by the project's CPU kernels.

#ifndef SCALING_KERNELS_PARALLEL_FOR_H_
#define SCALING_KERNELS_PARALLEL_FOR_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace scaling_kernels {

// Runs fn(0) .. fn(n - 1) on the calling thread and on helpers from XLA's thread pool. Each thread claims
// tasks from a shared counter, and the caller waits only for tasks already claimed, because it runs every
// unclaimed task itself. So two such calls on a two-thread pool cannot wait for each other's helpers.
template <typename F>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t n, F fn) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mutex;
    std::condition_variable all_done;
  };
  auto state = std::make_shared<State>();
  auto work = [state, n, &fn]() {
    for (int64_t i = state->next++; i < n; i = state->next++) {
      fn(i);
      if (++state->done == n) {
        std::lock_guard<std::mutex> lock(state->mutex);
        state->all_done.notify_all();
      }
    }
  };
  // Helpers that start late never call fn (the counter is past n), so capturing fn by reference is safe.
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t i = 0; i < helpers; ++i) {
    auto helper = work;
    pool.Schedule(std::move(helper));
  }
  work();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->all_done.wait(lock, [&] { return state->done.load() == n; });
}

}  // namespace scaling_kernels

#endif  // SCALING_KERNELS_PARALLEL_FOR_H_

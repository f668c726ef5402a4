// Helpers shared by lnorm's XLA:CPU FFI kernels (layer_norm.cc, recurrent_cells.cc): row
// reductions that vectorize without -ffast-math, and a parallel loop over row chunks on XLA's
// intra-op thread pool.

#ifndef LNORM_CSRC_COMMON_H_
#define LNORM_CSRC_COMMON_H_

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace lnorm {

namespace ffi = xla::ffi;

// Independent accumulators per reduction: the compiler keeps them in vector registers
// without reassociating float math (no -ffast-math needed).
constexpr int64_t kLanes = 16;
// At least this many elements (128 KiB) per chunk: below it, handing a chunk to another
// thread costs about what it saves (a round number, not tuned).
constexpr int64_t kMinChunkElements = 1 << 15;
// Chunks per pool thread, at most (see NumChunks).
constexpr int64_t kChunksPerThread = 8;

inline float Reduce(float (&acc)[kLanes]) {
  for (int64_t w = kLanes / 2; w > 0; w /= 2) {
    for (int64_t j = 0; j < w; ++j) acc[j] += acc[j + w];
  }
  return acc[0];
}

// sum_i (x_i - p).
inline float SumShifted(const float* x, int64_t n, float p) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) acc[j] += x[i + j] - p;
  }
  float tail = 0.f;
  for (; i < n; ++i) tail += x[i] - p;
  return Reduce(acc) + tail;
}

// sum_i ((x_i - p) - m)^2.
inline float SumSquaresCentred(const float* x, int64_t n, float p, float m) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) {
      const float d = (x[i + j] - p) - m;
      acc[j] += d * d;
    }
  }
  float tail = 0.f;
  for (; i < n; ++i) {
    const float d = (x[i] - p) - m;
    tail += d * d;
  }
  return Reduce(acc) + tail;
}

// Runs fn(chunk) for chunk in [0, num_chunks): on the calling thread and on up to
// num_chunks - 1 tasks of the pool, each claiming chunks until none is left. Returns when
// every chunk has run.
inline void ParallelFor(ffi::ThreadPool& pool, int64_t num_chunks, const std::function<void(int64_t)>& fn) {
  if (num_chunks <= 1) {
    if (num_chunks == 1) fn(0);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  // Shared: a task that starts after every chunk was claimed still reads `next`.
  auto state = std::make_shared<State>();
  const std::function<void(int64_t)>* body = &fn;  // Only used for claimed chunks, while we wait.
  auto work = [state, body, num_chunks]() {
    for (int64_t c; (c = state->next.fetch_add(1)) < num_chunks;) {
      (*body)(c);
      if (state->done.fetch_add(1) + 1 == num_chunks) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), num_chunks - 1);
  for (int64_t i = 0; i < helpers; ++i) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == num_chunks; });
}

// Several chunks per thread: on a shared machine a thread may be descheduled, and the
// others then claim its share instead of waiting for it (one chunk per thread left the
// caller idle for up to half the run at load 5 on 2 cores). `min_elements`: the smallest
// chunk worth handing to another thread (smaller for more work per element).
inline int64_t NumChunks(ffi::ThreadPool& pool, int64_t rows, int64_t cols,
                         int64_t min_elements = kMinChunkElements) {
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  if (threads == 1) return 1;
  const int64_t by_size = std::max<int64_t>(1, rows * cols / min_elements);
  return std::max<int64_t>(1, std::min({rows, by_size, kChunksPerThread * threads}));
}

inline int64_t Rows(ffi::Buffer<ffi::F32>& x) {
  auto dims = x.dimensions();
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < dims.size(); ++i) rows *= dims[i];
  return rows;
}

inline int64_t Cols(ffi::Buffer<ffi::F32>& x) {
  auto dims = x.dimensions();
  return dims.size() == 0 ? 1 : dims[dims.size() - 1];
}

}  // namespace lnorm

#endif  // LNORM_CSRC_COMMON_H_

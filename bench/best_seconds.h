// Timing for the bench programs: the best wall time of `reps` runs of f after one warm-up run (first touch of
// outputs and packing buffers, lazy initialisation).
#pragma once
#include <algorithm>
#include <chrono>
#include <functional>

namespace mcbench {

inline double best_seconds(int reps, const std::function<void()>& f) {
  f();
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace mcbench

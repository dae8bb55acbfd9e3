#include "mcompress/threads.h"

#include <ATen/Parallel.h>
#include <unistd.h>

#include <thread>

namespace mc {

int hardware_threads() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  unsigned n = std::thread::hardware_concurrency();
  return n ? static_cast<int>(n) : 1;
}

int set_threads(int n) {
  if (n <= 0) n = hardware_threads();
  at::set_num_threads(n);
  return at::get_num_threads();
}

}  // namespace mc

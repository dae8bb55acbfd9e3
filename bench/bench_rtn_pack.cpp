// RTN quantize + pack throughput of a 4096x4096 fp32 matrix (INT8 per channel, INT4 g32 symmetric),
// in GB/s of fp32 input, against a memcpy of the same bytes in the same run (best of N each).
// Goal: >= 0.3x memcpy.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#include "mcompress/quant/packed.h"
#include "mcompress/quant/rtn.h"
#include "mcompress/threads.h"

namespace {

constexpr double kGoal = 0.3;

double best_seconds(int runs, const std::function<void()>& f) {
  double best = 1e30;
  for (int i = 0; i < runs; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int runs = argc > 2 ? std::atoi(argv[2]) : 7;
  const int threads = mc::set_threads(argc > 3 ? std::atoi(argv[3]) : 0);
  auto gen = at::detail::createCPUGenerator(42);
  const at::Tensor w = at::randn({n, n}, gen, at::kFloat).mul_(0.02);
  const double bytes = double(w.nbytes());

  std::vector<uint8_t> dst(w.nbytes());
  std::memset(dst.data(), 1, dst.size());
  const double t_copy = best_seconds(runs, [&] { std::memcpy(dst.data(), w.data_ptr(), dst.size()); });
  const double copy_gbs = bytes / t_copy / 1e9;
  std::printf("bench_rtn_pack: %lldx%lld fp32 (%.0f MiB), %d threads, best of %d\n", (long long)n, (long long)n,
              bytes / (1 << 20), threads, runs);
  std::printf("  %-28s %8.2f ms  %6.2f GB/s\n", "memcpy", t_copy * 1e3, copy_gbs);

  struct Case {
    const char* name;
    mc::QuantSpec spec;
  };
  mc::QuantSpec int8_pc, int4_g32;
  int8_pc.bits = 8, int8_pc.symmetric = true, int8_pc.group_size = 0;
  int4_g32.bits = 4, int4_g32.symmetric = true, int4_g32.group_size = 32;
  const Case cases[] = {{"int8 sym per-channel", int8_pc}, {"int4 sym g32", int4_g32}};
  bool ok = true;
  for (const Case& c : cases) {
    // The packed output goes to a reused staging buffer, as the memcpy baseline's destination is.
    std::vector<uint8_t> staging(size_t(w.size(0) * mc::packed_row_bytes(w.size(1), c.spec.bits)));
    size_t packed = staging.size();
    double t_q = 0, t_p = 0;
    const double t = best_seconds(runs, [&] {
      auto t0 = std::chrono::steady_clock::now();
      mc::QuantResult q = mc::rtn_quantize(w, c.spec);
      auto t1 = std::chrono::steady_clock::now();
      mc::pack_codes_into(q.codes, c.spec.bits, staging.data());
      auto t2 = std::chrono::steady_clock::now();
      t_q = std::chrono::duration<double>(t1 - t0).count();
      t_p = std::chrono::duration<double>(t2 - t1).count();
    });
    const double gbs = bytes / t / 1e9, ratio = t_copy / t;
    ok = ok && ratio >= kGoal;
    std::printf("  %-28s %8.2f ms  %6.2f GB/s  %.2fx memcpy (last run: quantize %.2f ms, pack %.2f ms; %zu bytes)\n",
                c.name, t * 1e3, gbs, ratio, t_q * 1e3, t_p * 1e3, packed);
  }
  std::printf("goal >= %.1fx memcpy: %s\n", kGoal, ok ? "met" : "MISSED");
  return 0;
}

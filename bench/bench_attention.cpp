// Causal grouped-query attention: the chunked inference path (causal_attention) against the whole-tensor
// reference (causal_attention_ref) on the same inputs in the same process, and both against sgemm
// (at::mm) GFLOP/s. GFLOP counts 4 * B * H * T * S * hd (q.k and p.v over every query/key pair, as eval's
// throughput line does, though the causal mask leaves half of it undone). Best of `reps` after a warm-up.
// Usage: bench_attention [threads=0 (all)] [reps=3] [shape index (default all)] [fast (the fast path alone, to profile)]
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "best_seconds.h"
#include "mcompress/models/attention.h"
#include "mcompress/threads.h"

namespace {

struct Shape {
  const char* what;
  int64_t B, H, HKV, T, S, hd, window;
};

}  // namespace

int main(int argc, char** argv) {
  const int threads = mc::set_threads(argc > 1 ? std::atoi(argv[1]) : 0);
  const int reps = argc > 2 ? std::max(1, std::atoi(argv[2])) : 3;
  const int only = argc > 3 ? std::atoi(argv[3]) : -1;
  const bool fast_only = argc > 4 && std::string(argv[4]) == "fast";  // ref s and speedup print as 0
  at::NoGradGuard no_grad;
  const Shape shapes[] = {
      {"Llama-3.2-1B eval, 5 windows of 512", 5, 32, 8, 512, 512, 64, 0},
      {"Llama-3.2-1B, one window of 2048", 1, 32, 8, 2048, 2048, 64, 0},
      {"Mistral-like window 512 of 2048", 1, 32, 8, 2048, 2048, 128, 512},
      {"decode: 1 token after 511 cached", 1, 32, 8, 1, 512, 64, 0},
  };
  at::Generator gen = at::detail::createCPUGenerator(1);
  const at::Tensor a = at::randn({2048, 2048}, gen), b = at::randn({2048, 2048}, gen);
  const double mm_gflops = 2.0 * 2048 * 2048 * 2048 / mcbench::best_seconds(reps, [&] { at::mm(a, b); }) / 1e9;
  std::printf("bench_attention: %d threads, best of %d; at::mm 2048^3 %.1f GFLOP/s\n", threads, reps, mm_gflops);
  std::printf("%-38s %10s %10s %8s %10s\n", "shape", "ref s", "fast s", "speedup", "fast/mm");
  for (int i = 0; i < int(sizeof shapes / sizeof shapes[0]); ++i) {
    if (only >= 0 && i != only) continue;
    const Shape& s = shapes[i];
    const at::Tensor q = at::randn({s.B, s.H, s.T, s.hd}, gen), k = at::randn({s.B, s.HKV, s.S, s.hd}, gen);
    const at::Tensor v = at::randn({s.B, s.S, s.HKV, s.hd}, gen).transpose(1, 2);
    mc::AttentionParams p;
    p.scale = 1.0 / std::sqrt(double(s.hd)), p.window = s.window;
    const double ref = fast_only ? 0.0 : mcbench::best_seconds(reps, [&] { mc::causal_attention_ref(q, k, v, p); });
    const double fast = mcbench::best_seconds(reps, [&] { mc::causal_attention(q, k, v, p); });
    const double gflop = 4.0 * double(s.B * s.H * s.T * s.S * s.hd) / 1e9;
    std::printf("%-38s %10.4f %10.4f %7.2fx %9.2fx\n", s.what, ref, fast, ref / fast, gflop / fast / mm_gflops);
  }
  return 0;
}

// int8 x int8 -> int32 GEMM (int8_matmul, C = A · Bᵀ with B the [out,in] weight) against fp32
// at::matmul (OpenBLAS sgemm) of the same shapes in the same process, for every kernel this CPU runs.
// Also times the whole W8A8 int8_linear (per-token quantization + GEMM + rescale) against the float
// linear x · Wᵀ. Best of `reps` runs after a warm-up; GOP/s counts 2*M*N*K operations.
// Goal: the best int8 kernel >= 2x sgemm on large shapes.
// Usage: bench_int8_gemm [threads=0 (all)] [reps=5] [M N K]   (no M N K: the built-in shapes)
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "best_seconds.h"
#include "mcompress/int8_gemm.h"
#include "mcompress/threads.h"

namespace {

constexpr double kGoal = 2.0;  // x sgemm, best kernel, large shapes

struct Shape {
  int64_t M, N, K;
};

}  // namespace

int main(int argc, char** argv) {
  const int threads = mc::set_threads(argc > 1 ? std::atoi(argv[1]) : 0);
  const int reps = argc > 2 ? std::max(1, std::atoi(argv[2])) : 5;
  std::vector<Shape> shapes = {{512, 4096, 4096}, {2048, 1024, 1024}, {128, 2816, 1024}, {16, 4096, 4096},
                               {1, 4096, 4096}};
  if (argc > 5) shapes = {{std::atoll(argv[3]), std::atoll(argv[4]), std::atoll(argv[5])}};
  std::vector<mc::Int8Kernel> kernels;
  for (auto k : {mc::Int8Kernel::kAvx512Vnni, mc::Int8Kernel::kAvx2, mc::Int8Kernel::kScalar})
    if (mc::int8_kernel_supported(k)) kernels.push_back(k);
  std::printf("bench_int8_gemm: %d threads, best of %d, default kernel %s\n", threads, reps,
              mc::int8_gemm_kernel_name());

  auto gen = at::detail::createCPUGenerator(11);
  bool goal_met = true;
  for (const Shape& s : shapes) {
    const double ops = 2.0 * double(s.M) * double(s.N) * double(s.K);
    const at::Tensor xf = at::randn({s.M, s.K}, gen, at::kFloat), wf = at::randn({s.N, s.K}, gen, at::kFloat);
    const at::Tensor xq = at::randint(-127, 128, {s.M, s.K}, gen, at::kChar);
    const at::Tensor wq = at::randint(-127, 128, {s.N, s.K}, gen, at::kChar);
    const at::Tensor ws = at::rand({s.N}, gen, at::kFloat).mul_(0.01f);
    const at::Tensor wt = wf.t();  // the weight as nn.Linear uses it: matmul(x, W.t())
    at::Tensor sink;
    const double t_f = mcbench::best_seconds(reps, [&] { sink = at::matmul(xf, wt); });
    std::printf(" M=%-5lld N=%-5lld K=%-5lld\n", (long long)s.M, (long long)s.N, (long long)s.K);
    std::printf("   %-28s %9.3f ms %8.1f GOP/s\n", "fp32 at::matmul (baseline)", t_f * 1e3, ops / t_f / 1e9);
    const bool large = s.M >= 128;
    for (auto k : kernels) {
      // The scalar kernel is slow: one run is enough to see it.
      const int r = k == mc::Int8Kernel::kScalar ? 1 : reps;
      const double t_i = mcbench::best_seconds(r, [&] { sink = mc::int8_matmul(xq, wq, k); });
      const double ratio = t_f / t_i;
      const char* verdict = "";
      if (k == kernels.front() && large) {
        verdict = ratio >= kGoal ? "  OK" : "  MISSED";
        goal_met = goal_met && ratio >= kGoal;
      }
      std::printf("   int8_matmul %-16s %9.3f ms %8.1f GOP/s %6.2fx fp32%s\n", mc::int8_kernel_name(k), t_i * 1e3,
                  ops / t_i / 1e9, ratio, verdict);
    }
    const double t_lf = mcbench::best_seconds(reps, [&] { sink = at::linear(xf, wf); });
    const double t_li = mcbench::best_seconds(reps, [&] { sink = mc::int8_linear(xf, wq, ws, {}, kernels.front()); });
    std::printf("   int8_linear %-16s %9.3f ms %8.1f GOP/s %6.2fx at::linear fp32 (%.3f ms)\n",
                mc::int8_kernel_name(kernels.front()), t_li * 1e3, ops / t_li / 1e9, t_lf / t_li, t_lf * 1e3);
  }
  std::printf("goal (best kernel >= %.1fx fp32 on M >= 128): %s\n", kGoal, goal_met ? "OK" : "MISSED");
  return 0;
}

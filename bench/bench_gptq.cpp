// GPTQ costs on a 4096x4096 layer:
//  1. Hessian accumulation (HessianAccumulator::add over batches of 512 calibration tokens, 128 of
//     them by default) in GFLOP/s, against a plain at::matmul XᵀX of the same batches in the same run.
//     Goal: >= 0.8x the matmul.
//  2. The gptq_quantize solve (int4 sym g128, block 128) on that layer and Hessian. Goal: < 2 s.
// Usage: bench_gptq [n=4096] [batches=128] [tokens_per_batch=512] [threads=0 (all)] [block_size=128]
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "mcompress/quant/gptq.h"
#include "mcompress/quant/hessian.h"
#include "mcompress/threads.h"

namespace {

constexpr double kHessianGoal = 0.8;  // x plain matmul
constexpr double kSolveGoalSeconds = 2.0;
constexpr int kDistinctBatches = 16;  // cycled: enough distinct tokens for a full-rank H

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int batches = argc > 2 ? std::atoi(argv[2]) : 128;
  const int64_t tokens = argc > 3 ? std::atoll(argv[3]) : 512;
  const int threads = mc::set_threads(argc > 4 ? std::atoi(argv[4]) : 0);
  auto gen = at::detail::createCPUGenerator(7);
  std::vector<at::Tensor> xs;
  for (int i = 0; i < std::min(batches, kDistinctBatches); ++i) xs.push_back(at::randn({tokens, n}, gen, at::kFloat));
  const double flops = 2.0 * double(tokens) * double(n) * double(n) * batches;
  std::printf("bench_gptq: layer %lldx%lld, %d x %lld calibration tokens, %d threads\n", (long long)n, (long long)n,
              batches, (long long)tokens, threads);

  // Baseline first, then ours (each one pass over all batches; the first matmul warms BLAS up).
  at::Tensor sink = at::zeros({n, n});
  (void)at::matmul(xs[0].t(), xs[0]);
  auto t0 = std::chrono::steady_clock::now();
  for (int b = 0; b < batches; ++b) {
    const at::Tensor& x = xs[size_t(b) % xs.size()];
    at::Tensor p = at::matmul(x.t(), x);
    if (b == 0) sink.add_(p.narrow(0, 0, 1).narrow(1, 0, 1));  // keep one result alive
  }
  const double t_mm = seconds_since(t0);
  mc::HessianAccumulator acc(n, false, "bench");
  t0 = std::chrono::steady_clock::now();
  for (int b = 0; b < batches; ++b) acc.add(xs[size_t(b) % xs.size()]);
  const double t_h = seconds_since(t0);
  const double ratio = t_mm / t_h;
  std::printf("  %-34s %8.2f s  %7.1f GFLOP/s\n", "at::matmul XᵀX (baseline)", t_mm, flops / t_mm / 1e9);
  std::printf("  %-34s %8.2f s  %7.1f GFLOP/s  %.2fx baseline (goal >= %.1fx) %s\n", "HessianAccumulator::add", t_h,
              flops / t_h / 1e9, ratio, kHessianGoal, ratio >= kHessianGoal ? "OK" : "MISSED");

  const at::Tensor W = at::randn({n, n}, gen, at::kFloat).mul_(0.02);
  mc::GptqOptions o;
  o.spec.bits = 4;
  o.spec.symmetric = true;
  o.spec.group_size = 128;
  o.block_size = argc > 5 ? std::atoll(argv[5]) : 128;
  t0 = std::chrono::steady_clock::now();
  const mc::GptqResult r = mc::gptq_quantize(W, acc.hessian(), o, "bench");
  const double t_q = seconds_since(t0);
  std::printf("  %-34s %8.2f s  (goal < %.1f s) %s   loss %.4g, damp retries %d\n", "gptq_quantize int4 g128", t_q,
              kSolveGoalSeconds, t_q < kSolveGoalSeconds ? "OK" : "MISSED", r.loss, r.damp_retries);
  return 0;
}

// GPTQ costs on a 4096x4096 layer:
//  1. Hessian accumulation (HessianAccumulator::add over batches of 512 calibration tokens, 128 of
//     them by default) in GFLOP/s, against a plain at::matmul XᵀX of the same batches in the same run.
//     Goal: >= 0.8x the matmul.
//  2. The gptq_quantize solve (int4 sym g128, block 128) on that layer and Hessian. Goal: < 2 s.
//     Next to it, in the same run: the authors' factorization alone (cholesky, cholesky_inverse,
//     cholesky of the damped H: what the solve used to spend before its column loop) and the one
//     Cholesky (of the reversed H) the solve now uses, and the solve with act_order (g_idx groups).
//     The solve is timed `reps` times (best and median printed: the machine is shared).
// Usage: bench_gptq [n=4096] [batches=128] [tokens_per_batch=512] [threads=0 (all)] [block_size=128] [reps=3]
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <functional>
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

// Best and median of `reps` timed runs of f.
std::pair<double, double> timed(int reps, const std::function<void()>& f) {
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(seconds_since(t0));
  }
  std::sort(t.begin(), t.end());
  return {t.front(), t[t.size() / 2]};
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
  const int reps = std::max(1, argc > 6 ? std::atoi(argv[6]) : 3);
  const at::Tensor H = acc.hessian();
  at::Tensor Hd = H.clone();
  Hd.diagonal().add_(o.damp * H.diagonal().mean().item<double>());
  const auto [f3, f3m] = timed(reps, [&] {
    const at::Tensor L = at::linalg_cholesky(Hd);
    (void)at::linalg_cholesky(at::cholesky_inverse(L), /*upper=*/true);
  });
  const auto [f1, f1m] = timed(reps, [&] { (void)at::linalg_cholesky(Hd.flip({0, 1})); });
  std::printf("  %-34s %8.2f s  (median %.2f)\n", "authors' Hinv: chol, chol_inv, chol", f3, f3m);
  std::printf("  %-34s %8.2f s  (median %.2f)  %.2fx faster\n", "one chol of the reversed H", f1, f1m, f3 / f1);
  mc::GptqResult r;
  const auto [t_q, t_qm] = timed(reps, [&] { r = mc::gptq_quantize(W, H, o, "bench"); });
  std::printf("  %-34s %8.2f s  (median %.2f; goal < %.1f s) %s   loss %.4g, damp retries %d\n",
              "gptq_quantize int4 g128", t_q, t_qm, kSolveGoalSeconds, t_q < kSolveGoalSeconds ? "OK" : "MISSED",
              r.loss, r.damp_retries);
  mc::GptqOptions oa = o;
  oa.act_order = true;
  const auto [t_a, t_am] = timed(reps, [&] { r = mc::gptq_quantize(W, H, oa, "bench"); });
  std::printf("  %-34s %8.2f s  (median %.2f)   loss %.4g\n", "gptq_quantize int4 g128 act_order", t_a, t_am, r.loss);
  return 0;
}

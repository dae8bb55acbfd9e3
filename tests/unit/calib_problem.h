// Shared by the GPTQ and SparseGPT tests: seeded random tensors, calibration inputs with correlated
// channels and a few outlier channels (x10), where error feedback matters, and their Hessian.
#pragma once
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

namespace mctest {

inline at::Tensor randn(at::IntArrayRef shape, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randn(shape, gen, at::kFloat);
}

inline at::Tensor calib_inputs(int64_t n, int64_t in, uint64_t seed) {
  at::Tensor mix = randn({in, in}, seed + 1).div_(std::sqrt(double(in))).add_(at::eye(in));
  at::Tensor x = randn({n, in}, seed).matmul(mix);
  at::Tensor gain = at::ones({in});
  for (int64_t c = 3; c < in; c += 37) gain[c] = 10.0;
  return x.mul_(gain);
}

// H = 2/n XᵀX, as HessianAccumulator computes it (in one matmul).
inline at::Tensor hessian_of(const at::Tensor& x) { return x.t().matmul(x).mul_(2.0 / double(x.size(0))); }

}  // namespace mctest

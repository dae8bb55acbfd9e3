// Small helpers shared by the packing tests: seeded weights of a realistic scale and a grid spec.
#pragma once
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "mcompress/quant/rtn.h"

namespace mctest {

// Seeded N(0, 0.05^2) weights [out, in] (about the scale of a trained layer's).
inline at::Tensor weights(int64_t out, int64_t in, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randn({out, in}, gen, at::kFloat).mul_(0.05);
}

inline mc::QuantSpec spec_of(int bits, bool sym, int64_t gs) {
  mc::QuantSpec s;
  s.bits = bits, s.symmetric = sym, s.group_size = gs;
  return s;
}

}  // namespace mctest

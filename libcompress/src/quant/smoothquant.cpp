#include "mcompress/quant/smoothquant.h"

#include <ATen/ATen.h>

namespace mc {

at::Tensor smoothquant_scales(const at::Tensor& x_max_abs, const std::vector<at::Tensor>& weights, double alpha) {
  if (!(x_max_abs.max().item<double>() > 0)) return {};
  at::Tensor wmax;
  for (const at::Tensor& w : weights) {
    at::Tensor a = w.to(at::kFloat).abs().amax(0);
    wmax = wmax.defined() ? at::maximum(wmax, a) : a;
  }
  at::Tensor s = x_max_abs.clamp_min(1e-5).pow(alpha).div_(wmax.clamp_min(1e-5).pow(1.0 - alpha));
  // A channel that never saw input keeps scale 1.
  return at::where(x_max_abs.gt(0), s, at::ones_like(s));
}

}  // namespace mc

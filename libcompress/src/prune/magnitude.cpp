// Magnitude pruning (prune/magnitude.h).
#include "mcompress/prune/magnitude.h"

#include <ATen/ATen.h>

#include <cmath>

#include "mcompress/prune/masks.h"

namespace mc {

at::Tensor magnitude_prune(const at::Tensor& W, double sparsity, int prune_n, int prune_m, const std::string& layer) {
  const at::Tensor score = W.abs();
  const bool nm = prune_n > 0 || prune_m > 0;
  return W * (nm ? nm_mask(score, prune_n, prune_m, layer) : layer_mask(score, sparsity));
}

std::vector<double> global_magnitude_sparsities(const std::vector<at::Tensor>& weights, double sparsity) {
  std::vector<at::Tensor> all;
  for (const at::Tensor& w : weights) all.push_back(w.to(at::kFloat).abs().reshape({-1}));
  at::Tensor a = at::cat(all);
  const int64_t k = static_cast<int64_t>(std::floor(sparsity * double(a.numel())));
  const double thr = k > 0 ? std::get<0>(a.kthvalue(k)).item<double>() : -1.0;
  std::vector<double> out;
  for (const at::Tensor& x : all) out.push_back(x.le(thr).to(at::kDouble).mean().item<double>());
  return out;
}

}  // namespace mc

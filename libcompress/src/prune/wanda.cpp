// Wanda (prune/wanda.h).
#include "mcompress/prune/wanda.h"

#include <ATen/ATen.h>

#include "mcompress/prune/masks.h"

namespace mc {

at::Tensor wanda_scores(const at::Tensor& W, const at::Tensor& x_sum_sq) {
  return W.abs() * x_sum_sq.sqrt().to(at::kFloat).unsqueeze(0);
}

at::Tensor wanda_prune(const at::Tensor& W, const at::Tensor& x_sum_sq, double sparsity, int prune_n, int prune_m,
                       const std::string& layer) {
  const at::Tensor score = wanda_scores(W, x_sum_sq);
  const bool nm = prune_n > 0 || prune_m > 0;
  return W * (nm ? nm_mask(score, prune_n, prune_m, layer) : row_mask(score, sparsity));
}

}  // namespace mc

// Wanda (Sun et al., 2023): prune by |W_ij| · ‖X_j‖₂, compared within each output row (or within each
// group of M columns for N:M patterns); no weight update. Pure functions on a weight and its inputs'
// Σ x² per channel (HessianAccumulator::sum_sq). OWL (prune/owl.h) measures outliers on the same scores.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

namespace mc {

// |W| · sqrt(x_sum_sq) per column: W float [out, in], x_sum_sq [in] (any floating dtype).
at::Tensor wanda_scores(const at::Tensor& W, const at::Tensor& x_sum_sq);

// W with the lowest-scoring weights zeroed: prune_n of every prune_m columns per row when prune_n > 0 or
// prune_m > 0 (nm_mask), else the `sparsity` fraction of each row (row_mask).
at::Tensor wanda_prune(const at::Tensor& W, const at::Tensor& x_sum_sq, double sparsity, int prune_n, int prune_m,
                       const std::string& layer = "");

}  // namespace mc

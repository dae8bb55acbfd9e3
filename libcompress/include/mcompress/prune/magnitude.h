// Magnitude pruning: score |W_ij|, compared over the whole layer (the papers' layer-wise baseline) or,
// for N:M patterns, within each group of M columns of a row; or over all selected layers at once
// ("global": one threshold, as per-layer sparsities). Pure functions on weights; no calibration data.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace mc {

// W float [out, in] with the lowest |W| zeroed: prune_n of every prune_m columns per row when prune_n > 0
// or prune_m > 0 (nm_mask), else floor(sparsity * numel) over the layer (layer_mask).
at::Tensor magnitude_prune(const at::Tensor& W, double sparsity, int prune_n, int prune_m,
                           const std::string& layer = "");

// Global magnitude: the threshold below which the `sparsity` fraction of all |w| of all `weights` lies
// (ties at it pruned too), as the fraction of each weight at or below it.
std::vector<double> global_magnitude_sparsities(const std::vector<at::Tensor>& weights, double sparsity);

}  // namespace mc

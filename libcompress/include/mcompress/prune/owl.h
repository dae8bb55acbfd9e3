// OWL, outlier-weighted layer sparsity (Yin et al., 2023), for prune_model's distribution "owl": a scan
// of Wanda scores (prune/wanda.h) on the unchanged model measures each block's share of scores above
// threshold x their layer's mean; blocks with more outliers keep more weights, the sparsities spread over
// [s - λ, s + λ] with mean s (clamped to [0, 0.99]).
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "mcompress/calib.h"

namespace mc {

class Model;
class BlockJournal;

// Outliers of one layer: scores above threshold x mean score, and the number of scores.
struct OutlierCount {
  double above = 0, count = 0;
};
// W float [out, in], x_sum_sq [in]: the layer's Wanda scores against threshold x their mean.
OutlierCount owl_outliers(const at::Tensor& W, const at::Tensor& x_sum_sq, double threshold);

// Per block, from its outlier ratio (above / count): ratios scaled to [0, 2λ] (all 0 when they are
// equal), sparsity - (ratio - mean ratio), clamped to [0, 0.99].
std::vector<double> owl_sparsities(const std::vector<double>& outlier_ratio, double sparsity, double lambda);

struct OwlOptions {
  double sparsity = 0.5, lambda = 0.08, threshold = 5.0;
};
struct OwlAllocation {
  std::map<int, double> block_sparsity;  // by block
  std::string summary;                   // "lambda 0.08, threshold 5x mean; block sparsities 0.431, ..."
};
// The scan over the blocks holding `targets` (journal phase "owl").
OwlAllocation owl_scan(Model& model, const at::Tensor& calib, const std::set<std::string>& targets,
                       const SequentialOptions& so, BlockJournal* journal, const OwlOptions& o);

}  // namespace mc

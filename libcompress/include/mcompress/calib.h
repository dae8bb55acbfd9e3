// Layer-sequential calibration: calibration inputs run through the model block by block, and block k
// sees the outputs of the already compressed blocks 0..k-1 (as the GPTQ and SparseGPT papers do), so
// only one block's activations are live at a time. Each target layer's statistics (Hessian
// 2/n Σ x xᵀ, mean |x|, max |x|, Σ x²) are handed to a compressor that returns its new weight.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <set>
#include <string>

namespace mc {

class Model;
struct LayerInfo;
class HessianAccumulator;

// Returns the weight to install for `layer` (same shape as `weight`), given its input statistics.
using LayerCompressor =
    std::function<at::Tensor(const LayerInfo& layer, const at::Tensor& weight, const HessianAccumulator& stats)>;

struct SequentialOptions {
  int64_t batch = 8;   // calibration sequences per forward pass
  bool fp64 = false;   // accumulate Hessians in float64
  // Called before each target layer is compressed: (layer, index from 1, total).
  std::function<void(const LayerInfo& layer, int64_t i, int64_t n)> progress;
};

// inputs: the calibration set as the model's forward takes it ([N, L] int64 tokens, or [N, ...]
// examples). Layers in `targets` (by name) inside blocks are compressed; others are left alone.
// Throws InputError when a target layer receives no input (never reached).
void compress_block_sequential(Model& model, const at::Tensor& inputs, const std::set<std::string>& targets,
                               const LayerCompressor& compress, const SequentialOptions& opts = {});

}  // namespace mc

// Pruning of a whole model on the block-sequential driver (block_driver.h): weights set to exactly
// zero. The methods (methods.h):
//   magnitude  score |W_ij|, compared over the whole layer (the papers' layer-wise baseline), or over
//              all selected layers with distribution "global" (prune/magnitude.h)
//   wanda      score |W_ij| · ‖X_j‖₂ (Sun et al., 2023), compared within each output row; no update
//              (prune/wanda.h)
//   sparsegpt  OBS update through the damped inverse-Hessian Cholesky, mask chosen per block of 128
//              columns (prune/sparsegpt.h); with a QuantSpec, survivors are quantized in the same loop
// N:M (prune_n of every prune_m consecutive input columns zeroed, per row: 2:4, 4:8) for all three.
// Sparsity per layer: "uniform" (every layer the same), "global" (magnitude only: one threshold over
// all selected layers), or "owl" (outlier-weighted, Yin et al., 2023: a scan pass measures each
// block's share of Wanda scores above owl_threshold x the layer mean; blocks with more outliers keep
// more weights; sparsities spread over [s - λ, s + λ] with mean s; prune/owl.h).
// With a QuantSpec and magnitude/wanda, the pruned weights are then quantized by RTN (a zero stays
// exactly zero on every grid rtn.h makes).
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "mcompress/prune/masks.h"  // row_mask, nm_mask, layer_mask
#include "mcompress/quant/rtn.h"
#include "mcompress/report.h"

namespace mc {

class Model;
struct LayerInfo;
class BlockJournal;
struct PruneResult;

struct PruneOptions {
  std::string method = "sparsegpt";  // magnitude | wanda | sparsegpt
  double sparsity = 0.5;             // fraction zeroed, [0, 1) (unstructured)
  int prune_n = 0, prune_m = 0;      // N:M: n of every m input columns zeroed (0 = unstructured)
  std::string distribution = "uniform";  // uniform | global | owl
  double owl_lambda = 0.08, owl_threshold = 5.0;
  std::vector<std::string> targets, ignore;  // as PtqOptions (ptq.h)
  std::optional<QuantSpec> quant;            // also quantize the survivors
  int64_t batch = 8;
  bool fp64 = false, true_sequential = false;
  double damp = 0.01;
  std::function<void(const std::string& phase, const LayerInfo& layer, int64_t i, int64_t n)> progress;
  std::function<void(int block, int blocks, const char* pass, int64_t done, int64_t total)> pass_progress;
  // Resume (journal.h): finished blocks are saved, and restored instead of computed on a rerun.
  BlockJournal* journal = nullptr;
  // Called after each finished (or restored) block, and after each layer pruned outside the blocks
  // (block -1), with the result so far: a caller may write res.pruned out, erase it and release the
  // model's copies (Model::release_param), so memory stays that of one block.
  std::function<void(int block, PruneResult& partial)> after_block;
};

struct PrunedLayer {
  at::Tensor weight;                // float32 [out, in] (conv kernels flattened), pruned entries exactly 0
  std::optional<QuantResult> quant; // when quantized: its dequantize() equals weight
};

struct PruneResult {
  std::map<std::string, PrunedLayer> pruned;  // by weight key
  std::vector<LayerRow> layers;
  std::vector<std::string> warnings;
  std::map<std::string, std::string> settings;
  double sparsity = 0;  // zeros / weights over the pruned layers
};

// Prunes `model` in place. calib: the calibration set as the model's forward takes it (undefined:
// magnitude only). Throws InputError for bad options (sparsity outside [0, 1), N:M with n >= m or an
// input width m does not divide, naming the layer) or data.
PruneResult prune_model(Model& model, const at::Tensor& calib, const PruneOptions& o);
// The options checked and the layers prune_model would prune (each input width checked against N:M),
// without touching the model: callers check before loading data.
std::vector<const LayerInfo*> prune_layers(const Model& model, const PruneOptions& o);

}  // namespace mc

// Mixed precision for quantize_model (ptq.h, target_bpw > 0): a sensitivity scan runs the method at
// every candidate bit width on each layer (output error tr(D H Dᵀ) on calibration data, model unchanged),
// an exact multiple-choice knapsack picks the bits per layer with the least total predicted error whose
// parameter-weighted mean code bits is <= target_bpw, then the model is quantized with them.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "mcompress/calib.h"

namespace mc {

class Model;
struct LayerInfo;
class BlockJournal;

// Exact allocation (exposed for tests): errors[l][c] is layer l's predicted error at bits[c] (bits
// ascending), params[l] its weight count. Returns the chosen index per layer minimising Σ errors subject
// to Σ params·bits <= target_bpw · Σ params. Throws InputError when even the smallest bits exceed the
// budget.
std::vector<int> allocate_bits(const std::vector<std::vector<double>>& errors, const std::vector<int64_t>& params,
                               const std::vector<int>& bits, double target_bpw);

// The candidate bit widths sorted, each once; InputError for one outside 2..8.
std::vector<int> candidate_bit_widths(std::vector<int> bits);

// allocate_bits' choice as bit widths per layer, and the report's line about it:
// "target 3.5 code bits/weight over {3, 4, 8}: chose 3.497 (10 x int3, 25 x int4)".
struct BitAllocation {
  std::vector<int> bits;  // per layer
  std::string summary;
};
BitAllocation allocate_layer_bits(const std::vector<std::vector<double>>& errors, const std::vector<int64_t>& params,
                                  const std::vector<int>& bits, double target_bpw);

// The sensitivity scan, block by block on the layer-sequential engine (journal phase "scan").
struct SensitivityScan {
  size_t candidates = 0;
  // Quantizes block k's `layers` at candidate c on the current model and returns each layer's output
  // error (in the order of `layers`); the scan restores every parameter afterwards.
  std::function<std::vector<double>(int block, const std::vector<const LayerInfo*>& layers, const BlockStats& stats,
                                    size_t candidate)>
      quantize_at;
  // Progress: n (layer, candidate) errors came back from the journal.
  std::function<void(int64_t n)> restored;
};
// errors[layer][c] for every layer in `targets`.
std::map<std::string, std::vector<double>> sensitivity_scan(Model& model, const at::Tensor& calib,
                                                            const std::set<std::string>& targets,
                                                            const SequentialOptions& so, BlockJournal* journal,
                                                            const SensitivityScan& scan);

}  // namespace mc

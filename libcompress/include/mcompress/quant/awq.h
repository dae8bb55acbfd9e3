// AWQ (Lin et al., 2023), the two searches as pure functions on weights and input statistics; ptq.cpp's
// quantize_model runs them per scale group of a model (model.h's ScaleGroup), the Python bindings on
// arrays.
//
// awq_search_scales: for the layers reading one input (q/k/v after a norm, w1/w3, ...), the per-channel
// scale s = mean|x|^α (normalised so that sqrt(max s · min s) = 1, floored at 1e-4 before), α in
// {0, 0.05, ..., 0.95}, chosen to minimise the group's quantized output error on the calibration inputs
//   Σ_layers tr(D H Dᵀ),  D = W - Q(W diag s) diag(1/s)       (Q: rtn.h's grid of the layer's spec)
// measured on at most max_rows evenly spaced rows of each weight (the search only ranks α). α = 0 (s = 1,
// plain RTN) is a candidate, so the chosen s never does worse than RTN on this proxy. The caller folds s
// into whatever produces the input (norm weight / preceding linear divided by s, the layers' input
// columns multiplied by s: the float model computes the same function).
// awq_clip: per (row, group), the clip ratio 1.00, 0.95, ..., 0.55 of the group's range with the least
// output error d_g H_gg d_gᵀ (the group's diagonal block of H); returns W clamped to the chosen ranges,
// which RTN then fits exactly.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "mcompress/quant/rtn.h"

namespace mc {

struct AwqSearchOptions {
  int grid = 20;              // α = 0, 1/grid, ..., (grid-1)/grid  (0.05 steps by default)
  int64_t max_rows = 512;     // rows of each weight measured (evenly spaced); <= 0: all rows
  // Maps s over the C channels of x_mean_abs to the layers' input channels (grouped KV heads: o reads
  // each value head several times, ScaleGroup::expand). Empty: identity (C == in_features).
  std::function<at::Tensor(const at::Tensor&)> expand;
};

struct AwqScales {
  at::Tensor scales;          // float32 [C]; undefined when every mean|x| is 0 (nothing to search on)
  double alpha = 0;           // the chosen α
  int alpha_index = 0;        // its index in the grid
  std::vector<double> errors; // Σ tr(D H Dᵀ) per α tried
};

// x_mean_abs: float [C] (mean |x| per input channel, HessianAccumulator::mean_abs); H: [in, in] the
// layers' input Hessian (2/n Σ x xᵀ); weights: each float [out_i, in]; specs: one grid per weight (or
// one for all). `names` (optional) name the layers in errors. Throws InputError for mismatched shapes,
// an empty weight list or a bad spec.
AwqScales awq_search_scales(const at::Tensor& x_mean_abs, const at::Tensor& H, const std::vector<at::Tensor>& weights,
                            const std::vector<QuantSpec>& specs, const AwqSearchOptions& o = {},
                            const std::vector<std::string>& names = {});

// W: float [out, in], H: [in, in]. Per-tensor specs (group_size < 0) return W unchanged. Rows are searched
// in chunks of about chunk_weights weights (the result does not depend on it; it bounds the temporaries).
at::Tensor awq_clip(const at::Tensor& W, const at::Tensor& H, const QuantSpec& spec, const std::string& layer = "",
                    int64_t chunk_weights = int64_t(1) << 24);

}  // namespace mc

// SmoothQuant (Xiao et al., 2023): the per-channel scales that move activation outliers into the
// weights before W8A8 quantization, as a pure function on statistics and weights. quantize_model runs
// it per scale group whose previous op is a norm (the norm absorbs 1/s, the consumers' input columns s),
// then RTN on the weights and per-token quantization of every quantized linear's input.
//
//   s_j = max|X_j|^α / max|W_j|^(1-α)   (max|W_j|: over all consumer weights' column j; both floored
//                                         at 1e-5); a channel that never saw input (max|X_j| = 0) keeps 1
#pragma once
#include <ATen/core/Tensor.h>

#include <vector>

namespace mc {

// x_max_abs: float [C] (max |x| per input channel, HessianAccumulator::max_abs), on the weights' device;
// weights: the group's consumers, each [out_i, C]; alpha in [0, 1]. Returns float [C], or an undefined
// tensor when every max|x| is 0 (nothing to smooth).
at::Tensor smoothquant_scales(const at::Tensor& x_max_abs, const std::vector<at::Tensor>& weights, double alpha);

}  // namespace mc

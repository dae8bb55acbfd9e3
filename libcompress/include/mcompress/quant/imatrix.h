// Importance-weighted round to nearest (the idea behind llama.cpp's importance matrix): the grid of
// each group is chosen to minimise the weighted squared error
//     E = Σ_j imp_j (w_j - (q_j - zero) * scale)²
// with imp_j the importance of input column j, usually the mean square of that input over the
// calibration data (the diagonal of H = 2/n Σ x xᵀ, up to a factor): an error in a column that sees
// large inputs costs more output error.
//
// Per group, candidates are tried and the best kept:
//   symmetric   codes from the scale s_k = f_k * s_rtn (s_rtn: RTN's scale, f_k = 0.80, 0.82, ... 1.10),
//               then the scale refitted by weighted least squares for those codes,
//               s* = Σ imp w (q - zero) / Σ imp (q - zero)², and the codes recomputed on s* once more;
//   asymmetric  the range [lo, hi] shrunk by p = 1.00, 0.95, ..., 0.60 (zero = round(-lo p / s)), then
//               the scale refitted for the codes with the zero point kept.
// Scales are stored as float16 (the refitted scale is rounded to the nearest float16, and the error
// measured with it). The plain RTN grid is always a candidate, so E never exceeds RTN's E with the
// same weights; codes stay what was evaluated, so a packed file dequantizes to exactly the result.
// Groups as in rtn.h (groups of input columns, the last one possibly shorter, or per output channel);
// per-tensor grids are not supported.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

#include "mcompress/quant/rtn.h"

namespace mc {

// w: float [out, in]; importance: float [in], >= 0 (all zero: plain RTN). Throws InputError for a bad
// spec, non-finite weights or importances, or a shape mismatch.
QuantResult imatrix_quantize(const at::Tensor& w, const QuantSpec& spec, const at::Tensor& importance,
                             const std::string& layer = "");

// Σ_j imp_j (w_j - ŵ_j)² per (row, group): float64 [out, n_groups] (for tests and reports).
at::Tensor weighted_group_error(const at::Tensor& w, const at::Tensor& w_hat, const at::Tensor& importance,
                                const QuantSpec& spec);

}  // namespace mc

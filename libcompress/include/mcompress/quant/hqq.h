// Half-Quadratic Quantization (HQQ; Badri & Shaji, 2023, mobiusml/hqq): a calibration-free asymmetric
// quantizer that keeps RTN's scale and moves each group's zero point to minimise an lp norm (p < 1) of
// the weight error, which tolerates the few large errors outliers force and favours many small ones.
//
// Per group of input columns (groups as in rtn.h: runs of group_size columns, the last one possibly
// shorter, or the whole row per channel), b bits, maxq = 2^b - 1:
//   start   s, z_0: the asymmetric RTN grid of rtn.h (range holding 0, s = up16((hi - lo)/maxq), the
//           integer zero), inv = 1/s in float32. The scale stays fixed (HQQ's default).
//   codes   q_t = clamp(round(w * inv + z_t), 0, maxq)   (w * inv + z_t summed in float32, half to even)
//   error   E_t = Σ_group |w - (q_t - z_t) * s|          (HQQ's early-stopping measure; in double)
//   update  W_r = (q_t - z_t) * s
//           W_e = shrink_lp(w - W_r, beta_t)     shrink_lp(x) = sign(x) * relu(|x| - |x|^(p-1) / beta_t)
//           z_{t+1} = f16( mean_group(q_t - (w - W_e) * inv) )   (sum in double; rounded to float16)
//           beta_{t+1} = beta_t * kappa
//   The closed-form zero step is the half-quadratic split of min_z ||w - (q - z)s||_p^p: W_e is the
//   proximal (shrunk) error, and z the least-squares zero given it. Defaults p = 0.7, beta_0 = 10,
//   kappa = 1.01, 20 updates: HQQ's optimize_weights_proximal.
//   stop    a group stops at the first t with E_t >= min(E_0 .. E_{t-1}) (or after `iters` updates) and
//           keeps its zero with the least E. z_0 is RTN's, so E never exceeds RTN asymmetric's E.
// Differences from the reference code, on purpose:
//   * HQQ stops all groups of a tensor together when the tensor's mean error stops decreasing (and its
//     legacy solver returns the zero updated after the worse step); here each group stops on its own and
//     keeps its best zero, so a group's result does not depend on other rows (row blocks, streaming and
//     the per-group reference agree exactly).
//   * HQQ starts from min/max of the group without 0 and an unrounded zero; here from RTN's grid, so the
//     first candidate is exactly RTN asymmetric.
//   * Every zero is rounded to float16 before its codes and error are computed, so the stored grid
//     (packed files keep fractional zeros as float16, quant/packed.h) dequantizes to exactly what was
//     evaluated (the same principle as up16 scales in rtn.h). Zeros are not clamped to 0..maxq.
// Symmetric and per-tensor grids are refused (InputError): HQQ's variable is the zero point.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

#include "mcompress/quant/rtn.h"

namespace mc {

struct HqqOptions {
  int iters = 20;        // zero-point updates (0: RTN asymmetric)
  double lp_norm = 0.7;  // p, in (0, 1]
  double beta = 10.0;    // beta_0 > 0
  double kappa = 1.01;   // beta growth per update, >= 1
  // InputError "[hqq] iterations -1 outside 0..1000" etc.
  void validate() const;
};

// Whole-tensor ATen implementation (every group of a block of rows at once; row blocks in parallel on
// CPU). w: a 2-D floating-point tensor [out, in]; spec: asymmetric, grouped or per channel. Returns
// uint8 codes, the RTN scales (float16 values) and float zeros (float16 values, possibly fractional).
// Throws InputError for a symmetric or per-tensor spec, bad options, non-finite weights or a scale
// beyond the float16 range (as rtn_quantize).
QuantResult hqq_quantize(const at::Tensor& w, const QuantSpec& spec, const HqqOptions& opts = {},
                         const std::string& layer = "");
// Plain per-group loop over the same steps (CPU), for tests: the same codes, scales and zeros.
QuantResult hqq_quantize_ref(const at::Tensor& w, const QuantSpec& spec, const HqqOptions& opts = {},
                             const std::string& layer = "");

}  // namespace mc

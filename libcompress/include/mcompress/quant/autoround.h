// AutoRound / SignRound (Cheng et al., 2023, "Optimize Weight Rounding via Signed Gradient Descent for
// the Quantization of LLMs"; intel/auto-round): each weight gets a learned rounding offset v in
// [-0.5, 0.5] and each group learned shrink factors of its range, all tuned by signed gradient descent
// against the output of the block the weights sit in, on calibration inputs.
//
// The grid is rtn.h's, with two learned factors per group (alpha on the top of the range, beta on the
// bottom; both 1 at the start) and one offset per weight (0 at the start):
//   lo = min(0, min w), hi = max(0, max w) over the group (constants)
//   asymmetric  scale = up16((alpha * hi - beta * lo) * (1/maxq))
//               zero  = clamp(round(-(beta * lo) * (1/scale)), 0, maxq)
//   symmetric   scale = up16(max(alpha * hi, beta * -lo) * (2/maxq))      zero = 2^(b-1)
//   codes       q = clamp(round((w * (1/scale) + v) + zero), 0, maxq)    (half to even, as rtn.h)
//   value       (q - zero) * scale
// So v = 0, alpha = beta = 1 is exactly RTN (the same codes and scales, bit for bit). In the tuning the
// roundings (the codes, the zero point, up16) pass the gradient straight through (STE) and the clamps
// pass it only inside their range.
//
// Tuning (autoround_tune): iteration t = 0 .. iters-1 evaluates the loss at the current (v, alpha, beta)
// and steps p -= lr_t * sign(dL/dp) with lr_t = lr * (1 - t / iters) (AutoRound's linear decay; default
// lr = 1 / iters, so no v can move more than 0.5 in total); v is clamped to [-0.5, 0.5] and the
// factors to [0.5, 1] (AutoRound clamps them to [0, 1]; its default schedule cannot leave [0.5, 1]).
// After the last step the loss is evaluated once more; the parameters with the least loss seen are kept
// (AutoRound's best-loss rule; with mini-batches the losses compared are of different batches, as there).
//
// GGUF K-quant lattice (AutoRoundGrid::kquant; llama.cpp's Q4_K / Q5_K, AutoRound's "gguf:q4_k" mode): asymmetric
// groups of 32 columns, 8 of them (256 columns) to a super-block, value = d * sc * q - dmin * m with 6-bit sc, m
// per group and d, dmin per super-block. Here, with the same variables (v per weight, alpha and beta per group):
//   s_g = (alpha * hi - beta * lo) * (1/maxq)        m_g = -(beta * lo)              (float32, per group)
//   d = up5(max_g s_g / 63), 1 if 0                   dmin = up5(max_g m_g / 63), 1 if 0  (per super-block)
//   sc = clamp(round(s_g / d), 1, 63)                 m = clamp(round(m_g / dmin), 0, 63)
//   scale = d * sc, min = dmin * m                    q = clamp(round((w + min) * (1/scale) + v), 0, maxq)
//   value = q * scale - min
// up5(x) rounds x up to the next value with 5 significant bits (k * 2^e, 16 <= k < 32): d, dmin are float16
// values, and d * sc, dmin * m (at most 11 significant bits) are exactly float16 too, so the codes, scales and
// mins store exactly in a packed file (QuantResult::mins) and export bit for bit as Q4_K / Q5_K blocks. The
// roundings pass the gradient straight through, as above. Needs bits 4 or 5, an asymmetric grid, groups of
// 32 and rows of a multiple of 256 columns.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <vector>

#include "mcompress/quant/rtn.h"

namespace mc {

struct AutoRoundOptions {
  int iters = 200;         // signed-gradient steps per block (AutoRound's default; 50 is its "light" preset)
  double lr = 0;           // step of v at t = 0; 0: 1 / iters
  double minmax_lr = 0;    // step of alpha and beta at t = 0; 0: the same as v's
  bool minmax = true;      // tune alpha and beta (false: only the rounding offsets)
  double step() const { return lr > 0 ? lr : 1.0 / iters; }
  double minmax_step() const { return minmax_lr > 0 ? minmax_lr : step(); }
  // InputError "[autoround] iterations 0 outside 1..100000" and likewise for negative or non-finite lr.
  void validate() const;
};

enum class AutoRoundGrid { rtn, kquant };

// InputError unless the weight [out, in] and spec fit the K-quant lattice (bits 4/5, asym, g32, in % 256 == 0).
void check_kquant_lattice(const QuantSpec& spec, int64_t in, const std::string& layer = "");
bool fits_kquant_lattice(const QuantSpec& spec, int64_t in);

// The tuned variables of one weight [out, in] on its grid (float32): v [out, in], alpha and beta [out, G].
struct AutoRoundState {
  at::Tensor v, alpha, beta;
};

// v = 0, alpha = beta = 1 (RTN). Throws InputError for a per-tensor spec (the groups are the variables),
// a weight that is not 2-D, or non-finite weights.
AutoRoundState autoround_init(const at::Tensor& w, const QuantSpec& spec, const std::string& layer = "");
// The dequantized weight float32 [out, in] as a differentiable function of the state (STE, see above).
at::Tensor autoround_weight(const at::Tensor& w, const QuantSpec& spec, const AutoRoundState& s,
                            AutoRoundGrid grid = AutoRoundGrid::rtn);
// The codes of the state: QuantResult::dequantize() equals autoround_weight(w, spec, s) exactly. The K-quant
// lattice's result has mins (scales d * sc, mins dmin * m).
QuantResult autoround_codes(const at::Tensor& w, const QuantSpec& spec, const AutoRoundState& s,
                            const std::string& layer = "", AutoRoundGrid grid = AutoRoundGrid::rtn);
// The same, written as plain loops over rows, groups and elements (CPU), for tests.
QuantResult autoround_codes_ref(const at::Tensor& w, const QuantSpec& spec, const AutoRoundState& s,
                                const std::string& layer = "", AutoRoundGrid grid = AutoRoundGrid::rtn);

// The loss of the weights' dequantized values at iteration `iter` (a scalar tensor carrying the graph
// from `weights`; iter == iters is the final evaluation).
using AutoRoundLoss = std::function<at::Tensor(const std::vector<at::Tensor>& weights, int iter)>;

struct AutoRoundTuned {
  std::vector<AutoRoundState> state;  // the best state of each weight
  std::vector<QuantResult> quant;     // its codes
  double first_loss = 0;              // at iteration 0 (RTN)
  double best_loss = 0;
  int best_iter = 0;                  // 0 .. iters
};

// Tunes the weights' states together (one block) to minimise `loss`. weights: float [out, in] each;
// specs and names (for messages; may be empty) one per weight. Runs with gradients enabled whatever the
// caller's grad mode. Throws InputError for bad options, specs or a non-finite loss at iteration 0.
// grids: one per weight (empty: all rtn).
AutoRoundTuned autoround_tune(const std::vector<at::Tensor>& weights, const std::vector<QuantSpec>& specs,
                              const AutoRoundLoss& loss, const AutoRoundOptions& o,
                              const std::vector<std::string>& names = {}, const std::vector<AutoRoundGrid>& grids = {});

}  // namespace mc

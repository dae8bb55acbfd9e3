// Shared parts of gptq_quantize (gptq.cpp) and its reference (gptq_ref.cpp): validation, the
// preparation of W and Hinv (dead columns, act-order permutation, damping with retries), the grid of
// a group (RTN's), the rounding of one column and the assembly of the result.
#pragma once
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "mcompress/quant/gptq.h"

namespace mc {
namespace gptq_detail {

// One group's grid for all rows: float32 [out] each; zero_magic = zero + kRoundMagic.
struct Grid {
  at::Tensor scale, inv, zero, zero_magic;
};

struct Prep {
  at::Tensor W;     // float32 [out, in]: dead columns zeroed, columns in quantization order
  at::Tensor Hinv;  // float32 [in, in]: upper Cholesky factor of the damped H⁻¹ (permuted)
  at::Tensor perm;  // int64 [in]
  std::vector<int64_t> perm_v;
  std::vector<Grid> grids;  // fitted up front (per channel / static groups), else empty slots
  bool dynamic = false;     // grids fitted when quantization reaches a group's first column
  int64_t in = 0, gcols = 0, n_groups = 0;
  double damp_rel = 0, damp_abs = 0;
  int retries = 0;
  int64_t dead = 0;
  // The grid slot used for the column at position j of the quantization order.
  int64_t group_at(int64_t j) const {
    return dynamic ? j / gcols : perm_v[static_cast<size_t>(j)] / gcols;
  }
  // With dynamic grids: whether position j starts a group, and the end of that group.
  bool starts_group(int64_t j) const { return dynamic && j % gcols == 0; }
  int64_t group_end(int64_t j) const { return std::min(j + gcols, in); }
};

Prep prepare(const at::Tensor& W, const at::Tensor& H, const GptqOptions& o, const std::string& layer);
// RTN's per-channel grid of w [out, cols] (any strides).
Grid fit(const at::Tensor& w, const QuantSpec& spec, const std::string& layer);
// Codes of the column w [out] on grid g as exact integer floats, written to `code`; returns the
// dequantized values (code - zero) * scale. The rounding is rtn.cpp's: w * (1/scale) + zero rounded
// once (half to even), clamped to 0..2^bits-1.
at::Tensor round_column(const at::Tensor& w, const Grid& g, int bits, at::Tensor code);
// codes_perm: float [out, in] in quantization order; loss = Σ err² / 2.
GptqResult finish(const Prep& p, const GptqOptions& o, const at::Tensor& codes_perm, double loss);

}  // namespace gptq_detail
}  // namespace mc

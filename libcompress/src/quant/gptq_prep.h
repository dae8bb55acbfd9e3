// Shared parts of gptq_quantize (gptq.cpp) and its reference (gptq_ref.cpp): validation, the
// preparation of W and the factor of H (dead columns, act-order permutation, damping with retries),
// the grid of a group (RTN's), the rounding of one column and the assembly of the result.
//
// The factor. The authors compute Hinv = U, the upper Cholesky factor of H⁻¹ (three O(n³) LAPACK
// steps: cholesky, cholesky_inverse, cholesky), and update W_j -= err_i U[i, j] with
// err_i = (w_i - q_i) / U[i, i]. Since H⁻¹ = UᵀU, H = V Vᵀ with V = U⁻¹ upper triangular, which is
// the lower Cholesky factor of the reversed H (J H J, J the reversal), reversed: one O(n³/3) step.
// Summing the updates gives W - Q = E U (E the errs), so E = (W - Q) V and the weight column j is
// quantized from   w̃_j = W_j + Σ_{i<j} (W_i - q_i) V[i, j] / V[j, j],   err_j = (w̃_j - q_j) V[j, j]:
// the same algorithm with V instead of U and the quantization error of the ORIGINAL weights as the
// update's left factor, and the same codes. Only the weights of the columns past j differ on the way
// (theirs are the best compensation for the columns quantized so far, these are partial sums), which
// matters where a dynamic group's grid is fitted on them: gptq.cpp converts a group's columns to the
// authors' values first (group_weights there, one small triangular block). gptq.cpp runs this form;
// the reference runs the authors' form on hinv_of().
#pragma once
#include <functional>
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
  at::Tensor W;     // float32 [out, in]: dead columns zeroed, columns in quantization order (read only:
                    // may be the caller's tensor)
  at::Tensor H;     // [in, in] in H's precision, dead diagonal set to 1, permuted, NOT damped
  at::Tensor V;     // float32 [in, in] upper triangular: damped H = V Vᵀ (see above)
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
// The authors' Hinv for the reference: float32 upper Cholesky factor of (H + damp_abs I)⁻¹, computed as
// they do (cholesky, cholesky_inverse, cholesky) in H's precision.
at::Tensor hinv_of(const Prep& p);
// RTN's per-channel grid of w [out, cols] (any strides).
Grid fit(const at::Tensor& w, const QuantSpec& spec, const std::string& layer);
// Codes of the column w [out] on grid g as exact integer floats, written to `code`; returns the
// dequantized values (code - zero) * scale. The rounding is rtn.cpp's: w * (1/scale) + zero rounded
// once (half to even), clamped to 0..2^bits-1.
at::Tensor round_column(const at::Tensor& w, const Grid& g, int bits, at::Tensor code);
// codes_perm: float or uint8 [out, in] in quantization order; loss = Σ err² / 2.
GptqResult finish(const Prep& p, const GptqOptions& o, const at::Tensor& codes_perm, double loss);

// Runs fn(t0, t1) over task ranges [0, tasks) on up to `workers` plain std::threads (the calling
// thread takes the first range). Not at::parallel_for: OpenMP workers spin-wait after a region and
// take a core from the BLAS threads of the GEMM that follows (GPTQ on 2 loaded cores: 6.2 s with
// parallel_for, 2.1 s with OMP_WAIT_POLICY=PASSIVE).
void run_row_tasks(int64_t tasks, int64_t workers, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace gptq_detail
}  // namespace mc

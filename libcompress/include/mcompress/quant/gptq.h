// GPTQ (Frantar et al., 2022): quantizes W [out, in] one input column at a time, each column's
// rounding error spread over the not yet quantized columns through the inverse Hessian of the layer
// inputs (H = 2/n Σ x xᵀ, see hessian.h), minimising ||WX - ŴX||². The steps follow the authors'
// reference (IST-DASLab/gptq, GPTQ.fasterquant):
//   dead columns (H[i,i] == 0): H[i,i] = 1, W[:,i] = 0
//   act_order: columns permuted by descending diag H (stable sort: ties keep column order)
//   damping: H += damp * mean(diag H) * I; Hinv = upper Cholesky factor of (chol⁻¹ of H); when a
//            Cholesky fails the damping is retried 10x larger, up to max_damp_retries times
//   columns in blocks of block_size: inside a block each column is quantized, err = (w - q) / Hinv[i,i],
//   and the rest of the block gets the rank-1 update; after the block, one matmul updates all later
//   columns (W[:, i2:] -= Err1 Hinv[i1:i2, i2:]).
// The grid is RTN's (rtn.h: fp16-exact scales rounded up, symmetric zero 2^(b-1), asymmetric ranges
// holding 0, optional MSE clip): a group's scale and zero are rtn_quantize's per-channel grid of the
// group's columns, fitted
//   - per channel (group_size 0): once, on all of W (after zeroing dead columns);
//   - static_groups: up front, on the original W's contiguous column groups (original order);
//   - otherwise: when quantization reaches the group's first column, on the group's CURRENT,
//     error-compensated weights (in quantization order: with act_order, a group is group_size
//     consecutive columns of the permuted order).
// Deliberate differences from the reference: (1) the reference fits a group that starts inside a block
// on W, whose in-block columns miss the block's pending updates; here the group is fitted on the
// up-to-date weights (in-block columns from the block, later columns with the pending update applied),
// so the result does not depend on block_size (block_size 1 = the plain column-by-column algorithm).
// (2) Per-channel grids are fitted after dead columns are zeroed (the reference fits before).
// (3) group_size -1 (per tensor) is not supported.
// Implementation (gptq.cpp, gptq_prep.h): instead of Hinv the solve uses V, the upper triangular
// factor of the damped H = V Vᵀ (one Cholesky of the reversed H instead of the reference's three
// factorizations), in an algebraically equivalent form that gives the same codes; the trailing
// update of each block is one BLAS GEMM and the in-block column loop runs on rows in parallel in
// plain C++ (rows are independent given the factor). On other devices the solve runs on the CPU.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "mcompress/quant/rtn.h"

namespace mc {

struct GptqOptions {
  QuantSpec spec;              // bits 2..8, sym/asym, group_size > 0 or 0 (per output channel), mse_clip
  double damp = 0.01;          // fraction of mean(diag H) added to the diagonal
  int64_t block_size = 128;    // columns per lazy-update block (>= 1); the result does not depend on it
  bool act_order = false;      // quantize columns in order of descending H[i,i]
  bool static_groups = false;  // fit all group grids up front on the original weights
  int max_damp_retries = 3;    // attempts with 10x, 100x, ... the damping when a Cholesky fails
};

struct GptqResult {
  // codes [out, in] in the ORIGINAL column order; scales/zeros [out, n_groups]. The groups are plain
  // contiguous column ranges (column c uses group c / group_size) when plain_groups() holds: act_order
  // off, or static_groups (groups are original column ranges), or per-channel; then quant.g_idx is
  // undefined. With act_order and dynamic groups, group k is the k-th run of group_size columns in
  // quantization order, so column c uses group g_idx[c], and quant.g_idx is set to g_idx: either way
  // quant.dequantize() equals dequantize() below, and a packed file (packed.h) stores it exactly.
  QuantResult quant;
  at::Tensor perm;   // int64 [in]: perm[k] = original column quantized k-th (identity without act_order)
  at::Tensor g_idx;  // int32 [in]: group of each original column (GPTQ export's g_idx)
  double loss = 0;   // Σ (w - q)² / Hinv[i,i]² / 2, the reference's reported layer error
  double damp_rel = 0;  // damping used, as a fraction of mean(diag H) (damp * 10^retries)
  double damp_abs = 0;  // damping added to the diagonal
  int damp_retries = 0; // Cholesky retries needed
  int64_t dead_columns = 0;

  bool plain_groups() const;      // g_idx[c] == c / group_size for every column
  at::Tensor dequantize() const;  // float32 [out, in]: (code - zero[g_idx]) * scale[g_idx]
};

// W: float [out, in]; H: [in, in] float32 or float64 (factorized in its own precision, the column
// loop runs in float32). `layer` names the weight in errors. Throws InputError for a bad spec or
// option, shapes that do not match, NaN/Inf in W or H, or an H that stays non-positive-definite
// after max_damp_retries.
GptqResult gptq_quantize(const at::Tensor& W, const at::Tensor& H, const GptqOptions& o,
                         const std::string& layer = "");
// Plain reference for tests: one column at a time over the whole matrix (no lazy blocks), with the
// same preparation (dead columns, permutation, damping, Hinv) and grid.
GptqResult gptq_quantize_ref(const at::Tensor& W, const at::Tensor& H, const GptqOptions& o,
                             const std::string& layer = "");

}  // namespace mc

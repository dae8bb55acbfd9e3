// SparseGPT (Frantar & Alistarh, 2023): prunes W [out, in] one input column at a time, each pruned
// (and, jointly, each quantized) weight's error spread over the not yet processed columns through the
// inverse Hessian of the layer inputs (H = 2/n Σ x xᵀ, hessian.h), minimising ||WX - ŴX||². The steps
// follow the authors' reference (IST-DASLab/sparsegpt, SparseGPT.fasterprune):
//   dead columns (H[i,i] == 0): H[i,i] = 1, W[:,i] = 0
//   damping: H += damp * mean(diag H) * I; Hinv = upper Cholesky factor of H⁻¹; 10x more damping while
//            a Cholesky fails, up to max_damp_retries times (gptq_prep.h's prepare(), shared with GPTQ)
//   columns in blocks [i1, i2) of block_size, W1 = the block's current weights, d_j = Hinv[j, j]:
//     unstructured: at the start of the block, score = W1² / d² over the WHOLE block (all rows and the
//       block's columns together, as the reference's sort over tmp.flatten()); the k = floor(sparsity *
//       out * (i2 - i1)) smallest scores are pruned (ties: lower flat index first). So the sparsity is
//       exact per block, not per row: rows of one block may keep different counts ("adaptive mask").
//     N:M: when the column loop reaches a column j with j % M == 0, per row the N smallest scores
//       W1[r, j..j+M)² / d² (on the current, error-compensated weights) are pruned (ties: lower
//       column first). Every M-column group of every row has exactly N zeros.
//     per column j: q = 0 where pruned, else w (quantized when joint); err = (w - q) / d_j;
//       W1[:, j+1:i2] -= err Hinv[j, j+1:i2]; after the block W[:, i2:] -= Err1 Hinv[i1:i2, i2:].
//   loss = Σ (w - q)² / d² / 2 (the reference's printed 'error').
// Deliberate differences from the reference:
//   (1) The reference prunes every score <= the sorted score at index floor(sparsity * numel), i.e.
//       k + 1 entries per block (more with ties, and one per block even at sparsity 0); here exactly k.
//   (2) N:M groups are aligned to global columns: a block_size that is not a multiple of M is rounded
//       down to one (at least M), so groups never straddle a block (the reference counts i % M inside
//       each block, which agrees with global columns when M divides block_size, e.g. 128).
//   (3) Joint quantization: the grid is rtn.h's (fp16 scales rounded up, as gptq.h). Per channel it is
//       fitted once on W after dead columns are zeroed (the reference fits before); per group (our
//       extension: the reference has no groups) when the loop reaches the group's first column, on
//       the group's current, error-compensated weights, pruned ones included (their values still lie
//       in the range, so the grid only covers more than the survivors need). Per tensor (-1) is not
//       supported.
// Result invariants: weight is exactly 0 where mask is false; with quant, weight equals
// quant->dequantize() exactly and a pruned entry's code is its group's zero point (the code of 0.0).
// block_size: the unstructured mask depends on it (it is chosen per block); the N:M result and the
// joint quantized result with N:M do not, up to float rounding in the summation order; all
// block_size >= in give the same result (one block).
// Implementation: the inverse-Hessian factor is computed as the authors do (gptq_prep's hinv_of);
// per block, the mask is one ATen sort, the column loop runs rows in parallel in plain C++ on raw
// pointers (rows are independent given the mask of the block), and the trailing update is one GEMM.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>

#include "mcompress/quant/rtn.h"

namespace mc {

struct SparseGptOptions {
  double sparsity = 0.5;         // fraction of weights zeroed per block, [0, 1) (ignored when prune_n > 0)
  int prune_n = 0, prune_m = 0;  // N:M: in every M consecutive input columns, N are zeroed (2:4: 2, 4)
  int64_t block_size = 128;      // columns per lazy block (>= 1); the unstructured mask is chosen per block
  double damp = 0.01;            // fraction of mean(diag H) added to the diagonal
  int max_damp_retries = 3;      // attempts with 10x, 100x, ... the damping when a Cholesky fails
  const QuantSpec* quant = nullptr;  // joint pruning + quantization of the survivors (see above)
  // A fixed mask (bool [out, in], true = kept) instead of choosing one: the pruned entries are zeroed
  // with the same error compensation. With quant this is GPTQ that keeps an existing sparsity pattern
  // (prune, then quantize). sparsity and prune_n/prune_m are then ignored.
  at::Tensor mask;
};

struct SparseGptResult {
  at::Tensor weight;  // float32 [out, in]: pruned (and with quant, dequantized); exactly 0 where pruned
  at::Tensor mask;    // bool [out, in]: true = kept
  // With opts.quant: codes [out, in] (pruned weights carry their group's zero point, the code of 0.0),
  // scales/zeros [out, n_groups] (contiguous column groups; per channel: one). dequantize() == weight.
  std::optional<QuantResult> quant;
  double loss = 0;       // Σ (w - q)² / Hinv[j,j]² / 2, the reference's reported error
  int damp_retries = 0;  // Cholesky retries needed
  int64_t dead_columns = 0;
};

// W: float [out, in] (any device: runs on the CPU, results moved back); H: [in, in] float32 or
// float64. `layer` names the weight in errors. Throws InputError for sparsity outside [0, 1), N:M with
// N < 1 or N >= M or an input width M does not divide, a bad block size / damping / quant spec,
// shapes that do not match, NaN/Inf in W or H, or an H that stays non-positive-definite after
// max_damp_retries.
SparseGptResult sparsegpt_prune(const at::Tensor& W, const at::Tensor& H, const SparseGptOptions& o,
                                const std::string& layer = "");

}  // namespace mc

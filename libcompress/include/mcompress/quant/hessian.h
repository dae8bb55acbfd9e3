// Calibration statistics of one linear layer's inputs for GPTQ-style quantizers:
//   H = 2/n Σ x xᵀ  over the n input rows seen so far ([in, in], float32 or float64),
// kept as a running average the way the GPTQ reference code (IST-DASLab/gptq, GPTQ.add_batch) does:
//   H *= n/(n+m);  n += m;  H += (sqrt(2/n) X)ᵀ (sqrt(2/n) X)
// done here as one BLAS call, H = n/(n+m) H + 2/(n+m) XᵀX (at::addmm_: the same update, without
// scaling a copy of X). Unlike the reference, n counts rows of X (tokens), not sequences: the
// reference's H is ours times tokens-per-sequence, a constant factor GPTQ does not see (its damping
// is relative to mean(diag H)).
// Next to H, per input channel: mean |x|, max |x| and Σ x² (AWQ, SmoothQuant, importance matrices).
// With bf16 products (a calibration whose linear layers compute in bf16: --compute bf16), XᵀX is formed
// from X rounded to bf16, the inputs those layers actually multiply, with float32 accumulation and
// output (oneDNN's bf16 GEMM, AVX512-BF16 where the CPU has it): the same update at bf16 GEMM speed.
// The per-channel statistics stay float32/float64 of X as given.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace mc {

class HessianAccumulator {
 public:
  // `layer` names the layer in error messages; fp64 keeps H in float64 (long calibration runs,
  // ill-conditioned layers), otherwise float32 like the reference.
  // bf16_products: see above (CPU, float32 H only; ignored with fp64 or on another device).
  explicit HessianAccumulator(int64_t in_features, bool fp64 = false, std::string layer = "",
                              bool bf16_products = false);

  // Adds a batch X [..., in] (any leading dims, any floating dtype; rows = product of the leading
  // dims; an empty batch is a no-op). Throws InputError for a wrong last dimension, a non-floating
  // dtype, or non-finite values (detected through the batch's Σ x²).
  void add(const at::Tensor& x);

  int64_t in_features() const { return in_; }
  int64_t samples() const { return n_; }           // rows seen
  const at::Tensor& hessian() const;  // [in, in]: 2/n Σ x xᵀ (zeros before any add)
  // H itself, leaving the accumulator without it (hessian() is then undefined; the per-channel
  // statistics stay): its last reader may change it in place instead of copying it.
  at::Tensor take_hessian();
  at::Tensor mean_abs() const;                       // float32 [in]: Σ|x| / n (zeros when n = 0)
  at::Tensor max_abs() const;                        // float32 [in]
  const at::Tensor& sum_sq() const { return sum_sq_; }  // float64 [in]: Σ x²

 private:
  int64_t in_;
  int64_t n_ = 0;
  std::string layer_;
  bool bf16_ = false;
  mutable at::Tensor h_;  // [in, in] float32/float64
  mutable bool lower_only_ = false;  // bf16 products fill the tiles on and below the diagonal
  at::Tensor sum_abs_;  // float64 [in]
  at::Tensor max_abs_;  // float32 [in]
  at::Tensor sum_sq_;   // float64 [in]
};

}  // namespace mc

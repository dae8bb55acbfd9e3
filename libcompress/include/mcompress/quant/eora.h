// EoRA (Liu et al., 2024, "Training-free Compensation for Compressed LLM with Eigenspace Low-Rank
// Approximation"): a rank-r correction B A of a compressed weight Ŵ, fitted to the calibration inputs.
// With D = W - Ŵ [out, in] and H = 2/n Σ x xᵀ (hessian.h), the output error of Ŵ + B A on those inputs is
//   tr((D - B A) H (D - B A)ᵀ) = ||(D - B A) Q Λ^½||²   (H = Q Λ Qᵀ),
// so the best rank-r B A is the truncated SVD of D' = D Q Λ^½ ≈ U_r Σ_r V_rᵀ, mapped back:
//   B = U_r Σ_r [out, r],   A = V_rᵀ Λ^-½ Qᵀ [r, in]
// and its error is Σ_{i>r} σ_i² of D'. Eigen-directions with λ <= 1e-10 λ_max carry no calibration input:
// they are left out (pseudo-inverse), so A never amplifies them. Computed in float64, returned float32.
// The adapter is a LoRA pair: y = Ŵ x + B (A x), PEFT's lora_A = A, lora_B = B with scaling 1 (alpha = r).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace mc {

struct LowRankAdapter {
  at::Tensor A;  // float32 [r, in]
  at::Tensor B;  // float32 [out, r]
  int64_t rank() const { return A.defined() ? A.size(0) : 0; }
};

// D: float [out, in] (W - Ŵ), H: [in, in] symmetric positive semi-definite. rank >= 1; the result's rank is
// min(rank, out, in). Throws InputError (naming `layer`) for bad shapes or a rank < 1.
LowRankAdapter eora_fit(const at::Tensor& D, const at::Tensor& H, int64_t rank, const std::string& layer = "");

}  // namespace mc

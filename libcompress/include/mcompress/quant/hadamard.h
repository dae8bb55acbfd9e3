// Orthogonal Hadamard matrices of any size a model has, and the transform x -> x H applied to a tensor's
// last dimension (QuaRot / SpinQuant rotations, quant/rotate.h).
//
// H_n = (A_k ⊗ S_m) / sqrt(n), n = k * m: S_m the Sylvester matrix (m a power of two, natural order), A_k
// a ±1 Hadamard matrix built by Paley's constructions (k = q + 1, q prime ≡ 3 mod 4: Paley I; k = 2 (q + 1),
// q prime ≡ 1 mod 4: Paley II), k = 1 for powers of two. Entries are ±1/sqrt(n), H Hᵀ = I. Sizes with no
// such k (no prime fits) get a seeded random orthogonal matrix instead (QR of a Gaussian matrix drawn from
// a generator seeded by n, signs fixed by R's diagonal): still orthogonal, not ±1/sqrt(n), and applied as
// a dense matmul. Examples: 896 = 28 * 32 (Paley II, q 13), 14336 = 28 * 512, 4864 = 76 * 64 (Paley II, q 37),
// 24 = 12 * 2 (Paley I, q 11); 172 = 4 * 43 (stories260K's hidden size) has no Paley factor: random orthogonal.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace mc {

// The ±1 Paley matrix of order k (k x k, float64), or an undefined tensor when neither construction
// applies to k (k == 1 and k == 2 give [1] and the 2 x 2 Sylvester matrix).
at::Tensor paley_hadamard(int64_t k);

// How H_n is made: k (the non-power-of-two factor, 1 for a power of two; 0: random orthogonal) and m = n / k.
struct HadamardShape {
  int64_t n = 0, k = 0, m = 0;
  bool random() const { return k == 0; }
  std::string describe() const;  // "28 (Paley II, q 13) x 32 (Sylvester)", "random orthogonal (no Hadamard of 98)"
};
HadamardShape hadamard_shape(int64_t n);

// H_n as a dense orthogonal float64 matrix [n, n].
at::Tensor hadamard_matrix(int64_t n);

// x H_n over x's last dimension (size n), in x's dtype: the Walsh-Hadamard butterfly over the power-of-two
// factor (log2 m passes of sums and differences) and one small [k, k] matmul, O(n (log m + k)) per row
// instead of the dense O(n^2); the random fallback is a dense matmul. Works on any device, keeps autograd.
at::Tensor hadamard_transform(const at::Tensor& x);
// The plain reference: x @ hadamard_matrix(n), computed in float64, returned in x's dtype.
at::Tensor hadamard_transform_ref(const at::Tensor& x);

}  // namespace mc

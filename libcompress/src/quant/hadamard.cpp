// Hadamard matrices (Sylvester x Paley, or a seeded random orthogonal fallback) and the fast transform.
#include "mcompress/quant/hadamard.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <map>
#include <mutex>
#include <vector>

#include "mcompress/error.h"

namespace mc {

namespace {

constexpr const char* kComp = "hadamard";

bool is_prime(int64_t q) {
  if (q < 2) return false;
  for (int64_t d = 2; d * d <= q; ++d)
    if (q % d == 0) return false;
  return true;
}

bool is_pow2(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

// The Jacobsthal matrix of prime q: Q[i][j] = χ(j - i), χ the Legendre symbol mod q (0 on the diagonal).
std::vector<std::vector<int>> jacobsthal(int64_t q) {
  std::vector<int> chi(static_cast<size_t>(q), -1);
  chi[0] = 0;
  for (int64_t x = 1; x < q; ++x) chi[static_cast<size_t>(x * x % q)] = 1;
  std::vector<std::vector<int>> Q(static_cast<size_t>(q), std::vector<int>(static_cast<size_t>(q)));
  for (int64_t i = 0; i < q; ++i)
    for (int64_t j = 0; j < q; ++j) Q[size_t(i)][size_t(j)] = chi[static_cast<size_t>(((j - i) % q + q) % q)];
  return Q;
}

// Paley I, q ≡ 3 (mod 4): H = I + S, S = [[0, 1ᵀ], [-1, Q]] (skew, S Sᵀ = q I), order q + 1.
at::Tensor paley1(int64_t q) {
  const auto Q = jacobsthal(q);
  const int64_t k = q + 1;
  at::Tensor H = at::eye(k, at::kDouble);
  auto h = H.accessor<double, 2>();
  for (int64_t j = 1; j < k; ++j) h[0][j] += 1, h[j][0] -= 1;
  for (int64_t i = 1; i < k; ++i)
    for (int64_t j = 1; j < k; ++j) h[i][j] += Q[size_t(i - 1)][size_t(j - 1)];
  return H;
}

// Paley II, q ≡ 1 (mod 4): the symmetric conference matrix C = [[0, 1ᵀ], [1, Q]] of order q + 1, and
// H = C ⊗ [[1, 1], [1, -1]] + I ⊗ [[1, -1], [-1, -1]], order 2 (q + 1).
at::Tensor paley2(int64_t q) {
  const auto Q = jacobsthal(q);
  const int64_t c = q + 1;
  at::Tensor C = at::zeros({c, c}, at::kDouble);
  auto a = C.accessor<double, 2>();
  for (int64_t j = 1; j < c; ++j) a[0][j] = 1, a[j][0] = 1;
  for (int64_t i = 1; i < c; ++i)
    for (int64_t j = 1; j < c; ++j) a[i][j] = Q[size_t(i - 1)][size_t(j - 1)];
  const at::Tensor p = at::tensor({1.0, 1.0, 1.0, -1.0}, at::kDouble).view({2, 2});
  const at::Tensor r = at::tensor({1.0, -1.0, -1.0, -1.0}, at::kDouble).view({2, 2});
  return at::kron(C, p) + at::kron(at::eye(c, at::kDouble), r);
}

const char* paley_kind(int64_t k) {
  if (k % 4 != 0) return nullptr;
  if (is_prime(k - 1) && (k - 1) % 4 == 3) return "Paley I";
  if (k % 2 == 0 && is_prime(k / 2 - 1) && (k / 2 - 1) % 4 == 1) return "Paley II";
  return nullptr;
}

std::mutex cache_mu;
std::map<int64_t, at::Tensor>& small_cache() {
  static std::map<int64_t, at::Tensor> c;
  return c;
}
std::map<int64_t, at::Tensor>& random_cache() {
  static std::map<int64_t, at::Tensor> c;
  return c;
}

// The [k, k] factor (float64, ±1 entries unnormalised) of a non-random shape, cached.
at::Tensor small_factor(int64_t k) {
  std::lock_guard<std::mutex> lock(cache_mu);
  auto& c = small_cache();
  auto it = c.find(k);
  if (it != c.end()) return it->second;
  at::Tensor A = paley_hadamard(k);
  if (!A.defined()) fail(kComp, "no Paley construction of order ", k);
  return c[k] = A;
}

// The random orthogonal fallback [n, n] float64: QR of N(0, 1) drawn from a generator seeded by n.
at::Tensor random_orthogonal(int64_t n) {
  std::lock_guard<std::mutex> lock(cache_mu);
  auto& c = random_cache();
  auto it = c.find(n);
  if (it != c.end()) return it->second;
  auto gen = at::detail::createCPUGenerator(0x5eed0000ULL + static_cast<uint64_t>(n));
  at::Tensor g = at::normal(0.0, 1.0, {n, n}, gen, at::TensorOptions().dtype(at::kDouble));
  auto qr = at::linalg_qr(g);
  at::Tensor Q = std::get<0>(qr), R = std::get<1>(qr);
  at::Tensor s = at::sign(R.diagonal());
  s.masked_fill_(s.eq(0), 1.0);
  return c[n] = Q * s.unsqueeze(0);
}

}  // namespace

at::Tensor paley_hadamard(int64_t k) {
  if (k == 1) return at::ones({1, 1}, at::kDouble);
  if (k == 2) return at::tensor({1.0, 1.0, 1.0, -1.0}, at::kDouble).view({2, 2});
  const char* kind = paley_kind(k);
  if (!kind) return {};
  return std::string(kind) == "Paley II" ? paley2(k / 2 - 1) : paley1(k - 1);
}

std::string HadamardShape::describe() const {
  if (random()) return "random orthogonal (no Hadamard construction of " + std::to_string(n) + ")";
  if (k == 1) return std::to_string(m) + " (Sylvester)";
  const char* kind = paley_kind(k);
  const int64_t q = std::string(kind) == "Paley II" ? k / 2 - 1 : k - 1;
  return std::to_string(k) + " (" + kind + ", q " + std::to_string(q) + ") x " + std::to_string(m) + " (Sylvester)";
}

HadamardShape hadamard_shape(int64_t n) {
  if (n < 1) fail(kComp, "size ", n, " must be >= 1");
  HadamardShape s;
  s.n = n;
  if (is_pow2(n)) return s.k = 1, s.m = n, s;
  // The smallest non-power-of-two factor k = n / 2^j with a Paley construction (k = odd * 2^i, i >= 2).
  int64_t k = n, m = 1;
  while (k % 2 == 0) k /= 2, m *= 2;
  for (; m >= 1; k *= 2, m /= 2)
    if (paley_kind(k)) return s.k = k, s.m = m, s;
  s.k = 0, s.m = 0;
  return s;
}

at::Tensor hadamard_matrix(int64_t n) {
  const HadamardShape s = hadamard_shape(n);
  if (s.random()) return random_orthogonal(n);
  at::Tensor S = at::ones({1, 1}, at::kDouble);
  const at::Tensor h2 = at::tensor({1.0, 1.0, 1.0, -1.0}, at::kDouble).view({2, 2});
  for (int64_t m = 1; m < s.m; m *= 2) S = at::kron(h2, S);
  return at::kron(small_factor(s.k), S) / std::sqrt(double(n));
}

at::Tensor hadamard_transform_ref(const at::Tensor& x) {
  const int64_t n = x.size(-1);
  return at::matmul(x.to(at::kDouble), hadamard_matrix(n).to(x.device())).to(x.scalar_type());
}

at::Tensor hadamard_transform(const at::Tensor& x) {
  const int64_t n = x.size(-1);
  const HadamardShape s = hadamard_shape(n);
  if (s.random()) return at::matmul(x, random_orthogonal(n).to(x.device(), x.scalar_type()));
  const auto lead = x.sizes().slice(0, x.dim() - 1).vec();
  const int64_t rows = x.numel() / std::max<int64_t>(n, 1);
  at::Tensor y = x.contiguous().reshape({rows, s.k, s.m});
  // Butterfly over the power-of-two factor: for each bit h of the index, (a, b) -> (a + b, a - b).
  for (int64_t h = 1; h < s.m; h *= 2) {
    const at::Tensor v = y.view({rows, s.k, s.m / (2 * h), 2, h});
    const at::Tensor a = v.select(3, 0), b = v.select(3, 1);
    y = at::stack({a + b, a - b}, 3).view({rows, s.k, s.m});
  }
  if (s.k > 1) y = at::matmul(small_factor(s.k).t().to(x.device(), x.scalar_type()), y);  // Σ_a A[a, a'] y[a, :]
  std::vector<int64_t> shape = lead;
  shape.push_back(n);
  return y.mul(1.0 / std::sqrt(double(n))).reshape(shape);
}

}  // namespace mc

// EoRA (quant/eora.h) against the paper's objective, computed here independently of the eigenspace
// route: with H = L Lᵀ (Cholesky), ||(D - B A) Xᵀ||² = ||(D - B A) L||², whose rank-r minimum is the
// truncated SVD of D L (Eckart-Young): the fitted B A must equal (D L)_r L⁻¹ and its error Σ_{i>r} σ_i².
#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include "mcompress/error.h"
#include "mcompress/quant/eora.h"
#include "calib_problem.h"

using namespace mc;

namespace {

double weighted_error(const at::Tensor& E, const at::Tensor& H) {
  const at::Tensor e = E.to(at::kDouble);
  return e.mm(H.to(at::kDouble)).mul(e).sum().item<double>();
}

}  // namespace

TEST_CASE("eora_fit: the rank-r minimum of the output error, as the Cholesky-SVD oracle gives it", "[eora]") {
  const int64_t out = 24, in = 16, n = 200;
  const at::Tensor D = mctest::randn({out, in}, 41).mul_(0.1);
  // Inputs with very unequal channel scales (the case EoRA is for: plain SVD of D ignores them).
  const at::Tensor X = mctest::randn({n, in}, 42).mul_(at::linspace(0.05, 4.0, in, at::kFloat).unsqueeze(0));
  const at::Tensor H = X.t().mm(X).mul_(2.0 / n);
  const at::Tensor Hd = H.to(at::kDouble), Dd = D.to(at::kDouble);
  const at::Tensor L = at::linalg_cholesky(Hd);
  const auto svd = at::linalg_svd(Dd.mm(L), false);
  const at::Tensor U = std::get<0>(svd), S = std::get<1>(svd), Vh = std::get<2>(svd);
  for (const int64_t r : {1, 4, 8, 16}) {
    CAPTURE(r);
    const LowRankAdapter a = eora_fit(D, H, r, "layer");
    REQUIRE(a.A.sizes() == at::IntArrayRef({r, in}));
    REQUIRE(a.B.sizes() == at::IntArrayRef({out, r}));
    CHECK(a.A.scalar_type() == at::kFloat);
    const at::Tensor BA = a.B.to(at::kDouble).mm(a.A.to(at::kDouble));
    // The oracle's product: U_r Σ_r V_rᵀ L⁻¹.
    const at::Tensor want = at::linalg_solve(L.t(), U.narrow(1, 0, r).mul(S.narrow(0, 0, r)).mm(Vh.narrow(0, 0, r)).t()).t();
    CHECK(at::allclose(BA, want, 1e-5, 1e-6));
    const double tail = r < S.numel() ? S.narrow(0, r, S.numel() - r).pow(2).sum().item<double>() : 0.0;
    const double err = weighted_error(D - BA.to(at::kFloat), H);
    CHECK(err == Approx(tail).epsilon(1e-4).margin(1e-9));
    // Better than the plain SVD of D at the same rank (which ignores the inputs).
    const auto plain = at::linalg_svd(Dd, false);
    const at::Tensor Pr = std::get<0>(plain).narrow(1, 0, r).mul(std::get<1>(plain).narrow(0, 0, r)).mm(std::get<2>(plain).narrow(0, 0, r));
    if (r < in) CHECK(err < weighted_error(D - Pr.to(at::kFloat), H));
  }
  // Full rank recovers D exactly where H sees it.
  CHECK(weighted_error(D - eora_fit(D, H, in).B.mm(eora_fit(D, H, in).A), H) < 1e-8);
}

TEST_CASE("eora_fit: directions the inputs never take are left out, not amplified", "[eora]") {
  // Inputs only in the first 3 of 6 channels: H is singular. A must not read the other channels (they
  // carry nothing to fit, and 1/sqrt(0) would blow up), and the error on what H sees still drops.
  const at::Tensor X = at::cat({mctest::randn({50, 3}, 43), at::zeros({50, 3})}, 1);
  const at::Tensor H = X.t().mm(X).mul_(2.0 / 50);
  const at::Tensor D = mctest::randn({5, 6}, 44);
  const LowRankAdapter a = eora_fit(D, H, 2);
  CHECK(at::isfinite(a.A).all().item<bool>());
  CHECK(a.A.narrow(1, 3, 3).abs().max().item<double>() < 1e-6);
  CHECK(weighted_error(D - a.B.mm(a.A), H) < weighted_error(D, H));
  CHECK(weighted_error(D - eora_fit(D, H, 3).B.mm(eora_fit(D, H, 3).A), H) < 1e-8);  // rank 3 = H's rank
}

TEST_CASE("eora_fit: bad input names the layer", "[eora]") {
  const at::Tensor H = at::eye(4);
  CHECK_THROWS_WITH(eora_fit(at::zeros({3, 5}), H, 2, "blk.q"), Catch::Contains("blk.q") && Catch::Contains("[in, in]"));
  CHECK_THROWS_AS(eora_fit(at::zeros({3, 4}), H, 0, "blk.q"), InputError);
}

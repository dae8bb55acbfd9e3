// HessianAccumulator: whole-batch ATen ops (one addmm for H, three reductions for the channel
// statistics); nothing loops over elements.
#include "mcompress/quant/hessian.h"

#include <ATen/ATen.h>

#include "mcompress/error.h"

namespace mc {

namespace {
constexpr const char* kComp = "hessian";
std::string where(const std::string& layer) { return layer.empty() ? std::string() : "layer " + layer + ": "; }
}  // namespace

HessianAccumulator::HessianAccumulator(int64_t in_features, bool fp64, std::string layer)
    : in_(in_features), layer_(std::move(layer)) {
  if (in_features < 1) fail(kComp, where(layer_), "in_features ", in_features, " must be >= 1");
  h_ = at::zeros({in_, in_}, at::TensorOptions().dtype(fp64 ? at::kDouble : at::kFloat));
  sum_abs_ = at::zeros({in_}, at::kDouble);
  max_abs_ = at::zeros({in_}, at::kFloat);
  sum_sq_ = at::zeros({in_}, at::kDouble);
}

void HessianAccumulator::add(const at::Tensor& x) {
  if (x.dim() < 1 || x.size(-1) != in_)
    fail(kComp, where(layer_), "expected inputs [..., ", in_, "], got ", x.sizes());
  if (!at::isFloatingType(x.scalar_type()))
    fail(kComp, where(layer_), "expected floating-point inputs, got ", c10::toString(x.scalar_type()));
  const int64_t m = x.numel() / in_;
  if (m == 0) return;
  at::Tensor X = x.detach().reshape({m, in_}).to(h_.device(), h_.scalar_type());
  // Σ x² first: a NaN/Inf anywhere in the batch makes it non-finite, so the statistics stay clean.
  at::Tensor sq = at::sum(X.mul(X), {0}, false, at::kDouble);
  if (!at::isfinite(sq).all().item<bool>())
    fail(kComp, where(layer_), "calibration inputs contain NaN or Inf (batch of ", m, " rows)");
  const double n = double(n_), total = double(n_ + m);
  // H = n/(n+m) H + 2/(n+m) XᵀX: the reference's running average in one GEMM.
  h_.addmm_(X.t(), X, n / total, 2.0 / total);
  n_ += m;
  at::Tensor a = X.abs();
  sum_sq_.add_(sq);
  sum_abs_.add_(at::sum(a, {0}, false, at::kDouble));
  max_abs_ = at::maximum(max_abs_, at::amax(a, {0}).to(at::kFloat));
}

at::Tensor HessianAccumulator::mean_abs() const {
  return n_ == 0 ? at::zeros({in_}, at::kFloat) : sum_abs_.div(double(n_)).to(at::kFloat);
}

at::Tensor HessianAccumulator::max_abs() const { return max_abs_; }

}  // namespace mc

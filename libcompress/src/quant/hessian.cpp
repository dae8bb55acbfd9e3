// HessianAccumulator: whole-batch ATen ops (one addmm for H, three reductions for the channel
// statistics); nothing loops over elements.
#include "mcompress/quant/hessian.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "mcompress/error.h"
#include "mcompress/streamed_model.h"

// oneDNN's BLAS-like bf16 GEMM: C = alpha op(A) op(B) + beta C, row-major, bf16 inputs, float32
// accumulation and output. Exported by libdnnl since v1.2 (the library LibTorch itself runs on) and
// declared in dnnl.h from v3.0; Debian 12's 2.6 headers only declare its f32/int8 siblings.
extern "C" int dnnl_gemm_bf16bf16f32(char transa, char transb, int64_t M, int64_t N, int64_t K, float alpha,
                                     const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb, float beta,
                                     float* C, int64_t ldc);

namespace mc {

namespace {
constexpr const char* kComp = "hessian";
std::string where(const std::string& layer) { return layer.empty() ? std::string() : "layer " + layer + ": "; }
}  // namespace

HessianAccumulator::HessianAccumulator(int64_t in_features, bool fp64, std::string layer, bool bf16_products)
    : in_(in_features), layer_(std::move(layer)), bf16_(bf16_products && !fp64) {
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
  if (bf16_ && h_.is_cpu() && h_.is_contiguous()) {
    const at::Tensor Xb = to_bf16(X);  // rounded to nearest even, as the bf16 linear layers round it
    const auto* xb = static_cast<const uint16_t*>(Xb.data_ptr());
    float* h = h_.data_ptr<float>();
    // H is symmetric: only the tiles on and below the diagonal (4 x 4 tiles: 10 of 16 GEMMs), the rest
    // mirrored when H is read.
    const int64_t tiles = in_ >= 1024 ? 4 : 1, t = (in_ + tiles - 1) / tiles;
    for (int64_t r0 = 0; r0 < in_; r0 += t)
      for (int64_t c0 = 0; c0 <= r0; c0 += t) {
        const int64_t rows = std::min(t, in_ - r0), cols = std::min(t, in_ - c0);
        const int status = dnnl_gemm_bf16bf16f32('T', 'N', rows, cols, m, float(2.0 / total), xb + r0, in_, xb + c0,
                                                 in_, float(n / total), h + r0 * in_ + c0, in_);
        if (status != 0) fail(kComp, where(layer_), "oneDNN's bf16 GEMM failed (status ", status, ")");
      }
    lower_only_ = tiles > 1;
  } else {
    h_.addmm_(X.t(), X, n / total, 2.0 / total);
  }
  n_ += m;
  at::Tensor a = X.abs();
  sum_sq_.add_(sq);
  sum_abs_.add_(at::sum(a, {0}, false, at::kDouble));
  max_abs_ = at::maximum(max_abs_, at::amax(a, {0}).to(at::kFloat));
}

const at::Tensor& HessianAccumulator::hessian() const {
  if (lower_only_) {  // the upper tiles from the lower ones (the diagonal tiles are whole)
    const int64_t t = (in_ + 3) / 4;
    for (int64_t r0 = t; r0 < in_; r0 += t) {
      const int64_t rows = std::min(t, in_ - r0);
      h_.narrow(0, 0, r0).narrow(1, r0, rows).copy_(h_.narrow(0, r0, rows).narrow(1, 0, r0).t());
    }
    lower_only_ = false;
  }
  return h_;
}

at::Tensor HessianAccumulator::mean_abs() const {
  return n_ == 0 ? at::zeros({in_}, at::kFloat) : sum_abs_.div(double(n_)).to(at::kFloat);
}

at::Tensor HessianAccumulator::max_abs() const { return max_abs_; }

}  // namespace mc

// HessianAccumulator: whole-batch ATen ops (one addmm for H, three reductions for the channel
// statistics); nothing loops over elements.
#include "mcompress/quant/hessian.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "mcompress/error.h"
#include "mcompress/streamed_model.h"
#include "quant/gptq_prep.h"

// oneDNN's BLAS-like bf16 GEMM: C = alpha op(A) op(B) + beta C, row-major, bf16 inputs, float32
// accumulation and output. Exported by libdnnl since v1.2 (the library LibTorch itself runs on) and
// declared in dnnl.h from v3.0; Debian 12's 2.6 headers only declare its f32/int8 siblings.
extern "C" int dnnl_gemm_bf16bf16f32(char transa, char transb, int64_t M, int64_t N, int64_t K, float alpha,
                                     const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb, float beta,
                                     float* C, int64_t ldc);

namespace {
// Whether oneDNN runs bf16 GEMMs here: it answers dnnl_unimplemented (3) on CPUs without the instructions
// (AVX-512 at the least); asked once with a 1 x 1 product.
bool dnnl_bf16_gemm_available() {
  static const bool ok = [] {
    const uint16_t one = 0x3F80;  // bf16 1.0
    float c = 0;
    return dnnl_gemm_bf16bf16f32('N', 'N', 1, 1, 1, 1.0f, &one, 1, &one, 1, 0.0f, &c, 1) == 0 && c == 1.0f;
  }();
  return ok;
}
}  // namespace

namespace mc {

namespace {
constexpr const char* kComp = "hessian";
std::string where(const std::string& layer) { return layer.empty() ? std::string() : "layer " + layer + ": "; }

// Per column of X (float32 [m, in], contiguous CPU): sq = Σ x², ab = Σ |x| (float64 sums of exact float64
// products) and mx = max |x|, and, when Xb is defined, Xb = X rounded to bf16 (nearest even, as to_bf16):
// one read of X instead of ATen's five passes and three [m, in] temporaries (the double-dtype column
// sums were the slow part: 4-5 s for a [16384, 8192] batch on this machine, 0.07 s in float32). Threads
// own column ranges, so the sums do not depend on the thread count.
void channel_stats(const at::Tensor& X, const at::Tensor& Xb, at::Tensor& sq, at::Tensor& ab, at::Tensor& mx) {
  const int64_t m = X.size(0), in = X.size(1);
  const float* x = X.data_ptr<float>();
  uint16_t* xb = Xb.defined() ? static_cast<uint16_t*>(Xb.data_ptr()) : nullptr;
  double* psq = sq.data_ptr<double>();
  double* pab = ab.data_ptr<double>();
  float* pmx = mx.data_ptr<float>();
  auto run = [&](int64_t c0, int64_t c1) {
    std::fill(psq + c0, psq + c1, 0.0);
    std::fill(pab + c0, pab + c1, 0.0);
    std::fill(pmx + c0, pmx + c1, 0.0f);
    double* __restrict s2 = psq;
    double* __restrict s1 = pab;
    float* __restrict mm = pmx;
    for (int64_t r = 0; r < m; ++r) {
      const float* __restrict row = x + r * in;
      for (int64_t c = c0; c < c1; ++c) {
        const float v = row[c], a = std::fabs(v);
        s2[c] += double(v) * double(v);
        s1[c] += double(a);
        mm[c] = a > mm[c] ? a : mm[c];
      }
      if (xb) {
        uint16_t* __restrict out = xb + r * in;
        const auto* __restrict u = reinterpret_cast<const uint32_t*>(row);
        for (int64_t c = c0; c < c1; ++c) {
          const uint32_t b = u[c];
          // finite here or the batch fails (Σ x² turns non-finite): plain round to nearest even
          out[c] = uint16_t((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
        }
      }
    }
  };
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), in / 256));
  gptq_detail::run_row_tasks(in, workers, run);  // column ranges on plain threads, as GPTQ's row tasks
}
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
  at::Tensor X = x.detach().reshape({m, in_}).to(h_.device(), h_.scalar_type()).contiguous();
  const bool raw = X.is_cpu() && X.scalar_type() == at::kFloat;
  const bool bf16 = bf16_ && h_.is_cpu() && h_.is_contiguous() && h_.scalar_type() == at::kFloat;
  // The channel statistics (and, for bf16 products, X rounded to bf16): one pass over X on the CPU.
  at::Tensor Xb = bf16 && raw ? at::empty({m, in_}, X.options().dtype(at::kBFloat16)) : at::Tensor();
  at::Tensor sq, ab, mx;
  if (raw) {
    sq = at::empty({in_}, X.options().dtype(at::kDouble));
    ab = at::empty({in_}, X.options().dtype(at::kDouble));
    mx = at::empty({in_}, X.options());
    channel_stats(X, Xb, sq, ab, mx);
  } else {
    sq = at::sum(X.mul(X), {0}, false, at::kDouble);
  }
  // Σ x² first: a NaN/Inf anywhere in the batch makes it non-finite, so the statistics stay clean.
  if (!at::isfinite(sq).all().item<bool>())
    fail(kComp, where(layer_), "calibration inputs contain NaN or Inf (batch of ", m, " rows)");
  const double n = double(n_), total = double(n_ + m);
  // H = n/(n+m) H + 2/(n+m) XᵀX: the reference's running average in one GEMM.
  if (bf16 && !dnnl_bf16_gemm_available()) {
    // No bf16 GEMM on this CPU (oneDNN needs AVX512-BF16 / AMX or at least AVX-512 for it): the same products
    // in float32 (a bf16 x bf16 product is exact in float32), float32 sums, as oneDNN accumulates.
    if (!Xb.defined()) Xb = to_bf16(X);
    const at::Tensor Xf = Xb.to(at::kFloat);
    at::Tensor P = Xf.t().mm(Xf);
    P = P.tril() + P.tril(-1).t();  // exactly symmetric (the BLAS's blocking need not be)
    h_.mul_(n / total).add_(P, 2.0 / total);
  } else if (bf16) {
    if (!Xb.defined()) Xb = to_bf16(X);  // rounded to nearest even, as the bf16 linear layers round it
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
  sum_sq_.add_(sq);
  if (raw) {
    sum_abs_.add_(ab);
    max_abs_ = at::maximum(max_abs_, mx);
  } else {
    at::Tensor a = X.abs();
    sum_abs_.add_(at::sum(a, {0}, false, at::kDouble));
    max_abs_ = at::maximum(max_abs_, at::amax(a, {0}).to(at::kFloat));
  }
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

at::Tensor HessianAccumulator::take_hessian() {
  hessian();  // the upper tiles filled
  return std::move(h_);
}

at::Tensor HessianAccumulator::mean_abs() const {
  return n_ == 0 ? at::zeros({in_}, at::kFloat) : sum_abs_.div(double(n_)).to(at::kFloat);
}

at::Tensor HessianAccumulator::max_abs() const { return max_abs_; }

}  // namespace mc

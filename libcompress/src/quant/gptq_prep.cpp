// GPTQ preparation and result assembly shared by the fast path and the reference (gptq_prep.h).
#include "quant/gptq_prep.h"

#include <algorithm>
#include <limits>
#include <thread>
#include <vector>

#include <ATen/ATen.h>

#include <cmath>

#include "mcompress/error.h"

namespace mc {
namespace gptq_detail {

namespace {

constexpr const char* kComp = "gptq";
// Adding 1.5 * 2^23 to a float of magnitude < 2^22 rounds it to an integer, half to even (the same
// trick and order of operations as rtn.cpp, so a column rounds exactly as RTN would round it).
constexpr double kRoundMagic = 12582912.0;

std::string where(const std::string& layer) { return layer.empty() ? std::string() : "layer " + layer + ": "; }

// Whether every value is finite: one pass over the memory for contiguous CPU float32/float64 (no
// temporary; at::isfinite(x).all() costs two passes and a [numel] bool tensor), ATen otherwise.
template <typename T>
bool all_finite_raw(const T* x, int64_t n) {
  T acc = 0;  // x * 0 is 0 for finite x and NaN for Inf/NaN; NaN sticks in the sum
  for (int64_t i = 0; i < n; ++i) acc += x[i] * T(0);
  return acc == T(0);
}
bool all_finite(const at::Tensor& x) {
  if (x.is_cpu() && x.is_contiguous() && x.scalar_type() == at::kFloat) return all_finite_raw(x.data_ptr<float>(), x.numel());
  if (x.is_cpu() && x.is_contiguous() && x.scalar_type() == at::kDouble)
    return all_finite_raw(x.data_ptr<double>(), x.numel());
  return at::isfinite(x).all().item<bool>();
}

void validate(const at::Tensor& W, const at::Tensor& H, const GptqOptions& o, const std::string& layer) {
  if (W.dim() != 2) fail(kComp, where(layer), "expected a 2-D weight [out, in], got ", W.dim(), " dims");
  if (!at::isFloatingType(W.scalar_type()) || !at::isFloatingType(H.scalar_type()))
    fail(kComp, where(layer), "expected floating-point W and H, got ", c10::toString(W.scalar_type()), " and ",
         c10::toString(H.scalar_type()));
  const int64_t in = W.size(1);
  if (H.dim() != 2 || H.size(0) != in || H.size(1) != in)
    fail(kComp, where(layer), "Hessian ", H.sizes(), " does not match in_features ", in, " (expected [", in, ", ", in,
         "])");
  o.spec.validate(layer, in);
  if (o.spec.group_size < 0)
    fail(kComp, where(layer), "group_size ", o.spec.group_size,
         " (per tensor) is not supported; use a group size >= 1 or 0 (per output channel)");
  if (o.block_size < 1) fail(kComp, where(layer), "block_size ", o.block_size, " must be >= 1");
  if (!(o.damp >= 0) || !std::isfinite(o.damp)) fail(kComp, where(layer), "damp ", o.damp, " must be a number >= 0");
  if (o.max_damp_retries < 0 || o.max_damp_retries > 20)
    fail(kComp, where(layer), "max_damp_retries ", o.max_damp_retries, " outside 0..20");
  if (!all_finite(W)) fail(kComp, where(layer), "weights contain NaN or Inf");
  if (!all_finite(H)) fail(kComp, where(layer), "Hessian contains NaN or Inf");
}


// LAPACK's Cholesky (LibTorch's own: liblapack.so.3, which LibTorch links too), called directly so that it
// factors a buffer in place: at::linalg_cholesky_ex always writes a new tensor.
extern "C" {
void spotrf_(const char* uplo, const int* n, float* a, const int* lda, int* info);
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info);
}

// In place: A (row-major, symmetric, contiguous CPU float/double) = L Lᵀ with L in A's lower triangle; the
// strict upper triangle keeps its values. Row-major lower is column-major upper, hence 'U'. Returns info
// (0: success, > 0: the leading minor of that order is not positive definite).
int potrf_lower_inplace(at::Tensor& A) {
  const int n = static_cast<int>(A.size(0));
  int info = 0;
  const char uplo = 'U';
  if (A.scalar_type() == at::kDouble)
    dpotrf_(&uplo, &n, A.data_ptr<double>(), &n, &info);
  else
    spotrf_(&uplo, &n, A.data_ptr<float>(), &n, &info);
  return info;
}

template <typename T>
void reverse_into(const at::Tensor& src, at::Tensor& dst) {  // dst = J src J: the flat array reversed
  const T* s = src.data_ptr<T>();
  std::reverse_copy(s, s + src.numel(), dst.data_ptr<T>());
}

// V, float32 upper triangular with H + damp I = V Vᵀ: the lower Cholesky factor of J (H + damp I) J, reversed;
// undefined when that factorization fails. On the CPU (float/double, contiguous) one [n, n] buffer in H's
// dtype: filled with J H J, factored in place, reversed in place (reversing the flat array of a square matrix
// is J X J), its strict lower triangle (the untouched half of J H J) cleared. Elsewhere the same through ATen
// (three [n, n] temporaries).
at::Tensor reversed_factor(const at::Tensor& H, double damp) {
  const bool raw = H.is_cpu() && H.is_contiguous() && (H.scalar_type() == at::kFloat || H.scalar_type() == at::kDouble) &&
                   H.size(0) <= std::numeric_limits<int>::max() / 2;
  if (!raw) {
    at::Tensor Hr = H.flip({0, 1});
    Hr.diagonal().add_(damp);
    auto [L, info] = at::linalg_cholesky_ex(Hr, /*upper=*/false, /*check_errors=*/false);
    if (info.item<int>() != 0) return {};
    Hr.reset();
    return L.flip({0, 1}).to(at::kFloat).contiguous();
  }
  at::Tensor B = at::empty_like(H);
  const bool dbl = H.scalar_type() == at::kDouble;
  dbl ? reverse_into<double>(H, B) : reverse_into<float>(H, B);
  B.diagonal().add_(damp);
  if (potrf_lower_inplace(B) != 0) return {};
  if (dbl) {
    double* b = B.data_ptr<double>();
    std::reverse(b, b + B.numel());
  } else {
    float* b = B.data_ptr<float>();
    std::reverse(b, b + B.numel());
  }
  B.triu_();
  return dbl ? B.to(at::kFloat) : B;  // the double buffer is released when the float copy exists
}

}  // namespace

Grid fit(const at::Tensor& w, const QuantSpec& spec, const std::string& layer) {
  QuantSpec s = spec;
  s.group_size = 0;  // one group per row of the slice
  const QuantResult r = rtn_quantize(w, s, layer);
  Grid g;
  g.scale = r.scales.select(1, 0).contiguous();
  g.inv = at::reciprocal(g.scale);  // as rtn.cpp computes it
  g.zero = r.zeros.select(1, 0).contiguous();
  g.zero_magic = g.zero.add(kRoundMagic);  // exact: zero is an integer <= 255
  return g;
}

at::Tensor round_column(const at::Tensor& w, const Grid& g, int bits, at::Tensor code) {
  const double maxq = double((1 << bits) - 1);
  at::mul_out(code, w, g.inv).add_(g.zero_magic).clamp_(kRoundMagic, kRoundMagic + maxq).sub_(kRoundMagic);
  return code.sub(g.zero).mul_(g.scale);
}

Prep prepare(const at::Tensor& W0, const at::Tensor& H0, const GptqOptions& o, const std::string& layer) {
  validate(W0, H0, o, layer);
  Prep p;
  const int64_t in = W0.size(1);
  // W and H are only read from here on (p.W and p.H may be the caller's tensors): new tensors where
  // they change.
  at::Tensor W = W0.detach().to(at::kFloat).contiguous();
  const auto hdt = H0.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor H = H0.detach().to(W.device(), hdt).contiguous();
  // Dead inputs (never nonzero in calibration): any value works for them; the reference zeroes them.
  at::Tensor dead = H.diagonal().eq(0);
  p.dead = dead.sum().item<int64_t>();
  if (p.dead > 0) {
    H = H.clone();
    H.diagonal().masked_fill_(dead, 1.0);
    W = W.masked_fill(dead.unsqueeze(0), 0.0);
  }
  p.in = in;
  p.gcols = o.spec.group_cols(in);
  p.n_groups = o.spec.n_groups(in);
  p.dynamic = o.spec.group_size > 0 && !o.static_groups;
  p.grids.resize(static_cast<size_t>(p.n_groups));
  if (!p.dynamic)  // per channel or static groups: contiguous groups of the original columns
    for (int64_t g = 0; g < p.n_groups; ++g)
      p.grids[size_t(g)] = fit(W.narrow(1, g * p.gcols, std::min(p.gcols, in - g * p.gcols)), o.spec, layer);
  if (o.act_order) {
    p.perm = std::get<1>(at::sort(H.diagonal(), /*stable=*/true, /*dim=*/0, /*descending=*/true));
    W = W.index_select(1, p.perm);
    H = H.index_select(0, p.perm).index_select(1, p.perm);
  } else {
    p.perm = at::arange(in, W.options().dtype(at::kLong));
  }
  const at::Tensor perm_cpu = p.perm.cpu();
  p.perm_v.assign(perm_cpu.data_ptr<int64_t>(), perm_cpu.data_ptr<int64_t>() + in);
  // Damping, then V = reversed lower Cholesky factor of the reversed damped H (gptq_prep.h); 10x more
  // damping while the factorization fails. One [in, in] buffer beside H (822 MB each at in = 14336, an
  // 8B model's down_proj): the reversed copy is factored in place and reversed in place into V.
  const double mean_diag = H.diagonal().mean().item<double>();
  for (int k = 0; k <= o.max_damp_retries; ++k) {
    const double rel = o.damp * std::pow(10.0, k);
    at::Tensor V = reversed_factor(H, rel * mean_diag);
    if (!V.defined()) continue;
    // potrf of a finite matrix with positive pivots gives a finite factor; float32 rounding of a
    // double one could still underflow a pivot to 0
    if (!V.diagonal().gt(0).all().item<bool>()) continue;
    p.V = V;
    p.H = H;
    p.damp_rel = rel;
    p.damp_abs = rel * mean_diag;
    p.retries = k;
    p.W = W;
    return p;
  }
  fail(kComp, where(layer), "Hessian [", in, ", ", in, "] is not positive definite even with damping ",
       o.damp * std::pow(10.0, o.max_damp_retries), " x mean(diag H) = ",
       o.damp * std::pow(10.0, o.max_damp_retries) * mean_diag, " after ", o.max_damp_retries,
       " retries (mean diag ", mean_diag, "; check the calibration statistics or raise damp)");
}

at::Tensor hinv_of(const Prep& p) {
  at::Tensor Hd = p.H.clone();
  Hd.diagonal().add_(p.damp_abs);
  auto [L, info] = at::linalg_cholesky_ex(Hd, /*upper=*/false, /*check_errors=*/false);
  if (info.item<int>() == 0) {
    auto [U, info2] = at::linalg_cholesky_ex(at::cholesky_inverse(L), /*upper=*/true, /*check_errors=*/false);
    if (info2.item<int>() == 0 && at::isfinite(U).all().item<bool>()) return U.to(at::kFloat).contiguous();
  }
  // Too ill-conditioned for the authors' route in this precision: U = V⁻¹ in double.
  const at::Tensor V = p.V.to(at::kDouble);
  return at::linalg_solve_triangular(V, at::eye(V.size(0), V.options()), /*upper=*/true).to(at::kFloat).contiguous();
}

GptqResult finish(const Prep& p, const GptqOptions& o, const at::Tensor& codes_perm, double loss) {
  const int64_t out = codes_perm.size(0), in = codes_perm.size(1);
  GptqResult r;
  r.quant.spec = o.spec;
  if (o.act_order) {  // back to the original column order
    r.quant.codes = at::empty({out, in}, codes_perm.options().dtype(at::kByte));
    r.quant.codes.index_copy_(1, p.perm, codes_perm.to(at::kByte));
  } else {
    r.quant.codes = codes_perm.to(at::kByte).contiguous();
  }
  std::vector<at::Tensor> s, z;
  for (const Grid& g : p.grids) s.push_back(g.scale), z.push_back(g.zero);
  r.quant.scales = at::stack(s, 1);
  r.quant.zeros = at::stack(z, 1);
  r.perm = p.perm;
  at::Tensor pos = at::arange(in, p.perm.options());
  if (p.dynamic)  // the column quantized k-th belongs to group k / gcols
    r.g_idx = at::empty({in}, p.perm.options()).index_copy_(0, p.perm, pos.div(p.gcols, "floor")).to(at::kInt);
  else
    r.g_idx = pos.div(p.gcols, "floor").to(at::kInt);
  if (!r.plain_groups()) r.quant.g_idx = r.g_idx;  // so that quant.dequantize() (and a packed file) is exact
  r.loss = loss / 2;
  r.damp_rel = p.damp_rel;
  r.damp_abs = p.damp_abs;
  r.damp_retries = p.retries;
  r.dead_columns = p.dead;
  return r;
}

void run_row_tasks(int64_t tasks, int64_t workers, const std::function<void(int64_t, int64_t)>& fn) {
  std::vector<std::thread> pool;
  const int64_t per = (tasks + std::max<int64_t>(1, workers) - 1) / std::max<int64_t>(1, workers);
  for (int64_t t0 = per; t0 < tasks; t0 += per) pool.emplace_back(fn, t0, std::min(tasks, t0 + per));
  fn(0, std::min(tasks, per));
  for (std::thread& th : pool) th.join();
}

}  // namespace gptq_detail

bool GptqResult::plain_groups() const {
  const int64_t in = g_idx.size(0);
  at::Tensor plain = at::arange(in, g_idx.options().dtype(at::kLong)).div(quant.spec.group_cols(in), "floor").to(at::kInt);
  return at::equal(plain, g_idx);
}

at::Tensor GptqResult::dequantize() const {
  at::Tensor gi = g_idx.to(at::kLong);
  at::Tensor s = quant.scales.to(at::kFloat).index_select(1, gi);
  at::Tensor z = quant.zeros.to(at::kFloat).index_select(1, gi);
  return quant.codes.to(at::kFloat).sub_(z).mul_(s);
}

}  // namespace mc

// HQQ with whole-tensor ATen ops (the algorithm is described in quant/hqq.h): every group of a block of
// rows is updated at once on a [rows, groups, group_cols] view, the ragged last group padded with
// zeros that a 0/1 mask keeps out of every sum. Rows go in blocks of about kBlockElems values, so the
// temporaries of the ~20 elementwise passes per update stay small (an 8B model's largest layer would
// otherwise need several GiB of them). Groups are independent, so the blocking does not change results.
#include "mcompress/quant/hqq.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "mcompress/error.h"
#include "quant/grouped.h"
#include "quant/hqq_check.h"

namespace mc {

namespace {

constexpr const char* kComp = "hqq";
// Values per row block: 2^20 floats (4 MiB per temporary) keeps peak memory a few tens of MiB whatever
// the layer, and the per-op overhead (a few us) small next to the work.
constexpr int64_t kBlockElems = int64_t(1) << 20;

std::string where(const std::string& layer) { return layer.empty() ? std::string() : "layer " + layer + ": "; }

// The loop of hqq.h on the rows x [r, in] (float32), starting from RTN's codes, scales and zeros;
// writes the chosen codes and zeros into codes_out [r, in] (uint8) and zeros_out [r, G] (float32).
void hqq_rows(const at::Tensor& x2, const QuantResult& rtn, int64_t r0, const QuantSpec& spec, const HqqOptions& o,
              at::Tensor codes_out, at::Tensor zeros_out) {
  const int64_t r = x2.size(0), in = x2.size(1);
  const int64_t gs = spec.group_cols(in), G = spec.n_groups(in);
  const double maxq = double((1 << spec.bits) - 1);
  const at::Tensor x = grouped_columns(x2, G, gs);
  const at::Tensor valid = grouped_columns(at::ones({1, in}, x2.options()), G, gs);  // [1, G, gs]: 1, or 0 for padding
  const at::Tensor count = valid.sum(-1, true, at::kDouble);                 // [1, G, 1]
  const at::Tensor s = rtn.scales.narrow(0, r0, r).unsqueeze(-1);            // [r, G, 1]
  const at::Tensor inv = at::reciprocal(s);
  at::Tensor z = rtn.zeros.narrow(0, r0, r).unsqueeze(-1);
  at::Tensor q = grouped_columns(rtn.codes.narrow(0, r0, r).to(at::kFloat), G, gs);
  at::Tensor best_q = q, best_z = z;
  at::Tensor best_err = at::full({r, G}, std::numeric_limits<double>::infinity(), x2.options().dtype(at::kDouble));
  double beta = o.beta;
  for (int t = 0;; ++t) {
    const at::Tensor d = x - (q - z).mul_(s);                           // w - W_r
    const at::Tensor err = d.abs().mul_(valid).sum(-1, false, at::kDouble);  // Σ |w - W_r| per group
    const at::Tensor better = err.lt(best_err);                          // only improving groups go on
    const at::Tensor b3 = better.unsqueeze(-1);
    best_err = at::where(better, err, best_err);
    best_q = at::where(b3, q, best_q);
    best_z = at::where(b3, z, best_z);
    if (t == o.iters || !better.any().item<bool>()) break;
    // W_e = sign(d) * relu(|d| - |d|^(p-1) / beta), the power in double (see hqq_ref.cpp).
    const at::Tensor a = d.abs();
    const at::Tensor thr = a.to(at::kDouble).pow(o.lp_norm - 1.0).to(at::kFloat).mul_(float(1.0 / beta));
    const at::Tensor we = (a - thr).relu_().mul_(d.sign());
    // z = mean(q - (w - W_e) * inv), summed in double, rounded to float16 before anything uses it.
    const at::Tensor term = q - (x - we).mul_(inv);
    const at::Tensor z_new =
        term.mul_(valid).sum(-1, true, at::kDouble).div_(count).to(at::kFloat).to(at::kHalf).to(at::kFloat);
    z = at::where(b3, z_new, z);
    q = at::where(b3, x.mul(inv).add_(z).round_().clamp_(0.0, maxq), q);
    beta *= o.kappa;
  }
  codes_out.copy_(best_q.reshape({r, G * gs}).narrow(1, 0, in));
  zeros_out.copy_(best_z.squeeze(-1));
}

}  // namespace

void HqqOptions::validate() const {
  if (iters < 0 || iters > 1000) fail(kComp, "iterations ", iters, " outside 0..1000");
  if (!(lp_norm > 0 && lp_norm <= 1)) fail(kComp, "lp norm ", lp_norm, " outside (0, 1]");
  if (!(beta > 0) || !std::isfinite(beta)) fail(kComp, "beta ", beta, " must be > 0");
  if (!(kappa >= 1) || !std::isfinite(kappa)) fail(kComp, "kappa ", kappa, " must be >= 1");
}

void hqq_check(const at::Tensor& w, const QuantSpec& spec, const HqqOptions& o, const std::string& layer) {
  if (w.dim() != 2) fail(kComp, where(layer), "expected a 2-D weight [out, in], got ", w.dim(), " dims");
  spec.validate(layer, w.size(1));
  if (spec.symmetric)
    fail(kComp, where(layer), "symmetric grids are not supported: HQQ fits each group's zero point (use --asym)");
  if (spec.group_size < 0)
    fail(kComp, where(layer), "per-tensor grids are not supported (use groups or --per-channel)");
  o.validate();
}

QuantResult hqq_quantize(const at::Tensor& w, const QuantSpec& spec, const HqqOptions& o, const std::string& layer) {
  hqq_check(w, spec, o, layer);
  const at::Tensor x = w.detach().to(at::kFloat).contiguous();
  QuantResult r = rtn_quantize(x, spec, layer);  // the start, and candidate 0
  const int64_t out = x.size(0), in = x.size(1);
  if (o.iters == 0 || out == 0) return r;
  at::Tensor codes = at::empty_like(r.codes), zeros = at::empty_like(r.zeros);
  const int64_t block = x.is_cpu() ? std::max<int64_t>(1, kBlockElems / in) : out;
  for (int64_t b = 0; b < out; b += block) {
    const int64_t n = std::min(block, out - b);
    hqq_rows(x.narrow(0, b, n), r, b, spec, o, codes.narrow(0, b, n), zeros.narrow(0, b, n));
  }
  r.codes = codes;
  r.zeros = zeros;
  return r;
}

}  // namespace mc

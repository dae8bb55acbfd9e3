#include "mcompress/quant/imatrix.h"

#include <ATen/ATen.h>

#include "mcompress/error.h"
#include "quant/grouped.h"

namespace mc {

namespace {

constexpr const char* kComp = "imatrix";

std::string where(const std::string& layer) { return layer.empty() ? std::string() : "layer " + layer + ": "; }

// Scales rounded to the nearest float16 (at least the smallest positive one).
at::Tensor nearest_f16(const at::Tensor& s) {
  return s.clamp(6e-8, 65504.0).to(at::kHalf).to(at::kFloat).clamp_min_(5.96046448e-08f);
}

struct Candidate {
  at::Tensor codes;  // float [out, G, gs]
  at::Tensor scale;  // float [out, G, 1]
  at::Tensor zero;   // float [out, G, 1]
  at::Tensor err;    // double [out, G]
};

Candidate evaluate(const at::Tensor& x, const at::Tensor& imp, at::Tensor codes, at::Tensor scale, at::Tensor zero) {
  at::Tensor d = (codes - zero).mul_(scale).sub_(x);
  at::Tensor err = (d.mul_(d).mul_(imp)).sum(-1, false, at::kDouble);
  return {std::move(codes), std::move(scale), std::move(zero), std::move(err)};
}

void keep_better(Candidate& best, const Candidate& c) {
  at::Tensor better = c.err.lt(best.err);
  at::Tensor b3 = better.unsqueeze(-1);
  best.err = at::where(better, c.err, best.err);
  best.codes = at::where(b3, c.codes, best.codes);
  best.scale = at::where(b3, c.scale, best.scale);
  best.zero = at::where(b3, c.zero, best.zero);
}

// Codes of x on (scale, zero): clamp(round(x / scale + zero), 0, maxq).
at::Tensor codes_on(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero, int maxq) {
  return x.div(scale).add_(zero).round_().clamp_(0, maxq);
}

// Weighted least-squares scale for fixed codes and zero; where undefined (all codes at the zero
// point or no weight), the given fallback.
at::Tensor refit_scale(const at::Tensor& x, const at::Tensor& imp, const at::Tensor& codes, const at::Tensor& zero,
                       const at::Tensor& fallback) {
  at::Tensor l = codes - zero;
  at::Tensor num = (imp * x * l).sum(-1, true), den = (imp * l * l).sum(-1, true);
  at::Tensor s = num.div(den);
  at::Tensor ok = den.gt(0).logical_and_(s.gt(0)).logical_and_(at::isfinite(s));
  return at::where(ok, nearest_f16(at::where(ok, s, fallback)), fallback);
}

}  // namespace

at::Tensor weighted_group_error(const at::Tensor& w, const at::Tensor& w_hat, const at::Tensor& importance,
                                const QuantSpec& spec) {
  const int64_t in = w.size(1), gs = spec.group_cols(in), G = (in + gs - 1) / gs;
  at::Tensor d = (w.to(at::kDouble) - w_hat.to(at::kDouble)).pow(2).mul(importance.to(at::kDouble));
  return grouped_columns(d, G, gs, 0.0).sum(-1);
}

QuantResult imatrix_quantize(const at::Tensor& w, const QuantSpec& spec, const at::Tensor& importance,
                             const std::string& layer) {
  if (w.dim() != 2) fail(kComp, where(layer), "expected a 2-D weight [out, in], got ", w.dim(), " dims");
  const int64_t out = w.size(0), in = w.size(1);
  spec.validate(layer, in);
  if (spec.group_size < 0) fail(kComp, where(layer), "per-tensor grids are not supported (use groups or per-channel)");
  if (importance.dim() != 1 || importance.size(0) != in)
    fail(kComp, where(layer), "importance has ", importance.numel(), " values for ", in, " input columns");
  at::Tensor x2 = w.detach().to(at::kFloat).contiguous();
  if (!at::isfinite(x2).all().item<bool>()) fail(kComp, where(layer), "weights contain NaN or Inf");
  at::Tensor imp1 = importance.detach().to(at::kFloat).to(x2.device());
  if (!at::isfinite(imp1).all().item<bool>() || imp1.lt(0).any().item<bool>())
    fail(kComp, where(layer), "importance must be finite and >= 0");

  // RTN first: its grid is the first candidate (and the whole answer when nothing is important).
  QuantResult r = rtn_quantize(x2, spec, layer);
  const double mean_imp = imp1.mean().item<double>();
  if (!(mean_imp > 0) || out == 0) return r;
  // Normalised, with a small floor so columns that never saw input still get a sensible grid.
  imp1 = imp1.div(mean_imp).add_(1e-4);

  const int64_t gs = spec.group_cols(in), G = spec.n_groups(in);
  const int maxq = (1 << spec.bits) - 1;
  const at::Tensor x = grouped_columns(x2, G, gs, 0.0);
  const at::Tensor imp = grouped_columns(imp1.unsqueeze(0), G, gs, 0.0);  // [1, G, gs]: padding weighs nothing
  Candidate best = evaluate(x, imp, grouped_columns(r.codes.to(at::kFloat), G, gs, 0.0), r.scales.unsqueeze(-1),
                            r.zeros.unsqueeze(-1));
  // The padded codes must not matter: they sit at the zero point with weight 0.
  if (spec.symmetric) {
    const at::Tensor zero = best.zero;
    const at::Tensor s_rtn = best.scale;
    for (int k = -10; k <= 5; ++k) {
      const at::Tensor s = nearest_f16(s_rtn * (1.0 + 0.02 * k));
      at::Tensor codes = codes_on(x, s, zero, maxq);
      at::Tensor s1 = refit_scale(x, imp, codes, zero, s);
      keep_better(best, evaluate(x, imp, codes, s1, zero));
      at::Tensor codes2 = codes_on(x, s1, zero, maxq);
      keep_better(best, evaluate(x, imp, codes2, refit_scale(x, imp, codes2, zero, s1), zero));
    }
  } else {
    const at::Tensor lo = x.amin(-1, true).clamp_max_(0), hi = x.amax(-1, true).clamp_min_(0);
    for (int i = 0; i <= 8; ++i) {
      const double p = 1.0 - 0.05 * i;
      at::Tensor s = round_up_to_f16((hi - lo).mul_(p / maxq));
      s.masked_fill_(s.eq(0), 1.0);
      const at::Tensor zero = lo.mul(-p).div_(s).round_().clamp_(0, maxq);
      at::Tensor codes = codes_on(x, s, zero, maxq);
      keep_better(best, evaluate(x, imp, codes, s, zero));
      keep_better(best, evaluate(x, imp, codes, refit_scale(x, imp, codes, zero, s), zero));
    }
  }
  r.codes = best.codes.reshape({out, G * gs}).narrow(1, 0, in).to(at::kByte).contiguous();
  r.scales = best.scale.squeeze(-1).contiguous();
  r.zeros = best.zero.squeeze(-1).contiguous();
  return r;
}

}  // namespace mc

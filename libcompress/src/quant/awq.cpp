// AWQ's scale search and clip search (awq.h): whole-tensor ATen ops per candidate, no element loops.
#include "mcompress/quant/awq.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "mcompress/error.h"
#include "quant/grouped.h"

namespace mc {

namespace {

constexpr const char* kComp = "awq";
constexpr int kAwqClipSteps = 10;  // clip ratio 1.00, 0.95, ..., 0.55

double tr_dhd(const at::Tensor& D, const at::Tensor& H) { return (at::matmul(D, H) * D).sum().item<double>(); }

// Evenly spaced rows (all when out <= n or n <= 0).
at::Tensor row_sample(const at::Tensor& W, int64_t n) {
  if (n <= 0 || W.size(0) <= n) return W;
  at::Tensor idx = at::linspace(0, double(W.size(0) - 1), n, W.options()).round().to(at::kLong);
  return W.index_select(0, idx);
}

// awq_clip on rows of W (the search is per row and group): Hb = H's diagonal blocks [G, gs, gs].
at::Tensor clip_rows(const at::Tensor& W, const at::Tensor& Hb, const QuantSpec& spec, const std::string& layer,
                     int64_t G, int64_t gs) {
  const int64_t out = W.size(0), in = W.size(1);
  const at::Tensor Wg = grouped_columns(W, G, gs);
  at::Tensor hi, lo;
  if (spec.symmetric) {
    hi = Wg.abs().amax(-1, true);
    lo = hi.neg();
  } else {
    hi = Wg.amax(-1, true).clamp_min(0);
    lo = Wg.amin(-1, true).clamp_max(0);
  }
  at::Tensor best_err, best_r = at::ones({out, G, 1}, W.options());
  for (int i = 0; i < kAwqClipSteps; ++i) {
    const double r = 1.0 - 0.05 * i;
    at::Tensor Wc = at::minimum(at::maximum(Wg, lo * r), hi * r);
    at::Tensor Wq = rtn_quantize(Wc.reshape({out, G * gs}).narrow(1, 0, in), spec, layer).dequantize();
    at::Tensor D = (Wg - grouped_columns(Wq, G, gs)).transpose(0, 1);  // [G, out, gs]
    at::Tensor err = (at::bmm(D, Hb) * D).sum(-1).t();           // [out, G]
    if (i == 0) {
      best_err = err;
      continue;
    }
    at::Tensor better = err.lt(best_err);
    best_err = at::where(better, err, best_err);
    best_r = at::where(better.unsqueeze(-1), at::full_like(best_r, r), best_r);
  }
  at::Tensor Wc = at::minimum(at::maximum(Wg, lo * best_r), hi * best_r);
  return Wc.reshape({out, G * gs}).narrow(1, 0, in);
}

}  // namespace

AwqScales awq_search_scales(const at::Tensor& x_mean_abs, const at::Tensor& H0, const std::vector<at::Tensor>& weights,
                            const std::vector<QuantSpec>& specs, const AwqSearchOptions& o,
                            const std::vector<std::string>& names) {
  if (weights.empty()) fail(kComp, "scale search needs at least one weight");
  if (specs.size() != 1 && specs.size() != weights.size())
    fail(kComp, "scale search: ", specs.size(), " specs for ", weights.size(), " weights (give one, or one per weight)");
  if (o.grid < 1) fail(kComp, "scale search grid ", o.grid, " must be >= 1");
  if (x_mean_abs.dim() != 1) fail(kComp, "mean |x| must be 1-D [channels], got ", x_mean_abs.sizes());
  if (H0.dim() != 2 || H0.size(0) != H0.size(1)) fail(kComp, "H must be square [in, in], got ", H0.sizes());
  const int64_t in = H0.size(0);
  auto name = [&](size_t c) { return c < names.size() ? names[c] : "weight " + std::to_string(c); };
  for (size_t c = 0; c < weights.size(); ++c) {
    if (weights[c].dim() != 2 || weights[c].size(1) != in)
      fail(kComp, name(c), ": weight ", weights[c].sizes(), " does not read H's ", in, " input channels");
    specs.size() == 1 ? specs[0].validate(name(c), in) : specs[c].validate(name(c), in);
  }
  const at::Tensor xm = x_mean_abs.to(at::kFloat);
  AwqScales r;
  if (!(xm.max().item<double>() > 0)) return r;
  const at::Tensor H = H0.to(at::kFloat);
  std::vector<at::Tensor> Ws;
  for (const auto& w : weights) Ws.push_back(row_sample(w.to(at::kFloat), o.max_rows));
  double best = std::numeric_limits<double>::infinity();
  const double step = 1.0 / o.grid;  // 0.05 exactly as the literal for the default grid
  for (int i = 0; i < o.grid; ++i) {
    const double alpha = step * i;
    at::Tensor s = xm.pow(alpha).clamp_min_(1e-4);
    s.div_(std::sqrt(s.max().item<double>() * s.min().item<double>()));
    const at::Tensor se = o.expand ? o.expand(s) : s;
    if (i == 0 && se.numel() != in)
      fail(kComp, "mean |x| gives ", se.numel(), " input channels, the weights read ", in);
    double err = 0;
    for (size_t c = 0; c < Ws.size(); ++c) {
      const QuantSpec& sp = specs.size() == 1 ? specs[0] : specs[c];
      at::Tensor Q = rtn_quantize(Ws[c] * se, sp, name(c)).dequantize().div_(se);
      err += tr_dhd(Ws[c] - Q, H);
    }
    r.errors.push_back(err);
    if (err < best) best = err, r.scales = s, r.alpha_index = i, r.alpha = alpha;
  }
  return r;
}

at::Tensor awq_clip(const at::Tensor& W, const at::Tensor& H, const QuantSpec& spec, const std::string& layer,
                    int64_t chunk_weights) {
  if (W.dim() != 2 || H.dim() != 2 || H.size(0) != W.size(1) || H.size(1) != W.size(1))
    fail(kComp, layer.empty() ? "" : layer + ": ", "clip search needs W [out, in] and H [in, in], got ", W.sizes(),
         " and ", H.sizes());
  spec.validate(layer, W.size(1));
  const int64_t out = W.size(0), in = W.size(1), gs = spec.group_cols(in), G = spec.n_groups(in);
  if (spec.group_size < 0) return W;
  at::Tensor Hp = G * gs == in ? H : at::constant_pad_nd(H, {0, G * gs - in, 0, G * gs - in}, 0.0);
  // Diagonal blocks [G, gs, gs].
  const at::Tensor Hb = at::diagonal(Hp.reshape({G, gs, G, gs}), 0, 0, 2).permute({2, 0, 1}).contiguous();
  // Each (row, group) picks its ratio alone: rows go in chunks (~16M weights by default), so the ~8
  // full-size temporaries of a candidate stay small (an 8B down_proj is 235 MB per copy; whole, they set
  // AWQ's peak).
  const int64_t chunk = std::max<int64_t>(1, chunk_weights / std::max<int64_t>(1, G * gs));
  at::Tensor result = at::empty({out, in}, W.options());
  for (int64_t r0 = 0; r0 < out; r0 += chunk) {
    const int64_t rows = std::min(chunk, out - r0);
    result.narrow(0, r0, rows).copy_(clip_rows(W.narrow(0, r0, rows), Hb, spec, layer, G, gs));
  }
  return result;
}

}  // namespace mc

// The quantize methods on one layer (ptq_methods.h).
#include "ptq_methods.h"

#include <ATen/ATen.h>

#include "mcompress/error.h"
#include "mcompress/model.h"
#include "mcompress/prune/sparsegpt.h"
#include "mcompress/ptq.h"
#include "mcompress/quant/awq.h"
#include "mcompress/quant/gptq.h"
#include "mcompress/quant/hessian.h"
#include "mcompress/quant/hqq.h"
#include "mcompress/quant/imatrix.h"
#include "mcompress/quant/smoothquant.h"
#include "core/format_number.h"

namespace mc {

namespace {

constexpr const char* kComp = "quantize";

LayerOutcome codes(QuantResult q) {
  LayerOutcome z;
  z.weight = q.dequantize();
  z.quant = std::move(q);
  return z;
}

}  // namespace

LayerOutcome rtn_layer(const LayerInputs& in, const QuantSpec& spec, const PtqOptions&) {
  return codes(rtn_quantize(in.W, spec, in.name));
}

LayerOutcome hqq_layer(const LayerInputs& in, const QuantSpec& spec, const PtqOptions& o) {
  HqqOptions h;
  h.iters = o.hqq_iters;
  return codes(hqq_quantize(in.W, spec, h, in.name));
}

LayerOutcome imatrix_layer(const LayerInputs& in, const QuantSpec& spec, const PtqOptions&) {
  return codes(imatrix_quantize(in.W, spec, in.H.diagonal(), in.name));
}

LayerOutcome awq_layer(const LayerInputs& in, const QuantSpec& spec, const PtqOptions& o) {
  return codes(rtn_quantize(o.awq_clip ? awq_clip(in.W, in.H, spec, in.name) : in.W, spec, in.name));
}

LayerOutcome gptq_layer(const LayerInputs& in, const QuantSpec& spec, const PtqOptions& o) {
  const at::Tensor& W = in.W;
  LayerOutcome z;
  if (o.keep_sparsity && W.eq(0).any().item<bool>()) {
    SparseGptOptions so;
    so.mask = W.ne(0);
    so.quant = &spec;
    so.damp = o.damp;
    so.block_size = o.block_size;
    SparseGptResult r = sparsegpt_prune(W, in.H, so, in.name);
    if (r.damp_retries)
      z.warnings.push_back(in.name + ": Cholesky needed " + std::to_string(r.damp_retries) + " retries");
    z.note = format_number("%.1f%% zeros kept", 100.0 * (1.0 - so.mask.to(at::kDouble).mean().item<double>()));
    z.weight = r.weight;
    z.quant = std::move(*r.quant);
    return z;
  }
  GptqOptions go;
  go.spec = spec, go.damp = o.damp, go.act_order = o.act_order, go.static_groups = o.static_groups;
  go.block_size = o.block_size;
  GptqResult g = gptq_quantize(W, in.H, go, in.name);
  if (g.damp_retries)
    z.warnings.push_back(in.name + ": Cholesky needed " + std::to_string(g.damp_retries) +
                         " retries; damping raised to " + format_number("%g", g.damp_rel) + " of mean(diag H)");
  if (g.dead_columns) z.note = std::to_string(g.dead_columns) + " dead input columns";
  z.weight = g.dequantize();
  z.quant = std::move(g.quant);
  return z;
}

// AWQ: s = mean|x|^α (normalised), α minimising Σ_c tr(D H Dᵀ) with D = W - Q(W s)/s (quant/awq.h).
// The returned s is per prev channel; the consumers read g.expand(s).
at::Tensor awq_group_scales(const ScaleGroupInputs& in, const PtqOptions&, std::string& note) {
  const ScaleGroup& g = in.group;
  const at::Tensor xm = g.reduce(in.stats.mean_abs().to(at::kFloat).to(in.device));
  AwqSearchOptions ao;
  ao.expand = [&g](const at::Tensor& s) { return g.expand(s); };
  AwqScales r = awq_search_scales(xm, in.stats.hessian(), in.weights, in.specs, ao, in.names);
  if (r.scales.defined()) note = "awq alpha " + format_number("%.2f", r.alpha);
  return r.scales;
}

at::Tensor smoothquant_group_scales(const ScaleGroupInputs& in, const PtqOptions& o, std::string& note) {
  const at::Tensor xmax = in.stats.max_abs().to(at::kFloat).to(in.device);
  at::Tensor s = smoothquant_scales(xmax, in.weights, o.smooth_alpha);
  if (s.defined()) note = "smoothed, alpha " + format_number("%.2f", o.smooth_alpha);
  return s;
}

const char* awq_without_scales(const PtqOptions& o) { return o.awq_clip ? "rtn+clip" : "rtn"; }

const char* smoothquant_without_scales(const PtqOptions&) { return "rtn"; }

void check_gptq_options(const PtqOptions& o) {
  if (o.keep_sparsity && o.act_order) fail(kComp, "--keep-sparsity with gptq does not support --act-order");
}

void check_smoothquant_options(const PtqOptions& o) {
  if (o.act_bits < 2 || o.act_bits > 8) fail(kComp, "activation bits ", o.act_bits, " outside 2..8");
  if (!(o.smooth_alpha >= 0 && o.smooth_alpha <= 1))
    fail(kComp, "SmoothQuant alpha ", o.smooth_alpha, " outside [0, 1]");
}

void check_hqq_options(const PtqOptions& o) {
  HqqOptions h;
  h.iters = o.hqq_iters;
  h.validate();
  if (o.keep_sparsity)
    fail(kComp, "--keep-sparsity does not apply to hqq: a fractional zero point cannot hold a pruned weight's exact 0");
  if (o.spec.symmetric) fail(kComp, "--method hqq needs an asymmetric grid (it fits each group's zero point)");
  for (const auto& ov : o.overrides)
    if (ov.spec.symmetric)
      fail(kComp, "override '", ov.patterns.empty() ? std::string() : ov.patterns[0], "' is symmetric: --method hqq "
           "needs asymmetric grids (it fits each group's zero point)");
}

}  // namespace mc

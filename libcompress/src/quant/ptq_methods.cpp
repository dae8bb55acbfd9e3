// The quantize methods on one layer (ptq_methods.h).
#include "ptq_methods.h"

#include <ATen/ATen.h>

#include "mcompress/error.h"
#include "mcompress/model.h"
#include "mcompress/prune/sparsegpt.h"
#include "mcompress/ptq.h"
#include "mcompress/quant/autoround.h"
#include "mcompress/quant/awq.h"
#include "mcompress/quant/gptq.h"
#include "mcompress/quant/hessian.h"
#include "mcompress/quant/hqq.h"
#include "mcompress/quant/imatrix.h"
#include "mcompress/quant/smoothquant.h"
#include "mcompress/rng.h"
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

std::vector<LayerOutcome> autoround_block(const BlockTuneInputs& in, const PtqOptions& o) {
  Model& m = in.model;
  const int k = in.block;
  // Tuned in float32 whatever the model computes in (bf16 matmuls would round the gradients' inputs too).
  const bool bf16 = m.compute_bf16();
  m.set_compute_bf16(false);
  std::vector<at::Tensor> originals;  // the parameters as stored, bound back at the end
  auto restore = [&] {
    for (size_t i = 0; i < originals.size(); ++i) m.bind_param(in.layers[i]->weight, originals[i]);
    m.set_compute_bf16(bf16);
  };
  try {
    // Targets: the float block's outputs on the same inputs (the outputs of the blocks already quantized).
    std::vector<at::Tensor> targets;
    {
      at::NoGradGuard no_grad;
      for (const auto& x : in.inputs) targets.push_back(m.run_block(k, x));
    }
    std::vector<std::pair<size_t, int64_t>> seqs;  // (forward batch, row) of every calibration sequence
    for (size_t b = 0; b < in.inputs.size(); ++b)
      for (int64_t r = 0; r < in.inputs[b].size(0); ++r) seqs.emplace_back(b, r);
    const size_t n = seqs.size();
    const size_t batch = std::min<size_t>(std::max<int64_t>(1, o.autoround_batch), n);
    // Mini-batches: consecutive runs of a shuffled order, reshuffled when used up; seeded per block.
    SplitMix64 rng{o.autoround_seed ^ (0x9e3779b97f4a7c15ull * uint64_t(k + 1))};
    std::vector<size_t> order(n);
    for (size_t i = 0; i < n; ++i) order[i] = i;
    size_t pos = n;
    auto gather = [&](const std::vector<at::Tensor>& src, size_t from) {
      std::vector<at::Tensor> rows;
      for (size_t i = from; i < from + batch; ++i) rows.push_back(src[seqs[order[i]].first].narrow(0, seqs[order[i]].second, 1));
      return rows.size() == 1 ? rows[0] : at::cat(rows, 0);
    };
    std::vector<at::Tensor> weights;
    std::vector<std::string> names;
    std::vector<AutoRoundGrid> grids;
    for (size_t i = 0; i < in.layers.size(); ++i) {
      const LayerInfo* l = in.layers[i];
      originals.push_back(m.param(l->weight));
      weights.push_back(originals.back().to(at::kFloat).reshape({originals.back().size(0), -1}));
      names.push_back(l->name);
      grids.push_back(o.autoround_kquant && fits_kquant_lattice(in.specs[i], weights.back().size(1)) ? AutoRoundGrid::kquant
                                                                                                      : AutoRoundGrid::rtn);
    }
    AutoRoundLoss loss = [&](const std::vector<at::Tensor>& wq, int) {
      for (size_t i = 0; i < wq.size(); ++i) m.bind_param(in.layers[i]->weight, wq[i].reshape(originals[i].sizes()));
      if (pos + batch > n) {
        for (size_t i = n - 1; i > 0; --i) std::swap(order[i], order[rng.below(i + 1)]);
        pos = 0;
      }
      const at::Tensor x = gather(in.inputs, pos), y = gather(targets, pos);
      pos += batch;
      return (m.run_block(k, x) - y).pow(2).mean();
    };
    AutoRoundOptions ao;
    ao.iters = o.autoround_iters, ao.lr = o.autoround_lr, ao.minmax_lr = o.autoround_minmax_lr;
    ao.minmax = o.autoround_minmax;
    AutoRoundTuned r = autoround_tune(weights, in.specs, loss, ao, names, grids);
    restore();
    std::vector<LayerOutcome> out;
    for (size_t i = 0; i < r.quant.size(); ++i) {
      QuantResult& q = r.quant[i];
      LayerOutcome z;
      z.weight = q.dequantize();
      z.quant = std::move(q);
      const char* start = grids[i] == AutoRoundGrid::kquant ? " (K-quant lattice start)" : " (rtn)";
      z.note = "block loss " + format_number("%.4g", r.first_loss) + start + " -> " + format_number("%.4g", r.best_loss) +
               " (step " + std::to_string(r.best_iter) + " of " + std::to_string(o.autoround_iters) + ")";
      if (o.autoround_kquant)
        z.note += grids[i] == AutoRoundGrid::kquant
                      ? std::string("; Q") + std::to_string(in.specs[i].bits) + "_K lattice"
                      : "; plain grid (the K-quant lattice needs bits 4/5, asym, g32, rows of a multiple of 256)";
      out.push_back(std::move(z));
    }
    return out;
  } catch (...) {
    restore();
    throw;
  }
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

void check_autoround_options(const PtqOptions& o) {
  AutoRoundOptions a;
  a.iters = o.autoround_iters, a.lr = o.autoround_lr, a.minmax_lr = o.autoround_minmax_lr;
  a.validate();
  if (o.autoround_batch < 1) fail(kComp, "autoround batch ", o.autoround_batch, " must be >= 1");
  if (o.keep_sparsity)
    fail(kComp, "--keep-sparsity does not apply to autoround: its rounding offsets can move a pruned weight off 0");
  if (o.spec.group_size < 0) fail(kComp, "--method autoround needs groups or per-channel grids (its variables are per group)");
}

}  // namespace mc

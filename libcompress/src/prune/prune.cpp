// prune_model (see prune.h): the option checks, the per-layer sparsities (uniform, global magnitude,
// OWL) and the pass over the blocks. The methods come from the method table (methods.h), the block loop
// and its journal from block_driver.h.
#include "mcompress/prune/prune.h"

#include <ATen/ATen.h>

#include <set>

#include "mcompress/block_driver.h"
#include "mcompress/error.h"
#include "mcompress/methods.h"
#include "mcompress/model.h"
#include "mcompress/prune/magnitude.h"
#include "mcompress/prune/owl.h"
#include "mcompress/ptq.h"
#include "mcompress/quant/hessian.h"
#include "core/format_number.h"

namespace mc {

namespace {

constexpr const char* kComp = "prune";

bool is_nm(const PruneOptions& o) { return o.prune_n > 0 || o.prune_m > 0; }

}  // namespace

std::vector<const LayerInfo*> prune_layers(const Model& model, const PruneOptions& o) {
  const MethodInfo& method = *find_method(MethodKind::Prune, o.method);
  const bool nm = is_nm(o);
  if (!nm && !(o.sparsity >= 0 && o.sparsity < 1)) fail(kComp, "--sparsity ", o.sparsity, " outside [0, 1)");
  if (nm && (o.prune_n < 1 || o.prune_m < 2 || o.prune_n >= o.prune_m))
    fail(kComp, "N:M pattern ", o.prune_n, ":", o.prune_m, " needs 1 <= N < M");
  static const std::set<std::string> dists = {"uniform", "global", "owl"};
  if (!dists.count(o.distribution))
    fail(kComp, "--distribution '", o.distribution, "' is not available (allowed: uniform, global, owl)");
  if (nm && o.distribution != "uniform") fail(kComp, "N:M patterns fix the sparsity: --distribution must be uniform");
  if (o.distribution == "global" && !method.global_distribution)
    fail(kComp, "--distribution global compares scores across layers: magnitude only (use owl for ", o.method, ")");
  if (o.quant) o.quant->validate("(all layers)", 1 << 30);
  PtqOptions sel;
  sel.targets = o.targets, sel.ignore = o.ignore;
  sel.spec.group_size = 0;
  std::vector<const LayerInfo*> layers = select_layers(model, sel);
  for (const LayerInfo* l : layers) {
    const int64_t in = model.param(l->weight).numel() / model.param(l->weight).size(0);
    if (nm) check_nm_pattern(o.prune_n, o.prune_m, in, l->name);
    if (o.quant) o.quant->validate(l->name, in);
  }
  return layers;
}

PruneResult prune_model(Model& model, const at::Tensor& calib, const PruneOptions& o) {
  const std::vector<const LayerInfo*> layers = prune_layers(model, o);
  const MethodInfo& method = *find_method(MethodKind::Prune, o.method);
  if (method.needs_calibration && !calib.defined())
    fail(kComp, "--method ", o.method, " needs calibration data (--calib DATA)");
  if (o.distribution == "owl" && !calib.defined()) fail(kComp, "--distribution owl needs calibration data");
  PruneResult res;
  std::map<std::string, double> sparsity_of;
  for (const LayerInfo* l : layers) sparsity_of[l->name] = o.sparsity;

  if (o.distribution == "global") {
    std::vector<at::Tensor> weights;
    for (const LayerInfo* l : layers) weights.push_back(model.param(l->weight));
    const std::vector<double> sp = global_magnitude_sparsities(weights, o.sparsity);
    for (size_t i = 0; i < layers.size(); ++i) sparsity_of[layers[i]->name] = sp[i];
  }

  const LayerSplit split = split_layers(layers, calib.defined());
  SequentialOptions so;
  so.batch = o.batch, so.fp64 = o.fp64, so.true_sequential = o.true_sequential;
  so.pass_progress = o.pass_progress;
  if (o.distribution == "owl" && !split.in_blocks.empty()) {
    const OwlAllocation a = owl_scan(model, calib, split.in_blocks, so, o.journal,
                                     {o.sparsity, o.owl_lambda, o.owl_threshold});
    for (const LayerInfo* l : layers) {
      auto it = a.block_sparsity.find(l->block);
      if (it != a.block_sparsity.end()) sparsity_of[l->name] = it->second;
    }
    res.settings["owl"] = a.summary;
  }

  int64_t done = 0, total = static_cast<int64_t>(layers.size());
  double zeros = 0, count = 0;
  auto prune_one = [&](const LayerInfo& l, const HessianAccumulator* st) {
    if (o.progress) o.progress("prune", l, ++done, total);
    if (!st && method.needs_calibration)
      fail(kComp, "layer ", l.name, " lies outside the blocks: ", o.method, " needs its calibration inputs");
    const at::Tensor w_full = model.param(l.weight);
    const at::Tensor W = w_full.to(at::kFloat).reshape({w_full.size(0), -1});
    const at::Tensor H = st ? st->hessian().to(at::kFloat) : at::Tensor();
    LayerOutcome z = method.prune_layer({l.name, W, st, H}, sparsity_of.at(l.name), o);
    for (auto& w : z.warnings) res.warnings.push_back(std::move(w));
    std::string scheme = o.method + (is_nm(o) ? " " + std::to_string(o.prune_n) + ":" + std::to_string(o.prune_m) : "");
    if (z.quant) scheme += " + " + z.quant->spec.describe();
    const double zs = z.weight.eq(0).sum().item<double>();
    zeros += zs, count += double(W.numel());
    const std::string zeros_note = format_number("%.1f%% zeros", 100.0 * zs / double(W.numel()));
    LayerRow row = layer_row(l, w_full, scheme, zeros_note + (z.note.empty() ? "" : "; " + z.note));
    if (H.defined()) row.rel_output_error = relative_output_error(output_error(W - z.weight, H), W, H);
    res.layers.push_back(row);
    model.set_param(l.weight, z.weight.reshape(w_full.sizes()));
    res.pruned[l.weight] = {z.weight, std::move(z.quant)};
  };

  BlockPass pass;
  pass.phase = "prune";
  pass.compress = [&](int, const std::vector<const LayerInfo*>& ls, const BlockStats& st) {
    for (const LayerInfo* l : ls) prune_one(*l, st.at(l->name));
  };
  pass.rows = &res.layers, pass.warnings = &res.warnings;
  // A block's pruned weights (and codes) in the journal, by weight key.
  pass.save = [&](int k, BlockJournal::Entry& e) {
    for (const auto& l : model.layers()) {
      auto p = res.pruned.find(l.weight);
      if (l.block != k || p == res.pruned.end() || e.tensors.count(l.weight)) continue;
      e.tensors[l.weight] = p->second.weight;
      if (p->second.quant) journal_put_quant(e.tensors, l.weight, *p->second.quant);
    }
  };
  pass.restore = [&](int k, const BlockJournal::Entry& e) {
    for (const auto& l : model.layers()) {
      auto w = e.tensors.find(l.weight);
      if (l.block != k || w == e.tensors.end() || res.pruned.count(l.weight)) continue;
      std::optional<QuantResult> q;
      if (e.tensors.count(l.weight + ".grid")) q = journal_get_quant(e.tensors, l.weight);
      zeros += w->second.eq(0).sum().item<double>(), count += double(w->second.numel());
      model.set_param(l.weight, w->second.reshape(model.param(l.weight).sizes()));
      res.pruned[l.weight] = {w->second, std::move(q)};
      ++done;
    }
  };
  pass.after_block = [&](int k) {
    if (o.after_block) o.after_block(k, res);
  };
  run_block_pass(model, calib, split.in_blocks, so, o.journal, pass);
  for (const LayerInfo* l : split.outside) {
    prune_one(*l, nullptr);
    if (o.after_block) o.after_block(-1, res);
  }
  res.sparsity = count > 0 ? zeros / count : 0.0;
  sort_rows(model, res.layers);
  return res;
}

}  // namespace mc

// prune_model and the masks (see prune.h).
#include "mcompress/prune/prune.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "mcompress/calib.h"
#include "mcompress/error.h"
#include "mcompress/journal.h"
#include "mcompress/model.h"
#include "mcompress/prune/sparsegpt.h"
#include "mcompress/ptq.h"
#include "mcompress/quant/hessian.h"
#include "mcompress/tensor.h"

namespace mc {

namespace {

constexpr const char* kComp = "prune";

std::string fmtd(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

double tr_dhd(const at::Tensor& D, const at::Tensor& H) { return (at::matmul(D, H) * D).sum().item<double>(); }

// Stable ranks: positions of the k smallest scores along the last dim (ties: lower index first).
at::Tensor drop_smallest(const at::Tensor& score, int64_t k) {
  at::Tensor keep = at::ones(score.sizes(), score.options().dtype(at::kBool));
  if (k <= 0) return keep;
  // Stable sort keeps ties in column order.
  at::Tensor idx = std::get<1>(score.sort(/*stable=*/true, -1, false)).narrow(-1, 0, k);
  keep.scatter_(-1, idx, false);
  return keep;
}

void check_nm(int n, int m, int64_t in, const std::string& layer) {
  if (n < 1 || m < 2 || n >= m) fail(kComp, "N:M pattern ", n, ":", m, " needs 1 <= N < M");
  if (in % m)
    fail(kComp, "layer ", layer, ": ", n, ":", m, " needs the input width (", in, ") to be a multiple of ", m);
}

}  // namespace

at::Tensor row_mask(const at::Tensor& score, double sparsity) {
  const int64_t k = static_cast<int64_t>(std::floor(sparsity * double(score.size(1)) + 1e-9));
  return drop_smallest(score.to(at::kFloat), k);
}

at::Tensor nm_mask(const at::Tensor& score, int n, int m, const std::string& layer) {
  check_nm(n, m, score.size(1), layer);
  const at::Tensor g = score.to(at::kFloat).reshape({score.size(0), score.size(1) / m, m});
  return drop_smallest(g, n).reshape(score.sizes());
}

at::Tensor layer_mask(const at::Tensor& score, double sparsity) {
  const int64_t k = static_cast<int64_t>(std::floor(sparsity * double(score.numel()) + 1e-9));
  return drop_smallest(score.to(at::kFloat).reshape({-1}), k).reshape(score.sizes());
}

std::vector<const LayerInfo*> prune_layers(const Model& model, const PruneOptions& o) {
  static const std::set<std::string> methods = {"magnitude", "wanda", "sparsegpt"};
  if (!methods.count(o.method))
    fail(kComp, "--method '", o.method, "' is not available (allowed: magnitude, wanda, sparsegpt)");
  const bool nm = o.prune_n > 0 || o.prune_m > 0;
  if (!nm && !(o.sparsity >= 0 && o.sparsity < 1)) fail(kComp, "--sparsity ", o.sparsity, " outside [0, 1)");
  if (nm && (o.prune_n < 1 || o.prune_m < 2 || o.prune_n >= o.prune_m))
    fail(kComp, "N:M pattern ", o.prune_n, ":", o.prune_m, " needs 1 <= N < M");
  static const std::set<std::string> dists = {"uniform", "global", "owl"};
  if (!dists.count(o.distribution))
    fail(kComp, "--distribution '", o.distribution, "' is not available (allowed: uniform, global, owl)");
  if (nm && o.distribution != "uniform") fail(kComp, "N:M patterns fix the sparsity: --distribution must be uniform");
  if (o.distribution == "global" && o.method != "magnitude")
    fail(kComp, "--distribution global compares scores across layers: magnitude only (use owl for ", o.method, ")");
  if (o.quant) o.quant->validate("(all layers)", 1 << 30);
  PtqOptions sel;
  sel.targets = o.targets, sel.ignore = o.ignore;
  sel.spec.group_size = 0;
  std::vector<const LayerInfo*> layers = select_layers(model, sel);
  for (const LayerInfo* l : layers) {
    const int64_t in = model.param(l->weight).numel() / model.param(l->weight).size(0);
    if (nm) check_nm(o.prune_n, o.prune_m, in, l->name);
    if (o.quant) o.quant->validate(l->name, in);
  }
  return layers;
}

PruneResult prune_model(Model& model, const at::Tensor& calib, const PruneOptions& o) {
  const std::vector<const LayerInfo*> layers = prune_layers(model, o);
  const bool nm = o.prune_n > 0 || o.prune_m > 0;
  if (o.method != "magnitude" && !calib.defined())
    fail(kComp, "--method ", o.method, " needs calibration data (--calib DATA)");
  if (o.distribution == "owl" && !calib.defined()) fail(kComp, "--distribution owl needs calibration data");
  PruneResult res;
  std::map<std::string, double> sparsity_of;
  for (const LayerInfo* l : layers) sparsity_of[l->name] = o.sparsity;

  // Global magnitude: one threshold over every selected weight, as per-layer sparsities.
  if (o.distribution == "global") {
    std::vector<at::Tensor> all;
    for (const LayerInfo* l : layers) all.push_back(model.param(l->weight).to(at::kFloat).abs().reshape({-1}));
    at::Tensor a = at::cat(all);
    const int64_t k = static_cast<int64_t>(std::floor(o.sparsity * double(a.numel())));
    const double thr = k > 0 ? std::get<0>(a.kthvalue(k)).item<double>() : -1.0;
    for (size_t i = 0; i < layers.size(); ++i)
      sparsity_of[layers[i]->name] = all[i].le(thr).to(at::kDouble).mean().item<double>();
  }

  std::set<std::string> in_blocks;
  std::vector<const LayerInfo*> outside;
  for (const LayerInfo* l : layers) {
    if (l->block >= 0 && calib.defined())
      in_blocks.insert(l->name);
    else
      outside.push_back(l);
  }
  SequentialOptions so;
  so.batch = o.batch, so.fp64 = o.fp64, so.true_sequential = o.true_sequential;

  // OWL: a scan of Wanda scores on the unchanged model; per block, the share of scores above
  // owl_threshold x their layer's mean.
  if (o.distribution == "owl" && !in_blocks.empty()) {
    std::map<int, std::pair<double, double>> outliers;  // block -> (count above, count)
    SequentialOptions scan_so = so;
    if (o.journal) {  // an interrupted scan goes on after its finished blocks
      scan_so.start_block = o.journal->finished("owl");
      for (int k = 0; k < scan_so.start_block; ++k) {
        const auto rec = o.journal->load("owl", k).record;
        if (rec.numbers.count("count")) outliers[k] = {rec.numbers.at("above"), rec.numbers.at("count")};
      }
      if (scan_so.start_block > 0) scan_so.start_hidden = o.journal->hidden("owl", model.device());
      scan_so.after_block = [&](int k, const std::vector<at::Tensor>& hidden) {
        BlockJournal::Record rec;
        if (outliers.count(k)) rec.numbers = {{"above", outliers[k].first}, {"count", outliers[k].second}};
        o.journal->save("owl", k, {}, rec, hidden);
      };
    }
    compress_blocks(model, calib, in_blocks,
        [&](int k, const std::vector<const LayerInfo*>& ls, const BlockStats& st) {
          for (const LayerInfo* l : ls) {
            const at::Tensor W = model.param(l->weight).to(at::kFloat).reshape({model.param(l->weight).size(0), -1});
            const at::Tensor s = W.abs() * st.at(l->name)->sum_sq().sqrt().to(at::kFloat).unsqueeze(0);
            const double mean = s.mean().item<double>();
            outliers[k].first += s.gt(o.owl_threshold * mean).sum().item<double>();
            outliers[k].second += double(s.numel());
          }
        },
        scan_so);
    std::vector<double> ratio;
    std::vector<int> blocks;
    for (auto& [k, c] : outliers) blocks.push_back(k), ratio.push_back(c.first / c.second);
    const double lo = *std::min_element(ratio.begin(), ratio.end()), hi = *std::max_element(ratio.begin(), ratio.end());
    double mean = 0;
    for (double& r : ratio) r = hi > lo ? (r - lo) / (hi - lo) * 2 * o.owl_lambda : 0.0, mean += r;
    mean /= double(ratio.size());
    std::string spread;
    for (size_t i = 0; i < ratio.size(); ++i) {
      const double s = std::clamp(o.sparsity - (ratio[i] - mean), 0.0, 0.99);
      for (const LayerInfo* l : layers)
        if (l->block == blocks[i]) sparsity_of[l->name] = s;
      spread += (spread.empty() ? "" : ", ") + fmtd("%.3f", s);
    }
    res.settings["owl"] = "lambda " + fmtd("%g", o.owl_lambda) + ", threshold " + fmtd("%g", o.owl_threshold) +
                          "x mean; block sparsities " + spread;
  }

  int64_t done = 0, total = static_cast<int64_t>(layers.size());
  double zeros = 0, count = 0;
  auto finish_layer = [&](const LayerInfo& l, const at::Tensor& W, const at::Tensor& Wp,
                          std::optional<QuantResult> q, const at::Tensor& H, const std::string& note) {
    const at::Tensor w_full = model.param(l.weight);
    LayerRow row;
    row.name = l.name;
    row.shape = shape_str(w_full.sizes().vec());
    std::string scheme = o.method + (nm ? " " + std::to_string(o.prune_n) + ":" + std::to_string(o.prune_m) : "");
    if (q) scheme += " + " + q->spec.describe();
    row.scheme = scheme;
    row.params = W.numel();
    const double z = Wp.eq(0).sum().item<double>();
    zeros += z, count += double(W.numel());
    row.note = fmtd("%.1f%% zeros", 100.0 * z / double(W.numel())) + (note.empty() ? "" : "; " + note);
    if (H.defined()) {
      const double den = tr_dhd(W, H);
      row.rel_output_error = den > 0 ? tr_dhd(W - Wp, H) / den : 0.0;
    }
    res.layers.push_back(row);
    model.set_param(l.weight, Wp.reshape(w_full.sizes()));
    res.pruned[l.weight] = {Wp, std::move(q)};
  };
  auto prune_one = [&](const LayerInfo& l, const HessianAccumulator* st) {
    if (o.progress) o.progress("prune", l, ++done, total);
    if (!st && o.method != "magnitude")
      fail(kComp, "layer ", l.name, " lies outside the blocks: ", o.method, " needs its calibration inputs");
    const at::Tensor w_full = model.param(l.weight);
    const at::Tensor W = w_full.to(at::kFloat).reshape({w_full.size(0), -1});
    const double sp = sparsity_of.at(l.name);
    at::Tensor H = st ? st->hessian().to(at::kFloat) : at::Tensor();
    if (o.method == "sparsegpt") {
      SparseGptOptions so2;
      so2.sparsity = sp, so2.prune_n = o.prune_n, so2.prune_m = o.prune_m, so2.damp = o.damp;
      so2.quant = o.quant ? &*o.quant : nullptr;
      SparseGptResult r = sparsegpt_prune(W, H, so2, l.name);
      if (r.damp_retries)
        res.warnings.push_back(l.name + ": Cholesky needed " + std::to_string(r.damp_retries) + " retries");
      finish_layer(l, W, r.weight, std::move(r.quant), H,
                   r.dead_columns ? std::to_string(r.dead_columns) + " dead input columns" : "");
      return;
    }
    at::Tensor score = W.abs();
    if (o.method == "wanda") score = score * st->sum_sq().sqrt().to(at::kFloat).unsqueeze(0);
    at::Tensor mask = nm                        ? nm_mask(score, o.prune_n, o.prune_m, l.name)
                      : o.method == "wanda"     ? row_mask(score, sp)
                                                : layer_mask(score, sp);
    at::Tensor Wp = W * mask;
    std::optional<QuantResult> q;
    if (o.quant) {
      q = rtn_quantize(Wp, *o.quant, l.name);
      Wp = q->dequantize();
    }
    finish_layer(l, W, Wp, std::move(q), H, "");
  };

  if (!in_blocks.empty()) {
    if (o.journal) {
      // Blocks an interrupted run finished come back from the journal (weights, rows, warnings); the
      // run goes on with the next block on the hidden states saved after them.
      so.start_block = o.journal->finished("prune");
      for (int k = 0; k < so.start_block; ++k) {
        BlockJournal::Entry e = o.journal->load("prune", k);
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
        for (auto& r : e.record.rows) res.layers.push_back(std::move(r));
        for (auto& x : e.record.warnings) res.warnings.push_back(std::move(x));
      }
      if (so.start_block > 0) so.start_hidden = o.journal->hidden("prune", model.device());
      size_t rows = res.layers.size(), warnings = res.warnings.size();
      so.after_block = [&](int k, const std::vector<at::Tensor>& hidden) {
        BlockJournal::Record rec;
        rec.rows.assign(res.layers.begin() + static_cast<std::ptrdiff_t>(rows), res.layers.end());
        rec.warnings.assign(res.warnings.begin() + static_cast<std::ptrdiff_t>(warnings), res.warnings.end());
        std::map<std::string, at::Tensor> tensors;
        for (const auto& l : model.layers()) {
          auto p = res.pruned.find(l.weight);
          if (l.block != k || p == res.pruned.end() || tensors.count(l.weight)) continue;
          tensors[l.weight] = p->second.weight;
          if (p->second.quant) journal_put_quant(tensors, l.weight, *p->second.quant);
        }
        o.journal->save("prune", k, tensors, rec, hidden);
        rows = res.layers.size(), warnings = res.warnings.size();
      };
    }
    compress_blocks(model, calib, in_blocks,
        [&](int, const std::vector<const LayerInfo*>& ls, const BlockStats& st) {
          for (const LayerInfo* l : ls) prune_one(*l, st.at(l->name));
        },
        so);
  }
  for (const LayerInfo* l : outside) prune_one(*l, nullptr);
  res.sparsity = count > 0 ? zeros / count : 0.0;
  std::map<std::string, size_t> order;
  for (size_t i = 0; i < model.layers().size(); ++i) order[model.layers()[i].name] = i;
  std::stable_sort(res.layers.begin(), res.layers.end(),
                   [&](const LayerRow& a, const LayerRow& b) { return order[a.name] < order[b.name]; });
  return res;
}

}  // namespace mc

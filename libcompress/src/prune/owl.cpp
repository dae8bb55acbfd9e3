// OWL layer sparsities (prune/owl.h).
#include "mcompress/prune/owl.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "mcompress/block_driver.h"
#include "mcompress/model.h"
#include "mcompress/prune/wanda.h"
#include "mcompress/quant/hessian.h"
#include "core/format_number.h"

namespace mc {

OutlierCount owl_outliers(const at::Tensor& W, const at::Tensor& x_sum_sq, double threshold) {
  const at::Tensor s = wanda_scores(W, x_sum_sq);
  const double mean = s.mean().item<double>();
  return {s.gt(threshold * mean).sum().item<double>(), double(s.numel())};
}

std::vector<double> owl_sparsities(const std::vector<double>& outlier_ratio, double sparsity, double lambda) {
  std::vector<double> ratio = outlier_ratio, out;
  if (ratio.empty()) return out;
  const double lo = *std::min_element(ratio.begin(), ratio.end()), hi = *std::max_element(ratio.begin(), ratio.end());
  double mean = 0;
  for (double& r : ratio) r = hi > lo ? (r - lo) / (hi - lo) * 2 * lambda : 0.0, mean += r;
  mean /= double(ratio.size());
  for (double r : ratio) out.push_back(std::clamp(sparsity - (r - mean), 0.0, 0.99));
  return out;
}

OwlAllocation owl_scan(Model& model, const at::Tensor& calib, const std::set<std::string>& targets,
                       const SequentialOptions& so, BlockJournal* journal, const OwlOptions& o) {
  std::map<int, OutlierCount> outliers;  // by block
  BlockPass pass;
  pass.phase = "owl";
  pass.compress = [&](int k, const std::vector<const LayerInfo*>& ls, const BlockStats& st) {
    for (const LayerInfo* l : ls) {
      const at::Tensor W = model.param(l->weight).to(at::kFloat).reshape({model.param(l->weight).size(0), -1});
      const OutlierCount c = owl_outliers(W, st.at(l->name)->sum_sq(), o.threshold);
      outliers[k].above += c.above;
      outliers[k].count += c.count;
    }
  };
  pass.restore = [&](int k, const BlockJournal::Entry& e) {
    const auto& n = e.record.numbers;
    if (n.count("count")) outliers[k] = {n.at("above"), n.at("count")};
  };
  pass.save = [&](int k, BlockJournal::Entry& e) {
    if (outliers.count(k)) e.record.numbers = {{"above", outliers[k].above}, {"count", outliers[k].count}};
  };
  run_block_pass(model, calib, targets, so, journal, pass);

  std::vector<double> ratio;
  std::vector<int> blocks;
  for (auto& [k, c] : outliers) blocks.push_back(k), ratio.push_back(c.above / c.count);
  const std::vector<double> sp = owl_sparsities(ratio, o.sparsity, o.lambda);
  OwlAllocation a;
  std::string spread;
  for (size_t i = 0; i < sp.size(); ++i) {
    a.block_sparsity[blocks[i]] = sp[i];
    spread += (spread.empty() ? "" : ", ") + format_number("%.3f", sp[i]);
  }
  a.summary = "lambda " + format_number("%g", o.lambda) + ", threshold " + format_number("%g", o.threshold) +
              "x mean; block sparsities " + spread;
  return a;
}

}  // namespace mc

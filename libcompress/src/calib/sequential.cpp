#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <map>
#include <memory>
#include <vector>

#include "mcompress/calib.h"
#include "mcompress/error.h"
#include "mcompress/model.h"
#include "mcompress/quant/hessian.h"

namespace mc {

void compress_block_sequential(Model& model, const at::Tensor& inputs, const std::set<std::string>& targets,
                               const LayerCompressor& compress, const SequentialOptions& o) {
  at::NoGradGuard no_grad;
  if (inputs.dim() < 1 || inputs.size(0) == 0) fail("calib", "the calibration set is empty");
  const int64_t n = inputs.size(0), batch = std::max<int64_t>(1, o.batch);
  int64_t total = 0;
  for (const auto& l : model.layers())
    if (l.block >= 0 && targets.count(l.name)) ++total;

  std::vector<at::Tensor> hidden;
  for (int64_t b = 0; b < n; b += batch)
    hidden.push_back(model.embed(inputs.narrow(0, b, std::min(batch, n - b)).to(model.device())));

  int64_t done = 0;
  for (int k = 0; k < model.num_blocks(); ++k) {
    std::map<std::string, std::unique_ptr<HessianAccumulator>> stats;
    std::vector<const LayerInfo*> layers;
    for (const auto& l : model.layers()) {
      if (l.block != k || !targets.count(l.name)) continue;
      layers.push_back(&l);
      stats.emplace(l.name, std::make_unique<HessianAccumulator>(l.in_features, o.fp64, l.name));
    }
    if (!layers.empty()) {
      const int hook = model.add_hook([&](const LayerInfo& l, const at::Tensor& x, const at::Tensor&) {
        auto it = stats.find(l.name);
        if (it != stats.end()) it->second->add(x);
      });
      try {
        for (const auto& h : hidden) model.run_block(k, h);
      } catch (...) {
        model.remove_hook(hook);
        throw;
      }
      model.remove_hook(hook);
      for (const LayerInfo* l : layers) {
        const HessianAccumulator& s = *stats.at(l->name);
        if (s.samples() == 0)
          fail("calib", "layer ", l->name, " received no calibration input (never reached in block ", k, ")");
        if (o.progress) o.progress(*l, ++done, total);
        const at::Tensor& w = model.param(l->weight);
        model.set_param(l->weight, compress(*l, w, s));
      }
    }
    // The next block sees this block's outputs with its compressed weights.
    for (auto& h : hidden) h = model.run_block(k, h);
  }
}

}  // namespace mc

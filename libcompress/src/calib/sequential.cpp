#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <malloc.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "mcompress/calib.h"
#include "mcompress/error.h"
#include "mcompress/model.h"
#include "mcompress/quant/hessian.h"
#include "mcompress/streamed_model.h"

namespace mc {

namespace {

int64_t rows_of(const at::Tensor& h) { return h.numel() / h.size(-1); }  // sequences x positions


// Runs block k over every batch, calling `hook` for each layer use; the hook is removed on any exit.
void run_block_hooked(Model& model, int k, const std::vector<at::Tensor>& hidden, const LayerHook& hook,
                      size_t batches, const std::function<void(int64_t)>& done = {}) {
  const int id = model.add_hook(hook);
  try {
    int64_t rows = 0;
    if (done) done(0);
    for (size_t i = 0; i < std::min(batches, hidden.size()); ++i) {
      model.run_block(k, hidden[i]);
      release_heap();  // only when the heap has grown by 512 MiB (streamed_model.h)
      if (done) done(rows += rows_of(hidden[i]));
    }
  } catch (...) {
    model.remove_hook(id);
    throw;
  }
  model.remove_hook(id);
}

// Splits the block's targets (in execution order) into groups that read the same input tensor,
// in the order the groups are first used. Layers never called stay in a last group of their own
// (the statistics pass then reports them as never reached).
std::vector<std::vector<const LayerInfo*>> input_groups(Model& model, int k, const std::vector<at::Tensor>& hidden,
                                                        const std::vector<const LayerInfo*>& layers) {
  std::map<std::string, const void*> input_of;
  std::vector<const void*> order;
  std::vector<at::Tensor> alive;  // a freed input's address could be reused by a later one
  // Which tensor feeds which layer does not depend on the batch: one sequence, and for token sequences
  // ([batch, positions, hidden]) its first 16 positions, instead of a whole batch (1/16 of a pass per block).
  at::Tensor probe = hidden.at(0).narrow(0, 0, std::min<int64_t>(1, hidden[0].size(0)));
  if (probe.dim() == 3) probe = probe.narrow(1, 0, std::min<int64_t>(16, probe.size(1))).contiguous();
  run_block_hooked(model, k, {probe}, [&](const LayerInfo& l, const at::Tensor& x, const at::Tensor&) {
    if (input_of.count(l.name)) return;
    alive.push_back(x);
    const void* id = x.unsafeGetTensorImpl();
    input_of[l.name] = id;
    if (std::find(order.begin(), order.end(), id) == order.end()) order.push_back(id);
  }, 1);
  std::vector<std::vector<const LayerInfo*>> groups(order.size());
  std::vector<const LayerInfo*> unreached;
  for (const LayerInfo* l : layers) {
    auto it = input_of.find(l->name);
    if (it == input_of.end()) {
      unreached.push_back(l);
      continue;
    }
    groups[static_cast<size_t>(std::find(order.begin(), order.end(), it->second) - order.begin())].push_back(l);
  }
  groups.erase(std::remove_if(groups.begin(), groups.end(), [](const auto& g) { return g.empty(); }), groups.end());
  if (!unreached.empty()) groups.push_back(unreached);
  return groups;
}

}  // namespace

void compress_blocks(Model& model, const at::Tensor& inputs, const std::set<std::string>& targets,
                     const BlockCompressor& compress, const SequentialOptions& o) {
  at::NoGradGuard no_grad;
  if (inputs.dim() < 1 || inputs.size(0) == 0) fail("calib", "the calibration set is empty");
  const int64_t n = inputs.size(0), batch = std::max<int64_t>(1, o.batch);
  // Layers computing in bf16 multiply bf16-rounded inputs: their Hessians are of those inputs, at bf16 speed.
  const bool bf16_hessians = model.compute_bf16() && model.device().is_cpu();

  std::vector<at::Tensor> hidden;
  if (o.start_block > 0) {
    if (o.start_hidden.size() != static_cast<size_t>((n + batch - 1) / batch))
      fail("calib", "resume: ", o.start_hidden.size(), " saved batches of hidden states, the calibration set makes ",
           (n + batch - 1) / batch);
    hidden = o.start_hidden;
  } else {
    for (int64_t b = 0; b < n; b += batch)
      hidden.push_back(model.embed(inputs.narrow(0, b, std::min(batch, n - b)).to(model.device())));
  }

  int64_t tokens = 0;  // rows through a block per pass (sequences x positions)
  for (const auto& h : hidden) tokens += rows_of(h);
  // Blocks after the last one holding a target change nothing: no pass runs through them (their weights,
  // mapped from the checkpoint, are never read; --targets on the first blocks of an 8B model stays small).
  int last = -1;
  for (const auto& l : model.layers())
    if (targets.count(l.name)) last = std::max(last, l.block);
  for (int k = o.start_block; k <= last; ++k) {
    std::vector<const LayerInfo*> layers;
    for (const auto& l : model.layers())
      if (l.block == k && targets.count(l.name)) layers.push_back(&l);
    // Layers reading the same input tensor share one accumulator (q,k,v; gate,up): the same H.
    std::vector<std::vector<std::vector<const LayerInfo*>>> stages;
    if (!layers.empty()) {
      auto groups = input_groups(model, k, hidden, layers);
      if (o.true_sequential)
        for (auto& g : groups) stages.push_back({g});
      else
        stages.push_back(groups);
    }
    for (const auto& stage : stages) {
      std::vector<std::unique_ptr<HessianAccumulator>> acc;
      std::map<std::string, HessianAccumulator*> feeder;  // first layer of a group -> its accumulator
      BlockStats stats;
      std::vector<const LayerInfo*> stage_layers;
      for (const auto& g : stage) {
        const std::string name = g.size() == 1 ? g[0]->name
                                               : str(g[0]->name, " (and the ", g.size() - 1, " other layers reading its input)");
        acc.push_back(std::make_unique<HessianAccumulator>(g[0]->in_features, o.fp64, name, bf16_hessians));
        feeder[g[0]->name] = acc.back().get();
        for (const LayerInfo* l : g) stats[l->name] = acc.back().get(), stage_layers.push_back(l);
      }
      run_block_hooked(model, k, hidden, [&](const LayerInfo& l, const at::Tensor& x, const at::Tensor&) {
        auto it = feeder.find(l.name);
        if (it != feeder.end()) it->second->add(x);
      }, hidden.size(), [&](int64_t done) {
        if (o.pass_progress) o.pass_progress(k, model.num_blocks(), "statistics", done, tokens);
      });
      for (const LayerInfo* l : stage_layers)
        if (stats.at(l->name)->samples() == 0)
          fail("calib", "layer ", l->name, " received no calibration input (never reached in block ", k, ")");
      // Back to execution order (Model::layers() is one vector in that order: compare addresses).
      std::stable_sort(stage_layers.begin(), stage_layers.end(),
                       [](const LayerInfo* a, const LayerInfo* b) { return a < b; });
      // The forward's freed buffers go back before the solvers allocate their [in, in] matrices (the CLI
      // keeps freed memory in the heap for reuse: 8B GPTQ peaked at 7.8 GB with them, ~2 GB of it free).
      ::malloc_trim(0);
      if (o.before_compress) o.before_compress(k, hidden);
      compress(k, stage_layers, stats);
      ::malloc_trim(0);  // and the solvers' [in, in] matrices before the output pass
    }
    // The next block sees this block's outputs with its compressed weights.
    int64_t rows = 0;
    if (o.before_output) o.before_output(k);
    if (o.pass_progress) o.pass_progress(k, model.num_blocks(), "output", 0, tokens);
    for (auto& h : hidden) {
      h = model.run_block(k, h);
      release_heap();
      if (!at::isfinite(h).all().item<bool>())
        fail("calib", "block ", k, " produced NaN or Inf on the calibration data",
             layers.empty() ? "" : " after compression");
      if (o.pass_progress) o.pass_progress(k, model.num_blocks(), "output", rows += rows_of(h), tokens);
    }
    if (o.after_block) o.after_block(k, hidden);
    ::malloc_trim(0);  // the block's large temporaries go back to the OS: memory stays flat across blocks
  }
}

}  // namespace mc

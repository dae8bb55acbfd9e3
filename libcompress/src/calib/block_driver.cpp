// The block-sequential driver (block_driver.h).
#include "mcompress/block_driver.h"

#include <ATen/ATen.h>

#include <map>

#include "mcompress/model.h"
#include "mcompress/tensor.h"

namespace mc {

void run_block_pass(Model& model, const at::Tensor& calib, const std::set<std::string>& targets,
                    const SequentialOptions& so, BlockJournal* journal, const BlockPass& pass) {
  if (targets.empty()) return;
  SequentialOptions o = so;
  size_t rows = 0, warnings = 0;  // what pass.rows / pass.warnings held when the current block began
  auto mark = [&] {
    if (pass.rows) rows = pass.rows->size();
    if (pass.warnings) warnings = pass.warnings->size();
  };
  auto done = [&](int k) {
    if (pass.after_block) pass.after_block(k);
    mark();
  };
  if (journal) {
    // Blocks an interrupted run finished come back from the journal, handed on in the order they were
    // computed; the run goes on with the next block on the hidden states saved after them.
    o.start_block = journal->finished(pass.phase);
    for (int k = 0; k < o.start_block; ++k) {
      BlockJournal::Entry e = journal->load(pass.phase, k);
      if (pass.restore) pass.restore(k, e);
      if (pass.rows)
        for (auto& r : e.record.rows) pass.rows->push_back(std::move(r));
      if (pass.warnings)
        for (auto& w : e.record.warnings) pass.warnings->push_back(std::move(w));
      done(k);
    }
    if (o.start_block > 0) o.start_hidden = journal->hidden(pass.phase, model.device());
  }
  mark();
  o.after_block = [&](int k, const std::vector<at::Tensor>& hidden) {
    if (journal) {
      BlockJournal::Entry e;
      if (pass.rows) e.record.rows.assign(pass.rows->begin() + static_cast<std::ptrdiff_t>(rows), pass.rows->end());
      if (pass.warnings)
        e.record.warnings.assign(pass.warnings->begin() + static_cast<std::ptrdiff_t>(warnings), pass.warnings->end());
      if (pass.save) pass.save(k, e);
      journal->save(pass.phase, k, e.tensors, e.record, hidden);
    }
    done(k);
  };
  compress_blocks(model, calib, targets, pass.compress, o);
}

LayerSplit split_layers(const std::vector<const LayerInfo*>& layers, bool calibrated) {
  LayerSplit s;
  for (const LayerInfo* l : layers) {
    if (l->block >= 0 && calibrated)
      s.in_blocks.insert(l->name);
    else
      s.outside.push_back(l);
  }
  return s;
}

void sort_rows(const Model& model, std::vector<LayerRow>& rows) {
  std::map<std::string, size_t> order;
  for (size_t i = 0; i < model.layers().size(); ++i) order[model.layers()[i].name] = i;
  std::stable_sort(rows.begin(), rows.end(),
                   [&](const LayerRow& a, const LayerRow& b) { return order[a.name] < order[b.name]; });
}

double output_error(const at::Tensor& D, const at::Tensor& H) { return (at::matmul(D, H) * D).sum().item<double>(); }

LayerRow layer_row(const LayerInfo& l, const at::Tensor& w_full, std::string scheme, std::string note) {
  LayerRow row;
  row.name = l.name;
  row.shape = shape_str(w_full.sizes().vec());
  row.scheme = std::move(scheme);
  row.params = w_full.numel();
  row.note = std::move(note);
  return row;
}

double relative_output_error(double err, const at::Tensor& W, const at::Tensor& H) {
  const double den = output_error(W, H);
  return den > 0 ? err / den : 0.0;
}

}  // namespace mc

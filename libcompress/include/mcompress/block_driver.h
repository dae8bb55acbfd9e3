// The block-sequential driver quantize_model (ptq.h) and prune_model (prune/prune.h) share: the
// selected layers split into those compressed block by block on calibration statistics and the rest,
// each pass over the blocks (a sensitivity or outlier scan, then the compression itself) run on the
// layer-sequential engine (calib.h) with its resume journal (journal.h), and the report rows put back
// in execution order. What a pass does to a block is the caller's callback; the driver owns the order
// of things: restore the finished blocks from the journal (and hand each to after_block, in order),
// continue on the saved hidden states, and after every computed block save it, then after_block.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <set>
#include <string>
#include <vector>

#include "mcompress/calib.h"
#include "mcompress/journal.h"
#include "mcompress/report.h"

namespace mc {

class Model;
struct LayerInfo;

// One pass over the blocks.
struct BlockPass {
  std::string phase;          // the journal's phase name: "scan", "owl", "quantize", "prune"
  BlockCompressor compress;   // what the pass does to a block's target layers
  // Rows and warnings the pass appends to while it works on a block: those a block added are journaled
  // with it and appended again when it is restored (null: the pass adds none).
  std::vector<LayerRow>* rows = nullptr;
  std::vector<std::string>* warnings = nullptr;
  // Journal: the rest of what block k left (tensors, numbers), and putting it back on resume.
  std::function<void(int block, BlockJournal::Entry& entry)> save;
  std::function<void(int block, const BlockJournal::Entry& entry)> restore;
  // After each block, restored or computed, in block order (after it is saved).
  std::function<void(int block)> after_block;
};

// Runs `pass` over the blocks holding `targets` (nothing when targets is empty). With a journal, the
// blocks it holds for pass.phase are restored instead of computed. so: batch, fp64, true_sequential
// (its start_block, start_hidden and after_block are the driver's).
void run_block_pass(Model& model, const at::Tensor& calib, const std::set<std::string>& targets,
                    const SequentialOptions& so, BlockJournal* journal, const BlockPass& pass);

// The selected layers (execution order) split: inside a block with calibration data, compressed by
// the block passes; the others (outside every block, or no calibration data), in their order.
struct LayerSplit {
  std::set<std::string> in_blocks;
  std::vector<const LayerInfo*> outside;
};
LayerSplit split_layers(const std::vector<const LayerInfo*>& layers, bool calibrated);

// Report rows back in execution order (stable: a layer's rows keep their order).
void sort_rows(const Model& model, std::vector<LayerRow>& rows);

// tr(D H Dᵀ): the output error of a weight change D [out, in] on inputs with Hessian H [in, in].
double output_error(const at::Tensor& D, const at::Tensor& H);

// A report row for layer `l` whose stored weight is w_full (name, shape, parameter count).
LayerRow layer_row(const LayerInfo& l, const at::Tensor& w_full, std::string scheme, std::string note);
// err / tr(W H Wᵀ), 0 when the latter is 0: a row's relative output error for err = output_error(W - Wc, H).
double relative_output_error(double err, const at::Tensor& W, const at::Tensor& H);

}  // namespace mc

// The quantize methods' entries of the method table (methods.h): each adapts one pure algorithm to a
// layer of quantize_model (the grid, options and statistics in, the codes and what the model holds out).
#pragma once
#include "mcompress/methods.h"

namespace mc {

LayerOutcome rtn_layer(const LayerInputs& in, const QuantSpec& spec, const PtqOptions& o);
// HQQ (quant/hqq.h) with o.hqq_iters zero-point updates.
LayerOutcome hqq_layer(const LayerInputs& in, const QuantSpec& spec, const PtqOptions& o);
LayerOutcome imatrix_layer(const LayerInputs& in, const QuantSpec& spec, const PtqOptions& o);
// GPTQ; with keep_sparsity and zeros in W, SparseGPT with W's mask fixed (zeros stay, compensated).
LayerOutcome gptq_layer(const LayerInputs& in, const QuantSpec& spec, const PtqOptions& o);
// RTN of W clipped by awq_clip (o.awq_clip), in the space scaled by the group's scales.
LayerOutcome awq_layer(const LayerInputs& in, const QuantSpec& spec, const PtqOptions& o);

// AutoRound (quant/autoround.h) on a block's layers: the loss is the mean squared difference between the
// block's output with the tuned weights and with its float weights, on mini-batches of o.autoround_batch
// calibration sequences (a seeded shuffle per block, so a resumed run tunes the same).
std::vector<LayerOutcome> autoround_block(const BlockTuneInputs& in, const PtqOptions& o);

at::Tensor awq_group_scales(const ScaleGroupInputs& g, const PtqOptions& o, std::string& note);
at::Tensor smoothquant_group_scales(const ScaleGroupInputs& g, const PtqOptions& o, std::string& note);

// What AWQ / SmoothQuant run on a layer their scales skip.
const char* awq_without_scales(const PtqOptions& o);
const char* smoothquant_without_scales(const PtqOptions& o);

void check_gptq_options(const PtqOptions& o);
void check_smoothquant_options(const PtqOptions& o);
void check_hqq_options(const PtqOptions& o);
void check_autoround_options(const PtqOptions& o);

}  // namespace mc

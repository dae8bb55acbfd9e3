// The compression methods, one table: every quantize method (ptq.h) and prune method (prune/prune.h)
// with its name, what it needs, a line for --help, the label reports use, and the functions that run it
// on one layer. quantize_model and prune_model look methods up here; front ends (CLI, Python) list and
// validate method names from here instead of keeping their own lists.
//
// The per-layer functions are the thin adapters between the pure algorithms (quant/gptq.h, quant/awq.h,
// quant/smoothquant.h, prune/sparsegpt.h, prune/wanda.h, prune/magnitude.h, ...) and the
// block-sequential driver (block_driver.h): options in, one layer's result out.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <optional>
#include <string>
#include <vector>

#include "mcompress/quant/rtn.h"

namespace mc {

class Model;
struct LayerInfo;
struct PtqOptions;
struct PruneOptions;
struct ScaleGroup;
class HessianAccumulator;

enum class MethodKind { Quantize, Prune };

// "quantize" / "prune" (also the component name in error messages).
const char* kind_name(MethodKind kind);

// One layer as a method sees it.
struct LayerInputs {
  const std::string& name;
  const at::Tensor& W;                // float32 [out, in] (conv kernels flattened)
  const HessianAccumulator* stats;    // its calibration statistics; null outside the blocks / without data
  const at::Tensor& H;                // stats' Hessian as float32 (after any scale fold); undefined without stats
};

// What a method made of one layer.
struct LayerOutcome {
  at::Tensor weight;                 // float32 [out, in]: what the model holds from now on
  std::optional<QuantResult> quant;  // the codes (every quantize method; prune with PruneOptions::quant)
  std::string note;                  // for the report row
  std::vector<std::string> warnings;
};

// A scale group (model.h) as AWQ / SmoothQuant see it: the consumer layers' weights (as stored) and
// grids, and the statistics of the input they share.
struct ScaleGroupInputs {
  const ScaleGroup& group;
  const std::vector<at::Tensor>& weights;
  const std::vector<QuantSpec>& specs;
  const std::vector<std::string>& names;
  const HessianAccumulator& stats;
  c10::Device device;
};

using QuantizeLayerFn = LayerOutcome (*)(const LayerInputs& layer, const QuantSpec& spec, const PtqOptions& o);
// A block's selected layers as a method that tunes them together against the block's output sees them
// (AutoRound): the model (its block `block` still holds the float weights), the layers in execution order
// with their grids, and the block's calibration inputs (one tensor per forward batch).
struct BlockTuneInputs {
  Model& model;
  int block;
  const std::vector<const LayerInfo*>& layers;
  const std::vector<QuantSpec>& specs;
  const std::vector<at::Tensor>& inputs;
};
// One outcome per layer, in the order given; the model's weights are as they were on return.
using BlockTuneFn = std::vector<LayerOutcome> (*)(const BlockTuneInputs& block, const PtqOptions& o);
using PruneLayerFn = LayerOutcome (*)(const LayerInputs& layer, double sparsity, const PruneOptions& o);
// Per-channel scales s [C] the group's input is divided by (folded into the previous op), and a note for
// the report rows; undefined when there is nothing to search on (every input channel zero).
using GroupScalesFn = at::Tensor (*)(const ScaleGroupInputs& group, const PtqOptions& o, std::string& note);
// Method-specific option checks (InputError naming the option and what is allowed).
using QuantizeCheckFn = void (*)(const PtqOptions& o);
// What runs on a layer the scales of a group_scales method skip (report rows): "rtn", "rtn+clip".
using UnscaledLabelFn = const char* (*)(const PtqOptions& o);

struct MethodInfo {
  const char* name;              // as given on the command line / in recipes: "gptq"
  MethodKind kind;
  bool needs_calibration;        // without calibration data it cannot run
  const char* description;       // one line for --help
  const char* report_label;      // in report titles: "GPTQ"
  // Quantize methods.
  QuantizeLayerFn quantize_layer = nullptr;
  GroupScalesFn group_scales = nullptr;  // set: the method folds per-channel scales into each scale group
  // Set: inside the blocks the selected layers are quantized together by it (quantize_layer then serves
  // the layers without calibration statistics only).
  BlockTuneFn tune_block = nullptr;
  bool scales_after_norm_only = false;   // group_scales only where the previous op is a norm
  UnscaledLabelFn without_scales = nullptr;  // with group_scales
  bool quantizes_activations = false;    // W8A8: every quantized linear's input is quantized per token
  bool true_sequential = true;           // supports --true-sequential (false: one statistics pass per block)
  bool mixed_precision = true;           // supports --target-bpw
  // Fits fractional zero points (stored float16, quant/packed.h): asymmetric grids only (--asym is
  // implied, --sym refused).
  bool float_zeros = false;
  QuantizeCheckFn check_options = nullptr;
  // Prune methods.
  PruneLayerFn prune_layer = nullptr;
  bool global_distribution = false;      // scores comparable across layers: --distribution global
};

// Every method, quantize ones first, in the order --help lists them.
const std::vector<MethodInfo>& all_methods();
// The methods of one kind, in table order.
std::vector<const MethodInfo*> methods_of(MethodKind kind);
// "rtn, hqq, imatrix, gptq, awq, autoround, smoothquant"
std::string method_names(MethodKind kind);
// The method `name` of `kind`; throws InputError "[quantize] --method 'x' is not available (allowed:
// rtn, hqq, imatrix, ...)" for any other name.
const MethodInfo* find_method(MethodKind kind, const std::string& name);

}  // namespace mc

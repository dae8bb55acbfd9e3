// Post-training quantization of a whole model: layer selection, the calibrated methods (methods.h) on
// the block-sequential driver (block_driver.h), mixed precision (quant/mixed_precision.h), and what the
// report needs. The CLI's `mcompress quantize` and the Python bindings call quantize_model; the packed
// file is written by the caller from PtqResult::quantized (quant/packed.h).
//
// Methods (all quantize the selected layers' weights to QuantSpec's grid, fp16 scales):
//   rtn          round to nearest (rtn.h); calibration data only measures per-layer errors
//   hqq          RTN's scale with each group's zero point fitted by half-quadratic steps to an lp
//                error, p = 0.7 (hqq.h); no calibration data; fractional zeros stored as float16
//   imatrix      RTN whose grids minimise the error weighted by each input column's mean square
//                (imatrix.h) — cheap, between RTN and GPTQ
//   gptq         error compensation through the inverse Hessian (gptq.h)
//   awq          activation-aware scaling (Lin et al., 2023): for each scale group (model.h: a norm or
//                linear followed by the layers reading it), s = mean|x|^α with α in {0, 0.05, ..., 0.95}
//                chosen to minimise the group's quantized output error Σ tr(D H Dᵀ),
//                D = W - Q(W diag s) diag(1/s); s is folded into the preceding norm/linear (the float
//                model computes the same function), then each group of columns gets the clip ratio
//                (1.00, 0.95, ..., 0.55 of its range) minimising its output error, then RTN
//   autoround    AutoRound / SignRound (Cheng et al., 2023; quant/autoround.h): a rounding offset per weight
//                and two range factors per group, tuned together for all of a block's selected layers by
//                signed gradient descent on the squared difference between the block's output and its float
//                output, on mini-batches of calibration sequences; starts from RTN
//   smoothquant  W8A8 (Xiao et al., 2023): s_j = max|X_j|^α / max|W_j|^(1-α) folded into the norm
//                before each group, weights RTN (int8 per channel by default), every quantized linear's
//                input quantized per token (int8, dynamic, symmetric) — simulated in float or run as
//                a real int8 x int8 -> int32 matmul on CPU (model.h, int8_gemm.h)
// AWQ / SmoothQuant scale a group only when all of its layers are selected (and SmoothQuant only after a
// norm); the layers of a skipped group are reported as what ran on them ("rtn+clip", "rtn") with the
// reason in their note and a warning naming the group.
// Mixed precision (target_bpw > 0): a sensitivity scan runs the method at every candidate bit width
// on each layer (output error tr(D H Dᵀ) on calibration data, model unchanged), an exact
// multiple-choice knapsack picks the bits per layer with the least total predicted error whose
// parameter-weighted mean code bits is <= target_bpw, then the model is quantized with them.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "mcompress/quant/act_quant.h"
#include "mcompress/quant/eora.h"
#include "mcompress/quant/mixed_precision.h"  // allocate_bits
#include "mcompress/quant/rtn.h"
#include "mcompress/report.h"

namespace mc {

class Model;
struct LayerInfo;
class BlockJournal;

struct PtqResult;

struct PtqOptions {
  std::string method = "rtn";  // rtn | hqq | imatrix | gptq | awq | autoround | smoothquant
  QuantSpec spec;              // the grid (bits are the default/maximum with mixed precision)
  // Layer selection. `targets`: glob patterns (fnmatch, "*" crosses dots) or "re:REGEX" (the whole
  // name must match), matched
  // against layer names; empty = every linear layer except the classifier. Each pattern must match
  // at least one layer. `ignore`: patterns removed from the selection.
  std::vector<std::string> targets, ignore;
  bool embeddings = false, classifier = false, conv = false;  // add these layers to the default selection
  // Per-layer grids: the first override whose patterns (as targets) match a selected layer gives its
  // grid instead of `spec` (e.g. the first block at 8 bits). Each pattern must match a selected layer.
  struct Override {
    std::vector<std::string> patterns;
    QuantSpec spec;
  };
  std::vector<Override> overrides;
  // Calibration engine.
  int64_t batch = 8;
  bool fp64 = false;
  bool true_sequential = false;
  // GPTQ.
  double damp = 0.01;
  bool act_order = false, static_groups = false;
  int64_t block_size = 128;
  // Keep the zeros of an already pruned model (prune, then quantize): GPTQ zeroes them in its column
  // loop with error compensation (SparseGPT with a fixed mask); the other methods keep zeros as zeros.
  bool keep_sparsity = false;
  // imatrix without calibration: each layer's input importance (float [in], mean square of its inputs) by
  // layer name, as read from a llama.cpp imatrix file (quant/imatrix_file.h); `importance_source` names the
  // file for the report. Every selected layer must have one.
  std::map<std::string, at::Tensor> importance;
  std::string importance_source;
  // HQQ: zero-point updates per group (0: RTN asymmetric).
  int hqq_iters = 20;
  // AutoRound (quant/autoround.h): signed-gradient steps per block, the step sizes (0: 1 / iters), the
  // calibration sequences per step, whether the range factors are tuned, and the mini-batch shuffle's seed.
  int autoround_iters = 200;
  double autoround_lr = 0, autoround_minmax_lr = 0;
  int64_t autoround_batch = 8;
  bool autoround_minmax = true;
  uint64_t autoround_seed = 0;
  // Tune on llama.cpp's Q4_K / Q5_K lattice (quant/autoround.h AutoRoundGrid::kquant) wherever a layer fits it
  // (bits 4/5, asym, g32, rows of a multiple of 256); the others on the plain grid.
  bool autoround_kquant = false;
  // AWQ.
  bool awq_clip = true;
  // SmoothQuant.
  double smooth_alpha = 0.5;
  int act_bits = 8;
  // Any method (W4A8, W4A4): every quantized linear's input is also quantized per token at act_bits bits
  // (dynamic, symmetric; Model::set_input_quant) once its weight is, so later blocks calibrate on what the
  // quantized model computes. smoothquant does this whatever the flag says.
  bool quantize_activations = false;
  // The activation format of quantize_activations: int (act_bits bits) or fp8 / mxfp8 / mxfp4 / nvfp4
  // (quant/act_quant.h; act_bits must then be the format's element bits). smoothquant: int only.
  ActFormat act_format = ActFormat::int_;
  // EoRA (quant/eora.h): > 0 fits a rank-`eora_rank` correction of each calibrated layer's error; the
  // model holds Ŵ + B A from then on (later blocks calibrate on the corrected outputs), the result the
  // codes of Ŵ and the adapter.
  int64_t eora_rank = 0;
  // KV-cache quantization (quant/kv_cache.h): 8 calibrates static per-kv-head scales of each block's keys and
  // values on its output pass (the block's quantized weights on the calibration inputs) and sets them on the
  // model (Model::set_kv_quant) once the block is done; 0: off. Language models with attention only.
  int kv_bits = 0;
  std::string kv_format = "int8";  // int8 | fp8
  bool kv_hadamard = false;        // rotate each head's keys and values first (Model::set_kv_hadamard)
  // Mixed precision.
  double target_bpw = 0;                    // 0: off
  // 2 is allowed but not a default: the output-error proxy underrates what 2-bit layers do to the
  // model (stories260K at 3.5 bits: 1.22 bits per byte with {2,3,4,8}, 0.98 with {3,4,8}).
  std::vector<int> candidate_bits = {3, 4, 8};
  // Progress: called before each layer of each phase ("scan", "quantize") with its index from 1.
  std::function<void(const std::string& phase, const LayerInfo& layer, int64_t i, int64_t n)> progress;
  std::function<void(int block, int blocks, const char* pass, int64_t done, int64_t total)> pass_progress;
  // Resume (journal.h): each finished block (and each block of the mixed-precision scan) is saved in
  // the journal; blocks an earlier run with the same journal identity finished are restored instead of
  // computed (and passed to after_block in order), so the result is the same as an uninterrupted run.
  BlockJournal* journal = nullptr;
  // Called after each block is finished, and after each layer quantized outside the blocks (block -1:
  // every layer of a run without calibration), with the result so far (its quantized weights are in it:
  // a caller may write them out, erase them and release the model's copies, see Model::release_param).
  std::function<void(int block, PtqResult& partial)> after_block;
};

struct PtqResult {
  std::map<std::string, QuantResult> quantized;  // by weight key
  std::map<std::string, int> act_bits;           // layer name -> activation bits (smoothquant, quantize_activations)
  ActFormat act_format = ActFormat::int_;        // the format of those layers' activations
  std::map<std::string, LowRankAdapter> adapters;  // layer name -> EoRA correction (eora_rank > 0)
  std::map<int, std::pair<at::Tensor, at::Tensor>> kv_scales;  // block -> KV-cache (key, value) scales per kv head
  std::vector<LayerRow> layers;                  // per quantized layer (bits_per_weight left to the writer)
  std::vector<std::string> warnings;
  std::map<std::string, std::string> settings;   // method-specific settings for the report
};

// The layers quantize_model would quantize, in execution order (each weight once). Throws InputError
// for a pattern that matches nothing or an empty selection.
std::vector<const LayerInfo*> select_layers(const Model& model, const PtqOptions& o);

// Whether a layer name matches one of the patterns as targets/ignore match them: fnmatch globs ("*"
// crosses dots) or "re:REGEX" (the whole name). InputError for an invalid regular expression.
bool matches_any(const std::vector<std::string>& patterns, const std::string& name);

// Quantizes `model` in place (its weights become the dequantized values; smoothquant also sets the
// input quantization) and returns the codes. calib: the calibration set as the model's forward takes it
// (undefined: only rtn without per-layer errors). Throws InputError for bad options or data.
PtqResult quantize_model(Model& model, const at::Tensor& calib, const PtqOptions& o);

}  // namespace mc

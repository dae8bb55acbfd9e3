// Structured pruning of llama-family models: whole FFN channels, attention heads (whole KV groups
// with grouped-query attention) and whole blocks are removed, so the result has smaller matrices and a
// smaller config (it loads and runs as a LlamaModel and is faster, unlike the zero masks of prune.h).
// Importance comes from one calibration pass through the unpruned model (no grad, hooks on wo / w2):
//   FFN channel c of block k   ‖a_c‖₂ · ‖W2[:, c]‖₂, a = input of w2, over all calibration tokens
//                              (the Wanda score summed over the channel's column; LLM-Pruner/FLAP style)
//   head h of block k          ‖a_h‖₂ · ‖Wo[:, h·hd:(h+1)·hd]‖_F, a = input of wo; with grouped KV
//                              heads a group's score is the sum over its query heads, groups are ranked
//   block k                    1 − mean over tokens of cos(block input, block output)
//                              ("block influence", ShortGPT, Men et al., 2024)
// keep_every = k instead keeps blocks 0, k, 2k, ... and removes the rest without ranking them (the
// layer-dropping student initialisation of DistilBERT-style distillation); it excludes blocks.
// Every block keeps the same number of FFN channels and heads (so hidden_dim / n_heads stay one number);
// the least important ones are dropped per block. head_dim never changes (whole heads are sliced, and
// RoPE pairs stay inside a head for both rope layouts).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mcompress/models/llama.h"

namespace mc {

class Model;

struct StructuredOptions {
  double ffn = 0;    // fraction of FFN intermediate channels removed in every block, [0, 1)
  double heads = 0;  // fraction of heads (KV groups with GQA) removed in every block, [0, 1)
  int blocks = 0;    // whole blocks removed (lowest block influence), [0, n_layers)
  int keep_every = 0;  // k > 0: keep blocks 0, k, 2k, ... and remove the rest, [1, n_layers] (1 keeps all);
                       // excludes blocks; 0 = off
  int64_t batch = 8; // calibration sequences per forward pass
};

// Parses "ffn=0.25,heads=0.25,blocks=1" or "ffn=0.25,every=2" (any subset, any order; every=K is
// keep_every, batch=N the calibration batch). Throws InputError naming the bad item, and for blocks
// and every together.
StructuredOptions parse_structured_options(const std::string& spec);
// "ffn 25%, heads 25%, blocks 1" or "ffn 25%, heads 0%, every 2nd block kept"
std::string describe(const StructuredOptions& o);

struct StructuredResult {
  LlamaConfig config;                         // n_layers, n_heads, n_kv_heads, hidden_dim updated
  std::map<std::string, at::Tensor> weights;  // float32 CPU, new names (blocks renumbered 0..n-1)
  std::vector<std::string> removed;           // what was removed, one line per item (for the report)
  std::map<std::string, std::string> settings;
  std::vector<double> block_influence;        // per original block (empty when blocks == 0 and not asked)
  int64_t params_before = 0, params_after = 0;  // parameter counts (a tied classifier counted once)
};

// Computes importances on `calib` ([N, L] int64 tokens) through `model` (a LlamaModel: InputError
// otherwise) and returns the pruned config and weights; `model` itself is not changed. No calibration
// pass runs when nothing is ranked (ffn, heads and blocks 0; keep_every needs none). Throws InputError
// for fractions outside [0, 1), blocks outside [0, n_layers), keep_every outside [0, n_layers] or with
// blocks, head pruning that would leave no head (or KV group) per block
// ("pruning heads below one per KV group"), or missing calibration data.
StructuredResult prune_structured(Model& model, const at::Tensor& calib, const StructuredOptions& o);

// The option checks of prune_structured alone (callers check before loading data).
void check_structured(const Model& model, const StructuredOptions& o);

// The pruned model (copies the weights into the model).
std::unique_ptr<LlamaModel> make_structured_model(const StructuredResult& r);

// ---- Classifiers (MLP / CNN, models/classifier.h): output channels of hidden linear layers ----------
// Every linear layer but the classifier (the last one) is a hidden layer; it keeps some of its output
// channels, ranked by one calibration pass through the unpruned model (hook on the next linear layer):
//   channel c of layer L   ‖a_c‖₂ · ‖W_next[:, c]‖₂, a_c = input column c of the next linear layer
//                          (the channel after the activation) over all calibration inputs
// The most important `keep` channels stay (ties: the lower index), in their original order: rows
// W[c, :] and bias[c] of L, columns W_next[:, c] of the next linear layer. Layers are ranked
// independently on the unpruned model (a layer whose inputs and outputs are both pruned gets both
// slicings). Only linear -> (relu, gelu, silu, tanh, sigmoid, dropout, identity)* -> linear chains are
// supported: anything else between a pruned layer and the next linear layer (batchnorm, conv2d,
// flatten, pools) is an InputError naming both. Layers before the first linear layer (convolutions of a
// CNN) are left as they are.

class ClassifierModel;

struct ClassifierPruneOptions {
  // Channels kept in every hidden linear layer: 0 keeps all; an integer >= 1 is a count (a layer
  // narrower than that keeps all of its channels); a value in (0, 1) is a fraction of each layer's
  // width (rounded, at least 1). Note 1 means one channel, not 100%.
  double hidden = 0;
  // Per-layer overrides by layer name (the YAML's `name`), same meaning as `hidden`; here a count
  // above the layer's width is an InputError, and so is a name that is not a hidden linear layer.
  std::map<std::string, double> layers;
  int64_t batch = 256;  // calibration inputs per forward pass
};

// Parses "hidden=100" (keep 100 channels in every hidden layer), "hidden=0.2" (keep 20%), per-layer
// "fc1=400" (any item whose key is not hidden / batch names a layer), "batch=N"; comma-separated, any
// order. Throws InputError naming the bad item (values must be a fraction in (0, 1) or an integer >= 1).
ClassifierPruneOptions parse_classifier_prune_options(const std::string& spec);
// "hidden 100 channels, fc1 20%"
std::string describe(const ClassifierPruneOptions& o);

struct ClassifierPruneResult {
  std::string yaml;                           // the pruned architecture (ClassifierModel's format)
  std::map<std::string, at::Tensor> weights;  // float32 CPU, same keys as the input model
  std::vector<std::string> removed;           // one line per layer that lost channels: "fc1: 20 of 50 channels"
  std::map<std::string, std::string> settings;
  std::map<std::string, at::Tensor> scores;   // per ranked layer: channel importances [out] (float64 CPU)
  int64_t params_before = 0, params_after = 0;
};

// Ranks on `calib_inputs` ([N, ...], as ClassifierModel::forward takes them) and returns the pruned
// architecture and weights; `model` itself is not changed. No calibration pass runs when no layer
// loses a channel. Throws InputError for bad options (see ClassifierPruneOptions), a model without a
// hidden linear layer, unsupported layers between a pruned layer and the next linear layer, missing
// calibration inputs, or non-finite activations.
ClassifierPruneResult prune_classifier_channels(ClassifierModel& model, const at::Tensor& calib_inputs,
                                                const ClassifierPruneOptions& o);
// The option and architecture checks of prune_classifier_channels alone (before loading data).
void check_classifier_prune(const ClassifierModel& model, const ClassifierPruneOptions& o);
// The pruned model (copies the weights).
std::unique_ptr<ClassifierModel> make_pruned_classifier(const ClassifierPruneResult& r);

}  // namespace mc

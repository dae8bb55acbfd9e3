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
  int64_t batch = 8; // calibration sequences per forward pass
};

// Parses "ffn=0.25,heads=0.25,blocks=1" (any subset, any order). Throws InputError naming the bad item.
StructuredOptions parse_structured_options(const std::string& spec);
// "ffn 25%, heads 25%, blocks 1"
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
// pass runs when nothing is removed (all options 0). Throws InputError for fractions outside [0, 1),
// blocks outside [0, n_layers), head pruning that would leave no head (or KV group) per block
// ("pruning heads below one per KV group"), or missing calibration data.
StructuredResult prune_structured(Model& model, const at::Tensor& calib, const StructuredOptions& o);

// The option checks of prune_structured alone (callers check before loading data).
void check_structured(const Model& model, const StructuredOptions& o);

// The pruned model (copies the weights into the model).
std::unique_ptr<LlamaModel> make_structured_model(const StructuredResult& r);

}  // namespace mc

// Training and fine-tuning of language models: AdamW with a cosine schedule and linear warm-up,
// gradient clipping and accumulation, seeded sampling of training windows, periodic evaluation on
// held-out tokens and checkpoints with exact resume. `mcompress train` builds the demo's default
// model with it; distillation grows from it.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace mc {

class Model;

struct TrainOptions {
  int64_t steps = 1000;
  int64_t batch = 16;            // sequences per optimizer step (before accumulation)
  int64_t accumulate = 1;        // micro-batches per step
  int64_t seq_len = 128;         // tokens per training sequence (predicting seq_len targets)
  double lr = 3e-3, min_lr = 3e-4;
  int64_t warmup = 100;
  double weight_decay = 0.1;     // decoupled, on matrices only (not norms)
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double grad_clip = 1.0;        // global L2 norm; 0 disables
  uint64_t seed = 1;
  int64_t eval_every = 200;      // 0: only at the end
  int64_t eval_tokens = 16384;   // held-out tokens per evaluation
  int64_t checkpoint_every = 0;  // 0: none
  std::string checkpoint_path;   // training state (weights, optimizer, step, sampler) for resume
  bool resume = false;
};

struct TrainProgress {
  int64_t step = 0, steps = 0;
  double loss = 0, lr = 0, tokens_per_s = 0, eta_s = 0;
  double valid_loss = -1;  // set on evaluation steps
};

struct TrainResult {
  int64_t steps = 0;
  double train_loss = 0;   // mean over the last 50 steps
  double valid_loss = -1;  // nats/token on held-out tokens
  double seconds = 0;
  double tokens_per_s = 0;
  int64_t resumed_from = 0;
};

// Learning rate at `step` (0-based): linear warm-up to lr, cosine decay to min_lr at `steps`.
double lr_at(const TrainOptions& o, int64_t step);

// Trains model (a language model) on a token stream (documents as BOS + tokens, concatenated).
TrainResult train_language_model(Model& model, const std::vector<int32_t>& train_tokens,
                                 const std::vector<int32_t>& valid_tokens, const TrainOptions& opts,
                                 const std::function<void(const TrainProgress&)>& progress = {});

}  // namespace mc

// Training and fine-tuning: one trainer for `mcompress train` (a language model from scratch) and
// `mcompress distill` (students, recovery fine-tuning). AdamW with a cosine schedule and linear warm-up,
// gradient clipping and accumulation, seeded data sampling, periodic evaluation on held-out data,
// checkpoints with exact resume (weights, optimizer moments, step, sampler position, history) and
// progress with loss, throughput and ETA. What is trained and on which loss is the caller's: a list of
// parameters and a function that draws a micro-batch from the sampler and returns its loss.
#pragma once
#include <ATen/core/Tensor.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "mcompress/rng.h"

namespace mc {

class Model;

struct TrainOptions {
  int64_t steps = 1000;
  int64_t batch = 16;            // sequences (examples) per micro-batch
  int64_t accumulate = 1;        // micro-batches per optimizer step
  int64_t seq_len = 128;         // tokens per training sequence (predicting seq_len targets)
  double lr = 3e-3, min_lr = 3e-4;
  int64_t warmup = 100;
  double weight_decay = 0.1;     // decoupled, on matrices only (not norms)
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double grad_clip = 1.0;        // global L2 norm; 0 disables
  uint64_t seed = 1;
  int64_t eval_every = 200;      // 0: only at the end
  int64_t eval_tokens = 16384;   // held-out tokens per evaluation (language models)
  int64_t checkpoint_every = 0;  // 0: only when interrupted
  std::string checkpoint_path;   // training state for resume ("" = none)
  bool resume = false;           // continue from checkpoint_path when it exists
  // What the run is: saved in the checkpoint and compared on resume (a checkpoint from another
  // configuration is refused, naming the first item that differs). The trainer adds its own settings.
  std::map<std::string, std::string> identity;
  // Set (e.g. by a SIGINT handler) to stop after the current step; a checkpoint is written first.
  const std::atomic<bool>* interrupt = nullptr;
  // Throughput unit: what one micro-batch row is worth (seq_len tokens for LMs, 1 example otherwise).
  int64_t items_per_row = 0;     // 0: seq_len
  std::string unit = "tok";
};

// Checks steps, batch, accumulate, lr, warm-up and the rest; InputError naming the bad setting.
void validate(const TrainOptions& o);
// When o.resume and the checkpoint exists: InputError unless it is a training state of this
// configuration (o.identity and the trainer's settings). train() checks this and the parameters too;
// callers run it early, before they write anything.
void check_resume(const TrainOptions& o);

struct TrainProgress {
  int64_t step = 0, steps = 0;
  double loss = 0, lr = 0, items_per_s = 0, eta_s = 0;
  std::vector<std::pair<std::string, double>> parts;  // the loss's named terms (weighted), this step
  double valid_loss = -1;                             // set on evaluation steps
  std::string unit = "tok";
};

struct TrainPoint {
  int64_t step = 0;
  double train_loss = 0;   // mean over the steps since the previous point
  double valid_loss = -1;
};

struct TrainResult {
  int64_t steps = 0;            // steps done in total (== options.steps unless interrupted)
  double train_loss = 0;        // mean over the last 50 steps
  double valid_loss = -1;       // last held-out evaluation
  double seconds = 0;
  double items_per_s = 0;       // this process's throughput
  int64_t resumed_from = 0;
  bool interrupted = false;
  std::vector<TrainPoint> history;  // one point per evaluation (kept across resumes)
};

// A trained tensor: optimised in place (requires_grad is set while training, cleared after).
struct TrainParam {
  std::string name;
  at::Tensor value;
  bool decay = true;  // AdamW weight decay (matrices yes, norms and biases no)
};

// The model's float parameters, each distinct tensor once (tied weights once), decay on >= 2-D ones.
// Throws InputError for parameters that are not float32 (training needs float32 weights).
std::vector<TrainParam> model_parameters(Model& model);

struct StepLoss {
  at::Tensor loss;                                      // scalar, differentiable
  std::vector<std::pair<std::string, at::Tensor>> parts;  // named terms for progress (detached ok)
};
// Draws one micro-batch with `data` (the sampler whose state is checkpointed) and returns its loss.
using LossFn = std::function<StepLoss(SplitMix64& data)>;
// Held-out loss (lower is better).
using EvalFn = std::function<double()>;
using ProgressFn = std::function<void(const TrainProgress&)>;

// Learning rate at `step` (0-based): linear warm-up to lr, cosine decay to min_lr at `steps`.
double lr_at(const TrainOptions& o, int64_t step);

// Runs the optimisation. `before_step` (may be empty) runs before each step's first micro-batch (e.g.
// to re-bind fake-quantized weights). Resume: when o.resume and the checkpoint exists, it must match
// the parameters (names, shapes) and o.identity, else InputError and nothing is written.
TrainResult train(std::vector<TrainParam>& params, const LossFn& loss, const EvalFn& eval, const TrainOptions& o,
                  const ProgressFn& progress = {}, const std::function<void()>& before_step = {});

// Language-model helpers: windows of seq_len + 1 tokens drawn uniformly from a token stream, the
// next-token cross-entropy, and the held-out loss over consecutive windows of a token stream.
at::Tensor sample_windows(const std::vector<int32_t>& tokens, int64_t batch, int64_t seq_len, SplitMix64& rng);
at::Tensor next_token_loss(Model& model, const at::Tensor& windows);
double heldout_lm_loss(Model& model, const std::vector<int32_t>& tokens, int64_t seq_len, int64_t batch,
                       int64_t max_tokens);

// Trains model (a language model) on a token stream (documents as BOS + tokens, concatenated).
TrainResult train_language_model(Model& model, const std::vector<int32_t>& train_tokens,
                                 const std::vector<int32_t>& valid_tokens, const TrainOptions& opts,
                                 const ProgressFn& progress = {});

}  // namespace mc

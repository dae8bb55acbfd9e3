// Overhead of the trainer (mcompress/train.h: mc::train with AdamW, cosine schedule, gradient
// clipping, progress and checkpoint hooks) against a bare LibTorch loop on the same model, in the same
// process: tokens/s of `mc::train` vs a hand-written forward + backward + torch::nn::utils::clip_grad_norm_
// + torch::optim::AdamW step. Goal: the trainer at most 10% slower (>= 0.90x the bare loop).
//
// Both do identical work: the same parameter tensors (reset to the same initial weights before every
// run), the same batches (mc::sample_windows from one SplitMix64 seed over a random token stream), the
// same loss (mc::next_token_loss), the same learning rate per step (mc::lr_at: linear warm-up, cosine
// decay), clip at global norm 1.0, AdamW betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on the matrices
// and 0 on the norms (two torch param groups, as the trainer decays only >= 2-D tensors). The trainer
// runs with eval_every 0 and no eval function, checkpoint_every 0 and no checkpoint path, and a progress
// callback (which also times it). Each run is `warmup` untimed steps then `steps` timed steps; the runs
// alternate (trainer, bare, trainer, bare, ...) `reps` times each and the medians are compared (the
// machine may be shared). The final weights of the two loops are compared as a like-for-like check.
//
// Models: the stories260K shape (../shared/data/stories260K/stories260K.bin when it exists, else random
// weights of its shape: dim 64, hidden 172, 5 blocks, 8 heads, 4 kv heads, vocab 512), then a larger
// random llama where compute dominates (dim 256, hidden 688, 4 blocks, 8 heads, vocab 512).
//
// Usage: bench_trainer [--model PATH | --dim D [--layers L] [--hidden H] [--heads N] [--kv-heads N] [--vocab V]]
//                      [--steps N] [--warmup N] [--reps N] [--batch B] [--seq-len T] [--threads N]
//   --model or --dim: measure that one model only (default: both models above).
//   --steps: timed steps per run (default 60 for the stories260K shape, 20 for the larger model).
#include <ATen/ATen.h>
#include <torch/optim/adamw.h>
#include <torch/types.h>
// clip_grad.h is not self-contained: it needs torch::Tensor (torch/types.h) first.
#include <torch/nn/utils/clip_grad.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <unistd.h>
#include <vector>

#include "mcompress/model.h"
#include "mcompress/models/llama.h"
#include "mcompress/rng.h"
#include "mcompress/threads.h"
#include "mcompress/torch_bridge.h"
#include "mcompress/train.h"

namespace {

constexpr double kGoal = 0.90;  // trainer tokens/s >= 0.90x bare
constexpr const char* kStories = "../shared/data/stories260K/stories260K.bin";

using Clock = std::chrono::steady_clock;

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string thousands(double x) {
  std::string s = std::to_string(static_cast<long long>(std::llround(x)));
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(size_t(i), ",");
  return s;
}

struct Args {
  std::string model;
  mc::LlamaConfig cfg;  // cfg.dim > 0: a random model of this shape
  int64_t steps = 0, warmup = 5, reps = 3, batch = 16, seq_len = 128;
  int threads = 0;
};

struct Case {
  std::string label;
  std::unique_ptr<mc::Model> model;
  int64_t steps = 0;
};

mc::LlamaConfig llama_shape(int64_t dim, int64_t hidden, int64_t layers, int64_t heads, int64_t kv_heads,
                            int64_t vocab) {
  mc::LlamaConfig c;
  c.dim = dim, c.n_layers = layers, c.n_heads = heads, c.n_kv_heads = kv_heads, c.vocab_size = vocab;
  c.hidden_dim = hidden > 0 ? hidden : (2 * 4 * dim / 3 + 31) / 32 * 32;
  c.head_dim = dim / heads;
  c.max_seq_len = 512;
  return c;
}

std::unique_ptr<mc::Model> random_llama(const mc::LlamaConfig& c, uint64_t seed) {
  std::map<std::string, mc::HostTensor> init;
  for (const auto& [k, t] : mc::init_llama_weights(c, seed)) init[k] = mc::from_torch(k, t);
  return std::make_unique<mc::LlamaModel>(c, init);
}

std::string describe(const mc::Model& m) {
  const auto* l = dynamic_cast<const mc::LlamaModel*>(&m);
  if (!l) return m.arch();
  const auto& c = l->config();
  char b[160];
  std::snprintf(b, sizeof b, "dim %lld, %lld blocks, hidden %lld, %lld/%lld heads, vocab %lld",
                (long long)c.dim, (long long)c.n_layers, (long long)c.hidden_dim, (long long)c.n_heads,
                (long long)c.n_kv_heads, (long long)c.vocab_size);
  return b;
}

// One model: alternating timed runs of the trainer and the bare loop.
void measure(const Case& cs, const Args& a, const std::vector<int32_t>& tokens) {
  mc::Model& model = *cs.model;
  std::vector<mc::TrainParam> params = mc::model_parameters(model);
  std::vector<at::Tensor> init;
  int64_t n_params = 0;
  for (const auto& p : params) init.push_back(p.value.detach().clone()), n_params += p.value.numel();
  auto reset = [&] {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) params[i].value.copy_(init[i]);
  };

  mc::TrainOptions o;
  o.steps = a.warmup + cs.steps;
  o.batch = a.batch;
  o.seq_len = a.seq_len;
  o.lr = 3e-3, o.min_lr = 3e-4;
  o.warmup = std::max<int64_t>(1, o.steps / 10);
  o.weight_decay = 0.1;
  o.beta1 = 0.9, o.beta2 = 0.95, o.eps = 1e-8;
  o.grad_clip = 1.0;
  o.seed = 1;
  o.eval_every = 0;
  o.checkpoint_every = 0;
  const double timed_tokens = double(cs.steps) * double(o.batch) * double(o.seq_len);

  // Ours: mc::train; the progress callback marks the end of warm-up and of the last step.
  std::vector<at::Tensor> final_ours, final_bare;
  double loss_ours = 0, loss_bare = 0;
  auto run_ours = [&] {
    reset();
    mc::LossFn loss = [&](mc::SplitMix64& rng) {
      return mc::StepLoss{mc::next_token_loss(model, mc::sample_windows(tokens, o.batch, o.seq_len, rng)), {}};
    };
    Clock::time_point t_start, t_end;
    auto progress = [&](const mc::TrainProgress& p) {
      if (p.step == a.warmup) t_start = Clock::now();
      if (p.step == p.steps) t_end = Clock::now(), loss_ours = p.loss;
    };
    if (a.warmup == 0) t_start = Clock::now();
    mc::train(params, loss, mc::EvalFn{}, o, progress);
    final_ours.clear();
    for (const auto& p : params) final_ours.push_back(p.value.detach().clone());
    return timed_tokens / seconds(t_start, t_end);
  };

  // Bare: the loop one writes with LibTorch's own optimizer and clipping.
  auto run_bare = [&] {
    reset();
    std::vector<at::Tensor> all, decay, no_decay;
    for (auto& p : params) {
      p.value.requires_grad_(true);
      all.push_back(p.value);
      (p.decay ? decay : no_decay).push_back(p.value);
    }
    std::vector<torch::optim::OptimizerParamGroup> groups;
    auto opts = [&](double wd) {
      return std::make_unique<torch::optim::AdamWOptions>(
          torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(wd));
    };
    if (!decay.empty()) groups.emplace_back(decay, opts(o.weight_decay));
    if (!no_decay.empty()) groups.emplace_back(no_decay, opts(0.0));
    torch::optim::AdamW opt(std::move(groups), torch::optim::AdamWOptions(o.lr));
    mc::SplitMix64 rng{o.seed};
    Clock::time_point t_start = Clock::now();
    for (int64_t step = 0; step < o.steps; ++step) {
      if (step == a.warmup) t_start = Clock::now();
      const double lr = mc::lr_at(o, step);
      for (auto& g : opt.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
      at::Tensor loss = mc::next_token_loss(model, mc::sample_windows(tokens, o.batch, o.seq_len, rng));
      opt.zero_grad();
      loss.backward();
      torch::nn::utils::clip_grad_norm_(all, o.grad_clip);
      opt.step();
      if (step + 1 == o.steps) loss_bare = loss.item<double>();
    }
    const Clock::time_point t_end = Clock::now();
    final_bare.clear();
    for (auto& p : params) {
      final_bare.push_back(p.value.detach().clone());
      p.value.requires_grad_(false);
      p.value.mutable_grad() = at::Tensor();
    }
    return timed_tokens / seconds(t_start, t_end);
  };

  std::printf("%s (%s; %.2fM params): %lld timed steps of %lldx%lld tokens after %lld warm-up, %lld runs each\n",
              cs.label.c_str(), describe(model).c_str(), double(n_params) / 1e6, (long long)cs.steps,
              (long long)o.batch, (long long)o.seq_len, (long long)a.warmup, (long long)a.reps);
  std::fflush(stdout);
  std::vector<double> ours, bare, pair;
  for (int64_t r = 0; r < a.reps; ++r) {
    ours.push_back(run_ours());
    bare.push_back(run_bare());
    pair.push_back(ours.back() / bare.back());
    std::printf("  run %lld: trainer %s tok/s, bare %s tok/s (%.3fx)\n", (long long)r + 1,
                thousands(ours.back()).c_str(), thousands(bare.back()).c_str(), pair.back());
    std::fflush(stdout);
  }
  double max_diff = 0, max_abs = 0;
  for (size_t i = 0; i < final_ours.size(); ++i) {
    max_diff = std::max(max_diff, (final_ours[i] - final_bare[i]).abs().max().item<double>());
    max_abs = std::max(max_abs, final_ours[i].abs().max().item<double>());
  }
  reset();
  const double mo = median(ours), mb = median(bare), ratio = mo / mb;
  std::printf("  same work: final loss trainer %.4f, bare %.4f; max |w_trainer - w_bare| %.2e (max |w| %.2f)\n",
              loss_ours, loss_bare, max_diff, max_abs);
  std::printf("%s: bare %s tok/s, trainer %s tok/s = %.2fx (median of pairs %.2fx; goal: ours >= %.2fx bare) %s\n\n",
              cs.label.c_str(), thousands(mb).c_str(), thousands(mo).c_str(), ratio, median(pair), kGoal,
              ratio >= kGoal ? "OK" : "MISSED");
  std::fflush(stdout);
}

[[noreturn]] void usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s [--model PATH | --dim D [--layers L] [--hidden H] [--heads N] [--kv-heads N] "
               "[--vocab V]] [--steps N] [--warmup N] [--reps N] [--batch B] [--seq-len T] [--threads N]\n",
               argv0);
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  int64_t dim = 0, layers = 4, hidden = 0, heads = 8, kv_heads = 0, vocab = 512;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "-h" || k == "--help") usage(argv[0]);
    if (i + 1 >= argc) usage(argv[0]);
    const char* v = argv[++i];
    if (k == "--model") a.model = v;
    else if (k == "--dim") dim = std::atoll(v);
    else if (k == "--layers") layers = std::atoll(v);
    else if (k == "--hidden") hidden = std::atoll(v);
    else if (k == "--heads") heads = std::atoll(v);
    else if (k == "--kv-heads") kv_heads = std::atoll(v);
    else if (k == "--vocab") vocab = std::atoll(v);
    else if (k == "--steps") a.steps = std::atoll(v);
    else if (k == "--warmup") a.warmup = std::atoll(v);
    else if (k == "--reps") a.reps = std::atoll(v);
    else if (k == "--batch") a.batch = std::atoll(v);
    else if (k == "--seq-len") a.seq_len = std::atoll(v);
    else if (k == "--threads") a.threads = std::atoi(v);
    else usage(argv[0]);
  }
  if (dim > 0) a.cfg = llama_shape(dim, hidden, layers, heads, kv_heads > 0 ? kv_heads : heads, vocab);
  if (a.reps < 1 || a.warmup < 0 || a.steps < 0 || a.batch < 1 || a.seq_len < 1) usage(argv[0]);
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  // As the mcompress CLI does (tools/mcompress/main.cpp): passive OpenMP waiting, so idle worker
  // threads don't spin against OpenBLAS and each other; libgomp reads it at load, so start again once.
  if (!std::getenv("OMP_WAIT_POLICY")) {
    ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    ::execv("/proc/self/exe", argv);
  }
  const Args a = parse(argc, argv);
  const int threads = mc::set_threads(a.threads);

  std::vector<Case> cases;
  if (!a.model.empty()) {
    cases.push_back({a.model, mc::load_model(a.model), a.steps > 0 ? a.steps : 20});
  } else if (a.cfg.dim > 0) {
    cases.push_back({"dim " + std::to_string(a.cfg.dim) + " model", random_llama(a.cfg, 1), a.steps > 0 ? a.steps : 20});
  } else {
    const int64_t small = a.steps > 0 ? a.steps : 60, large = a.steps > 0 ? a.steps : 20;
    if (std::filesystem::exists(kStories))
      cases.push_back({"stories260K", mc::load_model(kStories), small});
    else
      cases.push_back({"stories260K shape (random weights)", random_llama(llama_shape(64, 172, 5, 8, 4, 512), 1), small});
    cases.push_back({"dim 256 model", random_llama(llama_shape(256, 688, 4, 8, 8, 512), 1), large});
  }

  std::printf("bench_trainer: mc::train vs bare LibTorch loop (AdamW + clip_grad_norm_), %d threads, OMP_WAIT_POLICY=%s\n\n",
              threads, std::getenv("OMP_WAIT_POLICY"));
  for (const auto& cs : cases) {
    const int64_t vocab = cs.model->vocab_size();
    if (a.seq_len > cs.model->max_seq_len()) {
      std::fprintf(stderr, "%s: --seq-len %lld exceeds the model's context %lld\n", cs.label.c_str(),
                   (long long)a.seq_len, (long long)cs.model->max_seq_len());
      return 2;
    }
    mc::SplitMix64 gen{12345};
    std::vector<int32_t> tokens(1 << 18);
    for (auto& t : tokens) t = static_cast<int32_t>(gen.below(uint64_t(vocab)));
    measure(cs, a, tokens);
  }
  return 0;
}

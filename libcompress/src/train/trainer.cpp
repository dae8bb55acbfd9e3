#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <set>

#include "mcompress/error.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/model.h"
#include "mcompress/rng.h"
#include "mcompress/torch_bridge.h"
#include "mcompress/train.h"

namespace mc {

namespace {

constexpr double kPi = 3.14159265358979323846;

// The sampler's whole state is one integer, saved in checkpoints for exact resume.
using Sampler = SplitMix64;

struct Param {
  std::string key;
  at::Tensor value, m, v;
  bool decay;
};

// One entry per distinct tensor (tied weights are trained once).
std::vector<Param> trainable(Model& model) {
  std::vector<Param> out;
  std::set<const void*> seen;
  for (const auto& [key, t] : model.params()) {
    if (!t.is_floating_point() || !seen.insert(t.unsafeGetTensorImpl()).second) continue;
    at::Tensor p = t;
    if (p.scalar_type() != at::kFloat) fail("train", "parameter '", key, "' is ", c10::toString(p.scalar_type()),
                                            "; training needs float32 weights");
    p.requires_grad_(true);
    out.push_back({key, p, at::zeros_like(p), at::zeros_like(p), p.dim() >= 2});
  }
  return out;
}

at::Tensor make_batch(const std::vector<int32_t>& tokens, int64_t batch, int64_t len, Sampler& s) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  at::Tensor b = at::empty({batch, len + 1}, at::kLong);
  auto acc = b.accessor<int64_t, 2>();
  for (int64_t i = 0; i < batch; ++i) {
    int64_t start = static_cast<int64_t>(s.next() % static_cast<uint64_t>(n - len - 1));
    for (int64_t j = 0; j <= len; ++j) acc[i][j] = tokens[start + j];
  }
  return b;
}

at::Tensor lm_loss(Model& model, const at::Tensor& batch) {
  const int64_t len = batch.size(1) - 1;
  at::Tensor x = batch.narrow(1, 0, len).to(model.device());
  at::Tensor y = batch.narrow(1, 1, len).to(model.device());
  at::Tensor logits = model.forward(x);
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), y.reshape({-1}));
}

double evaluate(Model& model, const std::vector<int32_t>& tokens, const TrainOptions& o) {
  at::NoGradGuard no_grad;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t windows = std::min<int64_t>((n - 1) / o.seq_len, std::max<int64_t>(1, o.eval_tokens / o.seq_len));
  double total = 0;
  int64_t count = 0;
  for (int64_t w0 = 0; w0 < windows; w0 += o.batch) {
    int64_t nb = std::min(o.batch, windows - w0);
    at::Tensor b = at::empty({nb, o.seq_len + 1}, at::kLong);
    auto acc = b.accessor<int64_t, 2>();
    for (int64_t i = 0; i < nb; ++i)
      for (int64_t j = 0; j <= o.seq_len; ++j) acc[i][j] = tokens[(w0 + i) * o.seq_len + j];
    total += lm_loss(model, b).item<double>() * nb;
    count += nb;
  }
  return total / count;
}

void save_state(const std::string& path, const std::vector<Param>& params, int64_t step, uint64_t sampler) {
  std::vector<HostTensor> ts;
  for (const auto& p : params) {
    ts.push_back(from_torch("param/" + p.key, p.value));
    ts.push_back(from_torch("adam_m/" + p.key, p.m));
    ts.push_back(from_torch("adam_v/" + p.key, p.v));
  }
  write_safetensors(path, ts, {{"mcompress.train_state", "1"}, {"step", std::to_string(step)},
                               {"sampler", std::to_string(sampler)}});
}

void load_state(const std::string& path, std::vector<Param>& params, int64_t* step, uint64_t* sampler) {
  auto r = open_safetensors(path);
  if (!r->metadata().count("mcompress.train_state")) fail("train", path, ": not a training checkpoint");
  at::NoGradGuard no_grad;
  for (auto& p : params) {
    for (auto [prefix, dst] : {std::pair<const char*, at::Tensor*>{"param/", &p.value}, {"adam_m/", &p.m}, {"adam_v/", &p.v}}) {
      const std::string key = prefix + p.key;
      if (!r->contains(key)) fail("train", path, ": training checkpoint has no tensor '", key, "' (different model?)");
      at::Tensor src = to_torch(r->load(key));
      if (src.sizes() != dst->sizes())
        fail("train", path, ": tensor '", key, "' has shape ", src.sizes(), ", the model needs ", dst->sizes());
      dst->copy_(src);
    }
  }
  *step = std::stoll(r->metadata().at("step"));
  *sampler = std::stoull(r->metadata().at("sampler"));
}

}  // namespace

double lr_at(const TrainOptions& o, int64_t step) {
  if (step < o.warmup) return o.lr * double(step + 1) / double(o.warmup);
  if (o.steps <= o.warmup) return o.lr;
  double t = double(step - o.warmup) / double(std::max<int64_t>(1, o.steps - o.warmup));
  return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + std::cos(kPi * std::min(1.0, t)));
}

TrainResult train_language_model(Model& model, const std::vector<int32_t>& train_tokens,
                                 const std::vector<int32_t>& valid_tokens, const TrainOptions& o,
                                 const std::function<void(const TrainProgress&)>& progress) {
  if (!model.is_language_model()) fail("train", "model is not a language model");
  if (static_cast<int64_t>(train_tokens.size()) < o.seq_len + 2)
    fail("train", "training data has ", train_tokens.size(), " tokens; need more than seq_len + 1 = ", o.seq_len + 1);
  if (o.steps < 1 || o.batch < 1 || o.accumulate < 1 || o.seq_len < 1)
    fail("train", "steps, batch, accumulate and seq_len must be >= 1");
  std::vector<Param> params = trainable(model);
  Sampler sampler{o.seed};
  int64_t step = 0;
  TrainResult res;
  if (o.resume && !o.checkpoint_path.empty() && std::filesystem::exists(o.checkpoint_path)) {
    load_state(o.checkpoint_path, params, &step, &sampler.state);
    res.resumed_from = step;
  }
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t tokens_per_step = o.batch * o.accumulate * o.seq_len;
  std::vector<double> recent;
  for (; step < o.steps; ++step) {
    double loss_sum = 0;
    for (int64_t a = 0; a < o.accumulate; ++a) {
      at::Tensor loss = lm_loss(model, make_batch(train_tokens, o.batch, o.seq_len, sampler)) / double(o.accumulate);
      loss.backward();
      loss_sum += loss.item<double>();
    }
    const double lr = lr_at(o, step);
    {
      at::NoGradGuard no_grad;
      if (o.grad_clip > 0) {
        double sq = 0;
        for (auto& p : params)
          if (p.value.grad().defined()) sq += p.value.grad().pow(2).sum().item<double>();
        double norm = std::sqrt(sq);
        if (norm > o.grad_clip)
          for (auto& p : params)
            if (p.value.grad().defined()) p.value.grad().mul_(o.grad_clip / (norm + 1e-6));
      }
      // AdamW (decoupled weight decay), bias-corrected.
      const double bc1 = 1.0 - std::pow(o.beta1, double(step + 1)), bc2 = 1.0 - std::pow(o.beta2, double(step + 1));
      for (auto& p : params) {
        at::Tensor g = p.value.grad();
        if (!g.defined()) continue;
        if (p.decay && o.weight_decay > 0) p.value.mul_(1.0 - lr * o.weight_decay);
        p.m.mul_(o.beta1).add_(g, 1.0 - o.beta1);
        p.v.mul_(o.beta2).addcmul_(g, g, 1.0 - o.beta2);
        at::Tensor denom = (p.v / bc2).sqrt_().add_(o.eps);
        p.value.addcdiv_(p.m, denom, -lr / bc1);
        g.zero_();
      }
    }
    recent.push_back(loss_sum);
    if (recent.size() > 50) recent.erase(recent.begin());
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int64_t done = step + 1 - res.resumed_from;
    TrainProgress pr;
    pr.step = step + 1;
    pr.steps = o.steps;
    pr.loss = loss_sum;
    pr.lr = lr;
    pr.tokens_per_s = done * tokens_per_step / std::max(secs, 1e-9);
    pr.eta_s = secs / done * (o.steps - step - 1);
    const bool last = step + 1 == o.steps;
    if (!valid_tokens.empty() && ((o.eval_every > 0 && (step + 1) % o.eval_every == 0) || last))
      pr.valid_loss = res.valid_loss = evaluate(model, valid_tokens, o);
    if (o.checkpoint_every > 0 && !o.checkpoint_path.empty() && ((step + 1) % o.checkpoint_every == 0 || last))
      save_state(o.checkpoint_path, params, step + 1, sampler.state);
    if (progress) progress(pr);
  }
  for (auto& p : params) p.value.requires_grad_(false);
  double sum = 0;
  for (double l : recent) sum += l;
  res.train_loss = recent.empty() ? 0 : sum / recent.size();
  res.steps = o.steps;
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  res.tokens_per_s = (o.steps - res.resumed_from) * tokens_per_step / std::max(res.seconds, 1e-9);
  return res;
}

}  // namespace mc

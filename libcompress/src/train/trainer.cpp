#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "mcompress/error.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/model.h"
#include "mcompress/torch_bridge.h"
#include "mcompress/train.h"

namespace mc {

namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr const char* kStateKey = "mcompress.train_state";
constexpr const char* kStateVersion = "2";

struct OptState {
  at::Tensor m, v;
};

std::string num(double x) {
  std::ostringstream os;
  os.precision(17);
  os << x;
  return os.str();
}

// The trainer's own settings that a resumed run must share with the run it continues.
std::map<std::string, std::string> full_identity(const TrainOptions& o) {
  auto id = o.identity;
  id["steps"] = std::to_string(o.steps);
  id["batch"] = std::to_string(o.batch);
  id["accumulate"] = std::to_string(o.accumulate);
  id["seq_len"] = std::to_string(o.seq_len);
  id["lr"] = num(o.lr);
  id["min_lr"] = num(o.min_lr);
  id["warmup"] = std::to_string(o.warmup);
  id["weight_decay"] = num(o.weight_decay);
  id["betas"] = num(o.beta1) + "," + num(o.beta2) + "," + num(o.eps);
  id["grad_clip"] = num(o.grad_clip);
  id["seed"] = std::to_string(o.seed);
  return id;
}

void save_state(const std::string& path, const std::vector<TrainParam>& params, const std::vector<OptState>& opt,
                int64_t step, uint64_t sampler, const TrainOptions& o, const std::vector<TrainPoint>& history) {
  std::vector<HostTensor> ts;
  for (size_t i = 0; i < params.size(); ++i) {
    ts.push_back(from_torch("param/" + params[i].name, params[i].value.detach()));
    ts.push_back(from_torch("adam_m/" + params[i].name, opt[i].m));
    ts.push_back(from_torch("adam_v/" + params[i].name, opt[i].v));
  }
  nlohmann::json h = nlohmann::json::array();
  for (const auto& p : history) h.push_back({p.step, p.train_loss, p.valid_loss});
  nlohmann::json id = full_identity(o);
  write_safetensors(path, ts,
                    {{kStateKey, kStateVersion},
                     {"step", std::to_string(step)},
                     {"sampler", std::to_string(sampler)},
                     {"identity", id.dump()},
                     {"history", h.dump()}});
}

// Refuses a checkpoint that is not a training state of this build or of this configuration.
void check_identity(const CheckpointReader& r, const TrainOptions& o) {
  const std::string& path = r.path();
  const auto& meta = r.metadata();
  auto version = meta.find(kStateKey);
  if (version == meta.end()) fail("train", path, ": not a training checkpoint");
  if (version->second != kStateVersion)
    fail("train", path, ": training checkpoint version ", version->second, " (this build resumes version ",
         kStateVersion, "); start without --resume");
  std::map<std::string, std::string> saved;
  try {
    saved = nlohmann::json::parse(meta.at("identity")).get<std::map<std::string, std::string>>();
  } catch (const std::exception&) {
    fail("train", path, ": training checkpoint without a readable identity");
  }
  const std::map<std::string, std::string> here = full_identity(o);
  std::set<std::string> keys;
  for (const auto& [k, v] : saved) keys.insert(k);
  for (const auto& [k, v] : here) keys.insert(k);
  for (const auto& k : keys) {
    auto a = saved.find(k);
    auto b = here.find(k);
    const std::string va = a == saved.end() ? "(unset)" : a->second, vb = b == here.end() ? "(unset)" : b->second;
    if (va != vb)
      fail("train", path, ": checkpoint of another configuration (", k, " is ", va, " there, ", vb,
           " here); use the same settings or another output");
  }
}

// Reads a checkpoint into params/opt after checking that it belongs to this run; throws InputError
// (before anything is changed) otherwise.
void load_state(const std::string& path, std::vector<TrainParam>& params, std::vector<OptState>& opt, int64_t* step,
                uint64_t* sampler, const TrainOptions& o, std::vector<TrainPoint>* history) {
  auto r = open_safetensors(path);
  const auto& meta = r->metadata();
  check_identity(*r, o);
  std::set<std::string> expected;
  for (const auto& p : params)
    for (const char* prefix : {"param/", "adam_m/", "adam_v/"}) {
      const std::string key = prefix + p.name;
      expected.insert(key);
      if (!r->contains(key)) fail("train", path, ": training checkpoint has no tensor '", key, "' (another model?)");
      const Shape& s = r->info(key).shape;
      if (!p.value.sizes().equals(std::vector<int64_t>(s.begin(), s.end())))
        fail("train", path, ": tensor '", key, "' has shape ", shape_str(s), ", this run's is ",
             shape_str(Shape(p.value.sizes().begin(), p.value.sizes().end())));
    }
  for (const auto& ti : r->tensors())
    if (!expected.count(ti.name)) fail("train", path, ": training checkpoint has '", ti.name, "', which this run lacks");
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) {
    params[i].value.copy_(to_torch(r->load("param/" + params[i].name)));
    opt[i].m.copy_(to_torch(r->load("adam_m/" + params[i].name)));
    opt[i].v.copy_(to_torch(r->load("adam_v/" + params[i].name)));
  }
  *step = std::stoll(meta.at("step"));
  *sampler = std::stoull(meta.at("sampler"));
  history->clear();
  for (const auto& p : nlohmann::json::parse(meta.at("history"))) history->push_back({p[0], p[1], p[2]});
}

}  // namespace

void check_resume(const TrainOptions& o) {
  if (o.resume && !o.checkpoint_path.empty() && std::filesystem::exists(o.checkpoint_path))
    check_identity(*open_safetensors(o.checkpoint_path), o);
}

void validate(const TrainOptions& o) {
  if (o.steps < 1) fail("train", "steps must be positive (got ", o.steps, ")");
  if (o.batch < 1) fail("train", "batch must be positive (got ", o.batch, ")");
  if (o.accumulate < 1) fail("train", "accumulate must be positive (got ", o.accumulate, ")");
  if (o.seq_len < 1) fail("train", "seq-len must be positive (got ", o.seq_len, ")");
  if (!(o.lr > 0) || !std::isfinite(o.lr)) fail("train", "learning rate must be positive (got ", o.lr, ")");
  if (!(o.min_lr >= 0) || o.min_lr > o.lr) fail("train", "min-lr must be in [0, lr] (got ", o.min_lr, ")");
  if (o.warmup < 0) fail("train", "warmup must be >= 0 (got ", o.warmup, ")");
  if (!(o.weight_decay >= 0)) fail("train", "weight decay must be >= 0 (got ", o.weight_decay, ")");
  if (!(o.grad_clip >= 0)) fail("train", "grad clip must be >= 0 (got ", o.grad_clip, ")");
  if (o.eval_every < 0 || o.checkpoint_every < 0) fail("train", "eval-every and checkpoint-every must be >= 0");
}

std::vector<TrainParam> model_parameters(Model& model) {
  std::vector<TrainParam> out;
  std::set<const void*> seen;
  for (const auto& [key, t] : model.params()) {
    if (!t.defined() || !t.is_floating_point() || !seen.insert(t.unsafeGetTensorImpl()).second) continue;
    if (t.scalar_type() != at::kFloat)
      fail("train", "parameter '", key, "' is ", c10::toString(t.scalar_type()), "; training needs float32 weights");
    out.push_back({key, t, t.dim() >= 2});
  }
  return out;
}

double lr_at(const TrainOptions& o, int64_t step) {
  if (step < o.warmup) return o.lr * double(step + 1) / double(o.warmup);
  if (o.steps <= o.warmup) return o.lr;
  double t = double(step - o.warmup) / double(std::max<int64_t>(1, o.steps - o.warmup));
  return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + std::cos(kPi * std::min(1.0, t)));
}

TrainResult train(std::vector<TrainParam>& params, const LossFn& loss_fn, const EvalFn& eval, const TrainOptions& o,
                  const ProgressFn& progress, const std::function<void()>& before_step) {
  validate(o);
  if (params.empty()) fail("train", "nothing to train");
  std::vector<OptState> opt;
  for (auto& p : params) {
    if (!p.value.is_leaf()) fail("train", "parameter '", p.name, "' is not a leaf tensor");
    opt.push_back({at::zeros_like(p.value), at::zeros_like(p.value)});
  }
  SplitMix64 sampler{o.seed};
  int64_t step = 0;
  TrainResult res;
  if (o.resume && !o.checkpoint_path.empty() && std::filesystem::exists(o.checkpoint_path)) {
    load_state(o.checkpoint_path, params, opt, &step, &sampler.state, o, &res.history);
    res.resumed_from = step;
  }
  for (auto& p : params) p.value.requires_grad_(true);
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t items_per_step = o.batch * o.accumulate * (o.items_per_row > 0 ? o.items_per_row : o.seq_len);
  std::vector<double> recent;
  double since_point = 0;
  int64_t since_count = 0;
  auto checkpoint = [&](int64_t done) {
    if (!o.checkpoint_path.empty()) save_state(o.checkpoint_path, params, opt, done, sampler.state, o, res.history);
  };
  for (; step < o.steps; ++step) {
    double loss_sum = 0;
    std::vector<std::pair<std::string, double>> parts;
    for (int64_t a = 0; a < o.accumulate; ++a) {
      if (before_step) before_step();
      StepLoss sl = loss_fn(sampler);
      at::Tensor loss = sl.loss / double(o.accumulate);
      loss.backward();
      loss_sum += loss.item<double>();
      for (size_t i = 0; i < sl.parts.size(); ++i) {
        const double v = sl.parts[i].second.item<double>() / double(o.accumulate);
        if (a == 0) parts.emplace_back(sl.parts[i].first, v);
        else if (i < parts.size()) parts[i].second += v;
      }
    }
    if (!std::isfinite(loss_sum))
      fail<Error>("train", "loss is ", loss_sum, " at step ", step + 1, " (lower the learning rate?)");
    const double lr = lr_at(o, step);
    {
      at::NoGradGuard no_grad;
      if (o.grad_clip > 0) {
        std::vector<at::Tensor> norms;
        for (auto& p : params)
          if (p.value.grad().defined()) norms.push_back(p.value.grad().norm());
        const double norm = norms.empty() ? 0.0 : at::stack(norms).norm().item<double>();
        if (norm > o.grad_clip)
          for (auto& p : params)
            if (p.value.grad().defined()) p.value.grad().mul_(o.grad_clip / (norm + 1e-6));
      }
      // AdamW (Loshchilov & Hutter), bias-corrected, in the arithmetic order of torch.optim.AdamW.
      const double bc1 = 1.0 - std::pow(o.beta1, double(step + 1)), bc2 = 1.0 - std::pow(o.beta2, double(step + 1));
      for (size_t i = 0; i < params.size(); ++i) {
        auto& p = params[i];
        at::Tensor g = p.value.grad();
        if (!g.defined()) continue;
        if (p.decay && o.weight_decay > 0) p.value.mul_(1.0 - lr * o.weight_decay);
        opt[i].m.mul_(o.beta1).add_(g, 1.0 - o.beta1);
        opt[i].v.mul_(o.beta2).addcmul_(g, g, 1.0 - o.beta2);
        at::Tensor denom = opt[i].v.sqrt().div_(std::sqrt(bc2)).add_(o.eps);
        p.value.addcdiv_(opt[i].m, denom, -lr / bc1);
        g.zero_();
      }
    }
    recent.push_back(loss_sum);
    if (recent.size() > 50) recent.erase(recent.begin());
    since_point += loss_sum, ++since_count;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int64_t done = step + 1 - res.resumed_from;
    TrainProgress pr;
    pr.step = step + 1;
    pr.steps = o.steps;
    pr.loss = loss_sum;
    pr.parts = std::move(parts);
    pr.lr = lr;
    pr.unit = o.unit;
    pr.items_per_s = done * items_per_step / std::max(secs, 1e-9);
    pr.eta_s = secs / done * (o.steps - step - 1);
    const bool last = step + 1 == o.steps;
    if (eval && ((o.eval_every > 0 && (step + 1) % o.eval_every == 0) || last)) {
      pr.valid_loss = res.valid_loss = eval();
      res.history.push_back({step + 1, since_point / std::max<int64_t>(1, since_count), pr.valid_loss});
      since_point = 0, since_count = 0;
    }
    if (progress) progress(pr);
    const bool stop = o.interrupt && o.interrupt->load();
    if ((o.checkpoint_every > 0 && ((step + 1) % o.checkpoint_every == 0 || last)) || (stop && !last))
      checkpoint(step + 1);
    if (stop && !last) {
      res.interrupted = true;
      ++step;
      break;
    }
  }
  for (auto& p : params) {
    p.value.requires_grad_(false);
    p.value.mutable_grad() = at::Tensor();
  }
  double sum = 0;
  for (double l : recent) sum += l;
  res.train_loss = recent.empty() ? 0 : sum / recent.size();
  res.steps = step;
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  res.items_per_s = (step - res.resumed_from) * items_per_step / std::max(res.seconds, 1e-9);
  return res;
}

at::Tensor sample_windows(const std::vector<int32_t>& tokens, int64_t batch, int64_t len, SplitMix64& s) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n < len + 2) fail("train", "training data has ", n, " tokens; need more than seq_len + 1 = ", len + 1);
  at::Tensor b = at::empty({batch, len + 1}, at::kLong);
  auto acc = b.accessor<int64_t, 2>();
  for (int64_t i = 0; i < batch; ++i) {
    int64_t start = static_cast<int64_t>(s.next() % static_cast<uint64_t>(n - len - 1));
    for (int64_t j = 0; j <= len; ++j) acc[i][j] = tokens[start + j];
  }
  return b;
}

at::Tensor next_token_loss(Model& model, const at::Tensor& batch) {
  const int64_t len = batch.size(1) - 1;
  at::Tensor x = batch.narrow(1, 0, len).to(model.device());
  at::Tensor y = batch.narrow(1, 1, len).to(model.device());
  at::Tensor logits = model.forward(x);
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), y.reshape({-1}));
}

double heldout_lm_loss(Model& model, const std::vector<int32_t>& tokens, int64_t seq_len, int64_t batch,
                       int64_t max_tokens) {
  at::NoGradGuard no_grad;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t windows = std::min<int64_t>((n - 1) / seq_len, std::max<int64_t>(1, max_tokens / seq_len));
  if (windows < 1) fail("train", "held-out data has ", n, " tokens; need at least seq_len + 1 = ", seq_len + 1);
  double total = 0;
  int64_t count = 0;
  for (int64_t w0 = 0; w0 < windows; w0 += batch) {
    int64_t nb = std::min(batch, windows - w0);
    at::Tensor b = at::empty({nb, seq_len + 1}, at::kLong);
    auto acc = b.accessor<int64_t, 2>();
    for (int64_t i = 0; i < nb; ++i)
      for (int64_t j = 0; j <= seq_len; ++j) acc[i][j] = tokens[(w0 + i) * seq_len + j];
    total += next_token_loss(model, b).item<double>() * nb;
    count += nb;
  }
  return total / count;
}

TrainResult train_language_model(Model& model, const std::vector<int32_t>& train_tokens,
                                 const std::vector<int32_t>& valid_tokens, const TrainOptions& o,
                                 const ProgressFn& progress) {
  if (!model.is_language_model()) fail("train", "model is not a language model");
  validate(o);
  if (static_cast<int64_t>(train_tokens.size()) < o.seq_len + 2)
    fail("train", "training data has ", train_tokens.size(), " tokens; need more than seq_len + 1 = ", o.seq_len + 1);
  std::vector<TrainParam> params = model_parameters(model);
  LossFn loss = [&](SplitMix64& rng) {
    return StepLoss{next_token_loss(model, sample_windows(train_tokens, o.batch, o.seq_len, rng)), {}};
  };
  EvalFn eval;
  if (!valid_tokens.empty())
    eval = [&] { return heldout_lm_loss(model, valid_tokens, o.seq_len, o.batch, o.eval_tokens); };
  return train(params, loss, eval, o, progress);
}

}  // namespace mc

// The distillation loop: teacher and student run on the same micro-batch, the weighted loss terms of
// distill.h are summed and the trainer (train.h) optimises the student, its hidden-state projections
// and, in recovery fine-tuning, latent weights seen by the model through their frozen grid.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <set>

#include "mcompress/distill.h"
#include "mcompress/error.h"
#include "mcompress/model.h"
#include "mcompress/models/classifier.h"

namespace mc {

namespace {

constexpr const char* kC = "distill";

struct Outputs {
  at::Tensor logits;
  std::map<int, at::Tensor> hidden, attention;
};

// Runs `m` block by block, keeping the outputs of `hidden` blocks and the attention maps of
// `attention` blocks.
Outputs run(Model& m, const at::Tensor& x, const std::set<int>& hidden, const std::set<int>& attention) {
  Outputs out;
  if (!attention.empty())
    m.set_attention_observer([&](int k, const at::Tensor& p) {
      if (attention.count(k)) out.attention[k] = p;
    });
  at::Tensor h = m.embed(x);
  for (int k = 0; k < m.num_blocks(); ++k) {
    h = m.run_block(k, h);
    if (hidden.count(k)) out.hidden[k] = h.dim() > 2 && !m.is_language_model() ? h.flatten(1) : h;
  }
  out.logits = m.head(h);
  if (!attention.empty()) m.set_attention_observer({});
  return out;
}

// Cross-entropy of the rows whose label is >= 0 (0 when there is none).
at::Tensor labeled_ce(const at::Tensor& logits, const at::Tensor& labels) {
  at::Tensor keep = labels.ge(0);
  at::Tensor per = at::cross_entropy_loss(logits.to(at::kFloat), labels.clamp_min(0), {}, at::Reduction::None);
  return (per * keep).sum() / keep.sum().clamp_min(1);
}

}  // namespace

void check_distill(const Model& teacher, const Model& student, const DistillOptions& o) {
  if (teacher.is_language_model() != student.is_language_model())
    fail(kC, "the teacher is ", teacher.is_language_model() ? "a language model" : "a classifier",
         " but the student is ", student.is_language_model() ? "a language model" : "a classifier");
  if (teacher.is_language_model()) {
    if (teacher.vocab_size() != student.vocab_size())
      fail(kC, "the student's vocabulary has ", student.vocab_size(), " tokens, the teacher's ", teacher.vocab_size(),
           ": logits cannot be compared");
  } else {
    auto* t = dynamic_cast<const ClassifierModel*>(&teacher);
    auto* s = dynamic_cast<const ClassifierModel*>(&student);
    if (t && s) {
      if (t->num_classes() != s->num_classes())
        fail(kC, "the student has ", s->num_classes(), " classes, the teacher ", t->num_classes());
      if (t->input_shape() != s->input_shape())
        fail(kC, "the student's input shape ", shape_str(s->input_shape()), " differs from the teacher's ",
             shape_str(t->input_shape()));
    }
  }
  if (o.loss.hidden > 0 || o.loss.attention > 0) {
    if (o.layer_map.empty()) fail(kC, "hidden-state and attention terms need a layer map");
    for (const auto& [a, b] : o.layer_map) {
      if (a < 0 || a >= student.num_blocks())
        fail(kC, "layer map ", a, ":", b, ": the student has no block ", a, " (it has ", student.num_blocks(), ")");
      if (b < 0 || b >= teacher.num_blocks())
        fail(kC, "layer map ", a, ":", b, ": the teacher has no block ", b, " (it has ", teacher.num_blocks(), ")");
    }
  }
  if (o.loss.attention > 0 && !(teacher.has_attention() && student.has_attention()))
    fail(kC, "the attention term needs models with attention (", teacher.arch(), " teacher, ", student.arch(),
         " student)");
  for (const auto& [key, g] : o.frozen) {
    const at::Tensor& w = student.param(key);
    if (w.numel() != g.scale_full.numel() && g.scale_full.defined())
      fail(kC, "frozen grid of '", key, "' does not fit the student's weight ", w.sizes());
  }
}

DistillData mixup_inputs(const DistillData& from, int64_t n, uint64_t seed) {
  if (!from.labeled() || from.inputs.size(0) < 1) fail(kC, "mixup needs labeled inputs to mix");
  const int64_t N = from.inputs.size(0);
  SplitMix64 rng{seed};
  std::vector<int64_t> a(n), b(n);
  std::vector<float> l(n);
  for (int64_t i = 0; i < n; ++i) a[i] = rng.below(N), b[i] = rng.below(N), l[i] = float(rng.uniform());
  auto idx = [](std::vector<int64_t>& v) { return at::from_blob(v.data(), {int64_t(v.size())}, at::kLong).clone(); };
  std::vector<int64_t> shape = {n};
  for (int64_t d = 1; d < from.inputs.dim(); ++d) shape.push_back(1);
  at::Tensor lam = at::from_blob(l.data(), {n}, at::kFloat).clone().view(shape);
  DistillData out;
  out.inputs = from.inputs.index_select(0, idx(a)) * lam + from.inputs.index_select(0, idx(b)) * (1 - lam);
  out.labels = at::full({n}, -1, at::kLong);
  return out;
}

TrainResult distill(Model& teacher, Model& student, const DistillData& train, const DistillData& valid,
                    const DistillOptions& o, const ProgressFn& progress) {
  check_distill(teacher, student, o);
  validate(o.train);
  const bool lm = student.is_language_model();
  const TrainOptions& to = o.train;
  if (lm && static_cast<int64_t>(train.tokens.size()) < to.seq_len + 2)
    fail(kC, "training data has ", train.tokens.size(), " tokens; need more than seq_len + 1 = ", to.seq_len + 1);
  if (!lm && (!train.labeled() || train.inputs.size(0) < 1)) fail(kC, "no training examples");
  if (lm && to.seq_len > student.max_seq_len())
    fail(kC, "--seq-len ", to.seq_len, " exceeds the student's context ", student.max_seq_len());

  // Which blocks' hidden states and attention maps the loss needs.
  std::set<int> s_hidden, t_hidden, s_attn, t_attn;
  for (const auto& [a, b] : o.layer_map) {
    if (o.loss.hidden > 0) s_hidden.insert(a), t_hidden.insert(b);
    if (o.loss.attention > 0) s_attn.insert(a), t_attn.insert(b);
  }

  // Parameters: the student's own (frozen weights replaced by latents) and the projections.
  std::vector<TrainParam> params;
  for (auto& p : model_parameters(student))
    if (!o.frozen.count(p.name)) params.push_back(p);
  std::vector<std::pair<const FrozenGrid*, at::Tensor>> latents;
  for (const auto& [key, g] : o.frozen) {
    at::Tensor w = student.param(key).detach().clone();
    params.push_back({key, w, false});  // no weight decay: it would drag codes towards zero
    latents.emplace_back(&g, w);
  }
  auto bind_latents = [&] {
    for (auto& [g, w] : latents) student.bind_param(g->key, fake_quant_ste(w, *g));
  };

  // Probe the hidden widths with one example to size the projections.
  at::Tensor probe = lm ? at::zeros({1, 2}, at::kLong) : train.inputs.narrow(0, 0, 1);
  std::map<int, at::Tensor> projection;
  if (!s_hidden.empty()) {
    at::NoGradGuard ng;
    bind_latents();
    Outputs ps = run(student, probe.to(student.device()), s_hidden, {});
    Outputs pt = run(teacher, probe.to(teacher.device()), t_hidden, {});
    at::Generator gen = at::detail::createCPUGenerator(to.seed ^ 0x70726f6aull);
    for (const auto& [a, b] : o.layer_map) {
      const int64_t ds = ps.hidden.at(a).size(-1), dt = pt.hidden.at(b).size(-1);
      if (ds == dt || projection.count(a)) continue;
      at::Tensor w = at::normal(0.0, 1.0 / std::sqrt(double(ds)), {dt, ds}, gen).to(student.device());
      projection[a] = w;
      params.push_back({"projection." + std::to_string(a), w, false});
    }
  }

  const double T = o.loss.temperature;
  LossFn loss = [&](SplitMix64& rng) {
    at::Tensor x, y;
    if (lm) {
      at::Tensor w = sample_windows(train.tokens, to.batch, to.seq_len, rng);
      x = w.narrow(1, 0, to.seq_len);
      y = w.narrow(1, 1, to.seq_len).to(student.device());
    } else {
      const int64_t N = train.inputs.size(0);
      std::vector<int64_t> idx(static_cast<size_t>(to.batch));
      for (auto& i : idx) i = static_cast<int64_t>(rng.below(static_cast<uint64_t>(N)));
      at::Tensor ix = at::from_blob(idx.data(), {to.batch}, at::kLong).clone();
      x = train.inputs.index_select(0, ix);
      y = train.labels.index_select(0, ix).to(student.device());
    }
    Outputs t;
    if (o.loss.uses_teacher()) {
      at::NoGradGuard ng;
      t = run(teacher, x.to(teacher.device()), t_hidden, t_attn);
    }
    Outputs s = run(student, x.to(student.device()), s_hidden, s_attn);
    StepLoss out;
    at::Tensor total = at::zeros({}, s.logits.options().dtype(at::kFloat));
    auto term = [&](const char* name, double weight, const at::Tensor& v) {
      total = total + v * weight;
      out.parts.emplace_back(name, (v * weight).detach());
    };
    const at::Tensor tl = t.logits.defined() ? t.logits.to(student.device()) : at::Tensor();
    if (o.loss.kl > 0) term("kl", o.loss.kl, forward_kl(s.logits, tl, T));
    if (o.loss.reverse_kl > 0) term("rkl", o.loss.reverse_kl, reverse_kl(s.logits, tl, T));
    if (o.loss.jsd > 0) term("jsd", o.loss.jsd, generalized_jsd(s.logits, tl, o.loss.jsd_beta, T));
    if (o.loss.ce > 0) {
      const int64_t V = s.logits.size(-1);
      term("ce", o.loss.ce, lm ? at::cross_entropy_loss(s.logits.reshape({-1, V}).to(at::kFloat), y.reshape({-1}))
                               : labeled_ce(s.logits, y));
    }
    if (o.loss.hidden > 0) {
      at::Tensor h = at::zeros({}, total.options());
      for (const auto& [a, b] : o.layer_map) {
        auto it = projection.find(a);
        h = h + hidden_mse(s.hidden.at(a), t.hidden.at(b).to(student.device()),
                           it == projection.end() ? at::Tensor() : it->second);
      }
      term("hidden", o.loss.hidden, h / double(o.layer_map.size()));
    }
    if (o.loss.attention > 0) {
      at::Tensor h = at::zeros({}, total.options());
      for (const auto& [a, b] : o.layer_map) h = h + attention_kl(s.attention.at(a), t.attention.at(b).to(student.device()));
      term("attn", o.loss.attention, h / double(o.layer_map.size()));
    }
    out.loss = total;
    return out;
  };

  EvalFn eval;
  const bool have_valid = lm ? valid.tokens.size() > static_cast<size_t>(to.seq_len) : valid.labeled();
  if (have_valid) {
    eval = [&]() -> double {
      at::NoGradGuard ng;
      bind_latents();
      if (lm) return heldout_lm_loss(student, valid.tokens, to.seq_len, to.batch, to.eval_tokens);
      double sum = 0;
      const int64_t N = valid.inputs.size(0), B = 500;
      for (int64_t i = 0; i < N; i += B) {
        const int64_t nb = std::min(B, N - i);
        at::Tensor logits = student.forward(valid.inputs.narrow(0, i, nb).to(student.device()));
        sum += labeled_ce(logits, valid.labels.narrow(0, i, nb).to(student.device())).item<double>() * nb;
      }
      return sum / double(N);
    };
  }

  TrainOptions topts = to;
  if (!lm) topts.items_per_row = 1, topts.unit = "ex";
  TrainResult r = mc::train(params, loss, eval, topts, progress, latents.empty() ? std::function<void()>() : bind_latents);
  {
    at::NoGradGuard ng;
    for (auto& [g, w] : latents) student.set_param(g->key, fake_quant_ste(w, *g).detach());
  }
  return r;
}

}  // namespace mc

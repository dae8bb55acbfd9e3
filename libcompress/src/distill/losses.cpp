// Distillation loss terms, their spec parser and the teacher -> student layer map.
#include <ATen/ATen.h>

#include <cmath>
#include <sstream>

#include "mcompress/distill.h"
#include "mcompress/error.h"

namespace mc {

namespace {

constexpr const char* kC = "distill";

std::string g(double x) {
  std::ostringstream os;
  os << x;
  return os.str();
}

// Rows of log-probabilities at temperature T, in float32.
at::Tensor log_probs(const at::Tensor& logits, double T) {
  at::Tensor l = logits.to(at::kFloat);
  return at::log_softmax(T == 1.0 ? l : l / T, -1);
}

// KL(p || q) per row from log-probabilities, mean over rows.
at::Tensor kl_rows(const at::Tensor& logp, const at::Tensor& logq) {
  return (logp.exp() * (logp - logq)).sum(-1).mean();
}

}  // namespace

std::string DistillLoss::describe() const {
  std::string s;
  auto add = [&](const char* name, double w, const std::string& extra = "") {
    if (w <= 0) return;
    if (!s.empty()) s += " + ";
    s += std::string(name) + " " + g(w) + extra;
  };
  add("kl", kl, " (T " + g(temperature) + ")");
  add("reverse_kl", reverse_kl, " (T " + g(temperature) + ")");
  add("jsd", jsd, " (beta " + g(jsd_beta) + ", T " + g(temperature) + ")");
  add("ce", ce);
  add("hidden", hidden);
  add("attention", attention);
  return s;
}

DistillLoss parse_distill_loss(const std::string& spec) {
  DistillLoss l;
  bool named = false;
  std::stringstream ss(spec);
  std::string item;
  std::map<std::string, double> given;
  while (std::getline(ss, item, ',')) {
    item.erase(0, item.find_first_not_of(' '));
    item.erase(item.find_last_not_of(' ') + 1);
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    if (eq == std::string::npos) fail(kC, "--loss item '", item, "' is not NAME=VALUE (e.g. kl=1,ce=0.5,T=2)");
    std::string key = item.substr(0, eq);
    double v = 0;
    try {
      size_t used = 0;
      v = std::stod(item.substr(eq + 1), &used);
      if (used != item.size() - eq - 1) throw std::invalid_argument("trailing");
    } catch (const std::exception&) {
      fail(kC, "--loss item '", item, "': '", item.substr(eq + 1), "' is not a number");
    }
    if (!std::isfinite(v)) fail(kC, "--loss item '", item, "' is not finite");
    if (key == "rkl") key = "reverse_kl";
    if (key == "attn") key = "attention";
    if (key == "t") key = "T";
    given[key] = v;
    if (key != "T" && key != "beta") named = true;
  }
  if (named) l.kl = 0;
  for (const auto& [key, v] : given) {
    double* dst = key == "kl" ? &l.kl : key == "reverse_kl" ? &l.reverse_kl : key == "jsd" ? &l.jsd
                : key == "ce" ? &l.ce : key == "hidden" ? &l.hidden : key == "attention" ? &l.attention
                : key == "T" ? &l.temperature : key == "beta" ? &l.jsd_beta : nullptr;
    if (!dst)
      fail(kC, "--loss: unknown term '", key, "' (allowed: kl, reverse_kl, jsd, ce, hidden, attention, T, beta)");
    if (key == "T" && !(v > 0)) fail(kC, "--loss: temperature T must be > 0 (got ", v, ")");
    if (key == "beta" && !(v > 0 && v < 1)) fail(kC, "--loss: beta must be in (0, 1) (got ", v, ")");
    if (v < 0) fail(kC, "--loss: weight of ", key, " must be >= 0 (got ", v, ")");
    *dst = v;
  }
  if (l.kl + l.reverse_kl + l.jsd + l.ce + l.hidden + l.attention <= 0) fail(kC, "--loss: every weight is 0");
  return l;
}

at::Tensor forward_kl(const at::Tensor& s, const at::Tensor& t, double T) {
  return kl_rows(log_probs(t, T), log_probs(s, T)) * (T * T);
}

at::Tensor reverse_kl(const at::Tensor& s, const at::Tensor& t, double T) {
  return kl_rows(log_probs(s, T), log_probs(t, T)) * (T * T);
}

at::Tensor generalized_jsd(const at::Tensor& s, const at::Tensor& t, double beta, double T) {
  const at::Tensor ls = log_probs(s, T), lt = log_probs(t, T);
  // log m = log(beta p_t + (1 - beta) p_s), computed stably as a logsumexp of the two log-probabilities.
  const at::Tensor lm = at::logsumexp(at::stack({lt + std::log(beta), ls + std::log(1.0 - beta)}), 0);
  return (kl_rows(lt, lm) * beta + kl_rows(ls, lm) * (1.0 - beta)) * (T * T);
}

at::Tensor attention_kl(const at::Tensor& s, const at::Tensor& t) {
  at::Tensor ps = s.to(at::kFloat), pt = t.to(at::kFloat);
  if (ps.size(1) != pt.size(1)) {
    ps = ps.mean(1, true);
    pt = pt.mean(1, true);
  }
  // sum_k t log(t / s); masked keys have t = 0 (xlogy gives 0) and s = 0 (clamped inside the log).
  at::Tensor kl = at::xlogy(pt, pt) - pt * at::log(ps.clamp_min(1e-12));
  return kl.sum(-1).mean();
}

at::Tensor hidden_mse(const at::Tensor& s, const at::Tensor& t, const at::Tensor& projection) {
  at::Tensor x = s.to(at::kFloat);
  if (projection.defined()) x = at::matmul(x, projection.t());
  const at::Tensor tf = t.to(at::kFloat);
  return (x - tf).pow(2).mean() / tf.pow(2).mean().clamp_min(1e-12).detach();
}

LayerMap parse_layer_map(const std::string& spec, int ns, int nt) {
  LayerMap m;
  if (spec.empty()) {
    for (int j = 0; j < ns; ++j) {
      int k = static_cast<int>(std::lround(double(j + 1) * nt / ns)) - 1;
      m.emplace_back(j, std::max(0, std::min(nt - 1, k)));
    }
    return m;
  }
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    item.erase(0, item.find_first_not_of(' '));
    item.erase(item.find_last_not_of(' ') + 1);
    if (item.empty()) continue;
    const size_t c = item.find(':');
    int a = -1, b = -1;
    try {
      if (c == std::string::npos) throw std::invalid_argument("no colon");
      size_t u1 = 0, u2 = 0;
      a = std::stoi(item.substr(0, c), &u1);
      b = std::stoi(item.substr(c + 1), &u2);
      if (u1 != c || u2 != item.size() - c - 1) throw std::invalid_argument("trailing");
    } catch (const std::exception&) {
      fail(kC, "--layer-map item '", item, "' is not STUDENT:TEACHER block numbers (e.g. 0:1,1:3)");
    }
    if (a < 0 || a >= ns)
      fail(kC, "--layer-map item '", item, "': the student has no block ", a, " (it has blocks 0..", ns - 1, ")");
    if (b < 0 || b >= nt)
      fail(kC, "--layer-map item '", item, "': the teacher has no block ", b, " (it has blocks 0..", nt - 1, ")");
    m.emplace_back(a, b);
  }
  if (m.empty()) fail(kC, "--layer-map '", spec, "' maps no block");
  return m;
}

std::string describe(const LayerMap& m) {
  std::string s;
  for (const auto& [a, b] : m) s += (s.empty() ? "" : ",") + std::to_string(a) + ":" + std::to_string(b);
  return s;
}

}  // namespace mc

// Channel pruning of classifier MLPs (prune/structured.h): one calibration pass collects Σ a² of the
// input columns of every linear layer that follows a pruned one (hooks), then whole output channels of
// the hidden linear layers are sliced away and the architecture YAML is rewritten with the new widths.
#include <ATen/ATen.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "mcompress/error.h"
#include "mcompress/model.h"
#include "mcompress/models/classifier.h"
#include "mcompress/prune/structured.h"
#include "mcompress/torch_bridge.h"

namespace mc {

namespace {

constexpr const char* kC = "prune";

std::string pct(double f) {
  std::ostringstream os;
  os << f * 100 << "%";
  return os.str();
}

// A keep value: a fraction in (0, 1) or an integer count >= 1 (0 = keep all, struct only).
bool valid_keep(double v) { return (v > 0 && v < 1) || (v >= 1 && v < 9.0e15 && v == std::floor(v)); }

std::string keep_str(double v) {
  if (v == 0) return "all";
  if (v < 1) return pct(v);
  return std::to_string(static_cast<int64_t>(v)) + " channels";
}

// Channels kept of `width` for keep value v; `strict`: a count above the width is an error.
int64_t keep_of(double v, int64_t width, bool strict, const std::string& layer) {
  if (v == 0) return width;
  if (v < 1) return std::max<int64_t>(1, std::llround(v * double(width)));
  const auto n = static_cast<int64_t>(v);
  if (n > width) {
    if (strict) fail(kC, "layer '", layer, "' has ", width, " channels, cannot keep ", n);
    return width;
  }
  return n;
}

// Indices of the `keep` largest scores (ties: lower index first), in ascending index order.
at::Tensor top_indices(const at::Tensor& score, int64_t keep) {
  at::Tensor order = std::get<1>(at::sort(score.to(at::kCPU), /*stable=*/true, 0, /*descending=*/true));
  return std::get<0>(at::sort(order.narrow(0, 0, keep)));
}


std::string entry_type(const YAML::Node& n) {
  if (n.IsScalar()) return n.as<std::string>();
  return n["type"] ? n["type"].as<std::string>() : "";
}

std::string entry_name(const YAML::Node& n) { return n.IsMap() && n["name"] ? n["name"].as<std::string>() : ""; }

struct Hidden {
  std::string name, next;  // the hidden linear layer and the linear layer reading its output
  int64_t width = 0, keep = 0;
  size_t yaml_index = 0, next_yaml_index = 0;
};

// The hidden linear layers with their kept widths; the chain to the next linear layer is checked for
// every layer that loses channels.
std::vector<Hidden> make_plan(const ClassifierModel& m, const ClassifierPruneOptions& o) {
  if (!valid_keep(o.hidden) && o.hidden != 0)
    fail(kC, "hidden ", o.hidden, " must be a fraction in (0, 1) or an integer channel count >= 1");
  if (o.batch < 1) fail(kC, "batch ", o.batch, " must be >= 1");
  std::vector<std::string> hidden_names;
  std::string classifier;
  for (const LayerInfo& L : m.layers()) {
    if (L.kind != LayerKind::Linear) continue;
    if (L.is_classifier) classifier = L.name;
    else hidden_names.push_back(L.name);
  }
  std::string listed;
  for (size_t i = 0; i < hidden_names.size(); ++i) listed += (i ? ", " : "") + hidden_names[i];
  if (hidden_names.empty())
    fail(kC, "the classifier has no hidden linear layer to prune (its only linear layer is the classifier '",
         classifier, "')");
  for (const auto& [name, v] : o.layers) {
    if (std::find(hidden_names.begin(), hidden_names.end(), name) == hidden_names.end())
      fail(kC, "'", name, "' is not a hidden linear layer", name == classifier ? " (it is the classifier)" : "",
           "; hidden linear layers: ", listed);
    if (!valid_keep(v))
      fail(kC, "layer '", name, "': ", v, " must be a fraction in (0, 1) or an integer channel count >= 1");
  }

  const YAML::Node layers = YAML::Load(m.yaml())["layers"];
  std::vector<std::string> types, names;
  for (size_t i = 0; i < layers.size(); ++i) types.push_back(entry_type(layers[i])), names.push_back(entry_name(layers[i]));
  static const std::set<std::string> passthrough = {"relu", "gelu", "silu", "tanh", "sigmoid", "dropout", "identity"};

  std::vector<Hidden> plan;
  for (const std::string& name : hidden_names) {
    Hidden h;
    h.name = name;
    h.width = m.layer(name).out_features;
    auto it = o.layers.find(name);
    h.keep = it != o.layers.end() ? keep_of(it->second, h.width, true, name) : keep_of(o.hidden, h.width, false, name);
    for (size_t i = 0; i < types.size(); ++i)
      if (types[i] == "linear" && names[i] == name) h.yaml_index = i;
    for (size_t j = h.yaml_index + 1; j < types.size(); ++j) {
      if (passthrough.count(types[j])) continue;
      if (types[j] == "linear") {
        h.next = names[j], h.next_yaml_index = j;
        break;
      }
      if (h.keep < h.width)
        fail(kC, "cannot prune channels of linear layer '", name, "': layer ", j + 1, " (", types[j],
             names[j].empty() ? "" : " '" + names[j] + "'",
             ") lies between it and the next linear layer; only linear -> relu/gelu/silu/tanh/sigmoid/dropout -> "
             "linear chains are supported");
      break;
    }
    if (h.next.empty() && h.keep < h.width)
      fail(kC, "cannot prune channels of linear layer '", name, "': no linear layer reads its output");
    plan.push_back(h);
  }
  return plan;
}

}  // namespace

ClassifierPruneOptions parse_classifier_prune_options(const std::string& spec) {
  ClassifierPruneOptions o;
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    const auto eq = item.find('=');
    const std::string key = item.substr(0, eq), val = eq == std::string::npos ? "" : item.substr(eq + 1);
    if (key.empty() || eq == std::string::npos)
      fail(kC, "bad item '", item, "' in '", spec, "' (allowed: hidden=K, LAYER=K, batch=N; K an integer channel ",
           "count >= 1 or a fraction in (0, 1), e.g. hidden=100 or hidden=0.2,fc1=400)");
    size_t used = 0;
    double v = 0;
    int64_t b = 0;
    try {
      if (key == "batch") b = std::stoll(val, &used);
      else v = std::stod(val, &used);
    } catch (const std::logic_error&) {
      used = 0;
    }
    if (used == 0 || used != val.size())
      fail(kC, "bad value in '", item, "' of '", spec, "' (e.g. hidden=100 or hidden=0.2,fc1=400)");
    if (key == "batch") {
      o.batch = b;
      continue;
    }
    if (!valid_keep(v))
      fail(kC, "'", item, "' of '", spec, "': channels kept must be an integer count >= 1 or a fraction in (0, 1)");
    if (key == "hidden") o.hidden = v;
    else o.layers[key] = v;
  }
  return o;
}

std::string describe(const ClassifierPruneOptions& o) {
  std::string s = "hidden " + keep_str(o.hidden);
  for (const auto& [name, v] : o.layers) s += ", " + name + " " + keep_str(v);
  return s;
}

void check_classifier_prune(const ClassifierModel& model, const ClassifierPruneOptions& o) { make_plan(model, o); }

ClassifierPruneResult prune_classifier_channels(ClassifierModel& model, const at::Tensor& calib,
                                                const ClassifierPruneOptions& o) {
  const std::vector<Hidden> plan = make_plan(model, o);
  ClassifierPruneResult r;
  r.params_before = count_distinct_parameters(model.params());
  bool any = false;
  std::map<std::string, at::Tensor> sq;  // next layer -> Σ a² per input column (float64)
  for (const Hidden& h : plan)
    if (h.keep < h.width) any = true, sq[h.next] = at::Tensor();

  int64_t n_inputs = 0;
  if (any) {
    if (!calib.defined() || calib.dim() < 1 || calib.size(0) == 0)
      fail(kC, "calibration inputs [N, ...] are needed to rank the channels of the hidden layers");
    const int id = model.add_hook([&](const LayerInfo& L, const at::Tensor& in, const at::Tensor&) {
      auto it = sq.find(L.name);
      if (it == sq.end() || L.kind != LayerKind::Linear) return;
      at::Tensor s = at::sum(in.reshape({-1, in.size(-1)}).pow(2), {0}, false, at::kDouble);
      it->second = it->second.defined() ? it->second + s : s;
    });
    struct Unhook {
      Model& m;
      int id;
      ~Unhook() { m.remove_hook(id); }
    } unhook{model, id};
    at::NoGradGuard no_grad;
    n_inputs = calib.size(0);
    for (int64_t i = 0; i < n_inputs; i += o.batch) model.forward(calib.narrow(0, i, std::min(o.batch, n_inputs - i)));
    for (const auto& [name, s] : sq)
      if (!s.defined() || !at::isfinite(s).all().item<bool>())
        fail(kC, "layer '", name, "' saw non-finite inputs on the calibration data");
  }

  for (const auto& [k, t] : model.params()) r.weights[k] = t.to(at::kCPU, at::kFloat).contiguous().clone();
  // Scores from the unpruned weights first, then the slicing (a layer can lose rows and columns).
  std::map<std::string, at::Tensor> kept;
  for (const Hidden& h : plan) {
    if (h.keep >= h.width) continue;
    const at::Tensor& wn = r.weights.at(model.layer(h.next).weight);
    at::Tensor score = sq.at(h.next).to(at::kCPU).sqrt() * wn.to(at::kDouble).pow(2).sum(0).sqrt();
    r.scores[h.name] = score;
    kept[h.name] = top_indices(score, h.keep);
  }
  YAML::Node root = YAML::Load(model.yaml());
  YAML::Node layers = root["layers"];
  for (const Hidden& h : plan) {
    r.settings[h.name + " channels"] = std::to_string(h.width) + " -> " + std::to_string(h.keep);
    if (h.keep >= h.width) continue;
    const at::Tensor& idx = kept.at(h.name);
    const LayerInfo& L = model.layer(h.name);
    const LayerInfo& N = model.layer(h.next);
    r.weights[L.weight] = r.weights[L.weight].index_select(0, idx);
    if (!L.bias.empty()) r.weights[L.bias] = r.weights[L.bias].index_select(0, idx);
    r.weights[N.weight] = r.weights[N.weight].index_select(1, idx).contiguous();
    layers[h.yaml_index]["out"] = h.keep;
    layers[h.next_yaml_index]["in"] = h.keep;
    r.removed.push_back(h.name + ": " + std::to_string(h.width - h.keep) + " of " + std::to_string(h.width) +
                        " channels");
  }
  YAML::Emitter em;
  em << root;
  if (!em.good()) fail<Error>(kC, "could not write the pruned architecture YAML: ", em.GetLastError());
  r.yaml = std::string(em.c_str()) + "\n";
  r.params_after = count_distinct_parameters(r.weights);

  r.settings["prune"] = describe(o);
  r.settings["parameters"] = std::to_string(r.params_before) + " -> " + std::to_string(r.params_after) + " (" +
                             pct(double(r.params_after) / double(r.params_before)) + ")";
  if (any)
    r.settings["importance"] =
        "channel |a_c|*|W_next[:,c]|, a = input of the next linear layer; " + std::to_string(n_inputs) +
        " calibration inputs";
  return r;
}

std::unique_ptr<ClassifierModel> make_pruned_classifier(const ClassifierPruneResult& r) {
  std::map<std::string, HostTensor> w;
  for (const auto& [k, t] : r.weights) w[k] = from_torch(k, t);
  return std::make_unique<ClassifierModel>(r.yaml, w, "pruned classifier");
}

}  // namespace mc

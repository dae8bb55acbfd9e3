// ClassifierModel: an MLP / CNN built from an architecture YAML, weights by the YAML's layer names.
#include "mcompress/models/classifier.h"

#include <ATen/ATen.h>
#include <yaml-cpp/yaml.h>

#include <set>

#include "mcompress/error.h"
#include "mcompress/torch_bridge.h"

namespace mc {

namespace {

std::string list_some(const std::vector<std::string>& v) {
  std::string out;
  for (size_t i = 0; i < v.size() && i < 8; ++i) out += (i ? ", " : "") + v[i];
  if (v.size() > 8) out += str(", ... (", v.size(), " in all)");
  return out;
}

// A scalar or a [h, w] pair.
std::pair<int64_t, int64_t> pair_of(const YAML::Node& n, const char* key, int64_t dflt_h, int64_t dflt_w) {
  const YAML::Node v = n[key];
  if (!v) return {dflt_h, dflt_w};
  if (v.IsSequence() && v.size() == 2) return {v[0].as<int64_t>(), v[1].as<int64_t>()};
  const int64_t x = v.as<int64_t>();
  return {x, x};
}

int64_t required_int(const YAML::Node& n, const char* key, const std::string& what) {
  if (!n[key]) fail("classifier", what, " needs '", key, "'");
  return n[key].as<int64_t>();
}

}  // namespace

ClassifierModel::ClassifierModel(const std::string& yaml_text, const std::map<std::string, HostTensor>& weights,
                                 const std::string& where)
    : yaml_(yaml_text) {
  std::vector<std::pair<std::string, Shape>> expected;
  std::vector<std::vector<Step>> blocks;
  std::vector<Step> pre;
  int64_t last_out = 0;
  try {
    YAML::Node root = YAML::Load(yaml_text);
    if (!root.IsMap() || !root["layers"] || !root["layers"].IsSequence() || root["layers"].size() == 0)
      fail("classifier", where, ": architecture needs a non-empty 'layers' list");
    if (YAML::Node in = root["input"]) {
      if (in["shape"]) input_shape_ = in["shape"].as<std::vector<int64_t>>();
      if (in["scale"]) scale_ = in["scale"].as<double>();
      if (in["mean"]) mean_ = in["mean"].as<double>();
      if (in["std"]) std_ = in["std"].as<double>();
    }
    if (input_shape_.empty()) fail("classifier", where, ": architecture needs input: {shape: [...]}");
    for (int64_t d : input_shape_)
      if (d <= 0) fail("classifier", where, ": input shape ", shape_str(input_shape_), " must be positive");
    if (!(std_ != 0)) fail("classifier", where, ": input std must be non-zero");

    static const std::map<std::string, Op> kinds = {
        {"linear", Op::Linear}, {"conv2d", Op::Conv2d}, {"batchnorm", Op::BatchNorm}, {"relu", Op::Relu},
        {"gelu", Op::Gelu}, {"silu", Op::Silu}, {"tanh", Op::Tanh}, {"sigmoid", Op::Sigmoid},
        {"maxpool", Op::MaxPool}, {"avgpool", Op::AvgPool}, {"flatten", Op::Flatten}, {"dropout", Op::Identity},
        {"identity", Op::Identity}};
    int idx = 0;
    for (const auto& n : root["layers"]) {
      ++idx;
      const std::string type = n.IsScalar() ? n.as<std::string>() : (n["type"] ? n["type"].as<std::string>() : "");
      auto kit = kinds.find(type);
      if (kit == kinds.end())
        fail("classifier", where, ": layer ", idx, " has type '", type,
             "' (allowed: linear, conv2d, batchnorm, relu, gelu, silu, tanh, sigmoid, maxpool, avgpool, flatten, dropout)");
      Step s;
      s.op = kit->second;
      s.type = type;
      const std::string what = str(where, ": layer ", idx, " (", type, ")");
      if (s.op == Op::Linear || s.op == Op::Conv2d || s.op == Op::BatchNorm) {
        if (!n["name"]) fail("classifier", what, " needs 'name' (its checkpoint key prefix)");
        LayerInfo L;
        L.name = n["name"].as<std::string>();
        L.weight = L.name + ".weight";
        const bool bias = n["bias"] ? n["bias"].as<bool>() : true;
        if (s.op == Op::BatchNorm) {
          const int64_t c = n["features"]   ? n["features"].as<int64_t>()
                            : n["channels"] ? n["channels"].as<int64_t>()
                                            : required_int(n, "in", what);
          if (n["eps"]) s.eps = n["eps"].as<double>();
          L.kind = LayerKind::Norm, L.in_features = L.out_features = c, L.bias = L.name + ".bias";
          for (const char* suffix : {".weight", ".bias", ".running_mean", ".running_var"})
            expected.emplace_back(L.name + suffix, Shape{c});
        } else {
          const int64_t in = required_int(n, "in", what), out = required_int(n, "out", what);
          if (in <= 0 || out <= 0) fail("classifier", what, ": in and out must be positive");
          L.out_features = out;
          if (s.op == Op::Linear) {
            L.kind = LayerKind::Linear, L.in_features = in;
            expected.emplace_back(L.weight, Shape{out, in});
          } else {
            std::tie(s.kh, s.kw) = pair_of(n, "kernel", 0, 0);
            std::tie(s.sh, s.sw) = pair_of(n, "stride", 1, 1);
            std::tie(s.ph, s.pw) = pair_of(n, "padding", 0, 0);
            if (s.kh <= 0 || s.kw <= 0 || s.sh <= 0 || s.sw <= 0 || s.ph < 0 || s.pw < 0)
              fail("classifier", what, ": needs kernel > 0, stride > 0, padding >= 0");
            L.kind = LayerKind::Conv2d, L.in_features = in * s.kh * s.kw;
            expected.emplace_back(L.weight, Shape{out, in, s.kh, s.kw});
          }
          if (bias) L.bias = L.name + ".bias", expected.emplace_back(L.bias, Shape{out});
          last_out = out;
          blocks.emplace_back();
        }
        L.block = static_cast<int>(blocks.size()) - 1;  // -1: a norm before the first weight layer
        s.layer = static_cast<int64_t>(layers_.size());
        add_layer(L);
      } else if (s.op == Op::MaxPool || s.op == Op::AvgPool) {
        std::tie(s.kh, s.kw) = pair_of(n, "kernel", 0, 0);
        std::tie(s.sh, s.sw) = pair_of(n, "stride", s.kh, s.kw);
        std::tie(s.ph, s.pw) = pair_of(n, "padding", 0, 0);
        if (s.kh <= 0 || s.kw <= 0 || s.sh <= 0 || s.sw <= 0)
          fail("classifier", what, ": needs kernel > 0 and stride > 0");
      }
      (blocks.empty() ? pre : blocks.back()).push_back(s);
    }
  } catch (const YAML::Exception& e) {
    fail("classifier", where, ": bad architecture YAML: ", e.what());
  }
  if (blocks.empty()) fail("classifier", where, ": architecture has no linear or conv2d layer");
  for (auto it = layers_.rbegin(); it != layers_.rend(); ++it)
    if (it->kind == LayerKind::Linear) {
      it->is_classifier = true;
      break;
    }
  num_classes_ = last_out;
  num_blocks_ = static_cast<int>(blocks.size());
  pre_ = std::move(pre);
  blocks_ = std::move(blocks);

  // Keys: missing / unexpected, then shapes.
  std::set<std::string> exp_keys;
  std::vector<std::string> missing, unexpected;
  for (const auto& [k, s] : expected) {
    exp_keys.insert(k);
    if (!weights.count(k)) missing.push_back(k);
  }
  for (const auto& [k, t] : weights) {
    const bool bn_counter = k.size() > 20 && k.compare(k.size() - 20, 20, ".num_batches_tracked") == 0;
    if (!exp_keys.count(k) && !bn_counter) unexpected.push_back(k);
  }
  if (!missing.empty() || !unexpected.empty()) {
    std::string msg = where + ": architecture does not match the checkpoint's keys";
    if (!missing.empty()) msg += "; missing keys: " + list_some(missing);
    if (!unexpected.empty()) msg += "; unexpected keys: " + list_some(unexpected);
    fail("classifier", msg);
  }
  for (const auto& [k, shape] : expected) {
    const HostTensor& h = weights.at(k);
    if (h.shape != shape)
      fail("classifier", "tensor '", k, "' has shape ", shape_str(h.shape), ", expected ", shape_str(shape),
           " from the architecture (", where, ")");
    if (!is_float(h.dtype) && !is_block(h.dtype))
      fail("classifier", "tensor '", k, "' has integer dtype ", dtype_name(h.dtype));
    at::Tensor t = to_torch(h);
    params_[k] = t.scalar_type() == at::kFloat ? t : t.to(at::kFloat);
  }
  // A dry run on one zero input: the layer sizes must chain.
  try {
    at::Tensor probe = at::zeros(Shape{1, shape_numel(input_shape_)});
    forward(probe);
  } catch (const c10::Error& e) {
    std::string what = e.what_without_backtrace();
    fail("classifier", where, ": the layers do not chain for input shape ", shape_str(input_shape_), ": ",
         what.substr(0, what.find('\n')));
  }
}

at::Tensor ClassifierModel::conv(const LayerInfo& L, const Step& s, const at::Tensor& x) {
  const at::Tensor& w = params_.at(L.weight);
  c10::optional<at::Tensor> b;
  if (!L.bias.empty()) b = params_.at(L.bias);
  at::Tensor y = at::conv2d(x, w, b, {s.sh, s.sw}, {s.ph, s.pw});
  if (!hooks_.empty()) {  // the input as the matmul sees it: unfolded patches [B, L, in * kh * kw]
    at::Tensor cols = at::im2col(x, {s.kh, s.kw}, {1, 1}, {s.ph, s.pw}, {s.sh, s.sw}).transpose(1, 2);
    run_hooks(L, cols, y.flatten(2).transpose(1, 2));
  }
  return y;
}

at::Tensor ClassifierModel::apply(const Step& s, const at::Tensor& x) {
  switch (s.op) {
    case Op::Linear: return apply_linear(layers_[static_cast<size_t>(s.layer)], x);
    case Op::Conv2d: return conv(layers_[static_cast<size_t>(s.layer)], s, x);
    case Op::BatchNorm: {
      const LayerInfo& L = layers_[static_cast<size_t>(s.layer)];
      at::Tensor y = at::batch_norm(x, params_.at(L.weight), params_.at(L.bias), params_.at(L.name + ".running_mean"),
                                    params_.at(L.name + ".running_var"), false, 0.0, s.eps, false);
      run_hooks(L, x, y);
      return y;
    }
    case Op::Relu: return at::relu(x);
    case Op::Gelu: return at::gelu(x);
    case Op::Silu: return at::silu(x);
    case Op::Tanh: return at::tanh(x);
    case Op::Sigmoid: return at::sigmoid(x);
    case Op::MaxPool: return at::max_pool2d(x, {s.kh, s.kw}, {s.sh, s.sw}, {s.ph, s.pw});
    case Op::AvgPool: return at::avg_pool2d(x, {s.kh, s.kw}, {s.sh, s.sw}, {s.ph, s.pw});
    case Op::Flatten: return x.flatten(1);
    case Op::Identity: return x;
  }
  return x;
}

at::Tensor ClassifierModel::embed(const at::Tensor& input) {
  if (input.dim() < 1) fail("classifier", "input must be [batch, ...]");
  const int64_t B = input.size(0), per = input.numel() / std::max<int64_t>(B, 1);
  if (B > 0 && per != shape_numel(input_shape_))
    fail("classifier", "input examples have ", per, " values, the architecture expects shape ",
         shape_str(input_shape_), " (", shape_numel(input_shape_), " values)");
  Shape shape{B};
  shape.insert(shape.end(), input_shape_.begin(), input_shape_.end());
  at::Tensor x = input.to(device_, at::kFloat).reshape(shape);
  if (scale_ != 1.0) x = x * scale_;
  if (mean_ != 0.0 || std_ != 1.0) x = (x - mean_) / std_;
  for (const auto& s : pre_) x = apply(s, x);
  return x;
}

at::Tensor ClassifierModel::run_block(int k, const at::Tensor& hidden) {
  if (k < 0 || k >= num_blocks_) fail("classifier", "block ", k, " out of range [0, ", num_blocks_, ")");
  at::Tensor x = hidden;
  for (const auto& s : blocks_[static_cast<size_t>(k)]) x = apply(s, x);
  return x;
}

at::Tensor ClassifierModel::forward(const at::Tensor& input) {
  at::Tensor x = embed(input);
  for (int k = 0; k < num_blocks_; ++k) x = run_block(k, x);
  return head(x);
}

std::map<std::string, std::string> ClassifierModel::config_metadata() const {
  return {{"mcompress.arch", "classifier"}, {"mcompress.arch_yaml", yaml_}};
}

}  // namespace mc

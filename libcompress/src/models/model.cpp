// Model base: layers, parameters by checkpoint name, hooks, device moves.
#include "mcompress/model.h"

#include <ATen/ATen.h>

#include "mcompress/error.h"
#include "mcompress/tensor.h"

namespace mc {

const char* layer_kind_name(LayerKind k) {
  switch (k) {
    case LayerKind::Linear: return "linear";
    case LayerKind::Embedding: return "embedding";
    case LayerKind::Conv2d: return "conv2d";
    case LayerKind::Norm: return "norm";
  }
  return "?";
}

const LayerInfo& Model::layer(const std::string& name) const {
  auto it = layer_index_.find(name);
  if (it == layer_index_.end()) fail("model", arch(), " model has no layer '", name, "'");
  return layers_[it->second];
}

const at::Tensor& Model::param(const std::string& key) const {
  auto it = params_.find(key);
  if (it == params_.end()) fail("model", arch(), " model has no parameter '", key, "'");
  return it->second;
}

void Model::set_param(const std::string& key, const at::Tensor& value) {
  auto it = params_.find(key);
  if (it == params_.end()) fail("model", arch(), " model has no parameter '", key, "'");
  const at::Tensor& old = it->second;
  if (!value.sizes().equals(old.sizes())) {
    fail("model", "set_param '", key, "': shape ", shape_str(Shape(value.sizes().begin(), value.sizes().end())),
         " differs from the parameter's ", shape_str(Shape(old.sizes().begin(), old.sizes().end())));
  }
  // May alias `value` (no copy when dtype and device already match).
  at::Tensor v = value.detach().to(old.device(), old.scalar_type()).contiguous();
  it->second = v;
  // Tied parameters are one tensor under several names.
  for (const auto& [a, b] : tied_) {
    if (a == key) params_[b] = v;
    if (b == key) params_[a] = v;
  }
}

int Model::add_hook(LayerHook hook) {
  int id = next_hook_++;
  hooks_[id] = std::move(hook);
  return id;
}

void Model::remove_hook(int id) { hooks_.erase(id); }

at::Tensor Model::forward_cached(const at::Tensor&, KVCache&) {
  fail("model", arch(), " models have no incremental decoding");
}

void Model::to(c10::Device device) {
  if (device.is_cuda() && !at::hasCUDA()) fail("model", "CUDA requested but this LibTorch build has no CUDA");
  std::map<const void*, at::Tensor> moved;  // keep tied parameters one tensor
  for (auto& [key, t] : params_) {
    const void* p = t.data_ptr();
    auto it = moved.find(p);
    if (it != moved.end()) {
      t = it->second;
    } else {
      t = t.to(device);
      moved[p] = t;
    }
  }
  device_ = device;
}

at::Tensor Model::apply_linear(const LayerInfo& layer, const at::Tensor& x) {
  const at::Tensor& w = params_.at(layer.weight);
  at::Tensor y = layer.bias.empty() ? at::linear(x, w) : at::linear(x, w, params_.at(layer.bias));
  run_hooks(layer, x, y);
  return y;
}

void Model::run_hooks(const LayerInfo& layer, const at::Tensor& input, const at::Tensor& output) {
  if (hooks_.empty()) return;
  // Copy: a hook may add or remove hooks.
  auto hooks = hooks_;
  for (auto& [id, h] : hooks) h(layer, input, output);
}

void Model::add_layer(LayerInfo info) {
  if (layer_index_.count(info.name)) fail<Error>("model", "duplicate layer '", info.name, "'");
  layer_index_[info.name] = layers_.size();
  layers_.push_back(std::move(info));
}

}  // namespace mc

// Model base: layers, parameters by checkpoint name, hooks, device moves.
#include <set>
#include "mcompress/model.h"

#include <ATen/ATen.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mcompress/error.h"
#include "mcompress/int8_gemm.h"
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

namespace {

// Hands the whole pages inside t's bytes back to the kernel (non-destructive: MADV_PAGEOUT reclaims
// clean file pages and swaps anonymous ones where there is swap). Errors are ignored: older kernels.
void page_out(const at::Tensor& t) {
#ifdef MADV_PAGEOUT
  if (!t.defined() || !t.is_cpu() || t.nbytes() == 0) return;
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = reinterpret_cast<uintptr_t>(t.data_ptr()), e = b + t.nbytes();
  const uintptr_t b2 = (b + page - 1) / page * page, e2 = e / page * page;
  if (e2 > b2) ::madvise(reinterpret_cast<void*>(b2), e2 - b2, MADV_PAGEOUT);
#else
  (void)t;
#endif
}

}  // namespace

int64_t count_distinct_parameters(const std::map<std::string, at::Tensor>& params) {
  std::set<const void*> seen;
  int64_t n = 0;
  for (const auto& [k, t] : params)
    if (t.defined() && seen.insert(t.data_ptr()).second) n += t.numel();
  return n;
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
  if (low_memory_ && !v.is_same(old) && old.defined() && (!v.defined() || v.data_ptr() != old.data_ptr()))
    page_out(old);
  it->second = v;
  for (auto w = int8_weights_.begin(); w != int8_weights_.end();)
    w = layer(w->first).weight == key ? int8_weights_.erase(w) : std::next(w);
  // Tied parameters are one tensor under several names.
  for (const auto& [a, b] : tied_) {
    if (a == key) params_[b] = v;
    if (b == key) params_[a] = v;
  }
}

void Model::bind_param(const std::string& key, const at::Tensor& value) {
  auto it = params_.find(key);
  if (it == params_.end()) fail("model", arch(), " model has no parameter '", key, "'");
  if (!value.sizes().equals(it->second.sizes()))
    fail("model", "bind_param '", key, "': shape ", shape_str(Shape(value.sizes().begin(), value.sizes().end())),
         " differs from the parameter's ", shape_str(Shape(it->second.sizes().begin(), it->second.sizes().end())));
  it->second = value;
  for (auto w = int8_weights_.begin(); w != int8_weights_.end();)  // the int8 codes no longer match
    w = layer(w->first).weight == key ? int8_weights_.erase(w) : std::next(w);
  for (const auto& [a, b] : tied_) {
    if (a == key) params_[b] = value;
    if (b == key) params_[a] = value;
  }
}

void Model::release_param(const std::string& key) {
  auto it = params_.find(key);
  if (it == params_.end()) fail("model", arch(), " model has no parameter '", key, "'");
  if (low_memory_) page_out(it->second);
  it->second = at::Tensor();
  for (auto w = int8_weights_.begin(); w != int8_weights_.end();)
    w = layer(w->first).weight == key ? int8_weights_.erase(w) : std::next(w);
  for (const auto& [a, b] : tied_) {
    if (a == key) params_[b] = at::Tensor();
    if (b == key) params_[a] = at::Tensor();
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

std::string Model::input_quant_runtime(const std::string& name) const {
  const LayerInfo& l = layer(name);
  if (l.act_bits <= 0) return "";
  if (l.act_bits != 8) return "simulated in float: int" + std::to_string(l.act_bits) + " activations have no kernel";
  if (!device_.is_cpu()) return "simulated in float: the int8 kernel is CPU only";
  if (!int8_kernel_) return "simulated in float: int8 kernel turned off (--simulate-int8)";
  if (!int8_weights_.count(name))
    return "simulated in float: the weight is not int8 with one scale per output channel";
  return std::string("int8 kernel (") + int8_gemm_kernel_name() + ")";
}

at::Tensor Model::apply_linear(const LayerInfo& layer, const at::Tensor& x) {
  const at::Tensor& w = params_.at(layer.weight);
  at::Tensor y;
  if (layer.act_bits > 0) {
    const at::Tensor bias = layer.bias.empty() ? at::Tensor() : params_.at(layer.bias);
    auto it = int8_weights_.find(layer.name);
    if (layer.act_bits == 8 && int8_kernel_ && x.is_cpu() && it != int8_weights_.end()) {
      y = int8_linear(x, it->second.q, it->second.scale, bias);
    } else {
      // Per-token symmetric fake quantization of the input, then the float matmul.
      const double qmax = double((1 << (layer.act_bits - 1)) - 1);
      at::Tensor xf = x.to(at::kFloat);
      at::Tensor s = xf.detach().abs().amax(-1, true).div_(qmax);
      s.masked_fill_(s.eq(0), 1.0);
      at::Tensor xq = xf.detach().div(s).round_().clamp_(-qmax, qmax).mul_(s).to(x.scalar_type());
      if (x.requires_grad()) xq = xq - (x.detach() - x);  // training: straight-through gradient
      y = bias.defined() ? at::linear(xq, w, bias) : at::linear(xq, w);
    }
  } else {
    y = layer.bias.empty() ? at::linear(x, w) : at::linear(x, w, params_.at(layer.bias));
  }
  run_hooks(layer, x, y);
  return y;
}

at::Tensor ScaleGroup::expand(const at::Tensor& s) const {
  if (repeat == 1) return s;
  return s.reshape({-1, 1, width}).expand({s.numel() / width, repeat, width}).reshape({-1});
}

at::Tensor ScaleGroup::reduce(const at::Tensor& x) const {
  if (repeat == 1) return x;
  return x.reshape({-1, repeat, width}).mean(1).reshape({-1});
}

void Model::apply_scale_group(const ScaleGroup& g, const at::Tensor& s_in) {
  const at::Tensor s = s_in.to(at::kFloat).to(device_);
  const at::Tensor& prev = param(g.prev);
  if (s.dim() != 1 || s.size(0) != prev.size(0))
    fail("model", "scale group of '", g.prev, "': ", s.numel(), " scales for ", prev.size(0), " channels");
  if (!at::isfinite(s).all().item<bool>() || s.le(0).any().item<bool>())
    fail("model", "scale group of '", g.prev, "': scales must be positive and finite");
  if (prev.dim() == 1 && g.norm_offset != 0)
    set_param(g.prev, (prev + g.norm_offset).div(s) - g.norm_offset);
  else if (prev.dim() == 1)
    set_param(g.prev, prev.div(s));
  else
    set_param(g.prev, prev.div(s.unsqueeze(1)));
  if (!g.prev_bias.empty()) set_param(g.prev_bias, param(g.prev_bias).div(s));
  const at::Tensor se = g.expand(s);
  for (const auto& name : g.layers) {
    const LayerInfo& l = layer(name);
    const at::Tensor& w = param(l.weight);
    if (w.dim() != 2 || w.size(1) != se.size(0))
      fail("model", "scale group of '", g.prev, "': layer ", name, " has ", w.dim() == 2 ? w.size(1) : -1,
           " input columns, expected ", se.size(0));
    set_param(l.weight, w.mul(se));
  }
}

void Model::set_input_quant(const std::string& name, int bits) {
  auto it = layer_index_.find(name);
  if (it == layer_index_.end()) fail("model", arch(), " model has no layer '", name, "'");
  LayerInfo& l = layers_[it->second];
  if (l.kind != LayerKind::Linear) fail("model", "layer ", name, ": input quantization needs a linear layer");
  if (bits != 0 && (bits < 2 || bits > 8)) fail("model", "layer ", name, ": activation bits ", bits, " outside 2..8");
  l.act_bits = bits;
}

void Model::set_int8_weight(const std::string& name, const at::Tensor& scale_in) {
  const LayerInfo& l = layer(name);
  const at::Tensor w = param(l.weight).to(at::kFloat);
  if (w.dim() != 2) fail("model", "layer ", name, ": int8 weights need a 2-D weight");
  const at::Tensor scale = scale_in.to(at::kFloat).to(w.device()).reshape({-1});
  if (scale.size(0) != w.size(0))
    fail("model", "layer ", name, ": ", scale.size(0), " int8 scales for ", w.size(0), " output channels");
  at::Tensor safe = scale.masked_fill(scale.eq(0), 1.0).unsqueeze(1);
  at::Tensor q = w.div(safe).round_();
  if (!q.mul(safe).eq(w).all().item<bool>() || q.abs().gt(128).any().item<bool>() || q.eq(128).any().item<bool>())
    fail("model", "layer ", name, ": weight is not int8 codes times its per-channel scales");
  int8_weights_[name] = {q.to(at::kChar).contiguous(), scale.contiguous()};
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

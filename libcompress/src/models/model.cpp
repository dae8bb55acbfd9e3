// Model base: layers, parameters by checkpoint name, hooks, device moves.
#include <set>
#include "mcompress/model.h"
#include "mcompress/quant/kv_cache.h"

#include <ATen/ATen.h>
#include <malloc.h>

#include <atomic>
#include <mutex>
#include <cstdio>
#include <ATen/Parallel.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mcompress/error.h"
#include "mcompress/int8_gemm.h"
#include "mcompress/quant/hadamard.h"
#include "mcompress/streamed_model.h"
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

namespace {
uint64_t resident_bytes() {  // /proc/self/statm; 0 where unreadable
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  unsigned long long size = 0, resident = 0;
  const int n = std::fscanf(f, "%llu %llu", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)) : 0;
}
std::atomic<uint64_t> g_heap_base{0};  // resident bytes after the last trim (or the lowest since)
}  // namespace

// The CLI keeps freed memory in the heap (no trimming, no mmap for large blocks: a forward's temporaries
// are reused instead of page-faulted again on every layer call, tools/mcompress/main.cpp), and a pass that
// frees layers or batches of different sizes fragments it: a 1B RTN grew to 4.7 GB, an 8B GPTQ output pass
// by 0.6 GiB. malloc_trim (the heap's top, and MADV_DONTNEED on the free pages inside it) only when the
// resident set has grown by 512 MiB since the last one: trimming after every layer made the 1B RTN 4x
// slower (45 s instead of 11 s: the freed pages are faulted in again by the next layer).
void release_heap() {
  const uint64_t now = resident_bytes(), base = g_heap_base.load();
  if (now > base + (uint64_t(512) << 20)) {
    ::malloc_trim(0);
    g_heap_base.store(resident_bytes());
  } else if (now < base) {
    g_heap_base.store(now);
  }
}

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
  // May alias `value` (no copy when dtype and device already match). A float value replacing a weight kept
  // in its narrower stored dtype (LoadOptions::keep_dtype) stays float: rounding it would change the model.
  const bool narrow = old.scalar_type() == at::kBFloat16 || old.scalar_type() == at::kHalf;
  const auto dtype = narrow && value.scalar_type() == at::kFloat ? at::kFloat : old.scalar_type();
  at::Tensor v = value.detach().to(old.device(), dtype).contiguous();
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
  if (low_memory_) release_heap();
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
  for (auto& [block, s] : kv_quant_) s.k = s.k.to(device), s.v = s.v.to(device);
  device_ = device;
}

std::string Model::input_quant_runtime(const std::string& name) const {
  const LayerInfo& l = layer(name);
  if (l.act_bits <= 0) return "";
  if (l.act_format != ActFormat::int_)
    return "simulated in float: " + act_quant_name(l.act_quant()) + " activations have no kernel here";
  if (l.act_bits != 8) return "simulated in float: int" + std::to_string(l.act_bits) + " activations have no kernel";
  if (!device_.is_cpu()) return "simulated in float: the int8 kernel is CPU only";
  if (!int8_kernel_) return "simulated in float: int8 kernel turned off (--simulate-int8)";
  if (!int8_weights_.count(name))
    return "simulated in float: the weight is not int8 with one scale per output channel";
  return std::string("int8 kernel (") + int8_gemm_kernel_name() + ")";
}

namespace {
thread_local bool keep_stored_dtype = false;
}  // namespace

KeepStoredDtype::KeepStoredDtype(bool on) : prev_(keep_stored_dtype) { keep_stored_dtype = on; }
KeepStoredDtype::~KeepStoredDtype() { keep_stored_dtype = prev_; }
bool KeepStoredDtype::active() { return keep_stored_dtype; }

// bf16 -> float32 is exact (the 16 bits become the top half of the float); ATen's conversion runs ~70M
// values/s here, this loop at memory speed.
at::Tensor widen(const at::Tensor& p) {
  if (p.scalar_type() != at::kBFloat16 || !p.is_cpu() || !p.is_contiguous()) return p.to(at::kFloat);
  at::Tensor out = at::empty(p.sizes(), p.options().dtype(at::kFloat));
  const auto* src = static_cast<const uint16_t*>(p.data_ptr());
  auto* dst = static_cast<uint32_t*>(out.data_ptr());
  at::parallel_for(0, p.numel(), int64_t(1) << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) dst[i] = uint32_t(src[i]) << 16;
  });
  return out;
}

// float32 -> bf16, rounding to nearest even as ATen does (NaN stays NaN), at memory speed.
at::Tensor to_bf16(const at::Tensor& x) {
  if (x.scalar_type() != at::kFloat || !x.is_cpu()) return x.to(at::kBFloat16);
  const at::Tensor c = x.contiguous();
  at::Tensor out = at::empty(c.sizes(), c.options().dtype(at::kBFloat16));
  const auto* src = static_cast<const uint32_t*>(c.data_ptr());
  auto* dst = static_cast<uint16_t*>(out.data_ptr());
  at::parallel_for(0, c.numel(), int64_t(1) << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const uint32_t u = src[i];
      const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
      dst[i] = nan ? uint16_t((u >> 16) | 0x40) : uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
  });
  return out;
}

at::Tensor Model::float_param(const std::string& key) const {
  const at::Tensor& p = params_.at(key);
  const auto t = p.scalar_type();
  if (t != at::kBFloat16 && t != at::kHalf) return p;
  auto it = pinned_.find(key);
  return it != pinned_.end() ? it->second : widen(p);
}

void Model::pin_float(const std::string& key) {
  const at::Tensor& p = params_.at(key);
  if (p.scalar_type() == at::kBFloat16 || p.scalar_type() == at::kHalf) pinned_[key] = widen(p);
}

void Model::page_out_param(const std::string& key) {
  auto it = params_.find(key);
  if (it != params_.end()) page_out(it->second);
}

void Model::page_out_block(int k) {
  for (const LayerInfo& l : layers_) {
    if (l.block != k) continue;
    page_out_param(l.weight);
    if (!l.bias.empty()) page_out_param(l.bias);
  }
}

void Model::set_kv_quant(int block, const at::Tensor& k_scale, const at::Tensor& v_scale, const std::string& format) {
  const KVFormat f = parse_kv_format(format);
  if (!has_attention()) fail("model", arch(), " model has no attention: nothing to quantize in a KV cache");
  if (block < 0 || block >= num_blocks_) fail("model", "KV-cache scales for block ", block, " of ", num_blocks_);
  if (!kv_format_.empty() && kv_format_ != kv_format_name(f))
    fail("model", "KV-cache format ", kv_format_name(f), " after ", kv_format_, ": one format per model");
  for (const at::Tensor* s : {&k_scale, &v_scale})
    if (s->dim() != 1 || !at::isfinite(*s).all().item<bool>() || s->le(0).any().item<bool>())
      fail("model", "KV-cache scales of block ", block, " must be positive and finite, one per kv head");
  kv_format_ = kv_format_name(f);
  kv_quant_[block] = {k_scale.to(device_, at::kFloat), v_scale.to(device_, at::kFloat)};
}

namespace {
// H of size n (float64, CPU), built once per size: the random fallback's QR is not cheap.
at::Tensor head_hadamard(int64_t n) {
  static std::mutex mu;
  static std::map<int64_t, at::Tensor> made;
  std::lock_guard<std::mutex> lock(mu);
  auto it = made.find(n);
  if (it == made.end()) it = made.emplace(n, hadamard_matrix(n)).first;
  return it->second;
}
}  // namespace

void Model::kv_to_cache(int k, at::Tensor& keys, at::Tensor& values) {
  auto it = kv_quant_.find(k);
  if (!kv_observer_ && it == kv_quant_.end()) return;
  // Rotated cache: x H per head, observed and rounded there, then back with Hᵀ (H orthogonal, [head_dim,
  // head_dim]); without scales the keys and values are left as they were (not rotated there and back).
  at::Tensor H, kr = keys, vr = values;
  if (kv_hadamard_) {
    H = head_hadamard(keys.size(-1)).to(keys.device(), keys.scalar_type());
    kr = keys.matmul(H), vr = values.matmul(H);
  }
  if (kv_observer_) kv_observer_(k, kr, vr);
  if (it == kv_quant_.end()) return;
  const KVFormat f = parse_kv_format(kv_format_);
  keys = kv_fake_quant(kr, it->second.k, f);
  values = kv_fake_quant(vr, it->second.v, f);
  if (kv_hadamard_) keys = keys.matmul(H.t()), values = values.matmul(H.t());
}

at::Tensor Model::apply_linear(const LayerInfo& layer, const at::Tensor& x_in) {
  const at::Tensor x = layer.input_hadamard ? hadamard_transform(x_in) : x_in;  // online R4 (QuaRot)
  at::Tensor y;
  if (layer.act_bits > 0) {
    const at::Tensor w = float_param(layer.weight);
    const at::Tensor bias = layer.bias.empty() ? at::Tensor() : float_param(layer.bias);
    auto it = int8_weights_.find(layer.name);
    if (layer.act_bits == 8 && layer.act_format == ActFormat::int_ && int8_kernel_ && x.is_cpu() &&
        it != int8_weights_.end()) {
      y = int8_linear(x, it->second.q, it->second.scale, bias);
    } else {
      // Fake quantization of the input (quant/act_quant.h), then the float matmul.
      at::Tensor xq = act_fake_quant(x.detach(), layer.act_quant());
      if (x.requires_grad()) xq = xq - (x.detach() - x);  // training: straight-through gradient
      y = bias.defined() ? at::linear(xq, w, bias) : at::linear(xq, w);
    }
  } else if (compute_bf16_ && !x.requires_grad()) {
    const at::Tensor& p = params_.at(layer.weight);
    const at::Tensor wb = p.scalar_type() == at::kBFloat16 ? p : to_bf16(p);
    const at::Tensor xb = to_bf16(x);
    y = widen(layer.bias.empty() ? at::linear(xb, wb) : at::linear(xb, wb, to_bf16(float_param(layer.bias))));
  } else {
    const at::Tensor w = float_param(layer.weight);
    y = layer.bias.empty() ? at::linear(x, w) : at::linear(x, w, float_param(layer.bias));
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
  // In float32 whatever the stored dtype (a bf16 norm kept narrow would add the offset in bf16).
  const at::Tensor prev = param(g.prev).to(at::kFloat);
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
  if (!g.prev_bias.empty()) set_param(g.prev_bias, param(g.prev_bias).to(at::kFloat).div(s));
  const at::Tensor se = g.expand(s);
  for (const auto& name : g.layers) {
    const LayerInfo& l = layer(name);
    const at::Tensor w = param(l.weight).to(at::kFloat);
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
  l.act_format = ActFormat::int_;
}

void Model::set_input_quant(const std::string& name, const ActQuant& a) {
  set_input_quant(name, a.format == ActFormat::int_ ? a.bits : 0);
  if (a.format == ActFormat::int_ || !a.on()) return;
  if (a.bits != act_format_bits(a.format))
    fail("model", "layer ", name, ": ", act_quant_name(a), " activations have ", act_format_bits(a.format), " bits, not ", a.bits);
  LayerInfo& l = layers_[layer_index_.at(name)];
  l.act_bits = a.bits;
  l.act_format = a.format;
}

void Model::set_input_hadamard(const std::string& name, bool on) {
  auto it = layer_index_.find(name);
  if (it == layer_index_.end()) fail("model", arch(), " model has no layer '", name, "'");
  LayerInfo& l = layers_[it->second];
  if (l.kind != LayerKind::Linear) fail("model", "layer ", name, ": an online Hadamard needs a linear layer");
  l.input_hadamard = on;
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

// LlamaModel: parameters checked against the config, then an ATen forward mirroring llama2.c model.py
// (and Hugging Face modeling_llama / modeling_qwen2 / modeling_qwen3 for the rotate-half layout, the biases and
// Qwen3's per-head q/k norms).
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#include "mcompress/error.h"
#include "mcompress/models/attention.h"
#include "mcompress/models/llama.h"
#include "mcompress/torch_bridge.h"

namespace mc {

namespace {

// The roles of a block. A block runs attn_norm, wq, wk, wv, [q_norm, k_norm (Qwen3, Gemma 3)], wo,
// [post_attn_norm (Gemma)], ffn_norm, w1, w3, w2, [post_ffn_norm (Gemma)], or with fused tensors (Phi-3)
// attn_norm, wqkv, wo, ffn_norm, w13, w2; slot_pos_ maps a role to its position in block_layers_[k].
enum BlockSlot { kAttnNorm, kWq, kWk, kWv, kWo, kFfnNorm, kW1, kW3, kW2, kQNorm, kKNorm, kPostAttnNorm, kPostFfnNorm,
                 kWqkv, kW13, kNumSlots };

std::string module_of(const std::string& key) {
  const std::string suffix = ".weight";
  if (key.size() > suffix.size() && key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0)
    return key.substr(0, key.size() - suffix.size());
  return key;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string list_some(const std::vector<std::string>& v) {
  std::string out;
  for (size_t i = 0; i < v.size() && i < 8; ++i) out += (i ? ", " : "") + v[i];
  if (v.size() > 8) out += str(", ... (", v.size(), " in all)");
  return out;
}

}  // namespace

LlamaModel::LlamaModel(const LlamaConfig& cfg, const std::map<std::string, HostTensor>& weights) : cfg_(cfg) {
  cfg_.validate();
  const auto N = cfg_.names;
  std::vector<int> block_roles;  // block 0's roles in execution order (every block has the same)
  const int64_t D = cfg_.dim, F = cfg_.hidden_dim, V = cfg_.vocab_size;
  const int64_t QD = cfg_.n_heads * cfg_.head_dim, KVD = cfg_.n_kv_heads * cfg_.head_dim;

  // Expected parameters with their shapes, and the layers in execution order.
  std::vector<std::pair<std::string, Shape>> expected;
  auto want = [&](const std::string& role, int64_t blk, Shape s) {
    std::string key = llama_param_name(cfg_, role, blk);
    expected.emplace_back(key, std::move(s));
    return key;
  };
  const std::string embed_key = want("embed", -1, {V, D});
  std::vector<LayerInfo> plan;
  plan.push_back({module_of(embed_key), embed_key, "", LayerKind::Embedding, -1, false, D, V});
  for (int64_t i = 0; i < cfg_.n_layers; ++i) {
    const int b = static_cast<int>(i);
    auto lin = [&](BlockSlot slot, const char* role, const char* bias_role, bool has_bias, int64_t out, int64_t in) {
      if (i == 0) block_roles.push_back(slot);
      std::string w = want(role, i, {out, in});
      std::string bias = has_bias ? want(bias_role, i, {out}) : "";
      plan.push_back({module_of(w), w, bias, LayerKind::Linear, b, false, out, in});
    };
    auto norm = [&](BlockSlot slot, const char* role, int64_t width) {
      if (i == 0) block_roles.push_back(slot);
      std::string w = want(role, i, {width});
      plan.push_back({module_of(w), w, "", LayerKind::Norm, b, false, width, width});
    };
    norm(kAttnNorm, "attn_norm", D);
    if (cfg_.fused_qkv_gate_up) {  // Phi-3: the checkpoint's own fused tensors stay single layers
      lin(kWqkv, "wqkv", "", false, QD + 2 * KVD, D);
      lin(kWo, "wo", "", false, D, QD);
      norm(kFfnNorm, "ffn_norm", D);
      lin(kW13, "w13", "", false, 2 * F, D);
      lin(kW2, "w2", "", false, D, F);
      continue;
    }
    lin(kWq, "wq", "bq", cfg_.qkv_bias, QD, D);
    lin(kWk, "wk", "bk", cfg_.qkv_bias, KVD, D);
    lin(kWv, "wv", "bv", cfg_.qkv_bias, KVD, D);
    if (cfg_.qk_norm) norm(kQNorm, "q_norm", cfg_.head_dim), norm(kKNorm, "k_norm", cfg_.head_dim);
    lin(kWo, "wo", "bo", cfg_.o_bias, D, QD);
    if (cfg_.sandwich_norms) norm(kPostAttnNorm, "post_attn_norm", D);
    norm(kFfnNorm, "ffn_norm", D);
    lin(kW1, "w1", "", false, F, D);
    lin(kW3, "w3", "", false, F, D);
    lin(kW2, "w2", "", false, D, F);
    if (cfg_.sandwich_norms) norm(kPostFfnNorm, "post_ffn_norm", D);
  }
  slot_pos_.assign(kNumSlots, SIZE_MAX);
  for (size_t p = 0; p < block_roles.size(); ++p) slot_pos_[size_t(block_roles[p])] = p;
  const std::string norm_key = want("final_norm", -1, {D});
  plan.push_back({module_of(norm_key), norm_key, "", LayerKind::Norm, -1, false, D, D});
  const std::string out_key = llama_param_name(N, "output");
  if (!cfg_.tied) expected.emplace_back(out_key, Shape{V, D});
  plan.push_back({module_of(out_key), cfg_.tied ? embed_key : out_key, "", LayerKind::Linear, -1, true, V, D});

  // Names: missing and unexpected keys (a tied checkpoint may still carry its classifier copy).
  std::map<std::string, Shape> exp_map(expected.begin(), expected.end());
  std::vector<std::string> missing, unexpected;
  for (const auto& [key, shape] : expected)
    if (!weights.count(key)) missing.push_back(key);
  for (const auto& [key, t] : weights) {
    if (exp_map.count(key) || ends_with(key, "rotary_emb.inv_freq")) continue;
    if (cfg_.tied && key == out_key) continue;
    unexpected.push_back(key);
  }
  if (!missing.empty() || !unexpected.empty()) {
    std::string msg = "checkpoint does not match the llama config (" + std::to_string(cfg_.n_layers) + " layers";
    msg += cfg_.qkv_bias ? ", q/k/v biases" : "";
    msg += cfg_.qk_norm ? ", q/k norms" : "";
    msg += cfg_.fused_qkv_gate_up ? ", fused qkv_proj and gate_up_proj" : "";
    msg += cfg_.sandwich_norms ? ", Gemma sandwich norms" : "";
    msg += cfg_.tied ? ", tied classifier)" : ", separate classifier)";
    if (!missing.empty()) msg += "; missing keys: " + list_some(missing);
    if (!unexpected.empty()) msg += "; unexpected keys: " + list_some(unexpected);
    fail("llama", msg);
  }
  // Shapes, then the tensors (zero-copy for F32; other float types are converted to F32).
  auto to_param = [&](const std::string& key, const Shape& shape) {
    const HostTensor& h = weights.at(key);
    if (h.shape != shape)
      fail("llama", "tensor '", key, "' has shape ", shape_str(h.shape), ", expected ", shape_str(shape),
           " from the config (dim ", D, ", hidden_dim ", F, ", n_heads ", cfg_.n_heads, ", n_kv_heads ",
           cfg_.n_kv_heads, ", head_dim ", cfg_.head_dim, ", vocab_size ", V,
           cfg_.fused_qkv_gate_up ? "; qkv_proj holds q, k, v rows, gate_up_proj gate then up rows" : "", ")");
    if (!is_float(h.dtype) && !is_block(h.dtype))
      fail("llama", "tensor '", key, "' has integer dtype ", dtype_name(h.dtype), " (a float weight is needed)");
    at::Tensor t = to_torch(h);
    const bool narrow = t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
    if (narrow && KeepStoredDtype::active()) return t;  // widened per use (Model::float_param)
    return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat);
  };
  for (const auto& [key, shape] : expected) params_[key] = to_param(key, shape);
  if (cfg_.tied && weights.count(out_key)) {
    to_param(out_key, {V, D});  // shape check only: one tensor serves both names
    params_[out_key] = params_[embed_key];
    tied_[out_key] = embed_key;
  }

  num_blocks_ = static_cast<int>(cfg_.n_layers);
  block_layers_.assign(static_cast<size_t>(num_blocks_), {});
  for (auto& info : plan) {
    if (info.block >= 0) block_layers_[static_cast<size_t>(info.block)].push_back(layers_.size());
    else if (info.kind == LayerKind::Embedding) embed_layer_ = layers_.size();
    else if (info.is_classifier) output_layer_ = layers_.size();
    else norm_layer_ = layers_.size();
    add_layer(std::move(info));
  }
}

size_t LlamaModel::slot(int k, int role) const {
  return block_layers_[static_cast<size_t>(k)][slot_pos_[static_cast<size_t>(role)]];
}

std::vector<ScaleGroup> LlamaModel::scale_groups(int block) const {
  if (block < 0 || block >= num_blocks_) fail("llama", "block ", block, " outside 0..", num_blocks_ - 1);
  // q_norm/k_norm act on q/k's outputs per head: not a fold target, and scaling q/k's input channels leaves them be.
  auto L = [&](BlockSlot s) -> const LayerInfo& { return layers_[slot(block, s)]; };
  std::vector<ScaleGroup> g;
  if (cfg_.fused_qkv_gate_up) {
    // Phi-3: the norms feed the fused layers. v -> o and up -> down are left out: v's rows and up's rows are
    // part of qkv_proj / gate_up_proj, and a per-channel scale on a fused tensor's output rows cannot be limited
    // to them without splitting the tensor (which would change the checkpoint's names and quantization groups).
    g.push_back({L(kAttnNorm).weight, "", true, {L(kWqkv).name}});
    g.push_back({L(kFfnNorm).weight, "", true, {L(kW13).name}});
    return g;
  }
  // Gemma's (1 + w) norms fold a scale s as w' = (1 + w) / s - 1 (norm_offset 1). Its post_attn_norm and
  // post_ffn_norm take o's and down's outputs: an RMSNorm of a scaled vector is not the scaled norm (the RMS
  // mixes the channels), so neither o nor down can pass a scale on to anything: no group has them as prev.
  // The groups below stay exact: gelu_tanh(gate) * up is linear in up as silu(gate) * up is.
  const double off = cfg_.norm_plus_one ? 1.0 : 0.0;
  g.push_back({L(kAttnNorm).weight, "", true, {L(kWq).name, L(kWk).name, L(kWv).name}});
  g.back().norm_offset = off;
  // o's input channel (head h, d) is v's channel (h / (n_heads / n_kv_heads), d) mixed over positions.
  ScaleGroup vo{L(kWv).weight, L(kWv).bias, false, {L(kWo).name}};
  vo.repeat = cfg_.n_heads / cfg_.n_kv_heads, vo.width = cfg_.head_dim;
  g.push_back(vo);
  g.push_back({L(kFfnNorm).weight, "", true, {L(kW1).name, L(kW3).name}});
  g.back().norm_offset = off;
  // down's input is silu(gate) * up: scaling up's output channels scales it. Not with an online Hadamard on
  // down's input (--rotate hadamard-online): down then reads (u / s) H, which a column scale cannot undo.
  if (!L(kW2).input_hadamard) g.push_back({L(kW3).weight, "", false, {L(kW2).name}});
  return g;
}

void LlamaModel::untie_classifier() {
  if (!cfg_.tied) return;
  const std::string embed_key = llama_param_name(cfg_, "embed"), out_key = llama_param_name(cfg_.names, "output");
  params_[out_key] = float_param(embed_key).clone();
  tied_.erase(out_key);
  for (auto it = tied_.begin(); it != tied_.end();)
    it = it->second == out_key || it->first == embed_key ? tied_.erase(it) : std::next(it);
  layers_[output_layer_].weight = out_key;
  cfg_.tied = false;
}

void LlamaModel::ensure_rope_tables(int64_t length) {
  // longrope (HF longrope_frequency_update): the long factors once the sequence (last position + 1) exceeds the
  // original context, the short ones otherwise.
  const bool want_long = cfg_.rope_scaling == "longrope" && length > cfg_.rope_original_max_pos;
  if (cos_.defined() && cos_.size(0) >= length && want_long == rope_long_) return;
  const int64_t n = std::max(length, cfg_.max_seq_len);
  const int64_t rot = cfg_.rope_dim(), half = rot / 2;
  auto dbl = at::TensorOptions().dtype(at::kDouble);
  if (cfg_.rope_local_theta > 0) {  // Gemma 3's sliding layers: their own base, no rope_scaling
    at::Tensor inv = 1.0 / at::pow(cfg_.rope_local_theta, at::arange(0, half, dbl) * 2.0 / double(rot));
    at::Tensor freqs = at::outer(at::arange(0, n, dbl), inv);
    cos_local_ = at::cos(freqs).to(at::kFloat).to(device_);
    sin_local_ = at::sin(freqs).to(at::kFloat).to(device_);
  }
  // llama2.c precompute_freqs_cis: 1 / theta^(2i / head_dim); HF _compute_default_rope_parameters is the same
  // (over the rotated dims only with a partial_rotary_factor).
  at::Tensor inv = 1.0 / at::pow(cfg_.rope_theta, at::arange(0, half, dbl) * 2.0 / double(rot));
  double scale = 1.0;
  if (cfg_.rope_scaling == "linear") {
    inv = inv / cfg_.rope_factor;
  } else if (cfg_.rope_scaling == "llama3") {  // HF _compute_llama3_parameters
    const double old_len = double(cfg_.rope_original_max_pos), f = cfg_.rope_factor;
    const double lo = cfg_.rope_low_freq_factor, hi = cfg_.rope_high_freq_factor;
    at::Tensor wavelen = 2.0 * M_PI / inv;
    at::Tensor scaled = at::where(wavelen > old_len / lo, inv / f, inv);
    at::Tensor smooth = (old_len / wavelen - lo) / (hi - lo);
    at::Tensor smoothed = (1 - smooth) * scaled / f + smooth * scaled;
    at::Tensor medium = (wavelen >= old_len / hi).logical_and(wavelen <= old_len / lo);
    inv = at::where(medium, smoothed, scaled);
  } else if (cfg_.rope_scaling == "factors") {  // llama.cpp rope_freqs: theta_i = pos * f_i / factor_i
    inv = inv / at::tensor(cfg_.rope_freq_factors, dbl);
  } else if (cfg_.rope_scaling == "longrope") {  // HF _compute_longrope_parameters: 1 / (ext_factor * theta^(2i/rot))
    inv = inv / at::tensor(want_long ? cfg_.rope_long_factor : cfg_.rope_short_factor, dbl);
    scale = cfg_.rope_attention_factor;
  }
  rope_long_ = want_long;
  at::Tensor freqs = at::outer(at::arange(0, n, dbl), inv);  // [n, half]
  cos_ = (at::cos(freqs) * scale).to(at::kFloat).to(device_);
  sin_ = (at::sin(freqs) * scale).to(at::kFloat).to(device_);
}

at::Tensor LlamaModel::rope(const at::Tensor& x, int64_t pos0, bool local) {
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), rot = cfg_.rope_dim(), half = rot / 2;
  ensure_rope_tables(pos0 + T);
  const bool own = local && cos_local_.defined();
  at::Tensor c = (own ? cos_local_ : cos_).narrow(0, pos0, T), s = (own ? sin_local_ : sin_).narrow(0, pos0, T);  // [T, half]
  if (cfg_.rope == RopeLayout::Interleaved) {
    // llama2.c apply_rotary_emb: pairs (x[2i], x[2i+1]) rotated as complex numbers.
    at::Tensor xs = x.reshape({B, H, T, half, 2});
    at::Tensor xr = xs.select(-1, 0), xi = xs.select(-1, 1);
    return at::stack({xr * c - xi * s, xr * s + xi * c}, -1).flatten(-2);
  }
  // HF: x * cos + rotate_half(x) * sin, cos = cat(c, c), rotate_half(x) = cat(-x2, x1); with a partial rotary
  // factor over the first rot dims only, the rest passed through (Phi-3 apply_rotary_pos_emb).
  at::Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  if (rot < cfg_.head_dim) return at::cat({x1 * c - x2 * s, x2 * c + x1 * s, x.narrow(-1, rot, cfg_.head_dim - rot)}, -1);
  return at::cat({x1 * c - x2 * s, x2 * c + x1 * s}, -1);
}

at::Tensor LlamaModel::rms_norm(const LayerInfo& layer, const at::Tensor& x) {
  const at::Tensor w = float_param(layer.weight);
  at::Tensor y = x * at::rsqrt(x.pow(2).mean(-1, true) + cfg_.norm_eps) * (cfg_.norm_plus_one ? w + 1.0 : w);
  run_hooks(layer, x, y);
  return y;
}

at::Tensor LlamaModel::attention(int k, const at::Tensor& x, KVCache* cache, int64_t pos0) {
  const int64_t B = x.size(0), T = x.size(1), H = cfg_.n_heads, HKV = cfg_.n_kv_heads, hd = cfg_.head_dim;
  at::Tensor q, kk, v;
  if (cfg_.fused_qkv_gate_up) {  // HF Phi3Attention: qkv_proj rows are q, then k, then v
    at::Tensor qkv = apply_linear(layers_[slot(k, kWqkv)], x);
    q = qkv.narrow(-1, 0, H * hd).reshape({B, T, H, hd});
    kk = qkv.narrow(-1, H * hd, HKV * hd).reshape({B, T, HKV, hd});
    v = qkv.narrow(-1, (H + HKV) * hd, HKV * hd).reshape({B, T, HKV, hd}).transpose(1, 2);
  } else {
    q = apply_linear(layers_[slot(k, kWq)], x).view({B, T, H, hd});
    kk = apply_linear(layers_[slot(k, kWk)], x).view({B, T, HKV, hd});
    v = apply_linear(layers_[slot(k, kWv)], x).view({B, T, HKV, hd}).transpose(1, 2);
  }
  if (cfg_.qk_norm) {  // HF Qwen3Attention: q_norm(q_proj(x).view(..., head_dim)), before RoPE
    q = rms_norm(layers_[slot(k, kQNorm)], q);
    kk = rms_norm(layers_[slot(k, kKNorm)], kk);
  }
  q = q.transpose(1, 2), kk = kk.transpose(1, 2);
  // Gemma 3: a sliding layer's RoPE base goes with its layer type (rotary_emb_local), whatever the window.
  const bool local = !cfg_.sliding_layers.empty() && cfg_.sliding_layers[static_cast<size_t>(k)];
  q = rope(q, pos0, local);
  kk = rope(kk, pos0, local);
  kv_to_cache(k, kk, v);
  if (cache) {
    auto& ck = cache->k[static_cast<size_t>(k)];
    auto& cv = cache->v[static_cast<size_t>(k)];
    ck.narrow(2, pos0, T).copy_(kk);
    cv.narrow(2, pos0, T).copy_(v);
    kk = ck.narrow(2, 0, pos0 + T);
    v = cv.narrow(2, 0, pos0 + T);
  }
  AttentionParams ap;
  ap.scale = 1.0 / std::sqrt(cfg_.query_pre_attn_scalar > 0 ? cfg_.query_pre_attn_scalar : double(hd));
  ap.softcap = cfg_.attn_softcap;  // Gemma 2
  ap.window = cfg_.is_sliding(k) ? cfg_.sliding_window : 0;
  at::Tensor out;
  if (attention_observer_) {  // distillation: the probabilities, in the autograd graph
    at::Tensor probs;
    out = causal_attention_ref(q, kk, v, ap, &probs);
    attention_observer_(k, probs);
  } else {
    out = causal_attention(q, kk, v, ap);  // [B, T, H * hd]
  }
  return apply_linear(layers_[slot(k, kWo)], out);
}

at::Tensor LlamaModel::block(int k, const at::Tensor& x, KVCache* cache, int64_t pos0) {
  if (cfg_.sandwich_norms) return gemma_block(k, x, cache, pos0);
  at::Tensor h = x + attention(k, rms_norm(layers_[slot(k, kAttnNorm)], x), cache, pos0);
  at::Tensor n = rms_norm(layers_[slot(k, kFfnNorm)], h);
  if (cfg_.fused_qkv_gate_up) {  // HF Phi3MLP: gate, up = gate_up_proj(x).chunk(2, -1); down(up * silu(gate))
    at::Tensor gu = apply_linear(layers_[slot(k, kW13)], n);
    const int64_t F = cfg_.hidden_dim;
    return h + apply_linear(layers_[slot(k, kW2)], at::silu(gu.narrow(-1, 0, F)) * gu.narrow(-1, F, F));
  }
  at::Tensor g = apply_linear(layers_[slot(k, kW1)], n);
  at::Tensor u = apply_linear(layers_[slot(k, kW3)], n);
  return h + apply_linear(layers_[slot(k, kW2)], gated(g, u, false));
}

// silu(g) * u (gelu_tanh for Gemma). In place when nothing else can see g (no hooks, no autograd): the same
// values, without two fresh [tokens, hidden_dim] buffers (each a page-faulted mmap at these sizes, which cost
// as much as the multiply itself here).
at::Tensor LlamaModel::gated(at::Tensor& g, const at::Tensor& u, bool gelu) {
  if (hooks_.empty() && !at::GradMode::is_enabled() && !g.requires_grad() && !u.requires_grad()) {
    if (gelu) return g.copy_(at::gelu(g, "tanh")).mul_(u);
    return at::silu_(g).mul_(u);
  }
  return (gelu ? at::gelu(g, "tanh") : at::silu(g)) * u;
}

// HF Gemma2DecoderLayer / Gemma3DecoderLayer: each sublayer's output is normed before it joins the residual.
at::Tensor LlamaModel::gemma_block(int k, const at::Tensor& x, KVCache* cache, int64_t pos0) {
  at::Tensor a = attention(k, rms_norm(layers_[slot(k, kAttnNorm)], x), cache, pos0);
  at::Tensor h = x + rms_norm(layers_[slot(k, kPostAttnNorm)], a);
  at::Tensor n = rms_norm(layers_[slot(k, kFfnNorm)], h);
  at::Tensor g = apply_linear(layers_[slot(k, kW1)], n);
  at::Tensor u = apply_linear(layers_[slot(k, kW3)], n);
  at::Tensor m = apply_linear(layers_[slot(k, kW2)], gated(g, u, true));
  return h + rms_norm(layers_[slot(k, kPostFfnNorm)], m);
}

at::Tensor LlamaModel::embed(const at::Tensor& tokens) {
  if (tokens.dim() != 2 || at::isFloatingType(tokens.scalar_type()))
    fail("llama", "input must be integer token ids [batch, time], got ", tokens.dim(), " dims of ",
         c10::toString(tokens.scalar_type()));
  at::Tensor ids = tokens.to(device_, at::kLong);
  if (ids.numel() > 0) {
    const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    if (lo < 0 || hi >= cfg_.vocab_size)
      fail("llama", "token id ", lo < 0 ? lo : hi, " is outside the vocabulary [0, ", cfg_.vocab_size, ")");
  }
  const LayerInfo& L = layers_[embed_layer_];
  at::Tensor y = at::embedding(params_.at(L.weight), ids).to(at::kFloat);  // rows widened, not the table
  if (cfg_.embed_scale > 0) y = y * cfg_.embed_scale;  // Gemma: sqrt(hidden_size)
  run_hooks(L, ids, y);
  return y;
}

at::Tensor LlamaModel::run_block(int k, const at::Tensor& hidden) {
  if (k < 0 || k >= num_blocks_) fail("llama", "block ", k, " out of range [0, ", num_blocks_, ")");
  return block(k, hidden, nullptr, 0);
}

at::Tensor LlamaModel::head(const at::Tensor& hidden) {
  at::Tensor logits = apply_linear(layers_[output_layer_], rms_norm(layers_[norm_layer_], hidden));
  if (cfg_.final_softcap > 0) logits = at::tanh(logits / cfg_.final_softcap) * cfg_.final_softcap;  // Gemma 2
  return logits;
}

at::Tensor LlamaModel::forward(const at::Tensor& tokens) {
  at::Tensor x = embed(tokens);
  for (int k = 0; k < num_blocks_; ++k) x = block(k, x, nullptr, 0);
  return head(x);
}

at::Tensor LlamaModel::forward_cached(const at::Tensor& tokens, KVCache& cache) {
  at::Tensor x = embed(tokens);
  const int64_t B = x.size(0), T = x.size(1);
  if (cache.k.empty()) {
    if (cache.capacity <= 0) cache.capacity = std::max(cfg_.max_seq_len, T);
    auto opts = at::TensorOptions().dtype(at::kFloat).device(device_);
    for (int k = 0; k < num_blocks_; ++k) {
      cache.k.push_back(at::zeros({B, cfg_.n_kv_heads, cache.capacity, cfg_.head_dim}, opts));
      cache.v.push_back(at::zeros({B, cfg_.n_kv_heads, cache.capacity, cfg_.head_dim}, opts));
    }
    cache.length = 0;
  }
  if (cache.k.size() != static_cast<size_t>(num_blocks_) || cache.k[0].size(0) != B)
    fail("llama", "KV cache was made for another model or batch size");
  if (cache.length + T > cache.capacity)
    fail("llama", "sequence of ", cache.length + T, " tokens exceeds the KV cache capacity ", cache.capacity);
  for (int k = 0; k < num_blocks_; ++k) x = block(k, x, &cache, cache.length);
  cache.length += T;
  return head(x);
}

std::map<std::string, std::string> LlamaModel::config_metadata() const {
  std::map<std::string, std::string> m = {{"mcompress.arch", "llama"}, {"mcompress.llama.config", cfg_.json()}};
  if (cfg_.names == LlamaNames::Llama2c) {  // what write_llama2c needs to write a .bin
    m["dim"] = std::to_string(cfg_.dim), m["hidden_dim"] = std::to_string(cfg_.hidden_dim);
    m["n_layers"] = std::to_string(cfg_.n_layers), m["n_heads"] = std::to_string(cfg_.n_heads);
    m["n_kv_heads"] = std::to_string(cfg_.n_kv_heads), m["vocab_size"] = std::to_string(cfg_.vocab_size);
    m["seq_len"] = std::to_string(cfg_.max_seq_len), m["shared_classifier"] = cfg_.tied ? "1" : "0";
  }
  return m;
}

void LlamaModel::to(c10::Device device) {
  Model::to(device);
  if (cos_.defined()) cos_ = cos_.to(device), sin_ = sin_.to(device);
  if (cos_local_.defined()) cos_local_ = cos_local_.to(device), sin_local_ = sin_local_.to(device);
}

}  // namespace mc

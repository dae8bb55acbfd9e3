// rotate_model: QuaRot-style Hadamard rotations of a llama-family model (quant/rotate.h).
#include "mcompress/quant/rotate.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "mcompress/checkpoint.h"

#include "mcompress/error.h"
#include "mcompress/models/llama.h"
#include "mcompress/quant/hadamard.h"
#include "mcompress/rng.h"

namespace mc {

namespace {

constexpr const char* kComp = "rotate";

class Rotator {
 public:
  Rotator(LlamaModel& m, const RotateOptions& o) : m_(m), c_(m.config()) {
    SplitMix64 rng{o.seed ^ 0x726f74617465ULL};  // "rotate"
    signs_ = at::empty({c_.dim}, at::kDouble);
    auto s = signs_.accessor<double, 1>();
    for (int64_t i = 0; i < c_.dim; ++i) s[i] = (rng.next() >> 63) ? -1.0 : 1.0;
  }

  std::string key(const char* role, int64_t block = -1) const { return llama_param_name(c_, role, block); }
  at::Tensor get(const std::string& k) const { return m_.param(k).to(at::kDouble); }
  void put(const std::string& k, const at::Tensor& t) { m_.set_param(k, t.to(at::kFloat)); }

  // x Q on the last dimension (the residual stream's), Q = diag(s) H_dim.
  at::Tensor r1(const at::Tensor& x) const { return hadamard_transform(x * signs_); }
  // A linear W [out, in] reading the stream: W Q.
  at::Tensor r1_in(const at::Tensor& W) const { return r1(W); }
  // A linear writing to the stream: Qᵀ W = (Wᵀ Q)ᵀ.
  at::Tensor r1_out(const at::Tensor& W) const { return r1(W.t()).t(); }
  // Output rows of each of `heads` heads: Hᵀ W_h (W [heads * hd, in]).
  at::Tensor heads_out(const at::Tensor& W, int64_t heads) const {
    const int64_t in = W.size(1), hd = c_.head_dim;
    return hadamard_transform(W.t().reshape({in, heads, hd})).reshape({in, heads * hd}).t();
  }
  // Input columns of each of `heads` heads: W_h H (W [out, heads * hd]).
  at::Tensor heads_in(const at::Tensor& W, int64_t heads) const {
    const int64_t out = W.size(0), hd = c_.head_dim;
    return hadamard_transform(W.reshape({out, heads, hd})).reshape({out, heads * hd});
  }
  // The norm's effective weight (Gemma: 1 + w), and resets it to the identity.
  at::Tensor take_norm(const std::string& k) {
    at::Tensor w = get(k);
    const double off = c_.norm_plus_one ? 1.0 : 0.0;
    put(k, at::full_like(w, 1.0 - off));
    return w + off;
  }

  void block(int64_t i, bool online, std::vector<std::string>& online_keys) {
    const int64_t H = c_.n_heads, KV = c_.n_kv_heads, hd = c_.head_dim;
    const at::Tensor wa = take_norm(key("attn_norm", i)).unsqueeze(0);
    if (c_.fused_qkv_gate_up) {  // Phi-3: qkv_proj rows are q, k, v; only v's rows get R2
      const std::string k = key("wqkv", i);
      at::Tensor W = r1_in(get(k) * wa);
      W = at::cat({W.narrow(0, 0, (H + KV) * hd), heads_out(W.narrow(0, (H + KV) * hd, KV * hd), KV)}, 0);
      put(k, W);
    } else {
      for (const char* r : {"wq", "wk"}) put(key(r, i), r1_in(get(key(r, i)) * wa));
      put(key("wv", i), heads_out(r1_in(get(key("wv", i)) * wa), KV));
      if (c_.qkv_bias) put(key("bv", i), hadamard_transform(get(key("bv", i)).view({KV, hd})).reshape({-1}));
    }
    put(key("wo", i), r1_out(heads_in(get(key("wo", i)), H)));
    if (c_.o_bias) put(key("bo", i), r1(get(key("bo", i))));
    const at::Tensor wf = take_norm(key("ffn_norm", i)).unsqueeze(0);
    for (const char* r : c_.fused_qkv_gate_up ? std::vector<const char*>{"w13"} : std::vector<const char*>{"w1", "w3"})
      put(key(r, i), r1_in(get(key(r, i)) * wf));
    at::Tensor W2 = get(key("w2", i));
    if (online) W2 = hadamard_transform(W2), online_keys.push_back(key("w2", i));  // R4: W H, x H at run time
    put(key("w2", i), r1_out(W2));
  }

  // Embedding and classifier; the final norm folded into the classifier (untied first when it must be).
  bool ends() {
    const std::string norm = key("final_norm");
    const double off = c_.norm_plus_one ? 1.0 : 0.0;
    const bool unit = (get(norm) + off).eq(1.0).all().item<bool>();
    bool untied = false;
    if (c_.tied && !unit) m_.untie_classifier(), untied = true;
    const bool tied = m_.config().tied;
    const at::Tensor wn = take_norm(norm).unsqueeze(0);
    put(key("embed"), r1(get(key("embed"))));  // tied: the classifier too (one tensor)
    if (!tied) put(llama_param_name(c_.names, "output"), r1_in(get(llama_param_name(c_.names, "output")) * wn));
    return untied;
  }

 private:
  LlamaModel& m_;
  const LlamaConfig& c_;
  at::Tensor signs_;
};

std::string layer_of(const Model& m, const std::string& weight_key) {
  for (const auto& l : m.layers())
    if (l.weight == weight_key) return l.name;
  fail(kComp, "no layer has the weight '", weight_key, "'");
}

}  // namespace

std::string RotateResult::metadata() const {
  nlohmann::json j = {{"rotation", "hadamard"}, {"online_hadamard", online_layers}, {"summary", summary}};
  return j.dump();
}

std::string rotation_plan(const Model& model, const RotateOptions& o) {
  const auto* lm = dynamic_cast<const LlamaModel*>(&model);
  if (!lm) fail(kComp, "--rotate needs a llama-family model (llama, qwen2/3, mistral, phi3); this is a ", model.arch(), " model");
  const LlamaConfig& c = lm->config();
  if (c.sandwich_norms)
    fail(kComp, "--rotate cannot rotate ", c.family, ": its sandwich norms (post_attention / post_feedforward "
         "layernorm with their own weights on o_proj's and down_proj's outputs, before the residual add) do not "
         "commute with a rotation of the residual stream and have no linear after them to fold into");
  for (const auto& l : model.layers())
    if (l.input_hadamard) fail(kComp, "the model is already rotated (", l.name, " has an online Hadamard)");
  std::string plan = "hadamard: norms folded; R1 " + hadamard_shape(c.dim).describe() + " with random signs (seed " +
                     std::to_string(o.seed) + ") on the residual stream; R2 " + hadamard_shape(c.head_dim).describe() +
                     " per head on v/o";
  if (o.online) plan += "; R4 online on down_proj's input, " + hadamard_shape(c.hidden_dim).describe();
  return plan;
}

RotateResult rotate_model(Model& model, const RotateOptions& o) {
  RotateResult res;
  res.summary = rotation_plan(model, o);  // the checks first
  auto& lm = dynamic_cast<LlamaModel&>(model);
  const LlamaConfig& c = lm.config();
  Rotator r(lm, o);
  std::vector<std::string> online_keys;
  res.untied = r.ends();
  for (int64_t i = 0; i < c.n_layers; ++i) r.block(i, o.online, online_keys);
  for (const auto& k : online_keys) {
    res.online_layers.push_back(layer_of(model, k));
    model.set_input_hadamard(res.online_layers.back(), true);
  }
  if (res.untied)
    res.summary += "; classifier untied (the final norm's weight is folded into it: +" +
                   std::to_string(c.vocab_size * c.dim) + " parameters)";
  return res;
}

size_t online_hadamard_layers(const std::string& path) {
  std::string file = path;
  if (std::filesystem::is_directory(path)) file = (std::filesystem::path(path) / "model.safetensors").string();
  if (!std::filesystem::is_regular_file(file)) return 0;
  const auto meta = open_checkpoint(file)->metadata();
  auto it = meta.find(kRotationMetadataKey);
  if (it == meta.end()) return 0;
  try {
    return nlohmann::json::parse(it->second).value("online_hadamard", nlohmann::json::array()).size();
  } catch (const nlohmann::json::exception& e) {
    fail("model", path, ": bad '", kRotationMetadataKey, "' metadata: ", e.what());
  }
}

void apply_rotation_metadata(Model& model, const std::string& value, const std::string& where) {
  try {
    const nlohmann::json j = nlohmann::json::parse(value);
    for (const auto& name : j.value("online_hadamard", nlohmann::json::array())) model.set_input_hadamard(name.get<std::string>(), true);
  } catch (const nlohmann::json::exception& e) {
    fail("model", where, ": bad '", kRotationMetadataKey, "' metadata: ", e.what());
  }
}

}  // namespace mc

// Gemma 2 / Gemma 3 Hugging Face configs, as Transformers reads them (configuration_gemma2.py,
// configuration_gemma3.py Gemma3TextConfig; checked against google/gemma-2-2b and google/gemma-3-1b-pt):
//  * head_dim is its own key (256), independent of hidden_size / num_attention_heads;
//  * attention scale query_pre_attn_scalar^-0.5; hidden_activation gelu_pytorch_tanh;
//  * Gemma 2: attn_logit_softcapping 50, final_logit_softcapping 30, every even layer (0, 2, ...) slides
//    over sliding_window tokens (Gemma2Attention: `not bool(layer_idx % 2)`);
//  * Gemma 3: softcaps null, q_norm/k_norm per head, layer i slides unless (i + 1) % sliding_window_pattern
//    == 0, sliding layers use rope_local_base_freq without rope_scaling (rotary_emb_local), global layers
//    rope_theta with rope_scaling (4B+: linear, factor 8);
//  * newer configs list `layer_types` ("sliding_attention" / "full_attention"), which wins;
//  * embeddings times sqrt(hidden_size) (Gemma2Model: a tensor of the hidden dtype, so a bf16 run uses
//    bf16(sqrt(H)): sqrt(1152) = 33.94 becomes 34.0, +0.17%; we run in float32 and use float32(sqrt(H)),
//    as Transformers in float32 and llama.cpp (sqrtf(n_embd)) do).
#include "gemma_config.h"

#include <cmath>

#include "mcompress/error.h"

namespace mc {

namespace {

using nlohmann::json;

template <typename T>
T value_or(const json& j, const char* key, T dflt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  return it->get<T>();
}

}  // namespace

namespace {

LlamaConfig gemma_config_from_hf(const json& j, const std::string& arch, const std::string& path) {
  LlamaConfig c;
  c.names = LlamaNames::HuggingFace;
  c.rope = RopeLayout::RotateHalf;
  const bool g3 = arch == "Gemma3ForCausalLM";
  c.family = g3 ? "gemma3" : "gemma2";
  // Gemma2Config keeps hidden_act beside hidden_activation; the MLP reads hidden_activation.
  const std::string act = value_or<std::string>(j, "hidden_activation", value_or<std::string>(j, "hidden_act", "gelu_pytorch_tanh"));
  if (act != "gelu_pytorch_tanh")
    fail("llama", path, ": hidden_activation '", act, "' is not supported for ", arch, " (only gelu_pytorch_tanh)");
  if (value_or(j, "attention_bias", false)) fail("llama", path, ": attention_bias is not supported for ", arch);
  c.dim = j.at("hidden_size"), c.hidden_dim = j.at("intermediate_size");
  c.n_layers = j.at("num_hidden_layers"), c.n_heads = j.at("num_attention_heads");
  c.n_kv_heads = value_or<int64_t>(j, "num_key_value_heads", c.n_heads);
  c.head_dim = value_or<int64_t>(j, "head_dim", 256);
  c.vocab_size = j.at("vocab_size");
  c.max_seq_len = value_or<int64_t>(j, "max_position_embeddings", g3 ? 131072 : 8192);
  c.norm_eps = value_or(j, "rms_norm_eps", 1e-6);
  c.rope_theta = value_or(j, "rope_theta", g3 ? 1000000.0 : 10000.0);
  c.tied = value_or(j, "tie_word_embeddings", true);
  c.norm_plus_one = true;
  c.embed_scale = double(float(std::sqrt(double(c.dim))));
  c.sandwich_norms = true;
  c.gelu_tanh = true;
  c.qk_norm = g3;
  c.query_pre_attn_scalar = value_or(j, "query_pre_attn_scalar", double(c.head_dim));
  c.attn_softcap = value_or(j, "attn_logit_softcapping", g3 ? 0.0 : 50.0);
  c.final_softcap = value_or(j, "final_logit_softcapping", g3 ? 0.0 : 30.0);
  c.sliding_window = value_or<int64_t>(j, "sliding_window", 4096);
  if (g3) c.rope_local_theta = value_or(j, "rope_local_base_freq", 10000.0);
  c.sliding_layers.assign(static_cast<size_t>(std::max<int64_t>(c.n_layers, 0)), 0);
  if (j.contains("layer_types") && j["layer_types"].is_array()) {
    const auto& lt = j["layer_types"];
    if (static_cast<int64_t>(lt.size()) != c.n_layers)
      fail("llama", path, ": layer_types lists ", lt.size(), " layers, num_hidden_layers is ", c.n_layers);
    for (size_t i = 0; i < lt.size(); ++i) {
      const std::string t = lt[i].get<std::string>();
      if (t != "sliding_attention" && t != "full_attention")
        fail("llama", path, ": layer_types[", i, "] '", t, "' (allowed: sliding_attention, full_attention)");
      c.sliding_layers[i] = t == "sliding_attention";
    }
  } else if (g3) {
    const int64_t pattern = value_or<int64_t>(j, "sliding_window_pattern", 6);
    if (pattern <= 0) fail("llama", path, ": sliding_window_pattern ", pattern, " must be positive");
    for (int64_t i = 0; i < c.n_layers; ++i) c.sliding_layers[size_t(i)] = (i + 1) % pattern != 0;
  } else {
    for (int64_t i = 0; i < c.n_layers; ++i) c.sliding_layers[size_t(i)] = i % 2 == 0;
  }
  if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) {
    const auto& rs = j["rope_scaling"];
    c.rope_scaling = value_or<std::string>(rs, "rope_type", value_or<std::string>(rs, "type", ""));
    if (c.rope_scaling == "default") c.rope_scaling.clear();
    if (!c.rope_scaling.empty() && c.rope_scaling != "linear")
      fail("llama", path, ": rope_scaling type '", c.rope_scaling, "' is not supported for ", arch, " (only linear)");
    c.rope_factor = value_or(rs, "factor", 1.0);
  }
  auto first = [&](const char* key) -> int64_t {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return -1;
    if (it->is_array()) return it->empty() ? -1 : (*it)[0].get<int64_t>();
    return it->get<int64_t>();
  };
  c.bos_id = first("bos_token_id"), c.eos_id = first("eos_token_id");
  if (!(c.query_pre_attn_scalar > 0) || c.attn_softcap < 0 || c.final_softcap < 0)
    fail("llama", path, ": query_pre_attn_scalar ", c.query_pre_attn_scalar, " must be > 0 and the softcaps >= 0");
  return c;
}

}  // namespace

std::optional<LlamaConfig> gemma_config_from_hf_text(const std::string& text, const std::string& path) {
  LlamaConfig c;
  try {
    const json j = json::parse(text);
    std::string arch;
    if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
        j["architectures"][0].is_string())
      arch = j["architectures"][0].get<std::string>();
    if (arch == "Gemma3ForConditionalGeneration")
      fail("llama", path, ": Gemma3ForConditionalGeneration (vision) is not supported: only the text model "
           "(Gemma3ForCausalLM, model_type gemma3_text) is");
    if (arch != "Gemma2ForCausalLM" && arch != "Gemma3ForCausalLM") return std::nullopt;
    c = gemma_config_from_hf(j, arch, path);
  } catch (const json::exception& e) {
    fail("llama", path, ": bad config.json: ", e.what());
  }
  try {
    c.validate();
  } catch (const InputError& e) {
    fail("llama", path, ": ", e.what());
  }
  return c;
}

std::string gemma_hf_config_json(const LlamaConfig& c, int64_t intermediate_size, const std::string& qcfg) {
  if (c.family != "gemma2" && c.family != "gemma3") fail<Error>("export", "not a Gemma config: '", c.family, "'");
  const bool g3 = c.family == "gemma3";
  nlohmann::ordered_json j;
  j["architectures"] = {g3 ? "Gemma3ForCausalLM" : "Gemma2ForCausalLM"};
  j["model_type"] = g3 ? "gemma3_text" : "gemma2";
  j["hidden_size"] = c.dim;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["head_dim"] = c.head_dim;
  j["query_pre_attn_scalar"] = c.query_pre_attn_scalar;
  j["hidden_activation"] = "gelu_pytorch_tanh";
  if (!g3) j["hidden_act"] = "gelu_pytorch_tanh";
  j["rms_norm_eps"] = c.norm_eps;
  j["rope_theta"] = c.rope_theta;
  if (g3) j["rope_local_base_freq"] = c.rope_local_theta;
  if (c.rope_scaling == "linear") j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", c.rope_factor}};
  else j["rope_scaling"] = nullptr;
  j["sliding_window"] = c.sliding_window;
  nlohmann::ordered_json types = nlohmann::ordered_json::array();
  for (int64_t i = 0; i < c.n_layers; ++i) types.push_back(c.is_sliding(i) ? "sliding_attention" : "full_attention");
  j["layer_types"] = types;  // read by Transformers >= 4.53; older ones use the pattern below
  if (g3) {
    // The period of the pattern when it is Gemma 3's regular one (older Transformers read only this).
    int64_t period = 0;
    for (int64_t p = 1; p <= c.n_layers + 1 && !period; ++p) {
      bool ok = true;
      for (int64_t i = 0; i < c.n_layers && ok; ++i) ok = c.is_sliding(i) == ((i + 1) % p != 0);
      if (ok) period = p;
    }
    if (period) j["sliding_window_pattern"] = period;
  }
  j["attn_logit_softcapping"] = c.attn_softcap > 0 ? nlohmann::ordered_json(c.attn_softcap) : nlohmann::ordered_json(nullptr);
  j["final_logit_softcapping"] = c.final_softcap > 0 ? nlohmann::ordered_json(c.final_softcap) : nlohmann::ordered_json(nullptr);
  j["attention_bias"] = false;
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_seq_len;
  j["tie_word_embeddings"] = c.tied;
  j["torch_dtype"] = "float16";
  if (c.bos_id >= 0) j["bos_token_id"] = c.bos_id;
  if (c.eos_id >= 0) j["eos_token_id"] = c.eos_id;
  j["pad_token_id"] = 0;
  j["use_cache"] = true;
  if (!qcfg.empty()) j["quantization_config"] = nlohmann::ordered_json::parse(qcfg);
  return j.dump(2) + "\n";
}

void gemma_fields_to_json(const LlamaConfig& c, nlohmann::ordered_json& j) {
  if (c.family.empty()) return;
  nlohmann::ordered_json g;
  g["family"] = c.family, g["norm_plus_one"] = c.norm_plus_one, g["embed_scale"] = c.embed_scale;
  g["sandwich_norms"] = c.sandwich_norms, g["gelu_tanh"] = c.gelu_tanh;
  g["query_pre_attn_scalar"] = c.query_pre_attn_scalar;
  g["attn_softcap"] = c.attn_softcap, g["final_softcap"] = c.final_softcap;
  std::string sl;
  for (char s : c.sliding_layers) sl += s ? '1' : '0';
  g["sliding_layers"] = sl, g["rope_local_theta"] = c.rope_local_theta;
  j["gemma"] = g;
}

void gemma_fields_from_json(const json& j, LlamaConfig& c) {
  auto it = j.find("gemma");
  if (it == j.end()) return;
  const json& g = *it;
  c.family = g.at("family").get<std::string>();
  c.norm_plus_one = g.at("norm_plus_one"), c.embed_scale = g.at("embed_scale");
  c.sandwich_norms = g.at("sandwich_norms"), c.gelu_tanh = g.at("gelu_tanh");
  c.query_pre_attn_scalar = g.at("query_pre_attn_scalar");
  c.attn_softcap = g.at("attn_softcap"), c.final_softcap = g.at("final_softcap");
  c.sliding_layers.clear();
  for (char s : g.at("sliding_layers").get<std::string>()) c.sliding_layers.push_back(s == '1');
  c.rope_local_theta = g.at("rope_local_theta");
}

}  // namespace mc

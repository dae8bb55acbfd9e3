// LlamaConfig: validation, JSON round trip (checkpoint metadata), Hugging Face config.json, and the
// parameter names of the two naming schemes.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <fstream>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "gemma_config.h"
#include "mcompress/error.h"
#include "mcompress/error_where.h"
#include "mcompress/models/llama.h"

namespace mc {

namespace {

using nlohmann::json;

const char* layout_name(RopeLayout r) { return r == RopeLayout::Interleaved ? "interleaved" : "rotate_half"; }
const char* names_name(LlamaNames n) { return n == LlamaNames::Llama2c ? "llama2c" : "hf"; }

template <typename T>
T get_or(const json& j, const char* key, T dflt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  return it->get<T>();
}

int64_t first_id(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return -1;
  if (it->is_array()) return it->empty() ? -1 : (*it)[0].get<int64_t>();
  return it->get<int64_t>();
}

// Phi3ForCausalLM (transformers modeling_phi3 / configuration_phi3): fused tensors, sliding_window (applied by
// Phi3Attention), partial_rotary_factor, and rope_scaling longrope ("su" in early configs), whose attention
// factor is modeling_rope_utils._compute_longrope_parameters': factor = max_position_embeddings /
// original_max_position_embeddings, sqrt(1 + ln(factor) / ln(original)) when factor > 1, else 1, unless
// rope_scaling gives attention_factor.
void read_phi3_fields(const json& j, LlamaConfig& c, const std::string& path) {
  c.fused_qkv_gate_up = true;
  c.sliding_window = get_or<int64_t>(j, "sliding_window", 0);
  const double prf = get_or(j, "partial_rotary_factor", 1.0);
  if (!(prf > 0 && prf <= 1)) fail("llama", path, ": partial_rotary_factor ", prf, " must be in (0, 1]");
  const int64_t rot = int64_t(double(c.head_dim) * prf);  // HF: int(head_dim * partial_rotary_factor)
  c.rotary_dim = rot == c.head_dim ? 0 : rot;
  c.rope_original_max_pos = get_or<int64_t>(j, "original_max_position_embeddings", c.max_seq_len);
  if (!j.contains("rope_scaling") || !j["rope_scaling"].is_object()) return;
  const auto& rs = j["rope_scaling"];
  if (c.rope_scaling == "su") c.rope_scaling = "longrope";
  if (c.rope_scaling != "longrope") return;  // validate() names anything else
  if (!j.contains("original_max_position_embeddings"))
    c.rope_original_max_pos = get_or<int64_t>(rs, "original_max_position_embeddings", c.max_seq_len);
  c.rope_short_factor = rs.at("short_factor").get<std::vector<double>>();
  c.rope_long_factor = rs.at("long_factor").get<std::vector<double>>();
  const double factor = double(c.max_seq_len) / double(c.rope_original_max_pos);
  c.rope_attention_factor = get_or(rs, "attention_factor", factor <= 1.0 ? 1.0
                                       : std::sqrt(1.0 + std::log(factor) / std::log(double(c.rope_original_max_pos))));
  c.rope_factor = 1.0;
}

}  // namespace

void LlamaConfig::validate() const {
  auto bad = [&](const std::string& what) { fail("llama", "config: ", what); };
  if (dim <= 0 || hidden_dim <= 0 || n_layers <= 0 || n_heads <= 0 || vocab_size <= 0)
    bad(str("dim ", dim, ", hidden_dim ", hidden_dim, ", n_layers ", n_layers, ", n_heads ", n_heads,
            ", vocab_size ", vocab_size, " must all be positive"));
  if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0)
    bad(str("n_kv_heads ", n_kv_heads, " must divide n_heads ", n_heads));
  if (head_dim <= 0 || head_dim % 2 != 0) bad(str("head_dim ", head_dim, " must be positive and even (RoPE pairs)"));
  if (!(norm_eps > 0) || !(rope_theta > 0)) bad(str("norm_eps ", norm_eps, " and rope_theta ", rope_theta, " must be > 0"));
  if (!rope_scaling.empty() && rope_scaling != "linear" && rope_scaling != "llama3" && rope_scaling != "factors" &&
      rope_scaling != "longrope")
    bad(str("rope_scaling '", rope_scaling, "' is not supported (allowed: linear, llama3, longrope)"));
  if (rope_scaling == "factors") {
    if (int64_t(rope_freq_factors.size()) != head_dim / 2)
      bad(str(rope_freq_factors.size(), " rope frequency factors for head_dim ", head_dim, " (expected ", head_dim / 2, ")"));
    for (double f : rope_freq_factors)
      if (!(f > 0) || !std::isfinite(f)) bad(str("rope frequency factor ", f, " must be finite and > 0"));
  }
  if (!(rope_factor > 0)) bad(str("rope scaling factor ", rope_factor, " must be > 0"));
  if (rope_scaling == "llama3" && !(rope_high_freq_factor > rope_low_freq_factor))
    bad("llama3 rope scaling needs high_freq_factor > low_freq_factor");
  if (!sliding_layers.empty() && static_cast<int64_t>(sliding_layers.size()) != n_layers)
    bad(str("sliding_layers lists ", sliding_layers.size(), " layers for n_layers ", n_layers));
  if (query_pre_attn_scalar < 0 || attn_softcap < 0 || final_softcap < 0 || embed_scale < 0 || rope_local_theta < 0)
    bad("query_pre_attn_scalar, softcaps, embed_scale and rope_local_theta must be >= 0");
  validate_phi3_fields();
}

// Fused tensors, partial rotary and longrope (Phi-3): kept apart so the checks above read as before.
void LlamaConfig::validate_phi3_fields() const {
  auto bad = [&](const std::string& what) { fail("llama", "config: ", what); };
  if (rotary_dim < 0 || rotary_dim > head_dim || rotary_dim % 2 != 0)
    bad(str("rotary_dim ", rotary_dim, " must be even and within 0..head_dim ", head_dim));
  if (rotary_dim > 0 && rotary_dim < head_dim && rope != RopeLayout::RotateHalf)
    bad("partial rotary (rotary_dim < head_dim) needs the rotate-half RoPE layout");
  if (fused_qkv_gate_up && (qkv_bias || o_bias || qk_norm))
    bad("fused qkv_proj / gate_up_proj (Phi-3) with attention biases or q/k norms is not supported");
  if (rope_scaling == "longrope") {
    const size_t half = size_t(rope_dim() / 2);
    if (rope_short_factor.size() != half || rope_long_factor.size() != half)
      bad(str("longrope short_factor (", rope_short_factor.size(), " values) and long_factor (", rope_long_factor.size(),
              " values) must each hold rotary_dim / 2 = ", half, " values"));
    for (double f : rope_short_factor) if (!(f > 0)) bad(str("longrope short_factor value ", f, " must be > 0"));
    for (double f : rope_long_factor) if (!(f > 0)) bad(str("longrope long_factor value ", f, " must be > 0"));
    if (!(rope_attention_factor > 0)) bad(str("longrope attention_factor ", rope_attention_factor, " must be > 0"));
    if (rope_original_max_pos <= 0) bad(str("original_max_position_embeddings ", rope_original_max_pos, " must be > 0"));
  }
}

std::string LlamaConfig::json() const {
  nlohmann::ordered_json j;
  j["dim"] = dim, j["hidden_dim"] = hidden_dim, j["n_layers"] = n_layers, j["n_heads"] = n_heads;
  j["n_kv_heads"] = n_kv_heads, j["head_dim"] = head_dim, j["vocab_size"] = vocab_size;
  j["max_seq_len"] = max_seq_len, j["norm_eps"] = norm_eps, j["rope_theta"] = rope_theta;
  j["rope_layout"] = layout_name(rope), j["names"] = names_name(names), j["tied"] = tied;
  j["qkv_bias"] = qkv_bias, j["o_bias"] = o_bias, j["sliding_window"] = sliding_window;
  j["rope_scaling"] = rope_scaling, j["rope_factor"] = rope_factor;
  j["rope_low_freq_factor"] = rope_low_freq_factor, j["rope_high_freq_factor"] = rope_high_freq_factor;
  j["rope_original_max_pos"] = rope_original_max_pos, j["bos_id"] = bos_id, j["eos_id"] = eos_id;
  // Keys only when set: metadata of the other families stays as it was.
  if (qk_norm) j["qk_norm"] = true;
  if (rope_scaling == "factors") j["rope_freq_factors"] = rope_freq_factors;
  if (fused_qkv_gate_up) j["fused_qkv_gate_up"] = true;
  if (rotary_dim > 0) j["rotary_dim"] = rotary_dim;
  if (rope_scaling == "longrope")
    j["rope_short_factor"] = rope_short_factor, j["rope_long_factor"] = rope_long_factor,
    j["rope_attention_factor"] = rope_attention_factor;
  gemma_fields_to_json(*this, j);
  return j.dump();
}

LlamaConfig LlamaConfig::from_json(const std::string& text, const std::string& where) {
  LlamaConfig c;
  try {
    auto j = json::parse(text);
    c.dim = j.at("dim"), c.hidden_dim = j.at("hidden_dim"), c.n_layers = j.at("n_layers");
    c.n_heads = j.at("n_heads"), c.n_kv_heads = j.at("n_kv_heads"), c.head_dim = j.at("head_dim");
    c.vocab_size = j.at("vocab_size"), c.max_seq_len = j.at("max_seq_len");
    c.norm_eps = j.at("norm_eps"), c.rope_theta = j.at("rope_theta");
    const std::string layout = j.at("rope_layout"), names = j.at("names");
    if (layout != "interleaved" && layout != "rotate_half") fail("llama", where, ": unknown rope_layout '", layout, "'");
    if (names != "llama2c" && names != "hf") fail("llama", where, ": unknown names '", names, "'");
    c.rope = layout == "interleaved" ? RopeLayout::Interleaved : RopeLayout::RotateHalf;
    c.names = names == "llama2c" ? LlamaNames::Llama2c : LlamaNames::HuggingFace;
    c.tied = j.at("tied"), c.qkv_bias = get_or(j, "qkv_bias", false), c.o_bias = get_or(j, "o_bias", false);
    c.qk_norm = get_or(j, "qk_norm", false);
    c.fused_qkv_gate_up = get_or(j, "fused_qkv_gate_up", false);
    c.rotary_dim = get_or<int64_t>(j, "rotary_dim", 0);
    c.rope_short_factor = get_or(j, "rope_short_factor", std::vector<double>{});
    c.rope_long_factor = get_or(j, "rope_long_factor", std::vector<double>{});
    c.rope_attention_factor = get_or(j, "rope_attention_factor", 1.0);
    c.sliding_window = get_or<int64_t>(j, "sliding_window", 0);
    c.rope_scaling = get_or<std::string>(j, "rope_scaling", "");
    c.rope_factor = get_or(j, "rope_factor", 1.0);
    c.rope_low_freq_factor = get_or(j, "rope_low_freq_factor", 1.0);
    c.rope_high_freq_factor = get_or(j, "rope_high_freq_factor", 4.0);
    c.rope_original_max_pos = get_or<int64_t>(j, "rope_original_max_pos", 8192);
    c.rope_freq_factors = get_or(j, "rope_freq_factors", std::vector<double>{});
    c.bos_id = get_or<int64_t>(j, "bos_id", -1), c.eos_id = get_or<int64_t>(j, "eos_id", -1);
    gemma_fields_from_json(j, c);
  } catch (const json::exception& e) {
    fail("llama", where, ": bad model config in metadata 'mcompress.llama.config': ", e.what());
  }
  c.validate();
  return c;
}

LlamaConfig LlamaConfig::from_hf_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail<FileError>("llama", path, ": cannot read");
  std::stringstream ss;
  ss << in.rdbuf();
  if (std::optional<LlamaConfig> g = gemma_config_from_hf_text(ss.str(), path)) return *g;
  LlamaConfig c;
  c.names = LlamaNames::HuggingFace;
  c.rope = RopeLayout::RotateHalf;
  try {
    auto j = json::parse(ss.str());
    std::string arch;
    if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty())
      arch = j["architectures"][0].get<std::string>();
    if (arch != "LlamaForCausalLM" && arch != "Qwen2ForCausalLM" && arch != "Qwen3ForCausalLM" &&
        arch != "MistralForCausalLM" && arch != "Phi3ForCausalLM")
      fail("llama", path, ": architecture '", arch,
           "' is not supported (allowed: LlamaForCausalLM, MistralForCausalLM, Phi3ForCausalLM, Qwen2ForCausalLM, "
           "Qwen3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM)");
    const std::string act = get_or<std::string>(j, "hidden_act", "silu");
    if (act != "silu") fail("llama", path, ": hidden_act '", act, "' is not supported (only silu)");
    if (get_or(j, "mlp_bias", false)) fail("llama", path, ": mlp_bias is not supported");
    c.dim = j.at("hidden_size"), c.hidden_dim = j.at("intermediate_size");
    c.n_layers = j.at("num_hidden_layers"), c.n_heads = j.at("num_attention_heads");
    c.n_kv_heads = get_or<int64_t>(j, "num_key_value_heads", c.n_heads);
    c.head_dim = get_or<int64_t>(j, "head_dim", c.n_heads > 0 ? c.dim / c.n_heads : 0);
    c.vocab_size = j.at("vocab_size");
    c.max_seq_len = get_or<int64_t>(j, "max_position_embeddings", 2048);
    c.norm_eps = get_or(j, "rms_norm_eps", 1e-6);
    c.rope_theta = get_or(j, "rope_theta", 10000.0);
    c.tied = get_or(j, "tie_word_embeddings", false);
    const bool attention_bias = get_or(j, "attention_bias", false);
    c.qkv_bias = arch == "Qwen2ForCausalLM" || attention_bias;
    c.o_bias = arch != "Qwen2ForCausalLM" && attention_bias;  // Qwen3 as Llama: attention_bias for all four
    c.qk_norm = arch == "Qwen3ForCausalLM";
    if (arch == "MistralForCausalLM") c.sliding_window = get_or<int64_t>(j, "sliding_window", 0);
    if ((arch == "Qwen2ForCausalLM" || arch == "Qwen3ForCausalLM") && get_or(j, "use_sliding_window", false))
      c.sliding_window = get_or<int64_t>(j, "sliding_window", 0);
    if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) {
      const auto& rs = j["rope_scaling"];
      c.rope_scaling = get_or<std::string>(rs, "rope_type", get_or<std::string>(rs, "type", ""));
      if (c.rope_scaling == "default") c.rope_scaling.clear();
      c.rope_factor = get_or(rs, "factor", 1.0);
      c.rope_low_freq_factor = get_or(rs, "low_freq_factor", 1.0);
      c.rope_high_freq_factor = get_or(rs, "high_freq_factor", 4.0);
      c.rope_original_max_pos = get_or<int64_t>(rs, "original_max_position_embeddings", 8192);
    }
    c.bos_id = first_id(j, "bos_token_id"), c.eos_id = first_id(j, "eos_token_id");
    if (arch == "Phi3ForCausalLM") read_phi3_fields(j, c, path);
  } catch (const json::exception& e) {
    fail("llama", path, ": bad config.json: ", e.what());
  }
  try {
    c.validate();
  } catch (const InputError& e) {
    throw InputError(with_where(e.what(), path));
  }
  return c;
}

std::string llama_param_name(LlamaNames names, const std::string& role, int64_t block) {
  const bool hf = names == LlamaNames::HuggingFace;
  if (role == "embed") return hf ? "model.embed_tokens.weight" : "tok_embeddings.weight";
  if (role == "final_norm") return hf ? "model.norm.weight" : "norm.weight";
  if (role == "output") return hf ? "lm_head.weight" : "output.weight";
  const std::string p = (hf ? "model.layers." : "layers.") + std::to_string(block) + ".";
  static const std::map<std::string, std::pair<const char*, const char*>> table = {
      {"attn_norm", {"attention_norm.weight", "input_layernorm.weight"}},
      {"ffn_norm", {"ffn_norm.weight", "post_attention_layernorm.weight"}},
      {"wq", {"attention.wq.weight", "self_attn.q_proj.weight"}},
      {"wk", {"attention.wk.weight", "self_attn.k_proj.weight"}},
      {"wv", {"attention.wv.weight", "self_attn.v_proj.weight"}},
      {"wo", {"attention.wo.weight", "self_attn.o_proj.weight"}},
      {"bq", {"attention.wq.bias", "self_attn.q_proj.bias"}},
      {"bk", {"attention.wk.bias", "self_attn.k_proj.bias"}},
      {"bv", {"attention.wv.bias", "self_attn.v_proj.bias"}},
      {"bo", {"attention.wo.bias", "self_attn.o_proj.bias"}},
      {"q_norm", {"attention.q_norm.weight", "self_attn.q_norm.weight"}},
      {"post_attn_norm", {"post_attention_norm.weight", "post_attention_layernorm.weight"}},  // Gemma's sandwich
      {"pre_ffn_norm", {"pre_ffn_norm.weight", "pre_feedforward_layernorm.weight"}},
      {"post_ffn_norm", {"post_ffn_norm.weight", "post_feedforward_layernorm.weight"}},
      {"k_norm", {"attention.k_norm.weight", "self_attn.k_norm.weight"}},
      {"w1", {"feed_forward.w1.weight", "mlp.gate_proj.weight"}},
      {"w2", {"feed_forward.w2.weight", "mlp.down_proj.weight"}},
      {"w3", {"feed_forward.w3.weight", "mlp.up_proj.weight"}},
      {"wqkv", {"attention.wqkv.weight", "self_attn.qkv_proj.weight"}},
      {"w13", {"feed_forward.w13.weight", "mlp.gate_up_proj.weight"}},
  };
  auto it = table.find(role);
  if (it == table.end()) fail<Error>("llama", "unknown parameter role '", role, "'");
  return p + (hf ? it->second.second : it->second.first);
}

std::vector<double> llama3_rope_freq_factors(const LlamaConfig& c) {
  if (c.rope_scaling != "llama3") fail("llama", "rope_freqs need llama3 rope scaling, not '", c.rope_scaling, "'");
  const double orig = double(c.rope_original_max_pos), f = c.rope_factor;
  const double lo = c.rope_low_freq_factor, hi = c.rope_high_freq_factor;
  const double low_freq_wavelen = orig / lo, high_freq_wavelen = orig / hi;
  std::vector<double> out;
  for (int64_t i = 0; i < c.head_dim / 2; ++i) {
    const double freq = std::pow(c.rope_theta, -2.0 * double(i) / double(c.head_dim));
    const double wavelen = 2.0 * M_PI / freq;
    if (wavelen < high_freq_wavelen) {
      out.push_back(1.0);
    } else if (wavelen > low_freq_wavelen) {
      out.push_back(f);
    } else {
      const double smooth = (orig / wavelen - lo) / (hi - lo);
      out.push_back(1.0 / ((1.0 - smooth) / f + smooth));
    }
  }
  return out;
}

std::string llama_param_name(const LlamaConfig& c, const std::string& role, int64_t block) {
  return llama_param_name(c.names, c.sandwich_norms && role == "ffn_norm" ? "pre_ffn_norm" : role, block);
}

std::map<std::string, at::Tensor> init_llama_weights(const LlamaConfig& c, uint64_t seed) {
  c.validate();
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const int64_t q_dim = c.n_heads * c.head_dim, kv_dim = c.n_kv_heads * c.head_dim;
  const double std0 = 0.02, std_res = 0.02 / std::sqrt(2.0 * double(c.n_layers));
  std::map<std::string, at::Tensor> w;
  auto normal = [&](const std::string& role, int64_t l, std::vector<int64_t> shape, double sd) {
    w[llama_param_name(c, role, l)] = at::normal(0.0, sd, shape, gen);
  };
  auto fill = [&](const std::string& role, int64_t l, int64_t n, double v) {
    // A (1 + w) norm (Gemma) starts at w = 0: the same identity scale.
    w[llama_param_name(c, role, l)] = at::full({n}, c.norm_plus_one ? v - 1.0 : v, at::kFloat);
  };
  normal("embed", -1, {c.vocab_size, c.dim}, std0);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    fill("attn_norm", l, c.dim, 1.0);
    if (c.fused_qkv_gate_up) {
      normal("wqkv", l, {q_dim + 2 * kv_dim, c.dim}, std0);
    } else {
      normal("wq", l, {q_dim, c.dim}, std0);
      normal("wk", l, {kv_dim, c.dim}, std0);
      normal("wv", l, {kv_dim, c.dim}, std0);
    }
    normal("wo", l, {c.dim, q_dim}, std_res);
    fill("ffn_norm", l, c.dim, 1.0);
    if (c.fused_qkv_gate_up) {
      normal("w13", l, {2 * c.hidden_dim, c.dim}, std0);
      normal("w2", l, {c.dim, c.hidden_dim}, std_res);
    } else {  // the draw order of the unfused families as before
      normal("w1", l, {c.hidden_dim, c.dim}, std0);
      normal("w2", l, {c.dim, c.hidden_dim}, std_res);
      normal("w3", l, {c.hidden_dim, c.dim}, std0);
    }
    if (c.qkv_bias) {
      fill("bq", l, q_dim, 0.0);
      fill("bk", l, kv_dim, 0.0);
      fill("bv", l, kv_dim, 0.0);
    }
    if (c.o_bias) fill("bo", l, c.dim, 0.0);
    if (c.qk_norm) fill("q_norm", l, c.head_dim, 1.0), fill("k_norm", l, c.head_dim, 1.0);
    if (c.sandwich_norms) fill("post_attn_norm", l, c.dim, 1.0), fill("post_ffn_norm", l, c.dim, 1.0);
  }
  fill("final_norm", -1, c.dim, 1.0);
  if (!c.tied) normal("output", -1, {c.vocab_size, c.dim}, std0);
  return w;
}

}  // namespace mc

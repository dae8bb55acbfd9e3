// llama.cpp's phi3 GGUF architecture, both ways. Names and keys as convert_hf_to_gguf.py's Phi3MiniModel
// writes them: qkv_proj -> blk.N.attn_qkv, gate_up_proj -> blk.N.ffn_up (gate rows first, as llm_build_phi3
// splits it), rope_factors_long/short.weight, phi3.rope.scaling.attn_factor. phi3 is a NEOX-RoPE arch in
// llama.cpp (rotate-half), so q/k rows keep the Hugging Face order.
//
// One difference stays: llama.cpp picks the long factors when its context size exceeds the original context,
// transformers (and mcompress) when the sequence does.
#include "export/gguf_phi3.h"

#include <map>
#include <optional>

#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/io/gguf.h"
#include "export/gguf_kv_read.h"

namespace mc {

namespace gguf_detail {

std::vector<GgufKV> phi3_model_kv(const LlamaConfig& c) {
  std::vector<GgufKV> kv;
  auto u32 = [&](const char* k, int64_t v) { kv.emplace_back(std::string("phi3.") + k, gguf_u32(uint32_t(v))); };
  auto f32 = [&](const char* k, double v) { kv.emplace_back(std::string("phi3.") + k, gguf_f32(float(v))); };
  u32("context_length", c.max_seq_len);
  u32("rope.scaling.original_context_length", c.rope_original_max_pos);
  u32("embedding_length", c.dim);
  u32("feed_forward_length", c.hidden_dim);
  u32("block_count", c.n_layers);
  u32("attention.head_count", c.n_heads);
  u32("attention.head_count_kv", c.n_kv_heads);
  f32("attention.layer_norm_rms_epsilon", c.norm_eps);
  u32("rope.dimension_count", c.rope_dim());
  f32("rope.freq_base", c.rope_theta);
  u32("attention.sliding_window", c.sliding_window);
  if (c.rope_scaling == "longrope") f32("rope.scaling.attn_factor", c.rope_attention_factor);
  return kv;
}

std::vector<std::pair<std::string, std::vector<double>>> phi3_rope_factor_tensors(const LlamaConfig& c) {
  if (c.rope_scaling != "longrope") return {};
  return {{"rope_factors_long.weight", c.rope_long_factor}, {"rope_factors_short.weight", c.rope_short_factor}};
}

}  // namespace gguf_detail

namespace {

using gguf_detail::find_kv;
using gguf_detail::number_kv;

std::vector<double> factors(const CheckpointReader& r, const std::string& name) {
  HostTensor t = r.load(name);
  if (t.dtype != DType::F32 || t.shape.size() != 1) fail("gguf", r.path(), ": ", name, " must be a 1-D F32 tensor");
  const float* p = reinterpret_cast<const float*>(t.data);
  return std::vector<double>(p, p + t.shape[0]);
}

}  // namespace

std::unique_ptr<Model> load_gguf_phi3(const std::string& path) {
  auto r = open_gguf(path);
  auto I = [&](const char* k, std::optional<double> d = {}) { return int64_t(number_kv(*r, std::string("phi3.") + k, d)); };
  LlamaConfig c;
  c.names = LlamaNames::HuggingFace;
  c.rope = RopeLayout::RotateHalf;
  c.fused_qkv_gate_up = true;
  c.dim = I("embedding_length"), c.hidden_dim = I("feed_forward_length"), c.n_layers = I("block_count");
  c.n_heads = I("attention.head_count"), c.n_kv_heads = I("attention.head_count_kv", double(c.n_heads));
  c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
  c.max_seq_len = I("context_length");
  c.rope_original_max_pos = I("rope.scaling.original_context_length", double(c.max_seq_len));
  c.norm_eps = number_kv(*r, "phi3.attention.layer_norm_rms_epsilon", 1e-5);
  c.rope_theta = number_kv(*r, "phi3.rope.freq_base", 10000.0);
  const int64_t rot = I("rope.dimension_count", double(c.head_dim));
  c.rotary_dim = rot == c.head_dim ? 0 : rot;
  c.sliding_window = I("attention.sliding_window", 0.0);
  if (!r->contains("token_embd.weight")) fail("gguf", path, ": no tensor 'token_embd.weight'");
  c.vocab_size = r->info("token_embd.weight").shape.at(0);
  c.tied = !r->contains("output.weight");
  c.bos_id = int64_t(number_kv(*r, "tokenizer.ggml.bos_token_id", -1.0));
  c.eos_id = int64_t(number_kv(*r, "tokenizer.ggml.eos_token_id", -1.0));
  if (r->contains("rope_factors_long.weight") || r->contains("rope_factors_short.weight")) {
    c.rope_scaling = "longrope";
    c.rope_long_factor = factors(*r, "rope_factors_long.weight");
    c.rope_short_factor = factors(*r, "rope_factors_short.weight");
    c.rope_attention_factor = number_kv(*r, "phi3.rope.scaling.attn_factor", 1.0);
  }
  static const std::map<std::string, std::string> roles = {
      {"attn_norm.weight", "attn_norm"}, {"attn_qkv.weight", "wqkv"}, {"attn_output.weight", "wo"},
      {"ffn_norm.weight", "ffn_norm"},   {"ffn_up.weight", "w13"},    {"ffn_down.weight", "w2"}};
  std::map<std::string, HostTensor> weights;
  for (const auto& ti : r->tensors()) {
    std::string key;
    if (ti.name == "token_embd.weight") key = llama_param_name(c.names, "embed");
    else if (ti.name == "output_norm.weight") key = llama_param_name(c.names, "final_norm");
    else if (ti.name == "output.weight") key = llama_param_name(c.names, "output");
    else if (ti.name == "rope_factors_long.weight" || ti.name == "rope_factors_short.weight") continue;
    else if (ti.name.rfind("blk.", 0) == 0) {
      const size_t dot = ti.name.find('.', 4);
      auto role = dot == std::string::npos ? roles.end() : roles.find(ti.name.substr(dot + 1));
      if (role == roles.end())
        fail("gguf", path, ": tensor '", ti.name, "' is not part of the phi3 architecture this loader supports "
             "(fused attn_qkv and ffn_up expected)");
      key = llama_param_name(c.names, role->second, std::stoll(ti.name.substr(4, dot - 4)));
    } else {
      fail("gguf", path, ": unexpected tensor '", ti.name, "' in a phi3 file");
    }
    HostTensor t = r->load(ti.name);
    t.name = key;
    weights[key] = std::move(t);
  }
  return std::make_unique<LlamaModel>(c, weights);
}

}  // namespace mc

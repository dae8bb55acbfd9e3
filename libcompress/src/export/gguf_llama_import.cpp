// load_gguf_llama: a GGUF file with general.architecture llama, qwen2 or qwen3 (as export_gguf or llama.cpp's
// converters write it) as a LlamaModel: config from the <arch>.* keys, tensors renamed from blk.N.* to
// llama2.c's names, interleaved RoPE for llama and rotate-half for qwen2/qwen3 (llama.cpp's NORM / NEOX),
// rope_freqs.weight as per-frequency divisors, block-quantized tensors dequantized to float32.
#include <map>

#include "export/gguf_gemma.h"
#include "export/gguf_phi3.h"
#include "mcompress/checkpoint.h"
#include "export/gguf_kv_read.h"
#include "mcompress/error.h"
#include "mcompress/export/gguf.h"
#include "mcompress/io/gguf.h"
#include "mcompress/models/llama.h"

namespace mc {

namespace {

using gguf_detail::find_kv;
using gguf_detail::int_kv;

double float_kv(const CheckpointReader& r, const std::string& key, double dflt) {
  return gguf_detail::number_kv(r, key, dflt);
}

// blk.N.<name> -> llama2.c role.
const std::map<std::string, std::string>& block_roles() {
  static const std::map<std::string, std::string> m = {
      {"attn_norm.weight", "attn_norm"}, {"attn_q.weight", "wq"},       {"attn_k.weight", "wk"},
      {"attn_v.weight", "wv"},           {"attn_output.weight", "wo"},  {"ffn_norm.weight", "ffn_norm"},
      {"ffn_gate.weight", "w1"},         {"ffn_up.weight", "w3"},       {"ffn_down.weight", "w2"},
      {"attn_q.bias", "bq"},             {"attn_k.bias", "bk"},         {"attn_v.bias", "bv"},
      {"attn_output.bias", "bo"},        {"attn_q_norm.weight", "q_norm"}, {"attn_k_norm.weight", "k_norm"},
  };
  return m;
}

}  // namespace

bool is_gguf_llama(const std::string& path) {
  if (detect_format(path) != "gguf") return false;
  auto r = open_gguf(path);
  const GgufValue* a = find_kv(*r, "general.architecture");
  return a && a->type == GgufType::STRING && (a->s == "llama" || a->s == "qwen2" || a->s == "qwen3");
}

std::unique_ptr<Model> load_gguf_llama(const std::string& path) {
  auto r = open_gguf(path);
  const GgufValue* arch = find_kv(*r, "general.architecture");
  if (arch && arch->type == GgufType::STRING && arch->s == "phi3") return load_gguf_phi3(path);
  if (arch && arch->type == GgufType::STRING && gguf_detail::is_gemma_arch(arch->s)) return gguf_detail::load_gguf_gemma(path);
  if (!arch || arch->type != GgufType::STRING || (arch->s != "llama" && arch->s != "qwen2" && arch->s != "qwen3"))
    fail("gguf", path, ": general.architecture is ", arch ? arch->to_string() : "missing",
         ", only llama, qwen2, qwen3, phi3, gemma2 and gemma3 GGUF files load as models");
  const std::string a = arch->s + ".";
  LlamaConfig c;
  c.names = LlamaNames::Llama2c;
  c.rope = arch->s == "llama" ? RopeLayout::Interleaved : RopeLayout::RotateHalf;
  c.dim = int_kv(*r, a + "embedding_length");
  c.hidden_dim = int_kv(*r, a + "feed_forward_length");
  c.n_layers = int_kv(*r, a + "block_count");
  c.n_heads = int_kv(*r, a + "attention.head_count");
  c.n_kv_heads = int_kv(*r, a + "attention.head_count_kv", c.n_heads);
  c.head_dim = int_kv(*r, a + "attention.key_length", c.n_heads > 0 ? c.dim / c.n_heads : 0);
  c.max_seq_len = int_kv(*r, a + "context_length");
  c.norm_eps = float_kv(*r, a + "attention.layer_norm_rms_epsilon", 1e-5);
  c.rope_theta = float_kv(*r, a + "rope.freq_base", 10000.0);
  if (const GgufValue* s = find_kv(*r, a + "rope.scaling.type"); s && s->s == "linear") {
    c.rope_scaling = "linear";
    c.rope_factor = float_kv(*r, a + "rope.scaling.factor", 1.0);
  }
  if (!r->contains("token_embd.weight")) fail("gguf", path, ": no tensor 'token_embd.weight'");
  c.vocab_size = int_kv(*r, a + "vocab_size", r->info("token_embd.weight").shape.at(0));
  c.tied = !r->contains("output.weight");
  c.qkv_bias = r->contains("blk.0.attn_q.bias");
  c.o_bias = r->contains("blk.0.attn_output.bias");
  c.qk_norm = r->contains("blk.0.attn_q_norm.weight");
  c.bos_id = int_kv(*r, "tokenizer.ggml.bos_token_id", -1);
  c.eos_id = int_kv(*r, "tokenizer.ggml.eos_token_id", -1);
  if (r->contains("rope_freqs.weight")) {
    if (c.rope_scaling == "linear") fail("gguf", path, ": both linear rope scaling and rope_freqs.weight");
    const HostTensor f = r->load("rope_freqs.weight");
    if (f.dtype != DType::F32 || f.numel() != c.head_dim / 2)
      fail("gguf", path, ": rope_freqs.weight should be F32 with ", c.head_dim / 2, " values (head_dim / 2)");
    const std::vector<float> v = to_f32(f);
    c.rope_scaling = "factors";
    c.rope_freq_factors.assign(v.begin(), v.end());
  }

  std::map<std::string, HostTensor> weights;
  for (const auto& ti : r->tensors()) {
    std::string key;
    if (ti.name == "token_embd.weight") key = llama_param_name(c.names, "embed");
    else if (ti.name == "output_norm.weight") key = llama_param_name(c.names, "final_norm");
    else if (ti.name == "output.weight") key = llama_param_name(c.names, "output");
    else if (ti.name.rfind("blk.", 0) == 0) {
      const size_t dot = ti.name.find('.', 4);
      auto role = dot == std::string::npos ? block_roles().end() : block_roles().find(ti.name.substr(dot + 1));
      if (role == block_roles().end())
        fail("gguf", path, ": tensor '", ti.name, "' is not part of the llama architecture this loader supports");
      key = llama_param_name(c.names, role->second, std::stoll(ti.name.substr(4, dot - 4)));
    } else if (ti.name == "rope_freqs.weight") {
      continue;  // in the config
    } else {
      fail("gguf", path, ": unexpected tensor '", ti.name, "'");
    }
    HostTensor t = r->load(ti.name);
    t.name = key;
    weights[key] = std::move(t);
  }
  return std::make_unique<LlamaModel>(c, weights);
}

}  // namespace mc

// Gemma 2 / Gemma 3 in GGUF as llama.cpp reads them (convert_hf_to_gguf.py Gemma2Model / Gemma3Model,
// src/llama-model.cpp LLM_ARCH_GEMMA2 / LLM_ARCH_GEMMA3, src/llama-arch.cpp tensor names):
//  * keys <arch>.context_length, embedding_length, block_count, feed_forward_length, attention.head_count,
//    attention.head_count_kv, attention.key_length / value_length (head_dim), attention.layer_norm_rms_epsilon,
//    rope.freq_base, attention.sliding_window; gemma2 also attn_logit_softcapping, final_logit_softcapping;
//    gemma3 rope.scaling.type / factor (linear);
//  * tensors token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_q_norm, attn_k_norm (gemma3),
//    attn_output, post_attention_norm, ffn_norm (pre_feedforward_layernorm), ffn_gate, ffn_up, ffn_down,
//    post_ffw_norm}, output_norm; the classifier is the embedding (tied);
//  * the converter adds 1 to every *norm.weight (llama.cpp multiplies by the stored weight), and q/k rows stay
//    in rotate-half order (gemma uses NEOX RoPE; no permutation as for arch llama);
//  * what llama.cpp does not read but fixes: the sliding pattern (gemma2: even layers; gemma3: every 6th layer
//    global), the sliding layers' RoPE base (gemma3: 10000), the attention scale (1/sqrt(head_dim) except 27B)
//    and the embedding scale sqrt(n_embd). A model that differs is refused rather than written wrong.
#include "export/gguf_gemma.h"

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <optional>

#include "export/gguf_vocab.h"
#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/io/gguf.h"
#include "export/gguf_kv_read.h"
#include "mcompress/torch_bridge.h"

namespace mc::gguf_detail {

namespace {

struct Role {
  const char* gguf;  // blk.N.<gguf>.weight
  const char* role;  // llama_param_name role
};
const Role kBlockRoles[] = {
    {"attn_norm", "attn_norm"}, {"attn_q", "wq"},     {"attn_k", "wk"},         {"attn_v", "wv"},
    {"attn_q_norm", "q_norm"},  {"attn_k_norm", "k_norm"}, {"attn_output", "wo"}, {"post_attention_norm", "post_attn_norm"},
    {"ffn_norm", "pre_ffn_norm"}, {"ffn_gate", "w1"},  {"ffn_up", "w3"},         {"ffn_down", "w2"},
    {"post_ffw_norm", "post_ffn_norm"},
};

// The checks llama.cpp's fixed choices impose (see the top of this file).
void check_expressible(const LlamaConfig& c, const std::string& path) {
  const bool g3 = c.family == "gemma3";
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const bool want = g3 ? (i + 1) % 6 != 0 : i % 2 == 0;
    if (c.is_sliding(i) != want)
      fail("gguf", path, ": layer ", i, " is ", c.is_sliding(i) ? "sliding" : "global", ", but llama.cpp's ", c.family,
           " fixes the pattern (", g3 ? "every 6th layer global" : "even layers sliding", ")");
  }
  if (g3 && c.rope_local_theta != 10000.0)
    fail("gguf", path, ": rope_local_base_freq ", c.rope_local_theta, ": llama.cpp's gemma3 fixes 10000");
  if (c.query_pre_attn_scalar != double(c.head_dim))
    fail("gguf", path, ": query_pre_attn_scalar ", c.query_pre_attn_scalar, " != head_dim ", c.head_dim,
         ": llama.cpp scales attention by 1/sqrt(head_dim) (27B models aside)");
  if (!c.tied) fail("gguf", path, ": an untied classifier is not written for ", c.family, " (llama.cpp ties it)");
  if (std::abs(c.embed_scale - double(std::sqrt(float(c.dim)))) > 1e-6 * c.embed_scale)
    fail("gguf", path, ": embedding scale ", c.embed_scale, " is not sqrt(hidden_size) as llama.cpp computes");
}

}  // namespace

bool is_gemma_arch(const std::string& arch) { return arch == "gemma2" || arch == "gemma3"; }

std::vector<std::pair<std::string, std::string>> gemma_block_tensors(const LlamaConfig& c) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const Role& r : kBlockRoles) {
    const std::string role = r.role;
    if (!c.qk_norm && (role == "q_norm" || role == "k_norm")) continue;
    out.emplace_back(r.gguf, role);
  }
  return out;
}

std::vector<GgufKV> gemma_model_kv(const LlamaConfig& c, const std::string& model_path) {
  check_expressible(c, model_path);
  const std::string a = c.family;
  std::vector<GgufKV> kv;
  kv.emplace_back(a + ".context_length", gguf_u32(uint32_t(c.max_seq_len)));
  kv.emplace_back(a + ".embedding_length", gguf_u32(uint32_t(c.dim)));
  kv.emplace_back(a + ".block_count", gguf_u32(uint32_t(c.n_layers)));
  kv.emplace_back(a + ".feed_forward_length", gguf_u32(uint32_t(c.hidden_dim)));
  kv.emplace_back(a + ".attention.head_count", gguf_u32(uint32_t(c.n_heads)));
  kv.emplace_back(a + ".attention.head_count_kv", gguf_u32(uint32_t(c.n_kv_heads)));
  kv.emplace_back(a + ".attention.key_length", gguf_u32(uint32_t(c.head_dim)));
  kv.emplace_back(a + ".attention.value_length", gguf_u32(uint32_t(c.head_dim)));
  kv.emplace_back(a + ".attention.layer_norm_rms_epsilon", gguf_f32(float(c.norm_eps)));
  kv.emplace_back(a + ".rope.freq_base", gguf_f32(float(c.rope_theta)));
  kv.emplace_back(a + ".attention.sliding_window", gguf_u32(uint32_t(c.sliding_window)));
  if (a == "gemma3") kv.emplace_back(a + ".rope.freq_base_swa", gguf_f32(float(c.rope_local_theta)));  // newer llama.cpp
  if (a == "gemma2") {
    kv.emplace_back(a + ".attn_logit_softcapping", gguf_f32(float(c.attn_softcap)));
    kv.emplace_back(a + ".final_logit_softcapping", gguf_f32(float(c.final_softcap)));
  } else if (c.attn_softcap > 0 || c.final_softcap > 0) {
    fail("gguf", model_path, ": softcaps on a gemma3 model: llama.cpp's gemma3 has none");
  }
  if (c.rope_scaling == "linear") {
    kv.emplace_back(a + ".rope.scaling.type", gguf_string("linear"));
    kv.emplace_back(a + ".rope.scaling.factor", gguf_f32(float(c.rope_factor)));
  }
  return kv;
}

namespace {

using gguf_detail::find_kv;
using gguf_detail::number_kv;

}  // namespace

std::unique_ptr<Model> load_gguf_gemma(const std::string& path) {
  auto r = open_gguf(path);
  const GgufValue* arch = find_kv(*r, "general.architecture");
  const std::string a = arch && arch->type == GgufType::STRING ? arch->s : "";
  if (!is_gemma_arch(a)) fail("gguf", path, ": general.architecture '", a, "' is not gemma2 or gemma3");
  const bool g3 = a == "gemma3";
  LlamaConfig c;
  c.names = LlamaNames::HuggingFace;
  c.rope = RopeLayout::RotateHalf;  // NEOX
  c.family = a;
  auto n = [&](const std::string& k, std::optional<double> d = {}) { return number_kv(*r, a + "." + k, d); };
  c.dim = int64_t(n("embedding_length")), c.hidden_dim = int64_t(n("feed_forward_length"));
  c.n_layers = int64_t(n("block_count")), c.n_heads = int64_t(n("attention.head_count"));
  c.n_kv_heads = int64_t(n("attention.head_count_kv", double(c.n_heads)));
  c.head_dim = int64_t(n("attention.key_length", 256));
  c.max_seq_len = int64_t(n("context_length"));
  c.norm_eps = n("attention.layer_norm_rms_epsilon", 1e-6);
  c.rope_theta = n("rope.freq_base", 10000.0);
  c.sliding_window = int64_t(n("attention.sliding_window", 4096));
  if (const GgufValue* s = find_kv(*r, a + ".rope.scaling.type"); s && s->type == GgufType::STRING && s->s == "linear")
    c.rope_scaling = "linear", c.rope_factor = n("rope.scaling.factor", 1.0);
  c.norm_plus_one = true, c.sandwich_norms = true, c.gelu_tanh = true, c.qk_norm = g3;
  c.embed_scale = double(std::sqrt(float(c.dim)));
  c.query_pre_attn_scalar = double(c.head_dim);
  if (!g3) c.attn_softcap = n("attn_logit_softcapping", 50.0), c.final_softcap = n("final_logit_softcapping", 30.0);
  if (g3) c.rope_local_theta = 10000.0;
  for (int64_t i = 0; i < c.n_layers; ++i) c.sliding_layers.push_back(g3 ? (i + 1) % 6 != 0 : i % 2 == 0);
  if (!r->contains("token_embd.weight")) fail("gguf", path, ": no tensor 'token_embd.weight'");
  c.vocab_size = r->info("token_embd.weight").shape.at(0);
  c.tied = true;
  c.bos_id = int64_t(number_kv(*r, "tokenizer.ggml.bos_token_id", -1.0));
  c.eos_id = int64_t(number_kv(*r, "tokenizer.ggml.eos_token_id", -1.0));

  std::map<std::string, HostTensor> weights;
  for (const auto& ti : r->tensors()) {
    std::string key;
    if (ti.name == "token_embd.weight") key = llama_param_name(c.names, "embed");
    else if (ti.name == "output_norm.weight") key = llama_param_name(c.names, "final_norm");
    else if (ti.name.rfind("blk.", 0) == 0) {
      const size_t dot = ti.name.find('.', 4);
      const std::string rest = dot == std::string::npos ? "" : ti.name.substr(dot + 1);
      for (const Role& role : kBlockRoles)
        if (rest == std::string(role.gguf) + ".weight") key = llama_param_name(c.names, role.role, std::stoll(ti.name.substr(4, dot - 4)));
    }
    if (key.empty()) fail("gguf", path, ": tensor '", ti.name, "' is not part of the ", a, " architecture");
    HostTensor t = r->load(ti.name);
    if (t.shape.size() == 1) {  // stored 1 + w
      at::Tensor w = to_torch(t).to(at::kFloat) - 1.0;
      t = from_torch(key, w.contiguous());
    }
    t.name = key;
    weights[key] = std::move(t);
  }
  return std::make_unique<LlamaModel>(c, weights);
}

}  // namespace mc::gguf_detail

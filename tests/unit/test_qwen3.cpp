// Qwen3 (Llama-style decoder with per-head RMSNorm on q and k, head_dim independent of hidden/heads): the
// config.json keys, where q_norm/k_norm sit in the layer list (norm layers the passes leave alone, not in
// any AWQ scale group), and properties of the forward. The forward itself is checked against a float64
// PyTorch reference in tests/python/test_model_reference.py, through the hidden case at the end.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "mcompress/error.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/model.h"
#include "mcompress/models/llama.h"
#include "mcompress/torch_bridge.h"
#include "test_utils.h"

namespace {

// Two float32 computations of the same function in a different order.
constexpr double kSameTol = 1e-5;

// Qwen3-0.6B's config.json keys with tiny widths (heads * head_dim = 128 != hidden 64).
const char* kQwen3Config = R"({
  "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64, "intermediate_size": 96,
  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
  "rms_norm_eps": 1e-6, "rope_theta": 1000000, "vocab_size": 300, "tie_word_embeddings": true,
  "max_position_embeddings": 40960, "attention_bias": false, "hidden_act": "silu", "torch_dtype": "bfloat16",
  "bos_token_id": 151643, "eos_token_id": 151645, "use_sliding_window": false, "sliding_window": null})";

mc::LlamaConfig qwen3_config() {
  mctest::TempDir dir;
  std::ofstream(dir.file("config.json")) << kQwen3Config;
  return mc::LlamaConfig::from_hf_config(dir.file("config.json"));
}

std::map<std::string, mc::HostTensor> host(const std::map<std::string, at::Tensor>& w) {
  std::map<std::string, mc::HostTensor> h;
  for (const auto& [k, t] : w) h[k] = mc::from_torch(k, t);
  return h;
}

// Random weights (norms 1 + N(0, 0.2^2), so the norm weights matter) for `c`.
std::map<std::string, mc::HostTensor> random_weights(const mc::LlamaConfig& c) {
  auto w = mc::init_llama_weights(c, 7);
  at::Generator gen = at::detail::createCPUGenerator(8);
  for (auto& [k, t] : w)
    if (t.dim() == 1 && k.find("norm") != std::string::npos) t = 1 + 0.2 * at::randn(t.sizes(), gen);
    else if (t.dim() == 2) t = at::randn(t.sizes(), gen) / std::sqrt(double(t.size(1)));
  return host(w);
}

at::Tensor some_tokens() { return at::tensor(std::vector<int64_t>{1, 5, 299, 3, 17, 30, 2, 11}, at::kLong).view({1, -1}); }

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

}  // namespace

TEST_CASE("qwen3: config.json gives head_dim, q/k norms, no biases, tied embeddings", "[qwen3]") {
  const mc::LlamaConfig c = qwen3_config();
  CHECK(c.dim == 64);
  CHECK(c.n_heads == 4);
  CHECK(c.n_kv_heads == 2);
  CHECK(c.head_dim == 32);
  CHECK(c.qk_norm);
  CHECK(!c.qkv_bias);
  CHECK(!c.o_bias);
  CHECK(c.tied);
  CHECK(c.sliding_window == 0);
  CHECK(c.rope == mc::RopeLayout::RotateHalf);
  CHECK(c.norm_eps == 1e-6);
  // The checkpoint metadata keeps the flag; other families' metadata has no new key (outputs unchanged).
  CHECK(mc::LlamaConfig::from_json(c.json(), "test").qk_norm);
  mc::LlamaConfig l = c;
  l.qk_norm = false;
  CHECK(l.json().find("qk_norm") == std::string::npos);
  CHECK(!mc::LlamaConfig::from_json(l.json(), "test").qk_norm);
  CHECK(mc::llama_param_name(mc::LlamaNames::HuggingFace, "q_norm", 3) == "model.layers.3.self_attn.q_norm.weight");
  CHECK(mc::llama_param_name(mc::LlamaNames::HuggingFace, "k_norm", 0) == "model.layers.0.self_attn.k_norm.weight");
}

TEST_CASE("qwen3: q_norm/k_norm are norm layers after v; scale groups as for llama", "[qwen3]") {
  const mc::LlamaConfig c = qwen3_config();
  mc::LlamaModel m(c, random_weights(c));
  const auto& L = m.layers();
  // embed, then block 0: attn_norm, q, k, v, q_norm, k_norm, o, ffn_norm, gate, up, down.
  REQUIRE(L.size() == 1 + 2 * 11 + 2);
  CHECK(L[2].name == "model.layers.0.self_attn.q_proj");
  CHECK(L[2].out_features == 128);
  CHECK(L[5].name == "model.layers.0.self_attn.q_norm");
  CHECK(L[5].kind == mc::LayerKind::Norm);
  CHECK(L[5].in_features == 32);
  CHECK(L[6].name == "model.layers.0.self_attn.k_norm");
  CHECK(L[6].kind == mc::LayerKind::Norm);
  CHECK(L[7].name == "model.layers.0.self_attn.o_proj");
  CHECK(L[8].name == "model.layers.0.post_attention_layernorm");
  CHECK(L[11].name == "model.layers.0.mlp.down_proj");
  const auto g = m.scale_groups(1);
  REQUIRE(g.size() == 4);
  CHECK(g[0].prev == "model.layers.1.input_layernorm.weight");
  CHECK(g[0].layers == std::vector<std::string>{"model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj",
                                                 "model.layers.1.self_attn.v_proj"});
  CHECK(g[1].prev == "model.layers.1.self_attn.v_proj.weight");
  CHECK(g[1].layers == std::vector<std::string>{"model.layers.1.self_attn.o_proj"});
  CHECK(g[2].prev == "model.layers.1.post_attention_layernorm.weight");
  CHECK(g[3].layers == std::vector<std::string>{"model.layers.1.mlp.down_proj"});
}

TEST_CASE("qwen3: the q/k norms act on the logits; scaling q or k by the same factor is the same", "[qwen3]") {
  const mc::LlamaConfig c = qwen3_config();
  const auto w = random_weights(c);
  mc::LlamaModel m(c, w);
  const at::Tensor base = m.forward(some_tokens());
  const std::string qn = "model.layers.1.self_attn.q_norm.weight", kn = "model.layers.1.self_attn.k_norm.weight";
  // Scores are q.k: q_norm's weight times 1.7 and k_norm's weight times 1.7 give the same logits, and
  // both differ from the unscaled ones (the norms are applied).
  mc::LlamaModel mq(c, w), mk(c, w);
  mq.set_param(qn, mq.param(qn) * 1.7);
  mk.set_param(kn, mk.param(kn) * 1.7);
  const at::Tensor yq = mq.forward(some_tokens()), yk = mk.forward(some_tokens());
  CHECK(max_diff(yq, yk) < kSameTol);
  CHECK(max_diff(yq, base) > 100 * kSameTol);
  // Block-wise execution and the KV cache agree with the full forward.
  at::Tensor x = m.embed(some_tokens());
  for (int k = 0; k < m.num_blocks(); ++k) x = m.run_block(k, x);
  CHECK(max_diff(m.head(x), base) < kSameTol);
  mc::KVCache cache;
  at::Tensor a = m.forward_cached(some_tokens().narrow(1, 0, 5), cache);
  at::Tensor b = m.forward_cached(some_tokens().narrow(1, 5, 3), cache);
  CHECK(max_diff(at::cat({a, b}, 1), base) < kSameTol);
  // A checkpoint without the norms names them.
  auto missing = w;
  missing.erase("model.layers.0.self_attn.k_norm.weight");
  CHECK_THROWS_WITH(mc::LlamaModel(c, missing), Catch::Contains("missing keys: model.layers.0.self_attn.k_norm.weight"));
}

// Writes the logits of a model for tests/python/test_model_reference.py (hidden; run with MC_LOGITS_MODEL=<model>,
// MC_LOGITS_TOKENS=<comma-separated ids>, MC_LOGITS_OUT=<file.safetensors>): one tensor "logits" [T, vocab].
TEST_CASE("write a model's logits for the Python reference", "[.logits]") {
  const char* model = std::getenv("MC_LOGITS_MODEL");
  const char* toks = std::getenv("MC_LOGITS_TOKENS");
  const char* out = std::getenv("MC_LOGITS_OUT");
  if (!model || !toks || !out) {
    WARN("skipped: set MC_LOGITS_MODEL, MC_LOGITS_TOKENS and MC_LOGITS_OUT");
    return;
  }
  std::vector<int64_t> ids;
  std::stringstream ss(toks);
  for (std::string t; std::getline(ss, t, ',');) ids.push_back(std::stoll(t));
  auto m = mc::load_model(model);
  at::Tensor y = m->forward(at::tensor(ids, at::kLong).view({1, -1}))[0].contiguous();
  mc::write_safetensors(out, {mc::from_torch("logits", y)}, {});
}

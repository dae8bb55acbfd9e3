// Gemma 2 / Gemma 3 (LlamaModel with (1 + w) norms, sandwich norms, GELU-tanh MLP, softcaps, per-layer
// sliding windows and RoPE bases): config.json keys, the layer list and scale groups the passes see, that
// an AWQ/SmoothQuant fold into a (1 + w) norm leaves the function unchanged, and the KV cache against the
// full forward with a window shorter than the sequence. The forward is checked against a float64 PyTorch
// reference in tests/python/test_gemma.py.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <fstream>

#include "mcompress/error.h"
#include "mcompress/model.h"
#include "mcompress/models/llama.h"
#include "mcompress/torch_bridge.h"
#include "test_utils.h"

namespace {

// Two float32 computations of the same function in a different order (logits of order 1-10, float32
// rounding ~1e-7 relative per op through 3 blocks): measured below 2e-6.
constexpr double kSameTol = 1e-5;

// gemma-3-1b's config.json keys with tiny widths: 3 layers, pattern 3 (layers 0, 1 slide, 2 is global).
const char* kGemma3Config = R"({
  "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "attention_bias": false,
  "attn_logit_softcapping": null, "bos_token_id": 2, "eos_token_id": [1, 106], "final_logit_softcapping": null,
  "head_dim": 32, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 64, "intermediate_size": 96,
  "max_position_embeddings": 32768, "num_attention_heads": 4, "num_hidden_layers": 3, "num_key_value_heads": 1,
  "pad_token_id": 0, "query_pre_attn_scalar": 24, "rms_norm_eps": 1e-6, "rope_local_base_freq": 10000,
  "rope_scaling": null, "rope_theta": 1000000, "sliding_window": 4, "sliding_window_pattern": 3,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16", "vocab_size": 300})";

const char* kGemma2Config = R"({
  "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "attn_logit_softcapping": 50.0,
  "final_logit_softcapping": 30.0, "head_dim": 32, "hidden_act": "gelu_pytorch_tanh",
  "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 64, "intermediate_size": 96,
  "max_position_embeddings": 8192, "num_attention_heads": 4, "num_hidden_layers": 4, "num_key_value_heads": 2,
  "query_pre_attn_scalar": 32, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "sliding_window": 4,
  "tie_word_embeddings": true, "vocab_size": 300})";

mc::LlamaConfig config_from(const std::string& text) {
  mctest::TempDir dir;
  std::ofstream(dir.file("config.json")) << text;
  return mc::LlamaConfig::from_hf_config(dir.file("config.json"));
}

std::string replace(std::string s, const std::string& from, const std::string& to) {
  const size_t p = s.find(from);
  REQUIRE(p != std::string::npos);
  return s.replace(p, from.size(), to);
}

// Random weights: norms N(0, 0.3^2) (applied as 1 + w, so they matter), matrices N(0, 1/in), embedding N(0, 1/dim).
std::map<std::string, mc::HostTensor> random_weights(const mc::LlamaConfig& c, uint64_t seed = 8) {
  auto w = mc::init_llama_weights(c, 7);
  at::Generator gen = at::detail::createCPUGenerator(seed);
  std::map<std::string, mc::HostTensor> h;
  for (auto& [k, t] : w) {
    if (t.dim() == 1) t = 0.3 * at::randn(t.sizes(), gen);
    else t = at::randn(t.sizes(), gen) / std::sqrt(double(t.size(1)));
    h[k] = mc::from_torch(k, t);
  }
  return h;
}

at::Tensor tokens(int64_t n) {
  std::vector<int64_t> v;
  for (int64_t i = 0; i < n; ++i) v.push_back((i * 37 + 11) % 300);
  return at::tensor(v, at::kLong).view({1, -1});
}

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

}  // namespace

TEST_CASE("gemma: config.json keys of Gemma 2 and Gemma 3", "[gemma]") {
  const mc::LlamaConfig g3 = config_from(kGemma3Config);
  CHECK(g3.family == "gemma3");
  CHECK(g3.head_dim == 32);
  CHECK(g3.qk_norm);
  CHECK(g3.norm_plus_one);
  CHECK(g3.sandwich_norms);
  CHECK(g3.gelu_tanh);
  CHECK(g3.embed_scale == Approx(8.0));  // sqrt(64)
  CHECK(g3.query_pre_attn_scalar == 24);
  CHECK(g3.attn_softcap == 0);
  CHECK(g3.final_softcap == 0);
  CHECK(g3.rope_theta == 1000000);
  CHECK(g3.rope_local_theta == 10000);
  CHECK(g3.sliding_window == 4);
  CHECK(g3.is_sliding(0));
  CHECK(g3.is_sliding(1));
  CHECK(!g3.is_sliding(2));  // (2 + 1) % 3 == 0: global
  CHECK(g3.bos_id == 2);
  CHECK(g3.eos_id == 1);
  CHECK(g3.tied);

  const mc::LlamaConfig g2 = config_from(kGemma2Config);
  CHECK(g2.family == "gemma2");
  CHECK(!g2.qk_norm);
  CHECK(g2.attn_softcap == 50);
  CHECK(g2.final_softcap == 30);
  CHECK(g2.rope_local_theta == 0);
  CHECK(g2.is_sliding(0));  // Gemma2Attention: even layers slide
  CHECK(!g2.is_sliding(1));
  CHECK(g2.is_sliding(2));
  CHECK(!g2.is_sliding(3));

  // layer_types (newer Transformers) wins over the pattern; rope_scaling linear (Gemma 3 4B+).
  const mc::LlamaConfig lt = config_from(replace(kGemma3Config, R"("rope_scaling": null)",
      R"("rope_scaling": {"rope_type": "linear", "factor": 8.0}, "layer_types": ["full_attention", "sliding_attention", "full_attention"])"));
  CHECK(!lt.is_sliding(0));
  CHECK(lt.is_sliding(1));
  CHECK(!lt.is_sliding(2));
  CHECK(lt.rope_scaling == "linear");
  CHECK(lt.rope_factor == 8.0);

  // The checkpoint metadata round trip keeps every Gemma field.
  const mc::LlamaConfig back = mc::LlamaConfig::from_json(lt.json(), "test");
  CHECK(back.family == "gemma3");
  CHECK(back.sliding_layers == lt.sliding_layers);
  CHECK(back.rope_local_theta == 10000);
  CHECK(back.query_pre_attn_scalar == 24);
  CHECK(back.embed_scale == lt.embed_scale);
  CHECK(mc::LlamaConfig::from_json(g2.json(), "test").final_softcap == 30);
  // Other families' metadata has no gemma key.
  mc::LlamaConfig plain;
  plain.dim = 8, plain.hidden_dim = 8, plain.n_layers = 1, plain.n_heads = 1, plain.n_kv_heads = 1, plain.head_dim = 8;
  plain.vocab_size = 4;
  CHECK(plain.json().find("gemma") == std::string::npos);

  // The vision model and an unknown activation are refused with the key named.
  CHECK_THROWS_WITH(config_from(replace(kGemma3Config, "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration")),
                    Catch::Contains("only the text model"));
  CHECK_THROWS_AS(config_from(replace(kGemma3Config, "\"gelu_pytorch_tanh\"", "\"relu\"")), mc::InputError);
  CHECK_THROWS_WITH(config_from(replace(kGemma3Config, "\"gelu_pytorch_tanh\"", "\"relu\"")),
                    Catch::Contains("hidden_activation 'relu'"));
}

TEST_CASE("gemma: sandwich norms in the layer list; scale groups fold into (1 + w) norms", "[gemma]") {
  const mc::LlamaConfig c = config_from(kGemma3Config);
  mc::LlamaModel m(c, random_weights(c));
  const auto& L = m.layers();
  // embed, then per block: input_layernorm, q, k, v, q_norm, k_norm, o, post_attention_layernorm,
  // pre_feedforward_layernorm, gate, up, down, post_feedforward_layernorm; final norm; classifier.
  REQUIRE(L.size() == 1 + 3 * 13 + 2);
  CHECK(L[7].name == "model.layers.0.self_attn.o_proj");
  CHECK(L[8].name == "model.layers.0.post_attention_layernorm");
  CHECK(L[8].kind == mc::LayerKind::Norm);
  CHECK(L[9].name == "model.layers.0.pre_feedforward_layernorm");
  CHECK(L[12].name == "model.layers.0.mlp.down_proj");
  CHECK(L[13].name == "model.layers.0.post_feedforward_layernorm");
  const auto g = m.scale_groups(2);
  REQUIRE(g.size() == 4);
  CHECK(g[0].prev == "model.layers.2.input_layernorm.weight");
  CHECK(g[0].norm_offset == 1.0);
  CHECK(g[1].prev == "model.layers.2.self_attn.v_proj.weight");
  CHECK(g[1].norm_offset == 0.0);
  CHECK(g[2].prev == "model.layers.2.pre_feedforward_layernorm.weight");
  CHECK(g[2].layers == std::vector<std::string>{"model.layers.2.mlp.gate_proj", "model.layers.2.mlp.up_proj"});
  CHECK(g[2].norm_offset == 1.0);
  CHECK(g[3].prev == "model.layers.2.mlp.up_proj.weight");
}

TEST_CASE("gemma: an AWQ fold of random scales into every group leaves the forward unchanged", "[gemma]") {
  for (const char* cfg_text : {kGemma3Config, kGemma2Config}) {
    const mc::LlamaConfig c = config_from(cfg_text);
    const auto w = random_weights(c);
    mc::LlamaModel m(c, w);
    const at::Tensor base = m.forward(tokens(12));
    at::Generator gen = at::detail::createCPUGenerator(3);
    for (int k = 0; k < m.num_blocks(); ++k)
      for (const auto& g : m.scale_groups(k))
        m.apply_scale_group(g, at::exp(0.5 * at::randn({m.param(g.prev).size(0)}, gen)));  // s in ~[0.2, 5]
    const double d = max_diff(m.forward(tokens(12)), base);
    INFO(c.family << " max |logit diff| after the folds: " << d);
    CHECK(d < kSameTol);
    // Folding into a (1 + w) norm as into a plain one (w / s) changes the function: the offset matters.
    mc::LlamaModel plain(c, w);
    for (int k = 0; k < plain.num_blocks(); ++k) {
      auto groups = plain.scale_groups(k);
      groups[0].norm_offset = 0;
      plain.apply_scale_group(groups[0], at::full({c.dim}, 2.0));
    }
    CHECK(max_diff(plain.forward(tokens(12)), base) > 1000 * kSameTol);
  }
}

TEST_CASE("gemma: KV cache and block-wise runs equal the full forward past the sliding window", "[gemma]") {
  for (const char* cfg_text : {kGemma3Config, kGemma2Config}) {
    const mc::LlamaConfig c = config_from(cfg_text);
    mc::LlamaModel m(c, random_weights(c));
    const at::Tensor t = tokens(11);  // window 4: the mask of the sliding layers cuts in
    const at::Tensor base = m.forward(t);
    at::Tensor x = m.embed(t);
    for (int k = 0; k < m.num_blocks(); ++k) x = m.run_block(k, x);
    CHECK(max_diff(m.head(x), base) < kSameTol);
    mc::KVCache cache;
    cache.capacity = 16;
    at::Tensor a = m.forward_cached(t.narrow(1, 0, 6), cache);
    at::Tensor b = m.forward_cached(t.narrow(1, 6, 1), cache);
    at::Tensor r = m.forward_cached(t.narrow(1, 7, 4), cache);
    CHECK(max_diff(at::cat({a, b, r}, 1), base) < kSameTol);
    // Without the window (every layer global) the last positions differ: the mask is applied.
    mc::LlamaConfig global = c;
    global.sliding_window = 0;
    mc::LlamaModel g(global, random_weights(c));
    CHECK(max_diff(g.forward(t).narrow(1, 5, 6), base.narrow(1, 5, 6)) > 1e-3);
    CHECK(max_diff(g.forward(t).narrow(1, 0, 4), base.narrow(1, 0, 4)) < kSameTol);  // within the window: same
  }
}

TEST_CASE("gemma: a checkpoint without pre_feedforward_layernorm names it", "[gemma]") {
  const mc::LlamaConfig c = config_from(kGemma3Config);
  auto w = random_weights(c);
  w.erase("model.layers.1.pre_feedforward_layernorm.weight");
  CHECK_THROWS_AS(mc::LlamaModel(c, w), mc::InputError);
  CHECK_THROWS_WITH(mc::LlamaModel(c, w), Catch::Contains("missing keys: model.layers.1.pre_feedforward_layernorm.weight"));
}

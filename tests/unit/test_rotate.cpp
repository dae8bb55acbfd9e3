// Hadamard matrices and the fast transform against the dense reference, QuaRot rotations of llama-family
// models leaving the logits unchanged (also after save/load with the online R4), per-token activation
// quantization against a hand-written quantizer, and W4A4 with and without rotation on an outlier channel.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <filesystem>

#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/model.h"
#include "mcompress/models/llama.h"
#include "mcompress/ptq.h"
#include "mcompress/quant/hadamard.h"
#include "mcompress/quant/rotate.h"
#include "mcompress/quant/rtn.h"
#include "mcompress/torch_bridge.h"
#include "test_utils.h"
#include "tiny_llama.h"

using namespace mc;

namespace {

// H Hᵀ = I in float64: the construction is exact in integers, only the 1/sqrt(n) rounds (~1e-16 per entry).
constexpr double kOrthoTol = 1e-12;
// The butterfly against the dense float64 reference, both on float32 inputs: float32 sums over log2(n)
// passes, relative ~1e-7 each.
constexpr double kFastVsDenseF32 = 1e-5;
// A rotated model against the original: weights rotated in float64 and rounded once to float32 (~6e-8
// relative each), then a float32 forward through a few blocks; 1e-4 relative is the bound.
constexpr double kEquivalentLogits = 1e-4;

double rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kDouble) - b.to(at::kDouble)).abs().max() / b.to(at::kDouble).abs().max()).item<double>();
}

at::Tensor randn_seeded(std::vector<int64_t> shape, uint64_t seed, at::ScalarType t = at::kFloat) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randn(shape, gen, at::TensorOptions().dtype(t));
}

// A llama-family model of config c with every parameter random (norm weights and biases too, so folding
// them matters).
std::unique_ptr<LlamaModel> random_model(const LlamaConfig& c, uint64_t seed) {
  std::map<std::string, HostTensor> w;
  uint64_t s = seed;
  for (auto& [k, t] : init_llama_weights(c, seed)) {
    at::Tensor v = t.dim() == 1 ? t + 0.3 * randn_seeded(t.sizes().vec(), ++s) : randn_seeded(t.sizes().vec(), ++s) * 0.3;
    w[k] = from_torch(k, v.contiguous());
  }
  return std::make_unique<LlamaModel>(c, w);
}

LlamaConfig hf_config(int64_t dim, int64_t hidden, int64_t heads, int64_t kv, int64_t hd) {
  LlamaConfig c;
  c.dim = dim, c.hidden_dim = hidden, c.n_layers = 2, c.n_heads = heads, c.n_kv_heads = kv, c.head_dim = hd;
  c.vocab_size = 40, c.max_seq_len = 64, c.names = LlamaNames::HuggingFace, c.rope = RopeLayout::RotateHalf;
  c.tied = false;
  return c;
}

// The tiny llama of `seed`, rotated with R4, and its logits on `tokens` before the rotation.
struct RotatedTiny {
  std::unique_ptr<LlamaModel> m;
  at::Tensor before;
  RotateResult r;
};
RotatedTiny rotated_tiny(uint64_t seed, const at::Tensor& tokens, const mctest::TinyLlamaShape& shape = {}) {
  RotatedTiny t{mctest::tiny_llama(seed, shape), {}, {}};
  t.before = t.m->forward(tokens);
  RotateOptions o;
  o.online = true;
  t.r = rotate_model(*t.m, o);
  return t;
}

}  // namespace

TEST_CASE("Paley matrices are ±1 Hadamard matrices of their order", "[rotate]") {
  int built = 0;
  for (int64_t k = 1; k <= 200; ++k) {
    const at::Tensor A = paley_hadamard(k);
    if (!A.defined()) continue;
    ++built;
    INFO("order " << k);
    CHECK(A.size(0) == k);
    CHECK(A.abs().eq(1.0).all().item<bool>());
    CHECK(at::allclose(A.mm(A.t()), at::eye(k, at::kDouble) * double(k)));
  }
  // 1, 2, and the multiples of 4 with q = k - 1 ≡ 3 (mod 4) or q = k/2 - 1 ≡ 1 (mod 4) prime, up to 200.
  CHECK(built >= 30);
  CHECK(paley_hadamard(28).defined());   // Paley II, q 13 (Qwen2.5-0.5B's 896 = 28 x 32, Llama-3's 14336 = 28 x 512)
  CHECK(paley_hadamard(44).defined());   // Paley I, q 43
  CHECK(paley_hadamard(76).defined());   // Paley II, q 37 (Qwen2.5-0.5B's 4864 = 76 x 64)
  CHECK_FALSE(paley_hadamard(6).defined());
}

TEST_CASE("hadamard_matrix is orthogonal with entries ±1/sqrt(n); the fast transform equals the dense one", "[rotate]") {
  for (int64_t n : {1, 2, 8, 12, 24, 40, 64, 96, 172, 896, 50, 98}) {
    INFO("n " << n);
    const HadamardShape s = hadamard_shape(n);
    const at::Tensor H = hadamard_matrix(n);
    CHECK(at::allclose(H.mm(H.t()), at::eye(n, at::kDouble), 0, kOrthoTol));
    if (!s.random()) {
      CHECK(s.k * s.m == n);
      CHECK((H.abs() * std::sqrt(double(n)) - 1).abs().max().item<double>() < kOrthoTol);
    }
    const at::Tensor x = randn_seeded({3, 5, n}, uint64_t(n));
    CHECK(rel(hadamard_transform(x), hadamard_transform_ref(x)) < kFastVsDenseF32);
    const at::Tensor xd = x.to(at::kDouble);
    CHECK(rel(hadamard_transform(xd), hadamard_transform_ref(xd)) < kOrthoTol);
    CHECK(hadamard_transform(x).sizes() == x.sizes());
  }
  CHECK(hadamard_shape(50).random());  // 50 = 2 x 25: no Hadamard matrix of that order exists
  CHECK(hadamard_shape(896).k == 28);
  CHECK(hadamard_shape(14336).k == 28);
  CHECK(hadamard_shape(172).random());  // 4 x 43: neither 171 nor 85 is prime (stories260K's hidden size)
  CHECK(hadamard_shape(24).k == 12);
}

TEST_CASE("rotate_model: the rotated llama computes the same logits (tied, untied, biases, GQA, odd sizes)", "[rotate]") {
  struct Case {
    const char* name;
    LlamaConfig c;
    bool online;
  };
  std::vector<Case> cases;
  {
    LlamaConfig c;  // llama2.c layout, tied classifier, powers of two
    c.dim = 16, c.hidden_dim = 32, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 4;
    c.vocab_size = 30, c.max_seq_len = 64, c.tied = true;
    cases.push_back({"llama2c tied", c, false});
    cases.push_back({"llama2c tied, online R4", c, true});
  }
  {
    LlamaConfig c = hf_config(24, 40, 2, 1, 12);  // Qwen2-like: q/k/v biases, 24 = 12 x 2, 40 = 20 x 2
    c.qkv_bias = true;
    cases.push_back({"qwen2 biases, Paley sizes, online R4", c, true});
  }
  {
    LlamaConfig c = hf_config(32, 50, 4, 2, 8);  // Qwen3-like q/k norms, o bias; 50 has no Hadamard: random fallback
    c.qk_norm = true, c.o_bias = true, c.tied = true;
    cases.push_back({"qwen3 q/k norms, tied, random R4", c, true});
  }
  {
    LlamaConfig c = hf_config(16, 24, 2, 1, 8);  // Phi-3: fused qkv_proj and gate_up_proj
    c.fused_qkv_gate_up = true;
    cases.push_back({"phi3 fused, online R4", c, true});
  }
  for (auto& cs : cases) {
    INFO(cs.name);
    auto m = random_model(cs.c, 11);
    const at::Tensor tokens = mctest::random_tokens(2, 12, cs.c.vocab_size, 3);
    const at::Tensor before = m->forward(tokens);
    RotateOptions o;
    o.online = cs.online;
    const RotateResult r = rotate_model(*m, o);
    const at::Tensor after = m->forward(tokens);
    CHECK(rel(after, before) < kEquivalentLogits);
    CHECK(r.online_layers.size() == (cs.online ? 2u : 0u));
    // The weights did change (a rotation, not a no-op), and every RMSNorm weight is now 1.
    CHECK_FALSE(at::allclose(m->param(llama_param_name(m->config(), "embed")), random_model(cs.c, 11)->param(llama_param_name(m->config(), "embed"))));
    for (const auto& l : m->layers())
      if (l.kind == LayerKind::Norm && l.name.find("q_norm") == std::string::npos && l.name.find("k_norm") == std::string::npos)
        CHECK(m->param(l.weight).eq(1.0).all().item<bool>());
    // KV-cache decoding goes through the same layers.
    KVCache cache;
    const at::Tensor cached = m->forward_cached(tokens, cache);
    CHECK(rel(cached, before) < kEquivalentLogits);
    // The tied classifier with a non-unit final norm had to be untied.
    CHECK(r.untied == (cs.c.tied));
  }
}

TEST_CASE("rotate_model: without the online Hadamard in the forward, R4 is not the same function", "[rotate]") {
  const at::Tensor tokens = mctest::random_tokens(2, 10, 20, 4);
  auto [m, before, r] = rotated_tiny(5, tokens);
  CHECK(rel(m->forward(tokens), before) < kEquivalentLogits);
  CHECK_THROWS_AS(rotate_model(*m, {}), InputError);  // rotated already (its online Hadamards say so)
  for (const auto& name : r.online_layers) m->set_input_hadamard(name, false);
  CHECK(rel(m->forward(tokens), before) > 1e-2);
}

TEST_CASE("rotate_model: saved and loaded, the online R4 is applied again and the logits are the original's", "[rotate]") {
  const at::Tensor tokens = mctest::random_tokens(2, 10, 20, 5);
  auto [m, before, r] = rotated_tiny(6, tokens, {16, 32, 2, 2, 1, 20, 64, false});
  mctest::TempDir dir;
  const std::string path = dir.file("rotated.safetensors");
  save_model(*m, path, {{kRotationMetadataKey, r.metadata()}});
  auto back = load_model(path);
  for (const auto& name : r.online_layers) CHECK(back->layer(name).input_hadamard);
  CHECK(rel(back->forward(tokens), before) < kEquivalentLogits);
  CHECK(online_hadamard_layers(path) == 2);
  // Without the metadata the same weights compute another function.
  const std::string bare = dir.file("bare.safetensors");
  save_model(*m, bare);
  CHECK(online_hadamard_layers(bare) == 0);
  CHECK(rel(load_model(bare)->forward(tokens), before) > 1e-2);
}

TEST_CASE("rotate_model refuses Gemma's sandwich norms and non-llama models", "[rotate]") {
  LlamaConfig c = hf_config(16, 32, 2, 1, 8);
  c.family = "gemma2", c.sandwich_norms = true, c.norm_plus_one = true, c.gelu_tanh = true, c.tied = true;
  c.embed_scale = 4.0;
  std::unique_ptr<LlamaModel> m;
  try {
    m = random_model(c, 2);
  } catch (const InputError& e) {
    WARN("skipped: this gemma2 config is incomplete: " << e.what());
    return;
  }
  CHECK_THROWS_WITH(rotate_model(*m, {}), Catch::Contains("sandwich norms"));
}

TEST_CASE("act-bits: the input quantizer equals a hand-written per-token symmetric quantizer", "[rotate]") {
  auto m = mctest::tiny_llama(7);
  const std::string name = "layers.0.feed_forward.w2";
  for (int bits : {8, 4}) {
    INFO("bits " << bits);
    m->set_input_quant(name, bits);
    at::Tensor x_seen, y_seen;
    const int id = m->add_hook([&](const LayerInfo& l, const at::Tensor& x, const at::Tensor& y) {
      if (l.name == name) x_seen = x.clone(), y_seen = y.clone();
    });
    m->forward(mctest::random_tokens(2, 9, 20, 8));
    m->remove_hook(id);
    REQUIRE(x_seen.defined());
    // By hand, token by token: s = max|x_t| / (2^(b-1) - 1), q = clamp(round(x / s)), x̂ = q s, y = x̂ Wᵀ.
    const at::Tensor X = x_seen.reshape({-1, x_seen.size(-1)}).to(at::kDouble);
    const at::Tensor W = m->param(m->layer(name).weight).to(at::kDouble);
    const double qmax = std::pow(2.0, bits - 1) - 1;
    at::Tensor Y = at::empty({X.size(0), W.size(0)}, at::kDouble);
    for (int64_t t = 0; t < X.size(0); ++t) {
      double mx = 0;
      for (int64_t j = 0; j < X.size(1); ++j) mx = std::max(mx, std::abs(X[t][j].item<double>()));
      const double s = mx > 0 ? float(float(mx) / float(qmax)) : 1.0;  // the runtime divides in float32
      at::Tensor xq = at::empty({X.size(1)}, at::kDouble);
      for (int64_t j = 0; j < X.size(1); ++j) {
        double q = std::nearbyint(float(X[t][j].item<double>()) / float(s));
        q = std::min(qmax, std::max(-qmax, q));
        xq[j] = q * s;
      }
      Y[t] = W.mv(xq);
    }
    // float32 matmul against float64: 1e-5 relative.
    CHECK(rel(y_seen.reshape({-1, W.size(0)}), Y) < 1e-5);
    // And it is not the float layer.
    CHECK(rel(X.mm(W.t()), Y) > (bits == 4 ? 1e-2 : 1e-4));
  }
}

TEST_CASE("W4A4 on a layer with an outlier channel: a Hadamard rotation lowers the output error", "[rotate]") {
  const int64_t n = 256, in = 128, out = 64;
  at::Tensor X = randn_seeded({n, in}, 21);
  // Two outlier channels, as LLM activations have; the weights reading them are small in proportion, so each
  // channel contributes alike to the output (the outliers do not dominate the error measure).
  X.select(1, 7).mul_(50.0);
  X.select(1, 90).mul_(20.0);
  at::Tensor W = randn_seeded({out, in}, 22) * 0.05;
  W.select(1, 7).div_(50.0);
  W.select(1, 90).div_(20.0);
  const at::Tensor Y = X.mm(W.t());
  auto a4 = [](const at::Tensor& x) {  // per-token symmetric int4
    at::Tensor s = x.abs().amax(-1, true).div(7.0);
    return x.div(s).round().clamp(-7, 7).mul(s);
  };
  QuantSpec sp;
  sp.bits = 4, sp.group_size = 32, sp.symmetric = true;
  auto w4 = [&](const at::Tensor& w) { return rtn_quantize(w, sp, "w").dequantize(); };
  const double plain = ((a4(X).mm(w4(W).t()) - Y).norm() / Y.norm()).item<double>();
  const at::Tensor Xr = hadamard_transform(X), Wr = hadamard_transform(W);
  CHECK(rel(Xr.mm(Wr.t()), Y) < 1e-4);  // the same product in float
  const double rotated = ((a4(Xr).mm(w4(Wr).t()) - Y).norm() / Y.norm()).item<double>();
  INFO("W4A4 relative output error: plain " << plain << ", rotated " << rotated);
  // numpy with other seeds: plain ~0.90 (int4 steps of max/7 zero every ordinary channel), rotated ~0.57.
  CHECK(rotated < 0.75 * plain);
}

TEST_CASE("quantize_model with quantize_activations: every quantized linear reads int4 inputs, any method", "[rotate]") {
  for (const char* method : {"rtn", "gptq"}) {
    INFO(method);
    auto m = mctest::tiny_llama(9);
    PtqOptions o;
    o.method = method, o.spec.bits = 4, o.spec.group_size = 16;
    o.quantize_activations = true, o.act_bits = 4;
    const at::Tensor calib = mctest::random_tokens(4, 16, 20, 10);
    PtqResult r = quantize_model(*m, std::string(method) == "rtn" ? at::Tensor() : calib, o);
    CHECK(r.act_bits.size() == 14);
    for (const auto& [name, b] : r.act_bits) CHECK(m->layer(name).act_bits == 4);
    CHECK(m->layer("output").act_bits == 0);
    o.act_bits = 12;
    CHECK_THROWS_AS(quantize_model(*mctest::tiny_llama(9), at::Tensor(), o), InputError);
  }
}

TEST_CASE("rotate_model with R4: down_proj leaves the scale groups, and AWQ-style folds stay exact", "[rotate]") {
  const at::Tensor tokens = mctest::random_tokens(2, 10, 20, 13);
  auto [m, before, r] = rotated_tiny(12, tokens);
  CHECK(r.online_layers.size() == 2);
  for (int k = 0; k < m->num_blocks(); ++k)
    for (const ScaleGroup& g : m->scale_groups(k)) {
      for (const auto& name : g.layers) CHECK_FALSE(m->layer(name).input_hadamard);
      // Any positive scales folded into the remaining groups leave the function as it is.
      const int64_t C = m->param(g.prev).size(0);
      m->apply_scale_group(g, at::rand({C}, at::detail::createCPUGenerator(uint64_t(k + 1))) + 0.5);
    }
  CHECK(rel(m->forward(tokens), before) < kEquivalentLogits);
}

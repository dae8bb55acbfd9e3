// The model runtime: a tiny llama written with our llama2.c writer, its logits against values computed by
// the PyTorch reference in tests/python/test_model_reference.py (run it as a script to print them), and
// the properties the passes rely on: block-wise execution, hooks, set_param, the KV cache, the two RoPE
// layouts, save/load round trips, and classifiers built from an architecture YAML.
#include <ATen/ATen.h>

#include <cmath>

#include "mcompress/error.h"
#include "mcompress/generate.h"
#include "mcompress/io/llama2c.h"
#include "mcompress/model.h"
#include "mcompress/models/classifier.h"
#include "mcompress/models/llama.h"
#include "mcompress/quant/packed.h"
#include "mcompress/quant/rtn.h"
#include "test_utils.h"

namespace {

// float32 forward against the float64 reference: logits of order 1 agree to ~1e-6.
constexpr double kRefTol = 2e-5;
// Two float32 computations of the same function in a different order (blocks, cache, permuted heads).
constexpr double kSameTol = 1e-5;

struct Tiny {
  int64_t dim = 16, hidden = 24, layers = 2, heads = 4, kv_heads = 2, vocab = 32, seq = 16;
};

// The same LCG stream as lcg_model() in tests/python/test_model_reference.py.
struct Lcg {
  uint32_t s;
  float next() {
    s = s * 1664525u + 1013904223u;
    return float(double(s >> 8) / 16777216.0 - 0.5);
  }
};

std::map<std::string, mc::HostTensor> lcg_model(const Tiny& c) {
  Lcg g{1234};
  const int64_t hd = c.dim / c.heads;
  std::map<std::string, mc::HostTensor> m;
  auto add = [&](const std::string& name, mc::Shape s, bool norm) {
    std::vector<float> v(size_t(mc::shape_numel(s)));
    for (auto& x : v) x = norm ? 1 + 0.4f * g.next() : g.next();
    m[name] = mc::HostTensor::from_f32(name, s, v.data());
  };
  add("tok_embeddings.weight", {c.vocab, c.dim}, false);
  for (int64_t i = 0; i < c.layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    add(p + "attention_norm.weight", {c.dim}, true);
    add(p + "attention.wq.weight", {c.heads * hd, c.dim}, false);
    add(p + "attention.wk.weight", {c.kv_heads * hd, c.dim}, false);
    add(p + "attention.wv.weight", {c.kv_heads * hd, c.dim}, false);
    add(p + "attention.wo.weight", {c.dim, c.heads * hd}, false);
    add(p + "ffn_norm.weight", {c.dim}, true);
    add(p + "feed_forward.w1.weight", {c.hidden, c.dim}, false);
    add(p + "feed_forward.w2.weight", {c.dim, c.hidden}, false);
    add(p + "feed_forward.w3.weight", {c.hidden, c.dim}, false);
  }
  add("norm.weight", {c.dim}, true);
  return m;
}

std::vector<mc::HostTensor> values(const std::map<std::string, mc::HostTensor>& m) {
  std::vector<mc::HostTensor> v;
  for (const auto& kv : m) v.push_back(kv.second);
  return v;
}

std::map<std::string, std::string> llama2c_meta(const Tiny& c) {
  return {{"n_heads", std::to_string(c.heads)}, {"n_kv_heads", std::to_string(c.kv_heads)},
          {"seq_len", std::to_string(c.seq)}};
}

mc::LlamaConfig config_of(const Tiny& c) {
  mc::LlamaConfig k;
  k.dim = c.dim, k.hidden_dim = c.hidden, k.n_layers = c.layers, k.n_heads = c.heads, k.n_kv_heads = c.kv_heads;
  k.head_dim = c.dim / c.heads, k.vocab_size = c.vocab, k.max_seq_len = c.seq;
  return k;
}

const std::vector<int64_t> kTokens = {1, 5, 9, 3, 17, 30, 2, 11};
at::Tensor tokens_tensor() { return at::tensor(kTokens, at::kLong).view({1, -1}); }

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

}  // namespace

TEST_CASE("llama forward matches the PyTorch reference of llama2.c model.py", "[model]") {
  mctest::TempDir dir;
  const Tiny c;
  mc::write_llama2c(dir.file("tiny.bin"), values(lcg_model(c)), llama2c_meta(c), 1);
  auto model = mc::load_model(dir.file("tiny.bin"));
  REQUIRE(model->arch() == "llama");
  at::Tensor logits = model->forward(tokens_tensor());
  REQUIRE(logits.sizes() == at::IntArrayRef({1, 8, 32}));
  // {position, token, logit} printed by `python3 tests/python/test_model_reference.py`.
  const struct { int64_t t, v; double want; } expected[] = {
      {0, 0, -1.4692211}, {3, 7, 0.4355132}, {7, 31, -0.0546341}, {5, 12, 0.0802273}};
  for (const auto& e : expected) CHECK(logits[0][e.t][e.v].item<double>() == Approx(e.want).margin(kRefTol));
}

TEST_CASE("llama: layers in execution order, block-wise run equals forward", "[model]") {
  const Tiny c;
  mc::LlamaModel m(config_of(c), lcg_model(c));
  REQUIRE(m.num_blocks() == 2);
  const auto& L = m.layers();
  REQUIRE(L.size() == 1 + 2 * 9 + 2);
  CHECK(L.front().kind == mc::LayerKind::Embedding);
  CHECK(L[2].name == "layers.0.attention.wq");
  CHECK(L[2].block == 0);
  CHECK(L[2].in_features == 16);
  CHECK(L[3].out_features == 8);  // wk: kv_heads * head_dim
  CHECK(L.back().is_classifier);
  CHECK(L.back().weight == "tok_embeddings.weight");  // tied
  at::Tensor x = m.embed(tokens_tensor());
  for (int k = 0; k < m.num_blocks(); ++k) x = m.run_block(k, x);
  CHECK(max_diff(m.head(x), m.forward(tokens_tensor())) < kSameTol);
}

TEST_CASE("llama: hooks see every weight-bearing layer with its input and output", "[model]") {
  const Tiny c;
  mc::LlamaModel m(config_of(c), lcg_model(c));
  std::vector<std::string> seen;
  bool shapes_ok = true;
  int id = m.add_hook([&](const mc::LayerInfo& l, const at::Tensor& in, const at::Tensor& out) {
    seen.push_back(l.name);
    if (l.kind == mc::LayerKind::Linear)
      shapes_ok = shapes_ok && in.size(-1) == l.in_features && out.size(-1) == l.out_features &&
                  in.size(0) == 1 && in.size(1) == 8;
  });
  m.forward(tokens_tensor());
  REQUIRE(seen.size() == m.layers().size());
  for (size_t i = 0; i < seen.size(); ++i) CHECK(seen[i] == m.layers()[i].name);
  CHECK(shapes_ok);
  m.remove_hook(id);
  seen.clear();
  m.forward(tokens_tensor());
  CHECK(seen.empty());
}

TEST_CASE("llama: set_param changes the output; a tied classifier stays tied", "[model]") {
  const Tiny c;
  mc::LlamaModel m(config_of(c), lcg_model(c));
  at::Tensor before = m.forward(tokens_tensor());
  m.set_param("layers.1.feed_forward.w2.weight", at::zeros({16, 24}));
  at::Tensor after = m.forward(tokens_tensor());
  CHECK(max_diff(before, after) > 1e-3);
  CHECK_THROWS_AS(m.set_param("layers.1.feed_forward.w2.weight", at::zeros({24, 16})), mc::InputError);
  CHECK_THROWS_AS(m.set_param("nope", at::zeros({1})), mc::InputError);
  // Zeroing the embedding zeroes the tied classifier too: every logit becomes 0.
  m.set_param("tok_embeddings.weight", at::zeros({32, 16}));
  CHECK(m.forward(tokens_tensor()).abs().max().item<double>() == 0.0);
}

TEST_CASE("llama: KV-cache logits equal the full forward", "[model]") {
  const Tiny c;
  mc::LlamaModel m(config_of(c), lcg_model(c));
  at::Tensor full = m.forward(tokens_tensor());
  mc::KVCache cache;
  at::Tensor prefix = m.forward_cached(tokens_tensor().narrow(1, 0, 3), cache);
  CHECK(max_diff(prefix, full.narrow(1, 0, 3)) < kSameTol);
  for (int64_t t = 3; t < 8; ++t) {
    at::Tensor step = m.forward_cached(tokens_tensor().narrow(1, t, 1), cache);
    CHECK(max_diff(step[0][0], full[0][t]) < kSameTol);
  }
  CHECK(cache.length == 8);
  mc::KVCache small;
  small.capacity = 4;
  CHECK_THROWS_AS(m.forward_cached(tokens_tensor(), small), mc::InputError);
}

TEST_CASE("llama: HF rotate-half layout with permuted wq/wk gives the same logits", "[model]") {
  const Tiny c;
  auto w = lcg_model(c);
  mc::LlamaModel ref(config_of(c), w);
  // convert_llama_weights_to_hf.py permute(w, n_heads): rows (head, pair, 2) -> (head, 2, pair).
  auto permute = [](const mc::HostTensor& h, int64_t heads) {
    at::Tensor t = at::from_blob(const_cast<uint8_t*>(h.data), h.shape, at::kFloat);
    const int64_t d1 = h.shape[0], d2 = h.shape[1];
    at::Tensor p = t.view({heads, d1 / heads / 2, 2, d2}).transpose(1, 2).reshape({d1, d2}).contiguous();
    return mc::HostTensor::from_f32(h.name, h.shape, p.data_ptr<float>());
  };
  std::map<std::string, mc::HostTensor> hf;
  const std::vector<std::pair<std::string, std::string>> roles = {
      {"attention_norm", "attn_norm"}, {"ffn_norm", "ffn_norm"}, {"attention.wq", "wq"}, {"attention.wk", "wk"},
      {"attention.wv", "wv"}, {"attention.wo", "wo"}, {"feed_forward.w1", "w1"}, {"feed_forward.w2", "w2"},
      {"feed_forward.w3", "w3"}};
  for (int64_t i = 0; i < c.layers; ++i)
    for (const auto& [src, role] : roles) {
      mc::HostTensor h = w.at("layers." + std::to_string(i) + "." + src + ".weight");
      if (role == "wq") h = permute(h, c.heads);
      if (role == "wk") h = permute(h, c.kv_heads);
      hf[mc::llama_param_name(mc::LlamaNames::HuggingFace, role, i)] = h;
    }
  hf["model.embed_tokens.weight"] = w.at("tok_embeddings.weight");
  hf["model.norm.weight"] = w.at("norm.weight");
  mc::LlamaConfig k = config_of(c);
  k.rope = mc::RopeLayout::RotateHalf;
  k.names = mc::LlamaNames::HuggingFace;
  mc::LlamaModel m(k, hf);
  CHECK(m.layers()[2].name == "model.layers.0.self_attn.q_proj");
  CHECK(max_diff(m.forward(tokens_tensor()), ref.forward(tokens_tensor())) < kSameTol);
}

TEST_CASE("llama: names and shapes are checked against the config", "[model]") {
  const Tiny c;
  auto w = lcg_model(c);
  auto bad = w;
  bad["layers.0.attention.wk.weight"] = mc::HostTensor::from_f32("x", {16, 16}, std::vector<float>(256).data());
  try {
    mc::LlamaModel m(config_of(c), bad);
    FAIL("no error");
  } catch (const mc::InputError& e) {
    const std::string msg = e.what();
    CHECK(msg.find("layers.0.attention.wk.weight") != std::string::npos);
    CHECK(msg.find("[16, 16]") != std::string::npos);
    CHECK(msg.find("expected [8, 16]") != std::string::npos);
  }
  bad = w;
  bad.erase("layers.1.ffn_norm.weight");
  bad["layers.1.extra.weight"] = w.at("norm.weight");
  try {
    mc::LlamaModel m(config_of(c), bad);
    FAIL("no error");
  } catch (const mc::InputError& e) {
    const std::string msg = e.what();
    CHECK(msg.find("missing keys: layers.1.ffn_norm.weight") != std::string::npos);
    CHECK(msg.find("unexpected keys: layers.1.extra.weight") != std::string::npos);
  }
}

TEST_CASE("llama: save_model round trips through safetensors and llama2.c", "[model]") {
  mctest::TempDir dir;
  const Tiny c;
  mc::LlamaModel m(config_of(c), lcg_model(c));
  at::Tensor want = m.forward(tokens_tensor());
  for (const char* name : {"m.safetensors", "m.bin"}) {
    mc::save_model(m, dir.file(name), {{"note", "x"}});
    auto back = mc::load_model(dir.file(name));
    CHECK(back->params().size() == m.params().size());
    CHECK(max_diff(back->forward(tokens_tensor()), want) == 0.0);
  }
}

TEST_CASE("llama: a packed-quantized checkpoint loads as its dequantized weights", "[model]") {
  mctest::TempDir dir;
  const Tiny c;
  mc::LlamaModel m(config_of(c), lcg_model(c));
  std::map<std::string, at::Tensor> dense;
  std::map<std::string, mc::QuantResult> quantized;
  mc::QuantSpec spec;
  spec.bits = 4, spec.group_size = 8;
  for (const auto& l : m.layers()) {
    if (l.kind == mc::LayerKind::Linear && l.block >= 0) quantized[l.weight] = mc::rtn_quantize(m.param(l.weight), spec);
  }
  for (const auto& [key, t] : m.params())
    if (!quantized.count(key)) dense[key] = t;
  mc::write_packed_checkpoint(dir.file("q.safetensors"), dense, quantized, m.config_metadata());
  for (const auto& [key, q] : quantized) m.set_param(key, q.dequantize());
  auto back = mc::load_model(dir.file("q.safetensors"));
  CHECK(max_diff(back->forward(tokens_tensor()), m.forward(tokens_tensor())) == 0.0);
}

TEST_CASE("llama: a sliding window equals attention over the window alone (RoPE is relative)", "[model]") {
  // One layer, so a position's output depends only on the tokens its attention sees.
  Tiny c;
  c.layers = 1;
  mc::LlamaConfig k = config_of(c);
  k.n_layers = 1;
  auto w = lcg_model(c);
  k.sliding_window = 3;
  mc::LlamaModel windowed(k, w);
  k.sliding_window = 0;
  mc::LlamaModel full(k, w);
  at::Tensor got = windowed.forward(tokens_tensor())[0];
  for (int64_t t = 0; t < 8; ++t) {
    const int64_t s = std::max<int64_t>(0, t - 2);
    at::Tensor alone = full.forward(tokens_tensor().narrow(1, s, t - s + 1))[0][-1];
    CHECK(max_diff(got[t], alone) < kSameTol);
  }
  mc::KVCache cache;
  at::Tensor step = windowed.forward_cached(tokens_tensor().narrow(1, 0, 5), cache);
  step = windowed.forward_cached(tokens_tensor().narrow(1, 5, 3), cache);
  CHECK(max_diff(step[0], got.narrow(0, 5, 3)) < kSameTol);
}

TEST_CASE("load_model: CUDA without a CUDA build is a clear input error", "[model]") {
  if (at::hasCUDA()) return;
  mctest::TempDir dir;
  const Tiny c;
  mc::write_llama2c(dir.file("tiny.bin"), values(lcg_model(c)), llama2c_meta(c), 1);
  mc::LoadOptions o;
  o.device = "cuda";
  CHECK_THROWS_WITH(mc::load_model(dir.file("tiny.bin"), o),
                    Catch::Contains("CUDA requested but this LibTorch build has no CUDA"));
  o.device = "tpu";
  CHECK_THROWS_AS(mc::load_model(dir.file("tiny.bin"), o), mc::InputError);
}

TEST_CASE("sampler: seeded, greedy at temperature 0, nucleus keeps the top token", "[model]") {
  at::Tensor logits = at::tensor({0.1, 2.0, -1.0, 1.5, 0.0}, at::kFloat);
  mc::Sampler a(42), b(42), c(43);
  std::vector<int64_t> sa, sb, sc;
  for (int i = 0; i < 50; ++i) {
    sa.push_back(a.sample(logits, 1.0, 1.0));
    sb.push_back(b.sample(logits, 1.0, 1.0));
    sc.push_back(c.sample(logits, 1.0, 1.0));
  }
  CHECK(sa == sb);
  CHECK(sa != sc);
  CHECK(a.sample(logits, 0.0, 0.9) == 1);
  for (int i = 0; i < 20; ++i) CHECK(a.sample(logits, 1.0, 0.01) == 1);  // nucleus of one token
}

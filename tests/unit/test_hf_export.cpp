// Hugging Face GPTQ / compressed-tensors and llama2.c Q8_0 exports: int32 packing against words
// computed by hand and against AutoGPTQ's own packing loop (ported below), the RoPE row permutation
// (a permuted rotate-half model computes what the interleaved one does), padding, llama2.c's group
// size and Q8_0 rounding, whole exports of a tiny quantized llama read back, and the errors.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "mcompress/error.h"
#include "mcompress/export/hf.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/model.h"
#include "mcompress/quant/packed.h"
#include "mcompress/torch_bridge.h"
#include "test_utils.h"
#include "tiny_llama.h"

using namespace mc;

namespace {

at::Tensor codes_of(std::vector<int> v, int64_t rows = 1) {
  std::vector<uint8_t> b(v.begin(), v.end());
  return at::from_blob(b.data(), {rows, int64_t(b.size()) / rows}, at::kByte).clone();
}

uint32_t word(const at::Tensor& packed, int64_t r, int64_t w) { return uint32_t(packed[r][w].item<int32_t>()); }

// AutoGPTQ QuantLinear.pack (qlinear_cuda_old.py), ported loop for loop: intweight [in, out] -> qweight
// [in / 32 * bits, out]. The oracle for pack_int32_rows applied along the input dimension.
std::vector<uint32_t> autogptq_pack(const std::vector<uint32_t>& iw, int64_t in, int64_t out, int bits) {
  std::vector<uint32_t> q(size_t(in / 32 * bits * out), 0);
  auto Q = [&](int64_t row, int64_t c) -> uint32_t& { return q[size_t(row * out + c)]; };
  auto W = [&](int64_t i, int64_t c) { return iw[size_t(i * out + c)]; };
  int64_t i = 0, row = 0;
  while (row < in / 32 * bits) {
    for (int64_t c = 0; c < out; ++c) {
      int64_t ii = i, rr = row;
      if (bits != 3) {
        for (int64_t j = ii; j < ii + 32 / bits; ++j) Q(rr, c) |= W(j, c) << (bits * (j - ii));
      } else {
        for (int64_t j = ii; j < ii + 10; ++j) Q(rr, c) |= W(j, c) << (3 * (j - ii));
        ii += 10;
        Q(rr, c) |= W(ii, c) << 30;
        rr += 1;
        Q(rr, c) |= (W(ii, c) >> 2) & 1;
        ii += 1;
        for (int64_t j = ii; j < ii + 10; ++j) Q(rr, c) |= W(j, c) << (3 * (j - ii) + 1);
        ii += 10;
        Q(rr, c) |= W(ii, c) << 31;
        rr += 1;
        Q(rr, c) |= (W(ii, c) >> 1) & 0x3;
        ii += 1;
        for (int64_t j = ii; j < ii + 10; ++j) Q(rr, c) |= W(j, c) << (3 * (j - ii) + 2);
      }
    }
    i += bits == 3 ? 32 : 32 / bits;
    row += bits == 3 ? 3 : 1;
  }
  return q;
}

// A tiny llama (dim 32, hidden 40, 2 heads of 16, 2 kv heads) quantized with RTN and written as a
// packed checkpoint; embeddings and norms rounded to float16 first, so the Hugging Face exports (float16
// dense tensors) hold the same model. act_order: a random column -> group map (g_idx) on every layer.
struct TinyPacked {
  mctest::TempDir dir;
  std::string path;
  std::map<std::string, QuantResult> quant;
  std::unique_ptr<LlamaModel> model;
};

std::unique_ptr<TinyPacked> tiny_packed(int bits, bool sym, int64_t gs, bool act_order, uint64_t seed,
                                        int64_t hidden = 40) {
  auto t = std::make_unique<TinyPacked>();
  mctest::TinyLlamaShape s;
  s.dim = 32, s.hidden = hidden, s.heads = 2, s.kv_heads = 2, s.vocab = 24;
  auto m = mctest::tiny_llama(seed, s);
  QuantSpec spec;
  spec.bits = bits, spec.symmetric = sym, spec.group_size = gs;
  std::map<std::string, at::Tensor> dense;
  for (const auto& [k, p] : m->params()) dense[k] = p.to(at::kHalf).to(at::kFloat);
  auto gen = at::detail::createCPUGenerator(seed + 1);
  for (const auto& l : m->layers()) {
    if (l.kind != LayerKind::Linear || l.is_classifier) continue;
    QuantResult q = rtn_quantize(m->param(l.weight), spec, l.weight);
    if (act_order && gs > 0) {
      at::Tensor perm = at::randperm(l.in_features, gen, at::kLong);
      at::Tensor g = at::empty({l.in_features}, at::kInt);
      g.index_put_({perm}, at::floor_divide(at::arange(l.in_features, at::kInt), gs));
      q.g_idx = g;
    }
    dense.erase(l.weight);
    t->quant[l.weight] = q;
  }
  t->path = (t->dir.path / "model.safetensors").string();
  write_packed_checkpoint(t->path, dense, t->quant, m->config_metadata());
  t->model.reset(dynamic_cast<LlamaModel*>(load_model(t->path).release()));
  return t;
}

at::Tensor load(const CheckpointReader& r, const std::string& name) { return to_torch(r.load(name)).clone(); }

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

// Logits of a Hugging Face export read back as a float model: `weights` by HF name, config.json's config.
at::Tensor hf_logits(const std::string& dir, std::map<std::string, at::Tensor> weights, const at::Tensor& tokens) {
  LlamaConfig c = LlamaConfig::from_hf_config(dir + "/config.json");
  std::map<std::string, HostTensor> w;
  for (auto& [k, v] : weights) w[k] = from_torch(k, v.to(at::kFloat));
  LlamaModel m(c, w);
  return m.forward(tokens);
}

// Float weights of the GPTQ tensors of `module`, dequantized as AutoGPTQ does: (q - (z + 1)) * s[g_idx].
at::Tensor gptq_dequant(const CheckpointReader& r, const std::string& module, int bits, int64_t in, int64_t out) {
  at::Tensor codes = unpack_int32_rows(load(r, module + ".qweight").t().contiguous(), in, bits).to(at::kFloat);
  at::Tensor qz = load(r, module + ".qzeros");
  at::Tensor zeros = unpack_int32_rows(qz, out, bits).to(at::kFloat) + 1;  // [G, out]
  at::Tensor scales = load(r, module + ".scales").to(at::kFloat);           // [G, out]
  at::Tensor g = load(r, module + ".g_idx").to(at::kLong);
  return (codes - zeros.index_select(0, g).t()) * scales.index_select(0, g).t();
}

}  // namespace

TEST_CASE("pack_int32_rows: words computed by hand", "[hf_export]") {
  // int4: 8 codes per word, the first in the lowest nibble; a 9th code starts the next word
  at::Tensor p4 = pack_int32_rows(codes_of({1, 2, 3, 4, 5, 6, 7, 8, 9}), 4);
  REQUIRE(p4.sizes() == at::IntArrayRef({1, 2}));
  CHECK(word(p4, 0, 0) == 0x87654321u);
  CHECK(word(p4, 0, 1) == 0x9u);
  CHECK(p4[0][0].item<int32_t>() == int32_t(0x87654321u));  // stored as the int32 of that bit pattern
  // int2: 16 codes per word; codes 1,2,3,0 make the byte 0x39
  at::Tensor p2 = pack_int32_rows(codes_of({1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0}), 2);
  CHECK(word(p2, 0, 0) == 0x39393939u);
  // int8: 4 codes per word
  CHECK(word(pack_int32_rows(codes_of({1, 2, 3, 0xfe}), 8), 0, 0) == 0xfe030201u);
  // int3: 32 codes in 3 words; code 10 straddles words 0/1, code 21 words 1/2
  std::vector<int> c3(32, 0);
  c3[10] = 5;  // 0b101: bits 30,31 of word 0 get 0b01, bit 0 of word 1 gets 1
  at::Tensor p3 = pack_int32_rows(codes_of(c3), 3);
  REQUIRE(p3.size(1) == 3);
  CHECK(word(p3, 0, 0) == 0x40000000u);
  CHECK(word(p3, 0, 1) == 0x1u);
  CHECK(word(p3, 0, 2) == 0x0u);
  std::vector<int> c3b(32, 0);
  c3b[21] = 6;  // 0b110: bit 31 of word 1 gets 0, bits 0,1 of word 2 get 0b11
  at::Tensor p3b = pack_int32_rows(codes_of(c3b), 3);
  CHECK(word(p3b, 0, 1) == 0x0u);
  CHECK(word(p3b, 0, 2) == 0x3u);
  CHECK(word(pack_int32_rows(codes_of(std::vector<int>(32, 7)), 3), 0, 2) == 0xffffffffu);
  CHECK_THROWS_AS(pack_int32_rows(codes_of({16}), 4), InputError);
}

TEST_CASE("pack_int32_words: whole codes per word (compressed-tensors pack_to_int32)", "[hf_export]") {
  // int3: 10 codes per word in bits 0..29, bits 30,31 unused; the 11th code starts word 1
  std::vector<int> c3(11, 0);
  c3[9] = 5, c3[10] = 3;
  at::Tensor p3 = pack_int32_words(codes_of(c3), 3);
  REQUIRE(p3.sizes() == at::IntArrayRef({1, 2}));
  CHECK(word(p3, 0, 0) == (5u << 27));
  CHECK(word(p3, 0, 1) == 3u);
  // int5: 6 codes per word; int6, int7: 5 and 4
  CHECK(word(pack_int32_words(codes_of({31, 0, 0, 0, 0, 1}), 5), 0, 0) == (31u | (1u << 25)));
  CHECK(pack_int32_words(codes_of(std::vector<int>(11, 1)), 6).size(1) == 3);
  CHECK(word(pack_int32_words(codes_of({127, 0, 0, 127}), 7), 0, 0) == (127u | (127u << 21)));
  // widths dividing 32: the same words as pack_int32_rows
  for (int bits : {2, 4, 8}) {
    auto gen = at::detail::createCPUGenerator(uint64_t(bits));
    at::Tensor codes = at::randint(0, 1 << bits, {3, 37}, gen, at::kByte);
    CHECK(at::equal(pack_int32_words(codes, bits), pack_int32_rows(codes, bits)));
  }
  // the inverse, every width
  for (int bits = 2; bits <= 8; ++bits) {
    auto gen = at::detail::createCPUGenerator(uint64_t(100 + bits));
    at::Tensor codes = at::randint(0, 1 << bits, {4, 29}, gen, at::kByte);
    CHECK(at::equal(unpack_int32_words(pack_int32_words(codes, bits), 29, bits), codes));
  }
  CHECK_THROWS_AS(pack_int32_words(codes_of({8}), 3), InputError);
}

TEST_CASE("pack_int32_rows along the input dimension equals AutoGPTQ's pack loop", "[hf_export]") {
  for (int bits : {2, 3, 4, 8}) {
    const int64_t in = 64, out = 5;
    auto gen = at::detail::createCPUGenerator(uint64_t(bits));
    at::Tensor codes = at::randint(0, 1 << bits, {out, in}, gen, at::kByte);  // [out, in], as QuantResult
    at::Tensor ours = pack_int32_rows(codes, bits).t().contiguous();          // qweight [in*bits/32, out]
    at::Tensor iw = codes.t().contiguous().to(at::kInt);
    std::vector<uint32_t> iwv(size_t(in * out));
    for (int64_t k = 0; k < in * out; ++k) iwv[size_t(k)] = uint32_t(iw.data_ptr<int32_t>()[k]);
    std::vector<uint32_t> ref = autogptq_pack(iwv, in, out, bits);
    REQUIRE(ours.numel() == int64_t(ref.size()));
    INFO("bits " << bits);
    for (size_t k = 0; k < ref.size(); ++k) REQUIRE(uint32_t(ours.data_ptr<int32_t>()[k]) == ref[k]);
  }
}

TEST_CASE("unpack_int32_rows inverts pack_int32_rows for every width", "[hf_export]") {
  for (int bits = 1; bits <= 8; ++bits)
    for (int64_t cols : {1, 7, 32, 33, 100}) {
      auto gen = at::detail::createCPUGenerator(uint64_t(bits * 1000 + cols));
      at::Tensor c = at::randint(0, 1 << bits, {3, cols}, gen, at::kByte);
      at::Tensor p = pack_int32_rows(c, bits);
      CHECK(p.size(1) == (cols * bits + 31) / 32);
      CHECK(at::equal(unpack_int32_rows(p, cols, bits), c));
    }
}

TEST_CASE("rope row permutation: convert_llama_weights_to_hf order, inverse, same function", "[hf_export]") {
  // one head of 4: Meta rows (0,1),(2,3) are pairs; HF holds the first of each pair, then the second
  at::Tensor p = rope_row_permutation(1, 4, true);
  CHECK(at::equal(p, at::tensor({0, 2, 1, 3}, at::kLong)));
  at::Tensor big = rope_row_permutation(3, 8, true), inv = rope_row_permutation(3, 8, false);
  CHECK(at::equal(big.index_select(0, inv), at::arange(24, at::kLong)));
  // w.view(n_heads, hd/2, 2, in).transpose(1, 2).reshape(n_heads*hd, in), done with ATen
  at::Tensor w = at::arange(24 * 5, at::kFloat).reshape({24, 5});
  CHECK(at::equal(w.index_select(0, big), w.view({3, 4, 2, 5}).transpose(1, 2).reshape({24, 5})));

  // An interleaved llama with llama2.c names and the rotate-half one with HF names and permuted q/k
  // rows compute the same logits.
  mctest::TinyLlamaShape s;
  s.dim = 32, s.heads = 4, s.kv_heads = 2;
  auto m = mctest::tiny_llama(7, s);
  LlamaConfig hc = m->config();
  hc.rope = RopeLayout::RotateHalf, hc.names = LlamaNames::HuggingFace;
  std::map<std::string, HostTensor> hw;
  const std::vector<std::string> roles = {"attn_norm", "ffn_norm", "wq", "wk", "wv", "wo", "w1", "w2", "w3"};
  for (int64_t l = 0; l < hc.n_layers; ++l)
    for (const auto& role : roles) {
      at::Tensor t = m->param(llama_param_name(LlamaNames::Llama2c, role, l));
      if (role == "wq") t = t.index_select(0, rope_row_permutation(hc.n_heads, hc.head_dim, true));
      if (role == "wk") t = t.index_select(0, rope_row_permutation(hc.n_kv_heads, hc.head_dim, true));
      const std::string n = llama_param_name(LlamaNames::HuggingFace, role, l);
      hw[n] = from_torch(n, t);
    }
  for (const char* role : {"embed", "final_norm"}) {
    const std::string n = llama_param_name(LlamaNames::HuggingFace, role);
    hw[n] = from_torch(n, m->param(llama_param_name(LlamaNames::Llama2c, role)));
  }
  LlamaModel h(hc, hw);
  at::Tensor tokens = mctest::random_tokens(2, 12, s.vocab, 3);
  at::Tensor a = m->forward(tokens), b = h.forward(tokens);
  // Same products in another order of rows: float32 rounding of the rotation only.
  constexpr double kRopeTol = 1e-5;
  CHECK(at::allclose(a, b, 0, kRopeTol));
}

TEST_CASE("permute_quant_rows and pad_quant keep the dequantized matrix exactly", "[hf_export]") {
  auto gen = at::detail::createCPUGenerator(11);
  at::Tensor w = at::randn({16, 40}, gen) * 0.1;
  for (bool sym : {true, false})
    for (int64_t gs : {int64_t(16), int64_t(0)}) {
      QuantSpec spec;
      spec.bits = 4, spec.symmetric = sym, spec.group_size = gs;
      QuantResult q = rtn_quantize(w, spec);
      at::Tensor perm = rope_row_permutation(2, 8, true);
      CHECK(at::equal(permute_quant_rows(q, perm).dequantize(), q.dequantize().index_select(0, perm)));
      QuantResult p = pad_quant(q, 32, 64);
      at::Tensor d = p.dequantize();
      REQUIRE(d.sizes() == at::IntArrayRef({32, 64}));
      CHECK(at::equal(d.narrow(0, 0, 16).narrow(1, 0, 40), q.dequantize()));
      CHECK(d.narrow(0, 16, 16).abs().max().item<float>() == 0.0f);
      CHECK(d.narrow(1, 40, 24).abs().max().item<float>() == 0.0f);
    }
  QuantSpec spec;
  spec.group_size = 16;
  QuantResult q = rtn_quantize(w, spec);
  q.g_idx = at::floor_divide(at::arange(39, -1, -1, at::kInt), 16);  // columns in reverse order
  QuantResult p = pad_quant(q, 16, 48);
  CHECK(at::equal(p.g_idx.narrow(0, 0, 40), q.g_idx));
  CHECK(at::equal(p.dequantize().narrow(1, 0, 40), q.dequantize()));
  CHECK(p.dequantize().narrow(1, 40, 8).abs().max().item<float>() == 0.0f);
}

TEST_CASE("llama2.c Q8_0: group size and export.py's rounding", "[hf_export]") {
  CHECK(llama2c_q8_group_size(64, 172) == 4);  // stories260K
  CHECK(llama2c_q8_group_size(288, 768) == 32);  // stories15M
  CHECK(llama2c_q8_group_size(4096, 11008) == 64);  // Llama 2 7B
  CHECK(llama2c_q8_group_size(63, 64) == 1);
  // scale 2/127; 0.5 -> 31.75 -> 32, 1.5 -> 95.25 -> 95, -2 -> -127; an all-zero group: scale 0, codes 0
  auto [q, s] = quantize_q80(at::tensor({0.0f, 0.5f, -2.0f, 1.5f, 0.0f, 0.0f, 0.0f, 0.0f}), 4);
  CHECK(at::equal(q, at::tensor({0, 32, -127, 95, 0, 0, 0, 0}, at::kChar)));
  CHECK(s[0].item<float>() == 2.0f / 127.0f);
  CHECK(s[1].item<float>() == 0.0f);
}

TEST_CASE("hf-gptq export of a tiny quantized llama reads back as the same model", "[hf_export]") {
  for (bool act_order : {false, true}) {
    INFO("act_order " << act_order);
    auto t = tiny_packed(4, true, 16, act_order, 5);
    mctest::TempDir out;
    const std::string dir = (out.path / "gptq").string();
    ExportSummary sum = export_hf_gptq(t->path, dir);
    CHECK(sum.bytes > 0);
    auto r = open_safetensors(dir + "/model.safetensors");
    std::ifstream cf(dir + "/config.json");
    auto cfg = nlohmann::json::parse(cf);
    CHECK(cfg["intermediate_size"] == 64);  // 40 padded to a multiple of 32 (and of 16)
    CHECK(cfg["quantization_config"]["checkpoint_format"] == "gptq");
    CHECK(cfg["quantization_config"]["desc_act"] == act_order);
    CHECK(std::filesystem::exists(dir + "/quantize_config.json"));
    // qweight [in*bits/32, out] int32; qzeros [G, out*bits/32]; scales [G, out] fp16; g_idx [in]
    const auto& qi = r->info("model.layers.0.mlp.down_proj.qweight");
    CHECK(qi.dtype == DType::I32);
    CHECK(qi.shape == Shape{64 * 4 / 32, 32});
    CHECK(r->info("model.layers.0.mlp.gate_proj.qzeros").shape == Shape{2, 64 * 4 / 32});
    CHECK(r->info("model.layers.0.mlp.down_proj.scales").dtype == DType::F16);
    CHECK(r->info("model.layers.0.mlp.down_proj.scales").shape == Shape{4, 32});
    CHECK(r->info("model.layers.0.mlp.down_proj.g_idx").shape == Shape{64});
    CHECK(!r->contains("lm_head.weight"));  // tied
    // symmetric int4: every stored zero is 8 - 1 = 7
    CHECK(word(load(*r, "model.layers.1.self_attn.v_proj.qzeros"), 0, 0) == 0x77777777u);
    // dequantize as AutoGPTQ and run it as a float rotate-half model: the logits of the original
    const LlamaConfig& c = t->model->config();
    std::map<std::string, at::Tensor> w;
    const std::map<std::string, std::pair<int64_t, int64_t>> shapes = {
        {"wq", {32, 32}}, {"wk", {32, 32}}, {"wv", {32, 32}}, {"wo", {32, 32}}, {"w1", {64, 32}}, {"w3", {64, 32}}, {"w2", {32, 64}}};
    for (int64_t l = 0; l < c.n_layers; ++l) {
      for (const auto& [role, shape] : shapes) {
        const std::string n = llama_param_name(LlamaNames::HuggingFace, role, l);
        at::Tensor d = gptq_dequant(*r, n.substr(0, n.size() - 7), 4, shape.second, shape.first);
        // exactly our dequantized matrix (rows permuted for q/k, zero padding for the MLP)
        at::Tensor ours = t->quant.at(llama_param_name(LlamaNames::Llama2c, role, l)).dequantize();
        if (role == "wq" || role == "wk") ours = ours.index_select(0, rope_row_permutation(2, 16, true));
        CHECK(at::equal(d.narrow(0, 0, ours.size(0)).narrow(1, 0, ours.size(1)), ours));
        w[n] = d;
      }
      for (const char* role : {"attn_norm", "ffn_norm"}) {
        const std::string n = llama_param_name(LlamaNames::HuggingFace, role, l);
        w[n] = load(*r, n);
      }
    }
    for (const char* role : {"embed", "final_norm"}) {
      const std::string n = llama_param_name(LlamaNames::HuggingFace, role);
      w[n] = load(*r, n);
    }
    at::Tensor tokens = mctest::random_tokens(2, 10, 24, 9);
    constexpr double kRopeTol = 1e-4;  // float32 rounding of the rotation and of the padded matmuls
    CHECK(at::allclose(hf_logits(dir, w, tokens), t->model->forward(tokens), 0, kRopeTol));
    // the library's reader gives the same float weights
    CHECK(hf_gptq_bits(dir + "/config.json") == 4);
    std::map<std::string, HostTensor> all;
    for (const auto& ti : r->tensors()) all[ti.name] = r->load(ti.name);
    auto back = dequantize_hf_gptq(all, 4, dir);
    for (const auto& [n, v] : w) CHECK(at::equal(to_torch(back.at(n)), v.to(at::kFloat)));
    CHECK(back.size() == w.size());
  }
}

TEST_CASE("compressed-tensors export: pack_to_int32 layout, zero points, weight_shape", "[hf_export]") {
  auto t = tiny_packed(4, false, 16, false, 8);
  mctest::TempDir out;
  const std::string dir = (out.path / "ct").string();
  export_compressed_tensors(t->path, dir);
  auto r = open_safetensors(dir + "/model.safetensors");
  std::ifstream cf(dir + "/config.json");
  auto cfg = nlohmann::json::parse(cf);
  const auto& qc = cfg["quantization_config"];
  CHECK(qc["quant_method"] == "compressed-tensors");
  CHECK(qc["format"] == "pack-quantized");
  CHECK(qc["config_groups"]["group_0"]["weights"]["strategy"] == "group");
  CHECK(qc["config_groups"]["group_0"]["weights"]["symmetric"] == false);
  CHECK(cfg["intermediate_size"] == 40);  // no padding
  const std::string m = "model.layers.0.mlp.gate_proj";
  CHECK(r->info(m + ".weight_packed").shape == Shape{40, 32 * 4 / 32});
  CHECK(r->info(m + ".weight_scale").shape == Shape{40, 2});
  CHECK(r->info(m + ".weight_zero_point").shape == Shape{40 * 4 / 32, 2});
  CHECK(r->info(m + ".weight_shape").dtype == DType::I64);
  CHECK(at::equal(load(*r, m + ".weight_shape"), at::tensor({40, 32}, at::kLong)));
  const QuantResult& q = t->quant.at("layers.0.feed_forward.w1.weight");
  // codes = signed value + 8, packed along the input dimension
  CHECK(at::equal(unpack_int32_rows(load(*r, m + ".weight_packed"), 32, 4), q.codes));
  // zero point packed along the output dimension (packed_dim=0), offset the same way
  at::Tensor zp = unpack_int32_rows(load(*r, m + ".weight_zero_point").t().contiguous(), 40, 4).t();
  CHECK(at::equal(zp.to(at::kFloat), q.zeros));
  CHECK(at::equal(load(*r, m + ".weight_scale").to(at::kFloat), q.scales));
}

TEST_CASE("llama2c-q8 export: header, order, exact int8 codes", "[hf_export]") {
  auto t = tiny_packed(8, true, 0, false, 4, 48);  // int8 per channel: exact
  mctest::TempDir out;
  const std::string file = (out.path / "q8.bin").string();
  ExportSummary s = export_llama2c_q8(t->path, file);
  std::ifstream f(file, std::ios::binary);
  std::vector<char> b((std::istreambuf_iterator<char>(f)), {});
  auto i32 = [&](size_t off) { int32_t v; std::memcpy(&v, b.data() + off, 4); return v; };
  CHECK(uint32_t(i32(0)) == 0x616b3432u);
  CHECK(i32(4) == 2);
  CHECK(i32(8) == 32);   // dim
  CHECK(i32(12) == 48);  // hidden_dim
  CHECK(b[36] == 1);     // shared classifier
  CHECK(i32(37) == 16);  // group size: 64 -> 32 -> 16 divides 32 and 48
  const int64_t L = 2, D = 32, H = 48, V = 24, gs = 16;
  size_t off = 256 + size_t(4 * (2 * L * D + D));
  off += size_t(V * D + V * D / gs * 4);  // embedding
  // wq of layer 0: int8 codes - 128 of the (interleaved: unpermuted) packed grid
  const QuantResult& q = t->quant.at("layers.0.attention.wq.weight");
  at::Tensor vals = at::from_blob(b.data() + off, {D, D}, at::kChar).to(at::kInt);
  CHECK(at::equal(vals, q.codes.to(at::kInt) - 128));
  at::Tensor sc = at::from_blob(b.data() + off + D * D, {D, D / gs}, at::kFloat);
  CHECK(at::equal(sc, q.scales.expand({D, D / gs})));
  const int64_t per_layer_attn = 4 * (D * D + D * D / gs * 4), per_layer_mlp = 3 * (H * D + H * D / gs * 4);
  CHECK(int64_t(b.size()) == 256 + 4 * (2 * L * D + D) + (V * D + V * D / gs * 4) + L * (per_layer_attn + per_layer_mlp));
  bool exact_note = false;
  for (const auto& n : s.notes) exact_note = exact_note || n.find("14 tensors carried over exactly") != std::string::npos;
  CHECK(exact_note);  // 7 linears x 2 layers exact; the float embedding requantized
}

TEST_CASE("hf exports: clear errors for what they cannot hold", "[hf_export]") {
  mctest::TempDir out;
  auto t5 = tiny_packed(5, true, 16, false, 1);
  CHECK_THAT(error_of([&] { export_hf_gptq(t5->path, (out.path / "a").string()); }),
             Catch::Contains("hf-gptq holds 2, 3, 4 or 8 bits"));
  auto t3 = tiny_packed(3, true, 16, false, 1);
  CHECK_THAT(error_of([&] { export_compressed_tensors(t3->path, (out.path / "b").string()); }),
             Catch::Contains("holds 4 or 8 bits"));
  CHECK_NOTHROW(export_hf_gptq(t3->path, (out.path / "c").string()));  // AutoGPTQ's 3-bit packing
  // a float model: nothing to export as GPTQ
  auto m = mctest::tiny_llama(2);
  const std::string fp = (out.path / "float.safetensors").string();
  save_model(*m, fp);
  CHECK_THAT(error_of([&] { export_hf_gptq(fp, (out.path / "d").string()); }), Catch::Contains("no quantized layers"));
  CHECK_FALSE(std::filesystem::exists(out.path / "d"));
  // an asymmetric group with zero point 0 cannot be stored as zero - 1
  auto ta = tiny_packed(4, false, 16, false, 3);
  for (auto& [k, q] : ta->quant) q.zeros[0][0] = 0.0f;
  {
    std::map<std::string, at::Tensor> dense;
    for (const auto& [k, p] : ta->model->params())
      if (!ta->quant.count(k)) dense[k] = p;
    write_packed_checkpoint(ta->path, dense, ta->quant, ta->model->config_metadata());
  }
  CHECK_THAT(error_of([&] { export_hf_gptq(ta->path, (out.path / "e").string()); }), Catch::Contains("zero point 0"));
  CHECK_NOTHROW(export_compressed_tensors(ta->path, (out.path / "f").string()));
  // an output directory holding other files is not replaced
  std::filesystem::create_directories(out.path / "g");
  std::ofstream(out.path / "g" / "notes.txt") << "mine";
  CHECK_THAT(error_of([&] { export_compressed_tensors(ta->path, (out.path / "g").string()); }), Catch::Contains("notes.txt"));
  // a previous export is replaced
  CHECK_NOTHROW(export_compressed_tensors(ta->path, (out.path / "f").string()));
}

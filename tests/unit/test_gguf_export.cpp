// GGUF export: exact mapping of quantizer results onto ggml blocks (bytes built here from the layouts in
// ggml-common.h), encoder error bounds, write -> read round trips of every type and key/value type, the llama
// export (names, q4_k_m mix, rotate-half permutation, fallbacks) and loading it back; plus a hidden case
// ([.gguf-export]) writing files for tests/python/test_gguf_export.py.
#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/export/gguf.h"
#include "mcompress/ggml_blocks.h"
#include "mcompress/half.h"
#include "mcompress/io/gguf.h"
#include "mcompress/io/llama2c.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/model.h"
#include "mcompress/quant/gptq.h"
#include "mcompress/quant/packed.h"
#include "mcompress/torch_bridge.h"
#include "test_utils.h"
#include "tiny_llama.h"

using mc::DType;

namespace {

// Relative RMS error bounds of the encoders on N(0, 1) values: a uniform grid of step s has RMS error
// s / sqrt(12); with the block's range ~ +-2.2 sigma (32 values) the step is 4.4/15 (4-bit: 0.085),
// 4.4/31 (5-bit: 0.041), 3.8/63 for Q6_K's 16-value blocks (0.017), 4.4/254 (Q8_0: 0.005). Bounds allow
// ~40% above these for the scale rounding.
constexpr double kRel4 = 0.12, kRel5 = 0.06, kRel6 = 0.03, kRel8 = 0.01;

std::vector<float> dequant(DType t, const std::vector<uint8_t>& b, int64_t n) {
  std::vector<float> y(static_cast<size_t>(n));
  mc::dequantize_blocks(t, b.data(), n, y.data());
  return y;
}


mc::QuantResult make_result(int bits, bool sym, int64_t rows, int64_t cols, uint64_t seed) {
  at::Tensor w = at::randn({rows, cols}, at::detail::createCPUGenerator(seed));
  mc::QuantSpec spec;
  spec.bits = bits, spec.symmetric = sym, spec.group_size = 32;
  return mc::rtn_quantize(w, spec);
}

void check_same(const std::vector<float>& a, const at::Tensor& b) {
  at::Tensor bc = b.contiguous();
  REQUIRE(int64_t(a.size()) == bc.numel());
  CHECK(std::memcmp(a.data(), bc.data_ptr<float>(), a.size() * 4) == 0);
}

std::string tiny_tokenizer(const mctest::TempDir& d, int64_t vocab) {
  return mctest::write_tiny_tokenizer(d.file("tok.bin"), vocab);
}

const mc::GgufValue& kv_of(const mc::CheckpointReader& r, const std::string& key) {
  for (const auto& [k, v] : mc::gguf_kv(r))
    if (k == key) return v;
  FAIL("no key " << key);
  throw;
}

}  // namespace

TEST_CASE("Q4_0 / Q8_0 / Q5_0 from symmetric g32 results: bytes as ggml lays them out", "[gguf_export]") {
  for (int bits : {4, 5, 8}) {
    const DType t = bits == 4 ? DType::Q4_0 : bits == 5 ? DType::Q5_0 : DType::Q8_0;
    mc::QuantResult q = make_result(bits, true, 3, 64, 10 + bits);
    REQUIRE(mc::maps_exactly(q, t));
    const auto b = mc::encode_from_quant(q, t);
    const int64_t bb = mc::dtype_info(t).block_bytes;
    REQUIRE(b.size() == size_t(3 * 2 * bb));
    for (int64_t r = 0; r < 3; ++r) {
      for (int64_t g = 0; g < 2; ++g) {
        const uint8_t* blk = b.data() + (r * 2 + g) * bb;
        const float scale = q.scales[r][g].item<float>();
        uint16_t h;
        std::memcpy(&h, blk, 2);
        CHECK(h == mc::f32_to_f16(scale));
        std::vector<int> code(32);
        for (int j = 0; j < 32; ++j) code[size_t(j)] = q.codes[r][g * 32 + j].item<int>();
        uint32_t qh = 0;
        for (int j = 0; j < 32; ++j) qh |= uint32_t((code[size_t(j)] >> 4) & 1) << j;
        for (int j = 0; j < 16; ++j) {
          if (bits == 8) {
            CHECK(int(int8_t(blk[2 + j])) == code[size_t(j)] - 128);
            CHECK(int(int8_t(blk[2 + 16 + j])) == code[size_t(j + 16)] - 128);
          } else {
            const uint8_t* qs = blk + (bits == 4 ? 2 : 6);
            CHECK(qs[j] == ((code[size_t(j)] & 15) | ((code[size_t(j + 16)] & 15) << 4)));
          }
        }
        if (bits == 5) {
          uint32_t stored;
          std::memcpy(&stored, blk + 2, 4);
          CHECK(stored == qh);
        }
      }
    }
    check_same(dequant(t, b, 3 * 64), q.dequantize());
  }
}

TEST_CASE("Q4_1 / Q5_1 from asymmetric g32 results: m = -zero * scale, exact when a float16", "[gguf_export]") {
  for (int bits : {4, 5}) {
    const DType t = bits == 4 ? DType::Q4_1 : DType::Q5_1;
    mc::QuantResult q = make_result(bits, false, 2, 32, 20 + bits);
    q.scales.fill_(0.5f);  // -zero * 0.5 is a float16 value for every zero point
    int64_t inexact = -1;
    const auto b = mc::encode_from_quant(q, t, &inexact);
    CHECK(inexact == 0);
    for (int64_t r = 0; r < 2; ++r) {
      const uint8_t* blk = b.data() + r * mc::dtype_info(t).block_bytes;
      uint16_t m;
      std::memcpy(&m, blk + 2, 2);
      CHECK(mc::f16_to_f32(m) == -q.zeros[r][0].item<float>() * 0.5f);
    }
    check_same(dequant(t, b, 64), q.dequantize());
    // A scale with a full float16 mantissa times an odd zero point needs more bits than float16 has.
    q.scales.fill_(1.0f + 1.0f / 1024);
    q.zeros.fill_(7.0f);
    mc::encode_from_quant(q, t, &inexact);
    CHECK(inexact == 2);
  }
}

TEST_CASE("GPTQ sym int4 g32 -> Q4_0 reads back bit-identical to QuantResult::dequantize", "[gguf_export]") {
  auto gen = at::detail::createCPUGenerator(7);
  at::Tensor W = at::randn({16, 128}, gen), X = at::randn({256, 128}, gen);
  mc::GptqOptions o;
  o.spec.bits = 4, o.spec.symmetric = true, o.spec.group_size = 32;
  auto res = mc::gptq_quantize(W, X.t().matmul(X) * (2.0 / 256), o);
  REQUIRE(mc::maps_exactly(res.quant, DType::Q4_0));
  mctest::TempDir d;
  const auto bytes = mc::encode_from_quant(res.quant, DType::Q4_0);
  mc::write_gguf(d.file("w.gguf"), {}, {{"w", DType::Q4_0, {16, 128}, [&] { return bytes; }}});
  auto r = mc::open_gguf(d.file("w.gguf"));
  check_same(mc::to_f32(r->load("w")), res.quant.dequantize());
  // Not exact: act-order groups (g_idx) or another group size go through the block encoder instead.
  mc::QuantResult g64 = res.quant;
  g64.spec.group_size = 64;
  CHECK_FALSE(mc::maps_exactly(g64, DType::Q4_0));
  CHECK_FALSE(mc::maps_exactly(res.quant, DType::Q4_1));
}

TEST_CASE("block encoders: error bounds on N(0,1) values; K-quants beat the legacy types", "[gguf_export]") {
  const int64_t n = 256 * 64;
  at::Tensor x = at::randn({n}, at::detail::createCPUGenerator(3)).contiguous();
  const float* p = x.data_ptr<float>();
  std::map<DType, double> rel;
  for (DType t : {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    rel[t] = std::sqrt(mc::block_encoding_sse(t, p, n) / double(n));
    INFO(mc::dtype_name(t) << " relative rms error " << rel[t]);
    const double bound = (t == DType::Q8_0) ? kRel8 : t == DType::Q6_K ? kRel6
                        : (t == DType::Q5_0 || t == DType::Q5_1 || t == DType::Q5_K) ? kRel5 : kRel4;
    CHECK(rel[t] < bound);
  }
  CHECK(rel[DType::Q4_K] < rel[DType::Q4_0]);
  CHECK(rel[DType::Q5_K] < rel[DType::Q5_0]);
  CHECK(rel[DType::Q6_K] < rel[DType::Q5_K]);
  // Constant and all-zero super-blocks reconstruct exactly.
  std::vector<float> zeros(256, 0.0f), ones(256, 0.75f);
  for (DType t : {DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    CHECK(mc::block_encoding_sse(t, zeros.data(), 256) == 0.0);
    // within float16 rounding of the scales: 256 values off by at most 0.75 * 2^-11 each
    CHECK(mc::block_encoding_sse(t, ones.data(), 256) <= 256 * std::pow(0.75 * std::ldexp(1.0, -11), 2));
  }
  std::vector<float> bad(32, 1.0f);
  bad[3] = NAN;
  std::vector<uint8_t> out(64);
  CHECK_THROWS_AS(mc::encode_blocks(DType::Q4_1, bad.data(), 32, out.data()), mc::InputError);
  CHECK_THROWS_AS(mc::encode_blocks(DType::Q4_K, bad.data(), 32, out.data()), mc::InputError);
}

TEST_CASE("write_gguf -> open_gguf: every tensor type and key/value type, 32-byte aligned data", "[gguf_export]") {
  mctest::TempDir d;
  at::Tensor x = at::randn({3, 256}, at::detail::createCPUGenerator(5)).contiguous();
  const std::vector<DType> types = {DType::F32, DType::F16, DType::Q8_0, DType::Q4_0, DType::Q4_1,
                                    DType::Q5_0, DType::Q5_1, DType::Q4_K, DType::Q5_K, DType::Q6_K};
  std::vector<mc::GgufTensorSource> src;
  std::map<std::string, std::vector<uint8_t>> bytes;
  for (DType t : types) {
    const std::string name = std::string("w.") + mc::dtype_name(t);
    bytes[name] = mc::encode_matrix(t, x.data_ptr<float>(), 3, 256);
    src.push_back({name, t, {3, 256}, [&bytes, name] { return bytes.at(name); }});
  }
  std::vector<float> norm = {1.0f, 2.0f, 3.0f};  // 3 floats: the next tensor starts after padding
  src.push_back({"norm", DType::F32, {3}, [&] { return std::vector<uint8_t>((uint8_t*)norm.data(), (uint8_t*)norm.data() + 12); }});
  src.push_back({"after", DType::F16, {2, 32}, [] { return std::vector<uint8_t>(128, 0); }});
  std::vector<mc::GgufKV> kv = {
      {"u8", mc::gguf_scalar(mc::GgufType::U8, 200)},    {"i8", mc::gguf_scalar(mc::GgufType::I8, -100)},
      {"u16", mc::gguf_scalar(mc::GgufType::U16, 60000)}, {"i16", mc::gguf_scalar(mc::GgufType::I16, -30000)},
      {"u32", mc::gguf_u32(4000000000u)},                {"i32", mc::gguf_i32(-2000000000)},
      {"f32", mc::gguf_f32(0.25f)},                      {"bool", mc::gguf_bool(true)},
      {"str", mc::gguf_string("h\xC3\xA9llo")},          {"u64", mc::gguf_u64(18000000000000000000ull)},
      {"i64", mc::gguf_scalar(mc::GgufType::I64, -5e15)}, {"f64", mc::gguf_scalar(mc::GgufType::F64, 1e-300)},
      {"arr.s", mc::gguf_string_array({"a", "", "c"})},  {"arr.f", mc::gguf_f32_array({1.5, -2})},
      {"arr.i", mc::gguf_int_array(mc::GgufType::I32, {1, -2, 3})},
  };
  mc::write_gguf(d.file("all.gguf"), kv, src);
  auto r = mc::open_gguf(d.file("all.gguf"));
  CHECK(mc::gguf_version(*r) == 3);
  CHECK(mc::gguf_alignment(*r) == 32);
  CHECK(kv_of(*r, "general.alignment").type == mc::GgufType::U32);
  for (const auto& [k, v] : kv) {
    const mc::GgufValue& got = kv_of(*r, k);
    INFO(k);
    CHECK(got.type == v.type);
    CHECK(got.to_string() == v.to_string());
  }
  CHECK(kv_of(*r, "u64").u == 18000000000000000000ull);
  CHECK(kv_of(*r, "f64").f == 1e-300);
  for (const auto& ti : r->tensors()) {
    INFO(ti.name);
    CHECK(ti.offset % 32 == 0);
    auto t = r->load(ti.name);
    if (bytes.count(ti.name)) {
      CHECK(t.shape == mc::Shape{3, 256});
      CHECK(std::vector<uint8_t>(t.data, t.data + t.nbytes) == bytes[ti.name]);
      if (mc::is_block(t.dtype)) {  // the values read back are those the encoder's bytes stand for
        std::vector<float> y(768);
        mc::dequantize_blocks(t.dtype, bytes[ti.name].data(), 768, y.data());
        CHECK(mc::to_f32(t) == y);
      }
    }
  }
  CHECK(mc::to_f32(r->load("norm")) == norm);
  CHECK(mc::to_f32(r->load("w.F32")) == std::vector<float>(x.data_ptr<float>(), x.data_ptr<float>() + 768));

  // Errors: one line, nothing left behind.
  CHECK_THROWS_WITH(mc::write_gguf(d.file("bad.gguf"), {}, {{"q", DType::Q4_K, {2, 64}, [] { return std::vector<uint8_t>(); }}}),
                    Catch::Contains("row length 64 is not a multiple of the Q4_K block size 256"));
  CHECK_THROWS_AS(mc::write_gguf(d.file("bad.gguf"), {{"k", mc::gguf_u32(1)}, {"k", mc::gguf_u32(2)}},
                                 std::vector<mc::HostTensor>{}), mc::InputError);
  CHECK_THROWS_AS(mc::write_gguf(d.file("bad.gguf"), {}, {{"a", DType::F32, {4}, [] { return std::vector<uint8_t>(3); }}}),
                  mc::Error);
  CHECK_FALSE(mctest::fs::exists(d.file("bad.gguf")));
}

TEST_CASE("export_gguf: Hugging Face rotate-half llama -> GGUF f32 loads back with the same logits", "[gguf_export]") {
  mctest::TempDir d;
  mctest::TinyLlamaShape s;
  s.tied = false, s.dim = 32, s.heads = 4, s.kv_heads = 2, s.hidden = 64;
  auto base = mctest::tiny_llama(11, s);
  mc::LlamaConfig c = base->config();
  c.names = mc::LlamaNames::HuggingFace, c.rope = mc::RopeLayout::RotateHalf;
  std::map<std::string, mc::HostTensor> hf;  // same weights under HF names, read as rotate-half
  for (const std::string role : {"embed", "final_norm", "output"})
    hf[mc::llama_param_name(c.names, role)] = mc::from_torch(mc::llama_param_name(c.names, role),
                                                              base->param(mc::llama_param_name(base->config().names, role)));
  for (int64_t i = 0; i < c.n_layers; ++i)
    for (const std::string role : {"attn_norm", "ffn_norm", "wq", "wk", "wv", "wo", "w1", "w2", "w3"})
      hf[mc::llama_param_name(c.names, role, i)] = mc::from_torch(
          mc::llama_param_name(c.names, role, i), base->param(mc::llama_param_name(base->config().names, role, i)));
  mc::LlamaModel model(c, hf);
  mc::save_model(model, d.file("hf.safetensors"));
  const std::string tok = tiny_tokenizer(d, c.vocab_size);

  auto choices = mc::export_gguf(d.file("hf.safetensors"), d.file("m.gguf"), {"f32", tok, "tiny"});
  CHECK(choices.size() == 2 + 9 * size_t(c.n_layers) + 1);
  CHECK(choices.back().name == "output.weight");
  auto back = mc::load_model(d.file("m.gguf"));
  at::Tensor tokens = mctest::random_tokens(2, 12, c.vocab_size, 1);
  at::Tensor a = model.forward(tokens), b = back->forward(tokens);
  // Float32 rotations of permuted rows: the same products summed in another order (a few ulp).
  CHECK(at::allclose(a, b, 1e-5, 1e-5));

  auto r = mc::open_gguf(d.file("m.gguf"));
  CHECK(kv_of(*r, "general.architecture").s == "llama");
  CHECK(kv_of(*r, "general.name").s == "tiny");
  CHECK(kv_of(*r, "llama.attention.head_count_kv").i == 2);
  CHECK(kv_of(*r, "llama.rope.freq_base").type == mc::GgufType::F32);
  CHECK(kv_of(*r, "llama.attention.layer_norm_rms_epsilon").type == mc::GgufType::F32);
  CHECK(kv_of(*r, "tokenizer.ggml.model").s == "llama");
  CHECK(kv_of(*r, "tokenizer.ggml.tokens").as.at(6) == "\xE2\x96\x81t6");  // ' ' -> U+2581
  CHECK(kv_of(*r, "tokenizer.ggml.token_type").ai.at(3) == 6);             // <0x03>: byte
  CHECK(kv_of(*r, "tokenizer.ggml.token_type").ai.at(1) == 3);             // <s>: control
  CHECK(r->info("blk.0.attn_q.weight").shape == mc::Shape{32, 32});
  CHECK_THROWS_WITH(mc::export_gguf(d.file("hf.safetensors"), d.file("x.gguf"), {"iq2_xxs", tok, ""}),
                    Catch::Contains("unknown type 'iq2_xxs'"));
}

TEST_CASE("export_gguf: q4_k_m mix, auto from packed results, fallbacks for short rows", "[gguf_export]") {
  mctest::TempDir d;
  mctest::TinyLlamaShape s;
  s.layers = 8, s.dim = 256, s.hidden = 96, s.heads = 4, s.kv_heads = 4, s.vocab = 32;
  auto model = mctest::tiny_llama(5, s);
  const std::string tok = tiny_tokenizer(d, s.vocab);
  mc::save_model(*model, d.file("m.safetensors"));
  auto choices = mc::export_gguf(d.file("m.safetensors"), d.file("m.gguf"), {"q4_k_m", tok, ""});
  std::map<std::string, mc::GgufTensorChoice> by;
  for (auto& ch : choices) by[ch.name] = ch;
  CHECK(by["token_embd.weight"].type == "Q6_K");  // tied: the output
  CHECK(by["blk.0.attn_norm.weight"].type == "F32");
  for (int i = 0; i < 8; ++i) {  // use_more_bits(i, 8): i < 1, i >= 7, (i - 1) % 3 == 2
    const bool more = i == 0 || i == 7 || i == 3 || i == 6;
    INFO("layer " << i);
    CHECK(by["blk." + std::to_string(i) + ".attn_v.weight"].type == (more ? "Q6_K" : "Q4_K"));
    CHECK(by["blk." + std::to_string(i) + ".attn_q.weight"].type == "Q4_K");
    // ffn_down rows are 96 long: Q6_K -> Q8_0 and Q4_K -> Q5_0 (96 = 3 x 32)
    CHECK(by["blk." + std::to_string(i) + ".ffn_down.weight"].type == (more ? "Q8_0" : "Q5_0"));
  }
  CHECK_THAT(by["blk.1.ffn_down.weight"].note, Catch::Contains("fallback Q4_K -> Q5_0"));

  // auto from a packed checkpoint: sym int4 g32 -> Q4_0, asym int4 g32 -> Q4_1, int8 g32 -> Q8_0, int3 -> Q4_K.
  std::map<std::string, at::Tensor> dense;
  std::map<std::string, mc::QuantResult> quant;
  auto spec = [](int bits, bool sym) {
    mc::QuantSpec q;
    q.bits = bits, q.symmetric = sym, q.group_size = 32;
    return q;
  };
  for (const auto& [key, t] : model->params()) {
    if (key.find("wq") != std::string::npos) quant[key] = mc::rtn_quantize(t, spec(4, true));
    else if (key.find("wk") != std::string::npos) quant[key] = mc::rtn_quantize(t, spec(4, false));
    else if (key.find("wv") != std::string::npos) quant[key] = mc::rtn_quantize(t, spec(8, true));
    else if (key.find("wo") != std::string::npos) quant[key] = mc::rtn_quantize(t, spec(3, true));
    else if (key.find("w2") != std::string::npos) quant[key] = mc::rtn_quantize(t, spec(4, true));
    else dense[key] = t;
  }
  mc::write_packed_checkpoint(d.file("p.safetensors"), dense, quant, model->config_metadata());
  choices = mc::export_gguf(d.file("p.safetensors"), d.file("p.gguf"), {"auto", tok, ""});
  by.clear();
  for (auto& ch : choices) by[ch.name] = ch;
  CHECK(by["blk.2.attn_q.weight"].type == "Q4_0");
  CHECK(by["blk.2.attn_k.weight"].type == "Q4_1");
  CHECK(by["blk.2.attn_v.weight"].type == "Q8_0");
  CHECK(by["blk.2.attn_output.weight"].type == "Q4_0");   // int3 codes are a subset of Q4_0's: exact
  CHECK(by["blk.2.attn_output.weight"].note.find("exact") != std::string::npos);
  CHECK(by["blk.2.ffn_gate.weight"].type == "F16");        // dense
  CHECK(by["blk.2.ffn_down.weight"].type == "Q4_0");       // 96 = 3 groups of 32: exact
  auto packed = mc::load_model(d.file("p.safetensors"));
  auto r = mc::open_gguf(d.file("p.gguf"));
  CHECK(kv_of(*r, "general.file_type").i == 2);  // mostly Q4_0
  for (const char* name_c : {"blk.2.attn_q.weight", "blk.2.attn_v.weight", "blk.5.ffn_down.weight"}) {
    const std::string name = name_c;
    const std::string role = name.find("attn_q") != std::string::npos ? "wq" : name.find("attn_v") != std::string::npos ? "wv" : "w2";
    const int64_t blk = name[4] - '0';
    INFO(name);
    check_same(mc::to_f32(r->load(name)), packed->param(mc::llama_param_name(mc::LlamaNames::Llama2c, role, blk)));
  }
  auto back = mc::load_model(d.file("p.gguf"));
  // int3 fitted as Q4_K: each sub-block exactly on its grid, the error is that of the 6-bit sub-scales
  // (~0.9% here; without the grid hint ggml's fit gives ~5%), well within the error of a 4-bit grid.
  for (int64_t i = 0; i < 8; ++i) {
    const std::string key = mc::llama_param_name(mc::LlamaNames::Llama2c, "wo", i);
    const at::Tensor w = packed->param(key), err = back->param(key) - w;
    const double rel = std::sqrt(err.pow(2).mean().item<double>() / w.pow(2).mean().item<double>());
    CHECK(rel < kRel4 / 4);
  }
}

TEST_CASE("export_gguf: stories260K int4 g32 -> auto / q4_0 / q4_k_m", "[gguf_export]") {
  MC_REQUIRE_SHARED(model_path, "stories260K/stories260K.bin");
  MC_REQUIRE_SHARED(tok, "stories260K/tok512.bin");
  mctest::TempDir d;
  auto model = mc::load_model(model_path);
  std::map<std::string, at::Tensor> dense;
  std::map<std::string, mc::QuantResult> quant;
  mc::QuantSpec spec;  // int4 sym g32 on every linear layer (hidden 172 ends with a group of 12)
  for (const auto& l : model->layers()) {
    if (l.kind == mc::LayerKind::Linear && !l.is_classifier) quant[l.weight] = mc::rtn_quantize(model->param(l.weight), spec);
  }
  for (const auto& [k, t] : model->params())
    if (!quant.count(k)) dense[k] = t;
  mc::write_packed_checkpoint(d.file("q.safetensors"), dense, quant, model->config_metadata());
  auto packed = mc::load_model(d.file("q.safetensors"));
  for (const std::string type : {"auto", "q4_0", "q4_k_m", "q8_0"}) {
    INFO(type);
    auto choices = mc::export_gguf(d.file("q.safetensors"), d.file(type + ".gguf"), {type, tok, ""});
    std::map<std::string, mc::GgufTensorChoice> by;
    for (auto& ch : choices) by[ch.name] = ch;
    if (type == "auto" || type == "q4_0") {
      CHECK(by["blk.0.attn_q.weight"].type == "Q4_0");
      CHECK_THAT(by["blk.0.attn_q.weight"].note, Catch::Contains("exact"));
      CHECK(by["blk.0.ffn_down.weight"].type == (type == "auto" ? "F32" : "F16"));  // 172: not even 32
      auto r = mc::open_gguf(d.file(type + ".gguf"));
      for (int64_t i = 0; i < 5; ++i)
        for (const auto& [g, role] : std::vector<std::pair<std::string, std::string>>{{"attn_q", "wq"}, {"ffn_up", "w3"}, {"ffn_down", "w2"}}) {
          if (type == "q4_0" && role == "w2") continue;
          check_same(mc::to_f32(r->load("blk." + std::to_string(i) + "." + g + ".weight")),
                     packed->param(mc::llama_param_name(mc::LlamaNames::Llama2c, role, i)));
        }
    } else if (type == "q4_k_m") {
      CHECK(by["token_embd.weight"].type == "Q8_0");     // Q6_K, row 64 -> Q8_0
      CHECK(by["blk.0.attn_q.weight"].type == "Q5_0");   // Q4_K, row 64 -> Q5_0
      CHECK(by["blk.1.ffn_down.weight"].type == "F16");  // row 172
    }
    auto back = mc::load_model(d.file(type + ".gguf"));
    at::Tensor tokens = mctest::random_tokens(1, 16, 512, 3);
    // auto differs from the packed model only by the float16 embedding
    if (type == "auto") {  // the packed model with its dense embedding rounded to float16, bit for bit
      const std::string emb = mc::llama_param_name(mc::LlamaNames::Llama2c, "embed");
      packed->set_param(emb, packed->param(emb).to(at::kHalf).to(at::kFloat));
      CHECK(at::equal(back->forward(tokens), packed->forward(tokens)));
    }
  }
}

// Writes files for tests/python/test_gguf_export.py (hidden; run with MC_GGUF_EXPORT=<dir>): blocks.gguf with
// one tensor per type encoded from seeded N(0,1) values, original.safetensors (those values) and
// decoded.safetensors (our decoding of what was written). With MC_GGUF_EXPORT_MODEL (and _TYPE, _TOKENIZER)
// it also exports that model to <dir>/model.gguf and writes the choices to <dir>/choices.tsv.
TEST_CASE("export GGUF files for the Python check", "[.gguf-export]") {
  const char* dir = std::getenv("MC_GGUF_EXPORT");
  if (!dir) {
    WARN("skipped: set MC_GGUF_EXPORT to a directory");
    return;
  }
  const std::string out(dir);
  if (const char* m = std::getenv("MC_GGUF_EXPORT_MODEL")) {
    const char* type = std::getenv("MC_GGUF_EXPORT_TYPE");
    const char* tok = std::getenv("MC_GGUF_EXPORT_TOKENIZER");
    auto choices = mc::export_gguf(m, out + "/model.gguf", {type ? type : "auto", tok ? tok : "", ""});
    std::ofstream f(out + "/choices.tsv");
    for (const auto& c : choices) f << c.name << "\t" << c.type << "\t" << c.params << "\t" << c.bytes << "\t" << c.note << "\n";
    return;
  }
  at::Tensor x = at::randn({4, 512}, at::detail::createCPUGenerator(17)).contiguous();
  std::vector<mc::GgufTensorSource> src;
  std::vector<mc::HostTensor> orig, dec;
  for (DType t : {DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q6_K, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q5_K}) {
    const std::string name = mc::dtype_name(t);
    auto bytes = mc::encode_matrix(t, x.data_ptr<float>(), 4, 512);
    std::vector<float> y(2048);
    mc::dequantize_blocks(t, bytes.data(), 2048, y.data());
    src.push_back({name, t, {4, 512}, [bytes] { return bytes; }});
    dec.push_back(mc::HostTensor::from_f32(name, {4, 512}, y.data()));
    orig.push_back(mc::HostTensor::from_f32(name, {4, 512}, x.data_ptr<float>()));
  }
  mc::write_gguf(out + "/blocks.gguf", {{"general.architecture", mc::gguf_string("test")}}, src);
  mc::write_safetensors(out + "/original.safetensors", orig, {});
  mc::write_safetensors(out + "/decoded.safetensors", dec, {});
}

// KV-cache quantization (quant/kv_cache.h, Model::set_kv_quant, PtqOptions::kv_bits): the grids by hand and
// against the element loops, the cache path of generation equal to the whole-sequence forward under it, the
// calibrated scales equal to each head's max over the quantized model's keys and values recomputed here, and
// bad input. (tests/python/test_kv_cache_cli.py checks the runtime against an independent reference.)
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "mcompress/error.h"
#include "mcompress/model.h"
#include "mcompress/ptq.h"
#include "mcompress/quant/hadamard.h"
#include "mcompress/quant/kv_cache.h"
#include "test_utils.h"
#include "tiny_llama.h"

using namespace mc;

TEST_CASE("kv_fake_quant: int8 and fp8 grids per head, by hand and against the loops", "[kv]") {
  // Head 0 scale 0.5, head 1 scale 2.
  const at::Tensor s = at::tensor({0.5f, 2.0f});
  const at::Tensor x = at::tensor({0.26f, -0.25f, 0.75f, 100.0f, 3.0f, -5.0f, 1.0f, -1000.0f}).view({1, 2, 2, 2});
  const at::Tensor i8 = kv_fake_quant(x, s, KVFormat::int8);
  // 0.52 -> 1; -0.5 -> -0 (half to even); 1.5 -> 2; 200 -> 127 | 1.5 -> 2; -2.5 -> -2; 0.5 -> 0; -500 -> -127
  const at::Tensor want8 = at::tensor({0.5f, -0.0f, 1.0f, 63.5f, 4.0f, -4.0f, 0.0f, -254.0f}).view({1, 2, 2, 2});
  CHECK(i8.equal(want8));
  const at::Tensor f8 = kv_fake_quant(x, s, KVFormat::fp8);
  // E4M3: 0.52 -> 0.5 (step 1/16 in [0.5, 1)); -0.5 exact; 1.5 exact; 200 -> 192 (step 16 in [128, 256), 12.5 steps: even) |
  // 1.5; -2.5; 0.5; -500 -> -448 (saturates).
  const at::Tensor wantf = at::tensor({0.25f, -0.25f, 0.75f, 96.0f, 3.0f, -5.0f, 1.0f, -896.0f}).view({1, 2, 2, 2});
  CHECK(f8.equal(wantf));
  auto gen = at::detail::createCPUGenerator(5);
  const at::Tensor r = at::randn({3, 4, 7, 16}, gen, at::kFloat).mul_(3);
  const at::Tensor rs = kv_scales(r.abs().amax({0, 2, 3}), KVFormat::int8);
  for (KVFormat f : {KVFormat::int8, KVFormat::fp8}) {
    CAPTURE(kv_format_name(f));
    const at::Tensor sc = kv_scales(r.abs().amax({0, 2, 3}), f);
    CHECK(kv_fake_quant(r, sc, f).equal(kv_fake_quant_ref(r, sc, f)));
    // Within half a step (int8) / 2^-4 relative (fp8 normals) of the input, nothing clipped at amax.
    const at::Tensor err = (kv_fake_quant(r, sc, f) - r).abs();
    if (f == KVFormat::int8) CHECK((err <= sc.view({1, -1, 1, 1}) * 0.5001).all().item<bool>());
    else CHECK((err <= r.abs() * 0.0626 + sc.view({1, -1, 1, 1}) * 0.002).all().item<bool>());
  }
  CHECK(kv_scales(at::tensor({0.0f, 254.0f}), KVFormat::int8).equal(at::tensor({1.0f, 2.0f})));
  CHECK(kv_scales(at::tensor({896.0f}), KVFormat::fp8).equal(at::tensor({2.0f})));
  CHECK_THROWS_WITH(parse_kv_format("fp4"), Catch::Contains("format 'fp4' is not available (allowed: int8, fp8)"));
  CHECK_THROWS_WITH(kv_fake_quant(r, rs.narrow(0, 0, 3), KVFormat::int8), Catch::Contains("3 scales for 4 heads"));
}

TEST_CASE("KV quantization in the model: generation's cache equals the whole-sequence forward", "[kv]") {
  at::NoGradGuard no_grad;
  mctest::TinyLlamaShape sh;
  sh.dim = 32, sh.heads = 4, sh.kv_heads = 2, sh.layers = 2;
  auto m = mctest::tiny_llama(3, sh);
  const at::Tensor t = mctest::random_tokens(2, 20, sh.vocab, 4);
  const at::Tensor plain = m->forward(t);
  for (const char* fmt : {"int8", "fp8"}) {
    CAPTURE(fmt);
    auto q = mctest::tiny_llama(3, sh);
    for (int b = 0; b < 2; ++b) q->set_kv_quant(b, at::full({2}, 0.2f), at::full({2}, 0.1f), fmt);
    const at::Tensor full = q->forward(t);
    CHECK_FALSE(full.allclose(plain, 1e-3, 1e-3));  // the rounding is there
    KVCache cache;
    const at::Tensor a = q->forward_cached(t.narrow(1, 0, 9), cache);
    const at::Tensor b = q->forward_cached(t.narrow(1, 9, 1), cache);
    const at::Tensor c = q->forward_cached(t.narrow(1, 10, 10), cache);
    CHECK(at::cat({a, b, c}, 1).allclose(full, 1e-4, 1e-5));
  }
  CHECK_THROWS_WITH(m->set_kv_quant(2, at::ones({2}), at::ones({2}), "int8"), Catch::Contains("block 2 of 2"));
  CHECK_THROWS_WITH(m->set_kv_quant(0, at::zeros({2}), at::ones({2}), "int8"), Catch::Contains("positive and finite"));
  m->set_kv_quant(0, at::ones({2}), at::ones({2}), "int8");
  CHECK_THROWS_WITH(m->set_kv_quant(1, at::ones({2}), at::ones({2}), "fp8"), Catch::Contains("one format per model"));
}

TEST_CASE("quantize_model --kv-bits: scales are each head's max over the quantized model's keys and values",
          "[kv][ptq]") {
  mctest::TinyLlamaShape sh;
  sh.dim = 32, sh.heads = 4, sh.kv_heads = 2, sh.layers = 3, sh.vocab = 40;
  const at::Tensor calib = mctest::random_tokens(8, 16, 40, 7);
  for (const char* fmt : {"int8", "fp8"}) {
    CAPTURE(fmt);
    auto m = mctest::tiny_llama(8, sh);
    PtqOptions o;
    o.method = "gptq";
    o.spec.bits = 4, o.spec.group_size = 16;
    o.kv_bits = 8, o.kv_format = fmt;
    o.batch = 3;  // batches of 3, 3, 2: the max runs over all of them
    const PtqResult r = quantize_model(*m, calib, o);
    REQUIRE(r.kv_scales.size() == 3);
    REQUIRE(m->kv_quant().size() == 3);
    CHECK(m->kv_format() == fmt);
    // Recomputed here: the same weights without KV rounding (the scales are calibrated on float caches), all
    // calibration sequences in one batch, each block's keys and values as they enter the cache.
    auto ref = mctest::tiny_llama(8, sh);
    for (const auto& [key, q] : r.quantized) ref->set_param(key, q.dequantize());
    std::map<int, std::pair<at::Tensor, at::Tensor>> amax;
    ref->set_kv_observer([&](int b, const at::Tensor& k, const at::Tensor& v) {
      amax[b] = {k.abs().amax({0, 2, 3}), v.abs().amax({0, 2, 3})};
    });
    {
      at::NoGradGuard no_grad;
      ref->forward(calib);
    }
    const double top = std::string(fmt) == "int8" ? 127.0 : 448.0;
    for (int b = 0; b < 3; ++b) {
      CAPTURE(b);
      CHECK(r.kv_scales.at(b).first.allclose(amax.at(b).first / top, 1e-5, 0));
      CHECK(r.kv_scales.at(b).second.allclose(amax.at(b).second / top, 1e-5, 0));
      CHECK(m->kv_quant().at(b).k.equal(r.kv_scales.at(b).first));
    }
  }
  // Only the blocks up to the last quantized one are calibrated: said in a warning.
  auto m = mctest::tiny_llama(8, sh);
  PtqOptions o;
  o.method = "rtn", o.kv_bits = 8, o.targets = {"layers.0.*"};
  const PtqResult r = quantize_model(*m, calib, o);
  CHECK(r.kv_scales.size() == 1);
  CHECK_FALSE(r.warnings.empty());
  CHECK(r.warnings.back().find("KV-cache scales for 1 of 3 blocks") != std::string::npos);
  o.kv_bits = 4;
  CHECK_THROWS_WITH(quantize_model(*m, calib, o), Catch::Contains("--kv-bits 4: 8 is the one width"));
  o.kv_bits = 8;
  CHECK_THROWS_WITH(quantize_model(*m, at::Tensor(), o), Catch::Contains("--kv-bits needs calibration data"));
}

TEST_CASE("KV Hadamard: keys and values rounded as x H and read back with Hᵀ; float unchanged; outliers spread",
          "[kv]") {
  at::NoGradGuard no_grad;
  mctest::TinyLlamaShape sh;
  sh.dim = 32, sh.heads = 4, sh.kv_heads = 2, sh.layers = 2;  // head_dim 8
  const at::Tensor t = mctest::random_tokens(2, 20, sh.vocab, 4);
  auto plain = mctest::tiny_llama(3, sh);
  auto rot = mctest::tiny_llama(3, sh);
  rot->set_kv_hadamard(true);
  // Without scales the rotation changes nothing but the observer's view (x H).
  CHECK(rot->forward(t).allclose(plain->forward(t), 1e-5, 1e-6));
  std::map<int, at::Tensor> seen_plain, seen_rot;
  plain->set_kv_observer([&](int b, const at::Tensor& k, const at::Tensor&) { seen_plain[b] = k.clone(); });
  rot->set_kv_observer([&](int b, const at::Tensor& k, const at::Tensor&) { seen_rot[b] = k.clone(); });
  plain->forward(t);
  rot->forward(t);
  const at::Tensor H = hadamard_matrix(8).to(at::kFloat);
  CHECK(seen_rot.at(1).allclose(seen_plain.at(1).matmul(H), 1e-5, 1e-6));
  plain->set_kv_observer({}), rot->set_kv_observer({});
  // With scales: what a rotated cache computes. Checked on the cached generation path too.
  for (int b = 0; b < 2; ++b) rot->set_kv_quant(b, at::full({2}, 0.05f), at::full({2}, 0.02f), "int8");
  const at::Tensor full = rot->forward(t);
  CHECK_FALSE(full.allclose(plain->forward(t), 1e-3, 1e-3));
  KVCache cache;
  const at::Tensor a = rot->forward_cached(t.narrow(1, 0, 9), cache);
  const at::Tensor c = rot->forward_cached(t.narrow(1, 9, 11), cache);
  CHECK(at::cat({a, c}, 1).allclose(full, 1e-4, 1e-5));
  // One outlier channel per head: rounding x H on a per-head int8 grid loses less than rounding x.
  auto gen = at::detail::createCPUGenerator(9);
  at::Tensor k = at::randn({1, 2, 64, 8}, gen, at::kFloat);
  k.select(3, 2).mul_(30.0f);
  const at::Tensor s0 = kv_scales(k.abs().amax({0, 2, 3}), KVFormat::int8);
  const at::Tensor kr = k.matmul(H);
  const at::Tensor s1 = kv_scales(kr.abs().amax({0, 2, 3}), KVFormat::int8);
  const double e0 = (kv_fake_quant(k, s0, KVFormat::int8) - k).norm().item<double>();
  const double e1 = (kv_fake_quant(kr, s1, KVFormat::int8).matmul(H.t()) - k).norm().item<double>();
  INFO("int8 KV error of keys with an outlier channel: plain " << e0 << ", rotated " << e1);
  CHECK(e1 < 0.6 * e0);
}

TEST_CASE("quantize_model --kv-bits with kv_hadamard: scales of the rotated keys and values; refused without kv-bits",
          "[kv][ptq]") {
  mctest::TinyLlamaShape sh;
  sh.dim = 32, sh.heads = 4, sh.kv_heads = 2, sh.layers = 2, sh.vocab = 40;
  const at::Tensor calib = mctest::random_tokens(4, 16, 40, 7);
  auto m = mctest::tiny_llama(8, sh);
  PtqOptions o;
  o.method = "rtn";
  o.kv_bits = 8, o.kv_format = "fp8", o.kv_hadamard = true;
  const PtqResult r = quantize_model(*m, calib, o);
  CHECK(m->kv_hadamard());
  auto ref = mctest::tiny_llama(8, sh);
  for (const auto& [key, q] : r.quantized) ref->set_param(key, q.dequantize());
  std::map<int, std::pair<at::Tensor, at::Tensor>> amax;
  const at::Tensor H = hadamard_matrix(8).to(at::kFloat);
  ref->set_kv_observer([&](int b, const at::Tensor& k, const at::Tensor& v) {
    amax[b] = {k.matmul(H).abs().amax({0, 2, 3}), v.matmul(H).abs().amax({0, 2, 3})};
  });
  {
    at::NoGradGuard no_grad;
    ref->forward(calib);
  }
  for (int b = 0; b < 2; ++b) {
    CAPTURE(b);
    CHECK(r.kv_scales.at(b).first.allclose(amax.at(b).first / 448.0, 1e-5, 0));
    CHECK(r.kv_scales.at(b).second.allclose(amax.at(b).second / 448.0, 1e-5, 0));
  }
  PtqOptions bad;
  bad.method = "rtn", bad.kv_hadamard = true;
  CHECK_THROWS_WITH(quantize_model(*mctest::tiny_llama(8, sh), calib, bad), Catch::Contains("needs --kv-bits 8"));
}

// Activation formats (quant/act_quant.h): hand-computed values, the ATen path against the element loops, each
// token equal to the weight format's quantizer applied to that token as a one-row matrix (fp_formats.h, whose
// codes tests/python/test_fp_formats.py decodes from the OCP MX and NVFP4 descriptions), the model's linear
// reading those inputs, and quantize_model with FP activations. (tests/python/test_act_format_cli.py checks a
// whole quantized model against a PyTorch reference that rounds the activations from the specifications.)
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "mcompress/error.h"
#include "mcompress/model.h"
#include "mcompress/ptq.h"
#include "mcompress/quant/act_quant.h"
#include "mcompress/quant/fp_formats.h"
#include "test_utils.h"
#include "tiny_llama.h"

using namespace mc;

namespace {
const ActQuant kFormats[] = {{ActFormat::int_, 8}, {ActFormat::int_, 4}, {ActFormat::fp8, 8},
                             {ActFormat::mxfp8, 8}, {ActFormat::mxfp4, 4}, {ActFormat::nvfp4, 4}};

// Tokens with outlier channels, an all-zero token, tiny (subnormal-scale) values and a ragged last group.
at::Tensor awkward_tokens(int64_t C, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  at::Tensor x = at::randn({6, C}, gen, at::kFloat);
  x.select(1, 3).mul_(40.0f);
  x[1].zero_();
  x[2].mul_(1e-30f);
  x[4].narrow(0, 0, 16).zero_();  // a whole NVFP4 group of zeros inside a live token
  return x;
}
}  // namespace

TEST_CASE("act_fake_quant: hand-computed MXFP4, NVFP4 and FP8 tokens", "[act]") {
  // MXFP4, one ragged group of 4: amax 3 -> floor(log2 3) = 1, X = 1 - 2 = -1, scale 0.5; x / 0.5 = 6, 1.4,
  // -2.4, 0.2 -> E2M1 6, 1.5, -2, 0 -> 3, 0.75, -1, 0.
  const at::Tensor mx = act_fake_quant(at::tensor({3.0f, 0.7f, -1.2f, 0.1f}).view({1, 4}), {ActFormat::mxfp4, 4});
  CHECK(mx.equal(at::tensor({3.0f, 0.75f, -1.0f, 0.0f}).view({1, 4})));
  // NVFP4, groups of 16: token amax 6 -> G = 2688 / 6 = 448. Group 0 (amax 6): S = e4m3(448) = 448, step 1:
  // 6 -> 6, 2.6 -> 3 (E2M1 has 2 and 3 there). Group 1 (amax 1.2): S = e4m3(1.2 / 6 * 448 = 89.6) = 88
  // (E4M3 step 8 in [64, 128)), effective 88 / 448; 1.2 / (88/448) = 6.109 -> 6 (saturates) -> 6 * 88 / 448;
  // 0.3 / (88/448) = 1.527 -> 1.5 -> 1.5 * 88 / 448.
  at::Tensor t = at::zeros({1, 32});
  t[0][0] = 6.0f, t[0][1] = 2.6f, t[0][16] = 1.2f, t[0][17] = -0.3f;
  const at::Tensor nv = act_fake_quant(t, {ActFormat::nvfp4, 4});
  CHECK(nv[0][0].item<float>() == 6.0f);
  CHECK(nv[0][1].item<float>() == 3.0f);
  CHECK(nv[0][16].item<float>() == 6.0f * 88.0f / 448.0f);
  CHECK(nv[0][17].item<float>() == -1.5f * 88.0f / 448.0f);
  CHECK(nv.narrow(1, 2, 14).abs().sum().item<float>() == 0.0f);
  // FP8 per token: amax 896 -> s = 2; 896 -> 448 * 2; 3 -> 1.5 -> 1.5 * 2; 201 / 2 = 100.5 -> 104 (step 8 in
  // [64, 128): 100.5 is nearer 104 than 96) -> 208.
  const at::Tensor f8 = act_fake_quant(at::tensor({896.0f, 3.0f, 201.0f}).view({1, 3}), {ActFormat::fp8, 8});
  CHECK(f8.equal(at::tensor({896.0f, 3.0f, 208.0f}).view({1, 3})));
}

TEST_CASE("act_fake_quant: ATen equals the loops, and each token equals the weight format on one row", "[act]") {
  for (int64_t C : {64, 40, 48}) {
    const at::Tensor x = awkward_tokens(C, 11 + C);
    for (const ActQuant& a : kFormats) {
      CAPTURE(C, act_quant_name(a));
      const at::Tensor got = act_fake_quant(x, a);
      CHECK(got.equal(act_fake_quant_ref(x, a)));
      // A 3-D input is the same tokens.
      CHECK(act_fake_quant(x.view({2, 3, C}), a).view({6, C}).equal(got));
      // bf16 in, bf16 out, the same rounding of the widened values.
      CHECK(act_fake_quant(x.to(at::kBFloat16), a).scalar_type() == at::kBFloat16);
      if (a.format == ActFormat::int_) continue;
      if (C % 2 == 1 && a.bits == 4) continue;
      const FpScheme s = a.format == ActFormat::fp8     ? FpScheme::fp8
                         : a.format == ActFormat::mxfp8 ? FpScheme::mxfp8
                         : a.format == ActFormat::mxfp4 ? FpScheme::mxfp4
                                                        : FpScheme::nvfp4;
      for (int64_t tok = 0; tok < x.size(0); ++tok) {
        CAPTURE(tok);
        CHECK(got[tok].equal(fp_quantize(x.narrow(0, tok, 1), s).dequantize()[0]));
      }
    }
  }
}

TEST_CASE("act_fake_quant: the formats' errors rank as their grids do on Gaussian tokens", "[act]") {
  auto gen = at::detail::createCPUGenerator(3);
  const at::Tensor x = at::randn({256, 512}, gen, at::kFloat);
  auto err = [&](const ActQuant& a) { return ((act_fake_quant(x, a) - x).norm() / x.norm()).item<double>(); };
  const double i8 = err({ActFormat::int_, 8}), f8 = err({ActFormat::fp8, 8}), mx8 = err({ActFormat::mxfp8, 8});
  const double i4 = err({ActFormat::int_, 4}), mx4 = err({ActFormat::mxfp4, 4}), nv4 = err({ActFormat::nvfp4, 4});
  INFO("int8 " << i8 << " fp8 " << f8 << " mxfp8 " << mx8 << " int4 " << i4 << " mxfp4 " << mx4 << " nvfp4 " << nv4);
  // Every 8-bit format below every 4-bit one; small groups beat one scale per token at 4 bits; NVFP4's
  // E4M3 group scales beat MXFP4's powers of two.
  CHECK(std::max({i8, f8, mx8}) < std::min({i4, mx4, nv4}));
  CHECK(nv4 < mx4);
  CHECK(mx4 < i4);
  CHECK(i8 < 0.02);
  CHECK(nv4 < 0.12);
}

TEST_CASE("Model: a linear with NVFP4 / FP8 inputs computes linear(act_fake_quant(x), W)", "[act]") {
  auto m = mctest::tiny_llama(7);
  const std::string name = "layers.0.feed_forward.w2";
  for (const ActQuant& a : {ActQuant{ActFormat::nvfp4, 4}, ActQuant{ActFormat::fp8, 8}, ActQuant{ActFormat::mxfp4, 4}}) {
    CAPTURE(act_quant_name(a));
    m->set_input_quant(name, a);
    CHECK(m->layer(name).act_quant().format == a.format);
    CHECK(m->input_quant_runtime(name).find("simulated in float") == 0);
    at::Tensor x_seen, y_seen;
    const int id = m->add_hook([&](const LayerInfo& l, const at::Tensor& x, const at::Tensor& y) {
      if (l.name == name) x_seen = x.clone(), y_seen = y.clone();
    });
    m->forward(mctest::random_tokens(2, 9, 20, 8));
    m->remove_hook(id);
    REQUIRE(x_seen.defined());
    const at::Tensor W = m->param(m->layer(name).weight);
    const at::Tensor want = at::linear(act_fake_quant_ref(x_seen, a), W);
    CHECK(y_seen.allclose(want, 1e-6, 1e-6));
    CHECK_FALSE(y_seen.allclose(at::linear(x_seen, W), 1e-4, 1e-4));
  }
  m->set_input_quant(name, 0);
  CHECK(m->layer(name).act_bits == 0);
  CHECK(m->layer(name).act_format == ActFormat::int_);
  CHECK_THROWS_WITH(m->set_input_quant(name, ActQuant{ActFormat::nvfp4, 8}), Catch::Contains("have 4 bits, not 8"));
}

TEST_CASE("quantize_model with FP activations: every quantized linear reads them; bad combinations refused", "[act]") {
  auto m = mctest::tiny_llama(9);
  PtqOptions o;
  o.method = "gptq", o.spec.bits = 4, o.spec.group_size = 16;
  o.quantize_activations = true, o.act_format = ActFormat::nvfp4, o.act_bits = 4;
  const at::Tensor calib = mctest::random_tokens(4, 16, 20, 10);
  const PtqResult r = quantize_model(*m, calib, o);
  CHECK(r.act_format == ActFormat::nvfp4);
  CHECK(r.act_bits.size() == 14);
  for (const auto& [name, b] : r.act_bits) CHECK(m->layer(name).act_quant().format == ActFormat::nvfp4);
  CHECK(m->layer("output").act_bits == 0);
  for (const auto& row : r.layers)
    if (row.name != "output") CHECK(row.scheme.find(", a nvfp4") != std::string::npos);
  PtqOptions bad = o;
  bad.act_bits = 8;
  CHECK_THROWS_WITH(quantize_model(*mctest::tiny_llama(9), calib, bad), Catch::Contains("have 4 bits, not 8"));
  bad = o;
  bad.method = "smoothquant", bad.spec.bits = 8, bad.spec.group_size = 0;
  CHECK_THROWS_WITH(quantize_model(*mctest::tiny_llama(9), calib, bad), Catch::Contains("apply to a weight method"));
  CHECK_THROWS_WITH(parse_act_quant("fp6"), Catch::Contains("'fp6' is not available"));
  CHECK(parse_act_quant("int4").bits == 4);
  CHECK(parse_act_quant("8").format == ActFormat::int_);
}

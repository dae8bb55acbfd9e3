// RTN quantization: the ATen path against the plain-loop reference (identical codes and scales), a
// 1x4 row worked out by hand, the scale/2 error bound, the MSE clip search and the errors.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "mcompress/error.h"
#include "mcompress/half.h"
#include "mcompress/quant/rtn.h"
#include "test_utils.h"

using namespace mc;

namespace {

// The error bound of round-to-nearest is exactly scale/2; multiplying by the float reciprocal of
// the scale instead of dividing can move w*inv by a few ulps (2^-24 relative) of at most 2^8 code
// units, i.e. ~1e-5 of a step: allow 1e-4 of a step.
constexpr double kRoundSlack = 1e-4;
// Sums of squared errors compared across two summation orders (double): relative slack.
constexpr double kSumSlack = 1e-9;

// Normal weights with a few large outliers, as in real layers; some rows all zero or constant.
at::Tensor test_weights(int64_t out, int64_t in, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  at::Tensor w = at::randn({out, in}, gen, at::kFloat).mul_(0.02);
  at::Tensor mask = at::rand({out, in}, gen, at::kFloat).lt(0.01);
  w.add_(mask.to(at::kFloat).mul_(at::randn({out, in}, gen, at::kFloat)).mul_(0.3));
  if (out > 2) {
    w[0].zero_();
    w[1].fill_(0.125);
  }
  if (out > 3) w[2].clamp_min_(0);  // all non-negative row
  return w;
}

void require_identical(const QuantResult& a, const QuantResult& b) {
  REQUIRE(a.codes.sizes() == b.codes.sizes());
  REQUIRE(a.scales.sizes() == b.scales.sizes());
  CHECK(at::equal(a.codes, b.codes));
  CHECK(at::equal(a.scales, b.scales));
  CHECK(at::equal(a.zeros, b.zeros));
}

QuantSpec spec_of(int bits, bool sym, int64_t gs, bool mse = false) {
  QuantSpec s;
  s.bits = bits;
  s.symmetric = sym;
  s.group_size = gs;
  s.mse_clip = mse;
  return s;
}

std::string error_of(const at::Tensor& w, const QuantSpec& s) {
  try {
    rtn_quantize(w, s, "layers.0.wq");
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("rtn_quantize matches the reference exactly: bits 2..8, sym/asym, all groupings", "[rtn]") {
  const at::Tensor w = test_weights(12, 256, 1);
  const at::Tensor ragged = test_weights(7, 100, 2);  // 100 = 3 x 32 + 4: a short last group
  for (int bits = 2; bits <= 8; ++bits) {
    for (bool sym : {true, false}) {
      for (int64_t gs : {32, 64, 128, 0, -1}) {
        QuantSpec s = spec_of(bits, sym, gs);
        INFO(s.describe());
        require_identical(rtn_quantize(w, s), rtn_quantize_ref(w, s));
      }
      QuantSpec s = spec_of(bits, sym, 32);
      INFO(s.describe() << " in=100");
      QuantResult r = rtn_quantize(ragged, s);
      CHECK(r.n_groups() == 4);
      require_identical(r, rtn_quantize_ref(ragged, s));
    }
  }
}

TEST_CASE("rtn_quantize matches the reference on a larger matrix split across threads", "[rtn]") {
  const at::Tensor w = test_weights(300, 1000, 8);  // 1000 = 7 x 128 + 104; rows in several blocks
  for (int bits : {3, 4, 8})
    for (bool sym : {true, false}) {
      QuantSpec s = spec_of(bits, sym, 128, bits == 4);
      INFO(s.describe());
      require_identical(rtn_quantize(w, s), rtn_quantize_ref(w, s));
    }
}

TEST_CASE("rtn_quantize with MSE clip matches the reference", "[rtn]") {
  const at::Tensor w = test_weights(9, 100, 3);
  for (int bits : {2, 3, 4, 8})
    for (bool sym : {true, false})
      for (int64_t gs : {32, 0, -1}) {
        QuantSpec s = spec_of(bits, sym, gs, true);
        INFO(s.describe());
        require_identical(rtn_quantize(w, s), rtn_quantize_ref(w, s));
      }
}

TEST_CASE("rtn: a 1x4 row by hand", "[rtn]") {
  SECTION("int4 symmetric per channel") {
    // amax 1: scale 2/15 = 0.13333 rounded up to fp16 = 1093 * 2^-13 = 0.1334228515625, zero 8.
    // w / scale = 3.747, -7.495, 1.874, 7.495 -> round 4, -7, 2, 7 -> codes 12, 1, 10, 15.
    const float wv[4] = {0.5f, -1.0f, 0.25f, 1.0f};
    at::Tensor w = at::from_blob(const_cast<float*>(wv), {1, 4}, at::kFloat);
    QuantResult r = rtn_quantize(w, spec_of(4, true, 0));
    const double s = 1093.0 / 8192.0;
    CHECK(r.scales.item<float>() == float(s));
    CHECK(r.zeros.item<float>() == 8.0f);
    auto c = r.codes.accessor<uint8_t, 2>();
    CHECK((int(c[0][0]) == 12 && int(c[0][1]) == 1 && int(c[0][2]) == 10 && int(c[0][3]) == 15));
    const at::Tensor deq = r.dequantize();
    auto d = deq.accessor<float, 2>();
    CHECK(d[0][0] == float(4 * s));
    CHECK(d[0][1] == float(-7 * s));
    CHECK(d[0][2] == float(2 * s));
    CHECK(d[0][3] == float(7 * s));  // +amax is clipped half a step: 0.934
  }
  SECTION("int4 asymmetric per channel") {
    // lo -1, hi 3.5: scale 4.5/15 = 0.3 rounded up to fp16 = 1229 * 2^-12 = 0.300048828125;
    // zero round(1 / scale) = round(3.333) = 3; codes round(w / scale) + 3 = 0, 3, 10, 15.
    const float wv[4] = {-1.0f, 0.0f, 2.0f, 3.5f};
    at::Tensor w = at::from_blob(const_cast<float*>(wv), {1, 4}, at::kFloat);
    QuantResult r = rtn_quantize(w, spec_of(4, false, 0));
    CHECK(r.scales.item<float>() == float(1229.0 / 4096.0));
    CHECK(r.zeros.item<float>() == 3.0f);
    auto c = r.codes.accessor<uint8_t, 2>();
    CHECK((int(c[0][0]) == 0 && int(c[0][1]) == 3 && int(c[0][2]) == 10 && int(c[0][3]) == 15));
    CHECK(r.dequantize()[0][1].item<float>() == 0.0f);  // zero is exact
  }
}

TEST_CASE("rtn: without clipping every weight is within scale/2 of its value", "[rtn]") {
  const at::Tensor w = test_weights(16, 100, 4);
  for (int bits = 2; bits <= 8; ++bits)
    for (bool sym : {true, false})
      for (int64_t gs : {32, 0, -1}) {
        QuantSpec s = spec_of(bits, sym, gs);
        INFO(s.describe());
        QuantResult r = rtn_quantize(w, s);
        at::Tensor scale_per_elem =
            gs > 0 ? r.scales.repeat_interleave(gs, 1).narrow(1, 0, 100) : r.scales.expand({16, 100});
        at::Tensor excess = (r.dequantize() - w).abs() - scale_per_elem * (0.5 + kRoundSlack);
        CHECK(excess.max().item<float>() <= 0.0f);
        CHECK(r.codes.max().item<int>() <= (1 << bits) - 1);
        // stored scales are fp16 values
        CHECK(at::equal(r.scales.to(at::kHalf).to(at::kFloat), r.scales));
      }
}

TEST_CASE("rtn: the MSE clip never increases the squared error, and helps with outliers", "[rtn]") {
  const at::Tensor w = test_weights(16, 256, 5);
  for (int bits : {2, 3, 4, 8})
    for (bool sym : {true, false})
      for (int64_t gs : {32, 128, 0}) {
        INFO(spec_of(bits, sym, gs).describe());
        at::Tensor plain = (rtn_quantize(w, spec_of(bits, sym, gs)).dequantize() - w).to(at::kDouble);
        at::Tensor clip = (rtn_quantize(w, spec_of(bits, sym, gs, true)).dequantize() - w).to(at::kDouble);
        at::Tensor e_plain = plain.pow(2).sum(1), e_clip = clip.pow(2).sum(1);
        CHECK((e_clip - e_plain * (1 + kSumSlack)).max().item<double>() <= 1e-30);
        if (bits <= 4) CHECK(e_clip.sum().item<double>() < e_plain.sum().item<double>());
      }
}

TEST_CASE("rtn: per tensor uses one scale, zeros are 2^(b-1) when symmetric", "[rtn]") {
  const at::Tensor w = test_weights(5, 64, 6);
  QuantResult r = rtn_quantize(w, spec_of(4, true, -1));
  CHECK(r.scales.sizes() == at::IntArrayRef({5, 1}));
  CHECK(at::equal(r.scales, r.scales[0][0].expand({5, 1})));
  CHECK(at::equal(r.zeros, at::full({5, 1}, 8.0f)));
  // fp16 / bf16 / f64 input quantize like their float32 values
  require_identical(rtn_quantize(w.to(at::kDouble), spec_of(3, false, 16)), rtn_quantize(w, spec_of(3, false, 16)));
}

TEST_CASE("round_up_to_f16 returns the smallest float16 value >= x", "[rtn]") {
  const float xs[] = {0.1f, 0.13333334f, 1.0f, 0.5f, 3e-8f, 1e-3f, 65504.0f, 1000.1f};
  at::Tensor t = at::from_blob(const_cast<float*>(xs), {8}, at::kFloat);
  at::Tensor u = round_up_to_f16(t);
  for (int i = 0; i < 8; ++i) {
    float x = xs[i], y = u[i].item<float>();
    INFO(x);
    CHECK(y >= x);
    CHECK(f16_to_f32(f32_to_f16(y)) == y);
    uint16_t h = f32_to_f16(y);
    if (h > 0) CHECK(f16_to_f32(uint16_t(h - 1)) < x);  // the next smaller fp16 is below x
  }
  CHECK(u[2].item<float>() == 1.0f);
}

TEST_CASE("rtn: invalid specs and weights give InputError naming the layer", "[rtn]") {
  const at::Tensor w = test_weights(4, 64, 7);
  CHECK(error_of(w, spec_of(9, true, 32)) == "[rtn] layer layers.0.wq: bits 9 outside 2..8");
  CHECK(error_of(w, spec_of(1, true, 32)) == "[rtn] layer layers.0.wq: bits 1 outside 2..8");
  CHECK_THAT(error_of(w, spec_of(4, true, -2)), Catch::Contains("group_size -2 is not allowed"));
  at::Tensor bad = w.clone();
  bad[1][3] = std::nanf("");
  CHECK_THAT(error_of(bad, spec_of(4, true, 32)), Catch::Contains("NaN or Inf"));
  CHECK_THROWS_AS(rtn_quantize_ref(bad, spec_of(4, true, 32)), InputError);
  CHECK_THAT(error_of(w * 1e7, spec_of(4, true, 32)), Catch::Contains("float16 range"));
  CHECK_THAT(error_of(w.flatten(), spec_of(4, true, 32)), Catch::Contains("2-D"));
  CHECK(spec_of(4, true, 32).describe() == "int4 sym g32");
  CHECK(spec_of(8, false, 0, true).describe() == "int8 asym per-channel mse");
  CHECK(spec_of(3, true, -1).describe() == "int3 sym per-tensor");
}

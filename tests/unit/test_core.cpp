// Core types: half/bfloat16 conversions against the compiler's own _Float16 and hand-computed values,
// dtype tables, tensor statistics against a direct two-pass computation.
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "mcompress/dtype.h"
#include "mcompress/error.h"
#include "mcompress/half.h"
#include "mcompress/tensor.h"
#include "test_utils.h"

using namespace mc;

TEST_CASE("f16 -> f32 -> f16 is the identity on every non-NaN half", "[core]") {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    REQUIRE(f32_to_f16(f) == h);
  }
}

#ifdef __FLT16_MAX__
TEST_CASE("f16 conversions agree with the compiler's _Float16", "[core]") {
  // Oracle: GCC's _Float16 (IEEE binary16, round to nearest even).
  for (uint32_t h = 0; h < 65536; ++h) {
    _Float16 x;
    uint16_t hb = static_cast<uint16_t>(h);
    std::memcpy(&x, &hb, 2);
    float ref = static_cast<float>(x);
    float got = f16_to_f32(hb);
    if (std::isnan(ref)) { REQUIRE(std::isnan(got)); continue; }
    REQUIRE(float_to_bits(got) == float_to_bits(ref));
  }
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 200000; ++i) {
    float f = bits_to_float(bits(rng));
    if (std::isnan(f)) continue;
    _Float16 r = static_cast<_Float16>(f);
    uint16_t rb;
    std::memcpy(&rb, &r, 2);
    REQUIRE(f32_to_f16(f) == rb);
  }
}
#endif

TEST_CASE("bf16 rounds to nearest even by hand-computed cases", "[core]") {
  CHECK(f32_to_bf16(1.0f) == 0x3f80);
  CHECK(f32_to_bf16(bits_to_float(0x3f808000u)) == 0x3f80);  // tie, even stays
  CHECK(f32_to_bf16(bits_to_float(0x3f818000u)) == 0x3f82);  // tie, odd rounds up
  CHECK(f32_to_bf16(bits_to_float(0x3f808001u)) == 0x3f81);  // above the tie
  CHECK(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(bf16_to_f32(0xc040) == -3.0f);
}

TEST_CASE("dtype names, aliases and byte counts", "[core]") {
  CHECK(dtype_from_name("F32") == DType::F32);
  CHECK(dtype_from_name("bf16") == DType::BF16);
  CHECK(dtype_from_name("half") == DType::F16);
  CHECK(dtype_from_name("Q4_0") == DType::Q4_0);
  CHECK_FALSE(dtype_from_name("F8").has_value());
  CHECK(dtype_nbytes(DType::F16, 10) == 20u);
  CHECK(dtype_nbytes(DType::Q8_0, 64) == 68u);   // 2 blocks of (2-byte scale + 32 int8)
  CHECK(dtype_nbytes(DType::Q4_K, 512) == 288u);  // 2 super-blocks of 144 bytes
  CHECK_FALSE(dtype_nbytes(DType::Q4_0, 33).has_value());
  CHECK_FALSE(dtype_nbytes(DType::F64, std::numeric_limits<int64_t>::max()).has_value());
}

TEST_CASE("shape_numel rejects overflow", "[core]") {
  CHECK(shape_numel({}) == 1);
  CHECK(shape_numel({3, 0, 5}) == 0);
  CHECK_THROWS_AS(shape_numel({int64_t(1) << 40, int64_t(1) << 40}), InputError);
}

TEST_CASE("tensor_stats matches a two-pass double computation and counts NaN/Inf", "[core]") {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(2.0f, 3.0f);
  std::vector<float> v(200000);
  for (auto& x : v) x = nd(rng);
  v[5] = std::numeric_limits<float>::quiet_NaN();
  v[7] = std::numeric_limits<float>::infinity();
  v[9] = -std::numeric_limits<float>::infinity();
  double sum = 0;
  int64_t n = 0;
  double mn = 1e30, mx = -1e30;
  for (float x : v) if (std::isfinite(x)) sum += x, ++n, mn = std::min<double>(mn, x), mx = std::max<double>(mx, x);
  double mean = sum / n, ss = 0;
  for (float x : v) if (std::isfinite(x)) ss += (x - mean) * (x - mean);
  auto t = HostTensor::from_f32("x", {400, 500}, v.data());
  TensorStats s = tensor_stats(t);
  CHECK(s.nan == 1);
  CHECK(s.inf == 2);
  CHECK(s.finite == n);
  CHECK(s.min == mn);
  CHECK(s.max == mx);
  // Both sides are double sums in a different order: agreement to 1e-12 relative.
  CHECK(s.mean == Approx(mean).epsilon(1e-12));
  CHECK(s.std == Approx(std::sqrt(ss / n)).epsilon(1e-12));
}

TEST_CASE("convert_dtype re-encodes floats and leaves integers alone", "[core]") {
  float vals[4] = {1.0f, -2.5f, 65504.0f, 1e-8f};
  auto t = HostTensor::from_f32("x", {4}, vals);
  auto h = convert_dtype(t, DType::F16);
  REQUIRE(h.dtype == DType::F16);
  auto back = to_f32(h);
  CHECK(back[0] == 1.0f);
  CHECK(back[1] == -2.5f);
  CHECK(back[2] == 65504.0f);
  CHECK(back[3] == f16_to_f32(f32_to_f16(1e-8f)));
  std::vector<uint8_t> ib = {1, 2, 3};
  auto it = HostTensor::owned("i", DType::U8, {3}, ib);
  CHECK(convert_dtype(it, DType::F16).dtype == DType::U8);
  CHECK_THROWS_AS(convert_dtype(t, DType::I8), InputError);
}

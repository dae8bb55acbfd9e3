// FP8 / MXFP8 / MXFP4 / NVFP4 (quant/fp_formats.h). The codes are decoded here by decoders written from
// the specifications, not by the library: OCP 8-bit Floating Point Specification (OFP8) rev 1.0 for E4M3,
// OCP Microscaling Formats (MX) v1.0 sections 5.3-5.4 for E2M1 and E8M0 and section 6.3 for the shared
// scale, and NVIDIA's NVFP4 description (E2M1 elements in groups of 16, an E4M3 group scale, a float32
// tensor scale; dequantization value * group_scale / global_scale as compressed-tensors stores it).
// Checks: hand-computed values (max, subnormals, ties to even, saturation), the ATen path against the
// per-element reference (identical codes and scales), bounds on the dequantized error, and the GGUF MXFP4
// blocks decoded as ggml describes them.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "mcompress/error.h"
#include "mcompress/export/gguf.h"
#include "mcompress/ggml_blocks.h"
#include "mcompress/quant/fp_formats.h"

using namespace mc;

namespace {

// ---- decoders from the specifications (bit fields -> value) ----
// OFP8 E4M3: S.EEEE.MMM, bias 7; E=0: subnormal 2^-6 * M/8; E=15, M=7: NaN; no infinities.
double spec_e4m3(uint8_t c) {
  const int s = (c >> 7) & 1, e = (c >> 3) & 0xF, m = c & 0x7;
  if (e == 0xF && m == 0x7) return std::numeric_limits<double>::quiet_NaN();
  const double mag = e == 0 ? std::pow(2.0, -6) * (m / 8.0) : std::pow(2.0, e - 7) * (1.0 + m / 8.0);
  return s ? -mag : mag;
}
// MX E2M1: S.EE.M, bias 1; E=0: subnormal 2^0 * M/2.
double spec_e2m1(uint8_t c) {
  const int s = (c >> 3) & 1, e = (c >> 1) & 0x3, m = c & 0x1;
  const double mag = e == 0 ? m / 2.0 : std::pow(2.0, e - 1) * (1.0 + m / 2.0);
  return s ? -mag : mag;
}
// MX E8M0: 2^(E-127), E=0xFF NaN.
double spec_e8m0(uint8_t c) { return c == 0xFF ? std::numeric_limits<double>::quiet_NaN() : std::pow(2.0, c - 127); }
// FP4 packing (compressed-tensors pack_fp4_to_uint8): element 2j in the low nibble of byte j.
uint8_t nibble(uint8_t byte, int64_t col) { return col % 2 == 0 ? (byte & 0xF) : (byte >> 4); }
uint8_t nibble(const at::Tensor& packed, int64_t row, int64_t col) {
  return nibble(packed[row][col / 2].item<uint8_t>(), col);
}

// Decodes a whole result with the spec decoders above (double), independently of FpQuantResult::dequantize.
std::vector<double> spec_decode(const FpQuantResult& r) {
  std::vector<double> out(static_cast<size_t>(r.rows * r.cols));
  const at::Tensor codes_t = r.codes.contiguous(), scales_t = r.scales.contiguous();
  const auto codes = codes_t.accessor<uint8_t, 2>();
  const bool float_scales = scales_t.scalar_type() == at::kFloat;
  const at::Tensor fs = float_scales ? scales_t.reshape({-1, scales_t.dim() == 1 ? 1 : scales_t.size(1)}) : at::zeros({1, 1});
  const at::Tensor bs = float_scales ? at::zeros({1, 1}, at::kByte) : scales_t;
  const auto fsc = fs.accessor<float, 2>();
  const auto bsc = bs.accessor<uint8_t, 2>();
  for (int64_t i = 0; i < r.rows; ++i) {
    for (int64_t j = 0; j < r.cols; ++j) {
      double v = 0;
      switch (r.scheme) {
        case FpScheme::fp8: v = spec_e4m3(codes[i][j]) * fsc[0][0]; break;
        case FpScheme::fp8_channel: v = spec_e4m3(codes[i][j]) * fsc[i][0]; break;
        case FpScheme::fp8_block: v = spec_e4m3(codes[i][j]) * fsc[i / 128][j / 128]; break;
        case FpScheme::mxfp8: v = spec_e4m3(codes[i][j]) * spec_e8m0(bsc[i][j / 32]); break;
        case FpScheme::mxfp4: v = spec_e2m1(nibble(codes[i][j / 2], j)) * spec_e8m0(bsc[i][j / 32]); break;
        case FpScheme::nvfp4:
          v = spec_e2m1(nibble(codes[i][j / 2], j)) * spec_e4m3(bsc[i][j / 16]) / r.global_scale.item<float>();
          break;
      }
      out[static_cast<size_t>(i * r.cols + j)] = v;
    }
  }
  return out;
}

const std::vector<FpScheme> kAllSchemes = {FpScheme::fp8,   FpScheme::fp8_channel, FpScheme::fp8_block,
                                           FpScheme::mxfp8, FpScheme::mxfp4,       FpScheme::nvfp4};

// Weights at a trained layer's scale with outliers, an all-zero row, a row of tiny values (E4M3
// subnormals after scaling) and a row of exact ties.
at::Tensor test_weights(int64_t out, int64_t in, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  at::Tensor w = at::randn({out, in}, gen, at::kFloat).mul_(0.02);
  at::Tensor outliers = at::rand({out, in}, gen, at::kFloat).lt(0.01).to(at::kFloat);
  w.add_(outliers.mul_(at::randn({out, in}, gen, at::kFloat)).mul_(0.3));
  w[0].zero_();
  w[1].mul_(1e-6);
  // Row 2: multiples of 1/16 up to 6 (E2M1 ties at 0.25, 0.75, 1.25, ... with a group amax of 6).
  w[2].copy_(at::arange(in, at::kFloat).remainder(97).mul(1.0f / 16).sub(3.0f));
  w[2][0] = 6.0f;
  return w;
}

}  // namespace

TEST_CASE("E4M3 codec: OFP8 values, subnormals, ties to even, saturation", "[fp]") {
  for (int c = 0; c < 256; ++c) {
    const double want = spec_e4m3(static_cast<uint8_t>(c));
    if (std::isnan(want)) {
      CHECK(std::isnan(e4m3_to_float(static_cast<uint8_t>(c))));
      continue;
    }
    CHECK(e4m3_to_float(static_cast<uint8_t>(c)) == want);
    CHECK(float_to_e4m3(static_cast<float>(want)) == c);  // every value encodes to its own code
  }
  CHECK(spec_e4m3(0x7E) == 448.0);
  CHECK(spec_e4m3(0x01) == 0.001953125);
  CHECK(float_to_e4m3(448.0f) == 0x7E);
  CHECK(float_to_e4m3(-448.0f) == 0xFE);
  CHECK(float_to_e4m3(0.001953125f) == 0x01);
  CHECK(float_to_e4m3(1e9f) == 0x7E);                // saturates, no infinity
  CHECK(float_to_e4m3(464.0f) == 0x7E);              // halfway to 480 (not a value): 448
  CHECK(float_to_e4m3(0.0009765625f) == 0x00);       // 2^-10, halfway 0 .. 2^-9: the even code 0
  CHECK(float_to_e4m3(3 * 0.0009765625f) == 0x02);   // halfway 2^-9 .. 2^-8: the even code 2
  CHECK(float_to_e4m3(1.0625f) == 0x38);             // halfway 1 (0x38) .. 1.125 (0x39)
  CHECK(float_to_e4m3(1.1875f) == 0x3A);             // halfway 1.125 (0x39) .. 1.25 (0x3A)
  CHECK(float_to_e4m3(std::nanf("")) == 0x7F);
}

TEST_CASE("E2M1 and E8M0 codecs: MX values, ties to even, saturation", "[fp]") {
  const double values[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  for (int c = 0; c < 16; ++c) {
    CHECK(spec_e2m1(static_cast<uint8_t>(c)) == (c & 8 ? -values[c & 7] : values[c & 7]));
    CHECK(e2m1_to_float(static_cast<uint8_t>(c)) == spec_e2m1(static_cast<uint8_t>(c)));
  }
  // Ties go to the code with mantissa bit 0.
  CHECK(float_to_e2m1(0.25f) == 0);
  CHECK(float_to_e2m1(0.75f) == 2);
  CHECK(float_to_e2m1(1.25f) == 2);
  CHECK(float_to_e2m1(1.75f) == 4);
  CHECK(float_to_e2m1(2.5f) == 4);
  CHECK(float_to_e2m1(3.5f) == 6);
  CHECK(float_to_e2m1(5.0f) == 6);
  CHECK(float_to_e2m1(-5.0f) == 0xE);
  CHECK(float_to_e2m1(7.0f) == 7);    // saturates at 6
  CHECK(float_to_e2m1(-100.0f) == 0xF);
  CHECK(e8m0_to_float(127) == 1.0f);
  CHECK(e8m0_to_float(0) == spec_e8m0(0));
  CHECK(e8m0_to_float(254) == spec_e8m0(254));
  CHECK(std::isnan(e8m0_to_float(0xFF)));
}

TEST_CASE("fp8 per tensor with scale 1: the ATen encoder on hand-computed codes", "[fp]") {
  // amax 448 gives the scale 448/448 = 1, so the codes are the elements' own encodings.
  const std::vector<float> x = {448, -448, 0.001953125f, 0.0009765625f, 3 * 0.0009765625f, 1.0625f, 1.1875f, -0.0f};
  const std::vector<int> want = {0x7E, 0xFE, 0x01, 0x00, 0x02, 0x38, 0x3A, 0x80};
  const at::Tensor w = at::from_blob(const_cast<float*>(x.data()), {1, 8}, at::kFloat).clone();
  const FpQuantResult r = fp_quantize(w, FpScheme::fp8);
  CHECK(r.scales.item<float>() == 1.0f);
  for (size_t j = 0; j < x.size(); ++j) CHECK(r.codes[0][static_cast<int64_t>(j)].item<uint8_t>() == want[j]);
}

TEST_CASE("MXFP4: OCP shared exponent, packing and values by hand", "[fp]") {
  // Group 0: amax 6 -> X = floor(log2 6) - 2 = 0 (E8M0 127). Group 1: amax 0.75 -> X = -1 - 2 = -3 (124),
  // its elements are w * 8: 0.75 -> 6, 0.1 -> 0.8 -> 1 (nearest), 0.03125 -> 0.25 -> 0 (tie to even).
  at::Tensor w = at::zeros({1, 64}, at::kFloat);
  w[0][0] = 6.0f;
  w[0][1] = -1.25f;  // tie 1 .. 1.5: 1 (code 0xA)
  w[0][2] = 5.0f;    // tie 4 .. 6: 4 (code 6)
  w[0][32] = 0.75f;
  w[0][33] = 0.1f;
  w[0][34] = 0.03125f;
  const FpQuantResult r = fp_quantize(w, FpScheme::mxfp4);
  REQUIRE(r.codes.sizes() == at::IntArrayRef({1, 32}));
  CHECK(r.scales[0][0].item<uint8_t>() == 127);
  CHECK(r.scales[0][1].item<uint8_t>() == 124);
  CHECK(r.codes[0][0].item<uint8_t>() == (0x7 | (0xA << 4)));  // elements 0 (low nibble) and 1 (high)
  CHECK(nibble(r.codes, 0, 2) == 6);
  CHECK(nibble(r.codes, 0, 32) == 7);
  CHECK(nibble(r.codes, 0, 33) == 2);
  CHECK(nibble(r.codes, 0, 34) == 0);
  const std::vector<double> v = spec_decode(r);
  CHECK(v[0] == 6.0);
  CHECK(v[1] == -1.0);
  CHECK(v[2] == 4.0);
  CHECK(v[32] == 0.75);
  CHECK(v[33] == 0.125);
  // MXFP8: amax 6 -> X = 2 - 8 = -6 (E8M0 121); 6 * 64 = 384 is an E4M3 value (0x7C).
  const FpQuantResult r8 = fp_quantize(w, FpScheme::mxfp8);
  CHECK(r8.scales[0][0].item<uint8_t>() == 121);
  CHECK(r8.codes[0][0].item<uint8_t>() == 0x7C);
}

TEST_CASE("NVFP4: global scale, E4M3 group scales and values by hand", "[fp]") {
  // amax 6 -> G = 448 * 6 / 6 = 448. Group 0 (amax 6): S = e4m3(6/6 * 448) = 448 (0x7E), effective 1.
  // Group 1 (amax 3): S = e4m3(224) = 0x76 (1.75 * 2^7), effective 0.5: 3 -> 6, 0.6 -> 1.2 -> 1.
  // Group 2 all zero: S = 0 becomes 0.125 (0x20).
  at::Tensor w = at::zeros({1, 48}, at::kFloat);
  w[0][0] = 6.0f;
  w[0][1] = -2.5f;  // tie 2 .. 3: 2
  w[0][16] = 3.0f;
  w[0][17] = 0.6f;
  const FpQuantResult r = fp_quantize(w, FpScheme::nvfp4);
  CHECK(r.global_scale.item<float>() == 448.0f);
  CHECK(r.scales[0][0].item<uint8_t>() == 0x7E);
  CHECK(r.scales[0][1].item<uint8_t>() == 0x76);
  CHECK(r.scales[0][2].item<uint8_t>() == 0x20);
  CHECK(nibble(r.codes, 0, 0) == 7);
  CHECK(nibble(r.codes, 0, 1) == 0xC);
  CHECK(nibble(r.codes, 0, 16) == 7);
  CHECK(nibble(r.codes, 0, 17) == 2);
  const std::vector<double> v = spec_decode(r);
  CHECK(v[0] == 6.0);
  CHECK(v[1] == -2.0);
  CHECK(v[16] == 3.0);
  CHECK(v[17] == 0.5);
}

TEST_CASE("FP formats: the ATen path equals the per-element reference", "[fp]") {
  // 200 x 320: the last 128-row block is partial; 64 x 172 (stories260K's w2): no group size divides a row.
  for (const at::Tensor& w : {test_weights(200, 320, 7), test_weights(64, 172, 8)})
  for (FpScheme s : kAllSchemes) {
    INFO(fp_scheme_name(s) << " " << w.sizes());
    const FpQuantResult fast = fp_quantize(w, s), ref = fp_quantize_ref(w, s);
    CHECK(at::equal(fast.codes, ref.codes));
    CHECK(at::equal(fast.scales, ref.scales));
    if (s == FpScheme::nvfp4) CHECK(at::equal(fast.global_scale, ref.global_scale));
    // bf16 input: the same as its float32 widening
    const at::Tensor wb = w.to(at::kBFloat16);
    CHECK(at::equal(fp_quantize(wb, s).codes, fp_quantize_ref(wb.to(at::kFloat), s).codes));
  }
}

TEST_CASE("FP formats: dequantize equals the spec decoding, errors within the format's bound", "[fp]") {
  const at::Tensor w = test_weights(136, 172, 11);  // a partial block, groups and a shorter last group
  for (FpScheme s : kAllSchemes) {
    INFO(fp_scheme_name(s));
    const FpQuantResult r = fp_quantize(w, s);
    const std::vector<double> v = spec_decode(r);
    const at::Tensor dq = r.dequantize().contiguous();
    const float* d = dq.data_ptr<float>();
    const float* x = w.data_ptr<float>();
    int64_t mismatches = 0, out_of_bound = 0;
    const double tensor_amax = w.abs().max().item<float>();
    const int64_t g = s == FpScheme::nvfp4 ? 16 : 32;
    for (int64_t i = 0; i < r.rows; ++i) {
      for (int64_t j = 0; j < r.cols; ++j) {
        const size_t k = static_cast<size_t>(i * r.cols + j);
        if (static_cast<double>(d[k]) != static_cast<float>(v[k])) ++mismatches;
        const double err = std::fabs(static_cast<double>(x[k]) - v[k]);
        // Bounds from the weights alone (not from the stored scales, which they check too).
        double bound = 0;
        const int64_t g0 = j / g * g;
        const double gmax = w[i].slice(0, g0, g0 + g).abs().max().item<float>();
        if (s == FpScheme::fp8 || s == FpScheme::fp8_channel || s == FpScheme::fp8_block) {
          // E4M3 keeps 3 mantissa bits: half a step is at most |x| / 16; below the smallest normal, half a
          // subnormal step is 2^-10 of the scale (the scale block's amax / 448).
          const double block_amax = s == FpScheme::fp8 ? tensor_amax
                                    : s == FpScheme::fp8_channel
                                        ? w[i].abs().max().item<float>()
                                        : w.slice(0, i / 128 * 128, i / 128 * 128 + 128).slice(1, j / 128 * 128, j / 128 * 128 + 128).abs().max().item<float>();
          bound = std::fabs(x[k]) / 16 + block_amax / 448 / 1024;
        } else if (s == FpScheme::mxfp8) {
          // As fp8 with the unit 2^X <= amax / 256, and saturation of [448, 512) units at 448: at most |x| / 8.
          bound = std::fabs(x[k]) / 8 + gmax / 256 / 1024;
        } else if (s == FpScheme::mxfp4) {
          // E2M1's widest step is 2 units (4 .. 6): half a step is 1 unit; amax maps to [4, 8) units and
          // saturation above 6 loses up to 2 units; 2^X <= amax / 4, so at most amax / 2.
          bound = gmax / 2;
        } else {
          // NVFP4: one unit S / G (half the widest step); S is amax / 6 * G rounded to E4M3 (at most 1/16 up,
          // saturation of at most 6 / (1 - 1/16) is within a unit), or off by half a subnormal step 2^-10.
          bound = gmax / 6 * 1.07 + 6 * tensor_amax / 2688 / 1024;
        }
        if (err > bound * (1 + 1e-6)) ++out_of_bound;
      }
    }
    CHECK(mismatches == 0);
    CHECK(out_of_bound == 0);
  }
}

TEST_CASE("FP formats refuse bad weights in one line", "[fp]") {
  CHECK_THROWS_AS(parse_fp_scheme("fp6"), InputError);
  CHECK(parse_fp_scheme("nvfp4") == FpScheme::nvfp4);
  CHECK_THROWS_AS(fp_quantize(at::ones({4, 41}), FpScheme::mxfp4), InputError);   // odd: FP4 pairs per byte
  CHECK_THROWS_AS(fp_quantize_ref(at::ones({4, 25}), FpScheme::nvfp4), InputError);
  CHECK_NOTHROW(fp_quantize(at::ones({4, 41}), FpScheme::mxfp8));  // a shorter last group
  at::Tensor w = at::ones({4, 32});
  w[1][3] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_AS(fp_quantize(w, FpScheme::fp8), InputError);
  CHECK_THROWS_AS(fp_quantize_ref(w, FpScheme::fp8), InputError);
  CHECK_NOTHROW(fp_quantize(at::ones({4, 40}), FpScheme::fp8_block));
}

TEST_CASE("GGUF MXFP4 blocks: ggml's layout decodes to the mxfp4 quantizer's values", "[fp]") {
  // ggml (ggml-common.h block_mxfp4, ggml-quants.c dequantize_row_mxfp4), written here: byte 0 is the E8M0
  // exponent e, bytes 1..16 hold element j in the low nibble and element j + 16 in the high nibble;
  // value = kvalues_mxfp4[code] * 2^(e - 128) with kvalues_mxfp4 = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, ...}.
  const int kvalues[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
  at::Tensor w = test_weights(4, 96, 21);
  w[3][40] = 1e-30f;  // a group of tiny values: the smallest exponents
  const std::vector<uint8_t> blocks = encode_matrix(DType::MXFP4, w.data_ptr<float>(), 4, 96);
  REQUIRE(blocks.size() == size_t(4 * 3 * 17));
  const FpQuantResult q = fp_quantize(w, FpScheme::mxfp4);
  const at::Tensor want = q.dequantize();
  std::vector<float> via_reader(4 * 96);
  dequantize_blocks(DType::MXFP4, blocks.data(), 4 * 96, via_reader.data());
  int64_t mismatches = 0;
  for (int64_t r = 0; r < 4; ++r) {
    for (int64_t b = 0; b < 3; ++b) {
      const uint8_t* blk = blocks.data() + (r * 3 + b) * 17;
      CHECK(blk[0] == q.scales[r][b].item<uint8_t>());
      for (int j = 0; j < 32; ++j) {
        const int code = j < 16 ? (blk[1 + j] & 15) : (blk[1 + j - 16] >> 4);
        const double v = kvalues[code] * std::pow(2.0, int(blk[0]) - 128);
        const float expect = want[r][b * 32 + j].item<float>();
        if (v != double(expect) || via_reader[size_t(r * 96 + b * 32 + j)] != expect) ++mismatches;
      }
    }
  }
  CHECK(mismatches == 0);
  CHECK_THROWS_AS(encode_matrix(DType::MXFP4, w.data_ptr<float>(), 8, 48), InputError);  // 48: not whole blocks
}

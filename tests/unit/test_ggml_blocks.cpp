// ggml block dequantization against blocks built by hand from the layouts in ggml-common.h, and the
// Q8_0/Q4_0 reference quantizers against their error bounds.
#include <cmath>
#include <cstring>
#include <random>

#include "mcompress/error.h"
#include "mcompress/ggml_blocks.h"
#include "mcompress/half.h"
#include "test_utils.h"

using mc::DType;

namespace {

void put_f16(std::vector<uint8_t>& b, size_t at, float v) {
  uint16_t h = mc::f32_to_f16(v);
  std::memcpy(b.data() + at, &h, 2);
}

std::vector<float> dequant(DType t, const std::vector<uint8_t>& b, int64_t n) {
  std::vector<float> y(static_cast<size_t>(n));
  mc::dequantize_blocks(t, b.data(), n, y.data());
  return y;
}

// Q4_K/Q5_K scales: 8 six-bit scales and mins packed into 12 bytes, written from the format
// description (sub-blocks 0-3: low 6 bits of bytes j and j+4; 4-7: nibbles of byte j+4, top two bits
// in the top bits of bytes j-4 and j).
void pack_k4_scales(uint8_t* q, const int sc[8], const int m[8]) {
  std::memset(q, 0, 12);
  for (int j = 0; j < 4; ++j) {
    q[j] = uint8_t(sc[j]);
    q[j + 4] = uint8_t(m[j]);
  }
  for (int j = 4; j < 8; ++j) {
    q[j + 4] = uint8_t((sc[j] & 0x0F) | ((m[j] & 0x0F) << 4));
    q[j - 4] |= uint8_t((sc[j] >> 4) << 6);
    q[j] |= uint8_t((m[j] >> 4) << 6);
  }
}

const int kSc[8] = {1, 2, 3, 4, 33, 45, 63, 17};
const int kMin[8] = {0, 1, 5, 7, 40, 63, 2, 20};

}  // namespace

TEST_CASE("Q8_0 blocks dequantize to q * d", "[ggml]") {
  std::vector<uint8_t> b(2 * 34);
  put_f16(b, 0, 0.5f);
  for (int j = 0; j < 32; ++j) b[2 + j] = uint8_t(int8_t(j - 16));
  put_f16(b, 34, -0.25f);
  b[36] = uint8_t(int8_t(127));
  b[37] = uint8_t(int8_t(-128));
  auto y = dequant(DType::Q8_0, b, 64);
  for (int j = 0; j < 32; ++j) CHECK(y[j] == (j - 16) * 0.5f);
  CHECK(y[32] == -31.75f);  // 127 * -0.25
  CHECK(y[33] == 32.0f);    // -128 * -0.25
  CHECK(y[34] == 0.0f);
}

TEST_CASE("Q4_0/Q4_1/Q5_0/Q5_1 blocks: low nibbles first, then high nibbles", "[ggml]") {
  // Q4_0: d = 2, qs[j] = j | (15 - j) << 4 -> value j = (j - 8) * 2, value j + 16 = (7 - j) * 2.
  std::vector<uint8_t> q40(18);
  put_f16(q40, 0, 2.0f);
  for (int j = 0; j < 16; ++j) q40[2 + j] = uint8_t(j | ((15 - j) << 4));
  auto y = dequant(DType::Q4_0, q40, 32);
  for (int j = 0; j < 16; ++j) {
    CHECK(y[j] == float((j - 8) * 2));
    CHECK(y[j + 16] == float((7 - j) * 2));
  }
  // Q4_1: d = 0.5, m = -1: value = q * 0.5 - 1.
  std::vector<uint8_t> q41(20);
  put_f16(q41, 0, 0.5f);
  put_f16(q41, 2, -1.0f);
  for (int j = 0; j < 16; ++j) q41[4 + j] = uint8_t(j | ((15 - j) << 4));
  y = dequant(DType::Q4_1, q41, 32);
  CHECK(y[0] == -1.0f);
  CHECK(y[15] == 6.5f);
  CHECK(y[16] == 6.5f);  // high nibble of qs[0] = 15
  CHECK(y[31] == -1.0f);
  // Q5_0: d = 1, qh bit 0 (value 0) and bit 19 (value 19 = high nibble of qs[3]) set.
  std::vector<uint8_t> q50(22);
  put_f16(q50, 0, 1.0f);
  const uint32_t qh = (1u << 0) | (1u << 19);
  std::memcpy(q50.data() + 2, &qh, 4);
  for (int j = 0; j < 16; ++j) q50[6 + j] = uint8_t(j | ((15 - j) << 4));
  y = dequant(DType::Q5_0, q50, 32);
  CHECK(y[0] == 0.0f);     // (0 | 16) - 16
  CHECK(y[1] == -15.0f);   // 1 - 16
  CHECK(y[19] == 12.0f);   // (12 | 16) - 16
  CHECK(y[20] == -5.0f);   // 11 - 16
  // Q5_1: d = 0.25, m = 1, same qh/qs: value = q * 0.25 + 1.
  std::vector<uint8_t> q51(24);
  put_f16(q51, 0, 0.25f);
  put_f16(q51, 2, 1.0f);
  std::memcpy(q51.data() + 4, &qh, 4);
  for (int j = 0; j < 16; ++j) q51[8 + j] = uint8_t(j | ((15 - j) << 4));
  y = dequant(DType::Q5_1, q51, 32);
  CHECK(y[0] == 5.0f);     // 16 * 0.25 + 1
  CHECK(y[1] == 1.25f);    // 1 * 0.25 + 1
  CHECK(y[19] == 8.0f);    // 28 * 0.25 + 1
}

TEST_CASE("Q4_K block: 6-bit packed scales and mins", "[ggml]") {
  std::vector<uint8_t> b(144);
  put_f16(b, 0, 1.0f);   // d
  put_f16(b, 2, 0.5f);   // dmin
  pack_k4_scales(b.data() + 4, kSc, kMin);
  for (int i = 0; i < 128; ++i) b[16 + i] = uint8_t((i % 16) | ((15 - i % 16) << 4));
  auto y = dequant(DType::Q4_K, b, 256);
  // Sub-block s = 2p (+1): bytes 32p..32p+31, low (high) nibbles. value = d*sc[s]*q - dmin*m[s].
  for (int s = 0; s < 8; ++s)
    for (int l = 0; l < 32; ++l) {
      const int q = (s % 2 == 0) ? l % 16 : 15 - l % 16;
      INFO("sub-block " << s << " value " << l);
      CHECK(y[32 * s + l] == float(kSc[s] * q) - 0.5f * float(kMin[s]));
    }
  CHECK(y[0] == 0.0f);              // 1*0 - 0.5*0
  CHECK(y[33] == 27.5f);            // 2*14 - 0.5*1
  CHECK(y[4 * 32 + 5] == 145.0f);   // 33*5 - 0.5*40
  CHECK(y[5 * 32 + 31] == -31.5f);  // 45*0 - 0.5*63
  CHECK(y[7 * 32 + 2] == 211.0f);   // 17*13 - 0.5*20
}

TEST_CASE("Q5_K block: 5th bits in qh, bit 2p/2p+1 for the pair p of sub-blocks", "[ggml]") {
  std::vector<uint8_t> b(176);
  put_f16(b, 0, 1.0f);
  put_f16(b, 2, 0.5f);
  pack_k4_scales(b.data() + 4, kSc, kMin);
  for (int l = 0; l < 32; ++l) b[16 + l] = (l % 2 == 0) ? 0x55 : 0x00;  // even l: low-nibble sub-blocks +16
  for (int i = 0; i < 128; ++i) b[48 + i] = uint8_t((i % 16) | ((15 - i % 16) << 4));
  auto y = dequant(DType::Q5_K, b, 256);
  CHECK(y[4 * 32 + 6] == 706.0f);   // 33*(6+16) - 0.5*40
  CHECK(y[4 * 32 + 5] == 145.0f);   // 33*5 - 0.5*40
  CHECK(y[0] == 16.0f);             // 1*(0+16) - 0
  CHECK(y[32 + 0] == 29.5f);        // high nibble sub-block 1: 2*15 - 0.5*1 (no 5th bit)
}

TEST_CASE("Q6_K block: ql nibbles, qh 2-bit pairs, int8 scales", "[ggml]") {
  std::vector<uint8_t> b(210, 0);
  for (int i = 0; i < 128; ++i) b[i] = 0x21;           // ql: low nibble 1, high nibble 2
  for (int i = 0; i < 64; ++i) b[128 + i] = 0xE4;      // qh: 2-bit fields 0, 1, 2, 3
  for (int i = 0; i < 16; ++i) b[192 + i] = uint8_t(int8_t(i - 8));
  put_f16(b, 208, 0.5f);
  auto y = dequant(DType::Q6_K, b, 256);
  // value (n, k, l) at 128n + 32k + l: q = low4 | (qh >> 2k & 3) << 4; scale index 8n + l/16 + 2k.
  // q for k = 0..3: 1, 17, 34, 50 -> q - 32 = -31, -15, 2, 18.
  const int qm32[4] = {-31, -15, 2, 18};
  for (int n = 0; n < 2; ++n)
    for (int k = 0; k < 4; ++k)
      for (int l = 0; l < 32; ++l)
        CHECK(y[128 * n + 32 * k + l] == 0.5f * float((8 * n + l / 16 + 2 * k) - 8) * float(qm32[k]));
  CHECK(y[0] == 124.0f);               // 0.5 * -8 * -31
  CHECK(y[128 + 96 + 20] == 63.0f);    // 0.5 * 7 * 18
  CHECK(y[64 + 17] == -3.0f);          // 0.5 * -3 * 2
}

TEST_CASE("reference quantizers: Q8_0 and Q4_0 error bounds", "[ggml]") {
  std::mt19937 rng(1234);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const int64_t n = 32 * 64;
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  x[5] = 0.0f;
  std::fill(x.begin() + 64, x.begin() + 96, 0.0f);  // an all-zero block: d = 0, values 0
  for (DType t : {DType::Q8_0, DType::Q4_0}) {
    std::vector<uint8_t> q(*mc::dtype_nbytes(t, n));
    mc::quantize_blocks_ref(t, x.data(), n, q.data());
    auto y = dequant(t, q, n);
    for (int64_t blk = 0; blk < n / 32; ++blk) {
      const float* xb = x.data() + blk * 32;
      float amax = 0, max = 0;
      for (int j = 0; j < 32; ++j)
        if (std::fabs(xb[j]) > amax) amax = std::fabs(xb[j]), max = xb[j];
      const float d32 = t == DType::Q8_0 ? amax / 127.0f : max / -8.0f;  // the scale before f16 rounding
      uint16_t h;
      std::memcpy(&h, q.data() + blk * mc::dtype_info(t).block_bytes, 2);
      const float d16 = mc::f16_to_f32(h);
      // Rounding to the nearest quant costs <= |d|/2; storing d as f16 adds |q| * |d - d16| (|q| <= 127
      // resp. 8). Q4_0 clamps x/d = +8 to quant 15, an error of up to |d|.
      const float qmax = t == DType::Q8_0 ? 127.0f : 8.0f;
      for (int j = 0; j < 32; ++j) {
        const bool clamped = t == DType::Q4_0 && d32 != 0 && xb[j] / d32 > 7.5f;
        const float bound = (clamped ? 1.0f : 0.5f) * std::fabs(d32) + qmax * std::fabs(d32 - d16) + 1e-6f;
        INFO(mc::dtype_name(t) << " block " << blk << " value " << j << " x " << xb[j]);
        CHECK(std::fabs(y[blk * 32 + j] - xb[j]) <= bound);
      }
    }
    for (int j = 64; j < 96; ++j) CHECK(y[j] == 0.0f);
  }
}

TEST_CASE("Q8_0 reference quantizer matches ggml on a hand-computed block", "[ggml]") {
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = float(j) - 16.0f;  // amax 16 -> d = 16/127
  std::vector<uint8_t> q(34);
  mc::quantize_blocks_ref(DType::Q8_0, x.data(), 32, q.data());
  uint16_t h;
  std::memcpy(&h, q.data(), 2);
  CHECK(h == mc::f32_to_f16(16.0f / 127.0f));
  CHECK(int8_t(q[2]) == -127);  // -16 * 127/16
  CHECK(int8_t(q[2 + 17]) == 8);  // 1 * 127/16 = 7.94 -> 8
  CHECK(int8_t(q[2 + 18]) == 16); // 2 * 7.9375 = 15.875 -> 16
  CHECK(int8_t(q[2 + 16]) == 0);
}

TEST_CASE("ggml block functions reject bad arguments", "[ggml]") {
  std::vector<uint8_t> b(64);
  std::vector<float> y(64);
  CHECK_THROWS_AS(mc::dequantize_blocks(DType::Q8_0, b.data(), 33, y.data()), mc::InputError);
  CHECK_THROWS_AS(mc::dequantize_blocks(DType::F32, b.data(), 4, y.data()), mc::InputError);
  CHECK_THROWS_AS(mc::quantize_blocks_ref(DType::Q4_K, y.data(), 256, b.data()), mc::InputError);
  CHECK_THROWS_AS(mc::quantize_blocks_ref(DType::Q8_0, y.data(), 31, b.data()), mc::InputError);
}

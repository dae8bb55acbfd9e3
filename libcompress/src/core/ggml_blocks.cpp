// ggml block formats (ggml-common.h), dequantized as ggml-quants.c dequantize_row_* does.
// Every block starts at a byte offset that need not be aligned, so all multi-byte fields are read
// with memcpy (little-endian host assumed, as everywhere in mcompress).
#include "mcompress/ggml_blocks.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "mcompress/error.h"
#include "mcompress/half.h"

namespace mc {

namespace {

constexpr int kQK = 32;    // values per block of the "legacy" formats Q4_0 .. Q8_0
constexpr int kQK_K = 256; // values per K-quant super-block

inline float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}
inline void store_f16(uint8_t* p, float v) {
  uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

// block_q4_0: f16 d | u8 qs[16]. Value j (< 16) is the low nibble of qs[j], value j + 16 the high one.
void dequant_q4_0(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = float((qs[j] & 0x0F) - 8) * d;
    y[j + kQK / 2] = float((qs[j] >> 4) - 8) * d;
  }
}

// block_q4_1: f16 d | f16 m | u8 qs[16]; value = q * d + m.
void dequant_q4_1(const uint8_t* b, float* y) {
  const float d = load_f16(b), m = load_f16(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = float(qs[j] & 0x0F) * d + m;
    y[j + kQK / 2] = float(qs[j] >> 4) * d + m;
  }
}

// block_q5_0: f16 d | u8 qh[4] (bit j = 5th bit of value j) | u8 qs[16]; value = (q - 16) * d.
void dequant_q5_0(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < kQK / 2; ++j) {
    const int h0 = int((qh >> j) & 1u) << 4;
    const int h1 = int((qh >> (j + 16)) & 1u) << 4;
    y[j] = float(((qs[j] & 0x0F) | h0) - 16) * d;
    y[j + kQK / 2] = float(((qs[j] >> 4) | h1) - 16) * d;
  }
}

// block_q5_1: f16 d | f16 m | u8 qh[4] | u8 qs[16]; value = q * d + m.
void dequant_q5_1(const uint8_t* b, float* y) {
  const float d = load_f16(b), m = load_f16(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < kQK / 2; ++j) {
    const int h0 = int((qh >> j) & 1u) << 4;
    const int h1 = int((qh >> (j + 16)) & 1u) << 4;
    y[j] = float((qs[j] & 0x0F) | h0) * d + m;
    y[j + kQK / 2] = float((qs[j] >> 4) | h1) * d + m;
  }
}

// block_q8_0: f16 d | i8 qs[32]; value = q * d.
void dequant_q8_0(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  for (int j = 0; j < kQK; ++j) y[j] = float(static_cast<int8_t>(b[2 + j])) * d;
}

// The 12 scale bytes of Q4_K/Q5_K hold 8 six-bit scales and 8 six-bit mins (ggml get_scale_min_k4):
// sub-blocks 0..3 use the low 6 bits of bytes j (scale) and j+4 (min); sub-blocks 4..7 take their low
// 4 bits from byte j+4 (scale: low nibble, min: high nibble) and their top 2 bits from the top 2 bits
// of bytes j-4 (scale) and j (min).
void scale_min_k4(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// block_q4_K: f16 d | f16 dmin | u8 scales[12] | u8 qs[128]. Eight sub-blocks of 32; each 32 bytes of
// qs hold two sub-blocks (low nibbles first, then high nibbles); value = d*sc * q - dmin*m.
void dequant_q4_k(const uint8_t* b, float* y) {
  const float d = load_f16(b), dmin = load_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  for (int j = 0; j < 4; ++j) {
    int sc0, m0, sc1, m1;
    scale_min_k4(2 * j, scales, &sc0, &m0);
    scale_min_k4(2 * j + 1, scales, &sc1, &m1);
    const float d0 = d * float(sc0), mm0 = dmin * float(m0);
    const float d1 = d * float(sc1), mm1 = dmin * float(m1);
    for (int l = 0; l < 32; ++l) y[l] = d0 * float(q[l] & 0x0F) - mm0;
    for (int l = 0; l < 32; ++l) y[32 + l] = d1 * float(q[l] >> 4) - mm1;
    q += 32;
    y += 64;
  }
}

// block_q5_K: f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128]. As Q4_K, plus a 5th bit per
// value: for the pair of sub-blocks j, bit 2j of qh[l] belongs to the low-nibble value l and bit 2j+1
// to the high-nibble value l.
void dequant_q5_k(const uint8_t* b, float* y) {
  const float d = load_f16(b), dmin = load_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* ql = b + 48;
  for (int j = 0; j < 4; ++j) {
    int sc0, m0, sc1, m1;
    scale_min_k4(2 * j, scales, &sc0, &m0);
    scale_min_k4(2 * j + 1, scales, &sc1, &m1);
    const float d0 = d * float(sc0), mm0 = dmin * float(m0);
    const float d1 = d * float(sc1), mm1 = dmin * float(m1);
    const uint8_t u0 = uint8_t(1u << (2 * j)), u1 = uint8_t(1u << (2 * j + 1));
    for (int l = 0; l < 32; ++l) y[l] = d0 * float((ql[l] & 0x0F) + ((qh[l] & u0) ? 16 : 0)) - mm0;
    for (int l = 0; l < 32; ++l) y[32 + l] = d1 * float((ql[l] >> 4) + ((qh[l] & u1) ? 16 : 0)) - mm1;
    ql += 32;
    y += 64;
  }
}

// block_q6_K: u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d. Sixteen sub-blocks of 16 values; each
// half (128 values) uses 64 bytes of ql, 32 of qh and 8 scales. Value n*128 + 32*k + l (k = 0..3)
// takes low 4 bits from ql[l + 32*(k&1)] (low nibble for k < 2, high for k >= 2), high 2 bits from
// qh[l] >> 2k, and is (q - 32) * d * scales[l/16 + 2k].
void dequant_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = load_f16(b + 208);
  for (int n = 0; n < kQK_K; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * float(sc[is + 0]) * float(q1);
      y[l + 32] = d * float(sc[is + 2]) * float(q2);
      y[l + 64] = d * float(sc[is + 4]) * float(q3);
      y[l + 96] = d * float(sc[is + 6]) * float(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

// MXFP4: ggml's kvalues_mxfp4 are the E2M1 values doubled, scaled by 2^(e-128) (GGML_E8M0_TO_FP32_HALF):
// the same as e2m1 * 2^(e-127).
void dequant_mxfp4(const uint8_t* b, float* y) {
  static const float kE2M1[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};
  const float d = std::ldexp(1.0f, int(b[0]) - 127);
  for (int j = 0; j < 16; ++j) {
    y[j] = kE2M1[b[1 + j] & 15] * d;
    y[j + 16] = kE2M1[b[1 + j] >> 4] * d;
  }
}

// block_q2_K: u8 scales[16] | u8 qs[64] | f16 d | f16 dmin. Sixteen sub-blocks of 16; scales[j] holds
// sub-block j's scale (low nibble) and min (high nibble). Each half (128 values) uses 32 bytes of qs: value
// n*128 + 32*k + l (k = 0..3, l < 32) is bits 2k..2k+1 of qs[l]; value = d*sc * q - dmin*m.
void dequant_q2_k(const uint8_t* b, float* y) {
  const uint8_t* sc = b;
  const uint8_t* q = b + 16;
  const float d = load_f16(b + 80), dmin = load_f16(b + 82);
  for (int n = 0; n < 2; ++n, q += 32) {
    for (int k = 0; k < 4; ++k) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t s = sc[n * 8 + 2 * k + l / 16];
        y[n * 128 + 32 * k + l] = d * float(s & 0x0F) * float((q[l] >> (2 * k)) & 3) - dmin * float(s >> 4);
      }
    }
  }
}

// Q3_K's sixteen 6-bit scales in 12 bytes: the low 4 bits of scale j are the low (j < 8) or high (j >= 8)
// nibble of byte j % 8, its top 2 bits are bits 2*(j/4) of byte 8 + j % 4; the scale is that minus 32.
int q3k_scale(const uint8_t* s, int j) {
  const int lo = j < 8 ? (s[j] & 0x0F) : (s[j - 8] >> 4);
  const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
  return (lo | (hi << 4)) - 32;
}

// block_q3_K: u8 hmask[32] | u8 qs[64] | u8 scales[12] | f16 d. Value n*128 + 32*k + l: low 2 bits as Q2_K's
// (bits 2k of qs[32n + l]), the third bit is bit 4n + k of hmask[l]; q = low + 4*bit - 4 (-4..3), value =
// d * scale_j * q with j = (n*128 + 32*k + l) / 16.
void dequant_q3_k(const uint8_t* b, float* y) {
  const uint8_t* hm = b;
  const uint8_t* qs = b + 32;
  const uint8_t* sc = b + 96;
  const float d = load_f16(b + 108);
  for (int i = 0; i < kQK_K; ++i) {
    const int n = i / 128, k = (i % 128) / 32, l = i % 32;
    const int low = (qs[32 * n + l] >> (2 * k)) & 3;
    const int high = (hm[l] >> (4 * n + k)) & 1;
    y[i] = d * float(q3k_scale(sc, i / 16)) * float(low + 4 * high - 4);
  }
}

// IQ4_NL / IQ4_XS: 4-bit indices into ggml's non-linear grid kvalues_iq4nl.
constexpr int8_t kIq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// block_iq4_nl: f16 d | u8 qs[16]; value j (< 16) = d * kv[low nibble of qs[j]], value j + 16 the high one.
void dequant_iq4_nl(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  for (int j = 0; j < 16; ++j) {
    y[j] = d * float(kIq4nl[b[2 + j] & 0x0F]);
    y[j + 16] = d * float(kIq4nl[b[2 + j] >> 4]);
  }
}

// block_iq4_xs: f16 d | u16 scales_h | u8 scales_l[4] | u8 qs[128]. Eight sub-blocks of 32, each laid out as
// an IQ4_NL block's 16 bytes; sub-block j's 6-bit scale: low 4 bits the (j odd: high) nibble of scales_l[j/2],
// top 2 bits bits 2j..2j+1 of scales_h; value = d * (scale - 32) * kv[index].
void dequant_iq4_xs(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  uint16_t sh;
  std::memcpy(&sh, b + 2, 2);
  const uint8_t* sl = b + 4;
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 8; ++j, qs += 16, y += 32) {
    const int ls = ((sl[j / 2] >> (4 * (j % 2))) & 0x0F) | (((sh >> (2 * j)) & 3) << 4);
    const float dl = d * float(ls - 32);
    for (int l = 0; l < 16; ++l) {
      y[l] = dl * float(kIq4nl[qs[l] & 0x0F]);
      y[l + 16] = dl * float(kIq4nl[qs[l] >> 4]);
    }
  }
}

using BlockFn = void (*)(const uint8_t*, float*);

BlockFn block_fn(DType t) {
  switch (t) {
    case DType::Q4_0: return dequant_q4_0;
    case DType::Q4_1: return dequant_q4_1;
    case DType::Q5_0: return dequant_q5_0;
    case DType::Q5_1: return dequant_q5_1;
    case DType::Q8_0: return dequant_q8_0;
    case DType::Q4_K: return dequant_q4_k;
    case DType::Q5_K: return dequant_q5_k;
    case DType::Q6_K: return dequant_q6_k;
    case DType::MXFP4: return dequant_mxfp4;
    case DType::Q2_K: return dequant_q2_k;
    case DType::Q3_K: return dequant_q3_k;
    case DType::IQ4_NL: return dequant_iq4_nl;
    case DType::IQ4_XS: return dequant_iq4_xs;
    default: return nullptr;
  }
}

void check_count(const char* what, DType t, int64_t n) {
  const DTypeInfo& d = dtype_info(t);
  if (n < 0 || n % d.block_elems != 0)
    fail("ggml", what, " ", n, " values of ", d.name, ": not a whole number of blocks (", d.block_elems,
         " values each)");
}

// Values already scaled by 1/d, turned into ggml's quants without UB for NaN or out-of-range input.
inline int8_t round_q8(float v) {
  if (!(v == v)) return 0;  // NaN
  v = std::min(127.0f, std::max(-127.0f, v));
  return static_cast<int8_t>(std::round(v));  // roundf: half away from zero, as ggml
}
inline uint8_t trunc_q4(float v) {
  if (!(v == v)) return 8;  // NaN -> quant of 0
  v = std::min(16.0f, std::max(0.0f, v + 8.5f));
  return static_cast<uint8_t>(std::min(15, static_cast<int>(v)));
}

}  // namespace

void dequantize_blocks(DType t, const uint8_t* src, int64_t n, float* dst) {
  BlockFn fn = block_fn(t);
  if (!fn) fail("ggml", "cannot dequantize ", dtype_name(t), ": not a ggml block type");
  check_count("dequantize", t, n);
  const DTypeInfo& d = dtype_info(t);
  const int64_t nb = n / d.block_elems;
  for (int64_t i = 0; i < nb; ++i) fn(src + i * d.block_bytes, dst + i * d.block_elems);
}

void quantize_blocks_ref(DType t, const float* x, int64_t n, uint8_t* dst) {
  if (t != DType::Q8_0 && t != DType::Q4_0)
    fail("ggml", "no reference quantizer for ", dtype_name(t), " (allowed: Q8_0, Q4_0)");
  check_count("quantize", t, n);
  const DTypeInfo& info = dtype_info(t);
  const int64_t nb = n / kQK;
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    uint8_t* b = dst + i * info.block_bytes;
    if (t == DType::Q8_0) {
      float amax = 0.0f;
      for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
      const float d = amax / 127.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      store_f16(b, d);
      for (int j = 0; j < kQK; ++j) b[2 + j] = static_cast<uint8_t>(round_q8(x[j] * id));
    } else {
      float amax = 0.0f, max = 0.0f;  // max: the value of largest magnitude, sign kept
      for (int j = 0; j < kQK; ++j) {
        if (amax < std::fabs(x[j])) {
          amax = std::fabs(x[j]);
          max = x[j];
        }
      }
      const float d = max / -8.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      store_f16(b, d);
      for (int j = 0; j < kQK / 2; ++j)
        b[2 + j] = uint8_t(trunc_q4(x[j] * id) | (trunc_q4(x[j + kQK / 2] * id) << 4));
    }
  }
}

}  // namespace mc

// Block encoders for the ggml types, and the exact mapping of our quantizer results onto the legacy types.
// Legacy layouts (ggml-common.h; value j < 16 in the low nibble of qs[j], value j + 16 in the high one):
//   block_q4_0 {f16 d; u8 qs[16]}            (q - 8) * d
//   block_q4_1 {f16 d, m; u8 qs[16]}          q * d + m
//   block_q5_0 {f16 d; u8 qh[4]; u8 qs[16]}   (q - 16) * d, bit j of qh = 5th bit of value j
//   block_q5_1 {f16 d, m; u8 qh[4]; qs[16]}   q * d + m
//   block_q8_0 {f16 d; i8 qs[32]}             q * d
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "export/gguf_kquant.h"
#include "mcompress/error.h"
#include "mcompress/export/gguf.h"
#include "mcompress/ggml_blocks.h"
#include "mcompress/half.h"
#include "mcompress/quant/fp_formats.h"

namespace mc {

using gguf_detail::store_f16;

namespace {

constexpr int kQK = 32;

// Packs 32 codes (0..31) into qs[16] (+ qh for 5-bit types) in ggml's nibble order.
void pack_nibbles(const uint8_t* q, uint8_t* qs, uint8_t* qh) {
  uint32_t h = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    qs[j] = uint8_t((q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4));
    h |= uint32_t((q[j] >> 4) & 1u) << j;
    h |= uint32_t((q[j + 16] >> 4) & 1u) << (j + 16);
  }
  if (qh) std::memcpy(qh, &h, 4);
}

// ggml quantize_row_q4_1_ref / q5_1_ref: d = (max - min) / nmax, m = min, q = round((x - min) / d).
void encode_affine(int bits, const float* x, uint8_t* b) {
  float mn = x[0], mx = x[0];
  for (int j = 1; j < kQK; ++j) mn = std::min(mn, x[j]), mx = std::max(mx, x[j]);
  const int nmax = (1 << bits) - 1;
  const float d = (mx - mn) / float(nmax);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  store_f16(b, d);
  store_f16(b + 2, mn);
  uint8_t q[kQK];
  for (int j = 0; j < kQK; ++j) q[j] = uint8_t(std::clamp(int((x[j] - mn) * id + 0.5f), 0, nmax));
  if (bits == 4) pack_nibbles(q, b + 4, nullptr);
  else pack_nibbles(q, b + 8, b + 4);
}

// ggml quantize_row_q5_0_ref: d = (value of largest magnitude) / -16, q = min(31, trunc(x / d + 16.5)).
void encode_q5_0(const float* x, uint8_t* b) {
  float amax = 0, mx = 0;
  for (int j = 0; j < kQK; ++j)
    if (std::fabs(x[j]) > amax) amax = std::fabs(x[j]), mx = x[j];
  const float d = mx / -16.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  store_f16(b, d);
  uint8_t q[kQK];
  for (int j = 0; j < kQK; ++j) q[j] = uint8_t(std::clamp(int(x[j] * id + 16.5f), 0, 31));
  pack_nibbles(q, b + 6, b + 2);
}

// MXFP4 blocks of n values: fp_quantize(mxfp4) with every block of 32 as one group (for a row-major matrix
// whose rows are whole blocks, the same codes and exponents as on the matrix: OCP MX exponent
// floor(log2 amax) - 2, E2M1 elements rounded to nearest even, saturating), laid out in ggml's nibble order.
void encode_mxfp4(const float* x, int64_t n, uint8_t* dst) {
  const int64_t nb = n / 32;
  const FpQuantResult q = fp_quantize(at::from_blob(const_cast<float*>(x), {nb, 32}, at::kFloat), FpScheme::mxfp4);
  const at::Tensor codes = q.element_codes().contiguous(), scales = q.scales.contiguous();
  const uint8_t* c = codes.data_ptr<uint8_t>();
  const uint8_t* e = scales.data_ptr<uint8_t>();
  for (int64_t i = 0; i < nb; ++i, c += 32, dst += 17) {
    dst[0] = e[i];
    for (int j = 0; j < 16; ++j) dst[1 + j] = uint8_t(c[j] | (c[j + 16] << 4));
  }
}

void check_finite(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) fail("gguf", "cannot encode a non-finite value (", x[i], ") at index ", i);
}

int exact_bits(DType t) {
  switch (t) {
    case DType::Q4_0: case DType::Q4_1: return 4;
    case DType::Q5_0: case DType::Q5_1: return 5;
    case DType::Q8_0: return 8;
    default: return 0;
  }
}

}  // namespace

namespace {

void encode_blocks_hinted(DType t, const float* x, int64_t n, const float* steps, const float* qw, uint8_t* dst) {
  if (!is_block(t)) fail("gguf", "cannot block-encode ", dtype_name(t), ": not a ggml block type");
  const DTypeInfo& info = dtype_info(t);
  if (n < 0 || n % info.block_elems != 0)
    fail("gguf", "encode ", n, " values as ", info.name, ": not a whole number of blocks (", info.block_elems, " each)");
  check_finite(x, n);
  if (t == DType::Q8_0 || t == DType::Q4_0) return quantize_blocks_ref(t, x, n, dst);
  if (t == DType::MXFP4) return encode_mxfp4(x, n, dst);
  const int64_t nb = n / info.block_elems;
  for (int64_t i = 0; i < nb; ++i) {
    const float* xb = x + i * info.block_elems;
    const float* wb = qw ? qw + i * info.block_elems : nullptr;
    uint8_t* b = dst + i * info.block_bytes;
    switch (t) {
      case DType::Q4_1: encode_affine(4, xb, b); break;
      case DType::Q5_1: encode_affine(5, xb, b); break;
      case DType::Q5_0: encode_q5_0(xb, b); break;
      case DType::Q4_K: gguf_detail::encode_q45_k(4, xb, steps ? steps + i * 8 : nullptr, b, wb); break;
      case DType::Q5_K: gguf_detail::encode_q45_k(5, xb, steps ? steps + i * 8 : nullptr, b, wb); break;
      case DType::Q2_K: gguf_detail::encode_q2_k(xb, wb, b); break;
      case DType::Q3_K: gguf_detail::encode_q3_k(xb, wb, b); break;
      case DType::IQ4_NL: gguf_detail::encode_iq4_nl(xb, wb, b); break;
      case DType::IQ4_XS: gguf_detail::encode_iq4_xs(xb, wb, b); break;
      case DType::Q6_K: gguf_detail::encode_q6_k(xb, steps ? steps + i * 8 : nullptr, b); break;
      default: fail("gguf", "no encoder for ", info.name);
    }
  }
}

}  // namespace

void encode_blocks(DType t, const float* x, int64_t n, uint8_t* dst) {
  encode_blocks_hinted(t, x, n, nullptr, nullptr, dst);
}
void encode_blocks_weighted(DType t, const float* x, int64_t n, const float* qw, uint8_t* dst) {
  encode_blocks_hinted(t, x, n, nullptr, qw, dst);
}

double block_encoding_sse(DType t, const float* x, int64_t n) {
  std::vector<uint8_t> b(*dtype_nbytes(t, n));
  encode_blocks(t, x, n, b.data());
  std::vector<float> y(static_cast<size_t>(n));
  dequantize_blocks(t, b.data(), n, y.data());
  double e = 0;
  for (int64_t i = 0; i < n; ++i) e += (double(y[i]) - x[i]) * (double(y[i]) - x[i]);
  return e;
}

std::vector<uint8_t> encode_matrix(DType t, const float* w, int64_t rows, int64_t cols, const float* steps,
                                   const float* importance) {
  const auto total = dtype_nbytes(t, rows * cols);
  if (!total || rows < 0 || cols < 0) fail("gguf", "cannot encode a [", rows, ", ", cols, "] matrix as ", dtype_name(t));
  std::vector<uint8_t> out(*total);
  if (t == DType::F32) {
    check_finite(w, rows * cols);
    std::memcpy(out.data(), w, out.size());
    return out;
  }
  if (t == DType::F16) {
    for (int64_t i = 0; i < rows * cols; ++i) {
      const uint16_t h = f32_to_f16(w[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
    return out;
  }
  const DTypeInfo& info = dtype_info(t);
  if (!info.is_block) fail("gguf", "cannot encode weights as ", info.name, " (allowed: F32, F16, ggml block types)");
  if (cols % info.block_elems != 0)
    fail("gguf", "row length ", cols, " is not a multiple of the ", info.name, " block size ", info.block_elems);
  if (t == DType::MXFP4) {  // the whole matrix in one ATen pass (its rows are whole blocks)
    check_finite(w, rows * cols);
    encode_mxfp4(w, rows * cols, out.data());
    return out;
  }
  const int64_t row_bytes = cols / info.block_elems * info.block_bytes;
  // Each row is independent; the result does not depend on how rows are split between threads.
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      encode_blocks_hinted(t, w + r * cols, cols, steps ? steps + r * (cols / kQK) : nullptr, importance,
                           out.data() + r * row_bytes);
  });
  return out;
}

bool maps_exactly(const QuantResult& q, DType t) {
  const int bits = exact_bits(t);
  // A grid of fewer bits fits a wider type exactly: its codes are a subset of the type's (shifted
  // by the difference of the zero points when symmetric), e.g. int3 -> Q4_0, int4 -> Q5_0 / Q8_0.
  if (bits == 0 || q.spec.bits > bits || q.spec.group_size != kQK || q.g_idx.defined()) return false;
  if (!q.codes.defined() || q.codes.dim() != 2 || q.codes.size(1) % kQK != 0) return false;
  const bool sym_type = t == DType::Q4_0 || t == DType::Q5_0 || t == DType::Q8_0;
  return sym_type == q.spec.symmetric;
}

namespace {

// vals [8] = d * n_j exactly with d a float16 value and n_j in lo..63: d and n (the largest d that works first);
// false when no such d exists (not a K-quant lattice). All zero: d = 0, n = 0.
bool lattice_of(const float* vals, int lo, float* d, int* n) {
  float vmax = 0;
  for (int j = 0; j < 8; ++j) vmax = std::max(vmax, vals[j]);
  if (vmax == 0) {
    *d = 0;
    for (int j = 0; j < 8; ++j) n[j] = 0;
    return lo == 0;
  }
  for (int k = 63; k >= 1; --k) {
    const float c = vmax / float(k);
    if (gguf_detail::round_f16(c) != c) continue;
    bool ok = true;
    for (int j = 0; j < 8 && ok; ++j) {
      const float r = std::nearbyint(vals[j] / c);
      ok = r >= float(lo) && r <= 63.0f && c * r == vals[j];
      n[j] = int(r);
    }
    if (ok) {
      *d = c;
      return true;
    }
  }
  return false;
}

// A QuantResult on the K-quant lattice (QuantResult::mins, quant/autoround.h) as Q4_K / Q5_K blocks holding its
// very codes, scales and mins; empty when some super-block is not on the lattice (the caller then encodes the
// values as usual).
std::vector<uint8_t> encode_kquant_lattice(const QuantResult& q, DType t) {
  const int bits = t == DType::Q4_K ? 4 : 5;
  const at::Tensor codes = q.codes.to(at::kByte).contiguous();
  const at::Tensor scales = q.scales.to(at::kFloat).contiguous(), mins = q.mins.to(at::kFloat).contiguous();
  const int64_t rows = codes.size(0), cols = codes.size(1), G = cols / 32, nsb = cols / 256;
  const DTypeInfo& info = dtype_info(t);
  std::vector<uint8_t> out(size_t(rows * nsb * info.block_bytes));
  const uint8_t* c = codes.data_ptr<uint8_t>();
  const float* s = scales.data_ptr<float>();
  const float* m = mins.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < nsb; ++b) {
      float d = 0, dmin = 0;
      int sc[8], mq[8];
      if (!lattice_of(s + r * G + b * 8, 1, &d, sc) || !lattice_of(m + r * G + b * 8, 0, &dmin, mq)) return {};
      const uint8_t* L = c + r * cols + b * 256;
      for (int i = 0; i < 256; ++i)
        if (L[i] >= (1 << bits)) return {};
      gguf_detail::write_q45_k(bits, d, dmin, sc, mq, L, out.data() + (r * nsb + b) * info.block_bytes);
    }
  return out;
}

}  // namespace

std::vector<uint8_t> encode_from_quant(const QuantResult& q, DType t, int64_t* inexact_blocks, const float* importance) {
  if (inexact_blocks) *inexact_blocks = 0;
  if (q.mins.defined() && (t == DType::Q4_K || t == DType::Q5_K) && q.spec.bits <= (t == DType::Q4_K ? 4 : 5) &&
      q.spec.group_size == 32 && !q.g_idx.defined() && q.codes.dim() == 2 && q.codes.size(1) % 256 == 0) {
    std::vector<uint8_t> exact = encode_kquant_lattice(q, t);
    if (!exact.empty()) return exact;
  }
  if (!maps_exactly(q, t)) {
    at::Tensor w = q.dequantize().to(at::kFloat).contiguous();
    if (w.dim() != 2) w = w.reshape({w.size(0), -1});
    // Grid steps per run of 32 columns, where the run lies inside one group of contiguous columns.
    at::Tensor steps;
    const int64_t cols = w.size(1), gs = q.spec.group_size;
    if (!q.g_idx.defined() && cols % kQK == 0 && (gs <= 0 || gs % kQK == 0)) {
      at::Tensor s = q.scales.to(at::kFloat);
      if (gs <= 0) steps = s.narrow(1, 0, 1).expand({w.size(0), cols / kQK}).contiguous();
      else steps = s.repeat_interleave(gs / kQK, 1).narrow(1, 0, cols / kQK).contiguous();
    }
    return encode_matrix(t, w.data_ptr<float>(), w.size(0), cols, steps.defined() ? steps.data_ptr<float>() : nullptr,
                         importance);
  }
  const int bits = exact_bits(t);
  at::Tensor codes = q.codes.to(at::kByte).contiguous();
  at::Tensor scales = q.scales.to(at::kFloat).contiguous(), zeros = q.zeros.to(at::kFloat).contiguous();
  const int64_t rows = codes.size(0), cols = codes.size(1), nb = cols / kQK;
  if (scales.size(1) != nb) fail<Error>("gguf", "quant result has ", scales.size(1), " groups per row, expected ", nb);
  const DTypeInfo& info = dtype_info(t);
  std::vector<uint8_t> out(size_t(rows * nb * info.block_bytes));
  const uint8_t* c = codes.data_ptr<uint8_t>();
  const float* s = scales.data_ptr<float>();
  const float* z = zeros.data_ptr<float>();
  const float half = float(1 << (q.spec.bits - 1));               // our symmetric zero point
  const int shift = (1 << (bits - 1)) - (1 << (q.spec.bits - 1));  // to the type's (0 when the bits agree)
  std::vector<uint8_t> shifted(kQK);
  int64_t inexact = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < nb; ++g) {
      uint8_t* b = out.data() + (r * nb + g) * info.block_bytes;
      const uint8_t* code = c + r * cols + g * kQK;
      if (shift != 0 && q.spec.symmetric) {
        for (int j = 0; j < kQK; ++j) shifted[size_t(j)] = uint8_t(code[j] + shift);
        code = shifted.data();
      }
      const float scale = s[r * nb + g], zero = z[r * nb + g];
      if (gguf_detail::round_f16(scale) != scale)
        fail<Error>("gguf", "scale ", scale, " (row ", r, ", group ", g, ") is not a float16 value");
      store_f16(b, scale);
      if (t == DType::Q4_0 || t == DType::Q5_0 || t == DType::Q8_0) {
        if (zero != half) fail<Error>("gguf", "symmetric grid with zero point ", zero, " (expected ", half, ")");
        if (t == DType::Q8_0) {
          for (int j = 0; j < kQK; ++j) b[2 + j] = uint8_t(int8_t(int(code[j]) - 128));
        } else if (t == DType::Q4_0) {
          pack_nibbles(code, b + 2, nullptr);
        } else {
          pack_nibbles(code, b + 6, b + 2);
        }
      } else {
        const float m = -zero * scale;  // exact in float32: an integer below 2^8 times a float16 value
        if (gguf_detail::round_f16(m) != m) ++inexact;
        store_f16(b + 2, m);
        if (t == DType::Q4_1) pack_nibbles(code, b + 4, nullptr);
        else pack_nibbles(code, b + 8, b + 4);
      }
    }
  }
  if (inexact_blocks) *inexact_blocks = inexact;
  return out;
}

}  // namespace mc

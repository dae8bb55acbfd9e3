// Encoders of ggml's low-bit types (layouts: core/ggml_blocks.cpp), fitted to minimise the weighted squared
// error Σ w_i (x_i - x̂_i)², w_i = the importance of value i's input column from an imatrix (its mean square,
// so the sum estimates the output error the block adds, as llama.cpp's quant_weights do), or 1 without one.
//
// Q2_K (16 sub-blocks of 16, value = d*sc_j * q - dmin*m_j, q 0..3, sc_j and m_j 4-bit): each sub-block's
//   (scale, min) by the weighted make_qkx2_quants search, then the super-block scales searched as Q4_K's are
//   (fit_affine_superblock, gguf_kquant.cpp).
// Q3_K (16 sub-blocks of 16, value = d*s_j * q, q -4..3, s_j 6-bit signed) and IQ4_XS (8 sub-blocks of 32,
//   value = d*s_j * kv[i], kv = kvalues_iq4nl, s_j 6-bit signed): each sub-block's float scale by a sweep of
//   inverse scales mapping its largest value onto either end of the grid (each giving levels by nearest value,
//   then the weighted least-squares scale for them, refined once), then d = max scale / k for k in -32..-29
//   and 31..28 in steps of 0.5 (float16), the integer s_j nudged by +-1 where that helps, nearest levels.
// IQ4_NL (blocks of 32, value = d * kv[i]): the same sub-block fit, d rounded to float16, and the least-squares
//   refit of d for the chosen levels kept when it is better.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "export/gguf_kquant.h"

namespace mc::gguf_detail {

namespace {

constexpr int8_t kIq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// The levels of a symmetric-scale grid: integers lo..hi, or the 16 values of kvalues_iq4nl (lo/hi: its ends).
struct Grid {
  int lo, hi;
  bool table;
  int count() const { return table ? 16 : hi - lo + 1; }
  float value(int i) const { return table ? float(kIq4nl[i]) : float(lo + i); }
  int nearest(float v) const {  // index of the level nearest v
    if (!table) return std::clamp(nearest_int(v), lo, hi) - lo;
    int a = 0, b = 15;  // binary search on the sorted table, then the closer neighbour
    while (b - a > 1) {
      const int m = (a + b) / 2;
      (v < float(kIq4nl[m]) ? b : a) = m;
    }
    return std::fabs(v - float(kIq4nl[a])) <= std::fabs(v - float(kIq4nl[b])) ? a : b;
  }
};
constexpr Grid kQ3{-4, 3, false};
constexpr Grid kIq4{-127, 113, true};

// Weighted squared error of n values on d * level, each at its nearest level (indices stored in idx if given).
double sse_grid(const float* x, const float* w, int n, float d, const Grid& g, uint8_t* idx) {
  double e = 0;
  for (int i = 0; i < n; ++i) {
    const int k = d != 0.0f ? g.nearest(x[i] / d) : g.nearest(0.0f);
    if (idx) idx[i] = uint8_t(k);
    const double diff = double(d != 0.0f ? d * g.value(k) : 0.0f) - double(x[i]);
    e += (w ? double(w[i]) : 1.0) * diff * diff;
  }
  return e;
}

// The float scale of n values on grid g minimising the weighted squared error (see the top of the file).
float fit_scale_grid(const float* x, const float* w, int n, const Grid& g) {
  float amax = 0, mx = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), mx = x[i];
  if (amax < 1e-15f) return 0.0f;
  float best_scale = 0, best = -1;
  auto consider = [&](float iscale) {
    for (int pass = 0; pass < 2; ++pass) {  // levels for iscale, then once more for the fitted scale
      float sxt = 0, stt = 0;
      for (int i = 0; i < n; ++i) {
        const float t = g.value(g.nearest(iscale * x[i]));
        const float wi = w ? w[i] : 1.0f;
        sxt += wi * x[i] * t;
        stt += wi * t * t;
      }
      if (!(stt > 0)) return;
      const float metric = sxt * sxt / stt;  // the error is Σ w x² - metric at the least-squares scale
      const float s = sxt / stt;
      if (metric > best) best = metric, best_scale = s;
      if (s == 0.0f) return;
      iscale = 1.0f / s;
    }
  };
  for (const float end : {float(g.lo), float(g.hi)}) {
    const float step = 0.02f * std::fabs(end);
    for (int is = -9; is <= 9; ++is) consider((end + step * float(is)) / mx);
  }
  return best_scale;
}

// A signed-scale super-block: float16 d and integer s_j in -32..31 (see the top of the file).
struct SymFit {
  float d = 0;
  int s[16] = {};
  uint8_t idx[256] = {};
};
SymFit fit_sym_superblock(const float* x, const float* w, int nsub, int len, const Grid& g) {
  SymFit f;
  float scales[16], max_scale = 0;
  for (int j = 0; j < nsub; ++j) {
    scales[j] = fit_scale_grid(x + len * j, w ? w + len * j : nullptr, len, g);
    if (std::fabs(scales[j]) > std::fabs(max_scale)) max_scale = scales[j];
  }
  auto wsub = [&](int j) { return w ? w + len * j : nullptr; };
  auto total = [&](float d) {
    double e = 0;
    for (int j = 0; j < nsub; ++j) {
      f.s[j] = d != 0.0f ? std::clamp(nearest_int(scales[j] / d), -32, 31) : 0;
      e += sse_grid(x + len * j, wsub(j), len, d * float(f.s[j]), g, nullptr);
    }
    return e;
  };
  if (max_scale != 0.0f) {
    double best = -1;
    for (int i = 0; i < 14; ++i) {
      const float k = i < 7 ? -32.0f + 0.5f * float(i) : 31.0f - 0.5f * float(i - 7);
      const float d = round_f16(max_scale / k);
      const double e = total(d);
      if (best < 0 || e < best) best = e, f.d = d;
    }
  }
  total(f.d);
  for (int j = 0; j < nsub; ++j) {
    const float* xs = x + len * j;
    int bs = f.s[j];
    double be = sse_grid(xs, wsub(j), len, f.d * float(bs), g, nullptr);
    for (int ds : {-1, 1}) {
      const int s2 = f.s[j] + ds;
      if (s2 < -32 || s2 > 31) continue;
      const double e = sse_grid(xs, wsub(j), len, f.d * float(s2), g, nullptr);
      if (e < be) be = e, bs = s2;
    }
    f.s[j] = bs;
    sse_grid(xs, wsub(j), len, f.d * float(bs), g, f.idx + len * j);
  }
  return f;
}

// 32 indices (0..15) in the IQ4_NL nibble order: value l in the low nibble of byte l, value l + 16 in its high one.
void pack_iq4(const uint8_t* idx, uint8_t* qs) {
  for (int l = 0; l < 16; ++l) qs[l] = uint8_t(idx[l] | (idx[l + 16] << 4));
}

}  // namespace

// Per-value weights for one super-block: qw itself, except that a sub-block whose weights are all zero (no
// input ever reached those columns) is fitted with unit weights rather than left undetermined.
const float* block_weights(const float* qw, int nsub, int len, float* buf) {
  if (!qw) return nullptr;
  for (int j = 0; j < nsub; ++j) {
    float sum = 0;
    for (int i = 0; i < len; ++i) sum += qw[len * j + i];
    for (int i = 0; i < len; ++i) buf[len * j + i] = sum > 0 ? qw[len * j + i] : 1.0f;
  }
  return buf;
}

void encode_q2_k(const float* x, const float* qw, uint8_t* block) {
  float wbuf[256];
  const float* w = block_weights(qw, 16, 16, wbuf);
  float scales[16], mins[16];
  for (int j = 0; j < 16; ++j)
    scales[j] = fit_scale_min(16, 3, x + 16 * j, w ? w + 16 * j : nullptr, -0.5f, 0.1f, 15, &mins[j]);
  const AffineFit f = fit_affine_superblock(x, w, 16, 16, 3, 15, scales, mins);
  std::memset(block, 0, 84);
  for (int j = 0; j < 16; ++j) block[j] = uint8_t(f.sc[j] | (f.m[j] << 4));
  uint8_t* qs = block + 16;
  for (int i = 0; i < 256; ++i) qs[32 * (i / 128) + i % 32] |= uint8_t(f.L[i] << (2 * ((i % 128) / 32)));
  store_f16(block + 80, f.d);
  store_f16(block + 82, f.dmin);
}

void encode_q3_k(const float* x, const float* qw, uint8_t* block) {
  float wbuf[256];
  const SymFit f = fit_sym_superblock(x, block_weights(qw, 16, 16, wbuf), 16, 16, kQ3);
  std::memset(block, 0, 110);
  uint8_t* hm = block;
  uint8_t* qs = block + 32;
  uint8_t* sc = block + 96;
  for (int i = 0; i < 256; ++i) {
    const int q = f.idx[i];  // level + 4: 0..7
    const int n = i / 128, k = (i % 128) / 32, l = i % 32;
    qs[32 * n + l] |= uint8_t((q & 3) << (2 * k));
    if (q & 4) hm[l] |= uint8_t(1u << (4 * n + k));
  }
  for (int j = 0; j < 16; ++j) {
    const int v = f.s[j] + 32;  // 0..63
    sc[j % 8] |= uint8_t((v & 0x0F) << (j < 8 ? 0 : 4));
    sc[8 + j % 4] |= uint8_t((v >> 4) << (2 * (j / 4)));
  }
  store_f16(block + 108, f.d);
}

void encode_iq4_nl(const float* x, const float* qw, uint8_t* block) {
  float wbuf[32];
  const float* w = block_weights(qw, 1, 32, wbuf);
  float d = round_f16(fit_scale_grid(x, w, 32, kIq4));
  uint8_t idx[32];
  double best = sse_grid(x, w, 32, d, kIq4, idx);
  float sxt = 0, stt = 0;  // least-squares d for these levels, rounded to float16
  for (int i = 0; i < 32; ++i) {
    const float t = kIq4.value(idx[i]), wi = w ? w[i] : 1.0f;
    sxt += wi * x[i] * t, stt += wi * t * t;
  }
  if (stt > 0) {
    const float d2 = round_f16(sxt / stt);
    uint8_t idx2[32];
    const double e = sse_grid(x, w, 32, d2, kIq4, idx2);
    if (e < best) best = e, d = d2, std::memcpy(idx, idx2, 32);
  }
  store_f16(block, d);
  pack_iq4(idx, block + 2);
}

void encode_iq4_xs(const float* x, const float* qw, uint8_t* block) {
  float wbuf[256];
  const SymFit f = fit_sym_superblock(x, block_weights(qw, 8, 32, wbuf), 8, 32, kIq4);
  std::memset(block, 0, 136);
  store_f16(block, f.d);
  uint16_t sh = 0;
  for (int j = 0; j < 8; ++j) {
    const int ls = f.s[j] + 32;  // 0..63
    block[4 + j / 2] |= uint8_t((ls & 0x0F) << (4 * (j % 2)));
    sh = uint16_t(sh | ((ls >> 4) << (2 * j)));
    pack_iq4(f.idx + 32 * j, block + 8 + 16 * j);
  }
  std::memcpy(block + 2, &sh, 2);
}

}  // namespace mc::gguf_detail

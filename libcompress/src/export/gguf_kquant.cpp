// K-quant encoders (ggml-common.h layouts), fitted to minimise the squared error of the reconstruction.
//
// Q4_K / Q5_K (8 sub-blocks of 32, value = d*sc_j * q - dmin*m_j, q in 0..2^b-1, sc_j and m_j 6-bit):
//   1. each sub-block gets its own (scale, min) as ggml's make_qkx2_quants finds it (range fit, then a
//      sweep of 21/16 grid widths solving the least-squares scale and min for each), with plain squared
//      error as the objective (ggml weights the values by av_x + |x|; our values are the target, so
//      every value counts the same)
//   2. the super-block scales: d = max_scale / k and dmin = max_min / k for k in 63, 62.5, ... 60
//      (ggml takes k = 63 only), each stored as float16 before the sub-scales are rounded against it;
//      the pair with the least squared error after re-quantization is kept
//   3. each sub-block's (sc, m) is then moved by +-1 where that lowers its error, and every value gets
//      its nearest level (the optimum for fixed scales)
// With a grid hint (the values are integer multiples k*h of a known step h, k in lo..hi), each sub-block
// also tries the exact fit scale = h/m, min = -min(0, lo*h), m the largest integer keeping every k*m on the
// type's levels, and keeps whichever of the two has the smaller error.
// Q6_K (16 sub-blocks of 16, value = d*sc_j * (q - 32), sc_j int8): make_qx_quants per sub-block (the
// scale sweep of ggml's rmse_type 2, plain squared error), then d = max_scale / k for k in -128..-124 and
// 127..123 (ggml: -128 only), sub-scales moved by +-1 where that helps, nearest levels.
#include "export/gguf_kquant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "mcompress/half.h"

namespace mc::gguf_detail {

namespace {

constexpr int kQK_K = 256;

}  // namespace

// make_qkx2_quants with weights w (null: unit weights, the plain squared error): the scale, and in
// *the_min -(min offset) >= 0.
float fit_scale_min(int n, int nmax, const float* x, const float* w, float rmin, float rdelta, int nstep,
                    float* the_min) {
  auto wt = [w](int i) { return w ? w[i] : 1.0f; };
  float mn = x[0], mx = x[0], sum_x = 0, sum_w = 0;
  for (int i = 0; i < n; ++i) {
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
    sum_x += wt(i) * x[i];
    sum_w += wt(i);
  }
  if (mn > 0) mn = 0;
  if (mx == mn) {
    *the_min = -mn;
    return 0.0f;
  }
  float iscale = float(nmax) / (mx - mn);
  float scale = 1 / iscale;
  float best = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(nearest_int(iscale * (x[i] - mn)), 0, nmax);
    const float diff = scale * float(l) + mn - x[i];
    best += wt(i) * diff * diff;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * float(is) + float(nmax)) / (mx - mn);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    int L[32];
    for (int i = 0; i < n; ++i) {
      L[i] = std::clamp(nearest_int(iscale * (x[i] - mn)), 0, nmax);
      sum_l += wt(i) * float(L[i]);
      sum_l2 += wt(i) * float(L[i] * L[i]);
      sum_xl += wt(i) * float(L[i]) * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D <= 0) continue;
    float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
    float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
    if (this_min > 0) {
      this_min = 0;
      this_scale = sum_xl / sum_l2;
    }
    float err = 0;
    for (int i = 0; i < n; ++i) {
      const float diff = this_scale * float(L[i]) + this_min - x[i];
      err += wt(i) * diff * diff;
    }
    if (err < best) {
      best = err;
      scale = this_scale;
      mn = this_min;
    }
  }
  *the_min = -mn;
  return scale;
}

// Weighted squared error of n values on the grid d*q - dm, q in 0..nmax, each value at its nearest level.
double sse_affine(const float* x, const float* w, int n, float d, float dm, int nmax, uint8_t* L) {
  double e = 0;
  for (int i = 0; i < n; ++i) {
    const int l = d != 0.0f ? std::clamp(nearest_int((x[i] + dm) / d), 0, nmax) : 0;
    if (L) L[i] = uint8_t(l);
    const double diff = double(d * float(l) - dm) - double(x[i]);
    e += (w ? double(w[i]) : 1.0) * diff * diff;
  }
  return e;
}

namespace {

// Q4_K/Q5_K packing of 8 six-bit scales and mins into 12 bytes (ggml get_scale_min_k4's inverse).
void pack_scales(uint8_t* q, const int* sc, const int* m) {
  std::memset(q, 0, 12);
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      q[j] = uint8_t(sc[j]);
      q[j + 4] = uint8_t(m[j]);
    } else {
      q[j + 4] = uint8_t((sc[j] & 0x0F) | ((m[j] & 0x0F) << 4));
      q[j - 4] |= uint8_t((sc[j] >> 4) << 6);
      q[j] |= uint8_t((m[j] >> 4) << 6);
    }
  }
}

}  // namespace

int nearest_int(float v) {
  if (!(v > -1e9f)) return -1000000000;  // also NaN: callers clamp
  if (v > 1e9f) return 1000000000;
  return static_cast<int>(std::nearbyint(v));
}
void store_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}
float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}
float round_f16(float v) { return f16_to_f32(f32_to_f16(v)); }

namespace {

// Range of the grid indices k = x / step of n values (false when some value is not a whole multiple).
bool grid_range(const float* x, int n, float step, int* lo, int* hi) {
  if (!(step > 0)) return false;
  *lo = 1 << 30, *hi = -(1 << 30);
  for (int i = 0; i < n; ++i) {
    const float k = x[i] / step;
    if (!(std::fabs(k) < 1e6f) || k != std::nearbyint(k) || float(std::nearbyint(k)) * step != x[i]) return false;
    *lo = std::min(*lo, int(k)), *hi = std::max(*hi, int(k));
  }
  return true;
}

}  // namespace

AffineFit fit_affine_superblock(const float* x, const float* w, int nsub, int len, int nmax, int smax,
                                const float* scales, const float* mins) {
  AffineFit f;
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < nsub; ++j) max_scale = std::max(max_scale, scales[j]), max_min = std::max(max_min, mins[j]);
  auto wsub = [&](int j) { return w ? w + len * j : nullptr; };
  // Sub-scales against float16 super-scales; error of the whole super-block with them.
  auto fill = [&](float d, float dmin) {
    for (int j = 0; j < nsub; ++j) {
      f.sc[j] = d > 0 ? std::clamp(nearest_int(scales[j] / d), 0, smax) : 0;
      f.m[j] = dmin > 0 ? std::clamp(nearest_int(mins[j] / dmin), 0, smax) : 0;
    }
  };
  auto total = [&](float d, float dmin) {
    fill(d, dmin);
    double e = 0;
    for (int j = 0; j < nsub; ++j)
      e += sse_affine(x + len * j, wsub(j), len, d * float(f.sc[j]), dmin * float(f.m[j]), nmax, nullptr);
    return e;
  };
  float ks[7];  // smax, smax - 0.5, ... smax - 3 (ggml takes smax only)
  for (int i = 0; i < 7; ++i) ks[i] = float(smax) - 0.5f * float(i);
  f.d = round_f16(max_scale / ks[0]), f.dmin = round_f16(max_min / ks[0]);
  double best = total(f.d, f.dmin);
  for (float k : ks) {  // d first with dmin fixed, then dmin with the best d
    const float d = round_f16(max_scale / k);
    const double e = total(d, f.dmin);
    if (e < best) best = e, f.d = d;
  }
  for (float k : ks) {
    const float dmin = round_f16(max_min / k);
    const double e = total(f.d, dmin);
    if (e < best) best = e, f.dmin = dmin;
  }
  fill(f.d, f.dmin);
  for (int j = 0; j < nsub; ++j) {  // local refinement of each sub-block's integer scale and min
    const float* xs = x + len * j;
    int bs = f.sc[j], bm = f.m[j];
    double be = sse_affine(xs, wsub(j), len, f.d * float(bs), f.dmin * float(bm), nmax, nullptr);
    for (int ds = -1; ds <= 1; ++ds) {
      for (int dm = -1; dm <= 1; ++dm) {
        const int s2 = f.sc[j] + ds, m2 = f.m[j] + dm;
        if ((ds == 0 && dm == 0) || s2 < 0 || s2 > smax || m2 < 0 || m2 > smax) continue;
        const double e = sse_affine(xs, wsub(j), len, f.d * float(s2), f.dmin * float(m2), nmax, nullptr);
        if (e < be) be = e, bs = s2, bm = m2;
      }
    }
    f.sc[j] = bs, f.m[j] = bm;
    sse_affine(xs, wsub(j), len, f.d * float(bs), f.dmin * float(bm), nmax, f.L + len * j);
  }
  return f;
}

void encode_q45_k(int bits, const float* x, const float* step, uint8_t* block, const float* qw_in) {
  const int nmax = (1 << bits) - 1;
  float wbuf[kQK_K];
  const float* qw = block_weights(qw_in, 8, 32, wbuf);
  float scales[8], mins[8];
  for (int j = 0; j < 8; ++j) {
    const float* xs = x + 32 * j;
    const float* ws = qw ? qw + 32 * j : nullptr;
    scales[j] = bits == 4 ? fit_scale_min(32, nmax, xs, ws, -1.0f, 0.1f, 20, &mins[j])
                          : fit_scale_min(32, nmax, xs, ws, -0.5f, 0.1f, 15, &mins[j]);
    int lo, hi;
    if (step && grid_range(xs, 32, step[j], &lo, &hi)) {
      lo = std::min(lo, 0);
      const int span = std::max(hi - lo, 1);
      if (span <= nmax) {
        const float s2 = step[j] / float(nmax / span), m2 = -float(lo) * step[j];
        if (sse_affine(xs, ws, 32, s2, m2, nmax, nullptr) < sse_affine(xs, ws, 32, scales[j], mins[j], nmax, nullptr))
          scales[j] = s2, mins[j] = m2;
      }
    }
  }
  const AffineFit f = fit_affine_superblock(x, qw, 8, 32, nmax, 63, scales, mins);
  write_q45_k(bits, f.d, f.dmin, f.sc, f.m, f.L, block);
}

void write_q45_k(int bits, float best_d, float best_dmin, const int* sc, const int* m, const uint8_t* L, uint8_t* block) {
  store_f16(block, best_d);
  store_f16(block + 2, best_dmin);
  pack_scales(block + 4, sc, m);
  if (bits == 4) {
    uint8_t* q = block + 16;
    for (int j = 0; j < kQK_K; j += 64, q += 32)
      for (int l = 0; l < 32; ++l) q[l] = uint8_t(L[j + l] | (L[j + l + 32] << 4));
    return;
  }
  uint8_t* qh = block + 16;
  uint8_t* ql = block + 48;
  std::memset(qh, 0, 32);
  uint8_t m1 = 1, m2 = 2;
  for (int n = 0; n < kQK_K; n += 64, ql += 32, m1 = uint8_t(m1 << 2), m2 = uint8_t(m2 << 2)) {
    for (int l = 0; l < 32; ++l) {
      int l1 = L[n + l], l2 = L[n + l + 32];
      if (l1 > 15) l1 -= 16, qh[l] |= m1;
      if (l2 > 15) l2 -= 16, qh[l] |= m2;
      ql[l] = uint8_t(l1 | (l2 << 4));
    }
  }
}

namespace {

// make_qx_quants (nmax 32, levels -32..31) with unit weights: the signed scale of 16 values.
float fit_scale_sym(const float* x) {
  float amax = 0, mx = 0;
  for (int i = 0; i < 16; ++i)
    if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), mx = x[i];
  if (amax < 1e-15f) return 0.0f;
  float scale = 0, best = 0;
  for (int is = -9; is <= 9; ++is) {
    const float iscale = -(32.0f + 0.1f * float(is)) / mx;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < 16; ++i) {
      const int l = std::clamp(nearest_int(iscale * x[i]), -32, 31);
      sumlx += x[i] * float(l);
      suml2 += float(l * l);
    }
    if (suml2 > 0 && (is == -9 || sumlx * sumlx > best * suml2)) {
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

double sse_sym(const float* x, float d, int8_t* L) {
  double e = 0;
  for (int i = 0; i < 16; ++i) {
    const int l = d != 0.0f ? std::clamp(nearest_int(x[i] / d), -32, 31) : 0;
    if (L) L[i] = int8_t(l);
    const double diff = double(d * float(l)) - double(x[i]);
    e += diff * diff;
  }
  return e;
}

}  // namespace

void encode_q6_k(const float* x, const float* step, uint8_t* block) {
  float scales[16];
  float max_scale = 0, amax = 0;
  for (int j = 0; j < 16; ++j) {
    const float* xs = x + 16 * j;
    scales[j] = fit_scale_sym(xs);
    int lo, hi;
    if (step && grid_range(xs, 16, step[j / 2], &lo, &hi)) {
      const int m = std::min(lo < 0 ? 32 / -lo : 64, hi > 0 ? 31 / hi : 64);
      if (m >= 1 && m < 64) {
        const float s2 = step[j / 2] / float(m);
        if (sse_sym(xs, s2, nullptr) < sse_sym(xs, scales[j], nullptr)) scales[j] = s2;
      }
    }
    if (std::fabs(scales[j]) > amax) amax = std::fabs(scales[j]), max_scale = scales[j];
  }
  std::memset(block, 0, 210);
  if (amax < 1e-15f) return;  // all zero: d = 0
  int sc[16];
  auto total = [&](float d) {
    double e = 0;
    for (int j = 0; j < 16; ++j) {
      sc[j] = d != 0.0f ? std::clamp(nearest_int(scales[j] / d), -128, 127) : 0;
      e += sse_sym(x + 16 * j, d * float(sc[j]), nullptr);
    }
    return e;
  };
  const float ks[] = {-128.0f, -127.0f, -126.0f, -125.0f, -124.0f, 127.0f, 126.0f, 125.0f, 124.0f, 123.0f};
  float best_d = round_f16(max_scale / ks[0]);
  double best = total(best_d);
  for (float k : ks) {
    const float d = round_f16(max_scale / k);
    const double e = total(d);
    if (e < best) best = e, best_d = d;
  }
  total(best_d);
  int8_t L[kQK_K];
  for (int j = 0; j < 16; ++j) {
    int bs = sc[j];
    double be = sse_sym(x + 16 * j, best_d * float(bs), nullptr);
    for (int ds : {-1, 1}) {
      const int s2 = sc[j] + ds;
      if (s2 < -128 || s2 > 127) continue;
      const double e = sse_sym(x + 16 * j, best_d * float(s2), nullptr);
      if (e < be) be = e, bs = s2;
    }
    sc[j] = bs;
    sse_sym(x + 16 * j, best_d * float(sc[j]), L + 16 * j);
  }
  uint8_t* ql = block;
  uint8_t* qh = block + 128;
  for (int j = 0; j < 16; ++j) block[192 + j] = uint8_t(int8_t(sc[j]));
  store_f16(block + 208, best_d);
  for (int n = 0; n < kQK_K; n += 128, ql += 64, qh += 32) {
    for (int l = 0; l < 32; ++l) {
      const int q1 = L[n + l] + 32, q2 = L[n + l + 32] + 32, q3 = L[n + l + 64] + 32, q4 = L[n + l + 96] + 32;
      ql[l] = uint8_t((q1 & 0x0F) | ((q3 & 0x0F) << 4));
      ql[l + 32] = uint8_t((q2 & 0x0F) | ((q4 & 0x0F) << 4));
      qh[l] = uint8_t((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
    }
  }
}

}  // namespace mc::gguf_detail

// Scalar FP element codecs, scheme names, and the plain per-element reference quantizer
// (quant/fp_formats.h). The encoders here search every code for the nearest value (ties to the even code):
// a different route to the same codes as the bit arithmetic of fp_formats.cpp, which the tests compare.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "mcompress/error.h"
#include "mcompress/half.h"
#include "mcompress/quant/fp_formats.h"
#include "quant/fp_formats_detail.h"

namespace mc {
namespace {

// The code in 0..last whose value is nearest to a >= 0 (ties: the even code); `value` decodes a code.
template <typename Decode>
uint8_t nearest_code(float a, int last, Decode value) {
  if (a >= value(last)) return static_cast<uint8_t>(last);  // saturation (and +inf)
  int best = 0;
  double best_d = std::numeric_limits<double>::infinity();
  for (int c = 0; c <= last; ++c) {
    const double d = std::fabs(static_cast<double>(a) - static_cast<double>(value(c)));
    if (d < best_d || (d == best_d && c % 2 == 0)) {
      best = c;
      best_d = d;
    }
  }
  return static_cast<uint8_t>(best);
}

float group_amax(const float* p, int64_t n, int64_t stride) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(p[i * stride]));
  return m;
}

}  // namespace

float e4m3_to_float(uint8_t code) { return e4m3_to_f32(code); }

uint8_t float_to_e4m3(float x) {
  if (std::isnan(x)) return 0x7F;
  const uint8_t m = nearest_code(std::fabs(x), 0x7E, [](int c) { return e4m3_to_float(static_cast<uint8_t>(c)); });
  return std::signbit(x) ? static_cast<uint8_t>(m | 0x80) : m;
}

float e2m1_to_float(uint8_t code) {
  const int sign = (code >> 3) & 1, exponent = (code >> 1) & 3, mantissa = code & 1;
  const float magnitude = exponent == 0 ? 0.5f * static_cast<float>(mantissa)
                                        : std::ldexp(1.0f + 0.5f * static_cast<float>(mantissa), exponent - 1);
  return sign ? -magnitude : magnitude;
}

uint8_t float_to_e2m1(float x) {
  if (std::isnan(x)) fail("fp", "E2M1 has no NaN");
  const uint8_t m = nearest_code(std::fabs(x), 7, [](int c) { return e2m1_to_float(static_cast<uint8_t>(c)); });
  return std::signbit(x) ? static_cast<uint8_t>(m | 0x08) : m;
}

float e8m0_to_float(uint8_t code) {
  if (code == 0xFF) return std::numeric_limits<float>::quiet_NaN();
  return std::ldexp(1.0f, static_cast<int>(code) - 127);
}

FpScheme parse_fp_scheme(const std::string& name) {
  for (FpScheme s : {FpScheme::fp8, FpScheme::fp8_channel, FpScheme::fp8_block, FpScheme::mxfp8, FpScheme::mxfp4,
                     FpScheme::nvfp4}) {
    if (fp_scheme_name(s) == name) return s;
  }
  fail("fp", "unknown scheme '", name, "' (allowed: fp8, fp8-channel, fp8-block, mxfp8, mxfp4, nvfp4)");
}

std::string fp_scheme_name(FpScheme scheme) {
  switch (scheme) {
    case FpScheme::fp8: return "fp8";
    case FpScheme::fp8_channel: return "fp8-channel";
    case FpScheme::fp8_block: return "fp8-block";
    case FpScheme::mxfp8: return "mxfp8";
    case FpScheme::mxfp4: return "mxfp4";
    case FpScheme::nvfp4: return "nvfp4";
  }
  return "?";
}

bool fp_scheme_is_fp4(FpScheme scheme) { return scheme == FpScheme::mxfp4 || scheme == FpScheme::nvfp4; }

int64_t fp_scheme_group_size(FpScheme scheme) {
  switch (scheme) {
    case FpScheme::mxfp8:
    case FpScheme::mxfp4: return 32;
    case FpScheme::nvfp4: return 16;
    case FpScheme::fp8_block: return fp_detail::kBlock;
    default: return 0;
  }
}

double fp_scheme_bits_per_weight(FpScheme scheme, int64_t rows, int64_t cols) {
  const double n = static_cast<double>(rows) * static_cast<double>(cols);
  switch (scheme) {
    case FpScheme::fp8: return 8.0 + 32.0 / n;
    case FpScheme::fp8_channel: return 8.0 + 32.0 / static_cast<double>(cols);
    case FpScheme::fp8_block: {
      const int64_t b = fp_detail::kBlock;
      return 8.0 + 32.0 * static_cast<double>(((rows + b - 1) / b) * ((cols + b - 1) / b)) / n;
    }
    case FpScheme::mxfp8:
    case FpScheme::mxfp4:
    case FpScheme::nvfp4: {
      const int64_t g = fp_scheme_group_size(scheme);
      return (fp_scheme_is_fp4(scheme) ? 4.0 : 8.0) + 8.0 * static_cast<double>(rows * ((cols + g - 1) / g)) / n +
             (scheme == FpScheme::nvfp4 ? 32.0 / n : 0.0);
    }
  }
  return 0.0;
}

void fp_detail::check_weight(const at::Tensor& w, FpScheme scheme, const std::string& layer) {
  const std::string where = layer.empty() ? std::string("weight") : layer;
  if (!w.defined() || w.dim() != 2 || !w.is_floating_point() || w.size(0) == 0 || w.size(1) == 0) {
    fail("fp", fp_scheme_name(scheme), ": ", where, " is not a non-empty 2-D floating-point matrix");
  }
  if (fp_scheme_is_fp4(scheme) && w.size(1) % 2 != 0) {
    fail("fp", fp_scheme_name(scheme), ": ", where, " has an odd in_features ", w.size(1),
         " (FP4 codes are stored two per byte)");
  }
  if (!at::isfinite(w).all().item<bool>()) fail("fp", fp_scheme_name(scheme), ": ", where, " has NaN or Inf values");
}

FpQuantResult fp_quantize_ref(const at::Tensor& w_in, FpScheme scheme, const std::string& layer) {
  fp_detail::check_weight(w_in, scheme, layer);
  const at::Tensor w = w_in.to(at::kFloat).cpu().contiguous();
  const int64_t rows = w.size(0), cols = w.size(1);
  const float* p = w.data_ptr<float>();
  FpQuantResult r;
  r.scheme = scheme;
  r.rows = rows;
  r.cols = cols;
  std::vector<uint8_t> codes(static_cast<size_t>(rows * cols));
  const bool fp4 = fp_scheme_is_fp4(scheme);
  if (scheme == FpScheme::fp8 || scheme == FpScheme::fp8_channel || scheme == FpScheme::fp8_block) {
    // Scale blocks: the whole matrix, one row, or 128x128.
    const int64_t br = scheme == FpScheme::fp8 ? rows : scheme == FpScheme::fp8_channel ? 1 : fp_detail::kBlock;
    const int64_t bc = scheme == FpScheme::fp8_block ? fp_detail::kBlock : cols;
    const int64_t nr = (rows + br - 1) / br, nc = (cols + bc - 1) / bc;
    std::vector<float> scales(static_cast<size_t>(nr * nc));
    for (int64_t i = 0; i < nr; ++i) {
      for (int64_t j = 0; j < nc; ++j) {
        float amax = 0.0f;
        for (int64_t r0 = i * br; r0 < std::min(rows, (i + 1) * br); ++r0) {
          amax = std::max(amax, group_amax(p + r0 * cols + j * bc, std::min(bc, cols - j * bc), 1));
        }
        const float s = amax == 0.0f ? 1.0f : amax / 448.0f;
        scales[static_cast<size_t>(i * nc + j)] = s;
        for (int64_t r0 = i * br; r0 < std::min(rows, (i + 1) * br); ++r0) {
          for (int64_t c = j * bc; c < std::min(cols, (j + 1) * bc); ++c) {
            codes[static_cast<size_t>(r0 * cols + c)] = float_to_e4m3(p[r0 * cols + c] / s);
          }
        }
      }
    }
    r.scales = at::from_blob(scales.data(), {nr, nc}, at::kFloat).clone();
    if (scheme == FpScheme::fp8) r.scales = r.scales.reshape({1});
  } else {
    const int64_t g = fp_scheme_group_size(scheme), ng = (cols + g - 1) / g;
    std::vector<uint8_t> scales(static_cast<size_t>(rows * ng));
    float global = 1.0f;
    if (scheme == FpScheme::nvfp4) {
      global = fp_detail::nvfp4_global_scale(group_amax(p, rows * cols, 1));
      r.global_scale = at::full({1}, global, at::kFloat);
    }
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t k = 0; k < ng; ++k) {
        const float* grp = p + i * cols + k * g;
        const int64_t len = std::min(g, cols - k * g);  // the last group may be shorter
        const float amax = group_amax(grp, len, 1);
        uint8_t sc = 0;
        float divisor = 1.0f;
        if (scheme == FpScheme::nvfp4) {
          sc = float_to_e4m3((amax / 6.0f) * global);
          if (sc == 0) sc = fp_detail::kNvfp4ZeroScaleCode;
          divisor = e4m3_to_float(sc) / global;
        } else {
          const int emax = fp4 ? fp_detail::kE2M1Emax : fp_detail::kE4M3Emax;
          if (amax > 0.0f) {
            int e = 0;
            std::frexp(amax, &e);  // amax = f * 2^e, f in [0.5, 1): floor(log2(amax)) = e - 1
            sc = static_cast<uint8_t>(std::clamp(e - 1 - emax + 127, 0, 254));
          }
          divisor = e8m0_to_float(sc);
        }
        scales[static_cast<size_t>(i * ng + k)] = sc;
        for (int64_t c = 0; c < len; ++c) {
          const float x = grp[c] / divisor;
          codes[static_cast<size_t>(i * cols + k * g + c)] = fp4 ? float_to_e2m1(x) : float_to_e4m3(x);
        }
      }
    }
    r.scales = at::from_blob(scales.data(), {rows, ng}, at::kByte).clone();
  }
  if (fp4) {
    std::vector<uint8_t> packed(static_cast<size_t>(rows * cols / 2));
    for (size_t j = 0; j < packed.size(); ++j) {
      packed[j] = static_cast<uint8_t>(codes[2 * j] | (codes[2 * j + 1] << 4));
    }
    r.codes = at::from_blob(packed.data(), {rows, cols / 2}, at::kByte).clone();
  } else {
    r.codes = at::from_blob(codes.data(), {rows, cols}, at::kByte).clone();
  }
  return r;
}

}  // namespace mc

// Reference RTN quantizer: the grid of rtn.h written as plain loops over rows, groups and elements,
// one float operation at a time in the order rtn.cpp's tensor ops use, so codes and scales match
// the ATen path exactly.
#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "mcompress/error.h"
#include "mcompress/half.h"
#include "mcompress/quant/rtn.h"
#include "quant/rtn_grid.h"

namespace mc {

namespace {

struct RefGrid {
  float scale = 1, inv = 1, zero = 0;
};

float up16(float s) {
  uint16_t h = f32_to_f16(s);
  if (f16_to_f32(h) < s) ++h;
  return f16_to_f32(h);
}

// Symmetric: hi = max |w| of the group (lo unused). Asymmetric: lo <= 0 <= hi.
RefGrid ref_grid(float lo, float hi, float p, const QuantSpec& spec) {
  const int maxq = (1 << spec.bits) - 1;
  float scale, lo_p = 0;
  if (spec.symmetric) {
    const float amax_p = hi * p;
    scale = amax_p * rtn_sym_scale_factor(spec.bits);
  } else {
    lo_p = lo * p;
    const float hi_p = hi * p;
    const float range = hi_p - lo_p;
    scale = range * rtn_inv_maxq(spec.bits);
  }
  RefGrid g;
  g.scale = up16(scale);
  if (g.scale == 0) g.scale = 1;
  g.inv = 1.0f / g.scale;
  if (spec.symmetric) {
    g.zero = float(1 << (spec.bits - 1));
  } else {
    const float neg_lo = -lo_p;
    g.zero = std::min(std::max(std::nearbyint(neg_lo * g.inv), 0.0f), float(maxq));
  }
  return g;
}

// round(w * inv + zero): the sum is exact in double, then rounded once (half to even).
float ref_code(float w, const RefGrid& g, int maxq) {
  const float y = w * g.inv;
  const double q = std::nearbyint(double(y) + double(g.zero));
  return float(std::min(std::max(q, 0.0), double(maxq)));
}

}  // namespace

QuantResult rtn_quantize_ref(const at::Tensor& w, const QuantSpec& spec, const std::string& layer) {
  const std::string at_layer = layer.empty() ? std::string() : "layer " + layer + ": ";
  if (w.dim() != 2) fail("rtn", at_layer, "expected a 2-D weight [out, in], got ", w.dim(), " dims");
  const int64_t out = w.size(0), in = w.size(1);
  spec.validate(layer, in);
  at::Tensor x = w.detach().to(at::kCPU).to(at::kFloat).contiguous();
  const float* X = x.data_ptr<float>();
  const int maxq = (1 << spec.bits) - 1;
  const int64_t G = spec.n_groups(in), gcols = spec.group_cols(in);

  for (int64_t i = 0; i < out * in; ++i)
    if (!std::isfinite(X[i])) fail("rtn", at_layer, "weights contain NaN or Inf");
  // The range of a run of weights: max |w| (symmetric) or [min(0, min w), max(0, max w)].
  auto range_of = [&](const float* v, int64_t n, float& lo, float& hi) {
    lo = 0, hi = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (spec.symmetric) hi = std::max(hi, std::fabs(v[i]));
      else lo = std::min(lo, v[i]), hi = std::max(hi, v[i]);
    }
  };
  float all_lo, all_hi;  // per tensor
  range_of(X, out * in, all_lo, all_hi);

  std::vector<uint8_t> codes(size_t(out * in));
  std::vector<float> scales(size_t(out * G)), zeros(size_t(out * G));
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t g = 0; g < G; ++g) {
      const int64_t c0 = g * gcols, c1 = std::min(in, c0 + gcols);
      const float* row = X + o * in;
      float lo = all_lo, hi = all_hi;
      if (spec.group_size >= 0) range_of(row + c0, c1 - c0, lo, hi);
      RefGrid best = ref_grid(lo, hi, 1.0f, spec);
      if (spec.mse_clip) {
        double best_err = std::numeric_limits<double>::infinity();
        for (int i = 0; i < kRtnClipSteps; ++i) {
          RefGrid cand = ref_grid(lo, hi, rtn_clip_ratio(i), spec);
          double err = 0;
          for (int64_t c = c0; c < c1; ++c) {
            float d = (ref_code(row[c], cand, maxq) - cand.zero) * cand.scale;
            d = d - row[c];
            err += double(d * d);
          }
          if (i == 0 || err < best_err) best_err = err, best = cand;
        }
      }
      if (!std::isfinite(best.scale))
        fail("rtn", at_layer, "max |w| ", std::max(-lo, hi), " needs a scale beyond the float16 range (65504)");
      for (int64_t c = c0; c < c1; ++c) codes[size_t(o * in + c)] = uint8_t(ref_code(row[c], best, maxq));
      scales[size_t(o * G + g)] = best.scale;
      zeros[size_t(o * G + g)] = best.zero;
    }
  }
  QuantResult r;
  r.spec = spec;
  r.codes = at::empty({out, in}, at::kByte);
  r.scales = at::empty({out, G}, at::kFloat);
  r.zeros = at::empty({out, G}, at::kFloat);
  if (!codes.empty()) std::memcpy(r.codes.data_ptr(), codes.data(), codes.size());
  if (!scales.empty()) {
    std::memcpy(r.scales.data_ptr(), scales.data(), scales.size() * sizeof(float));
    std::memcpy(r.zeros.data_ptr(), zeros.data(), zeros.size() * sizeof(float));
  }
  return r;
}

}  // namespace mc

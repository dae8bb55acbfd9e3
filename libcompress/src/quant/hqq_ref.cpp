// Reference HQQ: the loop of quant/hqq.h written per group with plain loops over its elements, one
// float operation at a time in the order hqq.cpp's tensor ops use (sums in double), so the codes and
// zeros match the ATen path. The power |d|^(p-1) is taken in double in both: float pow differs by an ulp
// between ATen's vectorised kernel and libm, double rounded to float practically never does.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "mcompress/half.h"
#include "mcompress/quant/hqq.h"
#include "quant/hqq_check.h"

namespace mc {

namespace {

struct Group {
  const float* w;  // the group's weights
  int64_t n;       // its columns
  float s, inv;    // scale, 1/scale
};

// Σ |w - (q - z) * s| in double.
double group_error(const Group& g, const std::vector<float>& q, float z) {
  double e = 0;
  for (int64_t j = 0; j < g.n; ++j) e += std::fabs(g.w[j] - (q[size_t(j)] - z) * g.s);
  return e;
}

// One zero-point step: f16(mean(q - (w - shrink_lp(w - W_r)) * inv)).
float next_zero(const Group& g, const std::vector<float>& q, float z, double beta, double p) {
  const float inv_beta = float(1.0 / beta);
  double sum = 0;
  for (int64_t j = 0; j < g.n; ++j) {
    const float d = g.w[j] - (q[size_t(j)] - z) * g.s;
    const float a = std::fabs(d);
    const float thr = float(std::pow(double(a), p - 1.0)) * inv_beta;
    const float m = a - thr;
    const float sign = d > 0 ? 1.0f : d < 0 ? -1.0f : 0.0f;
    const float we = (m > 0 ? m : 0.0f) * sign;
    sum += double(q[size_t(j)] - (g.w[j] - we) * g.inv);
  }
  return f16_to_f32(f32_to_f16(float(sum / double(g.n))));
}

}  // namespace

QuantResult hqq_quantize_ref(const at::Tensor& w, const QuantSpec& spec, const HqqOptions& o,
                             const std::string& layer) {
  hqq_check(w, spec, o, layer);
  const at::Tensor x = w.detach().to(at::kCPU).to(at::kFloat).contiguous();
  QuantResult r = rtn_quantize_ref(x, spec, layer);
  const int64_t out = x.size(0), in = x.size(1), gs = spec.group_cols(in), G = spec.n_groups(in);
  const float maxq = float((1 << spec.bits) - 1);
  const float* X = x.data_ptr<float>();
  uint8_t* C = r.codes.data_ptr<uint8_t>();
  const float* S = r.scales.data_ptr<float>();
  float* Z = r.zeros.data_ptr<float>();
  for (int64_t row = 0; row < out; ++row) {
    for (int64_t k = 0; k < G; ++k) {
      const int64_t c0 = k * gs;
      Group g{X + row * in + c0, std::min(gs, in - c0), S[row * G + k], 0};
      g.inv = 1.0f / g.s;
      uint8_t* codes = C + row * in + c0;
      std::vector<float> q(codes, codes + g.n), best_q = q;
      float z = Z[row * G + k], best_z = z;
      double best = std::numeric_limits<double>::infinity(), beta = o.beta;
      for (int t = 0;; ++t) {
        const double e = group_error(g, q, z);
        if (!(e < best)) break;
        best = e, best_q = q, best_z = z;
        if (t == o.iters) break;
        z = next_zero(g, q, z, beta, o.lp_norm);
        for (int64_t j = 0; j < g.n; ++j)
          q[size_t(j)] = std::min(std::max(std::nearbyint(g.w[j] * g.inv + z), 0.0f), maxq);
        beta *= o.kappa;
      }
      for (int64_t j = 0; j < g.n; ++j) codes[j] = uint8_t(best_q[size_t(j)]);
      Z[row * G + k] = best_z;
    }
  }
  return r;
}

}  // namespace mc

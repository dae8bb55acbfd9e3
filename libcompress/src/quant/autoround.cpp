// AutoRound (quant/autoround.h): the differentiable grid, its codes, and the signed-gradient tuning.
#include "mcompress/quant/autoround.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <limits>

#include "mcompress/error.h"
#include "mcompress/half.h"
#include "quant/grouped.h"
#include "quant/rtn_grid.h"

namespace mc {

namespace {

constexpr const char* kComp = "autoround";
// Adding 1.5 * 2^23 rounds a float of magnitude < 2^22 to an integer, half to even (as rtn.cpp does).
constexpr double kRoundMagic = 12582912.0;

std::string where(const std::string& layer) { return layer.empty() ? std::string() : "layer " + layer + ": "; }

// x's value with y's gradient: y + (x - x) would round; this adds an exact zero that carries the graph.
at::Tensor ste(const at::Tensor& value, const at::Tensor& grad_of) { return value + (grad_of - grad_of.detach()); }

struct Grid {
  at::Tensor value;  // float [out, in]: (q - zero) * scale, differentiable in the state
  at::Tensor codes;  // float [out, G, gs] (padded)
  at::Tensor scale, zero;  // float [out, G]
};

void check(const at::Tensor& w, const QuantSpec& spec, const std::string& layer) {
  if (w.dim() != 2) fail(kComp, where(layer), "expected a 2-D weight [out, in], got ", w.dim(), " dims");
  spec.validate(layer, w.size(1));
  if (spec.group_size < 0)
    fail(kComp, where(layer), "per-tensor grids are not supported (the variables are per group: use groups or "
         "per-channel)");
}

void check_state(const at::Tensor& w, const QuantSpec& spec, const AutoRoundState& s) {
  const int64_t out = w.size(0), G = spec.n_groups(w.size(1));
  if (!s.v.defined() || !s.v.sizes().equals(w.sizes()) || !s.alpha.defined() || !s.beta.defined() ||
      !s.alpha.sizes().equals({out, G}) || !s.beta.sizes().equals({out, G}))
    fail(kComp, "state shapes do not match the weight [", out, ", ", w.size(1), "] with ", G, " groups per row");
}

Grid grid(const at::Tensor& w, const QuantSpec& spec, const AutoRoundState& s) {
  const int64_t out = w.size(0), in = w.size(1), G = spec.n_groups(in), gs = spec.group_cols(in);
  const int maxq = (1 << spec.bits) - 1;
  const at::Tensor x = grouped_columns(w.detach().to(at::kFloat), G, gs, 0.0);  // zeros: the range holds 0 anyway
  const at::Tensor lo = std::get<0>(x.min(-1)).clamp_max_(0), hi = std::get<0>(x.max(-1)).clamp_min_(0);
  at::Tensor raw = spec.symmetric ? at::maximum(s.alpha * hi, s.beta * lo.neg()) * rtn_sym_scale_factor(spec.bits)
                                  : (s.alpha * hi - s.beta * lo) * rtn_inv_maxq(spec.bits);
  at::Tensor s16 = round_up_to_f16(raw.detach());
  s16.masked_fill_(s16.eq(0), 1.0);
  const at::Tensor scale = ste(s16, raw);
  const at::Tensor inv = at::reciprocal(scale);
  at::Tensor zero;
  if (spec.symmetric) {
    zero = at::full_like(s16, double(1 << (spec.bits - 1)));
  } else {
    // 0 <= zc <= maxq always (lo <= 0 <= hi, alpha, beta > 0): the clamp is rtn.h's, never active here.
    const at::Tensor zc = (s.beta * lo).neg() * inv;
    zero = ste(zc.detach().round().clamp_(0, maxq), zc);
  }
  const at::Tensor v = grouped_columns(s.v, G, gs, 0.0);
  const at::Tensor t = x * inv.unsqueeze(-1) + v;  // w * (1/scale) + v
  const at::Tensor z3 = zero.unsqueeze(-1);
  // round(t + zero), exactly as rtn.cpp: one float addition of (zero + magic) rounds the exact sum.
  const at::Tensor shifted = t.detach() + (z3.detach() + kRoundMagic);
  const at::Tensor r = shifted - kRoundMagic;
  const at::Tensor inside = r.ge(0).logical_and_(r.le(maxq));
  const at::Tensor q = ste(r.clamp(0, maxq), (t + z3) * inside);
  const at::Tensor value = ((q - z3) * scale.unsqueeze(-1)).reshape({out, G * gs}).narrow(1, 0, in);
  return {value, q.detach(), s16, zero.detach()};
}

// up5 (autoround.h): x > 0 rounded up to k * 2^e with 16 <= k < 32 (0 stays 0), exactly: frexp gives
// x = f * 2^E, f in [0.5, 1); k = ceil(f * 32) (32 is 2^E itself).
at::Tensor up5(const at::Tensor& x) {
  auto [f, e] = at::frexp(x);
  const at::Tensor k = at::ceil(f * 32.0f);
  // 2^(E - 5) from the float32 bit pattern (normal range: the scales of any real weight).
  const at::Tensor p = (e.to(at::kInt) - 5 + 127).clamp_(1, 254).__lshift__(23).contiguous().view(at::kFloat);
  return k * p;
}

float up5_scalar(float x) {
  if (x == 0.0f) return 0.0f;
  int e = 0;
  const float f = std::frexp(x, &e);
  return std::ceil(f * 32.0f) * std::ldexp(1.0f, e - 5);
}

constexpr int64_t kSuper = 8;  // groups of 32 per K-quant super-block (256 columns)

Grid kquant_grid(const at::Tensor& w, const QuantSpec& spec, const AutoRoundState& s) {
  const int64_t out = w.size(0), in = w.size(1), G = in / 32;
  const int maxq = (1 << spec.bits) - 1;
  const at::Tensor x = w.detach().to(at::kFloat).reshape({out, G, 32});
  const at::Tensor lo = std::get<0>(x.min(-1)).clamp_max_(0), hi = std::get<0>(x.max(-1)).clamp_min_(0);
  const at::Tensor raw_s = ((s.alpha * hi - s.beta * lo) * rtn_inv_maxq(spec.bits)).reshape({out, G / kSuper, kSuper});
  const at::Tensor raw_m = (s.beta * lo).neg().reshape({out, G / kSuper, kSuper});
  auto super_scale = [](const at::Tensor& raw) {  // up5(max / 63), 1 where 0, gradient straight through
    const at::Tensor r = std::get<0>(raw.max(-1, true)) / 63.0f;
    at::Tensor u = up5(r.detach());
    u.masked_fill_(u.eq(0), 1.0);
    return ste(u, r);
  };
  const at::Tensor d = super_scale(raw_s), dmin = super_scale(raw_m);
  const at::Tensor sc_raw = raw_s / d, m_raw = raw_m / dmin;
  const at::Tensor sc = ste(sc_raw.detach().round().clamp_(1, 63), sc_raw);
  const at::Tensor m = ste(m_raw.detach().round().clamp_(0, 63), m_raw);
  const at::Tensor scale = (d * sc).reshape({out, G}), mn = (dmin * m).reshape({out, G});
  const at::Tensor inv = at::reciprocal(scale);
  const at::Tensor t = (x + mn.unsqueeze(-1)) * inv.unsqueeze(-1) + s.v.reshape({out, G, 32});
  const at::Tensor r = t.detach().round();
  const at::Tensor inside = r.ge(0).logical_and_(r.le(maxq));
  const at::Tensor q = ste(r.clamp(0, maxq), t * inside);
  const at::Tensor value = (q * scale.unsqueeze(-1) - mn.unsqueeze(-1)).reshape({out, in});
  return {value, q.detach(), scale.detach(), mn.detach()};  // zero holds the min here
}

Grid grid_of(const at::Tensor& w, const QuantSpec& spec, const AutoRoundState& s, AutoRoundGrid g) {
  return g == AutoRoundGrid::kquant ? kquant_grid(w, spec, s) : grid(w, spec, s);
}

}  // namespace

bool fits_kquant_lattice(const QuantSpec& spec, int64_t in) {
  return (spec.bits == 4 || spec.bits == 5) && !spec.symmetric && spec.group_size == 32 && in > 0 && in % 256 == 0;
}

void check_kquant_lattice(const QuantSpec& spec, int64_t in, const std::string& layer) {
  if (!fits_kquant_lattice(spec, in))
    fail(kComp, where(layer), "the K-quant lattice (Q4_K / Q5_K) needs --bits 4 or 5, --asym, --group-size 32 and rows "
         "of a multiple of 256 columns; got ", spec.describe(), " on ", in, " columns");
}

void AutoRoundOptions::validate() const {
  if (iters < 1 || iters > 100000) fail(kComp, "iterations ", iters, " outside 1..100000");
  if (!(std::isfinite(lr) && lr >= 0)) fail(kComp, "learning rate ", lr, " must be >= 0 (0: 1 / iterations)");
  if (!(std::isfinite(minmax_lr) && minmax_lr >= 0))
    fail(kComp, "min/max learning rate ", minmax_lr, " must be >= 0 (0: the rounding offsets' rate)");
}

AutoRoundState autoround_init(const at::Tensor& w, const QuantSpec& spec, const std::string& layer) {
  check(w, spec, layer);
  if (!at::isfinite(w).all().item<bool>()) fail(kComp, where(layer), "weights contain NaN or Inf");
  const int64_t G = spec.n_groups(w.size(1));
  const auto f = w.options().dtype(at::kFloat);
  return {at::zeros(w.sizes(), f), at::ones({w.size(0), G}, f), at::ones({w.size(0), G}, f)};
}

at::Tensor autoround_weight(const at::Tensor& w, const QuantSpec& spec, const AutoRoundState& s, AutoRoundGrid g) {
  check_state(w, spec, s);
  if (g == AutoRoundGrid::kquant) check_kquant_lattice(spec, w.size(1));
  return grid_of(w, spec, s, g).value;
}

QuantResult autoround_codes(const at::Tensor& w, const QuantSpec& spec, const AutoRoundState& s,
                            const std::string& layer, AutoRoundGrid lattice) {
  check(w, spec, layer);
  check_state(w, spec, s);
  if (lattice == AutoRoundGrid::kquant) check_kquant_lattice(spec, w.size(1), layer);
  at::NoGradGuard no_grad;
  const AutoRoundState d{s.v.detach(), s.alpha.detach(), s.beta.detach()};
  Grid g = grid_of(w, spec, d, lattice);
  QuantResult r;
  r.spec = spec;
  r.codes = g.codes.reshape({w.size(0), -1}).narrow(1, 0, w.size(1)).to(at::kByte).contiguous();
  r.scales = g.scale.contiguous();
  if (lattice == AutoRoundGrid::kquant) {
    r.mins = g.zero.contiguous();
    r.zeros = (r.mins / r.scales).contiguous();  // the nearest zero-code form, for readers of zeros
  } else {
    r.zeros = g.zero.contiguous();
  }
  return r;
}

namespace {
QuantResult kquant_codes_ref(const at::Tensor& w, const QuantSpec& spec, const AutoRoundState& s) {
  const int64_t out = w.size(0), in = w.size(1), G = in / 32;
  const int maxq = (1 << spec.bits) - 1;
  const at::Tensor x = w.detach().to(at::kFloat).cpu().contiguous(), v = s.v.detach().to(at::kFloat).cpu().contiguous();
  const at::Tensor al = s.alpha.detach().to(at::kFloat).cpu().contiguous(),
                   be = s.beta.detach().to(at::kFloat).cpu().contiguous();
  QuantResult r;
  r.spec = spec;
  r.codes = at::zeros({out, in}, at::kByte);
  r.scales = at::zeros({out, G}, at::kFloat);
  r.mins = at::zeros({out, G}, at::kFloat);
  const float* px = x.data_ptr<float>();
  const float* pv = v.data_ptr<float>();
  uint8_t* pc = r.codes.data_ptr<uint8_t>();
  float* ps = r.scales.data_ptr<float>();
  float* pm = r.mins.data_ptr<float>();
  for (int64_t i = 0; i < out; ++i)
    for (int64_t b = 0; b < G / kSuper; ++b) {
      float rs[kSuper], rm[kSuper], smax = 0, mmax = 0;
      for (int64_t j = 0; j < kSuper; ++j) {
        const int64_t g = b * kSuper + j;
        float lo = 0, hi = 0;
        for (int64_t c = 0; c < 32; ++c) lo = std::min(lo, px[i * in + g * 32 + c]), hi = std::max(hi, px[i * in + g * 32 + c]);
        const float a = al.data_ptr<float>()[i * G + g], be_ = be.data_ptr<float>()[i * G + g];
        rs[j] = (a * hi - be_ * lo) * rtn_inv_maxq(spec.bits);
        rm[j] = -(be_ * lo);
        smax = std::max(smax, rs[j]), mmax = std::max(mmax, rm[j]);
      }
      float d = up5_scalar(smax / 63.0f), dmin = up5_scalar(mmax / 63.0f);
      if (d == 0) d = 1;
      if (dmin == 0) dmin = 1;
      for (int64_t j = 0; j < kSuper; ++j) {
        const int64_t g = b * kSuper + j;
        const float sc = std::min(std::max(std::nearbyint(rs[j] / d), 1.0f), 63.0f);
        const float m = std::min(std::max(std::nearbyint(rm[j] / dmin), 0.0f), 63.0f);
        const float scale = d * sc, mn = dmin * m, inv = 1.0f / scale;
        ps[i * G + g] = scale, pm[i * G + g] = mn;
        for (int64_t c = 0; c < 32; ++c) {
          const int64_t k = i * in + g * 32 + c;
          const float t = (px[k] + mn) * inv + pv[k];
          pc[k] = static_cast<uint8_t>(std::min(std::max(std::nearbyint(t), 0.0f), float(maxq)));
        }
      }
    }
  r.zeros = r.mins / r.scales;
  return r;
}
}  // namespace

QuantResult autoround_codes_ref(const at::Tensor& w, const QuantSpec& spec, const AutoRoundState& s,
                                const std::string& layer, AutoRoundGrid lattice) {
  check(w, spec, layer);
  check_state(w, spec, s);
  if (lattice == AutoRoundGrid::kquant) {
    check_kquant_lattice(spec, w.size(1), layer);
    return kquant_codes_ref(w, spec, s);
  }
  const int64_t out = w.size(0), in = w.size(1), G = spec.n_groups(in), gs = spec.group_cols(in);
  const int maxq = (1 << spec.bits) - 1;
  const at::Tensor x = w.detach().to(at::kFloat).cpu().contiguous(), v = s.v.detach().to(at::kFloat).cpu().contiguous();
  const at::Tensor al = s.alpha.detach().to(at::kFloat).cpu().contiguous(),
                   be = s.beta.detach().to(at::kFloat).cpu().contiguous();
  QuantResult r;
  r.spec = spec;
  r.codes = at::zeros({out, in}, at::kByte);
  r.scales = at::zeros({out, G}, at::kFloat);
  r.zeros = at::zeros({out, G}, at::kFloat);
  const float* px = x.data_ptr<float>();
  const float* pv = v.data_ptr<float>();
  uint8_t* pc = r.codes.data_ptr<uint8_t>();
  for (int64_t i = 0; i < out; ++i)
    for (int64_t g = 0; g < G; ++g) {
      const int64_t c0 = g * gs, c1 = std::min(in, c0 + gs);
      float lo = 0, hi = 0;
      for (int64_t c = c0; c < c1; ++c) lo = std::min(lo, px[i * in + c]), hi = std::max(hi, px[i * in + c]);
      const float a = al.data_ptr<float>()[i * G + g], b = be.data_ptr<float>()[i * G + g];
      float raw;
      if (spec.symmetric) {
        raw = std::max(a * hi, b * -lo) * rtn_sym_scale_factor(spec.bits);
      } else {
        const float top = a * hi, bottom = b * lo;
        raw = (top - bottom) * rtn_inv_maxq(spec.bits);
      }
      uint16_t h = f32_to_f16(raw);
      if (f16_to_f32(h) < raw) ++h;
      float scale = f16_to_f32(h);
      if (scale == 0) scale = 1;
      const float inv = 1.0f / scale;
      float zero = float(1 << (spec.bits - 1));
      if (!spec.symmetric) {
        const float bottom = b * lo;
        zero = std::min(std::max(std::nearbyint(-bottom * inv), 0.0f), float(maxq));
      }
      r.scales.data_ptr<float>()[i * G + g] = scale;
      r.zeros.data_ptr<float>()[i * G + g] = zero;
      for (int64_t c = c0; c < c1; ++c) {
        const float y = px[i * in + c] * inv + pv[i * in + c];
        const double q = std::nearbyint(double(y) + double(zero));  // exact sum, rounded once
        pc[i * in + c] = static_cast<uint8_t>(std::min(std::max(q, 0.0), double(maxq)));
      }
    }
  return r;
}

AutoRoundTuned autoround_tune(const std::vector<at::Tensor>& weights, const std::vector<QuantSpec>& specs,
                              const AutoRoundLoss& loss, const AutoRoundOptions& o,
                              const std::vector<std::string>& names, const std::vector<AutoRoundGrid>& grids) {
  o.validate();
  if (specs.size() != weights.size() || (!names.empty() && names.size() != weights.size()) ||
      (!grids.empty() && grids.size() != weights.size()))
    fail(kComp, weights.size(), " weights with ", specs.size(), " grids and ", names.size(), " names");
  auto lattice = [&](size_t i) { return grids.empty() ? AutoRoundGrid::rtn : grids[i]; };
  for (size_t i = 0; i < grids.size(); ++i)
    if (grids[i] == AutoRoundGrid::kquant) check_kquant_lattice(specs[i], weights[i].size(1), names.empty() ? "" : names[i]);
  at::AutoGradMode grad(true);
  auto name = [&](size_t i) { return names.empty() ? std::string() : names[i]; };
  std::vector<at::Tensor> W;
  std::vector<AutoRoundState> st;
  for (size_t i = 0; i < weights.size(); ++i) {
    W.push_back(weights[i].detach().to(at::kFloat));
    st.push_back(autoround_init(W[i], specs[i], name(i)));
    st[i].v.requires_grad_(true);
    if (o.minmax) st[i].alpha.requires_grad_(true), st[i].beta.requires_grad_(true);
  }
  AutoRoundTuned res;
  res.best_loss = std::numeric_limits<double>::infinity();
  auto keep = [&](int it, double l) {
    if (!(l < res.best_loss)) return;
    res.best_loss = l, res.best_iter = it;
    res.state.clear();
    for (const auto& s : st) res.state.push_back({s.v.detach().clone(), s.alpha.detach().clone(), s.beta.detach().clone()});
  };
  for (int it = 0; it <= o.iters; ++it) {
    std::vector<at::Tensor> wq;
    for (size_t i = 0; i < W.size(); ++i) wq.push_back(grid_of(W[i], specs[i], st[i], lattice(i)).value);
    at::Tensor L = loss(wq, it);
    const double l = L.item<double>();
    if (it == 0) {
      if (!std::isfinite(l)) fail(kComp, "the loss at the start (RTN) is ", l, ": the block's outputs are not finite");
      res.first_loss = l;
    }
    if (std::isfinite(l)) keep(it, l);
    if (it == o.iters) break;  // the last evaluation: nothing to step
    L.backward();
    const double decay = 1.0 - double(it) / o.iters;
    const double lr = o.step() * decay, mlr = o.minmax_step() * decay;
    at::NoGradGuard no_grad;
    for (auto& s : st) {
      auto step = [](at::Tensor& p, double rate, double lo, double hi) {
        if (!p.grad().defined()) return;
        p.sub_(p.grad().sign(), rate).clamp_(lo, hi);
        p.mutable_grad().zero_();
      };
      step(s.v, lr, -0.5, 0.5);
      if (o.minmax) step(s.alpha, mlr, 0.5, 1.0), step(s.beta, mlr, 0.5, 1.0);
    }
  }
  for (size_t i = 0; i < W.size(); ++i)
    res.quant.push_back(autoround_codes(W[i], specs[i], res.state[i], name(i), lattice(i)));
  return res;
}

}  // namespace mc

// Round-to-nearest quantization with whole-tensor ATen ops (the grid is described in rtn.h).
// On CPU the rows are processed in blocks of about kBlockElems values by at::parallel_for, so the
// temporaries of the few elementwise passes stay in cache and are reused from block to block (a
// per-thread scratch buffer); on other devices the whole matrix is one block. The ragged last group of a row is a separate [rows, 1, rem] slice next to the
// [rows, full_groups, group_size] main part.
#include "mcompress/quant/rtn.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "mcompress/error.h"
#include "quant/rtn_grid.h"

namespace mc {

namespace {

constexpr const char* kComp = "rtn";
// Values per row block on CPU: 256 Ki floats (1 MiB) keeps the block and its temporaries in the
// L2/L3 cache while making the ~20 ATen calls per block (a few us each) cheap next to the work.
// (Measured on 2 cores, 4096x4096: 2^16 is 1.5-2x slower, 2^18 and 2^19 alike.)
constexpr int64_t kBlockElems = int64_t(1) << 18;

std::string where(const std::string& layer) { return layer.empty() ? std::string() : "layer " + layer + ": "; }

// Contiguous column runs of equal-sized groups: the full groups, then the shorter last one.
struct Part {
  int64_t col0, groups, cols, g0;
};

std::vector<Part> parts_of(int64_t in, int64_t gcols) {
  std::vector<Part> ps;
  const int64_t full = in / gcols, rem = in % gcols;
  if (full > 0) ps.push_back({0, full, gcols, 0});
  if (rem > 0) ps.push_back({full * gcols, 1, rem, full});
  return ps;
}

// m [r, in] -> [r, groups, cols] view of the part's columns (a view: writes go to m).
at::Tensor cols_view(const at::Tensor& m, const Part& p) {
  return m.narrow(1, p.col0, p.groups * p.cols).view({m.size(0), p.groups, p.cols});
}
// g [r, G] -> [r, groups, 1] for broadcasting over a part.
at::Tensor group_view(const at::Tensor& g, const Part& p) { return g.narrow(1, p.g0, p.groups).unsqueeze(-1); }

struct Grid {
  at::Tensor scale, inv;  // [r, G] float32
  at::Tensor zero;        // [r, G] float32 when asymmetric; undefined when symmetric (then 2^(b-1))
};

// The grid of rtn.h shrunk by p. Symmetric: hi = max |w| per group (lo unused); asymmetric:
// lo <= 0 <= hi per group. Each step is one float operation, in the order rtn_ref.cpp uses.
Grid make_grid(const at::Tensor& lo, const at::Tensor& hi, float p, const QuantSpec& spec) {
  const int maxq = (1 << spec.bits) - 1;
  Grid g;
  at::Tensor lo_p;
  // x * 1.0f == x: the unshrunk grid skips that multiplication.
  at::Tensor hi_p = p == 1.0f ? hi : hi.mul(p);
  if (spec.symmetric) {
    g.scale = hi_p.mul(rtn_sym_scale_factor(spec.bits));
  } else {
    lo_p = p == 1.0f ? lo : lo.mul(p);
    g.scale = hi_p.sub(lo_p).mul_(rtn_inv_maxq(spec.bits));
  }
  g.scale = round_up_to_f16(g.scale);
  g.scale.masked_fill_(g.scale.eq(0), 1.0);
  g.inv = at::reciprocal(g.scale);
  if (!spec.symmetric) g.zero = lo_p.neg().mul_(g.inv).round_().clamp_(0, maxq);
  return g;
}

// Buffer reused by the blocks one thread processes (fresh pages are slow to fault in).
struct Scratch {
  at::Tensor f32;  // 1-D, at least one block's values
  at::Tensor view(at::IntArrayRef shape) const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return f32.narrow(0, 0, n).view(shape);
  }
};

// Adding 1.5 * 2^23 to a float of magnitude < 2^22 rounds it to an integer (ties to even, the FPU's
// rounding) held in the low mantissa bits: the float's bits are 0x4B400000 + k for the integer k.
// One addition thus does round(y + zero), and the int32 view's low byte is the code.
constexpr double kRoundMagic = 12582912.0;

constexpr int32_t kMagicBits = 0x4B400000;  // the bits of kRoundMagic

// Whether copying int32 to uint8 keeps the low byte (C++ conversion; LibTorch 1.13 on CPU does),
// so kRoundMagic + q converts to q without subtracting the magic first. Checked once, on CPU.
bool copy_keeps_low_byte(const c10::Device& device) {
  static const bool cpu = [] {
    at::Tensor t = at::full({256}, kMagicBits + 5, at::kInt);  // long enough for the vector path
    return t.to(at::kByte).eq(5).all().item<bool>();
  }();
  return device.is_cpu() && cpu;
}

// Codes of part p of x [r, in] on grid g, shifted by kRoundMagic: kRoundMagic + q with
// q = clamp(round(x * inv + zero), 0, maxq) (in `out` when given; float32 [r, groups, cols]).
at::Tensor shifted_codes(const at::Tensor& x, const Part& p, const Grid& g, const QuantSpec& spec,
                         at::Tensor out = {}) {
  const int maxq = (1 << spec.bits) - 1;
  const at::Tensor v = cols_view(x, p);
  at::Tensor t = out.defined() ? at::mul_out(out, v, group_view(g.inv, p)) : v.mul(group_view(g.inv, p));
  if (spec.symmetric)
    t.add_(kRoundMagic + double(1 << (spec.bits - 1)));
  else
    t.add_(group_view(g.zero, p).add(kRoundMagic));
  return t.clamp_(kRoundMagic, kRoundMagic + maxq);
}

// Sum over each group of the squared dequantization error, in double: [r, G].
at::Tensor group_sq_error(const at::Tensor& x, const std::vector<Part>& parts, const Grid& g,
                          const QuantSpec& spec) {
  std::vector<at::Tensor> errs;
  for (const Part& p : parts) {
    at::Tensor d = shifted_codes(x, p, g, spec);  // kRoundMagic + q
    if (spec.symmetric)
      d.sub_(kRoundMagic + double(1 << (spec.bits - 1)));
    else
      d.sub_(group_view(g.zero, p).add(kRoundMagic));
    d.mul_(group_view(g.scale, p)).sub_(cols_view(x, p));  // (q - zero) * scale - x
    errs.push_back(at::sum(d.mul_(d), {-1}, false, at::kDouble));
  }
  return errs.size() == 1 ? errs[0] : at::cat(errs, 1);
}

at::Tensor cat_groups(std::vector<at::Tensor> ts) { return ts.size() == 1 ? ts[0] : at::cat(ts, 1); }

// Quantizes the rows x [r, in] into the matching rows of the outputs. lo/hi: precomputed ranges
// [r, G] (per tensor; hi alone when symmetric) or undefined (then computed per group here).
void quantize_block(const at::Tensor& x, const std::vector<Part>& parts, const QuantSpec& spec, at::Tensor lo,
                    at::Tensor hi, at::Tensor codes, at::Tensor scales, at::Tensor zeros, const Scratch& scratch) {
  if (!hi.defined()) {
    // aminmax is not vectorized in LibTorch 1.13 (10x slower than amax): separate reductions.
    std::vector<at::Tensor> mins, maxs;
    for (const Part& p : parts) {
      const at::Tensor v = cols_view(x, p);
      if (spec.symmetric) {
        at::Tensor a = scratch.view(v.sizes());
        maxs.push_back(at::amax(at::abs_out(a, v), -1));
      } else {
        mins.push_back(at::amin(v, -1));
        maxs.push_back(at::amax(v, -1));
      }
    }
    hi = cat_groups(maxs);
    if (!spec.symmetric) {
      lo = cat_groups(mins).clamp_max_(0);
      hi.clamp_min_(0);
    }
  }
  Grid best = make_grid(lo, hi, 1.0f, spec);
  if (spec.mse_clip) {
    at::Tensor best_err = group_sq_error(x, parts, best, spec);
    for (int i = 1; i < kRtnClipSteps; ++i) {
      Grid g = make_grid(lo, hi, rtn_clip_ratio(i), spec);
      at::Tensor err = group_sq_error(x, parts, g, spec);
      at::Tensor better = err.lt(best_err);
      best_err = at::where(better, err, best_err);
      best.scale = at::where(better, g.scale, best.scale);
      best.inv = at::where(better, g.inv, best.inv);
      if (!spec.symmetric) best.zero = at::where(better, g.zero, best.zero);
    }
  }
  for (const Part& p : parts) {
    const at::Tensor v = cols_view(x, p);
    at::Tensor q = shifted_codes(x, p, best, spec, scratch.view(v.sizes())).view(at::kInt);
    if (!copy_keeps_low_byte(x.device())) q.sub_(kMagicBits);
    cols_view(codes, p).copy_(q);
  }
  scales.copy_(best.scale);
  if (!spec.symmetric) zeros.copy_(best.zero);
}

[[noreturn]] void non_finite(const at::Tensor& x, const std::string& layer) {
  if (!at::isfinite(x).all().item<bool>()) fail(kComp, where(layer), "weights contain NaN or Inf");
  fail(kComp, where(layer), "max |w| ", x.abs().max().item<float>(),
       " needs a scale beyond the float16 range (65504)");
}

}  // namespace

std::string QuantSpec::describe() const {
  std::string s = str("int", bits, symmetric ? " sym" : " asym");
  if (group_size > 0) s += str(" g", group_size);
  else if (group_size == 0) s += " per-channel";
  else s += " per-tensor";
  if (mse_clip) s += " mse";
  return s;
}

void QuantSpec::validate(const std::string& layer, int64_t in_features) const {
  if (bits < 2 || bits > 8) fail(kComp, where(layer), "bits ", bits, " outside 2..8");
  if (group_size < -1)
    fail(kComp, where(layer), "group_size ", group_size,
         " is not allowed (a size >= 1 for groups of input columns, 0 per output channel, -1 per tensor)");
  if (in_features < 1) fail(kComp, where(layer), "in_features ", in_features, ": nothing to quantize");
}

int64_t QuantSpec::group_cols(int64_t in_features) const { return group_size > 0 ? group_size : in_features; }

int64_t QuantSpec::n_groups(int64_t in_features) const {
  return group_size > 0 ? (in_features + group_size - 1) / group_size : 1;
}

int64_t QuantResult::n_groups() const { return scales.defined() ? scales.size(1) : 0; }

at::Tensor QuantResult::dequantize() const {
  const int64_t in = codes.size(1);
  at::Tensor s = scales.to(at::kFloat), z = zeros.to(at::kFloat);
  if (g_idx.defined()) {  // arbitrary column -> group map (act-order GPTQ)
    const int64_t G = s.size(1);
    if (g_idx.dim() != 1 || g_idx.size(0) != in)
      fail(kComp, "g_idx ", g_idx.sizes(), " does not match in_features ", in, " (expected [", in, "])");
    const at::Tensor gi = g_idx.to(codes.device(), at::kLong);
    if (in > 0 && (gi.min().item<int64_t>() < 0 || gi.max().item<int64_t>() >= G))
      fail(kComp, "g_idx values must lie in 0..", G - 1, ", got ", gi.min().item<int64_t>(), "..",
           gi.max().item<int64_t>());
    return codes.to(at::kFloat).sub_(z.index_select(1, gi)).mul_(s.index_select(1, gi));
  }
  at::Tensor out = at::empty(codes.sizes(), codes.options().dtype(at::kFloat));
  if (mins.defined()) {  // K-quant lattice: code * scale - min (g_idx never goes with it)
    const at::Tensor mn = mins.to(at::kFloat);
    for (const Part& p : parts_of(in, spec.group_cols(in))) {
      at::Tensor c = cols_view(codes, p).to(at::kFloat);
      cols_view(out, p).copy_(c.mul_(group_view(s, p)).sub_(group_view(mn, p)));
    }
    return out;
  }
  for (const Part& p : parts_of(in, spec.group_cols(in))) {
    at::Tensor c = cols_view(codes, p).to(at::kFloat);
    cols_view(out, p).copy_(c.sub_(group_view(z, p)).mul_(group_view(s, p)));
  }
  return out;
}

at::Tensor round_up_to_f16(const at::Tensor& scales) {
  at::Tensor s = scales.to(at::kFloat);
  at::Tensor h = s.to(at::kHalf);
  at::Tensor below = h.to(at::kFloat).lt(s).to(at::kShort);
  // For positive float16 values the next larger value has the next larger bit pattern.
  return h.view(at::kShort).add(below).view(at::kHalf).to(at::kFloat);
}

QuantResult rtn_quantize(const at::Tensor& w, const QuantSpec& spec, const std::string& layer) {
  if (w.dim() != 2) fail(kComp, where(layer), "expected a 2-D weight [out, in], got ", w.dim(), " dims");
  if (!at::isFloatingType(w.scalar_type()))
    fail(kComp, where(layer), "expected floating-point weights, got ", c10::toString(w.scalar_type()));
  const int64_t out = w.size(0), in = w.size(1);
  spec.validate(layer, in);
  at::Tensor x = w.detach().to(at::kFloat).contiguous();
  const int64_t G = spec.n_groups(in);
  QuantResult r;
  r.spec = spec;
  r.codes = at::empty({out, in}, x.options().dtype(at::kByte));
  r.scales = at::empty({out, G}, x.options());
  r.zeros = spec.symmetric ? at::full({out, G}, double(1 << (spec.bits - 1)), x.options())
                           : at::empty({out, G}, x.options());
  if (out == 0) return r;
  const std::vector<Part> parts = parts_of(in, spec.group_cols(in));
  at::Tensor lo, hi;
  if (spec.group_size < 0) {  // per tensor: one range for all rows
    if (spec.symmetric) {
      hi = at::abs(x).max().reshape({1, 1}).expand({out, 1});
    } else {
      lo = x.min().clamp_max(0).reshape({1, 1}).expand({out, 1});
      hi = x.max().clamp_min(0).reshape({1, 1}).expand({out, 1});
    }
  }
  auto rows = [&](int64_t b, int64_t e, const Scratch& scratch) {
    auto sl = [&](const at::Tensor& t) { return t.defined() ? t.narrow(0, b, e - b) : t; };
    quantize_block(sl(x), parts, spec, sl(lo), sl(hi), sl(r.codes), sl(r.scales), sl(r.zeros), scratch);
  };
  const int64_t block = x.is_cpu() ? std::max<int64_t>(1, kBlockElems / in) : out;
  // parallel_for hands each thread one contiguous range (on CPU); walk it in cache-sized blocks.
  auto range = [&](int64_t b, int64_t e) {
    Scratch scratch;
    scratch.f32 = at::empty({std::min(block, e - b) * in}, x.options());
    for (int64_t i = b; i < e; i += block) rows(i, std::min(e, i + block), scratch);
  };
  if (x.is_cpu())
    at::parallel_for(0, out, block, range);
  else
    range(0, out);
  if (!at::isfinite(r.scales).all().item<bool>()) non_finite(x, layer);
  return r;
}

}  // namespace mc

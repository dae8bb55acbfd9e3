// FP8 / MXFP8 / MXFP4 / NVFP4 weight quantization on whole tensors (the formats: quant/fp_formats.h).
// Elements are encoded with integer arithmetic on the float32 bit patterns: for a normal magnitude, the
// float32 mantissa is cut to the element's mantissa bits with round-half-even on the dropped bits (a
// carry into the exponent is the next binade, which is what rounding up there means); below the element's
// smallest normal the magnitude times 2^(bias-1+mantissa) is an integer count of subnormal steps, rounded
// half to even by at::round. Magnitudes are clamped to the element maximum first (saturation).
#include "mcompress/quant/fp_formats.h"

#include <ATen/ATen.h>

#include <array>
#include <cmath>

#include "mcompress/error.h"
#include "quant/fp_formats_detail.h"

namespace mc {
namespace {

struct ElementFormat {
  int mantissa_bits;
  int bias;
  float max;
  int sign_shift;
};
constexpr ElementFormat kE4M3{3, 7, 448.0f, 7};
constexpr ElementFormat kE2M1{1, 1, 6.0f, 3};

at::Tensor encode(const at::Tensor& x, const ElementFormat& f) {
  const at::Tensor xf = x.contiguous();
  const at::Tensor negative = xf.view(at::kInt).lt(0).to(at::kInt);
  const at::Tensor a = xf.abs().clamp_max(f.max).contiguous();
  const at::Tensor bits = a.view(at::kInt);
  const int drop = 23 - f.mantissa_bits;
  const at::Tensor odd = bits.__rshift__(drop).bitwise_and(1);
  const at::Tensor normal = (bits + ((1 << (drop - 1)) - 1) + odd).__rshift__(drop) - ((127 - f.bias) << f.mantissa_bits);
  const float min_normal = std::ldexp(1.0f, 1 - f.bias);
  const float steps_per_unit = std::ldexp(1.0f, f.bias - 1 + f.mantissa_bits);
  const at::Tensor subnormal = at::round(a * steps_per_unit).to(at::kInt);
  const at::Tensor magnitude = at::where(a.lt(min_normal), subnormal, normal);
  return magnitude.bitwise_or(negative.__lshift__(f.sign_shift)).to(at::kByte);
}

at::Tensor decode(const at::Tensor& codes, bool fp4) {
  std::array<float, 256> table{};
  for (int c = 0; c < 256; ++c) {
    table[c] = fp4 ? e2m1_to_float(static_cast<uint8_t>(c & 15)) : e4m3_to_float(static_cast<uint8_t>(c));
  }
  const at::Tensor t = at::from_blob(table.data(), {256}, at::kFloat).to(codes.device());
  return t.index_select(0, codes.reshape(-1).to(at::kLong)).view(codes.sizes());
}

// 2^(code-127) for E8M0 codes 0..254, exactly (code 0 is the float32 subnormal 2^-127).
at::Tensor e8m0_values(const at::Tensor& codes) {
  const at::Tensor c = codes.to(at::kInt).contiguous();
  const at::Tensor normal = c.__lshift__(23).contiguous().view(at::kFloat);
  return at::where(c.eq(0), at::full_like(normal, std::ldexp(1.0f, -127)), normal);
}

at::Tensor pack_nibbles(const at::Tensor& codes) {
  const at::Tensor pairs = codes.reshape({codes.size(0), codes.size(1) / 2, 2});
  return pairs.select(2, 0).bitwise_or(pairs.select(2, 1).__lshift__(4)).contiguous();
}

at::Tensor unpack_nibbles(const at::Tensor& packed) {
  const at::Tensor lo = packed.bitwise_and(15);
  const at::Tensor hi = packed.__rshift__(4);
  return at::stack({lo, hi}, 2).reshape({packed.size(0), packed.size(1) * 2});
}

at::Tensor fp8_scale_from_amax(const at::Tensor& amax) {
  const at::Tensor s = amax / at::full_like(amax, 448.0f);
  return at::where(amax.eq(0), at::ones_like(s), s);
}

FpQuantResult quantize_fp8(const at::Tensor& w, FpScheme scheme, FpQuantResult r) {
  if (scheme == FpScheme::fp8_block) {
    const int64_t b = fp_detail::kBlock;
    const int64_t rb = (r.rows + b - 1) / b, cb = (r.cols + b - 1) / b;
    const at::Tensor padded = at::constant_pad_nd(w, {0, cb * b - r.cols, 0, rb * b - r.rows}, 0);
    const at::Tensor blocks = padded.view({rb, b, cb, b});
    r.scales = fp8_scale_from_amax(blocks.abs().amax({1, 3}));
    const at::Tensor x = blocks / r.scales.view({rb, 1, cb, 1});
    r.codes = encode(x, kE4M3).view({rb * b, cb * b}).slice(0, 0, r.rows).slice(1, 0, r.cols).contiguous();
    return r;
  }
  const at::Tensor amax = scheme == FpScheme::fp8 ? w.abs().max().reshape({1, 1}) : w.abs().amax({1}, true);
  const at::Tensor s = fp8_scale_from_amax(amax);
  r.codes = encode(w / s, kE4M3);
  r.scales = scheme == FpScheme::fp8 ? s.reshape({1}) : s;
  return r;
}

// W [rows, cols] as [rows, groups, g], the last group padded with zeros when g does not divide cols (zeros
// change no group's amax and encode to code 0, which is cut off again).
at::Tensor grouped(const at::Tensor& w, int64_t g) {
  const int64_t ng = (w.size(1) + g - 1) / g;
  return at::constant_pad_nd(w, {0, ng * g - w.size(1)}, 0).view({w.size(0), ng, g});
}

at::Tensor ungrouped(const at::Tensor& x, int64_t cols) {
  return x.reshape({x.size(0), -1}).slice(1, 0, cols).contiguous();
}

FpQuantResult quantize_mx(const at::Tensor& w, FpScheme scheme, FpQuantResult r) {
  const bool fp4 = scheme == FpScheme::mxfp4;
  const at::Tensor groups = grouped(w, fp_scheme_group_size(scheme));
  const at::Tensor amax = groups.abs().amax({2}).contiguous();
  const at::Tensor exponent_field = amax.view(at::kInt).__rshift__(23).bitwise_and(255);
  const int emax = fp4 ? fp_detail::kE2M1Emax : fp_detail::kE4M3Emax;
  r.scales = (exponent_field - emax).clamp_min(0).to(at::kByte);
  const at::Tensor x = groups / e8m0_values(r.scales).unsqueeze(2);
  const at::Tensor codes = ungrouped(encode(x, fp4 ? kE2M1 : kE4M3), r.cols);
  r.codes = fp4 ? pack_nibbles(codes) : codes;
  return r;
}

FpQuantResult quantize_nvfp4(const at::Tensor& w, FpQuantResult r) {
  const float global = fp_detail::nvfp4_global_scale(w.abs().max().item<float>());
  r.global_scale = at::full({1}, global, at::kFloat);
  const at::Tensor groups = grouped(w, fp_scheme_group_size(FpScheme::nvfp4));
  const at::Tensor amax = groups.abs().amax({2});
  const at::Tensor wanted = (amax / at::full_like(amax, 6.0f)) * global;
  const at::Tensor scale_codes = encode(wanted, kE4M3);
  r.scales = at::where(scale_codes.eq(0), at::full_like(scale_codes, fp_detail::kNvfp4ZeroScaleCode), scale_codes);
  const at::Tensor effective = decode(r.scales, false) / at::full_like(amax, global);
  r.codes = pack_nibbles(ungrouped(encode(groups / effective.unsqueeze(2), kE2M1), r.cols));
  return r;
}

}  // namespace

at::Tensor round_to_e4m3(const at::Tensor& x) { return decode(encode(x.to(at::kFloat), kE4M3), false); }
at::Tensor round_to_e2m1(const at::Tensor& x) { return decode(encode(x.to(at::kFloat), kE2M1), true); }

at::Tensor FpQuantResult::element_codes() const {
  return fp_scheme_is_fp4(scheme) ? unpack_nibbles(codes) : codes;
}

at::Tensor FpQuantResult::dequantize() const {
  const bool fp4 = fp_scheme_is_fp4(scheme);
  const at::Tensor values = decode(element_codes(), fp4);
  switch (scheme) {
    case FpScheme::fp8:
    case FpScheme::fp8_channel:
      return values * scales.view({-1, 1});
    case FpScheme::fp8_block: {
      const int64_t b = fp_detail::kBlock;
      const at::Tensor full = scales.repeat_interleave(b, 0).repeat_interleave(b, 1);
      return values * full.slice(0, 0, rows).slice(1, 0, cols);
    }
    case FpScheme::mxfp8:
    case FpScheme::mxfp4:
      return ungrouped(grouped(values, fp_scheme_group_size(scheme)) * e8m0_values(scales).unsqueeze(2), cols);
    case FpScheme::nvfp4: {
      const at::Tensor v = grouped(values, fp_scheme_group_size(scheme)) * decode(scales, false).unsqueeze(2);
      return ungrouped(v / at::full_like(v, global_scale.item<float>()), cols);
    }
  }
  fail<Error>("fp", "unknown scheme");
}

FpQuantResult fp_quantize(const at::Tensor& w_in, FpScheme scheme, const std::string& layer) {
  fp_detail::check_weight(w_in, scheme, layer);
  const at::Tensor w = w_in.to(at::kFloat).contiguous();
  FpQuantResult r;
  r.scheme = scheme;
  r.rows = w.size(0);
  r.cols = w.size(1);
  switch (scheme) {
    case FpScheme::fp8:
    case FpScheme::fp8_channel:
    case FpScheme::fp8_block:
      return quantize_fp8(w, scheme, r);
    case FpScheme::mxfp8:
    case FpScheme::mxfp4:
      return quantize_mx(w, scheme, r);
    case FpScheme::nvfp4:
      return quantize_nvfp4(w, r);
  }
  fail<Error>("fp", "unknown scheme");
}

}  // namespace mc

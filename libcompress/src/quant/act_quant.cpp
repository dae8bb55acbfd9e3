// Activation fake quantization (formats: quant/act_quant.h). The FP element roundings are fp_formats'
// (round_to_e4m3 / round_to_e2m1); the group layout is the weight formats' with one token per row.
#include "mcompress/quant/act_quant.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <vector>

#include "mcompress/error.h"
#include "mcompress/quant/fp_formats.h"
#include "quant/fp_formats_detail.h"
#include "quant/grouped.h"

namespace mc {
namespace {

constexpr const char* kComp = "activations";
using fp_detail::kNvfp4ZeroScaleCode;

int64_t group_of(ActFormat f) { return fp_scheme_group_size(f == ActFormat::nvfp4 ? FpScheme::nvfp4 : FpScheme::mxfp4); }
int emax_of(ActFormat f) { return f == ActFormat::mxfp4 ? fp_detail::kE2M1Emax : fp_detail::kE4M3Emax; }

// x [T, C] -> [T, groups, g], the last group padded with zeros (which change no amax and round to 0).
at::Tensor grouped(const at::Tensor& x, int64_t g) { return grouped_columns(x, (x.size(1) + g - 1) / g, g, 0.0); }

at::Tensor round_elem(const at::Tensor& x, ActFormat f) {
  return f == ActFormat::mxfp4 || f == ActFormat::nvfp4 ? round_to_e2m1(x) : round_to_e4m3(x);
}

// Tokens [T, C] float32 -> rounded values [T, C].
at::Tensor quantize_tokens(const at::Tensor& x, const ActQuant& a) {
  const int64_t C = x.size(1);
  switch (a.format) {
    case ActFormat::int_: {
      const float qmax = static_cast<float>((1 << (a.bits - 1)) - 1);
      at::Tensor s = x.abs().amax(-1, true).div_(qmax);
      s.masked_fill_(s.eq(0), 1.0);
      return x.div(s).round_().clamp_(-qmax, qmax).mul_(s);
    }
    case ActFormat::fp8: {
      at::Tensor s = x.abs().amax(-1, true).div_(448.0f);
      s.masked_fill_(s.eq(0), 1.0);
      return round_to_e4m3(x.div(s)).mul_(s);
    }
    case ActFormat::mxfp8:
    case ActFormat::mxfp4: {
      const at::Tensor g = grouped(x, group_of(a.format));
      const at::Tensor amax = g.abs().amax({2}, true).contiguous();
      // floor(log2(amax)) from the float32 exponent field; amax 0 (field 0) gives the smallest scale, a
      // subnormal amax too (E8M0 code 0 = 2^-127 is the floor of the format).
      const at::Tensor field = amax.view(at::kInt).__rshift__(23).bitwise_and(255);
      const at::Tensor code = (field - emax_of(a.format)).clamp_min(0);
      const at::Tensor normal = code.__lshift__(23).contiguous().view(at::kFloat);
      const at::Tensor scale = at::where(code.eq(0), at::full_like(normal, std::ldexp(1.0f, -127)), normal);
      return round_elem(g / scale, a.format).mul_(scale).reshape({x.size(0), -1}).slice(1, 0, C);
    }
    case ActFormat::nvfp4: {
      const at::Tensor g = grouped(x, group_of(a.format));
      const at::Tensor tmax = x.abs().amax(-1, true).unsqueeze(2);  // [T, 1, 1]
      const at::Tensor global = at::where(tmax.gt(0), at::full_like(tmax, 448.0f * 6.0f) / tmax, at::ones_like(tmax));
      const at::Tensor amax = g.abs().amax({2}, true);
      at::Tensor S = round_to_e4m3((amax / at::full_like(amax, 6.0f)) * global);
      S = at::where(S.eq(0), at::full_like(S, e4m3_to_float(kNvfp4ZeroScaleCode)), S);
      const at::Tensor effective = S / global;
      const at::Tensor v = round_elem(g / effective, a.format) * S / global;
      return v.reshape({x.size(0), -1}).slice(1, 0, C);
    }
  }
  return x;
}

}  // namespace

ActQuant parse_act_quant(const std::string& name) {
  if (name == "fp8") return {ActFormat::fp8, 8};
  if (name == "mxfp8") return {ActFormat::mxfp8, 8};
  if (name == "mxfp4") return {ActFormat::mxfp4, 4};
  if (name == "nvfp4") return {ActFormat::nvfp4, 4};
  std::string digits = name.rfind("int", 0) == 0 ? name.substr(3) : name;
  if (!digits.empty() && digits.size() == 1 && std::isdigit(static_cast<unsigned char>(digits[0]))) {
    const int b = digits[0] - '0';
    if (b >= 2 && b <= 8) return {ActFormat::int_, b};
  }
  fail(kComp, "activation format '", name, "' is not available (allowed: int2..int8, fp8, mxfp8, mxfp4, nvfp4)");
}

int act_format_bits(ActFormat f) { return f == ActFormat::mxfp4 || f == ActFormat::nvfp4 ? 4 : 8; }

std::string act_quant_name(const ActQuant& a) {
  if (!a.on()) return "";
  switch (a.format) {
    case ActFormat::int_: return "int" + std::to_string(a.bits);
    case ActFormat::fp8: return "fp8";
    case ActFormat::mxfp8: return "mxfp8";
    case ActFormat::mxfp4: return "mxfp4";
    case ActFormat::nvfp4: return "nvfp4";
  }
  return "";
}

std::string act_quant_description(const ActQuant& a) {
  switch (a.format) {
    case ActFormat::int_: return act_quant_name(a) + " per token, dynamic, symmetric";
    case ActFormat::fp8: return "fp8 (E4M3) per token, dynamic scale amax/448";
    case ActFormat::mxfp8: return "mxfp8 (E4M3, groups of 32 channels with a power-of-two scale), dynamic";
    case ActFormat::mxfp4: return "mxfp4 (E2M1, groups of 32 channels with a power-of-two scale), dynamic";
    case ActFormat::nvfp4:
      return "nvfp4 (E2M1, groups of 16 channels with an E4M3 scale, per-token global scale), dynamic";
  }
  return "";
}

at::Tensor act_fake_quant(const at::Tensor& x, const ActQuant& a) {
  if (!a.on()) return x;
  if (a.format == ActFormat::int_ && (a.bits < 2 || a.bits > 8)) fail(kComp, "int activation bits ", a.bits, " outside 2..8");
  if (a.format != ActFormat::int_ && a.bits != act_format_bits(a.format))
    fail(kComp, act_quant_name(a), " activations have ", act_format_bits(a.format), " bits, not ", a.bits);
  const at::Tensor xf = x.to(at::kFloat).reshape({-1, x.size(-1)});
  return quantize_tokens(xf, a).reshape(x.sizes()).to(x.scalar_type());
}

at::Tensor act_fake_quant_ref(const at::Tensor& x, const ActQuant& a) {
  if (!a.on()) return x;
  const at::Tensor xc = x.to(at::kFloat).cpu().contiguous();
  const int64_t C = xc.size(-1), T = xc.numel() / std::max<int64_t>(C, 1);
  const float* p = xc.data_ptr<float>();
  std::vector<float> out(static_cast<size_t>(xc.numel()));
  const bool fp4 = a.format == ActFormat::mxfp4 || a.format == ActFormat::nvfp4;
  auto elem = [&](float v) { return fp4 ? e2m1_to_float(float_to_e2m1(v)) : e4m3_to_float(float_to_e4m3(v)); };
  for (int64_t t = 0; t < T; ++t) {
    const float* row = p + t * C;
    float* o = out.data() + t * C;
    float tmax = 0.0f;
    for (int64_t c = 0; c < C; ++c) tmax = std::max(tmax, std::fabs(row[c]));
    if (a.format == ActFormat::int_ || a.format == ActFormat::fp8) {
      const float qmax = a.format == ActFormat::int_ ? static_cast<float>((1 << (a.bits - 1)) - 1) : 448.0f;
      const float s = tmax == 0.0f ? 1.0f : tmax / qmax;
      for (int64_t c = 0; c < C; ++c) {
        if (a.format == ActFormat::int_)
          o[c] = std::clamp(std::nearbyint(row[c] / s), -qmax, qmax) * s;
        else
          o[c] = elem(row[c] / s) * s;
      }
      continue;
    }
    const int64_t g = group_of(a.format);
    const float global = fp_detail::nvfp4_global_scale(tmax);
    for (int64_t k = 0; k < C; k += g) {
      const int64_t len = std::min(g, C - k);
      float amax = 0.0f;
      for (int64_t c = 0; c < len; ++c) amax = std::max(amax, std::fabs(row[k + c]));
      if (a.format == ActFormat::nvfp4) {
        uint8_t sc = float_to_e4m3((amax / 6.0f) * global);
        if (sc == 0) sc = kNvfp4ZeroScaleCode;
        const float S = e4m3_to_float(sc);
        for (int64_t c = 0; c < len; ++c) o[k + c] = elem(row[k + c] / (S / global)) * S / global;
      } else {
        int code = 0;
        if (amax > 0.0f) {
          int e = 0;
          std::frexp(amax, &e);  // amax = f 2^e, f in [0.5, 1): floor(log2 amax) = e - 1
          code = std::clamp(e - 1 - emax_of(a.format) + 127, 0, 254);
        }
        const float scale = e8m0_to_float(static_cast<uint8_t>(code));
        for (int64_t c = 0; c < len; ++c) o[k + c] = elem(row[k + c] / scale) * scale;
      }
    }
  }
  return at::from_blob(out.data(), xc.sizes(), at::kFloat).clone().to(x.scalar_type());
}

}  // namespace mc

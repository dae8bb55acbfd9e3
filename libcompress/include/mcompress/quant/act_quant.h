// Activation (linear-input) quantization, simulated in float: what a W4A8 / W4A4 / FP8 / MX / NVFP4
// kernel would feed its matmul. Every scale is dynamic (computed from the activations themselves, per
// token or per group of one token's channels, as those kernels do at run time).
//   int    bits b (2..8): per token, symmetric: s = amax(token) / (2^(b-1) - 1),
//          value = clamp(round(x / s), -qmax, qmax) * s  (round half to even; an all-zero token s = 1)
//   fp8    per token: s = amax(token) / 448, value = e4m3(x / s) * s        (OCP E4M3, saturating)
//   mxfp8  OCP MX v1.0: groups of 32 consecutive channels of one token share 2^X,
//   mxfp4  X = floor(log2(amax_g)) - emax (8 for E4M3, 2 for E2M1), clamped to the E8M0 range
//          [-127, 127]; value = elem(x / 2^X) * 2^X (an all-zero group stays zero)
//   nvfp4  NVIDIA NVFP4: per token a float32 global scale G = 448 * 6 / amax(token) (dynamic, where a
//          deployed kernel usually calibrates it once), groups of 16 channels with E4M3 scale
//          S_g = e4m3(amax_g / 6 * G) (0.125 when it rounds to 0), value = e2m1(x / (S_g / G)) * S_g / G
// The last group of a token whose channel count the group size does not divide is shorter (its scale
// from its own amax), as for the weight formats (quant/fp_formats.h).
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

namespace mc {

enum class ActFormat { int_, fp8, mxfp8, mxfp4, nvfp4 };

struct ActQuant {
  ActFormat format = ActFormat::int_;
  int bits = 0;  // int: 2..8; the FP formats: their element bits (8 or 4); 0 = off
  bool on() const { return bits > 0; }
};

// "int8", "int4" (any int2..int8), "fp8", "mxfp8", "mxfp4", "nvfp4"; a plain number "8" means int8.
// InputError naming the allowed spellings otherwise.
ActQuant parse_act_quant(const std::string& name);
// "int8", "fp8", "mxfp4", ... ("" when off).
std::string act_quant_name(const ActQuant& a);
// Element bits of a format (fp8/mxfp8 8, mxfp4/nvfp4 4).
int act_format_bits(ActFormat f);
// Human description for reports and plans, e.g. "int8 per token, dynamic, symmetric".
std::string act_quant_description(const ActQuant& a);

// x [..., channels] rounded as above along its last dimension; same shape and dtype.
at::Tensor act_fake_quant(const at::Tensor& x, const ActQuant& a);
// The same with plain loops over the elements and the scalar codecs (CPU), for tests.
at::Tensor act_fake_quant_ref(const at::Tensor& x, const ActQuant& a);

}  // namespace mc

// Floating-point weight formats: FP8 (E4M3) with a float32 scale per tensor, per output channel or per
// 128x128 block, the OCP Microscaling formats MXFP8 / MXFP4 (E4M3 / E2M1 elements, groups of 32 input
// columns sharing an E8M0 power-of-two scale), and NVIDIA's NVFP4 (E2M1 elements, groups of 16 sharing
// an E4M3 scale, plus one float32 global scale per tensor).
//
// Element formats (sign bit first, exponent, mantissa; subnormals when the exponent field is 0):
//   E4M3 (OCP FP8 "e4m3fn")  bias 7, max 448 (0x7E), no infinities, NaN 0x7F / 0xFF,
//                            smallest subnormal 2^-9 = 0.001953125 (0x01)
//   E2M1 (OCP FP4)           bias 1, values ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}, no NaN or infinities
//   E8M0 (OCP scale)         unsigned exponent only: 2^(e-127), 0xFF NaN
// Encoding rounds to nearest, ties to the even code (the code whose mantissa's last bit is 0), and
// saturates: magnitudes beyond the largest value become the largest value (OCP's "saturating" mode).
//
// Schemes (W [out, in], groups along the input dimension, the last dimension of W):
//   fp8          s = amax(W) / 448 (float32; 1 when W is all zero)         code = e4m3(w / s)
//   fp8-channel  s_r = amax(row r) / 448                                    value = e4m3_value(code) * s
//   fp8-block    s_b = amax(128x128 block b) / 448 (edge blocks smaller)
//   mxfp8, mxfp4 OCP MX v1.0 section 6.3: X = floor(log2(amax_g)) - emax_elem (8 for E4M3, 2 for E2M1),
//                stored as the E8M0 code X + 127 clamped to 0..254 (0 for an all-zero group);
//                code = elem(w / 2^X) (values beyond the element maximum saturate), value = elem * 2^X
//   nvfp4        G = 448 * 6 / amax(W) (float32; 1 when W is all zero), as compressed-tensors'
//                generate_gparam; group scale S_g = e4m3(amax_g / 6 * G), an all-zero S_g becomes 0.125
//                (compressed-tensors' eps for an E4M3 scale); code = e2m1(w / (S_g / G)),
//                value = e2m1_value(code) * S_g / G   (all float32, in that order)
// A row whose length the MX / NVFP4 group size does not divide ends with a shorter group (its scale from
// its own amax; compressed-tensors counts ceil(in / group) scales and pads the same way).
// FP4 codes are packed two per byte, element 2j in the low nibble of byte j and 2j+1 in the high
// nibble (compressed-tensors' pack_fp4_to_uint8). Non-finite weights, and an odd input dimension for FP4,
// are refused with InputError.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace mc {

// Scalar element codecs (exact; the decoders follow the bit fields, the encoders search the nearest value).
float e4m3_to_float(uint8_t code);
uint8_t float_to_e4m3(float x);   // NaN -> 0x7F
float e2m1_to_float(uint8_t code);  // low 4 bits
uint8_t float_to_e2m1(float x);   // NaN refused (InputError): E2M1 has no NaN
float e8m0_to_float(uint8_t code);  // 2^(code-127); 0xFF -> NaN
// Whole tensors: each float32 value rounded to the nearest E4M3 value (half to even, saturating at +-448),
// as float32 — what float_to_e4m3 then e4m3_to_float give element by element.
at::Tensor round_to_e4m3(const at::Tensor& x);
// The same for E2M1 (half to even, saturating at +-6).
at::Tensor round_to_e2m1(const at::Tensor& x);

enum class FpScheme { fp8, fp8_channel, fp8_block, mxfp8, mxfp4, nvfp4 };

// "fp8", "fp8-channel", "fp8-block", "mxfp8", "mxfp4", "nvfp4"; InputError naming the allowed ones otherwise.
FpScheme parse_fp_scheme(const std::string& name);
std::string fp_scheme_name(FpScheme scheme);
bool fp_scheme_is_fp4(FpScheme scheme);
int64_t fp_scheme_group_size(FpScheme scheme);  // 32 (MX), 16 (NVFP4), 128 (block), 0 otherwise
// Stored bits per weight for a [rows, cols] matrix: element bits plus the scales spread over the weights.
double fp_scheme_bits_per_weight(FpScheme scheme, int64_t rows, int64_t cols);

struct FpQuantResult {
  FpScheme scheme = FpScheme::fp8;
  int64_t rows = 0, cols = 0;
  // uint8: E4M3 codes [rows, cols] (fp8*, mxfp8) or packed E2M1 nibbles [rows, cols / 2] (mxfp4, nvfp4)
  at::Tensor codes;
  // fp8: float32 [1]; fp8-channel: float32 [rows, 1]; fp8-block: float32 [ceil(rows/128), ceil(cols/128)];
  // mxfp8/mxfp4: uint8 E8M0 codes [rows, ceil(cols / 32)]; nvfp4: uint8 E4M3 codes [rows, ceil(cols / 16)]
  at::Tensor scales;
  at::Tensor global_scale;  // nvfp4: float32 [1] (G above); undefined otherwise
  // float32 [rows, cols], the values above
  at::Tensor dequantize() const;
  // uint8 [rows, cols]: the element codes, FP4 nibbles unpacked
  at::Tensor element_codes() const;
};

// Whole-tensor ATen implementation. w: a 2-D floating-point tensor [out, in]; `layer` names it in errors.
FpQuantResult fp_quantize(const at::Tensor& w, FpScheme scheme, const std::string& layer = "");
// Plain per-element loops with the scalar codecs above (CPU), for tests: the same codes and scales.
FpQuantResult fp_quantize_ref(const at::Tensor& w, FpScheme scheme, const std::string& layer = "");

}  // namespace mc

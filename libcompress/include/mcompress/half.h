// IEEE binary16 and bfloat16 conversions (round to nearest even, NaN preserved), and the OCP FP8 E4M3
// decoder (quant/fp_formats.h has the encoders).
#pragma once
#include <cstdint>
#include <cstring>

namespace mc {

inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

inline float bf16_to_f32(uint16_t b) { return bits_to_float(uint32_t(b) << 16); }
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// OCP FP8 E4M3 ("e4m3fn"): S.EEEE.MMM, bias 7, subnormals at E = 0, NaN at E = 15, M = 7, no infinities.
float e4m3_to_f32(uint8_t code);

}  // namespace mc

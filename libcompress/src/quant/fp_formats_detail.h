// Constants and checks shared by the ATen and the reference FP-format quantizers (quant/fp_formats.h).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "mcompress/quant/fp_formats.h"

namespace mc::fp_detail {

constexpr int64_t kBlock = 128;       // fp8-block: 128x128 weight blocks (DeepSeek-V3 / compressed-tensors FP8_BLOCK)
constexpr int kE4M3Emax = 8;          // OCP MX v1.0 table 2: largest E4M3 exponent (448 = 1.75 * 2^8)
constexpr int kE2M1Emax = 2;          // OCP MX v1.0 table 2: largest E2M1 exponent (6 = 1.5 * 2^2)
constexpr uint8_t kNvfp4ZeroScaleCode = 0x20;  // E4M3 0.125: compressed-tensors' replacement for a zero scale

// G = 448 * 6 / amax (float32), 1 for an all-zero tensor.
inline float nvfp4_global_scale(float amax) { return amax > 0.0f ? (448.0f * 6.0f) / amax : 1.0f; }

// InputError for a weight that is not a 2-D floating-point matrix with finite values, or (FP4) whose input
// dimension is odd.
void check_weight(const at::Tensor& w, FpScheme scheme, const std::string& layer);

}  // namespace mc::fp_detail

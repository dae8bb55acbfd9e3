// Constants of the RTN grid shared by the ATen path (rtn.cpp) and the reference (rtn_ref.cpp), so
// both compute bit-identical scales.
#pragma once

namespace mc {

// MSE clip search: the range is shrunk by p = 1 - kRtnClipStep * i for i in [0, kRtnClipSteps),
// i.e. 1.00, 0.95, ..., 0.50 (GPTQ searches 1.00 .. 0.21 in steps of 0.01 with norm 2.4; a coarser
// grid costs 11 passes instead of 80 and loses little in squared error).
constexpr int kRtnClipSteps = 11;
constexpr double kRtnClipStep = 0.05;
inline float rtn_clip_ratio(int i) { return static_cast<float>(1.0 - kRtnClipStep * i); }

// 1 / (2^bits - 1) as a float: asymmetric scales are (hi - lo) * rtn_inv_maxq(bits), symmetric
// ones amax * rtn_sym_scale_factor(bits) (= 2 * amax / (2^bits - 1); the factor 2 is exact).
inline float rtn_inv_maxq(int bits) { return 1.0f / static_cast<float>((1 << bits) - 1); }
inline float rtn_sym_scale_factor(int bits) { return 2.0f * rtn_inv_maxq(bits); }

}  // namespace mc

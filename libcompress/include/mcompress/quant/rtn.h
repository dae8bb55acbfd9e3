// Round-to-nearest weight quantization: 2..8 bits, symmetric or asymmetric, per tensor, per output
// channel or per group of input columns (a row whose length the group size does not divide ends with
// a shorter group, as GPTQ's reference code does), with an optional MSE clip search.
//
// The grid (b bits, maxq = 2^b - 1; a "group" is one row's run of group_size input columns, the whole
// row per channel, the whole matrix per tensor):
//   symmetric   amax  = max |w| over the group
//               scale = up16(amax * (2/maxq))              zero = 2^(b-1)  (8 for int4, 128 for int8)
//               the codes 0..maxq stand for -2^(b-1)..2^(b-1)-1 steps: all 2^b levels are used (GPTQ's
//               symmetric convention; int8 is amax/127.5, within 0.4% of llama.cpp's Q8_0 amax/127).
//               +amax lands half a step above the top level and is clipped by at most scale/2.
//   asymmetric  lo = min(0, min w), hi = max(0, max w)     (the range always holds 0, as in GPTQ)
//               scale = up16((hi - lo) * (1/maxq))         zero = clamp(round(-lo * (1/scale)), 0, maxq)
//   codes       q = clamp(round(w * (1/scale) + zero), 0, maxq)   (round half to even; the same as
//               round(w/scale) + zero (GPTQ) except at exact ties when zero is odd)
//   value       (q - zero) * scale
// up16(x) rounds x UP to the next float16 value, so the stored fp16 scales are exactly the scales the
// codes were computed with (a packed file dequantizes to exactly QuantResult::dequantize()), and
// rounding never shrinks the grid: without clipping every weight is within scale/2 of its value.
// A group whose range is 0 gets scale 1 (all its codes are the zero point). Multiplying by the
// reciprocal (as llama.cpp does) instead of dividing keeps the ATen and the reference paths bit-equal.
//
// MSE clip (mse_clip = true; GPTQ's Quantizer.find_params(mse=True), with norm 2 and a coarser grid):
// for each group try the range shrunk by p = 1.00, 0.95, ..., 0.50 (amax*p, or lo*p and hi*p), quantize
// with it and keep the first p with the least sum of squared errors (summed in double). p = 1 is tried
// first and only a strictly smaller error replaces it, so the clip never increases a group's error.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace mc {

struct QuantSpec {
  int bits = 4;              // 2..8
  bool symmetric = true;
  int64_t group_size = 32;   // > 0: groups of input columns; 0: per output channel; -1: per tensor
  bool mse_clip = false;     // search a clip ratio per group minimising the squared error
  std::string describe() const;  // "int4 sym g32", "int8 asym per-channel", "int3 sym per-tensor mse"
  // Throws InputError "[rtn] layer X: bits 9 outside 2..8" (and likewise for group_size and an
  // empty row).
  void validate(const std::string& layer, int64_t in_features) const;
  // Groups per row: ceil(in / group_size) when grouping, else 1 (per tensor, the one scale is
  // repeated on every row).
  int64_t n_groups(int64_t in_features) const;
  int64_t group_cols(int64_t in_features) const;  // group_size when grouping, else in_features
};

// The integer codes and the grid of one quantized weight matrix W [out, in].
struct QuantResult {
  QuantSpec spec;
  at::Tensor codes;   // uint8 [out, in], 0 .. 2^bits-1 (symmetric codes are offset by 2^(bits-1))
  at::Tensor scales;  // float32 [out, n_groups], every value exactly representable in float16
  at::Tensor zeros;   // float32 [out, n_groups]: the code that represents 0.0 (2^(bits-1) sym; hqq.h: fractional)
  // float32 [out, n_groups], defined only for a grid whose offset is a float16 minimum rather than a zero
  // code (the GGUF K-quant lattice, quant/autoround.h: value = code * scale - min, as llama.cpp computes
  // Q4_K). zeros then holds min / scale (float32), the nearest zero-code form, for code that reads zeros.
  at::Tensor mins;
  // The weight's own shape when it is not [out, in] (a conv kernel [out, in, kh, kw] quantized as
  // [out, in*kh*kw]); empty otherwise. Packed files record it and restore it on load.
  std::vector<int64_t> weight_shape;
  // The group of each input column when the groups are not contiguous column ranges (GPTQ with
  // act_order and dynamic groups: group k is the k-th run of group_size columns in quantization
  // order): int32 [in], values 0 .. n_groups-1. Undefined (the usual case): column c uses group
  // c / group_size. Packed files store it as "<key>.g_idx".
  at::Tensor g_idx;
  int64_t n_groups() const;
  // float32 [out, in]: (code - zero[g]) * scale[g], g = g_idx[c] when g_idx is defined, else c / group_size;
  // with mins: code * scale[g] - min[g].
  // Throws InputError for a g_idx of the wrong length or with a value outside 0..n_groups-1.
  at::Tensor dequantize() const;
};

// Whole-tensor ATen implementation (runs on the tensor's device; on CPU, row blocks in parallel).
// w: a 2-D floating-point tensor [out, in]. `layer` names the weight in error messages.
// Throws InputError for a bad spec, non-finite weights, or a scale beyond the float16 range.
QuantResult rtn_quantize(const at::Tensor& w, const QuantSpec& spec, const std::string& layer = "");
// Plain per-element reference implementation (CPU), for tests. Produces the same codes and scales.
QuantResult rtn_quantize_ref(const at::Tensor& w, const QuantSpec& spec, const std::string& layer = "");

// Rounds positive float32 scales up to the nearest float16 value (exact values stay): for other
// quantizers (GPTQ) that must store fp16 scales without re-rounding after computing codes.
at::Tensor round_up_to_f16(const at::Tensor& scales);

}  // namespace mc

// KV-cache quantization with static scales: the keys (after RoPE and any q/k norm) and the values each
// attention layer writes to its cache, rounded per kv head to an 8-bit grid whose scale was calibrated
// once, as a cache stored in that format holds them (vLLM's kv_cache_dtype fp8 with calibrated k_scale /
// v_scale; here per kv head, and int8 too). The model rounds them before attention reads them (model.h:
// Model::set_kv_quant), so evaluation measures what the format costs.
//   int8  scale = amax / 127   value = clamp(round(x / scale), -127, 127) * scale   (round half to even)
//   fp8   scale = amax / 448   value = e4m3(x / scale) * scale   (OCP E4M3, nearest, half to even, saturating)
// amax: the largest |x| of that kv head over the calibration tokens; a head that was all zero gets scale 1.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

namespace mc {

enum class KVFormat { int8, fp8 };

// "int8" | "fp8"; InputError "[kv-cache] format 'x' is not available (allowed: int8, fp8)" otherwise.
KVFormat parse_kv_format(const std::string& name);
const char* kv_format_name(KVFormat f);

// Per-head scales float32 [heads] from each head's calibration amax [heads].
at::Tensor kv_scales(const at::Tensor& amax, KVFormat f);
// x [B, heads, T, head_dim] rounded to the format's grid with one scale per head ([heads]); same dtype.
at::Tensor kv_fake_quant(const at::Tensor& x, const at::Tensor& scale, KVFormat f);
// The same as plain loops over the elements (CPU, float32), for tests.
at::Tensor kv_fake_quant_ref(const at::Tensor& x, const at::Tensor& scale, KVFormat f);

}  // namespace mc

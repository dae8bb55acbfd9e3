// compressed-tensors' floating-point formats (quant/fp_formats.h schemes), shared by the llama export
// (export_compressed_tensors_fp) and model-free quantization:
//   fp8, fp8-channel, fp8-block  "float-quantized": <m>.weight F8_E4M3 [out, in] (the E4M3 codes),
//                                <m>.weight_scale F32 ([1], [out, 1], [ceil(out/128), ceil(in/128)]);
//                                strategy tensor / channel / block (block_structure [128, 128])
//   mxfp4                        "mxfp4-pack-quantized": <m>.weight_packed U8 [out, in/2] (E2M1 pairs, the
//                                first element in the low nibble), <m>.weight_scale U8 [out, in/32] (E8M0
//                                exponents); strategy group, group_size 32 (compressed-tensors recognises
//                                MXFP4 by 4-bit float with groups of 32)
//   nvfp4                        "nvfp4-pack-quantized": <m>.weight_packed U8 [out, in/2],
//                                <m>.weight_scale F8_E4M3 [out, in/16], <m>.weight_global_scale F32 [1]
//                                (dequantized = value * scale / global_scale); strategy tensor_group, 16
//   mxfp8                        none in compressed-tensors: refused (InputError)
// Checked against compressed-tensors' NVFP4PackedCompressor (pack_fp4_to_uint8 / unpack_fp4_from_uint8),
// its MXFP4PackedCompressor alias, and calculate_qparams / generate_gparam.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "mcompress/quant/fp_formats.h"
#include "mcompress/tensor.h"

namespace mc::hfx {

// InputError for an odd width (tensor name, input columns) with an FP4 scheme (two codes per byte); one note
// naming the tensors whose widths the groups do not divide.
void fp_check_widths(FpScheme s, const std::vector<std::pair<std::string, int64_t>>& widths, const std::string& where,
                     std::vector<std::string>& notes);
// The compressed-tensors format name; InputError naming `where` for mxfp8.
std::string fp_ct_format(FpScheme s, const std::string& where);
nlohmann::ordered_json fp_ct_qconfig(FpScheme s, const std::vector<std::string>& ignore);
// The stored tensors of one quantized weight of module `module` (names as above).
std::vector<HostTensor> fp_ct_parts(const std::string& module, const FpQuantResult& q);

}  // namespace mc::hfx

#include "mcompress/dtype.h"

#include <algorithm>
#include <cctype>
#include <limits>

namespace mc {

namespace {
// name, block_elems, block_bytes, is_float, is_block. Block layouts are ggml's (see ggml_blocks.h).
const DTypeInfo kInfo[] = {
    {"F64", 1, 8, true, false},   {"F32", 1, 4, true, false},  {"F16", 1, 2, true, false},
    {"BF16", 1, 2, true, false},  {"I64", 1, 8, false, false}, {"I32", 1, 4, false, false},
    {"I16", 1, 2, false, false},  {"I8", 1, 1, false, false},  {"U8", 1, 1, false, false},
    {"BOOL", 1, 1, false, false},
    {"Q4_0", 32, 18, false, true},   // f16 d + 16 bytes of nibbles
    {"Q4_1", 32, 20, false, true},   // f16 d, f16 m + 16 bytes
    {"Q5_0", 32, 22, false, true},   // f16 d + 4 bytes high bits + 16 bytes
    {"Q5_1", 32, 24, false, true},   // f16 d, f16 m + 4 + 16
    {"Q8_0", 32, 34, false, true},   // f16 d + 32 int8
    {"Q4_K", 256, 144, false, true}, // f16 d, f16 dmin, 12 bytes scales, 128 bytes nibbles
    {"Q5_K", 256, 176, false, true}, // + 32 bytes high bits
    {"Q6_K", 256, 210, false, true}, // 128 low nibbles, 64 high bits, 16 int8 scales, f16 d
    {"F8_E4M3", 1, 1, false, false},
    {"MXFP4", 32, 17, false, true},  // e8m0 exponent + 16 bytes of e2m1 nibbles
    {"Q2_K", 256, 84, false, true},    // 16 scale/min bytes, 64 bytes of 2-bit quants, f16 d, f16 dmin
    {"Q3_K", 256, 110, false, true},   // 32 bytes high bits, 64 bytes low 2 bits, 12 bytes scales, f16 d
    {"IQ4_NL", 32, 18, false, true},   // f16 d + 16 bytes of indices into kvalues_iq4nl
    {"IQ4_XS", 256, 136, false, true}, // f16 d, u16 scales_h, 4 bytes scales_l, 128 bytes of indices
};
}  // namespace

const DTypeInfo& dtype_info(DType t) { return kInfo[static_cast<int>(t)]; }

std::optional<DType> dtype_from_name(std::string_view name) {
  std::string s(name);
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
  static const std::pair<const char*, DType> aliases[] = {
      {"FLOAT64", DType::F64}, {"DOUBLE", DType::F64},  {"FP64", DType::F64},
      {"FLOAT32", DType::F32}, {"FLOAT", DType::F32},   {"FP32", DType::F32},
      {"FLOAT16", DType::F16}, {"HALF", DType::F16},    {"FP16", DType::F16},
      {"BFLOAT16", DType::BF16},
      {"INT64", DType::I64},   {"INT32", DType::I32},   {"INT16", DType::I16},
      {"INT8", DType::I8},     {"UINT8", DType::U8},    {"BOOL", DType::BOOL},
  };
  for (int i = 0; i <= static_cast<int>(DType::IQ4_XS); ++i)
    if (s == kInfo[i].name) return static_cast<DType>(i);
  for (auto& [a, t] : aliases)
    if (s == a) return t;
  return std::nullopt;
}

std::optional<uint64_t> dtype_nbytes(DType t, int64_t numel) {
  const DTypeInfo& d = dtype_info(t);
  if (numel < 0 || numel % d.block_elems != 0) return std::nullopt;
  uint64_t blocks = static_cast<uint64_t>(numel / d.block_elems);
  if (blocks > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d.block_bytes)) return std::nullopt;
  return blocks * static_cast<uint64_t>(d.block_bytes);
}

}  // namespace mc

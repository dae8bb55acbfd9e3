// Element types of stored tensors: plain scalars and the ggml block-quantized types found in GGUF.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace mc {

enum class DType : uint8_t {
  F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL,
  // ggml block formats: a block of `block_elems` values is stored in `block_bytes` bytes.
  Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K,
  // OCP FP8 E4M3 ("e4m3fn", safetensors F8_E4M3): stored and copied as bytes, never widened here
  // (quant/fp_formats.h decodes it).
  F8_E4M3,
  // ggml MXFP4 (type 39): a block of 32 = an E8M0 exponent byte + 16 bytes of E2M1 nibbles (element j in the
  // low nibble of byte j, element j + 16 in its high nibble); value = e2m1 * 2^(e - 127).
  MXFP4,
  // ggml's 2- and 3-bit K-quants and the non-linear 4-bit types (layouts in ggml_blocks.cpp):
  // Q2_K (type 10) 256 values in 84 bytes, Q3_K (11) 256 in 110, IQ4_NL (20) 32 in 18, IQ4_XS (23) 256 in 136.
  Q2_K, Q3_K, IQ4_NL, IQ4_XS,
};

struct DTypeInfo {
  const char* name;      // safetensors spelling for scalars ("F32"), ggml spelling for blocks ("Q4_0")
  int64_t block_elems;   // 1 for scalar types
  int64_t block_bytes;   // element size for scalar types
  bool is_float;         // F64/F32/F16/BF16
  bool is_block;         // ggml block-quantized
};

const DTypeInfo& dtype_info(DType t);
inline const char* dtype_name(DType t) { return dtype_info(t).name; }
inline bool is_float(DType t) { return dtype_info(t).is_float; }
inline bool is_block(DType t) { return dtype_info(t).is_block; }

// Accepts the safetensors names ("F32", "BF16", "BOOL"), lower case, and common aliases
// ("float32", "fp16", "half", "int8", "uint8"). Returns nullopt for anything else.
std::optional<DType> dtype_from_name(std::string_view name);

// Bytes needed for `numel` elements; nullopt when numel is negative or not a whole number of blocks
// or the product overflows.
std::optional<uint64_t> dtype_nbytes(DType t, int64_t numel);

}  // namespace mc

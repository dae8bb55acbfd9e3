// ggml block-quantized layouts (as in GGUF files): dequantization of whole blocks.
// Layouts follow ggml-common.h; each function takes `n` values (a multiple of the block size).
#pragma once
#include <cstdint>

#include "mcompress/dtype.h"

namespace mc {

// Dequantizes n values of block type t from src into dst. Throws InputError for a non-block type
// or n not a multiple of the block size.
void dequantize_blocks(DType t, const uint8_t* src, int64_t n, float* dst);

}  // namespace mc

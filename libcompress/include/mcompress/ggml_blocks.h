// ggml block-quantized layouts (as in GGUF files): dequantization of whole blocks.
// Layouts follow ggml-common.h; each function takes `n` values (a multiple of the block size).
#pragma once
#include <cstdint>

#include "mcompress/dtype.h"

namespace mc {

// Dequantizes n values of block type t from src into dst. Throws InputError for a non-block type
// or n not a multiple of the block size.
void dequantize_blocks(DType t, const uint8_t* src, int64_t n, float* dst);

// Reference quantizers, bit-exact with ggml's quantize_row_q8_0_ref / quantize_row_q4_0_ref:
//   Q8_0: d = amax / 127, q = round(x / d)   (|error| <= d/2, plus |q| times the f16 rounding of d)
//   Q4_0: d = (value of largest magnitude) / -8, q = min(15, trunc(x / d + 8.5))
// Writes n / 32 blocks (dtype_nbytes(t, n) bytes) to dst. Throws InputError for other types or
// n not a multiple of 32. Non-finite inputs quantize to 0 (ggml leaves that undefined).
void quantize_blocks_ref(DType t, const float* src, int64_t n, uint8_t* dst);

}  // namespace mc

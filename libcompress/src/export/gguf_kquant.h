// Internal: K-quant super-block encoders (gguf_kquant.cpp), used by encode_blocks (gguf_encode.cpp).
#pragma once
#include <cstdint>

namespace mc::gguf_detail {

// `step` (optional, 8 entries, one per 32 values; 0 = none): the values are known to be integer multiples of
// step there (our quantizer's grid), which gives each sub-block an exact (scale, min) candidate.
// One super-block of 256 values -> one block_q4_K (bits 4, 144 bytes) or block_q5_K (bits 5, 176 bytes).
void encode_q45_k(int bits, const float* x, const float* step, uint8_t* block);
// One super-block of 256 values -> one block_q6_K (210 bytes).
void encode_q6_k(const float* x, const float* step, uint8_t* block);

// Round half to even, as ggml's nearest_int, for |v| well inside the int range (clamped beyond).
int nearest_int(float v);
void store_f16(uint8_t* p, float v);
float load_f16(const uint8_t* p);
float round_f16(float v);  // v rounded to the nearest float16 value

}  // namespace mc::gguf_detail

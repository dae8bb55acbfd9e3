// Internal: K-quant super-block encoders (gguf_kquant.cpp), used by encode_blocks (gguf_encode.cpp).
#pragma once
#include <cstdint>

namespace mc::gguf_detail {

// `step` (optional, 8 entries, one per 32 values; 0 = none): the values are known to be integer multiples of
// step there (our quantizer's grid), which gives each sub-block an exact (scale, min) candidate.
// One super-block of 256 values -> one block_q4_K (bits 4, 144 bytes) or block_q5_K (bits 5, 176 bytes).
// qw (optional, 256 entries): the weight of each value's squared error (an imatrix's importance).
void encode_q45_k(int bits, const float* x, const float* step, uint8_t* block, const float* qw = nullptr);
// The bytes of one block_q4_K / block_q5_K from its parts: d, dmin (float16 values), sc[8], m[8] (0..63) and
// the 256 codes L (0..2^bits-1): value = d * sc_j * L - dmin * m_j.
void write_q45_k(int bits, float d, float dmin, const int* sc, const int* m, const uint8_t* L, uint8_t* block);
// One super-block of 256 values -> one block_q6_K (210 bytes).
void encode_q6_k(const float* x, const float* step, uint8_t* block);

// ---- the low-bit types (gguf_lowbit.cpp); qw: optional per-value weights of the squared error ----
void encode_q2_k(const float* x, const float* qw, uint8_t* block);    // 256 values -> 84 bytes
void encode_q3_k(const float* x, const float* qw, uint8_t* block);    // 256 values -> 110 bytes
void encode_iq4_nl(const float* x, const float* qw, uint8_t* block);  // 32 values -> 18 bytes
void encode_iq4_xs(const float* x, const float* qw, uint8_t* block);  // 256 values -> 136 bytes

// ---- shared fitting steps ----
// Per-value weights for a super-block of nsub x len values: qw itself (null stays null), except that a
// sub-block whose weights are all zero gets unit weights (fitted plainly rather than left undetermined).
const float* block_weights(const float* qw, int nsub, int len, float* buf);
// make_qkx2_quants with weights w (null: plain squared error) on n <= 32 values, levels 0..nmax: the scale,
// and -(min offset) >= 0 in *the_min.
float fit_scale_min(int n, int nmax, const float* x, const float* w, float rmin, float rdelta, int nstep,
                    float* the_min);
// Weighted squared error of n values on d*q - dm, q in 0..nmax at the nearest level (stored in L if given).
double sse_affine(const float* x, const float* w, int n, float d, float dm, int nmax, uint8_t* L);
// The super-block of an affine K-quant (value = d*sc_j * q - dmin*m_j): `nsub` sub-blocks of `len` values with
// the float scales/mins given, integer sc_j, m_j in 0..smax against float16 d, dmin searched for the least
// weighted error (d = max scale / k, k = smax .. smax - 3), then each (sc_j, m_j) moved by +-1 where that
// helps, and every value at its nearest level.
struct AffineFit {
  float d = 0, dmin = 0;
  int sc[16] = {}, m[16] = {};
  uint8_t L[256] = {};
};
AffineFit fit_affine_superblock(const float* x, const float* w, int nsub, int len, int nmax, int smax,
                                const float* scales, const float* mins);

// Round half to even, as ggml's nearest_int, for |v| well inside the int range (clamped beyond).
int nearest_int(float v);
void store_f16(uint8_t* p, float v);
float load_f16(const uint8_t* p);
float round_f16(float v);  // v rounded to the nearest float16 value

}  // namespace mc::gguf_detail

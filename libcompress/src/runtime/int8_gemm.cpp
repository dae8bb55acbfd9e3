// int8 x int8 -> int32 GEMM (C = A · Bᵀ) with run-time ISA dispatch, and the W8A8 ATen wrappers.
//
// Blocking (the avx2 and avx512vnni kernels share the driver `packed_gemm`):
//   A is converted once per call to the kernel's element form (u8 = a+128 for VNNI, int16 for AVX2),
//   K padded to the kernel's k-group with zeros.
//   Work is split into tasks (column block of ~kNcTarget columns) x (row range); each task walks K in
//   blocks of kKc, packs its B block (nc x kc, <= 256 KiB, stays in L2) into panels of `panel`
//   columns laid out k-group-major, then runs an MR x panel register-blocked micro-kernel over every
//   row of its range; C is stored on the first K block and accumulated on later ones.
// Each ISA function carries its own __attribute__((target)), so this file builds with the default
// flags and the choice is made with __builtin_cpu_supports.
#include "mcompress/int8_gemm.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "mcompress/error.h"

// GCC 12.2's AVX-512 headers initialize their "undefined" vectors with themselves, which sets off
// -Wmaybe-uninitialized in every caller (GCC bug 105593, fixed in 12.3).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace mc {
namespace {

constexpr int64_t kKc = 1024;        // K block (elements); B block = nc x kc bytes (x2 for avx2)
constexpr int64_t kNcTarget = 256;   // columns per task block
constexpr int64_t kSerialMacs = int64_t(1) << 20;  // below this, one thread

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

int32_t load_i32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// ---------------------------------------------------------------------------------------------------
// scalar
void gemm_scalar(const int8_t* A, const int8_t* B, int32_t* C, int64_t M, int64_t N, int64_t K, int64_t lda,
                 int64_t ldb, int64_t ldc) {
  const int64_t grain = std::max<int64_t>(1, kSerialMacs / std::max<int64_t>(1, N * K));
  at::parallel_for(0, M, grain, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const int8_t* a = A + m * lda;
      for (int64_t n = 0; n < N; ++n) {
        const int8_t* b = B + n * ldb;
        int32_t s = 0;  // |s| <= K * 2^14 < 2^31 for K <= kInt8GemmMaxK
        for (int64_t k = 0; k < K; ++k) s += int32_t(a[k]) * int32_t(b[k]);
        C[m * ldc + n] = s;
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// The interface the packed driver needs from an ISA.
struct PackedKernel {
  int64_t k_group;  // K elements per packed group (4 for vpdpbusd, 2 for vpmaddwd)
  int64_t panel;    // columns per packed panel
  int64_t a_bytes;  // bytes per converted A element
  // rows x K of A -> rows x Kp converted elements (zero-padded to Kp)
  void (*convert_a)(const int8_t* A, int64_t lda, int64_t rows, int64_t K, int64_t Kp, void* dst);
  // B rows [0, nb) (already offset), columns [k0, k0+kc) with kc a multiple of k_group (entries at or
  // beyond K read as 0) -> panels; corr[c] for c < round_up(nb, panel): the per-column constant the
  // micro-kernel adds (0 in padding columns)
  void (*pack_b)(const int8_t* B, int64_t ldb, int64_t nb, int64_t k0, int64_t kc, int64_t K, void* dst,
                 int32_t* corr);
  // C[rows, nb] (+)= A[rows, kc] · packed B block + corr
  void (*block)(const void* A, int64_t a_ld, int64_t rows, const void* Bp, const int32_t* corr, int64_t nb,
                int64_t kc, int32_t* C, int64_t ldc, bool accumulate);
};

// Packs a block k-group-major: for panel p, group g, column c: one 32-bit word holding the k_group
// (4 bytes or 2 int16) entries of column c at group g.  word(c, k) is supplied by the ISA.
template <typename Word>
void pack_panels(const int8_t* B, int64_t ldb, int64_t nb, int64_t k0, int64_t kc, int64_t K, int64_t kg,
                 int64_t panel, int64_t vec_cols, uint32_t* dst, Word word) {
  const int64_t groups = kc / kg;
  for (int64_t p0 = 0; p0 < nb; p0 += panel) {
    const int64_t w = std::min(panel, nb - p0);
    const int64_t wp = round_up(w, vec_cols);  // stored width of this panel
    for (int64_t g = 0; g < groups; ++g) {
      uint32_t* out = dst + g * wp;
      const int64_t k = k0 + g * kg;
      const int64_t valid = std::clamp<int64_t>(K - k, 0, kg);
      for (int64_t c = 0; c < w; ++c) out[c] = word(B + (p0 + c) * ldb + k, valid);
      for (int64_t c = w; c < wp; ++c) out[c] = 0;
    }
    dst += groups * wp;
  }
}

// ---------------------------------------------------------------------------------------------------
// AVX-512 VNNI: MR=6 rows x up to 4 zmm (64 columns) of int32 accumulators.
#define MC_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
constexpr int64_t kVnniMr = 6, kVnniNv = 4;

MC_VNNI void vnni_convert_a(const int8_t* A, int64_t lda, int64_t rows, int64_t K, int64_t Kp, void* dst) {
  const __m512i bias = _mm512_set1_epi8(char(0x80));
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* a = A + r * lda;
    uint8_t* d = static_cast<uint8_t*>(dst) + r * Kp;
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) _mm512_storeu_si512(d + k, _mm512_xor_si512(_mm512_loadu_si512(a + k), bias));
    for (; k < K; ++k) d[k] = uint8_t(a[k]) ^ 0x80;
    for (; k < Kp; ++k) d[k] = 0;  // padded B is 0 there
  }
}

// 16 rows x 16 k-groups (64 bytes of each row, rows >= nrows read as 0) -> 16 vectors, one per k-group,
// holding that group's 4 bytes of each row: a 16x16 transpose of 32-bit words. out[g * stride] = group g.
MC_VNNI inline void vnni_transpose16(const int8_t* B, int64_t ldb, int64_t nrows, uint32_t* out, int64_t stride) {
  __m512i r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = i < nrows ? _mm512_loadu_si512(B + i * ldb) : _mm512_setzero_si512();
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // r[4i+j], lane L: rows 4i..4i+3 of word 4L+j
    r[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int j = 0; j < 4; ++j) {  // 4x4 transpose of 128-bit lanes across r[j], r[4+j], r[8+j], r[12+j]
    const __m512i v0 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x44), v1 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xEE);
    const __m512i v2 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x44);
    const __m512i v3 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xEE);
    _mm512_storeu_si512(out + (0 + j) * stride, _mm512_shuffle_i32x4(v0, v2, 0x88));
    _mm512_storeu_si512(out + (4 + j) * stride, _mm512_shuffle_i32x4(v0, v2, 0xDD));
    _mm512_storeu_si512(out + (8 + j) * stride, _mm512_shuffle_i32x4(v1, v3, 0x88));
    _mm512_storeu_si512(out + (12 + j) * stride, _mm512_shuffle_i32x4(v1, v3, 0xDD));
  }
}

// Horizontal int32 sum, wrapping (GCC 12's _mm512_reduce_add_epi32 trips -Wmaybe-uninitialized).
MC_VNNI inline uint32_t vnni_hsum(__m512i v) {
  v = _mm512_add_epi32(v, _mm512_shuffle_i64x2(v, v, 0x4E));
  v = _mm512_add_epi32(v, _mm512_shuffle_i64x2(v, v, 0xB1));
  v = _mm512_add_epi32(v, _mm512_shuffle_epi32(v, _MM_PERM_BADC));
  v = _mm512_add_epi32(v, _mm512_shuffle_epi32(v, _MM_PERM_CDAB));
  return uint32_t(_mm512_cvtsi512_si32(v));
}

// sum_k b[k] for k in [0, n), exact in int32 (vpdpbusd with a vector of u8 ones).
MC_VNNI int32_t vnni_row_sum(const int8_t* b, int64_t n) {
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i acc = _mm512_setzero_si512();
  int64_t k = 0;
  for (; k + 64 <= n; k += 64) acc = _mm512_dpbusd_epi32(acc, ones, _mm512_loadu_si512(b + k));
  if (k < n) acc = _mm512_dpbusd_epi32(acc, ones, _mm512_maskz_loadu_epi8(~0ULL >> (64 - (n - k)), b + k));
  return int32_t(vnni_hsum(acc));
}

MC_VNNI void vnni_pack_b(const int8_t* B, int64_t ldb, int64_t nb, int64_t k0, int64_t kc, int64_t K, void* dst,
                         int32_t* corr) {
  const int64_t groups = kc / 4, panel = kVnniNv * 16;
  uint32_t* out = static_cast<uint32_t*>(dst);
  for (int64_t p0 = 0; p0 < nb; p0 += panel) {
    const int64_t w = std::min(panel, nb - p0), wp = round_up(w, 16);
    for (int64_t v = 0; v < wp; v += 16) {
      const int64_t nrows = std::min<int64_t>(16, w - v);
      const int8_t* rows = B + (p0 + v) * ldb;
      int64_t g = 0;
      for (; g + 16 <= groups && k0 + 4 * (g + 16) <= K; g += 16)
        vnni_transpose16(rows + k0 + 4 * g, ldb, nrows, out + g * wp + v, wp);
      for (; g < groups; ++g) {  // the K tail: word by word, zero beyond K
        const int64_t k = k0 + 4 * g, valid = std::clamp<int64_t>(K - k, 0, 4);
        for (int64_t c = 0; c < 16; ++c) {
          uint32_t word = 0;
          if (c < nrows)
            for (int64_t i = 0; i < valid; ++i) word |= uint32_t(uint8_t(rows[c * ldb + k + i])) << (8 * i);
          out[g * wp + v + c] = word;
        }
      }
    }
    out += groups * wp;
  }
  const int64_t kend = std::min(K, k0 + kc);
  for (int64_t c = 0; c < nb; ++c) corr[c] = -128 * vnni_row_sum(B + c * ldb + k0, kend - k0);  // (a+128)·b - 128·Σb
  for (int64_t c = nb; c < round_up(nb, panel); ++c) corr[c] = 0;
}

// Small M (a few tokens): no packing, each output is a dot product along K of a converted A row and
// a B row; MR A rows x 4 B rows per step, the 128·Σb correction accumulated alongside.
template <int MR>
MC_VNNI void vnni_dot_rows(const uint8_t* A, int64_t Kp, const int8_t* B, int64_t ldb, int64_t nrows, int64_t K,
                           int32_t* C, int64_t ldc) {
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t n0 = 0; n0 < nrows; n0 += 4) {
    const int nb = int(std::min<int64_t>(4, nrows - n0));
    __m512i acc[MR][4], sum[4];
    for (int j = 0; j < 4; ++j) {
      sum[j] = _mm512_setzero_si512();
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_setzero_si512();
    }
    for (int64_t k = 0; k < K; k += 64) {
      const __mmask64 m = K - k >= 64 ? ~0ULL : ~0ULL >> (64 - (K - k));
      __m512i b[4];
      for (int j = 0; j < 4; ++j) {
        b[j] = j < nb ? _mm512_maskz_loadu_epi8(m, B + (n0 + j) * ldb + k) : _mm512_setzero_si512();
        sum[j] = _mm512_dpbusd_epi32(sum[j], ones, b[j]);
      }
      for (int i = 0; i < MR; ++i) {
        const __m512i a = _mm512_maskz_loadu_epi8(m, A + i * Kp + k);
        for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], a, b[j]);
      }
    }
    for (int j = 0; j < nb; ++j) {
      const int32_t corr = -128 * int32_t(vnni_hsum(sum[j]));
      for (int i = 0; i < MR; ++i)  // the dot product may wrap in int32; the corrected sum does not
        C[i * ldc + n0 + j] = int32_t(vnni_hsum(acc[i][j]) + uint32_t(corr));
    }
  }
}

template <int MR, int NV>
MC_VNNI void vnni_micro(const uint8_t* A, int64_t a_ld, const uint8_t* Bp, const int32_t* corr, int64_t groups,
                        int32_t* C, int64_t ldc, __mmask16 last_mask, bool accumulate) {
  __m512i acc[MR][NV];
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) {
    const __m512i c0 = _mm512_loadu_si512(corr + 16 * j);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) acc[i][j] = c0;
  }
  for (int64_t g = 0; g < groups; ++g) {
    __m512i b[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) b[j] = _mm512_loadu_si512(Bp + (g * NV + j) * 64);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m512i a = _mm512_set1_epi32(load_i32(A + i * a_ld + 4 * g));
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], a, b[j]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      int32_t* c = C + i * ldc + 16 * j;
      const __mmask16 m = j == NV - 1 ? last_mask : __mmask16(0xFFFF);
      __m512i v = acc[i][j];
      if (accumulate) v = _mm512_add_epi32(v, _mm512_maskz_loadu_epi32(m, c));
      _mm512_mask_storeu_epi32(c, m, v);
    }
  }
}

using VnniMicro = void (*)(const uint8_t*, int64_t, const uint8_t*, const int32_t*, int64_t, int32_t*, int64_t,
                           __mmask16, bool);
template <int MR>
constexpr VnniMicro vnni_row(int nv) {
  return nv == 1 ? &vnni_micro<MR, 1> : nv == 2 ? &vnni_micro<MR, 2> : nv == 3 ? &vnni_micro<MR, 3> : &vnni_micro<MR, 4>;
}
VnniMicro vnni_pick(int mr, int nv) {
  switch (mr) {
    case 1: return vnni_row<1>(nv);
    case 2: return vnni_row<2>(nv);
    case 3: return vnni_row<3>(nv);
    case 4: return vnni_row<4>(nv);
    case 5: return vnni_row<5>(nv);
    default: return vnni_row<6>(nv);
  }
}

void vnni_block(const void* A, int64_t a_ld, int64_t rows, const void* Bp, const int32_t* corr, int64_t nb,
                int64_t kc, int32_t* C, int64_t ldc, bool accumulate) {
  const int64_t groups = kc / 4, panel = kVnniNv * 16;
  const auto* a8 = static_cast<const uint8_t*>(A);
  for (int64_t r = 0; r < rows; r += kVnniMr) {
    const int mr = int(std::min(kVnniMr, rows - r));
    const uint8_t* bp = static_cast<const uint8_t*>(Bp);
    for (int64_t p0 = 0; p0 < nb; p0 += panel) {
      const int64_t w = std::min(panel, nb - p0);
      const int nv = int(ceil_div(w, 16));
      const int tail = int(w - 16 * (nv - 1));
      const __mmask16 mask = __mmask16((1u << tail) - 1u);
      vnni_pick(mr, nv)(a8 + r * a_ld, a_ld, bp, corr + p0, groups, C + r * ldc + p0, ldc, mask, accumulate);
      bp += groups * nv * 64;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// AVX2: int16 pairs, MR=4 rows x up to 3 ymm (24 columns).
#define MC_AVX2 __attribute__((target("avx2")))
constexpr int64_t kAvx2Mr = 4, kAvx2Nv = 3;

MC_AVX2 void avx2_convert_a(const int8_t* A, int64_t lda, int64_t rows, int64_t K, int64_t Kp, void* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* a = A + r * lda;
    int16_t* d = static_cast<int16_t*>(dst) + r * Kp;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + k),
                          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + k))));
    for (; k < K; ++k) d[k] = a[k];
    for (; k < Kp; ++k) d[k] = 0;
  }
}

MC_AVX2 void avx2_pack_b(const int8_t* B, int64_t ldb, int64_t nb, int64_t k0, int64_t kc, int64_t K, void* dst,
                         int32_t* corr) {
  pack_panels(B, ldb, nb, k0, kc, K, 2, kAvx2Nv * 8, 8, static_cast<uint32_t*>(dst),
              [](const int8_t* p, int64_t valid) -> uint32_t {
                const uint32_t lo = valid > 0 ? uint16_t(int16_t(p[0])) : 0;
                const uint32_t hi = valid > 1 ? uint16_t(int16_t(p[1])) : 0;
                return lo | (hi << 16);
              });
  std::fill(corr, corr + round_up(nb, kAvx2Nv * 8), 0);
}

template <int MR, int NV>
MC_AVX2 void avx2_micro(const int16_t* A, int64_t a_ld, const uint32_t* Bp, int64_t groups, int32_t* C,
                        int64_t ldc, __m256i last_mask, bool accumulate) {
  __m256i acc[MR][NV];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 3
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_setzero_si256();
  for (int64_t g = 0; g < groups; ++g) {
    __m256i b[NV];
#pragma GCC unroll 3
    for (int j = 0; j < NV; ++j) b[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(Bp + (g * NV + j) * 8));
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const __m256i a = _mm256_set1_epi32(load_i32(A + i * a_ld + 2 * g));
#pragma GCC unroll 3
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(a, b[j]));
    }
  }
  const __m256i all = _mm256_set1_epi32(-1);
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 3
    for (int j = 0; j < NV; ++j) {
      int* c = reinterpret_cast<int*>(C + i * ldc + 8 * j);
      const __m256i m = j == NV - 1 ? last_mask : all;
      __m256i v = acc[i][j];
      if (accumulate) v = _mm256_add_epi32(v, _mm256_maskload_epi32(c, m));
      _mm256_maskstore_epi32(c, m, v);
    }
  }
}

using Avx2Micro = void (*)(const int16_t*, int64_t, const uint32_t*, int64_t, int32_t*, int64_t, __m256i, bool);
template <int MR>
constexpr Avx2Micro avx2_row(int nv) {
  return nv == 1 ? &avx2_micro<MR, 1> : nv == 2 ? &avx2_micro<MR, 2> : &avx2_micro<MR, 3>;
}
Avx2Micro avx2_pick(int mr, int nv) {
  switch (mr) {
    case 1: return avx2_row<1>(nv);
    case 2: return avx2_row<2>(nv);
    case 3: return avx2_row<3>(nv);
    default: return avx2_row<4>(nv);
  }
}

MC_AVX2 void avx2_block(const void* A, int64_t a_ld, int64_t rows, const void* Bp, const int32_t* corr, int64_t nb,
                        int64_t kc, int32_t* C, int64_t ldc, bool accumulate) {
  const int64_t groups = kc / 2, panel = kAvx2Nv * 8;
  const auto* a16 = static_cast<const int16_t*>(A);
  for (int64_t r = 0; r < rows; r += kAvx2Mr) {
    const int mr = int(std::min(kAvx2Mr, rows - r));
    const uint32_t* bp = static_cast<const uint32_t*>(Bp);
    for (int64_t p0 = 0; p0 < nb; p0 += panel) {
      const int64_t w = std::min(panel, nb - p0);
      const int nv = int(ceil_div(w, 8));
      const int tail = int(w - 8 * (nv - 1));
      const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail), lanes);
      avx2_pick(mr, nv)(a16 + r * a_ld, a_ld, bp, groups, C + r * ldc + p0, ldc, mask, accumulate);
      bp += groups * nv * 8;
    }
  }
}

// Small M: dot products on unpacked B, MR converted A rows x 4 B rows, 16 k per step.
template <int MR>
MC_AVX2 void avx2_dot_rows(const int16_t* A, int64_t Kp, const int8_t* B, int64_t ldb, int64_t nrows, int64_t K,
                           int32_t* C, int64_t ldc) {
  const int64_t K16 = K / 16 * 16;
  for (int64_t n0 = 0; n0 < nrows; n0 += 4) {
    const int nb = int(std::min<int64_t>(4, nrows - n0));
    __m256i acc[MR][4];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < 4; ++j) acc[i][j] = _mm256_setzero_si256();
    for (int64_t k = 0; k < K16; k += 16) {
      __m256i b[4];
      for (int j = 0; j < 4; ++j)
        b[j] = j < nb ? _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(B + (n0 + j) * ldb + k)))
                      : _mm256_setzero_si256();
      for (int i = 0; i < MR; ++i) {
        const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(A + i * Kp + k));
        for (int j = 0; j < 4; ++j) acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(a, b[j]));
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < nb; ++j) {
        alignas(32) int32_t lanes[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc[i][j]);
        int32_t s = 0;
        for (int l = 0; l < 8; ++l) s += lanes[l];
        const int8_t* b = B + (n0 + j) * ldb;
        for (int64_t k = K16; k < K; ++k) s += int32_t(A[i * Kp + k]) * int32_t(b[k]);
        C[i * ldc + n0 + j] = s;
      }
  }
}

const PackedKernel kVnniKernel{4, kVnniNv * 16, 1, vnni_convert_a, vnni_pack_b, vnni_block};
const PackedKernel kAvx2Kernel{2, kAvx2Nv * 8, 2, avx2_convert_a, avx2_pack_b, avx2_block};

// Small-M VNNI driver: converts A, then splits B's rows across threads.
constexpr int64_t kSmallM = 4;  // up to this many rows dot products beat packing B (bench_int8_gemm 0 5 M 4096 4096)

template <typename Elem, typename Convert, typename DotRows>
void small_gemm(const int8_t* A, const int8_t* B, int32_t* C, int64_t M, int64_t N, int64_t K, int64_t lda,
                int64_t ldb, int64_t ldc, int64_t k_group, Convert convert, DotRows dot) {
  const int64_t Kp = round_up(K, k_group);
  std::vector<Elem> a_conv(size_t(M * Kp));
  convert(A, lda, M, K, Kp, a_conv.data());
  const int64_t groups = ceil_div(N, 4);
  const int64_t grain = std::max<int64_t>(1, kSerialMacs / std::max<int64_t>(1, 4 * M * K));
  at::parallel_for(0, groups, grain, [&](int64_t g0, int64_t g1) {
    const int64_t n0 = 4 * g0, nrows = std::min(N, 4 * g1) - n0;
    for (int64_t m = 0; m < M; m += 4)
      dot(int(std::min<int64_t>(4, M - m)), a_conv.data() + m * Kp, Kp, B + n0 * ldb, ldb, nrows, K,
          C + m * ldc + n0, ldc);
  });
}

void vnni_small_gemm(const int8_t* A, const int8_t* B, int32_t* C, int64_t M, int64_t N, int64_t K, int64_t lda,
                     int64_t ldb, int64_t ldc) {
  small_gemm<uint8_t>(A, B, C, M, N, K, lda, ldb, ldc, 4, vnni_convert_a,
                      [](int mr, const uint8_t* a, int64_t Kp, const int8_t* b, int64_t ldb_, int64_t nrows,
                         int64_t K_, int32_t* c, int64_t ldc_) {
                        switch (mr) {
                          case 1: return vnni_dot_rows<1>(a, Kp, b, ldb_, nrows, K_, c, ldc_);
                          case 2: return vnni_dot_rows<2>(a, Kp, b, ldb_, nrows, K_, c, ldc_);
                          case 3: return vnni_dot_rows<3>(a, Kp, b, ldb_, nrows, K_, c, ldc_);
                          default: return vnni_dot_rows<4>(a, Kp, b, ldb_, nrows, K_, c, ldc_);
                        }
                      });
}

void avx2_small_gemm(const int8_t* A, const int8_t* B, int32_t* C, int64_t M, int64_t N, int64_t K, int64_t lda,
                     int64_t ldb, int64_t ldc) {
  small_gemm<int16_t>(A, B, C, M, N, K, lda, ldb, ldc, 2, avx2_convert_a,
                      [](int mr, const int16_t* a, int64_t Kp, const int8_t* b, int64_t ldb_, int64_t nrows,
                         int64_t K_, int32_t* c, int64_t ldc_) {
                        switch (mr) {
                          case 1: return avx2_dot_rows<1>(a, Kp, b, ldb_, nrows, K_, c, ldc_);
                          case 2: return avx2_dot_rows<2>(a, Kp, b, ldb_, nrows, K_, c, ldc_);
                          case 3: return avx2_dot_rows<3>(a, Kp, b, ldb_, nrows, K_, c, ldc_);
                          default: return avx2_dot_rows<4>(a, Kp, b, ldb_, nrows, K_, c, ldc_);
                        }
                      });
}

// ---------------------------------------------------------------------------------------------------
// The shared blocked, parallel driver.
void packed_gemm(const PackedKernel& kr, const int8_t* A, const int8_t* B, int32_t* C, int64_t M, int64_t N,
                 int64_t K, int64_t lda, int64_t ldb, int64_t ldc) {
  const int64_t Kp = round_up(K, kr.k_group);
  std::vector<uint8_t> a_conv(size_t(M * Kp * kr.a_bytes));
  const bool serial = M * N * K < kSerialMacs;
  at::parallel_for(0, M, serial ? M : std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, K)),
                   [&](int64_t r0, int64_t r1) {
                     kr.convert_a(A + r0 * lda, lda, r1 - r0, K, Kp, a_conv.data() + r0 * Kp * kr.a_bytes);
                   });

  const int64_t kc_max = std::min(Kp, round_up(kKc, kr.k_group));
  // Column blocks: a multiple of the thread count when that costs little, so the threads stay even.
  const int64_t threads = serial ? 1 : std::max<int64_t>(1, at::get_num_threads());
  int64_t nblocks = ceil_div(N, kNcTarget);
  nblocks = round_up(nblocks, std::min(threads, nblocks));
  const int64_t nc = round_up(ceil_div(N, nblocks), 16);
  nblocks = ceil_div(N, nc);
  // Few column blocks (small N): split the rows too, in multiples of 24 rows (both MRs divide it).
  int64_t msplit = 1;
  if (nblocks < threads) msplit = std::min(ceil_div(threads, nblocks), std::max<int64_t>(1, M / 24));
  const int64_t mc = round_up(ceil_div(M, msplit), 24);
  msplit = ceil_div(M, mc);
  const int64_t tasks = nblocks * msplit;

  at::parallel_for(0, tasks, serial ? tasks : 1, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<uint32_t> bbuf;
    thread_local std::vector<int32_t> corr;
    bbuf.resize(size_t(round_up(nc, kr.panel) * kc_max * kr.a_bytes / 4 + 16));
    corr.resize(size_t(round_up(nc, kr.panel) + 16));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = (t / msplit) * nc, nb = std::min(nc, N - n0);
      const int64_t m0 = (t % msplit) * mc, rows = std::min(mc, M - m0);
      for (int64_t k0 = 0; k0 < Kp; k0 += kc_max) {
        const int64_t kc = std::min(kc_max, Kp - k0);
        kr.pack_b(B + n0 * ldb, ldb, nb, k0, kc, K, bbuf.data(), corr.data());
        kr.block(a_conv.data() + (m0 * Kp + k0) * kr.a_bytes, Kp, rows, bbuf.data(), corr.data(), nb, kc,
                 C + m0 * ldc + n0, ldc, k0 > 0);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Dispatch.
struct Choice {
  Int8Kernel kernel = Int8Kernel::kScalar;
  std::string error;
};

Int8Kernel best_supported() {
  if (int8_kernel_supported(Int8Kernel::kAvx512Vnni)) return Int8Kernel::kAvx512Vnni;
  if (int8_kernel_supported(Int8Kernel::kAvx2)) return Int8Kernel::kAvx2;
  return Int8Kernel::kScalar;
}

Choice choose() {
  Choice c;
  c.kernel = best_supported();
  const char* env = std::getenv("MCOMPRESS_INT8_KERNEL");
  if (!env || !*env) return c;
  const std::string v = env;
  for (Int8Kernel k : {Int8Kernel::kScalar, Int8Kernel::kAvx2, Int8Kernel::kAvx512Vnni}) {
    if (v != int8_kernel_name(k)) continue;
    if (int8_kernel_supported(k)) c.kernel = k;
    else c.error = str("MCOMPRESS_INT8_KERNEL=", v, ": this CPU does not support it (best: ", int8_kernel_name(c.kernel), ")");
    return c;
  }
  c.error = str("MCOMPRESS_INT8_KERNEL=", v, " is not a kernel (allowed: scalar, avx2, avx512vnni)");
  return c;
}

Int8Kernel resolve(Int8Kernel k) {
  if (k == Int8Kernel::kAuto) return int8_gemm_kernel();
  if (!int8_kernel_supported(k)) mc::fail("int8_gemm", "kernel ", int8_kernel_name(k), " is not supported by this CPU");
  return k;
}

}  // namespace

const char* int8_kernel_name(Int8Kernel k) {
  switch (k) {
    case Int8Kernel::kScalar: return "scalar";
    case Int8Kernel::kAvx2: return "avx2";
    case Int8Kernel::kAvx512Vnni: return "avx512vnni";
    default: return "auto";
  }
}

bool int8_kernel_supported(Int8Kernel k) {
  switch (k) {
    case Int8Kernel::kAvx2: return __builtin_cpu_supports("avx2");
    case Int8Kernel::kAvx512Vnni:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    default: return true;
  }
}

Int8Kernel int8_gemm_kernel() {
  static const Choice choice = choose();
  if (!choice.error.empty()) mc::fail("int8_gemm", choice.error);
  return choice.kernel;
}

const char* int8_gemm_kernel_name() { return int8_kernel_name(int8_gemm_kernel()); }

void gemm_s8s8_s32(const int8_t* A, const int8_t* B, int32_t* C, int64_t M, int64_t N, int64_t K, int64_t lda,
                   int64_t ldb, int64_t ldc, Int8Kernel kernel) {
  if (M < 0 || N < 0 || K < 0 || K > kInt8GemmMaxK || (M > 0 && lda < K) || (N > 0 && ldb < K) ||
      (M > 0 && ldc < N))
    mc::fail("int8_gemm", "bad shape M=", M, " N=", N, " K=", K, " lda=", lda, " ldb=", ldb, " ldc=", ldc,
             " (need M,N,K >= 0, K <= ", kInt8GemmMaxK, ", lda,ldb >= K, ldc >= N)");
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t m = 0; m < M; ++m) std::fill(C + m * ldc, C + m * ldc + N, 0);
    return;
  }
  switch (resolve(kernel)) {
    case Int8Kernel::kAvx512Vnni:
      if (M <= kSmallM) return vnni_small_gemm(A, B, C, M, N, K, lda, ldb, ldc);
      return packed_gemm(kVnniKernel, A, B, C, M, N, K, lda, ldb, ldc);
    case Int8Kernel::kAvx2:
      if (M <= kSmallM) return avx2_small_gemm(A, B, C, M, N, K, lda, ldb, ldc);
      return packed_gemm(kAvx2Kernel, A, B, C, M, N, K, lda, ldb, ldc);
    default: return gemm_scalar(A, B, C, M, N, K, lda, ldb, ldc);
  }
}

// ---------------------------------------------------------------------------------------------------
// ATen wrappers.
namespace {
void check_2d_s8(const at::Tensor& t, const char* what) {
  if (!t.defined()) mc::fail("int8_matmul", what, " is undefined");
  if (t.scalar_type() != at::kChar)
    mc::fail("int8_matmul", what, " has dtype ", t.scalar_type(), " (need int8)");
  if (t.dim() != 2) mc::fail("int8_matmul", what, " has ", t.dim(), " dims ", t.sizes(), " (need 2)");
  if (!t.device().is_cpu()) mc::fail("int8_matmul", what, " is on ", t.device(), " (need cpu)");
}

void check_float(const at::Tensor& t, const char* component, const char* what) {
  if (!t.defined()) mc::fail(component, what, " is undefined");
  if (!at::isFloatingType(t.scalar_type()))
    mc::fail(component, what, " has dtype ", t.scalar_type(), " (need a floating dtype)");
  if (!t.device().is_cpu()) mc::fail(component, what, " is on ", t.device(), " (need cpu)");
}

void check_linear_args(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scale,
                       const at::Tensor& bias, const char* component) {
  check_float(x, component, "x");
  check_2d_s8(w_q, "w_q");
  if (x.dim() < 1 || x.size(-1) != w_q.size(1))
    mc::fail(component, "x ", x.sizes(), " does not match w_q ", w_q.sizes(), " (need x [..., ", w_q.size(1), "])");
  check_float(w_scale, component, "w_scale");
  if (w_scale.dim() != 1 || w_scale.size(0) != w_q.size(0))
    mc::fail(component, "w_scale ", w_scale.sizes(), " (need [", w_q.size(0), "])");
  if (bias.defined()) {
    check_float(bias, component, "bias");
    if (bias.dim() != 1 || bias.size(0) != w_q.size(0))
      mc::fail(component, "bias ", bias.sizes(), " (need [", w_q.size(0), "])");
  }
}

std::vector<int64_t> out_shape(const at::Tensor& x, int64_t n) {
  std::vector<int64_t> s(x.sizes().begin(), x.sizes().end());
  s.back() = n;
  return s;
}
}  // namespace

at::Tensor int8_matmul(const at::Tensor& a, const at::Tensor& b, Int8Kernel kernel) {
  check_2d_s8(a, "a");
  check_2d_s8(b, "b");
  if (a.size(1) != b.size(1))
    mc::fail("int8_matmul", "a ", a.sizes(), " and b ", b.sizes(), " differ in K (need a [M,K], b [N,K])");
  if (a.size(1) > kInt8GemmMaxK)
    mc::fail("int8_matmul", "K=", a.size(1), " exceeds ", kInt8GemmMaxK, " (int32 sums could overflow)");
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  const int64_t M = a.size(0), N = b.size(0), K = a.size(1);
  at::Tensor c = at::empty({M, N}, a.options().dtype(at::kInt));
  gemm_s8s8_s32(ac.data_ptr<int8_t>(), bc.data_ptr<int8_t>(), c.data_ptr<int32_t>(), M, N, K, std::max<int64_t>(K, 1),
                std::max<int64_t>(K, 1), std::max<int64_t>(N, 1), kernel);
  return c;
}

// One pass per row: max |x|, then the codes. Rounding: adding and subtracting 1.5 * 2^23 rounds a
// float of magnitude < 2^22 to an integer in the current rounding mode (to nearest, ties to even) and,
// unlike nearbyintf, vectorizes without SSE4.1.
Int8Rows quantize_per_row_s8(const at::Tensor& x) {
  check_float(x, "int8_quant", "x");
  if (x.dim() < 1) mc::fail("int8_quant", "x is a scalar (need [..., K])");
  const int64_t K = x.size(-1);
  const at::Tensor x2 = x.reshape({-1, K}).to(at::kFloat).contiguous();
  const int64_t rows = x2.size(0);
  Int8Rows r;
  r.q = at::empty({rows, K}, x2.options().dtype(at::kChar));
  r.scale = at::empty({rows}, x2.options());
  const float* xp = x2.data_ptr<float>();
  int8_t* qp = r.q.data_ptr<int8_t>();
  float* sp = r.scale.data_ptr<float>();
  std::atomic<bool> non_finite{false};
  at::parallel_for(0, rows, std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, K)), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const float* xr = xp + i * K;
      float amax = 0;
      int bad = 0;
      for (int64_t k = 0; k < K; ++k) {
        const float a = std::fabs(xr[k]);
        bad |= !(a <= std::numeric_limits<float>::max());
        amax = a > amax ? a : amax;
      }
      if (bad) {
        non_finite = true;
        return;
      }
      float scale = amax / 127.0f;
      if (scale == 0) scale = 1;  // all-zero row (or max |x| < 127 * 2^-149): codes 0
      sp[i] = scale;
      constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
      int8_t* qr = qp + i * K;
      for (int64_t k = 0; k < K; ++k) {
        const float v = std::clamp(xr[k] / scale, -127.0f, 127.0f);
        qr[k] = int8_t((v + kMagic) - kMagic);
      }
    }
  });
  if (non_finite) mc::fail("int8_quant", "x has a non-finite value (inf or nan)");
  return r;
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scale, const at::Tensor& bias,
                       Int8Kernel kernel) {
  check_linear_args(x, w_q, w_scale, bias, "int8_linear");
  const Int8Rows qx = quantize_per_row_s8(x);
  const at::Tensor acc = int8_matmul(qx.q, w_q, kernel);
  const int64_t rows = acc.size(0), N = acc.size(1);
  const at::Tensor ws = w_scale.to(at::kFloat).contiguous();
  const at::Tensor b = bias.defined() ? bias.to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor y = at::empty({rows, N}, acc.options().dtype(at::kFloat));
  const int32_t* ap = acc.data_ptr<int32_t>();
  const float *sx = qx.scale.data_ptr<float>(), *wsp = ws.data_ptr<float>(), *bp = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, N)), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const int32_t* a = ap + i * N;
      float* yr = yp + i * N;
      const float s = sx[i];
      if (bp)
        for (int64_t n = 0; n < N; ++n) yr[n] = float(a[n]) * s * wsp[n] + bp[n];
      else
        for (int64_t n = 0; n < N; ++n) yr[n] = float(a[n]) * s * wsp[n];
    }
  });
  return y.reshape(out_shape(x, w_q.size(0))).to(x.scalar_type());
}

at::Tensor int8_linear_simulated(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scale,
                                 const at::Tensor& bias) {
  check_linear_args(x, w_q, w_scale, bias, "int8_linear_simulated");
  const Int8Rows qx = quantize_per_row_s8(x);
  const at::Tensor xd = qx.q.to(at::kFloat).mul_(qx.scale.unsqueeze(1));
  const at::Tensor wd = w_q.to(at::kFloat).mul_(w_scale.to(at::kFloat).unsqueeze(1));
  at::Tensor y = at::matmul(xd, wd.t());
  if (bias.defined()) y.add_(bias.to(at::kFloat).unsqueeze(0));
  return y.reshape(out_shape(x, w_q.size(0))).to(x.scalar_type());
}

}  // namespace mc

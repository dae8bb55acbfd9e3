// int8 x int8 -> int32 matrix multiply on the CPU (the W8A8 / SmoothQuant inference kernel) and
// per-token dynamic activation quantization.
//
//   gemm_s8s8_s32: C[m,n] = sum_k A[m,k] * B[n,k], exactly. A is the activations [M,K] row-major,
//   B the weight as stored [out=N, in=K] row-major, C [M,N] int32. The full int8 range -128..127
//   is handled exactly by every kernel (no saturating instructions are used); the only limit is that
//   the true sums must fit in int32, which holds for any data when K <= kInt8GemmMaxK (131071 =
//   floor((2^31-1) / 128^2)); larger K throws InputError.
//
// Kernels (chosen at run time, once per process):
//   avx512vnni  vpdpbusd on (A+128 as u8) x B, minus 128 * rowsum(B) per column (exact: the
//               instruction does not saturate and the correction is computed in int32)
//   avx2        sign-extended int16 pairs, vpmaddwd + vpaddd (exact: |a*b + a'*b'| <= 2^15)
//   scalar      plain loops, any CPU
// MCOMPRESS_INT8_KERNEL=scalar|avx2|avx512vnni forces one (InputError if the CPU lacks it); the
// default is the best the CPU supports. B is repacked into cache-sized panels on every call (the
// cost is N*K bytes, small next to the M*N*K multiply unless M is tiny).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace mc {

constexpr int64_t kInt8GemmMaxK = 131071;

enum class Int8Kernel { kAuto, kScalar, kAvx2, kAvx512Vnni };

// "scalar", "avx2", "avx512vnni" ("auto" for kAuto).
const char* int8_kernel_name(Int8Kernel k);
// Whether this CPU (and OS) can run the kernel; kAuto and kScalar always can.
bool int8_kernel_supported(Int8Kernel k);
// The kernel kAuto resolves to: MCOMPRESS_INT8_KERNEL if set, else the best supported one.
// Throws InputError if the variable names an unknown or unsupported kernel.
Int8Kernel int8_gemm_kernel();
const char* int8_gemm_kernel_name();

// C[m,n] = sum_k A[m*lda + k] * B[n*ldb + k]; C[m*ldc + n] is overwritten. Strides are in elements.
// Runs on the ATen intra-op thread pool (at::parallel_for); serial when called inside a parallel region.
void gemm_s8s8_s32(const int8_t* A, const int8_t* B, int32_t* C, int64_t M, int64_t N, int64_t K, int64_t lda,
                   int64_t ldb, int64_t ldc, Int8Kernel kernel = Int8Kernel::kAuto);

// int8 a [M,K] x int8 b [N,K] -> int32 [M,N] = a · bᵀ. Non-contiguous inputs are copied.
// InputError on wrong dtype, rank, device, mismatched K or K > kInt8GemmMaxK.
at::Tensor int8_matmul(const at::Tensor& a, const at::Tensor& b, Int8Kernel kernel = Int8Kernel::kAuto);

// Symmetric per-row (per-token) dynamic quantization of a floating tensor x [..., K] viewed as
// [rows, K]: scale[r] = max_k |x[r,k]| / 127 (float32; 1 for an all-zero row, whose codes are then
// all 0), q = round_half_even(x / scale) clamped to [-127, 127] (never -128). q int8 [rows, K],
// scale float32 [rows]. InputError on a non-floating or 0-dim x, or on a non-finite value.
struct Int8Rows {
  at::Tensor q;
  at::Tensor scale;
};
Int8Rows quantize_per_row_s8(const at::Tensor& x);

// W8A8 linear layer: x floating [..., K], w_q int8 [N,K], w_scale floating [N] (per output channel),
// bias [N] or undefined. Returns, in x's dtype, [..., N] =
//   float(q_x · w_qᵀ) * scale_x[row] * w_scale[n] (+ bias[n])      (products in float32, that order)
// with (q_x, scale_x) = quantize_per_row_s8(x).
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scale,
                       const at::Tensor& bias = {}, Int8Kernel kernel = Int8Kernel::kAuto);

// The same layer in float math: (q_x * scale_x) · (w_q * w_scale)ᵀ (+ bias) with at::matmul in
// float32. Agrees with int8_linear up to float32 summation rounding (the reference for tests).
at::Tensor int8_linear_simulated(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scale,
                                 const at::Tensor& bias = {});

}  // namespace mc

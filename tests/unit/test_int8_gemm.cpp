// int8 GEMM and W8A8 linear: every kernel this CPU runs against an int64 triple loop (odd shapes that
// cut the register and cache tiles, K = 1, M = 1, N = 1, the int8 extremes, strided operands and the
// largest K whose sums still fit in int32), against at::matmul in double, per-row quantization worked
// out by hand, int8_linear against its float simulation and against the float layer, and the errors.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <string>
#include <vector>

#include "mcompress/error.h"
#include "mcompress/int8_gemm.h"
#include "test_utils.h"

using namespace mc;

namespace {

// Float32 unit roundoff. A float32 dot product of length K (any summation order) is within
// gamma_K ~ K*u of the exact value relative to sum |x||w|; the dequantizations, the two scale products
// and the bias add cost a few roundings more on either side: allow (K + 8) u.
constexpr double kUnitRoundoff = 1.0 / (1 << 24);
constexpr int64_t kExtraRoundings = 8;
// int8 per-token x int8 per-channel symmetric quantization of normal data: step ~ 3.5 sigma / 127 on
// both sides, noise step/sqrt(12) ~ 0.8% of sigma each, ~1.1% relative error in the product; 2% bound.
constexpr double kW8A8RelError = 0.02;

std::vector<Int8Kernel> kernels_here() {
  std::vector<Int8Kernel> ks;
  for (Int8Kernel k : {Int8Kernel::kScalar, Int8Kernel::kAvx2, Int8Kernel::kAvx512Vnni})
    if (int8_kernel_supported(k)) ks.push_back(k);
  return ks;
}

at::Tensor random_s8(int64_t rows, int64_t cols, uint64_t seed, int lo = -127, int hi = 127) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randint(lo, hi + 1, {rows, cols}, gen, at::kChar);
}

// Oracle: int64 triple loop over strided operands.
std::vector<int64_t> gemm_ref(const int8_t* A, const int8_t* B, int64_t M, int64_t N, int64_t K, int64_t lda,
                              int64_t ldb) {
  std::vector<int64_t> c(size_t(M * N), 0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      int64_t s = 0;
      for (int64_t k = 0; k < K; ++k) s += int64_t(A[m * lda + k]) * int64_t(B[n * ldb + k]);
      c[size_t(m * N + n)] = s;
    }
  return c;
}

// Runs int8_matmul with kernel k and compares with the oracle; returns the number of mismatches.
int64_t mismatches(const at::Tensor& a, const at::Tensor& b, Int8Kernel k) {
  const at::Tensor c = int8_matmul(a, b, k);
  REQUIRE(c.scalar_type() == at::kInt);
  REQUIRE(c.sizes() == at::IntArrayRef({a.size(0), b.size(0)}));
  const auto ref = gemm_ref(a.data_ptr<int8_t>(), b.data_ptr<int8_t>(), a.size(0), b.size(0), a.size(1), a.size(1),
                            b.size(1));
  const int32_t* cp = c.data_ptr<int32_t>();
  int64_t bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) bad += int64_t(cp[i]) != ref[i];
  return bad;
}

struct Shape {
  int64_t M, N, K;
};

// Tiles: VNNI 6 rows x 64 columns x 4 k, AVX2 4 x 24 x 2, K blocks of 1024, column blocks ~256.
const std::vector<Shape> kOddShapes = {
    {1, 1, 1},    {1, 17, 1},     {7, 13, 5},     {6, 64, 4},    {5, 65, 3},       {13, 67, 131},
    {1, 300, 77}, {25, 129, 1027}, {97, 300, 2050}, {500, 5, 300}, {200, 1000, 33}, {3, 2, 4099},
};

std::string label(const Shape& s, Int8Kernel k) {
  return str(int8_kernel_name(k), " M=", s.M, " N=", s.N, " K=", s.K);
}

}  // namespace

TEST_CASE("int8_gemm: every kernel equals the int64 loop on odd shapes", "[int8]") {
  REQUIRE(int8_kernel_supported(Int8Kernel::kScalar));
  uint64_t seed = 100;
  for (Int8Kernel k : kernels_here())
    for (const Shape& s : kOddShapes) {
      INFO(label(s, k));
      CHECK(mismatches(random_s8(s.M, s.K, seed), random_s8(s.N, s.K, seed + 1), k) == 0);
      seed += 2;
    }
}

TEST_CASE("int8_gemm: int8 extremes, -128 included, are exact", "[int8]") {
  for (Int8Kernel k : kernels_here()) {
    for (int va : {-128, -127, 127})
      for (int vb : {-128, -127, 127}) {
        INFO(int8_kernel_name(k) << " a=" << va << " b=" << vb);
        const at::Tensor a = at::full({9, 515}, va, at::kChar), b = at::full({70, 515}, vb, at::kChar);
        CHECK(mismatches(a, b, k) == 0);
        CHECK(int8_matmul(a, b, k).eq(va * vb * 515).all().item<bool>());
      }
    INFO(int8_kernel_name(k));
    CHECK(mismatches(random_s8(31, 1030, 5, -128, 127), random_s8(77, 1030, 6, -128, 127), k) == 0);
  }
}

TEST_CASE("int8_gemm: the largest K keeps int32 sums exact", "[int8]") {
  // 128 * 128 * 131071 = 2^31 - 16384: the biggest sum that fits. VNNI computes (a+128)*b, which
  // wraps past int32 for a=127, b=-128, then adds 128*sum(b) back: exact only with modular arithmetic.
  const int64_t K = kInt8GemmMaxK;
  at::Tensor a = at::full({3, K}, -128, at::kChar), b = at::full({2, K}, -128, at::kChar);
  a[1].fill_(127);
  a[2].copy_(random_s8(1, K, 9, -128, 127)[0]);
  b[1].copy_(random_s8(1, K, 10, -128, 127)[0]);
  const at::Tensor a_many = a.repeat({4, 1});  // 12 rows: the packed path as well as the few-rows one
  for (Int8Kernel k : kernels_here()) {
    INFO(int8_kernel_name(k));
    CHECK(mismatches(a, b, k) == 0);
    CHECK(mismatches(a_many, b, k) == 0);
    CHECK(int8_matmul(a, b, k)[0][0].item<int32_t>() == 2147467264);
  }
  CHECK_THROWS_AS(int8_matmul(at::zeros({1, K + 1}, at::kChar), at::zeros({1, K + 1}, at::kChar)), InputError);
}

TEST_CASE("int8_gemm: strided operands leave the rest of C alone", "[int8]") {
  const int64_t M = 19, N = 70, K = 37, lda = 50, ldb = 41, ldc = 83;
  const at::Tensor A = random_s8(M, lda, 21), B = random_s8(N, ldb, 22);
  const auto ref = gemm_ref(A.data_ptr<int8_t>(), B.data_ptr<int8_t>(), M, N, K, lda, ldb);
  for (Int8Kernel k : kernels_here()) {
    INFO(int8_kernel_name(k));
    std::vector<int32_t> C(size_t(M * ldc), 12345);
    gemm_s8s8_s32(A.data_ptr<int8_t>(), B.data_ptr<int8_t>(), C.data(), M, N, K, lda, ldb, ldc, k);
    int64_t bad = 0, touched = 0;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < ldc; ++n) {
        const int32_t v = C[size_t(m * ldc + n)];
        if (n < N) bad += v != ref[size_t(m * N + n)];
        else touched += v != 12345;
      }
    CHECK(bad == 0);
    CHECK(touched == 0);
    // int8_matmul on non-contiguous views gives the same numbers.
    const at::Tensor c = int8_matmul(A.narrow(1, 0, K), B.narrow(1, 0, K), k);
    CHECK(at::equal(c, at::from_blob(C.data(), {M, ldc}, at::kInt).narrow(1, 0, N)));
  }
}

TEST_CASE("int8_gemm: agrees with at::matmul in double", "[int8]") {
  const at::Tensor a = random_s8(130, 700, 31, -128, 127), b = random_s8(257, 700, 32, -128, 127);
  const at::Tensor ref = at::matmul(a.to(at::kDouble), b.to(at::kDouble).t());  // exact: |sums| < 2^53
  for (Int8Kernel k : kernels_here()) {
    INFO(int8_kernel_name(k));
    CHECK(at::equal(int8_matmul(a, b, k).to(at::kDouble), ref));
  }
  // Empty and K = 0 products.
  CHECK(int8_matmul(at::zeros({0, 5}, at::kChar), at::zeros({3, 5}, at::kChar)).sizes() == at::IntArrayRef({0, 3}));
  CHECK(at::equal(int8_matmul(at::zeros({2, 0}, at::kChar), at::zeros({3, 0}, at::kChar)),
                  at::zeros({2, 3}, at::kInt)));
}

TEST_CASE("int8_gemm: kernel selection", "[int8]") {
  const std::string name = int8_gemm_kernel_name();
  CHECK((name == "scalar" || name == "avx2" || name == "avx512vnni"));
  CHECK(int8_kernel_supported(int8_gemm_kernel()));
  WARN("int8 kernel in use: " << name);
}

TEST_CASE("int8_gemm: misuse throws InputError", "[int8]") {
  const at::Tensor a = at::zeros({4, 8}, at::kChar);
  CHECK_THROWS_AS(int8_matmul(a.to(at::kFloat), a), InputError);
  CHECK_THROWS_AS(int8_matmul(a, a.to(at::kByte)), InputError);
  CHECK_THROWS_AS(int8_matmul(a, at::zeros({4, 9}, at::kChar)), InputError);
  CHECK_THROWS_AS(int8_matmul(a.reshape({2, 2, 8}), a), InputError);
  CHECK_THROWS_AS(int8_matmul(at::Tensor(), a), InputError);
  int32_t c = 0;
  CHECK_THROWS_AS(gemm_s8s8_s32(a.data_ptr<int8_t>(), a.data_ptr<int8_t>(), &c, 1, 1, 8, 4, 8, 1), InputError);
  try {
    int8_matmul(a, at::zeros({4, 9}, at::kChar));
  } catch (const InputError& e) {
    CHECK(std::string(e.what()).find("[int8_matmul]") == 0);
  }
}

TEST_CASE("quantize_per_row_s8: a hand-computed example", "[int8]") {
  // Row 0: max 127 -> scale 1; 2.5 and 0.5 and 1.5 round half to even: 2, 0, 2.
  // Row 1: all zero -> scale 1, codes 0.  Row 2: max 254 -> scale 2: 127, -1.5 -> -2, 2.5 -> 2, -0.5 -> 0.
  // Row 3: max 1 -> scale 1/127: -1 -> -127 (never -128), 1 -> 127, 0.25 -> 31.75 -> 32.
  const at::Tensor x = at::tensor({2.5f, -127.f, 0.5f, 1.5f, 0.f, 0.f, 0.f, 0.f, 254.f, -3.f, 5.f, -1.f, -1.f, 1.f,
                                   0.25f, 0.f})
                           .reshape({2, 2, 4});
  const Int8Rows r = quantize_per_row_s8(x);
  REQUIRE(r.q.scalar_type() == at::kChar);
  REQUIRE(r.scale.scalar_type() == at::kFloat);
  REQUIRE(r.q.sizes() == at::IntArrayRef({4, 4}));
  const at::Tensor q_expected =
      at::tensor({2, -127, 0, 2, 0, 0, 0, 0, 127, -2, 2, 0, -127, 127, 32, 0}, at::kChar).reshape({4, 4});
  CHECK(at::equal(r.q, q_expected));
  const at::Tensor s_expected = at::tensor({1.f, 1.f, 2.f, 1.f / 127.f});
  CHECK(at::allclose(r.scale, s_expected, 1e-7, 0));
  CHECK_THROWS_AS(quantize_per_row_s8(at::zeros({2, 3}, at::kChar)), InputError);
  CHECK_THROWS_AS(quantize_per_row_s8(at::tensor({1.f, INFINITY})), InputError);
  CHECK_THROWS_AS(quantize_per_row_s8(at::tensor({1.f, NAN})), InputError);
}

namespace {
// Oracle: the same quantization with whole-tensor ATen ops (at::round rounds half to even).
Int8Rows quantize_ref(const at::Tensor& x) {
  const at::Tensor x2 = x.reshape({-1, x.size(-1)}).to(at::kFloat);
  const at::Tensor amax = x2.abs().amax({1});
  Int8Rows r;
  r.scale = amax.div(127.0f);
  r.scale = at::where(r.scale.eq(0), at::ones_like(r.scale), r.scale);
  r.q = x2.div(r.scale.unsqueeze(1)).round().clamp(-127, 127).to(at::kChar);
  return r;
}
}  // namespace

TEST_CASE("quantize_per_row_s8: equals the ATen oracle", "[int8]") {
  auto gen = at::detail::createCPUGenerator(61);
  at::Tensor x = at::randn({37, 301}, gen, at::kFloat).mul_(at::rand({37, 1}, gen, at::kFloat).mul_(10));
  // Rows with scale exactly 1 and many exact ties k + 0.5, a zero row, a constant row, a single outlier.
  x[0].copy_(at::randint(-127, 127, {301}, gen, at::kFloat).add_(0.5f));
  x[0][7] = 127.0f;
  x[1].zero_();
  x[2].fill_(-3.0f);
  x[3].mul_(1e-3f);
  x[3][100] = 50.0f;
  const Int8Rows r = quantize_per_row_s8(x), ref = quantize_ref(x);
  CHECK(at::equal(r.q, ref.q));
  CHECK(at::equal(r.scale, ref.scale));
  CHECK(r.q.min().item<int>() >= -127);
  // bf16 and double inputs go through float32.
  CHECK(at::equal(quantize_per_row_s8(x.to(at::kDouble)).q, ref.q));
  const at::Tensor xb = x.to(at::kBFloat16);
  CHECK(at::equal(quantize_per_row_s8(xb).q, quantize_ref(xb.to(at::kFloat)).q));
}

namespace {
struct Layer {
  at::Tensor w, w_q, w_scale, bias;
};
// Normal weights with a few outlier channels, quantized symmetrically per output channel.
Layer make_layer(int64_t out, int64_t in, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  Layer l;
  l.w = at::randn({out, in}, gen, at::kFloat).mul_(0.05);
  l.w[3].mul_(20);
  l.w_scale = l.w.abs().amax({1}).div(127.0f);
  l.w_q = l.w.div(l.w_scale.unsqueeze(1)).round().clamp(-127, 127).to(at::kChar);
  l.bias = at::randn({out}, gen, at::kFloat);
  return l;
}
}  // namespace

TEST_CASE("int8_linear: equals its float simulation up to float32 rounding", "[int8]") {
  const int64_t K = 200, N = 300;
  const Layer l = make_layer(N, K, 41);
  auto gen = at::detail::createCPUGenerator(42);
  const at::Tensor x = at::randn({3, 5, K}, gen, at::kFloat).mul_(at::rand({3, 5, 1}, gen, at::kFloat).mul_(4));
  const at::Tensor ysim = int8_linear_simulated(x, l.w_q, l.w_scale, l.bias);
  REQUIRE(ysim.sizes() == at::IntArrayRef({3, 5, N}));
  // Error bound from the magnitudes: (|x_deq| · |w_deq|ᵀ + |bias|) (K + extra) u.
  const Int8Rows qx = quantize_per_row_s8(x);
  const at::Tensor mag = at::matmul(qx.q.to(at::kDouble).abs() * qx.scale.to(at::kDouble).unsqueeze(1),
                                    (l.w_q.to(at::kDouble).abs() * l.w_scale.to(at::kDouble).unsqueeze(1)).t())
                             .add(l.bias.to(at::kDouble).abs())
                             .reshape({3, 5, N});
  const at::Tensor bound = mag.mul(double(K + kExtraRoundings) * kUnitRoundoff);
  for (Int8Kernel k : kernels_here()) {
    INFO(int8_kernel_name(k));
    const at::Tensor y = int8_linear(x, l.w_q, l.w_scale, l.bias, k);
    REQUIRE(y.sizes() == ysim.sizes());
    REQUIRE(y.scalar_type() == at::kFloat);
    const at::Tensor excess = (y.to(at::kDouble) - ysim.to(at::kDouble)).abs() - bound;
    CHECK(excess.max().item<double>() <= 0);
    // Without bias too.
    CHECK(at::allclose(int8_linear(x, l.w_q, l.w_scale, {}, k), int8_linear_simulated(x, l.w_q, l.w_scale), 1e-5,
                       1e-5));
  }
  // bf16 in, bf16 out.
  const at::Tensor yb = int8_linear(x.to(at::kBFloat16), l.w_q, l.w_scale, l.bias);
  CHECK(yb.scalar_type() == at::kBFloat16);
}

TEST_CASE("int8_linear: close to the float layer", "[int8]") {
  const int64_t K = 512, N = 384;
  const Layer l = make_layer(N, K, 51);
  auto gen = at::detail::createCPUGenerator(52);
  const at::Tensor x = at::randn({64, K}, gen, at::kFloat);
  const at::Tensor y_float = at::matmul(x, l.w.t()).add_(l.bias);
  for (Int8Kernel k : kernels_here()) {
    INFO(int8_kernel_name(k));
    const at::Tensor y = int8_linear(x, l.w_q, l.w_scale, l.bias, k);
    const double rel = (y - y_float).norm().item<double>() / y_float.norm().item<double>();
    INFO("relative error " << rel);
    CHECK(rel < kW8A8RelError);
    CHECK(rel > 0);  // it is quantized
  }
  CHECK_THROWS_AS(int8_linear(x, l.w_q, l.w_scale.narrow(0, 0, 10), l.bias), InputError);
  CHECK_THROWS_AS(int8_linear(x.narrow(1, 0, 100), l.w_q, l.w_scale, l.bias), InputError);
  CHECK_THROWS_AS(int8_linear(x, l.w_q.to(at::kFloat), l.w_scale, l.bias), InputError);
  CHECK_THROWS_AS(int8_linear(x, l.w_q, l.w_scale, at::zeros({3})), InputError);
}

// GPTQ and the Hessian accumulator: the lazy-block path against the column-by-column reference,
// H = I reducing to RTN exactly, act-order / static-group bookkeeping, dead columns, damping retries
// and the errors; and a hidden case ([.gptq-export]) that runs gptq_quantize on files written by
// tests/python/test_gptq_reference.py, which compares it with the authors' algorithm in PyTorch.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "mcompress/error.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/checkpoint.h"
#include "mcompress/quant/gptq.h"
#include "mcompress/quant/hessian.h"
#include "mcompress/quant/packed.h"
#include "mcompress/torch_bridge.h"
#include "calib_problem.h"
#include "test_utils.h"

using namespace mc;

namespace {

using mctest::calib_inputs;
using mctest::hessian_of;
using mctest::randn;

// Lazy blocks vs column by column: the same arithmetic summed in a different order (float32), so a
// value lying within ~1e-6 of a rounding boundary can round the other way; the flipped code then
// shifts that row's later columns through the error feedback and may flip a few more. Measured on
// these sizes (48x192, every configuration and block size below): 0 of the 9216 codes differ and the
// losses agree to 6 digits. Allowed: 1% of the codes and the layer loss within 1%, room for a few
// cascades on another BLAS (a flip changes a column's error by at most one step either way).
constexpr double kMaxCodeMismatch = 0.01;
constexpr double kLossRelTol = 0.01;
// Hessians compared across float32 summation orders (addmm in batches vs one matmul in double).
constexpr double kHessianRelTol = 1e-5;

GptqOptions opts(int bits, bool sym, int64_t gs, bool act = false, bool stat = false, int64_t bs = 128) {
  GptqOptions o;
  o.spec.bits = bits;
  o.spec.symmetric = sym;
  o.spec.group_size = gs;
  o.act_order = act;
  o.static_groups = stat;
  o.block_size = bs;
  return o;
}

double mismatch(const at::Tensor& a, const at::Tensor& b) { return a.ne(b).to(at::kDouble).mean().item<double>(); }

// The layer error through H: tr((W-Ŵ) H (W-Ŵ)ᵀ) = 2/n ||(W-Ŵ)Xᵀ||² (the factor cancels in ratios).
double layer_error(const at::Tensor& W, const at::Tensor& Wq, const at::Tensor& H) {
  at::Tensor d = W.sub(Wq).to(at::kDouble);
  return d.matmul(H.to(at::kDouble)).mul(d).sum().item<double>();
}

void require_close(const GptqResult& a, const GptqResult& b) {
  REQUIRE(a.quant.codes.sizes() == b.quant.codes.sizes());
  CHECK(at::equal(a.perm, b.perm));
  CHECK(at::equal(a.g_idx, b.g_idx));
  const double mis = mismatch(a.quant.codes, b.quant.codes);
  INFO("code mismatch " << mis << ", loss " << a.loss << " vs " << b.loss);
  CHECK(mis <= kMaxCodeMismatch);
  CHECK(std::abs(a.loss - b.loss) <= kLossRelTol * b.loss);
}

std::string error_of(const at::Tensor& W, const at::Tensor& H, const GptqOptions& o) {
  try {
    gptq_quantize(W, H, o, "layers.2.wo");
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("HessianAccumulator: running average of 2/n XᵀX and channel statistics", "[gptq]") {
  const at::Tensor x = calib_inputs(300, 24, 5);
  for (bool fp64 : {false, true}) {
    HessianAccumulator acc(24, fp64, "layers.0.wq");
    acc.add(x.narrow(0, 0, 100).view({4, 25, 24}));  // [batch, seq, in]
    acc.add(x.narrow(0, 100, 0));                     // empty: no-op
    acc.add(x.narrow(0, 100, 77));
    acc.add(x.narrow(0, 177, 123).to(at::kDouble));
    CHECK(acc.samples() == 300);
    CHECK(acc.hessian().scalar_type() == (fp64 ? at::kDouble : at::kFloat));
    const at::Tensor xd = x.to(at::kDouble);
    const at::Tensor h = hessian_of(xd);
    CHECK(acc.hessian().to(at::kDouble).sub(h).abs().max().item<double>() <= kHessianRelTol * h.abs().max().item<double>());
    CHECK(at::allclose(acc.mean_abs().to(at::kDouble), xd.abs().mean(0), 1e-6, 0));
    CHECK(at::equal(acc.max_abs(), x.abs().amax(0)));
    CHECK(at::allclose(acc.sum_sq(), xd.mul(xd).sum(0), 1e-6, 0));
  }
  HessianAccumulator acc(24, false, "layers.0.wq");
  at::Tensor bad = x.narrow(0, 0, 10).clone();
  bad[3][5] = NAN;
  CHECK_THROWS_WITH(acc.add(bad), Catch::Contains("layers.0.wq") && Catch::Contains("NaN"));
  CHECK_THROWS_AS(acc.add(x.narrow(1, 0, 20)), InputError);
  CHECK(acc.samples() == 0);
}

TEST_CASE("HessianAccumulator with bf16 products: 2/n XᵀX of X rounded to bf16, float32 sums", "[gptq]") {
  // 1030 input columns (4 x 4 tiles, the last one shorter: only those on and below the diagonal are
  // multiplied, the rest mirrored) and batches of odd sizes: the oracle is the
  // float64 Hessian of the bf16-rounded inputs, which differs from the unrounded one by far more than
  // the tolerance (checked), so a product of unrounded (or wrongly transposed) inputs fails.
  const at::Tensor x = calib_inputs(301, 1030, 7);
  HessianAccumulator acc(1030, false, "layers.0.wq", true);
  acc.add(x.narrow(0, 0, 100).view({4, 25, 1030}));
  CHECK(at::equal(acc.hessian(), acc.hessian().t()));  // read between adds: mirrored, then updated again
  acc.add(x.narrow(0, 100, 0));
  acc.add(x.narrow(0, 100, 201));
  CHECK(acc.samples() == 301);
  const at::Tensor rounded = hessian_of(x.to(at::kBFloat16).to(at::kDouble));
  const at::Tensor exact = hessian_of(x.to(at::kDouble));
  const double tol = kHessianRelTol * rounded.abs().max().item<double>();
  CHECK(acc.hessian().to(at::kDouble).sub(rounded).abs().max().item<double>() <= tol);
  CHECK(rounded.sub(exact).abs().max().item<double>() > 20 * tol);
  CHECK(at::allclose(acc.sum_sq(), x.to(at::kDouble).pow(2).sum(0), 1e-6, 0));  // statistics of X as given
  CHECK(at::allclose(acc.mean_abs().to(at::kDouble), x.to(at::kDouble).abs().mean(0), 1e-6, 0));
  CHECK(at::equal(acc.max_abs(), x.abs().amax(0)));
  // A non-finite batch fails before anything is added (the statistics and H stay those of the 301 rows).
  const at::Tensor h_before = acc.hessian().clone(), sq_before = acc.sum_sq().clone();
  at::Tensor bad = x.narrow(0, 0, 9).clone();
  bad[8][1029] = INFINITY;
  CHECK_THROWS_WITH(acc.add(bad), Catch::Contains("layers.0.wq") && Catch::Contains("NaN or Inf"));
  CHECK(acc.samples() == 301);
  CHECK(at::equal(acc.hessian(), h_before));
  CHECK(at::equal(acc.sum_sq(), sq_before));
  CHECK(at::equal(acc.max_abs(), x.abs().amax(0)));
  // fp64 keeps the float64 path: bf16 products are for float32 Hessians only.
  HessianAccumulator acc64(1030, true, "layers.0.wq", true);
  acc64.add(x);
  CHECK(acc64.hessian().sub(exact).abs().max().item<double>() <= 1e-9 * exact.abs().max().item<double>());
}

TEST_CASE("gptq_quantize with lazy blocks matches the column-by-column reference", "[gptq]") {
  const at::Tensor W = randn({48, 192}, 11).mul_(0.05);
  const at::Tensor H = hessian_of(calib_inputs(1024, 192, 12));
  for (int bits : {3, 4}) {
    for (bool sym : {true, false}) {
      for (int64_t gs : {32, 0}) {
        for (bool act : {false, true}) {
          for (bool stat : {false, true}) {
            if (gs == 0 && stat) continue;
            const GptqOptions ref_o = opts(bits, sym, gs, act, stat);
            const GptqResult ref = gptq_quantize_ref(W, H, ref_o);
            for (int64_t bs : {128, 48, 20, 1}) {  // 48 and 20: groups of 32 start inside blocks and span two
              INFO(ref_o.spec.describe() << (act ? " act_order" : "") << (stat ? " static" : "") << " block " << bs);
              require_close(gptq_quantize(W, H, opts(bits, sym, gs, act, stat, bs)), ref);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("gptq_quantize with a float64 Hessian (--fp64 statistics) matches the reference", "[gptq]") {
  // The float64 factor has its own in-place path (a double buffer, reversed, then narrowed); the reference's
  // Hinv comes from the authors' cholesky / cholesky_inverse / cholesky chain, not from that factor.
  const at::Tensor W = randn({40, 160}, 21).mul_(0.05);
  const at::Tensor H = hessian_of(calib_inputs(900, 160, 22).to(at::kDouble));
  REQUIRE(H.scalar_type() == at::kDouble);
  for (bool act : {false, true}) {
    const GptqOptions o = opts(4, false, 32, act, false);
    INFO((act ? "act_order" : "plain"));
    require_close(gptq_quantize(W, H, o), gptq_quantize_ref(W, H, o));
  }
}

TEST_CASE("gptq_quantize split into row tasks matches the reference", "[gptq]") {
  // 600 rows: more than one task of >= 256 rows whenever 2+ threads are available.
  const at::Tensor W = randn({600, 96}, 13).mul_(0.05);
  const at::Tensor H = hessian_of(calib_inputs(512, 96, 14));
  for (bool act : {false, true}) {
    const GptqOptions o = opts(4, false, 32, act, false, 40);
    INFO("act_order " << act);
    require_close(gptq_quantize(W, H, o), gptq_quantize_ref(W, H, o));
  }
}

TEST_CASE("gptq_quantize with H = I is RTN exactly", "[gptq]") {
  // Hinv is diagonal: no error feedback, every group is fitted on the original weights.
  const at::Tensor W = randn({16, 100}, 21).mul_(0.1);  // 100 = 3 x 32 + 4: a short last group
  for (int64_t gs : {32, 0})
    for (bool sym : {true, false})
      for (bool stat : {false, true}) {
        GptqOptions o = opts(4, sym, gs, false, stat, 7);
        o.spec.mse_clip = sym;
        INFO(o.spec.describe());
        const GptqResult g = gptq_quantize(W, at::eye(100), o);
        const QuantResult r = rtn_quantize(W, o.spec);
        CHECK(at::equal(g.quant.codes, r.codes));
        CHECK(at::equal(g.quant.scales, r.scales));
        CHECK(at::equal(g.quant.zeros, r.zeros));
        CHECK(g.plain_groups());
        CHECK(at::equal(g.dequantize(), r.dequantize()));
      }
}

TEST_CASE("gptq act_order: permutation, g_idx and which layouts are plain", "[gptq]") {
  const at::Tensor W = randn({32, 128}, 31).mul_(0.05);
  const at::Tensor H = hessian_of(calib_inputs(512, 128, 32));
  const at::Tensor hd = H.diagonal();
  const GptqResult dyn = gptq_quantize(W, H, opts(4, true, 32, true));
  // perm sorts diag H descending; g_idx of the k-th quantized column is k / 32.
  CHECK(hd.index_select(0, dyn.perm).diff().le(0).all().item<bool>());
  CHECK(at::equal(dyn.g_idx.index_select(0, dyn.perm).to(at::kLong), at::arange(128, at::kLong).div(32, "floor")));
  CHECK_FALSE(dyn.plain_groups());
  // dequantize() through g_idx, checked one column at a time
  const at::Tensor dq = dyn.dequantize();
  for (int64_t c : {0, 5, 77, 127}) {
    const int64_t g = dyn.g_idx[c].item<int64_t>();
    const at::Tensor want = dyn.quant.codes.select(1, c).to(at::kFloat).sub(dyn.quant.zeros.select(1, g)).mul(dyn.quant.scales.select(1, g));
    CHECK(at::equal(dq.select(1, c), want));
  }
  // static groups: the groups are original column ranges, so the plain QuantResult layout is valid
  const GptqResult st = gptq_quantize(W, H, opts(4, true, 32, true, true));
  CHECK(st.plain_groups());
  CHECK(at::equal(st.quant.dequantize(), st.dequantize()));
  CHECK(at::equal(st.quant.scales, rtn_quantize(W, opts(4, true, 32).spec).scales));  // fitted on the original W
  // without act_order the order is the identity
  const GptqResult plain = gptq_quantize(W, H, opts(4, true, 32));
  CHECK(at::equal(plain.perm, at::arange(128, at::kLong)));
  CHECK(plain.plain_groups());
  // all three beat RTN on the layer error
  const double rtn = layer_error(W, rtn_quantize(W, opts(4, true, 32).spec).dequantize(), H);
  for (const GptqResult* r : {&dyn, &st, &plain}) CHECK(layer_error(W, r->dequantize(), H) < 0.7 * rtn);
}

TEST_CASE("gptq act_order with dynamic groups: quant.g_idx, packed file round trip", "[gptq][pack]") {
  const at::Tensor W = randn({24, 100}, 71).mul_(0.05);  // 100 = 3 x 32 + 4: a short group
  const at::Tensor H = hessian_of(calib_inputs(512, 100, 72));
  const GptqResult dyn = gptq_quantize(W, H, opts(3, false, 32, true));
  REQUIRE_FALSE(dyn.plain_groups());
  REQUIRE(dyn.quant.g_idx.defined());
  CHECK(at::equal(dyn.quant.g_idx, dyn.g_idx));
  CHECK(at::equal(dyn.quant.dequantize(), dyn.dequantize()));
  // plain layouts leave quant.g_idx undefined (packed files without g_idx stay as they were)
  CHECK_FALSE(gptq_quantize(W, H, opts(3, false, 32, true, true)).quant.g_idx.defined());
  CHECK_FALSE(gptq_quantize(W, H, opts(3, false, 32)).quant.g_idx.defined());
  CHECK_FALSE(gptq_quantize(W, H, opts(3, false, 0, true)).quant.g_idx.defined());

  mctest::TempDir dir;
  const std::string path = dir.file("gptq.safetensors");
  write_packed_checkpoint(path, {}, {{"layers.0.w2.weight", dyn.quant}}, {});
  {
    auto reader = open_checkpoint(path);
    const std::vector<HostTensor> got = read_packed_checkpoint(*reader);
    REQUIRE(got.size() == 1);
    CHECK(got[0].name == "layers.0.w2.weight");
    CHECK(at::equal(to_torch(got[0]), dyn.dequantize()));  // exactly, through the stored g_idx
    CHECK(at::equal(to_torch(reader->load("layers.0.w2.weight.g_idx")), dyn.g_idx));
  }
  // a g_idx pointing past the groups is refused, in memory and on write
  QuantResult bad = dyn.quant;
  bad.g_idx = dyn.g_idx.clone();
  bad.g_idx[10] = 4;  // 4 groups: 0..3
  CHECK_THROWS_WITH(bad.dequantize(), Catch::Contains("g_idx values must lie in 0..3"));
  CHECK_THROWS_WITH(write_packed_checkpoint(dir.file("bad.safetensors"), {}, {{"w", bad}}, {}),
                    Catch::Contains("g_idx values must lie in 0..3"));
  bad.g_idx = dyn.g_idx.narrow(0, 0, 99);
  CHECK_THROWS_AS(bad.dequantize(), InputError);
}

TEST_CASE("gptq dead columns are zeroed and do not disturb the others", "[gptq]") {
  const at::Tensor W = randn({16, 64}, 41).mul_(0.05);
  at::Tensor X = calib_inputs(256, 64, 42);
  X.select(1, 9).zero_();
  const at::Tensor H = hessian_of(X);
  for (bool sym : {true, false}) {
    GptqOptions o = opts(4, sym, 0);
    o.damp = 0;  // so that the dead column's 1 on the diagonal does not change the damping
    const GptqResult r = gptq_quantize(W, H, o);
    CHECK(r.dead_columns == 1);
    CHECK(r.dequantize().select(1, 9).eq(0).all().item<bool>());
    // the same layer without column 9 (the per-channel grid ignores a zero column: ranges hold 0)
    const at::Tensor keep = at::cat({at::arange(9, at::kLong), at::arange(10, 64, at::kLong)});
    const at::Tensor W8 = W.index_select(1, keep), H8 = H.index_select(0, keep).index_select(1, keep);
    const GptqResult r8 = gptq_quantize(W8, H8, o);
    CHECK(mismatch(r.quant.codes.index_select(1, keep), r8.quant.codes) <= kMaxCodeMismatch);
  }
}

TEST_CASE("gptq damping retries, then InputError for an indefinite Hessian", "[gptq]") {
  // H = Q diag(λ) Qᵀ with 63 eigenvalues 1 and one negative: mean diag ≈ (63 + λ) / 64.
  const at::Tensor Q = std::get<0>(at::linalg_qr(randn({64, 64}, 51)));
  auto make_h = [&](double neg) {
    at::Tensor lam = at::ones({64});
    lam[0] = neg;
    return Q.matmul(at::diag(lam)).matmul(Q.t());
  };
  const at::Tensor W = randn({8, 64}, 52);
  // λ = -0.05: 0.01 x mean fails, 0.1 x mean (≈0.098) succeeds after one retry
  const GptqResult r = gptq_quantize(W, make_h(-0.05), opts(4, true, 0));
  CHECK(r.damp_retries == 1);
  CHECK(r.damp_rel == Approx(0.1));
  // λ = -20: even 10 x mean (≈6.7) leaves it indefinite
  CHECK_THROWS_WITH(gptq_quantize(W, make_h(-20), opts(4, true, 0), "layers.1.w1"),
                    Catch::Contains("layers.1.w1") && Catch::Contains("not positive definite") &&
                        Catch::Contains("after 3 retries"));
  GptqOptions none = opts(4, true, 0);
  none.max_damp_retries = 0;
  CHECK_THROWS_WITH(gptq_quantize(W, make_h(-0.05), none), Catch::Contains("after 0 retries"));
}

TEST_CASE("gptq input errors name the layer", "[gptq]") {
  const at::Tensor W = randn({8, 64}, 61);
  const at::Tensor H = hessian_of(calib_inputs(128, 64, 62));
  at::Tensor Wn = W.clone();
  Wn[2][3] = NAN;
  CHECK_THAT(error_of(Wn, H, opts(4, true, 32)), Catch::Contains("layers.2.wo") && Catch::Contains("NaN"));
  at::Tensor Hn = H.clone();
  Hn[1][1] = INFINITY;
  CHECK_THAT(error_of(W, Hn, opts(4, true, 32)), Catch::Contains("Hessian contains NaN or Inf"));
  CHECK_THAT(error_of(W, H.narrow(0, 0, 32), opts(4, true, 32)), Catch::Contains("does not match in_features 64"));
  CHECK_THAT(error_of(W, H, opts(4, true, -1)), Catch::Contains("per tensor"));
  CHECK_THAT(error_of(W, H, opts(9, true, 32)), Catch::Contains("bits 9"));
  CHECK_THAT(error_of(W, H, opts(4, true, 32, false, false, 0)), Catch::Contains("block_size 0"));
}

TEST_CASE("export GPTQ results for the Python reference comparison", "[.gptq-export]") {
  const char* dir = std::getenv("MC_GPTQ_EXPORT");
  if (!dir) {
    WARN("skipped: set MC_GPTQ_EXPORT to a directory holding input.safetensors");
    return;
  }
  // input.safetensors: W [out, in], X [n, in] (F32); metadata bits, symmetric, group_size,
  // act_order, static_groups (as "0"/"1" or numbers). Writes output.safetensors.
  auto reader = open_checkpoint(std::string(dir) + "/input.safetensors");
  const auto& meta = reader->metadata();
  auto num = [&](const char* k) { return std::stoll(meta.at(k)); };
  const at::Tensor W = to_torch(reader->load("W")).clone();
  HessianAccumulator acc(W.size(1), false, "export");
  const at::Tensor X = to_torch(reader->load("X")).clone();
  for (int64_t b = 0; b < X.size(0); b += 256) acc.add(X.narrow(0, b, std::min<int64_t>(256, X.size(0) - b)));
  GptqOptions o = opts(int(num("bits")), num("symmetric") != 0, num("group_size"), num("act_order") != 0,
                       num("static_groups") != 0);
  const GptqResult r = gptq_quantize(W, acc.hessian(), o, "export");
  const QuantResult rtn = rtn_quantize(W, o.spec);
  write_safetensors(std::string(dir) + "/output.safetensors",
                    {from_torch("H", acc.hessian()), from_torch("dequant", r.dequantize()),
                     from_torch("codes", r.quant.codes), from_torch("scales", r.quant.scales),
                     from_torch("zeros", r.quant.zeros), from_torch("g_idx", r.g_idx),
                     from_torch("rtn", rtn.dequantize())},
                    {{"loss", std::to_string(r.loss)}, {"damp_retries", std::to_string(r.damp_retries)}});
}

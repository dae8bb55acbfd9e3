// AutoRound (quant/autoround.h): the grid at its start is RTN bit for bit; the ATen codes equal the loop
// reference and dequantize to exactly the differentiable weight; the tuning equals an implementation
// written here from the paper (SignRound: signed gradient steps with a linear decay, the straight-through
// gradients derived by hand in double precision, best loss kept); and quantize_model's block tuning
// beats RTN on each block's output.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <limits>

#include "mcompress/error.h"
#include "mcompress/export/gguf.h"
#include "mcompress/ggml_blocks.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/journal.h"
#include "mcompress/model.h"
#include "mcompress/quant/packed.h"
#include "mcompress/torch_bridge.h"
#include "mcompress/ptq.h"
#include "mcompress/quant/autoround.h"
#include "quant_helpers.h"
#include "test_utils.h"
#include "tiny_llama.h"

using namespace mc;
using mctest::spec_of;

namespace {

// A state away from the start: v uniform in [-0.5, 0.5], the factors uniform in [0.5, 1].
AutoRoundState random_state(const at::Tensor& w, const QuantSpec& spec, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  const int64_t G = spec.n_groups(w.size(1));
  return {at::rand(w.sizes(), gen, at::kFloat).sub_(0.5), at::rand({w.size(0), G}, gen, at::kFloat).mul_(0.5).add_(0.5),
          at::rand({w.size(0), G}, gen, at::kFloat).mul_(0.5).add_(0.5)};
}

// SignRound for one linear layer, loss mean((X Ŵᵀ - X Wᵀ)²) over all rows, written from the paper: the
// forward values are the reference codes' (autoround_codes_ref), the gradients of the loss in v, alpha
// and beta are derived by hand through the straight-through roundings, in double.
struct OracleRun {
  at::Tensor v, alpha, beta;  // best state (double)
  double first = 0, best = 0;
  int best_iter = 0;
};

OracleRun sign_round_oracle(const at::Tensor& W, const at::Tensor& X, const QuantSpec& spec, int iters) {
  const int64_t out = W.size(0), in = W.size(1), G = spec.n_groups(in), gs = spec.group_cols(in), n = X.size(0);
  const int maxq = (1 << spec.bits) - 1;
  const double c = spec.symmetric ? 2.0 / maxq : 1.0 / maxq;
  AutoRoundState s{at::zeros({out, in}), at::ones({out, G}), at::ones({out, G})};
  const at::Tensor Xd = X.to(at::kDouble), Wd = W.to(at::kDouble);
  OracleRun best;
  best.best = std::numeric_limits<double>::infinity();
  for (int it = 0; it <= iters; ++it) {
    const QuantResult q = autoround_codes_ref(W, spec, s);
    const at::Tensor What = q.dequantize().to(at::kDouble);
    const at::Tensor E = Xd.mm((What - Wd).t());  // [n, out]
    const double L = E.pow(2).mean().item<double>();
    if (it == 0) best.first = L;
    if (L < best.best) best.best = L, best.best_iter = it, best.v = s.v.clone(), best.alpha = s.alpha.clone(), best.beta = s.beta.clone();
    if (it == iters) break;
    const at::Tensor gW = E.t().mm(Xd).mul_(2.0 / double(n * out));  // dL/dŴ [out, in]
    at::Tensor gv = at::zeros({out, in}, at::kDouble), ga = at::zeros({out, G}, at::kDouble),
               gb = at::zeros({out, G}, at::kDouble);
    auto w = W.accessor<float, 2>();
    auto codes = q.codes.accessor<uint8_t, 2>();
    auto sc = q.scales.accessor<float, 2>();
    auto zz = q.zeros.accessor<float, 2>();
    auto al = s.alpha.accessor<float, 2>();
    auto be = s.beta.accessor<float, 2>();
    auto vv = s.v.accessor<float, 2>();
    auto g = gW.accessor<double, 2>();
    for (int64_t i = 0; i < out; ++i)
      for (int64_t k = 0; k < G; ++k) {
        const int64_t c0 = k * gs, c1 = std::min(in, c0 + gs);
        double lo = 0, hi = 0;
        for (int64_t j = c0; j < c1; ++j) lo = std::min(lo, double(w[i][j])), hi = std::max(hi, double(w[i][j]));
        const double S = sc[i][k], Z = zz[i][k];
        // ds/dalpha, ds/dbeta (up16 passes the gradient straight through).
        double ds_da, ds_db;
        if (spec.symmetric) {
          const bool top = al[i][k] * hi >= be[i][k] * -lo;
          ds_da = top ? hi * c : 0, ds_db = top ? 0 : -lo * c;
        } else {
          ds_da = hi * c, ds_db = -lo * c;
        }
        // The zero point: zc = -beta lo / s, z = round(zc) (0 <= zc <= maxq since lo <= 0 <= hi).
        double dz_ds = 0, dz_db = 0;
        if (!spec.symmetric) {
          dz_ds = double(be[i][k]) * lo / (S * S);
          dz_db = -lo / S;
        }
        double dL_ds = 0, dL_db_direct = 0;
        for (int64_t j = c0; j < c1; ++j) {
          // m: the code before its clamp lies in 0..maxq (recomputed as the reference rounds it).
          const float y = w[i][j] * (1.0f / float(S)) + vv[i][j];
          const double r = std::nearbyint(double(y) + Z);
          const double m = (r >= 0 && r <= maxq) ? 1 : 0;
          const double qv = codes[i][j];
          gv[i][j] = g[i][j] * m * S;
          const double dq_ds = m * (-double(w[i][j]) / (S * S) + dz_ds);
          dL_ds += g[i][j] * ((dq_ds - dz_ds) * S + (qv - Z));
          dL_db_direct += g[i][j] * (m * dz_db - dz_db) * S;
        }
        ga[i][k] = dL_ds * ds_da;
        gb[i][k] = dL_ds * ds_db + dL_db_direct;
      }
    const double lr = (1.0 / iters) * (1.0 - double(it) / iters);
    // The state is float32: each step is one float subtraction of lr (rounded to float) times the sign.
    s.v = s.v.sub(gv.sign().to(at::kFloat), lr).clamp(-0.5, 0.5);
    s.alpha = s.alpha.sub(ga.sign().to(at::kFloat), lr).clamp(0.5, 1.0);
    s.beta = s.beta.sub(gb.sign().to(at::kFloat), lr).clamp(0.5, 1.0);
  }
  return best;
}

}  // namespace

TEST_CASE("autoround grid: the start is RTN bit for bit; ATen codes equal the loop reference", "[autoround]") {
  const at::Tensor w = mctest::weights(12, 80, 3);  // 80 columns: g32 ends with a group of 16
  for (int bits : {2, 3, 4, 8})
    for (bool sym : {true, false})
      for (int64_t gs : {32, 0}) {
        const QuantSpec spec = spec_of(bits, sym, gs);
        CAPTURE(bits, sym, gs);
        const AutoRoundState s0 = autoround_init(w, spec);
        const QuantResult q0 = autoround_codes(w, spec, s0), rtn = rtn_quantize(w, spec);
        CHECK(q0.codes.equal(rtn.codes));
        CHECK(q0.scales.equal(rtn.scales));
        CHECK(q0.zeros.equal(rtn.zeros));
        const AutoRoundState s = random_state(w, spec, 100 + bits);
        const QuantResult q = autoround_codes(w, spec, s), ref = autoround_codes_ref(w, spec, s);
        CHECK(q.codes.equal(ref.codes));
        CHECK(q.scales.equal(ref.scales));
        CHECK(q.zeros.equal(ref.zeros));
        // The file's values are the values the tuning evaluated.
        CHECK(q.dequantize().equal(autoround_weight(w, spec, s)));
        // The offsets moved codes and the factors shrank scales.
        CHECK_FALSE(q.codes.equal(rtn.codes));
        CHECK(q.scales.le(rtn.scales).all().item<bool>());
      }
}

TEST_CASE("autoround_tune: equals SignRound written from the paper with hand-derived gradients", "[autoround]") {
  auto gen = at::detail::createCPUGenerator(21);
  const at::Tensor X = at::randn({64, 48}, gen, at::kFloat);
  X.select(1, 5).mul_(8);  // an outlier input channel, as in LLMs
  const at::Tensor W = mctest::weights(6, 48, 22);
  for (bool sym : {false, true}) {
    CAPTURE(sym);
    const QuantSpec spec = spec_of(3, sym, 16);
    const int iters = 40;
    AutoRoundOptions o;
    o.iters = iters;
    const AutoRoundTuned t = autoround_tune({W}, {spec}, [&](const std::vector<at::Tensor>& wq, int) {
      return X.mm((wq[0] - W).t()).pow(2).mean();
    }, o);
    const OracleRun ref = sign_round_oracle(W, X, spec, iters);
    CHECK(t.first_loss == Approx(ref.first).epsilon(1e-5));
    CHECK(t.best_loss == Approx(ref.best).epsilon(1e-5));
    CHECK(t.best_iter == ref.best_iter);
    CHECK(t.state[0].v.equal(ref.v));
    CHECK(t.state[0].alpha.equal(ref.alpha));
    CHECK(t.state[0].beta.equal(ref.beta));
    CHECK(t.quant[0].codes.equal(autoround_codes_ref(W, spec, t.state[0]).codes));
    // It learned: well below RTN on the objective.
    CHECK(t.best_loss < 0.9 * t.first_loss);
  }
}

TEST_CASE("autoround in quantize_model: each block's output beats RTN's, the model holds the codes",
          "[autoround][ptq]") {
  mctest::TinyLlamaShape s;
  s.kv_heads = 2, s.dim = 32, s.hidden = 64, s.vocab = 40;
  const at::Tensor calib = mctest::random_tokens(16, 24, 40, 31);
  PtqOptions o;
  o.spec = spec_of(2, false, 16);
  o.autoround_iters = 60;
  o.autoround_batch = 4;
  o.method = "autoround";
  auto m = mctest::tiny_llama(32, s);
  auto ref = mctest::tiny_llama(32, s);
  const PtqResult r = quantize_model(*m, calib, o);
  REQUIRE(r.quantized.size() == 14);
  for (const auto& [key, q] : r.quantized) CHECK(m->param(key).equal(q.dequantize()));
  for (const auto& row : r.layers) CHECK(row.note.find("block loss") != std::string::npos);
  o.method = "rtn";
  auto rtn = mctest::tiny_llama(32, s);
  quantize_model(*rtn, calib, o);
  // Block 0 sees the same embeddings in all three models: its output error is what each tuned.
  at::NoGradGuard no_grad;
  const at::Tensor h = ref->embed(calib);
  const at::Tensor y = ref->run_block(0, h);
  const double e_ar = (m->run_block(0, h) - y).pow(2).mean().item<double>();
  const double e_rtn = (rtn->run_block(0, h) - y).pow(2).mean().item<double>();
  CHECK(e_ar < 0.7 * e_rtn);
  // And the whole model's logits are closer.
  const at::Tensor z = ref->forward(calib);
  CHECK((m->forward(calib) - z).pow(2).mean().item<double>() < (rtn->forward(calib) - z).pow(2).mean().item<double>());
  // The same run again gives the same codes (seeded mini-batches).
  auto m2 = mctest::tiny_llama(32, s);
  o.method = "autoround";
  const PtqResult r2 = quantize_model(*m2, calib, o);
  for (const auto& [key, q] : r.quantized) CHECK(q.codes.equal(r2.quantized.at(key).codes));
}

TEST_CASE("autoround: bad options get one clear error", "[autoround][errors]") {
  const at::Tensor w = mctest::weights(4, 32, 1);
  CHECK_THROWS_WITH(autoround_init(w, spec_of(4, true, -1), "l"), Catch::Contains("per-tensor grids are not supported"));
  AutoRoundOptions o;
  o.iters = 0;
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("iterations 0 outside 1..100000"));
  o.iters = 10, o.lr = -1;
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("learning rate -1 must be >= 0"));
  auto m = mctest::tiny_llama(1);
  PtqOptions p;
  p.method = "autoround";
  CHECK_THROWS_WITH(quantize_model(*m, at::Tensor(), p), Catch::Contains("--method autoround needs calibration data"));
  p.keep_sparsity = true;
  CHECK_THROWS_WITH(quantize_model(*m, mctest::random_tokens(2, 8, 20, 1), p),
                    Catch::Contains("--keep-sparsity does not apply to autoround"));
}

TEST_CASE("autoround K-quant lattice: ATen equals the loops; code*scale - min on 5-bit super-scales; GGUF blocks "
          "decode to the same weights", "[autoround][kquant]") {
  const at::Tensor w = mctest::weights(6, 512, 41);  // two super-blocks per row
  for (int bits : {4, 5}) {
    CAPTURE(bits);
    const QuantSpec spec = spec_of(bits, false, 32);
    for (int state = 0; state < 2; ++state) {
      CAPTURE(state);
      const AutoRoundState s = state == 0 ? autoround_init(w, spec) : random_state(w, spec, 300 + bits);
      const QuantResult q = autoround_codes(w, spec, s, "w", AutoRoundGrid::kquant);
      const QuantResult ref = autoround_codes_ref(w, spec, s, "w", AutoRoundGrid::kquant);
      REQUIRE(q.mins.defined());
      CHECK(q.codes.equal(ref.codes));
      CHECK(q.scales.equal(ref.scales));
      CHECK(q.mins.equal(ref.mins));
      CHECK(q.dequantize().equal(autoround_weight(w, spec, s, AutoRoundGrid::kquant)));
      // value = code * scale - min, by hand on the group of column 300 of row 2.
      const float c = q.codes[2][300].item<float>(), sc = q.scales[2][300 / 32].item<float>(),
                  mn = q.mins[2][300 / 32].item<float>();
      CHECK(q.dequantize()[2][300].item<float>() == c * sc - mn);
      // Scales d * sc: per super-block, every scale is sc (1..63) times one d of 5 significant bits; the
      // largest sc is 59..63 (d rounds max / 63 up by less than 1/16). Scales and mins are float16 values.
      CHECK(q.scales.to(at::kHalf).to(at::kFloat).equal(q.scales));
      CHECK(q.mins.to(at::kHalf).to(at::kFloat).equal(q.mins));
      for (int64_t r = 0; r < 6; ++r)
        for (int64_t b = 0; b < 2; ++b) {
          const at::Tensor sb = q.scales[r].narrow(0, 8 * b, 8);
          const float mx = sb.max().item<float>();
          bool found = false;
          for (int k = 63; k >= 59 && !found; --k) {
            const float d = mx / float(k);
            int e = 0;
            const float f = std::frexp(d, &e) * 32.0f;
            const at::Tensor n = sb / d;
            found = f == std::floor(f) && d * float(k) == mx && n.eq(n.round()).all().item<bool>() &&
                    n.ge(1).all().item<bool>() && n.le(63).all().item<bool>();
          }
          INFO("row " << r << " super-block " << b);
          CHECK(found);
        }
      // The GGUF encoder writes the lattice itself: ggml's layout decodes to the same float32 weights.
      const DType t = bits == 4 ? DType::Q4_K : DType::Q5_K;
      const std::vector<uint8_t> blocks = encode_from_quant(q, t);
      std::vector<float> back(6 * 512);
      dequantize_blocks(t, blocks.data(), 6 * 512, back.data());
      CHECK(at::from_blob(back.data(), {6, 512}, at::kFloat).equal(q.dequantize()));
      // Not what fitting the values afresh gives (the lattice path is what keeps them).
      const at::Tensor v = q.dequantize().contiguous();
      const std::vector<uint8_t> refit = encode_matrix(t, v.data_ptr<float>(), 6, 512);
      if (state == 1) CHECK(refit != blocks);
    }
  }
  // The packed file keeps the mins: it reads back to the same weights, with ".mins" and no ".zeros".
  mctest::TempDir dir;
  const std::string path = dir.file("k.safetensors");
  const QuantSpec spec = spec_of(4, false, 32);
  const QuantResult q = autoround_codes(w, spec, random_state(w, spec, 9), "w", AutoRoundGrid::kquant);
  write_packed_checkpoint(path, {}, {{"l.weight", q}}, {});
  auto reader = open_safetensors(path);
  CHECK(reader->contains("l.weight.mins"));
  CHECK_FALSE(reader->contains("l.weight.zeros"));
  const std::vector<HostTensor> got = read_packed_checkpoint(*reader);
  REQUIRE(got.size() == 1);
  CHECK(to_torch(got[0]).equal(q.dequantize()));
  // The journal keeps them too (a resumed run restores the same weights).
  std::map<std::string, at::Tensor> tensors;
  journal_put_quant(tensors, "l", q);
  CHECK(journal_get_quant(tensors, "l").dequantize().equal(q.dequantize()));
  // Shapes the lattice cannot hold are refused.
  CHECK_FALSE(fits_kquant_lattice(spec_of(4, true, 32), 512));
  CHECK_FALSE(fits_kquant_lattice(spec_of(4, false, 32), 320));
  CHECK_FALSE(fits_kquant_lattice(spec_of(3, false, 32), 512));
  CHECK_THROWS_WITH(autoround_codes(mctest::weights(2, 320, 1), spec, autoround_init(mctest::weights(2, 320, 1), spec),
                                    "x", AutoRoundGrid::kquant),
                    Catch::Contains("rows of a multiple of 256"));
}

TEST_CASE("autoround --autoround-kquant in quantize_model: block outputs beat llama.cpp's own Q4_K fit",
          "[autoround][kquant][ptq]") {
  mctest::TinyLlamaShape s;
  s.dim = 256, s.hidden = 256, s.heads = 4, s.kv_heads = 2, s.vocab = 40, s.layers = 1;
  const at::Tensor calib = mctest::random_tokens(8, 24, 40, 33);
  PtqOptions o;
  o.method = "autoround";
  o.spec = spec_of(4, false, 32);
  o.autoround_iters = 60, o.autoround_batch = 4, o.autoround_kquant = true;
  auto m = mctest::tiny_llama(34, s);
  auto ref = mctest::tiny_llama(34, s);
  auto ggml = mctest::tiny_llama(34, s);
  const PtqResult r = quantize_model(*m, calib, o);
  REQUIRE(r.quantized.size() == 7);
  for (const auto& [key, q] : r.quantized) {
    INFO(key);
    CHECK(q.mins.defined());
    CHECK(m->param(key).equal(q.dequantize()));
    // The same weights as Q4_K: llama.cpp's encoder (our port of make_qkx2_quants) fitted to the float weights.
    const at::Tensor w = ref->param(key).to(at::kFloat).contiguous();
    const std::vector<uint8_t> b = encode_matrix(DType::Q4_K, w.data_ptr<float>(), w.size(0), w.size(1));
    at::Tensor back = at::empty_like(w);
    dequantize_blocks(DType::Q4_K, b.data(), w.numel(), back.data_ptr<float>());
    ggml->set_param(key, back);
  }
  for (const auto& row : r.layers) CHECK(row.note.find("Q4_K lattice") != std::string::npos);
  at::NoGradGuard no_grad;
  const at::Tensor h = ref->embed(calib);
  const at::Tensor y = ref->run_block(0, h);
  const double e_ar = (m->run_block(0, h) - y).pow(2).mean().item<double>();
  const double e_ggml = (ggml->run_block(0, h) - y).pow(2).mean().item<double>();
  INFO("block 0 output MSE: autoround on the Q4_K lattice " << e_ar << ", llama.cpp's Q4_K fit " << e_ggml);
  CHECK(e_ar < 0.8 * e_ggml);
}

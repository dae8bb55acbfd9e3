// Pruning (prune/prune.h): masks against their definitions computed here element by element, N:M
// patterns checked group by group on every output, sparsity distributions, joint quantization keeping
// zeros zero, and the bad-input errors.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <numeric>

#include "mcompress/error.h"
#include "mcompress/model.h"
#include "mcompress/prune/magnitude.h"
#include "mcompress/prune/owl.h"
#include "mcompress/prune/prune.h"
#include "mcompress/prune/wanda.h"
#include "calib_problem.h"
#include "test_utils.h"
#include "tiny_llama.h"

using namespace mc;

namespace {

using mctest::randn;

at::Tensor tokens(int64_t n, int64_t len, int64_t vocab, uint64_t seed) {
  return mctest::random_tokens(n, len, vocab, seed);
}

// Every group of m consecutive columns of every row has at least n zeros.
bool satisfies_nm(const at::Tensor& w, int n, int m) {
  const at::Tensor z = w.eq(0).reshape({w.size(0), w.size(1) / m, m}).sum(-1);
  return z.ge(n).all().item<bool>();
}

}  // namespace

TEST_CASE("row_mask drops each row's smallest scores, as a sort by hand does", "[prune]") {
  const at::Tensor s = randn({7, 20}, 1).abs();
  const at::Tensor mask = row_mask(s, 0.35);  // floor(0.35 * 20) = 7 per row
  auto acc = s.accessor<float, 2>();
  for (int64_t r = 0; r < 7; ++r) {
    std::vector<int64_t> idx(20);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return acc[r][a] < acc[r][b]; });
    for (int64_t k = 0; k < 20; ++k) CHECK(mask[r][idx[k]].item<bool>() == (k >= 7));
  }
  const at::Tensor lm = layer_mask(s, 0.5);
  CHECK(lm.logical_not().sum().item<int64_t>() == 70);
  CHECK(s.masked_select(lm).min().item<float>() >= s.masked_select(lm.logical_not()).max().item<float>());
}

TEST_CASE("nm_mask: n smallest of every m, and a width m does not divide names the layer", "[prune]") {
  const at::Tensor s = randn({5, 24}, 2).abs();
  for (auto [n, m] : {std::pair{2, 4}, std::pair{4, 8}, std::pair{1, 4}}) {
    const at::Tensor mask = nm_mask(s, n, m);
    CHECK(satisfies_nm(s * mask, n, m));
    CHECK(mask.logical_not().sum().item<int64_t>() == 5 * 24 / m * n);
    // The dropped ones are the smallest of their group.
    const at::Tensor g = s.reshape({5, 24 / m, m}), gm = mask.reshape({5, 24 / m, m});
    const at::Tensor kept_min = at::where(gm, g, at::full_like(g, 1e9)).amin(-1);
    const at::Tensor drop_max = at::where(gm, at::full_like(g, -1.0), g).amax(-1);
    CHECK(kept_min.ge(drop_max).all().item<bool>());
  }
  CHECK_THROWS_WITH(nm_mask(randn({2, 30}, 3), 2, 4, "layers.0.w2"),
                    Catch::Contains("layer layers.0.w2: 2:4 needs the input width (30) to be a multiple of 4"));
  CHECK_THROWS_AS(nm_mask(s, 4, 4), InputError);
}

TEST_CASE("prune_model: Wanda's mask is |W| * ||X_j||_2 per row; every method and pattern holds", "[prune]") {
  mctest::TinyLlamaShape sh;
  sh.dim = 32, sh.hidden = 64, sh.kv_heads = 2;
  const at::Tensor calib = tokens(8, 32, 20, 4);
  // Wanda on block 0's q projection against the definition, with ||X_j|| from the layer's inputs.
  {
    auto m = mctest::tiny_llama(5, sh);
    at::Tensor X;
    const int hook = m->add_hook([&](const LayerInfo& l, const at::Tensor& x, const at::Tensor&) {
      if (l.name == "layers.0.attention.wq") X = x.reshape({-1, x.size(-1)}).clone();
    });
    m->forward(calib);
    m->remove_hook(hook);
    const at::Tensor W = m->param("layers.0.attention.wq.weight").clone();
    PruneOptions o;
    o.method = "wanda";
    o.targets = {"layers.0.attention.wq"};
    prune_model(*m, calib, o);
    const at::Tensor score = W.abs() * X.to(at::kDouble).pow(2).sum(0).sqrt().to(at::kFloat).unsqueeze(0);
    const at::Tensor want = W * row_mask(score, 0.5);
    CHECK(m->param("layers.0.attention.wq.weight").equal(want));
  }
  for (const char* method : {"magnitude", "wanda", "sparsegpt"})
    for (auto [n, mm] : {std::pair{0, 0}, std::pair{2, 4}, std::pair{4, 8}}) {
      CAPTURE(method, n, mm);
      auto m = mctest::tiny_llama(6, sh);
      PruneOptions o;
      o.method = method, o.prune_n = n, o.prune_m = mm;
      PruneResult r = prune_model(*m, calib, o);
      REQUIRE(r.pruned.size() == 14);
      for (const auto& [key, p] : r.pruned) {
        CHECK(m->param(key).equal(p.weight));
        if (n) CHECK(satisfies_nm(p.weight, n, mm));
      }
      CHECK(r.sparsity == Approx(0.5).margin(0.01));
      for (const auto& l : r.layers) CHECK(*l.rel_output_error >= 0);
    }
}

TEST_CASE("prune_model: SparseGPT and Wanda beat magnitude on the layer error; joint quantization keeps zeros",
          "[prune]") {
  mctest::TinyLlamaShape sh;
  sh.dim = 32, sh.hidden = 64, sh.kv_heads = 2;
  const at::Tensor calib = tokens(8, 32, 20, 7);
  std::map<std::string, double> err;
  for (const char* method : {"magnitude", "wanda", "sparsegpt"}) {
    auto m = mctest::tiny_llama(8, sh);
    PruneOptions o;
    o.method = method;
    o.targets = {"layers.0.*"};  // the same inputs for every method
    PruneResult r = prune_model(*m, calib, o);
    for (const auto& l : r.layers) err[method] += *l.rel_output_error;
  }
  CHECK(err["sparsegpt"] < err["magnitude"]);
  CHECK(err["wanda"] < err["magnitude"]);
  auto m = mctest::tiny_llama(9, sh);
  PruneOptions o;
  o.method = "sparsegpt";
  QuantSpec q;
  q.bits = 4, q.group_size = 16;
  o.quant = q;
  PruneResult r = prune_model(*m, calib, o);
  for (const auto& [key, p] : r.pruned) {
    REQUIRE(p.quant);
    CHECK(p.quant->dequantize().equal(p.weight));
    CHECK(p.weight.eq(0).to(at::kDouble).mean().item<double>() >= 0.5);
  }
}

namespace {

// The 14 layers the default selection prunes in a default-shaped tiny llama (dim 16, hidden 32, one KV
// head of 8), in execution order, with their weight counts and input widths.
struct PrunedLayerShape {
  const char* role;
  int64_t numel, in;
};
constexpr PrunedLayerShape kBlockLayers[] = {{"attention.wq", 256, 16}, {"attention.wk", 128, 16},
                                             {"attention.wv", 128, 16}, {"attention.wo", 256, 16},
                                             {"feed_forward.w1", 512, 16}, {"feed_forward.w3", 512, 16},
                                             {"feed_forward.w2", 512, 32}};

int64_t zeros_of(const PruneResult& r, const std::string& layer) {
  return r.pruned.at(layer + ".weight").weight.eq(0).sum().item<int64_t>();
}

// Replaces a weight by values with the magnitudes `mags` (flattened, any order) in a seeded random
// arrangement with random signs.
void set_magnitudes(Model& m, const std::string& layer, const at::Tensor& mags, uint64_t seed) {
  const at::Tensor w = m.param(layer + ".weight");
  auto gen = at::detail::createCPUGenerator(seed);
  const at::Tensor perm = at::randperm(w.numel(), gen, at::kLong);
  const at::Tensor sign = at::randint(2, {w.numel()}, gen, at::kFloat).mul_(2).sub_(1);
  m.set_param(layer + ".weight", (mags.index_select(0, perm) * sign).reshape(w.sizes()));
}

}  // namespace

TEST_CASE("prune_model: global magnitude gives the per-layer sparsities one threshold over all layers gives",
          "[prune]") {
  // Layer j of the 14 (execution order) holds the magnitudes j + (i + 1) / (numel + 1): all distinct,
  // every layer's band above the previous one's. One threshold at 60% of the 4608 weights
  // (k = floor(0.6 * 4608) = 2764 smallest) removes, in band order, all of block 0 (2304 weights: every
  // layer 100%), then block 1's wq (256) and wk (128), then 2764 - 2304 - 384 = 76 of wv's 128, and
  // nothing of wo, w1, w3, w2. A uniform 60% would zero floor(0.6 * numel) of every layer instead.
  auto m = mctest::tiny_llama(11);
  int j = 0;
  for (int b = 0; b < 2; ++b)
    for (const auto& l : kBlockLayers) {
      const std::string name = "layers." + std::to_string(b) + "." + l.role;
      at::Tensor mags = at::arange(1, l.numel + 1, at::kFloat).div_(float(l.numel + 1)).add_(float(j));
      set_magnitudes(*m, name, mags, 100 + j++);
    }
  PruneOptions o;
  o.method = "magnitude", o.distribution = "global", o.sparsity = 0.6;
  PruneResult r = prune_model(*m, at::Tensor(), o);
  const std::map<std::string, int64_t> want = {
      {"layers.0.attention.wq", 256},    {"layers.0.attention.wk", 128},    {"layers.0.attention.wv", 128},
      {"layers.0.attention.wo", 256},    {"layers.0.feed_forward.w1", 512}, {"layers.0.feed_forward.w3", 512},
      {"layers.0.feed_forward.w2", 512}, {"layers.1.attention.wq", 256},    {"layers.1.attention.wk", 128},
      {"layers.1.attention.wv", 76},     {"layers.1.attention.wo", 0},      {"layers.1.feed_forward.w1", 0},
      {"layers.1.feed_forward.w3", 0},   {"layers.1.feed_forward.w2", 0}};
  REQUIRE(r.pruned.size() == want.size());
  for (const auto& [layer, zeros] : want) {
    CAPTURE(layer);
    CHECK(zeros_of(r, layer) == zeros);
  }
  CHECK(r.sparsity == Approx(2764.0 / 4608.0).epsilon(1e-12));
}

TEST_CASE("prune_model: OWL keeps more weights in the block with more outliers, by the spread by hand",
          "[prune]") {
  // Block 0: every weight magnitude 1 except every 10th, 100: a layer's mean Wanda score is about
  // 10.9x a plain one (0.9 + 0.1 * 100), so the scores above 5x the mean are (about) those 10%.
  // Block 1: every magnitude 1, a score is its input channel's norm, above 5x the layer mean only for
  // a channel 5x louder than the average one: (almost) no outliers. Only the order of the two blocks'
  // outlier shares matters: with two blocks OWL's normalised ratios are 2*lambda for the one with more
  // and 0 for the other, mean lambda: sparsities 0.5 - lambda = 0.4 (block 0) and 0.5 + lambda = 0.6.
  // Wanda zeroes floor(s * in) of every row: 6 of 16 and 12 of 32 inputs in block 0, 9 of 16 and 19
  // of 32 in block 1 (uniform 0.5: 8 and 16 everywhere).
  auto m = mctest::tiny_llama(12);
  int j = 0;
  for (int b = 0; b < 2; ++b)
    for (const auto& l : kBlockLayers) {
      at::Tensor mags = at::ones({l.numel});
      if (b == 0) mags.slice(0, 0, l.numel, 10).fill_(100.0f);
      set_magnitudes(*m, "layers." + std::to_string(b) + "." + l.role, mags, 200 + j++);
    }
  PruneOptions o;
  o.method = "wanda", o.distribution = "owl", o.owl_lambda = 0.1, o.owl_threshold = 5.0;
  PruneResult r = prune_model(*m, tokens(8, 32, 20, 10), o);
  int64_t total_zeros = 0;
  for (int b = 0; b < 2; ++b)
    for (const auto& l : kBlockLayers) {
      const std::string name = "layers." + std::to_string(b) + "." + l.role;
      const int64_t per_row = b == 0 ? (l.in == 16 ? 6 : 12) : (l.in == 16 ? 9 : 19);
      CAPTURE(name);
      CHECK(zeros_of(r, name) == l.numel / l.in * per_row);
      total_zeros += l.numel / l.in * per_row;
    }
  CHECK(total_zeros == 864 + 1312);
  CHECK(r.sparsity == Approx(double(total_zeros) / 4608.0).epsilon(1e-12));
  CHECK(r.settings.at("owl").find("block sparsities 0.400, 0.600") != std::string::npos);
}

TEST_CASE("prune_model: bad options are one clear error", "[prune][errors]") {
  auto m = mctest::tiny_llama(13);
  PruneOptions o;
  o.method = "magnitude";
  o.sparsity = 1.0;
  CHECK_THROWS_WITH(prune_model(*m, at::Tensor(), o), Catch::Contains("--sparsity 1 outside [0, 1)"));
  o.sparsity = -0.1;
  CHECK_THROWS_AS(prune_model(*m, at::Tensor(), o), InputError);
  o.sparsity = 0.5;
  o.prune_n = 2, o.prune_m = 32;  // hidden 32, dim 16: 16 is not a multiple of 32
  CHECK_THROWS_WITH(prune_model(*m, at::Tensor(), o), Catch::Contains("to be a multiple of 32"));
  o.prune_n = 0, o.prune_m = 0;
  o.method = "wanda";
  CHECK_THROWS_WITH(prune_model(*m, at::Tensor(), o), Catch::Contains("needs calibration data"));
  o.method = "sparsegpt", o.distribution = "global";
  CHECK_THROWS_WITH(prune_model(*m, tokens(2, 8, 20, 1), o), Catch::Contains("magnitude only"));
}

TEST_CASE("magnitude, Wanda and OWL pieces against values computed by hand", "[prune]") {
  // Values compared with == (a pruned negative weight is -0).
  auto same = [](const at::Tensor& a, const std::vector<float>& b) {
    return a.eq(at::tensor(b).reshape(a.sizes())).all().item<bool>();
  };
  const at::Tensor W = at::tensor({1.0f, -4.0f, 2.0f, -3.0f, 0.5f, 6.0f, -0.25f, 5.0f}).reshape({2, 4});
  // Wanda: |W| * sqrt(Σx²): column scales 1, 0.1, 2, 1.
  const at::Tensor ssq = at::tensor({1.0, 0.01, 4.0, 1.0}, at::kDouble);
  // scores: row 0: 1, 0.4, 4, 3; row 1: 0.5, 0.6, 0.5, 5 -> half per row dropped (ties: lower column).
  CHECK(same(wanda_prune(W, ssq, 0.5, 0, 0), {0, 0, 2, -3, 0, 6, 0, 5}));
  // 1:2 per row: the smaller score of each pair.
  CHECK(same(wanda_prune(W, ssq, 0, 1, 2), {1, 0, 2, 0, 0, 6, 0, 5}));
  // Magnitude over the layer: the 3 smallest |w| of 8 (0.25, 0.5, 1).
  CHECK(same(magnitude_prune(W, 0.375, 0, 0), {0, -4, 2, -3, 0, 6, 0, 5}));
  // Global: |w| of both weights together; 4 of 10 at or below the threshold 1.
  const std::vector<double> g = global_magnitude_sparsities({W, at::tensor({10.0f, 0.1f}).reshape({1, 2})}, 0.4);
  CHECK(g == std::vector<double>{3.0 / 8, 1.0 / 2});
  // OWL: outliers above 2x the mean score (mean of row scores 1, .4, 4, 3, .5, .6, .5, 5 = 1.875): 4, 5.
  const OutlierCount c = owl_outliers(W, ssq, 2.0);
  CHECK(c.above == 2);
  CHECK(c.count == 8);
  // Ratios 0.1, 0.3, 0.2 -> scaled to 0, 2λ, λ (mean λ) -> sparsity + λ, - λ, 0.
  const std::vector<double> sp = owl_sparsities({0.1, 0.3, 0.2}, 0.5, 0.08);
  REQUIRE(sp.size() == 3);
  CHECK(sp[0] == Approx(0.58));
  CHECK(sp[1] == Approx(0.42));
  CHECK(sp[2] == Approx(0.5));
  CHECK(owl_sparsities({0.2, 0.2}, 0.5, 0.08) == std::vector<double>{0.5, 0.5});
  CHECK(owl_sparsities({0.0, 1.0}, 0.95, 0.1)[0] == 0.99);  // clamped
}

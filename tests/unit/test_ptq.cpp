// Whole-model quantization (ptq.h): layer selection, the importance-weighted grid against a brute-force
// search, scale folding (AWQ/SmoothQuant) leaving the float function unchanged, W8A8 (int8 kernel vs
// float simulation), the true-sequential groups, the mixed-precision allocator against exhaustive
// search, and the bad-input errors.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <functional>

#include "mcompress/calib.h"
#include "mcompress/error.h"
#include "mcompress/model.h"
#include "mcompress/models/classifier.h"
#include "mcompress/ptq.h"
#include "mcompress/quant/awq.h"
#include "mcompress/quant/hessian.h"
#include "mcompress/quant/imatrix.h"
#include "mcompress/quant/packed.h"
#include "mcompress/quant/smoothquant.h"
#include "mcompress/checkpoint.h"
#include "mcompress/torch_bridge.h"
#include "calib_problem.h"
#include "test_utils.h"
#include "tiny_llama.h"

using namespace mc;

namespace {

using mctest::randn;

at::Tensor tokens(int64_t n, int64_t len, int64_t vocab, uint64_t seed) {
  return mctest::random_tokens(n, len, vocab, seed);
}

std::vector<std::string> names_of(const std::vector<const LayerInfo*>& ls) {
  std::vector<std::string> v;
  for (auto* l : ls) v.push_back(l->name);
  return v;
}

double rel_diff(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).norm() / b.norm()).item<double>();
}

double total_layer_error(const PtqResult& r) {
  double s = 0;
  for (const auto& l : r.layers) s += l.rel_output_error.value_or(0);
  return s;
}

}  // namespace

TEST_CASE("select_layers: default, globs, regex, ignore, and patterns that match nothing", "[ptq]") {
  auto m = mctest::tiny_llama(1);
  PtqOptions o;
  auto all = names_of(select_layers(*m, o));
  CHECK(all.size() == 14);  // 7 linear layers x 2 blocks; not the embedding, not the tied classifier
  CHECK(all.front() == "layers.0.attention.wq");
  o.targets = {"layers.*.feed_forward.*"};
  CHECK(select_layers(*m, o).size() == 6);
  o.targets = {"re:layers\\.1\\.attention\\.w[qk]"};
  CHECK(names_of(select_layers(*m, o)) == std::vector<std::string>{"layers.1.attention.wq", "layers.1.attention.wk"});
  o.targets = {};
  o.ignore = {"*.w2"};
  CHECK(select_layers(*m, o).size() == 12);
  o.ignore = {};
  o.targets = {"mlp.*"};
  CHECK_THROWS_WITH(select_layers(*m, o), Catch::Contains("pattern 'mlp.*' matches no quantizable layer"));
  o.targets = {"re:("};
  CHECK_THROWS_AS(select_layers(*m, o), InputError);
  o.targets = {};
  o.embeddings = true;
  CHECK(select_layers(*m, o).size() == 15);  // the tied classifier is the embedding: once
}

TEST_CASE("imatrix: never worse than RTN under the weighting, near a brute-force scale search", "[ptq][imatrix]") {
  const at::Tensor W = randn({64, 96}, 3);
  at::Tensor imp = randn({96}, 4).abs().pow(3);  // a few columns matter much more
  for (bool sym : {true, false})
    for (int64_t gs : {int64_t(32), int64_t(0), int64_t(40)}) {
      QuantSpec sp;
      sp.bits = 3, sp.symmetric = sym, sp.group_size = gs;
      CAPTURE(sym, gs);
      QuantResult r = rtn_quantize(W, sp), q = imatrix_quantize(W, sp, imp);
      at::Tensor er = weighted_group_error(W, r.dequantize(), imp, sp);
      at::Tensor eq = weighted_group_error(W, q.dequantize(), imp, sp);
      CHECK(eq.le(er * (1 + 1e-6) + 1e-9).all().item<bool>());
      CHECK(eq.sum().item<double>() < 0.9 * er.sum().item<double>());
      // What the packed writer accepts (fp16 scales, symmetric zeros 2^(b-1)), and it reads back equal.
      mctest::TempDir dir;
      write_packed_checkpoint(dir.file("q.safetensors"), {}, {{"w", q}}, {});
      auto back = read_packed_checkpoint(*open_checkpoint(dir.file("q.safetensors")));
      CHECK(to_torch(back.at(0)).equal(q.dequantize()));
    }
  // Brute force for symmetric groups: the best scale on a fine grid (codes = round(w/s)) per group.
  QuantSpec sp;
  sp.bits = 3, sp.group_size = 16;
  const at::Tensor w = randn({8, 16}, 5);
  const at::Tensor im = randn({16}, 6).abs().add(0.1);
  QuantResult q = imatrix_quantize(w, sp, im);
  at::Tensor eq = weighted_group_error(w, q.dequantize(), im, sp);
  for (int64_t r = 0; r < 8; ++r) {
    const at::Tensor x = w[r].to(at::kDouble), iw = im.to(at::kDouble);
    const double amax = x.abs().max().item<double>();
    double best = 1e300;
    for (int i = 1; i <= 4000; ++i) {
      const double s = amax / 4.0 * (0.3 + 1.2 * i / 4000.0);
      at::Tensor c = x.div(s).round().clamp(-4, 3);
      best = std::min(best, (iw * (x - c * s).pow(2)).sum().item<double>());
    }
    CHECK(eq[r][0].item<double>() <= best * 1.05);
  }
}

TEST_CASE("scale groups: folding any positive scales leaves the float model's function unchanged", "[ptq]") {
  for (int64_t kv : {int64_t(2), int64_t(1)}) {
    mctest::TinyLlamaShape s;
    s.kv_heads = kv;
    auto m = mctest::tiny_llama(7, s);
    const at::Tensor x = tokens(2, 12, 20, 8);
    const at::Tensor before = m->forward(x);
    int groups = 0;
    for (int k = 0; k < m->num_blocks(); ++k)
      for (const auto& g : m->scale_groups(k)) {
        m->apply_scale_group(g, randn({m->param(g.prev).size(0)}, 100 + groups).abs().add(0.2));
        ++groups;
      }
    CHECK(groups == 8);  // with grouped KV heads, v -> o repeats each value head's scales
    CHECK(rel_diff(m->forward(x), before) < 1e-5);
  }
}

TEST_CASE("quantize_model: every method runs, rows and codes are consistent, the model holds the codes",
          "[ptq]") {
  mctest::TinyLlamaShape s;
  s.kv_heads = 2, s.dim = 32, s.hidden = 64;
  const at::Tensor calib = tokens(8, 32, 20, 9);
  std::map<std::string, double> err;
  for (const char* method : {"rtn", "imatrix", "gptq", "awq"}) {
    auto m = mctest::tiny_llama(11, s);
    PtqOptions o;
    o.method = method;
    o.spec.bits = 3, o.spec.group_size = 16;
    PtqResult r = quantize_model(*m, calib, o);
    CAPTURE(method);
    REQUIRE(r.quantized.size() == 14);
    REQUIRE(r.layers.size() == 14);
    for (const auto& [key, q] : r.quantized) CHECK(m->param(key).equal(q.dequantize()));
    err[method] = total_layer_error(r);
  }
  // On the proxy each method optimises, the calibrated ones beat plain rounding.
  CHECK(err["imatrix"] < err["rtn"]);
  CHECK(err["gptq"] < err["imatrix"]);
  CHECK(err["awq"] < err["rtn"]);
}

TEST_CASE("awq_clip: each row and group gets the ratio with the least d H dᵀ; row chunks change nothing",
          "[ptq][awq]") {
  const int64_t out = 7, in = 40;  // 3 groups of 16 columns, the last of 8
  const at::Tensor W = randn({out, in}, 31);
  const at::Tensor X = randn({64, in}, 32);
  const at::Tensor H = X.t().mm(X).div_(64);
  for (const bool sym : {true, false}) {
    QuantSpec sp;
    sp.bits = 3, sp.group_size = 16, sp.symmetric = sym;
    CAPTURE(sym);
    const at::Tensor whole = awq_clip(W, H, sp);
    CHECK(awq_clip(W, H, sp, "", 2 * 48).equal(whole));  // chunks of 2 rows
    CHECK(awq_clip(W, H, sp, "", 1).equal(whole));       // one row at a time
    // Brute force in float64, group by group: every ratio's clipped group quantized on its own.
    const at::Tensor Hd = H.to(at::kDouble);
    for (int64_t i = 0; i < out; ++i)
      for (int64_t c0 = 0; c0 < in; c0 += 16) {
        const int64_t n = std::min<int64_t>(16, in - c0);
        const at::Tensor w = W[i].narrow(0, c0, n).unsqueeze(0);
        const at::Tensor Hgg = Hd.narrow(0, c0, n).narrow(1, c0, n);
        // The range in float32, as the weights are (a bound r x hi rounded to float).
        const at::Tensor hi = sym ? w.abs().max() : w.max().clamp_min(0);
        const at::Tensor lo = sym ? hi.neg() : w.min().clamp_max(0);
        double best = INFINITY, got = -1;
        QuantSpec g = sp;
        g.group_size = n;
        for (int k = 0; k < 10; ++k) {
          const double r = 1.0 - 0.05 * k;
          const at::Tensor wc = at::minimum(at::maximum(w, lo * r), hi * r);
          const at::Tensor d = (w - rtn_quantize(wc, g).dequantize()).to(at::kDouble);
          const double err = d.mm(Hgg).mul(d).sum().item<double>();
          best = std::min(best, err);
          if (wc.equal(whole[i].narrow(0, c0, n).unsqueeze(0)) && got < 0) got = err;
        }
        CAPTURE(i, c0);
        REQUIRE(got >= 0);  // the result is one of the ten clipped groups
        CHECK(got <= best * (1 + 1e-5) + 1e-12);
      }
  }
}

TEST_CASE("quantize_model with EoRA: an adapter per calibrated layer, the model holds Ŵ + B A, errors drop",
          "[ptq][eora]") {
  mctest::TinyLlamaShape s;
  s.kv_heads = 2, s.dim = 32, s.hidden = 64, s.vocab = 40;
  const at::Tensor calib = tokens(8, 32, 40, 51);
  for (const std::string method : {"gptq", "rtn"}) {
    CAPTURE(method);
    PtqOptions o;
    o.method = method;
    o.spec.bits = 3, o.spec.group_size = 16;
    o.targets = {"layers.0.*"};  // block 0 sees the same inputs in both runs
    auto plain_m = mctest::tiny_llama(52, s);
    const PtqResult plain = quantize_model(*plain_m, calib, o);
    o.eora_rank = 4;
    auto m = mctest::tiny_llama(52, s);
    const PtqResult r = quantize_model(*m, calib, o);
    REQUIRE(r.adapters.size() == r.layers.size());
    REQUIRE(r.layers.size() == plain.layers.size());
    for (size_t i = 0; i < r.layers.size(); ++i) {
      const LayerRow& row = r.layers[i];
      CAPTURE(row.name);
      const LowRankAdapter& a = r.adapters.at(row.name);
      const LayerInfo& l = m->layer(row.name);
      CHECK(a.rank() == 4);
      CHECK(a.A.size(1) == l.in_features);
      // The codes are the method's own (the adapter is beside them), the model computes with Ŵ + B A.
      const QuantResult& q = r.quantized.at(l.weight);
      CHECK(q.codes.equal(plain.quantized.at(l.weight).codes));
      CHECK(m->param(l.weight).equal(q.dequantize() + a.B.mm(a.A)));
      CHECK(*row.rel_output_error < *plain.layers[i].rel_output_error);
      CHECK(row.note.find("eora rank 4 (relative output error ") != std::string::npos);
    }
  }
  // Without calibration data there is nothing to fit.
  auto m = mctest::tiny_llama(52, s);
  PtqOptions o;
  o.eora_rank = 4;
  CHECK_THROWS_WITH(quantize_model(*m, at::Tensor(), o), Catch::Contains("--eora needs calibration data"));
}

TEST_CASE("AWQ: alpha 0 is a candidate, so a group's search never does worse than RTN", "[ptq][awq]") {
  mctest::TinyLlamaShape s;
  s.kv_heads = 2, s.dim = 32, s.hidden = 64;
  const at::Tensor calib = tokens(8, 32, 20, 12);
  auto run = [&](const char* method) {
    auto m = mctest::tiny_llama(13, s);
    PtqOptions o;
    o.method = method;
    o.awq_clip = false;
    o.spec.bits = 3, o.spec.group_size = 0;
    o.targets = {"layers.0.*"};  // block 0 sees the same inputs in both runs
    return quantize_model(*m, calib, o);
  };
  PtqResult rtn = run("rtn"), awq = run("awq");
  double a = 0, b = 0;
  for (size_t i = 0; i < rtn.layers.size(); ++i) {
    const std::string& n = rtn.layers[i].name;
    if (n.find("wq") == std::string::npos && n.find("wk") == std::string::npos && n.find("wv") == std::string::npos)
      continue;
    a += *rtn.layers[i].rel_output_error, b += *awq.layers[i].rel_output_error;
  }
  CHECK(b <= a * (1 + 1e-6));
}

TEST_CASE("SmoothQuant W8A8: int8 kernel equals the float simulation, and the file restores it", "[ptq][w8a8]") {
  mctest::TinyLlamaShape s;
  s.kv_heads = 2, s.dim = 32, s.hidden = 64, s.vocab = 40;
  auto m = mctest::tiny_llama(21, s);
  auto ref = mctest::tiny_llama(21, s);
  const at::Tensor calib = tokens(8, 32, 40, 22), x = tokens(2, 24, 40, 23);
  PtqOptions o;
  o.method = "smoothquant";
  o.spec.bits = 8, o.spec.group_size = 0;
  PtqResult r = quantize_model(*m, calib, o);
  REQUIRE(r.act_bits.size() == 14);
  for (const auto& [name, b] : r.act_bits) {
    CHECK(b == 8);
    CHECK(m->has_int8_weight(name));
  }
  const at::Tensor y_int8 = m->forward(x);
  m->set_int8_kernel(false);
  const at::Tensor y_sim = m->forward(x);
  CHECK(rel_diff(y_int8, y_sim) < 1e-4);
  // W8A8 stays close to the float model; without activation quantization it would be closer still.
  const at::Tensor y_ref = ref->forward(x);
  CHECK(rel_diff(y_sim, y_ref) < 0.05);
  // Written with the metadata the CLI writes, loaded back: the same layers quantize their inputs.
  mctest::TempDir dir;
  std::map<std::string, at::Tensor> dense;
  for (const auto& [k, v] : m->params())
    if (!r.quantized.count(k)) dense[k] = v;
  auto meta = m->config_metadata();
  std::string j = "{\"layers\": {";
  for (const auto& [name, b] : r.act_bits) j += (j.back() == '{' ? "\"" : ", \"") + name + "\": {\"bits\": 8}";
  meta[kActivationMetadataKey] = j + "}}";
  write_packed_checkpoint(dir.file("m.safetensors"), dense, r.quantized, meta);
  auto back = load_model(dir.file("m.safetensors"));
  for (const auto& [name, b] : r.act_bits) {
    CHECK(back->layer(name).act_bits == 8);
    CHECK(back->has_int8_weight(name));
  }
  CHECK(rel_diff(back->forward(x), y_int8) < 1e-6);
}

TEST_CASE("true-sequential: a block's layers come in groups reading the same input", "[ptq][calib]") {
  auto m = mctest::tiny_llama(31);
  std::set<std::string> targets;
  for (auto* l : select_layers(*m, {})) targets.insert(l->name);
  std::vector<std::vector<std::string>> seen;
  SequentialOptions so;
  so.true_sequential = true;
  compress_blocks(*m, tokens(4, 16, 20, 32), targets,
                  [&](int, const std::vector<const LayerInfo*>& ls, const BlockStats&) { seen.push_back(names_of(ls)); },
                  so);
  REQUIRE(seen.size() == 8);
  CHECK(seen[0] == std::vector<std::string>{"layers.0.attention.wq", "layers.0.attention.wk", "layers.0.attention.wv"});
  CHECK(seen[1] == std::vector<std::string>{"layers.0.attention.wo"});
  CHECK(seen[2] == std::vector<std::string>{"layers.0.feed_forward.w1", "layers.0.feed_forward.w3"});
  CHECK(seen[3] == std::vector<std::string>{"layers.0.feed_forward.w2"});
  // Later groups see the earlier ones compressed: zeroing v makes o's inputs zero.
  auto m2 = mctest::tiny_llama(31);
  double o_input = -1;
  compress_blocks(*m2, tokens(4, 16, 20, 32), {"layers.0.attention.wv", "layers.0.attention.wo"},
                  [&](int, const std::vector<const LayerInfo*>& ls, const BlockStats& st) {
                    for (auto* l : ls) {
                      if (l->name.find("wv") != std::string::npos)
                        m2->set_param(l->weight, at::zeros_like(m2->param(l->weight)));
                      else
                        o_input = st.at(l->name)->max_abs().max().item<double>();
                    }
                  },
                  so);
  CHECK(o_input == 0.0);
}

TEST_CASE("allocate_bits: the exact optimum of the knapsack, checked exhaustively", "[ptq][mixed]") {
  auto gen = at::detail::createCPUGenerator(41);
  const std::vector<int> bits = {2, 3, 4, 8};
  for (int trial = 0; trial < 30; ++trial) {
    const int L = 5;
    std::vector<std::vector<double>> errs(L);
    std::vector<int64_t> params(L);
    for (int l = 0; l < L; ++l) {
      params[l] = 64 * (1 + at::randint(8, {1}, gen).item<int64_t>());
      double e = at::rand({1}, gen).item<double>() * 100;
      for (size_t c = 0; c < bits.size(); ++c) errs[l].push_back(e *= at::rand({1}, gen).item<double>());
    }
    const double target = 2.0 + at::rand({1}, gen).item<double>() * 3;
    std::vector<int> pick = allocate_bits(errs, params, bits, target);
    double total = 0, cost = 0, err = 0;
    for (int l = 0; l < L; ++l) total += params[l], cost += params[l] * bits[pick[l]], err += errs[l][pick[l]];
    CHECK(cost <= target * total + 1e-9);
    double best = 1e300;
    for (int code = 0; code < 4 * 4 * 4 * 4 * 4; ++code) {
      double c = 0, e = 0;
      for (int l = 0, k = code; l < L; ++l, k /= 4) c += params[l] * bits[k % 4], e += errs[l][k % 4];
      if (c <= target * total + 1e-9) best = std::min(best, e);
    }
    CHECK(err == Approx(best).epsilon(1e-12));
  }
  CHECK_THROWS_WITH(allocate_bits({{1.0, 0.5}}, {64}, {3, 4}, 2.5), Catch::Contains("below the smallest candidate"));
}

TEST_CASE("mixed precision: meets the target mean bits and reports bits per layer", "[ptq][mixed]") {
  mctest::TinyLlamaShape s;
  s.dim = 32, s.hidden = 64, s.kv_heads = 2;
  auto m = mctest::tiny_llama(51, s);
  PtqOptions o;
  o.method = "gptq";
  o.spec.group_size = 16;
  o.target_bpw = 3.5;
  o.candidate_bits = {2, 3, 4, 8};
  PtqResult r = quantize_model(*m, tokens(8, 32, 20, 52), o);
  double bits = 0, n = 0;
  std::set<int> used;
  for (const auto& [k, q] : r.quantized) bits += q.spec.bits * double(q.codes.numel()), n += double(q.codes.numel()),
                                         used.insert(q.spec.bits);
  CHECK(bits / n <= 3.5);
  CHECK(bits / n > 3.0);
  CHECK(used.size() >= 2);
  CHECK(r.settings.count("mixed precision"));
  for (const auto& l : r.layers) CHECK(l.scheme.find("int") != std::string::npos);
}

TEST_CASE("quantize_model: bad input gets a clear error, never a NaN model", "[ptq][errors]") {
  const at::Tensor calib = tokens(4, 16, 20, 61);
  {
    auto m = mctest::tiny_llama(62);
    PtqOptions o;
    o.method = "gptq";
    CHECK_THROWS_WITH(quantize_model(*m, at::Tensor(), o), Catch::Contains("needs calibration data"));
    o.method = "nope";
    CHECK_THROWS_WITH(quantize_model(*m, calib, o), Catch::Contains("is not available"));
  }
  {
    auto m = mctest::tiny_llama(63);
    at::Tensor w = m->param("layers.1.feed_forward.w2.weight").clone();
    w[0][0] = NAN;
    m->set_param("layers.1.feed_forward.w2.weight", w);
    PtqOptions o;
    o.method = "awq";
    // Block 1's inputs are finite; its down projection's weight is not.
    CHECK_THROWS_WITH(quantize_model(*m, calib, o), Catch::Contains("layers.1.feed_forward.w2"));
  }
  {
    auto m = mctest::tiny_llama(64);
    at::Tensor w = m->param("layers.0.attention.wo.weight").clone();
    w[1][2] = INFINITY;
    m->set_param("layers.0.attention.wo.weight", w);
    PtqOptions o;
    o.method = "gptq";
    o.targets = {"*.feed_forward.*"};  // wo stays dense, so NaN/Inf reaches the MLP's inputs
    CHECK_THROWS_AS(quantize_model(*m, calib, o), InputError);
  }
  {
    // A layer whose inputs are all zero: quantized by plain RTN, stated in the report.
    auto m = mctest::tiny_llama(65);
    m->set_param("layers.0.attention_norm.weight", at::zeros({16}));
    PtqOptions o;
    o.method = "gptq";
    o.targets = {"layers.0.attention.w[qkv]"};
    PtqResult r = quantize_model(*m, calib, o);
    REQUIRE(r.layers.size() == 3);
    CHECK(r.layers[0].note.find("inputs all zero") != std::string::npos);
    CHECK(r.layers[0].scheme.rfind("rtn ", 0) == 0);  // what ran, not "gptq"
    CHECK(!r.warnings.empty());
    for (const auto& [k, q] : r.quantized) CHECK(at::isfinite(m->param(k)).all().item<bool>());
  }
}

TEST_CASE("AWQ / SmoothQuant: a skipped scale group is reported as what ran, with a warning naming it",
          "[ptq][awq][labels]") {
  mctest::TinyLlamaShape s;
  s.kv_heads = 2, s.dim = 32, s.hidden = 64;
  const at::Tensor calib = tokens(8, 32, 20, 14);
  const std::string qkv = "layers.0.attention.wq, layers.0.attention.wk, layers.0.attention.wv";
  auto skipped_warnings = [](const PtqResult& r) {
    std::vector<std::string> v;
    for (const auto& w : r.warnings)
      if (w.find("scales skipped") != std::string::npos) v.push_back(w);
    return v;
  };
  {
    // wq without wk, wv: scaling the norm would change k and v too, so the group gets no scales.
    auto m = mctest::tiny_llama(15, s);
    const at::Tensor norm = m->param("layers.0.attention_norm.weight").clone();
    PtqOptions o;
    o.method = "awq";
    o.spec.bits = 4, o.spec.group_size = 16;
    o.targets = {"layers.0.attention.wq", "layers.0.attention.wo"};
    PtqResult r = quantize_model(*m, calib, o);
    REQUIRE(r.layers.size() == 2);
    CHECK(r.layers[0].scheme == "rtn+clip int4 sym g16");
    CHECK(r.layers[0].note == "awq scales skipped: only layers.0.attention.wq of the group " + qkv + " is selected");
    CHECK(m->param("layers.0.attention_norm.weight").equal(norm));
    // wo is its group (v -> o) on its own: scaled.
    CHECK(r.layers[1].scheme == "awq int4 sym g16");
    CHECK(r.layers[1].note.find("awq alpha") == 0);
    const auto w = skipped_warnings(r);
    REQUIRE(w.size() == 1);
    CHECK(w[0] == "awq scales skipped for the group " + qkv + ": only layers.0.attention.wq is selected; quantized "
                  "with rtn+clip");
    // Without the clip search what ran is plain RTN, and the codes are RTN's.
    auto m2 = mctest::tiny_llama(15, s);
    o.awq_clip = false;
    o.targets = {"layers.0.attention.wq"};
    PtqResult r2 = quantize_model(*m2, calib, o);
    REQUIRE(r2.layers.size() == 1);
    CHECK(r2.layers[0].scheme == "rtn int4 sym g16");
    const at::Tensor w0 = mctest::tiny_llama(15, s)->param("layers.0.attention.wq.weight");
    CHECK(r2.quantized.at("layers.0.attention.wq.weight").codes.equal(rtn_quantize(w0, o.spec).codes));
  }
  {
    // SmoothQuant smooths only after a norm: o (after v) and down (after up) are W8A8 without scales.
    auto m = mctest::tiny_llama(16, s);
    PtqOptions o;
    o.method = "smoothquant";
    o.spec.bits = 8, o.spec.group_size = 0;
    PtqResult r = quantize_model(*m, calib, o);
    REQUIRE(r.layers.size() == 14);
    for (const auto& row : r.layers) {
      CAPTURE(row.name);
      const bool after_norm = row.name.find("wo") == std::string::npos && row.name.find("w2") == std::string::npos;
      CHECK(row.scheme == std::string(after_norm ? "smoothquant" : "rtn") + " int8 sym per-channel, a8 per-token");
      CHECK((row.note.find("smoothed, alpha 0.50") != std::string::npos) == after_norm);
      if (!after_norm) CHECK(row.note.find("smoothquant scales skipped: its input comes from layers.") == 0);
    }
    CHECK(r.act_bits.size() == 14);  // every linear still quantizes its input
    const auto w = skipped_warnings(r);
    REQUIRE(w.size() == 4);  // o and down in each of 2 blocks
    CHECK(w[0] == "smoothquant scales skipped for the group layers.0.attention.wo: its input comes from "
                  "layers.0.attention.wv.weight, not a norm; quantized with rtn");
  }
}

TEST_CASE("smoothquant_scales: max|X|^a / max|W|^(1-a) over the group's weights, by hand", "[ptq][w8a8]") {
  const at::Tensor xmax = at::tensor({4.0f, 0.0f, 1.0f, 9.0f});
  const std::vector<at::Tensor> ws = {at::tensor({1.0f, 2.0f, 0.5f, 1.0f}).reshape({1, 4}),
                                      at::tensor({-2.0f, 1.0f, -0.25f, 0.0f}).reshape({1, 4})};
  // max|W| per column: 2, 2, 0.5, 1.
  const at::Tensor s = smoothquant_scales(xmax, ws, 0.5);
  CHECK(s[0].item<double>() == Approx(2.0 / std::sqrt(2.0)));
  CHECK(s[1].item<double>() == 1.0);  // never saw input
  CHECK(s[2].item<double>() == Approx(1.0 / std::sqrt(0.5)));
  CHECK(s[3].item<double>() == Approx(3.0));
  CHECK(smoothquant_scales(xmax, ws, 1.0)[3].item<double>() == Approx(9.0));   // all on the activations
  CHECK(smoothquant_scales(xmax, ws, 0.0)[2].item<double>() == Approx(2.0));   // 1 / max|W|
  CHECK_FALSE(smoothquant_scales(at::zeros({4}), ws, 0.5).defined());          // nothing to smooth
}

TEST_CASE("AWQ on a model without scale groups: clip search + RTN, said so", "[ptq][awq][labels]") {
  const char* mlp = R"(
input: {shape: [16], scale: 1.0}
layers:
  - {type: linear, name: fc1, in: 16, out: 32}
  - {type: relu}
  - {type: linear, name: fc2, in: 32, out: 8}
)";
  std::map<std::string, HostTensor> w;
  w["fc1.weight"] = from_torch("fc1.weight", randn({32, 16}, 81));
  w["fc1.bias"] = from_torch("fc1.bias", randn({32}, 82));
  w["fc2.weight"] = from_torch("fc2.weight", randn({8, 32}, 83));
  w["fc2.bias"] = from_torch("fc2.bias", randn({8}, 84));
  ClassifierModel m(mlp, w, "mlp.yaml");
  PtqOptions o;
  o.method = "awq";
  o.spec.bits = 4, o.spec.group_size = 8;
  o.classifier = true;
  PtqResult r = quantize_model(m, randn({64, 16}, 85), o);
  REQUIRE(r.layers.size() == 2);
  for (const auto& row : r.layers) {
    CAPTURE(row.name);
    CHECK(row.scheme == "rtn+clip int4 sym g8");
    CHECK(row.note == "awq scales skipped: the model has no op before it to fold scales into");
  }
  REQUIRE(r.warnings.size() == 2);
  CHECK(r.warnings[0] == "awq scales skipped for fc1: the model has no op before it to fold scales into; quantized "
                         "with rtn+clip");
}

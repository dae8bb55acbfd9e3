// evaluate_lm / evaluate_classifier against sums computed here window by window from forward(), one
// window at a time (no batching, no padding).
#include <ATen/ATen.h>

#include <cmath>

#include "mcompress/error.h"
#include "mcompress/eval.h"
#include "mcompress/models/classifier.h"
#include "mcompress/models/llama.h"
#include "mcompress/tokenizer.h"
#include "mcompress/torch_bridge.h"
#include "test_utils.h"
#include "tiny_llama.h"

namespace {

constexpr double kTol = 1e-5;  // float32 logits, double sums; batched vs one window at a time

std::unique_ptr<mc::LlamaModel> tiny_llama(uint64_t seed, bool tied = true) {
  mctest::TinyLlamaShape s;
  s.tied = tied;
  return mctest::tiny_llama(seed, s);
}

mc::LmCorpus corpus() {
  mc::LmCorpus c;
  c.docs = {{1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}, {1, 3}, {1}, {1, 19, 18, 17, 16, 15, 14}};
  for (const auto& d : c.docs) {  // bytes of token i: i mod 4
    c.bytes.emplace_back();
    for (int32_t id : d) c.bytes.back().push_back(id % 4);
  }
  c.vocab_size = 20;
  return c;
}

// Sum of -log p(next) and of bytes over the protocol's windows, one forward per window.
struct Manual {
  double nll = 0;
  int64_t n = 0, bytes = 0;
};
Manual manual(mc::Model& m, const mc::LmCorpus& c, int64_t window, bool truncate) {
  Manual r;
  for (size_t di = 0; di < c.docs.size(); ++di) {
    const auto& d = c.docs[di];
    for (size_t s = 0; s < d.size(); s += size_t(window)) {
      std::vector<int64_t> w(d.begin() + long(s), d.begin() + long(std::min(d.size(), s + size_t(window))));
      if (w.size() >= 2) {
        at::Tensor lp = at::log_softmax(m.forward(at::tensor(w, at::kLong).view({1, -1})), -1)[0];
        for (size_t t = 0; t + 1 < w.size(); ++t) {
          r.nll -= lp[long(t)][w[t + 1]].item<double>();
          r.bytes += c.bytes[di][s + t + 1];
          ++r.n;
        }
      }
      if (truncate) break;
    }
  }
  return r;
}

}  // namespace

TEST_CASE("evaluate_lm: windows, truncation and bytes as the protocol says", "[eval]") {
  auto m = tiny_llama(1);
  const auto c = corpus();
  for (bool truncate : {false, true}) {
    for (int64_t window : {2, 4, 128}) {
      for (int64_t batch : {1, 3, 16}) {
        mc::LmEvalOptions o;
        o.window = window, o.truncate = truncate, o.batch_size = batch;
        auto r = mc::evaluate_lm(*m, c, o);
        Manual want = manual(*m, c, window, truncate);
        CAPTURE(truncate, window, batch);
        CHECK(r.predicted_tokens == want.n);
        CHECK(r.bytes == want.bytes);
        CHECK(r.nll_sum == Approx(want.nll).epsilon(kTol));
        CHECK(r.mean_nll == Approx(want.nll / double(want.n)).epsilon(kTol));
        CHECK(r.perplexity == Approx(std::exp(want.nll / double(want.n))).epsilon(kTol));
        CHECK(r.bits_per_byte == Approx(want.nll / std::log(2.0) / double(want.bytes)).epsilon(kTol));
        CHECK(r.documents == 4);
      }
    }
  }
  mc::LmEvalOptions o;
  o.max_docs = 1;
  CHECK(mc::evaluate_lm(*m, c, o).predicted_tokens == 10);
}

TEST_CASE("evaluate_lm: reference model gives KL and agreement", "[eval]") {
  auto m = tiny_llama(1), same = tiny_llama(1), other = tiny_llama(2);
  auto r = mc::evaluate_lm(*m, corpus(), {}, same.get());
  CHECK(r.has_reference);
  CHECK(std::abs(r.mean_kl) < 1e-6);
  CHECK(r.top1_agreement == 1.0);
  auto d = mc::evaluate_lm(*m, corpus(), {}, other.get());
  CHECK(d.mean_kl > 0.01);
  CHECK(d.top1_agreement < 1.0);
  nlohmann::json j = d;
  CHECK(j["mean_kl"].get<double>() == d.mean_kl);
  CHECK(j["bits_per_byte"].get<double>() == d.bits_per_byte);
}

TEST_CASE("evaluate_lm: bad input is an InputError", "[eval]") {
  auto m = tiny_llama(1);
  auto c = corpus();
  mc::LmEvalOptions o;
  o.window = 1;
  CHECK_THROWS_AS(mc::evaluate_lm(*m, c, o), mc::InputError);
  c.vocab_size = 30;
  CHECK_THROWS_WITH(mc::evaluate_lm(*m, c), Catch::Contains("30 tokens but the model's has 20"));
  mc::LmCorpus tiny;
  tiny.docs = {{1}, {2}};
  CHECK_THROWS_WITH(mc::evaluate_lm(*m, tiny), Catch::Contains("nothing to predict"));
  mc::LmCorpus out_of_vocab;
  out_of_vocab.docs = {{1, 25}};
  CHECK_THROWS_AS(mc::evaluate_lm(*m, out_of_vocab), mc::InputError);
}

TEST_CASE("evaluate_classifier: accuracy, top-5 and agreement", "[eval]") {
  const char* arch = "input: {shape: [3]}\nlayers: [{type: linear, name: fc, in: 3, out: 6}]";
  // Logits = the input, then three classes with small negative logits (no ties): rank = order of the input.
  at::Tensor wt = at::zeros({6, 3});
  wt.narrow(0, 0, 3).copy_(at::eye(3));
  std::map<std::string, mc::HostTensor> w = {{"fc.weight", mc::from_torch("fc.weight", wt)},
                                             {"fc.bias", mc::from_torch("fc.bias", at::tensor({0.0f, 0.0f, 0.0f, -0.01f, -0.02f, -0.03f}))}};
  mc::ClassifierModel m(arch, w, "x.yaml");
  mc::LabeledData d;
  d.example_shape = {3};
  d.inputs = {5, 1, 0, 0, 5, 1, 1, 0, 5, 5, 0, 1};  // argmax 0, 1, 2, 0
  d.labels = {0, 1, 1, 5};
  d.count = 4;
  mc::ClassifierEvalOptions o;
  o.batch_size = 3;
  auto r = mc::evaluate_classifier(m, d, o, &m);
  CHECK(r.examples == 4);
  CHECK(r.top1 == 0.5);
  CHECK(r.top5 == 0.75);  // example 3 (label 1) ranks third; example 4 (label 5) ranks last
  CHECK(r.top1_agreement == 1.0);
  CHECK(std::abs(r.mean_kl) < 1e-9);
  d.labels[3] = 7;
  CHECK_THROWS_AS(mc::evaluate_classifier(m, d), mc::InputError);
}

namespace {
// A SentencePiece-like tokenizer: "▁" + word pieces; every text gets a dummy-prefix space.
struct FakeSpTokenizer : mc::Tokenizer {
  std::vector<std::string> pieces = {"", "", "", " ab", "c", " d", "\n"};
  std::string kind() const override { return "fake-sp"; }
  std::vector<int32_t> encode(std::string_view text) const override {
    if (text == "abc d") return {3, 4, 5};
    if (text == "c\nd") return {4, 6, 5};  // as if the dummy prefix had been dropped
    return {};
  }
  std::string token_bytes(int32_t id) const override { return pieces.at(size_t(id)); }
  std::string decode(const std::vector<int32_t>&) const override { return ""; }
  int32_t vocab_size() const override { return 7; }
  int32_t bos_id() const override { return 1; }
  int32_t eos_id() const override { return 2; }
};
}  // namespace

TEST_CASE("make_lm_corpus: BOS + tokens, the dummy-prefix space is not a byte of the text", "[eval]") {
  FakeSpTokenizer tok;
  auto c = mc::make_lm_corpus(tok, {"abc d", "", "c\nd"});
  REQUIRE(c.docs.size() == 2);  // the empty document is dropped
  CHECK(c.docs[0] == std::vector<int32_t>{1, 3, 4, 5});
  CHECK(c.bytes[0] == std::vector<int32_t>{0, 2, 1, 2});  // " ab" counts 2: the text has 5 bytes
  CHECK(c.bytes[1] == std::vector<int32_t>{0, 1, 1, 2});  // no dummy prefix: nothing taken off
  CHECK(c.vocab_size == 7);
  CHECK_THROWS_AS(mc::make_lm_corpus(tok, {"", ""}), mc::InputError);
}

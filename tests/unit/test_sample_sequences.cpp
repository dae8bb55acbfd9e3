// sample_sequences: batched sampling with one KV cache per batch, checked against the single-sequence
// generate() (same per-sequence seed) and, greedy, against the full forward without a cache.
#include <ATen/ATen.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <iostream>
#include <map>
#include <numeric>

#include "mcompress/error.h"
#include "mcompress/generate.h"
#include "mcompress/model.h"
#include "mcompress/rng.h"
#include "test_utils.h"
#include "unit/tiny_llama.h"

namespace {

using Seqs = std::vector<std::vector<int32_t>>;

mctest::TinyLlamaShape shape() {
  mctest::TinyLlamaShape s;
  s.dim = 32, s.hidden = 64, s.heads = 4, s.kv_heads = 2, s.vocab = 24, s.seq = 48;
  return s;
}

// What generate() gives for sequence i of o (start token included).
std::vector<int32_t> oracle(mc::Model& m, const mc::SampleBatchOptions& o, int64_t i) {
  mc::GenerateOptions g;
  g.max_tokens = std::min(o.length, m.max_seq_len()) - 1;
  g.temperature = o.temperature, g.top_p = o.top_p, g.stop_ids = o.stop_ids;
  g.seed = mc::sequence_seed(o.seed, i);
  std::vector<int32_t> seq = {o.start_id};
  for (int32_t id : mc::generate(m, {o.start_id}, g)) seq.push_back(id);
  return seq;
}

// run.c sample_topp as written there (every token sorted), drawing u from [0, 1).
int64_t plain_topp(const std::vector<double>& p, double top_p, double u) {
  std::vector<int64_t> ids(p.size());
  std::iota(ids.begin(), ids.end(), int64_t(0));
  std::stable_sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) { return p[size_t(a)] > p[size_t(b)]; });
  double cum = 0;
  size_t keep = ids.size();
  for (size_t i = 0; i < ids.size(); ++i) {
    cum += p[size_t(ids[i])];
    if (cum > top_p) {
      keep = i + 1;
      break;
    }
  }
  const double r = u * cum;
  double cdf = 0;
  for (size_t i = 0; i < keep; ++i) {
    cdf += p[size_t(ids[i])];
    if (r < cdf) return ids[i];
  }
  return ids[keep - 1];
}

}  // namespace

TEST_CASE("Sampler::sample_probs: the nucleus search over likely tokens only equals the plain sort", "[sample]") {
  mc::SplitMix64 g{77};
  for (int trial = 0; trial < 300; ++trial) {
    const int64_t n = 1 + int64_t(g.below(trial < 20 ? 4 : 600));
    const double spread = 0.2 + 6 * g.uniform();
    std::vector<double> logits(static_cast<size_t>(n));
    for (double& x : logits) x = g.normal(float(spread));
    if (n > 3) logits[1] = logits[2] = logits[0];  // ties
    at::Tensor probs = at::softmax(at::tensor(logits, at::kDouble), 0).contiguous();
    std::vector<double> p(probs.data_ptr<double>(), probs.data_ptr<double>() + n);
    for (double top_p : {1e-9, 0.05, 0.5, 0.9, 0.999, 1 - 1e-15}) {
      CAPTURE(trial, n, top_p);
      const uint64_t seed = g.next();
      mc::Sampler s(seed), u(seed);
      for (int d = 0; d < 5; ++d) CHECK(s.sample_probs(p.data(), n, top_p) == plain_topp(p, top_p, u.uniform()));
    }
  }
}

TEST_CASE("sample_sequences: sequence seeds are SplitMix64's outputs", "[sample]") {
  mc::SplitMix64 g{1234};
  for (int64_t i = 0; i < 5; ++i) CHECK(mc::sequence_seed(1234, i) == g.next());
  CHECK(mc::sequence_seed(0, 0) != mc::sequence_seed(1, 0));
}

TEST_CASE("sample_sequences: batch 1 reproduces generate() with each sequence's seed", "[sample]") {
  auto m = mctest::tiny_llama(3, shape());
  struct Case { double temperature, top_p; };
  for (Case c : {Case{1.0, 1.0}, Case{0.8, 0.9}, Case{1.3, 0.5}, Case{0.0, 1.0}}) {
    CAPTURE(c.temperature, c.top_p);
    mc::SampleBatchOptions o;
    o.sequences = 6, o.length = 30, o.batch = 1, o.seed = 7, o.start_id = 2;
    o.temperature = c.temperature, o.top_p = c.top_p;
    Seqs got = mc::sample_sequences(*m, o);
    REQUIRE(got.size() == 6);
    for (int64_t i = 0; i < 6; ++i) CHECK(got[size_t(i)] == oracle(*m, o, i));
    if (c.temperature > 0) CHECK(got[0] != got[1]);  // each sequence has its own draws
  }
}

TEST_CASE("sample_sequences: stop ids end a sequence without being emitted", "[sample]") {
  auto m = mctest::tiny_llama(5, shape());
  mc::SampleBatchOptions o;
  o.sequences = 7, o.length = 40, o.batch = 3, o.seed = 11, o.start_id = 1;
  const Seqs free_run = mc::sample_sequences(*m, o);
  o.stop_ids = {4, 9};
  const Seqs stopped = mc::sample_sequences(*m, o);
  REQUIRE(stopped.size() == 7);
  int shortened = 0;
  for (size_t i = 0; i < 7; ++i) {
    CAPTURE(i);
    const auto& f = free_run[i];
    REQUIRE(f.size() == 40);
    // The stopped sequence is the free one up to (not including) its first stop id after the start.
    auto it = std::find_if(f.begin() + 1, f.end(), [](int32_t t) { return t == 4 || t == 9; });
    CHECK(stopped[i] == std::vector<int32_t>(f.begin(), it));
    shortened += it != f.end();
  }
  CHECK(shortened >= 5);  // 2 of 24 tokens stop: nearly every sequence of 40 meets one
  o.batch = 1;  // and with batch 1, generate() with the stop ids
  for (int64_t i = 0; i < 7; ++i) CHECK(mc::sample_sequences(*m, o)[size_t(i)] == oracle(*m, o, i));
}

// Each sequence has its own sampler, so batching changes only the logits, and those only in the last
// float bits: the matmul kernels sum in another order for [B, dim] than for [1, dim] inputs (about 1e-6
// on stories260K). Greedy chains are then identical; a sampled token differs only when a draw lands
// within rounding of a boundary between two tokens (on stories260K, 64 x 255 draws at top_p 0.9 with
// batch 32 changed 1 sequence of 64), so at temperature 1 nearly all sequences must agree.
TEST_CASE("sample_sequences: the output does not depend on the batch size", "[sample]") {
  auto m = mctest::tiny_llama(9, shape());
  mc::SampleBatchOptions o;
  o.sequences = 7, o.length = 32, o.seed = 5, o.start_id = 3;
  for (double t : {0.0, 1.0}) {
    CAPTURE(t);
    o.temperature = t, o.top_p = t > 0 ? 0.95 : 1.0;
    o.batch = 1;
    const Seqs one = mc::sample_sequences(*m, o);
    for (int64_t batch : {5, 64}) {
      CAPTURE(batch);
      o.batch = batch;
      const Seqs got = mc::sample_sequences(*m, o);
      REQUIRE(got.size() == 7);
      if (t == 0) {
        CHECK(got == one);
        for (const auto& s : got) CHECK(s == got[0]);  // greedy: every sequence is the same chain
      } else {
        int same = 0;
        for (size_t i = 0; i < 7; ++i) same += got[i] == one[i];
        CHECK(same >= 6);  // 7 here; up to one draw on a boundary tolerated
      }
    }
  }
}

TEST_CASE("sample_sequences: greedy chains equal argmax of the full forward without a cache", "[sample]") {
  auto m = mctest::tiny_llama(13, shape());
  for (int32_t start : {0, 5, 17}) {
    CAPTURE(start);
    mc::SampleBatchOptions o;
    o.sequences = 3, o.length = 25, o.batch = 2, o.temperature = 0, o.start_id = start;
    const Seqs got = mc::sample_sequences(*m, o);
    std::vector<int64_t> seq = {start};
    while (int64_t(seq.size()) < o.length) {
      at::Tensor logits = m->forward(at::tensor(seq, at::kLong).view({1, -1}))[0][-1];
      seq.push_back(logits.argmax().item<int64_t>());
    }
    const std::vector<int32_t> want(seq.begin(), seq.end());
    for (const auto& s : got) CHECK(s == want);
  }
}

TEST_CASE("sample_sequences: length capped at the context, progress, bad options", "[sample]") {
  auto m = mctest::tiny_llama(17, shape());
  mc::SampleBatchOptions o;
  o.sequences = 5, o.length = 1000, o.batch = 2, o.seed = 1;
  std::vector<std::pair<int64_t, int64_t>> seen;
  const Seqs got = mc::sample_sequences(*m, o, [&](int64_t done, int64_t total) { seen.emplace_back(done, total); });
  REQUIRE(got.size() == 5);
  for (const auto& s : got) CHECK(s.size() == 48);  // the model's max_seq_len
  CHECK(seen == std::vector<std::pair<int64_t, int64_t>>{{2, 5}, {4, 5}, {5, 5}});
  o.length = 1;
  for (const auto& s : mc::sample_sequences(*m, o)) CHECK(s == std::vector<int32_t>{1});
  o.sequences = 0;
  CHECK(mc::sample_sequences(*m, o).empty());
  o.sequences = 2;
  o.batch = 0;
  CHECK_THROWS_AS(mc::sample_sequences(*m, o), mc::InputError);
  o.batch = 2, o.start_id = 24;
  CHECK_THROWS_AS(mc::sample_sequences(*m, o), mc::InputError);
  o.start_id = 1, o.temperature = -1;
  CHECK_THROWS_AS(mc::sample_sequences(*m, o), mc::InputError);
}

// Throughput on the real stories260K (hidden: run with "[.bench]").
TEST_CASE("sample_sequences: stories260K throughput", "[.bench]") {
  MC_REQUIRE_SHARED(model_path, "stories260K/stories260K.bin");
  auto model = mc::load_model(model_path);
  std::map<double, Seqs> first;  // by top_p: batch 1's sequences, to count those other batch sizes repeat
  for (int64_t batch : {1, 8, 32, 64}) {
    for (double top_p : {1.0, 0.9}) {
      mc::SampleBatchOptions o;
      o.sequences = 64, o.length = 256, o.batch = batch, o.top_p = top_p, o.seed = 1;
      const auto t0 = std::chrono::steady_clock::now();
      const auto seqs = mc::sample_sequences(*model, o);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      int64_t tokens = 0, same = 0;
      for (const auto& q : seqs) tokens += int64_t(q.size()) - 1;
      if (batch == 1) first[top_p] = seqs;
      for (size_t i = 0; i < seqs.size(); ++i) same += seqs[i] == first[top_p][i];
      std::cout << "stories260K 64 x 256, batch " << batch << ", top_p " << top_p << ": " << tokens
                << " tokens in " << s << " s = " << double(tokens) / s << " tokens/s; " << same
                << "/64 sequences equal to batch 1's\n";
    }
  }
}

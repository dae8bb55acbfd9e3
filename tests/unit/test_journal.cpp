// Resume at block granularity (journal.h): a quantize/prune run stopped after any block and started
// again on a fresh copy of the model, with the same journal, ends with exactly the uninterrupted run's
// codes, weights, report rows and activation settings. The stop is an exception thrown from the
// block callback (after the journal has saved the block) or from the progress callback in the middle
// of a block, which is what a kill leaves behind as far as the journal is concerned.
#include <ATen/ATen.h>

#include <filesystem>
#include <stdexcept>
#include <unistd.h>

#include "mcompress/journal.h"
#include "mcompress/model.h"
#include "mcompress/prune/prune.h"
#include "mcompress/ptq.h"
#include "calib_problem.h"
#include "test_utils.h"
#include "tiny_llama.h"

using namespace mc;
namespace fs = std::filesystem;

namespace {

struct Stop : std::runtime_error {
  Stop() : std::runtime_error("stopped") {}
};

mctest::TinyLlamaShape shape() {
  mctest::TinyLlamaShape s;
  s.layers = 4, s.dim = 32, s.hidden = 64, s.heads = 4, s.kv_heads = 2, s.vocab = 40;
  return s;
}

std::string journal_dir(const std::string& name) {
  const auto d = fs::temp_directory_path() / ("mc_journal_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d.string();
}

void same_rows(const std::vector<LayerRow>& a, const std::vector<LayerRow>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].name == b[i].name);
    CHECK(a[i].scheme == b[i].scheme);
    CHECK(a[i].note == b[i].note);
    REQUIRE(a[i].rel_output_error.has_value() == b[i].rel_output_error.has_value());
    if (a[i].rel_output_error) CHECK(*a[i].rel_output_error == *b[i].rel_output_error);  // exact
  }
}

void same_model(const Model& a, const Model& b) {
  for (const auto& [k, v] : a.params()) {
    INFO(k);
    CHECK(at::equal(v, b.param(k)));
  }
}

// Runs quantize_model uninterrupted, then interrupted by `stop_at(phase, layer index)` and resumed.
void check_ptq_resume(PtqOptions o, const std::string& name, const std::string& stop_phase, int64_t stop_layer) {
  const at::Tensor calib = mctest::random_tokens(16, 24, 40, 7);
  auto ref_model = mctest::tiny_llama(3, shape());
  const PtqResult ref = quantize_model(*ref_model, calib, o);

  const std::string dir = journal_dir(name);
  const std::string id = "{\"test\": \"" + name + "\"}";
  {
    auto m = mctest::tiny_llama(3, shape());
    BlockJournal j(dir, id);
    PtqOptions oi = o;
    oi.journal = &j;
    oi.progress = [&](const std::string& phase, const LayerInfo&, int64_t i, int64_t) {
      if (phase == stop_phase && i == stop_layer) throw Stop();
    };
    REQUIRE_THROWS_AS(quantize_model(*m, calib, oi), Stop);
  }
  auto m = mctest::tiny_llama(3, shape());
  BlockJournal j(dir, id);
  CHECK(j.resumed());
  PtqOptions oi = o;
  oi.journal = &j;
  std::vector<int> handed;  // blocks given to after_block, restored ones included, in order
  oi.after_block = [&](int k, PtqResult&) { handed.push_back(k); };
  const PtqResult res = quantize_model(*m, calib, oi);
  CHECK(handed == std::vector<int>{0, 1, 2, 3});
  REQUIRE(res.quantized.size() == ref.quantized.size());
  for (const auto& [key, q] : ref.quantized) {
    INFO(key);
    const QuantResult& r = res.quantized.at(key);
    CHECK(at::equal(q.codes, r.codes));
    CHECK(at::equal(q.scales, r.scales));
    CHECK(at::equal(q.zeros, r.zeros));
    CHECK(q.spec.bits == r.spec.bits);
  }
  same_rows(ref.layers, res.layers);
  CHECK(ref.act_bits == res.act_bits);
  CHECK(ref.act_format == res.act_format);
  CHECK(ref.settings == res.settings);
  REQUIRE(res.kv_scales.size() == ref.kv_scales.size());
  for (const auto& [block, kv] : ref.kv_scales) {
    INFO("KV scales of block " << block);
    CHECK(at::equal(kv.first, res.kv_scales.at(block).first));
    CHECK(at::equal(kv.second, res.kv_scales.at(block).second));
    CHECK(at::equal(m->kv_quant().at(block).v, kv.second));
  }
  REQUIRE(res.adapters.size() == ref.adapters.size());
  for (const auto& [layer, a] : ref.adapters) {
    INFO(layer);
    CHECK(at::equal(a.A, res.adapters.at(layer).A));
    CHECK(at::equal(a.B, res.adapters.at(layer).B));
  }
  same_model(*ref_model, *m);
  j.remove();
  CHECK_FALSE(fs::exists(dir));
}

}  // namespace

TEST_CASE("resume: GPTQ stopped in the middle of block 2 ends with the uninterrupted codes", "[journal]") {
  PtqOptions o;
  o.method = "gptq";
  // 7 layers per block: layer 17 is the third of block 2 (blocks 0 and 1 journaled).
  check_ptq_resume(o, "gptq", "quantize", 17);
}

TEST_CASE("journal quant entries: codes up to 4 bits two a byte, wider or odd counts a byte each; all read back",
          "[journal]") {
  for (const int bits : {2, 3, 4, 8}) {
    for (const int64_t cols : {6, 7}) {
      CAPTURE(bits, cols);
      QuantSpec sp;
      sp.bits = bits, sp.group_size = 0;
      const QuantResult q = rtn_quantize(mctest::randn({3, cols}, 60 + bits), sp);
      std::map<std::string, at::Tensor> t;
      journal_put_quant(t, "q:w", q);
      const bool packed = bits <= 4 && (3 * cols) % 2 == 0;
      CHECK(t.count("q:w.codes4") == size_t(packed));
      CHECK(t.count("q:w.codes") == size_t(!packed));
      if (packed) {
        CHECK(t.at("q:w.codes4").numel() == 3 * cols / 2);
        // Hand-decoded: element 2i in the low nibble of byte i, 2i+1 in the high one.
        const at::Tensor flat = q.codes.reshape({-1});
        CHECK(t.at("q:w.codes4")[1].item<int>() == (flat[2].item<int>() | (flat[3].item<int>() << 4)));
      }
      const QuantResult r = journal_get_quant(t, "q:w");
      CHECK(r.codes.equal(q.codes));
      CHECK(r.scales.equal(q.scales));
      CHECK(r.spec.bits == bits);
    }
  }
}

TEST_CASE("resume: AWQ (scales folded into the norms) resumed after block 1", "[journal]") {
  PtqOptions o;
  o.method = "awq";
  check_ptq_resume(o, "awq", "quantize", 15);
}

TEST_CASE("resume: AutoRound (seeded mini-batches) tunes the resumed block as the uninterrupted run did",
          "[journal][autoround]") {
  PtqOptions o;
  o.method = "autoround";
  o.spec.bits = 3;
  o.autoround_iters = 20;
  o.autoround_batch = 4;
  check_ptq_resume(o, "autoround", "quantize", 17);
}

TEST_CASE("resume: KV-cache scales of the restored blocks come back to the result and the model",
          "[journal][kv]") {
  PtqOptions o;
  o.method = "gptq";
  o.kv_bits = 8, o.kv_format = "fp8";
  check_ptq_resume(o, "gptq_kv", "quantize", 17);
}

TEST_CASE("resume: GPTQ + EoRA: the adapters, and the corrected weights later blocks saw, come back", "[journal][eora]") {
  PtqOptions o;
  o.method = "gptq";
  o.spec.bits = 3;
  o.eora_rank = 4;
  check_ptq_resume(o, "gptq_eora", "quantize", 17);
}

TEST_CASE("resume: SmoothQuant W8A8 keeps its activation quantization across the restart", "[journal]") {
  PtqOptions o;
  o.method = "smoothquant";
  o.spec.bits = 8, o.spec.group_size = 0;
  check_ptq_resume(o, "smoothquant", "quantize", 10);
}

TEST_CASE("resume: GPTQ W4 with NVFP4 activations: the restored blocks' layers read NVFP4 inputs again",
          "[journal][act]") {
  PtqOptions o;
  o.method = "gptq";
  o.spec.bits = 4, o.spec.group_size = 16;
  o.quantize_activations = true, o.act_format = ActFormat::nvfp4, o.act_bits = 4;
  check_ptq_resume(o, "gptq_nvfp4_act", "quantize", 17);
}

TEST_CASE("resume: mixed precision stopped during the sensitivity scan and during quantization", "[journal]") {
  PtqOptions o;
  o.method = "gptq";
  o.target_bpw = 3.5;
  // Scan: 7 layers x 3 candidates per block; layer 50 lies in block 2.
  check_ptq_resume(o, "mixed_scan", "scan", 50);
  check_ptq_resume(o, "mixed_quant", "quantize", 24);
}

TEST_CASE("resume: a journal with another identity is discarded", "[journal]") {
  const std::string dir = journal_dir("identity");
  {
    BlockJournal j(dir, "{\"a\": 1}");
    j.save("quantize", 0, {{"x", at::ones({2})}}, {}, {at::zeros({1, 3})});
    CHECK(j.finished("quantize") == 1);
  }
  BlockJournal same(dir, "{\"a\": 1}");
  CHECK(same.resumed());
  CHECK(same.finished("quantize") == 1);
  CHECK(at::equal(same.hidden("quantize", at::kCPU)[0], at::zeros({1, 3})));
  BlockJournal other(dir, "{\"a\": 2}");
  CHECK_FALSE(other.resumed());
  CHECK(other.finished("quantize") == 0);
  other.remove();
}

TEST_CASE("resume: SparseGPT 2:4 + int4, and 50% with OWL (its scan journaled too), resume exactly", "[journal]") {
  for (const std::string dist : {"uniform", "owl"}) {
    PruneOptions o;
    o.method = "sparsegpt";
    o.sparsity = 0.5;
    o.distribution = dist;
    if (dist == "uniform") o.prune_n = 2, o.prune_m = 4, o.quant = QuantSpec{};
    const at::Tensor calib = mctest::random_tokens(16, 24, 40, 9);
    auto ref_model = mctest::tiny_llama(5, shape());
    const PruneResult ref = prune_model(*ref_model, calib, o);
    const std::string dir = journal_dir("prune_" + dist);
    {
      auto m = mctest::tiny_llama(5, shape());
      BlockJournal j(dir, "{}");
      PruneOptions oi = o;
      oi.journal = &j;
      oi.progress = [](const std::string&, const LayerInfo&, int64_t i, int64_t) {
        if (i == 20) throw Stop();
      };
      REQUIRE_THROWS_AS(prune_model(*m, calib, oi), Stop);
    }
    auto m = mctest::tiny_llama(5, shape());
    BlockJournal j(dir, "{}");
    PruneOptions oi = o;
    oi.journal = &j;
    const PruneResult res = prune_model(*m, calib, oi);
    REQUIRE(res.pruned.size() == ref.pruned.size());
    for (const auto& [key, p] : ref.pruned) {
      INFO(dist << " " << key);
      CHECK(at::equal(p.weight, res.pruned.at(key).weight));
      REQUIRE(p.quant.has_value() == res.pruned.at(key).quant.has_value());
      if (p.quant) CHECK(at::equal(p.quant->codes, res.pruned.at(key).quant->codes));
    }
    same_rows(ref.layers, res.layers);
    CHECK(ref.sparsity == res.sparsity);
    CHECK(ref.settings == res.settings);
    same_model(*ref_model, *m);
    j.remove();
  }
}

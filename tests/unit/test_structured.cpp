// Structured pruning (prune/structured.h). Oracles: parts that contribute nothing (zeroed w2 columns,
// zeroed wo columns of a head or KV group, a block whose wo and w2 are zero and so computes the
// identity) are exactly the ones the importance scores rank last, and removing them must leave the
// logits unchanged; with nothing removed the weights are the input's.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "mcompress/error.h"
#include "mcompress/model.h"
#include "mcompress/prune/structured.h"
#include "test_utils.h"
#include "tiny_llama.h"

using namespace mc;

namespace {

// Removing terms that are exactly zero changes only the summation order of the remaining float32
// products: differences of a few ulps of logits of magnitude ~10 (tiny_llama's 0.5-scaled weights).
constexpr double kReorderTol = 1e-4;

at::Tensor tokens(int64_t n, int64_t len, int64_t vocab, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randint(vocab, {n, len}, gen, at::kLong);
}

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

std::string name(const LlamaModel& m, const char* role, int64_t k = -1) {
  return llama_param_name(m.config().names, role, k);
}

// Zeros columns [c0, c0 + n) of a 2-D parameter.
void zero_cols(Model& m, const std::string& key, int64_t c0, int64_t n) {
  at::Tensor w = m.param(key).clone();
  w.narrow(1, c0, n).zero_();
  m.set_param(key, w);
}

void check_error(Model& m, const at::Tensor& calib, const StructuredOptions& o, const std::string& part) {
  try {
    prune_structured(m, calib, o);
    FAIL("no error for " << describe(o));
  } catch (const InputError& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find(part) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("structured: nothing removed gives the input weights and logits", "[structured]") {
  auto m = mctest::tiny_llama(1, {16, 32, 2, 4, 2});
  const at::Tensor x = tokens(2, 12, 20, 5);
  StructuredResult r = prune_structured(*m, at::Tensor(), {});
  CHECK(r.config.json() == m->config().json());
  CHECK(r.params_before == r.params_after);
  CHECK(r.removed.empty());
  for (const auto& [k, t] : r.weights) CHECK(at::equal(t, m->param(k)));
  auto p = make_structured_model(r);
  CHECK(at::equal(p->forward(x), m->forward(x)));
}

TEST_CASE("structured: FFN channels with zero down-projection columns are the ones removed", "[structured]") {
  for (int64_t kv : {1, 2}) {
    auto m = mctest::tiny_llama(2, {16, 32, 2, 4, kv});
    for (int64_t k = 0; k < 2; ++k) zero_cols(*m, name(*m, "w2", k), 4 + 10 * k, 8);  // 8 of 32 per block
    const at::Tensor x = tokens(3, 16, 20, 6);
    const at::Tensor want = m->forward(x);
    StructuredOptions o;
    o.ffn = 0.25;
    StructuredResult r = prune_structured(*m, tokens(4, 16, 20, 7), o);
    CHECK(r.config.hidden_dim == 24);
    CHECK(r.weights.at(name(*m, "w1", 1)).sizes() == at::IntArrayRef({24, 16}));
    CHECK(r.weights.at(name(*m, "w3", 0)).sizes() == at::IntArrayRef({24, 16}));
    CHECK(r.weights.at(name(*m, "w2", 0)).sizes() == at::IntArrayRef({16, 24}));
    CHECK(r.removed.size() == 2);
    CHECK(r.params_after == r.params_before - 2 * 3 * 8 * 16);
    auto p = make_structured_model(r);
    CHECK(max_diff(p->forward(x), want) < kReorderTol);
  }
}

TEST_CASE("structured: heads (no GQA) and KV groups (GQA) with zero wo columns are the ones removed",
          "[structured]") {
  for (int64_t kv : {4, 2}) {  // 4: single heads; 2: groups of 2 query heads
    auto m = mctest::tiny_llama(3, {16, 32, 2, 4, kv});
    const int64_t hd = 4, rep = 4 / kv;
    // Block 0 loses unit 1, block 1 unit 0 (a head, or a whole group's query heads).
    zero_cols(*m, name(*m, "wo", 0), 1 * rep * hd, rep * hd);
    zero_cols(*m, name(*m, "wo", 1), 0, rep * hd);
    const at::Tensor x = tokens(3, 16, 20, 8);
    const at::Tensor want = m->forward(x);
    StructuredOptions o;
    o.heads = kv == 4 ? 0.25 : 0.5;  // one unit of 4 / of 2
    StructuredResult r = prune_structured(*m, tokens(4, 16, 20, 9), o);
    CHECK(r.config.n_kv_heads == kv - 1);
    CHECK(r.config.n_heads == 4 - rep);
    CHECK(r.config.head_dim == hd);
    CHECK(r.weights.at(name(*m, "wq", 0)).sizes() == at::IntArrayRef({(4 - rep) * hd, 16}));
    CHECK(r.weights.at(name(*m, "wk", 1)).sizes() == at::IntArrayRef({(kv - 1) * hd, 16}));
    CHECK(r.weights.at(name(*m, "wv", 1)).sizes() == at::IntArrayRef({(kv - 1) * hd, 16}));
    CHECK(r.weights.at(name(*m, "wo", 1)).sizes() == at::IntArrayRef({16, (4 - rep) * hd}));
    REQUIRE(r.removed.size() == 2);
    CHECK(r.removed[0].find(kv == 4 ? "heads 1 of 4" : "KV groups 1 of 2") != std::string::npos);
    CHECK(r.removed[1].find(kv == 4 ? "heads 0 of 4" : "KV groups 0 of 2") != std::string::npos);
    auto p = make_structured_model(r);
    CHECK(max_diff(p->forward(x), want) < kReorderTol);
    // The same model with cached decoding (KV cache shapes from the new config).
    KVCache cache;
    CHECK(max_diff(p->forward_cached(x, cache), want) < kReorderTol);
  }
}

TEST_CASE("structured: an identity block is removed first and the rest renumbered", "[structured]") {
  auto m = mctest::tiny_llama(4, {16, 32, 4, 4, 2});
  // Block 2 with zero wo and w2 adds nothing to the residual: its output is its input (influence 0).
  zero_cols(*m, name(*m, "wo", 2), 0, 16);
  zero_cols(*m, name(*m, "w2", 2), 0, 32);
  const at::Tensor x = tokens(2, 16, 20, 10);
  const at::Tensor want = m->forward(x);
  StructuredOptions o;
  o.blocks = 1;
  o.batch = 3;  // 5 sequences: a short last batch
  StructuredResult r = prune_structured(*m, tokens(5, 16, 20, 11), o);
  REQUIRE(r.block_influence.size() == 4);
  CHECK(std::abs(r.block_influence[2]) < 1e-6);
  REQUIRE(r.removed.size() == 1);
  CHECK(r.removed[0].find("block 2") == 0);
  CHECK(r.config.n_layers == 3);
  CHECK(r.weights.count(name(*m, "wq", 3)) == 0);
  for (const char* role : {"attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"}) {
    CHECK(at::equal(r.weights.at(name(*m, role, 0)), m->param(name(*m, role, 0))));
    CHECK(at::equal(r.weights.at(name(*m, role, 1)), m->param(name(*m, role, 1))));
    CHECK(at::equal(r.weights.at(name(*m, role, 2)), m->param(name(*m, role, 3))));  // old 3 -> new 2
  }
  auto p = make_structured_model(r);
  CHECK(p->num_blocks() == 3);
  CHECK(max_diff(p->forward(x), want) < kReorderTol);
}

TEST_CASE("structured: everything at once saves, reloads and runs", "[structured]") {
  mctest::TempDir dir;
  mctest::TinyLlamaShape s{32, 64, 3, 4, 2};
  s.tied = false;
  auto m = mctest::tiny_llama(5, s);
  StructuredOptions o = parse_structured_options("ffn=0.5,heads=0.5,blocks=1");
  StructuredResult r = prune_structured(*m, tokens(4, 16, 20, 12), o);
  CHECK(r.config.hidden_dim == 32);
  CHECK(r.config.n_heads == 2);
  CHECK(r.config.n_kv_heads == 1);
  CHECK(r.config.n_layers == 2);
  CHECK(r.config.dim == 32);
  CHECK(r.params_after < r.params_before);
  CHECK(r.weights.count(name(*m, "output")) == 1);
  auto p = make_structured_model(r);
  const at::Tensor x = tokens(2, 16, 20, 13);
  const at::Tensor y = p->forward(x);
  CHECK(at::isfinite(y).all().item<bool>());
  save_model(*p, dir.file("p.safetensors"));
  auto back = load_model(dir.file("p.safetensors"));
  CHECK(at::equal(back->forward(x), y));
}

TEST_CASE("structured: bad options are input errors", "[structured]") {
  auto m = mctest::tiny_llama(6, {16, 32, 2, 2, 1});  // one KV group
  const at::Tensor calib = tokens(2, 8, 20, 14);
  StructuredOptions o;
  o.heads = 0.5;
  check_error(*m, calib, o, "pruning heads below one per KV group");
  o = {}, o.ffn = 1.0;
  check_error(*m, calib, o, "outside [0, 1)");
  o = {}, o.ffn = -0.1;
  check_error(*m, calib, o, "outside [0, 1)");
  o = {}, o.heads = 1.0;
  check_error(*m, calib, o, "outside [0, 1)");
  o = {}, o.blocks = 2;
  check_error(*m, calib, o, "blocks 2");
  o = {}, o.ffn = 0.5;
  check_error(*m, at::Tensor(), o, "calibration tokens");
  auto m4 = mctest::tiny_llama(6, {16, 32, 2, 4, 4});  // 4 single heads
  o = {}, o.heads = 0.9;
  check_error(*m4, calib, o, "pruning heads below one per KV group");
  o.heads = 0.6;  // removes 2 of 4: fine
  CHECK(prune_structured(*m4, calib, o).config.n_heads == 2);
  CHECK_THROWS_AS(parse_structured_options("ffn=abc"), InputError);
  CHECK_THROWS_AS(parse_structured_options("ffn=0.2x"), InputError);
  CHECK_THROWS_AS(parse_structured_options("width=0.5"), InputError);
  StructuredOptions p = parse_structured_options("heads=0.25,blocks=2,ffn=0.5");
  CHECK(p.ffn == 0.5);
  CHECK(p.heads == 0.25);
  CHECK(p.blocks == 2);
}

TEST_CASE("structured: every=2 keeps blocks 0, 2, 4 of 5 (layer-dropping student)", "[structured]") {
  auto m = mctest::tiny_llama(7, {16, 32, 5, 4, 2});
  const at::Tensor x = tokens(2, 12, 20, 15);
  StructuredOptions o = parse_structured_options("every=2");
  CHECK(o.keep_every == 2);
  CHECK(describe(o) == "ffn 0%, heads 0%, every 2nd block kept");
  StructuredResult r = prune_structured(*m, at::Tensor(), o);  // nothing ranked: no calibration needed
  CHECK(r.config.n_layers == 3);
  LlamaConfig want_config = m->config();
  want_config.n_layers = 3;
  CHECK(r.config.json() == want_config.json());
  REQUIRE(r.removed.size() == 2);
  CHECK(r.removed[0].find("block 1 ") == 0);
  CHECK(r.removed[1].find("block 3 ") == 0);
  CHECK(r.settings.at("blocks") == "5 -> 3 (every 2nd kept: 0,2,4)");
  CHECK(r.weights.count(name(*m, "wq", 3)) == 0);
  for (const char* role : {"attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"})
    for (int64_t k = 0; k < 3; ++k) CHECK(at::equal(r.weights.at(name(*m, role, k)), m->param(name(*m, role, 2 * k))));
  CHECK(at::equal(r.weights.at(name(*m, "embed")), m->param(name(*m, "embed"))));
  CHECK(at::equal(r.weights.at(name(*m, "final_norm")), m->param(name(*m, "final_norm"))));
  auto p = make_structured_model(r);
  CHECK(p->num_blocks() == 3);
  // Oracle: the original model run through blocks 0, 2, 4 only.
  at::Tensor h = m->embed(x);
  for (int k : {0, 2, 4}) h = m->run_block(k, h);
  const at::Tensor want = m->head(h);
  CHECK(max_diff(p->forward(x), want) == 0.0);
  KVCache cache;
  CHECK(max_diff(p->forward_cached(x, cache), want) < kReorderTol);
}

TEST_CASE("structured: every combines with ffn and heads; every=1 keeps all, every=n keeps block 0",
          "[structured]") {
  auto m = mctest::tiny_llama(8, {16, 32, 5, 4, 2});
  const at::Tensor calib = tokens(3, 16, 20, 16);
  StructuredOptions o = parse_structured_options("every=3,ffn=0.25,heads=0.5");
  StructuredResult r = prune_structured(*m, calib, o);
  CHECK(r.config.n_layers == 2);  // blocks 0 and 3
  CHECK(r.config.hidden_dim == 24);
  CHECK(r.config.n_kv_heads == 1);
  CHECK(r.config.n_heads == 2);
  CHECK(r.removed.size() == 3 + 2 + 2);  // blocks 1, 2, 4; FFN and KV groups of the 2 kept blocks
  CHECK(r.removed[0].find("block 1 ") == 0);
  CHECK(r.weights.at(name(*m, "w2", 1)).sizes() == at::IntArrayRef({16, 24}));
  auto p = make_structured_model(r);
  CHECK(at::isfinite(p->forward(calib)).all().item<bool>());

  o = parse_structured_options("every=1");
  r = prune_structured(*m, at::Tensor(), o);
  CHECK(r.config.n_layers == 5);
  CHECK(r.removed.empty());
  CHECK(r.params_after == r.params_before);
  o.keep_every = 5;
  r = prune_structured(*m, at::Tensor(), o);
  CHECK(r.config.n_layers == 1);
  CHECK(r.removed.size() == 4);

  o = {}, o.keep_every = 6;
  check_error(*m, calib, o, "every 6 is outside [1, 5]");
  o.keep_every = -1;
  check_error(*m, calib, o, "outside [1, 5]");
  o = {}, o.keep_every = 2, o.blocks = 1;
  check_error(*m, calib, o, "excludes blocks");
  CHECK_THROWS_AS(parse_structured_options("every=2,blocks=1"), InputError);
  CHECK_THROWS_AS(parse_structured_options("every=x"), InputError);
  try {
    parse_structured_options("layers=2");
    FAIL("no error");
  } catch (const InputError& e) {
    CHECK(std::string(e.what()).find("every=K") != std::string::npos);
  }
}

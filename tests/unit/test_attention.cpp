// The chunked inference attention (causal_attention) against its whole-tensor reference (causal_attention_ref)
// on random inputs: grouped-query heads, several chunks of query rows, sliding windows, Gemma 2's softcap and
// KV-cache steps (fewer queries than keys); and through LlamaModel, the fast forward against the reference path
// that an attention observer forces, with a KV cache.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "mcompress/models/attention.h"
#include "mcompress/models/llama.h"
#include "test_utils.h"
#include "tiny_llama.h"

namespace {

// The two paths sum q.k over hd and p.v over up to 300 keys in a different order (float32 rounding ~1e-7 per op):
// attention outputs measured below 5e-7 relative to max |out|, the tiny llama's logits below 4e-6.
constexpr double kFastTol = 1e-5;

struct Case {
  int64_t B, H, HKV, T, S, hd, window;
  double softcap;
};

double rel_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>() / b.abs().max().item<double>();
}

}  // namespace

TEST_CASE("attention: the chunked path equals the reference (GQA, windows, softcap, KV-cache steps)", "[attention]") {
  at::NoGradGuard no_grad;
  const Case cases[] = {
      {2, 6, 2, 37, 37, 16, 0, 0},     // one chunk, GQA 3:1
      {1, 8, 2, 300, 300, 16, 0, 0},   // 6 chunks of 54 query rows
      {1, 8, 2, 300, 300, 16, 70, 0},  // sliding window shorter than the sequence, across chunks
      {2, 4, 2, 300, 300, 8, 0, 2.0},  // Gemma 2 softcap (scores reach several times the cap)
      {2, 4, 4, 7, 40, 16, 0, 0},      // KV cache: 7 new positions after 33 cached, no grouping
      {1, 8, 2, 1, 200, 16, 50, 1.5},  // one decoded token with window and softcap
      {1, 8, 1, 120, 250, 16, 64, 0},  // multi-query, a cached prefix, window
  };
  at::Generator gen = at::detail::createCPUGenerator(5);
  for (const Case& c : cases) {
    CAPTURE(c.B, c.H, c.HKV, c.T, c.S, c.hd, c.window, c.softcap);
    const at::Tensor q = at::randn({c.B, c.H, c.T, c.hd}, gen);
    const at::Tensor k = at::randn({c.B, c.HKV, c.S, c.hd}, gen) * 2.0;
    // As LlamaModel passes them: values a transposed view of [B, S, HKV, hd].
    const at::Tensor v = at::randn({c.B, c.S, c.HKV, c.hd}, gen).transpose(1, 2);
    mc::AttentionParams p;
    p.scale = 1.0 / std::sqrt(double(c.hd)), p.window = c.window, p.softcap = c.softcap;
    const at::Tensor want = mc::causal_attention_ref(q, k, v, p);
    const at::Tensor got = mc::causal_attention(q, k, v, p);
    REQUIRE(got.sizes() == want.sizes());
    CHECK(rel_diff(got, want) < kFastTol);
  }
}

TEST_CASE("attention: with grad mode on, the reference runs (the same tensor, differentiable)", "[attention]") {
  at::Generator gen = at::detail::createCPUGenerator(6);
  const at::Tensor q = at::randn({1, 4, 9, 8}, gen).requires_grad_(), k = at::randn({1, 2, 9, 8}, gen);
  const at::Tensor v = at::randn({1, 2, 9, 8}, gen);
  mc::AttentionParams p;
  p.scale = 0.3;
  const at::Tensor got = mc::causal_attention(q, k, v, p);
  CHECK(got.requires_grad());
  CHECK(at::equal(got, mc::causal_attention_ref(q, k, v, p)));
}

TEST_CASE("attention: a llama forward and KV-cache steps on the fast path equal the observer's reference path",
          "[attention][llama]") {
  at::NoGradGuard no_grad;
  mctest::TinyLlamaShape s;
  s.dim = 32, s.heads = 4, s.kv_heads = 2, s.layers = 2;
  auto m = mctest::tiny_llama(3, s);
  const at::Tensor t = mctest::random_tokens(2, 20, s.vocab, 4);
  const at::Tensor fast = m->forward(t);
  int seen = 0;
  m->set_attention_observer([&](int, const at::Tensor&) { ++seen; });
  const at::Tensor ref = m->forward(t);
  CHECK(seen == 2);
  m->set_attention_observer({});
  CHECK(rel_diff(fast, ref) < kFastTol);
  mc::KVCache cache;
  const at::Tensor a = m->forward_cached(t.narrow(1, 0, 12), cache);
  const at::Tensor b = m->forward_cached(t.narrow(1, 12, 1), cache);
  const at::Tensor c = m->forward_cached(t.narrow(1, 13, 7), cache);
  CHECK(rel_diff(at::cat({a, b, c}, 1), ref) < kFastTol);
}

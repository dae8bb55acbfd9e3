// A small random llama for tests of passes over whole models (not a reference: tests compare it
// with itself under transformations, or passes against each other).
#pragma once
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <map>
#include <memory>
#include <string>

#include "mcompress/io/llama2c.h"
#include "mcompress/models/llama.h"
#include "mcompress/torch_bridge.h"

namespace mctest {

struct TinyLlamaShape {
  int64_t dim = 16, hidden = 32, layers = 2, heads = 2, kv_heads = 1, vocab = 20, seq = 64;
  bool tied = true;
};

// Seeded random token ids [n, len] below vocab.
inline at::Tensor random_tokens(int64_t n, int64_t len, int64_t vocab, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randint(vocab, {n, len}, gen, at::kLong);
}

inline std::unique_ptr<mc::LlamaModel> tiny_llama(uint64_t seed, const TinyLlamaShape& s = {}) {
  mc::LlamaConfig c;
  c.dim = s.dim, c.hidden_dim = s.hidden, c.n_layers = s.layers, c.n_heads = s.heads, c.n_kv_heads = s.kv_heads;
  c.head_dim = s.dim / s.heads, c.vocab_size = s.vocab, c.max_seq_len = s.seq, c.tied = s.tied;
  at::manual_seed(seed);  // test-only
  std::map<std::string, mc::HostTensor> w;
  auto add = [&](const std::string& role, int64_t blk, std::vector<int64_t> shape, bool norm) {
    const std::string n = mc::llama_param_name(c.names, role, blk);
    at::Tensor t = norm ? at::ones(shape) + 0.1 * at::randn(shape) : at::randn(shape) * 0.5;
    w[n] = mc::from_torch(n, t);
  };
  const int64_t hd = s.dim / s.heads;
  add("embed", -1, {s.vocab, s.dim}, false);
  for (int64_t i = 0; i < s.layers; ++i) {
    add("attn_norm", i, {s.dim}, true), add("ffn_norm", i, {s.dim}, true);
    add("wq", i, {s.dim, s.dim}, false), add("wk", i, {s.kv_heads * hd, s.dim}, false);
    add("wv", i, {s.kv_heads * hd, s.dim}, false), add("wo", i, {s.dim, s.dim}, false);
    add("w1", i, {s.hidden, s.dim}, false), add("w3", i, {s.hidden, s.dim}, false);
    add("w2", i, {s.dim, s.hidden}, false);
  }
  add("final_norm", -1, {s.dim}, true);
  if (!s.tied) add("output", -1, {s.vocab, s.dim}, false);
  return std::make_unique<mc::LlamaModel>(c, w);
}

// A llama2.c tokenizer of `vocab` tokens at `path` (ids 0-2 empty, 3-5 byte tokens <0x03>.., then " t6", ...,
// scores falling with the id): enough for a GGUF export's tokenizer.ggml.* keys.
inline std::string write_tiny_tokenizer(const std::string& path, int64_t vocab) {
  mc::Llama2cTokenizer t;
  t.max_token_length = 8;
  for (int64_t i = 0; i < vocab; ++i) {
    t.vocab.push_back(i < 3 ? "" : (i < 6 ? "<0x0" + std::to_string(i) + ">" : " t" + std::to_string(i)));
    t.scores.push_back(-float(i));
  }
  mc::write_llama2c_tokenizer(path, t);
  return path;
}

}  // namespace mctest

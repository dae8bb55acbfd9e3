// Sampling text from a language model with its KV cache: temperature and nucleus (top-p) sampling as
// llama2.c run.c does, from a generator the caller seeds (no global RNG is used or changed).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <random>
#include <vector>

namespace mc {

class Model;

class Sampler {
 public:
  explicit Sampler(uint64_t seed) : rng_(seed) {}
  // logits [vocab]: argmax when temperature == 0; else softmax(logits / temperature), restricted to the
  // smallest set of most likely tokens whose probability exceeds top_p when 0 < top_p < 1.
  int64_t sample(const at::Tensor& logits, double temperature, double top_p);
  double uniform();  // [0, 1) from the top 53 bits: the same sequence on every platform

 private:
  std::mt19937_64 rng_;
};

struct GenerateOptions {
  int64_t max_tokens = 100;
  double temperature = 0.8, top_p = 0.9;
  uint64_t seed = 42;
  std::vector<int32_t> stop_ids;  // generation ends (without emitting) at any of these
};

// Continues `prompt` (ids, BOS included when the model expects one); returns the new ids. Stops at a stop
// id, after max_tokens, or when the model's context is full. on_token (may be empty) sees each new id.
std::vector<int32_t> generate(Model& model, const std::vector<int32_t>& prompt, const GenerateOptions& opts,
                              const std::function<void(int32_t)>& on_token = {});

}  // namespace mc

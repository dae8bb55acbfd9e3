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
  // What sample() does after its softmax: draws from the probabilities probs[0..n) (double, summing to
  // about 1), restricted to the top_p nucleus when 0 < top_p < 1. Same draws, same result as sample()
  // on logits whose softmax(logits / temperature) is probs.
  int64_t sample_probs(const double* probs, int64_t n, double top_p);
  double uniform();  // [0, 1) from the top 53 bits: the same sequence on every platform

 private:
  std::mt19937_64 rng_;
  std::vector<int64_t> ids_;  // scratch for top-p
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

// Many sequences sampled from the model alone (teacher data for data-free distillation), decoded
// `batch` at a time with one KV cache per batch.
struct SampleBatchOptions {
  int64_t sequences = 64;           // how many sequences
  int64_t length = 256;             // tokens per sequence including start_id (capped at the model's max_seq_len)
  int64_t batch = 32;               // sequences decoded together
  double temperature = 1.0, top_p = 1.0;
  uint64_t seed = 0;
  int32_t start_id = 1;             // every sequence starts with this token (BOS)
  std::vector<int32_t> stop_ids;    // a sequence ends (without emitting it) at any of these
};

// Seed of sequence i's Sampler: output i (from 0) of SplitMix64 seeded with `seed`.
uint64_t sequence_seed(uint64_t seed, int64_t i);

// Samples o.sequences sequences; returns each one's tokens, start_id first (at most o.length tokens).
// Sequence i draws from its own Sampler(sequence_seed(o.seed, i)) exactly as
//   generate(model, {start_id}, {max_tokens = length - 1, temperature, top_p, sequence_seed(seed, i), stop_ids})
// does; with batch 1 the result is that, token for token. With batch > 1 the model sees [batch, 1] inputs,
// whose logits may differ from the batch-1 ones in the last float bits (the matmul kernels block by batch
// size), so a draw that lands on a boundary between tokens can differ; greedy decoding (temperature 0)
// differs only where two logits tie within rounding. progress (may be empty) sees (done, total) after
// each batch.
std::vector<std::vector<int32_t>> sample_sequences(Model& model, const SampleBatchOptions& o,
                                                   const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace mc

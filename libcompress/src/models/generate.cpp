#include "mcompress/generate.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "mcompress/error.h"
#include "mcompress/model.h"

namespace mc {

namespace {

// Index of the largest value, the first one on ties; a NaN counts as the largest (as at::argmax).
int64_t argmax_row(const double* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n && !std::isnan(x[best]); ++i)
    if (x[i] > x[best] || std::isnan(x[i])) best = i;
  return best;
}

// softmax(logits / temperature) of each row of double logits [rows, vocab] on the CPU. One op sequence
// for Sampler::sample (one row) and sample_sequences (a batch): the kernel treats rows alike, so a row's
// probabilities do not depend on the other rows.
at::Tensor softmax_rows(const at::Tensor& logits, double temperature) {
  return at::softmax(logits / temperature, 1).contiguous();
}

}  // namespace

double Sampler::uniform() { return double(rng_() >> 11) * (1.0 / 9007199254740992.0); }

int64_t Sampler::sample(const at::Tensor& logits, double temperature, double top_p) {
  at::Tensor l = logits.detach().to(at::kCPU, at::kDouble).contiguous().view(-1);
  const int64_t n = l.numel();
  if (n == 0) fail<Error>("generate", "empty logits");
  if (temperature <= 0) return argmax_row(l.data_ptr<double>(), n);
  at::Tensor probs = softmax_rows(l.view({1, n}), temperature);
  return sample_probs(probs.data_ptr<double>(), n, top_p);
}

int64_t Sampler::sample_probs(const double* p, int64_t n, double top_p) {
  if (n <= 0) fail<Error>("generate", "empty logits");
  if (!(top_p > 0 && top_p < 1)) {  // run.c sample_mult: the inverse CDF over all tokens
    const double r = uniform();
    double cdf = 0;
    for (int64_t i = 0; i < n; ++i) {
      cdf += p[i];
      if (r < cdf) return i;
    }
    return n - 1;  // rounding
  }
  // run.c sample_topp: most likely first, keep tokens until the cumulative probability exceeds top_p.
  // Tokens below (1 - top_p) / (n - 1) hold less than 1 - top_p together, so the nucleus is found among
  // the others (sorted, they are the head of the whole sorted list, in the same order: the sort is stable);
  // only if rounding keeps their sum at or below top_p are all tokens sorted.
  auto by_prob = [p](int64_t a, int64_t b) { return p[a] > p[b]; };
  auto nucleus = [&](double& cum) {
    std::stable_sort(ids_.begin(), ids_.end(), by_prob);
    cum = 0;
    for (size_t i = 0; i < ids_.size(); ++i) {
      cum += p[ids_[i]];
      if (cum > top_p) return i + 1;
    }
    return size_t(0);
  };
  const double cutoff = n > 1 ? (1 - top_p) / double(n - 1) : 0.0;
  ids_.clear();
  for (int64_t i = 0; i < n; ++i)
    if (p[i] >= cutoff) ids_.push_back(i);
  double cum = 0;
  size_t keep = nucleus(cum);
  if (keep == 0 && int64_t(ids_.size()) < n) {
    ids_.resize(size_t(n));
    std::iota(ids_.begin(), ids_.end(), int64_t(0));
    keep = nucleus(cum);
  }
  if (keep == 0) keep = ids_.size();  // the whole vocabulary, its sum (cum) as the total
  const double r = uniform() * cum;
  double cdf = 0;
  for (size_t i = 0; i < keep; ++i) {
    cdf += p[ids_[i]];
    if (r < cdf) return ids_[i];
  }
  return ids_[keep - 1];  // rounding
}

std::vector<int32_t> generate(Model& model, const std::vector<int32_t>& prompt, const GenerateOptions& opts,
                              const std::function<void(int32_t)>& on_token) {
  if (!model.is_language_model()) fail("generate", "model is a ", model.arch(), ", not a language model");
  if (prompt.empty()) fail("generate", "empty prompt (and no BOS token to start from)");
  if (opts.max_tokens < 0) fail("generate", "max tokens ", opts.max_tokens, " must be >= 0");
  if (opts.temperature < 0) fail("generate", "temperature ", opts.temperature, " must be >= 0");
  at::NoGradGuard no_grad;
  KVCache cache;
  const int64_t limit = model.max_seq_len() > 0 ? model.max_seq_len() : int64_t(prompt.size()) + opts.max_tokens;
  if (int64_t(prompt.size()) > limit)
    fail("generate", "prompt of ", prompt.size(), " tokens exceeds the model's context of ", limit);
  cache.capacity = std::min(limit, int64_t(prompt.size()) + opts.max_tokens);  // not the whole context
  Sampler sampler(opts.seed);
  std::vector<int64_t> ids(prompt.begin(), prompt.end());
  at::Tensor logits = model.forward_cached(at::tensor(ids, at::kLong).view({1, -1}).to(model.device()), cache);
  std::vector<int32_t> out;
  while (int64_t(out.size()) < opts.max_tokens) {
    const int64_t next = sampler.sample(logits[0][-1], opts.temperature, opts.top_p);
    if (std::find(opts.stop_ids.begin(), opts.stop_ids.end(), int32_t(next)) != opts.stop_ids.end()) break;
    out.push_back(int32_t(next));
    if (on_token) on_token(int32_t(next));
    if (int64_t(out.size()) == opts.max_tokens || cache.length >= cache.capacity) break;
    logits = model.forward_cached(at::full({1, 1}, next, at::kLong).to(model.device()), cache);
  }
  return out;
}

uint64_t sequence_seed(uint64_t seed, int64_t i) {
  uint64_t z = seed + (uint64_t(i) + 1) * 0x9e3779b97f4a7c15ull;  // SplitMix64: output i of seed
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

std::vector<std::vector<int32_t>> sample_sequences(Model& model, const SampleBatchOptions& o,
                                                   const std::function<void(int64_t, int64_t)>& progress) {
  if (!model.is_language_model()) fail("sample", "model is a ", model.arch(), ", not a language model");
  if (o.sequences < 0) fail("sample", "sequences ", o.sequences, " must be >= 0");
  if (o.length < 1) fail("sample", "length ", o.length, " must be >= 1 (the start token)");
  if (o.batch < 1) fail("sample", "batch ", o.batch, " must be >= 1");
  if (o.temperature < 0) fail("sample", "temperature ", o.temperature, " must be >= 0");
  const int64_t vocab = model.vocab_size();
  if (o.start_id < 0 || (vocab > 0 && o.start_id >= vocab))
    fail("sample", "start id ", o.start_id, " is outside the vocabulary [0, ", vocab, ")");
  const int64_t length = model.max_seq_len() > 0 ? std::min(o.length, model.max_seq_len()) : o.length;
  at::NoGradGuard no_grad;
  std::vector<std::vector<int32_t>> out(size_t(o.sequences));
  for (int64_t first = 0; first < o.sequences; first += o.batch) {
    const int64_t B = std::min(o.batch, o.sequences - first);
    std::vector<Sampler> samplers;
    samplers.reserve(size_t(B));
    for (int64_t r = 0; r < B; ++r) {
      samplers.emplace_back(sequence_seed(o.seed, first + r));
      out[size_t(first + r)].reserve(size_t(length));
      out[size_t(first + r)].push_back(o.start_id);
    }
    std::vector<int64_t> cur(size_t(B), o.start_id);  // each row's last token; a stopped row keeps its own
    std::vector<char> alive(size_t(B), 1);
    int64_t n_alive = B;
    KVCache cache;
    cache.capacity = length;
    // Token `pos` of every live row from the logits after tokens 0..pos-1 (the cache holds 0..pos-2).
    for (int64_t pos = 1; pos < length && n_alive > 0; ++pos) {
      at::Tensor input = at::tensor(at::ArrayRef<int64_t>(cur), at::kLong).view({B, 1}).to(model.device());
      at::Tensor logits = model.forward_cached(input, cache).select(1, 0).to(at::kCPU, at::kDouble).contiguous();
      const int64_t V = logits.size(1);
      const double* lp = logits.data_ptr<double>();
      at::Tensor probs;
      if (o.temperature > 0) probs = softmax_rows(logits, o.temperature);
      const double* pp = probs.defined() ? probs.data_ptr<double>() : nullptr;
      for (int64_t r = 0; r < B; ++r) {
        if (!alive[size_t(r)]) continue;
        const int64_t next = pp ? samplers[size_t(r)].sample_probs(pp + r * V, V, o.top_p) : argmax_row(lp + r * V, V);
        if (std::find(o.stop_ids.begin(), o.stop_ids.end(), int32_t(next)) != o.stop_ids.end()) {
          alive[size_t(r)] = 0;
          --n_alive;
          continue;
        }
        out[size_t(first + r)].push_back(int32_t(next));
        cur[size_t(r)] = next;
      }
    }
    if (progress) progress(first + B, o.sequences);
  }
  return out;
}

}  // namespace mc

#include "mcompress/generate.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <numeric>

#include "mcompress/error.h"
#include "mcompress/model.h"

namespace mc {

double Sampler::uniform() { return double(rng_() >> 11) * (1.0 / 9007199254740992.0); }

int64_t Sampler::sample(const at::Tensor& logits, double temperature, double top_p) {
  at::Tensor l = logits.detach().to(at::kCPU, at::kDouble).contiguous().view(-1);
  const int64_t n = l.numel();
  if (n == 0) fail<Error>("generate", "empty logits");
  if (temperature <= 0) return l.argmax().item<int64_t>();
  std::vector<double> p(static_cast<size_t>(n));
  at::Tensor probs = at::softmax(l / temperature, 0);
  std::copy(probs.data_ptr<double>(), probs.data_ptr<double>() + n, p.begin());
  std::vector<int64_t> ids(static_cast<size_t>(n));
  std::iota(ids.begin(), ids.end(), 0);
  double total = 1.0;
  if (top_p > 0 && top_p < 1) {
    // run.c sample_topp: most likely first, keep tokens until the cumulative probability exceeds top_p.
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
    ids.resize(keep);
    total = cum;
  }
  const double r = uniform() * total;
  double cdf = 0;
  for (int64_t id : ids) {
    cdf += p[size_t(id)];
    if (r < cdf) return id;
  }
  return ids.back();  // rounding
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

}  // namespace mc

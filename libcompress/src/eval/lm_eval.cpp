// Language-model evaluation: windows batched by length (right padding is inert under a causal mask),
// per-window sums in double, totals accumulated in document order.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "mcompress/error.h"
#include "mcompress/eval.h"
#include "mcompress/model.h"
#include "mcompress/tokenizer.h"

namespace mc {

namespace {

std::vector<int32_t> byte_lengths(const Tokenizer& tok) {
  std::vector<int32_t> n(static_cast<size_t>(tok.vocab_size()));
  for (int32_t id = 0; id < tok.vocab_size(); ++id) n[size_t(id)] = int32_t(tok.token_bytes(id).size());
  return n;
}

}  // namespace

LmCorpus make_lm_corpus(const Tokenizer& tok, const std::vector<std::string>& docs, int32_t bos) {
  if (bos < 0) bos = tok.bos_id() >= 0 ? tok.bos_id() : tok.eos_id();
  const auto table = byte_lengths(tok);
  LmCorpus c;
  c.vocab_size = tok.text_vocab_size();
  for (const auto& d : docs) {
    auto enc = tok.encode(d);
    if (enc.empty()) continue;
    std::vector<int32_t> ids, bytes;
    if (bos >= 0) ids.push_back(bos), bytes.push_back(0);
    int64_t total = 0;
    for (int32_t id : enc) {
      ids.push_back(id);
      bytes.push_back(table.at(size_t(id)));
      total += bytes.back();
    }
    // The dummy prefix: bytes beyond the text's own, as leading spaces of the first token, are not counted.
    const size_t first = bos >= 0 ? 1 : 0;
    const std::string lead = tok.token_bytes(enc[0]);
    int64_t excess = total - int64_t(d.size());
    for (size_t i = 0; excess > 0 && i < lead.size() && lead[i] == ' ' && (i >= d.size() || d[i] != ' '); ++i)
      --bytes[first], --excess;
    c.docs.push_back(std::move(ids));
    c.bytes.push_back(std::move(bytes));
  }
  if (c.docs.empty()) fail("eval", "no non-empty document to evaluate (", docs.size(), " documents given)");
  c.description = bos >= 0 ? str("each document = BOS (id ", bos, ") + its ", tok.kind(), " tokens")
                           : str("each document = its ", tok.kind(), " tokens (the tokenizer has no BOS/EOS)");
  c.bytes_note = "a document's dummy-prefix space is not counted";
  return c;
}

LmCorpus make_lm_corpus(std::vector<int32_t> tokens, const Tokenizer* tok) {
  LmCorpus c;
  if (tokens.size() < 2) fail("eval", "token stream has ", tokens.size(), " tokens; at least 2 are needed");
  if (tok) {
    const auto table = byte_lengths(*tok);
    std::vector<int32_t> bytes;
    for (int32_t id : tokens) {
      if (id < 0 || size_t(id) >= table.size())
        fail("eval", "token id ", id, " is outside the tokenizer's vocabulary of ", table.size());
      bytes.push_back(table[size_t(id)]);
    }
    c.bytes.push_back(std::move(bytes));
    c.vocab_size = tok->text_vocab_size();
  }
  c.docs.push_back(std::move(tokens));
  c.description = "the token file scored as one document (no BOS added)";
  return c;
}

namespace {

struct Window {
  size_t doc;
  int64_t start, length;
};

struct WindowScore {
  double nll = 0, kl = 0;
  int64_t predicted = 0, bytes = 0, agree = 0;
};

}  // namespace

LmEvalResult evaluate_lm(Model& model, const LmCorpus& corpus, const LmEvalOptions& opts, Model* reference) {
  if (!model.is_language_model()) fail("eval", "model is a ", model.arch(), ", not a language model");
  if (reference && !reference->is_language_model()) fail("eval", "reference model is not a language model");
  if (opts.window < 2) fail("eval", "window ", opts.window, " must be >= 2 (a window's first token is not predicted)");
  if (opts.batch_size < 1) fail("eval", "batch size ", opts.batch_size, " must be >= 1");
  const int64_t V = model.vocab_size();
  if (corpus.vocab_size > V)  // fewer tokens than embedding rows is a padded vocabulary (Qwen)
    fail("eval", "tokenizer vocabulary has ", corpus.vocab_size, " tokens but the model's has ", V);
  for (const auto& doc : corpus.docs)  // a special token beyond the embedding written in the text
    for (int32_t id : doc)
      if (id < 0 || id >= V) fail("eval", "the data holds token id ", id, ", outside the model's vocabulary of ", V);
  const bool have_bytes = !corpus.bytes.empty();
  if (have_bytes && corpus.bytes.size() != corpus.docs.size())
    fail<Error>("eval", "corpus has byte counts for ", corpus.bytes.size(), " of ", corpus.docs.size(), " documents");
  if (reference && reference->vocab_size() != V)
    fail("eval", "reference vocabulary (", reference->vocab_size(), ") differs from the model's (", V, ")");
  const auto t0 = std::chrono::steady_clock::now();

  const size_t ndocs = opts.max_docs > 0 ? std::min(corpus.docs.size(), size_t(opts.max_docs)) : corpus.docs.size();
  std::vector<Window> windows;
  for (size_t d = 0; d < ndocs; ++d) {
    const int64_t n = int64_t(corpus.docs[d].size());
    for (int64_t s = 0; s < n; s += opts.window) {
      const int64_t len = std::min(opts.window, n - s);
      if (len >= 2) windows.push_back({d, s, len});
      if (opts.truncate) break;
    }
  }
  if (windows.empty())
    fail("eval", "nothing to predict: ", ndocs, " documents, none with a window of 2 or more tokens");

  // Longest first, so each batch pads little; ties keep document order.
  std::vector<size_t> order(windows.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return windows[a].length > windows[b].length; });
  std::vector<WindowScore> scores(windows.size());
  at::NoGradGuard no_grad;
  const c10::Device dev = model.device();

  // At most ~64M logits per forward (256 MB in float32; a 150k vocabulary gets 3 windows of 128).
  constexpr int64_t kMaxLogits = int64_t(1) << 26;
  for (size_t b0 = 0, nb = 0; b0 < order.size(); b0 += nb) {
    const int64_t L = windows[order[b0]].length;
    const int64_t cap = std::max<int64_t>(1, std::min(opts.batch_size, kMaxLogits / std::max<int64_t>(1, L * V)));
    nb = std::min(order.size() - b0, size_t(cap));
    std::vector<int64_t> ids(nb * size_t(L), 0), lens(nb);
    for (size_t i = 0; i < nb; ++i) {
      const Window& w = windows[order[b0 + i]];
      const auto& doc = corpus.docs[w.doc];
      for (int64_t t = 0; t < w.length; ++t) ids[i * size_t(L) + size_t(t)] = doc[size_t(w.start + t)];
      lens[i] = w.length;
    }
    at::Tensor tokens = at::tensor(ids, at::TensorOptions().dtype(at::kLong)).view({int64_t(nb), L}).to(dev);
    at::Tensor lens_t = at::tensor(lens, at::TensorOptions().dtype(at::kLong)).to(dev);
    at::Tensor logp = at::log_softmax(model.forward(tokens).to(at::kFloat), -1).narrow(1, 0, L - 1);
    at::Tensor targets = tokens.narrow(1, 1, L - 1);
    at::Tensor valid = at::arange(1, L, lens_t.options()).unsqueeze(0) < lens_t.unsqueeze(1);  // [nb, L-1]
    at::Tensor validf = valid.to(at::kDouble);
    at::Tensor nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).to(at::kDouble);
    at::Tensor nll_sum = (nll * validf).sum(1).cpu();
    at::Tensor npred = valid.sum(1).cpu();
    at::Tensor kl_sum, agree;
    if (reference) {
      at::Tensor ref = at::log_softmax(reference->forward(tokens).to(at::kFloat), -1).narrow(1, 0, L - 1);
      at::Tensor kl = (ref.exp() * (ref - logp)).sum(-1).to(at::kDouble);
      kl_sum = (kl * validf).sum(1).cpu();
      agree = ((ref.argmax(-1) == logp.argmax(-1)).logical_and(valid)).sum(1).cpu();
    }
    for (size_t i = 0; i < nb; ++i) {
      WindowScore& s = scores[order[b0 + i]];
      s.nll = nll_sum[int64_t(i)].item<double>();
      s.predicted = npred[int64_t(i)].item<int64_t>();
      if (have_bytes) {
        const Window& w = windows[order[b0 + i]];
        const auto& b = corpus.bytes[w.doc];
        for (int64_t t = w.start + 1; t < w.start + w.length; ++t) s.bytes += b.at(size_t(t));
      }
      if (reference) s.kl = kl_sum[int64_t(i)].item<double>(), s.agree = agree[int64_t(i)].item<int64_t>();
    }
  }

  LmEvalResult r;
  int64_t agree_total = 0;
  double kl_total = 0;
  for (const auto& s : scores) {  // document order: fixed summation order
    r.nll_sum += s.nll, r.predicted_tokens += s.predicted, r.bytes += s.bytes;
    kl_total += s.kl, agree_total += s.agree;
  }
  r.documents = int64_t(ndocs);
  r.windows = int64_t(windows.size());
  r.mean_nll = r.nll_sum / double(r.predicted_tokens);
  r.perplexity = std::exp(r.mean_nll);
  if (have_bytes && r.bytes > 0) r.bits_per_byte = r.nll_sum / std::log(2.0) / double(r.bytes);
  if (reference) {
    r.has_reference = true;
    r.mean_kl = kl_total / double(r.predicted_tokens);
    r.top1_agreement = double(agree_total) / double(r.predicted_tokens);
  }
  r.protocol = str(corpus.description.empty() ? "documents as given" : corpus.description,
                   "; non-overlapping windows of ", opts.window, " tokens",
                   opts.truncate ? ", only each document's first window" : "",
                   "; every token after a window's first is predicted",
                   have_bytes ? "; bits per byte over the UTF-8 bytes of the predicted tokens" : "",
                   have_bytes && !corpus.bytes_note.empty() ? " (" + corpus.bytes_note + ")" : "");
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

void to_json(nlohmann::json& j, const LmEvalResult& r) {
  j = nlohmann::json{{"protocol", r.protocol},           {"documents", r.documents},
                     {"windows", r.windows},             {"predicted_tokens", r.predicted_tokens},
                     {"bytes", r.bytes},                 {"nll_sum", r.nll_sum},
                     {"mean_nll", r.mean_nll},           {"perplexity", r.perplexity},
                     {"seconds", r.seconds}};
  j["bits_per_byte"] = r.bits_per_byte >= 0 ? nlohmann::json(r.bits_per_byte) : nlohmann::json(nullptr);
  if (r.has_reference) j["mean_kl"] = r.mean_kl, j["top1_agreement"] = r.top1_agreement;
}

}  // namespace mc

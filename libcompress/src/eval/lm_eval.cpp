// Language-model evaluation: windows batched by length (right padding is inert under a causal mask),
// per-window sums in double, totals accumulated in document order.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/eval.h"
#include "mcompress/throughput.h"
#include "mcompress/events.h"
#include "mcompress/model.h"
#include "mcompress/models/llama.h"
#include "mcompress/tokenizer.h"
#include "mcompress/torch_bridge.h"

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

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The saved baseline of LmEvalOptions::save_topk / kl_base.
struct TopK {
  at::Tensor ids, logp, rest;  // int64 [P, k], float [P, k], float [P]
};

TopK read_topk(const std::string& path, int64_t predicted) {
  auto r = open_checkpoint(path);
  for (const char* n : {"ids", "logp", "rest"})
    if (!r->contains(n)) fail("eval", path, ": no tensor '", n, "' (not a file written by eval --save-topk)");
  TopK t{to_torch(r->load("ids")).to(at::kLong), to_torch(r->load("logp")).to(at::kFloat),
         to_torch(r->load("rest")).to(at::kFloat)};
  if (t.ids.dim() != 2 || !t.logp.sizes().equals(t.ids.sizes()) || t.rest.dim() != 1 || t.rest.size(0) != t.ids.size(0))
    fail("eval", path, ": ids/logp must be [P, k] and rest [P]");
  if (t.ids.size(0) != predicted)
    fail("eval", path, ": the baseline holds ", t.ids.size(0), " predicted positions, this evaluation predicts ",
         predicted, " (use the same data, --window, --max-tokens and --max-docs as when it was saved)");
  return t;
}

// log(1 - sum(exp(lp))) along the last dim, floored so an exhausted remainder stays finite.
at::Tensor log_rest(const at::Tensor& lp) { return at::log(at::clamp_min(1.0 - lp.exp().sum(-1), 1e-12)); }

}  // namespace

LmEvalResult evaluate_lm(Model& model, const LmCorpus& corpus, const LmEvalOptions& opts, Model* reference) {
  if (!model.is_language_model()) fail("eval", "model is a ", model.arch(), ", not a language model");
  if (reference && !reference->is_language_model()) fail("eval", "reference model is not a language model");
  if (opts.window < 2) fail("eval", "window ", opts.window, " must be >= 2 (a window's first token is not predicted)");
  if (opts.batch_size < 1) fail("eval", "batch size ", opts.batch_size, " must be >= 1");
  if (opts.max_tokens < 0) fail("eval", "--max-tokens ", opts.max_tokens, " must be >= 0");
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
  const auto t0 = Clock::now();

  const size_t ndocs = opts.max_docs > 0 ? std::min(corpus.docs.size(), size_t(opts.max_docs)) : corpus.docs.size();
  std::vector<Window> windows;
  int64_t left = opts.max_tokens > 0 ? opts.max_tokens : (int64_t(1) << 62);
  size_t used_docs = 0;
  for (size_t d = 0; d < ndocs && left > 0; ++d) {
    const int64_t n = int64_t(corpus.docs[d].size());
    used_docs = d + 1;
    for (int64_t s = 0; s < n && left > 0; s += opts.window) {
      const int64_t len = std::min({opts.window, n - s, left + 1});
      if (len >= 2) windows.push_back({d, s, len}), left -= len - 1;
      if (opts.truncate) break;
    }
  }
  if (windows.empty())
    fail("eval", "nothing to predict: ", ndocs, " documents, none with a window of 2 or more tokens");
  if (!opts.kl_base.empty() && reference) fail("eval", "--kl-base and --reference exclude each other");
  if (!opts.save_topk.empty() && (opts.topk < 1 || opts.topk > V)) fail("eval", "--topk ", opts.topk, " must be in 1..", V);
  // Predicted positions in document order: window w's first one.
  std::vector<int64_t> first_pos(windows.size());
  int64_t predicted_total = 0;
  for (size_t w = 0; w < windows.size(); ++w) first_pos[w] = predicted_total, predicted_total += windows[w].length - 1;
  TopK base, saved;
  if (!opts.kl_base.empty()) base = read_topk(opts.kl_base, predicted_total);
  if (!opts.save_topk.empty())
    saved = {at::zeros({predicted_total, opts.topk}, at::kLong), at::zeros({predicted_total, opts.topk}, at::kFloat),
             at::zeros({predicted_total}, at::kFloat)};

  // Longest first, so each batch pads little; ties keep document order.
  std::vector<size_t> order(windows.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return windows[a].length > windows[b].length; });
  std::vector<WindowScore> scores(windows.size());
  at::NoGradGuard no_grad;
  const c10::Device dev = model.device();

  // Passes: consecutive windows (in `order`) whose activations fit the budget; at least one window each.
  const TokenCost cost = token_cost(model, windows[order[0]].length);
  const double per_token = cost.bytes * (reference ? 2.0 : 1.0);
  const double budget = double(std::max<int64_t>(1, opts.pass_budget_mb)) * double(1 << 20);
  std::vector<std::pair<size_t, size_t>> passes;  // [begin, end) into order
  int64_t total_tokens = 0;
  double flops = 0;
  for (size_t b = 0; b < order.size();) {
    const int64_t L = windows[order[b]].length;
    size_t e = b + 1;
    while (e < order.size() && double(e + 1 - b) * double(L) * per_token <= budget) ++e;
    passes.emplace_back(b, e);
    total_tokens += int64_t(e - b) * L;
    flops += double(e - b) * double(L) * (cost.linear_flops + cost.attn_flops_per_pos * double(L));
    b = e;
  }
  if (reference) flops *= 2;  // the reference runs the same windows (its own shapes, assumed alike)
  const int blocks = model.num_blocks();
  const double probe = !opts.measure_throughput ? 0.0 : matmul_gflops(cost.block_shapes, std::min<int64_t>(512, windows[order[0]].length *
                                     int64_t(passes[0].second - passes[0].first)), dev, model.compute_bf16());
  LmEvalProgress pr;
  pr.passes = int64_t(passes.size()), pr.blocks = blocks, pr.tokens_total = total_tokens;
  if (opts.progress) {
    pr.stage = "plan";
    pr.eta_s = probe > 0 ? flops / (probe * 1e9) : 0;
    pr.message = str(total_tokens, " tokens (", windows.size(), " windows) through ", blocks, " blocks",
                     reference ? " and the reference's" : "", " in ", passes.size(), passes.size() == 1 ? " pass" : " passes",
                     ": ", flops / 1e12 >= 0.1 ? str(std::lround(flops / 1e11) / 10.0, " TFLOP") : str(std::lround(flops / 1e8) / 10.0, " GFLOP"),
                     probe > 0 ? ", about " + eta_text(pr.eta_s) + " at this machine's matmul speed (" +
                                     str(std::lround(probe), " GFLOP/s)") : std::string());
    opts.progress(pr);
  }

  // At most ~64M logits per classifier call (256 MB in float32; a 150k vocabulary gets 3 windows of 128).
  constexpr int64_t kMaxLogits = int64_t(1) << 26;
  int64_t tokens_done = 0;
  double forward_s = 0;
  const auto tf = Clock::now();
  // Work done counts a pass's tokens in (blocks + 1) equal parts: its blocks, then its classifier.
  auto report = [&](const std::string& stage, int64_t pass, int64_t block, int64_t pass_tokens) {
    if (!opts.progress) return;
    pr.stage = stage, pr.pass = pass, pr.block = block, pr.tokens = tokens_done;
    pr.elapsed_s = since(tf);
    const double work = double(tokens_done) + double(pass_tokens) * double(block) / double(blocks + 1);
    pr.tokens_per_s = work > 0 && pr.elapsed_s > 0 ? work / pr.elapsed_s : 0;
    pr.eta_s = pr.tokens_per_s > 0 ? (double(total_tokens) - work) / pr.tokens_per_s : 0;
    opts.progress(pr);
  };
  for (size_t p = 0; p < passes.size(); ++p) {
    const auto [b, e] = passes[p];
    const size_t n = e - b;
    const int64_t L = windows[order[b]].length;
    std::vector<int64_t> ids(n * size_t(L), 0), lens(n);
    for (size_t i = 0; i < n; ++i) {
      const Window& w = windows[order[b + i]];
      const auto& doc = corpus.docs[w.doc];
      for (int64_t t = 0; t < w.length; ++t) ids[i * size_t(L) + size_t(t)] = doc[size_t(w.start + t)];
      lens[i] = w.length;
    }
    at::Tensor tokens = at::tensor(ids, at::TensorOptions().dtype(at::kLong)).view({int64_t(n), L}).to(dev);
    at::Tensor lens_all = at::tensor(lens, at::TensorOptions().dtype(at::kLong)).to(dev);
    const auto tp = Clock::now();
    at::Tensor x = model.embed(tokens), xr = reference ? reference->embed(tokens) : at::Tensor();
    for (int k = 0; k < blocks; ++k) {
      x = model.run_block(k, x);
      if (opts.page_out) model.page_out_block(k);
      if (reference) {
        xr = reference->run_block(k, xr);
        if (opts.page_out) reference->page_out_block(k);
      }
      report("block", int64_t(p) + 1, k + 1, int64_t(n) * L);
    }
    // The classifier widened once for the pass's windows, not once per call (weights kept narrow).
    for (const LayerInfo& l : model.layers())
      if (l.is_classifier && !model.compute_bf16()) model.pin_float(l.weight);
    if (reference)
      for (const LayerInfo& l : reference->layers())
        if (l.is_classifier && !reference->compute_bf16()) reference->pin_float(l.weight);
    const int64_t cap = std::max<int64_t>(1, std::min(opts.batch_size, kMaxLogits / std::max<int64_t>(1, L * V)));
    for (size_t i0 = 0, nb = 0; i0 < n; i0 += nb) {
      nb = std::min(n - i0, size_t(cap));
      at::Tensor tok = tokens.narrow(0, int64_t(i0), int64_t(nb));
      at::Tensor lens_t = lens_all.narrow(0, int64_t(i0), int64_t(nb));
      at::Tensor logp = at::log_softmax(model.head(x.narrow(0, int64_t(i0), int64_t(nb))).to(at::kFloat), -1).narrow(1, 0, L - 1);
      at::Tensor targets = tok.narrow(1, 1, L - 1);
      at::Tensor valid = at::arange(1, L, lens_t.options()).unsqueeze(0) < lens_t.unsqueeze(1);  // [nb, L-1]
      at::Tensor validf = valid.to(at::kDouble);
      at::Tensor nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).to(at::kDouble);
      at::Tensor nll_sum = (nll * validf).sum(1).cpu();
      at::Tensor npred = valid.sum(1).cpu();
      at::Tensor kl_sum, agree;
      if (reference) {
        at::Tensor ref = at::log_softmax(reference->head(xr.narrow(0, int64_t(i0), int64_t(nb))).to(at::kFloat), -1).narrow(1, 0, L - 1);
        at::Tensor kl = (ref.exp() * (ref - logp)).sum(-1).to(at::kDouble);
        kl_sum = (kl * validf).sum(1).cpu();
        agree = ((ref.argmax(-1) == logp.argmax(-1)).logical_and(valid)).sum(1).cpu();
      }
      for (size_t i = 0; i < nb; ++i) {
        WindowScore& sc = scores[order[b + i0 + i]];
        sc.nll = nll_sum[int64_t(i)].item<double>();
        sc.predicted = npred[int64_t(i)].item<int64_t>();
        if (have_bytes) {
          const Window& w = windows[order[b + i0 + i]];
          const auto& bt = corpus.bytes[w.doc];
          for (int64_t t = w.start + 1; t < w.start + w.length; ++t) sc.bytes += bt.at(size_t(t));
        }
        if (reference) sc.kl = kl_sum[int64_t(i)].item<double>(), sc.agree = agree[int64_t(i)].item<int64_t>();
        const size_t w = order[b + i0 + i];
        const int64_t np = windows[w].length - 1, at0 = first_pos[w];
        if (!opts.save_topk.empty() || base.ids.defined()) {
          at::Tensor rows = logp[int64_t(i)].narrow(0, 0, np).cpu();  // [np, V]
          if (saved.ids.defined()) {
            auto [v, idx] = rows.topk(opts.topk, -1);
            saved.ids.narrow(0, at0, np).copy_(idx);
            saved.logp.narrow(0, at0, np).copy_(v);
            saved.rest.narrow(0, at0, np).copy_(log_rest(v));
          }
          if (base.ids.defined()) {  // KL over the baseline's top-k buckets and the rest
            at::Tensor bi = base.ids.narrow(0, at0, np), bl = base.logp.narrow(0, at0, np), br = base.rest.narrow(0, at0, np);
            at::Tensor q = rows.gather(-1, bi), qr = log_rest(q);
            at::Tensor kl = (bl.exp() * (bl - q)).sum(-1) + br.exp() * (br - qr);
            sc.kl = kl.to(at::kDouble).sum().item<double>();
            sc.agree = (rows.argmax(-1) == bi.select(1, 0)).sum().item<int64_t>();
          }
        }
      }
    }
    model.unpin_floats();
    if (reference) reference->unpin_floats();
    if (opts.page_out) {  // embedding, final norm, classifier
      model.page_out_block(-1);
      if (reference) reference->page_out_block(-1);
    }
    forward_s += since(tp);
    tokens_done += int64_t(n) * L;
    report("head", int64_t(p) + 1, blocks, 0);
  }

  LmEvalResult r;
  int64_t agree_total = 0;
  double kl_total = 0;
  for (const auto& sc : scores) {  // document order: fixed summation order
    r.nll_sum += sc.nll, r.predicted_tokens += sc.predicted, r.bytes += sc.bytes;
    kl_total += sc.kl, agree_total += sc.agree;
  }
  r.documents = int64_t(used_docs);
  r.windows = int64_t(windows.size());
  r.passes = int64_t(passes.size());
  r.mean_nll = r.nll_sum / double(r.predicted_tokens);
  r.perplexity = std::exp(r.mean_nll);
  if (have_bytes && r.bytes > 0) r.bits_per_byte = r.nll_sum / std::log(2.0) / double(r.bytes);
  if (saved.ids.defined()) {
    std::vector<HostTensor> t = {from_torch("ids", saved.ids.to(at::kInt).contiguous()),
                                 from_torch("logp", saved.logp.contiguous()), from_torch("rest", saved.rest.contiguous())};
    WriteOptions wo;
    wo.metadata = {{"mcompress.topk", std::to_string(opts.topk)}, {"mcompress.window", std::to_string(opts.window)},
                   {"mcompress.predicted", std::to_string(predicted_total)}};
    write_checkpoint(opts.save_topk, t, wo);
  }
  if (reference || base.ids.defined()) {
    r.has_reference = true;
    r.mean_kl = kl_total / double(r.predicted_tokens);
    r.top1_agreement = double(agree_total) / double(r.predicted_tokens);
  }
  r.protocol = str(corpus.description.empty() ? "documents as given" : corpus.description,
                   "; non-overlapping windows of ", opts.window, " tokens",
                   opts.truncate ? ", only each document's first window" : "",
                   "; every token after a window's first is predicted",
                   opts.max_tokens > 0 ? str("; stopped after ", opts.max_tokens, " predicted tokens (--max-tokens)") : "",
                   have_bytes ? "; bits per byte over the UTF-8 bytes of the predicted tokens" : "",
                   have_bytes && !corpus.bytes_note.empty() ? " (" + corpus.bytes_note + ")" : "",
                   base.ids.defined() ? str("; KL against the saved top-", base.ids.size(1), " baseline ", opts.kl_base,
                                            " (its top tokens and the rest of its mass as one bucket: a lower bound)") : "");
  r.forward_flops = flops, r.forward_seconds = forward_s;
  r.forward_gflops = forward_s > 0 ? flops / forward_s / 1e9 : 0;
  r.matmul_gflops = probe;
  r.seconds = since(t0);
  if (opts.progress) {
    pr.stage = "done", pr.tokens = tokens_done, pr.elapsed_s = since(tf), pr.eta_s = 0;
    pr.tokens_per_s = pr.elapsed_s > 0 ? double(tokens_done) / pr.elapsed_s : 0;
    opts.progress(pr);
  }
  return r;
}

void to_json(nlohmann::json& j, const LmEvalResult& r) {
  j = nlohmann::json{{"protocol", r.protocol},           {"documents", r.documents},
                     {"windows", r.windows},             {"predicted_tokens", r.predicted_tokens},
                     {"bytes", r.bytes},                 {"nll_sum", r.nll_sum},
                     {"mean_nll", r.mean_nll},           {"perplexity", r.perplexity},
                     {"seconds", r.seconds},             {"passes", r.passes},
                     {"forward_gflops", r.forward_gflops}, {"matmul_gflops", r.matmul_gflops},
                     {"forward_seconds", r.forward_seconds}};
  j["bits_per_byte"] = r.bits_per_byte >= 0 ? nlohmann::json(r.bits_per_byte) : nlohmann::json(nullptr);
  if (r.has_reference) j["mean_kl"] = r.mean_kl, j["top1_agreement"] = r.top1_agreement;
}

TokenCost token_cost(const Model& model, int64_t window) {
  TokenCost c;
  int64_t widest = 0;
  for (const LayerInfo& l : model.layers()) {
    if (l.kind != LayerKind::Linear) continue;
    c.linear_flops += 2.0 * double(l.in_features) * double(l.out_features);
    if (l.block >= 0) c.block_linear_flops += 2.0 * double(l.in_features) * double(l.out_features);
    if (l.block == 0) c.block_shapes.emplace_back(l.in_features, l.out_features);
    if (!l.is_classifier) widest = std::max(widest, l.out_features);
  }
  int64_t dim = 0, heads = 0, head_dim = 0;
  if (const auto* m = dynamic_cast<const LlamaModel*>(&model)) {
    dim = m->config().dim, heads = m->config().n_heads, head_dim = m->config().head_dim;
    c.attn_flops_per_pos = 4.0 * double(heads * head_dim) * double(m->num_blocks());
  }
  // Hidden + residual + norm output, q/k/v/attention output, the MLP's gate/up/product, scores and probs.
  c.bytes = 4.0 * double(4 * dim + 4 * heads * head_dim + 3 * widest + 3 * heads * window);
  return c;
}

double matmul_gflops(const std::vector<std::pair<int64_t, int64_t>>& shapes, int64_t tokens, c10::Device dev,
                     bool bf16) {
  if (shapes.empty() || tokens <= 0) return 0;
  auto o = at::TensorOptions().dtype(at::kFloat).device(dev);
  const auto dt = bf16 ? at::kBFloat16 : at::kFloat;
  std::vector<std::pair<at::Tensor, at::Tensor>> ops;
  for (auto [in, out] : shapes)
    ops.emplace_back(at::randn({tokens, in}, o).to(dt), (at::randn({out, in}, o) * 0.01).to(dt));
  double flops = 0;
  at::linear(ops[0].first, ops[0].second);  // warm-up
  const auto t0 = Clock::now();
  do {
    for (auto& [x, w] : ops) {
      at::Tensor y = at::linear(x, w);
      if (dev.is_cuda()) y.cpu();
      flops += 2.0 * double(x.size(0)) * double(x.size(1)) * double(w.size(0));
    }
  } while (since(t0) < 0.3);
  return flops / since(t0) / 1e9;
}

}  // namespace mc

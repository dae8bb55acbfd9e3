// Evaluation of language models (perplexity, mean NLL, bits per byte) and classifiers (top-1/top-5
// accuracy), optionally against a reference model (mean KL(reference || model), same-top-1 agreement).
//
// Language-model protocol: each document is scored as given in LmCorpus::docs (text documents are
// BOS + tokens, see make_lm_corpus), cut into non-overlapping windows of `window` tokens, each window run
// on its own (no context carried over); every token after a window's first is predicted. `truncate`
// scores only each document's first window. Bits per byte = total NLL / ln 2 / the bytes of the predicted
// tokens, where a token's bytes are the UTF-8 bytes it adds to the document's text: Tokenizer::token_bytes,
// except that the SentencePiece dummy-prefix space of a document's first token is not counted (it is not
// in the text; decode() drops it too). This reproduces the published stories260K figure (0.8132).
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mcompress/datasets.h"

namespace mc {

class Model;
class Tokenizer;

struct LmCorpus {
  std::vector<std::vector<int32_t>> docs;   // token ids, scored as given
  std::vector<std::vector<int32_t>> bytes;  // per document and token: bytes it adds to the text; empty: unknown
  int64_t vocab_size = 0;                   // the tokenizer's (checked against the model's); 0: unknown
  std::string description;                  // how the documents were made (for the protocol line)
  std::string bytes_note;                   // how bytes were counted, when it needs saying
};

// Tokenizes text documents as BOS + encode(text). bos < 0: the tokenizer's BOS, else its EOS (a document
// separator), else nothing (the first token of each document is then not predicted). Throws InputError
// when no document is left.
LmCorpus make_lm_corpus(const Tokenizer& tok, const std::vector<std::string>& docs, int32_t bos = -1);
// A pre-tokenized stream scored as one document (no BOS added); bytes from tok when given.
LmCorpus make_lm_corpus(std::vector<int32_t> tokens, const Tokenizer* tok);

// Progress of an evaluation: a "plan" once (the work and its estimate), then one per block of each pass and
// one per pass's classifier ("head"), then "done".
struct LmEvalProgress {
  std::string stage;                 // plan, block, head, done
  int64_t pass = 0, passes = 0;      // passes over the blocks (see pass_budget_mb)
  int64_t block = 0, blocks = 0;     // stage block: blocks done in this pass
  int64_t tokens = 0, tokens_total = 0;  // window tokens through the model so far (stage head/done), all of them
  double elapsed_s = 0, eta_s = 0;
  double tokens_per_s = 0;           // window tokens per second so far
  std::string message;               // plan: what will run and the estimate
};

struct LmEvalOptions {
  int64_t window = 128;    // tokens per window (>= 2)
  bool truncate = false;   // only each document's first window
  int64_t max_docs = 0;    // 0: all documents
  int64_t max_tokens = 0;  // > 0: stop after this many predicted tokens (the last window is shortened)
  int64_t batch_size = 16; // windows per classifier call, fewer for large vocabularies (padded to the longest;
                           // causal attention makes the padding inert)
  // Windows go through the model block by block: all windows of a pass through block k, then block k+1, as
  // one batched matmul per layer; a pass holds as many windows as its activations (hidden states, MLP and
  // attention intermediates) fit in pass_budget_mb.
  int64_t pass_budget_mb = 1024;
  bool page_out = false;   // hand back each block's pages after it ran (weights mapped in their stored dtype)
  // A baseline without holding two models (as llama-perplexity's --kl-divergence-base): save_topk writes, per
  // predicted position in document order, the model's top-k token ids and log-probabilities and the log of the
  // mass beyond them (safetensors: ids int32 [P, k], logp float32 [P, k], rest float32 [P]); kl_base reads such
  // a file and reports KL(base || model) over those k + 1 buckets (a lower bound of the full KL) and top-1
  // agreement, as --reference does. The evaluation must predict the same positions (same data, window,
  // --max-tokens), else InputError.
  std::string save_topk, kl_base;
  int64_t topk = 32;
  std::function<void(const LmEvalProgress&)> progress;
  // Time a plain at::linear on block 0's layer shapes (~0.3 s) for the plan's estimate and the result's
  // matmul_gflops; off for the reports' evaluations, which need neither.
  bool measure_throughput = false;
};

struct LmEvalResult {
  std::string protocol;
  int64_t documents = 0, windows = 0, predicted_tokens = 0, bytes = 0;
  double nll_sum = 0, mean_nll = 0, perplexity = 0;
  double bits_per_byte = -1;  // -1 when token bytes are unknown
  bool has_reference = false;
  double mean_kl = 0;         // nats per predicted token, KL(reference || model)
  double top1_agreement = 0;  // fraction of predicted positions where both argmaxes agree
  double seconds = 0;
  // Throughput: the forward's matmul work (2 x weights x tokens, plus attention's q.k and p.v) per second of
  // the forward passes, and what a plain at::matmul of the model's own layer shapes reaches in this process.
  double forward_flops = 0, forward_seconds = 0, forward_gflops = 0, matmul_gflops = 0;
  int64_t passes = 0;
};

// Throws InputError when nothing is predicted, when the window is < 2, or when the corpus's
// vocabulary (token_bytes) differs in size from the model's.
LmEvalResult evaluate_lm(Model& model, const LmCorpus& corpus, const LmEvalOptions& opts = {},
                         Model* reference = nullptr);

struct ClassifierEvalOptions {
  int64_t batch_size = 1000;
  int64_t max_examples = 0;  // 0: all
};

struct ClassifierEvalResult {
  std::string protocol;
  int64_t examples = 0, classes = 0;
  double top1 = 0, top5 = 0;  // fractions
  double mean_nll = 0;        // cross-entropy of the labels, nats per example
  bool has_reference = false;
  double mean_kl = 0, top1_agreement = 0;  // per example
  double seconds = 0;
};

ClassifierEvalResult evaluate_classifier(Model& model, const LabeledData& data, const ClassifierEvalOptions& opts = {},
                                         Model* reference = nullptr);

void to_json(nlohmann::json& j, const LmEvalResult& r);
void to_json(nlohmann::json& j, const ClassifierEvalResult& r);

}  // namespace mc

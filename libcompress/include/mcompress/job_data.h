// What a job reads besides the model: evaluation and calibration data, the tokenizer beside a model,
// sizes on disk, and the output directory of a resumable job. Shared by every job of the pipeline
// (pipeline.h) and by the front ends.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mcompress/datasets.h"
#include "mcompress/dtype.h"
#include "mcompress/eval.h"
#include "mcompress/journal.h"
#include "mcompress/report.h"

namespace mc {

class Model;
class Tokenizer;
struct EventSink;

// tokenizer.bin, tok*.bin or tokenizer.json in the model's directory (the directory itself for a
// Hugging Face model directory); "" when there is none.
std::string find_tokenizer(const std::string& model_path);
// Bytes of a model on disk: the file, or the weight files of a Hugging Face directory.
uint64_t model_bytes(const std::string& model_path);
// Each tensor's stored dtype in a model file, or in every safetensors file of a Hugging Face directory
// (sharded checkpoints); empty when the files cannot be read as checkpoints.
std::map<std::string, DType> stored_dtypes(const std::string& model_path);
// Distinct parameter values (a tied classifier counts once).
uint64_t count_parameters(const Model& model);

struct EvalDataOptions {
  std::string data;
  std::string tokenizer;  // "" = the one beside the model
  std::string separator = "<|endoftext|>";
  bool tokens_u16 = false, tokens_u32 = false;
};
// Evaluation data for a model: labeled examples (MNIST directory, tensor file) for a classifier,
// a tokenized corpus (text or token file) for a language model. Throws InputError when the data do
// not fit the model (kind, tokenizer vocabulary size, empty text).
struct EvalData {
  bool labeled = false;
  LabeledData examples;
  LmCorpus corpus;
  std::string tokenizer_path;
};
EvalData load_eval_data(const Model& model, const std::string& model_path, const EvalDataOptions& o);
// Keeps items [START, END) of the data ("START:END"; documents of a corpus, examples of a labeled set; "" keeps
// all). InputError naming `opt` for a malformed, empty or out-of-range spec.
void slice_eval_data(EvalData& ed, const std::string& spec, const char* opt);
// "A:B" over n items -> [a, b) ("A:" and ":B" leave that end at n / 0; "" -> [0, n)). InputError naming `opt`.
std::pair<int64_t, int64_t> parse_range(const std::string& spec, int64_t n, const char* opt);

// The calibration set as the model's forward takes it: `samples` windows of `seqlen` tokens drawn
// reproducibly (seed) from the documents' token stream, or `samples` labeled examples. allow_short:
// a text shorter than seqlen gives shorter sequences instead of an error.
at::Tensor calibration_inputs(const EvalData& cd, int64_t samples, int64_t seqlen, uint64_t seed,
                              bool allow_short = false);
// Evaluates `model` (against `reference` when given) into the baseline or compressed column of `rows`.
void evaluate_into(Model& model, Model* reference, const EvalData& ed, const LmEvalOptions& lo, bool compressed,
                   std::vector<MetricRow>& rows, std::string& protocol);

// SHA-256 of a file (a directory: of its files' names and contents in name order), hex.
std::string sha256_file(const std::string& path);
std::string sha256_hex(const std::string& bytes);

// A whole file as bytes ("" when it cannot be read), and a file written atomically (a temp file
// renamed into place; FileError naming `component` and the path when it cannot be).
std::string read_file_text(const std::string& path);
void write_file_atomic(const std::string& path, const std::string& bytes, const char* component);
// Copies a file atomically (temp file + rename): FileError naming `component` when it cannot.
void copy_file_atomic(const std::string& from, const std::string& to, const char* component);
// The files that make an output directory usable on its own: the tokenizer the job used (`tokenizer`,
// may be empty) and, from beside the input model, tokenizer.json, tokenizer_config.json,
// special_tokens_map.json, generation_config.json, tokenizer.model, chat_template.jinja, tokenizer.bin,
// the processor and vocabulary files of encoder/speech models (preprocessor_config.json,
// processor_config.json, vocab.txt, vocab.json, merges.txt, added_tokens.json, normalizer.json) and tok*.bin. Existing files in `out` are replaced; config.json is not copied (the output's own
// metadata holds its config, and a dense config.json would misdescribe packed tensors).
void copy_companion_files(const std::string& model_path, const std::string& tokenizer, const std::string& out);

// Removes "<name>.tmp-<pid>" files in dir whose process is gone (a killed run's unfinished outputs).
void remove_stale_temp_files(const std::string& dir);

// The output directory of a block-sequential job (quantize, prune): created when missing (and removed
// again if the job fails before keep(): bad input found while compressing leaves nothing behind), a
// killed run's temp files removed, and the resume journal OUT/.resume opened with the job's identity;
// when it holds finished blocks, "resuming an interrupted run: ..." is printed (or a "resume" event).
// finish() deletes the journal once the job's outputs are complete.
class JobOutput {
 public:
  JobOutput(const std::string& out, const std::string& identity, const EventSink& events);
  ~JobOutput();
  BlockJournal& journal() { return *journal_; }
  void keep() { remove_on_failure_ = false; }
  void finish() { journal_->remove(); }

 private:
  std::string out_;
  bool remove_on_failure_ = false;
  std::unique_ptr<BlockJournal> journal_;
};

// A job's identity for its resume journal: the command, the options that change what it computes
// (in the order given), and the size and modification time of each input file, so edited inputs start
// afresh.
std::string run_identity(const std::string& command, const std::vector<std::string>& options,
                         const std::vector<std::string>& input_files);

}  // namespace mc

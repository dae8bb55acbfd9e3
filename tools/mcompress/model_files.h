// Helpers shared by the subcommands that load models: the tokenizer beside a model, parameter counts.
#pragma once
#include <cstdint>
#include <boost/program_options/options_description.hpp>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "mcompress/datasets.h"
#include "mcompress/eval.h"
#include "mcompress/journal.h"
#include "mcompress/report.h"

namespace mc {
struct TrainProgress;
class Model;
class Tokenizer;
struct LayerInfo;
}

namespace mcli {

// tokenizer.bin, tok*.bin or tokenizer.json in the model's directory (the directory itself for a
// Hugging Face model directory); "" when there is none.
std::string find_tokenizer(const std::string& model_path);
// Distinct parameter values (a tied classifier counts once).
uint64_t count_parameters(const mc::Model& model);
// Bytes of a model on disk: the file, or the weight files of a Hugging Face directory.
uint64_t model_bytes(const std::string& model_path);

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
  mc::LabeledData examples;
  mc::LmCorpus corpus;
  std::string tokenizer_path;
};
EvalData load_eval_data(const mc::Model& model, const std::string& model_path, const EvalDataOptions& o);

// The calibration set as the model's forward takes it: `samples` windows of `seqlen` tokens drawn
// reproducibly (seed) from the documents' token stream, or `samples` labeled examples. allow_short:
// a text shorter than seqlen gives shorter sequences instead of an error.
at::Tensor calibration_inputs(const EvalData& cd, int64_t samples, int64_t seqlen, uint64_t seed,
                              bool allow_short = false);
// Evaluates `model` (against `reference` when given) into the baseline or compressed column of `rows`.
void evaluate_into(mc::Model& model, mc::Model* reference, const EvalData& ed, const mc::LmEvalOptions& lo,
                   bool compressed, std::vector<mc::MetricRow>& rows, std::string& protocol);

// The data options quantize and prune share: evaluation and calibration data, tokenizer,
// classifier architecture, evaluation protocol, device.
struct RunDataOptions {
  std::string eval_data, calib_data, tokenizer, arch, device, separator;
  int64_t window = 128, calib_samples = 0, calib_seqlen = 128, max_docs = 0;
  bool truncate = false;
  uint64_t seed = 0;
};
void add_run_data_options(boost::program_options::options_description& desc, RunDataOptions& r,
                          int64_t default_calib_samples, const char* calib_samples_help);

// A text file's documents as one token stream: BOS + tokens of each document, concatenated.
std::vector<int32_t> text_token_stream(const std::string& path, const mc::Tokenizer& tok);

// A whole file as bytes ("" when it cannot be read), and a file written atomically (AtomicFile:
// a temp file renamed into place; InputError naming `component` and the path when it cannot be).
std::string read_file_text(const std::string& path);
void write_file_atomic(const std::string& path, const std::string& bytes, const char* component);

// What a quantize/prune run computes, for its resume journal (journal.h): the subcommand, its
// arguments without those that only change how it runs or prints (-q, --log-json, --threads), and
// the size and modification time of each input file (model, data) so edited inputs start afresh.
std::string run_identity(const std::string& command, const std::vector<std::string>& args,
                         const std::vector<std::string>& input_files);
// Removes "<name>.tmp-<pid>" files in dir whose process is gone (a killed run's unfinished outputs).
void remove_stale_temp_files(const std::string& dir);

// The output directory of a block-sequential job (quantize, prune): created when missing (and removed
// again if the job fails before keep(): bad input found while compressing leaves nothing behind), a
// killed run's temp files removed, and the resume journal OUT/.resume opened with the job's identity
// (run_identity); when it holds finished blocks, "resuming an interrupted run: ..." is printed (or a
// "resume" event with --log-json). finish() deletes the journal once the job's outputs are complete.
class JobOutput {
 public:
  JobOutput(const std::string& out, const std::string& command, const std::vector<std::string>& args,
            const std::vector<std::string>& inputs, bool quiet);
  ~JobOutput();
  mc::BlockJournal& journal() { return *journal_; }
  void keep() { remove_on_failure_ = false; }
  void finish() { journal_->remove(); }

 private:
  std::string out_;
  bool remove_on_failure_ = false;
  std::unique_ptr<mc::BlockJournal> journal_;
};

// "1m05s", "2h03m": a duration for ETAs.
std::string eta_text(double seconds);
// Progress of a training run (train, distill): --log-json events, else a line every 50 steps and on
// evaluation steps (rewritten in place on a terminal) with the loss and its terms, lr, throughput, ETA
// and the held-out loss. Nothing when quiet.
std::function<void(const mc::TrainProgress&)> train_progress(bool quiet);

// "a, b,c" -> {"a", "b", "c"} (spaces dropped, empty items skipped).
std::vector<std::string> split_list(const std::string& s);
// Progress of a pass over layers: on a terminal one line rewritten in place ("gptq quantize layer
// 3/35 layers.0.attention.wv  1.2 s, ETA 12 s"), otherwise one plain line per layer. The clock
// restarts when the phase changes. Prints nothing when quiet.
std::function<void(const std::string& phase, const mc::LayerInfo& layer, int64_t i, int64_t n)> layer_progress(
    const std::string& method, bool quiet);
// Clears the terminal's progress line (when there is one).
void end_progress(bool quiet);

// The baseline/compressed table, file sizes, stored bits per weight of the report's layers, retention,
// warnings and where the report is.
void print_summary(const mc::Report& rep, bool labeled, const std::string& out, const char* bits_label,
                   const char* baseline_label = "baseline", const char* compressed_label = "compressed");

}  // namespace mcli

// mcompress eval MODEL --data DATA: perplexity / mean NLL / bits per byte of a language model on text or
// token files, top-1/top-5 accuracy of a classifier on MNIST or a tensor file; KL and agreement against
// a --reference model.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "mcompress/datasets.h"
#include "mcompress/error.h"
#include "mcompress/eval.h"
#include "mcompress/model.h"
#include "mcompress/tokenizer.h"
#include "model_files.h"

namespace mcli {

namespace {

namespace fs = std::filesystem;


}  // namespace

int cmd_eval(const std::vector<std::string>& args, mc::EventSink& events) {
  po::options_description desc("eval options");
  std::string model_path, data, tokenizer, arch, reference, separator, device;
  int64_t window = 128, max_docs = 0, batch = 0;
  bool truncate = false, json = false, u16 = false, u32 = false;
  desc.add_options()
      ("model", po::value<std::string>(&model_path)->required(),
       "llama2.c checkpoint, Hugging Face directory, mcompress checkpoint, or classifier weights (with --arch)")
      ("data", po::value<std::string>(&data)->required(),
       "text file (documents split on the separator), token file, MNIST directory, or tensor file (inputs/labels)")
      ("tokenizer", po::value<std::string>(&tokenizer), "tokenizer.bin / tokenizer.json (default: one beside the model)")
      ("arch", po::value<std::string>(&arch), "classifier architecture YAML (when the checkpoint has none inside)")
      ("window", po::value<int64_t>(&window)->default_value(128), "tokens per scoring window")
      ("truncate", po::bool_switch(&truncate), "score only each document's first window")
      ("separator", po::value<std::string>(&separator)->default_value("<|endoftext|>"),
       "document separator of text files (\"\" = blank lines)")
      ("reference", po::value<std::string>(&reference), "baseline model: adds KL(reference || model) and top-1 agreement")
      ("max-docs", po::value<int64_t>(&max_docs)->default_value(0), "evaluate at most N documents / examples (0 = all)")
      ("batch-size", po::value<int64_t>(&batch)->default_value(0), "windows (LM) or examples per forward pass (0 = auto)")
      ("tokens-u16", po::bool_switch(&u16), "DATA is a flat uint16 token file")
      ("tokens-u32", po::bool_switch(&u32), "DATA is a flat uint32 token file")
      ("device", po::value<std::string>(&device)->default_value("cpu"), "cpu or cuda")
      ("json", po::bool_switch(&json), "print JSON");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  CommonOptions common;
  const std::string usage =
      "MODEL --data DATA [--tokenizer T] [--arch A] [--window 128] [--truncate] [--separator S] "
      "[--reference BASELINE] [--max-docs N] [--json] [--device cpu|cuda] [--threads N]";
  if (!parse_command_line("eval", usage, args, desc, pos, vm, common, events)) return 0;
  if (u16 && u32) mc::fail("cli", "--tokens-u16 and --tokens-u32 exclude each other");
  if (max_docs < 0 || batch < 0) mc::fail("cli", "--max-docs and --batch-size must be >= 0");

  mc::LoadOptions lo;
  lo.arch_file = arch;
  lo.device = device;
  auto model = mc::load_model(model_path, lo);
  std::unique_ptr<mc::Model> ref;
  if (!reference.empty()) ref = mc::load_model(reference, lo);

  nlohmann::json j;
  // --json: the result as one JSON document; --log-json: as a "result" event (the Python bindings).
  auto print_result = [&](const nlohmann::json& res) {
    if (events.json) events.emit("result", res.dump());
    else std::cout << res.dump(2) << "\n";
  };
  j["model"] = model_path;
  j["arch"] = model->arch();
  const uint64_t nparams = count_parameters(*model);
  j["parameters"] = nparams;
  j["data"] = data;
  if (!reference.empty()) j["reference"] = reference;

  EvalDataOptions dopts{data, tokenizer, separator, u16, u32};
  EvalData ed = load_eval_data(*model, model_path, dopts);
  if (ed.labeled) {
    const mc::LabeledData& d = ed.examples;
    mc::ClassifierEvalOptions co;
    co.max_examples = max_docs;
    if (batch > 0) co.batch_size = batch;
    auto r = mc::evaluate_classifier(*model, d, co, ref.get());
    if (json || events.json) {
      j["result"] = r;
      print_result(j);
      return 0;
    }
    std::cout << "model       " << model_path << " (" << model->arch() << ", " << with_commas(nparams)
              << " parameters)\n"
              << "data        " << data << "\n"
              << "protocol    " << r.protocol << "\n"
              << "top-1       " << fmt("%.2f%%", 100 * r.top1) << "\n"
              << "top-5       " << fmt("%.2f%%", 100 * r.top5) << "\n"
              << "mean NLL    " << fmt("%.4f", r.mean_nll) << " nats/example\n";
    if (r.has_reference)
      std::cout << "vs ref      KL " << fmt("%.5f", r.mean_kl) << " nats/example, top-1 agreement "
                << fmt("%.2f%%", 100 * r.top1_agreement) << "\n";
    std::cout << "time        " << fmt("%.2f s", r.seconds) << "\n";
    return 0;
  }

  const std::string tok_path = ed.tokenizer_path;
  const mc::LmCorpus& corpus = ed.corpus;
  mc::LmEvalOptions eo;
  eo.window = window;
  eo.truncate = truncate;
  eo.max_docs = max_docs;
  if (batch > 0) eo.batch_size = batch;
  auto r = mc::evaluate_lm(*model, corpus, eo, ref.get());
  if (!tok_path.empty()) j["tokenizer"] = tok_path;
  if (json || events.json) {
    j["result"] = r;
    print_result(j);
    return 0;
  }
  std::cout << "model       " << model_path << " (" << model->arch() << ", " << with_commas(nparams)
            << " parameters)\n"
            << "data        " << data << " (" << r.documents << " documents, " << r.windows << " windows)\n"
            << "protocol    " << r.protocol << "\n"
            << "predicted   " << with_commas(uint64_t(r.predicted_tokens)) << " tokens, "
            << with_commas(uint64_t(r.bytes)) << " bytes\n"
            << "mean NLL    " << fmt("%.4f", r.mean_nll) << " nats/token\n"
            << "perplexity  " << fmt("%.3f", r.perplexity) << "\n"
            << "bits/byte   " << (r.bits_per_byte >= 0 ? fmt("%.4f", r.bits_per_byte) : "n/a (no tokenizer)") << "\n";
  if (r.has_reference)
    std::cout << "vs ref      KL " << fmt("%.5f", r.mean_kl) << " nats/token, top-1 agreement "
              << fmt("%.2f%%", 100 * r.top1_agreement) << "\n";
  std::cout << "time        " << fmt("%.2f s", r.seconds) << " ("
            << fmt("%.0f", double(r.predicted_tokens) / std::max(r.seconds, 1e-9)) << " tokens/s)\n";
  return 0;
}

}  // namespace mcli

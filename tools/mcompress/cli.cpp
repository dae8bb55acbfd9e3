// The subcommand table and what every subcommand shares (option parsing, JSON events, number
// formatting), plus dispatch(): the CLI's main() and the Python bindings both run commands through it.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli.h"
#include "mcompress/error.h"
#include "mcompress/text_format.h"
#include "mcompress/threads.h"

namespace mcli {

const std::vector<Command>& commands() {
  static const std::vector<Command> cmds = {
      {"inspect", "list a checkpoint's tensors with dtype, shape, bytes and statistics", cmd_inspect},
      {"convert", "convert a checkpoint between formats (and float dtypes)", cmd_convert},
      {"eval", "perplexity / bits per byte of a language model, accuracy of a classifier", cmd_eval},
      {"generate", "sample text from a language model", cmd_generate},
      {"quantize", "quantize a model's weights (RTN, HQQ, imatrix, GPTQ, AWQ, SmoothQuant W8A8) and report the accuracy kept", cmd_quantize},
      {"prune", "prune a model's weights (magnitude, Wanda, SparseGPT; unstructured or N:M) and report the accuracy kept", cmd_prune},
      {"train", "train a small LLaMA-architecture model from scratch", cmd_train},
      {"run", "run a recipe (recipes/*.yaml): stages of quantize / prune / distill, a combined report, an accuracy gate", cmd_run},
      {"sweep", "expand a grid of models x recipes x parameters into jobs; run them locally (--jobs N) or on Slurm", cmd_sweep},
      {"distill", "train a student from a teacher, or fine-tune a compressed model to recover accuracy", cmd_distill},
      {"tokenize", "token ids of a text (or the text of ids) with a tokenizer.json / tokenizer.bin", cmd_tokenize},
      {"imatrix", "llama.cpp's importance matrix of a model on calibration text (GGUF, as llama-imatrix writes it)", cmd_imatrix},
      {"export", "write a model for other runtimes: GGUF (llama.cpp), GPTQ / compressed-tensors (Transformers, vLLM), llama2.c int8", cmd_export},
  };
  return cmds;
}

int dispatch(const std::vector<std::string>& args, const mc::EventSink& base) {
  if (args.empty()) mc::fail("cli", "no command given (run 'mcompress --help' for the list)");
  for (const auto& c : commands())
    if (args[0] == c.name) {
      mc::EventSink events = base;  // -q / --log-json refine this command's copy
      int rc = 0;
      try {
        rc = c.run(std::vector<std::string>(args.begin() + 1, args.end()), events);
      } catch (const mc::GateError& e) {
        events.emit("error", nlohmann::json({{"exit", 3}, {"message", e.what()}}).dump());
        throw;
      } catch (const mc::InputError& e) {
        events.emit("error", nlohmann::json({{"exit", 2}, {"message", e.what()}}).dump());
        throw;
      }
      events.emit("done", nlohmann::json({{"exit", rc}}).dump());
      return rc;
    }
  mc::fail("cli", "unknown command '", args[0], "' (run 'mcompress --help' for the list)");
}

void add_stage_options(po::options_description& desc, const std::string& pass) {
  for (const auto& d : mc::stage_option_table(pass)) {
    const std::string help = d.help + (d.default_value.empty() ? "" : " (default: " + d.default_value + ")");
    if (d.type == mc::OptionType::Flag) desc.add_options()(d.name.c_str(), po::bool_switch(), help.c_str());
    else if (d.type == mc::OptionType::Repeated)
      desc.add_options()(d.name.c_str(), po::value<std::vector<std::string>>()->composing(), help.c_str());
    else desc.add_options()(d.name.c_str(), po::value<std::string>(), help.c_str());
  }
}

mc::OptionValues given_stage_options(const po::variables_map& vm, const std::string& pass) {
  mc::OptionValues given;
  for (const auto& d : mc::stage_option_table(pass)) {
    if (!vm.count(d.name)) continue;
    if (d.type == mc::OptionType::Flag) {
      if (vm[d.name].as<bool>()) given.emplace_back(d.name, "");
    } else if (d.type == mc::OptionType::Repeated) {
      for (const auto& v : vm[d.name].as<std::vector<std::string>>()) given.emplace_back(d.name, v);
    } else {
      given.emplace_back(d.name, vm[d.name].as<std::string>());
    }
  }
  return given;
}

void add_common_options(po::options_description& desc, CommonOptions& common) {
  desc.add_options()
      ("threads", po::value<int>(&common.threads)->default_value(0),
       "worker threads for LibTorch/BLAS (0 = all cores; LibTorch alone would use 1)")
      ("quiet,q", po::bool_switch(&common.quiet), "print only results and errors")
      ("log-json", po::bool_switch(&common.log_json), "progress, results and errors as JSON lines on stdout (for batch jobs)")
      ("help,h", po::bool_switch(&common.help), "show this help");
}

bool parse_command_line(const std::string& cmd, const std::string& usage, const std::vector<std::string>& args,
                        po::options_description& desc, po::positional_options_description& pos,
                        po::variables_map& vm, CommonOptions& common, mc::EventSink& events) {
  add_common_options(desc, common);
  try {
    po::store(po::command_line_parser(args).options(desc).positional(pos).run(), vm);
    if (vm.count("help") && vm["help"].as<bool>()) {
      std::cout << "usage: mcompress " << cmd << " " << usage << "\n\n" << desc << "\n";
      return false;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    mc::fail("cli", "mcompress ", cmd, ": ", e.what(), " (usage: mcompress ", cmd, " ", usage, ")");
  }
  if (common.threads < 0) mc::fail("cli", "--threads must be >= 0 (0 = all cores), got ", common.threads);
  if (common.log_json) events.json = true;
  if (common.quiet || events.json) events.quiet = true;
  common.quiet = events.quiet;
  common.log_json = events.json;
  events.emit("start", nlohmann::json({{"command", cmd}, {"args", args}}).dump());
  mc::set_threads(common.threads);
  return true;
}

std::string human_bytes(uint64_t n) { return mc::human_size(n); }
std::string with_commas(uint64_t n) { return mc::commas(n); }
std::string fmt(const char* printf_format, double v) { return mc::fmt_num(printf_format, v); }

}  // namespace mcli

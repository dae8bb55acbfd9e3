// The subcommand table and what every subcommand shares (option parsing, JSON events, number
// formatting), plus dispatch(): the CLI's main() and the Python bindings both run commands through it.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli.h"
#include "mcompress/error.h"
#include "mcompress/threads.h"

namespace mcli {

const std::vector<Command>& commands() {
  static const std::vector<Command> cmds = {
      {"inspect", "list a checkpoint's tensors with dtype, shape, bytes and statistics", cmd_inspect},
      {"convert", "convert a checkpoint between formats (and float dtypes)", cmd_convert},
      {"eval", "perplexity / bits per byte of a language model, accuracy of a classifier", cmd_eval},
      {"generate", "sample text from a language model", cmd_generate},
      {"quantize", "quantize a model's weights (RTN, imatrix, GPTQ, AWQ, SmoothQuant W8A8) and report the accuracy kept", cmd_quantize},
      {"prune", "prune a model's weights (magnitude, Wanda, SparseGPT; unstructured or N:M) and report the accuracy kept", cmd_prune},
      {"train", "train a small LLaMA-architecture model from scratch", cmd_train},
      {"run", "run a recipe (recipes/*.yaml): stages of quantize / prune / distill, a combined report, an accuracy gate", cmd_run},
      {"sweep", "expand a grid of models x recipes x parameters into jobs; run them locally (--jobs N) or on Slurm", cmd_sweep},
      {"distill", "train a student from a teacher, or fine-tune a compressed model to recover accuracy", cmd_distill},
      {"export", "write a model for other runtimes: GGUF (llama.cpp), GPTQ / compressed-tensors (Transformers, vLLM), llama2.c int8", cmd_export},
  };
  return cmds;
}

static bool g_log_json = false;
static std::function<void(const std::string&)> g_event_sink;

bool log_json() { return g_log_json; }

void set_event_sink(std::function<void(const std::string& json_line)> sink) { g_event_sink = std::move(sink); }

void log_event(const std::string& event, const std::string& fields) {
  nlohmann::json j = fields.empty() ? nlohmann::json::object() : nlohmann::json::parse(fields);
  nlohmann::json line = {{"event", event}};
  line.update(j);
  if (g_event_sink) {
    g_event_sink(line.dump());
    return;
  }
  std::printf("%s\n", line.dump().c_str());
  std::fflush(stdout);
}

int dispatch(const std::vector<std::string>& args) {
  g_log_json = false;  // set again by parse_command_line when --log-json is given
  if (args.empty()) mc::fail("cli", "no command given (run 'mcompress --help' for the list)");
  for (const auto& c : commands())
    if (args[0] == c.name) {
      const int rc = c.run(std::vector<std::string>(args.begin() + 1, args.end()));
      if (log_json()) log_event("done", nlohmann::json({{"exit", rc}}).dump());
      return rc;
    }
  mc::fail("cli", "unknown command '", args[0], "' (run 'mcompress --help' for the list)");
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
                        po::variables_map& vm, CommonOptions& common) {
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
  if (common.log_json) {
    g_log_json = true;
    common.quiet = true;
    log_event("start", nlohmann::json({{"command", cmd}, {"args", args}}).dump());
  }
  mc::set_threads(common.threads);
  return true;
}

std::string human_bytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  char buf[32];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(n));
  else
    std::snprintf(buf, sizeof buf, "%.2f %s", v, units[u]);
  return buf;
}

std::string fmt(const char* printf_format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, printf_format, v);
  return buf;
}

std::string with_commas(uint64_t n) {
  std::string s = std::to_string(n), out;
  int c = 0;
  for (auto it = s.rbegin(); it != s.rend(); ++it) {
    if (c && c % 3 == 0) out.push_back(',');
    out.push_back(*it);
    ++c;
  }
  return std::string(out.rbegin(), out.rend());
}

}  // namespace mcli

// mcompress: the command-line front end. Parses options, calls libcompress, maps errors to exit codes:
// 0 ok, 1 internal error, 2 bad input or usage, 3 accuracy gate failed.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <unistd.h>
#include <cstdlib>
#include <string>
#include <vector>

#include "cli.h"
#include "mcompress/atomic_file.h"
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
  };
  return cmds;
}

static bool g_log_json = false;

bool log_json() { return g_log_json; }

void log_event(const std::string& event, const std::string& fields) {
  nlohmann::json j = fields.empty() ? nlohmann::json::object() : nlohmann::json::parse(fields);
  nlohmann::json line = {{"event", event}};
  line.update(j);
  std::printf("%s\n", line.dump().c_str());
  std::fflush(stdout);
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

namespace {

void print_usage() {
  std::cout << "mcompress " << MCOMPRESS_VERSION
            << " - post-training quantization, pruning and distillation of model checkpoints\n\n"
               "usage: mcompress [--version] [--help] <command> [options]\n\ncommands:\n";
  for (const auto& c : mcli::commands()) std::printf("  %-10s %s\n", c.name, c.summary);
  std::cout << "\n'mcompress <command> --help' shows a command's options.\n"
               "exit status: 0 ok, 1 internal error, 2 bad input or usage, 3 accuracy gate failed\n";
}

}  // namespace

int main(int argc, char** argv) {
  // OpenMP's worker threads spin between parallel regions by default and take the cores from
  // OpenBLAS's threads and from each other on a small or busy machine (GPTQ on 4096x4096: 9.9 s ->
  // 3.0 s under load; stories260K eval 2.2 s -> 1.5 s on an idle 2-core machine). libgomp reads the
  // policy when it is loaded, before main, so set it and start again once, unless the user chose one.
  if (!std::getenv("OMP_WAIT_POLICY")) {
    ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    ::execv("/proc/self/exe", argv);  // on failure, carry on with the default policy
  }
  mc::install_cleanup_handlers();
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    if (args.size() >= 2 && args[0] == "help") args = {args[1], "--help"};
    else {
      print_usage();
      return args.empty() ? 2 : 0;
    }
  }
  if (args[0] == "--version" || args[0] == "-V") {
    std::cout << "mcompress " << MCOMPRESS_VERSION << "\n";
    return 0;
  }
  try {
    for (const auto& c : mcli::commands()) {
      if (args[0] == c.name) {
        const int rc = c.run(std::vector<std::string>(args.begin() + 1, args.end()));
        if (mcli::log_json()) mcli::log_event("done", nlohmann::json({{"exit", rc}}).dump());
        return rc;
      }
    }
    mc::fail("cli", "unknown command '", args[0], "' (run 'mcompress --help' for the list)");
  } catch (const mc::GateError& e) {
    std::cerr << "mcompress: " << e.what() << "\n";
    if (mcli::log_json()) mcli::log_event("error", nlohmann::json({{"exit", 3}, {"message", e.what()}}).dump());
    return 3;
  } catch (const mc::InputError& e) {
    std::cerr << "mcompress: error: " << e.what() << "\n";
    if (mcli::log_json()) mcli::log_event("error", nlohmann::json({{"exit", 2}, {"message", e.what()}}).dump());
    return 2;
  } catch (const std::bad_alloc&) {
    std::cerr << "mcompress: error: out of memory\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "mcompress: internal error: " << e.what() << "\n";
    return 1;
  }
}

// Shared pieces of the mcompress subcommands: each subcommand is a function taking its own argv
// (argv[0] = subcommand name) and returning an exit status. Errors are thrown (mc::InputError -> 2);
// main() maps them to exit codes and prints one line.
#pragma once
#include <boost/program_options.hpp>
#include <functional>
#include <string>
#include <vector>

#include "mcompress/events.h"
#include "mcompress/report.h"
#include "mcompress/stage_options.h"

namespace mcli {

namespace po = boost::program_options;

struct Command {
  const char* name;
  const char* summary;
  int (*run)(const std::vector<std::string>& args, mc::EventSink& events);
};
const std::vector<Command>& commands();
// Runs args[0] as a subcommand with the rest as its arguments; returns its exit status. Errors are
// thrown (mc::InputError: bad input, mc::GateError, others); main() and the Python bindings map them.
// events: where progress and results go (-q and --log-json refine it); with json, errors are also
// sent as an "error" event before they are thrown.
int dispatch(const std::vector<std::string>& args, const mc::EventSink& events = {});

// Options every subcommand accepts: --threads, --help, --quiet.
struct CommonOptions {
  int threads = 0;
  bool help = false;
  bool quiet = false;
  bool log_json = false;  // progress and results as JSON lines on stdout (implies quiet for the text)
};
void add_common_options(po::options_description& desc, CommonOptions& common);

// Parses args (after the subcommand name) into vm. Unknown options / bad values throw InputError.
// Returns false when --help was given (help already printed). -q / --log-json refine `events`.
bool parse_command_line(const std::string& cmd, const std::string& usage, const std::vector<std::string>& args,
                        po::options_description& desc, po::positional_options_description& pos,
                        po::variables_map& vm, CommonOptions& common, mc::EventSink& events);

// A stage's option table (stage_options.h) as command-line options, and the options given.
void add_stage_options(po::options_description& desc, const std::string& pass);
mc::OptionValues given_stage_options(const po::variables_map& vm, const std::string& pass);

// The baseline/compressed table, file sizes, stored bits per weight of the report's layers (against
// the input's, from its dtypes), retention, warnings and where the report is.
void print_summary(const mc::Report& rep, bool labeled, const std::string& out, const char* bits_label,
                   const char* baseline_label = "baseline", const char* compressed_label = "compressed");

std::string human_bytes(uint64_t n);   // "1.50 MiB"
std::string with_commas(uint64_t n);   // "1,568,000"
std::string fmt(const char* printf_format, double v);  // fmt("%.2f%%", 98.31)

#define MC_COMMAND(name) int name(const std::vector<std::string>& args, mc::EventSink& events)
MC_COMMAND(cmd_inspect);
MC_COMMAND(cmd_convert);
MC_COMMAND(cmd_eval);
MC_COMMAND(cmd_generate);
MC_COMMAND(cmd_train);
MC_COMMAND(cmd_quantize);
MC_COMMAND(cmd_prune);
MC_COMMAND(cmd_distill);
MC_COMMAND(cmd_run);
MC_COMMAND(cmd_sweep);
MC_COMMAND(cmd_export);
MC_COMMAND(cmd_tokenize);
MC_COMMAND(cmd_imatrix);

}  // namespace mcli

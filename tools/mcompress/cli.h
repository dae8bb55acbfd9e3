// Shared pieces of the mcompress subcommands: each subcommand is a function taking its own argv
// (argv[0] = subcommand name) and returning an exit status. Errors are thrown (mc::InputError -> 2);
// main() maps them to exit codes and prints one line.
#pragma once
#include <boost/program_options.hpp>
#include <functional>
#include <string>
#include <vector>

namespace mcli {

namespace po = boost::program_options;

struct Command {
  const char* name;
  const char* summary;
  int (*run)(const std::vector<std::string>& args);
};
const std::vector<Command>& commands();
// Runs args[0] as a subcommand with the rest as its arguments; returns its exit status. Errors are
// thrown (mc::InputError: bad input, mc::GateError, others); main() and the Python bindings map them.
int dispatch(const std::vector<std::string>& args);

// Options every subcommand accepts: --threads, --help, --quiet.
struct CommonOptions {
  int threads = 0;
  bool help = false;
  bool quiet = false;
  bool log_json = false;  // progress and results as JSON lines on stdout (implies quiet for the text)
};
// --log-json was given: long steps report through log_event instead of text.
bool log_json();
// One JSON object per line on stdout: {"event": EVENT, ...fields} (fields: a JSON object's text, "" for none).
void log_event(const std::string& event, const std::string& fields_json = "");
// Where log_event lines go instead of stdout (the Python bindings' progress callback); {} = stdout.
void set_event_sink(std::function<void(const std::string& json_line)> sink);
void add_common_options(po::options_description& desc, CommonOptions& common);

// Parses args (after the subcommand name) into vm. Unknown options / bad values throw InputError.
// Returns false when --help was given (help already printed).
bool parse_command_line(const std::string& cmd, const std::string& usage, const std::vector<std::string>& args,
                        po::options_description& desc, po::positional_options_description& pos,
                        po::variables_map& vm, CommonOptions& common);

std::string human_bytes(uint64_t n);   // "1.50 MiB"
std::string with_commas(uint64_t n);   // "1,568,000"
std::string fmt(const char* printf_format, double v);  // fmt("%.2f%%", 98.31)

int cmd_inspect(const std::vector<std::string>& args);
int cmd_convert(const std::vector<std::string>& args);
int cmd_eval(const std::vector<std::string>& args);
int cmd_generate(const std::vector<std::string>& args);
int cmd_train(const std::vector<std::string>& args);
int cmd_quantize(const std::vector<std::string>& args);
int cmd_prune(const std::vector<std::string>& args);
int cmd_distill(const std::vector<std::string>& args);
int cmd_run(const std::vector<std::string>& args);
int cmd_sweep(const std::vector<std::string>& args);
int cmd_export(const std::vector<std::string>& args);

}  // namespace mcli

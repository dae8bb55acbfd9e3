// The options of the pipeline's stages (quantize, prune, distill): one table per stage kind, used by
// the CLI (its --help and parsing are built from it), by recipes (checked when the recipe is loaded,
// before any stage runs) and by the Python bindings (keyword arguments). A bad name or value is an
// InputError naming where it came from ("recipes/x.yaml: stage 2 (quantize)"), the option and what is
// allowed.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace mc {

enum class OptionType { Flag, Int, Real, Text, List, Repeated };

struct OptionDef {
  std::string name;           // "group-size" (recipes may write group_size)
  OptionType type;
  std::string default_value;  // "" = none
  std::string help;
};

// The table of "quantize", "prune" or "distill" (InputError for another name).
const std::vector<OptionDef>& stage_option_table(const std::string& pass);

// Options as given (name without dashes, value; "" for a flag), in order.
using OptionValues = std::vector<std::pair<std::string, std::string>>;

// Given options checked against a table: unknown names (with the closest known one suggested) and
// values that are not of the option's type fail at construction. Accessors return the given value,
// else the table's default.
class StageOptions {
 public:
  StageOptions() = default;
  StageOptions(std::string pass, OptionValues given, std::string where);

  const std::string& pass() const { return pass_; }
  const std::string& where() const { return where_; }
  const OptionValues& given() const { return given_; }
  bool has(const std::string& name) const;  // given explicitly
  bool flag(const std::string& name) const;
  int64_t integer(const std::string& name) const;
  uint64_t unsigned_integer(const std::string& name) const;
  double real(const std::string& name) const;
  std::string text(const std::string& name) const;
  std::vector<std::string> list(const std::string& name) const;      // comma-separated items
  std::vector<std::string> repeated(const std::string& name) const;  // every occurrence
  // Sets an option unless the stage gave it (run's --calib, --eval ... for every stage).
  void set_default(const std::string& name, const std::string& value);
  // InputError "WHERE: --NAME ...": for checks that need more than the type.
  [[noreturn]] void fail(const std::string& name, const std::string& message) const;
  // "--method gptq --bits 4 ..." as given.
  std::string describe() const;
  // The given options as command-line arguments (for identities and command lines).
  std::vector<std::string> args() const;

 private:
  const OptionDef& def(const std::string& name) const;
  std::string value(const std::string& name) const;
  std::string pass_, where_;
  OptionValues given_;
};

// "a, b,c" -> {"a", "b", "c"} (spaces dropped, empty items skipped).
std::vector<std::string> split_list(const std::string& s);

}  // namespace mc

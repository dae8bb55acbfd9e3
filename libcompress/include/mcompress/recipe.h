// Recipes: a compression pipeline as YAML (recipes/*.yaml), run by `mcompress run`.
//
//   name: w4-g128-gptq
//   description: GPTQ INT4, groups of 128, act-order
//   seed: 0                                  # optional: --seed of every stage that does not set one
//   stages:                                  # run in order, each on the previous stage's output
//     - quantize:                            # quantize | prune | distill: options are the CLI's
//         method: gptq                       #   (--method gptq), dashes or underscores
//         bits: 4
//         group-size: 128
//         act-order: true                    #   true: a flag; false: left out
//         targets: ["layers.*"]              #   lists: comma-joined (layer globs or "re:REGEX")
//         ignore: ["*.w2"]
//         overrides:                         #   quantize: per-layer grids (first match wins)
//           - {match: "layers.0.*", bits: 8, per-channel: true}
//   gate:                                    # optional accuracy gate on the final model
//     metric: bits per byte                  #   a metric name of the report
//     max-relative-drop: 0.05                #   or max-absolute-drop: 0.02 (drop = the worse direction)
//   export: gguf:q4_0                        # optional final format: safetensors (default), gguf:TYPE,
//                                            #   hf-gptq, compressed-tensors, llama2c-q8 (mcompress export)
//
// Unknown keys, passes and malformed values are InputErrors naming the file and the stage.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mc {

struct RecipeStage {
  std::string pass;  // quantize | prune | distill
  // CLI options without the leading dashes, in the recipe's order; value "" for a flag.
  std::vector<std::pair<std::string, std::string>> options;
  std::string where;  // "recipes/x.yaml: stage 2 (quantize)"
  bool has(const std::string& option) const;
  std::string get(const std::string& option) const;  // "" when absent
  // The options as command-line arguments: --key value ... (overrides become --override PATTERN:...).
  std::vector<std::string> args() const;
  std::string describe() const;  // "quantize --method gptq --bits 4 ..."
};

struct RecipeGate {
  std::string metric;
  double max_drop = 0;
  bool relative = true;  // drop as a fraction of the baseline, else in the metric's units
  std::string describe() const;  // "bits per byte may worsen by at most 5%"
};

struct Recipe {
  std::string path, text;  // where it came from and its text as given (saved beside outputs)
  std::string name, description;
  std::optional<uint64_t> seed;
  std::vector<RecipeStage> stages;
  std::optional<RecipeGate> gate;
  std::string export_format;  // "" = the stages' own safetensors
};

Recipe parse_recipe(const std::string& text, const std::string& where);
Recipe load_recipe(const std::string& path);

// Checks a gate against a metric's baseline and compressed values: returns {passed, "the verdict"}.
std::pair<bool, std::string> check_gate(const RecipeGate& g, double baseline, double compressed, bool higher_is_better);

}  // namespace mc

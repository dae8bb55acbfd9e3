// mcompress run RECIPE --model M [--calib C] [--eval E] -o DIR [--dry-run]
// Runs a recipe's stages in order through the library pipeline (pipeline.h: run_recipe), each on the
// previous stage's output in DIR/stages/N-pass/, their reports handed on in memory. Every stage's
// options are checked when the recipe is loaded, so a typo in the last stage fails before the first
// runs. A stage whose output exists from an earlier run with the same options is reused; an
// interrupted one continues. Writes DIR/model.safetensors, DIR/recipe.yaml and DIR/report.*; a missed
// accuracy gate makes the report say FAILED and exits 3.
#include <cstdio>

#include "cli.h"
#include "mcompress/error.h"
#include "mcompress/job_data.h"
#include "mcompress/pipeline.h"
#include "mcompress/recipe.h"

namespace mcli {

int cmd_run(const std::vector<std::string>& args, mc::EventSink& events) {
  po::options_description desc("run options");
  std::string recipe_path;
  mc::PipelineInputs in;
  uint64_t seed = 0;
  desc.add_options()
      ("recipe", po::value<std::string>(&recipe_path)->required(), "recipe YAML (recipes/*.yaml)")
      ("model", po::value<std::string>(&in.model)->required(), "model to compress")
      ("calib", po::value<std::string>(&in.calib), "calibration data (distill stages: training data)")
      ("calib-from-eval", po::bool_switch(&in.calib_from_eval),
       "calibrate on the --eval data (the report then says the figures are not held out)")
      ("eval", po::value<std::string>(&in.eval), "held-out data: every stage and the final report are evaluated on it")
      ("tokenizer", po::value<std::string>(&in.tokenizer), "tokenizer (default: the one beside the model)")
      ("arch", po::value<std::string>(&in.arch), "classifier architecture YAML")
      ("window", po::value<int64_t>(&in.window)->default_value(128), "tokens per evaluation window")
      ("truncate", po::bool_switch(&in.truncate), "score only each document's first window")
      ("max-docs", po::value<int64_t>(&in.max_docs)->default_value(0), "evaluate at most N documents")
      ("seed", po::value<uint64_t>(&seed), "seed of every stage (default: the recipe's, else each pass's own)")
      ("device", po::value<std::string>(&in.device), "cpu or cuda")
      ("output,o", po::value<std::string>(&in.out), "output directory (not needed with --dry-run)")
      ("dry-run", po::bool_switch(&in.dry_run), "print the plan (layers, what happens to each, sizes) and stop");
  po::positional_options_description pos;
  pos.add("recipe", 1);
  po::variables_map vm;
  CommonOptions common;
  if (!parse_command_line("run", "RECIPE --model M [--calib C] [--eval E] -o DIR [--dry-run]", args, desc, pos, vm,
                          common, events))
    return 0;
  const mc::Recipe recipe = mc::load_recipe(recipe_path);  // every stage's options checked here
  in.seed = vm.count("seed") ? std::optional<uint64_t>(seed) : recipe.seed;
  if (in.tokenizer.empty()) in.tokenizer = mc::find_tokenizer(in.model);  // stage outputs have none beside them
  in.command_line = "mcompress run";
  for (const auto& x : args) in.command_line += " " + x;
  const mc::JobResult res = mc::run_recipe(recipe, in, events);
  if (in.dry_run || res.status == 130) return res.status;
  const mc::Report& rep = res.report;
  if (!events.quiet) {
    std::printf("\n== recipe %s: %zu stage(s) ==\n", recipe.name.c_str(), recipe.stages.size());
    print_summary(rep, res.labeled, in.out, "stored bits per weight");
    if (recipe.gate) std::printf("accuracy gate: %s\n", rep.settings.at("accuracy gate").c_str());
  }
  if (res.status == 3) std::fprintf(stderr, "mcompress: accuracy gate %s\n", rep.settings.at("accuracy gate").c_str());
  return res.status;
}

}  // namespace mcli

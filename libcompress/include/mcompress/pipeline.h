// The one pipeline every front end runs: the CLI's quantize / prune / distill / run, and the Python
// bindings' jobs. A stage is a pass with its checked options (stage_options.h); run_stage does
//   load -> plan -> baseline evaluation -> calibration -> pass -> write -> reload -> evaluation -> report
// and run_recipe chains a recipe's stages, handing each stage's report to the next in memory.
// Progress and results go to the EventSink passed in (events.h).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mcompress/events.h"
#include "mcompress/recipe.h"
#include "mcompress/report.h"
#include "mcompress/stage_options.h"

namespace mc {

class Model;

struct JobIO {
  std::string model;         // the input model
  std::string out;           // the output directory
  std::string command_line;  // as the user gave it (for the report)
  bool dry_run = false;      // print the plan (and put it in the result's report) without running
};

struct JobResult {
  Report report;
  int status = 0;      // 0, or 130 when a training job was interrupted (its state is saved)
  bool labeled = false;  // evaluated on labeled examples (a classifier)
};

// Checks a stage's options beyond their types (combinations, ranges, grids, patterns' syntax) without
// reading any file: what a recipe does for every stage before the first one runs.
void check_stage(const StageOptions& options);

// The plan of a quantize or prune stage on a loaded model: which layer gets which method, grid or
// sparsity, and the estimated stored bits, from the same selection code the stage runs.
std::vector<PlanRow> plan_stage(const Model& model, const std::string& model_path, const StageOptions& options);
// One row per layer across a recipe's stages (what each stage does, the bits after the last).
std::vector<PlanRow> combine_plans(const std::vector<std::vector<PlanRow>>& stages);
// Prints a plan as a table with the estimated size of the model after the stage.
void print_plan(const std::vector<PlanRow>& plan, uint64_t model_bytes_before, const EventSink& events);

JobResult run_stage(const StageOptions& options, const JobIO& io, const EventSink& events);

// What `mcompress run` adds to every stage that does not set it itself.
struct PipelineInputs {
  std::string model, out;
  std::string calib, eval, tokenizer, arch, device;
  bool calib_from_eval = false;
  int64_t window = 128, max_docs = 0;
  bool truncate = false;
  std::optional<uint64_t> seed;
  std::string command_line;
  bool dry_run = false;
};
JobResult run_recipe(const Recipe& recipe, const PipelineInputs& in, const EventSink& events);

// The stage's StageOptions as run_recipe runs them (the recipe's options plus the run's inputs).
StageOptions recipe_stage_options(const RecipeStage& stage, const PipelineInputs& in, const std::string& input_model,
                                  bool first);

}  // namespace mc

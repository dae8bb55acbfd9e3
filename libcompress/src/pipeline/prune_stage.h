// The prune stage's parsed options (prune_job.cpp).
#pragma once
#include <string>

#include "mcompress/prune/prune.h"
#include "mcompress/prune/structured.h"
#include "mcompress/stage_options.h"

namespace mc {

struct PruneStage {
  PruneOptions prune;
  std::string storage = "sparse";
  std::string pattern;  // "2:4" as given
  bool is_structured = false;
  bool needs_calibration = false;  // structured pruning, or a method that needs it (methods.h)
  std::string calibration_for;     // "--structured", "--method wanda"
  StructuredOptions structured;
};
PruneStage prune_stage(const StageOptions& so);

}  // namespace mc

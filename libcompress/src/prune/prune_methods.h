// The prune methods' entries of the method table (methods.h): each adapts one pure algorithm to a layer
// of prune_model (its sparsity, options and statistics in, the pruned weight and any codes out).
#pragma once
#include "mcompress/methods.h"

namespace mc {

LayerOutcome magnitude_layer(const LayerInputs& in, double sparsity, const PruneOptions& o);
LayerOutcome wanda_layer(const LayerInputs& in, double sparsity, const PruneOptions& o);
LayerOutcome sparsegpt_layer(const LayerInputs& in, double sparsity, const PruneOptions& o);

}  // namespace mc

// The prune methods on one layer (prune_methods.h).
#include "prune_methods.h"

#include <ATen/ATen.h>

#include "mcompress/prune/magnitude.h"
#include "mcompress/prune/prune.h"
#include "mcompress/prune/sparsegpt.h"
#include "mcompress/prune/wanda.h"
#include "mcompress/quant/hessian.h"

namespace mc {

namespace {

// The pruned weight, its survivors quantized by RTN with PruneOptions::quant (a zero stays exactly zero
// on every grid rtn.h makes).
LayerOutcome quantize_survivors(at::Tensor Wp, const PruneOptions& o, const std::string& layer) {
  LayerOutcome z;
  if (o.quant) {
    z.quant = rtn_quantize(Wp, *o.quant, layer);
    Wp = z.quant->dequantize();
  }
  z.weight = Wp;
  return z;
}

}  // namespace

LayerOutcome magnitude_layer(const LayerInputs& in, double sparsity, const PruneOptions& o) {
  return quantize_survivors(magnitude_prune(in.W, sparsity, o.prune_n, o.prune_m, in.name), o, in.name);
}

LayerOutcome wanda_layer(const LayerInputs& in, double sparsity, const PruneOptions& o) {
  return quantize_survivors(wanda_prune(in.W, in.stats->sum_sq(), sparsity, o.prune_n, o.prune_m, in.name), o,
                            in.name);
}

LayerOutcome sparsegpt_layer(const LayerInputs& in, double sparsity, const PruneOptions& o) {
  SparseGptOptions so;
  so.sparsity = sparsity, so.prune_n = o.prune_n, so.prune_m = o.prune_m, so.damp = o.damp;
  so.quant = o.quant ? &*o.quant : nullptr;
  SparseGptResult r = sparsegpt_prune(in.W, in.H, so, in.name);
  LayerOutcome z;
  if (r.damp_retries)
    z.warnings.push_back(in.name + ": Cholesky needed " + std::to_string(r.damp_retries) + " retries");
  if (r.dead_columns) z.note = std::to_string(r.dead_columns) + " dead input columns";
  z.weight = r.weight;
  z.quant = std::move(r.quant);
  return z;
}

}  // namespace mc
